using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Model;
using KernelVL.Tensors;

namespace KernelVL.Tests;

public class VlModelTests
{
    internal static readonly VlTransformerConfig Micro = VlTransformerConfig.Preset("tiny") with
    {
        VocabSize = 11, HiddenSize = 8, NumHeads = 2, NumLayers = 1, IntermediateSize = 12, MaxTextLength = 6,
        ImageSize = 8, MaxImageSide = 8, PatchSize = 4, HiddenDropout = 0f,
    };

    internal static VlBatch Batch(Random rng, int b, bool text, bool image, int gridH = 3, int gridW = 2)
    {
        int t = 5, n = gridH * gridW, pp = 3 * Micro.PatchSize * Micro.PatchSize;
        return new VlBatch(b,
            TextIds: text ? Enumerable.Range(0, b * t).Select(_ => rng.Next(Micro.VocabSize)).ToArray() : null,
            TextMask: text ? Enumerable.Range(0, b * t).Select(i => i % t < t - (i / t) ? 1 : 0).ToArray() : null,
            TextLength: text ? t : 0,
            Images: image ? new PatchBatch(Enumerable.Range(0, b * n * pp).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), n,
                Enumerable.Repeat(gridH, b).ToArray(), Enumerable.Repeat(gridW, b).ToArray()) : null);
    }

    [Fact]
    public void ParametersCarryThePublicViltNamesAndShapes()
    {
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro, seed: 1);
        var p = m.NamedParameters().ToDictionary(x => x.Name, x => x.Tensor.Shape.ToArray());
        Assert.Equal([11, 8], p["vilt.embeddings.text_embeddings.word_embeddings.weight"]);
        Assert.Equal([6, 8], p["vilt.embeddings.text_embeddings.position_embeddings.weight"]);
        Assert.Equal([2, 8], p["vilt.embeddings.text_embeddings.token_type_embeddings.weight"]);
        Assert.Equal([8], p["vilt.embeddings.text_embeddings.LayerNorm.weight"]);
        Assert.Equal([1, 1, 8], p["vilt.embeddings.cls_token"]);
        Assert.Equal([1, 1 + 4, 8], p["vilt.embeddings.position_embeddings"]);
        Assert.Equal([8, 3, 4, 4], p["vilt.embeddings.patch_embeddings.projection.weight"]);
        Assert.Equal([8], p["vilt.embeddings.patch_embeddings.projection.bias"]);
        Assert.Equal([2, 8], p["vilt.embeddings.token_type_embeddings.weight"]);
        Assert.Equal([8, 8], p["vilt.encoder.layer.0.attention.attention.query.weight"]);
        Assert.Equal([8], p["vilt.layernorm.weight"]);
        Assert.Equal([8, 8], p["vilt.pooler.dense.weight"]);
        Assert.Equal([1, 8], p["rank_output.weight"]);
    }

    [Fact]
    public void MatchScoreGradientsMatchFiniteDifferencesThroughTheWholeModel()
    {
        // Text + images on a 3x2 patch grid (the trained grid is 2x2: the position embeddings are resampled).
        using var be = new ReferenceBackend();
        int seed = Random.Shared.Next();
        using var m = new VlModel(be, Micro, seed, DType.F64, heads: VlHeads.Rank);
        var rng = new Random(seed);
        foreach (var (_, p) in m.NamedParameters()) foreach (ref double v in GradCheckTests.D(p)) v += 0.2 * GradCheckTests.Normal(rng);
        var batch = Batch(rng, 2, text: true, image: true);
        GradCheckTests.Check(be, rng, () => m.Score(batch), m.Parameters().ToArray(), budget: 1e-6, maxProbes: 6);
    }

    [Fact]
    public void DecomposedEmbeddingsAreUnitVectorsOfOneModalityAndScoresArePerPair()
    {
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro, seed: 3);
        var rng = new Random(5);
        using var scope = new TensorScope();
        var t = m.Embed(Batch(rng, 3, text: true, image: false)).ToArray();
        var v = m.Embed(Batch(rng, 4, text: false, image: true, gridH: 2, gridW: 2)).ToArray();
        Assert.Equal(3 * 8, t.Length);
        Assert.Equal(4 * 8, v.Length);
        for (int i = 0; i < 3; i++) Assert.Equal(1.0, Math.Sqrt(t.Skip(i * 8).Take(8).Sum(x => (double)x * x)), 5);
        Assert.Equal(2, m.Score(Batch(rng, 2, text: true, image: true)).Numel);
        Assert.Throws<ShapeException>(() => m.Embed(Batch(rng, 2, text: true, image: true)));
    }
}
