namespace KernelVL.Testing;

/// <summary>
/// The parity registry: every op of the backend contract, forward and backward, as <see cref="OpCase"/>s.
/// <see cref="TestCases"/> are small and awkward shapes (size 1, odd sizes, sizes that are not multiples of
/// the vector width, masked rows) for the test suite; <see cref="PerfCases"/> are the shapes the perf
/// harness times. A new op is a new factory here plus its entries in both lists.
/// </summary>
public static class OpRegistry
{
    private const double F = 4;   // bytes per f32

    // ---------------------------------------------------------------- factories, one per op
    public static OpCase MatMul(int batch, int m, int n, int k, bool transA, bool transB, bool bias, bool sharedB, double budget = 2e-6)
    {
        string shape = $"{(batch > 1 ? batch + "x" : "")}{m}x{n}x{k}{(transA ? " tA" : "")}{(transB ? " tB" : "")}{(bias ? " bias" : "")}{(sharedB && batch > 1 ? " sharedB" : "")}";
        int[] A(params int[] d) => batch > 1 ? [batch, .. d] : d;
        int[] Bd(params int[] d) => batch > 1 && !sharedB ? [batch, .. d] : d;
        return new("matmul", shape, budget, 2.0 * batch * m * n * k, F * batch * ((double)m * k + (sharedB ? 1.0 / batch : 1) * k * n + m * n),
            c => c.Op(() => c.B.MatMul(c.In("a", transA ? A(k, m) : A(m, k)), c.In("b", transB ? Bd(n, k) : Bd(k, n)), bias ? c.In("bias", n) : null,
                c.Out("y", A(m, n)), transA, transB)));
    }

    public static OpCase MatMulBackward(int batch, int m, int n, int k, bool transA, bool transB, bool sharedB, double budget = 2e-6)
    {
        string shape = $"{(batch > 1 ? batch + "x" : "")}{m}x{n}x{k}{(transA ? " tA" : "")}{(transB ? " tB" : "")}{(sharedB && batch > 1 ? " sharedB" : "")}";
        int[] A(params int[] d) => batch > 1 ? [batch, .. d] : d;
        int[] Bd(params int[] d) => batch > 1 && !sharedB ? [batch, .. d] : d;
        return new("matmul_backward", shape, budget, 4.0 * batch * m * n * k, F * 2 * batch * ((double)m * k + k * n + m * n),
            c => c.Op(() => c.B.MatMulBackward(c.In("a", transA ? A(k, m) : A(m, k)), c.In("b", transB ? Bd(n, k) : Bd(k, n)), c.In("dy", A(m, n)),
                c.Acc("da", transA ? A(k, m) : A(m, k)), c.Acc("db", transB ? Bd(n, k) : Bd(k, n)), c.Acc("dbias", n), transA, transB)));
    }

    /// <summary>
    /// y = gelu(a @ op(b) + bias) [m, n]: the cuda backend's fused GEMM epilogue (<see cref="Backends.Cuda.CudaBackend.MatMulGelu"/>);
    /// every other backend composes its MatMul and Gelu, so the fused kernel is compared with the reference's two ops.
    /// </summary>
    public static OpCase MatMulGelu(int m, int n, int k, bool transB, double budget = 1e-5)
        => new("matmul_gelu", $"{m}x{n}x{k}{(transB ? " tB" : "")} bias", budget, 2.0 * m * n * k + 20.0 * m * n, F * ((double)m * k + k * n + m * n),
            c =>
            {
                // One element: a b + bias is all there is, and where it cancels to near zero a bf16 backend's rounding of
                // a and b (2^-8 of |a b|) is no longer small against the result; positive draws keep the sum away from 0.
                Func<Random, float> draw = m * n * k > 1 ? OpContext.Normal : r => 0.5f + Math.Abs(OpContext.Normal(r));
                var a = c.InWith("a", draw, m, k);                        // [m, k]
                var b = transB ? c.InWith("b", draw, n, k) : c.InWith("b", draw, k, n);   // [n, k] or [k, n]
                var bias = c.InWith("bias", draw, n);                     // [n]
                var y = c.Out("y", m, n);                                 // [m, n]
                if (c.B is Backends.Cuda.CudaBackend cuda) c.Op(() => cuda.MatMulGelu(a, b, bias, y, transB));
                else
                {
                    var h = c.Temp(m, n);                                 // [m, n] a @ op(b) + bias
                    c.Op(() =>
                    {
                        c.B.MatMul(a, b, bias, h, false, transB);
                        c.B.Gelu(h, y);
                    });
                }
            });

    public static OpCase Add(int outer, int inner) => new("add", $"{outer}x{inner}", 1e-7, (double)outer * inner, F * (2.0 * outer * inner + inner),
        c => c.Op(() => c.B.Add(c.In("a", outer, inner), c.In("b", inner), c.Out("y", outer, inner))));

    public static OpCase AddBackward(int outer, int inner) => new("add_backward", $"{outer}x{inner}", 1e-6, 2.0 * outer * inner, F * 3.0 * outer * inner,
        c => c.Op(() => c.B.AddBackward(c.In("dy", outer, inner), c.Acc("da", outer, inner), c.Acc("db", inner))));

    public static OpCase Mul(int outer, int inner) => new("mul", $"{outer}x{inner}", 1e-7, (double)outer * inner, F * (2.0 * outer * inner + inner),
        c => c.Op(() => c.B.Mul(c.In("a", outer, inner), c.In("b", inner), c.Out("y", outer, inner))));

    public static OpCase MulBackward(int outer, int inner) => new("mul_backward", $"{outer}x{inner}", 1e-6, 4.0 * outer * inner, F * 4.0 * outer * inner,
        c => c.Op(() => c.B.MulBackward(c.In("a", outer, inner), c.In("b", inner), c.In("dy", outer, inner), c.Acc("da", outer, inner), c.Acc("db", inner))));

    public static OpCase Scale(int n) => new("scale", $"{n}", 1e-7, n, F * 2.0 * n,
        c => c.Op(() => c.B.Scale(c.In("x", n), 0.37f, c.Out("y", n))));

    public static OpCase ScaleBackward(int n) => new("scale_backward", $"{n}", 1e-7, 2.0 * n, F * 3.0 * n,
        c => c.Op(() => c.B.ScaleBackward(c.In("dy", n), 0.37f, c.Acc("dx", n))));

    public static OpCase Gelu(int rows, int cols) => new("gelu", $"{rows}x{cols}", 2e-6, 20.0 * rows * cols, F * 2.0 * rows * cols,
        c => c.Op(() => c.B.Gelu(c.In("x", 2f, rows, cols), c.Out("y", rows, cols))));

