using KernelVL.Autograd;
using KernelVL.Tensors;

namespace KernelVL;

/// <summary>
/// The differentiable op API: each function allocates its result on the inputs' backend, runs the
/// forward there and, when recording and some input requires grad, records the backward rule, which
/// accumulates into the inputs' <see cref="Tensor.Grad"/>. Backward sits next to forward.
/// </summary>
public static class Ops
{
    private static IBackend On(Tensor a, params ReadOnlySpan<Tensor?> others)
    {
        foreach (var t in others)
            if (t is not null && !ReferenceEquals(t.Backend, a.Backend))
                throw new BackendException($"tensors on different backends: {a} and {t}");
        return a.Backend;
    }

    /// <summary>The gradient to accumulate into, or null when x needs none.</summary>
    private static Tensor? G(Tensor? x) => x is not null && x.RequiresGrad ? x.EnsureGrad() : null;

    // ---------------------------------------------------------------- views
    /// <summary>A reshaped view whose gradient flows back to x.</summary>
    public static Tensor Reshape(Tensor x, params int[] dims)
    {
        var y = x.Reshape(dims);
        if (Tape.ShouldRecord(x))
            Tape.Record("reshape", y, dy =>
            {
                using var gx = x.EnsureGrad().Reshape(dy.Shape.ToArray());
                x.Backend.AddBackward(dy, gx, null);
            });
        return y;
    }

    // ---------------------------------------------------------------- matmul
    /// <summary>op(a) @ op(b) + bias: a [..., M, K], b [..., K, N] or [K, N] shared, bias [N] -> [..., M, N].</summary>
    public static Tensor MatMul(Tensor a, Tensor b, Tensor? bias = null, bool transA = false, bool transB = false)
    {
        var be = On(a, b, bias);
        if (a.Rank < 2 || b.Rank < 2) throw new ShapeException($"matmul: operands must have rank >= 2, got a {a.Shape}, b {b.Shape}");
        var dims = a.Shape.ToArray();
        dims[^2] = transA ? a.Shape[-1] : a.Shape[-2];
        dims[^1] = transB ? b.Shape[-2] : b.Shape[-1];
        var y = be.Empty(new Shape(dims), a.DType);
        be.MatMul(a, b, bias, y, transA, transB);
        if (Tape.ShouldRecord(a, b, bias))
            Tape.Record("matmul", y, dy => be.MatMulBackward(a, b, dy, G(a), G(b), G(bias), transA, transB));
        return y;
    }

    /// <summary>PyTorch's Linear: x [..., In] @ weight[Out, In]^T + bias[Out] -> [..., Out].</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias) => MatMul(x, weight, bias, transA: false, transB: true);

    // ---------------------------------------------------------------- elementwise
    /// <summary>a + b, b's shape a suffix of a's.</summary>
    public static Tensor Add(Tensor a, Tensor b)
    {
        var be = On(a, b);
        var y = be.Empty(a.Shape, a.DType);
        be.Add(a, b, y);
        if (Tape.ShouldRecord(a, b)) Tape.Record("add", y, dy => be.AddBackward(dy, G(a), G(b)));
        return y;
    }

    /// <summary>a * b elementwise, b's shape a suffix of a's.</summary>
    public static Tensor Mul(Tensor a, Tensor b)
    {
        var be = On(a, b);
        var y = be.Empty(a.Shape, a.DType);
        be.Mul(a, b, y);
        if (Tape.ShouldRecord(a, b)) Tape.Record("mul", y, dy => be.MulBackward(a, b, dy, G(a), G(b)));
        return y;
    }

    public static Tensor Scale(Tensor x, float s)
    {
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.Scale(x, s, y);
        if (Tape.ShouldRecord(x)) Tape.Record("scale", y, dy => be.ScaleBackward(dy, s, x.EnsureGrad()));
        return y;
    }

    public static Tensor Gelu(Tensor x)
    {
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.Gelu(x, y);
        if (Tape.ShouldRecord(x)) Tape.Record("gelu", y, dy => be.GeluBackward(x, dy, x.EnsureGrad()));
        return y;
    }

    public static Tensor Tanh(Tensor x)
    {
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.Tanh(x, y);
        if (Tape.ShouldRecord(x)) Tape.Record("tanh", y, dy => be.TanhBackward(y, dy, x.EnsureGrad()));
        return y;
    }

    /// <summary>Sum of all elements -> [1].</summary>
    public static Tensor SumAll(Tensor x)
    {
        var be = x.Backend;
        var y = be.Empty(new Shape(1), x.DType);
        be.SumAll(x, y);
        if (Tape.ShouldRecord(x)) Tape.Record("sum", y, dy => be.SumAllBackward(dy, x.EnsureGrad()));
        return y;
    }

