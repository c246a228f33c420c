// GEMM version 3 for Hopper (sm_90a): the same contract as gemm.cu's version 2 (bf16 operands in memory, both K-major:
// C[z] = act(alpha A[z] B[z]^T (+ bias)) (+ C[z]), A [M, K], B [N, K]), on warpgroup MMA: each of two warpgroups
// multiplies its 64 rows of a 128 x 256 block tile with wgmma.mma_async m64n256k16, both operands read by the tensor
// cores from shared memory through matrix descriptors (K-major, 128B swizzle = kv_swz128). Tiles of 64 of K (128-byte rows)
// staged by cp.async, 4 stages (192 KB of dynamic shared memory), fence.proxy.async before the tensor cores read
// what cp.async wrote. Its own file and module: the body exists only where NVRTC compiles for sm_90a
// (KERNELVL_SM90A), or on the host emulator; the build's sm_80 PTX holds an empty kernel, and the backend uses this
// one only when NVRTC produced it (CudaBackend.GemmVersion 3, KERNELVL_CUDA_GEMM=3).
//
// versions
//   3  as above  (this file)   not yet run on a GPU: the host emulator (kernels/emu) checks it against f64, with
//      wgmma and the descriptor's 128B swizzle emulated as the PTX ISA describes them; no assembler here takes sm_90a
//      (CUDA 11.8's ptxas stops at sm_90), so NVRTC 13 on the GPU machine is its first compiler.
#include "kernelvl_cuda.h"

#define G3_BM 128
#define G3_BN 256
#define G3_BK 64
#define G3_STAGES 4
#define G3_THREADS 256
#define G3_A_STAGE (G3_BM * 128)   // bytes: 128 rows of 64 bf16
#define G3_B_STAGE (G3_BN * 128)
#define G3_SMEM_BYTES (G3_STAGES * (G3_A_STAGE + G3_B_STAGE) + 1024)   // + alignment of the stages to 1024

// Grid (ceil(M / 128), ceil(N / 256), batch), 256 threads (two warpgroups), G3_SMEM_BYTES of dynamic shared memory.
// K, lda, ldb multiples of 8, A and B 16-byte aligned (convert_bf16_kmajor's output).
extern "C" __global__ void __launch_bounds__(G3_THREADS, 1) gemm_bf16_wgmma(
    const unsigned short* __restrict__ A, const unsigned short* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
    int M, int N, int K, int lda, int ldb, int ldc, long long strideA, long long strideB, long long strideC,
    float alpha, int accumulate, int gelu)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    KV_DYNAMIC_SHARED(unsigned char, smem);
    const kv_saddr sA = (kv_smem(smem) + 1023) & ~(kv_saddr)1023, sB = sA + G3_STAGES * G3_A_STAGE;
    const int wg = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.x * G3_BM, n0 = blockIdx.y * G3_BN;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    const int KT = (K + G3_BK - 1) / G3_BK;

    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < G3_STAGES - 1; s++)
    {
        if (s < KT)
        {
            kv_stage_rows<G3_BM, G3_THREADS, 8>(sA + s * G3_A_STAGE, A, m0, M, lda, s * G3_BK, K);
            kv_stage_rows<G3_BN, G3_THREADS, 8>(sB + s * G3_B_STAGE, B, n0, N, ldb, s * G3_BK, K);
        }
        kv_cp_async_commit();
    }
    int buf = 0, ldBuf = G3_STAGES - 1;
    for (int kt = 0; kt < KT; kt++)
    {
        kv_cp_async_wait<G3_STAGES - 2>();
        kv_fence_proxy_async();   // this thread's cp.async writes, before the tensor cores read them
        __syncthreads();          // every thread's part of stage `buf` has landed; stage ldBuf was last read at kt - 1
        const int next = kt + G3_STAGES - 1;
        if (next < KT)
        {
            kv_stage_rows<G3_BM, G3_THREADS, 8>(sA + ldBuf * G3_A_STAGE, A, m0, M, lda, next * G3_BK, K);
            kv_stage_rows<G3_BN, G3_THREADS, 8>(sB + ldBuf * G3_B_STAGE, B, n0, N, ldb, next * G3_BK, K);
        }
        kv_cp_async_commit();
        const kv_saddr a = sA + buf * G3_A_STAGE + wg * 64 * 128, b = sB + buf * G3_B_STAGE;
        kv_wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < G3_BK / 16; ks++)   // 16 of K = 32 bytes further along the (swizzled) rows
            kv_wgmma_m64n256k16_bf16(acc, kv_wgmma_desc(a + ks * 32), kv_wgmma_desc(b + ks * 32));
        kv_wgmma_commit();
        kv_wgmma_wait<0>();       // done reading stage `buf` before the barrier that lets it be overwritten
        if (++buf == G3_STAGES) buf = 0;
        if (++ldBuf == G3_STAGES) ldBuf = 0;
    }
    kv_cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < 32; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
        {
            const int r = m0 + wg * 64 + w * 16 + g + 8 * h, c = n0 + i * 8 + 2 * t;
            if (r >= M) continue;
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                if (c + e < N) kv_gemm_store(C, ldc, r, c + e, acc[4 * i + 2 * h + e], alpha, bias, gelu, accumulate);
            }
        }
#endif
}
