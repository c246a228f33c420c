using System.Runtime.InteropServices;

namespace KernelVL.IO;

/// <summary>The image files under a folder, recursively, for an index of a folder of images.</summary>
public static class ImageFiles
{
    /// <summary>
    /// Paths relative to <paramref name="root"/> of the files whose extension is one of <paramref name="extensions"/>
    /// (lower case, with the dot), in ordinal order. Symlinked folders are followed, but each real folder is read once:
    /// a link to an ancestor (a cycle, which would never end) or to a folder already read is skipped and counted in one
    /// warning. Folders that cannot be read are skipped likewise.
    /// </summary>
    public static List<string> Under(string root, IReadOnlyCollection<string> extensions, Action<string>? warn = null)
    {
        var found = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(Path.GetFullPath(root));
        int again = 0, unreadable = 0;
        var others = new SortedDictionary<string, int>(StringComparer.Ordinal);   // files of other extensions, by extension
        var options = new EnumerationOptions { AttributesToSkip = 0, IgnoreInaccessible = false };
        while (pending.Count > 0)
        {
            string dir = pending.Pop();
            if (!seen.Add(RealPath(dir)))
            {
                again++;
                continue;
            }
            try
            {
                foreach (var e in Directory.EnumerateFileSystemEntries(dir, "*", options))
                {
                    if (Directory.Exists(e)) pending.Push(e);
                    else if (extensions.Contains(Path.GetExtension(e).ToLowerInvariant())) found.Add(Path.GetRelativePath(root, e));
                    else
                    {
                        string ext = Path.GetExtension(e).ToLowerInvariant();
                        others[ext.Length == 0 ? "(none)" : ext] = others.GetValueOrDefault(ext.Length == 0 ? "(none)" : ext) + 1;
                    }
                }
            }
            catch (Exception x) when (x is UnauthorizedAccessException or IOException)
            {
                unreadable++;
            }
        }
        if (again > 0) warn?.Invoke($"{root}: {again} symlinked folders lead to folders already read (a cycle or a second path): not read again");
        if (unreadable > 0) warn?.Invoke($"{root}: {unreadable} folders could not be read: skipped");
        if (others.Count > 0)
            warn?.Invoke($"{root}: {others.Values.Sum()} files of other types not read ({string.Join(", ", others.Take(6).Select(o => $"{o.Value} {o.Key}"))}{(others.Count > 6 ? ", ..." : "")}; images: {string.Join(" ", extensions)})");
        found.Sort(StringComparer.Ordinal);
        return found;
    }

    /// <summary>The path with every symlink resolved (realpath(3)); the full path where that is not available.</summary>
    public static string RealPath(string path)
    {
        if (OperatingSystem.IsWindows()) return Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        nint p = realpath(path, 0);
        if (p == 0) return Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        try
        {
            return Marshal.PtrToStringUTF8(p)!;
        }
        finally
        {
            free(p);
        }
    }

    [DllImport("libc", EntryPoint = "realpath", SetLastError = true)]
    private static extern nint realpath([MarshalAs(UnmanagedType.LPUTF8Str)] string path, nint resolved);

    [DllImport("libc", EntryPoint = "free")]
    private static extern void free(nint p);
}
