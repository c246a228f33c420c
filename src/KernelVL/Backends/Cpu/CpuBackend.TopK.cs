using KernelVL.Tensors;

namespace KernelVL.Backends.Cpu;

// Exact top-k search: work items are (a group of query blocks) x (a part of the corpus, whole tiles): parts spread a
// few queries over the cores, groups spread many queries over a small corpus. An item takes a tile at a time (f16 rows
// widened once into per-thread scratch), scores each of its query blocks against it into per-thread scratch (up to four
// queries: dot products straight from the rows; a block of 24 or more: tile x block^T, the tile read where it lies and the
// block packed; a smaller block: block x tile^T, cheaper than padding the block to the micro-kernel's 32 columns), and
// keeps per query a bounded min-heap: a score enters only if it beats the query's current k-th. The heaps of the parts
// are merged per query at the end.
public sealed unsafe partial class CpuBackend : IHostRowsTopK
{
    private const int TopKQueryBlock = 64, TopKTile = 2048;
    private const long TopKHeapBudget = 1L << 24;   // heap entries over all items (score + index: 128 MB)
    internal static int TopKFewQueries = 4, TopKTransposedFrom = 24;   // measured (100k x 768, 2 cores): dots beat the GEMM up to 4 queries; the transposed form from 24

    public override void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopK(queries, corpus, k, scores, indices);
        F32("topk", queries, corpus, scores);
        TopKCore(queries.F32Ptr, q, n, d, k, corpus.F32Ptr, null, scores.F32Ptr, indices.I32Ptr);
    }

    /// <summary>Top-k over f32 rows where they lie (a memory-mapped segment): no copy into a tensor.</summary>
    public void TopKRows(Tensor queries, ReadOnlySpan<float> rows, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopKRows(queries, rows.Length, k, scores, indices);
        F32("topk rows", queries, scores);
        fixed (float* c = rows) TopKCore(queries.F32Ptr, q, n, d, k, c, null, scores.F32Ptr, indices.I32Ptr);
    }

    /// <summary>Top-k over f16 rows where they lie, each tile widened (exactly) into per-thread scratch as it is scored.</summary>
    public void TopKRows(Tensor queries, ReadOnlySpan<Half> rows, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopKRows(queries, rows.Length, k, scores, indices);
        F32("topk rows", queries, scores);
        fixed (Half* c = rows) TopKCore(queries.F32Ptr, q, n, d, k, null, c, scores.F32Ptr, indices.I32Ptr);
    }

    /// <summary>Queries Q [q, d] against corpus rows [n, d], f32 (<paramref name="c32"/>) or f16 (<paramref name="c16"/>);
    /// writes scores S [q, k] and row indices I [q, k].</summary>
    private static void TopKCore(float* Q, int q, int n, int d, int k, float* c32, Half* c16, float* S, int* I)
    {
        bool half = c16 != null, few = q <= TopKFewQueries;
        const int tileRows = TopKTile;
        int threads = CpuParallel.Threads;
        int tiles = (n + tileRows - 1) / tileRows;
        int blocks = (q + TopKQueryBlock - 1) / TopKQueryBlock;
        // Parts of the corpus: enough items for the cores, and each part's heaps (q x k entries) within the budget.
        int wantParts = (int)Math.Max(1, Math.Min(Math.Min(tiles, 4 * threads), TopKHeapBudget / ((long)q * k)));
        int tilesPerPart = (tiles + wantParts - 1) / wantParts;
        int parts = (tiles + tilesPerPart - 1) / tilesPerPart;
        // Groups of query blocks: where the parts alone leave cores idle.
        int wantGroups = Math.Min(blocks, Math.Max(1, (4 * threads + parts - 1) / parts));
        int blocksPerGroup = (blocks + wantGroups - 1) / wantGroups;
        int groups = (blocks + blocksPerGroup - 1) / blocksPerGroup;
        int qb = Math.Min(q, TopKQueryBlock);
        long scratchFloats = (long)qb * tileRows + (half ? (few ? d : (long)tileRows * d) : 0);
        if (scratchFloats > int.MaxValue) Contract.Fail("topk", $"rows of {d} values are too wide for the cpu backend's tiles");
        var heapS = new float[groups * parts][];
        var heapI = new int[groups * parts][];
        var counts = new int[groups * parts][];
        CpuParallel.Each(groups * parts, item =>
        {
            int group = item / parts, part = item % parts;
            int qStart = group * blocksPerGroup * TopKQueryBlock, qEnd = Math.Min(q, (group + 1) * blocksPerGroup * TopKQueryBlock);
            int jStart = part * tilesPerPart * tileRows, jEnd = Math.Min(n, (part + 1) * tilesPerPart * tileRows);
            // This item's heaps: for its queries qStart.. (local index qi - qStart).
            var hsAll = heapS[item] = new float[(long)(qEnd - qStart) * k];
            var hiAll = heapI[item] = new int[(long)(qEnd - qStart) * k];
            var count = counts[item] = new int[qEnd - qStart];
            // Scratch: scores [qb, tileRows], then for f16 the widened tile [tileRows, d] (up to four queries: one row [d]).
            var scratch = Scratch((int)scratchFloats);
            fixed (float* t = scratch)
            {
                float* wide = t + (long)qb * tileRows;
                for (int j0 = jStart; j0 < jEnd; j0 += tileRows)
                {
                    int cols = Math.Min(tileRows, jEnd - j0);
                    float* tile = c32 + (long)j0 * d;
                    if (half && !few)
                    {
                        CpuMath.WidenHalves(c16 + (long)j0 * d, wide, cols * d);
                        tile = wide;
                    }
                    for (int q0 = qStart; q0 < qEnd; q0 += TopKQueryBlock)
                    {
                        int rows = Math.Min(TopKQueryBlock, qEnd - q0);
                        bool transposed = !few && rows >= TopKTransposedFrom;
                        if (few)
                        {
                            // Up to four queries: dot products straight from the corpus rows (memory-bound; packing would
                            // double the traffic); an f16 row widened into a buffer that stays in L1.
                            for (int c = 0; c < cols; c++)
                            {
                                float* row = c32 + (long)(j0 + c) * d;
                                if (half)
                                {
                                    CpuMath.WidenHalves(c16 + (long)(j0 + c) * d, wide, d);
                                    row = wide;
                                }
                                for (int r = 0; r < rows; r++)
                                    t[(long)r * cols + c] = System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(Q + (long)(q0 + r) * d, d), new ReadOnlySpan<float>(row, d));
                            }
                        }
                        // Scores transposed, [cols, rows]: the tile is the GEMM's A, read where it lies, and the block of
                        // queries its B, packed (packing the tile instead would cost as much as the products at 32 queries).
                        else if (transposed) CpuGemm.Gemm(cols, rows, d, tile, d, false, Q + (long)q0 * d, d, true, t, rows, 1f, false, null, parallel: false);
                        // A small block: [rows, cols], the tile packed as B (the transposed form would pad the block to 32).
                        else CpuGemm.Gemm(rows, cols, d, Q + (long)q0 * d, d, false, tile, d, true, t, cols, 1f, false, null, parallel: false);
                        int cs = transposed ? rows : 1, rs = transposed ? 1 : cols;   // t[c cs + r rs]: column c, query r
                        for (int r = 0; r < rows; r++)
                        {
                            int qi = q0 + r - qStart;
                            var hs = hsAll.AsSpan(qi * k, k);
                            var hi = hiAll.AsSpan(qi * k, k);
                            float* srow = t + (long)r * rs;
                            for (int c = 0; c < cols; c++)
                            {
                                float v = srow[(long)c * cs];
                                int idx = j0 + c;
                                if (count[qi] < k) { HeapPush(hs, hi, ref count[qi], v, idx); continue; }
                                // Enter only if better than the worst kept (score, then lower index on ties).
                                if (v > hs[0] || (v == hs[0] && idx < hi[0])) HeapReplaceTop(hs, hi, k, v, idx);
                            }
                        }
                    }
                }
            }
        });
        CpuParallel.Each(q, qi =>
        {
            int group = qi / TopKQueryBlock / blocksPerGroup, local = qi - group * blocksPerGroup * TopKQueryBlock;
            var cs = new List<(float S, int I)>(k * parts);
            for (int part = 0; part < parts; part++)
            {
                int item = group * parts + part;
                for (int j = 0; j < counts[item][local]; j++) cs.Add((heapS[item][(long)local * k + j], heapI[item][(long)local * k + j]));
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
