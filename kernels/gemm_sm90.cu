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
#include "topk_common.h"
#include "attention_common.h"

#define G3_BM 128
#define G3_BN 256
#define G3_BK 64
#define G3_STAGES 4
#define G3_THREADS 256
#define G3_A_STAGE (G3_BM * 128)   // bytes: 128 rows of 64 bf16
#define G3_B_STAGE (G3_BN * 128)
#define G3_SMEM_BYTES (G3_STAGES * (G3_A_STAGE + G3_B_STAGE) + 1024)   // + alignment of the stages to 1024

// One stage (128-byte K-major rows: 64 of K in bf16 / f16, 32 in tf32) of a warpgroup's 64 x 256 tile as one wgmma
// group: A rows at a, B rows at b (128B swizzle), four k16 (k8 for tf32) steps 32 bytes apart along the rows.
// TYPE 0 bf16, 1 f16, 2 tf32. first != 0: the tile's first stage, whose first step overwrites the accumulators
// instead of adding to them (no zeroing instructions).
template <int TYPE>
static __device__ __forceinline__ void g3_stage_mma(float* acc, kv_saddr a, kv_saddr b, int first)
{
    kv_wgmma_fence_operand<128>(acc);
    kv_wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ks++)   // 32 bytes further along the (swizzled) rows each step
    {
        const int accumulate = ks > 0 || !first;
        if (TYPE == 1) kv_wgmma_m64n256k16_f16(acc, kv_wgmma_desc(a + ks * 32), kv_wgmma_desc(b + ks * 32), accumulate);
        else if (TYPE == 2) kv_wgmma_m64n256k8_tf32(acc, kv_wgmma_desc(a + ks * 32), kv_wgmma_desc(b + ks * 32), accumulate);
        else kv_wgmma_m64n256k16_bf16(acc, kv_wgmma_desc(a + ks * 32), kv_wgmma_desc(b + ks * 32), accumulate);
    }
    kv_wgmma_commit();
}

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
        g3_stage_mma<0>(acc, a, b, 0);
        kv_wgmma_wait<0>();       // done reading stage `buf` before the barrier that lets it be overwritten
        kv_wgmma_fence_operand<128>(acc);
        if (++buf == G3_STAGES) buf = 0;
        if (++ldBuf == G3_STAGES) ldBuf = 0;
    }
    kv_cp_async_wait<0>();   // kept though redundant: the groups still open are empty (no loads past K), drained anyway

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
// Operands: tensor maps from cuTensorMapEncodeTiled (CudaDriver.EncodeTensorMap), 3-D {K, rows, batch}, box
// {64, 128 or 256, 1}, bf16, 128B swizzle; batchA / batchB = 0 where an operand is shared by every batch.
// Not yet run on a GPU: the host emulator checks it (TMA landing at the first wait on its barrier, or at once in race
// mode; wgmma computed only when its group is retired).
// ======================================================================================================================
#define G4_THREADS 288   // two consumer warpgroups + one producer warp
#define G4_STAGE_BYTES (G3_A_STAGE + G3_B_STAGE)
#define G4_SMEM_BYTES (G3_STAGES * G4_STAGE_BYTES + 1024 + 2 * G3_STAGES * 8)   // stages, their 1024 alignment, mbarriers

// The stage ring's mbarriers (thread 0; a __syncthreads follows): full[s] = 1 arrival (the producer's, with the stage's
// transaction bytes), empty[s] = `emptyCount` arrivals (by default one from each of the 256 consumer threads). 8 bytes
// each, stages apart.
static __device__ __forceinline__ void g4_init_barriers(kv_saddr full, kv_saddr empty, int stages, int emptyCount = 2 * 128)
{
    for (int s = 0; s < stages; s++)
    {
        kv_mbar_init(full + 8 * s, 1);
        kv_mbar_init(empty + 8 * s, emptyCount);
    }
    kv_fence_mbar_init();
}

// A consumer thread is done reading stage barrier `bar`'s buffers (its warpgroup's wgmma on them retired). Alone (CS 1):
// every thread arrives on its block's empty barrier. In a cluster of CS blocks, each block's producer also writes its
// share of B into the others' stages, so a stage is free only when every block's consumers are done with it: lane 0 of
// each consumer warp arrives on that barrier in every block of the cluster (8 x CS arrivals a barrier).
template <int CS>
static __device__ __forceinline__ void g4_release(kv_saddr bar)
{
    if (CS == 1) kv_mbar_arrive(bar);
    else
    {
        // The emulator computes each thread's share of a wgmma at that thread's own wait, so it needs every lane of the
        // warp past its wait before lane 0 speaks for the warp; on the device the group's completion covers the whole
        // warpgroup at any one thread's wait (as CUTLASS's pipelines assume).
        kv_syncwarp();   // kept though redundant on the device (for the emulator's per-thread wgmma, above)
        if ((threadIdx.x & 31) == 0)
            for (unsigned r = 0; r < (unsigned)CS; r++) kv_mbar_arrive_cluster(kv_mapa(bar, r));
    }
}

