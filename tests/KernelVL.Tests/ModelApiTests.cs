using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Model;
using KernelVL.Tensors;
using KernelVL.Text;

namespace KernelVL.Tests;

/// <summary>The model's API around the graph: heads, checkpoints, batching with padding, patch caps, the Oscar variant.</summary>
public sealed class ModelApiTests : IDisposable
{
    private static readonly VlTransformerConfig Micro = VlModelTests.Micro;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-model-" + Guid.NewGuid().ToString("N"));

    public ModelApiTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "left"];

    private TextTokenizer Vocab()
    {
        string path = Path.Combine(_dir, "vocab.txt");
        File.WriteAllLines(path, Words);
        return TextTokenizer.Load(path, Micro.MaxTextLength);
    }

    private static PreparedImage RandomImage(Random rng, int h, int w)
        => new(Enumerable.Range(0, 3 * h * w).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), h, w);

    private static void Close(float[] expected, float[] actual, double budget)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Max(x => Math.Abs((double)x)), worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - (double)actual[i]));
        Assert.True(worst <= budget * scale, $"max error {worst:E2} over max |ref| {scale:E2} is above {budget:E1}");
    }

    [Fact]
    public void HeadsCarryTheirCheckpointNames()
    {
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro, seed: 1);
        var p = m.NamedParameters().ToDictionary(x => x.Name, x => x.Tensor.Shape.ToArray());
        Assert.Equal([2, 8], p["itm_score.fc.weight"]);
        Assert.Equal([8, 8], p["mlm_score.transform.dense.weight"]);
        Assert.Equal([8], p["mlm_score.transform.LayerNorm.weight"]);
        Assert.Equal([11], p["mlm_score.bias"]);
        Assert.DoesNotContain("mlm_score.decoder.weight", p.Keys);   // tied to the word embeddings
        Assert.Equal(VlHeads.All, VlModel.HeadsIn(p.Keys));
        using var bare = new VlModel(be, Micro, seed: 1, heads: VlHeads.None);
        Assert.DoesNotContain(bare.NamedParameters(), x => x.Name.StartsWith("rank_output", StringComparison.Ordinal));
        Assert.Equal(VlHeads.None, VlModel.HeadsIn(bare.NamedParameters().Select(x => x.Name)));
    }

    [Fact]
    public void EmbeddingsAndScoresDoNotDependOnWhatElseIsInTheBatch()
    {
        // Captions of different lengths and images of different sizes are padded together; each result must equal the
        // one computed alone (the padding is masked out of attention and pooling).
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro, seed: 7) { Tokenizer = Vocab() };
        var rng = new Random(Random.Shared.Next());
        var captions = new[] { "a red circle", "blue", "a blue square left a red circle", "square" };
        var images = new[] { RandomImage(rng, 8, 12), RandomImage(rng, 4, 4), RandomImage(rng, 12, 8), RandomImage(rng, 8, 8) };
        var enc = new DecomposedEncoder(m, batchSize: 4);
        var t = enc.EncodeTexts(captions);
        var v = enc.EncodeImages(images);
        var s = m.ScorePairs(images, captions, batchSize: 4);
        for (int i = 0; i < 4; i++)
        {
            Close(new DecomposedEncoder(m, 1).EncodeTexts([captions[i]]), t[(i * 8)..(i * 8 + 8)], 1e-5);
            Close(new DecomposedEncoder(m, 1).EncodeImages([images[i]]), v[(i * 8)..(i * 8 + 8)], 1e-5);
            Assert.Equal(m.MatchScore(images[i], captions[i]), s[i], 1e-5f * Math.Max(1f, Math.Abs(s[i])));
            Assert.Equal(1.0, Math.Sqrt(t.Skip(i * 8).Take(8).Sum(x => (double)x * x)), 5);
        }
        Assert.NotEqual(t[..8], t[8..16]);
    }

    [Fact]
    public void ScoreFallsBackToTheItmHeadWithoutARankHead()
    {
        using var be = new ReferenceBackend();
        using var m = new VlModel(be, Micro, seed: 2, DType.F64, heads: VlHeads.Itm);
        var batch = VlModelTests.Batch(new Random(3), 2, text: true, image: true);
        using var scope = new TensorScope();
        var logits = m.ItmLogits(m.Pooled(m.Encode(batch))).ToArray();
        var score = m.Score(batch).ToArray();
        for (int i = 0; i < 2; i++) Assert.Equal(logits[2 * i + 1] - logits[2 * i], score[i], 1e-5);
        Assert.Throws<BadInputException>(() => m.RankScore(m.Pooled(m.Encode(batch))));
    }

    [Fact]
    public void ItmAndMlmGradientsMatchFiniteDifferences()
    {
        using var be = new ReferenceBackend();
        int seed = Random.Shared.Next();
        using var m = new VlModel(be, Micro, seed, DType.F64, heads: VlHeads.Itm | VlHeads.Mlm);
        var rng = new Random(seed);
        foreach (var (_, p) in m.NamedParameters()) foreach (ref double x in GradCheckTests.D(p)) x += 0.2 * GradCheckTests.Normal(rng);
        var batch = VlModelTests.Batch(rng, 2, text: true, image: true);
        var itmTargets = be.Empty(new Shape(2), DType.I32);
        be.CopyFromHost([1, 0], itmTargets);
        var mlmTargets = be.Empty(new Shape(10), DType.I32);
        be.CopyFromHost([-1, 3, -1, -1, 7, -1, 9, -1, -1, -1], mlmTargets);
        GradCheckTests.Check(be, rng, () =>
        {
            var e = m.Encode(batch);
            var itm = Ops.CrossEntropy(m.ItmLogits(m.Pooled(e)), itmTargets);
            var mlm = Ops.CrossEntropy(Ops.Reshape(m.MlmLogits(e), 10, Micro.VocabSize), mlmTargets);
            return Ops.Add(itm, mlm);
        }, m.Parameters().ToArray(), budget: 1e-6, maxProbes: 6);
    }

    [Fact]
    public void MaxImageLengthSamplesThatManyPatchesReproducibly()
    {
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro with { MaxImageLength = 4 }, seed: 4);
        var batch = VlModelTests.Batch(new Random(5), 2, text: false, image: true, gridH: 3, gridW: 3);
        using var scope = new TensorScope();
        var e = m.Encode(batch, seed: 11);
        Assert.Equal(1 + 4, e.Hidden.Shape[1]);
        Assert.Equal(m.Embed(batch, seed: 11).ToArray(), m.Embed(batch, seed: 11).ToArray());
        Assert.NotEqual(m.Embed(batch, seed: 11).ToArray(), m.Embed(batch, seed: 12).ToArray());
    }

    [Fact]
    public void ACheckpointFolderRoundTripsAndBadOnesAreNamed()
    {
        using var be = new CpuBackend();
        using var m = new VlModel(be, Micro, seed: 8) { Tokenizer = Vocab() };
        string ckpt = Path.Combine(_dir, "ckpt");
        m.Save(ckpt);
        Assert.Empty(Directory.GetFiles(ckpt, "*.tmp"));
        using var back = VlModel.Load(ckpt, be);
        Assert.Equal(VlHeads.All, back.Heads);
        var img = RandomImage(new Random(1), 8, 8);
        Assert.Equal(m.MatchScore(img, "a red circle"), back.MatchScore(img, "a red circle"));

        Assert.Contains("no such checkpoint folder", Assert.Throws<BadInputException>(() => VlModel.Load(Path.Combine(_dir, "nope"), be)).Message);
        // A tensor of the wrong shape is named.
        string bad = Path.Combine(_dir, "bad");
        Directory.CreateDirectory(bad);
        File.Copy(Path.Combine(ckpt, "config.json"), Path.Combine(bad, "config.json"));
        File.Copy(Path.Combine(ckpt, "vocab.txt"), Path.Combine(bad, "vocab.txt"));
        var entries = m.NamedParameters().Select(p => p.Name == "vilt.pooler.dense.weight"
            ? new SafeTensorsWriter.Entry(p.Name, [8, 4], new float[32]) : new SafeTensorsWriter.Entry(p.Name, p.Tensor.Shape.ToArray(), p.Tensor.ToArray()))
            .Append(new SafeTensorsWriter.Entry("vilt.embeddings.text_embeddings.position_ids", [1, 6], new float[6]));   // a buffer: skipped
        SafeTensorsWriter.Write(Path.Combine(bad, "model.safetensors"), entries);
        var e = Assert.Throws<BadInputException>(() => VlModel.Load(bad, be));
        Assert.Contains("vilt.pooler.dense.weight is [8, 4]", e.Message);
        Assert.DoesNotContain("position_ids", e.Message);
        File.Delete(Path.Combine(bad, "vocab.txt"));
        Assert.Contains("vocab.txt", Assert.Throws<BadInputException>(() => VlModel.Load(bad, be)).Message);
    }

    [Fact]
    public void OscarTakesRegionFeaturesThroughPostLnBertLayers()
    {
        var cfg = Micro with { Family = VlFamily.Oscar, RegionFeatureSize = 10, MaxRegions = 5 };
        using var be = new ReferenceBackend();
        int seed = Random.Shared.Next();
        using var m = new VlModel(be, cfg, seed, DType.F64, heads: VlHeads.Itm);
        var names = m.NamedParameters().Select(p => p.Name).ToHashSet();
        Assert.Contains("bert.embeddings.word_embeddings.weight", names);
        Assert.Contains("bert.img_embedding.weight", names);
        Assert.Contains("bert.LayerNorm.weight", names);
        Assert.Contains("bert.encoder.layer.0.attention.self.query.weight", names);
        Assert.Contains("bert.encoder.layer.0.attention.output.LayerNorm.weight", names);
        Assert.Contains("bert.pooler.dense.weight", names);
        Assert.Contains("classifier.weight", names);
        var rng = new Random(seed);
        foreach (var (_, p) in m.NamedParameters()) foreach (ref double x in GradCheckTests.D(p)) x += 0.2 * GradCheckTests.Normal(rng);
        var regions = new RegionBatch(Enumerable.Range(0, 2 * 3 * 10).Select(_ => (float)rng.NextDouble()).ToArray(), 3, 10, [3, 2]);
        var text = VlModelTests.Batch(rng, 2, text: true, image: false);
        GradCheckTests.Check(be, rng, () => Ops.SumAll(Ops.Mul(m.Score(text with { Regions = regions }), m.Score(text with { Regions = regions }))),
            m.Parameters().ToArray(), budget: 1e-6, maxProbes: 5);
        // Padding regions do not change the embedding of a set.
        using var scope = new TensorScope();
        var all = m.Embed(new VlBatch(2, Regions: regions)).ToArray();
        var second = m.Embed(new VlBatch(1, Regions: new RegionBatch(regions.Features[30..50], 2, 10, [2]))).ToArray();
        for (int i = 0; i < 8; i++) Assert.Equal(all[8 + i], second[i], 1e-6);
    }
}

