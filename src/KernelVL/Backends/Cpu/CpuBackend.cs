using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using KernelVL.Tensors;

namespace KernelVL.Backends.Cpu;

/// <summary>
/// The default backend without a GPU: managed SIMD (Vector512, Vector256 fallback through
/// TensorPrimitives), multithreaded, with a packed, blocked GEMM micro-kernel and flash-style
/// attention. f32 only. It derives from the scalar reference and overrides every op it speeds up;
/// the parity registry checks each override against the reference.
/// </summary>
public sealed unsafe partial class CpuBackend : ReferenceBackend
{
    public override string Name => "cpu";

    private static void F32(string op, params ReadOnlySpan<Tensor?> ts)
    {
        foreach (var t in ts)
            if (t is not null && t.DType != DType.F32)
                Contract.Fail(op, $"the cpu backend computes in f32, got a {t.DType.Name()} tensor {t.Shape}");
    }

    // ------------------------------------------------------------------ memory
    public override void Fill(Tensor x, float value)
    {
        if (x.DType == DType.F32) x.Span.Fill(value);
        else if (x.DType == DType.I32) x.SpanI32.Fill((int)value);
        else base.Fill(x, value);
    }

    // ------------------------------------------------------------------ matmul
    public override void MatMul(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transA, bool transB, bool accumulate = false)
    {
        var d = Contract.MatMul(a, b, bias, y, transA, transB);
        F32("matmul", a, b, bias, y);
        float* A = a.F32Ptr, B = b.F32Ptr, Y = y.F32Ptr, Bias = bias is null ? null : bias.F32Ptr;
        int lda = a.Shape[-1], ldb = b.Shape[-1];
        if (d.SharedB && !transA)
        {
            // [batch, M, K] @ [K, N] is one [batch*M, K] @ [K, N] product.
            CpuGemm.Gemm(d.Batch * d.M, d.N, d.K, A, lda, false, B, ldb, transB, Y, d.N, 1f, accumulate, Bias, parallel: true);
            return;
        }
        long sa = (long)d.M * d.K, sb = d.SharedB ? 0 : (long)d.K * d.N, sy = (long)d.M * d.N;
        Batched(d.Batch, (long)d.M * d.N * d.K, (p, par) =>
            CpuGemm.Gemm(d.M, d.N, d.K, A + p * sa, lda, transA, B + p * sb, ldb, transB, Y + p * sy, d.N, 1f, accumulate, Bias, par));
    }

    /// <summary>Runs independent products in parallel when there are many small ones, else each product in parallel.</summary>
    private static void Batched(int batch, long flopsEach, Action<int, bool> one)
    {
        if (batch >= 2 * CpuParallel.Threads && flopsEach < 256L * 256 * 256) CpuParallel.Each(batch, p => one(p, false));
        else for (int p = 0; p < batch; p++) one(p, true);
    }

