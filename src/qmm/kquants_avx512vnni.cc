// AVX-512 VNNI K-quant dot products: kquants_avx512.cc compiled once more with -mavx512vnni (this file's
// name gives it the flag) and FLASHRING_KQ_VNNI = 1, its multiply-accumulates as vpdpbusd + vpdpwssd (see
// there). Entered only when cpu::hasAvx512Vnni() (kquants.cc); the dequantization kernels are the same code
// as the plain AVX-512 ones, and the Q8K quantizer is only built in kquants_avx512.cc.
#define FLASHRING_KQ_VNNI 1
#include "qmm/kquants_avx512.cc"  // NOLINT(bugprone-suspicious-include)
