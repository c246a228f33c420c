// GEMM on the tensor cores for the Cuda backend: C[z] = act(alpha op(A[z]) op(B[z]) (+ bias)) (+ C[z] when accumulate),
// act = identity or the exact-erf GELU (the fused epilogue of a transformer's first FFN layer).
// Operands are the engine's f32 tensors, rounded to bf16 (nearest even) as tiles are staged into shared memory;
// products accumulate in f32 (mma.sync m16n8k16 bf16). The reference is ReferenceBackend.MatMul (f64); the parity
// registry checks every transpose combination, batches, bias and accumulate on a GPU with a bf16 error budget.
//
// versions
//   1  128x128x32 block tile, 8 warps of 64x32, register-staged double buffer (global loads of tile k+1 in flight
//      while tile k is multiplied), padded shared rows (conflict-free fragment reads), edge guards on M, N, K  (this file)
//      not yet run on a GPU; the GELU epilogue is checked by the registry's matmul_gelu cases
#include "kernelvl_cuda.h"

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 32
#define GEMM_KW (GEMM_BK / 2)        // 32-bit words (bf16 pairs along K) per tile row
#define GEMM_KWP (GEMM_KW + 4)       // padded: row stride 20 words, so the 8 groups x 4 lanes of a fragment read hit 32 banks
#define GEMM_THREADS 256
#define GEMM_PAIRS (GEMM_BM * GEMM_KW / GEMM_THREADS)   // bf16 pairs each thread stages per operand per tile (8)

// op(X)(r, c) for X [R, C] row-major with leading dim ld, or its transpose (X stored [C, R]); 0 outside rows x cols.
static __device__ __forceinline__ float gemm_at(const float* __restrict__ x, int trans, int ld, int r, int c, int rows, int cols)
{
    if (r >= rows || c >= cols) return 0.f;
    return trans ? x[(long long)c * ld + r] : x[(long long)r * ld + c];
}

// x/2 (1 + erf(x / sqrt 2)): kv_gelu_erf (kernelvl_cuda.h).
static __device__ __forceinline__ float gemm_gelu(float x) { return kv_gelu_erf(x); }

// Stages one operand's tile (128 rows of op(X) starting at r0, 32 columns of K from k0) as bf16 pairs into registers.
// Consecutive threads walk K for a row-major operand and the rows for a transposed one: both read consecutive addresses.
static __device__ __forceinline__ void gemm_load(const float* __restrict__ x, int trans, int ld, int r0, int k0, int rows, int k,
                                                 unsigned* regs)
{
    #pragma unroll
    for (int i = 0; i < GEMM_PAIRS; i++)
    {
        int e = threadIdx.x + i * GEMM_THREADS;
        int rr = trans ? (e & (GEMM_BM - 1)) : (e / GEMM_KW);
        int kp = trans ? (e / GEMM_BM) : (e & (GEMM_KW - 1));
        int r = r0 + rr, kk = k0 + 2 * kp;
        regs[i] = kv_pack_bf16(gemm_at(x, trans, ld, r, kk, rows, k), gemm_at(x, trans, ld, r, kk + 1, rows, k));
    }
}

static __device__ __forceinline__ void gemm_store(const unsigned* regs, int trans, unsigned (*tile)[GEMM_KWP])
{
    #pragma unroll
    for (int i = 0; i < GEMM_PAIRS; i++)
    {
        int e = threadIdx.x + i * GEMM_THREADS;
        int rr = trans ? (e & (GEMM_BM - 1)) : (e / GEMM_KW);
        int kp = trans ? (e / GEMM_BM) : (e & (GEMM_KW - 1));
        tile[rr][kp] = regs[i];
    }
}

