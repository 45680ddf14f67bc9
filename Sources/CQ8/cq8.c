// See include/cq8.h. Three implementations of one contract, checked against each other by
// QuantizationTests: portable C, AVX2 and AVX-512 VNNI, picked at run time from the CPU's features.
#include "cq8.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define CQ8_X86 1
#include <immintrin.h>
#endif

// MARK: - Activation quantisation (shared by all levels: a few thousand floats per product)

void cq8_quantize_rows(const float *x, int rows, int cols, int block, int8_t *q, uint8_t *a, float *scales) {
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
            int8_t *dq = q + (long)i * cols + b * block;
            uint8_t *da = a + (long)i * cols + b * block;
            for (int j = 0; j < block; j++) {
                float v = roundf(src[j] * inv);
                v = v > 127 ? 127 : (v < -127 ? -127 : v);
                const int iv = (int)v;
                dq[j] = (int8_t)iv;
                da[j] = (uint8_t)(iv < 0 ? -iv : iv);
            }
            scales[i * nb + b] = scale;
        }
    }
}

// MARK: - Portable C

static void gemv_portable(const int8_t *w, const float *wscales, int cols, int block, int r0, int r1,
                          const int8_t *xq, const uint8_t *xa, const float *xscales, int nx,
                          float *y, int ldy, int accumulate) {
    (void)xa;
    const int nb = cols / block;
    for (int r = r0; r < r1; r++) {
        const int8_t *wr = w + (long)r * cols;
        for (int i = 0; i < nx; i++) {
            const int8_t *xr = xq + (long)i * cols;
            float total = 0;
            for (int b = 0; b < nb; b++) {
                int32_t dot = 0;
                for (int j = b * block; j < (b + 1) * block; j++) dot += (int32_t)wr[j] * (int32_t)xr[j];
                total += (float)dot * (wscales[(long)r * nb + b] * xscales[i * nb + b]);
            }
            float *out = y + (long)i * ldy + r;
            *out = accumulate ? *out + total : total;
        }
    }
}

#ifdef CQ8_X86

// The int8 x int8 product through unsigned x signed instructions: |x| * (w * sign(x)) = w * x, so the activation's
// absolute values (precomputed, `xa`) are the unsigned operand and the weights take the activation's sign.
// |x| <= 127 and |w| <= 127, so the int16 pair sums of maddubs (at most 2 * 127 * 127) never saturate.

#ifndef CQ8_PREFETCH
#define CQ8_PREFETCH 2048
#endif

#define CQ8_HSUM8(v, out)                                                         \
    do {                                                                          \
        __m128 lo_ = _mm256_castps256_ps128(v), hi_ = _mm256_extractf128_ps(v, 1); \
        lo_ = _mm_add_ps(lo_, hi_);                                               \
        lo_ = _mm_add_ps(lo_, _mm_movehl_ps(lo_, lo_));                           \
        lo_ = _mm_add_ss(lo_, _mm_movehdup_ps(lo_));                              \
        (out) = _mm_cvtss_f32(lo_);                                               \
    } while (0)

