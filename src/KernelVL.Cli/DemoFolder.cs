using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.Data;
using KernelVL.IO;
using KernelVL.Training;

namespace KernelVL.Cli;

/// <summary>
/// The demo's --out, held for the run: locked (a second demo on the same folder is refused), and cleared of an earlier
/// demo's output. A folder counts as an earlier demo's only on evidence the demo writes itself: the marker file it writes
/// first (so a run stopped at any point is recognised too), or, from before the marker, a results.json with the demo's own
/// fields. What a rerun replaces (its report, data/, stage1/, stage2/) must hold only what the demo writes: every check
/// runs before anything is deleted, and a folder that fails one is refused untouched. Other entries at the top (an index a
/// user built there, notes) are kept.
/// </summary>
internal sealed class DemoFolder : IDisposable
{
    public const string MarkerFile = ".kernelvl-demo", LockFile = ".kernelvl-demo.lock";

    /// <summary>What the demo writes at the top of --out besides its folders.</summary>
    public static readonly string[] TopFiles = ["report.md", "results.json", "recall.png", "baseline-loss.png", "examples.png"];

    public const string DataFolder = "data", Stage1Folder = "stage1", Stage2Folder = "stage2";

    private readonly FolderLock _lock;

    private DemoFolder(FolderLock folderLock) => _lock = folderLock;

    /// <summary>
    /// Checks <paramref name="dir"/>, locks it, and clears an earlier demo's output from it (saying so through
    /// <paramref name="say"/>); refuses with <see cref="BadInputException"/> (nothing changed) a folder that is not new,
    /// empty or provably an earlier demo's, one another demo holds, and one whose earlier output holds foreign files.
    /// </summary>
    public static DemoFolder Take(string dir, Action<string> say)
    {
        CheckPath(dir);
        bool existed = Directory.Exists(dir);
        if (existed && !Evidence(dir))
        {
            string first = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Where(n => n != LockFile).Order(StringComparer.Ordinal).FirstOrDefault() ?? "";
            if (first.Length > 0)
                throw new BadInputException($"--out {dir}: not empty and not a previous demo's folder (it holds {first}, and no {MarkerFile}, which the demo writes first): nothing changed; give a new or an empty folder");
        }
        var held = FolderLock.TryTake(dir, LockFile)
            ?? throw new BadInputException($"--out {dir}: another kernelvl demo is using it; wait for it to end, or give another folder");
        var stageLocks = new List<FolderLock>();
        try
        {
            // A stage folder a pretrain or decompose still runs in (the demo's stop hint suggests resuming one there) is
            // refused: its training lock is taken, and held while the folder is deleted.
            foreach (var stage in new[] { Stage1Folder, Stage2Folder })
            {
                string path = Path.Combine(dir, stage);
                if (!Directory.Exists(path) || new FileInfo(path).LinkTarget is not null) continue;   // (a link is refused below)
                stageLocks.Add(FolderLock.TryTake(path, Trainer.LockFile)
                    ?? throw new BadInputException($"--out {dir}: {stage}/ is in use by a running kernelvl pretrain or decompose: nothing changed; wait for it to end (or stop it), or give another folder"));
            }
            var earlier = Earlier(dir);   // every check, under the locks, before anything is deleted
            if (earlier.Count > 0) say($"replacing the earlier demo in {dir} (its report, data/, stage1/ and stage2/)");
            string marker = Path.Combine(dir, MarkerFile);
            if (!File.Exists(marker))
                AtomicFile.WriteAllText(marker, "Written by `kernelvl demo`: a rerun with this --out replaces the demo's output here (report.md, results.json, the charts, data/, stage1/, stage2/).\n");
            foreach (var e in earlier)
                if (Directory.Exists(e)) Directory.Delete(e); else File.Delete(e);   // no links among them: refused above
            foreach (var l in stageLocks) l.Dispose();
        }
        catch
        {
            foreach (var l in stageLocks) l.Dispose();
            held.Dispose();
            // A folder this run made goes if it is empty again; never recursively (another process may have taken it
            // the moment the lock was let go).
            if (!existed) try { Directory.Delete(dir); } catch (IOException) { }
            throw;
        }
        return new DemoFolder(held);
    }

    public void Dispose() => _lock.Dispose();

