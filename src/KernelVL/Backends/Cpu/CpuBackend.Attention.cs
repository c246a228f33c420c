using KernelVL.Tensors;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace KernelVL.Backends.Cpu;

// Flash-style attention and the fused contrastive loss: tiles of scores live in per-thread
// scratch and are consumed at once; no [T, T] (or, for attention, [Tq, Tk]) matrix is stored.
public sealed unsafe partial class CpuBackend
{
    private const int AttnBlockQ = 64;
    private const int AttnBlockK = 256;

    [ThreadStatic] private static float[]? _scratch;

    /// <summary>Per-thread scratch of at least n floats, reused across calls (no per-tile allocation).</summary>
    private static float[] Scratch(int n)
    {
        var s = _scratch;
        if (s is null || s.Length < n) _scratch = s = new float[Math.Max(n, 1024)];
        return s;
    }

    /// <summary>Additive key mask [B, Tk]: 0 where kept, -inf where padded; null without a mask.</summary>
    private static float[]? AdditiveKeyMask(Tensor? keyMask, int b, int tk)
    {
        if (keyMask is null) return null;
        var m = new float[b * tk];
        var src = keyMask.SpanI32;
        for (int i = 0; i < m.Length; i++) m[i] = src[i] != 0 ? 0f : float.NegativeInfinity;
        return m;
    }

