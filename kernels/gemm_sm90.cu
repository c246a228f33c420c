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
//   4  version 3's tiles fed by TMA (cp.async.bulk.tensor + mbarriers), a producer warp and two consumer warpgroups,
//      one wgmma group kept in flight (gemm_bf16_wgmma_tma, below)   not yet run on a GPU; host emulator only
#include "kernelvl_cuda.h"

#define G3_BM 128
#define G3_BN 256
#define G3_BK 64
#define G3_STAGES 4
#define G3_THREADS 256
#define G3_A_STAGE (G3_BM * 128)   // bytes: 128 rows of 64 bf16
#define G3_B_STAGE (G3_BN * 128)
#define G3_SMEM_BYTES (G3_STAGES * (G3_A_STAGE + G3_B_STAGE) + 1024)   // + alignment of the stages to 1024

// A consumer thread's part of its warpgroup's 64 x 256 accumulator (kv_wgmma_m64n256k16_bf16's layout) into C: rows
// r0 and r0 + 8, columns c0 + 8 i and c0 + 8 i + 1 (r0 = tile row + 16 w + g, c0 = tile column + 2 t), as kv_gemm_store.
static __device__ __forceinline__ void g3_epilogue(const float* acc, float* __restrict__ C, int ldc, int M, int N, int r0, int c0,
                                                   float alpha, const float* __restrict__ bias, int gelu, int accumulate)
{
#pragma unroll
    for (int i = 0; i < 32; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
        {
            const int r = r0 + 8 * h, c = c0 + i * 8;
            if (r >= M) continue;
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                if (c + e < N) kv_gemm_store(C, ldc, r, c + e, acc[4 * i + 2 * h + e], alpha, bias, gelu, accumulate);
            }
        }
}

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

    g3_epilogue(acc, C, ldc, M, N, m0 + wg * 64 + w * 16 + g, n0 + 2 * t, alpha, bias, gelu, accumulate);
#endif
}

// ======================================================================================================================
// Version 4 (Hopper): version 3's tiles and wgmma, fed by TMA and warp-specialised. A producer warp (warp 8; one lane
// issues) loads each 64-wide K stage of A (128 x 64) and B (256 x 64) with two cp.async.bulk.tensor copies, which
// write the 128B swizzle that the wgmma descriptors read and zero-fill rows and K beyond the tensor; a full[s] mbarrier
// (1 arrival + the stage's 48 KB of transactions) says a stage has landed. The two consumer warpgroups wait on
// full[s], issue their four wgmma, and keep one group in flight: after wgmma.wait_group 1 the previous stage is no
// longer read, and every consumer thread arrives on its empty[s] (256 arrivals), which the producer waits on before
// refilling it. No __syncthreads in the main loop; the copies are issued by one thread instead of all 256, and the
// tensor cores see the next stage's wgmma queued behind the current one.
// Operands: tensor maps from cuTensorMapEncodeTiled (CudaDriver.EncodeTensorMapBf16), 3-D {K, rows, batch}, box
// {64, 128 or 256, 1}, bf16, 128B swizzle; batchA / batchB = 0 where an operand is shared by every batch.
// Not yet run on a GPU: the host emulator checks it (TMA landing at the first wait on its barrier, or at once in race
// mode; wgmma computed only when its group is retired).
// ======================================================================================================================
#define G4_THREADS 288   // two consumer warpgroups + one producer warp
#define G4_STAGE_BYTES (G3_A_STAGE + G3_B_STAGE)
#define G4_SMEM_BYTES (G3_STAGES * G4_STAGE_BYTES + 1024 + 2 * G3_STAGES * 8)   // stages, their 1024 alignment, mbarriers

// Grid (ceil(M / 128), ceil(N / 256), batch), 288 threads, G4_SMEM_BYTES of dynamic shared memory. C, bias, ldc,
// strideC, alpha, accumulate, gelu as version 3.
extern "C" __global__ void __launch_bounds__(G4_THREADS, 1) gemm_bf16_wgmma_tma(
    const KV_GRID_CONSTANT kv_tensor_map tmA, const KV_GRID_CONSTANT kv_tensor_map tmB, const float* __restrict__ bias,
    float* __restrict__ C, int M, int N, int K, int ldc, int batchA, int batchB, long long strideC, float alpha, int accumulate, int gelu)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    KV_DYNAMIC_SHARED(unsigned char, smem);
    const kv_saddr sA = (kv_smem(smem) + 1023) & ~(kv_saddr)1023, sB = sA + G3_STAGES * G3_A_STAGE;
    const kv_saddr full = sB + G3_STAGES * G3_B_STAGE, empty = full + G3_STAGES * 8;   // mbarriers, 8 bytes each
    const int m0 = blockIdx.x * G3_BM, n0 = blockIdx.y * G3_BN;
    const int KT = (K + G3_BK - 1) / G3_BK;
    if (threadIdx.x == 0)
    {
        for (int s = 0; s < G3_STAGES; s++)
        {
            kv_mbar_init(full + 8 * s, 1);
            kv_mbar_init(empty + 8 * s, 2 * 128);
        }
        kv_fence_mbar_init();
    }
    __syncthreads();

    if (threadIdx.x >= 256)   // the producer warp: lane 0 issues every copy
    {
        if (threadIdx.x == 256)
            for (int kt = 0; kt < KT; kt++)
            {
                const int s = kt % G3_STAGES, round = kt / G3_STAGES;
                if (round > 0) kv_mbar_wait(empty + 8 * s, (round - 1) & 1);   // the consumers are done with its last fill
                kv_mbar_arrive_expect_tx(full + 8 * s, G4_STAGE_BYTES);
                kv_tma_load_3d(sA + s * G3_A_STAGE, &tmA, kt * G3_BK, m0, batchA ? (int)blockIdx.z : 0, full + 8 * s);
                kv_tma_load_3d(sB + s * G3_B_STAGE, &tmB, kt * G3_BK, n0, batchB ? (int)blockIdx.z : 0, full + 8 * s);
            }
        return;
    }

    const int wg = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    C += blockIdx.z * strideC;
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    for (int kt = 0; kt < KT; kt++)
    {
        const int s = kt % G3_STAGES;
        kv_mbar_wait(full + 8 * s, (kt / G3_STAGES) & 1);
        const kv_saddr a = sA + s * G3_A_STAGE + wg * 64 * 128, b = sB + s * G3_B_STAGE;
        kv_wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < G3_BK / 16; ks++)
            kv_wgmma_m64n256k16_bf16(acc, kv_wgmma_desc(a + ks * 32), kv_wgmma_desc(b + ks * 32));
        kv_wgmma_commit();
        kv_wgmma_wait<1>();   // stage kt - 1's wgmma retired: its buffer may be refilled
        if (kt > 0) kv_mbar_arrive(empty + 8 * ((kt - 1) % G3_STAGES));
    }
    kv_wgmma_wait<0>();

    g3_epilogue(acc, C, ldc, M, N, m0 + wg * 64 + w * 16 + g, n0 + 2 * t, alpha, bias, gelu, accumulate);
#endif
}
