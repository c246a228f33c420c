// Fused attention forward (flash style) for the Cuda backend, head dim 64: o = softmax(scale q k^T + mask) v and the
// row log-sum-exp, without a [Tq, Tk] matrix. QK^T and PV run on the tensor cores (bf16 operands rounded from the f32
// tensors, f32 accumulation); the online softmax is f32 in log2 units. Key-padding mask i32 [B, Tk], nonzero = keep;
// a row whose keys are all masked gets o = 0 and lse = -inf (the contract). The reference is
// ReferenceBackend.Attention; the parity registry checks it on a GPU (odd Tq/Tk, masks, fully masked rows).
//
// versions
//   1  4 warps x 16 query rows per block, key tiles of 64 staged as bf16 (K row-major, V transposed), S fragments
//      re-used as the A operand of PV (FlashAttention-2's register trick), any Tq/Tk with edge guards  (this file)
//      not yet run on a GPU
#include "kernelvl_cuda.h"
#include "attention_common.h"

#define ATT_WARPS 4
#define ATT_Q (ATT_WARPS * 16)   // query rows per block
#define ATT_K 64                 // keys per tile
#define ATT_DWP (ATT_D / 2 + 4)  // words per K row (bf16 pairs along d), padded: row stride 36 words = 4 banks apart
#define ATT_KWP (ATT_K / 2 + 4)  // words per Vt row (bf16 pairs along keys), padded the same way

// q [B, H, Tq, 64], k and v [B, H, Tk, 64], mask i32 [B, Tk] or null -> o [B, H, Tq, 64], lse [B, H, Tq].
// Grid (ceil(Tq / 64), B * H), 128 threads.
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) attention_forward_d64(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const int* __restrict__ mask,
    int H, int Tq, int Tk, float scale, float* __restrict__ o, float* __restrict__ lse)
{
    __shared__ unsigned Ks[ATT_K][ATT_DWP];   // [key][d pair]: the "col" B operand of S = Q K^T (n = key, k = d)
    __shared__ unsigned Vt[ATT_D][ATT_KWP];   // [d][key pair]: the "col" B operand of O = P V (n = d, k = key)
    __shared__ float kbias[ATT_K];            // 0 for a key that counts, -inf for a masked or missing one
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / H);
    const float* qb = q + bh * Tq * ATT_D;
    const float* kb = k + bh * Tk * ATT_D;
    const float* vb = v + bh * Tk * ATT_D;
    const int r0 = blockIdx.x * ATT_Q + warp * 16 + g, r1 = r0 + 8;   // this thread's two query rows
    const float NEG_INF = -KV_INF;

    // Q fragments (A operand, 16 rows x 64 d = 4 k-steps), kept in registers for the whole key loop.
    unsigned qa[4][4];
