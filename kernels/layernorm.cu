// Fused layer norm (+ residual) for the Cuda backend. One block per row; warp shuffles, then one value per warp
// through shared memory. The reference is ReferenceBackend.LayerNorm; the parity registry checks it on a GPU.
//
// versions
//   1  one block per row, two-pass mean/variance from registers-free strided loops (this file)   not yet timed
#include "kernelvl_cuda.h"

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
static __device__ __forceinline__ float block_sum(float v, float* red)
{
    v = kv_warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
    __syncthreads();
    return s;
}

// h = x + residual (when residual is not null; h written to h_out when that is not null), y = (h - mean) * rstd * g + b.
// x, residual, h_out, y: [rows, c]; g, b: [c]; mean, rstd: [rows].
extern "C" __global__ void layernorm_forward(const float* __restrict__ x, const float* __restrict__ residual,
                                             const float* __restrict__ g, const float* __restrict__ b,
                                             float* __restrict__ h_out, float* __restrict__ y,
                                             float* __restrict__ mean, float* __restrict__ rstd, int c, float eps)
{
    __shared__ float red[32];
    long long o = (long long)blockIdx.x * c;
    float s = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float h = x[o + j] + (residual ? residual[o + j] : 0.f);
        if (h_out) h_out[o + j] = h;
        s += h;
    }
    float m = block_sum(s, red) / c;
    float v = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float d = x[o + j] + (residual ? residual[o + j] : 0.f) - m;
        v += d * d;
    }
    float r = 1.f / kv_sqrt(block_sum(v, red) / c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float h = x[o + j] + (residual ? residual[o + j] : 0.f);
        y[o + j] = (h - m) * r * g[j] + b[j];
    }
    if (threadIdx.x == 0) { mean[blockIdx.x] = m; rstd[blockIdx.x] = r; }
}
