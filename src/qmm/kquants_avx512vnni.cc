// AVX-512 VNNI K-quant dot products: kquants_avx512.cc compiled once more with -mavx512vnni (this file's
// name gives it the flag), its int16 scale multiply-accumulates as vpdpwssd. Entered only when
// cpu::hasAvx512Vnni() (kquants.cc); the dequantization kernels are the same code as the plain AVX-512 ones.
#define FLASHRING_KQ_VNNI 1
#include "qmm/kquants_avx512.cc"  // NOLINT(bugprone-suspicious-include)
