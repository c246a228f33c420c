using System.Runtime.Intrinsics;
using KernelVL.Tensors;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace KernelVL.Backends.Cpu;

// Row-wise ops: layer norm, softmax, losses, pooling, normalisation; rows are split over the cores.
public sealed unsafe partial class CpuBackend
{
    private static void Rows(long rows, long cols, Action<long, long> body)
        => CpuParallel.For(rows, Math.Max(1, (1 << 14) / Math.Max(1, cols)), body);

    public override void LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor y, Tensor mean, Tensor rstd)
    {
        const string op = "layernorm";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.Dims(op, "gamma", gamma, c); Contract.Dims(op, "beta", beta, c);
        Contract.SameShape(op, "x", x, "y", y); Contract.Dims(op, "mean", mean, r); Contract.Dims(op, "rstd", rstd, r);
        F32(op, x, gamma, beta, y, mean, rstd);
        float* X = x.F32Ptr, G = gamma.F32Ptr, B = beta.F32Ptr, Y = y.F32Ptr, M = mean.F32Ptr, R = rstd.F32Ptr;
        bool streaming = y.Numel * 4L > StreamingBytes;   // see Softmax
        Rows(r, c, (s, e) =>
        {
            var scratch = Scratch(c);
            fixed (float* t = scratch)
                for (long i = s; i < e; i++)
                {
                    if (i + 2 < e) CpuMath.Prefetch(X + (i + 2) * c, c);
                    var xr = new ReadOnlySpan<float>(X + i * c, c);
                    var tr = new Span<float>(t, c);
                    float m = TensorPrimitives.Sum(xr) / c;
                    TensorPrimitives.Subtract(xr, m, tr);                 // t = x - mean
                    float v = TensorPrimitives.SumOfSquares(tr) / c;      // two-pass variance
                    float rs = 1f / MathF.Sqrt(v + eps);
                    TensorPrimitives.Multiply(tr, rs, tr);
                    TensorPrimitives.FusedMultiplyAdd(tr, new ReadOnlySpan<float>(G, c), new ReadOnlySpan<float>(B, c), tr);
                    CpuMath.ScaleStore(t, 1f, Y + i * c, c, streaming);
                    M[i] = m; R[i] = rs;
                }
        });
    }

    public override void LayerNormBackward(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dgamma, Tensor? dbeta)
    {
        const string op = "layernorm backward";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "dy", dy); Contract.SameShapeOrNull(op, "x", x, "dx", dx);
        Contract.DimsOrNull(op, "dgamma", dgamma, c); Contract.DimsOrNull(op, "dbeta", dbeta, c);
        F32(op, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
        float* X = x.F32Ptr, G = gamma.F32Ptr, M = mean.F32Ptr, R = rstd.F32Ptr, D = dy.F32Ptr;
        float* DX = dx is null ? null : dx.F32Ptr;
        int parts = (int)Math.Clamp(r / 16, 1, CpuParallel.Threads);
        var partG = new float[parts * c];
        var partB = new float[parts * c];
        long per = (r + parts - 1) / parts;
        CpuParallel.Each(parts, t =>
        {
            fixed (float* pg = partG, pb = partB)
                for (long i = t * per; i < Math.Min(r, (t + 1) * per); i++)
                {
                    if (i + 2 < r) { CpuMath.Prefetch(X + (i + 2) * c, c); CpuMath.Prefetch(D + (i + 2) * c, c); }
                    CpuMath.LayerNormBackwardRow(X + i * c, D + i * c, G, M[i], R[i], c, DX == null ? null : DX + i * c, pg + t * c, pb + t * c);
                }
        });
        for (int t = 0; t < parts; t++)
        {
            if (dgamma is not null) TensorPrimitives.Add(dgamma.Span, partG.AsSpan(t * c, c), dgamma.Span);
            if (dbeta is not null) TensorPrimitives.Add(dbeta.Span, partB.AsSpan(t * c, c), dbeta.Span);
        }
    }

    public override void Softmax(Tensor x, Tensor? mask, Tensor y)
    {
        const string op = "softmax";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "y", y);
        int per = SoftmaxMaskRows(op, r, c, mask);
        F32(op, x, mask, y);
        float* X = x.F32Ptr, Y = y.F32Ptr, MK = mask is null ? null : mask.F32Ptr;
        // Each row: (x + mask) -> max -> exp(. - max) into an L1-resident scratch row -> scaled into y. Outputs far
        // beyond the caches are streamed out (non-temporal stores), so y's lines are never read from memory.
        bool streaming = y.Numel * 4L > StreamingBytes;
        Rows(r, c, (s, e) =>
        {
            var scratch = Scratch(c);
            fixed (float* t = scratch)
                for (long i = s; i < e; i++)
                {
                    float* src = X + i * c;
                    if (i + 2 < e) CpuMath.Prefetch(X + (i + 2) * c, c);
                    if (MK != null)
                    {
                        TensorPrimitives.Add(new ReadOnlySpan<float>(src, c), new ReadOnlySpan<float>(MK + i / per * c, c), new Span<float>(t, c));
                        src = t;
                    }
                    float mx = TensorPrimitives.Max(new ReadOnlySpan<float>(src, c));
                    if (float.IsNegativeInfinity(mx)) { new Span<float>(Y + i * c, c).Clear(); continue; }   // fully masked row
                    float sum = CpuMath.ExpShift(src, t, c, mx);
                    CpuMath.ScaleStore(t, 1f / sum, Y + i * c, c, streaming);
                }
        });
    }

    /// <summary>Outputs larger than this (bytes) are written with non-temporal stores where a kernel supports it.</summary>
    private const long StreamingBytes = 64L << 20;

    public override void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx)
    {
        const string op = "softmax backward";
        var (r, c) = Contract.Rows(op, "y", y);
        Contract.SameShape(op, "y", y, "dy", dy); Contract.SameShape(op, "y", y, "dx", dx);
        F32(op, y, dy, dx);
        float* Y = y.F32Ptr, D = dy.F32Ptr, DX = dx.F32Ptr;
        Rows(r, c, (s, e) =>
        {
            var t = new float[c];
            for (long i = s; i < e; i++)
            {
                var yr = new ReadOnlySpan<float>(Y + i * c, c);
                var dr = new ReadOnlySpan<float>(D + i * c, c);
                // sum(y * dy) in chunks of 128 added in double: the f32 error no longer grows with the row length
                double acc = 0;
                for (int k = 0; k < c; k += 128) acc += TensorPrimitives.Dot(yr.Slice(k, Math.Min(128, c - k)), dr.Slice(k, Math.Min(128, c - k)));
                float dot = (float)acc;
                TensorPrimitives.Subtract(dr, dot, t);
                var dxr = new Span<float>(DX + i * c, c);
                TensorPrimitives.FusedMultiplyAdd(yr, t, dxr, dxr);
            }
        });
    }

    // ------------------------------------------------------------------ pooling, normalisation, sequences
    public override void MeanPool(Tensor x, Tensor? mask, Tensor y)
    {
        const string op = "mean pool";
        var (b, t, c) = Contract.Seq(op, "x", x);
        Contract.Mask(op, mask, b, t);
        Contract.Dims(op, "y", y, b, c);
        F32(op, x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        int* MK = mask is null ? null : mask.I32Ptr;
        CpuParallel.Each(b, i =>
        {
            var yr = new Span<float>(Y + (long)i * c, c);
            yr.Clear();
            int n = 0;
            for (int s = 0; s < t; s++)
            {
                if (MK != null && MK[i * t + s] == 0) continue;
                n++;
                TensorPrimitives.Add(yr, new ReadOnlySpan<float>(X + ((long)i * t + s) * c, c), yr);
            }
            if (n > 0) TensorPrimitives.Multiply(yr, 1f / n, yr);
        });
    }

    public override void MeanPoolBackward(Tensor? mask, Tensor dy, Tensor dx)
    {
        const string op = "mean pool backward";
        var (b, t, c) = Contract.Seq(op, "dx", dx);
        Contract.Mask(op, mask, b, t);
        Contract.Dims(op, "dy", dy, b, c);
        F32(op, dy, dx);
        float* D = dy.F32Ptr, DX = dx.F32Ptr;
        int* MK = mask is null ? null : mask.I32Ptr;
        CpuParallel.Each(b, i =>
        {
            int n = 0;
            for (int s = 0; s < t; s++) if (MK == null || MK[i * t + s] != 0) n++;
            if (n == 0) return;
            var dr = new ReadOnlySpan<float>(D + (long)i * c, c);
            for (int s = 0; s < t; s++)
            {
                if (MK != null && MK[i * t + s] == 0) continue;
                var dxr = new Span<float>(DX + ((long)i * t + s) * c, c);
                TensorPrimitives.FusedMultiplyAdd(dr, 1f / n, dxr, dxr);
            }
        });
    }

    public override void L2Normalize(Tensor x, float eps, Tensor y)
    {
        var (r, c) = Contract.Rows("l2 normalize", "x", x);
        Contract.SameShape("l2 normalize", "x", x, "y", y);
        F32("l2 normalize", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        Rows(r, c, (s, e) =>
        {
            for (long i = s; i < e; i++)
            {
                var xr = new ReadOnlySpan<float>(X + i * c, c);
                float n = MathF.Max(TensorPrimitives.Norm(xr), eps);
                TensorPrimitives.Multiply(xr, 1f / n, new Span<float>(Y + i * c, c));
            }
        });
    }

    public override void L2NormalizeBackward(Tensor x, float eps, Tensor dy, Tensor dx)
    {
        var (r, c) = Contract.Rows("l2 normalize backward", "x", x);
        Contract.SameShape("l2 normalize backward", "x", x, "dy", dy);
        Contract.SameShape("l2 normalize backward", "x", x, "dx", dx);
        F32("l2 normalize backward", x, dy, dx);
        float* X = x.F32Ptr, D = dy.F32Ptr, DX = dx.F32Ptr;
        Rows(r, c, (s, e) =>
        {
            for (long i = s; i < e; i++)
            {
                var xr = new ReadOnlySpan<float>(X + i * c, c);
                var dr = new ReadOnlySpan<float>(D + i * c, c);
                var dxr = new Span<float>(DX + i * c, c);
                float n = TensorPrimitives.Norm(xr);
                if (n > eps)
                {
                    float dot = TensorPrimitives.Dot(xr, dr);
                    TensorPrimitives.FusedMultiplyAdd(dr, 1f / n, dxr, dxr);
                    TensorPrimitives.FusedMultiplyAdd(xr, -dot / (n * n * n), dxr, dxr);
                }
                else TensorPrimitives.FusedMultiplyAdd(dr, 1f / eps, dxr, dxr);
            }
        });
    }

    public override void Concat(Tensor a, Tensor b, Tensor y)
    {
        var da = Contract.Seq("concat", "a", a); var db = Contract.Seq("concat", "b", b);
        if (da.B != db.B || da.C != db.C) Contract.Fail("concat", $"a {a.Shape} and b {b.Shape} differ outside the sequence dim");
        Contract.Dims("concat", "y", y, da.B, da.T + db.T, da.C);
        F32("concat", a, b, y);
        long ra = (long)da.T * da.C, rb = (long)db.T * da.C;
        float* A = a.F32Ptr, B = b.F32Ptr, Y = y.F32Ptr;
        CpuParallel.Each(da.B, i =>
        {
            Buffer.MemoryCopy(A + i * ra, Y + i * (ra + rb), ra * 4, ra * 4);
            Buffer.MemoryCopy(B + i * rb, Y + i * (ra + rb) + ra, rb * 4, rb * 4);
        });
    }

    public override void ConcatBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        var d = Contract.Seq("concat backward", "dy", dy);
        int ta = da?.Shape[1] ?? d.T - db!.Shape[1];
        int tb = d.T - ta;
        Contract.DimsOrNull("concat backward", "da", da, d.B, ta, d.C);
        Contract.DimsOrNull("concat backward", "db", db, d.B, tb, d.C);
        F32("concat backward", dy, da, db);
        long ra = (long)ta * d.C, rb = (long)tb * d.C;
        float* D = dy.F32Ptr, DA = da is null ? null : da.F32Ptr, DB = db is null ? null : db.F32Ptr;
        CpuParallel.Each(d.B, i =>
        {
            if (DA != null) TensorPrimitives.Add(S(DA, i * ra, (i + 1) * ra), S(D, i * (ra + rb), i * (ra + rb) + ra), S(DA, i * ra, (i + 1) * ra));
            if (DB != null) TensorPrimitives.Add(S(DB, i * rb, (i + 1) * rb), S(D, i * (ra + rb) + ra, (i + 1) * (ra + rb)), S(DB, i * rb, (i + 1) * rb));
        });
    }

    public override void Slice(Tensor x, int start, Tensor y)
    {
        var d = Contract.Seq("slice", "x", x);
        var dy = Contract.Seq("slice", "y", y);
        if (dy.B != d.B || dy.C != d.C || start < 0 || start + dy.T > d.T)
            Contract.Fail("slice", $"y {y.Shape} at {start} does not fit in x {x.Shape}");
        F32("slice", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        long len = (long)dy.T * d.C;
        CpuParallel.Each(d.B, i => Buffer.MemoryCopy(X + ((long)i * d.T + start) * d.C, Y + i * len, len * 4, len * 4));
    }

    public override void SliceBackward(Tensor dy, int start, Tensor dx)
    {
        var d = Contract.Seq("slice backward", "dx", dx);
        var g = Contract.Seq("slice backward", "dy", dy);
        if (g.B != d.B || g.C != d.C || start < 0 || start + g.T > d.T)
            Contract.Fail("slice backward", $"dy {dy.Shape} at {start} does not fit in dx {dx.Shape}");
        F32("slice backward", dy, dx);
        float* D = dy.F32Ptr, DX = dx.F32Ptr;
        long len = (long)g.T * d.C;
        CpuParallel.Each(d.B, i =>
        {
            long o = ((long)i * d.T + start) * d.C;
            TensorPrimitives.Add(S(DX, o, o + len), S(D, i * len, (i + 1) * len), S(DX, o, o + len));
        });
    }

    public override void SwapAxes12(Tensor x, Tensor y)
    {
        if (x.Rank != 4) Contract.Fail("swap axes", $"x must be rank 4, got {x.Shape}");
        int a = x.Shape[0], b = x.Shape[1], c = x.Shape[2], d = x.Shape[3];
        Contract.Dims("swap axes", "y", y, a, c, b, d);
        F32("swap axes", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        CpuParallel.For((long)a * b, Math.Max(1, 4096 / Math.Max(1, (long)c * d)), (s, e) =>
        {
            for (long ij = s; ij < e; ij++)
            {
                long i = ij / b, j = ij % b;
                for (int k = 0; k < c; k++)
                    Buffer.MemoryCopy(X + ((ij * c) + k) * d, Y + ((i * c + k) * b + j) * d, d * 4L, d * 4L);
            }
        });
    }

    public override void SwapAxes12Backward(Tensor dy, Tensor dx)
    {
        if (dx.Rank != 4) Contract.Fail("swap axes backward", $"dx must be rank 4, got {dx.Shape}");
        int a = dx.Shape[0], b = dx.Shape[1], c = dx.Shape[2], d = dx.Shape[3];
        Contract.Dims("swap axes backward", "dy", dy, a, c, b, d);
        F32("swap axes backward", dy, dx);
        float* D = dy.F32Ptr, DX = dx.F32Ptr;
        CpuParallel.For((long)a * b, Math.Max(1, 4096 / Math.Max(1, (long)c * d)), (s, e) =>
        {
            for (long ij = s; ij < e; ij++)
            {
                long i = ij / b, j = ij % b;
                for (int k = 0; k < c; k++)
                {
                    long o = (ij * c + k) * d;
                    TensorPrimitives.Add(S(DX, o, o + d), S(D, ((i * c + k) * b + j) * d, ((i * c + k) * b + j) * d + d), S(DX, o, o + d));
                }
            }
        });
    }

    public override void Embedding(Tensor ids, Tensor table, Tensor y)
    {
        const string op = "embedding";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        if (table.Rank != 2) Contract.Fail(op, $"table must be [V, C], got {table.Shape}");
        int vocab = table.Shape[0], c = table.Shape[1];
        Contract.Dims(op, "y", y, (int)ids.Numel, c);
        F32(op, table, y);
        int* I = ids.I32Ptr;
        for (long n = 0; n < ids.Numel; n++)
            if ((uint)I[n] >= (uint)vocab) Contract.Fail(op, $"id {I[n]} at position {n} is outside the vocabulary [0, {vocab})");
        float* T = table.F32Ptr, Y = y.F32Ptr;
        Rows(ids.Numel, c, (s, e) =>
        {
            for (long n = s; n < e; n++) Buffer.MemoryCopy(T + (long)I[n] * c, Y + n * c, c * 4L, c * 4L);
        });
    }

    public override void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable)
    {
        const string op = "embedding backward";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        int vocab = dtable.Shape[0], c = dtable.Shape[1];
        Contract.Dims(op, "dy", dy, (int)ids.Numel, c);
        F32(op, dy, dtable);
        int* I = ids.I32Ptr;
        for (long n = 0; n < ids.Numel; n++)
            if ((uint)I[n] >= (uint)vocab) Contract.Fail(op, $"id {I[n]} at position {n} is outside the vocabulary [0, {vocab})");
        float* D = dy.F32Ptr, DT = dtable.F32Ptr;
        // Repeated ids must add up without races: split the columns, not the rows, over the cores.
        int parts = Math.Clamp(c / 16, 1, CpuParallel.Threads);
        int per = (c + parts - 1) / parts;
        CpuParallel.Each(parts, t =>
        {
            int c0 = t * per, c1 = Math.Min(c, c0 + per);
            for (long n = 0; n < ids.Numel; n++)
                TensorPrimitives.Add(S(DT, (long)I[n] * c + c0, (long)I[n] * c + c1), S(D, n * c + c0, n * c + c1), S(DT, (long)I[n] * c + c0, (long)I[n] * c + c1));
        });
    }

    public override void Dropout(Tensor x, float p, ulong seed, Tensor y)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout", "x", x, "y", y);
        F32("dropout", x, y);
        float* X = x.F32Ptr, Y = y.F32Ptr;
        Elementwise(x.Numel, (a, e) => CpuMath.DropoutScale(X + a, Y + a, e - a, a, p, seed, accumulate: false));
    }

    public override void DropoutBackward(Tensor dy, float p, ulong seed, Tensor dx)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout backward", "dy", dy, "dx", dx);
        F32("dropout backward", dy, dx);
        float* D = dy.F32Ptr, DX = dx.F32Ptr;
        Elementwise(dy.Numel, (a, e) => CpuMath.DropoutScale(D + a, DX + a, e - a, a, p, seed, accumulate: true));
    }

    // ------------------------------------------------------------------ losses
    public override void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor lse)
    {
        const string op = "cross entropy";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.DTypeIs(op, "targets", targets, DType.I32); Contract.Dims(op, "targets", targets, n);
        Contract.Scalar(op, "loss", loss); Contract.Dims(op, "lse", lse, n);
        F32(op, logits, loss, lse);
        int* T = targets.I32Ptr;
        for (int i = 0; i < n; i++) if (T[i] >= v) Contract.Fail(op, $"target {T[i]} at row {i} is outside [0, {v})");
        float* X = logits.F32Ptr, L = lse.F32Ptr;
        var terms = new double[n];
        Rows(n, v, (s, e) =>
        {
            float[]? tmp = null;
            for (long i = s; i < e; i++)
            {
                var row = new ReadOnlySpan<float>(X + i * v, v);
                L[i] = CpuMath.LogSumExp(X + i * v, v);
                if (T[i] < 0) continue;
                float xt = row[T[i]];
                if (xt < TensorPrimitives.Max(row)) { terms[i] = (double)L[i] - xt; continue; }
                // The target is the row's max: log1p(sum of the others' exp(x_j - x_t)), exact when saturated.
                tmp ??= new float[v];
                fixed (float* tp = tmp) CpuMath.ExpShift(X + i * v, tp, v, xt);
                tmp[T[i]] = 0f;
                terms[i] = Log1P(TensorPrimitives.Sum(tmp));
            }
        });
        double total = 0; int count = 0;
        for (int i = 0; i < n; i++)
            if (T[i] >= 0) { total += terms[i]; count++; }
        *loss.F32Ptr = count > 0 ? (float)(total / count) : 0f;
    }

    public override void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        const string op = "cross entropy backward";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.SameShape(op, "logits", logits, "dlogits", dlogits);
        F32(op, logits, lse, dloss, dlogits);
        int* T = targets.I32Ptr;
        int count = 0;
        for (int i = 0; i < n; i++) if (T[i] >= 0) count++;
        if (count == 0) return;
        float g = *dloss.F32Ptr / count;
        float* X = logits.F32Ptr, L = lse.F32Ptr, DX = dlogits.F32Ptr;
        Rows(n, v, (s, e) =>
        {
            var p = new float[v];
            for (long i = s; i < e; i++)
            {
                if (T[i] < 0) continue;
                fixed (float* pp = p) CpuMath.ExpShift(X + i * v, pp, v, L[i]);
                p[T[i]] = 0f;
                p[T[i]] = -TensorPrimitives.Sum(p);   // p_t - 1 as minus the other probabilities, summed directly (no cancellation)
                var dr = new Span<float>(DX + i * v, v);
                TensorPrimitives.FusedMultiplyAdd(p, g, dr, dr);
            }
        });
    }

    public override void BceWithLogits(Tensor x, Tensor targets, Tensor loss)
    {
        Contract.SameShape("bce", "x", x, "targets", targets);
        Contract.Scalar("bce", "loss", loss);
        F32("bce", x, targets, loss);
        float* X = x.F32Ptr, T = targets.F32Ptr;
        long n = x.Numel;
        // Per element max(x, 0) - x t + log(1 + exp(-|x|)), in chunks: partial sums in double, added in order.
        const int Chunk = 4096;
        long chunks = (n + Chunk - 1) / Chunk;
        var partial = new double[chunks];
        CpuParallel.For(chunks, 8, (c0, c1) =>
        {
            var tmp = new float[Chunk];
            for (long c = c0; c < c1; c++)
            {
                long s0 = c * Chunk;
                int len = (int)Math.Min(Chunk, n - s0);
                var xs = new ReadOnlySpan<float>(X + s0, len);
                var t = tmp.AsSpan(0, len);
                TensorPrimitives.Abs(xs, t);
                TensorPrimitives.Negate(t, t);
                fixed (float* tp = tmp) CpuMath.ExpShift(tp, tp, len, 0f);
                TensorPrimitives.Add(t, 1f, t);
                TensorPrimitives.Log(t, t);
                double sum = TensorPrimitives.Sum(t) - (double)TensorPrimitives.Dot(xs, new ReadOnlySpan<float>(T + s0, len));
                TensorPrimitives.Max(xs, 0f, t);
                partial[c] = sum + TensorPrimitives.Sum(t);
            }
        });
        double total = 0;
        foreach (double v in partial) total += v;
        *loss.F32Ptr = n > 0 ? (float)(total / n) : 0f;
    }

    public override void BceWithLogitsBackward(Tensor x, Tensor targets, Tensor dloss, Tensor dx)
    {
        Contract.SameShape("bce backward", "x", x, "targets", targets);
        Contract.SameShape("bce backward", "x", x, "dx", dx);
        F32("bce backward", x, targets, dloss, dx);
        float* X = x.F32Ptr, T = targets.F32Ptr, DX = dx.F32Ptr;
        float g = *dloss.F32Ptr / x.Numel;
        Elementwise(x.Numel, (a, e) =>
        {
            var tmp = new float[Math.Min(4096, e - a)];
            for (long s0 = a; s0 < e; s0 += tmp.Length)
            {
                int len = (int)Math.Min(tmp.Length, e - s0);
                var t = tmp.AsSpan(0, len);
                TensorPrimitives.Sigmoid(S(X, s0, s0 + len), t);
                TensorPrimitives.Subtract(t, S(T, s0, s0 + len), t);
                TensorPrimitives.FusedMultiplyAdd(t, g, S(DX, s0, s0 + len), S(DX, s0, s0 + len));   // dx += g (sigmoid(x) - t)
            }
        });
    }

    // ------------------------------------------------------------------ optimiser
    public override void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWParams p, int step)
    {
        Contract.SameShape("adamw", "param", param, "grad", grad);
        Contract.SameShape("adamw", "param", param, "m", m);
        Contract.SameShape("adamw", "param", param, "v", v);
        if (step < 1) Contract.Fail("adamw", $"step counts from 1, got {step}");
        F32("adamw", param, grad, m, v);
        float* P = param.F32Ptr, G = grad.F32Ptr, M = m.F32Ptr, V = v.F32Ptr;
        float b1 = p.Beta1, b2 = p.Beta2, lr = p.LearningRate, wd = p.WeightDecay, eps = p.Eps;
        float c1 = 1f / (1f - MathF.Pow(b1, step)), c2 = 1f / (1f - MathF.Pow(b2, step));
        Elementwise(param.Numel, (s, e) =>
        {
            long i = s;
            if (CpuMath.Use512)
                for (; i + 16 <= e; i += 16)
                {
                    var g = Vector512.Load(G + i);
                    var mv = Vector512.Create(b1) * Vector512.Load(M + i) + Vector512.Create(1f - b1) * g;
                    var vv = Vector512.Create(b2) * Vector512.Load(V + i) + Vector512.Create(1f - b2) * g * g;
                    var pv = Vector512.Load(P + i);
                    var upd = mv * Vector512.Create(c1) / (Vector512.Sqrt(vv * Vector512.Create(c2)) + Vector512.Create(eps)) + Vector512.Create(wd) * pv;
                    (pv - Vector512.Create(lr) * upd).Store(P + i);
                    mv.Store(M + i); vv.Store(V + i);
                }
            if (CpuMath.Use256)
                for (; i + 8 <= e; i += 8)
                {
                    var g = Vector256.Load(G + i);
                    var mv = Vector256.Create(b1) * Vector256.Load(M + i) + Vector256.Create(1f - b1) * g;
                    var vv = Vector256.Create(b2) * Vector256.Load(V + i) + Vector256.Create(1f - b2) * g * g;
                    var pv = Vector256.Load(P + i);
                    var upd = mv * Vector256.Create(c1) / (Vector256.Sqrt(vv * Vector256.Create(c2)) + Vector256.Create(eps)) + Vector256.Create(wd) * pv;
                    (pv - Vector256.Create(lr) * upd).Store(P + i);
                    mv.Store(M + i); vv.Store(V + i);
                }
            for (; i < e; i++)
            {
                float g = G[i];
                M[i] = b1 * M[i] + (1f - b1) * g;
                V[i] = b2 * V[i] + (1f - b2) * g * g;
                P[i] -= lr * (M[i] * c1 / (MathF.Sqrt(V[i] * c2) + eps) + wd * P[i]);
            }
        });
    }

    public override void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm)
    {
        Contract.Scalar("clip grad norm", "norm", norm);
        F32("clip grad norm", norm);
        double ss = 0;
        foreach (var g in grads)
        {
            F32("clip grad norm", g);
            float* G = g.F32Ptr;
            const int chunk = 1 << 14;
            for (long s = 0; s < g.Numel; s += chunk) ss += TensorPrimitives.SumOfSquares(S(G, s, Math.Min(g.Numel, s + chunk)));
        }
        float total = (float)Math.Sqrt(ss);
        *norm.F32Ptr = total;
        if (total <= maxNorm) return;
        float scale = maxNorm / (total + 1e-6f);
        foreach (var g in grads)
        {
            float* G = g.F32Ptr;
            Elementwise(g.Numel, (s, e) => TensorPrimitives.Multiply(S(G, s, e), scale, S(G, s, e)));
        }
    }
}