// A [M, K] (transA: [K, M]), B [K, N] (transB: [N, K]), bias [N] or null, C [M, N] with leading dims lda, ldb, ldc;
// batch z = blockIdx.z at element offsets z * stride (stride 0: shared); gelu != 0 applies GELU before the accumulate.
// Grid (ceil(N/128), ceil(M/128), batch), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_bf16(
    const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
    int M, int N, int K, int lda, int ldb, int ldc, int transA, int transB,
    long long strideA, long long strideB, long long strideC, float alpha, int accumulate, int gelu)
{
    // [buffer][row of the tile: m for A, n for B][bf16 pair along K]: B is kept as its transpose (n-major), which is the
    // "col" operand layout of mma.sync, so both fragments are read the same way.
    __shared__ unsigned As[2][GEMM_BM][GEMM_KWP];
    __shared__ unsigned Bs[2][GEMM_BN][GEMM_KWP];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;   // the warp's 64x32 piece: rows wm*64.., columns wn*32..
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    // op(B)(k, n) is Bt(n, k) with Bt = B^T: Bt is row-major [N, K] exactly when transB.
    const int transBt = !transB;

    float acc[4][4][4];
    #pragma unroll
    for (int i = 0; i < 4; i++)
        #pragma unroll
        for (int j = 0; j < 4; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    unsigned ra[GEMM_PAIRS], rb[GEMM_PAIRS];
    const int tiles = (K + GEMM_BK - 1) / GEMM_BK;
    if (tiles > 0)
    {
        gemm_load(A, transA, lda, m0, 0, M, K, ra);
        gemm_load(B, transBt, ldb, n0, 0, N, K, rb);
        gemm_store(ra, transA, As[0]);
        gemm_store(rb, transBt, Bs[0]);
    }
    __syncthreads();
    for (int kt = 0; kt < tiles; kt++)
    {
        const int cur = kt & 1;
        const bool more = kt + 1 < tiles;
        if (more)
        {
            gemm_load(A, transA, lda, m0, (kt + 1) * GEMM_BK, M, K, ra);
            gemm_load(B, transBt, ldb, n0, (kt + 1) * GEMM_BK, N, K, rb);
        }
        #pragma unroll
        for (int ks = 0; ks < GEMM_BK / 16; ks++)
        {
            const int w = ks * 8 + t;
            unsigned a[4][4], b[4][2];
            #pragma unroll
            for (int mi = 0; mi < 4; mi++)
            {
                int r = wm * 64 + mi * 16 + g;
                a[mi][0] = As[cur][r][w];
                a[mi][1] = As[cur][r + 8][w];
                a[mi][2] = As[cur][r][w + 4];
                a[mi][3] = As[cur][r + 8][w + 4];
            }
            #pragma unroll
            for (int ni = 0; ni < 4; ni++)
            {
                int c = wn * 32 + ni * 8 + g;
                b[ni][0] = Bs[cur][c][w];
                b[ni][1] = Bs[cur][c][w + 4];
            }
            #pragma unroll
            for (int mi = 0; mi < 4; mi++)
                #pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    kv_mma_bf16(acc[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b[ni][0], b[ni][1]);
        }
        if (more)
        {
            // The other buffer was last read in iteration kt - 1, before the barrier that ended it.
            gemm_store(ra, transA, As[cur ^ 1]);
            gemm_store(rb, transBt, Bs[cur ^ 1]);
        }
        __syncthreads();
    }

    #pragma unroll
    for (int mi = 0; mi < 4; mi++)
        #pragma unroll
        for (int ni = 0; ni < 4; ni++)
            #pragma unroll
            for (int h = 0; h < 2; h++)
                #pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    int r = m0 + wm * 64 + mi * 16 + g + 8 * h;
                    int c = n0 + wn * 32 + ni * 8 + 2 * t + e;
                    if (r >= M || c >= N) continue;
                    float v = alpha * acc[mi][ni][2 * h + e] + (bias ? bias[c] : 0.f);
                    if (gelu) v = gemm_gelu(v);
                    long long idx = (long long)r * ldc + c;
                    C[idx] = accumulate ? C[idx] + v : v;
                }
}

// ======================================================================================================================
// Version 2: bf16 operands kept in memory, both K-major: C[z] = act(alpha A[z] B[z]^T (+ bias)) (+ C[z]) with A [M, K]
// and B [N, K] row-major. 128 x 256 block tile, 8 warps of 64 x 64 (kv_warp_tile_64x64: ldmatrix from XOR-swizzled
// rows, mma.sync m16n8k16 bf16, f32 accumulation), cp.async 4-stage pipeline (96 KB of dynamic shared memory).
// Needs K, lda, ldb multiples of 8 and 16-byte-aligned A, B: convert_bf16_kmajor writes operands that way (rounding
// the engine's f32 tensors, transposing the ones that are not K-major, zero-padding K). The f32 MatMul of the cuda
// backend takes this path with GemmVersion 2 (KERNELVL_CUDA_GEMM=2).
// Not yet run on a GPU: ptxas (sm_90) accepts it, the host emulator (kernels/emu) checks it against f64; on a GPU,
// parity is the registry's matmul cases with KERNELVL_CUDA_GEMM=2 (perf/gpu/run-v2.sh).
// ======================================================================================================================
#define G2_BM 128
#define G2_BN 256
#define G2_STAGES 4
#define G2_THREADS 256
#define G2_A_STAGE (G2_BM * 64)
#define G2_B_STAGE (G2_BN * 64)

