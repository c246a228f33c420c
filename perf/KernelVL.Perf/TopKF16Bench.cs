using System.Text.Json;
using ILGPU;
using Half = System.Half;
using ILGPU.Runtime;
using KernelVL.Backends.Cuda;
using KernelVL.Retrieval;
using KernelVL.Tensors;

namespace KernelVL.Perf;

/// <summary>
/// The issue's retrieval target on the cuda backend: exact top-k over an f16 corpus (default 1M x 768, 1.5 GB, the
/// size of a real index) for a batch of f32 queries, with both kernel versions of topk.cu (1: f32 scoring on the CUDA
/// cores; 2: tensor-core scoring, exact rescoring, certificate, version 1 for the queries it fails). The registry cannot
/// hold f16 tensors, so this is its own case: random data (never zeros), queries checked against an f64 scan of the
/// whole corpus (tie-aware: every reported score recomputed, no duplicates, descending, and no row better than the
/// k-th reported one left out), version 2 compared with version 1 entry for entry, then each timed with CUDA events.
/// Every checked search writes into lists filled first with NaN scores and -1 indices, so a kernel that writes nothing
/// cannot pass on the previous version's lists.
/// Version 3 (wgmma + TMA scoring, Hopper) runs beside them where available; versions 2 and 3 are timed twice, measuring
/// the corpus's largest row norm on the device and given it (as the index passes its segments' max_norm); the given
/// run's row passes only when the version's own run passed and the given run gave the same lists. The suite (--suite) runs versions 2 and 3 on the shapes and data that stress them: partial tiles, D not a multiple of 32,
/// N below the candidate count, k = 48, exact duplicates (ties at the k-th: the certificate must fail and fall back),
/// clustered unit vectors (near-ties).
/// </summary>
internal static class TopKF16Bench
{
    public static int Run(int n, int q, int d, int k, int checkQueries, string? jsonPath)
    {
        using var backend = CudaBackend.Create();
        var acc = backend.Accelerator;
        Console.Error.WriteLine($"topk f16: generating a {n} x {d} f16 corpus ({(double)n * d * 2 / 1e9:F2} GB) and {q} queries ...");
        var corpus = Uniform(n, d, 11);                                              // [N, D] f16, values in [-1, 1)
        var queries = new float[(long)q * d];                                        // [Q, D]
        for (long i = 0; i < queries.Length; i++) queries[i] = 2f * CounterRng.Uniform(12, i) - 1f;
        using var corpusDev = acc.Allocate1D(corpus);
        using var qt = backend.Empty(new Shape(q, d));
        using var scores = backend.Empty(new Shape(q, k));                           // [Q, k]
        using var indices = backend.Empty(new Shape(q, k), DType.I32);               // [Q, k]
        backend.CopyFromHost(queries, qt);

        var rows = new List<object>();
        Console.WriteLine("| op | shape | version | median ms | GB/s (corpus once) | TFLOP/s | fallbacks | check |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|---|");
        float[]? s1 = null; int[]? i1 = null;
        float? bound = null;                                                         // the index's max_norm for this corpus
        int failures = 0;
        if (backend.TopKV3Unavailable is { } no3) Console.Error.WriteLine($"topk f16 v3: {no3}");
        else if (backend.TopKV3ClusterUnavailable is { } no3c) Console.Error.WriteLine($"topk f16 v3 clusters of 4: {no3c}");
        foreach (var (version, cluster) in Versions(backend))
        {
            backend.TopKVersion = version;
            backend.TopKCluster = cluster;
            var (s, idx) = Search(backend, qt, corpusDev.View, k, scores, indices);
            int fallbacks = backend.LastTopKFallbacks;
            string scorer = backend.LastTopKScorer;
            string? problem = null;
            for (int i = 0; i < Math.Min(checkQueries, q) && problem is null; i++) problem = Check(corpus, queries, n, d, k, i, s, idx);
            if (problem is null && s1 is not null) problem = SameAs(s1, i1!, s, idx, k, "version 1");
            if (version == 1) { s1 = s; i1 = idx; }
            Console.Error.WriteLine(problem is null ? $"topk f16 v{version} ({scorer}): the first {Math.Min(checkQueries, q)} queries match an f64 scan{(version >= 2 ? ", and every query version 1" : "")}"
                                                    : $"topk f16 v{version}: FAIL {problem}");
            if (problem is not null) failures++;
            double ms = backend.MedianMs(() => backend.TopKF16(qt, corpusDev.View, k, scores, indices), warmup: 2, reps: 10);
            double bytes = (double)n * d * 2 + (double)q * d * 4, flops = 2.0 * q * n * d;
            Console.WriteLine($"| topk_f16 | Q{q} N{n} D{d} k{k} | {version} ({scorer}) | {ms:F3} | {bytes / (ms / 1e3) / 1e9:F1} | {flops / (ms / 1e3) / 1e12:F2} | {fallbacks} | {problem ?? "ok"} |");
            string timing = backend.LastTiming;
            rows.Add(new { version, scorer, median_ms = ms, timing, bytes, flops, fallbacks, ok = problem is null, problem, norm_bound = "measured" });
            if (version >= 2)
            {
                // As the index searches: the segment's norm bound from its manifest, so no max-norm pass on the device.
                bound ??= RowNorms.MaxNormUpperBound(corpus, d);
                var (sb, ib) = Search(backend, qt, corpusDev.View, k, scores, indices, bound);
                var (okb, pb) = GivenBoundVerdict(problem, SameAs(s, idx, sb, ib, k, "the search without the bound"));
                if (!okb && problem is null) failures++;   // (a failed version counts once)
                int fb = backend.LastTopKFallbacks;
                double msb = backend.MedianMs(() => backend.TopKF16(qt, corpusDev.View, k, scores, indices, bound), warmup: 2, reps: 10);
                Console.WriteLine($"| topk_f16 | Q{q} N{n} D{d} k{k} | {version} ({scorer}), norm bound given | {msb:F3} | {bytes / (msb / 1e3) / 1e9:F1} | {flops / (msb / 1e3) / 1e12:F2} | {fb} | {pb ?? "ok"} |");
                rows.Add(new { version, scorer, median_ms = msb, timing = backend.LastTiming, bytes, flops, fallbacks = fb, ok = okb, problem = pb, norm_bound = "given" });
            }
        }
        if (jsonPath is not null)
        {
            string tmp = jsonPath + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(new { gpu = acc.Name, op = "topk_f16", shape = $"Q{q} N{n} D{d} k{k}", versions = rows },
                new JsonSerializerOptions { WriteIndented = true }));
            File.Move(tmp, jsonPath, overwrite: true);
        }
        return failures == 0 ? 0 : 1;
    }

    // The (version, cluster size) pairs this device runs: 1, 2, 3 and 3 in clusters of four (Hopper, as available).
    private static (int Version, int Cluster)[] Versions(CudaBackend backend) =>
        backend.TopKV3Unavailable is not null ? [(1, 1), (2, 1)]
        : backend.TopKV3ClusterUnavailable is not null ? [(1, 1), (2, 1), (3, 1)]
        : [(1, 1), (2, 1), (3, 1), (3, 4)];

    /// <summary>Version 2 on the cases that stress it, every query checked against an f64 scan and against version 1.</summary>
    public static int Suite()
    {
        using var backend = CudaBackend.Create();
        var cases = new (string Name, int N, int Q, int D, int K, Func<int, int, Half[]> Corpus)[]
        {
            ("partial tiles", 70_001, 300, 768, 10, (n, d) => Uniform(n, d, 21)),
            ("D 72, k 48 (kp 64)", 5_000, 130, 72, 48, (n, d) => Uniform(n, d, 22)),
            ("N below kp", 20, 5, 64, 7, (n, d) => Uniform(n, d, 23)),
            ("k 1", 33_333, 129, 256, 1, (n, d) => Uniform(n, d, 24)),
            ("exact duplicates (ties at the k-th)", 40_000, 64, 128, 10, (n, d) => Duplicated(n, d, 4, 25)),
            ("clustered unit vectors", 200_000, 256, 256, 16, (n, d) => Clustered(n, d, 26)),
            ("4 query tiles (v3 in clusters of 4), partial", 50_001, 500, 768, 10, (n, d) => Uniform(n, d, 27)),
        };
        int failures = 0, runs = 0;
        var versions = Versions(backend).Where(v => v.Version >= 2).ToArray();
        if (backend.TopKV3Unavailable is { } no3) Console.Error.WriteLine($"topk f16 v3: {no3}");
        Console.WriteLine("| case | shape | version | fallbacks | check |");
        Console.WriteLine("|---|---|---|---:|---|");
        foreach (var c in cases)
        {
            var corpus = c.Corpus(c.N, c.D);
            var queries = new float[(long)c.Q * c.D];
            for (long i = 0; i < queries.Length; i++) queries[i] = 2f * CounterRng.Uniform(31, i) - 1f;
            using var corpusDev = backend.Accelerator.Allocate1D(corpus);
            using var qt = backend.Empty(new Shape(c.Q, c.D));
            using var scores = backend.Empty(new Shape(c.Q, c.K));
            using var indices = backend.Empty(new Shape(c.Q, c.K), DType.I32);
            backend.CopyFromHost(queries, qt);
            backend.TopKVersion = 1;
            var (s1, i1) = Search(backend, qt, corpusDev.View, c.K, scores, indices);
            foreach (var (version, cluster) in versions)
            {
                backend.TopKVersion = version;
                backend.TopKCluster = cluster;
                string? problem = null;
                int fallbacks = 0;
                try
                {
                    var (s2, i2) = Search(backend, qt, corpusDev.View, c.K, scores, indices);
                    fallbacks = backend.LastTopKFallbacks;
                    for (int i = 0; i < Math.Min(c.Q, 64) && problem is null; i++) problem = Check(corpus, queries, c.N, c.D, c.K, i, s2, i2);
                    problem ??= SameAs(s1, i1, s2, i2, c.K, "version 1");
                }
                catch (Exception e) when (e is KernelVLException)
                {
                    problem = e.Message;
                }
                runs++;
                if (problem is not null) failures++;
                Console.WriteLine($"| {c.Name} | Q{c.Q} N{c.N} D{c.D} k{c.K} | {version} ({backend.LastTopKScorer}) | {fallbacks} | {problem ?? "ok"} |");
            }
        }
        Console.WriteLine($"{runs - failures} passed, {failures} failed");
        return failures == 0 ? 0 : 1;
    }

    /// <summary>
    /// The "norm bound given" row's verdict: it passes only when the version's own run (unboundProblem: its f64 and
    /// version-1 checks) passed and the given run's lists equal that run's (boundProblem); else its problem.
    /// </summary>
    internal static (bool Ok, string? Problem) GivenBoundVerdict(string? unboundProblem, string? boundProblem) =>
        unboundProblem is not null ? (false, $"the search without the bound failed its check: {unboundProblem}")
        : (boundProblem is null, boundProblem);

    /// <summary>One search into scores and indices filled first with NaN and -1 (what a kernel leaves that writes nothing), copied back.</summary>
    private static (float[] Scores, int[] Indices) Search(CudaBackend backend, Tensor qt, ArrayView<Half> corpus, int k, Tensor scores, Tensor indices, float? bound = null)
    {
        backend.Fill(scores, float.NaN);
        backend.Fill(indices, -1);
        backend.PoisonScratch = true;   // the per-slice and candidate lists too (recycled buffers could hold an earlier version's)
        try { backend.TopKF16(qt, corpus, k, scores, indices, bound); }
        finally { backend.PoisonScratch = false; }
        int q = qt.Shape[0];
        var s = new float[q * k];
        var idx = new int[q * k];
        backend.CopyToHost(scores, s);
        backend.CopyToHost(indices, idx);
        return (s, idx);
    }

    private static Half[] Uniform(int n, int d, ulong stream)
    {
        var x = new Half[(long)n * d];
        Parallel.For(0, n, row =>
        {
            for (int c = 0; c < d; c++) x[(long)row * d + c] = (Half)(2f * CounterRng.Uniform(stream, (long)row * d + c) - 1f);
        });
        return x;
    }

    /// <summary>Each distinct row repeated `copies` times in a row: exact ties everywhere.</summary>
    private static Half[] Duplicated(int n, int d, int copies, ulong stream)
    {
        var x = new Half[(long)n * d];
        for (int row = 0; row < n; row++)
            for (int c = 0; c < d; c++) x[(long)row * d + c] = (Half)(2f * CounterRng.Uniform(stream, (long)(row / copies) * d + c) - 1f);
        return x;
    }

    /// <summary>Unit vectors in 64 tight clusters (centre + 2% noise, normalised): many near-ties among the best.</summary>
    private static Half[] Clustered(int n, int d, ulong stream)
    {
        var x = new Half[(long)n * d];
        Parallel.For(0, n, row =>
        {
            var v = new float[d];
            long centre = row % 64;
            double norm = 0;
            for (int c = 0; c < d; c++)
            {
                v[c] = 2f * CounterRng.Uniform(stream, centre * d + c) - 1f + 0.02f * (2f * CounterRng.Uniform(stream + 1UL, (long)row * d + c) - 1f);
                norm += (double)v[c] * v[c];
            }
            float inv = (float)(1 / Math.Sqrt(norm));
            for (int c = 0; c < d; c++) x[(long)row * d + c] = (Half)(v[c] * inv);
        });
        return x;
    }

    /// <summary>Version 2 must give version 1's lists entry for entry (its rescoring is version 1's arithmetic).</summary>
    private static string? SameAs(float[] s1, int[] i1, float[] s2, int[] i2, int k, string what)
    {
        for (int j = 0; j < s1.Length; j++)
            if (i1[j] != i2[j] || BitConverter.SingleToInt32Bits(s1[j]) != BitConverter.SingleToInt32Bits(s2[j]))
                return $"query {j / k}, rank {j % k}: row {i2[j]} score {s2[j]}, {what} row {i1[j]} score {s1[j]}";
        return null;
    }

    /// <summary>Query i's reported list against exact f64 scores of every corpus row; null when right.</summary>
    internal static string? Check(Half[] corpus, float[] queries, int n, int d, int k, int i, float[] s, int[] idx)
    {
        var exact = new double[n];
        Parallel.For(0, n, row =>
        {
            double dot = 0;
            for (int c = 0; c < d; c++) dot += (double)queries[(long)i * d + c] * (double)corpus[(long)row * d + c];
            exact[row] = dot;
        });
        // Scores carry f32 accumulation over D terms of magnitude <= 1: allow 1e-5 * D of absolute error.
        double tol = 1e-5 * d;
        var seen = new HashSet<int>();
        for (int j = 0; j < k; j++)
        {
            int id = idx[i * k + j];
            if (id < 0 || id >= n) return $"query {i}: index {id} out of range{(id == -1 ? " (not written: the lists were filled with -1)" : "")}";
            if (!float.IsFinite(s[i * k + j])) return $"query {i}, rank {j}: score {s[i * k + j]}{(float.IsNaN(s[i * k + j]) ? " (not written: the lists were filled with NaN)" : "")}";
            if (!seen.Add(id)) return $"query {i}: index {id} twice";
            if (Math.Abs(exact[id] - s[i * k + j]) > tol) return $"query {i}, rank {j}: row {id} scores {exact[id]}, reported {s[i * k + j]}";
            if (j > 0 && s[i * k + j] > s[i * k + j - 1]) return $"query {i}: scores not descending at rank {j}";
        }
        double kth = s[i * k + k - 1];
        for (int row = 0; row < n; row++)
            if (!seen.Contains(row) && exact[row] > kth + tol) return $"query {i}: row {row} scores {exact[row]} > the k-th reported {kth} but is missing";
        return null;
    }
}
