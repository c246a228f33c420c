using KernelVL.Backends;
using KernelVL.Tensors;
using KernelVL.Testing;

namespace KernelVL.Tests;

/// <summary>The parity registry: every op x its test shapes x every fast backend, against the scalar reference.</summary>
public sealed class BackendPool : IDisposable
{
    private readonly Dictionary<string, IBackend> _backends = new();

    /// <summary>One instance per backend for the whole class: ILGPU backends compile their kernels once, in their constructor.</summary>
    public IBackend Get(string name)
    {
        lock (_backends)
        {
            if (!_backends.TryGetValue(name, out var b)) _backends[name] = b = BackendFactory.Create(name);
            return b;
        }
    }

    public void Dispose()
    {
        foreach (var b in _backends.Values) b.Dispose();
    }
}

public class ParityTests(BackendPool pool) : IClassFixture<BackendPool>
{
    private static readonly OpCase[] Cases = OpRegistry.TestCases().ToArray();

    public static IEnumerable<object[]> Data()
    {
        foreach (string backend in BackendFactory.Names.Where(n => n != "reference"))
            for (int i = 0; i < Cases.Length; i++)
                yield return [backend, i, Cases[i].ToString()];
    }

    [SkippableTheory]
    [MemberData(nameof(Data))]
    public void MatchesReference(string backend, int index, string name)
    {
        string? why = BackendFactory.Unavailable(backend);
        Skip.If(why is not null, why);
        var c = Cases[index];
        Assert.Equal(name, c.ToString());
        var be = pool.Get(backend);
        using var reference = new ReferenceBackend();
        int seed = Random.Shared.Next();
        var r = OpCheck.Run(c, be, reference, seed);
        Assert.True(r.Ok, r.ToString());
    }

    [Fact]
    public void RegistryCoversEveryContractOp()
    {
        var methods = typeof(IBackend).GetMethods().Select(m => m.Name).ToHashSet();
        string[] notOps = ["Empty", "Fill", "Copy", "CopyFromHost", "CopyToHost", "Dispose", "get_Name", "Synchronize"];
        var names = OpRegistry.OpNames.Select(n => n.Replace("_", "")).ToHashSet(StringComparer.OrdinalIgnoreCase);
        foreach (var m in methods.Except(notOps))
        {
            string key = m.ToLowerInvariant() switch
            {
                "sumall" => "sum", "sumallbackward" => "sumbackward",
                "bcewithlogits" => "bcewithlogits", var k => k,
            };
            Assert.True(names.Contains(key), $"the registry has no case for {m}");
        }
        Assert.All(OpRegistry.PerfCases().Select(c => c.Op).Distinct(), op => Assert.Contains(op, OpRegistry.OpNames));
        Assert.Equal(OpRegistry.OpNames.Count, OpRegistry.PerfCases().Select(c => c.Op).Distinct().Count());
    }

    [Fact]
    public void DetectsOutOfBoundsWritesAndUnwrittenOutputs()
    {
        // A backend that writes one element past y, and one that leaves y unwritten, must both fail.
        using var reference = new ReferenceBackend();
        using var past = new WritesPastEnd();
        using var lazy = new LeavesOutputUnwritten();
        var c = OpRegistry.Gelu(3, 17);
        var r1 = OpCheck.Run(c, past, reference, 1);
        Assert.False(r1.Ok);
        Assert.Contains("past the end", r1.Problem);
        var r2 = OpCheck.Run(c, lazy, reference, 1);
        Assert.False(r2.Ok);
        Assert.Contains("non-finite", r2.Problem);
    }

    private sealed unsafe class WritesPastEnd : ReferenceBackend
    {
        public override void Gelu(Tensors.Tensor x, Tensors.Tensor y)
        {
            base.Gelu(x, y);
            y.F32Ptr[y.Numel] = 0f;
        }
    }

    private sealed class LeavesOutputUnwritten : ReferenceBackend
    {
        public override void Gelu(Tensors.Tensor x, Tensors.Tensor y) { }
    }
}

