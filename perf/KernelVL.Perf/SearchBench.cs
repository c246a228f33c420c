using System.Diagnostics;
using System.Text.Json;
using KernelVL.Backends;
using KernelVL.IO;
using KernelVL.Retrieval;

namespace KernelVL.Perf;

/// <summary>
/// Search throughput of the persistent index (issue "retrieval", Numbers): exact top-10 for 1, 32 and 1024 queries over a
/// random 100k x 768 index (f16 and f32 segments on disk, memory-mapped), through EmbeddingIndex.Search on a backend,
/// as queries/s and as fractions of the machine's measured FMA peak (2 Q N D flops) and copy bandwidth (the corpus read once).
/// On a backend other than cpu, each case's hits are first checked against the cpu backend's (scores within 1e-5, the
/// same rows wherever neighbouring scores are further apart than that).
/// </summary>
public static class SearchBench
{
    public static int Run(string[] args)
    {
        string backendName = "cpu", json = "";
        int n = 100_000, d = 768, k = 10;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--backend": backendName = Next(); break;
                case "--json": json = Next(); break;
                case "--n": n = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown option '{args[i]}'");
            }
        }
        if (BackendFactory.Unavailable(backendName) is { } why) throw new ArgumentException(why);
        Console.Error.WriteLine("measuring peaks ...");
        double fma = Peaks.FmaGflops();
        double copy = Peaks.Median(Peaks.CopyGbpsSamples());
        using var backend = BackendFactory.Create(backendName);
        using var reference = backendName == "cpu" ? null : BackendFactory.Create("cpu");
        var rng = new Random(1);
        int failures = 0;
        var rows = new List<object>();
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-searchbench-" + Guid.NewGuid().ToString("N"));
        try
        {
            foreach (var dtype in new[] { VectorDType.F32, VectorDType.F16 })
            {
                var idx = EmbeddingIndex.CreateOrResume(Path.Combine(dir, dtype.ToString()), "bench", d, dtype, null);
                const int seg = 16384;
                for (int s = 0; s < n; s += seg)
                {
                    int m = Math.Min(seg, n - s);
                    var v = new float[m * d];
                    for (int i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() - 0.5) * 0.07f;
                    idx.Append("image", Enumerable.Range(s, m).Select(i => new IndexItem("image", 0, $"r{i}")).ToList(), v);
                }
                var opened = EmbeddingIndex.Open(idx.Folder, verify: false);
                foreach (int q in new[] { 1, 32, 1024 })
                {
                    var queries = new float[q * d];
                    for (int i = 0; i < queries.Length; i++) queries[i] = (float)(rng.NextDouble() - 0.5) * 0.07f;
                    var got = opened.Search(backend, "image", queries, k);   // warm-up: page cache, JIT, pools
                    string check = reference is null ? "-" : Compare(got, opened.Search(reference, "image", queries, k)) ?? "ok";
                    if (check != "ok" && check != "-") { failures++; Console.Error.WriteLine($"search {dtype} Q{q}: FAIL {check}"); }
                    var times = new List<double>();
                    var total = Stopwatch.StartNew();
                    while (times.Count < 3 || (total.Elapsed.TotalSeconds < 3 && times.Count < 50))
                    {
                        var sw = Stopwatch.StartNew();
                        opened.Search(backend, "image", queries, k);
                        times.Add(sw.Elapsed.TotalSeconds);
                    }
                    times.Sort();
                    double t = times[times.Count / 2];
                    double gflops = 2.0 * q * n * d / t / 1e9, gbps = (double)n * d * (dtype == VectorDType.F16 ? 2 : 4) / t / 1e9;
                    rows.Add(new { backend = backendName, dtype = dtype.ToString().ToLowerInvariant(), queries = q, n, d, k, median_ms = Math.Round(t * 1e3, 3),
                        queries_per_s = Math.Round(q / t, 1), gflops = Math.Round(gflops, 1), of_fma_peak = Math.Round(gflops / fma, 3), corpus_gbps = Math.Round(gbps, 2), of_copy_peak = Math.Round(gbps / copy, 3), check });
                    Console.WriteLine($"| {backendName} | {dtype.ToString().ToLowerInvariant()} | {q} | {t * 1e3:F1} | {q / t:F1} | {gflops:F1} | {gflops / fma:P0} | {gbps:F1} | {gbps / copy:P0} | {check} |");
                }
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
        Console.WriteLine($"peaks: FMA {fma:F0} GFLOP/s, copy {copy:F1} GB/s (same run); index {n} x {d}, top-{k}; columns: backend, dtype, queries, median ms, queries/s, GFLOP/s, of FMA peak, corpus GB/s, of copy peak, check against cpu");
        if (json.Length > 0)
            AtomicFile.WriteAllText(json, JsonSerializer.Serialize(new { fma_gflops = Math.Round(fma, 1), copy_gbps = Math.Round(copy, 1), rows }, new JsonSerializerOptions { WriteIndented = true }));
        return failures == 0 ? 0 : 1;
    }

    /// <summary>Null when each query's hits agree with the reference's: scores within 1e-5, rows where not tied.</summary>
    private static string? Compare(List<SearchHit>[] got, List<SearchHit>[] want)
    {
        const double tol = 1e-5;
        for (int i = 0; i < want.Length; i++)
        {
            if (got[i].Count != want[i].Count) return $"query {i}: {got[i].Count} hits, expected {want[i].Count}";
            for (int r = 0; r < want[i].Count; r++)
            {
                if (Math.Abs(got[i][r].Score - want[i][r].Score) > tol) return $"query {i}, rank {r}: score {got[i][r].Score}, expected {want[i][r].Score}";
                bool apart = (r == 0 || want[i][r - 1].Score - want[i][r].Score > tol) && (r + 1 == want[i].Count || want[i][r].Score - want[i][r + 1].Score > tol);
                if (apart && got[i][r].Item.Row != want[i][r].Item.Row) return $"query {i}, rank {r}: row {got[i][r].Item.Row}, expected {want[i][r].Item.Row}";
            }
        }
        return null;
    }
}
