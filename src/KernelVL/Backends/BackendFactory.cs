using KernelVL.Backends.Cpu;

namespace KernelVL.Backends;

/// <summary>Names and creates the backends this build offers; tests and the perf harness enumerate it.</summary>
public static class BackendFactory
{
    /// <summary>Every backend name this build knows, available here or not.</summary>
    public static IReadOnlyList<string> Names { get; } = ["reference", "cpu"];

    /// <summary>The backend used when none is named: the fastest one available.</summary>
    public static string DefaultName => "cpu";

    /// <summary>Null when the backend can run here, else why not (e.g. no CUDA device).</summary>
    public static string? Unavailable(string name) => name switch
    {
        "reference" or "cpu" => null,
        _ => $"unknown backend '{name}' (known: {string.Join(", ", Names)})",
    };

    public static IBackend Create(string name) => name switch
    {
        "reference" => new ReferenceBackend(),
        "cpu" => new CpuBackend(),
        _ => throw new BackendException(Unavailable(name) ?? $"backend '{name}' cannot be created"),
    };
}