// Version 4's body for clusters of CS blocks (1: none; 2: gemm_bf16_wgmma_tma_x2, below).
// Persistent: the work items are the (row tile group, column tile, z) of ceil(ceil(M / 128) / CS) x ceil(N / 256) x
// zcount, row tile groups fastest; cluster c (blocks c CS .. c CS + CS - 1) takes items c, c + gridDim.x / CS, ... and its
// block of rank r the group's row tile CS g + r (a row tile past M, the odd one of the last group, loads no A and stores
// nothing, but runs the stages for the others' B). With CS 1 that is block b taking items b, b + gridDim.x, ... (grid
// (min(items, SMs), 1, 1); grid = items is one item a block).
// The ring's barrier phases run on across a block's items, so the producer fills the next item's first stages while
// the consumers are still in the last one's epilogue (the pipeline never drains between tiles). 288 threads,
// G4_SMEM_BYTES of dynamic shared memory. z is the batch (zcount = batch; batches strideC apart in C), or with
// ksteps > 0 the K split (one batch): item z multiplies the 64-wide K steps [z ksteps, (z + 1) ksteps) and stores
// alpha times its partial product into slice z of C (strideC apart; the caller passes no bias, no GELU, no
// accumulate), then gemm_splitk_reduce (gemm.cu) adds the slices in order. Every item has at least one K step (K > 0,
// no empty split: the host's plan). C, bias, ldc, alpha, accumulate, gelu as version 3.
// Clusters (CS 2): the two blocks share each column tile's B. Each producer loads its own A (128 x 64) and its half of B
// (128 x 64: tmB's box is 128 rows) multicast into the same stage of both blocks, so B is read from L2 once for two
// blocks: 32 KB of L2 reads a stage per block instead of 48. A block's full[s] still expects 48 KB (its A, both halves of
// B); a stage is refilled only when both blocks' consumers released it (g4_release); cluster barriers after the barriers'
// initialisation (no remote arrival before it) and at the end (no block exits while the other may still arrive on its
// barriers).
template <int CS>
static __device__ __forceinline__ void g4_gemm(const kv_tensor_map* tmA, const kv_tensor_map* tmB, const float* __restrict__ bias,
    float* __restrict__ C, int M, int N, int K, int ldc, int batchA, int batchB, long long strideC, float alpha, int accumulate, int gelu,
    int ksteps, int zcount)
{
    KV_DYNAMIC_SHARED(unsigned char, g4smem);   // (its own name: NVRTC warns of extern shared arrays of one name with other linkage, #1556-D)
    const kv_saddr sA = (kv_smem(g4smem) + 1023) & ~(kv_saddr)1023, sB = sA + G3_STAGES * G3_A_STAGE;
    const kv_saddr full = sB + G3_STAGES * G3_B_STAGE, empty = full + G3_STAGES * 8;   // mbarriers, 8 bytes each
    const int KT = (K + G3_BK - 1) / G3_BK, mtiles = (M + G3_BM - 1) / G3_BM, ntiles = (N + G3_BN - 1) / G3_BN;
    const int mgroups = (mtiles + CS - 1) / CS;
    const int rank = CS > 1 ? (int)kv_cluster_ctarank() : 0;
    const long long items = (long long)mgroups * ntiles * zcount, first = blockIdx.x / CS, stride = gridDim.x / CS;
    if (threadIdx.x == 0) g4_init_barriers(full, empty, G3_STAGES, CS == 1 ? 2 * 128 : 8 * CS);
    if (CS > 1) kv_cluster_sync();   // every block's barriers initialised before any remote arrival or multicast
    else __syncthreads();

    if (threadIdx.x >= 256)   // the producer warp: lane 0 issues every copy
    {
        if (threadIdx.x == 256)
        {
            int i = 0;   // the block's stage counter, across its items
            for (long long item = first; item < items; item += stride)
            {
                const int m0 = ((int)(item % mgroups) * CS + rank) * G3_BM, n0 = (int)(item / mgroups % ntiles) * G3_BN;
                const int z = (int)(item / ((long long)mgroups * ntiles));
                const int kt0 = ksteps > 0 ? z * ksteps : 0, steps = ksteps > 0 ? kv_imin(ksteps, KT - kt0) : KT;
                const int zb = ksteps > 0 ? 0 : z;   // the operands' batch
                for (int j = 0; j < steps; j++, i++)
                {
                    const int s = i % G3_STAGES, round = i / G3_STAGES, kt = kt0 + j;
                    if (CS == 1)
                    {
                        if (round > 0) kv_mbar_wait(empty + 8 * s, (round - 1) & 1);   // the consumers are done with its last fill
                        kv_mbar_arrive_expect_tx(full + 8 * s, G4_STAGE_BYTES);
                        kv_tma_load_3d(sA + s * G3_A_STAGE, tmA, kt * G3_BK, m0, batchA ? zb : 0, full + 8 * s);
                        kv_tma_load_3d(sB + s * G3_B_STAGE, tmB, kt * G3_BK, n0, batchB ? zb : 0, full + 8 * s);
                    }
                    else
                    {
                        if (round > 0) kv_mbar_wait_cluster(empty + 8 * s, (round - 1) & 1);   // every block's consumers are done with it
                        kv_mbar_arrive_expect_tx(full + 8 * s, (m0 < M ? G3_A_STAGE : 0) + G3_B_STAGE);
                        if (m0 < M) kv_tma_load_3d(sA + s * G3_A_STAGE, tmA, kt * G3_BK, m0, batchA ? zb : 0, full + 8 * s);
                        kv_tma_load_3d_multicast(sB + s * G3_B_STAGE + rank * (G3_B_STAGE / CS), tmB, kt * G3_BK, n0 + rank * (G3_BN / CS),
                                                 batchB ? zb : 0, full + 8 * s, (unsigned short)((1u << CS) - 1));
                    }
                }
            }
        }
    }
    else
    {
        const int wg = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        // Zeroed once, outside the pipeline (each item's first stage then overwrites them: wgmma's scale-d = 0).
        float acc[128];
#pragma unroll
        for (int q = 0; q < 128; q++) acc[q] = 0.f;
        int i = 0;
        for (long long item = first; item < items; item += stride)
        {
            const int m0 = ((int)(item % mgroups) * CS + rank) * G3_BM, n0 = (int)(item / mgroups % ntiles) * G3_BN;
            const int z = (int)(item / ((long long)mgroups * ntiles));
            const int kt0 = ksteps > 0 ? z * ksteps : 0, steps = ksteps > 0 ? kv_imin(ksteps, KT - kt0) : KT;
            for (int j = 0; j < steps; j++, i++)
            {
                const int s = i % G3_STAGES;
                kv_mbar_wait(full + 8 * s, (i / G3_STAGES) & 1);
                const kv_saddr a = sA + s * G3_A_STAGE + wg * 64 * 128, b = sB + s * G3_B_STAGE;
                g3_stage_mma<0>(acc, a, b, j == 0);   // the item's first stage overwrites the last item's accumulators
                kv_wgmma_wait<1>();   // the previous stage's wgmma retired: its buffer may be refilled
                kv_wgmma_fence_operand<128>(acc);
                if (j > 0) g4_release<CS>(empty + 8 * ((i - 1) % G3_STAGES));
            }
            kv_wgmma_wait<0>();
            kv_wgmma_fence_operand<128>(acc);
            g4_release<CS>(empty + 8 * ((i - 1) % G3_STAGES));   // the item's last stage (the producer may be waiting on it)
            g3_epilogue(acc, C + z * strideC, ldc, M, N, m0 + wg * 64 + w * 16 + g, n0 + 2 * t, alpha, bias, gelu, accumulate);
        }
    }
    if (CS > 1) kv_cluster_sync();   // the other block's consumers may still arrive on this block's empty barriers
}

