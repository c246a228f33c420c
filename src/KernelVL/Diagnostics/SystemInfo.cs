using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;

namespace KernelVL.Diagnostics;

/// <summary>What this machine offers the engine: CPU, SIMD, accelerators, CUDA libraries, and where each op runs.</summary>
public static class SystemInfo
{
    public sealed record Accelerator(string Name, string Type, long MemoryBytes);

    public static string Runtime => $"{RuntimeInformation.FrameworkDescription} on {RuntimeInformation.OSDescription} ({RuntimeInformation.ProcessArchitecture})";

    public static string CpuName
    {
        get
        {
            try
            {
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return RuntimeInformation.ProcessArchitecture.ToString();
        }
    }

    public static int Cores => Environment.ProcessorCount;

    /// <summary>The SIMD features the Cpu backend uses, as the JIT sees them.</summary>
    public static IReadOnlyList<string> CpuFeatures
    {
        get
        {
            var f = new List<string>();
            if (Avx2.IsSupported) f.Add("AVX2");
            if (Fma.IsSupported) f.Add("FMA");
            if (Avx512F.IsSupported) f.Add("AVX-512F");
            if (Avx512BW.IsSupported) f.Add("AVX-512BW");
            if (Avx512Vbmi.IsSupported) f.Add("AVX-512VBMI");
            f.Add(Vector512.IsHardwareAccelerated ? "Vector512 accelerated" : "Vector512 not accelerated (Vector256 paths)");
            return f;
        }
    }

    /// <summary>Every device ILGPU finds (CPU accelerator, CUDA, OpenCL); an ILGPU failure is reported as an entry, not thrown.</summary>
    public static IReadOnlyList<Accelerator> IlgpuDevices()
    {
        try
        {
            using var context = Context.Create(b => b.Default());
            return context.Devices.Select(d => new Accelerator(d.Name, d.AcceleratorType.ToString(), d.MemorySize)).ToArray();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return [new Accelerator($"ILGPU failed to enumerate devices: {e.Message}", "error", 0)];
        }
    }

    public sealed record ProbeResult(string Device, string Type, bool Ok, string Detail);

    private static void AxpyKernel(Index1D i, ArrayView<float> x, ArrayView<float> y) => y[i] = 2f * x[i] + y[i];

    /// <summary>
    /// Creates an accelerator on every device ILGPU finds, compiles and runs a small kernel there and checks
    /// its result: proves that the driver, ILGPU's code generator and the device work together.
    /// </summary>
    public static IReadOnlyList<ProbeResult> ProbeIlgpu(int n = 1 << 20)
    {
        var results = new List<ProbeResult>();
        try
        {
            using var context = Context.Create(b => b.Default().EnableAlgorithms());
            foreach (var device in context.Devices)
            {
                try
                {
                    using var acc = device.CreateAccelerator(context);
                    var kernel = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(AxpyKernel);
                    var x = new float[n]; var y = new float[n];
                    for (int i = 0; i < n; i++) { x[i] = i % 97; y[i] = i % 13; }
                    using var dx = acc.Allocate1D(x);
                    using var dy = acc.Allocate1D(y);
                    var sw = System.Diagnostics.Stopwatch.StartNew();
                    kernel(n, dx.View, dy.View);
                    acc.Synchronize();
                    double ms = sw.Elapsed.TotalMilliseconds;
                    var back = dy.GetAsArray1D();
                    int bad = 0;
                    for (int i = 0; i < n; i++) if (back[i] != 2f * (i % 97) + i % 13) bad++;
                    string extra = acc is ILGPU.Runtime.Cuda.CudaAccelerator cuda
                        ? $", sm_{cuda.Architecture.Major}{cuda.Architecture.Minor}, PTX ISA {cuda.InstructionSet}, driver {cuda.DriverVersion}, context 0x{cuda.NativePtr:x}"
                        : "";
                    results.Add(new ProbeResult(device.Name, device.AcceleratorType.ToString(), bad == 0,
                        bad == 0 ? $"axpy over {n} floats correct ({ms:F1} ms incl. launch){extra}" : $"{bad} wrong results{extra}"));
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    results.Add(new ProbeResult(device.Name, device.AcceleratorType.ToString(), false, $"{e.GetType().Name}: {e.Message}"));
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            results.Add(new ProbeResult("ILGPU context", "error", false, $"{e.GetType().Name}: {e.Message}"));
        }
        if (CudaDriver is not null && !results.Any(r => r.Type == nameof(AcceleratorType.Cuda)))
            results.Add(new ProbeResult("CUDA", nameof(AcceleratorType.Cuda), false, ExplainMissingCuda()));
        return results;
    }

    /// <summary>
    /// ILGPU swallows every error while it enumerates CUDA devices. When libcuda loads but no CUDA device
    /// appears, this asks ILGPU's (internal) driver binding directly, by reflection, what went wrong.
    /// </summary>
    private static string ExplainMissingCuda()
    {
        try
        {
            var asm = typeof(Context).Assembly;
            var apiType = asm.GetType("ILGPU.Runtime.Cuda.CudaAPI")!;
            var api = apiType.GetProperty("CurrentAPI", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)!.GetValue(null);
            if (api is null) return "libcuda loads, but ILGPU has no CUDA driver binding";
            string kind = api.GetType().Name;
            var count = apiType.GetMethod("GetDeviceCount", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance)!;
            object?[] args = [0];
            object? err = count.Invoke(api, args);
            string detail = $"ILGPU binding {kind}: cuDeviceGetCount -> {err}, {args[0]} device(s)";
            var ctor = typeof(ILGPU.Runtime.Cuda.CudaDevice).GetConstructor(BindingFlags.NonPublic | BindingFlags.Instance, [typeof(int)]);
            if (ctor is not null && args[0] is int n && n > 0)
            {
                try { ctor.Invoke([0]); detail += "; device 0 describes itself without error"; }
                catch (TargetInvocationException e) { detail += $"; describing device 0 failed: {e.InnerException?.GetType().Name}: {e.InnerException?.Message}"; }
            }
            return "libcuda loads, but ILGPU found no CUDA device. " + detail;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return $"libcuda loads, but ILGPU found no CUDA device ({e.GetType().Name}: {e.Message})";
        }
    }

    /// <summary>The first of the names that loads, or null.</summary>
    private static string? Probe(IEnumerable<string> names)
    {
        foreach (var n in names)
        {
            if (NativeLibrary.TryLoad(n, out var h))
            {
                NativeLibrary.Free(h);
                return n;
            }
        }
        return null;
    }

    /// <summary>libcuda (the driver API), or null when no NVIDIA driver is installed.</summary>
    public static string? CudaDriver => Probe(["libcuda.so.1", "libcuda.so", "nvcuda.dll"]);

    /// <summary>libnvrtc, probing the versioned names (the major CUDA version is in the file name) and CUDA_HOME.</summary>
    public static string? Nvrtc
    {
        get
        {
            var names = new List<string> { "libnvrtc.so" };
            for (int major = 14; major >= 11; major--) names.Add($"libnvrtc.so.{major}");
            names.Add("libnvrtc.so.11.2");
            string? home = Environment.GetEnvironmentVariable("CUDA_HOME") ?? Environment.GetEnvironmentVariable("CUDA_PATH");
            if (home is not null)
                foreach (var n in names.ToArray()) names.Add(Path.Combine(home, "lib64", n));
            return Probe(names);
        }
    }

    /// <summary>For each op of the contract, the class that implements it on a backend (its own kernel or the reference's loops).</summary>
    public static IReadOnlyList<(string Op, string ImplementedBy)> OpImplementations(Type backendType)
    {
        var result = new List<(string, string)>();
        foreach (var m in typeof(IBackend).GetMethods())
        {
            if (m.IsSpecialName || m.Name is "Dispose" or "Synchronize") continue;
            var impl = backendType.GetMethod(m.Name, BindingFlags.Public | BindingFlags.Instance, m.GetParameters().Select(p => p.ParameterType).ToArray());
            string by = impl?.DeclaringType?.Name ?? "missing";
            if (!result.Any(r => r.Item1 == m.Name)) result.Add((m.Name, by));
        }
        return result;
    }

    public static Type BackendType(string name) => name switch
    {
        "cpu" => typeof(CpuBackend),
        "reference" => typeof(ReferenceBackend),
        "ilgpu" or "ilgpu-cpu" or "ilgpu-cuda" => typeof(KernelVL.Backends.Ilgpu.IlgpuBackend),
        "cuda" => typeof(KernelVL.Backends.Cuda.CudaBackend),
        _ => throw new BackendException($"unknown backend '{name}'"),
    };
}
