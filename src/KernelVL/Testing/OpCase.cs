namespace KernelVL.Testing;

/// <summary>
/// One entry of the parity registry: an op at one shape, with its error budget (max |x - ref| over
/// the largest |ref| of each output tensor), its FLOP count and its minimal memory traffic in bytes
/// (for the perf harness), and the code that runs it on an <see cref="OpContext"/>.
/// </summary>
public sealed record OpCase(string Op, string Shape, double Budget, double Flops, double Bytes, Action<OpContext> Run)
{
    /// <summary>Extra checks on the backend's own results (e.g. tie-aware top-k indices); returns a problem or null.</summary>
    public Func<OpContext, string?>? Validate { get; init; }

    /// <summary>
    /// Where an output is a sum whose terms can cancel (Adam's m = b1 m0 + (1 - b1) g; attention's lse = max + log sum), the
    /// size of those terms at each element, from the reference's slots and integer inputs (masks): (slot name, results,
    /// int inputs) -> (flat index -> sum of |term|), or null for a slot it does not cover. f32 rounds each term relative to
    /// itself, so a cancelled sum is no more exact than its terms' ulp: an output over the budget is measured again, each
    /// element over max(max |ref| of the slot, that element's term size), so that one cancelled row never loosens the check
    /// of the others. Null: over max |ref| only. (Only consulted for an output over the budget, so that the perf harness's
    /// large cases do not pay for it: a larger denominator cannot turn a pass into a failure.)
    /// Not for sums of many random-signed terms (a matmul, attention's o): their roundings add like a random walk, far
    /// below the sum of |terms|, which would hide a real error.
    /// </summary>
    public Func<string, IReadOnlyList<OpContext.Result>, IReadOnlyDictionary<string, int[]>, Func<int, double>?>? TermSize { get; init; }

    public override string ToString() => $"{Op} {Shape}";
}

/// <summary>
/// Error budgets that depend on the backend's arithmetic, not on the op: a backend whose kernels round operands to bf16
/// (the tensor cores) gets a looser budget for those ops only, and the f32 backends keep the registry's own.
/// </summary>
public static class BackendBudgets
{
    /// <summary>
    /// bf16 keeps 8 significant bits: unit roundoff u = 2^-8 (~3.9e-3) per rounded operand, so each product a_k b_k carries a
    /// relative error up to 2u. Over K random-signed terms the errors add like a random walk, ~sqrt(K) * 0.8 u * rms(a b),
    /// while max |ref| over an output is a few sqrt(K) * rms(a b): the max error over max |ref| is expected near u.
    /// Measured on an H100 (first run): 2.1e-3 to 2.5e-3 for the GEMMs, 3.9e-3 to 5.5e-3 for attention. 2e-2 (~5u)
    /// leaves room for the tails of large outputs; attention rounds q, k (scores) and p, v (output) the same way. The
    /// attention backward runs in f32 but from the bf16 forward's o and lse (its P is recomputed from them): measured
    /// 1.9e-3 to 2.3e-3 on dq, so it takes the forward's budget.
    /// </summary>
    public const double Bf16 = 2e-2;

    private static readonly Dictionary<(string Backend, string Op), double> Budgets = new()
    {
        [("cuda", "matmul")] = Bf16,
        [("cuda", "matmul_backward")] = Bf16,
        [("cuda", "matmul_gelu")] = Bf16,
        [("cuda", "attention")] = Bf16,
        [("cuda", "attention_backward")] = Bf16,
    };

    /// <summary>The budget of a case on a backend: the case's own, or the backend's for that op when that is looser.</summary>
    public static double For(OpCase c, string backend) =>
        Budgets.TryGetValue((backend, c.Op), out var b) ? Math.Max(b, c.Budget) : c.Budget;

