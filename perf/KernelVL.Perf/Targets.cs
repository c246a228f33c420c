using System.Globalization;
using System.Text;
using System.Text.Json;
using KernelVL.IO;

namespace KernelVL.Perf;

/// <summary>
/// `targets DIR`: issue 4's targets as ratios within one run, read from the result files that
/// `ONLY=timings bash perf/gpu/run-v2.sh` leaves in DIR (the unpacked v2-timings folder). Needs no GPU: it also runs on
/// the build machine over results brought back. Writes DIR/targets.md (the table to commit under perf/results/, the card
/// named) and DIR/targets.json, each to a temporary name first.
/// <list type="bullet">
/// <item>GEMM >= 0.70 of cuBLAS bf16 (torch.matmul) at every shape of gemm-bf16.json: the fastest of our kernels on bf16
/// operands that passed its check; each version's ratio in the note.</item>
/// <item>attention forward >= 0.50 of SDPA at T 256, 512, 1024 (D 64), with and without the key mask: the fastest
/// passing version of ops-attention-v3.json, ops-v2.json, ops-v1.json.</item>
/// <item>top-k over 1M x 768 f16, 1024 queries, k 10, within 2x of max(memory floor, tensor-core floor): the corpus
/// (and queries) once at the copy rate of torch's device-to-device copy; 2 Q N D FLOPs at the card's dense bf16/f16
/// tensor-core peak (torch-baselines.json's machine.tc_peak_tflops, else <see cref="SpecPeak"/> by the card's name, else
/// not measured). The floor at the best bf16 matmul rate torch reached at 4096^3 or larger is a note: an achieved rate
/// is not a floor.</item>
/// <item>the contrastive loss over the 4096 x 4096 matrix bandwidth-bound: each pass of infonce-phases.json that moves at
/// least one read of S reaches >= 0.70 of the copy rate; fwd + bwd against torch f32 as a note.</item>
/// </list>
/// A file that is missing leaves its rows "not measured" (a run cut short); torch-baselines.json, every ratio's
/// denominator, is required. torch-baselines-after.json (optional, same format, a subset timed after our kernels): where
/// both have an (op, shape), the faster is the baseline (conservative for us) and the note gives both times. Rows of
/// either side may say how they were timed ("timing": "queued" or "per-call"); where ours and the baseline's differ, the
/// note says so. A file that is not the JSON its bench writes is a <see cref="BadInputException"/> naming it.
/// </summary>
internal static class Targets
{
    internal const double GemmGoal = 0.70, AttentionGoal = 0.50, TopKGoal = 2.0, InfoNceGoal = 0.70;
    internal static readonly int[] AttentionT = [256, 512, 1024];

    /// <summary>One target row. Value: ratio (baseline / ours) or, for top-k, ours / floor; Met null when not measured.</summary>
    internal sealed record Row(string Target, string Case, string? Ours, double? OursMs, string? Baseline, double? BaselineMs, double? Value, string Goal, bool? Met, string Note);

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
            targets = rows.Select(r => new { target = r.Target, @case = r.Case, ours = r.Ours, ours_ms = r.OursMs, baseline = r.Baseline, baseline_ms = r.BaselineMs, value = r.Value, goal = r.Goal, met = r.Met, note = r.Note }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        int measured = rows.Count(r => r.Met is not null), met = rows.Count(r => r.Met == true);
        Console.Error.WriteLine($"targets: {met} of {measured} measured rows met, {rows.Count - measured} not measured");
        return 0;
    }

