using KernelVL.Tensors;

namespace KernelVL;

/// <summary>
/// Host-side argument checks shared by every backend: each returns the sizes the op loops over, or
/// throws a <see cref="ShapeException"/> naming the op, the argument and the shapes. Run before any launch.
/// </summary>
public static class Contract
{
    public readonly record struct MatMulDims(int Batch, int M, int N, int K, bool SharedB);
    public readonly record struct RowDims(int Rows, int Cols);
    public readonly record struct AttentionDims(int B, int H, int Tq, int Tk, int D);
    public readonly record struct SeqDims(int B, int T, int C);

    public static void Fail(string op, string message) => throw new ShapeException($"{op}: {message}");

    public static void DTypeIs(string op, string name, Tensor t, DType dtype)
    {
        if (t.DType != dtype) Fail(op, $"{name} must be {dtype.Name()}, got {t.DType.Name()} {t.Shape}");
    }

    public static void Float(string op, string name, Tensor t)
    {
        if (t.DType is not (DType.F32 or DType.F64)) Fail(op, $"{name} must be floating point, got {t.DType.Name()} {t.Shape}");
    }

    public static void SameShape(string op, string nameA, Tensor a, string nameB, Tensor b)
    {
        if (a.Shape != b.Shape) Fail(op, $"{nameA} {a.Shape} and {nameB} {b.Shape} must have the same shape");
    }

    public static void SameShapeOrNull(string op, string nameA, Tensor a, string nameB, Tensor? b)
    {
        if (b is not null) SameShape(op, nameA, a, nameB, b);
    }

    public static void Dims(string op, string name, Tensor t, params int[] dims)
    {
        if (t.Shape != new Shape(dims)) Fail(op, $"{name} must be [{string.Join(", ", dims)}], got {t.Shape}");
    }

    public static void DimsOrNull(string op, string name, Tensor? t, params int[] dims)
    {
        if (t is not null) Dims(op, name, t, dims);
    }

    public static void Scalar(string op, string name, Tensor t)
    {
        if (t.Numel != 1) Fail(op, $"{name} must have one element, got {t.Shape}");
    }

    public static MatMulDims MatMul(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transA, bool transB)
    {
        const string op = "matmul";
        if (a.Rank < 2) Fail(op, $"a must have rank >= 2, got {a.Shape}");
        if (b.Rank != 2 && b.Rank != a.Rank) Fail(op, $"b must have rank 2 or the rank of a {a.Shape}, got {b.Shape}");
        int m = transA ? a.Shape[-1] : a.Shape[-2];
        int k = transA ? a.Shape[-2] : a.Shape[-1];
        int kb = transB ? b.Shape[-1] : b.Shape[-2];
        int n = transB ? b.Shape[-2] : b.Shape[-1];
        if (k != kb) Fail(op, $"inner dims differ: a {a.Shape}{(transA ? "^T" : "")} @ b {b.Shape}{(transB ? "^T" : "")}");
        long batch = a.Shape.Product(0, a.Rank - 2);
        bool shared = b.Rank == 2;
        if (!shared)
            for (int i = 0; i < a.Rank - 2; i++)
                if (a.Shape[i] != b.Shape[i]) Fail(op, $"batch dims differ: a {a.Shape}, b {b.Shape}");
        var yDims = a.Shape.ToArray();
        yDims[^2] = m;
        yDims[^1] = n;
        if (y.Shape != new Shape(yDims)) Fail(op, $"y must be {new Shape(yDims)}, got {y.Shape}");
        if (bias is not null && bias.Shape != new Shape(n)) Fail(op, $"bias must be [{n}], got {bias.Shape}");
        return new MatMulDims(checked((int)batch), m, n, k, shared);
    }

    /// <summary>b's shape must be a suffix of a's; returns (outer repeats, inner size).</summary>
    public static (long Outer, long Inner) Broadcast(string op, Tensor a, Tensor b)
    {
        if (b.Rank > a.Rank) Fail(op, $"b {b.Shape} must broadcast to a {a.Shape}");
        for (int i = 0; i < b.Rank; i++)
            if (b.Shape[b.Rank - 1 - i] != a.Shape[a.Rank - 1 - i]) Fail(op, $"b {b.Shape} must be a suffix of a {a.Shape}");
        return (a.Numel / Math.Max(1, b.Numel), b.Numel);
    }