#pragma unroll
    for (int s = 0; s < 4; s++)
    {
        int d = s * 16 + 2 * t;
        float x00 = r0 < Tq ? qb[(long long)r0 * ATT_D + d] : 0.f, x01 = r0 < Tq ? qb[(long long)r0 * ATT_D + d + 1] : 0.f;
        float x10 = r1 < Tq ? qb[(long long)r1 * ATT_D + d] : 0.f, x11 = r1 < Tq ? qb[(long long)r1 * ATT_D + d + 1] : 0.f;
        float x02 = r0 < Tq ? qb[(long long)r0 * ATT_D + d + 8] : 0.f, x03 = r0 < Tq ? qb[(long long)r0 * ATT_D + d + 9] : 0.f;
        float x12 = r1 < Tq ? qb[(long long)r1 * ATT_D + d + 8] : 0.f, x13 = r1 < Tq ? qb[(long long)r1 * ATT_D + d + 9] : 0.f;
        qa[s][0] = kv_pack_bf16(x00, x01);
        qa[s][1] = kv_pack_bf16(x10, x11);
        qa[s][2] = kv_pack_bf16(x02, x03);
        qa[s][3] = kv_pack_bf16(x12, x13);
    }

    float oacc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) oacc[i][e] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF;   // running row max (log2 units)
    float l0 = 0.f, l1 = 0.f;           // this thread's part of the running row sum
    const float sl2 = scale * KV_LOG2E;

    for (int j0 = 0; j0 < Tk; j0 += ATT_K)
    {
        __syncthreads();   // every warp is done with the previous tile
        for (int e = tid; e < ATT_K * (ATT_D / 2); e += ATT_WARPS * 32)
        {
            int kk = e / (ATT_D / 2), w = e % (ATT_D / 2), key = j0 + kk;
            float x0 = key < Tk ? kb[(long long)key * ATT_D + 2 * w] : 0.f;
            float x1 = key < Tk ? kb[(long long)key * ATT_D + 2 * w + 1] : 0.f;
            Ks[kk][w] = kv_pack_bf16(x0, x1);
        }
        for (int e = tid; e < ATT_D * (ATT_K / 2); e += ATT_WARPS * 32)
        {
            int d = e % ATT_D, kp = e / ATT_D, key = j0 + 2 * kp;
            float x0 = key < Tk ? vb[(long long)key * ATT_D + d] : 0.f;
            float x1 = key + 1 < Tk ? vb[(long long)(key + 1) * ATT_D + d] : 0.f;
            Vt[d][kp] = kv_pack_bf16(x0, x1);
        }
        for (int e = tid; e < ATT_K; e += ATT_WARPS * 32)
        {
            int key = j0 + e;
            kbias[e] = key < Tk && (mask == 0 || mask[(long long)b * Tk + key] != 0) ? 0.f : NEG_INF;
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x 64 keys: 8 tiles of 8 keys.
        float s[8][4];
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
        {
#pragma unroll
            for (int e = 0; e < 4; e++) s[ni][e] = 0.f;
#pragma unroll
            for (int ks = 0; ks < 4; ks++)
            {
                int c = ni * 8 + g, w = ks * 8 + t;
                kv_mma_bf16(s[ni], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], Ks[c][w], Ks[c][w + 4]);
            }
        }
        // Scaled into log2 units, masked, and the tile's row max over the quad that shares the rows.
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                float kbv = kbias[ni * 8 + 2 * t + e];
                s[ni][e] = s[ni][e] * sl2 + kbv;
                s[ni][2 + e] = s[ni][2 + e] * sl2 + kbv;
                mx0 = kv_max(mx0, s[ni][e]);
                mx1 = kv_max(mx1, s[ni][2 + e]);
            }
        mx0 = kv_max(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = kv_max(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = kv_max(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = kv_max(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        float n0 = kv_max(m0, mx0), n1 = kv_max(m1, mx1);
        // While a row has seen only masked keys its max is -inf: exponents are taken against 0 then, so that
        // exp2(-inf - 0) = 0 rather than exp2(-inf + inf) = NaN.
        float base0 = n0 == NEG_INF ? 0.f : n0, base1 = n1 == NEG_INF ? 0.f : n1;
        float alpha0 = kv_exp2(m0 - base0), alpha1 = kv_exp2(m1 - base1);
        m0 = n0;
        m1 = n1;
        l0 *= alpha0;
        l1 *= alpha1;
#pragma unroll
        for (int nd = 0; nd < 8; nd++)
        {
            oacc[nd][0] *= alpha0; oacc[nd][1] *= alpha0;
            oacc[nd][2] *= alpha1; oacc[nd][3] *= alpha1;
        }
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
        {
            s[ni][0] = kv_exp2(s[ni][0] - base0); s[ni][1] = kv_exp2(s[ni][1] - base0);
            s[ni][2] = kv_exp2(s[ni][2] - base1); s[ni][3] = kv_exp2(s[ni][3] - base1);
            l0 += s[ni][0] + s[ni][1];
            l1 += s[ni][2] + s[ni][3];
        }
        // O += P V: the accumulator layout of S tiles 2kk and 2kk+1 is the A-operand layout of keys kk*16 .. kk*16+15.
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            unsigned a0 = kv_pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            unsigned a1 = kv_pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            unsigned a2 = kv_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            unsigned a3 = kv_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int nd = 0; nd < 8; nd++)
            {
                int c = nd * 8 + g, w = kk * 8 + t;
                kv_mma_bf16(oacc[nd], a0, a1, a2, a3, Vt[c][w], Vt[c][w + 4]);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float inv0 = l0 > 0.f ? kv_rcp(l0) : 0.f, inv1 = l1 > 0.f ? kv_rcp(l1) : 0.f;
    float* ob = o + bh * Tq * ATT_D;
#pragma unroll
    for (int nd = 0; nd < 8; nd++)
#pragma unroll
        for (int e = 0; e < 2; e++)
        {
            int d = nd * 8 + 2 * t + e;
            if (r0 < Tq) ob[(long long)r0 * ATT_D + d] = oacc[nd][e] * inv0;
            if (r1 < Tq) ob[(long long)r1 * ATT_D + d] = oacc[nd][2 + e] * inv1;
        }
    if (t == 0)
    {
        if (r0 < Tq) lse[bh * Tq + r0] = l0 > 0.f ? (m0 + kv_log2(l0)) * KV_LN2 : NEG_INF;
        if (r1 < Tq) lse[bh * Tq + r1] = l1 > 0.f ? (m1 + kv_log2(l1)) * KV_LN2 : NEG_INF;
    }
}

// ======================================================================================================================
// Version 2 (D = 64, for long sequences): 8 warps x 16 query rows = 128 rows a block (half the K/V staging per query
// of version 1); the next key tile's f32 K, V and mask are loaded into registers (16-byte loads) while the current
// tile is multiplied, then rounded and stored into the other of two shared buffers; K and V both kept row-major as
// bf16 in 128-byte XOR-swizzled rows, read with ldmatrix (V with .trans: no transposing stores). Softmax as version 1.
// Needs 16-byte-aligned k and v. The cuda backend runs it with AttentionVersion 2 (KERNELVL_CUDA_ATTENTION=2).
// Not yet run on a GPU: ptxas (sm_90) accepts it, the host emulator (kernels/emu) checks it against f64; on a GPU,
// parity is the registry's attention cases with KERNELVL_CUDA_ATTENTION=2 (perf/gpu/run-v2.sh).
// ======================================================================================================================
// Version 2's Q fragments, tile loads, softmax and output are attention_common.h's (shared with gemm_sm90.cu's
// version 3). Version 1 above keeps its own inline copy of the same code: it is the version that has run on a GPU, and
// its register allocation (128 registers, 4 blocks per multiprocessor) changes when it calls these; it moves onto them
// when version 2 has been measured and one of the two is retired.
#define ATT2_WARPS 8
#define ATT2_Q (ATT2_WARPS * 16)
#define ATT2_K ATT_TILE_K


// acc[8][4] += A (16 rows x 64, fragments a) B^T with B 64 rows x 64 in a swizzled bf16 stage: acc columns = B's rows.
static __device__ __forceinline__ void att_mm_rows(const unsigned (*a)[4], kv_saddr bs, float (*acc)[4])
{
    const int lane = threadIdx.x & 31, lr = lane & 7, lj = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++)
        {
            unsigned b0, b1, b2, b3;
            kv_ldmatrix_x4(bs + kv_swz128(np * 16 + lr + ((lj >> 1) << 3), 2 * kk + (lj & 1)), b0, b1, b2, b3);
            kv_mma_bf16(acc[2 * np], a[kk][0], a[kk][1], a[kk][2], a[kk][3], b0, b1);
            kv_mma_bf16(acc[2 * np + 1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], b2, b3);
        }
}

// out[8][4] += P (16 rows x 64, the accumulator layout of p, rounded to bf16) B with B 64 rows (the reduction) x 64
// columns in a swizzled bf16 stage (read transposed).
static __device__ __forceinline__ void att_mm_acc_trans(float (*p)[4], kv_saddr bs, float (*out)[4])
{
    const int lane = threadIdx.x & 31, lr = lane & 7, lj = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
    {
        unsigned a0 = kv_pack_bf16(p[2 * kk][0], p[2 * kk][1]);
        unsigned a1 = kv_pack_bf16(p[2 * kk][2], p[2 * kk][3]);
        unsigned a2 = kv_pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        unsigned a3 = kv_pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < 4; np++)
        {
            unsigned b0, b1, b2, b3;
            kv_ldmatrix_x4_trans(bs + kv_swz128(kk * 16 + lr + ((lj & 1) << 3), 2 * np + (lj >> 1)), b0, b1, b2, b3);
            kv_mma_bf16(out[2 * np], a0, a1, a2, a3, b0, b1);
            kv_mma_bf16(out[2 * np + 1], a0, a1, a2, a3, b2, b3);
        }
    }
}

// q [B, H, Tq, 64], k and v [B, H, Tk, 64], mask i32 [B, Tk] or null -> o [B, H, Tq, 64], lse [B, H, Tq].
// Grid (ceil(Tq / 128), B * H), 256 threads.
extern "C" __global__ void __launch_bounds__(ATT2_WARPS * 32) attention_forward_d64_v2(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const int* __restrict__ mask,
    int H, int Tq, int Tk, float scale, float* __restrict__ o, float* __restrict__ lse)
{
    __shared__ __attribute__((aligned(128))) unsigned char Ks[2][ATT2_K * 128];   // [key][d], bf16, swizzled
    __shared__ __attribute__((aligned(128))) unsigned char Vs[2][ATT2_K * 128];   // [key][d], bf16, swizzled
    __shared__ float kbias[2][ATT2_K];                                            // 0 for a key that counts, -inf else
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / H);
    const float* qb = q + bh * Tq * ATT_D;
    const float* kb = k + bh * Tk * ATT_D;
    const float* vb = v + bh * Tk * ATT_D;
    const int r0 = blockIdx.x * ATT2_Q + warp * 16 + g, r1 = r0 + 8;
    const float NEG_INF = -KV_INF;

    unsigned qa[4][4];   // Q fragments, kept in registers for the whole key loop
    att_load_q(qb, r0, r1, Tq, t, qa);

    // This thread's share of a tile: chunks tid and tid + 256 of 512 (key = chunk / 8, d = 8 (chunk % 8) .. +7) of K
    // and of V, and the mask of key tid (tid < 64).
    float pk[2][8], pv[2][8];
    float pbias = 0.f;
    auto fetch = [&](int j0) { att_fetch_tile(kb, vb, mask, b, Tk, j0, tid, pk, pv, pbias); };
    auto stash = [&](int buf) {
        const kv_saddr ks = kv_smem(Ks[buf]), vs = kv_smem(Vs[buf]);
#pragma unroll
        for (int i = 0; i < 2; i++)
        {
            int e = tid + i * 256, key = e >> 3, c = e & 7;
            kv_st_shared16(ks + kv_swz128(key, c), kv_pack_bf16(pk[i][0], pk[i][1]), kv_pack_bf16(pk[i][2], pk[i][3]),
                      kv_pack_bf16(pk[i][4], pk[i][5]), kv_pack_bf16(pk[i][6], pk[i][7]));
            kv_st_shared16(vs + kv_swz128(key, c), kv_pack_bf16(pv[i][0], pv[i][1]), kv_pack_bf16(pv[i][2], pv[i][3]),
                      kv_pack_bf16(pv[i][4], pv[i][5]), kv_pack_bf16(pv[i][6], pv[i][7]));
        }
        if (tid < ATT2_K) kbias[buf][tid] = pbias;
    };

    float oacc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) oacc[i][e] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * KV_LOG2E;

    fetch(0);
    stash(0);
    __syncthreads();
    int cur = 0;
    for (int j0 = 0; j0 < Tk; j0 += ATT2_K)
    {
        const bool more = j0 + ATT2_K < Tk;
        if (more) fetch(j0 + ATT2_K);   // in flight while this tile is multiplied
        const kv_saddr ks = kv_smem(Ks[cur]), vs = kv_smem(Vs[cur]);

        float s[8][4];
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[ni][e] = 0.f;
        att_mm_rows(qa, ks, s);   // S = Q K^T for this warp's 16 rows x 64 keys
        att_softmax_tile(s, kbias[cur], sl2, t, m0, m1, l0, l1, oacc);
        att_mm_acc_trans(s, vs, oacc);   // O += P V
        if (more) stash(cur ^ 1);   // the other buffer was last read before the barrier that ended the previous tile
        __syncthreads();
        cur ^= 1;
    }

    att_store(o + bh * Tq * ATT_D, lse + bh * Tq, r0, r1, Tq, t, m0, m1, l0, l1, oacc);
}

