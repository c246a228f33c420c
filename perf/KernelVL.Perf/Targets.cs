using System.Globalization;
using System.Text;
using System.Text.Json;
using KernelVL.IO;

namespace KernelVL.Perf;

/// <summary>
/// `targets DIR`: issue 4's targets as ratios within one run, read from the result files that
/// `ONLY=timings bash perf/gpu/run-v2.sh` leaves in DIR (the unpacked v2-timings folder). Needs no GPU: it also runs on
/// the build machine over results brought back. Writes DIR/targets.md (the table to commit under perf/results/, the card
/// named) and DIR/targets.json, each to a temporary name first. The rows are the issue's fixed cases, whatever the files
/// hold: a case missing from them, or a step that was not timed, is a "not measured" row that says why; a file measured
/// at another shape gives rows marked "not the target's shape", judged by nothing, their values in the note.
/// <list type="bullet">
/// <item>GEMM >= 0.70 of cuBLAS bf16 (torch.matmul) at 4096^3 and the model's shapes (<see cref="GemmCases"/>, the
/// shapes gemm-bf16 runs by default): the fastest of our kernels on bf16 operands that passed its check; each version's
/// ratio in the note. Other shapes in gemm-bf16.json (a rehearsal's --shapes) are rows not at the target's shape.</item>
/// <item>attention forward >= 0.50 of SDPA at T 256, 512, 1024 (D 64), without the key mask: the fastest passing version
/// of ops-attention-v3.json, ops-v2.json, ops-v1.json, named by the version that ran (the file's machine.cuda_versions,
/// where it has them; else the file's name). The masked rows are supplementary, not counted: SDPA with a boolean mask
/// cannot take its flash kernel, and the two sides' masks differ.</item>
/// <item>top-k over 1M x 768 f16, 1024 queries, k 10 (<see cref="TopKCase"/>), within 2x of max(memory floor, tensor-core
/// floor): the corpus (and queries) once at the copy rate of torch's device-to-device copy; 2 Q N D FLOPs at the card's
/// dense bf16/f16 tensor-core peak (torch-baselines.json's machine.tc_peak_tflops, else <see cref="SpecPeak"/> by the
/// card's name, else not measured). The floor at the best bf16 matmul rate torch reached at 4096^3 or larger is a note:
/// an achieved rate is not a floor. A "norm bound given" run counts only where its version's own run passed.</item>
/// <item>the contrastive loss over the 4096 x 4096 matrix bandwidth-bound (<see cref="InfoNceCase"/>): each pass over S of
/// infonce-phases.json (<see cref="InfoNcePasses"/>) >= 0.70 of the copy rate. Its baseline ms is the time a copy at
/// torch's copy rate takes over the pass's bytes, so the ratio is the pass's GB/s over the copy's. The file's loss check
/// must have passed, and its gradient check (gradient_ok) where it has one; fwd + bwd against torch f32 as a note.</item>
/// </list>
/// torch-baselines.json, every ratio's denominator, is required. torch-baselines-after.json (optional, same format, a
/// subset timed after our kernels): where both have an (op, shape), the faster is the baseline (conservative for us) and
/// the note gives both times. Rows of either side may say how they were timed ("timing": "queued" or "per-call"); where
/// ours and the baseline's differ, the note says so. A file that is not the JSON its bench writes is a
/// <see cref="BadInputException"/> naming it.
/// </summary>
internal static class Targets
{
    internal const double GemmGoal = 0.70, AttentionGoal = 0.50, TopKGoal = 2.0, InfoNceGoal = 0.70;
    internal static readonly int[] AttentionT = [256, 512, 1024];
    internal static readonly string[] GemmCases = [.. CublasBaselines.Shapes.Select(s => $"{s.M}x{s.N}x{s.K}")];
    internal const string TopKCase = "Q1024 N1000000 D768 k10", InfoNceCase = "N4096 D768";

    /// <summary>The InfoNCE passes over S: each case's name and its step in infonce-phases.json, as CudaBackend.InfoNcePhases names it.</summary>
    internal static readonly (string Name, string Step)[] InfoNcePasses =
    [
        ("statistics pass", "diagonal + row/column statistics (one read of S)"),
        ("G pass", "G = dloss/dS over S in place (one read, one write)"),
    ];

    private static readonly (string File, int Version)[] AttentionFiles = [("ops-attention-v3.json", 3), ("ops-v2.json", 2), ("ops-v1.json", 1)];

    internal enum Status { Met, NotMet, NotMeasured, NotTargetShape, Supplementary, Suspect }

