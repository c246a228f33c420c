using System.Runtime.Intrinsics;
using KernelVL.Backends.Cpu;

namespace KernelVL.Tests;

/// <summary>The Cpu backend's own numerics: its vector exp against Math.Exp (~1 ulp over the range softmax and GELU use), and the InfoNCE gradient of a big batch against f64.</summary>
public class CpuMathTests(Xunit.Abstractions.ITestOutputHelper output)
{
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
}