    /// <summary>The card line and every target row from the files in <paramref name="dir"/>.</summary>
    internal static (string Header, List<Row> Rows) Compute(string dir)
    {
        using var torch = Load(dir, "torch-baselines.json") ?? throw new BadInputException($"{Path.Combine(dir, "torch-baselines.json")}: missing (the PyTorch baselines, every ratio's denominator)");
        var baselines = TorchRows(torch, Path.Combine(dir, "torch-baselines.json"));
        var machine = Object(torch.RootElement, "machine", Path.Combine(dir, "torch-baselines.json"));
        string card = OptionalText(machine, "gpu") ?? "unknown card";
        var cards = new SortedSet<string>(StringComparer.Ordinal) { card };
        using (var after = Load(dir, "torch-baselines-after.json"))
        {
            // The same baselines timed again after our kernels (optional, a subset): the faster of the two is the
            // baseline (conservative for us), both times in its note.
            if (after is not null)
            {
                string afterFile = Path.Combine(dir, "torch-baselines-after.json");
                if (OptionalText(Object(after.RootElement, "machine", afterFile), "gpu") is { } g) cards.Add(g);
                foreach (var (key, a) in TorchRows(after, afterFile))
                    baselines[key] = baselines.TryGetValue(key, out var b)
                        ? (a.Ms < b.Ms ? a : b) with { Spread = $"torch before {F(b.Ms, 4)} ms, after {F(a.Ms, 4)} ms" }
                        : a with { Spread = "torch timed after ours only" };
            }
        }
        string header = $"{card}{(machine.TryGetProperty("sm_count", out var sm) && sm.ValueKind == JsonValueKind.Number ? $" ({sm.GetInt32()} SMs)" : "")}"
                        + $", torch {OptionalText(machine, "torch") ?? "?"}, CUDA {OptionalText(machine, "cuda") ?? "?"}";
        var copy = baselines.GetValueOrDefault(("copy_d2d", "256M f32"));
        double? copyGbps = copy?.Gbps;
        // The tensor cores' dense peak: the card's, from the baselines' machine, else from the spec table by name.
        var tcPeak = machine.TryGetProperty("tc_peak_tflops", out var tp) && tp.ValueKind == JsonValueKind.Number && tp.GetDouble() > 0
            ? (Tflops: tp.GetDouble(), Source: OptionalText(machine, "tc_peak_source") ?? "torch-baselines.json")
            : SpecPeak(card);
        // The best rate torch reached (a note only): its bf16 matmul at 4096^3 or larger (the smaller shapes do not fill the card).
        double? bf16Tflops = baselines.Where(b => b.Key.Op == "matmul_bf16" && Dims(b.Key.Shape) is { } d && d.All(x => x >= 4096) && b.Value.Tflops is > 0)
                                      .Select(b => b.Value.Tflops).Max();
        var rows = new List<Row>();

        // GEMM: the fastest passing kernel on bf16 operands at each shape, against torch.matmul bf16 (cuBLAS).
        string gemmFile = Path.Combine(dir, "gemm-bf16.json");
        using (var gemm = Load(dir, "gemm-bf16.json"))
        {
            if (gemm is null) rows.Add(NotMeasured("GEMM bf16 >= 0.70 of cuBLAS", "4096x4096x4096 and the model's shapes", GemmGoal, "gemm-bf16.json missing"));
            else
            {
                if (OptionalText(gemm.RootElement, "gpu") is { } g) cards.Add(g);
                var byShape = new List<(string Shape, List<(string Kernel, double Ms, string? Timing)> Runs)>();
                foreach (var r in Array(gemm.RootElement, "rows", gemmFile).EnumerateArray())
                {
                    string kernel = Text(r, "kernel", gemmFile), shape = Text(r, "shape", gemmFile);
                    var entry = byShape.FirstOrDefault(s => s.Shape == shape);
                    if (entry.Runs is null) byShape.Add(entry = (shape, []));
                    const string suffix = " bf16 operands";
                    if (!kernel.EndsWith(suffix, StringComparison.Ordinal) || !Flag(r, "ok", gemmFile) || Number(r, "median_ms", gemmFile) is not > 0) continue;
                    entry.Runs.Add((kernel[..^suffix.Length], Number(r, "median_ms", gemmFile)!.Value, Timing(r, gemm.RootElement)));
                }
                foreach (var (shape, runs) in byShape)
                {
                    var b = baselines.GetValueOrDefault(("matmul_bf16", shape));
                    double? baseMs = b?.Ms;
                    string target = $"GEMM bf16 >= {GemmGoal:0.00} of cuBLAS";
                    if (runs.Count == 0) { rows.Add(NotMeasured(target, shape, GemmGoal, "no kernel on bf16 operands passed its check")); continue; }
                    var best = runs.MinBy(x => x.Ms);
                    double? value = baseMs / best.Ms;
                    string note = b is null ? "no torch matmul_bf16 at this shape"
                                            : Join(string.Join("; ", runs.Select(x => $"{x.Kernel} {F(b.Ms / x.Ms, 2)}")), b.Spread, TimedApart(best.Timing, b.Timing));
                    rows.Add(new Row(target, shape, best.Kernel, best.Ms, "torch.matmul bf16", baseMs, value, $">= {GemmGoal:0.00}", value is null ? null : value >= GemmGoal, note));
                }
            }
        }

        // Attention forward, D 64: the fastest passing version at each T, with and without the key mask, against SDPA bf16.
        var attention = new List<(string Version, string Shape, double Ms, string? Timing)>();
        var attentionFiles = new List<string>();
        foreach (var (file, version) in new[] { ("ops-attention-v3.json", "v3"), ("ops-v2.json", "v2"), ("ops-v1.json", "v1") })
        {
            using var ops = Load(dir, file);
            if (ops is null) continue;
            attentionFiles.Add(file);
            string path = Path.Combine(dir, file);
            if (ops.RootElement.TryGetProperty("machine", out var m) && m.ValueKind == JsonValueKind.Object && OptionalText(m, "gpu") is { } g) cards.Add(g);
            foreach (var r in Array(ops.RootElement, "results", path).EnumerateArray())
                if (Text(r, "op", path) == "attention" && Flag(r, "ok", path) && Number(r, "median_ms", path) is double ms && ms > 0)
                    attention.Add((version, Text(r, "shape", path), ms, Timing(r, ops.RootElement)));
        }
        foreach (int t in AttentionT)
            foreach (bool mask in new[] { false, true })
            {
                string shape = $"B8 H12 Tq{t} Tk{t} D64{(mask ? " mask" : "")}", target = $"attention fwd >= {AttentionGoal:0.00} of SDPA";
                var runs = attention.Where(a => a.Shape == shape).ToList();
                if (runs.Count == 0)
                {
                    rows.Add(NotMeasured(target, shape, AttentionGoal, attentionFiles.Count == 0 ? "ops-attention-v3.json, ops-v2.json, ops-v1.json missing" : $"no passing row in {string.Join(", ", attentionFiles)}"));
                    continue;
                }
                var b = baselines.GetValueOrDefault((mask ? "sdpa_bf16_mask" : "sdpa_bf16", $"B8 H12 T{t} D64"));
                double? baseMs = b?.Ms;
                var best = runs.MinBy(x => x.Ms);
                double? value = baseMs / best.Ms;
                string note = b is null ? "no torch SDPA at this shape"
                                        : Join(string.Join("; ", runs.Select(x => $"{x.Version} {F(b.Ms / x.Ms, 2)}")), b.Spread, TimedApart(best.Timing, b.Timing));
                rows.Add(new Row(target, shape, best.Version, best.Ms, mask ? "SDPA bf16, mask" : "SDPA bf16", baseMs, value, $">= {AttentionGoal:0.00}", value is null ? null : value >= AttentionGoal, note));
            }

        // Top-k over the f16 corpus: the fastest passing version against the larger of its two floors.
        string topkFile = Path.Combine(dir, "topk-f16.json");
        using (var topk = Load(dir, "topk-f16.json"))
        {
            string target = $"top-k f16 within {TopKGoal:0}x of its floor";
            if (topk is null) rows.Add(NotMeasured(target, "Q1024 N1000000 D768 k10", TopKGoal, "topk-f16.json missing", lower: true));
            else
            {
                if (OptionalText(topk.RootElement, "gpu") is { } g) cards.Add(g);
                string shape = Text(topk.RootElement, "shape", topkFile);
                var runs = new List<(string Version, double Ms, double Bytes, double Flops)>();
                foreach (var r in Array(topk.RootElement, "versions", topkFile).EnumerateArray())
                {
                    if (!Flag(r, "ok", topkFile) || Number(r, "median_ms", topkFile) is not > 0) continue;
                    string bound = OptionalText(r, "norm_bound") == "given" ? ", norm bound given" : "";
                    // the scorer names the version ("v3 wgmma + TMA, clusters of 4")
                    runs.Add(($"{Text(r, "scorer", topkFile)}{bound}", Number(r, "median_ms", topkFile)!.Value,
                              Number(r, "bytes", topkFile) ?? 0, Number(r, "flops", topkFile) ?? 0));
                }
                if (runs.Count == 0) rows.Add(NotMeasured(target, shape, TopKGoal, "no version passed its check", lower: true));
                else if (copyGbps is null) rows.Add(NotMeasured(target, shape, TopKGoal, "torch-baselines.json has no copy_d2d: no memory floor", lower: true));
                else if (tcPeak is not { } peak)
                    rows.Add(NotMeasured(target, shape, TopKGoal, $"no tensor-core peak: torch-baselines.json's machine has no tc_peak_tflops and the card '{card}' is not in the spec table", lower: true));
                else
                {
                    var best = runs.MinBy(x => x.Ms);
                    double memMs = best.Bytes / (copyGbps.Value * 1e9) * 1e3, tcMs = best.Flops / (peak.Tflops * 1e12) * 1e3, floor = Math.Max(memMs, tcMs);
                    double value = best.Ms / floor;
                    string achieved = "";
                    if (bf16Tflops is { } rate)
                    {
                        double atRate = Math.Max(memMs, best.Flops / (rate * 1e12) * 1e3);
                        achieved = $"; at torch's best bf16 matmul rate ({F(rate, 0)} TFLOP/s) the floor would be {F(atRate, 3)} ms, ours {F(best.Ms / atRate, 2)}x of it (not the target)";
                    }
                    string torchTopk = baselines.GetValueOrDefault(("topk_search_f16", "Q1024 N1M D768 k10")) is { } tk ? $"; torch.topk search {F(tk.Ms, 3)} ms" : "";
                    string note = $"floors: memory {F(memMs, 3)} ms ({F(best.Bytes / 1e9, 2)} GB at {F(copyGbps.Value, 0)} GB/s), tensor cores {F(tcMs, 3)} ms "
                                  + $"({F(best.Flops / 1e12, 2)} TFLOP at the dense peak {F(peak.Tflops, 1)} TFLOP/s, {peak.Source}){achieved}{torchTopk}; "
                                  + (copy!.Spread is { } spread ? $"copy_d2d: {spread}; " : "")
                                  + string.Join("; ", runs.Select(x => $"{x.Version} {F(x.Ms / floor, 2)}x"));
                    rows.Add(new Row(target, shape, best.Version, best.Ms, "floor", floor, value, $"<= {TopKGoal:0.0}x", value <= TopKGoal, note));
                }
            }
        }

        // InfoNCE at N 4096: the passes over S against the copy rate; fwd + bwd against torch f32 as a note.
        string nceFile = Path.Combine(dir, "infonce-phases.json");
        using (var nce = Load(dir, "infonce-phases.json"))
        {
            string target = $"InfoNCE pass over S >= {InfoNceGoal:0.00} of copy GB/s";
            if (nce is null) rows.Add(NotMeasured(target, "N4096 D768", InfoNceGoal, "infonce-phases.json missing"));
            else if (!Flag(nce.RootElement, "ok", nceFile)) rows.Add(NotMeasured(target, "N4096 D768", InfoNceGoal, "the timed run's loss failed its check against the cpu backend"));
            else
            {
                if (OptionalText(nce.RootElement, "gpu") is { } g) cards.Add(g);
                double n = Number(nce.RootElement, "n", nceFile) ?? 0, d = Number(nce.RootElement, "d", nceFile) ?? 0;
                string shape = $"N{F(n, 0)} D{F(d, 0)}";
                var steps = Array(nce.RootElement, "steps", nceFile).EnumerateArray()
                    .Select(s => (Step: Text(s, "step", nceFile), Ms: Number(s, "median_ms", nceFile) ?? double.NaN, Bytes: Number(s, "bytes", nceFile) ?? 0, Flops: Number(s, "flops", nceFile) ?? 0,
                                  Timing: Timing(s, nce.RootElement))).ToList();
                double total = steps.Sum(s => s.Ms);   // NaN when a step was not timed: then no fwd + bwd figure
                string torchNote = !double.IsFinite(total) ? "a step was not timed: no fwd + bwd figure"
                    : baselines.GetValueOrDefault(("infonce_fwd_bwd_f32", shape)) is { } tn
                    ? $"fwd + bwd {F(total, 3)} ms vs torch f32 {F(tn.Ms, 3)} ms ({F(tn.Ms / total, 2)}x)" : $"fwd + bwd {F(total, 3)} ms";
                // A pass over S: moves at least one read of the [n, n] f32 matrix at under 10 FLOPs a byte (not a GEMM).
                var passes = steps.Where(s => s.Bytes >= 4 * n * n && s.Flops <= 10 * s.Bytes && s.Ms > 0).ToList();   // (NaN: untimed)
                if (passes.Count == 0) rows.Add(NotMeasured(target, shape, InfoNceGoal, "no timed pass over S among the steps"));
                else if (copyGbps is null) rows.Add(NotMeasured(target, shape, InfoNceGoal, "torch-baselines.json has no copy_d2d"));
                foreach (var p in passes)
                {
                    if (copyGbps is null) break;
                    double gbps = p.Bytes / (p.Ms / 1e3) / 1e9, value = gbps / copyGbps.Value;
                    rows.Add(new Row(target, $"{shape}: {p.Step}", $"{F(gbps, 0)} GB/s", p.Ms, "torch copy_d2d", copyGbps, value, $">= {InfoNceGoal:0.00}", value >= InfoNceGoal,
                                     Join(torchNote, copy!.Spread is { } spread ? $"copy_d2d: {spread}" : null, TimedApart(p.Timing, copy.Timing))));
                }
            }
        }
        if (cards.Count > 1) header += $" (the files name more than one card: {string.Join(", ", cards)}: not one run?)";
        return (header, rows);
    }

