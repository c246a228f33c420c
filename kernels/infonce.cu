// Bidirectional InfoNCE (PAPER.md) for the Cuda backend: S = invT t v^T, loss = mean_i CE(S_i., i) + mean_j CE(S_.j, j),
// with the row and column log-sum-exps kept for the backward. S is computed in 64x64 tiles (f32 FMA: the scores are
// scaled by up to 1/0.005, so bf16 operands would cost ~1e-3 of the loss) and reduced in the tile: the forward never
// stores S; each tile writes per-row and per-column partial (max, sum of exp, off-diagonal mass), and a combine kernel
// merges them. Saturation-safe terms as CpuBackend: when the target is the row's max, the term is log1p(off-target mass)
// computed from that mass directly (lse - S_ii would cancel to rounding). The reference is ReferenceBackend.InfoNce.
//
// versions
//   1  forward: diag + tiles + combine + one-block f64 sum; backward: the gradient G = dloss invT / N (P_row + P_col
//      - 2 I) written tile by tile ([N, N] in device memory), its diagonal from the off-diagonal masses, then
//      dt += G v and dv += G^T t by the backend's f32 GEMM  (this file)    ran on the H100 (perf/results/h100-cuda-summary.md)
//   2  S = invT t v^T once on the tensor cores (gemm_f32x3), then the same tile statistics / gradient read from S
//      (infonce_stats_tiles, infonce_backward_tiles_of: bandwidth-bound), G in place over S, gradient GEMMs on
//      gemm_f32x3                                                        not yet run on a GPU
#include "kernelvl_cuda.h"

#define NCE_T 64        // tile edge
#define NCE_KC 32       // K chunk staged in shared memory
#define NCE_THREADS 256

// d[i] = invT t_i . v_i, bit for bit the S_ii of nce_tile (the same fma chain over k in order, then the same scaling),
// so that the combine's "is the target its line's max" test and the off-target masses see one value of S_ii: with a
// differently summed d, a target that is the max could test below it by an ulp and take lse - d, whose cancellation
// cost 2e-4 of small losses (N 2, loss 0.011). One thread per row (a serial chain of dim fma, its loads independent
// of it and unrolled ahead; each row's lines stay in L1 between the warp's steps). t, v [n, dim] -> d [n]. Grid
// ceil(n / 32) blocks of 32 threads, so that rows spread over the SMs (any block size works).
extern "C" __global__ void infonce_diag(const float* __restrict__ t, const float* __restrict__ v, int n, int dim, float invT,
                                        float* __restrict__ d)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* ti = t + (long long)i * dim;
    const float* vi = v + (long long)i * dim;
    float s = 0.f;
#pragma unroll 8
    for (int c = 0; c < dim; c++) s = kv_fma(ti[c], vi[c], s);
    d[i] = s * invT;
}

// The 64x64 tile (i0, j0) of S = invT t v^T into st (rows outside n hold garbage and must not be read). 256 threads,
// each 4x4 values; K in chunks of 32 staged transposed (ts[k][row]) so the inner loop reads broadcast-friendly columns.
static __device__ void nce_tile(const float* __restrict__ t, const float* __restrict__ v, int n, int dim, float invT, int i0, int j0,
                                float (*ts)[NCE_T + 1], float (*vs)[NCE_T + 1], float (*st)[NCE_T + 1])
{
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
    for (int k0 = 0; k0 < dim; k0 += NCE_KC)
    {
        __syncthreads();
        for (int e = threadIdx.x; e < NCE_T * NCE_KC; e += NCE_THREADS)
        {
            int kk = e % NCE_KC, r = e / NCE_KC, k = k0 + kk;
            ts[kk][r] = i0 + r < n && k < dim ? t[(long long)(i0 + r) * dim + k] : 0.f;
            vs[kk][r] = j0 + r < n && k < dim ? v[(long long)(j0 + r) * dim + k] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < NCE_KC; kk++)
        {
            float a[4], b[4];
#pragma unroll
            for (int x = 0; x < 4; x++) { a[x] = ts[kk][ty * 4 + x]; b[x] = vs[kk][tx * 4 + x]; }
#pragma unroll
            for (int x = 0; x < 4; x++)
#pragma unroll
                for (int y = 0; y < 4; y++) acc[x][y] = kv_fma(a[x], b[y], acc[x][y]);   // infonce_diag repeats this chain
        }
    }
#pragma unroll
    for (int x = 0; x < 4; x++)
#pragma unroll
        for (int y = 0; y < 4; y++) st[ty * 4 + x][tx * 4 + y] = acc[x][y] * invT;
    __syncthreads();
}

