using System.Numerics;
using System.Numerics.Tensors;

namespace KernelVL.Retrieval;

/// <summary>
/// Upper bounds on the L2 norms of stored f16 rows. The cuda backend's tensor-core top-k (versions 2 and 3) proves
/// each query's result exact with a bound that needs the largest row norm; given one, it skips its own pass over the
/// corpus (1.5 GB at 1M x 768: ~0.5 ms on an H100). The index computes the bound once per segment when it writes the
/// segment and keeps it in the manifest.
/// </summary>
public static class RowNorms
{
    /// <summary>
    /// An upper bound on max over rows of ||row||_2 for rows [N, dim] of halves (N = rows.Length / dim): each half
    /// widened exactly, squares summed in f64 (exact products of non-negative terms: the sum's relative error is below
    /// dim 2^-53, covered by a margin of dim 2^-52), the square root rounded up to the next f32. 0 for no rows; +infinity where a row
    /// holds a NaN or an infinity (no finite bound exists).
    /// </summary>
    public static float MaxNormUpperBound(ReadOnlySpan<Half> rows, int dim)
    {
        if (dim < 1 || rows.Length % dim != 0) throw new ShapeException($"{rows.Length} halves are not rows of {dim}");
        if (dim > (1 << 20)) throw new ShapeException($"rows of {dim} values: at most {1 << 20}");
        var row = new float[dim];
        double max = 0;
        for (int start = 0; start < rows.Length; start += dim)
        {
            TensorPrimitives.ConvertToSingle(rows.Slice(start, dim), row);
            double s = SumOfSquares(row);
            if (!double.IsFinite(s)) return float.PositiveInfinity;
            if (s > max) max = s;
        }
        return RoundUp(Math.Sqrt(max * (1 + dim * Math.ScaleB(1, -52))));
    }

    /// <summary>Sum of x_i^2 in f64 (each f32 square exact in f64).</summary>
    private static double SumOfSquares(ReadOnlySpan<float> x)
    {
        int i = 0;
        var acc = Vector<double>.Zero;
        if (Vector.IsHardwareAccelerated)
            for (; i + Vector<float>.Count <= x.Length; i += Vector<float>.Count)
            {
                Vector.Widen(new Vector<float>(x.Slice(i, Vector<float>.Count)), out var lo, out var hi);
                acc += lo * lo + hi * hi;
            }
        double s = Vector.Sum(acc);
        for (; i < x.Length; i++) s += (double)x[i] * x[i];
        return s;
    }

    /// <summary>The smallest f32 at or above x (x >= 0; infinity where x exceeds the f32 range).</summary>
    private static float RoundUp(double x)
    {
        float f = (float)x;
        return f < x ? MathF.BitIncrement(f) : f;
    }
}
