using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using KernelVL.Backends;
using KernelVL.Diagnostics;
using KernelVL.Perf;
using KernelVL.Testing;

// The kernel perf harness: checks every registry op against the scalar reference before timing it
// (llm.c style), times it, and relates the result to the machine's measured peaks.
const string usage = """
    usage: KernelVL.Perf ops [--backend cpu] [--json FILE] [--filter REGEX] [--min-time SECONDS] [--gpu-shapes] [--reference NAME]
           KernelVL.Perf check [--backend cpu] [--filter REGEX] [--seeds N]
           KernelVL.Perf baselines [--json FILE]
           KernelVL.Perf gemm-bf16 [--json FILE] [--shapes MxNxK[,MxNxK...]]
           KernelVL.Perf topk-f16 [--json FILE] [--n 1000000] [--q 1024] [--d 768] [--k 10] [--suite]
           KernelVL.Perf infonce-phases [--json FILE] [--n 4096] [--d 768] [--tau 0.05]
      infonce-phases  the cuda backend's InfoNCE version 2 step by step (S GEMM, statistics pass, combine, G pass,
                   gradient GEMMs), each timed alone: GB/s for the passes over [n, n], TFLOP/s for the GEMMs
           KernelVL.Perf search [--backend cpu] [--json FILE] [--n 100000]
      search       index search throughput: top-10 for 1, 32, 1024 queries over a random N x 768 index, f16 and f32
           KernelVL.Perf targets DIR [--md FILE] [--json FILE]
      targets      issue 4's GPU targets as ratios within one run, from the result files of perf/gpu/run-v2.sh's
                   timings group in DIR (no GPU needed): writes DIR/targets.md and DIR/targets.json
           KernelVL.Perf e2e [--backend NAME]... [--config base|small|tiny] [--json FILE] [--min-time SECONDS]
      e2e          model throughput with random weights: decomposed images/s and texts/s, cross-encoder pairs/s
                   (base = ViLT-B/32 size; every fast backend present unless --backend is given)
      ops          check, then time, every op of the parity registry at the perf shapes
      gemm-bf16    gemm.cu version 2 (bf16 operands in memory; and behind the f32 MatMul) and version 1 at the GEMM
                   targets' shapes, checked first
      baselines    time cuBLAS sgemm (f32 and tensor-op math) on the CUDA card at the GEMM targets' shapes
      topk-f16     the cuda backend's top-k over an f16 corpus (default 1M x 768, 1024 queries, k 10), kernel versions 1
                   and 2: checked, then timed; --suite: version 2 on the cases that stress it, every query checked
      check        run the parity registry's test shapes against the reference (the parity tests, without a test runner:
                   for machines that have the .NET runtime but no SDK); --seeds N: each case N times with fresh
                   inputs, and a line per case whose worst error came within half its budget (a flaky budget shows)
      --backend    backend to time (default: cpu; known: reference, cpu, ilgpu-cpu, ilgpu-cuda; ilgpu = the best ILGPU
                   accelerator present: CUDA, else ILGPU's CPU accelerator)
      --json FILE  also write the results as JSON (written to FILE.tmp, then renamed)
      --filter RE  only ops whose "op shape" matches the regular expression
      --min-time   seconds of timed calls per op (default 0.3); the median call is reported
      --gpu-shapes also the issue's GPU targets (GEMM 4096^3, attention T 512/1024, InfoNCE 4096, top-k 65536 x 768)
      --reference  backend the results are checked against (default: reference, the f64 scalar one; cpu for the
                   GPU shapes, which the scalar reference takes minutes over)
    """;

