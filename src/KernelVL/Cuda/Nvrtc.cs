using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace KernelVL.Cuda;

/// <summary>An NVRTC call failed: names the call, the nvrtcResult and, for a compilation, the program log.</summary>
public sealed class NvrtcException : KernelVLException
{
    public NvrtcException(string call, int result, string? description, string? log = null)
        : base($"{call} failed: {description ?? "nvrtcResult"} ({result}){(string.IsNullOrWhiteSpace(log) ? "" : "\n" + log.Trim())}")
    {
        Call = call;
        Result = result;
        Log = log;
    }

    public string Call { get; }
    public int Result { get; }
    public string? Log { get; }
}

/// <summary>
/// The project's own binding of NVRTC (the run-time CUDA C++ compiler): create a program with its headers, compile it
/// with options, read PTX or CUBIN and the log. Only these calls are bound. The library's name carries the CUDA major
/// version, so <see cref="Candidates"/> probes the versioned names and $CUDA_HOME/lib64; a machine without it gets a
/// <see cref="BackendException"/> (the Cuda backend then loads the embedded PTX instead).
/// </summary>
public sealed unsafe class Nvrtc
{
    private readonly delegate* unmanaged<int*, int*, int> _version;
    private readonly delegate* unmanaged<int, byte*> _getErrorString;
    private readonly delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> _create;
    private readonly delegate* unmanaged<nint, int, byte**, int> _compile;
    private readonly delegate* unmanaged<nint*, int> _destroy;
    private readonly delegate* unmanaged<nint, nuint*, int> _logSize, _ptxSize, _cubinSize;
    private readonly delegate* unmanaged<nint, byte*, int> _log, _ptx, _cubin;

    /// <summary>The file that was loaded (as it was asked for: a soname or a path).</summary>
    public string Library { get; }

    private Nvrtc(nint lib, string library)
    {
        Library = library;
        _version = (delegate* unmanaged<int*, int*, int>)Export(lib, "nvrtcVersion", library);
        _getErrorString = (delegate* unmanaged<int, byte*>)Export(lib, "nvrtcGetErrorString", library);
        _create = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)Export(lib, "nvrtcCreateProgram", library);
        _compile = (delegate* unmanaged<nint, int, byte**, int>)Export(lib, "nvrtcCompileProgram", library);
        _destroy = (delegate* unmanaged<nint*, int>)Export(lib, "nvrtcDestroyProgram", library);
        _logSize = (delegate* unmanaged<nint, nuint*, int>)Export(lib, "nvrtcGetProgramLogSize", library);
        _log = (delegate* unmanaged<nint, byte*, int>)Export(lib, "nvrtcGetProgramLog", library);
        _ptxSize = (delegate* unmanaged<nint, nuint*, int>)Export(lib, "nvrtcGetPTXSize", library);
        _ptx = (delegate* unmanaged<nint, byte*, int>)Export(lib, "nvrtcGetPTX", library);
        // CUBIN output exists from CUDA 11.1; an older NVRTC can still give PTX.
        _cubinSize = NativeLibrary.TryGetExport(lib, "nvrtcGetCUBINSize", out var cs) ? (delegate* unmanaged<nint, nuint*, int>)cs : null;
        _cubin = NativeLibrary.TryGetExport(lib, "nvrtcGetCUBIN", out var cb) ? (delegate* unmanaged<nint, byte*, int>)cb : null;
    }

    private static void* Export(nint lib, string name, string library) =>
        NativeLibrary.TryGetExport(lib, name, out var p) ? (void*)p : throw new BackendException($"{library} has no {name}: not a usable NVRTC");

    /// <summary>The names tried, in order: the newest versioned sonames first, then the unversioned one, then the same under $CUDA_HOME/lib64.</summary>
    public static IReadOnlyList<string> Candidates(string? cudaHome)
    {
        var names = new List<string>();
        for (int major = 14; major >= 11; major--) names.Add($"libnvrtc.so.{major}");
        names.Add("libnvrtc.so.11.2");
        names.Add("libnvrtc.so");
        if (!string.IsNullOrEmpty(cudaHome))
            foreach (var n in names.ToArray()) names.Add(Path.Combine(cudaHome, "lib64", n));
        return names;
    }

    /// <summary>Loads the first candidate that exists; a <see cref="BackendException"/> listing what was tried when none does.</summary>
    public static Nvrtc Load(IReadOnlyList<string>? candidates = null)
    {
        candidates ??= Candidates(Environment.GetEnvironmentVariable("CUDA_HOME") ?? Environment.GetEnvironmentVariable("CUDA_PATH"));
        foreach (var name in candidates)
            if (NativeLibrary.TryLoad(name, out var lib)) return new Nvrtc(lib, name);
        throw new BackendException($"NVRTC (libnvrtc) could not be loaded (tried {string.Join(", ", candidates)}): kernels cannot be compiled for this device at run time; the embedded PTX is used instead");
    }

    private string Describe(int result) => _getErrorString(result) is var s && s != null ? Marshal.PtrToStringUTF8((nint)s) ?? "" : "";

    private void Check(string call, int result, string? log = null)
    {
        if (result != 0) throw new NvrtcException(call, result, Describe(result), log);
    }

    public (int Major, int Minor) Version
    {
        get
        {
            int major, minor;
            Check("nvrtcVersion", _version(&major, &minor));
            return (major, minor);
        }
    }

    public bool CanEmitCubin => _cubin != null && _cubinSize != null;

    /// <summary>
    /// Compiles one translation unit. <paramref name="headers"/> maps include names to their text (the sources' own
    /// header travels this way: NVRTC reads no files). Returns CUBIN when <paramref name="cubin"/> (the options must then
    /// name a real architecture, sm_XX), else PTX, and the compiler's log (warnings). A failed compilation throws an
    /// <see cref="NvrtcException"/> carrying the log.
    /// </summary>
    public (byte[] Image, string Log) Compile(string source, string name, IReadOnlyDictionary<string, string> headers, IReadOnlyList<string> options, bool cubin)
    {
        if (cubin && !CanEmitCubin) throw new BackendException($"{Library} cannot emit CUBIN (older than CUDA 11.1)");
        var pinned = new List<nint>();
        nint Utf8(string s)
        {
            var p = Marshal.StringToCoTaskMemUTF8(s);
            pinned.Add(p);
            return p;
        }
        try
        {
            var headerTexts = headers.Values.Select(Utf8).ToArray();
            var headerNames = headers.Keys.Select(Utf8).ToArray();
            var opts = options.Select(Utf8).ToArray();
            nint prog;
            fixed (nint* ht = headerTexts, hn = headerNames, op = opts)
            {
                Check("nvrtcCreateProgram", _create(&prog, (byte*)Utf8(source), (byte*)Utf8(name), headers.Count, (byte**)ht, (byte**)hn));
                try
                {
                    int r = _compile(prog, opts.Length, (byte**)op);
                    string log = ReadLog(prog);
                    Check($"nvrtcCompileProgram({name}, {string.Join(' ', options)})", r, log);
                    nuint size;
                    if (cubin) Check("nvrtcGetCUBINSize", _cubinSize(prog, &size));
                    else Check("nvrtcGetPTXSize", _ptxSize(prog, &size));
                    var image = new byte[(int)size];
                    fixed (byte* img = image)
                    {
                        if (cubin) Check("nvrtcGetCUBIN", _cubin(prog, img));
                        else Check("nvrtcGetPTX", _ptx(prog, img));
                    }
                    return (image, log);
                }
                finally
                {
                    _destroy(&prog);
                }
            }
        }
        finally
        {
            foreach (var p in pinned) Marshal.FreeCoTaskMem(p);
        }
    }

    private string ReadLog(nint prog)
    {
        nuint size;
        if (_logSize(prog, &size) != 0 || size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* l = log)
            if (_log(prog, l) != 0) return "";
        return Encoding.UTF8.GetString(log).TrimEnd('\0');
    }
}

