using System.Runtime.Intrinsics;
using KernelVL.Backends.Cpu;

namespace KernelVL.Tests;

/// <summary>The Cpu backend's own vector exp against Math.Exp: ~1 ulp over the range softmax and GELU use.</summary>
public class CpuMathTests
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
}
