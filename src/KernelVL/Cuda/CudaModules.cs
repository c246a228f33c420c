namespace KernelVL.Cuda;

/// <summary>How one kernel file reached the device: NVRTC's CUBIN (freshly compiled or from the disk cache) or the embedded PTX.</summary>
public sealed record KernelSource(string Kernel, string Path, string Detail)
{
    public override string ToString() => $"{Kernel}: {Path} ({Detail})";
}

/// <summary>
/// Loads the modules of kernels/*.cu once, for the current context's device. Where NVRTC loads, each source is compiled
/// for the device's exact architecture (sm_90a on Hopper) into CUBIN and cached on disk (<see cref="KernelCache"/>);
/// otherwise, or when that compilation fails, the build's embedded PTX (sm_80) is JIT-compiled by the driver.
/// <see cref="Sources"/> says which path each kernel took (shown by the perf harness and tests on a GPU).
/// </summary>
public sealed class CudaModules : IDisposable
{
    public const string HeaderName = "kernelvl_cuda.h";

    /// <summary>Every embedded header of kernels/ by file name (in name order), as NVRTC is given them: what the .cu files include.</summary>
    public static IReadOnlyDictionary<string, string> Headers() =>
        EmbeddedKernels.HeaderNames.ToDictionary(h => h, EmbeddedKernels.Header, StringComparer.Ordinal);

    private readonly CudaDriver _driver;
    private readonly Dictionary<string, nint> _modules = new();
    private readonly List<KernelSource> _sources = new();

    public IReadOnlyList<KernelSource> Sources => _sources;
    public (int Major, int Minor) Capability { get; }
    public string? NvrtcProblem { get; }

    /// <summary>
    /// NVRTC options for a compute capability: sm_90a on 9.0 (its arch-specific features: wgmma), with KERNELVL_SM90A
    /// defined for the kernels that use them (kernels/gemm_sm90.cu), sm_XY otherwise.
    /// </summary>
    public static IReadOnlyList<string> Options((int Major, int Minor) cc) => cc is (9, 0)
        ? ["--gpu-architecture=sm_90a", "--std=c++17", "-DKERNELVL_NVRTC=1", "-DKERNELVL_SM90A=1"]
        : [$"--gpu-architecture=sm_{cc.Major}{cc.Minor}", "--std=c++17", "-DKERNELVL_NVRTC=1"];

    /// <param name="driver">with the backend's context current</param>
    /// <param name="kernels">file names of kernels/*.cu without the extension</param>
    /// <param name="useNvrtc">false: always the embedded PTX (KERNELVL_NVRTC=0 in the environment does the same)</param>
    public CudaModules(CudaDriver driver, IEnumerable<string> kernels, bool useNvrtc = true)
    {
        _driver = driver;
        Capability = driver.ComputeCapability(driver.CurrentDevice);
        Nvrtc? nvrtc = null;
        if (Environment.GetEnvironmentVariable("KERNELVL_NVRTC") == "0") useNvrtc = false;
        if (useNvrtc)
        {
            try { nvrtc = Nvrtc.Load(); }
            catch (BackendException e) { NvrtcProblem = e.Message; }
        }
        else NvrtcProblem = "NVRTC disabled";
        try
        {
            foreach (var k in kernels) _modules[k] = Load(k, nvrtc);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private nint Load(string kernel, Nvrtc? nvrtc)
    {
        string? why = NvrtcProblem;
        if (nvrtc is not null)
        {
            try
            {
                var (image, detail) = Compile(kernel, nvrtc);
                nint m = _driver.LoadModule(image);
                _sources.Add(new KernelSource(kernel, $"nvrtc {Options(Capability)[0]["--gpu-architecture=".Length..]} cubin", detail));
                return m;
            }
            catch (KernelVLException e)
            {
                why = $"NVRTC path failed, {e.Message.Split('\n')[0]}";
            }
        }
        nint ptx = _driver.LoadModule(System.Text.Encoding.UTF8.GetBytes(EmbeddedKernels.Ptx(kernel)));
        _sources.Add(new KernelSource(kernel, "embedded ptx sm_80 (driver JIT)", why ?? ""));
        return ptx;
    }

    private (byte[] Image, string Detail) Compile(string kernel, Nvrtc nvrtc)
    {
        string source = EmbeddedKernels.Source(kernel);
        var headers = Headers();
        var options = Options(Capability);
        var (major, minor) = nvrtc.Version;
        string key = KernelCache.Key(source, string.Concat(headers.Select(h => h.Key + "\n" + h.Value)), options, $"nvrtc {major}.{minor}");
        string dir = KernelCache.DefaultDirectory();
        if (KernelCache.TryRead(dir, key, "cubin") is { Length: > 0 } cached) return (cached, $"cached {KernelCache.PathOf(dir, key, "cubin")}");
        var (image, log) = nvrtc.Compile(source, kernel + ".cu", headers, options, cubin: true);
        bool stored = KernelCache.TryWrite(dir, key, "cubin", image);
        return (image, $"compiled by NVRTC {major}.{minor}{(stored ? ", cached" : ", cache not writable")}{(string.IsNullOrWhiteSpace(log) ? "" : "; log: " + OneLine(log))}");
    }

    /// <summary>
    /// A compiler log on one line (its lines joined by " | "), so that a `kernel ...` line carries all of it: ptxas's
    /// performance notes (C75xx: a serialised wgmma, an injected wait) come after other lines and name the function.
    /// </summary>
    public static string OneLine(string log) =>
        string.Join(" | ", log.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    public nint Function(string kernel, string entry) =>
        _modules.TryGetValue(kernel, out var m) ? _driver.GetFunction(m, entry) : throw new BackendException($"kernel file {kernel}.cu was not loaded");

    public void Dispose()
    {
        foreach (var m in _modules.Values)
        {
            try { _driver.UnloadModule(m); }
            catch (CudaException) { }   // a context already torn down: nothing left to free
        }
        _modules.Clear();
    }
}
