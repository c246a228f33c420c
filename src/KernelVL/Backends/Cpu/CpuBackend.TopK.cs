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
        // Work items: (block of queries) x (part of the corpus), so a few queries still use every core; each item keeps
        // its own heaps, merged per query at the end.
        int blocks = (q + TopKQueryBlock - 1) / TopKQueryBlock;
        int tiles = (n + TopKTile - 1) / TopKTile;
        int parts = Math.Max(1, Math.Min(tiles, (2 * CpuParallel.Threads + blocks - 1) / blocks));
        int tilesPerPart = (tiles + parts - 1) / parts;
        var heapS = new float[blocks * parts][];
        var heapI = new int[blocks * parts][];
        var counts = new int[blocks * parts][];
        CpuParallel.Each(blocks * parts, item =>
        {
            int blk = item / parts, part = item % parts;
            int q0 = blk * TopKQueryBlock, rows = Math.Min(TopKQueryBlock, q - q0);
            int jStart = part * tilesPerPart * TopKTile, jEnd = Math.Min(n, (part + 1) * tilesPerPart * TopKTile);
            var hsAll = heapS[item] = new float[rows * k];
            var hiAll = heapI[item] = new int[rows * k];
            var count = counts[item] = new int[rows];
            var tile = Scratch(rows * TopKTile);
            fixed (float* t = tile)
                for (int j0 = jStart; j0 < jEnd; j0 += TopKTile)
                {
                    int cols = Math.Min(TopKTile, jEnd - j0);
                    if (rows <= 2)
                    {
                        // A query or two: dot products straight from the corpus rows (memory-bound; packing would double the traffic).
                        for (int r = 0; r < rows; r++)
                        {
                            var qr = new ReadOnlySpan<float>(Q + (long)(q0 + r) * d, d);
                            for (int c = 0; c < cols; c++) t[(long)r * cols + c] = System.Numerics.Tensors.TensorPrimitives.Dot(qr, new ReadOnlySpan<float>(C + (long)(j0 + c) * d, d));
                        }
                    }
                    else CpuGemm.Gemm(rows, cols, d, Q + (long)q0 * d, d, false, C + (long)j0 * d, d, true, t, cols, 1f, false, null, parallel: false);
                    for (int r = 0; r < rows; r++)
                    {
                        var hs = hsAll.AsSpan(r * k, k);
                        var hi = hiAll.AsSpan(r * k, k);
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
        });
        CpuParallel.Each(q, qi =>
        {
            int blk = qi / TopKQueryBlock, r = qi % TopKQueryBlock;
            var cs = new List<(float S, int I)>(k * parts);
            for (int part = 0; part < parts; part++)
            {
                int item = blk * parts + part;
                for (int j = 0; j < counts[item][r]; j++) cs.Add((heapS[item][r * k + j], heapI[item][r * k + j]));
            }
            cs.Sort((a, b) => a.S != b.S ? b.S.CompareTo(a.S) : a.I.CompareTo(b.I));
            for (int j = 0; j < k; j++)
            {
                S[(long)qi * k + j] = cs[j].S;
                I[(long)qi * k + j] = cs[j].I;
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