extern "C" __global__ void __launch_bounds__(G4_THREADS, 1) gemm_bf16_wgmma_tma(
    const KV_GRID_CONSTANT kv_tensor_map tmA, const KV_GRID_CONSTANT kv_tensor_map tmB, const float* __restrict__ bias,
    float* __restrict__ C, int M, int N, int K, int ldc, int batchA, int batchB, long long strideC, float alpha, int accumulate, int gelu,
    int ksteps, int zcount)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    g4_gemm<1>(&tmA, &tmB, bias, C, M, N, K, ldc, batchA, batchB, strideC, alpha, accumulate, gelu, ksteps, zcount);
#endif
}

// Version 4 in clusters of two blocks sharing B (CudaBackend.GemmCluster 2, KERNELVL_CUDA_GEMM_CLUSTER=2): launched by
// cuLaunchKernelEx with cluster dimension (2, 1, 1), grid (2 x clusters, 1, 1), tmB's box 64 x 128 (half a tile's
// rows); the other arguments as gemm_bf16_wgmma_tma. Not yet run on a GPU: the host emulator runs the cluster's blocks
// together (remote arrivals, multicast copies landing in both blocks, the cluster barrier).
extern "C" __global__ void __launch_bounds__(G4_THREADS, 1) gemm_bf16_wgmma_tma_x2(
    const KV_GRID_CONSTANT kv_tensor_map tmA, const KV_GRID_CONSTANT kv_tensor_map tmB, const float* __restrict__ bias,
    float* __restrict__ C, int M, int N, int K, int ldc, int batchA, int batchB, long long strideC, float alpha, int accumulate, int gelu,
    int ksteps, int zcount)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    g4_gemm<2>(&tmA, &tmB, bias, C, M, N, K, ldc, batchA, batchB, strideC, alpha, accumulate, gelu, ksteps, zcount);
#endif
}