// One row or column of a tile (count values at p, p + stride, ...; the target at position target, which may lie outside
// the tile): its max, sum of exp(x - max), and off-target mass sum of exp(x - dt), written at out[o].
static __device__ void nce_line_stats(const float* p, int stride, int count, int target, float dt, long long o,
                                      float* __restrict__ outM, float* __restrict__ outS, float* __restrict__ outOff)
{
    float mx = -KV_INF;
    for (int c = 0; c < count; c++) mx = kv_max(mx, p[c * stride]);
    float s = 0.f, off = 0.f;
    for (int c = 0; c < count; c++)
    {
        float x = p[c * stride];
        s += kv_exp(x - mx);
        if (c != target) off += kv_exp(x - dt);
    }
    outM[o] = mx; outS[o] = s; outOff[o] = off;
}

// The row and column statistics of the tile (i0, j0) held in st, as nce_line_stats: for each row i of the tile, over its
// columns, rowM = max, rowS = sum exp(S - rowM), rowOff = sum over j != i of exp(S_ij - d_i); the same for each column.
// Partials are [nb, n]: rowX[jb * n + i], colX[ib * n + j], jb = blockIdx.x, ib = blockIdx.y (the tile grid). 256 threads.
static __device__ __forceinline__ void nce_tile_stats(float (*st)[NCE_T + 1], const float* __restrict__ d, int n, int i0, int j0,
                                                      float* __restrict__ rowM, float* __restrict__ rowS, float* __restrict__ rowOff,
                                                      float* __restrict__ colM, float* __restrict__ colS, float* __restrict__ colOff)
{
    const int rows = kv_imin(NCE_T, n - i0), cols = kv_imin(NCE_T, n - j0);
    const int x = threadIdx.x;
    if (x < NCE_T && x < rows)   // row i = i0 + x over the tile's columns; the target column is i
        nce_line_stats(&st[x][0], 1, cols, i0 + x - j0, d[i0 + x], (long long)blockIdx.x * n + i0 + x, rowM, rowS, rowOff);
    else if (x >= NCE_T && x < NCE_T + cols)   // column j = j0 + c over the tile's rows; the target row is j
        nce_line_stats(&st[0][x - NCE_T], NCE_T + 1, rows, j0 + x - NCE_T - i0, d[j0 + x - NCE_T], (long long)blockIdx.y * n + j0 + x - NCE_T,
                       colM, colS, colOff);
}

// Per tile (blockIdx.y = row block ib, blockIdx.x = column block jb): S computed, then nce_tile_stats.
// Grid (nb, nb), 256 threads.
extern "C" __global__ void __launch_bounds__(NCE_THREADS) infonce_forward_tiles(
    const float* __restrict__ t, const float* __restrict__ v, const float* __restrict__ d, int n, int dim, float invT,
    float* __restrict__ rowM, float* __restrict__ rowS, float* __restrict__ rowOff,
    float* __restrict__ colM, float* __restrict__ colS, float* __restrict__ colOff)
{
    __shared__ float ts[NCE_KC][NCE_T + 1], vs[NCE_KC][NCE_T + 1], st[NCE_T][NCE_T + 1];
    const int i0 = blockIdx.y * NCE_T, j0 = blockIdx.x * NCE_T;
    nce_tile(t, v, n, dim, invT, i0, j0, ts, vs, st);
    nce_tile_stats(st, d, n, i0, j0, rowM, rowS, rowOff, colM, colS, colOff);
}

// log(1 + x) for x >= 0 with small relative error also for tiny x (lg2.approx is only accurate in absolute terms).
static __device__ __forceinline__ float nce_log1p(float x)
{
    if (x < 0.03125f)
    {
        // x - x^2/2 + ... + x^7/7 (Horner): the first omitted term is below 2^-40 x.
        float p = 1.f / 7;
        p = 1.f / 6 - x * p; p = 1.f / 5 - x * p; p = 0.25f - x * p; p = 1.f / 3 - x * p; p = 0.5f - x * p; p = 1.f - x * p;
        return x * p;
    }
    return kv_log(1.f + x);
}