public sealed class RegionFeaturesTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-tsv-" + Guid.NewGuid().ToString("N"));

    public RegionFeaturesTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void FeaturesTsvRoundTripsAndBatchesWithPadding()
    {
        var rng = new Random(Random.Shared.Next());
        var images = new[] { 3, 1, 5 }.Select((n, i) => new RegionFeatures($"img{i}", n, 6, Enumerable.Range(0, n * 6).Select(_ => (float)rng.NextDouble()).ToArray())).ToArray();
        string path = Path.Combine(_dir, "features.tsv");
        RegionFeaturesTsv.Write(path, images);
        var back = RegionFeaturesTsv.Read(path, featureSize: 6).ToArray();
        Assert.Equal(images.Select(i => i.Id), back.Select(i => i.Id));
        for (int i = 0; i < 3; i++) Assert.Equal(images[i].Features, back[i].Features);
        var batch = RegionFeaturesTsv.Batch(back, maxRegions: 4);
        Assert.Equal(4, batch.MaxRegions);
        Assert.Equal([3, 1, 4], batch.Counts);
        Assert.Equal(images[2].Features[..24], batch.Features[48..72]);
        Assert.All(batch.Features[(24 + 6)..48], v => Assert.Equal(0f, v));
    }

    [Fact]
    public void MalformedLinesAreNamedByFileAndLine()
    {
        string path = Path.Combine(_dir, "bad.tsv");
        var good = Convert.ToBase64String(new byte[2 * 6 * 4]);
        File.WriteAllLines(path, [$"a\t2\t{good}", "b\t2\tnot-base64!", ""]);
        var e = Assert.Throws<BadInputException>(() => RegionFeaturesTsv.Read(path, 6).ToList());
        Assert.Contains("bad.tsv:2", e.Message);
        File.WriteAllLines(path, [$"a\t3\t{good}"]);
        Assert.Contains("for 3 boxes", Assert.Throws<BadInputException>(() => RegionFeaturesTsv.Read(path, 6).ToList()).Message);
        File.WriteAllLines(path, ["a\t2"]);
        Assert.Contains("3 tab-separated fields", Assert.Throws<BadInputException>(() => RegionFeaturesTsv.Read(path, 6).ToList()).Message);
    }
}
