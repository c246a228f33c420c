using System.Diagnostics;
using System.Text.Json.Nodes;
using KernelVL.Retrieval;

namespace KernelVL.Tests;

/// <summary>The kernelvl executable end to end on the tiny synthetic Karpathy set: index, search, eval, exit codes, a killed index build.</summary>
public sealed class CliTests(TinyShapesFixture fx) : IClassFixture<TinyShapesFixture>
{
    private static readonly string Exe = BuiltOutput.Dll(Path.Combine("src", "KernelVL.Cli"), "kernelvl.dll");

    public static Process Start(params string[] args) => Start(null, args);

    /// <param name="env">extra environment variables for the child process</param>
    public static Process Start(IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Exe);
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        return Process.Start(psi)!;
    }

    public static (int Code, string Out, string Err) Run(params string[] args) => Run(null, args);

    public static (int Code, string Out, string Err) Run(IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        using var p = Start(env, args);
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(180_000)) { p.Kill(true); throw new TimeoutException($"kernelvl {string.Join(' ', args)} did not finish"); }
        return (p.ExitCode, o.Result, e.Result);
    }

    private string Tmp() => Path.Combine(fx.Dir, "cli-" + Guid.NewGuid().ToString("N"));
    private string Images => Path.GetDirectoryName(fx.Data)!;

    [Fact]
    public void IndexSearchAndEvalEndToEnd()
    {
        string idx = Tmp();
        var r = Run("index", "--model", fx.Init, "--data", fx.Data, "--images", Images, "--split", "test", "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("indexed 16 images and 80 captions", r.Out);
        r = Run("search", "--model", fx.Init, "--index", idx, "--text", "a small red circle left of a large blue square", "-k", "3", "--json", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        var res = JsonNode.Parse(r.Out)!["results"]!.AsArray();
        Assert.Equal(3, res.Count);
        Assert.All(res, x => Assert.True(File.Exists(Path.Combine(Images, (string)x!["path"]!))));
        Assert.True((float)res[0]!["score"]! >= (float)res[1]!["score"]!);
        string img = Path.Combine(Images, "images", "000200.png");
        r = Run("search", "--model", fx.Init, "--index", idx, "--image", img, "-k", "2", "--rerank", "5", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("cross", r.Out);
        string json = Path.Combine(idx, "eval.json");
        r = Run("eval", "--model", fx.Init, "--data", fx.Data, "--mode", "all", "--limit", "8", "--rerank-k", "4", "--json", json, "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        var doc = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal(8, (int)doc["images"]!);
        Assert.Equal(40, (int)doc["captions"]!);
        Assert.Equal(["decomposed", "cross", "rerank"], doc["modes"]!.AsArray().Select(m => (string)m!["mode"]!));
        Assert.All(doc["modes"]!.AsArray(), m => Assert.InRange((double)m!["i2t"]!["r10"]!, (double)m["i2t"]!["r1"]!, 100));
        Assert.Equal(8 * 40, (long)doc["modes"]![1]!["cross_pairs"]!);
    }

    [Fact]
    public void BadInputIsOneLineAndExitCode2()
    {
        foreach (var args in new[]
        {
            new[] { "search", "--model", fx.Init, "--index", Tmp() , "--device", "cpu", "--text", "x" },
            new[] { "search", "--model", fx.Init, "--index", Tmp(), "--device", "cpu" },
            new[] { "eval", "--model", fx.Init, "--data", Path.Combine(fx.Dir, "missing.json"), "--device", "cpu" },
            new[] { "index", "--model", Path.Combine(fx.Dir, "no-model"), "--images", Images, "--out", Tmp() },
            new[] { "decompose", "--model", fx.Init, "--data", fx.Data, "--out", Tmp(), "--batch", "1" },
            new[] { "eval", "--model", fx.Init, "--data", fx.Data, "--mode", "fast" },
            new[] { "index", "--bogus" },
        })
        {
            var r = Run(args);
            Assert.True(r.Code == 2, $"{string.Join(' ', args)}: exit {r.Code}, {r.Err}");
            Assert.StartsWith("kernelvl: bad input:", r.Err.Trim());
            Assert.DoesNotContain("   at ", r.Err);   // no stack trace without --verbose
        }
    }

    [Fact]
    public void AnIndexBuildKilledWithSigkillLeavesASearchableIndexAndResumes()
    {
        // Enough images in small segments that the build is still running when it is killed.
        string folder = Tmp();
        Directory.CreateDirectory(folder);
        var sources = Directory.GetFiles(Path.Combine(Images, "images"), "*.png");
        for (int copy = 0; copy < 4; copy++)
            foreach (var s in sources) File.Copy(s, Path.Combine(folder, $"{copy}-{Path.GetFileName(s)}"));
        int total = sources.Length * 4;
        string idx = Tmp();
        using (var p = Start("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--batch", "4", "--device", "cpu"))
        {
            var sw = Stopwatch.StartNew();
            int rows = 0;
            while (sw.Elapsed.TotalSeconds < 120 && !p.HasExited)
            {
                try { rows = (int)JsonNode.Parse(File.ReadAllText(Path.Combine(idx, "manifest.json")))!["collections"]!["image"]!["rows"]!; }
                catch (Exception e) when (e is IOException or System.Text.Json.JsonException or NullReferenceException) { }
                if (rows >= 40) break;
                Thread.Sleep(5);
            }
            Assert.False(p.HasExited, "the build finished before it could be killed");
            p.Kill(entireProcessTree: true);   // SIGKILL
            p.WaitForExit();
        }
        var killed = EmbeddingIndex.Open(idx, EmbeddingIndex.Fingerprint(fx.Init));
        int got = killed.Collections["image"].Rows;
        Assert.InRange(got, 40, total - 1);
        var r = Run("search", "--model", fx.Init, "--index", idx, "--text", "a large green square above a small red cross", "-k", "5", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "64", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains($"resuming: {got} images", r.Err);
        var done = EmbeddingIndex.Open(idx, EmbeddingIndex.Fingerprint(fx.Init));
        Assert.Equal(total, done.Collections["image"].Rows);
        var ids = Enumerable.Range(0, total).Select(i => done.Item("image", i).Id).ToList();
        Assert.Equal(total, ids.Distinct().Count());
    }

    [Fact]
    public void TheQuickDemoRunsTheWholePipelineAndWritesItsReport()
    {
        string dir = Tmp();
        var r = Run("demo", "--quick", "--out", dir, "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        foreach (var f in new[] { "report.md", "results.json", "recall.png", "examples.png", "baseline-loss.png", "data/dataset.json",
                     "stage1/model.safetensors", "stage1/loss.png", "stage2/model.safetensors", "stage2/recall.png" })
            Assert.True(File.Exists(Path.Combine(dir, f)), f);
        var doc = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!;
        Assert.Equal(["decomposed", "cross", "rerank"], doc["modes"]!.AsArray().Select(m => (string)m!["mode"]!));
        Assert.Equal("bag_of_words", (string)doc["baseline"]!["mode"]!);
        Assert.Equal(3, doc["acceptance"]!.AsArray().Count);
        Assert.True((double)doc["timings"]!["total_seconds"]! > 0);
        Assert.Contains("## Test retrieval", File.ReadAllText(Path.Combine(dir, "report.md")));
        // The checkpoints it leaves are usable by the other commands.
        r = Run("eval", "--model", Path.Combine(dir, "stage2"), "--data", Path.Combine(dir, "data", "dataset.json"), "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
    }
}
