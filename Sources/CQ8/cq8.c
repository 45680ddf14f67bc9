// See include/cq8.h. Three implementations of one contract, checked against each other by
// QuantizationTests: portable C, AVX2 and AVX-512 VNNI, picked at run time from the CPU's features.
#include "cq8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define CQ8_X86 1
#include <immintrin.h>
#endif

// MARK: - Activation quantisation (shared by all levels: a few thousand floats per product)

int cq8_padded_rows(int rows) { return (rows + CQ8_MR - 1) / CQ8_MR * CQ8_MR; }

int cq8_packed_groups(int nrows) { return ((nrows + 7) / 8 + 1) / 2 * 2; }

void cq8_quantize_rows(const float *x, int rows, int cols, int block, int8_t *q, uint8_t *a, uint8_t *u, float *scales) {
    const int nb = cols / block;
    for (int i = 0; i < rows; i++) {
        const float *xr = x + (long)i * cols;
        for (int b = 0; b < nb; b++) {
            const float *src = xr + b * block;
            float amax = 0;
            for (int j = 0; j < block; j++) {
                const float v = fabsf(src[j]);
                amax = v > amax ? v : amax;
            }
            const float scale = amax / 127.0f;
            const float inv = scale > 0 ? 1.0f / scale : 0.0f;
            const long o = (long)i * cols + b * block;
            for (int j = 0; j < block; j++) {
                // Round half away from zero, as roundf, but inline (the libm call took ~5% of a q8 episode).
                float v = src[j] * inv;
                v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                const int iv = (int)(v + (v >= 0.0f ? 0.5f : -0.5f));
                q[o + j] = (int8_t)iv;
                a[o + j] = (uint8_t)(iv < 0 ? -iv : iv);
                u[o + j] = (uint8_t)(iv + 128);
            }
            scales[(long)i * nb + b] = scale;
        }
    }
    const int padded = cq8_padded_rows(rows);
    if (padded > rows) {
        memset(q + (long)rows * cols, 0, (size_t)(padded - rows) * cols);
        memset(a + (long)rows * cols, 0, (size_t)(padded - rows) * cols);
        memset(u + (long)rows * cols, 128, (size_t)(padded - rows) * cols);
        memset(scales + (long)rows * nb, 0, sizeof(float) * (size_t)(padded - rows) * nb);
    }
}

// MARK: - Portable C

static void gemm_portable(const int8_t *w, const float *wscales, int cols, int block, int nrows, int g0, int g1,
                          const int8_t *xq, const float *xscales, int nx, float *y, int ldy, int accumulate) {
    const int nb = cols / block;
    const int r1 = g1 * 8 < nrows ? g1 * 8 : nrows;
    for (int r = g0 * 8; r < r1; r++) {
        const int8_t *wg = w + (long)(r / 8) * 8 * cols + (r % 8) * 4;
        const float *ws = wscales + (long)(r / 8) * nb * 8 + r % 8;
        for (int i = 0; i < nx; i++) {
            const int8_t *xr = xq + (long)i * cols;
            float total = 0;
            for (int b = 0; b < nb; b++) {
                int32_t dot = 0;
                for (int k = b * block; k < (b + 1) * block; k++) dot += (int32_t)wg[(k / 4) * 32 + k % 4] * (int32_t)xr[k];
                total = fmaf((float)dot, ws[b * 8] * xscales[(long)i * nb + b], total);
            }
            float *out = y + (long)i * ldy + r;
            *out = accumulate ? *out + total : total;
        }
    }
}

#ifdef CQ8_X86

