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
            catch (IOException)
            {
                if (File.Exists(path)) return null;   // held by another process
                continue;   // its holder deleted it as it let go (see Dispose) between the open and the look: again
            }
            if (File.Exists(path)) return new FolderLock(path, s);
            // Won on a file its holder deleted as it let go (see Dispose): a dead copy that the next process would not
            // see, so no claim. Taken again on the file now at the path.
            s.Dispose();
        }
        return null;   // other processes keep taking and letting go of it: in use
    }

    public void Dispose()
    {
        // Deleted while still held, so that no process can win the lock on a file that is about to disappear.
        try { File.Delete(Path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // the folder was removed with it, or is read-only now
        _stream.Dispose();
    }
}