    /// <summary>
    /// dx = dy (Phi(x) + x phi(x)) crosses 0 near x = -0.75, where Phi and x phi cancel (1x1 on cpu: 10 of 30000 seeds
    /// over 2e-6, dx 0.0070562 against 0.0070562(6)): dx is measured over its terms' size |dy| (Phi + |x| phi).
    /// </summary>
    public static OpCase GeluBackward(int rows, int cols) => new("gelu_backward", $"{rows}x{cols}", 2e-6, 30.0 * rows * cols, F * 4.0 * rows * cols,
        c => c.Op(() => c.B.GeluBackward(c.In("x", 2f, rows, cols), c.In("dy", rows, cols), c.Acc("dx", rows, cols))))
    {
        TermSize = (slot, r, _) =>
        {
            if (slot != "dx") return null;
            float[] x = r.First(s => s.Name == "x").Values, dy = r.First(s => s.Name == "dy").Values;
            return i => Math.Abs(dy[i]) * (0.5 * SpecialFunctions.Erfc(-x[i] / Math.Sqrt(2)) + Math.Abs(x[i]) * Math.Exp(-0.5 * x[i] * x[i]) / Math.Sqrt(2 * Math.PI));
        },
    };

    public static OpCase Tanh(int rows, int cols) => new("tanh", $"{rows}x{cols}", 1e-6, 10.0 * rows * cols, F * 2.0 * rows * cols,
        c => c.Op(() => c.B.Tanh(c.In("x", 2f, rows, cols), c.Out("y", rows, cols))));

    public static OpCase TanhBackward(int rows, int cols) => new("tanh_backward", $"{rows}x{cols}", 1e-6, 3.0 * rows * cols, F * 4.0 * rows * cols,
        c => c.Op(() => c.B.TanhBackward(c.InWith("y", r => (float)(2 * r.NextDouble() - 1), rows, cols), c.In("dy", rows, cols), c.Acc("dx", rows, cols))));

    public static OpCase Sum(int n) => new("sum", $"{n}", 1e-5, n, F * n,
        c => c.Op(() => c.B.SumAll(c.InWith("x", r => (float)r.NextDouble() + 0.5f, n), c.Out("y", 1))));

    public static OpCase SumBackward(int n) => new("sum_backward", $"{n}", 1e-7, n, F * 2.0 * n,
        c => c.Op(() => c.B.SumAllBackward(c.In("dy", 1), c.Acc("dx", n))));

    public static OpCase LayerNorm(int rows, int cols) => new("layernorm", $"{rows}x{cols}", 2e-6, 8.0 * rows * cols, F * 2.0 * rows * cols,
        c => c.Op(() => c.B.LayerNorm(c.InWith("x", r => 3f + 2f * OpContext.Normal(r), rows, cols), c.In("gamma", cols), c.In("beta", cols), 1e-5f,
            c.Out("y", rows, cols), c.Out("mean", rows), c.Out("rstd", rows))));

    public static OpCase LayerNormBackward(int rows, int cols) => new("layernorm_backward", $"{rows}x{cols}", 1e-5, 14.0 * rows * cols, F * 3.0 * rows * cols,
        c =>
        {
            var x = c.InWith("x", r => 3f + 2f * OpContext.Normal(r), rows, cols);
            var gamma = c.In("gamma", cols);
            var mean = c.Temp(rows);
            var rstd = c.Temp(rows);
            c.B.LayerNorm(x, gamma, c.In("beta", cols), 1e-5f, c.Temp(rows, cols), mean, rstd);
            c.Op(() => c.B.LayerNormBackward(x, gamma, mean, rstd, c.In("dy", rows, cols), c.Acc("dx", rows, cols), c.Acc("dgamma", cols), c.Acc("dbeta", cols)));
        });

    public static OpCase Softmax(int rows, int cols, int maskRows = 0)
        => new("softmax", $"{rows}x{cols}{(maskRows > 0 ? $" mask{maskRows}" : "")}", 2e-6, 5.0 * rows * cols, F * 2.0 * rows * cols,
            c => c.Op(() => c.B.Softmax(c.In("x", 3f, rows, cols),
                maskRows > 0 ? c.InWith("mask", r => r.NextDouble() < 0.3 ? float.NegativeInfinity : -(float)r.NextDouble(), maskRows, cols) : null,
                c.Out("y", rows, cols))));

    /// <summary>
    /// dx += y (dy - sum_j y_j dy_j) with y = softmax(x): the difference cancels, so dx is measured over the size of its
    /// terms, y_i (|dy_i| + sum_j y_j |dy_j|) (with y from x in f64); at 5x33, 1.88e-6 of the 2e-6 budget in 300 seeds.
    /// </summary>
    public static OpCase SoftmaxBackward(int rows, int cols) => new("softmax_backward", $"{rows}x{cols}", 2e-6, 4.0 * rows * cols, F * 4.0 * rows * cols,
        c =>
        {
            var y = c.Temp(rows, cols);
            c.B.Softmax(c.In("x", 3f, rows, cols), null, y);
            c.Op(() => c.B.SoftmaxBackward(y, c.In("dy", rows, cols), c.Acc("dx", rows, cols)));
        })
    {
        TermSize = (slot, r, _) =>
        {
            if (slot != "dx") return null;
            float[] x = r.First(s => s.Name == "x").Values, dy = r.First(s => s.Name == "dy").Values;
            var size = new double[rows * cols];
            var y = new double[cols];
            for (int i = 0; i < rows; i++)
            {
                double max = double.NegativeInfinity, sum = 0, dot = 0;
                for (int j = 0; j < cols; j++) max = Math.Max(max, x[i * cols + j]);
                for (int j = 0; j < cols; j++) sum += y[j] = Math.Exp(x[i * cols + j] - max);
                for (int j = 0; j < cols; j++) dot += (y[j] /= sum) * Math.Abs(dy[i * cols + j]);
                for (int j = 0; j < cols; j++) size[i * cols + j] = y[j] * (Math.Abs(dy[i * cols + j]) + dot);
            }
            return k => size[k];
        },
    };

    private static double AttnFlops(int b, int h, int tq, int tk, int d) => 4.0 * b * h * tq * tk * d;