// Merges the nb partials of each row (dir 0, thread i) and column (dir 1, thread n + i): lse, and the loss term
// lse - d when the target is not the max, else log1p(off). terms [2n]. Grid ceil(2n / 256), 256 threads.
extern "C" __global__ void infonce_combine(const float* __restrict__ d, const float* __restrict__ rowM, const float* __restrict__ rowS,
                                           const float* __restrict__ rowOff, const float* __restrict__ colM, const float* __restrict__ colS,
                                           const float* __restrict__ colOff, int n, int nb,
                                           float* __restrict__ lseRow, float* __restrict__ lseCol, float* __restrict__ terms)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= 2 * n) return;
    int dir = e >= n, i = dir ? e - n : e;
    const float* pm = dir ? colM : rowM;
    const float* ps = dir ? colS : rowS;
    const float* po = dir ? colOff : rowOff;
    float mx = -KV_INF;
    for (int b = 0; b < nb; b++) mx = kv_max(mx, pm[(long long)b * n + i]);
    float s = 0.f, off = 0.f;
    for (int b = 0; b < nb; b++)
    {
        long long o = (long long)b * n + i;
        s += ps[o] * kv_exp(pm[o] - mx);
        off += po[o];
    }
    float ls = kv_log(s), l = mx + ls;
    (dir ? lseCol : lseRow)[i] = l;
    float di = d[i];
    // lse - d as (max - d) + log(sum): without rounding lse (~|S|) first, whose ulp is large against a small term.
    terms[e] = di < mx ? (mx - di) + ls : nce_log1p(off);
}

// y[0] = scale * sum of x[0..count): one block of 1024 threads, f64 partial sums (deterministic, no atomics).
extern "C" __global__ void __launch_bounds__(1024) sum_scaled_f64(const float* __restrict__ x, int count, float scale, float* __restrict__ y)
{
    __shared__ double red[1024];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += x[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1)
    {
        if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) y[0] = (float)(red[0] * scale);
}

// The gradient of the tile (i0, j0) held in st: G_ij = gs (exp(S_ij - lseRow_i) + exp(S_ij - lseCol_j)) off the
// diagonal, gs = dloss[0] * invT / n, and the tile's off-diagonal masses rowOffP[jb * n + i] = sum_j exp(S_ij - lseRow_i),
// colOffP[ib * n + j] likewise. G [n, n]; G_ii is left for infonce_backward_diag. 256 threads.
static __device__ __forceinline__ void nce_tile_grad(float (*st)[NCE_T + 1], const float* __restrict__ lseRow, const float* __restrict__ lseCol,
                                                     const float* __restrict__ dloss, int n, float invT, int i0, int j0, float* G,
                                                     float* __restrict__ rowOffP, float* __restrict__ colOffP)
{
    const int rows = kv_imin(NCE_T, n - i0), cols = kv_imin(NCE_T, n - j0);
    const float gs = dloss[0] * invT / n;
    for (int e = threadIdx.x; e < NCE_T * NCE_T; e += NCE_THREADS)
    {
        int r = e / NCE_T, c = e % NCE_T, i = i0 + r, j = j0 + c;
        if (r >= rows || c >= cols || i == j) continue;
        float x = st[r][c];
        G[(long long)i * n + j] = gs * (kv_exp(x - lseRow[i]) + kv_exp(x - lseCol[j]));
    }
    const int x = threadIdx.x;
    if (x < NCE_T && x < rows)
    {
        int i = i0 + x;
        float off = 0.f, l = lseRow[i];
        for (int c = 0; c < cols; c++)
            if (j0 + c != i) off += kv_exp(st[x][c] - l);
        rowOffP[(long long)blockIdx.x * n + i] = off;
    }
    else if (x >= NCE_T && x < NCE_T + cols)
    {
        int c = x - NCE_T, j = j0 + c;
        float off = 0.f, l = lseCol[j];
        for (int r = 0; r < rows; r++)
            if (i0 + r != j) off += kv_exp(st[r][c] - l);
        colOffP[(long long)blockIdx.y * n + j] = off;
    }
}

// Backward tile: S recomputed, then nce_tile_grad. G [n, n]. Grid (nb, nb), 256 threads.
extern "C" __global__ void __launch_bounds__(NCE_THREADS) infonce_backward_tiles(
    const float* __restrict__ t, const float* __restrict__ v, const float* __restrict__ lseRow, const float* __restrict__ lseCol,
    const float* __restrict__ dloss, int n, int dim, float invT, float* __restrict__ G,
    float* __restrict__ rowOffP, float* __restrict__ colOffP)
{
    __shared__ float ts[NCE_KC][NCE_T + 1], vs[NCE_KC][NCE_T + 1], st[NCE_T][NCE_T + 1];
    const int i0 = blockIdx.y * NCE_T, j0 = blockIdx.x * NCE_T;
    nce_tile(t, v, n, dim, invT, i0, j0, ts, vs, st);
    nce_tile_grad(st, lseRow, lseCol, dloss, n, invT, i0, j0, G, rowOffP, colOffP);
}

