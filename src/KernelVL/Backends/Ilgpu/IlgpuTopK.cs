using ILGPU;
using ILGPU.Runtime;

namespace KernelVL.Backends.Ilgpu;

/// <summary>
/// Exact top-k over tiles of scores: for each tile of <see cref="W"/> corpus rows a GEMM writes [Q, W] scores,
/// then one group per query sorts the tile in shared memory (bitonic), merges it with the query's running best K2
/// (K2 = k rounded up to a power of two) by the bitonic merge trick, and stores the new best back. Order:
/// higher score first, lower index on ties. No [Q, N] matrix exists.
/// </summary>
internal static class IlgpuTopK
{
    public const int W = 1024;

    private static bool Better(float sa, int ia, float sb, int ib) => sa > sb || (sa == sb && ia < ib);

    public static void Select(ArrayView<float> tile, int t0, int cols, int k2, int first, ArrayView<float> bestS, ArrayView<int> bestI)
    {
        var cs = SharedMemory.Allocate<float>(W);
        var ci = SharedMemory.Allocate<int>(W);
        var bs = SharedMemory.Allocate<float>(W);
        var bi = SharedMemory.Allocate<int>(W);
        long q = Grid.IdxX;
        int tid = Group.IdxX, g = Group.DimX;
        for (int j = tid; j < W; j += g)
        {
            bool valid = j < cols;
            cs[j] = valid ? tile[q * W + j] : float.NegativeInfinity;
            ci[j] = valid ? t0 + j : int.MaxValue;
        }
        for (int j = tid; j < k2; j += g)
        {
            bs[j] = first != 0 ? float.NegativeInfinity : bestS[q * k2 + j];
            bi[j] = first != 0 ? int.MaxValue : bestI[q * k2 + j];
        }
        Group.Barrier();
        // Bitonic sort of the tile, best first.
        for (int size = 2; size <= W; size <<= 1)
            for (int stride = size >> 1; stride > 0; stride >>= 1)
            {
                for (int t = tid; t < W / 2; t += g)
                {
                    int i = 2 * stride * (t / stride) + t % stride, j = i + stride;
                    bool bestFirst = (i & size) == 0;
                    bool swap = bestFirst ? Better(cs[j], ci[j], cs[i], ci[i]) : Better(cs[i], ci[i], cs[j], ci[j]);
                    if (swap)
                    {
                        float ts = cs[i]; cs[i] = cs[j]; cs[j] = ts;
                        int ti = ci[i]; ci[i] = ci[j]; ci[j] = ti;
                    }
                }
                Group.Barrier();
            }
        // Top k2 of the union: the better of best[i] and tile[k2 - 1 - i] is a bitonic sequence holding exactly them.
        for (int i = tid; i < k2; i += g)
        {
            int j = k2 - 1 - i;
            if (Better(cs[j], ci[j], bs[i], bi[i])) { bs[i] = cs[j]; bi[i] = ci[j]; }
        }
        Group.Barrier();
        for (int stride = k2 >> 1; stride > 0; stride >>= 1)
        {
            for (int t = tid; t < k2 / 2; t += g)
            {
                int i = 2 * stride * (t / stride) + t % stride, j = i + stride;
                if (Better(bs[j], bi[j], bs[i], bi[i]))
                {
                    float ts = bs[i]; bs[i] = bs[j]; bs[j] = ts;
                    int ti = bi[i]; bi[i] = bi[j]; bi[j] = ti;
                }
            }
            Group.Barrier();
        }
        for (int j = tid; j < k2; j += g)
        {
            bestS[q * k2 + j] = bs[j];
            bestI[q * k2 + j] = bi[j];
        }
    }

    /// <summary>scores[q, j] = bestS[q, j], indices[q, j] = bestI[q, j] for j less than k.</summary>
    public static void Write(Index2D idx, ArrayView<float> bestS, ArrayView<int> bestI, int k2, int k, ArrayView<float> scores, ArrayView<int> indices)
    {
        long q = idx.X; int j = idx.Y;
        scores[q * k + j] = bestS[q * k2 + j];
        indices[q * k + j] = bestI[q * k2 + j];
    }
}
