// 8-bit dot-product kernels for PolicyEngine's `WeightFormat.q8`.
//
// CBLAS has no integer products, so the int8 x int8 dot products of 8-bit weights are done here, in C,
// because Swift cannot compile one function for AVX2 or AVX-512 VNNI and pick it at run time: the binary
// stays runnable on any x86-64 (or ARM) machine and uses the best instructions the CPU has. Everything
// else, including every float32 matrix product, stays in Swift and CBLAS.
#ifndef CQ8_H
#define CQ8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Implementation levels: 0 portable C, 1 AVX2 (maddubs), 2 AVX-512 VNNI (256-bit vpdpbusd).
#define CQ8_LEVEL_PORTABLE 0
#define CQ8_LEVEL_AVX2 1
#define CQ8_LEVEL_VNNI 2

/// The best level this CPU supports.
int cq8_best_level(void);
/// The level in use (the best one unless `cq8_set_level` chose a lower one).
int cq8_level(void);
/// Uses `level` if the CPU supports it, else the best supported level below it; returns the level in use.
int cq8_set_level(int level);
/// "portable", "avx2" or "avx512vnni".
const char *cq8_level_name(int level);

/// Quantises `rows` rows of `cols` floats (cols a multiple of `block`, block 32 or 64), per block:
/// scale = max|x| / 127, q = round(x / scale) (half away from zero), a = |q|.
/// q, a: [rows, cols]; scales: [rows, cols / block].
void cq8_quantize_rows(const float *x, int rows, int cols, int block, int8_t *q, uint8_t *a, float *scales);

/// For weight rows r in [r0, r1) and activation rows i in [0, nx):
///   y[i * ldy + r] (+)= sum over blocks b of wscales[r * nb + b] * xscales[i * nb + b] * dot_b
/// where dot_b is the exact int32 dot product of block b of weight row r (w + r * cols) and of activation row i
/// (xq + i * cols, xa its absolute values), nb = cols / block. `accumulate` adds to y instead of storing.
void cq8_gemv_rows(const int8_t *w, const float *wscales, int cols, int block, int r0, int r1,
                   const int8_t *xq, const uint8_t *xa, const float *xscales, int nx,
                   float *y, int ldy, int accumulate);

/// A spin-wait hint to the CPU (PAUSE on x86, YIELD on ARM), for ComputePool's polling loops.
static inline void cq8_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#ifdef __cplusplus
}
#endif

#endif
