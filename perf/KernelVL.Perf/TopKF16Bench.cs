using System.Text.Json;
using ILGPU.Runtime;
using KernelVL.Backends.Cuda;
using KernelVL.Tensors;

namespace KernelVL.Perf;

/// <summary>
/// The issue's retrieval target on the cuda backend: exact top-k over an f16 corpus (default 1M x 768, 1.5 GB, the
/// size of a real index) for a batch of f32 queries. The registry cannot hold f16 tensors, so this is its own case:
/// random data (never zeros), the first few queries checked against an f64 scan of the whole corpus (tie-aware: every
/// reported score recomputed, no duplicates, descending, and no row better than the k-th reported one left out),
/// then timed with CUDA events.
/// </summary>
internal static class TopKF16Bench
{
    public static int Run(int n, int q, int d, int k, int checkQueries, string? jsonPath)
    {
        using var backend = CudaBackend.Create();
        var acc = backend.Accelerator;
        Console.Error.WriteLine($"topk f16: generating a {n} x {d} f16 corpus ({(double)n * d * 2 / 1e9:F2} GB) and {q} queries ...");
        var corpus = new Half[(long)n * d];                                          // [N, D] f16, values in [-1, 1)
        Parallel.For(0, n, row =>
        {
            for (int c = 0; c < d; c++) corpus[(long)row * d + c] = (Half)(2f * CounterRng.Uniform(11, (long)row * d + c) - 1f);
        });
        var queries = new float[(long)q * d];                                        // [Q, D]
        for (long i = 0; i < queries.Length; i++) queries[i] = 2f * CounterRng.Uniform(12, i) - 1f;
        using var corpusDev = acc.Allocate1D(corpus);
        using var qt = backend.Empty(new Shape(q, d));
        using var scores = backend.Empty(new Shape(q, k));                           // [Q, k]
        using var indices = backend.Empty(new Shape(q, k), DType.I32);               // [Q, k]
        backend.CopyFromHost(queries, qt);
        backend.TopKF16(qt, corpusDev.View, k, scores, indices);
        var s = new float[q * k];
        var idx = new int[q * k];
        backend.CopyToHost(scores, s);
        backend.CopyToHost(indices, idx);
        string? problem = null;
        for (int i = 0; i < Math.Min(checkQueries, q) && problem is null; i++) problem = Check(corpus, queries, n, d, k, i, s, idx);
        Console.Error.WriteLine(problem is null ? $"topk f16: the first {Math.Min(checkQueries, q)} queries match an f64 scan" : $"topk f16: FAIL {problem}");

        double ms = backend.MedianMs(() => backend.TopKF16(qt, corpusDev.View, k, scores, indices), warmup: 2, reps: 10);
        double bytes = (double)n * d * 2 + (double)q * d * 4, flops = 2.0 * q * n * d;
        Console.WriteLine("| op | shape | median ms | GB/s (corpus once) | TFLOP/s | check |");
        Console.WriteLine("|---|---|---:|---:|---:|---|");
        Console.WriteLine($"| topk_f16 | Q{q} N{n} D{d} k{k} | {ms:F3} | {bytes / (ms / 1e3) / 1e9:F1} | {flops / (ms / 1e3) / 1e12:F2} | {problem ?? "ok"} |");
        if (jsonPath is not null)
        {
            string tmp = jsonPath + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(new
            {
                gpu = acc.Name, op = "topk_f16", shape = $"Q{q} N{n} D{d} k{k}", median_ms = ms, bytes, flops, ok = problem is null, problem,
            }, new JsonSerializerOptions { WriteIndented = true }));
            File.Move(tmp, jsonPath, overwrite: true);
        }
        return problem is null ? 0 : 1;
    }

    /// <summary>Query i's reported list against exact f64 scores of every corpus row; null when right.</summary>
    private static string? Check(Half[] corpus, float[] queries, int n, int d, int k, int i, float[] s, int[] idx)
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
            if (id < 0 || id >= n) return $"query {i}: index {id} out of range";
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