    public static OpCase Attention(int b, int h, int tq, int tk, int d, bool mask, double budget = 5e-6)
        => new("attention", $"B{b} H{h} Tq{tq} Tk{tk} D{d}{(mask ? " mask" : "")}", budget, AttnFlops(b, h, tq, tk, d),
            F * b * h * (2.0 * tq * d + 2.0 * tk * d),
            c => c.Op(() => c.B.Attention(c.In("q", b, h, tq, d), c.In("k", b, h, tk, d), c.In("v", b, h, tk, d), mask ? c.Mask("mask", b, tk, allowEmpty: b > 2) : null,
                1f / MathF.Sqrt(d), c.Out("o", b, h, tq, d), c.Out("lse", b, h, tq))))
        {
            // Without the mask (a caller of Compare that passed no integer inputs) the terms are unknown: max |ref| only.
            TermSize = (slot, r, ints) => slot is not ("o" or "lse") ? null
                : !mask ? AttentionTermSize(slot, r, null, b, h, tq, tk, d)
                : ints.TryGetValue("mask", out var m) ? AttentionTermSize(slot, r, m, b, h, tq, tk, d) : null,
        };

    /// <summary>
    /// The size of the terms of attention's outputs, in f64 from q, k, v. lse [b, h, tq] = m + log l (m the row's largest
    /// score, l the sum of exp(s - m)) rounds relative to max_j scale sum_d |q k| + |log l|: a one-key-row case cancels,
    /// lse -0.0080357 from a score of about 0.5 and a log of about -0.5. o [b, h, tq, d] = sum_j p_j v_j has random-signed
    /// terms whose roundings add like a random walk, so its size is their root sum of squares, sqrt(sum_j (p_j v_j)^2): it
    /// is |o|'s own size for long rows (sum_j p_j |v_j|, up to sqrt(Tk) times more, could hide a kernel's real error) and
    /// the terms' for short ones (Tk 3, D 1: o -0.00113 from terms near 0.5).
    /// </summary>
    private static Func<int, double> AttentionTermSize(string slot, IReadOnlyList<OpContext.Result> r, int[]? mask, int b, int h, int tq, int tk, int d)
    {
        float[] q = r.First(x => x.Name == "q").Values, k = r.First(x => x.Name == "k").Values, v = r.First(x => x.Name == "v").Values;
        double scale = 1.0 / Math.Sqrt(d);
        var size = new double[slot == "o" ? b * h * tq * d : b * h * tq];
        var s = new double[tk];
        for (int bh = 0; bh < b * h; bh++)
            for (int i = 0; i < tq; i++)
            {
                int row = bh * tq + i, bi = bh / h;
                double m = double.NegativeInfinity, maxAbs = 0;
                for (int j = 0; j < tk; j++)
                {
                    if (mask is not null && mask[bi * tk + j] == 0) { s[j] = double.NegativeInfinity; continue; }
                    double dot = 0, abs = 0;
                    for (int e = 0; e < d; e++)
                    {
                        double t = (double)q[(long)row * d + e] * k[((long)bh * tk + j) * d + e];
                        dot += t; abs += Math.Abs(t);
                    }
                    s[j] = scale * dot;
                    m = Math.Max(m, s[j]); maxAbs = Math.Max(maxAbs, scale * abs);
                }
                if (double.IsNegativeInfinity(m)) continue;   // a row with every key masked: no terms
                double l = 0;
                for (int j = 0; j < tk; j++) l += Math.Exp(s[j] - m);
                if (slot == "lse") { size[row] = maxAbs + Math.Abs(Math.Log(l)); continue; }
                for (int e = 0; e < d; e++)
                {
                    double squares = 0;
                    for (int j = 0; j < tk; j++)
                    {
                        double term = Math.Exp(s[j] - m) / l * v[((long)bh * tk + j) * d + e];
                        squares += term * term;
                    }
                    size[(long)row * d + e] = Math.Sqrt(squares);
                }
            }
        return i => size[i];
    }

    /// <summary>
    /// Attention backward. dq and dk sum ds_ij = p_ij (dp_ij - delta_i) (dp = dO . v, delta = dO . o) times k or q, and
    /// ds cancels where a row's softmax saturates: a key row with one unmasked key has p = 1 and ds = 0 exactly, while a
    /// bf16 kernel (emulated) got dk -0.0386 there from p and delta each rounded to bf16. So dq and dk are measured, when
    /// over the budget, over the root sum of squares of their terms (random-signed, see <see cref="AttentionTermSize"/>),
    /// with each ds at its own size p_ij (|dp_ij| + |delta_i|), dp and delta themselves at the root sum of squares of their
    /// d terms (dO_e v_e, dO_e o_e: a bf16 o errs by its terms, also where dp happens to cancel); computed in f64 from q,
    /// k, v, dO and the mask.
    /// </summary>
    public static OpCase AttentionBackward(int b, int h, int tq, int tk, int d, bool mask, double budget = 2e-5)
        => new("attention_backward", $"B{b} H{h} Tq{tq} Tk{tk} D{d}{(mask ? " mask" : "")}", budget, 2.5 * AttnFlops(b, h, tq, tk, d),
            F * b * h * (4.0 * tq * d + 4.0 * tk * d),
            c =>
            {
                var q = c.In("q", b, h, tq, d); var k = c.In("k", b, h, tk, d); var v = c.In("v", b, h, tk, d);
                var m = mask ? c.Mask("mask", b, tk, allowEmpty: b > 2) : null;
                var o = c.Temp(b, h, tq, d); var lse = c.Temp(b, h, tq);
                float scale = 1f / MathF.Sqrt(d);
                c.B.Attention(q, k, v, m, scale, o, lse);
                c.Op(() => c.B.AttentionBackward(q, k, v, m, scale, o, lse, c.In("dO", b, h, tq, d), c.Acc("dq", b, h, tq, d), c.Acc("dk", b, h, tk, d), c.Acc("dv", b, h, tk, d)));
            })
        {
            TermSize = (slot, r, ints) => slot is not ("dq" or "dk") ? null
                : !mask ? AttentionBackwardTermSize(slot, r, null, b, h, tq, tk, d)
                : ints.TryGetValue("mask", out var mk) ? AttentionBackwardTermSize(slot, r, mk, b, h, tq, tk, d) : null,
        };

