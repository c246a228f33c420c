using System.Text.Json;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Backends.Cuda;
using KernelVL.IO;
using KernelVL.Tensors;

namespace KernelVL.Perf;

/// <summary>
/// The InfoNCE target ("the contrastive loss over a 4096 x 4096 similarity matrix bandwidth-bound") step by
/// step on the cuda backend's version 2: the S GEMM and the gradient GEMMs against their FLOPs, the passes over the
/// [n, n] matrix (statistics: one read; G: one read and one write) against the bytes they must move, each timed alone
/// with CUDA events (CudaBackend.InfoNcePhases). The loss of the timed run is checked against the cpu backend's first.
/// </summary>
internal static class InfoNcePhasesBench
{
    public static int Run(string[] args)
    {
        int n = 4096, d = 768;
        float tau = 0.05f;
        string? json = null;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--n": n = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                case "--d": d = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                case "--tau": tau = float.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                case "--json": json = Next(); break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        if (n < 1 || n > CudaBackend.InfoNceV2MaxN || d < 1) throw new ArgumentException($"--n must be in 1..{CudaBackend.InfoNceV2MaxN} and --d positive");
        if (!(tau > 0)) throw new ArgumentException("--tau must be positive");
        using var backend = CudaBackend.Create();
        backend.InfoNceVersion = 2;
        backend.PreciseGemmVersion = backend.PreciseGemmV3Unavailable is null ? 3 : 2;
        var t = UnitRows(n, d, 41);
        var v = UnitRows(n, d, 42);
        // The reference loss on the cpu backend, same data.
        float want;
        using (var cpu = new CpuBackend())
        {
            using var ct = cpu.Empty(new Shape(n, d));
            using var cv = cpu.Empty(new Shape(n, d));
            using var cl = cpu.Empty(new Shape(1));
            using var r = cpu.Empty(new Shape(n));
            using var c = cpu.Empty(new Shape(n));
            cpu.CopyFromHost(t, ct);
            cpu.CopyFromHost(v, cv);
            cpu.InfoNce(ct, cv, 1f / tau, cl, r, c);
            want = cl.ToArray()[0];
        }
        using var gt = backend.Empty(new Shape(n, d));
        using var gv = backend.Empty(new Shape(n, d));
        backend.CopyFromHost(t, gt);
        backend.CopyFromHost(v, gv);
        var (steps, loss) = backend.InfoNcePhases(gt, gv, 1f / tau, warmup: 2, reps: 10);
        string check = Math.Abs(loss - want) <= 1e-5 * Math.Max(1, Math.Abs(want)) ? "ok" : $"FAIL loss {loss}, cpu {want}";
        Console.Error.WriteLine($"infonce phases: N {n} D {d} tau {tau}, version 2 on gemm f32 v{backend.PreciseGemmVersion}: loss {loss} (cpu {want}): {check}");
        Console.WriteLine("| step | median ms | GB/s (bytes it must move) | TFLOP/s |");
        Console.WriteLine("|---|---:|---:|---:|");
        foreach (var (step, ms, bytes, flops) in steps)
            Console.WriteLine($"| {step} | {ms:F4} | {bytes / (ms / 1e3) / 1e9:F0} | {flops / (ms / 1e3) / 1e12:F2} |");
        Console.WriteLine($"| all (forward + backward) | {steps.Sum(s => s.Ms):F4} | | |");
        if (json is not null)
            AtomicFile.WriteAllText(json, JsonSerializer.Serialize(new
            {
                gpu = backend.Accelerator.Name, n, d, tau, loss = float.IsFinite(loss) ? loss : (float?)null, cpu_loss = want, ok = check == "ok",   // (no NaN in JSON)
                steps = steps.Select(s => new { step = s.Step, median_ms = s.Ms, bytes = s.Bytes, flops = s.Flops }),
            }, new JsonSerializerOptions { WriteIndented = true }));
        return check == "ok" ? 0 : 1;
    }

    private static float[] UnitRows(int n, int d, ulong stream)
    {
        var x = new float[(long)n * d];
        for (int r = 0; r < n; r++)
        {
            double s = 0;
            for (int c = 0; c < d; c++) { float g = 2f * CounterRng.Uniform(stream, (long)r * d + c) - 1f; x[(long)r * d + c] = g; s += g * g; }
            float inv = (float)(1 / Math.Sqrt(s));
            for (int c = 0; c < d; c++) x[(long)r * d + c] *= inv;
        }
        return x;
    }
}
