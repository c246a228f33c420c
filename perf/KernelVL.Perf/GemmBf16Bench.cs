using System.Text.Json;
using KernelVL.Backends.Cuda;
using KernelVL.Tensors;

namespace KernelVL.Perf;

/// <summary>
/// The issue's GEMM target on the cuda backend, at the shapes of <see cref="CublasBaselines"/> (4096^3 and the model's
/// linear layers, weights [N, K] as the model holds them, with bias): gemm.cu version 2 on bf16 operands already in
/// memory (what cuBLAS bf16 and torch bf16 are timed with), version 2 behind the f32 MatMul (the bf16 conversions
/// included), versions 3 (wgmma) and 4 (TMA + warp-specialised wgmma, split-K where its tiles leave most SMs idle, also timed without,
/// and in clusters of two sharing B; Hopper, when NVRTC built them) the same two ways, and version 1 (f32 operands rounded
/// while staging). Checked first, each version into an output filled with NaN (so a kernel that writes nothing, or skips
/// tiles, cannot pass on the previous version's product): every entry finite, 4096 sampled entries against an f64 dot
/// product of the bf16-rounded operands (error budget 1e-4 of sum |a b|: f32 accumulation only), and the f32 MatMul's
/// result equal to the bf16 kernel's bit for bit (the same rounding, the same kernel).
/// </summary>
internal static class GemmBf16Bench
{
    /// <param name="shapes">(M, N, K) each; null: <see cref="CublasBaselines.Shapes"/> (the targets'). Smaller ones rehearse
    /// the bench on the emulated driver (the commands are in perf/gpu/run-v2.sh's header).</param>
    public static int Run(string? jsonPath, (int M, int N, int K)[]? shapes = null)
    {
        shapes ??= CublasBaselines.Shapes;
        using var backend = CudaBackend.Create();
        if (backend.GemmV2Unavailable is { } why) { Console.Error.WriteLine($"perf: {why}"); return 1; }
        var rng = new Random(4321);
        var rows = new List<Dictionary<string, object?>>();
        int failures = 0, failedShapes = 0;   // version checks that failed; shapes where any did
        Console.WriteLine($"gemm.cu on {backend.Accelerator.Name} (CUDA events, median of 20 after 3 warm-up calls)");
        Console.WriteLine("| kernel | shape MxNxK | median ms | TFLOP/s | check |");
        Console.WriteLine("|---|---|---:|---:|---|");
        for (int si = 0; si < shapes.Length; si++)
        {
            var (m, n, k) = shapes[si];
            bool first = si == 0;   // (a version's unavailability is said once)
            var ah = Random(rng, (long)m * k);                                       // A [M, K]
            var bh = Random(rng, (long)n * k);                                       // B [N, K] (a weight)
            var biasH = Random(rng, n);                                              // [N]
            using var a = backend.Empty(new Shape(m, k));
            using var b = backend.Empty(new Shape(n, k));
            using var bias = backend.Empty(new Shape(n));
            using var c = backend.Empty(new Shape(m, n));                             // [M, N]
            using var c2 = backend.Empty(new Shape(m, n));
            backend.CopyFromHost(ah, a);
            backend.CopyFromHost(bh, b);
            backend.CopyFromHost(biasH, bias);
            using var a16 = backend.ToBf16KMajor(a, trans: false);                   // [M, K] bf16
            using var b16 = backend.ToBf16KMajor(b, trans: false);                   // [N, K] bf16
            var cv = new float[(long)m * n];
            // One version's check call: c filled with NaN first, then the call, then all of c checked (Check scans it).
            string? Checked(Action call, float[] into)
            {
                backend.Fill(c, float.NaN);
                backend.PoisonScratch = true;   // split-K's slices too (a recycled buffer could hold an earlier version's)
                try { call(); }
                finally { backend.PoisonScratch = false; }
                backend.CopyToHost(c, into);
                return Check(ah, bh, biasH, into, m, n, k, rng);
            }
            var ch = new float[(long)m * n];
            string? problem = Checked(() => backend.MatMulBf16(a16, b16, k, bias, c), ch);
            backend.GemmVersion = 2;
            backend.Fill(c2, float.NaN);
            backend.MatMul(a, b, bias, c2, transA: false, transB: true);
            var c2h = new float[(long)m * n];
            backend.CopyToHost(c2, c2h);
            for (long i = 0; i < c2h.Length && problem is null; i++)
                if (BitConverter.SingleToInt32Bits(c2h[i]) != BitConverter.SingleToInt32Bits(ch[i])) problem = $"MatMul (version 2) differs from the bf16 kernel at {i}: {c2h[i]} vs {ch[i]}";
            if (problem is not null) failures++;
            double flops = 2.0 * m * n * k;
            // rowProblem: what this row's own check found (null: passed); a failure of another version leaves it alone.
            void Row(string kernel, double ms, string? rowProblem)
            {
                Console.WriteLine($"| {kernel} | {m}x{n}x{k} | {ms:F4} | {flops / (ms / 1e3) / 1e12:F1} | {rowProblem ?? "ok"} |");
                // null where a check failed and the kernel was not timed (NaN): System.Text.Json refuses to write NaN
                bool timed = double.IsFinite(ms);
                rows.Add(new() { ["kernel"] = kernel, ["shape"] = $"{m}x{n}x{k}", ["median_ms"] = timed ? Math.Round(ms, 5) : null, ["timing"] = timed ? backend.LastTiming : null,
                                 ["tflops"] = timed ? Math.Round(flops / (ms / 1e3) / 1e12, 2) : null, ["ok"] = rowProblem is null, ["problem"] = rowProblem });
            }
            string? v2Problem = problem;
            Row("v2 bf16 operands", backend.MedianMs(() => backend.MatMulBf16(a16, b16, k, bias, c), warmup: 3, reps: 20), v2Problem);
            Row("v2 MatMul f32 (conversions included)", backend.MedianMs(() => backend.MatMul(a, b, bias, c2, false, true), warmup: 3, reps: 20), v2Problem);
            foreach (int ver in new[] { 3, 4 })
            {
                // Versions 3 (wgmma) and 4 (TMA + warp-specialised wgmma) on the same operands: checked like version 2, then timed.
                string? unavailable = ver == 3 ? backend.GemmV3Unavailable : backend.GemmV4Unavailable;
                if (unavailable is not null)
                {
                    if (first) Console.Error.WriteLine($"gemm v{ver}: {unavailable}");
                    continue;
                }
                backend.GemmVersion = ver;
                string? pv = Checked(() => backend.MatMulBf16(a16, b16, k, bias, c), cv);
                if (pv is not null) { failures++; problem ??= $"v{ver}: " + pv; }
                string name = ver == 3 ? "v3 wgmma" : backend.LastGemmSplits > 1 ? $"v4 TMA + wgmma, split-K {backend.LastGemmSplits}" : "v4 TMA + wgmma";
                Row($"{name} bf16 operands", pv is null ? backend.MedianMs(() => backend.MatMulBf16(a16, b16, k, bias, c), warmup: 3, reps: 20) : double.NaN, pv);
                Row($"{name} MatMul f32 (conversions included)", pv is null ? backend.MedianMs(() => backend.MatMul(a, b, bias, c2, false, true), warmup: 3, reps: 20) : double.NaN, pv);
                if (ver == 4)
                {
                    // one block per tile instead of persistent blocks (KERNELVL_CUDA_GEMM_PERSISTENT=0), checked and timed beside it
                    backend.GemmPersistent = false;
                    string? pp = Checked(() => backend.MatMulBf16(a16, b16, k, bias, c), cv);
                    if (pp is not null) { failures++; problem ??= "v4 not persistent: " + pp; }
                    Row($"{name}, a block per tile bf16 operands", pp is null ? backend.MedianMs(() => backend.MatMulBf16(a16, b16, k, bias, c), warmup: 3, reps: 20) : double.NaN, pp);
                    backend.GemmPersistent = true;
                }
                if (ver == 4 && backend.GemmV4ClusterUnavailable is null && m > 128)
                {
                    // clusters of two blocks sharing B by TMA multicast (KERNELVL_CUDA_GEMM_CLUSTER=2), checked and timed beside it
                    backend.GemmCluster = 2;
                    string? pc = Checked(() => backend.MatMulBf16(a16, b16, k, bias, c), cv);
                    if (pc is not null) { failures++; problem ??= "v4 clusters of 2: " + pc; }
                    string split = backend.LastGemmSplits > 1 ? $", split-K {backend.LastGemmSplits}" : "";
                    Row($"v4 TMA + wgmma, clusters of 2 (B multicast){split} bf16 operands",
                        pc is null ? backend.MedianMs(() => backend.MatMulBf16(a16, b16, k, bias, c), warmup: 3, reps: 20) : double.NaN, pc);
                    backend.GemmCluster = 1;
                }
                else if (ver == 4 && first && backend.GemmV4ClusterUnavailable is { } noCluster)
                    Console.Error.WriteLine($"gemm v4 clusters of 2: {noCluster}");
                if (ver == 4 && backend.LastGemmSplits > 1)
                {
                    // the same shape without the split, checked and timed beside it (KERNELVL_CUDA_GEMM_SPLITK=0 does this everywhere)
                    backend.GemmSplitK = false;
                    string? pn = Checked(() => backend.MatMulBf16(a16, b16, k, bias, c), cv);
                    if (pn is not null) { failures++; problem ??= "v4 without split-K: " + pn; }
                    Row("v4 TMA + wgmma, no split-K bf16 operands", pn is null ? backend.MedianMs(() => backend.MatMulBf16(a16, b16, k, bias, c), warmup: 3, reps: 20) : double.NaN, pn);
                    backend.GemmSplitK = true;
                }
            }
            backend.GemmVersion = 1;
            Row("v1 MatMul f32", backend.MedianMs(() => backend.MatMul(a, b, bias, c2, false, true), warmup: 3, reps: 20), null);   // (checked by the parity registry, not here)
            if (problem is not null) failedShapes++;   // (problem: the shape's first failure, of any version)
        }
        if (jsonPath is not null)
        {
            string tmp = jsonPath + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(new { gpu = backend.Accelerator.Name, rows }, new JsonSerializerOptions { WriteIndented = true }));
            File.Move(tmp, jsonPath, overwrite: true);
        }
        Console.WriteLine(PassedLine(shapes.Length, failedShapes, failures));
        return failures == 0 ? 0 : 1;
    }

    /// <summary>"MxNxK[,MxNxK...]", each dimension 1..65536; an <see cref="ArgumentException"/> naming the bad entry.</summary>
    internal static (int M, int N, int K)[] ParseShapes(string text)
    {
        var shapes = new List<(int, int, int)>();
        foreach (string entry in text.Split(','))
        {
            var d = entry.Trim().Split('x')
                .Select(x => int.TryParse(x, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int v) && v is >= 1 and <= 65536 ? v : 0).ToArray();
            if (d.Length != 3 || d.Contains(0)) throw new ArgumentException($"--shapes: '{entry}' is not MxNxK with each dimension in 1..65536");
            shapes.Add((d[0], d[1], d[2]));
        }
        return [.. shapes];
    }

    /// <summary>The summary line: shapes where every version passed, and how many version checks failed.</summary>
    internal static string PassedLine(int shapes, int failedShapes, int failedChecks) =>
        $"{shapes - failedShapes} of {shapes} shapes passed every check, {failedShapes} failed ({failedChecks} version check{(failedChecks == 1 ? "" : "s")} failed)";

    /// <summary>Round to bf16, nearest even (what cvt.rn.bf16x2.f32 does for finite values).</summary>
    internal static float Bf16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        u += 0x7fffu + ((u >> 16) & 1u);
        return BitConverter.UInt32BitsToSingle(u & 0xffff0000u);
    }

    /// <summary>c [M, N] (filled with NaN before the call) against the bf16-rounded operands: every entry finite, then 4096 sampled ones.</summary>
    private static string? Check(float[] a, float[] b, float[] bias, float[] c, int m, int n, int k, Random rng)
    {
        if (NonFinite(c, n) is { } unwritten) return unwritten;
        for (int s = 0; s < 4096; s++)
        {
            int i = rng.Next(m), j = rng.Next(n);
            double dot = bias[j], mag = Math.Abs(bias[j]);
            for (int t = 0; t < k; t++)
            {
                double p = (double)Bf16(a[(long)i * k + t]) * Bf16(b[(long)j * k + t]);
                dot += p;
                mag += Math.Abs(p);
            }
            if (Math.Abs(c[(long)i * n + j] - dot) > 1e-4 * mag + 1e-6) return $"c[{i}, {j}] = {c[(long)i * n + j]}, f64 of the bf16 operands {dot}";
        }
        return null;
    }

    /// <summary>The first entry of c [rows, n] that is NaN or infinite, as a problem (NaN: never written, the output having
    /// been filled with NaN before the call); null when every entry is finite.</summary>
    internal static string? NonFinite(ReadOnlySpan<float> c, int n)
    {
        for (int i = 0; i < c.Length; i++)
            if (!float.IsFinite(c[i])) return $"c[{i / n}, {i % n}] = {c[i]}{(float.IsNaN(c[i]) ? " (not written: the output was filled with NaN)" : "")}";
        return null;
    }

    private static float[] Random(Random rng, long count)
    {
        var x = new float[count];
        for (long i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