// Grid (ceil(M / 128), ceil(N / 256), batch), 256 threads, G2_STAGES * (G2_A_STAGE + G2_B_STAGE) bytes of dynamic
// shared memory. Strides in elements (0: the batch shares the operand).
extern "C" __global__ void __launch_bounds__(G2_THREADS, 1) gemm_bf16_tn(
    const unsigned short* __restrict__ A, const unsigned short* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
    int M, int N, int K, int lda, int ldb, int ldc, long long strideA, long long strideB, long long strideC,
    float alpha, int accumulate, int gelu)
{
    KV_DYNAMIC_SHARED(unsigned char, smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;   // the warp's 64 x 64 piece of the 128 x 256 tile
    const int m0 = blockIdx.x * G2_BM, n0 = blockIdx.y * G2_BN;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    const kv_saddr sA = kv_smem(smem), sB = sA + G2_STAGES * G2_A_STAGE;
    const int KT = (K + 31) / 32;

    float acc[4][8][4];
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

#pragma unroll
    for (int s = 0; s < G2_STAGES - 1; s++)
    {
        if (s < KT)
        {
            kv_stage_rows<G2_BM, G2_THREADS>(sA + s * G2_A_STAGE, A, m0, M, lda, s * 32, K);
            kv_stage_rows<G2_BN, G2_THREADS>(sB + s * G2_B_STAGE, B, n0, N, ldb, s * 32, K);
        }
        kv_cp_async_commit();
    }
    int buf = 0, ldBuf = G2_STAGES - 1;
    for (int kt = 0; kt < KT; kt++)
    {
        kv_cp_async_wait<G2_STAGES - 2>();
        __syncthreads();   // stage `buf` has landed for every thread; stage ldBuf was last read at kt - 1
        const int next = kt + G2_STAGES - 1;
        if (next < KT)
        {
            kv_stage_rows<G2_BM, G2_THREADS>(sA + ldBuf * G2_A_STAGE, A, m0, M, lda, next * 32, K);
            kv_stage_rows<G2_BN, G2_THREADS>(sB + ldBuf * G2_B_STAGE, B, n0, N, ldb, next * 32, K);
        }
        kv_cp_async_commit();
        kv_warp_tile_64x64<true>(sA + buf * G2_A_STAGE, sB + buf * G2_B_STAGE, wm * 64, wn * 64, acc);
        if (++buf == G2_STAGES) buf = 0;
        if (++ldBuf == G2_STAGES) ldBuf = 0;
    }
    kv_cp_async_wait<0>();   // kept though redundant: the groups still open are empty (no loads past K), drained anyway

#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++)
            {
                const int r = m0 + wm * 64 + mi * 16 + g + 8 * h;
                const int c = n0 + wn * 64 + ni * 8 + 2 * t;
                if (r >= M) continue;
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    if (c + e < N) kv_gemm_store(C, ldc, r, c + e, acc[mi][ni][2 * h + e], alpha, bias, gelu, accumulate);
                }
            }
}

// The 32 x 32 tile (r0 = blockIdx.y 32, c0 = blockIdx.x 32) of op(x) into tile[rr][cc] = op(x)(r0 + rr, c0 + cc),
// zeros outside R x Kc. op(x)(r, c) = x[r * ld + c], or x[c * ld + r] when trans (x stored [Kc, R]). Both sides are
// read along rows. 256 threads (32 x 8); ends with a __syncthreads.
static __device__ __forceinline__ void kmajor_tile(const float* __restrict__ x, int R, int Kc, int ld, int trans, float (*tile)[33])
{
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int a = ty + 8 * i;   // trans: tile row = c (x's row), tile column = r; else tile row = r, column = c
        int r = trans ? r0 + tx : r0 + a, c = trans ? c0 + a : c0 + tx;
        float v = r < R && c < Kc ? (trans ? x[(long long)c * ld + r] : x[(long long)r * ld + c]) : 0.f;
        if (trans) tile[tx][a] = v; else tile[a][tx] = v;
    }
    __syncthreads();
}