if (args.Length == 0 || args.Any(a => a is "-h" or "--help")) { Console.WriteLine(usage); return args.Length == 0 ? 2 : 0; }   // `perf ops --help` too
if (args[0] == "search")
{
    try { return SearchBench.Run(args); }
    catch (Exception e) when (e is ArgumentException or FormatException or KernelVL.BadInputException) { Console.Error.WriteLine($"perf: bad input: {e.Message}"); return 2; }
}
if (args[0] == "infonce-phases")
{
    if (BackendFactory.Unavailable("cuda") is { } whyNotCuda) { Console.Error.WriteLine($"perf: bad input: infonce-phases needs the cuda backend: {whyNotCuda}"); return 2; }
    try { return InfoNcePhasesBench.Run(args); }
    catch (Exception e) when (e is ArgumentException or FormatException or KernelVL.BadInputException) { Console.Error.WriteLine($"perf: bad input: {e.Message}"); return 2; }
}
if (args[0] == "targets")
{
    try { return Targets.Run(args); }
    catch (Exception e) when (e is ArgumentException or KernelVL.BadInputException) { Console.Error.WriteLine($"perf: bad input: {e.Message}"); return 2; }
}
if (args[0] == "e2e")
{
    try { return E2e.Run(args); }
    catch (Exception e) when (e is ArgumentException or FormatException or KernelVL.BadInputException) { Console.Error.WriteLine($"perf: bad input: {e.Message}"); return 2; }
}
if (args[0] is not ("ops" or "check" or "baselines" or "topk-f16" or "gemm-bf16")) { Console.Error.WriteLine($"perf: bad input: unknown command '{args[0]}'\n{usage}"); return 2; }
int f16N = 1_000_000, f16Q = 1024, f16D = 768, f16K = 10;
(int M, int N, int K)[]? gemmShapes = null;
string backendName = "cpu", referenceName = "reference"; bool gpuShapes = false, topkSuite = false; string? jsonPath = null; Regex? filter = null; double minTime = 0.3; int seeds = 1;
for (int i = 1; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    try
    {
        switch (args[i])
        {
            case "--backend": backendName = Next(); break;
            case "--json": jsonPath = Next(); break;
            case "--gpu-shapes": gpuShapes = true; break;
            case "--suite": topkSuite = true; break;
            case "--shapes": gemmShapes = GemmBf16Bench.ParseShapes(Next()); break;
            case "--n": f16N = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
            case "--q": f16Q = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
            case "--d": f16D = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
            case "--k": f16K = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
            case "--reference": referenceName = Next(); break;
            case "--seeds": seeds = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); if (seeds < 1) throw new ArgumentException("--seeds must be at least 1"); break;
            case "--filter": filter = new Regex(Next(), RegexOptions.IgnoreCase); break;
            case "--min-time": minTime = double.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
            default: throw new ArgumentException($"unknown option '{args[i]}'");
        }
    }
    catch (Exception e) when (e is ArgumentException or FormatException)
    {
        Console.Error.WriteLine($"perf: bad input: {e.Message}");
        return 2;
    }
}
if (BackendFactory.Unavailable(backendName) is { } why) { Console.Error.WriteLine($"perf: bad input: {why}"); return 2; }
if (BackendFactory.Unavailable(referenceName) is { } whyRef) { Console.Error.WriteLine($"perf: bad input: reference: {whyRef}"); return 2; }

if (args[0] == "check") return CheckAll(backendName, filter, seeds);
if (args[0] == "baselines")
{
    if (BackendFactory.Unavailable("cuda") is { } whyNot) { Console.Error.WriteLine($"perf: bad input: baselines need the cuda backend: {whyNot}"); return 2; }
    return CublasBaselines.Run(jsonPath);
}
if (args[0] == "gemm-bf16")
{
    if (BackendFactory.Unavailable("cuda") is { } whyNot) { Console.Error.WriteLine($"perf: bad input: gemm-bf16 needs the cuda backend: {whyNot}"); return 2; }
    return GemmBf16Bench.Run(jsonPath, gemmShapes);
}
if (args[0] == "topk-f16")
{
    if (BackendFactory.Unavailable("cuda") is { } whyNot) { Console.Error.WriteLine($"perf: bad input: topk-f16 needs the cuda backend: {whyNot}"); return 2; }
    return topkSuite ? TopKF16Bench.Suite() : TopKF16Bench.Run(f16N, f16Q, f16D, f16K, checkQueries: 4, jsonPath);
}

