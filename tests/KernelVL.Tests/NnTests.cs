using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Model;
using KernelVL.Nn;
using KernelVL.Tensors;

namespace KernelVL.Tests;

public class NnTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvl-nn-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly VlTransformerConfig Tiny = VlTransformerConfig.Preset("tiny") with { HiddenDropout = 0f };

    [Fact]
    public void ViltAndBertLayersUseThePublicCheckpointNames()
    {
        using var be = new CpuBackend();
        using var vilt = new TransformerLayer(be, Tiny, new Random(1));
        Assert.Equal(
        [
            "p.layernorm_before.weight", "p.layernorm_before.bias",
            "p.attention.attention.query.weight", "p.attention.attention.query.bias",
            "p.attention.attention.key.weight", "p.attention.attention.key.bias",
            "p.attention.attention.value.weight", "p.attention.attention.value.bias",
            "p.attention.output.dense.weight", "p.attention.output.dense.bias",
            "p.layernorm_after.weight", "p.layernorm_after.bias",
            "p.intermediate.dense.weight", "p.intermediate.dense.bias",
            "p.output.dense.weight", "p.output.dense.bias",
        ], vilt.NamedParameters("p.").Select(p => p.Name));
        using var bert = new TransformerLayer(be, Tiny with { Family = VlFamily.Oscar }, new Random(1));
        var names = bert.NamedParameters().Select(p => p.Name).ToArray();
        Assert.Contains("attention.self.query.weight", names);
        Assert.Contains("attention.output.LayerNorm.weight", names);
        Assert.Contains("output.LayerNorm.bias", names);
        Assert.Equal([Tiny.HiddenSize, Tiny.HiddenSize], vilt.NamedParameters().First(p => p.Name == "attention.attention.query.weight").Tensor.Shape.ToArray());
    }

    [Theory]
    [InlineData(VlFamily.Vilt)]
    [InlineData(VlFamily.Oscar)]
    public void LayerGradientsMatchFiniteDifferencesInF64(VlFamily family)
    {
        using var be = new ReferenceBackend();
        var cfg = Tiny with { Family = family, HiddenSize = 8, NumHeads = 2, IntermediateSize = 12 };
        using var layer = new TransformerLayer(be, cfg, new Random(Random.Shared.Next()), DType.F64);
        var rng = new Random(Random.Shared.Next());
        using var x = be.Empty(new Shape(2, 5, 8), DType.F64);
        foreach (ref double v in GradCheckTests.D(x)) v = GradCheckTests.Normal(rng);
        x.RequiresGrad = true;
        using var mask = be.Empty(new Shape(2, 5), DType.I32);
        be.CopyFromHost(new[] { 1, 1, 1, 1, 1, 1, 1, 1, 0, 0 }, mask);
        // Layer-norm gammas start at 1 and betas at 0: perturb them so their gradients are generic.
        foreach (var (_, p) in layer.NamedParameters()) foreach (ref double v in GradCheckTests.D(p)) v += 0.1 * GradCheckTests.Normal(rng);
        GradCheckTests.Check(be, rng, () => layer.Forward(x, mask), [x, .. layer.Parameters()], budget: 1e-6, maxProbes: 10);
    }

    [Fact]
    public void CheckpointsRoundTripAndMismatchesAreNamed()
    {
        using var be = new CpuBackend();
        using var a = new TransformerLayer(be, Tiny, new Random(7));
        using var b = new TransformerLayer(be, Tiny, new Random(8));
        string path = Path.Combine(_dir, "layer.safetensors");
        StateDict.Save(a, path, "vilt.encoder.layer.0.");
        StateDict.Load(b, path, "vilt.encoder.layer.0.");
        foreach (var ((na, ta), (nb, tb)) in a.NamedParameters().Zip(b.NamedParameters()))
            Assert.Equal(ta.ToArray(), tb.ToArray());

        using var wide = new TransformerLayer(be, Tiny with { IntermediateSize = 80 }, new Random(9));
        var e = Assert.Throws<BadInputException>(() => StateDict.Load(wide, path, "vilt.encoder.layer.0."));
        Assert.Contains("vilt.encoder.layer.0.intermediate.dense.weight is [64, 32], the model needs [80, 32]", e.Message);
        var e2 = Assert.Throws<BadInputException>(() => StateDict.Load(b, path, "vilt.encoder.layer.1."));
        Assert.Contains("16 missing: vilt.encoder.layer.1.layernorm_before.weight [32]", e2.Message);
        Assert.Contains("16 unknown: vilt.encoder.layer.0.", e2.Message);
    }

    [Fact]
    public void ALayerRunsOnTheCpuBackendAndItsGradientsReachEveryParameter()
    {
        using var be = new CpuBackend();
        using var layer = new TransformerLayer(be, Tiny with { HiddenDropout = 0.1f }, new Random(3));
        using var scope = new TensorScope();
        var x = be.Empty(new Shape(3, 7, Tiny.HiddenSize));
        be.CopyFromHost(Enumerable.Range(0, 3 * 7 * Tiny.HiddenSize).Select(i => MathF.Sin(i * 0.37f)).ToArray(), x);
        var y = layer.Forward(x, null, training: true, seed: 5);
        Assert.Equal(x.Shape, y.Shape);
        Tape.Backward(Ops.SumAll(Ops.Mul(y, y)));
        foreach (var (name, p) in layer.NamedParameters())
            Assert.True(p.Grad is not null && p.Grad.ToArray().Any(v => v != 0), $"{name} got no gradient");
    }
}
