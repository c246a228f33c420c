using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using KernelVL.Data;

namespace KernelVL.Tests;

/// <summary>
/// `kernelvl demo --quick` as a process: which --out it takes as an earlier demo's, that every check comes before anything
/// is deleted, Ctrl-C and SIGTERM outside the training stages, two demos on one folder, and its option refusals.
/// </summary>
public sealed class DemoTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "kernelvl-demo-tests-" + Guid.NewGuid().ToString("N"));

    public DemoTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Tmp(string name) => Path.Combine(_root, name + "-" + Guid.NewGuid().ToString("N")[..8]);

    private static (int Code, string Out, string Err) Demo(string dir, params string[] more) => CliTests.Run(["demo", "--quick", "--out", dir, "--device", "cpu", .. more]);

    /// <summary>Every file and folder under <paramref name="dir"/> (hidden ones too) with its SHA-256: what "untouched" compares.</summary>
    private static SortedDictionary<string, string> Snapshot(string dir) => new(
        Directory.EnumerateFileSystemEntries(dir, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .ToDictionary(e => Path.GetRelativePath(dir, e), e => Directory.Exists(e) ? "folder" : Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(e)))),
        StringComparer.Ordinal);

    /// <summary>A refusal: exit 2 and one line on stderr that names the folder and <paramref name="names"/>.</summary>
    private static void AssertRefused((int Code, string Out, string Err) r, string dir, string names)
    {
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, r.Err);
        Assert.StartsWith("kernelvl: bad input: --out " + dir, lines[0]);
        Assert.Contains(names, lines[0]);
    }

    [Fact]
    public void AFolderThatOnlyLooksLikeAnEarlierDemosIsRefusedUntouched()
    {
        // A results.json that is not the demo's, beside a user's file in stage1/.
        string foreignResults = Tmp("foreign-results");
        Directory.CreateDirectory(Path.Combine(foreignResults, "stage1"));
        File.WriteAllText(Path.Combine(foreignResults, "results.json"), """{"mine":1}""");
        File.WriteAllText(Path.Combine(foreignResults, "stage1", "thesis.tex"), "precious");
        // The user's own shapes dataset (kernelvl-shapes, as `kernelvl shapes` writes it) and checkpoints.
        string project = Tmp("project");
        SyntheticShapes.Generate(Path.Combine(project, "data"), 4, 0, 4, 16, seed: 1);
        Directory.CreateDirectory(Path.Combine(project, "stage1"));
        File.WriteAllText(Path.Combine(project, "stage1", "model.safetensors"), "my trained checkpoint");
        // A data/dataset.json that is no kernelvl dataset, beside a user's model.
        string foreignData = Tmp("foreign-data");
        Directory.CreateDirectory(Path.Combine(foreignData, "data"));
        Directory.CreateDirectory(Path.Combine(foreignData, "stage2"));
        File.WriteAllText(Path.Combine(foreignData, "data", "dataset.json"), """{"images":[]}""");
        File.WriteAllText(Path.Combine(foreignData, "stage2", "model.bin"), "precious");
        foreach (var (dir, first) in new[] { (foreignResults, "results.json"), (project, "data"), (foreignData, "data") })
        {
            var before = Snapshot(dir);
            AssertRefused(Demo(dir), dir, $"it holds {first}, and no .kernelvl-demo");
            Assert.Equal(before, Snapshot(dir));
        }
    }

    [Fact]
    public void AnEarlierDemoHoldingAForeignFileIsRefusedBeforeAnythingIsDeletedAndARerunSaysWhatItReplaces()
    {
        string dir = Tmp("earlier");
        var r = Demo(dir);
        Assert.True(r.Code == 0, r.Err);
        File.WriteAllText(Path.Combine(dir, "notes.txt"), "mine: kept by every rerun");
        foreach (var foreign in new[] { Path.Combine("data", "extra.txt"), Path.Combine("stage2", "my-notes.txt"), Path.Combine("stage1", "train", "last", "mine.bin"), Path.Combine("data", "images", "holiday.jpg") })
        {
            File.WriteAllText(Path.Combine(dir, foreign), "mine");
            var before = Snapshot(dir);
            AssertRefused(Demo(dir), dir, $"holds {foreign}, which the demo does not write: nothing changed");
            Assert.Equal(before, Snapshot(dir));
            File.Delete(Path.Combine(dir, foreign));
        }
        // A link where the demo writes a folder of its own: the demo makes none, so it is not the demo's.
        string elsewhere = Tmp("elsewhere");
        Directory.CreateDirectory(elsewhere);
        File.WriteAllText(Path.Combine(elsewhere, "keep.txt"), "mine");
        Directory.Move(Path.Combine(dir, "stage2"), Path.Combine(dir, "stage2.moved"));
        Directory.CreateSymbolicLink(Path.Combine(dir, "stage2"), elsewhere);
        AssertRefused(Demo(dir), dir, "holds stage2, which the demo does not write");
        Assert.True(File.Exists(Path.Combine(elsewhere, "keep.txt")));
        Directory.Delete(Path.Combine(dir, "stage2"));
        Directory.Move(Path.Combine(dir, "stage2.moved"), Path.Combine(dir, "stage2"));

        // A stage folder that a pretrain or decompose still runs in (its training lock held, here by this process):
        // refused with nothing changed, not deleted from under the run.
        string stage1 = Path.Combine(dir, "stage1");
        using (var training = KernelVL.IO.FolderLock.TryTake(stage1, KernelVL.Training.Trainer.LockFile))
        {
            Assert.NotNull(training);
            var files = Directory.GetFiles(stage1, "*", SearchOption.AllDirectories).Where(f => Path.GetFileName(f) != KernelVL.Training.Trainer.LockFile).Order().ToList();
            AssertRefused(Demo(dir), dir, "stage1/ is in use by a running kernelvl pretrain or decompose: nothing changed");
            Assert.Equal(files, Directory.GetFiles(stage1, "*", SearchOption.AllDirectories).Where(f => Path.GetFileName(f) != KernelVL.Training.Trainer.LockFile).Order().ToList());
        }

        // Nothing foreign left: the rerun says that it replaces the earlier demo, and keeps the user's file beside it.
        r = Demo(dir, "--seed", "2");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains($"kernelvl demo: replacing the earlier demo in {dir}", r.Err);
        Assert.Equal("mine: kept by every rerun", File.ReadAllText(Path.Combine(dir, "notes.txt")));
        Assert.Equal(2, (int)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!["seed"]!);
    }

    /// <summary>Starts kernelvl, sends <paramref name="signal"/> (kill -SIG) when a stderr line holds <paramref name="pattern"/>, and waits for it.</summary>
    private static (int Code, string Out, string Err) RunAndSignal(string pattern, string signal, params string[] args)
    {
        using var p = CliTests.Start(args);
        var o = p.StandardOutput.ReadToEndAsync();
        var err = new StringBuilder();
        bool sent = false;
        for (string? line; (line = p.StandardError.ReadLine()) is not null;)
        {
            err.AppendLine(line);
            if (sent || !line.Contains(pattern, StringComparison.Ordinal)) continue;
            using (var kill = Process.Start("kill", [$"-{signal}", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
            sent = true;
        }
        Assert.True(p.WaitForExit(120_000), "kernelvl did not end");
        Assert.True(sent, $"no line with '{pattern}': {err}");
        return (p.ExitCode, o.Result, err.ToString());
    }

    [Theory]
    [InlineData("INT", 130, "Ctrl-C")]
    [InlineData("TERM", 143, "SIGTERM")]
    public void AStopDuringTheDataEndsWithALineLeavesNoStaleReportAndTheNextRunStartsOver(string signal, int code, string cause)
    {
        string dir = Tmp("stopped");
        var r = Demo(dir);
        Assert.True(r.Code == 0, r.Err);
        // Stopped as the data stage begins (before its first image is written): outside the training stages.
        r = RunAndSignal("data 0/", signal, "demo", "--quick", "--seed", "9", "--out", dir, "--device", "cpu");
        Assert.True(r.Code == code, $"exit {r.Code}: {r.Out} {r.Err}");
        // The line of a stop in the data stage; on a machine slow to deliver the signal, the stage-1 training's own.
        Assert.True(r.Out.Contains($"stopped by {cause} during the data", StringComparison.Ordinal) || r.Out.Contains("stopped at step", StringComparison.Ordinal), r.Out);
        var files = Directory.GetFiles(dir, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }).Select(f => Path.GetRelativePath(dir, f)).ToList();
        Assert.DoesNotContain(files, f => f.EndsWith(".tmp", StringComparison.Ordinal));
        // The earlier run's report and results are gone: never beside data and checkpoints they do not describe.
        Assert.DoesNotContain("report.md", files);
        Assert.DoesNotContain("results.json", files);
        r = Demo(dir);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains($"replacing the earlier demo in {dir}", r.Err);
    }

    [Fact]
    public async Task ADemoFolderInUseIsRefusedAndTheRunUsingItFinishesOnItsOwnData()
    {
        string dir = Tmp("busy");
        var r = Demo(dir);
        Assert.True(r.Code == 0, r.Err);
        string json = Path.Combine(dir, "data", "dataset.json");
        using var first = CliTests.Start("demo", "--quick", "--seed", "2", "--out", dir, "--device", "cpu");
        var firstOut = first.StandardOutput.ReadToEndAsync();
        var err = new StringBuilder();
        string Pid() => first.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        bool tried = false;
        for (string? line; (line = first.StandardError.ReadLine()) is not null;)
        {
            err.AppendLine(line);
            if (!line.Contains("data 0/", StringComparison.Ordinal)) continue;
            tried = true;
            // Held still in its data stage while a second demo is started on the same folder.
            using (var stop = Process.Start("kill", ["-STOP", Pid()])) stop.WaitForExit();
            try
            {
                var second = Demo(dir, "--seed", "3");
                AssertRefused(second, dir, "another kernelvl demo is using it");
            }
            catch
            {
                first.Kill(entireProcessTree: true);   // no demo left writing into the folder the test removes
                first.WaitForExit();
                throw;
            }
            finally
            {
                using var cont = Process.Start("kill", ["-CONT", Pid()]);
                cont.WaitForExit();
            }
            err.Append(first.StandardError.ReadToEnd());
            break;
        }
        Assert.True(first.WaitForExit(120_000), "the first demo did not end");
        Assert.True(tried, $"the first demo printed no 'data 0/' line, so the second was never tried: {err}");
        Assert.True(first.ExitCode == 0, $"exit {first.ExitCode}: {err}");
        Assert.Equal(2, (int)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!["seed"]!);
        await firstOut;
        // The data beside it is its own: the same as a run of seed 2 in a new folder writes.
        string fresh = Tmp("fresh");
        r = Demo(fresh, "--seed", "2");
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(File.ReadAllText(Path.Combine(fresh, "data", "dataset.json")), File.ReadAllText(json));
    }

    [Fact]
    public void AFolderLeftByAKillDuringTheFirstMarkerWriteIsTakenAsEmpty()
    {
        // SIGKILL between the marker's temporary file and its rename: nothing but that temporary (and the lock file).
        string dir = Tmp("killed");
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, "..kernelvl-demo.4242.0123456789abcdef0123456789abcdef.tmp");   // (AtomicFile: "." + the name + ".PID.GUID.tmp")
        File.WriteAllText(tmp, "Written by");
        File.WriteAllText(Path.Combine(dir, ".kernelvl-demo.lock"), "");
        var r = Demo(dir);
        Assert.True(r.Code == 0, r.Err);
        Assert.False(File.Exists(tmp));
        Assert.True(File.Exists(Path.Combine(dir, ".kernelvl-demo")));
    }

    [Fact]
    public void AnOutThatCannotBeAFolderIsNamedAsItIs()
    {
        // A link that leads nowhere was "a file"; a path under a file got .NET's "Could not find a part of the path".
        string dangling = Tmp("dangling");
        File.CreateSymbolicLink(dangling, Path.Combine(_root, "nowhere"));
        AssertRefused(Demo(dangling), dangling, "is a link to");
        string file = Tmp("file");
        File.WriteAllText(file, "x");
        AssertRefused(Demo(Path.Combine(file, "sub")), Path.Combine(file, "sub"), $"{file} is a file, not a folder");
        var r = CliTests.Run("demo", "--help");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("an earlier demo's", r.Out);   // what a rerun replaces, and what it refuses
    }

    [Fact]
    public void ANegativeSeedIsRefusedBeforeAnyOutput()
    {
        // .NET's seeded Random takes a seed's absolute value: --seed -1 drew the scenes of --seed 1.
        string dir = Tmp("negative-seed");
        var r = Demo(dir, "--seed", "-1");
        Assert.True(r.Code == 2 && r.Err.Contains("--seed -1: must be 0 or more"), $"exit {r.Code}: {r.Err}");
        Assert.False(Path.Exists(dir));
        r = CliTests.Run("shapes", "--out", dir, "--train", "2", "--val", "0", "--test", "2", "--seed", "-2147483648");
        Assert.True(r.Code == 2 && r.Err.Contains("--seed must be 0 or more"), $"exit {r.Code}: {r.Err}");
        Assert.False(Path.Exists(dir));
    }

    [Fact]
    public void TheDeviceHelpNamesEveryBackend()
    {
        var r = CliTests.Run("demo", "--help");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("ilgpu-cuda", r.Out);
    }
}
