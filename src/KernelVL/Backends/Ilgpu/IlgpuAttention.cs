using ILGPU;
using ILGPU.Runtime;

namespace KernelVL.Backends.Ilgpu;

/// <summary>Scalar arguments of the attention kernels.</summary>
public struct AttnArgs
{
    public int H, Tq, Tk, D, HasMask;
    public float Scale;
}

/// <summary>
/// Flash-style attention: a group owns a block of query rows of one (batch, head), one row per thread, and walks
/// the keys in tiles of <see cref="Kt"/> staged through shared memory with an online softmax: no [Tq, Tk] matrix
/// exists anywhere. Head dims up to <see cref="MaxD"/>.
/// </summary>
internal static class IlgpuAttention
{
    public const int Kt = 32;
    public const int MaxD = 128;

    /// <summary>Keys and values j0 .. j0 + Kt of head bh into shared memory (zeros past Tk), then a barrier.</summary>
    private static void LoadTile(ArrayView<float> k, ArrayView<float> v, long bh, int j0, AttnArgs p, ArrayView<float> sk, ArrayView<float> sv)
    {
        int d = p.D;
        for (int e = Group.IdxX; e < Kt * d; e += Group.DimX)
        {
            int kk = e / d, c = e % d, key = j0 + kk;
            long src = (bh * p.Tk + key) * d + c;
            sk[e] = key < p.Tk ? k[src] : 0f;
            sv[e] = key < p.Tk ? v[src] : 0f;
        }
        Group.Barrier();
    }

    public static void Forward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> mask, AttnArgs p,
        ArrayView<float> o, ArrayView<float> lse)
    {
        var sk = SharedMemory.Allocate<float>(Kt * MaxD);
        var sv = SharedMemory.Allocate<float>(Kt * MaxD);
        var qr = LocalMemory.Allocate<float>(MaxD);
        var acc = LocalMemory.Allocate<float>(MaxD);
        int d = p.D;
        long bh = Grid.IdxY;
        long b = bh / p.H;
        int i = Grid.IdxX * Group.DimX + Group.IdxX;
        bool active = i < p.Tq;
        long qo = (bh * p.Tq + i) * d;
        for (int c = 0; c < d; c++)
        {
            qr[c] = active ? q[qo + c] * p.Scale : 0f;
            acc[c] = 0f;
        }
        float m = float.NegativeInfinity, l = 0f;
        for (int j0 = 0; j0 < p.Tk; j0 += Kt)
        {
            LoadTile(k, v, bh, j0, p, sk, sv);
            if (active)
            {
                int n = p.Tk - j0 < Kt ? p.Tk - j0 : Kt;
                for (int kk = 0; kk < n; kk++)
                {
                    if (p.HasMask != 0 && mask[b * p.Tk + j0 + kk] == 0) continue;
                    float s = 0f;
                    for (int c = 0; c < d; c++) s += qr[c] * sk[kk * d + c];
                    if (s > m)
                    {
                        float corr = MathF.Exp(m - s);
                        l *= corr;
                        for (int c = 0; c < d; c++) acc[c] *= corr;
                        m = s;
                    }
                    float pr = MathF.Exp(s - m);
                    l += pr;
                    for (int c = 0; c < d; c++) acc[c] += pr * sv[kk * d + c];
                }
            }
            Group.Barrier();
        }
        if (!active) return;
        float inv = l > 0f ? 1f / l : 0f;
        for (int c = 0; c < d; c++) o[qo + c] = acc[c] * inv;
        lse[bh * p.Tq + i] = l > 0f ? m + MathF.Log(l) : float.NegativeInfinity;
    }

    /// <summary>
    /// Backward, one query row per thread: recomputes P = exp(q k * scale - lse) tile by tile, accumulates dq in local
    /// memory and adds dk, dv atomically (several query rows share a key).
    /// </summary>
    public static void Backward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> mask, AttnArgs p,
        ArrayView<float> o, ArrayView<float> lse, ArrayView<float> dO, ArrayView<float> dq, ArrayView<float> dk, ArrayView<float> dv)
    {
        var sk = SharedMemory.Allocate<float>(Kt * MaxD);
        var sv = SharedMemory.Allocate<float>(Kt * MaxD);
        var qr = LocalMemory.Allocate<float>(MaxD);
        var gr = LocalMemory.Allocate<float>(MaxD);
        var dqr = LocalMemory.Allocate<float>(MaxD);
        int d = p.D;
        long bh = Grid.IdxY;
        long b = bh / p.H;
        int i = Grid.IdxX * Group.DimX + Group.IdxX;
        long qo = (bh * p.Tq + i) * d;
        float l = float.NegativeInfinity;
        if (i < p.Tq) l = lse[bh * p.Tq + i];
        bool active = i < p.Tq && l != float.NegativeInfinity;
        float rowDot = 0f;
        for (int c = 0; c < d; c++)
        {
            qr[c] = active ? q[qo + c] : 0f;
            gr[c] = active ? dO[qo + c] : 0f;
            dqr[c] = 0f;
            if (active) rowDot += gr[c] * o[qo + c];
        }
        for (int j0 = 0; j0 < p.Tk; j0 += Kt)
        {
            LoadTile(k, v, bh, j0, p, sk, sv);
            if (active)
            {
                int n = p.Tk - j0 < Kt ? p.Tk - j0 : Kt;
                for (int kk = 0; kk < n; kk++)
                {
                    int key = j0 + kk;
                    if (p.HasMask != 0 && mask[b * p.Tk + key] == 0) continue;
                    float s = 0f, dp = 0f;
                    for (int c = 0; c < d; c++) { s += qr[c] * sk[kk * d + c]; dp += gr[c] * sv[kk * d + c]; }
                    float pr = MathF.Exp(s * p.Scale - l);
                    float ds = pr * (dp - rowDot) * p.Scale;
                    long ko = (bh * p.Tk + key) * d;
                    for (int c = 0; c < d; c++)
                    {
                        dqr[c] += ds * sk[kk * d + c];
                        if (dk.Length > 0) Atomic.Add(ref dk[ko + c], ds * qr[c]);
                        if (dv.Length > 0) Atomic.Add(ref dv[ko + c], pr * gr[c]);
                    }
                }
            }
            Group.Barrier();
        }
        if (active && dq.Length > 0)
            for (int c = 0; c < d; c++) dq[qo + c] += dqr[c];
    }
}