// ======================================================================================================================
// f32-accurate GEMM on Hopper (the cuda backend's PreciseGemmVersion 3): gemm.cu's 3xTF32 split (x = hi + lo, both
// tf32; a b ~ lo_a hi_b + hi_a lo_b + hi_a hi_b) on version 4's engine. split_tf32_kmajor (gemm.cu) writes each
// operand's hi and lo K-major in memory; four TMA maps (A hi / lo, B hi / lo: f32 elements, boxes of 32 x 128 and
// 32 x 256, 128B swizzle); the producer runs the K loop three times (passes A lo B hi, A hi B lo, A hi B hi, small
// terms first) into the same accumulators, wgmma m64n256k8 tf32, one group in flight; version 3's epilogue.
// C [M, N] = alpha A B^T (+ C when accumulate), A [M, K], B [N, K] K-major (one batch). Grid (ceil(M / 128),
// ceil(N / 256)), 288 threads, G4_SMEM_BYTES of dynamic shared memory.
// Not yet run on a GPU: the host emulator checks it against f64 (f32 budget).
// ======================================================================================================================
extern "C" __global__ void __launch_bounds__(G4_THREADS, 1) gemm_tf32x3_wgmma_tma(
    const KV_GRID_CONSTANT kv_tensor_map tmAhi, const KV_GRID_CONSTANT kv_tensor_map tmAlo,
    const KV_GRID_CONSTANT kv_tensor_map tmBhi, const KV_GRID_CONSTANT kv_tensor_map tmBlo,
    float* __restrict__ C, int M, int N, int K, int ldc, float alpha, int accumulate)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    KV_DYNAMIC_SHARED(unsigned char, smem);
    const kv_saddr sA = (kv_smem(smem) + 1023) & ~(kv_saddr)1023, sB = sA + G3_STAGES * G3_A_STAGE;
    const kv_saddr full = sB + G3_STAGES * G3_B_STAGE, empty = full + G3_STAGES * 8;
    const int m0 = blockIdx.x * G3_BM, n0 = blockIdx.y * G3_BN;
    const int KT = (K + 31) / 32, total = 3 * KT;   // 32 tf32 of K a stage, three passes
    if (threadIdx.x == 0) g4_init_barriers(full, empty, G3_STAGES);
    __syncthreads();

    if (threadIdx.x >= 256)
    {
        if (threadIdx.x == 256)
            for (int step = 0; step < total; step++)
            {
                const int s = step % G3_STAGES, round = step / G3_STAGES, pass = step / KT, kt = step % KT;
                if (round > 0) kv_mbar_wait(empty + 8 * s, (round - 1) & 1);
                kv_mbar_arrive_expect_tx(full + 8 * s, G4_STAGE_BYTES);
                kv_tma_load_3d(sA + s * G3_A_STAGE, pass == 0 ? &tmAlo : &tmAhi, kt * 32, m0, 0, full + 8 * s);
                kv_tma_load_3d(sB + s * G3_B_STAGE, pass == 1 ? &tmBlo : &tmBhi, kt * 32, n0, 0, full + 8 * s);
            }
        return;
    }

    const int wg = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    for (int step = 0; step < total; step++)
    {
        const int s = step % G3_STAGES;
        kv_mbar_wait(full + 8 * s, (step / G3_STAGES) & 1);
        g3_stage_mma<2>(acc, sA + s * G3_A_STAGE + wg * 64 * 128, sB + s * G3_B_STAGE, 0);
        kv_wgmma_wait<1>();
        kv_wgmma_fence_operand<128>(acc);
        if (step > 0) kv_mbar_arrive(empty + 8 * ((step - 1) % G3_STAGES));
    }
    kv_wgmma_wait<0>();
    kv_wgmma_fence_operand<128>(acc);
    g3_epilogue(acc, C, ldc, M, N, m0 + wg * 64 + w * 16 + g, n0 + 2 * t, alpha, nullptr, 0, accumulate);
#endif
}

// ======================================================================================================================
// Attention forward version 3 (Hopper, D = 64): attention.cu's version 2 with both products on wgmma instead of
// mma.sync. Two warpgroups of 64 query rows (8 warps x 16, version 2's rows); per 64-key tile S = Q K^T is 4 wgmma
// m64n64k16 with Q from registers (version 2's fragments) and K from shared memory (128-byte swizzled rows, a
// descriptor), then version 2's online softmax on the accumulators (the same layout), then O += P V as 4 more with P
// from registers (packed as version 2 packs it) and V staged transposed ([d][key]: K-major for the wgmma). The next
// tile's f32 K, V and mask are loaded into registers while this one is multiplied (version 2's pipeline); each
// product group is waited for before its accumulators are touched. q [B, H, Tq, 64], k and v [B, H, Tk, 64] 16-byte
// aligned, mask i32 [B, Tk] or null -> o [B, H, Tq, 64], lse [B, H, Tq]. Grid (ceil(Tq / 128), B * H), 256 threads,
// ATT3_SMEM_BYTES of dynamic shared memory.
// Not yet run on a GPU: the host emulator checks it against f64 (wgmma with register A emulated).
// ======================================================================================================================
#define ATT3_TILE_BYTES (ATT_TILE_K * 128)   // 64 rows of 64 bf16
#define ATT3_SMEM_BYTES (6 * ATT3_TILE_BYTES + 3 * ATT_TILE_K * 4 + 1024)   // K and V^T, triple-buffered; mask bias; alignment

