using KernelVL.Autograd;
using KernelVL.Backends.Cpu;
using KernelVL.Tensors;

namespace KernelVL.Tests;

public class TensorAndTapeTests : IDisposable
{
    private readonly CpuBackend _be = new();
    public void Dispose() => _be.Dispose();

    private Tensor From(float[] values, params int[] dims)
    {
        var t = _be.Empty(new Shape(dims));
        _be.CopyFromHost(values, t);
        return t;
    }

    [Fact]
    public void ViewsShareStorageAndFreeWithTheLastReference()
    {
        var x = From([1, 2, 3, 4, 5, 6], 2, 3);
        var r = x.Reshape(3, -1);
        Assert.Equal(new Shape(3, 2), r.Shape);
        var row = x.Narrow0(1, 1);
        Assert.Equal(new float[] { 4, 5, 6 }, row.ToArray());
        row.Span[0] = 40;
        Assert.Equal(40, x.ToArray()[3]);
        Assert.Equal(40, r.ToArray()[3]);
        var storage = x.Storage;
        x.Dispose(); r.Dispose();
        Assert.False(storage.IsFreed);
        row.Dispose();
        Assert.True(storage.IsFreed);
        Assert.Throws<ObjectDisposedException>(() => row.Shape.ToString() + row.Storage.ToString());
    }

    [Fact]
    public void BadViewsAndShapesThrowTypedErrors()
    {
        using var x = From([1, 2, 3, 4, 5, 6], 2, 3);
        Assert.Throws<ShapeException>(() => x.Reshape(4, 2));
        Assert.Throws<ShapeException>(() => x.Narrow0(1, 2));
        using var y = From([1, 2, 3, 4, 5, 6], 3, 2);
        var e = Assert.Throws<ShapeException>(() => Ops.MatMul(x, x));
        Assert.Contains("[2, 3]", e.Message);
        using var ids = _be.Empty(new Shape(2), DType.I32);
        _be.CopyFromHost(new[] { 0, 7 }, ids);
        var e2 = Assert.Throws<ShapeException>(() => Ops.Embedding(ids, y));
        Assert.Contains("id 7", e2.Message);
        Assert.Throws<ShapeException>(() => new Shape(2, -1));
    }

    [Fact]
    public void ScopeFreesTemporariesAndKeepMovesOut()
    {
        Tensor kept, temp;
        using (var scope = new TensorScope())
        {
            var a = From([1, 2, 3], 3);
            temp = Ops.Scale(a, 2);
            kept = scope.Keep(Ops.Gelu(a));
            Assert.True(scope.Count >= 2);
        }
        Assert.True(temp.IsDisposed);
        Assert.False(kept.IsDisposed);
        kept.Dispose();
    }

    [Fact]
    public void GradientsAccumulateAcrossUses()
    {
        using var scope = new TensorScope();
        float[] xs = [0.5f, -1.5f, 2f];
        var x = From(xs, 3);
        x.RequiresGrad = true;
        var y = Ops.SumAll(Ops.Add(Ops.Mul(x, x), Ops.Scale(x, 3)));   // sum(x^2 + 3x)
        Tape.Backward(y);
        var g = x.Grad!.ToArray();
        for (int i = 0; i < 3; i++) Assert.Equal(2 * xs[i] + 3, g[i], 5);
        Assert.Equal(0, Tape.Count);
        // A second backward adds on top: gradients accumulate until zeroed.
        var y2 = Ops.SumAll(Ops.Scale(x, 1));
        Tape.Backward(y2);
        Assert.Equal(2 * xs[0] + 4, x.Grad!.ToArray()[0], 5);
        x.ZeroGrad();
        Assert.All(x.Grad!.ToArray(), v => Assert.Equal(0f, v));
        x.Dispose();
    }

    [Fact]
    public void NoGradRecordsNothing()
    {
        using var scope = new TensorScope();
        var x = From([1, 2], 2);
        x.RequiresGrad = true;
        using (Tape.NoGrad())
        {
            var y = Ops.Gelu(x);
            Assert.False(y.RequiresGrad);
            Assert.Equal(0, Tape.Count);
        }
        var z = Ops.Gelu(x);
        Assert.True(z.RequiresGrad);
        Assert.Equal(1, Tape.Count);
        Assert.Throws<ShapeException>(() => Tape.Backward(z));
        Tape.Clear();
        x.Dispose();
    }

    [Fact]
    public void DropoutMaskIsDeterministicAndUnbiased()
    {
        using var scope = new TensorScope();
        var ones = _be.Empty(new Shape(100_000));
        _be.Fill(ones, 1f);
        var a = Ops.Dropout(ones, 0.25f, 7, training: true).ToArray();
        var b = Ops.Dropout(ones, 0.25f, 7, training: true).ToArray();
        var c = Ops.Dropout(ones, 0.25f, 8, training: true).ToArray();
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        double kept = a.Count(v => v != 0) / (double)a.Length;
        Assert.InRange(kept, 0.74, 0.76);
        Assert.InRange(a.Average(), 0.98, 1.02);
    }
}