    /// <summary>
    /// <see cref="For(OpCase, string)"/>, loosened further where the backend instance says its current configuration
    /// computes the op less exactly (<see cref="IOpBudgets"/>: the cuda backend's InfoNCE version 2 on 3xTF32).
    /// </summary>
    public static double For(OpCase c, IBackend backend)
    {
        double b = For(c, backend.Name);
        return (backend as IOpBudgets)?.BudgetFor(c.Op) is { } own ? Math.Max(own, b) : b;
    }
}

/// <summary>A backend whose configuration (a kernel version) sets the error budget of some ops: null for the others.</summary>
public interface IOpBudgets
{
    double? BudgetFor(string op);
}

/// <summary>The outcome of checking one case on one backend against the reference.</summary>
public sealed record OpCheckResult(OpCase Case, string Backend, double MaxRelError, bool Ok, string? Problem)
{
    /// <summary>The budget the check applied (NaN: the backend name's, <see cref="BackendBudgets.For(OpCase, string)"/>).</summary>
    public double Budget { get; init; } = double.NaN;

    public override string ToString() => Ok
        ? $"{Case} on {Backend}: ok (max rel error {MaxRelError:E2} <= {(double.IsNaN(Budget) ? BackendBudgets.For(Case, Backend) : Budget):E1})"
        : $"{Case} on {Backend}: FAIL {Problem}";
}

/// <summary>Runs a case on a backend and on the reference with the same inputs and compares every output.</summary>
public static class OpCheck
{
    /// <summary>Two units in the last place of an f32 value, relative.</summary>
    public const double StorageUlps = 2.0 / (1 << 23);

    /// <summary>
    /// The absolute error an element may have from f32 storage alone: 2 ulp of the stored value; for an accumulated
    /// output (dx += delta) also 2 ulp of the delta, which an f32 backend rounds before adding it: when the initial value
    /// cancels the delta (dx0 = -2.09, delta 2.09) the sum is small but the delta's own rounding is not.
    /// </summary>
    public static double Allowance(double stored, double delta, bool accumulated) =>
        StorageUlps * (Math.Abs(stored) + (accumulated ? Math.Abs(delta) : 0));

    /// <param name="thenOnBackend">Called with the backend's context (inputs in place, op run once) after the check, before disposal: the perf harness times there.</param>
    public static OpCheckResult Run(OpCase c, IBackend backend, IBackend reference, int seed, Action<OpContext, OpCheckResult>? thenOnBackend = null)
    {
        var rng = new Random(seed);
        using var refCtx = new OpContext(reference, rng);
        c.Run(refCtx);
        var expected = refCtx.Collect();
        using var ctx = new OpContext(backend, rng, inputsFrom: refCtx);
        c.Run(ctx);
        backend.Synchronize();
        var actual = ctx.Collect();
        double budget = BackendBudgets.For(c, backend);
        var result = Compare(c, backend.Name, expected, actual, seed, budget, refCtx.HostInts) with { Budget = budget };
        if (result.Ok && c.Validate?.Invoke(ctx) is { } problem)
            result = result with { Ok = false, Problem = problem + $" (seed {seed})" };
        thenOnBackend?.Invoke(ctx, result);
        return result;
    }

    private static readonly Dictionary<string, int[]> EmptyInts = new();