    public override void Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse)
    {
        var d = Contract.Attention(q, k, v, keyMask, o, lse);
        F32("attention", q, k, v, o, lse);
        var addMask = AdditiveKeyMask(keyMask, d.B, d.Tk);
        float* Qp = q.F32Ptr, Kp = k.F32Ptr, Vp = v.F32Ptr, Op = o.F32Ptr, Lp = lse.F32Ptr;
        int D = d.D, Tq = d.Tq, Tk = d.Tk;
        int qBlocks = (Tq + AttnBlockQ - 1) / AttnBlockQ;
        CpuParallel.Each(d.B * d.H * qBlocks, u =>
        {
            int bh = u / qBlocks, i0 = u % qBlocks * AttnBlockQ, rows = Math.Min(AttnBlockQ, Tq - i0);
            int b = bh / d.H;
            float* Q = Qp + ((long)bh * Tq + i0) * D, O = Op + ((long)bh * Tq + i0) * D, L = Lp + (long)bh * Tq + i0;
            float* K = Kp + (long)bh * Tk * D, V = Vp + (long)bh * Tk * D;
            var scratch = Scratch(AttnBlockQ * AttnBlockK + 2 * AttnBlockQ);
            fixed (float* sp = scratch)
            fixed (float* mp = addMask)
            {
                float* S = sp, M = sp + AttnBlockQ * AttnBlockK, Lsum = M + AttnBlockQ;   // S [rows, cols], M and Lsum [rows]
                new Span<float>(O, rows * D).Clear();
                new Span<float>(M, rows).Fill(float.NegativeInfinity);
                new Span<float>(Lsum, rows).Clear();
                for (int j0 = 0; j0 < Tk; j0 += AttnBlockK)
                {
                    int cols = Math.Min(AttnBlockK, Tk - j0);
                    float* bias = mp == null ? null : mp + (long)b * Tk + j0;
                    // S = scale * Q K_j^T + mask
                    CpuGemm.Gemm(rows, cols, D, Q, D, false, K + (long)j0 * D, D, true, S, cols, scale, false, bias, parallel: false);
                    for (int r = 0; r < rows; r++)
                    {
                        var s = new Span<float>(S + r * cols, cols);
                        float mNew = MathF.Max(M[r], TensorPrimitives.Max(s));
                        if (float.IsNegativeInfinity(mNew)) { s.Clear(); continue; }   // every key so far masked
                        float rowSum = CpuMath.ExpShift(S + r * cols, S + r * cols, cols, mNew);
                        float corr = MathF.Exp(M[r] - mNew);
                        if (corr != 1f) TensorPrimitives.Multiply(new Span<float>(O + r * D, D), corr, new Span<float>(O + r * D, D));
                        Lsum[r] = Lsum[r] * corr + rowSum;
                        M[r] = mNew;
                    }
                    // O += P V_j
                    CpuGemm.Gemm(rows, D, cols, S, cols, false, V + (long)j0 * D, D, false, O, D, 1f, true, null, parallel: false);
                }
                for (int r = 0; r < rows; r++)
                {
                    if (Lsum[r] == 0f) { new Span<float>(O + r * D, D).Clear(); L[r] = float.NegativeInfinity; continue; }
                    TensorPrimitives.Multiply(new Span<float>(O + r * D, D), 1f / Lsum[r], new Span<float>(O + r * D, D));
                    L[r] = M[r] + MathF.Log(Lsum[r]);
                }
            }
        });
    }

    public override void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv)
    {
        var d = Contract.AttentionBackward(q, k, v, keyMask, o, lse, dO, dq, dk, dv);
        F32("attention backward", q, k, v, o, lse, dO, dq, dk, dv);
        var addMask = AdditiveKeyMask(keyMask, d.B, d.Tk);
        float* Qp = q.F32Ptr, Kp = k.F32Ptr, Vp = v.F32Ptr, Op = o.F32Ptr, Lp = lse.F32Ptr, dOp = dO.F32Ptr;
        float* dQp = dq is null ? null : dq.F32Ptr, dKp = dk is null ? null : dk.F32Ptr, dVp = dv is null ? null : dv.F32Ptr;
        int D = d.D, Tq = d.Tq, Tk = d.Tk;
        const int BQ = AttnBlockQ, BK = 128;
        // One unit per (b, h): it owns that head's dK and dV, so the accumulations never race.
        CpuParallel.Each(d.B * d.H, bh =>
        {
            int b = bh / d.H;
            float* Q = Qp + (long)bh * Tq * D, O = Op + (long)bh * Tq * D, dOut = dOp + (long)bh * Tq * D, L = Lp + (long)bh * Tq;
            float* K = Kp + (long)bh * Tk * D, V = Vp + (long)bh * Tk * D;
            float* dQ = dQp == null ? null : dQp + (long)bh * Tq * D;
            float* dK = dKp == null ? null : dKp + (long)bh * Tk * D;
            float* dV = dVp == null ? null : dVp + (long)bh * Tk * D;
            var scratch = Scratch(2 * BQ * BK + Tq);
            fixed (float* sp = scratch)
            fixed (float* mp = addMask)
            {
                float* P = sp, dP = sp + BQ * BK, Drow = dP + BQ * BK;   // P, dP [rows, cols]; Drow [Tq]
                for (int i = 0; i < Tq; i++)
                    Drow[i] = TensorPrimitives.Dot(new ReadOnlySpan<float>(dOut + (long)i * D, D), new ReadOnlySpan<float>(O + (long)i * D, D));
                for (int i0 = 0; i0 < Tq; i0 += BQ)
                {
                    int rows = Math.Min(BQ, Tq - i0);
                    float* Qi = Q + (long)i0 * D, dOi = dOut + (long)i0 * D;
                    for (int j0 = 0; j0 < Tk; j0 += BK)
                    {
                        int cols = Math.Min(BK, Tk - j0);
                        float* Kj = K + (long)j0 * D, Vj = V + (long)j0 * D;
                        float* bias = mp == null ? null : mp + (long)b * Tk + j0;
                        // P = exp(scale * Q_i K_j^T + mask - lse)
                        CpuGemm.Gemm(rows, cols, D, Qi, D, false, Kj, D, true, P, cols, scale, false, bias, parallel: false);
                        for (int r = 0; r < rows; r++)
                        {
                            var pr = new Span<float>(P + r * cols, cols);
                            float l = L[i0 + r];
                            if (float.IsNegativeInfinity(l)) { pr.Clear(); continue; }
                            CpuMath.ExpShift(P + r * cols, P + r * cols, cols, l);
                        }
                        if (dV != null)   // dV_j += P^T dO_i
                            CpuGemm.Gemm(cols, D, rows, P, cols, true, dOi, D, false, dV + (long)j0 * D, D, 1f, true, null, parallel: false);
                        if (dQ == null && dK == null) continue;
                        // dP = dO_i V_j^T; dS = P (dP - D_i) * scale, in place in dP
                        CpuGemm.Gemm(rows, cols, D, dOi, D, false, Vj, D, true, dP, cols, 1f, false, null, parallel: false);
                        for (int r = 0; r < rows; r++)
                        {
                            var dpr = new Span<float>(dP + r * cols, cols);
                            TensorPrimitives.Subtract(dpr, Drow[i0 + r], dpr);
                            TensorPrimitives.Multiply(dpr, new ReadOnlySpan<float>(P + r * cols, cols), dpr);
                            TensorPrimitives.Multiply(dpr, scale, dpr);
                        }
                        if (dQ != null)   // dQ_i += dS K_j
                            CpuGemm.Gemm(rows, D, cols, dP, cols, false, Kj, D, false, dQ + (long)i0 * D, D, 1f, true, null, parallel: false);
                        if (dK != null)   // dK_j += dS^T Q_i
                            CpuGemm.Gemm(cols, D, rows, dP, cols, true, Qi, D, false, dK + (long)j0 * D, D, 1f, true, null, parallel: false);
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------ contrastive loss
    /// <summary>S = t v^T * invT into a [n, n] buffer (the loss needs every entry: both softmaxes are over full rows and columns).</summary>
    private static float[] SimilarityMatrix(Tensor t, Tensor v, int n, int dim, float invT)
    {
        var s = GC.AllocateUninitializedArray<float>(n * n);
        fixed (float* S = s) CpuGemm.Gemm(n, n, dim, t.F32Ptr, dim, false, v.F32Ptr, dim, true, S, n, invT, false, null, parallel: true);
        return s;
    }

    /// <summary>log(1 + x), accurate for tiny x (Goldberg's correction of the rounded 1 + x).</summary>
    private static double Log1P(double x)
    {
        double u = 1 + x;
        return u == 1 ? x : Math.Log(u) * x / (u - 1);
    }

    /// <summary>
    /// Row and column log-sum-exps of S [n, n], and the loss terms lse - S_ii of both directions. When the
    /// diagonal is its row's (column's) maximum the term is log1p(sum of the other exp(S_ij - S_ii)):
    /// exact when the softmax saturates, where lse - S_ii would cancel to rounding noise.
    /// </summary>
    private static void RowColLse(float[] s, int n, float* lseRow, float* lseCol, double[] termRow, double[] termCol)
    {
        fixed (float* S = s)
        {
            float* Sp = S;
            Rows(n, n, (a, e) =>
            {
                var tmp = new float[n];
                for (long i = a; i < e; i++)
                {
                    var row = new ReadOnlySpan<float>(Sp + i * n, n);
                    lseRow[i] = CpuMath.LogSumExp(Sp + i * n, n);
                    float diag = row[(int)i];
                    if (diag < TensorPrimitives.Max(row)) { termRow[i] = (double)lseRow[i] - diag; continue; }
                    fixed (float* tp = tmp) CpuMath.ExpShift(Sp + i * n, tp, n, diag);
                    tmp[i] = 0f;
                    termRow[i] = Log1P(TensorPrimitives.Sum(tmp));
                }
            });
            // Columns: each thread owns a band of columns and sweeps the rows (max, sum of exp, off-diagonal sum).
            int parts = Math.Clamp(n / 64, 1, CpuParallel.Threads);
            int per = (n + parts - 1) / parts;
            CpuParallel.Each(parts, t =>
            {
                int c0 = t * per, w = Math.Min(n, c0 + per) - c0;
                if (w <= 0) return;
                var mx = new float[w];
                var sum = new float[w];
                var off = new float[w];
                var diag = new float[w];
                var tmp = new float[w];
                mx.AsSpan().Fill(float.NegativeInfinity);
                for (int j = 0; j < w; j++) diag[j] = Sp[(long)(c0 + j) * n + c0 + j];
                for (int i = 0; i < n; i++) TensorPrimitives.Max(mx, new ReadOnlySpan<float>(Sp + (long)i * n + c0, w), mx);
                fixed (float* tp = tmp, mxp = mx, dp = diag)
                    for (int i = 0; i < n; i++)
                    {
                        float* row = Sp + (long)i * n + c0;
                        CpuMath.ExpDiff(row, mxp, tp, w);
                        TensorPrimitives.Add(sum, tmp, sum);
                        CpuMath.ExpDiff(row, dp, tp, w);
                        if (i >= c0 && i < c0 + w) tmp[i - c0] = 0f;
                        TensorPrimitives.Add(off, tmp, off);
                    }
                for (int j = 0; j < w; j++)
                {
                    lseCol[c0 + j] = mx[j] + MathF.Log(sum[j]);
                    termCol[c0 + j] = diag[j] < mx[j] ? (double)lseCol[c0 + j] - diag[j] : Log1P(off[j]);
                }
            });
        }
    }

    public override void InfoNce(Tensor t, Tensor v, float invTemperature, Tensor loss, Tensor lseRow, Tensor lseCol)
    {
        const string op = "infonce";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v); Contract.Scalar(op, "loss", loss);
        Contract.Dims(op, "lseRow", lseRow, n); Contract.Dims(op, "lseCol", lseCol, n);
        F32(op, t, v, loss, lseRow, lseCol);
        var s = SimilarityMatrix(t, v, n, dim, invTemperature);
        var termRow = new double[n];
        var termCol = new double[n];
        RowColLse(s, n, lseRow.F32Ptr, lseCol.F32Ptr, termRow, termCol);
        double total = 0;
        for (int i = 0; i < n; i++) total += termRow[i] + termCol[i];
        *loss.F32Ptr = (float)(total / n);
    }

    public override void InfoNceBackward(Tensor t, Tensor v, float invTemperature, Tensor lseRow, Tensor lseCol, Tensor dloss, Tensor? dt, Tensor? dv)
    {
        const string op = "infonce backward";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v);
        Contract.SameShapeOrNull(op, "t", t, "dt", dt); Contract.SameShapeOrNull(op, "v", v, "dv", dv);
        F32(op, t, v, lseRow, lseCol, dloss, dt, dv);
        var s = SimilarityMatrix(t, v, n, dim, invTemperature);
        float* LR = lseRow.F32Ptr, LC = lseCol.F32Ptr;
        float g = *dloss.F32Ptr / n * invTemperature;
        fixed (float* S = s)
        {
            float* Sp = S;
            // dS_ij = g (exp(S_ij - lseRow_i) + exp(S_ij - lseCol_j) - 2 delta_ij), in place. On the diagonal
            // p - 1 is minus the sum of the other entries (exact when the softmax saturates at small temperatures):
            // a first pass gathers each column's off-diagonal sum.
            int parts = (int)Math.Clamp(n / 64, 1, CpuParallel.Threads);
            int per = (n + parts - 1) / parts;
            var colOffParts = new float[parts * n];
            CpuParallel.Each(parts, part =>
            {
                var tmp = new float[n];
                var acc = colOffParts.AsSpan(part * n, n);
                fixed (float* tp = tmp)
                    for (int i = part * per; i < Math.Min(n, (part + 1) * per); i++)
                    {
                        CpuMath.ExpDiff(Sp + (long)i * n, LC, tp, n);
                        tmp[i] = 0f;
                        TensorPrimitives.Add(acc, tmp, acc);
                    }
            });
            var colOff = new float[n];
            for (int part = 0; part < parts; part++) TensorPrimitives.Add(colOff, colOffParts.AsSpan(part * n, n), colOff);
            Rows(n, n, (a, e) =>
            {
                var tmp = new float[n];
                for (long i = a; i < e; i++)
                {
                    var row = new Span<float>(Sp + i * n, n);
                    fixed (float* tp = tmp) CpuMath.ExpDiff(Sp + i * n, LC, tp, n);
                    CpuMath.ExpShift(Sp + i * n, Sp + i * n, n, LR[i]);
                    row[(int)i] = 0f;                               // the off-diagonal mass summed directly: sum - p_ii
                    float rowOff = TensorPrimitives.Sum(row);       // would cancel when p_ii -> 1
                    TensorPrimitives.Add(row, tmp, row);
                    row[(int)i] = -(rowOff + colOff[i]);
                    TensorPrimitives.Multiply(row, g, row);
                }
            });
            // dt += G v, dv += G^T t, each product summed whole before the one add: the GEMM adds every K panel to its
            // output, and with K = n (thousands) that rounds the gradient against the accumulated value again and again
            // (1.5e-3 of the gradient at N 4096 on values of magnitude 3, against 2.8e-6 when summed first).
            var prod = GC.AllocateUninitializedArray<float>(n * dim);   // [n, dim]
            fixed (float* P = prod)
            {
                if (dt is not null)
                {
                    CpuGemm.Gemm(n, dim, n, S, n, false, v.F32Ptr, dim, false, P, dim, 1f, false, null, parallel: true);
                    TensorPrimitives.Add(new ReadOnlySpan<float>(dt.F32Ptr, n * dim), prod, new Span<float>(dt.F32Ptr, n * dim));
                }
                if (dv is not null)
                {
                    CpuGemm.Gemm(n, dim, n, S, n, true, t.F32Ptr, dim, false, P, dim, 1f, false, null, parallel: true);
                    TensorPrimitives.Add(new ReadOnlySpan<float>(dv.F32Ptr, n * dim), prod, new Span<float>(dv.F32Ptr, n * dim));
                }
            }
        }
    }
}
