using System.Diagnostics;
using System.Text.Json.Nodes;
using KernelVL.IO;
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
    public void ACheckpointsStageThatDoesNotSuitItsUseIsWarnedAbout()
    {
        // A copy of the fixture's model marked as each stage (config.json's kernelvl_stage, as pretrain/decompose write it).
        string Marked(string stage)
        {
            string dir = Tmp();
            Directory.CreateDirectory(dir);
            foreach (var f in Directory.GetFiles(fx.Init)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["kernelvl_stage"] = stage;
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            return dir;
        }
        string stage1 = Marked("pretrain"), stage2 = Marked("decompose");
        (int Code, string Out, string Err) Eval(string model, string mode, params string[] more) =>
            Run(["eval", "--model", model, "--data", fx.Data, "--mode", mode, "--limit", "4", "--rerank-k", "2", "--device", "cpu", .. more]);
        // Encoding with a stage-1 model; scoring pairs with a stage-2 one (itself, or as --cross-model).
        var r = Eval(stage1, "decomposed");
        Assert.True(r.Code == 0 && r.Err.Contains($"--model {stage1} is a stage-1 (pretrain) checkpoint") && !r.Err.Contains("stage-2"), r.Err);
        r = Eval(stage2, "cross");
        Assert.True(r.Code == 0 && r.Err.Contains($"--model {stage2} is a stage-2 (decompose) checkpoint scoring image-caption pairs") && !r.Err.Contains("(pretrain)"), r.Err);
        r = Eval(stage2, "rerank", "--cross-model", stage2);
        Assert.True(r.Code == 0 && r.Err.Contains($"--cross-model {stage2} is a stage-2"), r.Err);
        // The intended pairings, and checkpoints that record no stage, say nothing.
        foreach (var (model, mode, cross) in new[] { (stage2, "decomposed", (string?)null), (stage1, "cross", null), (stage2, "all", stage1), (fx.Init, "all", null) })
        {
            r = cross is null ? Eval(model, mode) : Eval(model, mode, "--cross-model", cross);
            Assert.True(r.Code == 0 && !r.Err.Contains("warning"), $"{mode}: {r.Err}");
        }
    }

    [Fact]
    public void EvalJsonNeverReplacesAnInputAndSkippedImagesAreCounted()
    {
        // The audit's --json onto the dataset, into the checkpoint, onto a user's file: each replaced it, exit 0. Now
        // refused before the evaluation runs, and nothing is touched.
        string dir = Tmp();
        Directory.CreateDirectory(dir);
        string data = Path.Combine(dir, "d.json");
        var ds = JsonNode.Parse(File.ReadAllText(fx.Data))!;
        var test = ds["images"]!.AsArray().Where(i => (string)i!["split"]! == "test").ToList();
        test[1]!["filename"] = "missing.png";   // one of the first 4 test images cannot be read
        File.WriteAllText(data, ds.ToJsonString());
        string before = File.ReadAllText(data), notes = Path.Combine(dir, "notes.txt");
        File.WriteAllText(notes, "mine");
        string[] Args(string json, params string[] more) => ["eval", "--model", fx.Init, "--data", data, "--images", Images, "--limit", "4", "--json", json, "--device", "cpu", .. more];
        var cases = new List<(string, string)> { (data, "is the dataset being evaluated"), (Path.Combine(fx.Init, "results.json"), "an input of this run"), (notes, "is not the results file of an earlier eval") };
        if (!OperatingSystem.IsWindows())   // a link to the dataset is the dataset (writes go through links)
        {
            string link = Path.Combine(dir, "link.json");
            File.CreateSymbolicLink(link, data);
            cases.Add((link, "is the dataset being evaluated"));
        }
        foreach (var (json, why) in cases)
        {
            var bad = Run(Args(json));
            Assert.True(bad.Code == 2 && bad.Err.Contains(why), $"{json}: exit {bad.Code}, {bad.Err}");
            Assert.DoesNotContain("| mode", bad.Out);   // refused before evaluating
        }
        Assert.Equal(before, File.ReadAllText(data));
        Assert.Equal("mine", File.ReadAllText(notes));
        Assert.False(File.Exists(Path.Combine(fx.Init, "results.json")));
        // An earlier results file is replaced; the unreadable image is counted in the table and the JSON.
        string results = Path.Combine(dir, "results.json");
        for (int run = 0; run < 2; run++)
        {
            var ok = Run(Args(results));
            Assert.True(ok.Code == 0, ok.Err);
            Assert.Contains("3 images, 15 captions (1 more of the split's images could not be read", ok.Out);
        }
        var doc = JsonNode.Parse(File.ReadAllText(results))!;
        Assert.Equal(3, (int)doc["images"]!);
        Assert.Equal(1, (int)doc["skipped_images"]!);
        var strict = Run(Args(Path.Combine(dir, "strict.json"), "--strict"));
        Assert.True(strict.Code == 2 && strict.Err.Contains("missing.png"), strict.Err);
        // A batch past the cap (100000 filled a 24 GB machine) is refused.
        var big = Run(Args(Path.Combine(dir, "big.json"), "--batch", "100000"));
        Assert.True(big.Code == 2 && big.Err.Contains("--batch must be 1..4096"), big.Err);
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
            new[] { "decompose", "--model", fx.Init, "--data", fx.Data, "--out", Tmp(), "--batch", "48", "--epochs", "600000000", "--device", "cpu" },
            new[] { "eval", "--model", fx.Init, "--data", fx.Data, "--mode", "fast" },
            new[] { "index", "--bogus" },
            new[] { "eval", "--model", fx.Init, "--data", "", "--device", "cpu" },   // empty paths: exit 1 and a .NET message before
            new[] { "eval", "--model", fx.Init, "--data", fx.Data, "--json", " " },
            new[] { "pretrain", "--data", fx.Data, "--out", "", "--config", "tiny" },
            new[] { "shapes", "--out", "" },   // wrote 2700 images into the current folder
        })
        {
            var r = Run(args);
            Assert.True(r.Code == 2, $"{string.Join(' ', args)}: exit {r.Code}, {r.Err}");
            var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("kernelvl: warning:")).ToList();
            Assert.True(lines.Count == 1, $"{string.Join(' ', args)}: {r.Err}");   // one line (warnings aside, e.g. a folder's other files)
            Assert.StartsWith("kernelvl: bad input:", lines[0]);
            Assert.DoesNotContain("   at ", r.Err);   // no stack trace without --verbose
            if (args.Contains("") || args.Contains(" ")) Assert.Contains("an empty value", r.Err);
        }
    }

    [Fact]
    public void ATrainingRunIntoAnOutInUseIsOneLineAndExitCode2()
    {
        string o = Tmp();
        Directory.CreateDirectory(o);
        // Held as a running kernelvl holds it (an exclusive lock on the file; on Linux, flock).
        using var held = new FileStream(Path.Combine(o, KernelVL.Training.Trainer.LockFile), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        var r = Run("decompose", "--model", fx.Init, "--data", fx.Data, "--out", o, "--epochs", "1", "--batch", "48", "--eval-images", "4", "--device", "cpu");
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        Assert.Equal($"kernelvl: bad input: --out {o}: another kernelvl process is using it (a training run); wait for it to end, or give another folder", r.Err.Trim());
        Assert.Equal([KernelVL.Training.Trainer.LockFile], Directory.GetFileSystemEntries(o).Select(Path.GetFileName));
    }

    [Fact]
    public void AResumedRunNamesTheBestCheckpointThatDidNotChange()
    {
        // A fresh run's summary ends with its best checkpoint; a resume whose evaluations (here none: the run had
        // finished) did not replace it printed no best line at all.
        string o = Tmp();
        string[] args = ["decompose", "--model", fx.Init, "--data", fx.Data, "--out", o, "--epochs", "1", "--batch", "48", "--eval-images", "4", "--device", "cpu"];
        static string Best((int Code, string Out, string Err) r) =>
            r.Code == 0 ? r.Out.Split('\n').SingleOrDefault(l => l.StartsWith("best: ", StringComparison.Ordinal)) ?? $"no best line in: {r.Out}" : $"exit {r.Code}: {r.Err}";
        string fresh = Best(Run(args));
        Assert.StartsWith("best: step 4 (epoch 1), i2t R@1 ", fresh);
        Assert.Equal(fresh, Best(Run([.. args, "--resume"])));
        // A trainer state written before it recorded the best's evaluation: found in metrics.jsonl.
        string state = Path.Combine(o, KernelVL.Training.Trainer.LastFolder, KernelVL.Training.Trainer.StateFile);
        var st = JsonNode.Parse(File.ReadAllText(state))!.AsObject();
        Assert.True(st.Remove("best"));
        File.WriteAllText(state, st.ToJsonString());
        Assert.Equal(fresh, Best(Run([.. args, "--resume"])));
    }

    [Fact]
    public void PretrainFromACheckpointRefusesTheOptionsOfAModelFromScratch()
    {
        // --config and --vocab beside --init were ignored without a word (the model is the checkpoint's); now refused,
        // naming them, before anything is written. --config's default stays out of the way.
        string vocab = Path.Combine(fx.Dir, "vocab.txt");
        foreach (var (more, named) in new[]
        {
            (new[] { "--config", "tiny" }, "--config: sets up a model trained from scratch, but --init "),
            (["--vocab", vocab], "--vocab: sets up"),
            (["--config", "small", "--vocab", vocab], "--config and --vocab: set up a model trained from scratch"),
        })
        {
            string o = Tmp();
            var r = Run(["pretrain", "--init", fx.Init, "--data", fx.Data, "--out", o, .. more, "--device", "cpu"]);
            Assert.True(r.Code == 2, $"{string.Join(' ', more)}: exit {r.Code}, {r.Err}");
            Assert.StartsWith($"kernelvl: bad input: {named}", r.Err);
            Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.False(Path.Exists(o), $"{string.Join(' ', more)}: left {o} behind");
        }
        string run = Tmp();
        var ok = Run("pretrain", "--init", fx.Init, "--data", fx.Data, "--out", run, "--epochs", "1", "--batch", "48", "--eval-images", "4", "--device", "cpu");
        Assert.True(ok.Code == 0, ok.Err);
        // A run started before the refusal with --init and --config tiny recorded tiny in its fingerprint: it resumes
        // without --config (which it may no longer be given), saying that the recorded one is not checked.
        string state = Path.Combine(run, "train", "last", "trainer_state.json");
        var st = JsonNode.Parse(File.ReadAllText(state))!.AsObject();
        string fp = (string)st["fingerprint"]!;
        Assert.Contains("|small|", fp);
        st["fingerprint"] = fp.Replace("|small|", "|tiny|");
        File.WriteAllText(state, st.ToJsonString());
        var resumed = Run("pretrain", "--init", fx.Init, "--data", fx.Data, "--out", run, "--epochs", "1", "--batch", "48", "--eval-images", "4", "--device", "cpu", "--resume");
        Assert.True(resumed.Code == 0 && resumed.Err.Contains("recorded --config tiny, which --init makes moot: not checked"), resumed.Err);
        // Any other option that differs is still refused.
        st["fingerprint"] = fp.Replace("|small|", "|tiny|").Replace(fx.Data, fx.Data + ".other");
        File.WriteAllText(state, st.ToJsonString());
        var refused = Run("pretrain", "--init", fx.Init, "--data", fx.Data, "--out", run, "--epochs", "1", "--batch", "48", "--eval-images", "4", "--device", "cpu", "--resume");
        Assert.True(refused.Code == 2 && refused.Err.Contains("written by a run with other options (--data, --config)"), refused.Err);
    }

    [SkippableFact]
    public async Task TrainingStoppedBySigtermWritesItsCheckpointAsCtrlCDoes()
    {
        Skip.If(OperatingSystem.IsWindows(), "SIGTERM is POSIX");
        string o = Tmp();
        using var p = Start("decompose", "--model", fx.Init, "--data", fx.Data, "--out", o, "--epochs", "100", "--batch", "48", "--eval-images", "4", "--checkpoint-every", "1000", "--device", "cpu");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        string metrics = Path.Combine(o, KernelVL.Training.Trainer.MetricsFile);
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < 60 && !p.HasExited && (!File.Exists(metrics) || File.ReadAllLines(metrics).Length < 2)) Thread.Sleep(10);
        Assert.False(p.HasExited, "the run ended before it could be stopped");
        using (var kill = Process.Start("kill", ["-TERM", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
        Assert.True(p.WaitForExit(60_000), "the run did not stop on SIGTERM");
        string err = await stderr, text = await stdout;
        Assert.True(p.ExitCode == 143, $"exit {p.ExitCode}: {err}");
        var m = System.Text.RegularExpressions.Regex.Match(text, @"stopped at step (\d+): its checkpoint is written");
        Assert.True(m.Success, text + err);
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(o, KernelVL.Training.Trainer.LastFolder, KernelVL.Training.Trainer.StateFile)))!;
        Assert.Equal(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), (int)state["step"]!);
    }

    [Fact]
    public void FailedCommandsAreOneLineAndLeaveNothingBehind()
    {
        // Each: the arguments, a part of the one-line message, and the output path that must not exist afterwards.
        string emptyImages = Tmp(); Directory.CreateDirectory(emptyImages);
        string badJson = Path.Combine(fx.Dir, "cli-bad.json"); File.WriteAllText(badJson, "{\"images\": [1, 2");
        string zeroWeights = Tmp(); CopyFolder(fx.Init, zeroWeights); File.WriteAllBytes(Path.Combine(zeroWeights, "model.safetensors"), []);
        string wide = Tmp(); CopyFolder(fx.Init, wide);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(wide, "config.json")))!;
        cfg["hidden_size"] = 8192;
        File.WriteAllText(Path.Combine(wide, "config.json"), cfg.ToJsonString());
        string huge = Tmp(); CopyFolder(fx.Init, huge);   // 2^30: the weight count wrapped a long (out of memory, exit 1)
        cfg["hidden_size"] = 1 << 30; cfg["intermediate_size"] = 1 << 30; cfg["num_attention_heads"] = 1;
        File.WriteAllText(Path.Combine(huge, "config.json"), cfg.ToJsonString());
        string nan = Tmp(); CopyFolder(fx.Init, nan);   // a diverged run's weights: "a NaN score" at the end, exit 1
        {
            var names = new List<SafeTensorsWriter.Entry>();
            using (var f = SafeTensorsFile.Open(Path.Combine(fx.Init, "model.safetensors")))
                foreach (var (n, info) in f.Tensors) names.Add(new(n, info.Shape, f.ReadF32(n)));
            names[^1].Values[names[^1].Values.Length / 2] = float.NaN;
            SafeTensorsWriter.Write(Path.Combine(nan, "model.safetensors"), names);
        }
        string decomposed = Tmp(); CopyFolder(fx.Init, decomposed);   // as decompose writes its output
        var marked = JsonNode.Parse(File.ReadAllText(Path.Combine(decomposed, "config.json")))!;
        marked["kernelvl_stage"] = "decompose";
        File.WriteAllText(Path.Combine(decomposed, "config.json"), marked.ToJsonString());
        string[] Out(string o) => ["--out", o];
        var cases = new List<(string[] Args, string Message, string? Absent)>();
        void Case(string message, string? absent, params string[] args) => cases.Add((args, message, absent));
        string o1 = Tmp(), o2 = Tmp(), o3 = Tmp(), o4 = Tmp(), o5 = Tmp(), o6 = Tmp(), o7 = Tmp(), o8 = Tmp();
        Case("no images", o1, ["index", "--model", fx.Init, "--images", emptyImages, .. Out(o1), "--device", "cpu"]);
        Case("not valid JSON", o2, ["index", "--model", fx.Init, "--images", Images, "--data", badJson, .. Out(o2), "--device", "cpu"]);
        Case("no such file", o3, ["pretrain", "--data", fx.Data, "--vocab", Path.Combine(fx.Dir, "no-vocab.txt"), .. Out(o3), "--device", "cpu"]);
        Case("unknown config preset", o4, ["pretrain", "--data", fx.Data, "--config", "huge", .. Out(o4), "--device", "cpu"]);
        Case("model.safetensors", o5, ["decompose", "--model", zeroWeights, "--data", fx.Data, .. Out(o5), "--device", "cpu"]);
        Case("is already decomposed (written by decompose", o8, ["decompose", "--model", decomposed, "--data", fx.Data, .. Out(o8), "--device", "cpu"]);
        Case("--temperature must be finite", o6, ["decompose", "--model", fx.Init, "--data", fx.Data, "--temperature", "Infinity", .. Out(o6), "--device", "cpu"]);
        Case("raise --temperature (now 1E-30", null, ["decompose", "--model", fx.Init, "--data", fx.Data, "--temperature", "1e-30", "--epochs", "1", "--batch", "48", "--eval-images", "4", .. Out(Tmp()), "--device", "cpu"]);
        Case("does not belong to these weights", null, ["eval", "--model", wide, "--data", fx.Data, "--device", "cpu"]);
        Case("does not belong to these weights", null, ["eval", "--model", huge, "--data", fx.Data, "--device", "cpu"]);
        Case("holds NaN at element", null, ["eval", "--model", nan, "--data", fx.Data, "--device", "cpu"]);
        Case("--limit must be >= 0", null, ["eval", "--model", fx.Init, "--data", fx.Data, "--limit", "-1", "--device", "cpu"]);
        Case("--rerank-k must be at least 1", null, ["eval", "--model", fx.Init, "--data", fx.Data, "--mode", "rerank", "--rerank-k", "0", "--device", "cpu"]);
        Case("is a folder, not a file", null, ["eval", "--model", fx.Init, "--data", fx.Data, "--json", fx.Dir, "--device", "cpu"]);
        Case("is a folder, not an image file", null, ["search", "--model", fx.Init, "--index", o7, "--image", fx.Dir, "--device", "cpu"]);
        Case("-k: 'abc' is not an integer (usage: kernelvl search --help)", null, ["search", "--model", fx.Init, "--index", o7, "--text", "x", "-k", "abc"]);
        foreach (var (args, message, absent) in cases)
        {
            var r = Run(args);
            string what = string.Join(' ', args);
            Assert.True(r.Code == 2, $"{what}: exit {r.Code}, {r.Err}");
            var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.Contains("warning:")).ToList();
            Assert.True(lines.Count == 1, $"{what}: {lines.Count} lines: {r.Err}");
            Assert.StartsWith("kernelvl: bad input:", lines[0]);
            Assert.Contains(message, lines[0]);
            if (absent is not null) Assert.False(Path.Exists(absent), $"{what}: left {absent} behind");
        }

        // Onto a file, and into a folder that is not an index (a checkpoint): refused, both untouched.
        string file = Path.Combine(fx.Dir, "cli-precious.txt"); File.WriteAllText(file, "precious");
        string ckpt = Tmp(); CopyFolder(fx.Init, ckpt);
        var before = Directory.GetFiles(ckpt).Select(f => (Path.GetFileName(f), Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f))))).ToList();
        foreach (var (target, message) in new[] { (file, "is a file"), (ckpt, "not empty and not an index") })
        {
            var r = Run("index", "--model", fx.Init, "--images", Images, "--data", fx.Data, "--out", target, "--device", "cpu");
            Assert.True(r.Code == 2 && r.Err.Contains(message), $"index --out {target}: exit {r.Code}, {r.Err}");
        }
        Assert.Equal("precious", File.ReadAllText(file));
        Assert.Equal(before, Directory.GetFiles(ckpt).Select(f => (Path.GetFileName(f), Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f))))).ToList());
        var shapes = Run("shapes", "--out", file, "--train", "2", "--val", "0", "--test", "2");
        Assert.True(shapes.Code == 2 && shapes.Err.Contains("is a file, not a folder"), $"shapes --out FILE: exit {shapes.Code}, {shapes.Err}");
        var demo = Run("demo", "--quick", "--out", ckpt, "--device", "cpu");
        Assert.True(demo.Code == 2 && demo.Err.Contains("not a previous demo's folder"), $"demo --out CHECKPOINT: exit {demo.Code}, {demo.Err}");
        Assert.Equal(before, Directory.GetFiles(ckpt).Select(f => (Path.GetFileName(f), Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f))))).ToList());
    }

    [Fact]
    public void ARerunRefreshesChangedAndDeletedImagesAndSearchSaysWhatItCannotSee()
    {
        string folder = Tmp();
        Directory.CreateDirectory(folder);
        var sources = Directory.GetFiles(Path.Combine(Images, "images"), "*.png").Order(StringComparer.Ordinal).Take(7).ToList();
        string In(int i) => Path.Combine(folder, Path.GetFileName(sources[i]));
        foreach (var s in sources.Take(6)) File.Copy(s, Path.Combine(folder, Path.GetFileName(s)));
        File.WriteAllText(Path.Combine(folder, "readme.txt"), "not an image");
        string idx = Tmp();
        var r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("1 files of other types not read (1 .txt", r.Err);
        float[] Vector(EmbeddingIndex x, string file)
        {
            int row = Enumerable.Range(0, x.Collections["image"].Rows).Single(i => x.Item("image", i).Path == Path.GetFileName(file));
            return x.ReadAll("image")[(row * x.Dim)..((row + 1) * x.Dim)];
        }
        float[] before1, before5;
        using (var x = EmbeddingIndex.Open(idx)) { before1 = Vector(x, In(1)); before5 = Vector(x, In(5)); }
        Assert.True(before1.Zip(before5).Max(p => Math.Abs(p.First - p.Second)) > 1e-2, "two different pictures must encode differently");

        // One image deleted, one rewritten with another picture, one added: the rerun removes the first, encodes the
        // second again (its vector now that of the picture it holds) and adds the third. Rows 0-3 are one segment, so
        // the refresh rewrites a segment and drops none.
        File.Delete(In(0));
        File.Copy(sources[5], In(1), overwrite: true);
        File.SetLastWriteTimeUtc(In(1), DateTime.UtcNow.AddMinutes(1));
        File.Copy(sources[6], In(6));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("1 changed images to encode again, 1 gone (deleted, or no longer in the source) removed", r.Err);
        Assert.Contains("indexed 2 images", r.Out);
        Assert.Contains("merged 2 segments into 1 (of up to 4 rows)", r.Err);   // the rewritten 2 rows and the old 2; the new 2 stay apart
        using (var x = EmbeddingIndex.Open(idx, verify: true))
        {
            Assert.Equal(6, x.Collections["image"].Rows);
            var paths = Enumerable.Range(0, 6).Select(i => x.Item("image", i).Path).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(sources.Skip(1).Select(Path.GetFileName).Order(StringComparer.Ordinal), paths);
            Assert.True(Vector(x, In(1)).Zip(before5).Max(p => Math.Abs(p.First - p.Second)) < 2e-3, "the changed image keeps its old vector");
            Assert.NotEqual("items.jsonl", x.ItemsFileName);
            // Only what the manifest lists is left: the replaced segment and items file are gone.
            var listed = x.Collections.Values.SelectMany(c => c.Segments).Select(s => s.File).Append(x.ItemsFileName).Append("manifest.json").Append("build.lock");
            Assert.Equal(listed.Order(StringComparer.Ordinal), Directory.GetFiles(idx).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        }
        // Unchanged since: a rerun refreshes nothing and encodes nothing.
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.DoesNotContain("refreshing", r.Err);
        Assert.Contains("indexed 0 images", r.Out);
        // Touched (a new write time, the same bytes): kept under its new stamp, not encoded again, and not seen again.
        File.SetLastWriteTimeUtc(In(3), DateTime.UtcNow.AddMinutes(2));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Err.Contains("1 images were touched but hold the same bytes: kept") && r.Out.Contains("indexed 0 images"), r.Out + r.Err);
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && !r.Err.Contains("touched") && !r.Err.Contains("refreshing"), r.Err);
        // --rehash reads every image: none differs from what was encoded.
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu", "--rehash");
        Assert.True(r.Code == 0 && r.Err.Contains("--rehash: 0 of the 6 indexed images hashed differ from what was encoded") && !r.Err.Contains("without a stamp") && r.Out.Contains("indexed 0 images"), r.Out + r.Err);
        // A symlinked image whose target changes is encoded again (its stamp is the target's, not the link's).
        string target = Path.Combine(Tmp() + "-target.png");
        File.Copy(sources[2], target);
        File.CreateSymbolicLink(Path.Combine(folder, "link.png"), target);
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Out.Contains("indexed 1 images"), r.Out + r.Err);
        File.Copy(sources[4], target, overwrite: true);
        File.SetLastWriteTimeUtc(target, DateTime.UtcNow.AddMinutes(3));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Err.Contains("1 changed images to encode again, 0 gone"), r.Err);
        File.Delete(Path.Combine(folder, "link.png"));
        // A named pipe with an image's name is skipped with a warning (reading it would wait for a writer forever).
        string fifo = Path.Combine(folder, "pipe.png");
        using (var mk = Process.Start("mkfifo", [fifo])) mk.WaitForExit();
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Err.Contains("pipe.png: not a regular file"), r.Err);
        File.Delete(fifo);
        // Most of the images gone at once (a folder unmounted looks the same): refused, nothing changed, unless asked.
        string manifest = File.ReadAllText(Path.Combine(idx, "manifest.json"));
        var aside = Tmp();
        Directory.CreateDirectory(aside);
        foreach (int i in new[] { 1, 3, 4, 5 }) File.Move(In(i), Path.Combine(aside, Path.GetFileName(In(i))));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 2 && r.Err.Contains("4 of its 6 images are gone") && r.Err.Contains("--allow-mass-removal"), $"exit {r.Code}: {r.Err}");
        Assert.Equal(manifest, File.ReadAllText(Path.Combine(idx, "manifest.json")));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--allow-mass-removal", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Err.Contains("4 gone"), r.Err);
        using (var x = EmbeddingIndex.Open(idx)) Assert.Equal(2, x.Collections["image"].Rows);
        foreach (int i in new[] { 1, 3, 4, 5 }) File.Move(Path.Combine(aside, Path.GetFileName(In(i))), In(i));
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--device", "cpu");
        Assert.True(r.Code == 0 && r.Out.Contains("indexed 4 images"), r.Out + r.Err);

        // An image deleted after the build, then a query longer than the model reads, reranked by a cross model over all
        // six: the deleted image is not reranked, and stays in the list.
        File.Delete(In(2));
        string query = string.Concat(Enumerable.Repeat("a small red circle left of a large blue square ", 4));
        r = Run("search", "--model", fx.Init, "--index", idx, "--text", query, "-k", "6", "--rerank", "6", "--cross-model", fx.Init, "--json", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("the model reads the first 22, the last", r.Err);
        Assert.Contains("not reranked", r.Err);
        var doc = JsonNode.Parse(r.Out)!;
        Assert.Equal(5, (int)doc["reranked"]!);
        Assert.Equal(6, doc["results"]!.AsArray().Count);
        Assert.Equal(5, doc["results"]!.AsArray().Count(x => x!["cross_score"] is not null));
    }

    [Fact]
    public void AnIndexThatDoesNotRecordItsSourceIsNotWipedByAnotherSource()
    {
        string folder = Tmp();
        Directory.CreateDirectory(folder);
        foreach (var src in Directory.GetFiles(Path.Combine(Images, "images"), "*.png").Order(StringComparer.Ordinal).Take(4))
            File.Copy(src, Path.Combine(folder, Path.GetFileName(src)));
        string idx = Tmp();
        var r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        // As an index written before the source was recorded (2026-11-29).
        string mpath = Path.Combine(idx, "manifest.json");
        var m = JsonNode.Parse(File.ReadAllText(mpath))!.AsObject();
        m.Remove("source");
        File.WriteAllText(mpath, m.ToJsonString());
        string legacy = File.ReadAllText(mpath);
        // A dataset over the same root, whose ids (img:N) are none of the folder's (paths): refused, the index untouched.
        string data = Path.Combine(folder, "d.json");
        File.WriteAllText(data, "{\"images\": [{\"filename\": \"" + Path.GetFileName(Directory.GetFiles(folder, "*.png").Order(StringComparer.Ordinal).First()) +
            "\", \"split\": \"test\", \"imgid\": 1, \"sentences\": [{\"raw\": \"a shape\"}]}]}");
        r = Run("index", "--model", fx.Init, "--data", data, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 2 && r.Err.Contains("none of its 4 images is in this build's source"), $"exit {r.Code}: {r.Err}");
        Assert.Equal(legacy, File.ReadAllText(mpath));
        // The folder it was built from: resumed, and the source recorded from then on.
        File.Delete(data);
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0 && r.Out.Contains("indexed 0 images"), $"exit {r.Code}: {r.Out} {r.Err}");
        Assert.Equal("folder", (string)JsonNode.Parse(File.ReadAllText(mpath))!["source"]!);
    }

    [Fact]
    public void ARerunKeepsWhatItCannotSeeAndSearchChecksumsOnlyWhenAsked()
    {
        // A folder with a symlinked subfolder and four images.
        string folder = Tmp(), elsewhere = Tmp();
        Directory.CreateDirectory(folder);
        Directory.CreateDirectory(elsewhere);
        var sources = Directory.GetFiles(Path.Combine(Images, "images"), "*.png").Order(StringComparer.Ordinal).Take(6).ToList();
        foreach (var src in sources.Take(4)) File.Copy(src, Path.Combine(folder, Path.GetFileName(src)));
        foreach (var src in sources.Skip(4)) File.Copy(src, Path.Combine(elsewhere, Path.GetFileName(src)));
        Directory.CreateSymbolicLink(Path.Combine(folder, "disk"), elsewhere);
        string idx = Tmp();
        var r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0 && r.Out.Contains("indexed 6 images"), r.Out + r.Err);
        // Every file truncated (a half-finished copy) and the linked disk gone: nothing removed, nothing replaced.
        string manifest = File.ReadAllText(Path.Combine(idx, "manifest.json"));
        foreach (var f in Directory.GetFiles(folder, "*.png")) { File.WriteAllBytes(f, []); File.SetLastWriteTimeUtc(f, DateTime.UtcNow.AddMinutes(1)); }
        Directory.Move(elsewhere, elsewhere + "-unmounted");
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("1 symlinks lead nowhere", r.Err);
        Assert.Contains("4 changed images to encode again, 0 gone", r.Err);
        using (var x = EmbeddingIndex.Open(idx)) Assert.Equal(6, x.Collections["image"].Rows);
        Assert.Equal(JsonNode.Parse(manifest)!["collections"]!.ToJsonString(), JsonNode.Parse(File.ReadAllText(Path.Combine(idx, "manifest.json")))!["collections"]!.ToJsonString());
        // The images back (the same bytes; File.Copy keeps the write time here): their vectors were kept, nothing to do.
        foreach (var src in sources.Take(4)) File.Copy(src, Path.Combine(folder, Path.GetFileName(src)), overwrite: true);
        Directory.Move(elsewhere + "-unmounted", elsewhere);
        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--device", "cpu");
        Assert.True(r.Code == 0 && !r.Err.Contains("refreshing") && r.Out.Contains("indexed 0 images") && r.Out.Contains("(6 images"), r.Out + r.Err);

        // A bit flipped in a segment: search reads it as it is (sizes checked), --verify names it.
        string seg = Directory.GetFiles(idx, "seg-image-*").First();
        var bytes = File.ReadAllBytes(seg);
        bytes[3] ^= 0x01;
        File.WriteAllBytes(seg, bytes);
        r = Run("search", "--model", fx.Init, "--index", idx, "--text", "a red circle", "-k", "2", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        r = Run("search", "--model", fx.Init, "--index", idx, "--text", "a red circle", "-k", "2", "--verify", "--device", "cpu");
        Assert.True(r.Code == 2 && r.Err.Contains("checksum mismatch") && r.Err.Contains(Path.GetFileName(seg)), $"exit {r.Code}: {r.Err}");
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    [Fact]
    public async Task AnIndexBuildKilledWithSigkillLeavesASearchableIndexAndResumes()
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

        // Ctrl-C (SIGINT): the resumed build stops at its next batch with a message and exit code 130, its segments kept.
        using (var p = Start("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "4", "--batch", "4", "--device", "cpu"))
        {
            var err = p.StandardError.ReadToEndAsync();
            var sw = Stopwatch.StartNew();
            int rows = got;
            while (sw.Elapsed.TotalSeconds < 120 && !p.HasExited && rows < got + 16)
            {
                try { rows = (int)JsonNode.Parse(File.ReadAllText(Path.Combine(idx, "manifest.json")))!["collections"]!["image"]!["rows"]!; }
                catch (Exception e) when (e is IOException or System.Text.Json.JsonException or NullReferenceException) { }
                Thread.Sleep(5);
            }
            Assert.False(p.HasExited, "the build finished before it could be stopped");
            using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
            Assert.True(p.WaitForExit(60_000), "the build did not stop on SIGINT");
            string stderr = await err;
            Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {stderr}");
            Assert.Contains("kernelvl: stopped:", stderr);
        }
        got = EmbeddingIndex.Open(idx, EmbeddingIndex.Fingerprint(fx.Init)).Collections["image"].Rows;
        Assert.InRange(got, 56, total - 1);

        r = Run("index", "--model", fx.Init, "--images", folder, "--out", idx, "--segment-rows", "64", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains($"resuming: {got} images", r.Err);
        var done = EmbeddingIndex.Open(idx, EmbeddingIndex.Fingerprint(fx.Init));
        Assert.Equal(total, done.Collections["image"].Rows);
        var ids = Enumerable.Range(0, total).Select(i => done.Item("image", i).Id).ToList();
        Assert.Equal(total, ids.Distinct().Count());
    }

    [SkippableFact]
    public void AFullDiskAndAnOverlongNameAreBadInputWithExit2()
    {
        // A name too long for the file system is the user's input, like any other --out that cannot be made.
        string longName = Path.Combine(fx.Dir, new string('x', 300));
        var r = Run("demo", "--quick", "--out", longName, "--device", "cpu");
        Assert.True(r.Code == 2 && r.Err.StartsWith("kernelvl: bad input:", StringComparison.Ordinal), $"exit {r.Code}: {r.Err}");
        Assert.False(Path.Exists(longName));
        // /dev/full: every write fails with ENOSPC, as on a full disk (the place the user gave, not the program, is at fault).
        Skip.IfNot(File.Exists("/dev/full"), "no /dev/full here");
        var psi = new ProcessStartInfo("sh") { RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec dotnet \"$0\" info > /dev/full");
        psi.ArgumentList.Add(Exe);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "kernelvl info did not end");
        Assert.True(p.ExitCode == 2 && err.StartsWith("kernelvl: bad input: ", StringComparison.Ordinal), $"exit {p.ExitCode}: {err}");
    }

    [Fact]
    public void TheQuickDemoRunsTheWholePipelineAndWritesItsReport()
    {
        string dir = Tmp() + " demo";   // a space: the printed commands must quote it
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
        string report = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.Contains("## Test retrieval", report);
        // One speedup figure, results.json's: in the report, on stdout, in the eval table's line and in the acceptance check.
        double speedup = (double)doc["speedup_decomposed_vs_cross"]!;
        string times = $"{speedup:F0}x";
        Assert.Contains($"**{times}**", report);
        Assert.Contains($"speed: decomposed is {times} faster", r.Out);
        Assert.Contains($"decomposed {times} faster than the cross-encoder", r.Out);
        var check = doc["acceptance"]!.AsArray().Single(a => ((string)a!["check"]!).Contains("100x", StringComparison.Ordinal))!;
        Assert.Equal(times, (string)check["measured"]!);
        Assert.Equal(speedup >= 100, (bool)check["met"]!);
        // The commands to go on: paths quoted for a shell, eval with the demo's rerank depth (--quick: 4).
        string stage2 = $"'{Path.Combine(dir, "stage2")}'";
        Assert.Contains($"go on: kernelvl search --model {stage2} --index", r.Out);
        Assert.Contains($"kernelvl index  --model {stage2} --data '{Path.Combine(dir, "data", "dataset.json")}'", report);
        Assert.Contains("--mode all --rerank-k 4", report);
        Assert.True(File.Exists(Path.Combine(dir, ".kernelvl-demo")), "no marker");
        // The checkpoints it leaves are usable by the other commands.
        r = Run("eval", "--model", Path.Combine(dir, "stage2"), "--data", Path.Combine(dir, "data", "dataset.json"), "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
    }
}