if (BackendFactory.Resolve(backendName) != backendName) Console.Error.WriteLine($"backend {backendName} is {BackendFactory.Resolve(backendName)} here");
// The host's peaks, for a host backend only: a GPU backend's rows never use them (its card's peaks are not measured
// here), and they take seconds a call.
bool hostBackend = Peaks.ForBackend(BackendFactory.Resolve(backendName));
double fma = double.NaN, copy = double.NaN;
var copySamples = new List<double>();
if (hostBackend)
{
    Console.Error.WriteLine("measuring peaks (FMA loop on all cores, 256 MiB copy) ...");
    // The copy peak of this (virtualised, shared) machine drifts by tens of percent within minutes: it is sampled
    // before and after the ops, and the median of all samples is the reference for the memory-bound ratios.
    fma = Peaks.FmaGflops();
    copySamples = Peaks.CopyGbpsSamples();
    copy = Peaks.Median(copySamples);
    Console.Error.WriteLine($"peaks: fma {fma:F0} GFLOP/s, copy {copy:F1} GB/s");
}

using var backend = BackendFactory.Create(backendName);
using var reference = BackendFactory.Create(referenceName);
if (backend is KernelVL.Backends.Cuda.CudaBackend cb)
{
    foreach (var s in cb.KernelSources) Console.Error.WriteLine($"kernel {s}");
    foreach (var s in cb.VersionAvailability) Console.Error.WriteLine($"kernel version {s}");
}