extern "C" __global__ void __launch_bounds__(256, 1) attention_forward_d64_wgmma(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const int* __restrict__ mask,
    int H, int Tq, int Tk, float scale, float* __restrict__ o, float* __restrict__ lse)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    KV_DYNAMIC_SHARED(unsigned char, smem);
    const kv_saddr base = (kv_smem(smem) + 1023) & ~(kv_saddr)1023;
    unsigned char* gbase = smem + (base - kv_smem(smem));   // the same bytes through a generic pointer
    float* kbias = (float*)(gbase + 6 * ATT3_TILE_BYTES);   // [3][64]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / H);
    const float* kb = k + bh * Tk * ATT_D;
    const float* vb = v + bh * Tk * ATT_D;
    const int r0 = blockIdx.x * 128 + warp * 16 + g, r1 = r0 + 8;

    unsigned qa[4][4];
    att_load_q(q + bh * Tq * ATT_D, r0, r1, Tq, t, qa);
    float pk[2][8], pv[2][8], pbias = 0.f;
    // K rows [key][d] as version 2 stores them; V transposed, [d][key], in the same swizzled 128-byte rows (whole
    // 16-byte chunks: a quarter-warp's 8 rows land in 8 different bank groups).
    auto stash = [&](int buf) {
        const kv_saddr ks = base + buf * ATT3_TILE_BYTES, vts = base + (3 + buf) * ATT3_TILE_BYTES;
#pragma unroll
        for (int i = 0; i < 2; i++)
        {
            int e = tid + i * 256, key = e >> 3, c = e & 7;
            kv_st_shared16(ks + kv_swz128(key, c), kv_pack_bf16(pk[i][0], pk[i][1]), kv_pack_bf16(pk[i][2], pk[i][3]),
                           kv_pack_bf16(pk[i][4], pk[i][5]), kv_pack_bf16(pk[i][6], pk[i][7]));
            // V^T row d = tid % 64, keys 16 (tid / 64) + 8 i .. + 7: one 16-byte chunk (att_fetch_tile<true>'s share)
            const int dv = tid & 63, kc = 2 * (tid >> 6) + i;
            kv_st_shared16(vts + kv_swz128(dv, kc), kv_pack_bf16(pv[i][0], pv[i][1]), kv_pack_bf16(pv[i][2], pv[i][3]),
                           kv_pack_bf16(pv[i][4], pv[i][5]), kv_pack_bf16(pv[i][6], pv[i][7]));
        }
        if (tid < ATT_TILE_K) kbias[buf * ATT_TILE_K + tid] = pbias;
    };

    float oacc[8][4], s[8][4], sn[8][4];   // O; S of the tile in the softmax; S of the next tile (its wgmma in flight)
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) oacc[i][e] = s[i][e] = sn[i][e] = 0.f;
    float m0 = -KV_INF, m1 = -KV_INF, l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * KV_LOG2E;
    // S = Q K^T of the tile in buffer buf into sn: 16 of d a step, 32 bytes along K's rows; committed, not waited for.
    auto issue_s = [&](int buf) {
        const kv_saddr ks = base + buf * ATT3_TILE_BYTES;
        kv_wgmma_fence_operand<32>(&sn[0][0]);
        kv_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            kv_wgmma_m64n64k16_bf16_rs(&sn[0][0], qa[kk], kv_wgmma_desc(ks + kk * 32), kk > 0);
        kv_wgmma_commit();
    };

    // Tile j lives in buffer j % 3 (K, V^T, mask bias). Per tile: S_j is ready; stash tile j + 1 (fetched into
    // registers during the last tile) into buffer (j + 1) % 3, whose last readers (tile j - 2's wgmma) every thread
    // retired before the previous barrier; barrier; issue S_{j+1} and fetch tile j + 2; then the softmax of S_j runs
    // while S_{j+1} is on the tensor cores; S_{j+1} is waited for before O is rescaled and O += P V_j issued (ptxas
    // 12.5 injects a wait of its own before any ordinary write to O while a group is in flight, C7517, whatever group
    // that is: in the middle of the softmax); O += P V_j is waited for at the iteration's end.
    const int ntiles = (Tk + ATT_TILE_K - 1) / ATT_TILE_K;
    att_fetch_tile<true>(kb, vb, mask, b, Tk, 0, tid, pk, pv, pbias);
    stash(0);
    kv_fence_proxy_async();   // the generic-proxy stores above, before the tensor cores read them
    __syncthreads();
    issue_s(0);
    if (ntiles > 1) att_fetch_tile<true>(kb, vb, mask, b, Tk, ATT_TILE_K, tid, pk, pv, pbias);   // in flight meanwhile
    // S_0 before the loop (later tiles' S are waited for at the end of the iteration before): waiting inside the loop
    // on its first pass only leaves ptxas a path on which the copy below reads sn in flight (C7514, serialised wgmma).
    kv_wgmma_wait<0>();
    kv_wgmma_fence_operand<32>(&sn[0][0]);
    for (int j = 0; j < ntiles; j++)
    {
        const int cur = j % 3, nxt = (j + 1) % 3;
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[i][e] = sn[i][e];
        if (j + 1 < ntiles)
        {
            stash(nxt);
            kv_fence_proxy_async();
        }
        __syncthreads();   // tile j + 1 staged by every thread; kbias of tile j visible
        if (j + 1 < ntiles)
        {
            issue_s(nxt);
            if (j + 2 < ntiles) att_fetch_tile<true>(kb, vb, mask, b, Tk, (j + 2) * ATT_TILE_K, tid, pk, pv, pbias);
        }
        float alpha0, alpha1;
        att_softmax_p(s, kbias + cur * ATT_TILE_K, sl2, t, m0, m1, l0, l1, alpha0, alpha1);
        kv_wgmma_wait<0>();   // S_{j+1}, so that no group is in flight while O is written below: kept though redundant (for ptxas, C7517)
        kv_wgmma_fence_operand<32>(&sn[0][0]);
        att_rescale_o(oacc, alpha0, alpha1);
        // P as version 2 packs it, all four k16 fragments before the group: registers a wgmma reads must not be written
        // once the group has started (ptxas would serialise it, C7513).
        unsigned pa[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            pa[kk][0] = kv_pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pa[kk][1] = kv_pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pa[kk][2] = kv_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[kk][3] = kv_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }
        const kv_saddr vts = base + (3 + cur) * ATT3_TILE_BYTES;
        kv_wgmma_fence_operand<32>(&oacc[0][0]);
        kv_wgmma_fence_operand<16>(&pa[0][0]);
        kv_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)   // O += P V: 16 keys a step, V^T's rows 32 bytes on
            kv_wgmma_m64n64k16_bf16_rs(&oacc[0][0], pa[kk], kv_wgmma_desc(vts + kk * 32), 1);
        kv_wgmma_commit();
        // This product, before the loop's back edge: a group in flight across it makes ptxas serialise every wgmma
        // (C7515: the loop-carried accumulators' moves count as non-wgmma definitions).
        kv_wgmma_wait<0>();
        kv_wgmma_fence_operand<32>(&oacc[0][0]);
    }
    att_store(o + bh * Tq * ATT_D, lse + bh * Tq, r0, r1, Tq, t, m0, m1, l0, l1, oacc);
