using System.Text.Json;
using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Model;
using KernelVL.Text;

namespace KernelVL.Tests;

/// <summary>
/// Parity with the reference implementation (Hugging Face transformers' ViLT): a tiny random ViLT, its inputs and outputs
/// written by tests/golden/make_vilt_golden.py into Fixtures/vilt-tiny-golden. The checkpoint is loaded as a user's
/// converted checkpoint would be, and every output must match within 1e-4 relative (max |x - ref| over max |ref|).
/// </summary>
public class GoldenViltTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly string Dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "vilt-tiny-golden");
    private const string Missing = "the golden fixture Fixtures/vilt-tiny-golden is not there: run tests/golden/make_vilt_golden.py where PyTorch and transformers are installed";

    public static TheoryData<string> Backends() => new(BackendFactory.Names.Where(n => n != "ilgpu-cpu"));

    private static double RelError(float[] expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 0, worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            scale = Math.Max(scale, Math.Abs(expected[i]));
            worst = Math.Max(worst, double.IsFinite(actual[i]) ? Math.Abs(expected[i] - (double)actual[i]) : double.PositiveInfinity);
        }
        return worst / scale;
    }

    private static int[] Ints(float[] v) => v.Select(x => (int)x).ToArray();

    [SkippableTheory]
    [MemberData(nameof(Backends))]
    public void TheModelMatchesHuggingFaceVilt(string backendName)
    {
        Skip.If(!File.Exists(Path.Combine(Dir, "golden.safetensors")), Missing);
        string? why = BackendFactory.Unavailable(backendName);
        Skip.If(why is not null, why);
        using var backend = BackendFactory.Create(backendName);
        using var model = VlModel.Load(Dir, backend, backendName == "reference" ? Tensors.DType.F64 : Tensors.DType.F32);
        Assert.Equal(VlHeads.Rank | VlHeads.Mlm, model.Heads);
        using var g = SafeTensorsFile.Open(Path.Combine(Dir, "golden.safetensors"));
        int b = g.Tensors["input_ids"].Shape[0], t = g.Tensors["input_ids"].Shape[1];
        var px = g.ReadF32("pixel_values");      // [B, 3, H, W], image 1 padded on the right
        var pm = g.ReadF32("pixel_mask");        // [B, H, W]
        int h = g.Tensors["pixel_values"].Shape[2], w = g.Tensors["pixel_values"].Shape[3];
        var images = new List<PreparedImage>();
        for (int i = 0; i < b; i++)
        {
            int vw = Enumerable.Range(0, w).Count(x => pm[i * h * w + x] != 0), vh = Enumerable.Range(0, h).Count(y => pm[i * h * w + y * w] != 0);
            var p = new float[3 * vh * vw];
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < vh; y++)
                    Array.Copy(px, ((i * 3 + c) * h + y) * w, p, (c * vh + y) * vw, vw);
            images.Add(new PreparedImage(p, vh, vw));
        }
        var batch = new VlBatch(b, Ints(g.ReadF32("input_ids")), Ints(g.ReadF32("attention_mask")), t, PatchBatch.From(images, model.Config.PatchSize));

        using var _ = Tape.NoGrad();
        using var scope = new TensorScope();
        var e = model.Encode(batch);
        var pooled = model.Pooled(e);
        var report = new List<string>();
        void Compare(string name, Tensors.Tensor actual)
        {
            Assert.Equal(g.Tensors[name].Shape, actual.Shape.ToArray());
            double err = RelError(g.ReadF32(name), actual.ToArray());
            report.Add($"{name} {err:E2}");
            Assert.True(err <= 1e-4, $"{name}: max rel error {err:E2} > 1e-4 on {backendName} ({string.Join(", ", report)})");
        }
        Compare("last_hidden_state", e.Hidden);
        Compare("pooler_output", pooled);
        Compare("rank_score", Ops.Reshape(model.RankScore(pooled), b, 1));
        Compare("mlm_logits", model.MlmLogits(e));
        output.WriteLine($"{backendName}: {string.Join(", ", report)}");
        // The API's own path (tokenizer aside) gives the same score.
        Assert.Equal(g.ReadF32("rank_score")[1], model.Score(batch).ToArray()[1], 1e-4f * Math.Max(1f, Math.Abs(g.ReadF32("rank_score")[1])));
    }

    [SkippableFact]
    public void PreprocessingMatchesViltImageProcessor()
    {
        Skip.If(!File.Exists(Path.Combine(Dir, "golden.safetensors")), Missing);
        using var g = SafeTensorsFile.Open(Path.Combine(Dir, "golden.safetensors"));
        var shape = g.Tensors["image_pixel_values"].Shape;   // [1, 3, H, W]
        var cfg = VlTransformerConfig.Load(Path.Combine(Dir, "config.json"));
        var img = ImagePreprocessor.For(cfg).Load(Path.Combine(Dir, "image.png"));
        Assert.Equal((shape[2], shape[3]), (img.Height, img.Width));
        var expected = g.ReadF32("image_pixel_values");
        double max = 0, sum = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(expected[i] - img.Pixels[i]);
            max = Math.Max(max, d);
            sum += d;
        }
        output.WriteLine($"preprocessing: mean |diff| {sum / expected.Length * 255 / 2:F3} grey levels, max {max * 255 / 2:F2}");
        // PIL's and ImageSharp's bicubic filters differ in rounding and edge handling: a few grey levels at most
        // (one level is 2/255 after normalisation), under one level on average.
        Assert.True(sum / expected.Length <= 1.0 * 2 / 255, $"mean |diff| {sum / expected.Length * 255 / 2:F2} levels");
        Assert.True(max <= 8.0 * 2 / 255, $"max |diff| {max * 255 / 2:F1} levels");
    }

    [SkippableFact]
    public void TokenizerMatchesBertTokenizer()
    {
        string path = Path.Combine(Dir, "tokenizer.json");
        Skip.If(!File.Exists(path), Missing);
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var tok = TextTokenizer.Load(Path.Combine(Dir, "vocab.txt"), doc.RootElement.GetProperty("max_length").GetInt32());
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = c.GetProperty("text").GetString()!;
            Assert.Equal(c.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray(), tok.Encode(text));
        }
    }
}
