using KernelVL.Backends.Cpu;
using KernelVL.Backends.Cuda;
using KernelVL.Backends.Ilgpu;

namespace KernelVL.Backends;

/// <summary>Names and creates the backends this build offers; tests and the perf harness enumerate it.</summary>
public static class BackendFactory
{
    /// <summary>Every backend name this build knows, available here or not.</summary>
    /// <remarks>
    /// ilgpu-cpu runs the ILGPU kernels on ILGPU's CPU accelerator (for tests: ~400x slower than cpu); ilgpu-cuda runs
    /// them on an NVIDIA GPU; cuda is ilgpu-cuda with the hand-written kernels of kernels/*.cu taking over the hot ops. "ilgpu" is an alias for the best of those that is present (CUDA, else the CPU accelerator).
    /// </remarks>
    public static IReadOnlyList<string> Names { get; } = ["reference", "cpu", "ilgpu-cpu", "ilgpu-cuda", "cuda"];

    /// <summary>Names that stand for another backend (not enumerated by tests).</summary>
    public static IReadOnlyList<string> Aliases { get; } = ["ilgpu"];

    private static readonly Lazy<string?> CudaWhyNot = new(IlgpuBackend.CudaUnavailable);
    private static readonly Lazy<string?> HandKernelsWhyNot = new(CudaBackend.Unavailable);

    /// <summary>The backend used when none is named: the fastest one available.</summary>
    public static string DefaultName => "cpu";

    /// <summary>What an alias stands for here.</summary>
    public static string Resolve(string name) => name == "ilgpu" ? (CudaWhyNot.Value is null ? "ilgpu-cuda" : "ilgpu-cpu") : name;

    /// <summary>Null when the backend can run here, else why not (e.g. no CUDA device).</summary>
    public static string? Unavailable(string name) => Resolve(name) switch
    {
        "reference" or "cpu" or "ilgpu-cpu" => null,
        "ilgpu-cuda" => CudaWhyNot.Value,
        "cuda" => HandKernelsWhyNot.Value,
        var other => $"unknown backend '{other}' (known: {string.Join(", ", Names.Concat(Aliases))})",
    };

    public static IBackend Create(string name) => Resolve(name) switch
    {
        "reference" => new ReferenceBackend(),
        "cpu" => new CpuBackend(),
        "ilgpu-cpu" => IlgpuBackend.CreateCpu(),
        "ilgpu-cuda" => IlgpuBackend.CreateCuda(),
        "cuda" => CudaBackend.Create(),
        var other => throw new BackendException(Unavailable(other) ?? $"backend '{other}' cannot be created"),
    };
}
