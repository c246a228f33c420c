// Pieces of the D = 64 attention forward shared by attention.cu's version 2 and gemm_sm90.cu's version 3 (wgmma):
// the Q fragments, a key tile's loads, the online softmax of a tile and the output, all on the m16n8 fragment layout
// (which is also wgmma's accumulator layout for a warp's 16 rows).
#pragma once
#include "kernelvl_cuda.h"

#define ATT_D 64
#define ATT_TILE_K 64   // keys per tile of versions 2 and 3

// Q fragments (A operand, 16 rows x 64 d = 4 k-steps) of rows r0 and r1 = r0 + 8, rounded to bf16; rows >= Tq are zeros.
static __device__ __forceinline__ void att_load_q(const float* __restrict__ qb, int r0, int r1, int Tq, int t, unsigned (*qa)[4])
{
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
}

// One key tile of the online softmax, without the output: s (this thread's S fragments of rows r0, r1 over 64 keys)
// is scaled into log2 units, masked with kbias, and replaced by exp2(s - running max); the running max m and this
// thread's part of the row sum l are rescaled to the new max, and alpha0 / alpha1 = the factors the output
// accumulator's rows r0 / r1 must be rescaled by (att_rescale_o).
static __device__ __forceinline__ void att_softmax_p(float (*s)[4], const float* kbias, float sl2, int t,
                                                     float& m0, float& m1, float& l0, float& l1, float& alpha0, float& alpha1)
{
    const float NEG_INF = -KV_INF;
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
    // the row max over the quad of lanes that shares the rows
    mx0 = kv_max(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = kv_max(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = kv_max(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = kv_max(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    float n0 = kv_max(m0, mx0), n1 = kv_max(m1, mx1);
    // While a row has seen only masked keys its max is -inf: exponents are taken against 0 then, so that
    // exp2(-inf - 0) = 0 rather than exp2(-inf + inf) = NaN.
    float base0 = n0 == NEG_INF ? 0.f : n0, base1 = n1 == NEG_INF ? 0.f : n1;
    alpha0 = kv_exp2(m0 - base0);
    alpha1 = kv_exp2(m1 - base1);
    m0 = n0;
    m1 = n1;
    l0 *= alpha0;
    l1 *= alpha1;
#pragma unroll
    for (int ni = 0; ni < 8; ni++)
    {
        s[ni][0] = kv_exp2(s[ni][0] - base0); s[ni][1] = kv_exp2(s[ni][1] - base0);
        s[ni][2] = kv_exp2(s[ni][2] - base1); s[ni][3] = kv_exp2(s[ni][3] - base1);
        l0 += s[ni][0] + s[ni][1];
        l1 += s[ni][2] + s[ni][3];
    }
}

// The output accumulator (rows r0: oacc[.][0..1], r1: oacc[.][2..3]) rescaled to a tile's new running max.
static __device__ __forceinline__ void att_rescale_o(float (*oacc)[4], float alpha0, float alpha1)
{
#pragma unroll
    for (int nd = 0; nd < 8; nd++)
    {
        oacc[nd][0] *= alpha0; oacc[nd][1] *= alpha0;
        oacc[nd][2] *= alpha1; oacc[nd][3] *= alpha1;
    }
}

// att_softmax_p, then the output accumulator rescaled (version 2, where no product is in flight meanwhile).
static __device__ __forceinline__ void att_softmax_tile(float (*s)[4], const float* kbias, float sl2, int t,
                                                        float& m0, float& m1, float& l0, float& l1, float (*oacc)[4])
{
    float alpha0, alpha1;
    att_softmax_p(s, kbias, sl2, t, m0, m1, l0, l1, alpha0, alpha1);
    att_rescale_o(oacc, alpha0, alpha1);
}

// o = oacc / l and lse = (m + log2 l) ln 2 for rows r0, r1 (< Tq); a row with l = 0 (every key masked) gets o = 0, lse = -inf.
static __device__ __forceinline__ void att_store(float* __restrict__ ob, float* __restrict__ lseb, int r0, int r1, int Tq, int t,
                                                 float m0, float m1, float l0, float l1, float (*oacc)[4])
{
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float inv0 = l0 > 0.f ? kv_rcp(l0) : 0.f, inv1 = l1 > 0.f ? kv_rcp(l1) : 0.f;
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
        if (r0 < Tq) lseb[r0] = l0 > 0.f ? (m0 + kv_log2(l0)) * KV_LN2 : -KV_INF;
        if (r1 < Tq) lseb[r1] = l1 > 0.f ? (m1 + kv_log2(l1)) * KV_LN2 : -KV_INF;
    }
}

// This thread's share of the key tile at j0 (256 threads): chunks tid and tid + 256 of 512 (key = chunk / 8, d =
// 8 (chunk % 8) .. +7) of K and of V as f32 (16-byte loads; zeros past Tk), and the mask bias of key tid (tid < 64):
// 0 for a key that counts, -inf for a masked or missing one. kb, vb [Tk, 64] 16-byte aligned; mask i32 [B, Tk] or null.
// VT (for a V staged transposed): V's share is instead column d = tid % 64 of keys 16 (tid / 64) + 8 i .. + 7,
// pv[i][x] = V[key 16 (tid / 64) + 8 i + x][d] (a warp reads 32 consecutive d of a key: 128-byte loads), so that each
// thread writes whole 16-byte chunks of V^T's rows.
template <bool VT = false>
static __device__ __forceinline__ void att_fetch_tile(const float* __restrict__ kb, const float* __restrict__ vb, const int* __restrict__ mask,
                                                      int b, int Tk, int j0, int tid, float (*pk)[8], float (*pv)[8], float& pbias)
{
#pragma unroll
    for (int i = 0; i < 2; i++)
    {
        int e = tid + i * 256, key = j0 + (e >> 3), d = (e & 7) * 8;
        if (key < Tk)
        {
            kv_ld_nc_f4(kb + (long long)key * ATT_D + d, pk[i]); kv_ld_nc_f4(kb + (long long)key * ATT_D + d + 4, pk[i] + 4);
            if (!VT) { kv_ld_nc_f4(vb + (long long)key * ATT_D + d, pv[i]); kv_ld_nc_f4(vb + (long long)key * ATT_D + d + 4, pv[i] + 4); }
        }
        else
        {
#pragma unroll
            for (int x = 0; x < 8; x++) { pk[i][x] = 0.f; if (!VT) pv[i][x] = 0.f; }
        }
        if (VT)
        {
            const int dv = tid & 63, k0 = j0 + 16 * (tid >> 6) + 8 * i;
#pragma unroll
            for (int x = 0; x < 8; x++) pv[i][x] = k0 + x < Tk ? vb[(long long)(k0 + x) * ATT_D + dv] : 0.f;
        }
    }
    if (tid < ATT_TILE_K)
    {
        int key = j0 + tid;
        pbias = key < Tk && (mask == 0 || mask[(long long)b * Tk + key] != 0) ? 0.f : -KV_INF;
    }
}
