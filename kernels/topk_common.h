// Pieces shared by the tensor-core top-k kernels: topk.cu version 2 (mma.sync) and gemm_sm90.cu's version 3 (wgmma,
// TMA): the order, the per-query candidate lists in shared memory, their merge and their output.
#pragma once
#include "kernelvl_cuda.h"

#define TOPK_NO_INDEX 0x7fffffff

// Higher score first, then the lower corpus index: a strict order.
static __device__ __forceinline__ bool topk_better(float sa, int ia, float sb, int ib) { return sa > sb || (sa == sb && ia < ib); }

struct TcShared
{
    float* listS; int* listI;   // [rows][KMAX] each query's best so far, best first
    float* bufS; int* bufI;     // [rows][CAP] appended candidates
    float* thr;                 // [rows] the kp-th best of the list (-inf while shorter)
    int* cnt;                   // [rows] appended (may pass CAP: those past it were not stored)
    int* lcnt;                  // [rows] list length
    int* ovf;                   // one flag: some buffer overflowed in this pass
};

// The lists of `rows` queries laid out from p: listS, listI [rows][KMAX], bufS, bufI [rows][CAP], thr, cnt, lcnt [rows],
// the overflow flag: rows (2 KMAX + 2 CAP + 3) * 4 + 4 bytes.
template <int KMAX, int CAP>
static __device__ __forceinline__ TcShared tc_shared_at(unsigned char* p, int rows)
{
    TcShared sh;
    sh.listS = (float*)p;
    sh.listI = (int*)(sh.listS + rows * KMAX);
    sh.bufS = (float*)(sh.listI + rows * KMAX);
    sh.bufI = (int*)(sh.bufS + rows * CAP);
    sh.thr = (float*)(sh.bufI + rows * CAP);
    sh.cnt = (int*)(sh.thr + rows);
    sh.lcnt = sh.cnt + rows;
    sh.ovf = sh.lcnt + rows;
    return sh;
}

// Merges row r's buffer into its list (the calling warp; every lane calls). The union (KMAX + CAP <= 128 entries) is ranked by
// count: an entry's rank is the number of entries better than it (scores, then the lower index: a strict order).
template <int KMAX, int CAP>
static __device__ void tc_merge_row(const TcShared& sh, int r, int kp, int lane)
{
    const int lc = sh.lcnt[r], bc = kv_imin(sh.cnt[r], CAP), u = lc + bc;
    const float* ls = sh.listS + r * KMAX; const int* li = sh.listI + r * KMAX;
    const float* bs = sh.bufS + r * CAP; const int* bi = sh.bufI + r * CAP;
    float s[4]; int id[4], rank[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
    {
        int e = lane + 32 * j;
        s[j] = e < lc ? ls[e] : (e < u ? bs[e - lc] : 0.f);
        id[j] = e < lc ? li[e] : (e < u ? bi[e - lc] : TOPK_NO_INDEX);
        rank[j] = 0;
    }
    for (int w = 0; w < u; w++)
    {
        float sw = w < lc ? ls[w] : bs[w - lc];
        int iw = w < lc ? li[w] : bi[w - lc];
#pragma unroll
        for (int j = 0; j < 4; j++) rank[j] += topk_better(sw, iw, s[j], id[j]) ? 1 : 0;
    }
    kv_syncwarp();   // every lane has read the old list before any lane writes the new one
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (lane + 32 * j < u && rank[j] < kp)
        {
            sh.listS[r * KMAX + rank[j]] = s[j];
            sh.listI[r * KMAX + rank[j]] = id[j];
        }
    kv_syncwarp();
    if (lane == 0)
    {
        int nl = kv_imin(u, kp);
        sh.lcnt[r] = nl;
        sh.cnt[r] = 0;
        sh.thr[r] = nl == kp ? sh.listS[r * KMAX + kp - 1] : -KV_INF;
    }
    kv_syncwarp();   // kept though redundant (every caller's next barrier orders lane 0's writes before their readers)
}

// Each query's list [rows][KMAX] -> partS, partI [Q, gridDim.y, kp] at slice blockIdx.y: kp entries, best first, padded
// with (-inf, TOPK_NO_INDEX). Threads tid of nthreads share the work.
template <int KMAX>
static __device__ void tc_write_lists(const TcShared& sh, int rows, int q0, int Q, int kp, int tid, int nthreads,
                                      float* __restrict__ partS, int* __restrict__ partI)
{
    for (int e = tid; e < rows * kp; e += nthreads)
    {
        int r = e / kp, j = e % kp;
        if (q0 + r >= Q) continue;
        long long o = ((long long)(q0 + r) * gridDim.y + blockIdx.y) * kp + j;
        bool has = j < sh.lcnt[r];
        partS[o] = has ? sh.listS[r * KMAX + j] : -KV_INF;
        partI[o] = has ? sh.listI[r * KMAX + j] : TOPK_NO_INDEX;
    }
}