#endif
}

// ======================================================================================================================
// Top-k version 3 (Hopper, f16 corpus, kp 32): topk.cu version 2's search with version 4's engine. The approximate
// scores of a 128-query tile against 256-row corpus tiles come from wgmma m64n256k16 f16 (two consumer warpgroups,
// 64 queries each), both operands loaded by TMA (a producer warp, full/empty mbarriers, 3 stages of 64 of D), one
// wgmma group in flight within a tile; at the end of a tile the accumulators (wgmma's layout) go through version 2's
// epilogue: scores above the query's running threshold appended to its buffer, full buffers merged into its 32-entry
// list (tc_merge_row). Each warpgroup owns its 64 queries' lists and overflow flag and synchronises its epilogue by its
// own named barrier (ids 1 and 2, 128 threads), so the two drift apart by up to the ring's depth and one's epilogue
// runs while the other's wgmma keep the tensor cores busy (the producer runs ahead into the next tile meanwhile).
// Output, merge and exact rescoring as version 2 (topk_merge, topk_f16_rescore).
// Needs d % 8 == 0 (16-byte rows for TMA) and a 16-byte aligned corpus; rows beyond n and D beyond d arrive as zeros.
// Not yet run on a GPU: the host emulator checks it against f64 and version 1.
// ======================================================================================================================
#define T3_STAGES 3   // 3 x 48 KB of stages + 66 KB of lists: 212 KB (4 stages would pass the 227 KB a block may have)
#define T3_THREADS 384   // two consumer warpgroups + a producer warpgroup (one thread issues), for setmaxnreg
#define T3_KMAX 32
#define T3_CAP 32
#define T3_WG_LISTS_BYTES (64 * (2 * T3_KMAX + 2 * T3_CAP) * 4 + 64 * 3 * 4 + 16)   // one warpgroup's 64 queries
#define T3_LISTS_BYTES (2 * T3_WG_LISTS_BYTES)
#define T3_SMEM_BYTES (T3_STAGES * G4_STAGE_BYTES + 1024 + T3_LISTS_BYTES + 2 * T3_STAGES * 8)

