using KernelVL.Perf;

namespace KernelVL.Tests;

/// <summary>
/// The GPU benches' checks, which run here without a GPU: a GEMM output left as the NaN it was filled with before a
/// version's call fails the scan of every entry, and the GEMM summary counts shapes.
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
    public void TheGemmSummaryCountsShapesNotVersionChecks()
    {
        // Four shapes, one of which failed in five versions: three passed (it printed "-1 passed" before).
        Assert.Equal("3 of 4 shapes passed every check, 1 failed (5 version checks failed)", GemmBf16Bench.PassedLine(4, 1, 5));
        Assert.Equal("4 of 4 shapes passed every check, 0 failed (0 version checks failed)", GemmBf16Bench.PassedLine(4, 0, 0));
        Assert.Equal("0 of 1 shapes passed every check, 1 failed (1 version check failed)", GemmBf16Bench.PassedLine(1, 1, 1));
    }
}