    public override void MatMulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db, Tensor? dbias, bool transA, bool transB)
    {
        var d = Contract.MatMul(a, b, dbias, dy, transA, transB);
        Contract.SameShapeOrNull("matmul backward", "a", a, "da", da);
        Contract.SameShapeOrNull("matmul backward", "b", b, "db", db);
        F32("matmul backward", a, b, dy, da, db, dbias);
        float* A = a.F32Ptr, B = b.F32Ptr, DY = dy.F32Ptr;
        int lda = a.Shape[-1], ldb = b.Shape[-1];
        int M = d.M, N = d.N, K = d.K;
        long sa = (long)M * K, sb = d.SharedB ? 0 : (long)K * N, sy = (long)M * N;

        if (da is not null)
        {
            float* DA = da.F32Ptr;
            if (!transA && d.SharedB)      // da [batch*M, K] += dy [batch*M, N] @ op(b)^T
                CpuGemm.Gemm(d.Batch * M, K, N, DY, N, false, B, ldb, !transB, DA, K, 1f, true, null, true);
            else if (!transA)
                Batched(d.Batch, sa * N, (p, par) => CpuGemm.Gemm(M, K, N, DY + p * sy, N, false, B + p * sb, ldb, !transB, DA + p * sa, K, 1f, true, null, par));
            else                           // da [K, M] += op(b) [K, N] @ dy^T [N, M]
                Batched(d.Batch, sa * N, (p, par) => CpuGemm.Gemm(K, M, N, B + p * sb, ldb, transB, DY + p * sy, N, true, DA + p * sa, M, 1f, true, null, par));
        }
        if (db is not null)
        {
            float* DB = db.F32Ptr;
            if (d.SharedB && !transA)
            {
                int rows = d.Batch * M;   // a and dy flattened to [rows, K] and [rows, N]
                if (!transB) CpuGemm.Gemm(K, N, rows, A, lda, true, DY, N, false, DB, N, 1f, true, null, true);
                else CpuGemm.Gemm(N, K, rows, DY, N, true, A, lda, false, DB, K, 1f, true, null, true);
            }
            else if (d.SharedB)
            {
                for (int p = 0; p < d.Batch; p++)
                    if (!transB) CpuGemm.Gemm(K, N, M, A + p * sa, lda, !transA, DY + p * sy, N, false, DB, N, 1f, true, null, true);
                    else CpuGemm.Gemm(N, K, M, DY + p * sy, N, true, A + p * sa, lda, transA, DB, K, 1f, true, null, true);
            }
            else
            {
                Batched(d.Batch, sa * N, (p, par) =>
                {
                    if (!transB) CpuGemm.Gemm(K, N, M, A + p * sa, lda, !transA, DY + p * sy, N, false, DB + p * sb, N, 1f, true, null, par);
                    else CpuGemm.Gemm(N, K, M, DY + p * sy, N, true, A + p * sa, lda, transA, DB + p * sb, K, 1f, true, null, par);
                });
            }
        }
        if (dbias is not null) ColumnSums(DY, (long)d.Batch * M, N, dbias.F32Ptr);
    }

    /// <summary>
    /// sums[j] += sum over rows of x[r, j], or of x[r, j] y[r, j] where y is given (one FMA a term, no product array);
    /// x, y [rows, n]. Rows are split over the cores; each part sums blocks of 64 rows first and adds the block sums,
    /// so the f32 rounding grows with 64 + rows/64, not with rows.
    /// </summary>
    private static void ColumnSums(float* x, long rows, int n, float* sums, float* y = null)
    {
        const int Block = 64;
        int parts = (int)Math.Clamp(rows / 64, 1, CpuParallel.Threads);
        var partial = new float[parts * n];
        long per = (rows + parts - 1) / parts;
        long px = (long)x, py = (long)y;
        CpuParallel.Each(parts, t =>
        {
            var acc = partial.AsSpan(t * n, n);
            var block = new float[n];
            float* X = (float*)px, Y = (float*)py;
            long r0 = t * per, r1 = Math.Min(rows, (t + 1) * per);
            for (long b = r0; b < r1; b += Block)
            {
                Array.Clear(block);
                for (long r = b; r < Math.Min(r1, b + Block); r++)
                {
                    var xr = new ReadOnlySpan<float>(X + r * n, n);
                    if (Y == null) TensorPrimitives.Add(block, xr, block);
                    else TensorPrimitives.FusedMultiplyAdd(xr, new ReadOnlySpan<float>(Y + r * n, n), block, block);
                }
                TensorPrimitives.Add(acc, block, acc);
            }
        });
        var s = new Span<float>(sums, n);
        for (int t = 0; t < parts; t++) TensorPrimitives.Add(s, partial.AsSpan(t * n, n), s);
    }

    // ------------------------------------------------------------------ elementwise
    /// <summary>Applies body to [start, end) element ranges in parallel for big tensors.</summary>
    private static void Elementwise(long n, Action<long, long> body) => CpuParallel.For(n, 1 << 15, body);

    private static Span<float> S(float* p, long start, long end) => new(p + start, (int)(end - start));

    public override void Add(Tensor a, Tensor b, Tensor y)
    {
        var (outer, inner) = Contract.Broadcast("add", a, b);
        Contract.SameShape("add", "a", a, "y", y);
        F32("add", a, b, y);
        float* A = a.F32Ptr, B = b.F32Ptr, Y = y.F32Ptr;
        if (outer == 1) Elementwise(inner, (s, e) => TensorPrimitives.Add(S(A, s, e), S(B, s, e), S(Y, s, e)));
        else CpuParallel.For(outer, Math.Max(1, (1 << 15) / Math.Max(1, inner)), (s, e) =>
        {
            for (long o = s; o < e; o++) TensorPrimitives.Add(S(A, o * inner, (o + 1) * inner), S(B, 0, inner), S(Y, o * inner, (o + 1) * inner));
        });
    }

    public override void AddBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        F32("add backward", dy, da, db);
        float* DY = dy.F32Ptr;
        if (da is not null)
        {
            Contract.SameShape("add backward", "dy", dy, "da", da);
            float* DA = da.F32Ptr;
            Elementwise(dy.Numel, (s, e) => TensorPrimitives.Add(S(DA, s, e), S(DY, s, e), S(DA, s, e)));
        }
        if (db is null) return;
        var (outer, inner) = Contract.Broadcast("add backward", dy, db);
        ColumnSums(DY, outer, checked((int)inner), db.F32Ptr);
    }

    public override void Mul(Tensor a, Tensor b, Tensor y)
    {
        var (outer, inner) = Contract.Broadcast("mul", a, b);
        Contract.SameShape("mul", "a", a, "y", y);
        F32("mul", a, b, y);
        float* A = a.F32Ptr, B = b.F32Ptr, Y = y.F32Ptr;
        CpuParallel.For(outer, Math.Max(1, (1 << 15) / Math.Max(1, inner)), (s, e) =>
        {
            for (long o = s; o < e; o++) TensorPrimitives.Multiply(S(A, o * inner, (o + 1) * inner), S(B, 0, inner), S(Y, o * inner, (o + 1) * inner));
        });
    }

    public override void MulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db)
    {
        var (outer, inner) = Contract.Broadcast("mul backward", a, b);
        Contract.SameShape("mul backward", "a", a, "dy", dy);
        F32("mul backward", a, b, dy, da, db);
        float* A = a.F32Ptr, B = b.F32Ptr, DY = dy.F32Ptr;
        if (da is not null)
        {
            float* DA = da.F32Ptr;
            CpuParallel.For(outer, Math.Max(1, (1 << 15) / Math.Max(1, inner)), (s, e) =>
            {
                for (long o = s; o < e; o++)
                    TensorPrimitives.FusedMultiplyAdd(S(DY, o * inner, (o + 1) * inner), S(B, 0, inner), S(DA, o * inner, (o + 1) * inner), S(DA, o * inner, (o + 1) * inner));
            });
        }
        // db[i] += sum_o dy[o, i] a[o, i], fused: a product array of dy's size (a 25 MB managed allocation at 8192 x 768)
        // made this 50x slower than add's backward.
        if (db is not null) ColumnSums(DY, outer, checked((int)inner), db.F32Ptr, A);
    }

    public override void Scale(Tensor x, float s, Tensor y)
    {
        Contract.SameShape("scale", "x", x, "y", y);
        F32("scale", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        Elementwise(x.Numel, (a, e) => TensorPrimitives.Multiply(S(X, a, e), s, S(Y, a, e)));
    }

    public override void ScaleBackward(Tensor dy, float s, Tensor dx)
    {
        Contract.SameShape("scale backward", "dy", dy, "dx", dx);
        F32("scale backward", dy, dx);
        float* D = dy.F32Ptr, DX = dx.F32Ptr;
        Elementwise(dy.Numel, (a, e) => TensorPrimitives.FusedMultiplyAdd(S(D, a, e), s, S(DX, a, e), S(DX, a, e)));
    }

    public override void Gelu(Tensor x, Tensor y)
    {
        Contract.SameShape("gelu", "x", x, "y", y);
        F32("gelu", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        Elementwise(x.Numel, (s, e) => CpuMath.Gelu(X + s, Y + s, e - s));
    }

    public override void GeluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        Contract.SameShape("gelu backward", "x", x, "dy", dy);
        Contract.SameShape("gelu backward", "x", x, "dx", dx);
        F32("gelu backward", x, dy, dx);
        float* X = x.F32Ptr, D = dy.F32Ptr, DX = dx.F32Ptr;
        Elementwise(x.Numel, (s, e) => CpuMath.GeluBackward(X + s, D + s, DX + s, e - s));
    }

    public override void Tanh(Tensor x, Tensor y)
    {
        Contract.SameShape("tanh", "x", x, "y", y);
        F32("tanh", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        Elementwise(x.Numel, (s, e) => TensorPrimitives.Tanh(S(X, s, e), S(Y, s, e)));
    }

    public override void TanhBackward(Tensor y, Tensor dy, Tensor dx)
    {
        Contract.SameShape("tanh backward", "y", y, "dy", dy);
        Contract.SameShape("tanh backward", "y", y, "dx", dx);
        F32("tanh backward", y, dy, dx);
        float* Y = y.F32Ptr, D = dy.F32Ptr, DX = dx.F32Ptr;
        Elementwise(y.Numel, (s, e) =>
        {
            for (long i = s; i < e; i++) DX[i] += D[i] * (1f - Y[i] * Y[i]);
        });
    }

    public override void SumAll(Tensor x, Tensor y)
    {
        Contract.Scalar("sum", "y", y);
        F32("sum", x, y);
        float* X = x.F32Ptr;
        double total = 0;
        const int chunk = 1 << 14;
        for (long s = 0; s < x.Numel; s += chunk) total += TensorPrimitives.Sum(S(X, s, Math.Min(x.Numel, s + chunk)));
        *y.F32Ptr = (float)total;
    }

    public override void SumAllBackward(Tensor dy, Tensor dx)
    {
        Contract.Scalar("sum backward", "dy", dy);
        F32("sum backward", dy, dx);
        float g = *dy.F32Ptr;
        float* DX = dx.F32Ptr;
        Elementwise(dx.Numel, (s, e) => TensorPrimitives.Add(S(DX, s, e), g, S(DX, s, e)));
    }
}
