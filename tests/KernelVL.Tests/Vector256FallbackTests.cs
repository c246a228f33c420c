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