    // ---------------------------------------------------------------- normalisation
    /// <summary>Layer norm over the last dim: x [..., C], gamma [C], beta [C].</summary>
    public static Tensor LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps)
    {
        var be = On(x, gamma, beta);
        var rows = (int)x.Shape.Rows;
        var y = be.Empty(x.Shape, x.DType);
        var mean = be.Empty(new Shape(rows), x.DType);   // [R]
        var rstd = be.Empty(new Shape(rows), x.DType);   // [R]
        using var x2 = x.Reshape(rows, x.Shape[-1]);     // [R, C]
        using var y2 = y.Reshape(rows, x.Shape[-1]);
        be.LayerNorm(x2, gamma, beta, eps, y2, mean, rstd);
        if (Tape.ShouldRecord(x, gamma, beta))
            Tape.Record("layernorm", y, dy =>
            {
                using var xr = x.Reshape(rows, x.Shape[-1]);
                using var dy2 = dy.Reshape(rows, x.Shape[-1]);
                using var dx2 = G(x)?.Reshape(rows, x.Shape[-1]);
                be.LayerNormBackward(xr, gamma, mean, rstd, dy2, dx2, G(gamma), G(beta));
            }, mean, rstd);
        else { mean.Dispose(); rstd.Dispose(); }
        return y;
    }

    /// <summary>Softmax over the last dim of x [..., C] with an optional additive mask [Rm, C] (Rm divides x's rows).</summary>
    public static Tensor Softmax(Tensor x, Tensor? mask = null)
    {
        var be = On(x, mask);
        var y = be.Empty(x.Shape, x.DType);
        be.Softmax(x, mask, y);
        if (Tape.ShouldRecord(x)) Tape.Record("softmax", y, dy => be.SoftmaxBackward(y, dy, x.EnsureGrad()));
        return y;
    }

    // ---------------------------------------------------------------- attention
    /// <summary>softmax(q k^T * scale + keyMask) v: q [B, H, Tq, D], k, v [B, H, Tk, D], keyMask i32 [B, Tk] -> [B, H, Tq, D].</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale)
    {
        var be = On(q, k, v, keyMask);
        var o = be.Empty(q.Shape, q.DType);
        var lse = be.Empty(new Shape(q.Shape[0], q.Shape[1], q.Shape[2]), q.DType);   // [B, H, Tq]
        be.Attention(q, k, v, keyMask, scale, o, lse);
        if (Tape.ShouldRecord(q, k, v))
            Tape.Record("attention", o, dO => be.AttentionBackward(q, k, v, keyMask, scale, o, lse, dO, G(q), G(k), G(v)), lse);
        else lse.Dispose();
        return o;
    }

    /// <summary>x [A, B, C, D] -> [A, C, B, D].</summary>
    public static Tensor SwapAxes12(Tensor x)
    {
        var be = x.Backend;
        if (x.Rank != 4) throw new ShapeException($"swap axes: x must be rank 4, got {x.Shape}");
        var y = be.Empty(new Shape(x.Shape[0], x.Shape[2], x.Shape[1], x.Shape[3]), x.DType);
        be.SwapAxes12(x, y);
        if (Tape.ShouldRecord(x)) Tape.Record("swap axes", y, dy => be.SwapAxes12Backward(dy, x.EnsureGrad()));
        return y;
    }

    // ---------------------------------------------------------------- embeddings, pooling, sequences
    /// <summary>ids i32 [...] into table [V, C] -> [..., C].</summary>
    public static Tensor Embedding(Tensor ids, Tensor table)
    {
        var be = On(ids, table);
        var dims = ids.Shape.ToArray().Append(table.Shape[-1]).ToArray();
        var y = be.Empty(new Shape(dims), table.DType);
        using var flatIds = ids.Reshape((int)ids.Numel);
        using var y2 = y.Reshape((int)ids.Numel, table.Shape[-1]);
        be.Embedding(flatIds, table, y2);
        if (Tape.ShouldRecord(table))
            Tape.Record("embedding", y, dy =>
            {
                using var dy2 = dy.Reshape((int)ids.Numel, table.Shape[-1]);
                using var i2 = ids.Reshape((int)ids.Numel);
                be.EmbeddingBackward(i2, dy2, table.EnsureGrad());
            });
        return y;
    }

    /// <summary>Inverted dropout with a counter-based mask: the same seed gives the same mask on every backend.</summary>
    public static Tensor Dropout(Tensor x, float p, ulong seed, bool training)
    {
        if (!training || p == 0f) return Scale(x, 1f);
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.Dropout(x, p, seed, y);
        if (Tape.ShouldRecord(x)) Tape.Record("dropout", y, dy => be.DropoutBackward(dy, p, seed, x.EnsureGrad()));
        return y;
    }

    /// <summary>x [B, T, C], mask i32 [B, T] or null -> [B, C].</summary>
    public static Tensor MeanPool(Tensor x, Tensor? mask)
    {
        var be = On(x, mask);
        if (x.Rank != 3) throw new ShapeException($"mean pool: x must be [B, T, C], got {x.Shape}");
        var y = be.Empty(new Shape(x.Shape[0], x.Shape[2]), x.DType);
        be.MeanPool(x, mask, y);
        if (Tape.ShouldRecord(x)) Tape.Record("mean pool", y, dy => be.MeanPoolBackward(mask, dy, x.EnsureGrad()));
        return y;
    }

    /// <summary>Each row of x [N, C] divided by max(its L2 norm, eps).</summary>
    public static Tensor L2Normalize(Tensor x, float eps = 1e-12f)
    {
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.L2Normalize(x, eps, y);
        if (Tape.ShouldRecord(x)) Tape.Record("l2 normalize", y, dy => be.L2NormalizeBackward(x, eps, dy, x.EnsureGrad()));
        return y;
    }

    /// <summary>a [B, Ta, C], b [B, Tb, C] -> [B, Ta + Tb, C].</summary>
    public static Tensor Concat(Tensor a, Tensor b)
    {
        var be = On(a, b);
        if (a.Rank != 3 || b.Rank != 3) throw new ShapeException($"concat: a and b must be [B, T, C], got {a.Shape}, {b.Shape}");
        var y = be.Empty(new Shape(a.Shape[0], a.Shape[1] + b.Shape[1], a.Shape[2]), a.DType);
        be.Concat(a, b, y);
        if (Tape.ShouldRecord(a, b)) Tape.Record("concat", y, dy => be.ConcatBackward(dy, G(a), G(b)));
        return y;
    }

    /// <summary>x [B, T, C] -> x[:, start:start+length, :].</summary>
    public static Tensor Slice(Tensor x, int start, int length)
    {
        var be = x.Backend;
        if (x.Rank != 3) throw new ShapeException($"slice: x must be [B, T, C], got {x.Shape}");
        var y = be.Empty(new Shape(x.Shape[0], length, x.Shape[2]), x.DType);
        be.Slice(x, start, y);
        if (Tape.ShouldRecord(x)) Tape.Record("slice", y, dy => be.SliceBackward(dy, start, x.EnsureGrad()));
        return y;
    }

    // ---------------------------------------------------------------- losses
    /// <summary>Mean cross-entropy of logits [N, V] against targets i32 [N] (negative = ignored) -> [1].</summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets)
    {
        var be = On(logits, targets);
        var loss = be.Empty(new Shape(1), logits.DType);
        var lse = be.Empty(new Shape((int)logits.Shape.Rows), logits.DType);   // [N]
        be.CrossEntropy(logits, targets, loss, lse);
        if (Tape.ShouldRecord(logits))
            Tape.Record("cross entropy", loss, dl => be.CrossEntropyBackward(logits, targets, lse, dl, logits.EnsureGrad()), lse);
        else lse.Dispose();
        return loss;
    }

    /// <summary>Mean binary cross-entropy of logits x [N] against targets [N] in [0, 1] -> [1].</summary>
    public static Tensor BceWithLogits(Tensor x, Tensor targets)
    {
        var be = On(x, targets);
        var loss = be.Empty(new Shape(1), x.DType);
        be.BceWithLogits(x, targets, loss);
        if (Tape.ShouldRecord(x)) Tape.Record("bce", loss, dl => be.BceWithLogitsBackward(x, targets, dl, x.EnsureGrad()));
        return loss;
    }

    /// <summary>The VLDeformer loss: CE(t v^T / tau, diag) + CE(v t^T / tau, diag), t and v [N, D] -> [1].</summary>
    public static Tensor InfoNce(Tensor t, Tensor v, float temperature)
    {
        var be = On(t, v);
        if (!(temperature > 0)) throw new ShapeException($"infonce: temperature must be > 0, got {temperature}");
        int n = (int)t.Shape.Rows;
        var loss = be.Empty(new Shape(1), t.DType);
        var lseRow = be.Empty(new Shape(n), t.DType);   // [N]
        var lseCol = be.Empty(new Shape(n), t.DType);   // [N]
        be.InfoNce(t, v, 1f / temperature, loss, lseRow, lseCol);
        if (Tape.ShouldRecord(t, v))
            Tape.Record("infonce", loss, dl => be.InfoNceBackward(t, v, 1f / temperature, lseRow, lseCol, dl, G(t), G(v)), lseRow, lseCol);
        else { lseRow.Dispose(); lseCol.Dispose(); }
        return loss;
    }
}