    public static RowDims Rows(string op, string name, Tensor x)
    {
        if (x.Rank < 1) Fail(op, $"{name} must have rank >= 1, got {x.Shape}");
        return new RowDims(checked((int)x.Shape.Rows), x.Shape[-1]);
    }

    public static AttentionDims Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, Tensor o, Tensor lse)
    {
        const string op = "attention";
        if (q.Rank != 4) Fail(op, $"q must be [B, H, Tq, D], got {q.Shape}");
        int b = q.Shape[0], h = q.Shape[1], tq = q.Shape[2], d = q.Shape[3];
        if (k.Rank != 4 || k.Shape[0] != b || k.Shape[1] != h || k.Shape[3] != d) Fail(op, $"k must be [{b}, {h}, Tk, {d}], got {k.Shape}");
        int tk = k.Shape[2];
        SameShape(op, "k", k, "v", v);
        SameShape(op, "q", q, "o", o);
        Dims(op, "lse", lse, b, h, tq);
        if (keyMask is not null)
        {
            DTypeIs(op, "keyMask", keyMask, DType.I32);
            Dims(op, "keyMask", keyMask, b, tk);
        }
        return new AttentionDims(b, h, tq, tk, d);
    }

    public static AttentionDims AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv)
    {
        const string op = "attention backward";
        var d = Attention(q, k, v, keyMask, o, lse);
        SameShape(op, "o", o, "dO", dO);
        SameShapeOrNull(op, "q", q, "dq", dq);
        SameShapeOrNull(op, "k", k, "dk", dk);
        SameShapeOrNull(op, "v", v, "dv", dv);
        return d;
    }

    public static SeqDims Seq(string op, string name, Tensor x)
    {
        if (x.Rank != 3) Fail(op, $"{name} must be [B, T, C], got {x.Shape}");
        return new SeqDims(x.Shape[0], x.Shape[1], x.Shape[2]);
    }

    public static void Mask(string op, Tensor? mask, int b, int t)
    {
        if (mask is null) return;
        DTypeIs(op, "mask", mask, DType.I32);
        Dims(op, "mask", mask, b, t);
    }

    public const int MaxTopK = 1024;

    /// <summary>Checks a top-k search; returns (Q, N, D).</summary>
    public static (int Q, int N, int D) TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        const string op = "topk";
        if (queries.Rank != 2) Fail(op, $"queries must be [Q, D], got {queries.Shape}");
        if (corpus.Rank != 2 || corpus.Shape[1] != queries.Shape[1]) Fail(op, $"corpus must be [N, {queries.Shape[1]}], got {corpus.Shape}");
        int q = queries.Shape[0], n = corpus.Shape[0];
        if (k < 1 || k > Math.Min(n, MaxTopK)) Fail(op, $"k must be in [1, min(N = {n}, {MaxTopK})], got {k}");
        Dims(op, "scores", scores, q, k);
        DTypeIs(op, "indices", indices, DType.I32);
        Dims(op, "indices", indices, q, k);
        return (q, n, queries.Shape[1]);
    }

    /// <summary>Checks a top-k search over <paramref name="rowValues"/> values of host rows (<see cref="IHostRowsTopK"/>); returns (Q, N, D).</summary>
    public static (int Q, int N, int D) TopKRows(Tensor queries, long rowValues, int k, Tensor scores, Tensor indices)
    {
        const string op = "topk rows";
        if (queries.Rank != 2) Fail(op, $"queries must be [Q, D], got {queries.Shape}");
        int q = queries.Shape[0], d = queries.Shape[1];
        if (d == 0 || rowValues % d != 0) Fail(op, $"{rowValues} values are not rows of {d}");
        long n = rowValues / d;
        if (n > int.MaxValue) Fail(op, $"{n} rows: at most {int.MaxValue} a call");
        if (k < 1 || k > Math.Min(n, MaxTopK)) Fail(op, $"k must be in [1, min(N = {n}, {MaxTopK})], got {k}");
        Dims(op, "scores", scores, q, k);
        DTypeIs(op, "indices", indices, DType.I32);
        Dims(op, "indices", indices, q, k);
        return (q, (int)n, d);
    }

    public static void Dropout(float p)
    {
        if (!(p >= 0f && p < 1f)) Fail("dropout", $"p must be in [0, 1), got {p}");
    }
}
