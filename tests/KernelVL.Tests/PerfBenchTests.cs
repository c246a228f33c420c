using KernelVL.Perf;

namespace KernelVL.Tests;

/// <summary>
/// The GPU benches' checks, which run here without a GPU: an output left as the NaN (or -1) it was filled with before a
/// version's call fails (the GEMM's scan of every entry, the top-k list check), the top-k "norm bound given" row passes
/// only with its version's own run, the GEMM summary counts shapes, and `ops` measures the host's peaks only for the
/// backends whose rows use them.
/// </summary>
public sealed class PerfBenchTests
{
    [Fact]
    public void AGemmOutputWithAnUnwrittenEntryFailsTheScan()
    {
        var rng = new Random();
        int m = rng.Next(2, 300), n = rng.Next(2, 300);
        var c = Enumerable.Range(0, m * n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        Assert.Null(GemmBf16Bench.NonFinite(c, n));
        // One skipped tile: the NaN the output was filled with, anywhere (not at a sampled entry).
        int i = rng.Next(m), j = rng.Next(n);
        c[i * n + j] = float.NaN;
        string? problem = GemmBf16Bench.NonFinite(c, n);
        Assert.Contains($"c[{i}, {j}]", problem);
        Assert.Contains("not written", problem);
        c[i * n + j] = float.PositiveInfinity;
        problem = GemmBf16Bench.NonFinite(c, n);
        Assert.Contains($"c[{i}, {j}] = ", problem);
        Assert.DoesNotContain("not written", problem);
    }

    [Fact]
    public void TopKListsLeftAsTheyWereFilledFailTheCheck()
    {
        var rng = new Random();
        const int n = 50, d = 8, k = 3;
        var corpus = Enumerable.Range(0, n * d).Select(_ => (Half)(rng.NextDouble() * 2 - 1)).ToArray();
        var queries = Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        // The exact top 3 in f64, as a correct kernel reports them (f32 scores).
        var exact = Enumerable.Range(0, n).Select(r => (Row: r, Score: Enumerable.Range(0, d).Sum(c => (double)queries[c] * (double)corpus[r * d + c])))
            .OrderByDescending(x => x.Score).Take(k).ToArray();
        var s = exact.Select(x => (float)x.Score).ToArray();
        var idx = exact.Select(x => x.Row).ToArray();
        Assert.Null(TopKF16Bench.Check(corpus, queries, n, d, k, 0, s, idx));

        int rank = rng.Next(k);
        var unwrittenScore = (float[])s.Clone();
        unwrittenScore[rank] = float.NaN;   // (NaN compares false: without its own test it passed the score and order checks)
        Assert.Contains($"rank {rank}: score NaN (not written", TopKF16Bench.Check(corpus, queries, n, d, k, 0, unwrittenScore, idx));
        var unwrittenIndex = (int[])idx.Clone();
        unwrittenIndex[rank] = -1;
        Assert.Contains("index -1 out of range (not written", TopKF16Bench.Check(corpus, queries, n, d, k, 0, s, unwrittenIndex));
    }

    [Fact]
    public void TheNormBoundGivenRowPassesOnlyWithItsVersionsOwnRun()
    {
        Assert.Equal((true, null), TopKF16Bench.GivenBoundVerdict(null, null));
        Assert.Equal((false, "query 1, rank 0: differs"), TopKF16Bench.GivenBoundVerdict(null, "query 1, rank 0: differs"));
        // The version's own run failed its f64 check: the bound run reproducing the same wrong lists does not pass.
        var (ok, problem) = TopKF16Bench.GivenBoundVerdict("query 0: row 5 missing", null);
        Assert.False(ok);
        Assert.Contains("without the bound failed its check: query 0: row 5 missing", problem);
        Assert.False(TopKF16Bench.GivenBoundVerdict("query 0: row 5 missing", "query 1 differs").Ok);
    }

    [Fact]
    public void TheGemmSummaryCountsShapesNotVersionChecks()
    {
        // Four shapes, one of which failed in five versions: three passed (it printed "-1 passed" before).
        Assert.Equal("3 of 4 shapes passed every check, 1 failed (5 version checks failed)", GemmBf16Bench.PassedLine(4, 1, 5));
        Assert.Equal("4 of 4 shapes passed every check, 0 failed (0 version checks failed)", GemmBf16Bench.PassedLine(4, 0, 0));
        Assert.Equal("0 of 1 shapes passed every check, 1 failed (1 version check failed)", GemmBf16Bench.PassedLine(1, 1, 1));
    }

    [Fact]
    public void OpsMeasuresTheHostsPeaksOnlyForTheBackendsThatRunOnIt()
    {
        foreach (string name in KernelVL.Backends.BackendFactory.Names)
            Assert.Equal(name is "reference" or "cpu" or "ilgpu-cpu", Peaks.ForBackend(name));
    }
}
