// The body of the packed int8 GEMM, included once per instruction set and tile height (by gemm_tiles.h) with
//   CQ8_GEMM_NAME    function name
//   CQ8_TILE         activation rows per register tile (CQ8_MR for prefill and batches; 1 to 5 for exactly that
//                    many rows, which would otherwise multiply rows of zero padding)
//   CQ8_GEMM_TARGET  __attribute__((target(...))) string
//   CQ8_GEMM_VNNI    1: vpdpbusd on (x + 128) and a correction by the weights' block sums;
//                    0: AVX2, maddubs on |x| and the weights with the sign of x.
//
// Blocking (see cq8.h for the layout): the weights are packed in groups of 8 rows, 4 inputs of each row
// side by side, so one 32-byte load holds 8 rows x 4 inputs and one dot-product instruction against 4
// broadcast activation bytes gives 8 partial sums of 8 output rows. A register tile is 2 groups (16 output
// rows) x CQ8_TILE activation rows: per step 2 weight loads and CQ8_TILE broadcasts feed 2 * CQ8_TILE dot
// instructions, and the int32 sums of a block are scaled into float accumulators once per block. Activation
// rows are walked in chunks of up to 16 tiles (they stay in L2) and, within a chunk, every 16-row weight panel is
// read once from memory and reused from L1/L2 for all the chunk's rows. Every (output, activation) pair sees
// the same sequence of float operations whatever the tile it falls in, so a row's result does not depend on
// how many rows are computed with it.

__attribute__((target(CQ8_GEMM_TARGET))) static void CQ8_GEMM_NAME(
    const int8_t *w, const float *wscales, const int32_t *wsums, int cols, int block, int nrows, int g0, int g1,
    const int8_t *xq, const uint8_t *xa, const uint8_t *xu, const float *xscales, int nx, int nxPadded,
    float *y, int ldy, int accumulate) {
    const int nb = cols / block, quads = block / 4;
    (void)xq; (void)xa; (void)xu; (void)wsums;
#if !CQ8_GEMM_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    // Activation rows per chunk: up to 16 tiles, fewer when a chunk of long rows would not leave room in L2
    // (1.25 MB per core here) for the 16-row weight panel: at most ~512 KB of activation bytes.
    int chunk = (512 * 1024 / cols) / CQ8_TILE * CQ8_TILE;
    chunk = chunk < CQ8_TILE ? CQ8_TILE : (chunk > 16 * CQ8_TILE ? 16 * CQ8_TILE : chunk);
    for (int mc = 0; mc < nxPadded; mc += chunk) {
        const int mce = mc + chunk < nxPadded ? mc + chunk : nxPadded;
        for (int g = g0; g < g1; g += 2) {
            const int8_t *wg0 = w + (long)g * 8 * cols, *wg1 = wg0 + 8L * cols;
            for (int i = mc; i < mce; i += CQ8_TILE) {
                __m256 facc[2][CQ8_TILE];
                for (int r = 0; r < CQ8_TILE; r++) facc[0][r] = facc[1][r] = _mm256_setzero_ps();
                for (int b = 0; b < nb; b++) {
                    __m256i acc[2][CQ8_TILE];
                    for (int r = 0; r < CQ8_TILE; r++) acc[0][r] = acc[1][r] = _mm256_setzero_si256();
                    const int8_t *p0 = wg0 + (long)b * block * 8, *p1 = wg1 + (long)b * block * 8;
                    for (int q = 0; q < quads; q++) {
                        const __m256i W0 = _mm256_loadu_si256((const __m256i *)(p0 + q * 32));
                        const __m256i W1 = _mm256_loadu_si256((const __m256i *)(p1 + q * 32));
                        const long k = (long)b * block + q * 4;
                        for (int r = 0; r < CQ8_TILE; r++) {
                            int32_t v;
#if CQ8_GEMM_VNNI
                            memcpy(&v, xu + (long)(i + r) * cols + k, 4);
                            const __m256i xb = _mm256_set1_epi32(v);
                            acc[0][r] = _mm256_dpbusd_epi32(acc[0][r], xb, W0);
                            acc[1][r] = _mm256_dpbusd_epi32(acc[1][r], xb, W1);
#else
                            int32_t s;
                            memcpy(&v, xa + (long)(i + r) * cols + k, 4);
                            memcpy(&s, xq + (long)(i + r) * cols + k, 4);
                            const __m256i ab = _mm256_set1_epi32(v), sb = _mm256_set1_epi32(s);
                            acc[0][r] = _mm256_add_epi32(acc[0][r],
                                _mm256_madd_epi16(_mm256_maddubs_epi16(ab, _mm256_sign_epi8(W0, sb)), ones));
                            acc[1][r] = _mm256_add_epi32(acc[1][r],
                                _mm256_madd_epi16(_mm256_maddubs_epi16(ab, _mm256_sign_epi8(W1, sb)), ones));
#endif
                        }
                    }
                    const __m256 s0 = _mm256_loadu_ps(wscales + ((long)g * nb + b) * 8);
                    const __m256 s1 = _mm256_loadu_ps(wscales + ((long)(g + 1) * nb + b) * 8);
#if CQ8_GEMM_VNNI
                    const __m256i c0 = _mm256_loadu_si256((const __m256i *)(wsums + ((long)g * nb + b) * 8));
                    const __m256i c1 = _mm256_loadu_si256((const __m256i *)(wsums + ((long)(g + 1) * nb + b) * 8));
#endif
                    for (int r = 0; r < CQ8_TILE; r++) {
                        const __m256 xs = _mm256_set1_ps(xscales[(long)(i + r) * nb + b]);
#if CQ8_GEMM_VNNI
                        acc[0][r] = _mm256_sub_epi32(acc[0][r], c0);
                        acc[1][r] = _mm256_sub_epi32(acc[1][r], c1);
#endif
                        facc[0][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[0][r]), _mm256_mul_ps(s0, xs), facc[0][r]);
                        facc[1][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[1][r]), _mm256_mul_ps(s1, xs), facc[1][r]);
                    }
                }
                for (int r = 0; r < CQ8_TILE && i + r < nx; r++) {
                    for (int j = 0; j < 2; j++) {
                        const int base = (g + j) * 8;
                        if (base >= nrows) break;
                        float *out = y + (long)(i + r) * ldy + base;
                        if (base + 8 <= nrows) {
                            const __m256 v = accumulate ? _mm256_add_ps(_mm256_loadu_ps(out), facc[j][r]) : facc[j][r];
                            _mm256_storeu_ps(out, v);
                        } else {
                            float tmp[8];
                            _mm256_storeu_ps(tmp, facc[j][r]);
                            for (int l = 0; base + l < nrows; l++) out[l] = accumulate ? out[l] + tmp[l] : tmp[l];
                        }
                    }
                }
            }
        }
    }
}
