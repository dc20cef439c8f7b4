// FR_HD: marks the math shared by the CPU and CUDA kernels. Under nvcc such a function is __host__ __device__
// (compiled for both), elsewhere a plain always-inline function, so the CPU test suite runs the code the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define FR_HD __host__ __device__ __forceinline__
#else
#define FR_HD [[gnu::always_inline]] inline
#endif