    private static Func<int, double> AttentionBackwardTermSize(string slot, IReadOnlyList<OpContext.Result> r, int[]? mask, int b, int h, int tq, int tk, int d)
    {
        float[] q = r.First(x => x.Name == "q").Values, k = r.First(x => x.Name == "k").Values,
            v = r.First(x => x.Name == "v").Values, dO = r.First(x => x.Name == "dO").Values;
        double scale = 1.0 / Math.Sqrt(d);
        bool dq = slot == "dq";
        var squares = new double[(long)b * h * (dq ? tq : tk) * d];   // dq [b, h, tq, d] or dk [b, h, tk, d]
        var p = new double[tk]; var dp = new double[tk]; var o = new double[d];
        for (int bh = 0; bh < b * h; bh++)
            for (int i = 0; i < tq; i++)
            {
                long qi = ((long)bh * tq + i) * d;
                double max = double.NegativeInfinity, sum = 0, delta = 0;
                for (int j = 0; j < tk; j++)
                {
                    long kj = ((long)bh * tk + j) * d;
                    if (mask is not null && mask[bh / h * tk + j] == 0) { p[j] = double.NegativeInfinity; continue; }
                    double s = 0, g = 0;
                    for (int e = 0; e < d; e++) { s += (double)q[qi + e] * k[kj + e]; g += (double)dO[qi + e] * v[kj + e] * dO[qi + e] * v[kj + e]; }
                    p[j] = s * scale; dp[j] = Math.Sqrt(g);   // dp's size: the root sum of squares of dO_e v_e, never its cancelled sum
                    max = Math.Max(max, p[j]);
                }
                if (double.IsNegativeInfinity(max)) continue;   // every key masked: no terms
                for (int j = 0; j < tk; j++) sum += p[j] = Math.Exp(p[j] - max);
                Array.Clear(o);
                for (int j = 0; j < tk; j++)
                {
                    if ((p[j] /= sum) == 0) continue;   // a masked key: p 0
                    for (int e = 0; e < d; e++) o[e] += p[j] * v[((long)bh * tk + j) * d + e];
                }
                for (int e = 0; e < d; e++) delta += o[e] * dO[qi + e] * o[e] * dO[qi + e];
                delta = Math.Sqrt(delta);                       // delta = dO . o at its terms' size likewise
                for (int j = 0; j < tk; j++)
                {
                    if (p[j] == 0) continue;
                    double ds = p[j] * (dp[j] + delta) * scale;
                    long kj = ((long)bh * tk + j) * d;
                    for (int e = 0; e < d; e++)
                    {
                        double t = ds * (dq ? k[kj + e] : q[qi + e]);
                        squares[(dq ? qi : kj) + e] += t * t;
                    }
                }
            }
        return x => Math.Sqrt(squares[x]);
    }

    public static OpCase SwapAxes12(int a, int b, int cc, int d) => new("swap_axes12", $"{a}x{b}x{cc}x{d}", 0, 0, F * 2.0 * a * b * cc * d,
        c => c.Op(() => c.B.SwapAxes12(c.In("x", a, b, cc, d), c.Out("y", a, cc, b, d))));

    public static OpCase SwapAxes12Backward(int a, int b, int cc, int d) => new("swap_axes12_backward", $"{a}x{b}x{cc}x{d}", 1e-7, (double)a * b * cc * d, F * 3.0 * a * b * cc * d,
        c => c.Op(() => c.B.SwapAxes12Backward(c.In("dy", a, cc, b, d), c.Acc("dx", a, b, cc, d))));

    public static OpCase Embedding(int n, int vocab, int dim) => new("embedding", $"N{n} V{vocab} C{dim}", 0, 0, F * 2.0 * n * dim,
        c => c.Op(() => c.B.Embedding(c.Ints("ids", vocab, n), c.In("table", vocab, dim), c.Out("y", n, dim))));

    public static OpCase EmbeddingBackward(int n, int vocab, int dim) => new("embedding_backward", $"N{n} V{vocab} C{dim}", 1e-6, (double)n * dim, F * 3.0 * n * dim,
        c => c.Op(() => c.B.EmbeddingBackward(c.Ints("ids", vocab, n), c.In("dy", n, dim), c.Acc("dtable", vocab, dim))));

    public static OpCase Dropout(int n, float p) => new("dropout", $"{n} p{p}", 1e-7, n, F * 2.0 * n,
        c => c.Op(() => c.B.Dropout(c.In("x", n), p, 0xC0FFEEUL + (ulong)n, c.Out("y", n))));

    public static OpCase DropoutBackward(int n, float p) => new("dropout_backward", $"{n} p{p}", 1e-7, n, F * 3.0 * n,
        c => c.Op(() => c.B.DropoutBackward(c.In("dy", n), p, 0xC0FFEEUL + (ulong)n, c.Acc("dx", n))));

    public static OpCase MeanPool(int b, int t, int dim, bool mask) => new("mean_pool", $"B{b} T{t} C{dim}{(mask ? " mask" : "")}", 1e-6, (double)b * t * dim, F * b * t * dim,
        c => c.Op(() => c.B.MeanPool(c.In("x", b, t, dim), mask ? c.Mask("mask", b, t, allowEmpty: true) : null, c.Out("y", b, dim))));

    public static OpCase MeanPoolBackward(int b, int t, int dim, bool mask) => new("mean_pool_backward", $"B{b} T{t} C{dim}{(mask ? " mask" : "")}", 1e-6, (double)b * t * dim, F * 2.0 * b * t * dim,
        c => c.Op(() => c.B.MeanPoolBackward(mask ? c.Mask("mask", b, t, allowEmpty: true) : null, c.In("dy", b, dim), c.Acc("dx", b, t, dim))));

    public static OpCase L2Normalize(int rows, int cols) => new("l2_normalize", $"{rows}x{cols}", 1e-6, 3.0 * rows * cols, F * 2.0 * rows * cols,
        c => c.Op(() => c.B.L2Normalize(c.In("x", rows, cols), 1e-12f, c.Out("y", rows, cols))));

    public static OpCase L2NormalizeBackward(int rows, int cols) => new("l2_normalize_backward", $"{rows}x{cols}", 2e-6, 6.0 * rows * cols, F * 3.0 * rows * cols,
        c => c.Op(() => c.B.L2NormalizeBackward(c.In("x", rows, cols), 1e-12f, c.In("dy", rows, cols), c.Acc("dx", rows, cols))));

    public static OpCase Concat(int b, int ta, int tb, int dim) => new("concat", $"B{b} Ta{ta} Tb{tb} C{dim}", 0, 0, F * 2.0 * b * (ta + tb) * dim,
        c => c.Op(() => c.B.Concat(c.In("a", b, ta, dim), c.In("b", b, tb, dim), c.Out("y", b, ta + tb, dim))));

    public static OpCase ConcatBackward(int b, int ta, int tb, int dim) => new("concat_backward", $"B{b} Ta{ta} Tb{tb} C{dim}", 1e-7, (double)b * (ta + tb) * dim, F * 3.0 * b * (ta + tb) * dim,
        c => c.Op(() => c.B.ConcatBackward(c.In("dy", b, ta + tb, dim), c.Acc("da", b, ta, dim), c.Acc("db", b, tb, dim))));