// One kernel per instruction set and tile height (gemm_avx2_t<N>, gemm_vnni_t<N>): CQ8_MR rows for prefill
// and batches; exactly 1 to 5 rows for a step with that many (a decode row, with the draft tokens of
// speculative decoding), instead of the CQ8_MR-row tile computing the missing rows as zero padding. Every
// height does the same per-row float operations, so a row's result does not depend on it.
#define CQ8_TILE 1
#include "gemm_tiles.h"
#undef CQ8_TILE
#define CQ8_TILE 2
#include "gemm_tiles.h"
#undef CQ8_TILE
#define CQ8_TILE 3
#include "gemm_tiles.h"
#undef CQ8_TILE
#define CQ8_TILE 4
#include "gemm_tiles.h"
#undef CQ8_TILE
#define CQ8_TILE 5
#include "gemm_tiles.h"
#undef CQ8_TILE
#define CQ8_TILE 6
#include "gemm_tiles.h"
#undef CQ8_TILE
_Static_assert(CQ8_MR == 6, "the full tile is instantiated as gemm_*_t6");

typedef void (*cq8_kernel)(const int8_t *, const float *, const int32_t *, int, int, int, int, int, const int8_t *,
                           const uint8_t *, const uint8_t *, const float *, int, int, float *, int, int);
// Kernels by activation rows, for fewer rows than CQ8_MR.
static const cq8_kernel small_vnni[CQ8_MR] = {0, gemm_vnni_t1, gemm_vnni_t2, gemm_vnni_t3, gemm_vnni_t4, gemm_vnni_t5};
static const cq8_kernel small_avx2[CQ8_MR] = {0, gemm_avx2_t1, gemm_avx2_t2, gemm_avx2_t3, gemm_avx2_t4, gemm_avx2_t5};

#endif  // CQ8_X86

// MARK: - Dispatch

static int detect_best(void) {
#ifdef CQ8_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            return CQ8_LEVEL_VNNI;
        return CQ8_LEVEL_AVX2;
    }
#endif
    return CQ8_LEVEL_PORTABLE;
}

static int best_level = -1;   // set on first use; racing first calls store the same value
static int forced_level = -1;

int cq8_best_level(void) {
    int b = __atomic_load_n(&best_level, __ATOMIC_RELAXED);
    if (b < 0) {
        b = detect_best();
        __atomic_store_n(&best_level, b, __ATOMIC_RELAXED);
    }
    return b;
}

int cq8_level(void) {
    const int f = __atomic_load_n(&forced_level, __ATOMIC_RELAXED);
    return f >= 0 ? f : cq8_best_level();
}

int cq8_set_level(int level) {
    const int best = cq8_best_level();
    const int use = level < 0 ? best : (level > best ? best : level);
    __atomic_store_n(&forced_level, use, __ATOMIC_RELAXED);
    return use;
}

const char *cq8_level_name(int level) {
    switch (level) {
    case CQ8_LEVEL_VNNI: return "avx512vnni";
    case CQ8_LEVEL_AVX2: return "avx2";
    default: return "portable";
    }
}

void cq8_gemm(const int8_t *w, const float *wscales, const int32_t *wsums, int cols, int block, int nrows,
              int g0, int g1, const int8_t *xq, const uint8_t *xa, const uint8_t *xu, const float *xscales, int nx,
              float *y, int ldy, int accumulate) {
    if (nx <= 0 || g0 >= g1) return;
    switch (cq8_level()) {
#ifdef CQ8_X86
    case CQ8_LEVEL_VNNI:
        if (nx < CQ8_MR) {
            small_vnni[nx](w, wscales, wsums, cols, block, nrows, g0, g1, xq, xa, xu, xscales, nx, nx, y, ldy, accumulate);
            return;
        }
        gemm_vnni_t6(w, wscales, wsums, cols, block, nrows, g0, g1, xq, xa, xu, xscales, nx, cq8_padded_rows(nx), y, ldy,
                  accumulate);
        return;
    case CQ8_LEVEL_AVX2:
        if (nx < CQ8_MR) {
            small_avx2[nx](w, wscales, wsums, cols, block, nrows, g0, g1, xq, xa, xu, xscales, nx, nx, y, ldy, accumulate);
            return;
        }
        gemm_avx2_t6(w, wscales, wsums, cols, block, nrows, g0, g1, xq, xa, xu, xscales, nx, cq8_padded_rows(nx), y, ldy,
                  accumulate);
        return;
#endif
    default:
        gemm_portable(w, wscales, cols, block, nrows, g0, g1, xq, xscales, nx, y, ldy, accumulate);
    }
}
