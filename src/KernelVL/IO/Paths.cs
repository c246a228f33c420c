using System.Runtime.InteropServices;

namespace KernelVL.IO;

/// <summary>Comparing paths as the file system resolves them.</summary>
public static class Paths
{
    /// <summary>The path with every symlink resolved (realpath(3)); the full path where that is not available (Windows, or a path that does not exist).</summary>
    public static string Real(string path) => RealOrNull(path) ?? Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

    /// <summary>The path with every symlink resolved by the kernel (realpath(3)), or null where that fails: a link that
    /// leads nowhere, a loop, a folder on the way that cannot be entered (Linux and macOS; elsewhere the full path).</summary>
    public static string? RealOrNull(string path)
    {
        if (OperatingSystem.IsWindows()) return Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        nint p = Libc.RealPath(path, 0);
        if (p == 0) return null;
        try
        {
            return Marshal.PtrToStringUTF8(p)!;
        }
        finally
        {
            Libc.Free(p);
        }
    }

    /// <summary>Whether two paths name the same file or folder (symlinks and trailing separators resolved).</summary>
    public static bool Same(string a, string b) => string.Equals(Real(a), Real(b), StringComparison.Ordinal);

    /// <summary>
    /// Whether entries can be made in and removed from <paramref name="folder"/>: write and search permission, and not on a
    /// read-only mount (access(2), Linux and macOS). True where that cannot be asked (Windows): the attempt decides there.
    /// </summary>
    public static bool CanChangeEntries(string folder) => OperatingSystem.IsWindows() || Libc.Access(folder, Libc.WOk | Libc.XOk) == 0;
}