// Numbers in output and files never depend on the user's locale (decimal commas would break tables and JSON readers).
System.Globalization.CultureInfo.DefaultThreadCurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
var cases = OpRegistry.PerfCases().Concat(gpuShapes ? OpRegistry.GpuPerfCases() : []).Where(c => filter is null || filter.IsMatch(c.ToString())).ToArray();
var results = new List<Dictionary<string, object?>>();
int failures = 0;
foreach (var c in cases)
{
    double medianMs = double.NaN;
    string timing = "host clock around a synchronisation, one call at a time";
    var check = OpCheck.Run(c, backend, reference, Random.Shared.Next(), (ctx, r) =>
    {
        if (!r.Ok || ctx.Timed is null) return;
        var op = ctx.Timed;
        if (backend is KernelVL.Backends.Cuda.CudaBackend cuda)
        {
            // Device time from CUDA events, the calls queued behind a busy wait (CudaBackend.MedianMs).
            medianMs = cuda.MedianMs(op, warmup: 5, reps: 50);
            timing = cuda.LastTiming;
            return;
        }
        // Warm-up until the JIT's tiering has promoted the hot methods (30 calls + a delay): 0.5 s and 3 calls, or 60 calls.
        var warm = Stopwatch.StartNew();
        for (int n = 0; (warm.Elapsed.TotalSeconds < 0.5 || n < 3) && n < 60; n++) { op(); backend.Synchronize(); }
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while ((total.Elapsed.TotalSeconds < minTime || times.Count < 5) && times.Count < 500)
        {
            var sw = Stopwatch.StartNew();
            op();
            backend.Synchronize();
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        medianMs = Peaks.Median(times);
    });
    if (!check.Ok) failures++;
    double secs = medianMs / 1e3;
    double gflops = c.Flops > 0 ? c.Flops / secs / 1e9 : 0, gbps = c.Bytes / secs / 1e9;
    bool computeBound = c.Flops / Math.Max(1, c.Bytes) > 10;
    double fraction = !hostBackend ? double.NaN : computeBound ? gflops / fma : gbps / copy;
    results.Add(new()
    {
        ["op"] = c.Op, ["backend"] = backend.Name, ["shape"] = c.Shape,
        ["median_ms"] = R(medianMs), ["timing"] = double.IsFinite(medianMs) ? timing : null, ["gflops"] = R(gflops), ["gbps"] = R(gbps),
        ["bound"] = computeBound ? "compute" : "memory", ["fraction_of_peak"] = R(fraction),
        ["reference"] = reference.Name, ["max_rel_error"] = double.IsFinite(check.MaxRelError) ? check.MaxRelError : null, ["ok"] = check.Ok, ["problem"] = check.Problem,
    });
    Console.Error.WriteLine($"  {c,-48} {medianMs,9:F3} ms  {(check.Ok ? "ok" : "FAIL: " + check.Problem)}");
}

if (hostBackend)
{
    copySamples.AddRange(Peaks.CopyGbpsSamples());
    copy = Peaks.Median(copySamples);
    Console.Error.WriteLine($"copy peak: median {copy:F1} GB/s of {copySamples.Count} samples before and after (range {copySamples.Min():F1} to {copySamples.Max():F1})");
    foreach (var r in results)
        if ((string)r["bound"]! == "memory" && r["gbps"] is double gb && r["fraction_of_peak"] is not null) r["fraction_of_peak"] = R(gb / copy);
}

Console.WriteLine($"machine: {SystemInfo.CpuName}, {SystemInfo.Cores} cores{(backend is KernelVL.Backends.Ilgpu.IlgpuBackend ib2 ? $", accelerator {ib2.Accelerator.Name}" : "")}; backend {backend.Name}; "
                  + (hostBackend ? $"host peaks: FMA {fma:F0} GFLOP/s, copy {copy:F1} GB/s (median of {copySamples.Count})"
                                 : "host peaks not measured and \"of peak\" left empty for a GPU backend (its card's peaks are not measured here)"));
Console.WriteLine();
Console.WriteLine("| op | shape | median ms | GFLOP/s | GB/s | of peak | max rel err | ok |");
Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---|");
foreach (var r in results)
    Console.WriteLine($"| {r["op"]} | {r["shape"]} | {r["median_ms"]:F3} | {r["gflops"]:F1} | {r["gbps"]:F1} | {r["fraction_of_peak"]:P0} {((string)r["bound"]! == "compute" ? "fma" : "copy")} | {r["max_rel_error"]:E1} | {((bool)r["ok"]! ? "ok" : "FAIL: " + r["problem"])} |");
Console.WriteLine();

// The CPU targets of the foundation issue, as ratios measured in this run (for the cpu backend only: a GPU
// backend's numbers relate to the card, whose peaks this harness does not measure yet).
var targets = new List<Dictionary<string, object?>>();
Dictionary<string, object?>? Find(string op, string shape) => results.FirstOrDefault(r => (string)r["op"]! == op && (string)r["shape"]! == shape);
void Target(string name, double? value, double goal)
{
    if (value is null || double.IsNaN(value.Value)) return;
    targets.Add(new() { ["target"] = name, ["value"] = R(value.Value), ["goal"] = goal, ["met"] = value >= goal });
    Console.WriteLine($"target: {name} = {value:F2} (goal >= {goal:F2}) {(value >= goal ? "met" : "NOT MET")}");
}
var gemm = Find("matmul", "1024x768x768");
var attn = Find("attention", "B8 H12 Tq256 Tk256 D64");
double Val(Dictionary<string, object?> r, string key) => r[key] is double d ? d : double.NaN;
if (backend.Name != "cpu") { gemm = null; attn = null; }
if (gemm is not null) Target("fp32 GEMM 1024x768x768 / FMA peak", Val(gemm, "gflops") / fma, 0.75);
if (gemm is not null && attn is not null) Target("attention fwd B8 H12 T256 D64 / GEMM rate", Val(attn, "gflops") / Val(gemm, "gflops"), 0.5);
foreach (var (op, shape) in new[] { ("layernorm", "65536x768"), ("softmax", "65536x1024") })
    if (backend.Name == "cpu" && Find(op, shape) is { } r) Target($"{op} {shape} / copy bandwidth", Val(r, "gbps") / copy, 0.5);

if (jsonPath is not null)
{
    var doc = new Dictionary<string, object?>
    {
        ["machine"] = new Dictionary<string, object?>
        {
            ["cpu"] = SystemInfo.CpuName, ["cores"] = SystemInfo.Cores, ["gpu"] = backend is KernelVL.Backends.Ilgpu.IlgpuBackend ib && ib.Accelerator.AcceleratorType != ILGPU.Runtime.AcceleratorType.CPU ? ib.Accelerator.Name : null,
            ["runtime"] = SystemInfo.Runtime,
            // The kernel versions that ran (what `targets` labels rows by: a version asked for but unavailable falls back).
            ["cuda_versions"] = backend is KernelVL.Backends.Cuda.CudaBackend cv ? CudaVersions.Effective(cv) : null,
        },
        ["peaks"] = !hostBackend ? null : new Dictionary<string, object?>
        {
            ["fma_gflops"] = R(fma), ["copy_gbps"] = R(copy),
            ["copy_gbps_samples"] = copySamples.Select(v => Math.Round(v, 1)).ToArray(),
        },
        ["kernel_sources"] = backend is KernelVL.Backends.Cuda.CudaBackend kc ? kc.KernelSources.Select(k => k.ToString()).ToArray() : null,
        ["results"] = results,
        ["targets"] = targets,
    };
    string tmp = jsonPath + ".tmp";
    File.WriteAllText(tmp, JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    File.Move(tmp, jsonPath, overwrite: true);
    Console.Error.WriteLine($"wrote {jsonPath}");
}
if (failures > 0) Console.Error.WriteLine($"{failures} op(s) failed their check against the reference and were not timed");
return failures > 0 ? 1 : 0;

static int CheckAll(string backendName, Regex? filter, int seeds)
{
    using var backend = BackendFactory.Create(backendName);
    if (backend is KernelVL.Backends.Cuda.CudaBackend cb)
    {
        foreach (var k in cb.KernelSources) Console.WriteLine($"kernel {k}");
        foreach (var v in cb.VersionAvailability) Console.WriteLine($"kernel version {v}");
    }
    int passed = 0, failed = 0;
    var cases = OpRegistry.TestCases().Where(c => filter is null || filter.IsMatch(c.ToString())).ToList();
    var sinceReport = System.Diagnostics.Stopwatch.StartNew();
    for (int ci = 0; ci < cases.Count; ci++)
    {
        var c = cases[ci];
        int caseFailed = 0;
        double worst = 0, budget = 0;
        OpCheckResult? firstFailure = null;
        for (int s = 0; s < seeds; s++)
        {
            using var reference = new ReferenceBackend();
            var r = OpCheck.Run(c, backend, reference, Random.Shared.Next());
            budget = r.Budget;
            if (double.IsFinite(r.MaxRelError)) worst = Math.Max(worst, r.MaxRelError);
            if (r.Ok) passed++;
            else { failed++; caseFailed++; firstFailure ??= r; if (seeds == 1) Console.WriteLine(r); }
        }
        if (seeds > 1 && (caseFailed > 0 || worst > 0.5 * budget))
            Console.WriteLine($"{c} on {backendName}: {caseFailed} of {seeds} failed, worst rel error {worst:E2} (budget {budget:E1})" +
                (firstFailure is null ? "" : $"; first: {firstFailure.Problem}"));
        if (seeds > 1 && sinceReport.Elapsed.TotalSeconds >= 5) { Console.Error.WriteLine($"checked {ci + 1} of {cases.Count} cases x {seeds} seeds"); sinceReport.Restart(); }
    }
    Console.WriteLine($"{passed} passed, {failed} failed");
    return failed > 0 ? 1 : 0;
}

static double? R(double x) => double.IsFinite(x) ? Math.Round(x, 6) : null;   // (6 places: a 5 us kernel's median to 0.02%)
