using KernelVL.Tensors;

namespace KernelVL.Backends;

/// <summary>
/// The scalar reference: every op of <see cref="IBackend"/> as plain loops in double precision over
/// host memory. It is the spec the other backends are tested against and the backend that
/// finite-difference gradient checks run on (it also accepts f64 tensors). Slow on purpose: clarity first.
/// Fast backends derive from it and override what they speed up.
/// </summary>
public unsafe class ReferenceBackend : IBackend, IHalfRowsTopK
{
    public virtual string Name => "reference";

    public virtual void Synchronize() { }

    // ------------------------------------------------------------------ host helpers
    protected static double[] Read(Tensor t)
    {
        var r = new double[t.Numel];
        switch (t.DType)
        {
            case DType.F32: { float* p = (float*)t.HostPointer; for (long i = 0; i < r.Length; i++) r[i] = p[i]; break; }
            case DType.F64: { double* p = (double*)t.HostPointer; for (long i = 0; i < r.Length; i++) r[i] = p[i]; break; }
            case DType.I32: { int* p = (int*)t.HostPointer; for (long i = 0; i < r.Length; i++) r[i] = p[i]; break; }
        }
        return r;
    }

    protected static int[] ReadInt(Tensor t)
    {
        Contract.DTypeIs("read", "tensor", t, DType.I32);
        return new ReadOnlySpan<int>(t.HostPointer, checked((int)t.Numel)).ToArray();
    }

    protected static void Write(Tensor t, double[] v)
    {
        switch (t.DType)
        {
            case DType.F32: { float* p = (float*)t.HostPointer; for (long i = 0; i < v.Length; i++) p[i] = (float)v[i]; break; }
            case DType.F64: { double* p = (double*)t.HostPointer; for (long i = 0; i < v.Length; i++) p[i] = v[i]; break; }
            case DType.I32: { int* p = (int*)t.HostPointer; for (long i = 0; i < v.Length; i++) p[i] = (int)v[i]; break; }
        }
    }

    /// <summary>t += v (no-op when t is null): the accumulate rule of every backward.</summary>
    protected static void Accumulate(Tensor? t, double[] v)
    {
        if (t is null) return;
        var cur = Read(t);
        for (long i = 0; i < v.Length; i++) cur[i] += v[i];
        Write(t, cur);
    }

    protected static int[]? MaskOrNull(Tensor? m) => m is null ? null : ReadInt(m);

    // ------------------------------------------------------------------ memory
    public virtual Tensor Empty(Shape shape, DType dtype = DType.F32)
        => new(new CpuStorage(this, shape.Numel, dtype), 0, shape, addRef: false);

    public virtual void Fill(Tensor x, float value)
    {
        var v = new double[x.Numel];
        Array.Fill(v, value);
        Write(x, v);
    }

    public virtual void Copy(Tensor src, Tensor dst)
    {
        Contract.SameShape("copy", "src", src, "dst", dst);
        if (src.DType != dst.DType) Contract.Fail("copy", $"dtypes differ: {src.DType.Name()} -> {dst.DType.Name()}");
        Buffer.MemoryCopy(src.HostPointer, dst.HostPointer, dst.Numel * dst.DType.SizeInBytes(), src.Numel * src.DType.SizeInBytes());
    }

    public virtual void CopyFromHost(ReadOnlySpan<float> src, Tensor dst)
    {
        if (src.Length != dst.Numel) Contract.Fail("copy", $"{src.Length} host values for a tensor of {dst.Shape}");
        if (dst.DType == DType.F32) src.CopyTo(dst.Span);
        else { var v = new double[src.Length]; for (int i = 0; i < v.Length; i++) v[i] = src[i]; Write(dst, v); }
    }

    public virtual void CopyFromHost(ReadOnlySpan<int> src, Tensor dst)
    {
        Contract.DTypeIs("copy", "dst", dst, DType.I32);
        if (src.Length != dst.Numel) Contract.Fail("copy", $"{src.Length} host values for a tensor of {dst.Shape}");
        src.CopyTo(dst.SpanI32);
    }

    public virtual void CopyToHost(Tensor src, Span<float> dst)
    {
        if (dst.Length != src.Numel) Contract.Fail("copy", $"{dst.Length} host slots for a tensor of {src.Shape}");
        if (src.DType == DType.F32) src.Span.CopyTo(dst);
        else { var v = Read(src); for (int i = 0; i < v.Length; i++) dst[i] = (float)v[i]; }
    }

    public virtual void CopyToHost(Tensor src, Span<int> dst)
    {
        Contract.DTypeIs("copy", "src", src, DType.I32);
        if (dst.Length != src.Numel) Contract.Fail("copy", $"{dst.Length} host slots for a tensor of {src.Shape}");
        src.SpanI32.CopyTo(dst);
    }