// The engine's f32 operand -> the K-major bf16 operand of gemm_bf16_tn: y[z][r][c] = bf16(op(x[z])(r, c)) for
// r < R, c < Kc, zeros for Kc <= c < ldy (ldy = Kc rounded up to 8), through kmajor_tile.
// Grid (ceil(ldy / 32), ceil(R / 32), batch), 256 threads (32 x 8); strideX in elements, y batches ldy * R apart.
extern "C" __global__ void __launch_bounds__(256) convert_bf16_kmajor(
    const float* __restrict__ x, int R, int Kc, int ld, int trans, long long strideX, unsigned short* __restrict__ y, int ldy)
{
    __shared__ float tile[32][33];
    x += blockIdx.z * strideX;
    y += (long long)blockIdx.z * ldy * R;
    kmajor_tile(x, R, Kc, ld, trans, tile);
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, r0 = blockIdx.y * 32, c = blockIdx.x * 32 + tx;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int rr = ty + 8 * i, r = r0 + rr;
        if (r < R && c < ldy) y[(long long)r * ldy + c] = (unsigned short)(kv_pack_bf16(tile[rr][tx], 0.f) & 0xffffu);
    }
}

// ======================================================================================================================
// f32-accurate GEMM on the tensor cores (3xTF32): C[z] = alpha op(A[z]) op(B[z]) (+ bias) (+ C[z]) for the products
// that a bf16 rounding would spoil (the InfoNCE gradient: dt = G v, dv = G^T t, f32 budget 1e-5). Each f32 operand x
// is split into hi = tf32(x) and lo = tf32(x - hi) (x - hi - lo ~ 2^-22 |x|), and a b = lo_a hi_b + hi_a lo_b +
// hi_a hi_b on mma.sync m16n8k8 tf32 (the dropped lo lo term is ~2^-22 of the product): ~f32 accuracy at a third of
// the tf32 rate, against the f32 CUDA-core ILGPU GEMM it replaces. Tiles as version 1 (128 x 128, 8 warps of 64 x 32,
// register-staged double buffer, any M/N/K, the four transposes, batch strides), K steps of 16 kept as f32 in shared
// memory (row stride 20 words: the fragment reads hit 32 banks), split while fragments are read.
// Not yet run on a GPU: ptxas (sm_90) accepts it, the host emulator (kernels/emu) checks it against f64.
// ======================================================================================================================
#define G3X_BK 16
#define G3X_KP (G3X_BK + 4)
#define G3X_LOADS (GEMM_BM * G3X_BK / GEMM_THREADS)   // f32 values each thread stages per operand per tile (8)

static __device__ __forceinline__ void g3x_load(const float* __restrict__ x, int trans, int ld, int r0, int k0, int rows, int k, float* regs)
{
#pragma unroll
    for (int i = 0; i < G3X_LOADS; i++)
    {
        int e = threadIdx.x + i * GEMM_THREADS;
        int rr = trans ? (e & (GEMM_BM - 1)) : (e / G3X_BK);
        int kk = trans ? (e / GEMM_BM) : (e & (G3X_BK - 1));
        regs[i] = gemm_at(x, trans, ld, r0 + rr, k0 + kk, rows, k);
    }
}

static __device__ __forceinline__ void g3x_store(const float* regs, int trans, float (*tile)[G3X_KP])
{
#pragma unroll
    for (int i = 0; i < G3X_LOADS; i++)
    {
        int e = threadIdx.x + i * GEMM_THREADS;
        int rr = trans ? (e & (GEMM_BM - 1)) : (e / G3X_BK);
        int kk = trans ? (e / GEMM_BM) : (e & (G3X_BK - 1));
        tile[rr][kk] = regs[i];
    }
}

static __device__ __forceinline__ void g3x_split(float x, unsigned& hi, unsigned& lo)
{
    hi = kv_tf32(x);
    lo = kv_tf32(x - kv_int_as_float((int)hi));
}

// The operands of gemm_sm90.cu's 3xTF32 wgmma GEMM: op(x) [R, Kc] f32 -> hi, lo [R, ldy] K-major, hi = tf32(x),
// lo = tf32(x - hi) (g3x_split, stored as f32 bit patterns), zeros for Kc <= c < ldy (ldy = Kc rounded up to 4:
// 16-byte rows for TMA), through kmajor_tile. Grid (ceil(ldy / 32), ceil(R / 32), 1), 256 threads.
extern "C" __global__ void __launch_bounds__(256) split_tf32_kmajor(
    const float* __restrict__ x, int R, int Kc, int ld, int trans, float* __restrict__ hi, float* __restrict__ lo, int ldy)
{
    __shared__ float tile[32][33];
    kmajor_tile(x, R, Kc, ld, trans, tile);
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, r0 = blockIdx.y * 32, c = blockIdx.x * 32 + tx;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int rr = ty + 8 * i, r = r0 + rr;
        if (r >= R || c >= ldy) continue;
        unsigned h, l;
        g3x_split(tile[rr][tx], h, l);
        hi[(long long)r * ldy + c] = kv_int_as_float((int)h);
        lo[(long long)r * ldy + c] = kv_int_as_float((int)l);
    }
}

