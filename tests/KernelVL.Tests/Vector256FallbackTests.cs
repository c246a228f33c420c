using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Testing;

namespace KernelVL.Tests;

[CollectionDefinition(nameof(NarrowSimd), DisableParallelization = true)]
public sealed class NarrowSimd;

/// <summary>
/// The Cpu backend's hand-written SIMD has a Vector512 path and a Vector256 fallback. On an AVX-512 machine
/// the parity tests only see the first; these run the same registry cases with the 512-bit paths switched off.
/// </summary>
[Collection(nameof(NarrowSimd))]
public class Vector256FallbackTests
{
    private static readonly string[] Ops =
    [
        "matmul", "matmul_backward", "gelu", "gelu_backward", "softmax", "softmax_backward", "adamw", "attention", "attention_backward",
        "dropout", "dropout_backward", "cross_entropy", "cross_entropy_backward", "infonce", "infonce_backward", "bce_with_logits", "topk", "layernorm_backward",
    ];

    public static IEnumerable<object[]> Data() =>
        OpRegistry.TestCases().Select((c, i) => (c, i)).Where(x => Ops.Contains(x.c.Op)).Select(x => new object[] { x.i, x.c.ToString() });

    [SkippableTheory]
    [MemberData(nameof(Data))]
    public void MatchesReferenceWithoutVector512(int index, string name)
    {
        Skip.IfNot(System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated, "no Vector256 hardware: the scalar paths are what runs");
        var c = OpRegistry.TestCases().ElementAt(index);
        Assert.Equal(name, c.ToString());
        bool saved = CpuMath.Use512;
        CpuMath.Use512 = false;
        try
        {
            using var cpu = new CpuBackend();
            using var reference = new ReferenceBackend();
            var r = OpCheck.Run(c, cpu, reference, Random.Shared.Next());
            Assert.True(r.Ok, r.ToString());
        }
        finally
        {
            CpuMath.Use512 = saved;
        }
    }
}

/// <summary>The cpu backend's f16 widening in both vector widths.</summary>
[Collection(nameof(NarrowSimd))]
public class WidenHalvesTests
{
    /// <summary>WidenHalves against the runtime's scalar Half to float conversion on every one of the 65536 halves, in both
    /// vector widths, from every start offset of a 16-lane vector (tails included): the same bits, NaNs included.
    /// (In the NarrowSimd collection: it switches the 512-bit paths off, which no test running beside it may see.)</summary>
    [Fact]
    public unsafe void WidenHalvesIsExactOnEveryHalf()
    {
        var all = new Half[65536 + 40];
        for (int i = 0; i < 65536; i++) all[i] = BitConverter.UInt16BitsToHalf((ushort)i);
        var rng = new Random(Random.Shared.Next());
        for (int i = 65536; i < all.Length; i++) all[i] = BitConverter.UInt16BitsToHalf((ushort)rng.Next(65536));
        bool saved = CpuMath.Use512;
        try
        {
            foreach (bool wide in new[] { true, false })
            {
                CpuMath.Use512 = wide && saved;
                for (int start = 0; start < 17; start++)
                {
                    int n = all.Length - start - rng.Next(16);
                    var got = new float[n];
                    fixed (Half* src = all) fixed (float* dst = got) CpuMath.WidenHalves(src + start, dst, n);
                    for (int i = 0; i < n; i++)
                    {
                        float want = (float)all[start + i];
                        Assert.True(BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(got[i]),
                            $"half {BitConverter.HalfToUInt16Bits(all[start + i]):X4} (512-bit {CpuMath.Use512}, start {start}): {got[i]:R}, want {want:R}");
                    }
                }
            }
        }
        finally
        {
            CpuMath.Use512 = saved;
        }
    }
}
