using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace KernelVL.IO;

/// <summary>The image files under a folder, recursively, for an index of a folder of images.</summary>
public static class ImageFiles
{
    /// <summary>
    /// Paths relative to <paramref name="root"/> of the files whose extension is one of <paramref name="extensions"/>
    /// (lower case, with the dot), in ordinal order. Symlinked folders are followed, but each real folder is read once,
    /// and by the same path on every run: every folder reachable without a link is read first (in ordinal order), then the
    /// links, so a folder reachable both ways keeps its real path (an index resumed from it sees the same ids). A link to
    /// an ancestor (a cycle, which would never end) or to a folder already read is skipped; those, folders that cannot be
    /// read, and files of other types are counted in warnings.
    /// </summary>
    /// <param name="unreadable">if given, receives the folders that could not be read, relative to <paramref name="root"/>
    /// ("." for the root): what was under them is unknown, not gone</param>
    public static List<string> Under(string root, IReadOnlyCollection<string> extensions, Action<string>? warn = null, List<string>? unreadableFolders = null)
    {
        var found = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();    // folders reached without a link (depth first)
        var linked = new Queue<string>();     // symlinked folders: read once the others are done
        pending.Push(Path.GetFullPath(root));
        int again = 0, unreadable = 0, dangling = 0, unenterable = 0;
        var others = new SortedDictionary<string, int>(StringComparer.Ordinal);   // files of other extensions, by extension
        var options = new EnumerationOptions { AttributesToSkip = 0, IgnoreInaccessible = false };
        while (pending.Count > 0 || linked.Count > 0)
        {
            string dir = pending.Count > 0 ? pending.Pop() : linked.Dequeue();
            if (!seen.Add(Paths.Real(dir)))
            {
                again++;
                continue;
            }
            List<string> entries;
            try
            {
                entries = Directory.EnumerateFileSystemEntries(dir, "*", options).Order(StringComparer.Ordinal).ToList();
            }
            catch (Exception x) when (x is UnauthorizedAccessException or IOException)
            {
                unreadable++;
                unreadableFolders?.Add(Path.GetRelativePath(root, dir));
                continue;
            }
            var subfolders = new List<string>();
            foreach (var e in entries)
            {
                if (LeadsNowhere(e))
                {
                    // A link to nothing (an unmounted disk, a moved folder): what was under it is unknown, not gone.
                    dangling++;
                    unreadableFolders?.Add(Path.GetRelativePath(root, e));
                    continue;
                }
                if (!File.Exists(e) && !Directory.Exists(e))
                {
                    // Listed but not stat-able: this folder can be listed but not entered. A file or a folder: unknown.
                    unenterable++;
                    unreadableFolders?.Add(Path.GetRelativePath(root, e));
                    continue;
                }
                if (Directory.Exists(e))
                {
                    if (new DirectoryInfo(e).LinkTarget is null) subfolders.Add(e);
                    else linked.Enqueue(e);
                }
                else if (extensions.Contains(Path.GetExtension(e).ToLowerInvariant())) found.Add(Path.GetRelativePath(root, e));
                else
                {
                    string ext = Path.GetExtension(e).ToLowerInvariant();
                    others[ext.Length == 0 ? "(none)" : ext] = others.GetValueOrDefault(ext.Length == 0 ? "(none)" : ext) + 1;
                }
            }
            for (int i = subfolders.Count - 1; i >= 0; i--) pending.Push(subfolders[i]);   // popped in ordinal order
        }
        if (again > 0) warn?.Invoke($"{root}: {again} symlinked folders lead to folders already read (a cycle or a second path): not read again");
        if (unreadable > 0) warn?.Invoke($"{root}: {unreadable} folders could not be read: skipped (an index keeps what it held under them)");
        if (unenterable > 0) warn?.Invoke($"{root}: {unenterable} entries of folders that can be listed but not entered: skipped (an index keeps what it held under them)");
        if (dangling > 0) warn?.Invoke($"{root}: {dangling} symlinks lead nowhere (an unmounted disk, a moved folder?): skipped (an index keeps what it held under them)");
        if (others.Count > 0)
            warn?.Invoke($"{root}: {others.Values.Sum()} files of other types not read ({string.Join(", ", others.Take(6).Select(o => $"{o.Value} {o.Key}"))}{(others.Count > 6 ? ", ..." : "")}; images: {string.Join(" ", extensions)})");
        found.Sort(StringComparer.Ordinal);
        return found;
    }