    /// <summary>The refusals of a path that is no folder: a file, a link to nothing, a folder on the way that is a file.</summary>
    private static void CheckPath(string dir)
    {
        if (new FileInfo(dir).LinkTarget is { } target && Paths.RealOrNull(dir) is null && !Directory.Exists(dir))
            throw new BadInputException($"--out {dir}: is a link to {target}, which does not exist");
        if (File.Exists(dir)) throw new BadInputException($"--out {dir}: is a file, not a folder");
        for (string? up = Path.GetDirectoryName(Path.GetFullPath(dir)); up is not null; up = Path.GetDirectoryName(up))
            if (File.Exists(up)) throw new BadInputException($"--out {dir}: {up} is a file, not a folder");
    }

    /// <summary>Whether <paramref name="dir"/> is empty (a lock file left by a killed demo aside) or shows that the demo wrote it.</summary>
    private static bool Evidence(string dir)
    {
        // (A marker's temporary counts as nothing too: a kill during the first run's first write leaves one.)
        if (!Directory.EnumerateFileSystemEntries(dir).Any(e => Path.GetFileName(e) is var n && n != LockFile && !AtomicFile.IsTemporaryOf(n, MarkerFile))) return true;
        string marker = Path.Combine(dir, MarkerFile);
        if (File.Exists(marker) && new FileInfo(marker).LinkTarget is null) return true;
        // A demo from before the marker: its results.json, by the fields only the demo writes.
        string results = Path.Combine(dir, "results.json");
        if (!File.Exists(results) || new FileInfo(results).LinkTarget is not null || new FileInfo(results).Length > (16 << 20)) return false;
        try
        {
            return JsonNode.Parse(File.ReadAllText(results)) is JsonObject o && o["plan"] is JsonObject plan && plan["Name"] is JsonValue && plan["RerankK"] is JsonValue
                && o["acceptance"] is JsonArray && o["modes"] is JsonArray && o["baseline"] is JsonObject b && (string?)b["mode"] == "bag_of_words";
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            return false;
        }
    }

    /// <summary>
    /// What a rerun deletes: the report files first (a rerun stopped at any point never leaves a report beside data it does
    /// not describe), then data/, stage1/ and stage2/, each folder after its contents. Throws, with nothing touched, when
    /// any of it holds what the demo does not write, or sits in a folder that cannot be changed.
    /// </summary>
    private static List<string> Earlier(string dir)
    {
        var delete = new List<string>();
        ForeignEntryException Foreign(string entry) => new(entry,
            $"--out {dir}: holds {Path.GetRelativePath(dir, entry)}, which the demo does not write: nothing changed; move it out, or give a new or an empty folder");
        bool Link(string path) => new FileInfo(path).LinkTarget is not null;
        var entries = Directory.EnumerateFileSystemEntries(dir).ToDictionary(e => Path.GetFileName(e), StringComparer.Ordinal);
        foreach (var (name, path) in entries.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            bool demoFile = TopFiles.Contains(name) || name is MarkerFile or LockFile;
            if ((demoFile || name is DataFolder or Stage1Folder or Stage2Folder) && Link(path)) throw Foreign(path);
            if (demoFile && !File.Exists(path)) throw Foreign(path);   // a folder under one of the demo's file names
            if (TopFiles.Contains(name) || TopFiles.Append(MarkerFile).Any(f => AtomicFile.IsTemporaryOf(name, f))) delete.Add(path);
        }
        foreach (var part in new[] { DataFolder, Stage1Folder, Stage2Folder })
        {
            if (!entries.TryGetValue(part, out var path)) continue;
            if (!Directory.Exists(path)) throw Foreign(path);
            try
            {
                if (part == DataFolder)
                {
                    delete.AddRange(SyntheticShapes.PreviousFiles(path, imagesOwned: true));
                    string images = Path.Combine(path, "images");
                    if (Directory.Exists(images)) delete.Add(images);
                }
                else delete.AddRange(Trainer.RunFolderEntries(path));
            }
            catch (ForeignEntryException e)
            {
                throw Foreign(e.Entry);
            }
            delete.Add(path);
        }
        foreach (var folder in delete.Select(Path.GetDirectoryName).Distinct(StringComparer.Ordinal))
            if (!Paths.CanChangeEntries(folder!))
                throw new BadInputException($"--out {dir}: {folder} cannot be changed (no permission to delete in it): nothing changed; give a new or an empty folder");
        return delete;
    }
}