    public static OpCase Slice(int b, int t, int start, int len, int dim) => new("slice", $"B{b} T{t} [{start}:{start + len}] C{dim}", 0, 0, F * 2.0 * b * len * dim,
        c => c.Op(() => c.B.Slice(c.In("x", b, t, dim), start, c.Out("y", b, len, dim))));

    public static OpCase SliceBackward(int b, int t, int start, int len, int dim) => new("slice_backward", $"B{b} T{t} [{start}:{start + len}] C{dim}", 1e-7, (double)b * len * dim, F * 3.0 * b * len * dim,
        c => c.Op(() => c.B.SliceBackward(c.In("dy", b, len, dim), start, c.Acc("dx", b, t, dim))));

    public static OpCase CrossEntropy(int n, int v) => new("cross_entropy", $"N{n} V{v}", 2e-6, 4.0 * n * v, F * (double)n * v,
        c => c.Op(() => c.B.CrossEntropy(c.In("logits", 3f, n, v), c.IntsWith("targets", r => r.NextDouble() < 0.2 ? -100 : r.Next(v), n), c.Out("loss", 1), c.Out("lse", n))));

    public static OpCase CrossEntropyBackward(int n, int v) => new("cross_entropy_backward", $"N{n} V{v}", 2e-6, 4.0 * n * v, F * 2.0 * n * v,
        c =>
        {
            var logits = c.In("logits", 3f, n, v);
            var targets = c.IntsWith("targets", r => r.NextDouble() < 0.2 ? -100 : r.Next(v), n);
            var lse = c.Temp(n);
            c.B.CrossEntropy(logits, targets, c.Temp(1), lse);
            c.Op(() => c.B.CrossEntropyBackward(logits, targets, lse, c.In("dloss", 1), c.Acc("dlogits", n, v)));
        });

    /// <summary>
    /// Mean binary cross-entropy of n logits against soft targets: each element's max(x, 0) - x t + log(1 + e^-|x|) can
    /// cancel to far below its terms (at n = 1, loss 0.0209 from terms near 4), so the loss is measured over their size.
    /// </summary>
    public static OpCase Bce(int n) => new("bce_with_logits", $"{n}", 2e-6, 6.0 * n, F * 2.0 * n,
        c => c.Op(() => c.B.BceWithLogits(c.In("x", 3f, n), c.InWith("targets", r => (float)r.NextDouble(), n), c.Out("loss", 1))))
    {
        TermSize = (slot, r, _) =>
        {
            if (slot != "loss") return null;
            float[] x = r.First(s => s.Name == "x").Values, t = r.First(s => s.Name == "targets").Values;
            double size = 0;
            for (int i = 0; i < n; i++) size += Math.Max(x[i], 0) + Math.Abs((double)x[i] * t[i]) + Math.Log(1 + Math.Exp(-Math.Abs(x[i])));
            size /= Math.Max(1, n);
            return _ => size;
        },
    };

    /// <summary>
    /// dx_i = g (sigmoid(x_i) - t_i) / n cancels where the soft target meets the sigmoid (at n = 1 the cpu backend measured
    /// dx -0.0041033 against -0.0041033(2): 6.9e-6 of |dx|, 3 of 3000 seeds, from sigmoid's f32 ulp near 0.5), so dx is
    /// measured over its terms' size |g| (sigmoid(x_i) + |t_i|) / n.
    /// </summary>
    public static OpCase BceBackward(int n) => new("bce_with_logits_backward", $"{n}", 2e-6, 6.0 * n, F * 3.0 * n,
        c => c.Op(() => c.B.BceWithLogitsBackward(c.In("x", 3f, n), c.InWith("targets", r => (float)r.NextDouble(), n), c.In("dloss", 1), c.Acc("dx", n))))
    {
        TermSize = (slot, r, _) =>
        {
            if (slot != "dx") return null;
            float[] x = r.First(s => s.Name == "x").Values, t = r.First(s => s.Name == "targets").Values;
            double g = Math.Abs(r.First(s => s.Name == "dloss").Values[0]) / Math.Max(1, n);
            return i => g * (1 / (1 + Math.Exp(-x[i])) + Math.Abs(t[i]));
        },
    };

    private static Func<Random, float> UnitRowsGen(int dim) => r => OpContext.Normal(r) / MathF.Sqrt(dim);

    public static OpCase InfoNce(int n, int dim, float temperature = 0.05f)
        => new("infonce", $"N{n} D{dim} tau{temperature}", 5e-6, 2.0 * n * n * dim + 8.0 * n * n, F * 2.0 * n * dim,
            c => c.Op(() => c.B.InfoNce(c.InWith("t", UnitRowsGen(dim), n, dim), c.InWith("v", UnitRowsGen(dim), n, dim), 1f / temperature,
                c.Out("loss", 1), c.Out("lseRow", n), c.Out("lseCol", n))));

    /// <summary>
    /// The InfoNCE gradient: dt_i = sum_j dS_ij v_j (dv likewise with t), dS_ij = g/n (p_row + p_col - 2 delta)_ij / tau.
    /// Confident rows cancel (p_ii - 1 against the other entries): the gradients are measured over their terms' size,
    /// sum_j |dS_ij| |v_j| (and sum_i |dS_ij| |t_i|), in f64 from t and v. And every p = exp(S - lse) carries the f32
    /// logits' rounding, |S| u with |S| up to 1/tau for unit rows (u = 2^-24): a relative error of ~u/tau in every dS that
    /// no f32 kernel avoids and no term size covers (it is not a cancellation: the largest element errs so). So the budget
    /// is max(1e-5, 2u/tau): 1e-5 down to tau ~0.012, 2.4e-5 at tau 0.005, where the cpu backend measured 1.06e-5 (1 of 3000
    /// seeds) and 1.05e-5 (1 of 4000) over the 1e-5 that tau 0.05 keeps.
    /// </summary>
    public static OpCase InfoNceBackward(int n, int dim, float temperature = 0.05f)
        => new("infonce_backward", $"N{n} D{dim} tau{temperature}", Math.Max(1e-5, 2 * Math.ScaleB(1.0, -24) / temperature),
            6.0 * n * n * dim + 10.0 * n * n, F * 4.0 * n * dim,
            c =>
            {
                var t = c.InWith("t", UnitRowsGen(dim), n, dim); var v = c.InWith("v", UnitRowsGen(dim), n, dim);
                var lr = c.Temp(n); var lc = c.Temp(n);
                c.B.InfoNce(t, v, 1f / temperature, c.Temp(1), lr, lc);
                c.Op(() => c.B.InfoNceBackward(t, v, 1f / temperature, lr, lc, c.In("dloss", 1), c.Acc("dt", n, dim), c.Acc("dv", n, dim)));
            })
        {
            TermSize = (slot, r, _) => slot is "dt" or "dv" ? InfoNceGradientTermSize(slot, r, n, dim, 1.0 / temperature) : null,
        };