/// <summary>
/// The on-disk cache of kernels compiled by NVRTC: one file per (source, header, options, NVRTC version), named by the
/// SHA-256 of those, under $XDG_CACHE_HOME/kernelvl or ~/.cache/kernelvl. Writes go to a temporary name in the same
/// folder and are renamed into place, so a reader never sees half a file and concurrent writers do not corrupt it.
/// </summary>
public static class KernelCache
{
    public static string DefaultDirectory()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrEmpty(xdg) ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "kernelvl");
    }

    /// <summary>Hex SHA-256 over every input of the compilation, each length-prefixed (no two inputs can collide by concatenation).</summary>
    public static string Key(string source, string header, IReadOnlyList<string> options, string compilerVersion)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            h.AppendData(BitConverter.GetBytes(bytes.Length));
            h.AppendData(bytes);
        }
        Add(source); Add(header); Add(compilerVersion);
        Add(options.Count.ToString(System.Globalization.CultureInfo.InvariantCulture));
        foreach (var o in options) Add(o);
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant();
    }

    public static string PathOf(string directory, string key, string extension) => Path.Combine(directory, $"{key}.{extension}");

    /// <summary>The cached image, or null when absent or unreadable (a cache is never a reason to fail).</summary>
    public static byte[]? TryRead(string directory, string key, string extension)
    {
        try
        {
            string p = PathOf(directory, key, extension);
            return File.Exists(p) ? File.ReadAllBytes(p) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Writes atomically (temporary name + rename); returns false (and writes nothing) when the folder is not writable.</summary>
    public static bool TryWrite(string directory, string key, string extension, ReadOnlySpan<byte> image)
    {
        string tmp = Path.Combine(directory, $"{key}.{extension}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            Directory.CreateDirectory(directory);
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                f.Write(image);
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, PathOf(directory, key, extension), overwrite: true);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
            return false;
        }
    }
}
