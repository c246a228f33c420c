using System.Runtime.Intrinsics;
using KernelVL.Backends.Cpu;

namespace KernelVL.Tests;

/// <summary>The Cpu backend's own numerics: its vector exp against Math.Exp (~1 ulp over the range softmax and GELU use), and the InfoNCE gradient of a big batch against f64.</summary>
public class CpuMathTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>
    /// The cpu backend's top-k over host rows (f32 and f16, as an index segment is mapped) against an f64 brute force over
    /// the same (widened) values: every reported score within 2e-6 of its row's exact score (relative to the largest),
    /// no row missed that beats the k-th by more than that, scores descending, exact ties to the lower row; and bit for bit
    /// what TopK gives on the widened rows as a tensor. Shapes cross the 2048-row tiles and the 64-query blocks, and take
    /// the dot-product path (up to four queries), both GEMM layouts and several query groups; integer-valued rows make exact ties.
    /// </summary>
    [Fact]
    public void HostRowsTopKMatchesAnF64BruteForceOnF32AndF16Rows()
    {
        var rng = new Random(Random.Shared.Next());
        using var be = new CpuBackend();
        foreach (var (q, n, d, k, ties) in new[] { (1, 1, 3, 1, false), (2, 2049, 24, 10, false), (3, 1025, 7, 17, true), (65, 4100, 16, 5, false), (1, 5000, 33, 64, true), (130, 3000, 8, 1, true), (4, 300, 5, 300, false) })
            foreach (bool half in new[] { false, true })
            {
                float Gen() => ties ? rng.Next(-2, 3) : (float)(rng.NextDouble() * 2 - 1);
                var qs = Enumerable.Range(0, q * d).Select(_ => Gen()).ToArray();
                var cs = Enumerable.Range(0, n * d).Select(_ => Gen()).ToArray();
                var halves = cs.Select(x => (Half)x).ToArray();
                var wide = half ? halves.Select(x => (float)x).ToArray() : cs;
                using var scope = new KernelVL.Autograd.TensorScope();
                var qt = be.Empty(new KernelVL.Tensors.Shape(q, d));
                be.CopyFromHost(qs, qt);
                var sc = be.Empty(new KernelVL.Tensors.Shape(q, k));
                var ix = be.Empty(new KernelVL.Tensors.Shape(q, k), KernelVL.Tensors.DType.I32);
                if (half) be.TopKRows(qt, halves, k, sc, ix);
                else be.TopKRows(qt, cs, k, sc, ix);
                var got = sc.Span.ToArray();
                var gotI = ix.SpanI32.ToArray();
                // The same search on the widened rows as a tensor: the same code path, so the same bits.
                var ct = be.Empty(new KernelVL.Tensors.Shape(n, d));
                be.CopyFromHost(wide, ct);
                var sc2 = be.Empty(new KernelVL.Tensors.Shape(q, k));
                var ix2 = be.Empty(new KernelVL.Tensors.Shape(q, k), KernelVL.Tensors.DType.I32);
                be.TopK(qt, ct, k, sc2, ix2);
                Assert.Equal(sc2.Span.ToArray(), got);
                Assert.Equal(ix2.SpanI32.ToArray(), gotI);
                string what = $"Q{q} N{n} D{d} k{k}{(ties ? " ties" : "")} {(half ? "f16" : "f32")}";
                for (int i = 0; i < q; i++)
                {
                    var exact = Enumerable.Range(0, n).Select(r => Enumerable.Range(0, d).Sum(j => (double)qs[i * d + j] * wide[r * d + j])).ToArray();
                    double tol = 2e-6 * Math.Max(1, exact.Max(Math.Abs));
                    var sorted = exact.OrderDescending().ToArray();
                    for (int j = 0; j < k; j++)
                    {
                        int row = gotI[i * k + j];
                        Assert.InRange(row, 0, n - 1);
                        Assert.True(Math.Abs(exact[row] - got[i * k + j]) <= tol, $"{what} query {i} rank {j}: row {row} scored {got[i * k + j]}, exact {exact[row]}");
                        Assert.True(got[i * k + j] >= sorted[j] - tol, $"{what} query {i} rank {j}: {got[i * k + j]} below the exact rank-{j} score {sorted[j]}");
                        if (j > 0)
                        {
                            float a0 = got[i * k + j - 1], a1 = got[i * k + j];
                            Assert.True(a0 > a1 || (a0 == a1 && gotI[i * k + j - 1] < row), $"{what} query {i}: ranks {j - 1} and {j} out of order");
                        }
                    }
                    Assert.Equal(k, gotI.Skip(i * k).Take(k).Distinct().Count());
                    // Small integers: every score exact in f32, so the rows are exactly the first k by (score, then lower row).
                    if (ties)
                        Assert.Equal(Enumerable.Range(0, n).OrderByDescending(r => exact[r]).ThenBy(r => r).Take(k), gotI.Skip(i * k).Take(k));
                }
            }
        var qbad = be.Empty(new KernelVL.Tensors.Shape(1, 4));
        var sbad = be.Empty(new KernelVL.Tensors.Shape(1, 1));
        var ibad = be.Empty(new KernelVL.Tensors.Shape(1, 1), KernelVL.Tensors.DType.I32);
        Assert.Throws<KernelVL.ShapeException>(() => be.TopKRows(qbad, new float[6], 1, sbad, ibad));
    }

    [Fact]
    public void VectorExpIsWithinTwoUlpAndMapsMaskedScoresToZero()
    {
        var rng = new Random(Random.Shared.Next());
        double worst = 0;
        for (int rep = 0; rep < 20_000; rep++)
        {
            var v = new float[16];
            for (int i = 0; i < 16; i++) v[i] = (float)(rng.NextDouble() * 175 - 87);   // [-87, 88)
            var e512 = CpuMath.Exp(Vector512.Create(v));
            var e256 = CpuMath.Exp(Vector256.Create(v.AsSpan(0, 8)));
            for (int i = 0; i < 16; i++)
            {
                double want = Math.Exp(v[i]);
                worst = Math.Max(worst, Math.Abs(e512[i] - want) / want);
                if (i < 8) Assert.Equal(e512[i], e256[i]);
            }
        }
        Assert.True(worst < 2.5e-7, $"max relative error {worst:E2}");
        var special = CpuMath.Exp(Vector512.Create(float.NegativeInfinity, -1000f, -88f, 0f, 1f, -1f, 10f, -10f, 0, 0, 0, 0, 0, 0, 0, 0));
        Assert.Equal(0f, special[0]);
        Assert.Equal(0f, special[1]);
        Assert.Equal(0f, special[2]);
        Assert.Equal(1f, special[3]);
        Assert.Equal(MathF.E, special[4], 6);
    }

    [Fact]
    public void InfoNceGradientOfABigBatchAccumulatesOntoLargeValuesWithOneRounding()
    {
        // N = 4096 (a real contrastive batch): the gradient GEMM's K is N, 16 K panels. dt and dv accumulate onto
        // values ~100x larger than the gradient: the result must be init + (the gradient summed whole), rounded once,
        // not rounded against the init after every panel (which cost 1.5e-3 of the gradient before).
        int n = 4096, d = 8;
        float invT = 20f;
        var rng = new Random(Random.Shared.Next());
        float[] Unit()
        {
            var x = new float[n * d];
            for (int i = 0; i < n; i++)
            {
                double s = 0;
                for (int c = 0; c < d; c++) { x[i * d + c] = (float)(rng.NextDouble() * 2 - 1); s += x[i * d + c] * (double)x[i * d + c]; }
                for (int c = 0; c < d; c++) x[i * d + c] = (float)(x[i * d + c] / Math.Sqrt(s));
            }
            return x;
        }
        var th = Unit(); var vh = Unit();
        var init = new float[n * d];
        for (int i = 0; i < init.Length; i++) init[i] = (float)(rng.NextDouble() * 6 - 3);
        using var b = new CpuBackend();
        using var t = b.Empty(new KernelVL.Tensors.Shape(n, d)); using var v = b.Empty(new KernelVL.Tensors.Shape(n, d));
        using var loss = b.Empty(new KernelVL.Tensors.Shape(1)); using var dl = b.Empty(new KernelVL.Tensors.Shape(1));
        using var lr = b.Empty(new KernelVL.Tensors.Shape(n)); using var lc = b.Empty(new KernelVL.Tensors.Shape(n));
        using var dt = b.Empty(new KernelVL.Tensors.Shape(n, d)); using var dv = b.Empty(new KernelVL.Tensors.Shape(n, d));
        b.CopyFromHost(th, t); b.CopyFromHost(vh, v); b.CopyFromHost(init, dt); b.CopyFromHost(init, dv); b.Fill(dl, 1f);
        b.InfoNce(t, v, invT, loss, lr, lc);
        b.InfoNceBackward(t, v, invT, lr, lc, dl, dt, dv);
        var gotT = new float[n * d]; var gotV = new float[n * d];
        b.CopyToHost(dt, gotT); b.CopyToHost(dv, gotV);

        // f64: S, both log-sum-exps, G = (softmax rows + softmax columns - 2 I) / n * invT, dt = G v, dv = G^T t.
        var S = new double[(long)n * n];
        Parallel.For(0, n, i => { for (int j = 0; j < n; j++) { double s = 0; for (int c = 0; c < d; c++) s += (double)th[i * d + c] * vh[j * d + c]; S[(long)i * n + j] = s * invT; } });
        double Lse(Func<int, double> x) { double m = double.MinValue; for (int j = 0; j < n; j++) m = Math.Max(m, x(j)); double s = 0; for (int j = 0; j < n; j++) s += Math.Exp(x(j) - m); return m + Math.Log(s); }
        var lseR = new double[n]; var lseC = new double[n];
        Parallel.For(0, n, i => { lseR[i] = Lse(j => S[(long)i * n + j]); lseC[i] = Lse(j => S[(long)j * n + i]); });
        double g = invT / n;
        var refT = new double[n * d]; var refV = new double[n * d];
        Parallel.For(0, n, i =>
        {
            for (int j = 0; j < n; j++)
            {
                double gij = g * (Math.Exp(S[(long)i * n + j] - lseR[i]) + Math.Exp(S[(long)i * n + j] - lseC[j]) - (i == j ? 2 : 0));
                double gji = g * (Math.Exp(S[(long)j * n + i] - lseR[j]) + Math.Exp(S[(long)j * n + i] - lseC[i]) - (i == j ? 2 : 0));
                for (int c = 0; c < d; c++) { refT[i * d + c] += gij * vh[j * d + c]; refV[i * d + c] += gji * th[j * d + c]; }
            }
        });
        foreach (var (got, want, name) in new[] { (gotT, refT, "dt"), (gotV, refV, "dv") })
        {
            double maxRef = want.Max(Math.Abs), err = 0;
            for (int i = 0; i < got.Length; i++)
            {
                double exact = init[i] + want[i];
                err = Math.Max(err, Math.Abs(got[i] - exact) - Math.Pow(2, -24) * Math.Abs(exact));   // beyond the one rounding
            }
            output.WriteLine($"{name}: error beyond one rounding {err / maxRef:E2} of max |gradient| {maxRef:E2}");
            Assert.True(err / maxRef < 1e-5, $"{name}: error beyond one rounding {err / maxRef:E2} of max |gradient| {maxRef:E2}");
        }
    }

    [Fact]
    public void ErfcKeepsItsRelativeAccuracyWhereItIsTiny()
    {
        (double X, double Erfc)[] golden =
        [
            (-5.5, 1.9999999999999927), (-3, 1.9999779095030015), (-1, 1.842700792949715), (0.5, 0.4795001221869535),
            (1.9, 0.0072095707647425325), (2, 0.004677734981047265), (2.1, 0.002979466656332984), (3, 2.2090496998585438e-05),
            (5, 1.5374597944280351e-12), (8, 1.1224297172982928e-29), (12, 1.3562611692059042e-64),
        ];
        foreach (var (x, want) in golden)
            Assert.True(Math.Abs(SpecialFunctions.Erfc(x) - want) <= 1e-13 * want, $"erfc({x}) = {SpecialFunctions.Erfc(x):R}, C's {want:R}");
        var rng = new Random(Random.Shared.Next());
        for (int i = 0; i < 200; i++)
        {
            double x = 2 + rng.NextDouble() * 0.5, e = SpecialFunctions.Erfc(x);
            Assert.True(Math.Abs(e - (1 - SpecialFunctions.Erf(x))) <= 2e-15, $"erfc({x:R}) = {e:R}, 1 - erf {1 - SpecialFunctions.Erf(x):R}");   // erf's few ulp of 1
        }
        Assert.Equal(0, SpecialFunctions.Erfc(30));
        Assert.Equal(2, SpecialFunctions.Erfc(-30));
    }

    /// <summary>
    /// GELU x Phi(x) keeps its relative accuracy deep in its tail (x down to -10, y ~ 1e-22), on the fast cpu backend
    /// (512- and 256-bit and scalar paths: 1003 elements) and the ILGPU kernel: the exponent -x^2/2 of erfc's fit, rounded
    /// three times in f32, had cost up to ~7e-6 of y there (gelu 1x1 failed its 2e-6 budget 1 seed in 200). The backward's
    /// Phi + x phi is measured over Phi + |x| phi (it crosses 0 near x = -0.75).
    /// </summary>
    [Theory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    public void GeluIsAccurateDeepInItsTail(string backend)
    {
        int n = 1003;
        var rng = new Random(Random.Shared.Next());
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 13 - 10);   // [-10, 3)
        using var b = KernelVL.Backends.BackendFactory.Create(backend);
        using var tx = b.Empty(new KernelVL.Tensors.Shape(n)); b.CopyFromHost(x, tx);
        using var ty = b.Empty(new KernelVL.Tensors.Shape(n));
        using var dy = b.Empty(new KernelVL.Tensors.Shape(n)); b.Fill(dy, 1f);
        using var dx = b.Empty(new KernelVL.Tensors.Shape(n)); b.Fill(dx, 0f);
        b.Gelu(tx, ty);
        b.GeluBackward(tx, dy, dx);
        float[] y = ty.ToArray(), g = dx.ToArray();
        // Each element within 6e-7 (the fit's 1.2e-7, exp's ulp, the polynomial's and the products' roundings: ~5 ulp
        // measured near x = 0) plus
        // u (x^2 / 2 + 1.3) (u = 2^-24): one rounding of the exponent -x^2/2 + P, which f32 cannot avoid. Reported as a fraction of that.
        double worstY = 0, worstG = 0;
        for (int i = 0; i < n; i++)
        {
            double v = x[i], cdf = 0.5 * SpecialFunctions.Erfc(-v / Math.Sqrt(2)), pdf = Math.Exp(-0.5 * v * v) / Math.Sqrt(2 * Math.PI);
            double bound = 6e-7 + Math.ScaleB(1.0, -24) * (v * v / 2 + 1.3);   // the exponent is -x^2/2 + P, P >= -1.27
            worstY = Math.Max(worstY, Math.Abs(y[i] - v * cdf) / Math.Abs(v * cdf) / bound);
            worstG = Math.Max(worstG, Math.Abs(g[i] - (cdf + v * pdf)) / (cdf + Math.Abs(v) * pdf) / bound);
        }
        output.WriteLine($"{backend}: gelu worst error {worstY:F2} of its bound, backward {worstG:F2} (over Phi + |x| phi)");
        Assert.True(worstY <= 1, $"gelu: error {worstY:F2} times the bound 6e-7 + u (x^2 / 2 + 1.3)");
        Assert.True(worstG <= 1, $"gelu backward: error {worstG:F2} times the bound 6e-7 + u (x^2 / 2 + 1.3)");
    }
}

