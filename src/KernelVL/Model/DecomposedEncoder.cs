using KernelVL.Autograd;
using KernelVL.Imaging;

namespace KernelVL.Model;

/// <summary>
/// VLDeformer's decomposed encoders: the same weights encode one modality per pass, so images and captions are each
/// encoded once and retrieval becomes a top-k over vectors. Pooling comes from the config (mean over positions then
/// tanh, or [CLS]); every vector is L2-normalised. Inputs are batched with padding masks, so a vector does not depend on
/// what else was in its batch. Runs on the model's backend; no gradients.
/// </summary>
public sealed class DecomposedEncoder
{
    public VlModel Model { get; }
    public int BatchSize { get; }

    /// <summary>The embedding width (the model's hidden size).</summary>
    public int Dim => Model.Config.HiddenSize;

    public DecomposedEncoder(VlModel model, int batchSize = 32)
    {
        if (batchSize < 1) throw new BadInputException($"batch size must be positive, got {batchSize}");
        Model = model;
        BatchSize = batchSize;
    }

    /// <summary>Captions -> unit vectors [N, Dim], row-major. <paramref name="progress"/> gets the count done after each batch.</summary>
    public float[] EncodeTexts(IReadOnlyList<string> captions, Action<int>? progress = null)
        => Run(captions.Count, (s, n) => Model.TextBatch(Slice(captions, s, n)), progress);

    /// <summary>Preprocessed images -> unit vectors [N, Dim], row-major.</summary>
    public float[] EncodeImages(IReadOnlyList<PreparedImage> images, Action<int>? progress = null)
        => Run(images.Count, (s, n) => Model.ImageBatch(Slice(images, s, n)), progress);

    /// <summary>Oscar region features -> unit vectors [N, Dim], one batch of regions at a time.</summary>
    public float[] EncodeRegions(RegionBatch regions) => Run(regions.Batch, (s, n) =>
    {
        int per = regions.MaxRegions * regions.FeatureSize;
        var f = new float[(long)n * per];
        Array.Copy(regions.Features, (long)s * per, f, 0, (long)n * per);
        return new VlBatch(n, Regions: regions with { Features = f, Counts = regions.Counts[s..(s + n)] });
    }, null);

    private static List<T> Slice<T>(IReadOnlyList<T> items, int start, int count)
    {
        var l = new List<T>(count);
        for (int i = 0; i < count; i++) l.Add(items[start + i]);
        return l;
    }

    private float[] Run(int count, Func<int, int, VlBatch> batch, Action<int>? progress)
    {
        var result = new float[(long)count * Dim];
        using var _ = Tape.NoGrad();
        using var weights = Model.InferenceWeights();   // the cuda backend's bf16 weight copies, made once for all batches
        for (int s = 0; s < count; s += BatchSize)
        {
            int n = Math.Min(BatchSize, count - s);
            using var scope = new TensorScope();
            Model.Backend.CopyToHost(Model.Embed(batch(s, n)), result.AsSpan((int)((long)s * Dim), n * Dim));
            progress?.Invoke(s + n);
        }
        return result;
    }
}
