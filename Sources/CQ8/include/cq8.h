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

/// Activation rows are processed in register tiles of this many rows: scratch buffers hold the row count
/// rounded up to a multiple of it (`cq8_padded_rows`), the extra rows zero.
#define CQ8_MR 6
int cq8_padded_rows(int rows);

/// Quantises `rows` rows of `cols` floats (cols a multiple of `block`, block 32 or 64), per block:
/// scale = max|x| / 127, q = round(x / scale) (half away from zero), a = |q|, u = q + 128.
/// q, a, u: [cq8_padded_rows(rows), cols]; scales: [cq8_padded_rows(rows), cols / block]; the padding rows
/// are written as zeros (q = a = 0, u = 128, scale 0).
void cq8_quantize_rows(const float *x, int rows, int cols, int block, int8_t *q, uint8_t *a, uint8_t *u, float *scales);

/// The packed layout of an [nrows, cols] weight matrix quantised per block of `block` inputs:
/// rows in groups of 8 (the group count rounded up to an even number, missing rows zero); group g holds,
/// for each quad of inputs k = 4j..4j+3, 32 bytes: 4 bytes of each of its 8 rows in turn, so
///   value(r, k) = w[(r / 8) * 8 * cols + (k / 4) * 32 + (r % 8) * 4 + k % 4].
/// wscales[(g * nb + b) * 8 + l]: the scale of row 8g + l, block b (nb = cols / block);
/// wsums[(g * nb + b) * 8 + l]: 128 times the sum of that block's int8 values (the VNNI kernel's correction).
int cq8_packed_groups(int nrows);

/// For weight groups g in [g0, g1) (g0, g1 even) and activation rows i in [0, nx):
///   y[i * ldy + r] (+)= sum over blocks b of (float)dot_b * (wscale[r, b] * xscale[i, b])
/// for the rows r < nrows of those groups, where dot_b is the exact int32 dot product of block b of weight row
/// r and activation row i (accumulated in this order with fused multiply-adds). `accumulate` adds to y.
/// xq, xa, xu, xscales as written by cq8_quantize_rows for nx rows.
void cq8_gemm(const int8_t *w, const float *wscales, const int32_t *wsums, int cols, int block, int nrows,
              int g0, int g1, const int8_t *xq, const uint8_t *xa, const uint8_t *xu, const float *xscales, int nx,
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
