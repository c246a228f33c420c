using System.CommandLine;
using System.Text.Json;
using KernelVL.Backends;
using KernelVL.Diagnostics;

namespace KernelVL.Cli;

/// <summary>`kernelvl info`: runtime, CPU features, accelerators, CUDA libraries, and the backend each op runs on.</summary>
internal static class InfoCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print the report as JSON" };
        var probe = new Option<bool>("--probe") { Description = "Also create an accelerator on every ILGPU device and run a test kernel there" };
        var cmd = new Command("info", "Show the runtime, CPU features, accelerators ILGPU finds, CUDA driver and NVRTC presence, and where each op runs");
        cmd.Options.Add(json);
        cmd.Options.Add(probe);
        cmd.SetAction(ErrorReporting.Guard(r => Run(r.GetValue(json), r.GetValue(probe))));
        return cmd;
    }

    /// <summary>With --probe on a CUDA machine: how the cuda backend loaded each kernel file (NVRTC CUBIN, cached or fresh, or the embedded PTX).</summary>
    private static (string[] Sources, string[] Versions) CudaKernelSources()
    {
        if (BackendFactory.Unavailable("cuda") is { } why) return ([$"cuda backend unavailable: {why}"], []);
        try
        {
            using var backend = KernelVL.Backends.Cuda.CudaBackend.Create();
            return (backend.KernelSources.Select(k => k.ToString()).ToArray(), backend.VersionAvailability.ToArray());
        }
        catch (KernelVLException e)
        {
            return ([$"cuda backend failed to start: {e.Message}"], []);
        }
    }

    private static int Run(bool json, bool probe)
    {
        var devices = SystemInfo.IlgpuDevices();
        var probes = probe ? SystemInfo.ProbeIlgpu() : [];
        string? cuda = SystemInfo.CudaDriver, nvrtc = SystemInfo.Nvrtc;
        var (kernelSources, kernelVersions) = probe ? CudaKernelSources() : ([], []);
        string backend = BackendFactory.DefaultName;
        var ops = SystemInfo.OpImplementations(SystemInfo.BackendType(backend));
        if (json)
        {
            var report = new
            {
                runtime = SystemInfo.Runtime,
                cpu = SystemInfo.CpuName,
                cores = SystemInfo.Cores,
                cpu_features = SystemInfo.CpuFeatures,
                ilgpu_devices = devices.Select(d => new { name = d.Name, type = d.Type, memory_bytes = d.Type == "CPU" ? (long?)null : d.MemoryBytes }),   // ILGPU's CPU accelerator reports long.MaxValue
                ilgpu_probe = probes.Select(p => new { device = p.Device, type = p.Type, ok = p.Ok, detail = p.Detail }),
                cuda_driver = cuda,
                cuda_driver_override = Environment.GetEnvironmentVariable(KernelVL.Backends.Cuda.CudaBackend.DriverVariable),
                nvrtc,
                cuda_kernels_embedded = KernelVL.Cuda.EmbeddedKernels.Names,
                cuda_kernel_sources = kernelSources,
                cuda_kernel_versions = kernelVersions,
                backends = BackendFactory.Names.Select(n => new { name = n, available = BackendFactory.Unavailable(n) is null, reason = BackendFactory.Unavailable(n) }),
                default_backend = backend,
                ops = ops.Select(o => new { op = o.Op, implemented_by = o.ImplementedBy }),
            };
            Console.WriteLine(JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            return ProbeCode(probes);
        }
        Console.WriteLine($"runtime        {SystemInfo.Runtime}");
        Console.WriteLine($"cpu            {SystemInfo.CpuName}, {SystemInfo.Cores} cores");
        Console.WriteLine($"cpu features   {string.Join(", ", SystemInfo.CpuFeatures)}");
        Console.WriteLine("ilgpu devices");
        foreach (var d in devices) Console.WriteLine($"  {d.Type,-8} {d.Name}{(d.MemoryBytes > 0 && d.Type != "CPU" ? $" ({d.MemoryBytes / (1 << 20)} MiB)" : "")}");
        foreach (var p in probes) Console.WriteLine($"  probe {p.Type,-8} {(p.Ok ? "ok" : "FAILED")}: {p.Detail}");
        Console.WriteLine($"cuda driver    {cuda ?? "not found (no NVIDIA driver: GPU backends unavailable)"}");
        if (Environment.GetEnvironmentVariable(KernelVL.Backends.Cuda.CudaBackend.DriverVariable) is { Length: > 0 } over)
            Console.WriteLine($"               the cuda backend loads {over} instead ({KernelVL.Backends.Cuda.CudaBackend.DriverVariable}; the host emulator's runs every kernel on the CPU)");
        Console.WriteLine($"nvrtc          {nvrtc ?? "not found (CUDA kernels would use the embedded PTX)"}");
        Console.WriteLine($"cuda kernels   {string.Join(", ", KernelVL.Cuda.EmbeddedKernels.Names)} (embedded PTX for sm_80, compiled at build time;");
        Console.WriteLine("               gemm_sm90's Hopper kernels are compiled only by NVRTC for sm_90a: its embedded PTX holds empty stubs)");
        foreach (var k in kernelSources) Console.WriteLine($"  loaded       {k}");
        foreach (var v in kernelVersions) Console.WriteLine($"  version      {v}");
        Console.WriteLine("backends");
        foreach (var n in BackendFactory.Names)
            Console.WriteLine($"  {n,-10} {BackendFactory.Unavailable(n) ?? "available"}{(n == backend ? " (default)" : "")}");
        Console.WriteLine($"ops on the {backend} backend (CpuBackend = its own SIMD kernel, ReferenceBackend = scalar loops)");
        foreach (var (op, by) in ops) Console.WriteLine($"  {op,-24} {by}");
        return ProbeCode(probes);
    }

    /// <summary>1 when a --probe failed, whether the report is text or JSON (the JSON says which in ilgpu_probe).</summary>
    private static int ProbeCode(IEnumerable<SystemInfo.ProbeResult> probes) => probes.Any(p => !p.Ok) ? ErrorReporting.Failure : ErrorReporting.Ok;
}