// G_ii = -gs (row off-diagonal mass + column off-diagonal mass) = gs (p_ii - 1 + q_ii - 1) without the cancellation.
// Grid ceil(n / 256), 256 threads.
extern "C" __global__ void infonce_backward_diag(const float* __restrict__ rowOffP, const float* __restrict__ colOffP,
                                                 const float* __restrict__ dloss, int n, int nb, float invT, float* __restrict__ G)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float off = 0.f;
    for (int b = 0; b < nb; b++) off += rowOffP[(long long)b * n + i] + colOffP[(long long)b * n + i];
    G[(long long)i * n + i] = -(dloss[0] * invT / n) * off;
}

// ======================================================================================================================
// Version 2: S on the tensor cores, the loss a bandwidth-bound pass over it. The backend computes S = invT t v^T
// [n, n] once with gemm.cu's gemm_f32x3 (3xTF32, f32-accurate; 3 x 2 n^2 dim tf32 FLOPs instead of 2 n^2 dim f32 FMA
// ones); the kernels below read it in the 64x64 tiles of version 1 and run version 1's per-tile statistics and gradient
// on them (nce_tile_stats, nce_tile_grad): one read of S for the loss; one read and one write for G, in place (each
// block reads its own tile into shared memory before writing G over it). d = S_ii is read from S itself, so the
// target-is-max test sees exactly the values the statistics do. The combine, sum and diagonal kernels are version 1's.
// Not yet run on a GPU: the host emulator (kernels/emu) checks the chain against f64.
// ======================================================================================================================

// The tile (i0, j0) of S [n, n] into st (cells outside n are not written and not read later). 256 threads; each warp
// reads 32 consecutive floats of a row.
static __device__ __forceinline__ void nce_load_tile(const float* S, int n, int i0, int j0, float (*st)[NCE_T + 1])
{
    for (int e = threadIdx.x; e < NCE_T * NCE_T; e += NCE_THREADS)
    {
        int r = e / NCE_T, c = e % NCE_T;
        if (i0 + r < n && j0 + c < n) st[r][c] = S[(long long)(i0 + r) * n + j0 + c];
    }
    __syncthreads();
}

// d[i] = S[i, i]. S [n, n], d [n]. Grid ceil(n / 256), 256 threads.
extern "C" __global__ void infonce_diag_of(const float* __restrict__ S, int n, float* __restrict__ d)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d[i] = S[(long long)i * n + i];
}

// Version 2 forward: the per-tile partials of infonce_forward_tiles from S [n, n] (already scaled by invT).
// Grid (nb, nb), 256 threads.
extern "C" __global__ void __launch_bounds__(NCE_THREADS) infonce_stats_tiles(
    const float* __restrict__ S, const float* __restrict__ d, int n,
    float* __restrict__ rowM, float* __restrict__ rowS, float* __restrict__ rowOff,
    float* __restrict__ colM, float* __restrict__ colS, float* __restrict__ colOff)
{
    __shared__ float st[NCE_T][NCE_T + 1];
    const int i0 = blockIdx.y * NCE_T, j0 = blockIdx.x * NCE_T;
    nce_load_tile(S, n, i0, j0, st);
    nce_tile_stats(st, d, n, i0, j0, rowM, rowS, rowOff, colM, colS, colOff);
}

// Version 2 backward: SG [n, n] holds S on entry and G off the diagonal on exit (as infonce_backward_tiles writes it;
// infonce_backward_diag then writes the diagonal). Grid (nb, nb), 256 threads.
extern "C" __global__ void __launch_bounds__(NCE_THREADS) infonce_backward_tiles_of(
    float* SG, const float* __restrict__ lseRow, const float* __restrict__ lseCol, const float* __restrict__ dloss, int n, float invT,
    float* __restrict__ rowOffP, float* __restrict__ colOffP)
{
    __shared__ float st[NCE_T][NCE_T + 1];
    const int i0 = blockIdx.y * NCE_T, j0 = blockIdx.x * NCE_T;
    nce_load_tile(SG, n, i0, j0, st);
    nce_tile_grad(st, lseRow, lseCol, dloss, n, invT, i0, j0, SG, rowOffP, colOffP);
}
