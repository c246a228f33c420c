using KernelVL.Backends;
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