    /// <summary>
    /// One row. Value: baseline ms / ours (for top-k, ours / floor); Met: null unless the row is judged (not measured,
    /// not at the target's shape, supplementary).
    /// </summary>
    internal sealed record Row(string Target, string Case, string? Ours, double? OursMs, string? Baseline, double? BaselineMs, double? Value, string Goal, Status Status, string Note)
    {
        public bool? Met => Status switch { Status.Met => true, Status.NotMet => false, _ => null };

        /// <summary>The JSON's status: met, not met, or why the row is not judged.</summary>
        public string StatusText => Status switch
        {
            Status.Met => "met", Status.NotMet => "not met", Status.NotMeasured => "not measured",
            Status.NotTargetShape => "not the target's shape", Status.Suspect => "suspect: faster than the hardware allows", _ => "supplementary",
        };

        /// <summary>The table's met column: yes, no, or why the row is not judged.</summary>
        public string Verdict => Status switch { Status.Met => "yes", Status.NotMet => "no", _ => StatusText };
    }

    public static int Run(string[] args)
    {
        string? dir = null, md = null, json = null;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--md": md = Next(); break;
                case "--json": json = Next(); break;
                default:
                    if (args[i].StartsWith('-') || dir is not null) throw new ArgumentException($"unknown option {args[i]}");
                    dir = args[i];
                    break;
            }
        }
        if (dir is null) throw new ArgumentException("targets needs the folder of a timings run (perf/gpu/run-v2.sh's v2-timings)");
        if (!Directory.Exists(dir)) throw new BadInputException($"{dir}: no such folder");
        var (header, rows) = Compute(dir);
        string table = Markdown(header, rows);
        Console.Write(table);
        AtomicFile.WriteAllText(md ?? Path.Combine(dir, "targets.md"), table);
        AtomicFile.WriteAllText(json ?? Path.Combine(dir, "targets.json"), JsonSerializer.Serialize(new
        {
            card = header,
            targets = rows.Select(r => new
            {
                target = r.Target, @case = r.Case, ours = r.Ours, ours_ms = r.OursMs, baseline = r.Baseline, baseline_ms = r.BaselineMs,
                value = r.Value, goal = r.Goal, met = r.Met, status = r.StatusText, note = r.Note,
            }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        Console.Error.WriteLine(Headline(rows));
        return 0;
    }

    /// <summary>"targets: M of N measured rows met, K not measured", and the rows not counted.</summary>
    internal static string Headline(IReadOnlyList<Row> rows)
    {
        int measured = rows.Count(r => r.Met is not null), met = rows.Count(r => r.Met == true);
        int notMeasured = rows.Count(r => r.Status == Status.NotMeasured), supplementary = rows.Count(r => r.Status == Status.Supplementary);
        int offShape = rows.Count(r => r.Status == Status.NotTargetShape), suspect = rows.Count(r => r.Status == Status.Suspect);
        var uncounted = new[] { (supplementary, "supplementary"), (offShape, "not the target's shape"), (suspect, "suspect: faster than the hardware allows") }.Where(x => x.Item1 > 0).Select(x => $"{x.Item1} {x.Item2}").ToList();
        return $"targets: {met} of {measured} measured rows met, {notMeasured} not measured{(uncounted.Count > 0 ? $" (not counted: {string.Join(", ", uncounted)})" : "")}";
    }

    /// <summary>The card line and every target row from the files in <paramref name="dir"/>.</summary>
    internal static (string Header, List<Row> Rows) Compute(string dir)
    {
        string torchFile = Path.Combine(dir, "torch-baselines.json");
        using var torch = Load(dir, "torch-baselines.json") ?? throw new BadInputException($"{torchFile}: missing (the PyTorch baselines, every ratio's denominator)");
        var baselines = TorchRows(torch, torchFile);
        var machine = Object(torch.RootElement, "machine", torchFile);
        string card = OptionalText(machine, "gpu") ?? "unknown card";
        // The tensor cores' dense peak: the card's, from the baselines' machine, else from the spec table by name.
        var tcPeak = machine.TryGetProperty("tc_peak_tflops", out var tp) && tp.ValueKind == JsonValueKind.Number && tp.GetDouble() > 0
            ? (Tflops: tp.GetDouble(), Source: OptionalText(machine, "tc_peak_source") ?? "torch-baselines.json")
            : SpecPeak(card);
        var run = new Context(dir, baselines, card, tcPeak);
        using (var after = Load(dir, "torch-baselines-after.json"))
        {
            // The same baselines timed again after our kernels (optional, a subset): the faster of the two is the
            // baseline (conservative for us), both times in its note.
            if (after is not null)
            {
                string afterFile = Path.Combine(dir, "torch-baselines-after.json");
                run.Saw(Object(after.RootElement, "machine", afterFile));
                foreach (var (key, a) in TorchRows(after, afterFile))
                    baselines[key] = baselines.TryGetValue(key, out var b)
                        ? (a.Ms < b.Ms ? a : b) with { Spread = $"torch before {F(b.Ms, 4)} ms, after {F(a.Ms, 4)} ms" }
                        : a with { Spread = "torch timed after ours only" };
            }
        }
        string header = $"{card}{(machine.TryGetProperty("sm_count", out var sm) && sm.ValueKind == JsonValueKind.Number ? $" ({sm.GetInt32()} SMs)" : "")}"
                        + $", torch {OptionalText(machine, "torch") ?? "?"}, CUDA {OptionalText(machine, "cuda") ?? "?"}";
        var rows = new List<Row>();
        Gemm(run, rows);
        Attention(run, rows);
        TopK(run, rows);
        InfoNce(run, rows);
        if (run.Cards.Count > 1) header += $" (the files name more than one card: {string.Join(", ", run.Cards)}: not one run?)";
        return (header, rows);
    }

    /// <summary>What every target's rows read: the folder, torch's baselines, the tensor-core peak, and the cards the files name.</summary>
    private sealed record Context(string Dir, Dictionary<(string Op, string Shape), Baseline> Baselines, string Card, (double Tflops, string Source)? TcPeak)
    {
        public SortedSet<string> Cards { get; } = new(StringComparer.Ordinal) { Card };
        public Baseline? Copy => Baselines.GetValueOrDefault(("copy_d2d", "256M f32"));

        /// <summary>The best rate torch reached (a note only): its bf16 matmul at 4096^3 or larger (the smaller shapes do not fill the card).</summary>
        public double? Bf16Tflops => Baselines.Where(b => b.Key.Op == "matmul_bf16" && Dims(b.Key.Shape) is { } d && d.All(x => x >= 4096) && b.Value.Tflops is > 0)
                                              .Select(b => b.Value.Tflops).Max();

        /// <summary>Notes the card a file (or its machine object) names.</summary>
        public void Saw(JsonElement e)
        {
            if (OptionalText(e, "gpu") is { } g) Cards.Add(g);
        }
    }

    /// <summary>One of our timed runs that passed its check: what to call it, its median, how it was timed.</summary>
    private sealed record Timed(string Label, double Ms, string? Timing);

    /// <summary>GEMM: the fastest passing kernel on bf16 operands at each of <see cref="GemmCases"/>, against torch.matmul bf16 (cuBLAS).</summary>
    private static void Gemm(Context run, List<Row> rows)
    {
        string target = $"GEMM bf16 >= {GemmGoal:0.00} of cuBLAS", path = Path.Combine(run.Dir, "gemm-bf16.json");
        using var gemm = Load(run.Dir, "gemm-bf16.json");
        if (gemm is null)
        {
            foreach (string c in GemmCases) rows.Add(NotMeasured(target, c, GemmGoal, "gemm-bf16.json missing"));
            return;
        }
        run.Saw(gemm.RootElement);
        var shapes = new List<string>();   // in the file's order
        var byShape = new Dictionary<string, List<Timed>>(StringComparer.Ordinal);
        foreach (var r in Array(gemm.RootElement, "rows", path).EnumerateArray())
        {
            string kernel = Text(r, "kernel", path), shape = Text(r, "shape", path);
            if (!byShape.TryGetValue(shape, out var runs)) { shapes.Add(shape); byShape[shape] = runs = []; }
            const string suffix = " bf16 operands";
            if (kernel.EndsWith(suffix, StringComparison.Ordinal) && Flag(r, "ok", path) && Number(r, "median_ms", path) is double ms and > 0)
                runs.Add(new(kernel[..^suffix.Length], ms, Timing(r, gemm.RootElement)));
        }
        Row Fastest(string shape) => byShape[shape].Count == 0 ? NotMeasured(target, shape, GemmGoal, "no kernel on bf16 operands passed its check")
            : Plausible(Versus(target, shape, byShape[shape], run.Baselines.GetValueOrDefault(("matmul_bf16", shape)), "torch.matmul bf16", GemmGoal),
                        Dims(shape) is { } g ? PeakMs(run, 2.0 * g[0] * g[1] * g[2]) : null, "ours above the tensor cores' dense peak");
        foreach (string c in GemmCases)
            rows.Add(byShape.ContainsKey(c) ? Fastest(c) : NotMeasured(target, c, GemmGoal, "not in gemm-bf16.json (a run cut short?)"));
        foreach (string shape in shapes.Where(s => !GemmCases.Contains(s)))
            rows.Add(OffShape(Fastest(shape), shape, $"not one of the target's shapes ({string.Join(", ", GemmCases)})"));
    }

    private const string MaskNote = "supplementary, not the target: SDPA with a boolean mask cannot take its flash kernel (it runs the "
                                    + "memory-efficient one), and the two sides' key masks differ";

    /// <summary>Attention forward, D 64: the fastest passing version at each T against SDPA bf16; the masked rows supplementary.</summary>
    private static void Attention(Context run, List<Row> rows)
    {
        var runs = new List<(string Shape, Timed Run)>();
        var files = new List<string>();
        foreach (var (file, asked) in AttentionFiles)
        {
            using var ops = Load(run.Dir, file);
            if (ops is null) continue;
            files.Add(file);
            string path = Path.Combine(run.Dir, file), label = $"v{asked}";
            if (ops.RootElement.TryGetProperty("machine", out var m) && m.ValueKind == JsonValueKind.Object)
            {
                run.Saw(m);
                // The version that ran: a version asked for but unavailable falls back (ops --backend cuda writes them).
                if (m.TryGetProperty("cuda_versions", out var cv) && cv.ValueKind == JsonValueKind.Object
                    && cv.TryGetProperty("attention", out var ran) && ran.ValueKind == JsonValueKind.Number && ran.TryGetInt32(out int version) && version != asked)
                    label = $"v{version} ({file}: v{asked} was asked for)";
            }
            foreach (var r in Array(ops.RootElement, "results", path).EnumerateArray())
                if (Text(r, "op", path) == "attention" && Flag(r, "ok", path) && Number(r, "median_ms", path) is double ms and > 0)
                    runs.Add((Text(r, "shape", path), new(label, ms, Timing(r, ops.RootElement))));
        }
        foreach (int t in AttentionT)
            foreach (bool mask in new[] { false, true })
            {
                string shape = $"B8 H12 Tq{t} Tk{t} D64{(mask ? " mask" : "")}", target = $"attention fwd >= {AttentionGoal:0.00} of SDPA";
                var these = runs.Where(a => a.Shape == shape).Select(a => a.Run).ToList();
                var row = these.Count > 0
                    ? Plausible(Versus(target, shape, these, run.Baselines.GetValueOrDefault((mask ? "sdpa_bf16_mask" : "sdpa_bf16", $"B8 H12 T{t} D64")), mask ? "SDPA bf16, mask" : "SDPA bf16", AttentionGoal),
                                PeakMs(run, 4.0 * 8 * 12 * t * t * 64), "ours above the tensor cores' dense peak")
                    : NotMeasured(target, shape, AttentionGoal, files.Count == 0 ? $"{string.Join(", ", AttentionFiles.Select(f => f.File))} missing" : $"no passing row in {string.Join(", ", files)}");
                rows.Add(!mask ? row : row with { Goal = "(supplementary)", Status = Status.Supplementary, Note = Join(row.Status == Status.NotMeasured ? "not measured" : null, MaskNote, row.Note) });
            }
    }

    /// <summary>Top-k over the f16 corpus: the fastest passing version against the larger of its two floors.</summary>
    private static void TopK(Context run, List<Row> rows)
    {
        string target = $"top-k f16 within {TopKGoal:0}x of its floor", path = Path.Combine(run.Dir, "topk-f16.json");
        using var topk = Load(run.Dir, "topk-f16.json");
        if (topk is null) { rows.Add(NotMeasured(target, TopKCase, TopKGoal, "topk-f16.json missing", lower: true)); return; }
        run.Saw(topk.RootElement);
        string shape = Text(topk.RootElement, "shape", path);
        var all = new List<(double? Version, string Scorer, bool Given, string Label, bool Ok, double? Ms, double Bytes, double Flops, string? Timing)>();
        foreach (var r in Array(topk.RootElement, "versions", path).EnumerateArray())
        {
            string scorer = Text(r, "scorer", path);   // (it names the version: "v3 wgmma + TMA, clusters of 4")
            bool given = OptionalText(r, "norm_bound") == "given";
            all.Add((Number(r, "version", path), scorer, given, $"{scorer}{(given ? ", norm bound given" : "")}", Flag(r, "ok", path), Number(r, "median_ms", path),
                     Number(r, "bytes", path) ?? 0, Number(r, "flops", path) ?? 0, Timing(r, topk.RootElement)));
        }
        // A run given the norm bound counts only where its version's own run passed (topk-f16 writes it ok only then now;
        // older files did not).
        var ownPassed = all.Where(r => !r.Given && r.Ok).Select(r => (r.Version, r.Scorer)).ToHashSet();
        var runs = all.Where(r => r.Ok && r.Ms is > 0 && (!r.Given || ownPassed.Contains((r.Version, r.Scorer)))).ToList();
        string leftOut = Join([.. all.Where(r => r.Given && r.Ok && !ownPassed.Contains((r.Version, r.Scorer)))
                                    .Select(r => $"{r.Label}: left out (its run without the bound failed its check)")]);
        Row row;
        if (runs.Count == 0) row = NotMeasured(target, TopKCase, TopKGoal, Join("no version passed its check", leftOut), lower: true);
        else if (run.Copy is not { Gbps: { } copyGbps } copy) row = NotMeasured(target, TopKCase, TopKGoal, "torch-baselines.json has no copy_d2d: no memory floor", lower: true);
        else if (run.TcPeak is not { } peak)
            row = NotMeasured(target, TopKCase, TopKGoal, $"no tensor-core peak: torch-baselines.json's machine has no tc_peak_tflops and the card '{run.Card}' is not in the spec table", lower: true);
        else
        {
            var best = runs.MinBy(x => x.Ms!.Value);
            double ms = best.Ms!.Value, memMs = best.Bytes / (copyGbps * 1e9) * 1e3, tcMs = best.Flops / (peak.Tflops * 1e12) * 1e3, floor = Math.Max(memMs, tcMs);
            string? achieved = run.Bf16Tflops is { } rate && Math.Max(memMs, best.Flops / (rate * 1e12) * 1e3) is var atRate
                ? $"at torch's best bf16 matmul rate ({F(rate, 0)} TFLOP/s) the floor would be {F(atRate, 3)} ms, ours {F(ms / atRate, 2)}x of it (not the target)" : null;
            string note = Join($"floors: memory {F(memMs, 3)} ms ({F(best.Bytes / 1e9, 2)} GB at {F(copyGbps, 0)} GB/s), tensor cores {F(tcMs, 3)} ms "
                               + $"({F(best.Flops / 1e12, 2)} TFLOP at the dense peak {F(peak.Tflops, 1)} TFLOP/s, {peak.Source})",
                               achieved,
                               (run.Baselines.GetValueOrDefault(("topk_search_f16", "Q1024 N1000000 D768 k10")) ?? run.Baselines.GetValueOrDefault(("topk_search_f16", "Q1024 N1M D768 k10")))   // (before 2026-11-29: 2^20 rows)
                                   is { } tk ? $"torch.topk search {F(tk.Ms, 3)} ms" : null,
                               copy.Spread is { } spread ? $"copy_d2d: {spread}" : null,
                               string.Join("; ", runs.Select(x => $"{x.Label} {F(x.Ms!.Value / floor, 2)}x")), leftOut,
                               best.Timing is { } how && TimingKind(how) == "per-call"
                                   ? "ours timed a call at a time (a search reads its certificate back to the host, so calls cannot queue: a host round trip included, in our disfavour)" : null);
            row = Plausible(Judged(target, TopKCase, best.Label, ms, "floor", floor, ms / floor, TopKGoal, lower: true, note), floor, "ours below the floor");
        }
        rows.Add(shape == TopKCase ? row : OffShape(row, TopKCase, $"measured at {shape}, not the target's {TopKCase}"));
    }

    /// <summary>InfoNCE at N 4096: each pass over S against a copy of its bytes at the copy rate; fwd + bwd against torch f32 as a note.</summary>
    private static void InfoNce(Context run, List<Row> rows)
    {
        string target = $"InfoNCE pass over S >= {InfoNceGoal:0.00} of the copy rate", path = Path.Combine(run.Dir, "infonce-phases.json");
        string Case((string Name, string Step) p) => $"{InfoNceCase}: {p.Name}";
        using var nce = Load(run.Dir, "infonce-phases.json");
        var root = nce?.RootElement;
        string? refused = nce is null ? "infonce-phases.json missing"
            : !Flag(root!.Value, "ok", path) ? "the timed run's loss failed its check against the cpu backend"
            : GradientOk(root.Value, path) == false ? "the timed run's gradient failed its check (gradient_ok false)" : null;
        if (refused is not null)
        {
            foreach (var p in InfoNcePasses) rows.Add(NotMeasured(target, Case(p), InfoNceGoal, refused));
            return;
        }
        var file = root!.Value;
        run.Saw(file);
        string? gradient = GradientOk(file, path) is null ? "gradient not checked (infonce-phases.json has no gradient_ok)" : null;
        string shape = $"N{F(Number(file, "n", path) ?? 0, 0)} D{F(Number(file, "d", path) ?? 0, 0)}";
        var steps = Array(file, "steps", path).EnumerateArray()
            .Select(s => (Step: Text(s, "step", path), Ms: Number(s, "median_ms", path) ?? double.NaN, Bytes: Number(s, "bytes", path) ?? 0, Timing: Timing(s, file))).ToList();
        double total = steps.Sum(s => s.Ms);   // NaN when a step was not timed: then no fwd + bwd figure
        string torch = !double.IsFinite(total) ? "a step was not timed: no fwd + bwd figure"
            : run.Baselines.GetValueOrDefault(("infonce_fwd_bwd_f32", shape)) is { } tn
            ? $"fwd + bwd {F(total, 3)} ms vs torch f32 {F(tn.Ms, 3)} ms ({F(tn.Ms / total, 2)}x)" : $"fwd + bwd {F(total, 3)} ms";
        foreach (var p in InfoNcePasses)
        {
            var s = steps.FirstOrDefault(x => x.Step == p.Step);
            Row row;
            if (s.Step is null) row = NotMeasured(target, Case(p), InfoNceGoal, $"no step \"{p.Step}\" in infonce-phases.json (its steps: {string.Join(", ", steps.Select(x => $"\"{x.Step}\""))})");
            else if (!(s.Ms > 0)) row = NotMeasured(target, Case(p), InfoNceGoal, $"\"{p.Step}\" was not timed (median_ms null)");
            else if (run.Copy is not { Gbps: { } copyGbps } copy) row = NotMeasured(target, Case(p), InfoNceGoal, "torch-baselines.json has no copy_d2d");
            else
            {
                // The copy's time over the pass's bytes: baseline ms / ours is the pass's GB/s over the copy's.
                double copyMs = s.Bytes / (copyGbps * 1e9) * 1e3, gbps = s.Bytes / (s.Ms / 1e3) / 1e9;
                row = Plausible(Judged(target, Case(p), $"{F(gbps, 0)} GB/s over {F(s.Bytes / 1e6, 1)} MB", s.Ms, $"copy at {F(copyGbps, 0)} GB/s (torch copy_d2d)", copyMs,
                                       copyMs / s.Ms, InfoNceGoal, lower: false, Join(gradient, torch, copy.Spread is { } spread ? $"copy_d2d: {spread}" : null, TimedApart(s.Timing, copy.Timing))),
                                copyMs / MaxOverCopy, $"ours above {MaxOverCopy:0.0}x the copy rate");
            }
            rows.Add(shape == InfoNceCase ? row : OffShape(row, Case(p), $"measured at {shape}, not the target's {InfoNceCase}"));
        }
    }

    /// <summary>infonce-phases.json's gradient check: true or false, null where the file has none (written before it did).</summary>
    private static bool? GradientOk(JsonElement file, string path) =>
        !file.TryGetProperty("gradient_ok", out var g) || g.ValueKind == JsonValueKind.Null ? null
        : g.ValueKind is JsonValueKind.True or JsonValueKind.False ? g.GetBoolean()
        : throw new BadInputException($"{path}: \"gradient_ok\" is not true/false");

    /// <summary>
    /// A judged row whose time is below what the card can do (<paramref name="minMs"/>: the FLOPs at the tensor cores'
    /// dense peak, top-k's floor, a pass's bytes at <see cref="MaxOverCopy"/> times the copy rate) is suspect, not met: a
    /// kernel that skipped work its check did not see (scratch left by an earlier version, say) would look like that.
    /// </summary>
    private static Row Plausible(Row r, double? minMs, string why) =>
        r.Status is Status.Met or Status.NotMet && r.OursMs is { } ms && minMs is { } min && ms < min
            ? r with { Status = Status.Suspect, Note = Join($"suspect: {why} ({F(ms, 4)} ms against at least {F(min, 4)} ms)", r.Note) }
            : r;

    /// <summary>How far above the measured copy rate a pass may seem before it is suspect (a read-mostly pass may beat a copy a little).</summary>
    internal const double MaxOverCopy = 1.15;

    /// <summary>The time <paramref name="flops"/> take at the card's dense tensor-core peak (ms); null without a peak.</summary>
    private static double? PeakMs(Context run, double flops) => run.TcPeak is { } p ? flops / (p.Tflops * 1e12) * 1e3 : null;

    /// <summary>The fastest run against a torch baseline (baseline ms / ours), every run's ratio in the note; not measured without the baseline.</summary>
    private static Row Versus(string target, string @case, List<Timed> runs, Baseline? b, string baseline, double goal)
    {
        var best = runs.MinBy(r => r.Ms)!;
        if (b is null) return NotMeasured(target, @case, goal, $"no torch baseline ({baseline}) at this shape") with { Ours = best.Label, OursMs = best.Ms };
        return Judged(target, @case, best.Label, best.Ms, baseline, b.Ms, b.Ms / best.Ms, goal, lower: false,
                      Join(string.Join("; ", runs.Select(r => $"{r.Label} {F(b.Ms / r.Ms, 2)}")), b.Spread, TimedApart(best.Timing, b.Timing)));
    }

    /// <summary>A measured row against its goal: value &lt;= goal when lower, else >= goal.</summary>
    private static Row Judged(string target, string @case, string ours, double oursMs, string baseline, double baselineMs, double value, double goal, bool lower, string note) =>
        new(target, @case, ours, oursMs, baseline, baselineMs, value, Goal(goal, lower), (lower ? value <= goal : value >= goal) ? Status.Met : Status.NotMet, note);

    /// <summary>A row measured at another shape than the target's: not judged, its value moved into the note.</summary>
    private static Row OffShape(Row r, string @case, string why) =>
        r with { Case = @case, Value = null, Status = Status.NotTargetShape, Note = Join(why, r.Value is { } v ? $"value there {F(v, 2)}" : null, r.Note) };

    private static string Goal(double goal, bool lower) => lower ? $"<= {goal:0.0}x" : $">= {goal:0.00}";

    internal static string Markdown(string header, IReadOnlyList<Row> rows)
    {
        var sb = new StringBuilder();
        sb.Append("# Issue 4's targets, ratios within one run\n\n");
        sb.Append($"Card: {header}. Ratio = baseline time / ours (above 1: faster than the baseline); for top-k, ours / floor; for InfoNCE, "
                  + "the baseline is a copy of the pass's bytes at torch's copy rate.\n\n");
        sb.Append("| target | case | ours | ours ms | baseline | baseline ms | value | goal | met | note |\n");
        sb.Append("|---|---|---|---:|---|---:|---:|---|---|---|\n");
        foreach (var r in rows)
            sb.Append($"| {r.Target} | {r.Case} | {r.Ours ?? "-"} | {(r.OursMs is { } o ? F(o, 4) : "-")} | {r.Baseline ?? "-"} | {(r.BaselineMs is { } b ? F(b, 4) : "-")} | "
                      + $"{(r.Value is { } v ? F(v, 2) : "-")} | {r.Goal} | {r.Verdict} | {r.Note} |\n");
        return sb.ToString();
    }

    /// <summary>A PyTorch baseline: the faster of its runs before and after ours where both files have it (Spread: both
    /// times), else its one run; Timing: how it was timed ("queued", "per-call") where the file says.</summary>
    private sealed record Baseline(double Ms, double? Tflops, double? Gbps, string? Timing, string? Spread);

    private static Dictionary<(string Op, string Shape), Baseline> TorchRows(JsonDocument doc, string path)
    {
        var rows = new Dictionary<(string Op, string Shape), Baseline>();
        foreach (var r in Array(doc.RootElement, "results", path).EnumerateArray())
            if (Number(r, "median_ms", path) is double ms and > 0)
                rows[(Text(r, "op", path), Text(r, "shape", path))] = new(ms, Number(r, "tflops", path), Number(r, "gbps", path), OptionalText(r, "timing"), null);
        return rows;
    }

    /// <summary>How one of our rows was timed: its own "timing", else its file's; null where neither says.</summary>
    private static string? Timing(JsonElement row, JsonElement file) => OptionalText(row, "timing") ?? OptionalText(file, "timing");

    /// <summary>A note where ours and the baseline were timed differently (both known), else null.</summary>
    private static string? TimedApart(string? ours, string? baseline) =>
        ours is not null && baseline is not null && TimingKind(ours) != TimingKind(baseline) ? $"timed differently: ours {ours}, the baseline {baseline}" : null;

    /// <summary>"queued" or "per-call" from either side's wording (ours: CudaBackend.LastTiming, "queued, 8 calls a batch"
    /// or "per call: ..."; torch_baselines.py: "queued" or "per-call"); anything else as it is.</summary>
    internal static string TimingKind(string timing) =>
        timing.StartsWith("queued", StringComparison.Ordinal) ? "queued"
        : timing.StartsWith("per call", StringComparison.Ordinal) || timing.StartsWith("per-call", StringComparison.Ordinal) ? "per-call" : timing;

    private static string Join(params string?[] notes) => string.Join("; ", notes.Where(n => !string.IsNullOrEmpty(n)));

    private static Row NotMeasured(string target, string @case, double goal, string why, bool lower = false) =>
        new(target, @case, null, null, null, null, null, Goal(goal, lower), Status.NotMeasured, why);

    /// <summary>
    /// The dense (no sparsity) bf16/f16 tensor-core peak of a card NVIDIA's data sheets give, by the name CUDA reports,
    /// for baselines files written before they carried machine.tc_peak_tflops; null for a card not in the table.
    /// </summary>
    internal static (double Tflops, string Source)? SpecPeak(string card)
    {
        if (card.Contains("H200", StringComparison.Ordinal))
            return card.Contains("NVL", StringComparison.Ordinal) ? null : (989.4, $"spec table: H200 ('{card}')");   // (H200 NVL: not in the table)
        if (!card.Contains("H100", StringComparison.Ordinal)) return null;
        if (card.Contains("NVL", StringComparison.Ordinal)) return (835.5, $"spec table: H100 NVL ('{card}')");
        if (card.Contains("PCIe", StringComparison.OrdinalIgnoreCase)) return (756.5, $"spec table: H100 PCIe ('{card}')");
        if (card.Contains("SXM", StringComparison.Ordinal) || card.Contains("HBM3", StringComparison.Ordinal)) return (989.4, $"spec table: H100 SXM5 ('{card}')");
        return null;
    }

    private static string F(double x, int digits) => x.ToString("F" + digits, CultureInfo.InvariantCulture);

    /// <summary>"MxNxK" as three numbers, else null.</summary>
    private static int[]? Dims(string shape)
    {
        var parts = shape.Split('x');
        var d = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out d[i])) return null;
        return d.Length == 3 ? d : null;
    }

    /// <summary>The parsed file, or null when it does not exist; a <see cref="BadInputException"/> naming it when it is not JSON.</summary>
    private static JsonDocument? Load(string dir, string name)
    {
        string path = Path.Combine(dir, name);
        if (!File.Exists(path)) return null;
        try
        {
            var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            if (doc.RootElement.ValueKind != JsonValueKind.Object) { doc.Dispose(); throw new BadInputException($"{path}: not a JSON object"); }
            return doc;
        }
        catch (JsonException e)
        {
            throw new BadInputException($"{path}: not valid JSON ({e.Message.Split('\n')[0]})");
        }
    }

    private static JsonElement Member(JsonElement e, string name, JsonValueKind kind, string path)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind != kind)
            throw new BadInputException($"{path}: \"{name}\" is missing or not a{(kind == JsonValueKind.Array ? "n array" : kind == JsonValueKind.Object ? "n object" : kind == JsonValueKind.String ? " string" : " value of the bench's format")}");
        return v;
    }

    private static JsonElement Array(JsonElement e, string name, string path) => Member(e, name, JsonValueKind.Array, path);
    private static JsonElement Object(JsonElement e, string name, string path) => Member(e, name, JsonValueKind.Object, path);
    private static string Text(JsonElement e, string name, string path) => Member(e, name, JsonValueKind.String, path).GetString()!;
    private static string? OptionalText(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static bool Flag(JsonElement e, string name, string path) =>
        e.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
            : throw new BadInputException($"{path}: \"{name}\" is missing or not true/false");

    /// <summary>The number, or null when it is null (a run that was not timed); missing or text: a <see cref="BadInputException"/>.</summary>
    private static double? Number(JsonElement e, string name, string path)
    {
        if (!e.TryGetProperty(name, out var v)) throw new BadInputException($"{path}: \"{name}\" is missing");
        return v.ValueKind switch
        {
            JsonValueKind.Number => v.GetDouble(),
            JsonValueKind.Null => null,
            _ => throw new BadInputException($"{path}: \"{name}\" is not a number"),
        };
    }
}