    /// <summary>
    /// Whether a file that cannot be stat'ed is listed by its folder: false when the folder lists its entries and the name
    /// is not among them (the file is gone), true when it is (the folder can be listed but not entered), null when the
    /// folder cannot be listed or does not exist (moved, unmounted, no permission): gone or not is unknown.
    /// </summary>
    /// <param name="listings">folder -> its entries' names (null: cannot be listed), filled as folders are read: a
    /// caller asking about many files lists each folder once</param>
    public static bool? Listed(string path, Dictionary<string, HashSet<string>?>? listings = null)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is null) return null;
        listings ??= new();
        if (!listings.TryGetValue(dir, out var names))
        {
            try
            {
                // Every entry, compared by name below: the name is not a search pattern ('*', '?' and '\' are characters).
                names = Directory.EnumerateFileSystemEntries(dir, "*", new EnumerationOptions { AttributesToSkip = 0 })
                    .Select(e => Path.GetFileName(e)).ToHashSet(StringComparer.Ordinal);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                names = null;
            }
            listings[dir] = names;
        }
        return names?.Contains(Path.GetFileName(path));
    }

    /// <summary>Whether a regular file can be opened for reading now (a pipe is opened without waiting, and is not one).</summary>
    public static bool CanOpen(string path)
    {
        try
        {
            using var fs = OpenWithoutWaiting(path);
            return fs.CanSeek;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Whether a path is a symlink whose final target does not exist (.NET's File.Exists and Path.Exists say
    /// true for such a link: they fall back to the link itself).</summary>
    /// The kernel resolves it (realpath): .NET folds '..' in a relative link's target as text, which goes wrong under a
    /// symlinked folder.
    public static bool LeadsNowhere(string path) => new FileInfo(path).LinkTarget is not null && Paths.RealOrNull(path) is null;

    /// <summary>The largest image file read (bytes): a bigger one is refused before it is read.</summary>
    public const long MaxImageFileBytes = 256L << 20;

    /// <summary>
    /// Reads a whole image file. A folder, a missing file, one that cannot be read (permissions), one over
    /// <see cref="MaxImageFileBytes"/>, and anything that is not a regular file (a named pipe, whose read would wait for a
    /// writer forever; a socket or a device) are a <see cref="BadInputException"/> naming the file.
    /// </summary>
    public static byte[] ReadRegularFile(string path)
    {
        if (Directory.Exists(path)) throw new BadInputException($"{path}: is a folder, not an image file");
        if (!File.Exists(path))
            throw new BadInputException(Listed(path) == false ? $"{path}: no such file"
                : Path.GetDirectoryName(Path.GetFullPath(path)) is { } folder && !Directory.Exists(folder) ? $"{path}: no such file (its folder {folder} does not exist: is the image root, --images, right?)"
                : $"{path}: cannot be read (its folder cannot be entered or listed)");
        try
        {
            using var fs = OpenWithoutWaiting(path);
            if (!fs.CanSeek) throw new BadInputException($"{path}: not a regular file (a pipe, socket or device)");
            long length = fs.Length;
            if (length > MaxImageFileBytes) throw new BadInputException($"{path}: {length >> 20} MB, over the {MaxImageFileBytes >> 20} MB limit for an image file");
            var bytes = new byte[length];
            fs.ReadExactly(bytes);
            return bytes;
        }
        catch (UnauthorizedAccessException)
        {
            throw new BadInputException($"{path}: cannot be read (permission denied)");
        }
        catch (IOException e)
        {
            throw new BadInputException($"{path}: cannot be read ({e.Message})");
        }
    }

    /// <summary>Opens for reading; on Linux with O_NONBLOCK, so that opening a named pipe does not wait for a writer.</summary>
    private static FileStream OpenWithoutWaiting(string path)
    {
        if (!OperatingSystem.IsLinux()) return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        int fd = Libc.Open(path, Libc.ORdOnly | Libc.ONonBlock | Libc.OCloExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is 1 or 13) throw new UnauthorizedAccessException();   // EPERM, EACCES
            throw new IOException(Marshal.GetPInvokeErrorMessage(errno));
        }
        return new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.Read, 1);
    }
}
