using KernelVL.Model;

namespace KernelVL.Tests;

public class InterpolationTests
{
    private static double[] Apply(float[] m, double[] grid, int rows, int cols)
    {
        var r = new double[rows];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) r[i] += m[(long)i * cols + j] * grid[j];
        return r;
    }

    [Theory]
    [InlineData(12, 12, 12, 20)]   // ViLT: 384x640 images have a 12x20 patch grid
    [InlineData(12, 12, 7, 5)]
    [InlineData(3, 4, 9, 1)]
    [InlineData(1, 1, 4, 4)]
    public void ReproducesAffineFunctionsExactlyAndKeepsCorners(int h0, int w0, int h1, int w1)
    {
        // Bilinear interpolation reproduces any f(y, x) = a + b y + c x, sampled at align-corners positions.
        var rng = new Random(Random.Shared.Next());
        double a = rng.NextDouble(), b = rng.NextDouble() - 0.5, c = rng.NextDouble() - 0.5;
        double Pos(int i, int n, int n0) => n == 1 || n0 == 1 ? 0 : i * (double)(n0 - 1) / (n - 1);
        var grid = new double[h0 * w0];
        for (int y = 0; y < h0; y++) for (int x = 0; x < w0; x++) grid[y * w0 + x] = a + b * y + c * x;
        var m = Interpolation.BilinearAlignCorners(h0, w0, h1, w1);
        var got = Apply(m, grid, h1 * w1, h0 * w0);
        for (int y = 0; y < h1; y++)
            for (int x = 0; x < w1; x++)
            {
                double want = h0 == 1 && w0 == 1 ? grid[0] : a + b * Pos(y, h1, h0) + c * Pos(x, w1, w0);
                Assert.True(Math.Abs(got[y * w1 + x] - want) < 1e-5, $"({y},{x}): {got[y * w1 + x]} vs {want}");
            }
        for (int i = 0; i < h1 * w1; i++)
            Assert.True(Math.Abs(m.AsSpan(i * h0 * w0, h0 * w0).ToArray().Sum() - 1) < 1e-6, $"row {i} does not sum to 1");
        if (h1 > 1 && w1 > 1 && h0 > 1 && w0 > 1)
        {
            Assert.Equal(grid[0], got[0], 6);
            Assert.Equal(grid[h0 * w0 - 1], got[h1 * w1 - 1], 6);
        }
    }

    [Fact]
    public void TheSameGridIsTheIdentity()
    {
        var m = Interpolation.BilinearAlignCorners(4, 5, 4, 5);
        for (int i = 0; i < 20; i++) for (int j = 0; j < 20; j++) Assert.Equal(i == j ? 1f : 0f, m[i * 20 + j]);
    }
}