    internal static string Markdown(string header, IReadOnlyList<Row> rows)
    {
        var sb = new StringBuilder();
        sb.Append("# Issue 4's targets, ratios within one run\n\n");
        sb.Append($"Card: {header}. Ratio = baseline time / ours (above 1: faster than the baseline); for top-k, ours / floor.\n\n");
        sb.Append("| target | case | ours | ours ms | baseline | baseline ms | value | goal | met | note |\n");
        sb.Append("|---|---|---|---:|---|---:|---:|---|---|---|\n");
        foreach (var r in rows)
            sb.Append($"| {r.Target} | {r.Case} | {r.Ours ?? "-"} | {(r.OursMs is { } o ? F(o, 4) : "-")} | {r.Baseline ?? "-"} | {(r.BaselineMs is { } b ? F(b, 4) : "-")} | "
                      + $"{(r.Value is { } v ? F(v, 2) : "-")} | {r.Goal} | {(r.Met is null ? "not measured" : r.Met.Value ? "yes" : "no")} | {r.Note} |\n");
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
        ours is not null && baseline is not null && ours != baseline ? $"timed differently: ours {ours}, the baseline {baseline}" : null;

    private static string Join(params string?[] notes) => string.Join("; ", notes.Where(n => !string.IsNullOrEmpty(n)));

    private static Row NotMeasured(string target, string shape, double goal, string why, bool lower = false) =>
        new(target, shape, null, null, null, null, null, lower ? $"<= {goal:0.0}x" : $">= {goal:0.00}", null, why);

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