/// <summary>Counts the whole process's allocations (the op runs on pool threads): in the Alone collection, so that no
/// other test allocates meanwhile (beside others it read 3.8 MB of theirs once and failed).</summary>
[Collection(nameof(Alone))]
public class CpuAllocationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void MulBackwardOfABroadcastFactorSumsItsColumnsInPlace()
    {
        // y = a * b with b [C] broadcast over a [R, C]: db[j] += sum_r dy[r, j] a[r, j]. At 8192 x 768 (the perf shape)
        // it once built the products in a managed array of dy's size (25 MB a call) and ran 50x slower than add's backward.
        int r = 8192, c = 768, seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        float[] Rand(int count, double lo, double hi) { var x = new float[count]; for (int i = 0; i < count; i++) x[i] = (float)(lo + (hi - lo) * rng.NextDouble()); return x; }
        float[] ah = Rand(r * c, -2, 2), bh = Rand(c, -2, 2), dyh = Rand(r * c, -1, 1), da0 = Rand(r * c, -1, 1), db0 = Rand(c, -50, 50);
        using var be = new CpuBackend();
        using var a = be.Empty(new KernelVL.Tensors.Shape(r, c)); using var b = be.Empty(new KernelVL.Tensors.Shape(c));
        using var dy = be.Empty(new KernelVL.Tensors.Shape(r, c)); using var da = be.Empty(new KernelVL.Tensors.Shape(r, c));
        using var db = be.Empty(new KernelVL.Tensors.Shape(c));
        be.CopyFromHost(ah, a); be.CopyFromHost(bh, b); be.CopyFromHost(dyh, dy); be.CopyFromHost(da0, da); be.CopyFromHost(db0, db);
        be.MulBackward(a, b, dy, da, db);   // warm-up: the thread pool's and the JIT's own allocations
        be.CopyFromHost(da0, da); be.CopyFromHost(db0, db);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        be.MulBackward(a, b, dy, da, db);
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        var gotA = new float[r * c]; var gotB = new float[c];
        be.CopyToHost(da, gotA); be.CopyToHost(db, gotB);

        // da: one FMA an element, so within one rounding of the f64 value; db: a sum of R terms, blocked, so within
        // 1e-5 (about 170 roundings) of the column's sum of |terms| and |init|.
        double worstA = 0, worstB = 0;
        for (int i = 0; i < r * c; i++)
        {
            double exact = da0[i] + (double)dyh[i] * bh[i % c];
            worstA = Math.Max(worstA, Math.Abs(gotA[i] - exact) / (Math.Pow(2, -24) * Math.Abs(exact) + 1e-30));
        }
        for (int j = 0; j < c; j++)
        {
            double exact = db0[j], size = Math.Abs(db0[j]);
            for (int i = 0; i < r; i++) { double t = (double)dyh[(long)i * c + j] * ah[(long)i * c + j]; exact += t; size += Math.Abs(t); }
            worstB = Math.Max(worstB, Math.Abs(gotB[j] - exact) / size);
        }
        output.WriteLine($"da: worst error {worstA:F2} roundings; db: worst error {worstB:E2} of its terms' size; {allocated} bytes allocated");
        Assert.True(worstA <= 1.0, $"da: {worstA:F2} roundings from f64");
        Assert.True(worstB < 1e-5, $"db: {worstB:E2} of its terms' size from f64");
        Assert.True(allocated < 1 << 20, $"mul backward allocated {allocated} managed bytes (dy is {4L * r * c})");
    }

    /// <summary>
    /// SpecialFunctions.Erfc against C's erfc (values printed by Python's math.erfc, an independent implementation),
    /// down to 1e-64; and beside 1 - erf (within erf's few ulp of 1) just above x = 2, where the continued fraction takes over.
    /// </summary>
}