    /// <param name="ints">the reference's integer inputs by name (masks, ids), for <see cref="OpCase.TermSize"/></param>
    public static OpCheckResult Compare(OpCase c, string backend, IReadOnlyList<OpContext.Result> expected, IReadOnlyList<OpContext.Result> actual, int seed,
        double? budgetOverride = null, IReadOnlyDictionary<string, int[]>? ints = null)
    {
        double worst = 0, budget = budgetOverride ?? BackendBudgets.For(c, backend);
        string where = $" (seed {seed})";
        if (expected.Count != actual.Count) return new(c, backend, double.NaN, false, "different slots" + where);
        for (int s = 0; s < expected.Count; s++)
        {
            var e = expected[s];
            var a = actual[s];
            if (!a.GuardIntact) return new(c, backend, double.NaN, false, $"wrote past the end of {a.Name}" + where);
            if (!a.InputIntact) return new(c, backend, double.NaN, false, $"modified its input {a.Name}" + where);
            if (!e.GuardIntact || !e.InputIntact) return new(c, backend, double.NaN, false, $"the reference broke {e.Name}" + where);
            if (e.Kind == OpContext.SlotKind.Input) continue;
            bool delta = e.Kind == OpContext.SlotKind.Accumulate;
            double maxRef = 0;
            for (int i = 0; i < e.Values.Length; i++)
            {
                double r = e.Values[i] - (delta ? e.Initial![i] : 0);
                if (double.IsFinite(r)) maxRef = Math.Max(maxRef, Math.Abs(r));
            }
            // Error beyond the unavoidable rounding of the stored f32 value (2 ulp of |ref|): an accumulated
            // gradient on top of a large initial value cannot be more exact than that value's ulp (see Allowance).
            double err = 0;
            for (int i = 0; i < e.Values.Length; i++)
            {
                double r = e.Values[i] - (delta ? e.Initial![i] : 0);
                double x = a.Values[i] - (delta ? a.Initial![i] : 0);
                if (double.IsNaN(r)) return new(c, backend, double.NaN, false, $"reference produced NaN in {e.Name}[{i}]" + where);
                if (!double.IsFinite(r))
                {
                    if (x != r) return new(c, backend, double.NaN, false, $"{a.Name}[{i}] = {x}, expected {r}" + where);
                    continue;
                }
                if (!double.IsFinite(x)) return new(c, backend, double.NaN, false, $"non-finite {a.Name}[{i}] = {x}, expected {r}" + where);
                err = Math.Max(err, Math.Abs(x - r) - Allowance(e.Values[i], r, delta));
            }
            double rel = maxRef > 0 ? err / maxRef : err;
            string over = "";
            Func<long, double> scale = _ => maxRef > 0 ? maxRef : 1;
            if (rel > budget && c.TermSize?.Invoke(e.Name, expected, ints ?? EmptyInts) is { } termSize)
            {
                // Each element over the larger of max |ref| and its own terms' size: a row whose terms cancel gets its
                // terms' scale, never the rest of the output (a GPU error elsewhere stays measured over max |ref|).
                double slotMax = maxRef;
                scale = i => termSize((int)i) is var t && double.IsFinite(t) && t > slotMax ? t : (slotMax > 0 ? slotMax : 1);
                rel = 0;
                double worstScale = 0;
                for (int i = 0; i < e.Values.Length; i++)
                {
                    double r = e.Values[i] - (delta ? e.Initial![i] : 0);
                    if (!double.IsFinite(r)) continue;
                    double x = a.Values[i] - (delta ? a.Initial![i] : 0);
                    double ri = (Math.Abs(x - r) - Allowance(e.Values[i], r, delta)) / scale(i);
                    if (ri > rel) { rel = ri; worstScale = scale(i); }
                }
                over = $" (each element over the larger of max |ref| {slotMax:G3} and its terms' size: {worstScale:G3} at the worst)";
            }
            worst = Math.Max(worst, rel);
            if (rel > budget)
                return new(c, backend, rel, false, $"{a.Name}: max rel error {rel:E2}{over} > budget {budget:E1}" + where +
                    "; " + ErrorMap.Describe(e.Values, delta ? e.Initial : null, a.Values, delta ? a.Initial : null, a.Dims ?? [a.Values.Length], i => budget * scale(i)));
        }
        return new(c, backend, worst, true, null);
    }
}

/// <summary>
/// Where a failed output is wrong, in one line, so that a single run on a GPU says which part of a kernel to look at
/// (a fragment layout wrong for some lanes shows as columns or rows of a fixed residue; a warpgroup or a tile edge as a
/// range of rows): how many elements exceed the limit, the worst with its index, and for outputs of rank >= 2 the
/// rows and columns (last two dimensions) holding them, as ranges and, where not all, as residues mod 16.
/// </summary>
public static class ErrorMap
{
    /// <param name="limit">the absolute error allowed (beyond 2 ulp of the reference value)</param>
    public static string Describe(float[] expected, float[]? expectedInitial, float[] actual, float[]? actualInitial, int[] dims, double limit)
        => Describe(expected, expectedInitial, actual, actualInitial, dims, _ => limit);