/// <summary>The one-line error map a failed check prints (what a single GPU run has to say about a wrong kernel).</summary>
public class ErrorMapTests
{
    [Fact]
    public void AFailedCheckNamesTheRowsColumnsAndResiduesThatAreWrong()
    {
        var rng = new Random(Random.Shared.Next());
        int batch = 3, rows = 128, cols = 96;
        var expected = new float[batch * rows * cols];
        for (int i = 0; i < expected.Length; i++) expected[i] = (float)(rng.NextDouble() * 2 - 1) + 0.25f * Math.Sign(rng.NextDouble() - 0.5);
        var actual = (float[])expected.Clone();
        // A fault like a fragment mapped wrong for the second warpgroup: batch 1, rows 64..127, columns 8..15 of each 16.
        int wrong = 0;
        for (int r = 64; r < 128; r++)
            for (int c = 0; c < cols; c++)
                if (c % 16 >= 8) { actual[(1 * rows + r) * cols + c] += 0.5f + (float)rng.NextDouble(); wrong++; }
        actual[(1 * rows + 100) * cols + 41] = 7f;   // the worst one
        var e = new OpContext.Result("y", OpContext.SlotKind.Output, expected, null, true, true, [batch, rows, cols]);
        var a = e with { Values = actual };
        var c0 = new OpCase("matmul", "test", 1e-3, 0, 0, _ => { });
        var result = OpCheck.Compare(c0, "cpu", [e], [a], 7);
        Assert.False(result.Ok);
        string m = result.Problem!;
        Assert.Contains($"{wrong} of {expected.Length} over the limit", m);
        Assert.Contains("worst at [1, 100, 41]", m);
        Assert.Contains("batches 1;", m);
        Assert.Contains("rows 64..127 (64 of 128);", m);   // every residue of the rows: none printed
        Assert.Contains("cols 8..15,24..31,40..47,56..63,72..79,88..95 (48 of 96), mod 16 in {8..15}", m);
        // Rank 1 and a lone element: its index, no row or residue summary.
        var e1 = new OpContext.Result("loss", OpContext.SlotKind.Output, [1f, 2f, 3f], null, true, true, [3]);
        var r1 = OpCheck.Compare(c0, "cpu", [e1], [e1 with { Values = [1f, 2.5f, 3f] }], 1);
        Assert.Contains("1 of 3 over the limit, worst at [1] (got 2.5, expected 2); elements 1 (1 of 3)", r1.Problem);
    }

