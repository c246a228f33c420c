namespace KernelVL.IO;

/// <summary>
/// An exclusive claim on a folder for the life of a process's work in it: a lock file opened with
/// <see cref="FileShare.None"/> (on Linux an flock, released by the OS when the process ends however it ends). The
/// lock is what counts, not the file: a file left by a killed process is taken over. Disposing deletes the file, then
/// releases the lock.
/// </summary>
public sealed class FolderLock : IDisposable
{
    private readonly FileStream _stream;

    public string Path { get; }

    private FolderLock(string path, FileStream stream)
    {
        Path = path;
        _stream = stream;
    }

    /// <summary>
    /// Takes <paramref name="fileName"/> in <paramref name="folder"/> (made if missing); null when another process holds it.
    /// </summary>
    public static FolderLock? TryTake(string folder, string fileName)
    {
        Directory.CreateDirectory(folder);
        string path = System.IO.Path.Combine(folder, fileName);
        for (int attempt = 0; attempt < 4; attempt++)
        {
            FileStream s;
            try
            {
                s = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (IsLockConflict(e))
            {
                if (File.Exists(path)) return null;   // held by another process
                continue;   // its holder deleted it as it let go (see Dispose) between the open and the look: again
            }
            if (StillNamed(s, path)) return new FolderLock(path, s);
            // Won on a file its holder deleted as it let go (see Dispose): a dead copy that the next process would not
            // see, so no claim. Taken again on the file now at the path.
            s.Dispose();
        }
        return null;   // other processes keep taking and letting go of it: in use
    }

    /// <summary>
    /// Whether an open failed because another process holds the lock (flock's EWOULDBLOCK on Linux, 11, and macOS, 35;
    /// a sharing violation on Windows), not because the folder is read-only, the disk full or out of inodes: those are
    /// thrown as they are, never reported as "in use".
    /// </summary>
    internal static bool IsLockConflict(IOException e) =>
        e.HResult is 11 or 35 or unchecked((int)0x80070020) or unchecked((int)0x80070021);

    /// <summary>
    /// Whether the file open in <paramref name="s"/> is still the one at <paramref name="path"/>. A file at the path is not
    /// enough: between our open and our lock its holder may delete it as it lets go (see <see cref="Dispose"/>) and a
    /// third process create and lock a new one there, and both would then hold "the" lock. On Linux the open file tells
    /// whether it was deleted (its /proc/self/fd link ends in " (deleted)"); elsewhere the path's presence is all there is.
    /// </summary>
    internal static bool StillNamed(FileStream s, string path)
    {
        if (!File.Exists(path)) return false;
        if (!OperatingSystem.IsLinux()) return true;
        try
        {
            string? target = new FileInfo($"/proc/self/fd/{s.SafeFileHandle.DangerousGetHandle()}").LinkTarget;
            return target is null || !target.EndsWith(" (deleted)", StringComparison.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return true;   // no /proc (a sandbox): the path's presence, as elsewhere
        }
    }

    public void Dispose()
    {
        // Deleted while still held, so that no process can win the lock on a file that is about to disappear.
        try { File.Delete(Path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // the folder was removed with it, or is read-only now
        _stream.Dispose();
    }
}