// ======================================================================================================================
// Backward (D = 64), FlashAttention-2 style without atomics: the contract accumulates dq += , dk += , dv += .
//   attention_backward_delta     delta_i = sum_d dO_i o_i
//   attention_backward_dkdv_d64  a block per 64 keys (4 warps x 16), over query tiles of 64: S^T = K Q^T,
//                                P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//                                dK += scale dS^T Q
//   attention_backward_dq_d64    a block per 64 queries, over key tiles: S = Q K^T, P, dP = dO V^T,
//                                dS = P (dP - delta), dQ += scale dS K
// Operands bf16 on mma.sync (f32 accumulation): K/V or Q/dO rows of the warp as A fragments in registers, the other
// side staged as bf16 128-byte swizzled rows, read with ldmatrix (.trans where the reduction runs along the rows).
// Masked keys and rows whose keys are all masked (lse = -inf) contribute nothing.
// Not yet run on a GPU: the host emulator (kernels/emu) checks it against f64; opt-in (KERNELVL_CUDA_ATTENTION_BACKWARD=2).
// ======================================================================================================================

// Rows row0 .. row0 + 63 of src [T, 64] f32 -> a swizzled bf16 stage (rows >= T zero). 128 threads, 4 chunks each.
static __device__ __forceinline__ void att_stage64(kv_saddr s, const float* __restrict__ src, int row0, int T)
{
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int e = threadIdx.x + i * 128, r = e >> 3, c = e & 7, row = row0 + r;
        const float* x = src + (long long)row * ATT_D + c * 8;
        bool ok = row < T;
        kv_st_shared16(s + kv_swz128(r, c),
                       kv_pack_bf16(ok ? x[0] : 0.f, ok ? x[1] : 0.f), kv_pack_bf16(ok ? x[2] : 0.f, ok ? x[3] : 0.f),
                       kv_pack_bf16(ok ? x[4] : 0.f, ok ? x[5] : 0.f), kv_pack_bf16(ok ? x[6] : 0.f, ok ? x[7] : 0.f));
    }
}

