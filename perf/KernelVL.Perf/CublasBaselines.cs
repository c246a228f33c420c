using System.Text.Json;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using KernelVL.Backends.Cuda;

namespace KernelVL.Perf;

/// <summary>
/// cuBLAS GEMM baselines on the card the cuda backend runs on, through ILGPU.Algorithms' CuBlas (sgemm: f32 inputs,
/// timed with CUDA events on the backend's stream): the default math mode (f32 FMA) and the tensor-op mode (cuBLAS may
/// then round the f32 operands to half precision on the tensor cores, the nearest cuBLAS analogue of our bf16 GEMM).
/// PyTorch's bf16 matmul (perf/gpu/torch_baselines.py) is the pure-bf16 baseline.
/// </summary>
internal static class CublasBaselines
{
    public static readonly (int M, int N, int K)[] Shapes = [(4096, 4096, 4096), (1024, 768, 768), (1024, 3072, 768), (1024, 768, 3072)];

    public static int Run(string? jsonPath)
    {
        using var backend = CudaBackend.Create();
        var acc = (CudaAccelerator)backend.Accelerator;
        using var blas = new CuBlas(acc) { Stream = (CudaStream)acc.DefaultStream };
        var rng = new Random(1234);
        var rows = new List<Dictionary<string, object?>>();
        Console.WriteLine($"cuBLAS sgemm on {acc.Name} (CUDA events, median of 30 after 5 warm-up calls)");
        Console.WriteLine("| baseline | shape MxNxK | median ms | TFLOP/s |");
        Console.WriteLine("|---|---|---:|---:|");
        foreach (var (m, n, k) in Shapes)
        {
            // Random (never zero) inputs: zeros run faster than real data on the tensor cores.
            using var a = acc.Allocate1D(Random(rng, (long)m * k));   // [K, M] column-major = A [M, K]
            using var b = acc.Allocate1D(Random(rng, (long)k * n));   // [N, K] column-major = B [K, N]
            using var c = acc.Allocate1D<float>((long)m * n);         // [N, M] column-major = C [M, N]
            foreach (var (name, mode) in new[] { ("cublas_sgemm_f32", CuBlasMathMode.DefaultMath), ("cublas_sgemm_tensor_op", CuBlasMathMode.TensorOpMath) })
            {
                blas.MathMode = mode;
                double ms = backend.MedianMs(() => blas.Gemm(CuBlasOperation.NonTranspose, CuBlasOperation.NonTranspose, m, n, k,
                    1f, a.View, m, b.View, k, 0f, c.View, m), warmup: 5, reps: 30);
                double tflops = 2.0 * m * n * k / (ms / 1e3) / 1e12;
                rows.Add(new() { ["baseline"] = name, ["shape"] = $"{m}x{n}x{k}", ["median_ms"] = Math.Round(ms, 5), ["timing"] = backend.LastTiming, ["tflops"] = Math.Round(tflops, 2) });
                Console.WriteLine($"| {name} | {m}x{n}x{k} | {ms:F4} | {tflops:F1} |");
            }
        }
        if (jsonPath is not null)
        {
            KernelVL.IO.AtomicFile.WriteAllText(jsonPath, JsonSerializer.Serialize(new { gpu = acc.Name, results = rows }, new JsonSerializerOptions { WriteIndented = true }));
        }
        return 0;
    }

    private static float[] Random(Random rng, long count)
    {
        var x = new float[count];
        for (long i = 0; i < count; i++) x[i] = (float)(2 * rng.NextDouble() - 1);
        return x;
    }
}
