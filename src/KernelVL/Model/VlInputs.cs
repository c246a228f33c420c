using KernelVL.Imaging;

namespace KernelVL.Model;

/// <summary>
/// Images cut into patches, padded to the batch's largest: patches [B, MaxPatches, 3 P P], each patch's pixels in
/// (channel, row, column) order (the Conv2d weight layout). Image i has GridH[i] x GridW[i] patches, in row-major order
/// in its first GridH[i] * GridW[i] rows; the remaining rows are padding (zeros).
/// </summary>
public sealed record PatchBatch(float[] Patches, int MaxPatches, int[] GridH, int[] GridW)
{
    public int Batch => GridH.Length;
    public int Count(int i) => GridH[i] * GridW[i];

    /// <summary>Cuts preprocessed images into patch x patch squares (their sizes must be multiples of the patch).</summary>
    public static PatchBatch From(IReadOnlyList<PreparedImage> images, int patch)
    {
        if (images.Count == 0) throw new ShapeException("an image batch needs at least one image");
        int b = images.Count, pp = 3 * patch * patch;
        var gh = new int[b];
        var gw = new int[b];
        for (int i = 0; i < b; i++)
        {
            var im = images[i];
            if (im.Height % patch != 0 || im.Width % patch != 0 || im.Height == 0 || im.Width == 0)
                throw new ShapeException($"image {i}: {im.Height}x{im.Width} is not a multiple of the {patch}-pixel patch");
            if (im.Pixels.Length != 3 * im.Height * im.Width) throw new ShapeException($"image {i}: {im.Pixels.Length} values for [3, {im.Height}, {im.Width}]");
            gh[i] = im.Height / patch;
            gw[i] = im.Width / patch;
        }
        int n = Enumerable.Range(0, b).Max(i => gh[i] * gw[i]);
        var patches = new float[(long)b * n * pp];
        for (int i = 0; i < b; i++)
        {
            var im = images[i];
            int plane = im.Height * im.Width;
            for (int r = 0; r < gh[i]; r++)
                for (int c = 0; c < gw[i]; c++)
                {
                    long o = ((long)i * n + r * gw[i] + c) * pp;
                    for (int ch = 0; ch < 3; ch++)
                        for (int y = 0; y < patch; y++)
                            Array.Copy(im.Pixels, ch * plane + (r * patch + y) * im.Width + c * patch, patches, o + (ch * patch + y) * patch, patch);
                }
        }
        return new PatchBatch(patches, n, gh, gw);
    }
}

/// <summary>
/// Detector region features (Oscar/VinVL): features [B, MaxRegions, F] (F = 2048 appearance + 6 box values), image i
/// having Counts[i] regions in its first rows, the rest padding.
/// </summary>
public sealed record RegionBatch(float[] Features, int MaxRegions, int FeatureSize, int[] Counts)
{
    public int Batch => Counts.Length;
}

/// <summary>
/// Host-side inputs of one batch. Text: ids and masks [B, T] row-major. Images: ViLT patches or Oscar regions. Either
/// modality may be absent (the decomposed encoders use one at a time).
/// </summary>
public sealed record VlBatch(int Batch, int[]? TextIds = null, int[]? TextMask = null, int TextLength = 0,
    PatchBatch? Images = null, RegionBatch? Regions = null)
{
    public bool HasText => TextIds is not null;
    public bool HasImages => Images is not null || Regions is not null;
}
