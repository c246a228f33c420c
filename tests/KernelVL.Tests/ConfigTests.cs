using KernelVL.Model;

namespace KernelVL.Tests;

public class ConfigTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvl-cfg-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string json)
    {
        string p = Path.Combine(_dir, $"config-{Guid.NewGuid():N}.json");
        File.WriteAllText(p, json);
        return p;
    }

    [Fact]
    public void ReadsThePublicViltB32ConfigAsItIs()
    {
        // The fields of dandelin/vilt-b32-finetuned-coco's config.json, as published.
        var c = VlTransformerConfig.Load(Path.Combine(AppContext.BaseDirectory, "Fixtures", "vilt-b32-config.json"));
        Assert.Equal(VlFamily.Vilt, c.Family);
        Assert.Equal((768, 12, 12, 3072, 30522, 40), (c.HiddenSize, c.NumLayers, c.NumHeads, c.IntermediateSize, c.VocabSize, c.MaxTextLength));
        Assert.Equal((384, 32, -1, 640), (c.ImageSize, c.PatchSize, c.MaxImageLength, c.MaxImageSide));
        Assert.Equal(1e-12f, c.LayerNormEps);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(VlPooling.MeanTanh, c.Pooling);
    }

    [Fact]
    public void ProjectKeysAndPresets()
    {
        var c = VlTransformerConfig.Load(Write("""{"model_type":"bert","hidden_size":64,"num_attention_heads":4,"kernelvl_pooling":"cls","img_feature_dim":2054}"""));
        Assert.Equal(VlFamily.Oscar, c.Family);
        Assert.Equal(VlPooling.Cls, c.Pooling);
        Assert.Equal(16, c.HeadDim);
        // kernelvl_stage (which training command wrote the checkpoint): absent in older and converted configs, kept by a round trip.
        Assert.Null(c.Stage);
        Assert.Equal(VlTransformerConfig.DecomposeStage, VlTransformerConfig.Load(Write((c with { Stage = VlTransformerConfig.DecomposeStage }).ToJson())).Stage);
        Assert.DoesNotContain("kernelvl_stage", c.ToJson());
        Assert.Equal(32, VlTransformerConfig.Preset("tiny").HiddenSize);
        Assert.Throws<BadInputException>(() => VlTransformerConfig.Preset("huge"));
    }

    [Theory]
    [InlineData("""{"hidden_size": 100, "num_attention_heads": 12}""", "not a multiple of num_attention_heads")]
    [InlineData("""{"hidden_size": "big"}""", "hidden_size must be an integer")]
    [InlineData("""{"num_hidden_layers": 0}""", "num_hidden_layers must be >= 1")]
    [InlineData("""{"layer_norm_eps": -1}""", "layer_norm_eps must be in")]
    [InlineData("""{"hidden_act": "relu"}""", "hidden_act relu is not supported")]
    [InlineData("""{"image_size": 100, "patch_size": 32}""", "not a multiple of patch_size")]
    [InlineData("""{"kernelvl_family": "clip"}""", "kernelvl_family must be")]
    [InlineData("""{"kernelvl_stage": "finetune"}""", "kernelvl_stage must be pretrain or decompose, got finetune")]
    [InlineData("""[1, 2]""", "not a JSON object")]
    [InlineData("""{"hidden_size": 768,""", "not valid JSON")]
    public void BadConfigsNameTheFileAndTheField(string json, string expected)
    {
        string p = Write(json);
        var e = Assert.Throws<BadInputException>(() => VlTransformerConfig.Load(p));
        Assert.Contains(p, e.Message);
        Assert.Contains(expected, e.Message);
    }
}
