using System.Runtime.InteropServices;

namespace KernelVL.IO;

/// <summary>The few libc calls the file code needs that .NET does not expose (Linux; flag values as on x86-64 and arm64).</summary>
internal static class Libc
{
    public const int ORdOnly = 0, ONonBlock = 0x800, OCloExec = 0x80000;   // the same on x86-64 and arm64 (O_DIRECTORY is not)

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    public static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "fsync")]
    public static extern int Fsync(int fd);

    [DllImport("libc", EntryPoint = "close")]
    public static extern int Close(int fd);

    [DllImport("libc", EntryPoint = "realpath", SetLastError = true)]
    public static extern nint RealPath([MarshalAs(UnmanagedType.LPUTF8Str)] string path, nint resolved);

    public const int WOk = 2, XOk = 1;

    [DllImport("libc", EntryPoint = "access", SetLastError = true)]
    public static extern int Access([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int mode);

    [DllImport("libc", EntryPoint = "free")]
    public static extern void Free(nint p);
}
