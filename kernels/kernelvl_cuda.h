// Project header for the CUDA kernels: under clang without the CUDA toolkit (the build's PTX step) it supplies
// what nvcc/NVRTC would: the builtin variables, the qualifiers, and the few intrinsics the kernels use.
#pragma once
#if defined(__clang__) && !defined(__CUDACC_RTC__) && !defined(__NVCC__)
#include <__clang_cuda_builtin_vars.h>
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __forceinline__ __attribute__((always_inline))
static __device__ __forceinline__ float __shfl_xor_sync(unsigned mask, float v, int lane) { return __nvvm_shfl_sync_bfly_f32(mask, v, lane, 0x1f); }
static __device__ __forceinline__ float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
extern "C" __device__ void __syncthreads() __asm__("llvm.nvvm.barrier0");
#endif