// qh [Q, d] f16 through tmQ ({d, Q, 1}, box {64, 128, 1}), corpus [n, d] f16 through tmC ({d, n, 1}, box {64, 256 / CS, 1})
// -> partS, partI [Q, slices, 32]: slice s = blockIdx.y covers corpus rows [s tilesPerSlice 256, min(n, ...)), its 32
// best approximate scores per query, best first, padded with (-inf, TOPK_NO_INDEX). Grid (ceil(Q / 128) rounded up to
// a multiple of CS, slices), 384 threads, T3_SMEM_BYTES of dynamic shared memory.
// Clusters (CS 4: topk_tc_f16_wgmma_x4): the CS query tiles of a cluster score the same corpus tiles, so each block loads
// its queries and a quarter of the corpus tile, multicast into all four (24 KB of L2 reads a stage a block instead of
// 48), releases stages on every block's empty barrier (g4_release), cluster barriers at start and end; a query tile
// past Q loads no queries and keeps nothing, but runs the stages for the others' share of the corpus (version 4's scheme).
template <int CS>
static __device__ __forceinline__ void t3_topk(const kv_tensor_map* tmQ, const kv_tensor_map* tmC, int Q, int n, int d, int tilesPerSlice,
                                               float* __restrict__ partS, int* __restrict__ partI)
{
    KV_DYNAMIC_SHARED(unsigned char, t3smem);   // (its own name: NVRTC warns of extern shared arrays of one name with other linkage, #1556-D)
    const kv_saddr sA = (kv_smem(t3smem) + 1023) & ~(kv_saddr)1023, sB = sA + T3_STAGES * G3_A_STAGE;
    unsigned char* lists = t3smem + (sB + T3_STAGES * G3_B_STAGE - kv_smem(t3smem));
    const kv_saddr full = kv_smem(lists) + T3_LISTS_BYTES, empty = full + T3_STAGES * 8;
    const int tid = threadIdx.x;
    const int q0 = blockIdx.x * G3_BM;
    const long long sliceStart = (long long)blockIdx.y * tilesPerSlice * G3_BN;
    const long long sliceEnd = sliceStart + (long long)tilesPerSlice * G3_BN < n ? sliceStart + (long long)tilesPerSlice * G3_BN : n;
    const int ntiles = (int)((sliceEnd - sliceStart + G3_BN - 1) / G3_BN);
    const int KT = (d + G3_BK - 1) / G3_BK;
    const long long total = (long long)ntiles * KT;
    for (int v = 0; v < 2; v++)   // both warpgroups' lists, by every thread
    {
        TcShared sv = tc_shared_at<T3_KMAX, T3_CAP>(lists + v * T3_WG_LISTS_BYTES, 64);
        for (int r = tid; r < 64; r += T3_THREADS) { sv.thr[r] = -KV_INF; sv.cnt[r] = 0; sv.lcnt[r] = 0; }
        if (tid == 0) *sv.ovf = 0;
    }
    if (tid == 0) g4_init_barriers(full, empty, T3_STAGES, CS == 1 ? 2 * 128 : 8 * CS);
    if (CS > 1) kv_cluster_sync();   // every block's barriers initialised before any remote arrival or multicast
    else __syncthreads();

    if (tid >= 256)   // the producer warpgroup: one thread issues every copy, tile by tile, 64 of D at a time
    {
        kv_setmaxnreg_dec<40>();
        if (tid == 256)
            for (long long step = 0; step < total; step++)
            {
                const int s = (int)(step % T3_STAGES), kt = (int)(step % KT);
                const long long round = step / T3_STAGES, tile = step / KT;
                if (CS == 1)
                {
                    if (round > 0) kv_mbar_wait(empty + 8 * s, (unsigned)((round - 1) & 1));
                    kv_mbar_arrive_expect_tx(full + 8 * s, G4_STAGE_BYTES);
                    kv_tma_load_3d(sA + s * G3_A_STAGE, tmQ, kt * G3_BK, q0, 0, full + 8 * s);
                    kv_tma_load_3d(sB + s * G3_B_STAGE, tmC, kt * G3_BK, (int)(sliceStart + tile * G3_BN), 0, full + 8 * s);
                }
                else
                {
                    const int rank = (int)kv_cluster_ctarank();
                    if (round > 0) kv_mbar_wait_cluster(empty + 8 * s, (unsigned)((round - 1) & 1));   // every block's consumers are done with it
                    kv_mbar_arrive_expect_tx(full + 8 * s, (q0 < Q ? G3_A_STAGE : 0) + G3_B_STAGE);
                    if (q0 < Q) kv_tma_load_3d(sA + s * G3_A_STAGE, tmQ, kt * G3_BK, q0, 0, full + 8 * s);
                    kv_tma_load_3d_multicast(sB + s * G3_B_STAGE + rank * (G3_B_STAGE / CS), tmC, kt * G3_BK,
                                             (int)(sliceStart + tile * G3_BN) + rank * (G3_BN / CS), 0, full + 8 * s, (unsigned short)((1u << CS) - 1));
                }
            }
        // Joins the consumers' cluster barrier at the end. Redundant by the PTX ISA (barrier.cluster.wait waits only for
        // the cluster's non-exited threads, and the emulator models that, so removing this passes there); kept because
        // it is harmless and makes the producer's part in the block's last barrier explicit.
        if (CS > 1) kv_cluster_sync();   // kept though redundant (see above)
        return;
    }

    kv_setmaxnreg_inc<232>();   // 128 accumulators and the epilogue without spills (168 otherwise: 384 threads)
    const int wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3, wtid = tid & 127;
    // This warpgroup's 64 queries: their lists (rows 0..63 of its own TcShared), its named barrier (1 + wg, 128 threads)
    TcShared sh = tc_shared_at<T3_KMAX, T3_CAP>(lists + wg * T3_WG_LISTS_BYTES, 64);
    const kv_saddr sCnt = kv_smem(sh.cnt);
    const int qw0 = q0 + wg * 64, bar = 1 + wg;
    // Zeroed once, outside the pipeline (each tile then starts with wgmma's scale-d = 0): accumulators left undefined
    // here make ptxas serialise every wgmma (C7515; the NVRTC test checks for it).
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    // Tile by tile, KT stages each, as version 4's item loop: a flat loop over the stages with the epilogue behind a
    // branch left a wgmma group in flight on one path into the loop head, and ptxas 12.5 then serialised every wgmma
    // (C7518, a warpgroup wait it inserts in the divergent path).
    long long step = 0;   // the block's stage counter
    for (int tile = 0; tile < ntiles && KT > 0; tile++)   // (d = 0, which the host refuses: no stage, no scores)
    {
        for (int kt = 0; kt < KT; kt++, step++)
        {
            const int s = (int)(step % T3_STAGES);
            kv_mbar_wait(full + 8 * s, (unsigned)((step / T3_STAGES) & 1));
            const kv_saddr a = sA + s * G3_A_STAGE + wg * 64 * 128, b = sB + s * G3_B_STAGE;
            g3_stage_mma<1>(acc, a, b, kt == 0);   // a tile's first stage overwrites the last tile's scores
            kv_wgmma_wait<1>();   // the previous stage's wgmma retired: its buffer may be refilled
            kv_wgmma_fence_operand<128>(acc);
            if (kt > 0) g4_release<CS>(empty + 8 * (int)((step - 1) % T3_STAGES));
        }
        kv_wgmma_wait<0>();   // the tile's scores are final
        kv_wgmma_fence_operand<128>(acc);
        g4_release<CS>(empty + 8 * (int)((step - 1) % T3_STAGES));   // its last stage

        // Epilogue of the tile (version 2's, on wgmma's layout: this warpgroup's rows 16 w + g + 8 h, columns 8 i + 2 t
        // + e), among the warpgroup's 128 threads. The first barrier keeps them out of this tile's appends until all
        // have left the last epilogue (a warp that ran ahead could set the overflow flag that a slower one is still
        // reading for the last tile). Redundant in practice, since each warpgroup has its own flag: a warp cannot
        // finish this tile's wgmma before every warp of its warpgroup has issued them, which each does only after that
        // read (the emulator's schedules pass without it). But the PTX memory model orders nothing through wgmma's
        // warpgroup rendezvous, so this barrier is what orders the read before the write: the racecheck
        // (kernels/emu/kv_racecheck.h) reports its removal. One 128-thread barrier a tile.
        kv_named_barrier(bar, 128);
        const long long col0 = sliceStart + (long long)tile * G3_BN;
        const int r0 = w * 16 + g;
        unsigned done[4] = {0u, 0u, 0u, 0u};
        for (;;)
        {
            const float th0 = sh.thr[r0], th1 = sh.thr[r0 + 8];
            bool overflow = false;
#pragma unroll
            for (int i = 0; i < 32; i++)
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        const int r = r0 + 8 * h, bit = (i & 7) * 4 + h * 2 + e;
                        const long long row = col0 + i * 8 + 2 * t + e;
                        const float v = acc[4 * i + 2 * h + e];
                        if (((done[i >> 3] >> bit) & 1u) == 0u && row < sliceEnd && qw0 + r < Q && v > (h ? th1 : th0))
                        {
                            int pos = kv_atomic_add_shared(sCnt + 4 * r, 1);
                            if (pos < T3_CAP)
                            {
                                sh.bufS[r * T3_CAP + pos] = v;
                                sh.bufI[r * T3_CAP + pos] = (int)row;
                                done[i >> 3] |= 1u << bit;
                            }
                            else overflow = true;
                        }
                    }
            if (overflow) kv_set_flag_shared(sh.ovf);   // by any thread whose list overflowed
            kv_named_barrier(bar, 128);
            const int again = *sh.ovf;
            if (!again) break;
            for (int r = w; r < 64; r += 4)
                if (sh.cnt[r] >= T3_CAP) tc_merge_row<T3_KMAX, T3_CAP>(sh, r, T3_KMAX, lane);
            kv_named_barrier(bar, 128);
            if (wtid == 0) *sh.ovf = 0;
            kv_named_barrier(bar, 128);
        }
    }

    // The slice is done: merge what the buffers hold, write each query's list (this warpgroup's 64). Both barriers are
    // kept though redundant today (kernels/emu/mutate.sh removes each and nothing fails): the tile loop ends right after
    // a barrier every thread of the warpgroup passed, and with kp = 32 = warp size each list is written by the warp that
    // merged it; they cost once a block and keep the merge and the write correct if either changes.
    kv_named_barrier(bar, 128);   // kept though redundant
    for (int r = w; r < 64; r += 4)
        if (sh.cnt[r] > 0) tc_merge_row<T3_KMAX, T3_CAP>(sh, r, T3_KMAX, lane);
    kv_named_barrier(bar, 128);   // kept though redundant
    tc_write_lists<T3_KMAX>(sh, 64, qw0, Q, T3_KMAX, wtid, 128, partS, partI);
    if (CS > 1) kv_cluster_sync();   // the other blocks' consumers may still arrive on this block's empty barriers
}