    // ------------------------------------------------------------------ matmul
    public virtual void MatMul(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transA, bool transB, bool accumulate = false)
    {
        var d = Contract.MatMul(a, b, bias, y, transA, transB);
        var A = Read(a); var B = Read(b); var Y = accumulate ? Read(y) : new double[y.Numel];
        var bi = bias is null ? null : Read(bias);
        for (int p = 0; p < d.Batch; p++)
        {
            long oa = (long)p * d.M * d.K, ob = d.SharedB ? 0 : (long)p * d.K * d.N, oy = (long)p * d.M * d.N;
            for (int i = 0; i < d.M; i++)
                for (int j = 0; j < d.N; j++)
                {
                    double s = bi?[j] ?? 0;
                    for (int k = 0; k < d.K; k++)
                        s += A[oa + (transA ? k * d.M + i : i * d.K + k)] * B[ob + (transB ? j * d.K + k : k * d.N + j)];
                    Y[oy + i * d.N + j] += s;
                }
        }
        Write(y, Y);
    }

    public virtual void MatMulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db, Tensor? dbias, bool transA, bool transB)
    {
        var d = Contract.MatMul(a, b, dbias, dy, transA, transB);
        Contract.SameShapeOrNull("matmul backward", "a", a, "da", da);
        Contract.SameShapeOrNull("matmul backward", "b", b, "db", db);
        var A = Read(a); var B = Read(b); var DY = Read(dy);
        var DA = new double[a.Numel]; var DB = new double[b.Numel]; var DBias = new double[d.N];
        for (int p = 0; p < d.Batch; p++)
        {
            long oa = (long)p * d.M * d.K, ob = d.SharedB ? 0 : (long)p * d.K * d.N, oy = (long)p * d.M * d.N;
            for (int i = 0; i < d.M; i++)
                for (int j = 0; j < d.N; j++)
                {
                    double g = DY[oy + i * d.N + j];
                    DBias[j] += g;
                    for (int k = 0; k < d.K; k++)
                    {
                        long ia = oa + (transA ? k * d.M + i : i * d.K + k);
                        long ib = ob + (transB ? j * d.K + k : k * d.N + j);
                        DA[ia] += g * B[ib];
                        DB[ib] += g * A[ia];
                    }
                }
        }
        Accumulate(da, DA); Accumulate(db, DB); Accumulate(dbias, DBias);
    }

    // ------------------------------------------------------------------ elementwise
    public virtual void Add(Tensor a, Tensor b, Tensor y)
    {
        var (outer, inner) = Contract.Broadcast("add", a, b);
        Contract.SameShape("add", "a", a, "y", y);
        var A = Read(a); var B = Read(b); var Y = new double[y.Numel];
        for (long o = 0; o < outer; o++) for (long i = 0; i < inner; i++) Y[o * inner + i] = A[o * inner + i] + B[i];
        Write(y, Y);
    }

    public virtual void AddBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        var DY = Read(dy);
        if (da is not null) { Contract.SameShape("add backward", "dy", dy, "da", da); Accumulate(da, DY); }
        if (db is null) return;
        var (outer, inner) = Contract.Broadcast("add backward", dy, db);
        var DB = new double[inner];
        for (long o = 0; o < outer; o++) for (long i = 0; i < inner; i++) DB[i] += DY[o * inner + i];
        Accumulate(db, DB);
    }

    public virtual void Mul(Tensor a, Tensor b, Tensor y)
    {
        var (outer, inner) = Contract.Broadcast("mul", a, b);
        Contract.SameShape("mul", "a", a, "y", y);
        var A = Read(a); var B = Read(b); var Y = new double[y.Numel];
        for (long o = 0; o < outer; o++) for (long i = 0; i < inner; i++) Y[o * inner + i] = A[o * inner + i] * B[i];
        Write(y, Y);
    }

    public virtual void MulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db)
    {
        var (outer, inner) = Contract.Broadcast("mul backward", a, b);
        Contract.SameShape("mul backward", "a", a, "dy", dy);
        var A = Read(a); var B = Read(b); var DY = Read(dy);
        var DA = new double[a.Numel]; var DB = new double[inner];
        for (long o = 0; o < outer; o++)
            for (long i = 0; i < inner; i++)
            {
                DA[o * inner + i] = DY[o * inner + i] * B[i];
                DB[i] += DY[o * inner + i] * A[o * inner + i];
            }
        Accumulate(da, DA); Accumulate(db, DB);
    }

    public virtual void Scale(Tensor x, float s, Tensor y)
    {
        Contract.SameShape("scale", "x", x, "y", y);
        var X = Read(x);
        for (long i = 0; i < X.Length; i++) X[i] *= s;
        Write(y, X);
    }

    public virtual void ScaleBackward(Tensor dy, float s, Tensor dx)
    {
        Contract.SameShape("scale backward", "dy", dy, "dx", dx);
        var D = Read(dy);
        for (long i = 0; i < D.Length; i++) D[i] *= s;
        Accumulate(dx, D);
    }

    public virtual void Gelu(Tensor x, Tensor y)
    {
        Contract.SameShape("gelu", "x", x, "y", y);
        var X = Read(x);
        for (long i = 0; i < X.Length; i++) X[i] = 0.5 * X[i] * SpecialFunctions.Erfc(-X[i] / Math.Sqrt(2));   // 1 + erf, exact in the tail too
        Write(y, X);
    }

    public virtual void GeluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        Contract.SameShape("gelu backward", "x", x, "dy", dy);
        Contract.SameShape("gelu backward", "x", x, "dx", dx);
        var X = Read(x); var D = Read(dy);
        for (long i = 0; i < X.Length; i++)
        {
            double cdf = 0.5 * SpecialFunctions.Erfc(-X[i] / Math.Sqrt(2));
            double pdf = Math.Exp(-0.5 * X[i] * X[i]) / Math.Sqrt(2 * Math.PI);
            D[i] *= cdf + X[i] * pdf;
        }
        Accumulate(dx, D);
    }

    public virtual void Tanh(Tensor x, Tensor y)
    {
        Contract.SameShape("tanh", "x", x, "y", y);
        var X = Read(x);
        for (long i = 0; i < X.Length; i++) X[i] = Math.Tanh(X[i]);
        Write(y, X);
    }

    public virtual void TanhBackward(Tensor y, Tensor dy, Tensor dx)
    {
        Contract.SameShape("tanh backward", "y", y, "dy", dy);
        Contract.SameShape("tanh backward", "y", y, "dx", dx);
        var Y = Read(y); var D = Read(dy);
        for (long i = 0; i < Y.Length; i++) D[i] *= 1 - Y[i] * Y[i];
        Accumulate(dx, D);
    }

    public virtual void SumAll(Tensor x, Tensor y)
    {
        Contract.Scalar("sum", "y", y);
        double s = 0;
        foreach (double v in Read(x)) s += v;
        Write(y, [s]);
    }

    public virtual void SumAllBackward(Tensor dy, Tensor dx)
    {
        Contract.Scalar("sum backward", "dy", dy);
        var g = new double[dx.Numel];
        Array.Fill(g, Read(dy)[0]);
        Accumulate(dx, g);
    }

    // ------------------------------------------------------------------ layer norm, softmax
    public virtual void LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor y, Tensor mean, Tensor rstd)
    {
        const string op = "layernorm";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.Dims(op, "gamma", gamma, c); Contract.Dims(op, "beta", beta, c);
        Contract.SameShape(op, "x", x, "y", y); Contract.Dims(op, "mean", mean, r); Contract.Dims(op, "rstd", rstd, r);
        var X = Read(x); var G = Read(gamma); var Bt = Read(beta);
        var Y = new double[X.Length]; var M = new double[r]; var S = new double[r];
        for (int i = 0; i < r; i++)
        {
            double m = 0, v = 0;
            for (int j = 0; j < c; j++) m += X[(long)i * c + j];
            m /= c;
            for (int j = 0; j < c; j++) { double z = X[(long)i * c + j] - m; v += z * z; }
            v /= c;
            double s = 1 / Math.Sqrt(v + eps);
            for (int j = 0; j < c; j++) Y[(long)i * c + j] = (X[(long)i * c + j] - m) * s * G[j] + Bt[j];
            M[i] = m; S[i] = s;
        }
        Write(y, Y); Write(mean, M); Write(rstd, S);
    }

    public virtual void LayerNormBackward(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dgamma, Tensor? dbeta)
    {
        const string op = "layernorm backward";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "dy", dy); Contract.SameShapeOrNull(op, "x", x, "dx", dx);
        Contract.DimsOrNull(op, "dgamma", dgamma, c); Contract.DimsOrNull(op, "dbeta", dbeta, c);
        var X = Read(x); var G = Read(gamma); var M = Read(mean); var S = Read(rstd); var D = Read(dy);
        var DX = new double[X.Length]; var DG = new double[c]; var DB = new double[c];
        for (int i = 0; i < r; i++)
        {
            double sumG = 0, sumGX = 0;
            for (int j = 0; j < c; j++)
            {
                long idx = (long)i * c + j;
                double xh = (X[idx] - M[i]) * S[i];
                double g = D[idx] * G[j];
                sumG += g; sumGX += g * xh;
                DG[j] += D[idx] * xh; DB[j] += D[idx];
            }
            for (int j = 0; j < c; j++)
            {
                long idx = (long)i * c + j;
                double xh = (X[idx] - M[i]) * S[i];
                DX[idx] = S[i] * (D[idx] * G[j] - sumG / c - xh * sumGX / c);
            }
        }
        Accumulate(dx, DX); Accumulate(dgamma, DG); Accumulate(dbeta, DB);
    }

    public virtual void Softmax(Tensor x, Tensor? mask, Tensor y)
    {
        const string op = "softmax";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "y", y);
        int per = SoftmaxMaskRows(op, r, c, mask);
        var X = Read(x); var Mk = mask is null ? null : Read(mask); var Y = new double[X.Length];
        for (int i = 0; i < r; i++)
        {
            double mx = double.NegativeInfinity;
            for (int j = 0; j < c; j++)
            {
                long idx = (long)i * c + j;
                double v = X[idx] + (Mk?[(long)(i / per) * c + j] ?? 0);
                Y[idx] = v;
                mx = Math.Max(mx, v);
            }
            double sum = 0;
            for (int j = 0; j < c; j++)
            {
                long idx = (long)i * c + j;
                Y[idx] = double.IsNegativeInfinity(mx) ? 0 : Math.Exp(Y[idx] - mx);
                sum += Y[idx];
            }
            for (int j = 0; j < c; j++) Y[(long)i * c + j] = sum > 0 ? Y[(long)i * c + j] / sum : 0;
        }
        Write(y, Y);
    }

    /// <summary>Rows of x that share one mask row.</summary>
    protected static int SoftmaxMaskRows(string op, int rows, int cols, Tensor? mask)
    {
        if (mask is null) return Math.Max(1, rows);
        Contract.Float(op, "mask", mask);
        if (mask.Rank < 1 || mask.Shape[-1] != cols) Contract.Fail(op, $"mask {mask.Shape} must end in {cols}");
        long mr = mask.Shape.Rows;
        if (mr == 0 || rows % mr != 0) Contract.Fail(op, $"mask rows ({mr}) must divide x rows ({rows})");
        return (int)(rows / mr);
    }

    public virtual void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx)
    {
        const string op = "softmax backward";
        var (r, c) = Contract.Rows(op, "y", y);
        Contract.SameShape(op, "y", y, "dy", dy); Contract.SameShape(op, "y", y, "dx", dx);
        var Y = Read(y); var D = Read(dy); var DX = new double[Y.Length];
        for (int i = 0; i < r; i++)
        {
            double dot = 0;
            for (int j = 0; j < c; j++) dot += Y[(long)i * c + j] * D[(long)i * c + j];
            for (int j = 0; j < c; j++) DX[(long)i * c + j] = Y[(long)i * c + j] * (D[(long)i * c + j] - dot);
        }
        Accumulate(dx, DX);
    }

    // ------------------------------------------------------------------ attention
    public virtual void Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse)
    {
        var d = Contract.Attention(q, k, v, keyMask, o, lse);
        var Q = Read(q); var K = Read(k); var V = Read(v); var Mk = MaskOrNull(keyMask);
        var O = new double[Q.Length]; var L = new double[lse.Numel];
        var s = new double[d.Tk];
        for (int b = 0; b < d.B; b++)
            for (int h = 0; h < d.H; h++)
            {
                long bh = (long)b * d.H + h;
                for (int i = 0; i < d.Tq; i++)
                {
                    long qi = (bh * d.Tq + i) * d.D;
                    double mx = double.NegativeInfinity;
                    for (int j = 0; j < d.Tk; j++)
                    {
                        if (Mk is not null && Mk[b * d.Tk + j] == 0) { s[j] = double.NegativeInfinity; continue; }
                        long kj = (bh * d.Tk + j) * d.D;
                        double dot = 0;
                        for (int c = 0; c < d.D; c++) dot += Q[qi + c] * K[kj + c];
                        s[j] = dot * scale;
                        mx = Math.Max(mx, s[j]);
                    }
                    if (double.IsNegativeInfinity(mx)) { L[bh * d.Tq + i] = double.NegativeInfinity; continue; }
                    double sum = 0;
                    for (int j = 0; j < d.Tk; j++) sum += Math.Exp(s[j] - mx);
                    for (int j = 0; j < d.Tk; j++)
                    {
                        double p = Math.Exp(s[j] - mx) / sum;
                        if (p == 0) continue;
                        long vj = (bh * d.Tk + j) * d.D;
                        for (int c = 0; c < d.D; c++) O[qi + c] += p * V[vj + c];
                    }
                    L[bh * d.Tq + i] = mx + Math.Log(sum);
                }
            }
        Write(o, O); Write(lse, L);
    }

    public virtual void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv)
    {
        var d = Contract.AttentionBackward(q, k, v, keyMask, o, lse, dO, dq, dk, dv);
        var Q = Read(q); var K = Read(k); var V = Read(v); var L = Read(lse); var DO = Read(dO); var Mk = MaskOrNull(keyMask);
        var DQ = new double[Q.Length]; var DK = new double[K.Length]; var DV = new double[V.Length];
        var p = new double[d.Tk]; var dp = new double[d.Tk];
        for (int b = 0; b < d.B; b++)
            for (int h = 0; h < d.H; h++)
            {
                long bh = (long)b * d.H + h;
                for (int i = 0; i < d.Tq; i++)
                {
                    double l = L[bh * d.Tq + i];
                    if (double.IsNegativeInfinity(l)) continue;
                    long qi = (bh * d.Tq + i) * d.D;
                    double rowDot = 0;
                    for (int j = 0; j < d.Tk; j++)
                    {
                        p[j] = 0; dp[j] = 0;
                        if (Mk is not null && Mk[b * d.Tk + j] == 0) continue;
                        long kj = (bh * d.Tk + j) * d.D;
                        double dot = 0, g = 0;
                        for (int c = 0; c < d.D; c++) { dot += Q[qi + c] * K[kj + c]; g += DO[qi + c] * V[kj + c]; }
                        p[j] = Math.Exp(dot * scale - l);
                        dp[j] = g;
                        rowDot += p[j] * g;
                    }
                    for (int j = 0; j < d.Tk; j++)
                    {
                        if (p[j] == 0) continue;
                        long kj = (bh * d.Tk + j) * d.D;
                        double ds = p[j] * (dp[j] - rowDot) * scale;
                        for (int c = 0; c < d.D; c++)
                        {
                            DV[kj + c] += p[j] * DO[qi + c];
                            DQ[qi + c] += ds * K[kj + c];
                            DK[kj + c] += ds * Q[qi + c];
                        }
                    }
                }
            }
        Accumulate(dq, DQ); Accumulate(dk, DK); Accumulate(dv, DV);
    }

    public virtual void SwapAxes12(Tensor x, Tensor y)
    {
        if (x.Rank != 4) Contract.Fail("swap axes", $"x must be rank 4, got {x.Shape}");
        int a = x.Shape[0], b = x.Shape[1], c = x.Shape[2], d = x.Shape[3];
        Contract.Dims("swap axes", "y", y, a, c, b, d);
        var X = Read(x); var Y = new double[X.Length];
        for (int i = 0; i < a; i++) for (int j = 0; j < b; j++) for (int k = 0; k < c; k++) for (int l = 0; l < d; l++)
            Y[(((long)i * c + k) * b + j) * d + l] = X[(((long)i * b + j) * c + k) * d + l];
        Write(y, Y);
    }

    public virtual void SwapAxes12Backward(Tensor dy, Tensor dx)
    {
        if (dx.Rank != 4) Contract.Fail("swap axes backward", $"dx must be rank 4, got {dx.Shape}");
        int a = dx.Shape[0], b = dx.Shape[1], c = dx.Shape[2], d = dx.Shape[3];
        Contract.Dims("swap axes backward", "dy", dy, a, c, b, d);
        var DY = Read(dy); var DX = new double[DY.Length];
        for (int i = 0; i < a; i++) for (int j = 0; j < b; j++) for (int k = 0; k < c; k++) for (int l = 0; l < d; l++)
            DX[(((long)i * b + j) * c + k) * d + l] = DY[(((long)i * c + k) * b + j) * d + l];
        Accumulate(dx, DX);
    }

    // ------------------------------------------------------------------ embeddings, pooling, sequences
    public virtual void Embedding(Tensor ids, Tensor table, Tensor y)
    {
        const string op = "embedding";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        if (table.Rank != 2) Contract.Fail(op, $"table must be [V, C], got {table.Shape}");
        int vocab = table.Shape[0], c = table.Shape[1];
        Contract.Dims(op, "y", y, (int)ids.Numel, c);
        var I = ReadInt(ids); var T = Read(table); var Y = new double[y.Numel];
        for (int n = 0; n < I.Length; n++)
        {
            if ((uint)I[n] >= (uint)vocab) Contract.Fail(op, $"id {I[n]} at position {n} is outside the vocabulary [0, {vocab})");
            for (int j = 0; j < c; j++) Y[(long)n * c + j] = T[(long)I[n] * c + j];
        }
        Write(y, Y);
    }

    public virtual void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable)
    {
        const string op = "embedding backward";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        int vocab = dtable.Shape[0], c = dtable.Shape[1];
        Contract.Dims(op, "dy", dy, (int)ids.Numel, c);
        var I = ReadInt(ids); var D = Read(dy); var DT = new double[dtable.Numel];
        for (int n = 0; n < I.Length; n++)
        {
            if ((uint)I[n] >= (uint)vocab) Contract.Fail(op, $"id {I[n]} at position {n} is outside the vocabulary [0, {vocab})");
            for (int j = 0; j < c; j++) DT[(long)I[n] * c + j] += D[(long)n * c + j];
        }
        Accumulate(dtable, DT);
    }

    public virtual void Dropout(Tensor x, float p, ulong seed, Tensor y)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout", "x", x, "y", y);
        var X = Read(x);
        double s = 1.0 / (1.0 - p);
        for (long i = 0; i < X.Length; i++) X[i] = CounterRng.Uniform(seed, i) >= p ? X[i] * s : 0;
        Write(y, X);
    }

    public virtual void DropoutBackward(Tensor dy, float p, ulong seed, Tensor dx)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout backward", "dy", dy, "dx", dx);
        var D = Read(dy);
        double s = 1.0 / (1.0 - p);
        for (long i = 0; i < D.Length; i++) D[i] = CounterRng.Uniform(seed, i) >= p ? D[i] * s : 0;
        Accumulate(dx, D);
    }

    public virtual void MeanPool(Tensor x, Tensor? mask, Tensor y)
    {
        const string op = "mean pool";
        var (b, t, c) = Contract.Seq(op, "x", x);
        Contract.Mask(op, mask, b, t);
        Contract.Dims(op, "y", y, b, c);
        var X = Read(x); var M = MaskOrNull(mask); var Y = new double[y.Numel];
        for (int i = 0; i < b; i++)
        {
            int n = 0;
            for (int s = 0; s < t; s++)
            {
                if (M is not null && M[i * t + s] == 0) continue;
                n++;
                for (int j = 0; j < c; j++) Y[(long)i * c + j] += X[((long)i * t + s) * c + j];
            }
            for (int j = 0; j < c; j++) Y[(long)i * c + j] = n > 0 ? Y[(long)i * c + j] / n : 0;
        }
        Write(y, Y);
    }

    public virtual void MeanPoolBackward(Tensor? mask, Tensor dy, Tensor dx)
    {
        const string op = "mean pool backward";
        var (b, t, c) = Contract.Seq(op, "dx", dx);
        Contract.Mask(op, mask, b, t);
        Contract.Dims(op, "dy", dy, b, c);
        var D = Read(dy); var M = MaskOrNull(mask); var DX = new double[dx.Numel];
        for (int i = 0; i < b; i++)
        {
            int n = 0;
            for (int s = 0; s < t; s++) if (M is null || M[i * t + s] != 0) n++;
            for (int s = 0; s < t; s++)
            {
                if (M is not null && M[i * t + s] == 0) continue;
                for (int j = 0; j < c; j++) DX[((long)i * t + s) * c + j] = D[(long)i * c + j] / n;
            }
        }
        Accumulate(dx, DX);
    }

    public virtual void L2Normalize(Tensor x, float eps, Tensor y)
    {
        var (r, c) = Contract.Rows("l2 normalize", "x", x);
        Contract.SameShape("l2 normalize", "x", x, "y", y);
        var X = Read(x);
        for (int i = 0; i < r; i++)
        {
            double ss = 0;
            for (int j = 0; j < c; j++) ss += X[(long)i * c + j] * X[(long)i * c + j];
            double n = Math.Max(Math.Sqrt(ss), eps);
            for (int j = 0; j < c; j++) X[(long)i * c + j] /= n;
        }
        Write(y, X);
    }

    public virtual void L2NormalizeBackward(Tensor x, float eps, Tensor dy, Tensor dx)
    {
        var (r, c) = Contract.Rows("l2 normalize backward", "x", x);
        Contract.SameShape("l2 normalize backward", "x", x, "dy", dy);
        Contract.SameShape("l2 normalize backward", "x", x, "dx", dx);
        var X = Read(x); var D = Read(dy); var DX = new double[X.Length];
        for (int i = 0; i < r; i++)
        {
            double ss = 0, dot = 0;
            for (int j = 0; j < c; j++) { ss += X[(long)i * c + j] * X[(long)i * c + j]; dot += X[(long)i * c + j] * D[(long)i * c + j]; }
            double n = Math.Sqrt(ss);
            if (n > eps)
                for (int j = 0; j < c; j++) DX[(long)i * c + j] = D[(long)i * c + j] / n - X[(long)i * c + j] * dot / (n * n * n);
            else
                for (int j = 0; j < c; j++) DX[(long)i * c + j] = D[(long)i * c + j] / eps;
        }
        Accumulate(dx, DX);
    }

    public virtual void Concat(Tensor a, Tensor b, Tensor y)
    {
        var da = Contract.Seq("concat", "a", a); var db = Contract.Seq("concat", "b", b);
        if (da.B != db.B || da.C != db.C) Contract.Fail("concat", $"a {a.Shape} and b {b.Shape} differ outside the sequence dim");
        Contract.Dims("concat", "y", y, da.B, da.T + db.T, da.C);
        var A = Read(a); var B = Read(b); var Y = new double[y.Numel];
        int ty = da.T + db.T;
        for (int i = 0; i < da.B; i++)
        {
            Array.Copy(A, (long)i * da.T * da.C, Y, (long)i * ty * da.C, (long)da.T * da.C);
            Array.Copy(B, (long)i * db.T * da.C, Y, ((long)i * ty + da.T) * da.C, (long)db.T * da.C);
        }
        Write(y, Y);
    }

    public virtual void ConcatBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        var d = Contract.Seq("concat backward", "dy", dy);
        int ta = da?.Shape[1] ?? d.T - db!.Shape[1];
        int tb = d.T - ta;
        Contract.DimsOrNull("concat backward", "da", da, d.B, ta, d.C);
        Contract.DimsOrNull("concat backward", "db", db, d.B, tb, d.C);
        var D = Read(dy); var DA = new double[(long)d.B * ta * d.C]; var DB = new double[(long)d.B * tb * d.C];
        for (int i = 0; i < d.B; i++)
        {
            Array.Copy(D, (long)i * d.T * d.C, DA, (long)i * ta * d.C, (long)ta * d.C);
            Array.Copy(D, ((long)i * d.T + ta) * d.C, DB, (long)i * tb * d.C, (long)tb * d.C);
        }
        Accumulate(da, DA); Accumulate(db, DB);
    }

    public virtual void Slice(Tensor x, int start, Tensor y)
    {
        var d = Contract.Seq("slice", "x", x);
        var dy = Contract.Seq("slice", "y", y);
        if (dy.B != d.B || dy.C != d.C || start < 0 || start + dy.T > d.T)
            Contract.Fail("slice", $"y {y.Shape} at {start} does not fit in x {x.Shape}");
        var X = Read(x); var Y = new double[y.Numel];
        for (int i = 0; i < d.B; i++) Array.Copy(X, ((long)i * d.T + start) * d.C, Y, (long)i * dy.T * d.C, (long)dy.T * d.C);
        Write(y, Y);
    }

    public virtual void SliceBackward(Tensor dy, int start, Tensor dx)
    {
        var d = Contract.Seq("slice backward", "dx", dx);
        var g = Contract.Seq("slice backward", "dy", dy);
        if (g.B != d.B || g.C != d.C || start < 0 || start + g.T > d.T)
            Contract.Fail("slice backward", $"dy {dy.Shape} at {start} does not fit in dx {dx.Shape}");
        var D = Read(dy); var DX = new double[dx.Numel];
        for (int i = 0; i < d.B; i++) Array.Copy(D, (long)i * g.T * d.C, DX, ((long)i * d.T + start) * d.C, (long)g.T * d.C);
        Accumulate(dx, DX);
    }

    // ------------------------------------------------------------------ losses
    public virtual void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor lse)
    {
        const string op = "cross entropy";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.DTypeIs(op, "targets", targets, DType.I32); Contract.Dims(op, "targets", targets, n);
        Contract.Scalar(op, "loss", loss); Contract.Dims(op, "lse", lse, n);
        var X = Read(logits); var T = ReadInt(targets); var L = new double[n];
        double total = 0; int count = 0;
        for (int i = 0; i < n; i++)
        {
            double mx = double.NegativeInfinity;
            for (int j = 0; j < v; j++) mx = Math.Max(mx, X[(long)i * v + j]);
            double s = 0;
            for (int j = 0; j < v; j++) s += Math.Exp(X[(long)i * v + j] - mx);
            L[i] = mx + Math.Log(s);
            if (T[i] < 0) continue;
            if (T[i] >= v) Contract.Fail(op, $"target {T[i]} at row {i} is outside [0, {v})");
            total += L[i] - X[(long)i * v + T[i]];
            count++;
        }
        Write(loss, [count > 0 ? total / count : 0]); Write(lse, L);
    }

    public virtual void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        const string op = "cross entropy backward";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.SameShape(op, "logits", logits, "dlogits", dlogits);
        var X = Read(logits); var T = ReadInt(targets); var L = Read(lse); double g = Read(dloss)[0];
        int count = 0;
        foreach (int t in T) if (t >= 0) count++;
        var DX = new double[X.Length];
        for (int i = 0; i < n; i++)
        {
            if (T[i] < 0) continue;
            // p_target - 1 as minus the other probabilities: exact when the softmax saturates.
            double off = 0;
            for (int j = 0; j < v; j++)
            {
                DX[(long)i * v + j] = g * Math.Exp(X[(long)i * v + j] - L[i]) / count;
                if (j != T[i]) off += DX[(long)i * v + j];
            }
            DX[(long)i * v + T[i]] = -off;
        }
        Accumulate(dlogits, DX);
    }

    public virtual void BceWithLogits(Tensor x, Tensor targets, Tensor loss)
    {
        Contract.SameShape("bce", "x", x, "targets", targets);
        Contract.Scalar("bce", "loss", loss);
        var X = Read(x); var T = Read(targets);
        double total = 0;
        for (int i = 0; i < X.Length; i++)
            total += Math.Max(X[i], 0) - X[i] * T[i] + Math.Log(1 + Math.Exp(-Math.Abs(X[i])));
        Write(loss, [X.Length > 0 ? total / X.Length : 0]);
    }

    public virtual void BceWithLogitsBackward(Tensor x, Tensor targets, Tensor dloss, Tensor dx)
    {
        Contract.SameShape("bce backward", "x", x, "targets", targets);
        Contract.SameShape("bce backward", "x", x, "dx", dx);
        var X = Read(x); var T = Read(targets); double g = Read(dloss)[0];
        var DX = new double[X.Length];
        for (int i = 0; i < X.Length; i++) DX[i] = g * (1 / (1 + Math.Exp(-X[i])) - T[i]) / X.Length;
        Accumulate(dx, DX);
    }

    public virtual void InfoNce(Tensor t, Tensor v, float invTemperature, Tensor loss, Tensor lseRow, Tensor lseCol)
    {
        const string op = "infonce";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v); Contract.Scalar(op, "loss", loss);
        Contract.Dims(op, "lseRow", lseRow, n); Contract.Dims(op, "lseCol", lseCol, n);
        var S = Similarity(Read(t), Read(v), n, dim, invTemperature);
        var LR = new double[n]; var LC = new double[n];
        double total = 0;
        for (int i = 0; i < n; i++)
        {
            LR[i] = LogSumExp(j => S[(long)i * n + j], n);
            LC[i] = LogSumExp(j => S[(long)j * n + i], n);
        }
        for (int i = 0; i < n; i++)
            total += CrossEntropyTerm(j => S[(long)i * n + j], n, i) + CrossEntropyTerm(j => S[(long)j * n + i], n, i);
        Write(loss, [total / n]); Write(lseRow, LR); Write(lseCol, LC);
    }

    public virtual void InfoNceBackward(Tensor t, Tensor v, float invTemperature, Tensor lseRow, Tensor lseCol, Tensor dloss, Tensor? dt, Tensor? dv)
    {
        const string op = "infonce backward";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v);
        Contract.SameShapeOrNull(op, "t", t, "dt", dt); Contract.SameShapeOrNull(op, "v", v, "dv", dv);
        var T = Read(t); var V = Read(v); var LR = Read(lseRow); var LC = Read(lseCol); double g = Read(dloss)[0];
        var S = Similarity(T, V, n, dim, invTemperature);
        // dS_ij = g/n * (softmax_row_ij + softmax_col_ij - 2 delta_ij); S = t v^T * invT. On the diagonal
        // p - 1 is computed as minus the sum of the other entries: exact also when the softmax saturates
        // (p -> 1 at small temperatures), where 1 - p would cancel.
        var rowOff = new double[n]; var colOff = new double[n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                if (i == j) continue;
                rowOff[i] += Math.Exp(S[(long)i * n + j] - LR[i]);
                colOff[j] += Math.Exp(S[(long)i * n + j] - LC[j]);
            }
        var DT = new double[T.Length]; var DV = new double[V.Length];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double s = S[(long)i * n + j];
                double p = i == j ? -(rowOff[i] + colOff[i]) : Math.Exp(s - LR[i]) + Math.Exp(s - LC[j]);
                double ds = g / n * p * invTemperature;
                for (int c = 0; c < dim; c++)
                {
                    DT[(long)i * dim + c] += ds * V[(long)j * dim + c];
                    DV[(long)j * dim + c] += ds * T[(long)i * dim + c];
                }
            }
        Accumulate(dt, DT); Accumulate(dv, DV);
    }

    private static double[] Similarity(double[] t, double[] v, int n, int dim, double scale)
    {
        var s = new double[(long)n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double dot = 0;
                for (int c = 0; c < dim; c++) dot += t[(long)i * dim + c] * v[(long)j * dim + c];
                s[(long)i * n + j] = dot * scale;
            }
        return s;
    }

    /// <summary>
    /// lse(x) - x[target] without its cancellation: (m - x[target]) + log1p(sum over j != argmax of exp(x_j - m)), m the
    /// max, so that a term of 1e-14 next to scores of 20 keeps its digits (lse - x[target] in f64 loses ~7% there).
    /// </summary>
    private static double CrossEntropyTerm(Func<int, double> x, int n, int target)
    {
        int arg = 0;
        for (int j = 1; j < n; j++) if (x(j) > x(arg)) arg = j;
        double m = x(arg), rest = 0;
        for (int j = 0; j < n; j++) if (j != arg) rest += Math.Exp(x(j) - m);
        return (m - x(target)) + Log1PSmall(rest);
    }

    /// <summary>log(1 + r) for r >= 0, accurate for tiny r (the series below 1e-4: its first omitted term is under 1e-16 r).</summary>
    private static double Log1PSmall(double r) => r < 1e-4 ? r * (1 - r * (0.5 - r * (1.0 / 3 - r * 0.25))) : Math.Log(1 + r);

    private static double LogSumExp(Func<int, double> x, int n)
    {
        double mx = double.NegativeInfinity;
        for (int j = 0; j < n; j++) mx = Math.Max(mx, x(j));
        double s = 0;
        for (int j = 0; j < n; j++) s += Math.Exp(x(j) - mx);
        return mx + Math.Log(s);
    }

    // ------------------------------------------------------------------ retrieval
    /// <summary>Host backends: the halves widened into a host tensor (exact), then <see cref="TopK"/>; no preference for it.</summary>
    public int PreferredHalfRows => 0;

    public void TopKHalfRows(Tensor queries, ReadOnlySpan<Half> rows, int k, Tensor scores, Tensor indices, float? maxRowNorm = null)
    {
        if (queries.Rank != 2) Contract.Fail("topk half rows", $"queries must be [Q, D], got {queries.Shape}");
        int d = queries.Shape[1];
        if (d == 0 || rows.Length % d != 0) Contract.Fail("topk half rows", $"{rows.Length} halves are not rows of {d}");
        using var corpus = Empty(new Shape(rows.Length / d, d));   // [N, D] f32
        System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(rows, corpus.Span);
        TopK(queries, corpus, k, scores, indices);
    }

    public virtual void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopK(queries, corpus, k, scores, indices);
        var Q = Read(queries); var C = Read(corpus);
        var S = new double[(long)q * k]; var I = new double[(long)q * k];
        var all = new (double Score, int Index)[n];
        for (int i = 0; i < q; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double dot = 0;
                for (int c = 0; c < d; c++) dot += Q[(long)i * d + c] * C[(long)j * d + c];
                all[j] = (dot, j);
            }
            Array.Sort(all, (x, y) => x.Score != y.Score ? y.Score.CompareTo(x.Score) : x.Index.CompareTo(y.Index));
            for (int j = 0; j < k; j++) { S[(long)i * k + j] = all[j].Score; I[(long)i * k + j] = all[j].Index; }
        }
        Write(scores, S); Write(indices, I);
    }

    // ------------------------------------------------------------------ optimiser
    public virtual void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWParams p, int step)
    {
        Contract.SameShape("adamw", "param", param, "grad", grad);
        Contract.SameShape("adamw", "param", param, "m", m);
        Contract.SameShape("adamw", "param", param, "v", v);
        if (step < 1) Contract.Fail("adamw", $"step counts from 1, got {step}");
        var P = Read(param); var G = Read(grad); var M = Read(m); var V = Read(v);
        double bc1 = 1 - Math.Pow(p.Beta1, step), bc2 = 1 - Math.Pow(p.Beta2, step);
        for (long i = 0; i < P.Length; i++)
        {
            M[i] = p.Beta1 * M[i] + (1 - p.Beta1) * G[i];
            V[i] = p.Beta2 * V[i] + (1 - p.Beta2) * G[i] * G[i];
            double mh = M[i] / bc1, vh = V[i] / bc2;
            P[i] -= p.LearningRate * (mh / (Math.Sqrt(vh) + p.Eps) + p.WeightDecay * P[i]);
        }
        Write(param, P); Write(m, M); Write(v, V);
    }

    public virtual void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm)
    {
        Contract.Scalar("clip grad norm", "norm", norm);
        double ss = 0;
        foreach (var g in grads) foreach (double x in Read(g)) ss += x * x;
        double total = Math.Sqrt(ss);
        Write(norm, [total]);
        if (total <= maxNorm) return;
        double s = maxNorm / (total + 1e-6);
        foreach (var g in grads)
        {
            var G = Read(g);
            for (long i = 0; i < G.Length; i++) G[i] *= s;
            Write(g, G);
        }
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
