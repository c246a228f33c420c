using System.Runtime.InteropServices;

namespace KernelVL.IO;

/// <summary>Writes that never leave a half-written file: a temporary name beside the target, flushed, then renamed into place.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => Write(path, s =>
    {
        using var w = new StreamWriter(s, new System.Text.UTF8Encoding(false), bufferSize: -1, leaveOpen: true);
        w.Write(text);
        w.Flush();
    });

    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        var copy = bytes.ToArray();
        Write(path, s => s.Write(copy));
    }

    /// <summary>
    /// Whether <paramref name="fileName"/> is a temporary name <see cref="Write"/> gives to a file named
    /// <paramref name="target"/> (".target.pid.guid.tmp"): what a killed process leaves, for its owner to clean up.
    /// </summary>
    public static bool IsTemporaryOf(string fileName, string target) =>
        System.Text.RegularExpressions.Regex.IsMatch(fileName, $@"^\.{System.Text.RegularExpressions.Regex.Escape(target)}\.[0-9]+\.[0-9a-f]{{32}}\.tmp$");

    /// <summary>
    /// Runs <paramref name="write"/> on a stream to a temporary file, flushes it to disk and renames it to <paramref name="path"/>.
    /// A path that is a symlink is written through (its final target is replaced, the link stays), and a file replaced
    /// keeps its permission bits (a private 600 results file stayed private only until the first rewrite).
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        if (new FileInfo(full).LinkTarget is not null && Paths.RealOrNull(full) is { } target) full = target;
        UnixFileMode? mode = !OperatingSystem.IsWindows() && File.Exists(full) ? File.GetUnixFileMode(full) : null;
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var s = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                if (mode is { } m && !OperatingSystem.IsWindows()) File.SetUnixFileMode(tmp, m);   // before any byte is in it
                write(s);
                s.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
            SyncFolder(dir);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// Makes a rename in <paramref name="dir"/> durable (fsync of the folder, Linux): without it a power cut after the rename
    /// may bring back the old file (or none) although the new one's bytes reached the disk. Best effort: the rename has
    /// happened, and filesystems that cannot sync a folder (EINVAL, ENOTSUP on some FUSE mounts) must not fail the write.
    /// </summary>
    private static void SyncFolder(string dir)
    {
        if (!OperatingSystem.IsLinux()) return;
        int fd = Libc.Open(dir, Libc.ORdOnly | Libc.OCloExec);
        if (fd < 0) return;   // not openable (permissions): the rename stands, only its durability is the OS's
        Libc.Fsync(fd);
        Libc.Close(fd);
    }
}
