namespace KernelVL.Model;

/// <summary>
/// Bilinear resampling of a grid as a matrix, align_corners = true (what ViLT applies to its patch position
/// embeddings for each image's patch grid). out [h1*w1, C] = M [h1*w1, h0*w0] @ in [h0*w0, C]: as a matmul the
/// resampling is differentiable for free through the existing op.
/// </summary>
public static class Interpolation
{
    /// <summary>Row-major [h1 * w1, h0 * w0] weights; each row sums to 1 and has at most 4 nonzeros.</summary>
    public static float[] BilinearAlignCorners(int h0, int w0, int h1, int w1)
    {
        if (h0 < 1 || w0 < 1 || h1 < 1 || w1 < 1) throw new ArgumentOutOfRangeException(nameof(h0), $"grids must be non-empty: {h0}x{w0} -> {h1}x{w1}");
        var m = new float[h1 * w1 * h0 * w0];
        for (int y = 0; y < h1; y++)
        {
            var (y0, y1, fy) = Source(y, h1, h0);
            for (int x = 0; x < w1; x++)
            {
                var (x0, x1, fx) = Source(x, w1, w0);
                long row = (long)(y * w1 + x) * h0 * w0;
                m[row + y0 * w0 + x0] += (float)((1 - fy) * (1 - fx));
                m[row + y0 * w0 + x1] += (float)((1 - fy) * fx);
                m[row + y1 * w0 + x0] += (float)(fy * (1 - fx));
                m[row + y1 * w0 + x1] += (float)(fy * fx);
            }
        }
        return m;
    }

    // Target index i of n maps to source position i * (n0 - 1) / (n - 1) (align_corners): its two neighbours and weight.
    private static (int Lo, int Hi, double Frac) Source(int i, int n, int n0)
    {
        if (n0 == 1 || n == 1) return (0, 0, 0);
        double s = i * (double)(n0 - 1) / (n - 1);
        int lo = Math.Min((int)Math.Floor(s), n0 - 1);
        int hi = Math.Min(lo + 1, n0 - 1);
        return (lo, hi, s - lo);
    }
}