    /// <summary>
    /// A cancelled output is measured over its terms' size, only through <see cref="OpCase.TermSize"/>: m = a + b with
    /// |a|, |b| ~ 1 and |m| ~ 1e-3 may be off by a few f32 ulp of 1, which is 1e-4 of |m|; an error of 1e-4 of the terms
    /// still fails, and says it was measured over them. An accumulated output may be off by 2 ulp of its delta.
    /// </summary>
    [Fact]
    public void CancelledOutputsAreMeasuredOverTheirTerms()
    {
        var rng = new Random(Random.Shared.Next());
        int n = 5;
        float[] a = new float[n], b = new float[n], m = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)(1 + rng.NextDouble());
            b[i] = -a[i] + (float)((rng.NextDouble() * 2 - 1) * 1e-3);
            m[i] = a[i] + b[i];
        }
        var slots = new List<OpContext.Result>
        {
            new("a", OpContext.SlotKind.Input, a, a, true, true, [n]), new("b", OpContext.SlotKind.Input, b, b, true, true, [n]),
            new("m", OpContext.SlotKind.Output, m, null, true, true, [n]),
        };
        float maxM = m.Max(Math.Abs);
        float[] Off(double by) { var x = (float[])m.Clone(); x[3] += (float)by; return x; }
        List<OpContext.Result> With(float[] values) => [slots[0], slots[1], slots[2] with { Values = values }];
        var plain = new OpCase("add", "test", 2e-6, 0, 0, _ => { });
        var terms = plain with
        {
            TermSize = (slot, r, _) =>
            {
                if (slot != "m") return null;
                float[] x = r.First(s => s.Name == "a").Values, y = r.First(s => s.Name == "b").Values;
                return i => Math.Abs(x[i]) + Math.Abs(y[i]);
            },
        };
        var fewUlps = With(Off(3 * 2.4e-7));   // 3 ulp of a term near 1.5: ~7e-7 absolute, ~1e-3 of max |m|
        Assert.False(OpCheck.Compare(plain, "cpu", slots, fewUlps, 1).Ok);
        Assert.True(OpCheck.Compare(terms, "cpu", slots, fewUlps, 1).Ok);
        var wrong = With(Off(1e-4));   // 3e-5 of the terms: a wrong result
        var r = OpCheck.Compare(terms, "cpu", slots, wrong, 1);
        Assert.False(r.Ok);
        Assert.Contains("m: max rel error", r.Problem);
        Assert.Contains("its terms' size", r.Problem);
        Assert.True(maxM < 2e-3);

        // dx = dx0 + delta with dx0 = -delta: the sum is 0 but the delta (2.09) was rounded to f32 before adding.
        float d0 = -2.09287f, delta = 2.09287f;
        float[] init = [d0, 1f];
        var acc = new OpContext.Result("dx", OpContext.SlotKind.Accumulate, [d0 + delta, 1.5f], init, true, true, [2]);
        var c0 = new OpCase("scale_backward", "test", 1e-7, 0, 0, _ => { });
        Assert.True(OpCheck.Compare(c0, "cpu", [acc], [acc with { Values = [d0 + delta + 2.4e-7f, 1.5f] }], 1).Ok);       // 1 ulp of the delta
        Assert.False(OpCheck.Compare(c0, "cpu", [acc], [acc with { Values = [d0 + delta + 3e-6f, 1.5f] }], 1).Ok);        // 12 ulp
    }

    /// <summary>
    /// The terms' size is per element: m = a + b where one element's terms are 1e4 and cancel, the others ~1. A few ulp of
    /// 1e4 there passes; an error of 1e-2 at an ordinary element (5e-3 of |m|, far over the budget) fails, although it is
    /// only 5e-7 of the cancelled element's terms (a slot-wide scale would have passed it).
    /// </summary>
    [Fact]
    public void OneCancelledElementDoesNotLoosenTheOthers()
    {
        var rng = new Random(Random.Shared.Next());
        int n = 6;
        float[] a = new float[n], b = new float[n], m = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)(1 + rng.NextDouble());
            b[i] = (float)rng.NextDouble();
        }
        a[5] = (float)(1e4 * (1 + rng.NextDouble()));
        b[5] = -a[5] + (float)(rng.NextDouble() * 1e-3);
        for (int i = 0; i < n; i++) m[i] = a[i] + b[i];
        var slots = new List<OpContext.Result>
        {
            new("a", OpContext.SlotKind.Input, a, a, true, true, [n]), new("b", OpContext.SlotKind.Input, b, b, true, true, [n]),
            new("m", OpContext.SlotKind.Output, m, null, true, true, [n]),
        };
        var terms = new OpCase("add", "test", 2e-6, 0, 0, _ => { })
        {
            TermSize = (slot, r, _) => slot == "m" ? i => Math.Abs(a[i]) + Math.Abs(b[i]) : null,
        };
        float[] Off(int at, double by) { var x = (float[])m.Clone(); x[at] += (float)by; return x; }
        List<OpContext.Result> With(float[] values) => [slots[0], slots[1], slots[2] with { Values = values }];
        Assert.True(OpCheck.Compare(terms, "cpu", slots, With(Off(5, 3 * 2e-3)), 1).Ok);   // ~3 ulp of a 2e4 term
        var r = OpCheck.Compare(terms, "cpu", slots, With(Off(2, 1e-2)), 1);
        Assert.False(r.Ok);
        Assert.True(r.MaxRelError > 1e-3, $"measured {r.MaxRelError:E2}: over the cancelled element's terms, not its own");
        Assert.Contains("[2]", r.Problem);
    }

    /// <summary>
    /// The case behind attention_backward's term size (OpRegistry.AttentionBackward): a batch whose mask keeps one key has
    /// p = 1 on it, so ds = p (dp - delta) and that key's dk are 0 in exact arithmetic; a forward that stored o in bf16 (the
    /// cuda backend's) makes delta = dO . o differ from dp = dO . v by bf16's rounding, and dk there is no longer ~0.
    /// Measured here against the scalar reference, with the cpu backend (delta from o, as the GPU's) given o rounded to bf16: the reference's dk at
    /// that key is ~0 beside its terms' size, the bf16 run's is not, and the check passes it over its terms while an
    /// error of 3x the budget at an ordinary key of the other batch still fails, although it is under the budget over the
    /// one-key row's terms (batch 1's dO is 30x batch 0's): the one-key row does not loosen the others.
    /// </summary>
    [Fact]
    public void AttentionBackwardOnAOneKeyRowIsMeasuredOverItsTerms()
    {
        int b = 2, h = 2, tq = 33, tk = 9, d = 16;
        var rng = new Random(Random.Shared.Next());
        using var reference = BackendFactory.Create("reference");
        using var cpu = BackendFactory.Create("cpu");           // delta = dO . o as the GPU kernels compute it (the reference sums p dp)
        float[] Draw(long count) { var x = new float[count]; for (long i = 0; i < count; i++) x[i] = OpContext.Normal(rng); return x; }
        float[] q = Draw(b * h * tq * d), k = Draw(b * h * tk * d), v = Draw(b * h * tk * d), dO = Draw(b * h * tq * d);
        var mask = new int[b * tk];
        for (int j = 0; j < tk; j++) mask[j] = 1;   // batch 0 keeps every key, batch 1 only key 0
        mask[tk] = 1;
        for (int i = h * tq * d; i < dO.Length; i++) dO[i] *= 30;   // batch 1's gradient 30x batch 0's: its terms dominate the slot
        float scale = 1f / MathF.Sqrt(d);
        (float[] Dq, float[] Dk, float[] Dv) Backward(IBackend be, bool bf16O)
        {
            using var tq_ = be.Empty(new(b, h, tq, d)); be.CopyFromHost(q, tq_);
            using var tk_ = be.Empty(new(b, h, tk, d)); be.CopyFromHost(k, tk_);
            using var tv = be.Empty(new(b, h, tk, d)); be.CopyFromHost(v, tv);
            using var tdo = be.Empty(new(b, h, tq, d)); be.CopyFromHost(dO, tdo);
            using var tm = be.Empty(new(b, tk), DType.I32); be.CopyFromHost(mask, tm);
            using var o = be.Empty(new(b, h, tq, d));                       // [b, h, tq, d]
            using var lse = be.Empty(new(b, h, tq));                        // [b, h, tq]
            be.Attention(tq_, tk_, tv, tm, scale, o, lse);
            if (bf16O)
            {
                var oh = o.ToArray();
                for (int i = 0; i < oh.Length; i++) oh[i] = BitConverter.UInt32BitsToSingle((uint)KernelVL.IO.SafeTensorsWriter.ToBf16(oh[i]) << 16);
                be.CopyFromHost(oh, o);
            }
            using var dq = be.Empty(new(b, h, tq, d)); be.Fill(dq, 0);
            using var dk = be.Empty(new(b, h, tk, d)); be.Fill(dk, 0);
            using var dv = be.Empty(new(b, h, tk, d)); be.Fill(dv, 0);
            be.AttentionBackward(tq_, tk_, tv, tm, scale, o, lse, tdo, dq, dk, dv);
            return (dq.ToArray(), dk.ToArray(), dv.ToArray());
        }
        var exact = Backward(reference, false);
        var rounded = Backward(cpu, true);
        List<OpContext.Result> Slots((float[] Dq, float[] Dk, float[] Dv) g) =>
        [
            new("q", OpContext.SlotKind.Input, q, q, true, true, [b, h, tq, d]), new("k", OpContext.SlotKind.Input, k, k, true, true, [b, h, tk, d]),
            new("v", OpContext.SlotKind.Input, v, v, true, true, [b, h, tk, d]), new("dO", OpContext.SlotKind.Input, dO, dO, true, true, [b, h, tq, d]),
            new("dq", OpContext.SlotKind.Output, g.Dq, null, true, true, [b, h, tq, d]),
            new("dk", OpContext.SlotKind.Output, g.Dk, null, true, true, [b, h, tk, d]),
            new("dv", OpContext.SlotKind.Output, g.Dv, null, true, true, [b, h, tk, d]),
        ];
        var ints = new Dictionary<string, int[]> { ["mask"] = mask };
        var c = OpRegistry.AttentionBackward(b, h, tq, tk, d, mask: true);
        var expected = Slots(exact);
        var termSize = c.TermSize!("dk", expected, ints)!;
        double maxDk = exact.Dk.Max(Math.Abs), worstCancelled = 0, worstRounded = 0, smallestTerms = double.MaxValue;
        for (int hh = 0; hh < h; hh++)
            for (int e = 0; e < d; e++)
            {
                int at = ((1 * h + hh) * tk + 0) * d + e;   // batch 1, key 0
                worstCancelled = Math.Max(worstCancelled, Math.Abs(exact.Dk[at]) / termSize(at));
                worstRounded = Math.Max(worstRounded, Math.Abs(rounded.Dk[at]) / termSize(at));
                smallestTerms = Math.Min(smallestTerms, termSize(at));
            }
        Assert.True(worstCancelled < 1e-5, $"the reference's dk at the one key: {worstCancelled:E2} of its terms (expected ~0)");
        Assert.True(worstRounded > 1e-4 && worstRounded < 2e-2, $"bf16 o's dk at the one key: {worstRounded:E2} of its terms");
        var passed = OpCheck.Compare(c, "cuda", expected, Slots(rounded), 1, BackendBudgets.Bf16, ints);
        Assert.True(passed.Ok, passed.Problem);
        // 3x the budget at batch 0, key 3 (over that element's own scale): fails although it is a small part of the
        // one-key row's terms in the same slot.
        int i0 = (0 * h * tk + 3) * d + 5;
        double error = 3 * BackendBudgets.Bf16 * Math.Max(maxDk, termSize(i0));
        Assert.True(error < 0.5 * BackendBudgets.Bf16 * smallestTerms, $"error {error:E2} beside the one-key row's terms {smallestTerms:E2}");
        var wrong = (float[])rounded.Dk.Clone();
        wrong[i0] += (float)error;
        var r = OpCheck.Compare(c, "cuda", expected, Slots((rounded.Dq, wrong, rounded.Dv)), 1, BackendBudgets.Bf16, ints);
        Assert.False(r.Ok);
        Assert.Contains("dk", r.Problem);
    }
}
