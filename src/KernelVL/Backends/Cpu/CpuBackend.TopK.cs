using KernelVL.Tensors;

namespace KernelVL.Backends.Cpu;

// Exact top-k search: the corpus in tiles, each tile's scores by the packed GEMM into a per-thread scratch, and
// per-query selection with a bounded min-heap; a tile's score enters only if it beats the query's current k-th.
public sealed unsafe partial class CpuBackend
{
    private const int TopKQueryBlock = 64, TopKTile = 2048;

    public override void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopK(queries, corpus, k, scores, indices);
        F32("topk", queries, corpus, scores);
        float* Q = queries.F32Ptr, C = corpus.F32Ptr, S = scores.F32Ptr;
        int* I = indices.I32Ptr;
        int blocks = (q + TopKQueryBlock - 1) / TopKQueryBlock;
        CpuParallel.Each(blocks, blk =>
        {
            int q0 = blk * TopKQueryBlock, rows = Math.Min(TopKQueryBlock, q - q0);
            var heapS = new float[rows * k];
            var heapI = new int[rows * k];
            var count = new int[rows];
            var tile = Scratch(rows * TopKTile);
            fixed (float* t = tile)
                for (int j0 = 0; j0 < n; j0 += TopKTile)
                {
                    int cols = Math.Min(TopKTile, n - j0);
                    CpuGemm.Gemm(rows, cols, d, Q + (long)q0 * d, d, false, C + (long)j0 * d, d, true, t, cols, 1f, false, null, parallel: false);
                    for (int r = 0; r < rows; r++)
                    {
                        var hs = heapS.AsSpan(r * k, k);
                        var hi = heapI.AsSpan(r * k, k);
                        float* row = t + (long)r * cols;
                        for (int c = 0; c < cols; c++)
                        {
                            float v = row[c];
                            int idx = j0 + c;
                            if (count[r] < k) { HeapPush(hs, hi, ref count[r], v, idx); continue; }
                            // Enter only if better than the worst kept (score, then lower index on ties).
                            if (v > hs[0] || (v == hs[0] && idx < hi[0])) HeapReplaceTop(hs, hi, k, v, idx);
                        }
                    }
                }
            for (int r = 0; r < rows; r++)
            {
                var hs = heapS.AsSpan(r * k, k).ToArray();
                var hi = heapI.AsSpan(r * k, k).ToArray();
                var order = Enumerable.Range(0, k).ToArray();
                Array.Sort(order, (a, b) => hs[a] != hs[b] ? hs[b].CompareTo(hs[a]) : hi[a].CompareTo(hi[b]));
                for (int j = 0; j < k; j++)
                {
                    S[(long)(q0 + r) * k + j] = hs[order[j]];
                    I[(long)(q0 + r) * k + j] = hi[order[j]];
                }
            }
        });
    }

    // Min-heap on (score, -index): the root is the worst kept candidate.
    private static bool Worse(float sa, int ia, float sb, int ib) => sa < sb || (sa == sb && ia > ib);

    private static void HeapPush(Span<float> hs, Span<int> hi, ref int count, float v, int idx)
    {
        int c = count++;
        hs[c] = v; hi[c] = idx;
        while (c > 0)
        {
            int p = (c - 1) / 2;
            if (!Worse(hs[c], hi[c], hs[p], hi[p])) break;
            (hs[c], hs[p]) = (hs[p], hs[c]);
            (hi[c], hi[p]) = (hi[p], hi[c]);
            c = p;
        }
    }

    private static void HeapReplaceTop(Span<float> hs, Span<int> hi, int k, float v, int idx)
    {
        hs[0] = v; hi[0] = idx;
        int c = 0;
        while (true)
        {
            int l = 2 * c + 1, r = l + 1, m = c;
            if (l < k && Worse(hs[l], hi[l], hs[m], hi[m])) m = l;
            if (r < k && Worse(hs[r], hi[r], hs[m], hi[m])) m = r;
            if (m == c) break;
            (hs[c], hs[m]) = (hs[m], hs[c]);
            (hi[c], hi[m]) = (hi[m], hi[c]);
            c = m;
        }
    }
}
