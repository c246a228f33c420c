using System.Diagnostics;
using System.Text.Json;
using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Model;

namespace KernelVL.Perf;

/// <summary>
/// End-to-end model throughput (issue "the VL transformer", Numbers): decomposed images/s and texts/s, and cross-encoder
/// pairs/s, with random weights at a preset's size (base = ViLT-B/32: 12 layers, 768 wide, 384x640 images = 240
/// patches + [CLS], captions of 16 tokens). Timed on whole batches after a warm-up batch; the median batch is reported.
/// </summary>
public static class E2e
{
    public sealed record Row(string Backend, string Config, string Mode, int Batch, int Tokens, double MedianBatchSeconds, double ItemsPerSecond, double GflopPerItem, double Gflops);

    public static int Run(string[] args)
    {
        var backends = new List<string>();
        string config = "base", json = "";
        int imageBatch = 8, textBatch = 64, pairBatch = 8, textTokens = 16, imageH = 384, imageW = 640;
        double minTime = 5;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--backend": backends.Add(Next()); break;
                case "--config": config = Next(); break;
                case "--json": json = Next(); break;
                case "--min-time": minTime = double.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                case "--image-batch": imageBatch = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                case "--text-batch": textBatch = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown option '{args[i]}'");
            }
        }
        if (backends.Count == 0) backends.AddRange(BackendFactory.Names.Where(n => n is not ("reference" or "ilgpu-cpu") && BackendFactory.Unavailable(n) is null));
        var cfg = VlTransformerConfig.Preset(config);
        if (config != "base") (imageH, imageW) = (cfg.ImageSize, cfg.MaxImageSide);
        var (h, w) = ImagePreprocessor.For(cfg).OutputSize(imageH, imageW);
        int patches = (h / cfg.PatchSize) * (w / cfg.PatchSize);
        var rows = new List<Row>();
        foreach (var name in backends)
        {
            if (BackendFactory.Unavailable(name) is { } why) { Console.Error.WriteLine($"e2e: skipping {name}: {why}"); continue; }
            using var backend = BackendFactory.Create(name);
            using var model = new VlModel(backend, cfg, seed: 1, heads: VlHeads.Rank);
            var rng = new Random(2);
            var images = Enumerable.Range(0, Math.Max(imageBatch, pairBatch)).Select(_ =>
                new PreparedImage(Enumerable.Range(0, 3 * h * w).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), h, w)).ToList();
            VlBatch Text(int b)
            {
                var ids = Enumerable.Range(0, b * textTokens).Select(_ => 5 + rng.Next(cfg.VocabSize - 5)).ToArray();
                return new VlBatch(b, ids, Enumerable.Repeat(1, b * textTokens).ToArray(), textTokens);
            }
            var imgBatch = new VlBatch(imageBatch, Images: PatchBatch.From(images.Take(imageBatch).ToList(), cfg.PatchSize));
            var txtBatch = Text(textBatch);
            var pairs = Text(pairBatch) with { Images = PatchBatch.From(images.Take(pairBatch).ToList(), cfg.PatchSize) };
            // Matrix parameters only (embedding tables are lookups); attention adds QK^T and PV per layer.
            long matrixParams = model.NamedParameters().Where(p => p.Tensor.Rank >= 2 && !p.Name.Contains("embeddings", StringComparison.Ordinal)).Sum(p => p.Tensor.Numel);
            double Flops(int tokens) => 2.0 * tokens * matrixParams + cfg.NumLayers * 4.0 * tokens * tokens * cfg.HiddenSize;
            void Time(string mode, int b, int tokens, Action run)
            {
                run();   // warm-up: kernels, pools, caches
                backend.Synchronize();
                var times = new List<double>();
                var total = Stopwatch.StartNew();
                while (times.Count < 3 || (total.Elapsed.TotalSeconds < minTime && times.Count < 200))
                {
                    var sw = Stopwatch.StartNew();
                    run();
                    backend.Synchronize();
                    times.Add(sw.Elapsed.TotalSeconds);
                }
                times.Sort();
                double med = times[times.Count / 2], gf = Flops(tokens) / 1e9;
                var r = new Row(name, config, mode, b, tokens, med, b / med, gf, gf * b / med);
                rows.Add(r);
                Console.WriteLine($"{name,-11} {config,-5} {mode,-22} batch {b,3} x {tokens,4} tokens  {med * 1e3,9:F1} ms/batch  {r.ItemsPerSecond,9:F1} /s  {r.Gflops,8:F0} GFLOP/s");
            }
            Console.Error.WriteLine($"e2e: {name}, {config} ({model.ParameterCount / 1e6:F1}M parameters), images {h}x{w} = {patches} patches, captions of {textTokens} tokens");
            using (Tape.NoGrad())
            using (model.InferenceWeights())   // as the encoders run: the cuda backend keeps bf16 copies of the weights
            {
                Time("decomposed_images", imageBatch, patches + 1, () => { using var s = new TensorScope(); model.Embed(imgBatch); backend.Synchronize(); });
                Time("decomposed_texts", textBatch, textTokens, () => { using var s = new TensorScope(); model.Embed(txtBatch); backend.Synchronize(); });
                Time("cross_encoder_pairs", pairBatch, textTokens + patches + 1, () => { using var s = new TensorScope(); model.Score(pairs); backend.Synchronize(); });
            }
        }
        if (json.Length > 0)
            AtomicFile.WriteAllText(json, JsonSerializer.Serialize(new { image = $"{h}x{w}", patches, text_tokens = textTokens, rows },
                new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        return 0;
    }
}