// Split-K's second half (gemm_sm90.cu's version 4 with ksteps > 0 wrote the slices): C[m, n] (=|+=) act(sum over
// z < splits of W[z][m, n] (+ bias[n])), W [splits, M, N] dense, the slices added in order (deterministic).
// Grid-stride over M * N; 256 threads.
extern "C" __global__ void __launch_bounds__(256) gemm_splitk_reduce(
    const float* __restrict__ W, int splits, const float* __restrict__ bias, float* __restrict__ C, int M, int N, int ldc,
    int accumulate, int gelu)
{
    const long long total = (long long)M * N;
    for (long long e = (long long)blockIdx.x * 256 + threadIdx.x; e < total; e += (long long)gridDim.x * 256)
    {
        float v = 0.f;
        for (int z = 0; z < splits; z++) v += W[z * total + e];
        kv_gemm_store(C, ldc, (int)(e / N), (int)(e % N), v, 1.f, bias, gelu, accumulate);
    }
}

// Arguments as gemm_bf16 without GELU. Grid (ceil(N/128), ceil(M/128), batch), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_f32x3(
    const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
    int M, int N, int K, int lda, int ldb, int ldc, int transA, int transB,
    long long strideA, long long strideB, long long strideC, float alpha, int accumulate)
{
    __shared__ float As[2][GEMM_BM][G3X_KP];   // [buffer][m][k]
    __shared__ float Bs[2][GEMM_BN][G3X_KP];   // [buffer][n][k]: op(B) transposed, the "col" operand
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    const int transBt = !transB;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    float ra[G3X_LOADS], rb[G3X_LOADS];
    const int tiles = (K + G3X_BK - 1) / G3X_BK;
    if (tiles > 0)
    {
        g3x_load(A, transA, lda, m0, 0, M, K, ra);
        g3x_load(B, transBt, ldb, n0, 0, N, K, rb);
        g3x_store(ra, transA, As[0]);
        g3x_store(rb, transBt, Bs[0]);
    }
    __syncthreads();
    for (int kt = 0; kt < tiles; kt++)
    {
        const int cur = kt & 1;
        const bool more = kt + 1 < tiles;
        if (more)
        {
            g3x_load(A, transA, lda, m0, (kt + 1) * G3X_BK, M, K, ra);
            g3x_load(B, transBt, ldb, n0, (kt + 1) * G3X_BK, N, K, rb);
        }
#pragma unroll
        for (int ks = 0; ks < G3X_BK / 8; ks++)
        {
            const int k = ks * 8 + t;
            unsigned ah[4][4], al[4][4], bh[4][2], bl[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
            {
                int r = wm * 64 + mi * 16 + g;
                g3x_split(As[cur][r][k], ah[mi][0], al[mi][0]);
                g3x_split(As[cur][r + 8][k], ah[mi][1], al[mi][1]);
                g3x_split(As[cur][r][k + 4], ah[mi][2], al[mi][2]);
                g3x_split(As[cur][r + 8][k + 4], ah[mi][3], al[mi][3]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
            {
                int c = wn * 32 + ni * 8 + g;
                g3x_split(Bs[cur][c][k], bh[ni][0], bl[ni][0]);
                g3x_split(Bs[cur][c][k + 4], bh[ni][1], bl[ni][1]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                {
                    // small terms first
                    kv_mma_tf32(acc[mi][ni], al[mi][0], al[mi][1], al[mi][2], al[mi][3], bh[ni][0], bh[ni][1]);
                    kv_mma_tf32(acc[mi][ni], ah[mi][0], ah[mi][1], ah[mi][2], ah[mi][3], bl[ni][0], bl[ni][1]);
                    kv_mma_tf32(acc[mi][ni], ah[mi][0], ah[mi][1], ah[mi][2], ah[mi][3], bh[ni][0], bh[ni][1]);
                }
        }
        if (more)
        {
            g3x_store(ra, transA, As[cur ^ 1]);
            g3x_store(rb, transBt, Bs[cur ^ 1]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    int r = m0 + wm * 64 + mi * 16 + g + 8 * h;
                    int c = n0 + wn * 32 + ni * 8 + 2 * t + e;
                    if (r < M && c < N) kv_gemm_store(C, ldc, r, c, acc[mi][ni][2 * h + e], alpha, bias, 0, accumulate);
                }
}