    /// <param name="limit">flat index -> the absolute error allowed there (beyond 2 ulp of the reference value)</param>
    public static string Describe(float[] expected, float[]? expectedInitial, float[] actual, float[]? actualInitial, int[] dims, Func<long, double> limit)
    {
        int rank = dims.Length;
        int cols = rank >= 1 ? Math.Max(1, dims[^1]) : 1, rows = rank >= 2 ? Math.Max(1, dims[^2]) : 1;
        var badRows = new bool[rows];
        var badCols = new bool[cols];
        var badBatches = new SortedSet<long>();
        long count = 0, worstAt = -1;
        double worst = -1;
        for (long i = 0; i < expected.Length; i++)
        {
            double r = expected[i] - (expectedInitial?[i] ?? 0), x = actual[i] - (actualInitial?[i] ?? 0);
            if (!double.IsFinite(r)) continue;
            double err = double.IsFinite(x) ? Math.Abs(x - r) - OpCheck.Allowance(expected[i], r, expectedInitial is not null) : double.PositiveInfinity;
            if (!(err > limit(i))) continue;
            count++;
            if (err > worst) { worst = err; worstAt = i; }
            badCols[i % cols] = true;
            badRows[i / cols % rows] = true;
            if (rank >= 3 && badBatches.Count <= 64) badBatches.Add(i / ((long)cols * rows));
        }
        if (count == 0) return "no single element over the limit";
        var sb = new System.Text.StringBuilder();
        double wr = expected[worstAt] - (expectedInitial?[worstAt] ?? 0), wx = actual[worstAt] - (actualInitial?[worstAt] ?? 0);
        sb.Append($"{count} of {expected.Length} over the limit, worst at {Index(worstAt, dims)} (got {wx:G6}, expected {wr:G6})");
        if (rank >= 3) sb.Append($"; batches {Ranges(badBatches.Select(b => (int)b).ToList(), badBatches.Count > 64)}");
        if (rank >= 2) sb.Append($"; rows {Flags(badRows)}");
        if (rank >= 1 && cols > 1) sb.Append($"; {(rank >= 2 ? "cols" : "elements")} {Flags(badCols)}");
        return sb.ToString();
    }

    private static string Index(long flat, int[] dims)
    {
        var ix = new long[dims.Length];
        for (int d = dims.Length - 1; d >= 0; d--)
        {
            long n = Math.Max(1, dims[d]);
            ix[d] = flat % n;
            flat /= n;
        }
        return "[" + string.Join(", ", ix) + "]";
    }

    /// <summary>"all 64", or ranges of the set indices, and their residues mod 16 where those are not all present.</summary>
    private static string Flags(bool[] f)
    {
        var set = Enumerable.Range(0, f.Length).Where(i => f[i]).ToList();
        if (set.Count == f.Length) return $"all {f.Length}";
        string s = Ranges(set, false) + $" ({set.Count} of {f.Length})";
        if (f.Length >= 32)
        {
            var mod = set.Select(i => i % 16).Distinct().Order().ToList();
            if (mod.Count < 16) s += $", mod 16 in {{{Ranges(mod, false)}}}";
        }
        return s;
    }

    private static string Ranges(IReadOnlyList<int> sorted, bool more)
    {
        var parts = new List<string>();
        int i = 0;
        while (i < sorted.Count && parts.Count < 8)
        {
            int j = i;
            while (j + 1 < sorted.Count && sorted[j + 1] == sorted[j] + 1) j++;
            parts.Add(i == j ? $"{sorted[i]}" : $"{sorted[i]}..{sorted[j]}");
            i = j + 1;
        }
        return string.Join(",", parts) + (more || i < sorted.Count ? ",..." : "");
    }
}

