// The AVX2 and VNNI kernels of one tile height, included by cq8.c with CQ8_TILE defined (1 to CQ8_MR):
// gemm_avx2_t<CQ8_TILE> and gemm_vnni_t<CQ8_TILE>.
#define CQ8_CAT_(a, b) a##b
#define CQ8_CAT(a, b) CQ8_CAT_(a, b)

#define CQ8_GEMM_NAME CQ8_CAT(gemm_avx2_t, CQ8_TILE)
#define CQ8_GEMM_TARGET "avx2,fma"
#define CQ8_GEMM_VNNI 0
#include "gemm_kernel.h"
#undef CQ8_GEMM_NAME
#undef CQ8_GEMM_TARGET
#undef CQ8_GEMM_VNNI

#define CQ8_GEMM_NAME CQ8_CAT(gemm_vnni_t, CQ8_TILE)
#define CQ8_GEMM_TARGET "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"
#define CQ8_GEMM_VNNI 1
#include "gemm_kernel.h"
#undef CQ8_GEMM_NAME
#undef CQ8_GEMM_TARGET
#undef CQ8_GEMM_VNNI

#undef CQ8_CAT
#undef CQ8_CAT_