    private static Func<int, double> InfoNceGradientTermSize(string slot, IReadOnlyList<OpContext.Result> r, int n, int dim, double invT)
    {
        float[] t = r.First(x => x.Name == "t").Values, v = r.First(x => x.Name == "v").Values;
        double g = Math.Abs(r.First(x => x.Name == "dloss").Values[0]);
        var s = new double[(long)n * n];   // logits [n, n]
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double dot = 0;
                for (int e = 0; e < dim; e++) dot += (double)t[(long)i * dim + e] * v[(long)j * dim + e];
                s[(long)i * n + j] = dot * invT;
            }
        var lseRow = new double[n]; var lseCol = new double[n];
        for (int i = 0; i < n; i++)
        {
            double mr = double.NegativeInfinity, mc = double.NegativeInfinity, sr = 0, sc = 0;
            for (int j = 0; j < n; j++) { mr = Math.Max(mr, s[(long)i * n + j]); mc = Math.Max(mc, s[(long)j * n + i]); }
            for (int j = 0; j < n; j++) { sr += Math.Exp(s[(long)i * n + j] - mr); sc += Math.Exp(s[(long)j * n + i] - mc); }
            lseRow[i] = mr + Math.Log(sr); lseCol[i] = mc + Math.Log(sc);
        }
        var absDs = new double[(long)n * n];   // |dS| [n, n], the diagonal as the sum of its row's and column's others
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                if (i != j)
                {
                    double a = g / n * invT * (Math.Exp(s[(long)i * n + j] - lseRow[i]) + Math.Exp(s[(long)i * n + j] - lseCol[j]));
                    absDs[(long)i * n + j] = a;
                    absDs[(long)i * n + i] += g / n * invT * Math.Exp(s[(long)i * n + j] - lseRow[i]);
                    absDs[(long)j * n + j] += g / n * invT * Math.Exp(s[(long)i * n + j] - lseCol[j]);
                }
        var size = new double[(long)n * dim];
        bool rows = slot == "dt";   // dt_i = sum_j dS_ij v_j; dv_j = sum_i dS_ij t_i
        float[] other = rows ? v : t;
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++)
            {
                double w = rows ? absDs[(long)a * n + b] : absDs[(long)b * n + a];
                for (int e = 0; e < dim; e++) size[(long)a * dim + e] += w * Math.Abs(other[(long)b * dim + e]);
            }
        return k => size[k];
    }

    private static readonly AdamWParams AdamWCase = new(1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f);
    private const int AdamWStep = 7;

    /// <summary>
    /// One AdamW step on n parameters. m = b1 m0 + (1 - b1) g and param = p (1 - lr wd) - lr m^/(sqrt(v^) + eps) can cancel
    /// (at n = 1 a single cancelled element is the whole slot), so their errors are measured over the size of those terms
    /// (<see cref="OpCase.TermSize"/>); v's terms are all positive.
    /// </summary>
    public static OpCase AdamW(int n) => new("adamw", $"{n}", 2e-6, 12.0 * n, F * 7.0 * n,
        c => c.Op(() => c.B.AdamW(c.InOut("param", OpContext.Normal, n), c.In("grad", n), c.InOut("m", r => 0.1f * OpContext.Normal(r), n),
            c.InOut("v", r => 0.01f * (float)r.NextDouble(), n), AdamWCase, AdamWStep)))
    {
        TermSize = (slot, r, _) =>
        {
            var p = AdamWCase;
            float[] Values(string name) => r.First(x => x.Name == name).Values;
            float[] Initial(string name) => r.First(x => x.Name == name).Initial!;
            switch (slot)
            {
                case "m":
                {
                    float[] m0 = Initial("m"), g = Values("grad");
                    return i => p.Beta1 * Math.Abs(m0[i]) + (1 - p.Beta1) * Math.Abs(g[i]);
                }
                case "param":
                {
                    float[] p0 = Initial("param"), m = Values("m"), v = Values("v");
                    double c1 = 1 - Math.Pow(p.Beta1, AdamWStep), c2 = 1 - Math.Pow(p.Beta2, AdamWStep);
                    return i => Math.Abs(p0[i]) * (1 - p.LearningRate * p.WeightDecay)
                        + p.LearningRate * Math.Abs(m[i] / c1) / (Math.Sqrt(v[i] / c2) + p.Eps);
                }
                default: return null;
            }
        },
    };

    public static OpCase ClipGradNorm(int tensors, int n, float maxNorm) => new("clip_grad_norm", $"{tensors}x{n} max{maxNorm}", 2e-6, 3.0 * tensors * n, F * 3.0 * tensors * n,
        c =>
        {
            var grads = new List<KernelVL.Tensors.Tensor>();
            for (int i = 0; i < tensors; i++) grads.Add(c.InOut($"g{i}", OpContext.Normal, n + i));
            c.Op(() => c.B.ClipGradNorm(grads, maxNorm, c.Out("norm", 1)));
        });

    /// <summary>
    /// Top-k search. Scores are compared with the reference's (ties have equal scores, so which tied row was picked
    /// does not matter there); the indices are checked tie-aware: in range, no duplicates in a row, each one's
    /// exact score (recomputed in f64) equal to the reported score, scores descending.
    /// </summary>
    public static OpCase TopK(int q, int n, int d, int k, bool ties = false)
    {
        Func<Random, float> gen = ties ? r => r.Next(-1, 2) : OpContext.Normal;
        return new("topk", $"Q{q} N{n} D{d} k{k}{(ties ? " ties" : "")}", 2e-6, 2.0 * q * n * d, F * ((double)n * d + (double)q * d),
            c => c.Op(() => c.B.TopK(c.InWith("queries", gen, q, d), c.InWith("corpus", gen, n, d), k, c.Out("scores", q, k), c.OutInts("indices", q, k))))
        {
            Validate = ctx =>
            {
                var (idx, problem) = ctx.ReadInts("indices");
                return problem ?? TopKIndexProblem(q, n, d, k, ctx.Host("queries"), ctx.Host("corpus"), idx, ctx.Read("scores"));
            },
        };
    }

    private static string? TopKIndexProblem(int q, int n, int d, int k, float[] qs, float[] cs, int[] idx, float[] scores)
    {
        for (int i = 0; i < q; i++)
        {
            var seen = new HashSet<int>();
            for (int j = 0; j < k; j++)
            {
                int id = idx[i * k + j];
                if (id < 0 || id >= n) return $"query {i}: index {id} out of range";
                if (!seen.Add(id)) return $"query {i}: index {id} twice";
                double dot = 0;
                for (int c = 0; c < d; c++) dot += (double)qs[i * d + c] * cs[(long)id * d + c];
                double s = scores[i * k + j];
                if (Math.Abs(dot - s) > 1e-5 * Math.Max(1, Math.Abs(dot))) return $"query {i}, rank {j}: index {id} scores {dot}, reported {s}";
                if (j > 0 && scores[i * k + j] > scores[i * k + j - 1]) return $"query {i}: scores not descending at rank {j}";
            }
        }
        return null;
    }

    // ---------------------------------------------------------------- the lists
    /// <summary>Small, awkward shapes: every op forward and backward, for the parity tests.</summary>
    public static IEnumerable<OpCase> TestCases()
    {
        foreach (var (m, n, k) in new[] { (1, 1, 1), (3, 5, 7), (17, 33, 19), (64, 48, 65), (130, 97, 200) })
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                {
                    // No bias on the one-element product: a*b + bias can cancel to almost nothing, and then f32
                    // rounding of a*b (not an error of the kernel) dominates the relative error of that one value.
                    yield return MatMul(1, m, n, k, ta, tb, bias: m * n * k > 1 && ((m + k) % 2 == 0 || tb), sharedB: false);
                    yield return MatMulBackward(1, m, n, k, ta, tb, sharedB: false);
                }
        yield return MatMul(3, 5, 7, 9, false, true, bias: true, sharedB: true);
        yield return MatMul(4, 17, 9, 13, true, false, bias: false, sharedB: false);
        yield return MatMul(5, 33, 31, 20, false, false, bias: false, sharedB: false);
        // Deep K, few output tiles: where the cuda backend's GEMM version 4 splits K (2 splits of 9 steps, Gemm4KSteps).
        yield return MatMul(1, 130, 97, 1100, false, true, bias: true, sharedB: false);
        foreach (var (m, n, k) in new[] { (1, 1, 1), (17, 33, 19), (130, 97, 200) })
            foreach (bool tb in new[] { false, true }) yield return MatMulGelu(m, n, k, tb);
        yield return MatMulBackward(3, 5, 7, 9, false, true, sharedB: true);
        yield return MatMulBackward(3, 6, 7, 9, true, false, sharedB: true);
        yield return MatMulBackward(4, 17, 9, 13, true, true, sharedB: false);
        yield return MatMulBackward(5, 33, 31, 20, false, false, sharedB: false);

        foreach (var (o, i) in new[] { (1, 1), (3, 17), (7, 100), (33, 1000) })
        {
            yield return Add(o, i); yield return AddBackward(o, i);
            yield return Mul(o, i); yield return MulBackward(o, i);
        }
        foreach (int n in new[] { 1, 15, 17, 1001, 70001 })
        {
            yield return Scale(n); yield return ScaleBackward(n);
            yield return Sum(n); yield return SumBackward(n);
            yield return Dropout(n, 0.1f); yield return DropoutBackward(n, 0.1f);
            yield return Bce(n); yield return BceBackward(n);
            yield return AdamW(n);
        }
        yield return Dropout(1003, 0.5f); yield return DropoutBackward(1003, 0.5f);
        foreach (var (r, cc) in new[] { (1, 1), (3, 17), (5, 33), (19, 100), (64, 768), (300, 257) })
        {
            yield return Gelu(r, cc); yield return GeluBackward(r, cc);
            yield return Tanh(r, cc); yield return TanhBackward(r, cc);
            // One column: layer norm's output is beta and L2 normalisation's is sign(x) whatever x is, so dx is zero in
            // exact arithmetic and only rounding is left to compare; the forwards are still compared.
            yield return LayerNorm(r, cc);
            if (cc > 1) yield return LayerNormBackward(r, cc);
            yield return Softmax(r, cc); yield return SoftmaxBackward(r, cc);
            yield return L2Normalize(r, cc);
            if (cc > 1) yield return L2NormalizeBackward(r, cc);   // one column: y = sign(x), dx is zero and cancels to rounding
        }
        yield return Softmax(12, 33, maskRows: 3);
        yield return Softmax(8, 17, maskRows: 8);
        foreach (var (b, h, tq, tk, d, mask) in new[]
                 {
                     (1, 1, 2, 5, 3, false), (2, 3, 5, 7, 8, true), (1, 2, 17, 17, 59, false), (3, 2, 33, 70, 16, true),
                     (2, 1, 97, 97, 64, true), (1, 2, 130, 300, 32, true), (4, 2, 65, 65, 64, true),
                 })
        {
            yield return Attention(b, h, tq, tk, d, mask);
            yield return AttentionBackward(b, h, tq, tk, d, mask);
        }
        // One query and D = 1: dk is three numbers whose sum is zero and which cancel to almost nothing whenever the
        // softmax is peaked (dp - dO.o); relative to them only rounding is left. One key: dk is exactly zero. Both
        // sizes are compared in the forward only; the backward's smallest case is B = H = 1 with Tq 2, Tk 5, D 3.
        yield return Attention(1, 1, 1, 1, 1, mask: false);
        yield return Attention(1, 1, 1, 3, 1, mask: false);
        foreach (var (a, b, cc, d) in new[] { (1, 1, 1, 1), (2, 5, 3, 7), (3, 17, 4, 64) })
        {
            yield return SwapAxes12(a, b, cc, d); yield return SwapAxes12Backward(a, b, cc, d);
        }
        foreach (var (n, v, d) in new[] { (1, 1, 1), (7, 5, 3), (100, 37, 65), (300, 1000, 64) })
        {
            yield return Embedding(n, v, d); yield return EmbeddingBackward(n, v, d);
        }
        foreach (var (b, t, d, mask) in new[] { (1, 1, 1, false), (3, 7, 17, true), (5, 33, 100, true), (2, 50, 64, false) })
        {
            yield return MeanPool(b, t, d, mask); yield return MeanPoolBackward(b, t, d, mask);
        }
        foreach (var (b, ta, tb, d) in new[] { (1, 1, 1, 1), (3, 5, 7, 17), (2, 40, 145, 64) })
        {
            yield return Concat(b, ta, tb, d); yield return ConcatBackward(b, ta, tb, d);
            yield return Slice(b, ta + tb, ta, tb, d); yield return SliceBackward(b, ta + tb, ta, tb, d);
            yield return Slice(b, ta + tb, 0, 1, d); yield return SliceBackward(b, ta + tb, 0, 1, d);
        }
        foreach (var (n, v) in new[] { (1, 1), (3, 2), (17, 33), (64, 1000) })
        {
            yield return CrossEntropy(n, v); yield return CrossEntropyBackward(n, v);
        }
        // Not D = 1: unit rows are then +-1, and equal signs make every score equal, where dv is zero in exact
        // arithmetic (only rounding is left to compare); N = 1 has a zero gradient for the same reason.
        foreach (var (n, d) in new[] { (2, 3), (3, 5), (17, 33), (130, 64) })
        {
            yield return InfoNce(n, d); yield return InfoNceBackward(n, d);
        }
        yield return InfoNce(33, 16, 0.005f); yield return InfoNceBackward(33, 16, 0.005f);
        foreach (var (t, n, mx) in new[] { (1, 1, 1f), (3, 17, 0.5f), (5, 1000, 100f), (4, 300, 1f) })
            yield return ClipGradNorm(t, n, mx);
        // k = 1, k = N, N not a multiple of any tile or group, several tiles, k = 1024, and heavy ties.
        foreach (var (q, n, d, k, ties) in new[]
                 {
                     (1, 1, 1, 1, false), (3, 17, 5, 1, false), (5, 100, 16, 7, false), (3, 50, 8, 50, false),
                     (2, 2500, 16, 10, false), (2, 1500, 8, 1024, false), (4, 3000, 3, 64, true), (3, 1100, 2, 5, true),
                 })
            yield return TopK(q, n, d, k, ties);
    }

    /// <summary>The shapes the perf harness times: the model's (ViLT-B/32-like: C 768, 12 heads, T 256) and the issue's targets.</summary>
    public static IEnumerable<OpCase> PerfCases()
    {
        yield return MatMul(1, 1024, 768, 768, false, false, bias: false, sharedB: false, budget: 1e-5);
        yield return MatMul(1, 1024, 768, 768, false, true, bias: true, sharedB: false, budget: 1e-5);
        yield return MatMul(1, 1024, 3072, 768, false, true, bias: true, sharedB: false, budget: 1e-5);
        yield return MatMul(1, 1024, 768, 3072, false, true, bias: true, sharedB: false, budget: 1e-5);
        yield return MatMulBackward(1, 1024, 768, 768, false, true, sharedB: false, budget: 1e-5);
        yield return MatMulGelu(1024, 3072, 768, transB: true);
        yield return Attention(8, 12, 256, 256, 64, mask: false);
        yield return Attention(8, 12, 256, 256, 64, mask: true);
        yield return AttentionBackward(8, 12, 256, 256, 64, mask: true);
        // Memory-bound ops at the model's size (~25 MB: partly cache-resident) and at a size far beyond the
        // last-level cache, which is what the copy peak (256 MiB) is comparable with.
        yield return LayerNorm(8192, 768); yield return LayerNormBackward(8192, 768);
        yield return LayerNorm(65536, 768); yield return LayerNormBackward(65536, 768);
        yield return Softmax(8192, 1024); yield return SoftmaxBackward(8192, 1024);
        yield return Softmax(65536, 1024); yield return SoftmaxBackward(65536, 1024);
        yield return Add(8192, 768); yield return AddBackward(8192, 768);
        yield return Mul(8192, 768); yield return MulBackward(8192, 768);
        yield return Scale(8192 * 768); yield return ScaleBackward(8192 * 768);
        yield return Gelu(2048, 3072); yield return GeluBackward(2048, 3072);
        yield return Tanh(2048, 3072); yield return TanhBackward(2048, 3072);
        yield return Sum(8192 * 768); yield return SumBackward(8192 * 768);
        yield return SwapAxes12(8, 256, 12, 64); yield return SwapAxes12Backward(8, 256, 12, 64);
        yield return Embedding(8 * 40, 30522, 768); yield return EmbeddingBackward(8 * 40, 30522, 768);
        yield return Dropout(8192 * 768, 0.1f); yield return DropoutBackward(8192 * 768, 0.1f);
        yield return MeanPool(64, 256, 768, mask: true); yield return MeanPoolBackward(64, 256, 768, mask: true);
        yield return L2Normalize(4096, 768); yield return L2NormalizeBackward(4096, 768);
        yield return Concat(8, 40, 217, 768); yield return ConcatBackward(8, 40, 217, 768);
        yield return Slice(8, 257, 40, 217, 768); yield return SliceBackward(8, 257, 40, 217, 768);
        yield return CrossEntropy(320, 30522); yield return CrossEntropyBackward(320, 30522);
        yield return Bce(1 << 20); yield return BceBackward(1 << 20);
        yield return InfoNce(1024, 768, 0.005f); yield return InfoNceBackward(1024, 768, 0.005f);
        yield return TopK(256, 16384, 256, 10);
        yield return AdamW(1 << 22);
        yield return ClipGradNorm(16, 1 << 18, 1f);
    }

    /// <summary>
    /// The issue's GPU targets, for GPU backends only (too large for the f64 reference in a GPU run's time: check them
    /// against the cpu backend, <c>ops --reference cpu</c>): GEMM 4096^3 and the model's shapes, attention at T 256..1024,
    /// InfoNCE over 4096 x 4096, and top-k over a 65536 x 768 f32 corpus (the issue's 1M x 768 f16 corpus is not a
    /// registry tensor: <c>perf topk-f16</c> runs it).
    /// </summary>
    public static IEnumerable<OpCase> GpuPerfCases()
    {
        yield return MatMul(1, 4096, 4096, 4096, false, false, bias: false, sharedB: false, budget: 1e-5);
        yield return MatMul(1, 4096, 4096, 4096, false, true, bias: false, sharedB: false, budget: 1e-5);
        foreach (int t in new[] { 512, 1024 })
        {
            yield return Attention(8, 12, t, t, 64, mask: false);
            yield return Attention(8, 12, t, t, 64, mask: true);
        }
        yield return InfoNce(4096, 768, 0.05f); yield return InfoNceBackward(4096, 768, 0.05f);
        yield return TopK(1024, 65536, 768, 10);
    }

    /// <summary>Every op name of the backend contract (forward and backward).</summary>
    public static IReadOnlyList<string> OpNames { get; } =
        TestCases().Select(c => c.Op).Distinct().OrderBy(s => s, StringComparer.Ordinal).ToArray();
}