// out[8][4] (rows r0, r1 of this thread x 64 d) added into dst [T, 64] times s.
static __device__ __forceinline__ void att_add_rows(float* __restrict__ dst, int r0, int r1, int T, int t, float s, float (*acc)[4])
{
#pragma unroll
    for (int nd = 0; nd < 8; nd++)
#pragma unroll
        for (int e = 0; e < 2; e++)
        {
            int d = nd * 8 + 2 * t + e;
            if (r0 < T) dst[(long long)r0 * ATT_D + d] += s * acc[nd][e];
            if (r1 < T) dst[(long long)r1 * ATT_D + d] += s * acc[nd][2 + e];
        }
}

// delta [rows] = sum_d dO o over rows of 64. A warp per row; grid ceil(rows / 8), 256 threads.
// dO rounded to bf16 as the dP products see it: dS = P (dP - delta) cancels to nothing where P is concentrated on one
// key (dP = dO v, o = v), and only does so when both sides use the same dO (an f32 dO here left an error of ~2^-9 |dO||v|
// per query in such a key's dK, over the bf16 budget against the tensor's other gradients).
extern "C" __global__ void attention_backward_delta(const float* __restrict__ o, const float* __restrict__ dO, long long rows, float* __restrict__ delta)
{
    long long row = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = o[row * ATT_D + lane] * kv_round_bf16(dO[row * ATT_D + lane]) + o[row * ATT_D + lane + 32] * kv_round_bf16(dO[row * ATT_D + lane + 32]);
    s = kv_warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// q, o, dO [B, H, Tq, 64]; k, v [B, H, Tk, 64]; mask i32 [B, Tk] or null; lse, delta [B, H, Tq] -> dk, dv += .
// Grid (ceil(Tk / 64), B * H), 128 threads.
extern "C" __global__ void __launch_bounds__(128) attention_backward_dkdv_d64(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const int* __restrict__ mask,
    const float* __restrict__ lse, const float* __restrict__ delta, const float* __restrict__ dO,
    int H, int Tq, int Tk, float scale, float* __restrict__ dk, float* __restrict__ dv)
{
    __shared__ __attribute__((aligned(128))) unsigned char Qs[64 * 128], Ds[64 * 128];   // Q and dO rows, bf16 swizzled
    __shared__ float lse_s[64], del_s[64];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / H);
    const float* qb = q + bh * Tq * ATT_D;
    const float* kb = k + bh * Tk * ATT_D;
    const float* vb = v + bh * Tk * ATT_D;
    const float* db = dO + bh * Tq * ATT_D;
    const int r0 = blockIdx.x * 64 + warp * 16 + g, r1 = r0 + 8;   // this thread's two keys
    const bool keep0 = r0 < Tk && (mask == 0 || mask[(long long)b * Tk + r0] != 0);
    const bool keep1 = r1 < Tk && (mask == 0 || mask[(long long)b * Tk + r1] != 0);
    const float NEG_INF = -KV_INF, sl2 = scale * KV_LOG2E;
    unsigned ka[4][4], va[4][4];
    att_load_q(kb, r0, r1, Tk, t, ka);
    att_load_q(vb, r0, r1, Tk, t, va);
    float dka[8][4], dva[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) { dka[i][e] = 0.f; dva[i][e] = 0.f; }
    const kv_saddr qs = kv_smem(Qs), ds = kv_smem(Ds);
    for (int q0 = 0; q0 < Tq; q0 += 64)
    {
        __syncthreads();   // the previous tile is no longer read
        att_stage64(qs, qb, q0, Tq);
        att_stage64(ds, db, q0, Tq);
        if (tid < 64)
        {
            int qi = q0 + tid;
            lse_s[tid] = qi < Tq ? lse[bh * Tq + qi] : NEG_INF;
            del_s[tid] = qi < Tq ? delta[bh * Tq + qi] : 0.f;
        }
        __syncthreads();
        float p[8][4], dp[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) { p[i][e] = 0.f; dp[i][e] = 0.f; }
        att_mm_rows(ka, qs, p);   // S^T: rows = keys, columns = queries
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                float l = lse_s[ni * 8 + 2 * t + (e & 1)];
                bool keep = (e >> 1) ? keep1 : keep0;
                p[ni][e] = keep && l != NEG_INF ? kv_exp2(p[ni][e] * sl2 - l * KV_LOG2E) : 0.f;
            }
        att_mm_acc_trans(p, ds, dva);   // dV += P^T dO
        att_mm_rows(va, ds, dp);        // dP^T = V dO^T
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) p[ni][e] *= dp[ni][e] - del_s[ni * 8 + 2 * t + (e & 1)];   // dS^T
        att_mm_acc_trans(p, qs, dka);   // dK += dS^T Q (scaled below)
    }
    att_add_rows(dk + bh * Tk * ATT_D, r0, r1, Tk, t, scale, dka);
    att_add_rows(dv + bh * Tk * ATT_D, r0, r1, Tk, t, 1.f, dva);
}

