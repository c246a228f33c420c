using KernelVL.Backends.Cpu;
using KernelVL.Backends.Ilgpu;

namespace KernelVL.Backends;

/// <summary>Names and creates the backends this build offers; tests and the perf harness enumerate it.</summary>
public static class BackendFactory
{
    /// <summary>Every backend name this build knows, available here or not.</summary>
    /// <remarks>ilgpu-cpu runs the ILGPU kernels on ILGPU's CPU accelerator (for tests: ~400x slower than cpu); ilgpu runs them on CUDA.</remarks>
    public static IReadOnlyList<string> Names { get; } = ["reference", "cpu", "ilgpu-cpu", "ilgpu"];

    private static readonly Lazy<string?> CudaWhyNot = new(IlgpuBackend.CudaUnavailable);

    /// <summary>The backend used when none is named: the fastest one available.</summary>
    public static string DefaultName => "cpu";

    /// <summary>Null when the backend can run here, else why not (e.g. no CUDA device).</summary>
    public static string? Unavailable(string name) => name switch
    {
        "reference" or "cpu" or "ilgpu-cpu" => null,
        "ilgpu" => CudaWhyNot.Value,
        _ => $"unknown backend '{name}' (known: {string.Join(", ", Names)})",
    };

    public static IBackend Create(string name) => name switch
    {
        "reference" => new ReferenceBackend(),
        "cpu" => new CpuBackend(),
        "ilgpu-cpu" => IlgpuBackend.CreateCpu(),
        "ilgpu" => IlgpuBackend.CreateCuda(),
        _ => throw new BackendException(Unavailable(name) ?? $"backend '{name}' cannot be created"),
    };
}