extern "C" __global__ void __launch_bounds__(T3_THREADS, 1) topk_tc_f16_wgmma(
    const KV_GRID_CONSTANT kv_tensor_map tmQ, const KV_GRID_CONSTANT kv_tensor_map tmC, int Q, int n, int d, int tilesPerSlice,
    float* __restrict__ partS, int* __restrict__ partI)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    t3_topk<1>(&tmQ, &tmC, Q, n, d, tilesPerSlice, partS, partI);
#endif
}

// Top-k version 3 in clusters of four query tiles sharing the corpus tiles (CudaBackend.TopKCluster 4,
// KERNELVL_CUDA_TOPK_CLUSTER=4): launched by cuLaunchKernelEx with cluster dimension (4, 1, 1), tmC's box 64 x 64.
// Not yet run on a GPU: the host emulator runs each cluster's four blocks together.
extern "C" __global__ void __launch_bounds__(T3_THREADS, 1) topk_tc_f16_wgmma_x4(
    const KV_GRID_CONSTANT kv_tensor_map tmQ, const KV_GRID_CONSTANT kv_tensor_map tmC, int Q, int n, int d, int tilesPerSlice,
    float* __restrict__ partS, int* __restrict__ partI)
{
#if defined(KERNELVL_SM90A) || defined(KV_EMU)
    t3_topk<4>(&tmQ, &tmC, Q, n, d, tilesPerSlice, partS, partI);
#endif
}