// The same tensors -> dq += . Grid (ceil(Tq / 64), B * H), 128 threads.
extern "C" __global__ void __launch_bounds__(128) attention_backward_dq_d64(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const int* __restrict__ mask,
    const float* __restrict__ lse, const float* __restrict__ delta, const float* __restrict__ dO,
    int H, int Tq, int Tk, float scale, float* __restrict__ dq)
{
    __shared__ __attribute__((aligned(128))) unsigned char Ks[64 * 128], Vs[64 * 128];
    __shared__ float kbias[64];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / H);
    const float* qb = q + bh * Tq * ATT_D;
    const float* kb = k + bh * Tk * ATT_D;
    const float* vb = v + bh * Tk * ATT_D;
    const float* db = dO + bh * Tq * ATT_D;
    const int* mb = mask == 0 ? 0 : mask + (long long)b * Tk;   // this batch's key mask
    const int r0 = blockIdx.x * 64 + warp * 16 + g, r1 = r0 + 8;   // this thread's two queries
    const float NEG_INF = -KV_INF, sl2 = scale * KV_LOG2E;
    const float l0 = r0 < Tq ? lse[bh * Tq + r0] : NEG_INF, l1 = r1 < Tq ? lse[bh * Tq + r1] : NEG_INF;
    const float d0 = r0 < Tq ? delta[bh * Tq + r0] : 0.f, d1 = r1 < Tq ? delta[bh * Tq + r1] : 0.f;
    unsigned qa[4][4], oa[4][4];
    att_load_q(qb, r0, r1, Tq, t, qa);
    att_load_q(db, r0, r1, Tq, t, oa);
    float dqa[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dqa[i][e] = 0.f;
    const kv_saddr ks = kv_smem(Ks), vs = kv_smem(Vs);
    for (int k0 = 0; k0 < Tk; k0 += 64)
    {
        __syncthreads();
        att_stage64(ks, kb, k0, Tk);
        att_stage64(vs, vb, k0, Tk);
        if (tid < 64)
        {
            int key = k0 + tid;
            kbias[tid] = key < Tk && (mb == 0 || mb[key] != 0) ? 0.f : NEG_INF;
        }
        __syncthreads();
        float p[8][4], dp[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) { p[i][e] = 0.f; dp[i][e] = 0.f; }
        att_mm_rows(qa, ks, p);   // S: rows = queries, columns = keys
        att_mm_rows(oa, vs, dp);  // dP = dO V^T
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                float l = (e >> 1) ? l1 : l0, dl = (e >> 1) ? d1 : d0;
                bool keep = kbias[ni * 8 + 2 * t + (e & 1)] == 0.f && l != NEG_INF;
                float pe = keep ? kv_exp2(p[ni][e] * sl2 - l * KV_LOG2E) : 0.f;
                p[ni][e] = pe * (dp[ni][e] - dl);   // dS
            }
        att_mm_acc_trans(p, ks, dqa);   // dQ += dS K (scaled below)
    }
    att_add_rows(dq + bh * Tq * ATT_D, r0, r1, Tq, t, scale, dqa);
}