// One kernel body, compiled once per instruction set; DOT32(acc, a, s) adds the 32-byte chunk's products to the
// 8 int32 lanes of acc.
#define CQ8_DEFINE_GEMV(NAME, TARGET, DOT32)                                                               \
    __attribute__((target(TARGET))) static void NAME(                                                       \
        const int8_t *w, const float *wscales, int cols, int block, int r0, int r1, const int8_t *xq,      \
        const uint8_t *xa, const float *xscales, int nx, float *y, int ldy, int accumulate) {              \
        const int nb = cols / block, chunks = block / 32;                                                   \
        for (int r = r0; r < r1; r++) {                                                                     \
            const int8_t *wr = w + (long)r * cols;                                                          \
            const float *ws = wscales + (long)r * nb;                                                       \
            for (int i = 0; i < nx; i++) {                                                                  \
                const int8_t *xr = xq + (long)i * cols;                                                     \
                const uint8_t *ar = xa + (long)i * cols;                                                    \
                const float *xs = xscales + (long)i * nb;                                                   \
                __m256 facc0 = _mm256_setzero_ps(), facc1 = _mm256_setzero_ps();                            \
                int b = 0;                                                                                  \
                for (; b + 1 < nb; b += 2) { /* two blocks per round: two independent chains */            \
                    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();                   \
                    for (int c = 0; c < chunks; c++) {                                                      \
                        const int o0 = (b * chunks + c) * 32, o1 = o0 + block;                              \
                        if (i == 0 && c == 0) {                                                             \
                            _mm_prefetch((const char *)(wr + o0 + CQ8_PREFETCH), _MM_HINT_T0);              \
                            _mm_prefetch((const char *)(wr + o1 + CQ8_PREFETCH), _MM_HINT_T0);              \
                        }                                                                                   \
                        __m256i s0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(wr + o0)),       \
                                                      _mm256_loadu_si256((const __m256i *)(xr + o0)));      \
                        __m256i s1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(wr + o1)),       \
                                                      _mm256_loadu_si256((const __m256i *)(xr + o1)));      \
                        DOT32(acc0, _mm256_loadu_si256((const __m256i *)(ar + o0)), s0);                    \
                        DOT32(acc1, _mm256_loadu_si256((const __m256i *)(ar + o1)), s1);                    \
                    }                                                                                       \
                    facc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0), _mm256_set1_ps(ws[b] * xs[b]), facc0);  \
                    facc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), _mm256_set1_ps(ws[b + 1] * xs[b + 1]),  \
                                            facc1);                                                         \
                }                                                                                           \
                for (; b < nb; b++) {                                                                       \
                    __m256i acc0 = _mm256_setzero_si256();                                                  \
                    for (int c = 0; c < chunks; c++) {                                                      \
                        const int o0 = (b * chunks + c) * 32;                                               \
                        __m256i s0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(wr + o0)),       \
                                                      _mm256_loadu_si256((const __m256i *)(xr + o0)));      \
                        DOT32(acc0, _mm256_loadu_si256((const __m256i *)(ar + o0)), s0);                    \
                    }                                                                                       \
                    facc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0), _mm256_set1_ps(ws[b] * xs[b]), facc0);  \
                }                                                                                           \
                float total;                                                                                \
                CQ8_HSUM8(_mm256_add_ps(facc0, facc1), total);                                              \
                float *out = y + (long)i * ldy + r;                                                         \
                *out = accumulate ? *out + total : total;                                                   \
            }                                                                                               \
        }                                                                                                   \
    }

#define CQ8_DOT32_AVX2(acc, a, s) \
    ((acc) = _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((a), (s)), _mm256_set1_epi16(1))))
#define CQ8_DOT32_VNNI(acc, a, s) ((acc) = _mm256_dpbusd_epi32((acc), (a), (s)))

CQ8_DEFINE_GEMV(gemv_avx2, "avx2,fma", CQ8_DOT32_AVX2)
CQ8_DEFINE_GEMV(gemv_vnni, "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni", CQ8_DOT32_VNNI)

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

void cq8_gemv_rows(const int8_t *w, const float *wscales, int cols, int block, int r0, int r1,
                   const int8_t *xq, const uint8_t *xa, const float *xscales, int nx,
                   float *y, int ldy, int accumulate) {
    switch (cq8_level()) {
#ifdef CQ8_X86
    case CQ8_LEVEL_VNNI:
        gemv_vnni(w, wscales, cols, block, r0, r1, xq, xa, xscales, nx, y, ldy, accumulate);
        return;
    case CQ8_LEVEL_AVX2:
        gemv_avx2(w, wscales, cols, block, r0, r1, xq, xa, xscales, nx, y, ldy, accumulate);
        return;
#endif
    default:
        gemv_portable(w, wscales, cols, block, r0, r1, xq, xa, xscales, nx, y, ldy, accumulate);
    }
}
