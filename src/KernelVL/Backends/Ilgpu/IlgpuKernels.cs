using ILGPU;
using ILGPU.Runtime;

namespace KernelVL.Backends.Ilgpu;

/// <summary>Scalar arguments of the tiled GEMM kernel.</summary>
public struct GemmArgs
{
    public int M, N, K, Lda, Ldb, Ldc, TransA, TransB, HasBias, Accumulate, T;
    public long StrideA, StrideB, StrideC;
    public float Alpha;
}

/// <summary>
/// The ILGPU kernels of the backend contract. Row-wise ops run one group per row with shared-memory tree
/// reductions that work for any power-of-two group size (the CPU accelerator's groups are 16 threads and its
/// warps 4 wide, CUDA's 256 and 32); nothing assumes a warp size. Elementwise ops use one thread per element.
/// </summary>
internal static class IlgpuKernels
{
    public const int MaxGroup = 256;
    public const int GemmR = 4;           // each GEMM thread computes GemmR x GemmR outputs
    public const int GemmKt = 16;         // k-depth of a shared-memory tile
    public const int GemmMaxBt = 64;      // largest block tile (16 threads x GemmR)

    // ---------------------------------------------------------------- helpers (inlined into kernels)
    /// <summary>Sum of v over the group; every thread gets it. shared holds at least Group.DimX floats.</summary>
    private static float GroupSum(float v, ArrayView<float> shared)
    {
        int t = Group.IdxX;
        shared[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] += shared[t + s];
            Group.Barrier();
        }
        float r = shared[0];
        Group.Barrier();
        return r;
    }

    private static float GroupMax(float v, ArrayView<float> shared)
    {
        int t = Group.IdxX;
        shared[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] = MathF.Max(shared[t], shared[t + s]);
            Group.Barrier();
        }
        float r = shared[0];
        Group.Barrier();
        return r;
    }

    // erfc(a / sqrt 2), a >= 0, fractional error < 1.2e-7 (the Cpu backend's polynomial). The exponent -a^2/2 + P(t)
    // reaches -50 in gelu's tail, where each f32 rounding of it costs up to u |exponent| of the result, and on a GPU
    // MathF.Exp is ex2.approx of x log2(e) rounded (4e-6 at x = -50): exponent and exp are taken in f64 (ILGPU.Algorithms'
    // software exp on the GPU), as is the backward's phi.
    private static float ErfcScaledPos(float a)
    {
        float t = 1f / (1f + 0.5f * (a * 0.70710678118654752f));
        float p = -0.82215223f + t * 0.17087277f;
        p = 1.48851587f + t * p; p = -1.13520398f + t * p; p = 0.27886807f + t * p; p = -0.18628806f + t * p;
        p = 0.09678418f + t * p; p = 0.37409196f + t * p; p = 1.00002368f + t * p; p = -1.26551223f + t * p;
        return t * (float)Math.Exp(p - 0.5 * ((double)a * a));
    }

    // 1 + erf(x / sqrt 2) = 2 Phi(x), accurate in relative terms also where it is tiny.
    private static float TwoPhi(float x) => x >= 0 ? 2f - ErfcScaledPos(x) : ErfcScaledPos(-x);

    private static float Uniform(ulong seed, long index)
    {
        ulong z = seed * 0x9E3779B97F4A7C15UL + (ulong)index * 0xD1B54A32D192ED03UL + 0x632BE59BD9B4E019UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 40) * (1.0f / 16777216.0f);
    }

    // ---------------------------------------------------------------- elementwise
    public static void Fill(Index1D i, ArrayView<float> x, float v) => x[i] = v;

    /// <summary>y[i] = a[i] + b[i % inner] (or *, when mul != 0).</summary>
    public static void Binary(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y, long inner, int mul)
    {
        float bv = b[i % inner];
        y[i] = mul != 0 ? a[i] * bv : a[i] + bv;
    }

    /// <summary>dx[i] += s * dy[i] (or dy[i] * b[i % inner] when b is not empty).</summary>
    public static void AxpyBroadcast(Index1D i, ArrayView<float> dy, ArrayView<float> b, long inner, float s, ArrayView<float> dx)
    {
        float f = b.Length > 0 ? b[i % inner] : s;
        dx[i] += f * dy[i];
    }

    public static void Scale(Index1D i, ArrayView<float> x, float s, ArrayView<float> y) => y[i] = s * x[i];

    public static void Gelu(Index1D i, ArrayView<float> x, ArrayView<float> y)
    {
        float v = x[i];
        y[i] = 0.5f * v * TwoPhi(v);
    }

    public static void GeluBackward(Index1D i, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx)
    {
        float v = x[i];
        float cdf = 0.5f * TwoPhi(v);
        float pdf = (float)(0.39894228040143268 * Math.Exp(-0.5 * ((double)v * v)));
        dx[i] += dy[i] * (cdf + v * pdf);
    }

    /// <summary>
    /// tanh without the device's approximate instruction (CUDA's tanh.approx is off by ~7e-6): an odd polynomial
    /// below |x| = 0.2, else 1 - 2 / (exp(2|x|) + 1), both within ~2e-7 relative.
    /// </summary>
    private static float AccurateTanh(float x)
    {
        float a = MathF.Abs(x);
        if (a < 0.2f)
        {
            float x2 = x * x;
            return x * (1f + x2 * (-1f / 3f + x2 * (2f / 15f + x2 * (-17f / 315f))));
        }
        float r = 1f - 2f / (MathF.Exp(2f * a) + 1f);
        return x < 0 ? -r : r;
    }

    public static void Tanh(Index1D i, ArrayView<float> x, ArrayView<float> y) => y[i] = AccurateTanh(x[i]);

    public static void TanhBackward(Index1D i, ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx) => dx[i] += dy[i] * (1f - y[i] * y[i]);

    /// <summary>dx[i] += dy[0] (sum backward).</summary>
    public static void AddScalarFrom(Index1D i, ArrayView<float> dy, ArrayView<float> dx) => dx[i] += dy[0];

    /// <summary>sums[j] += sum over rows of x[r, j] (or of x * y when y is not empty): one thread per column.</summary>
    public static void ColumnSums(Index1D j, ArrayView<float> x, ArrayView<float> y, long rows, int cols, ArrayView<float> sums)
    {
        // Blocks of 64 rows summed first, then the block sums: f32 error grows with 64 + rows/64, not rows.
        float s = 0, block = 0;
        bool prod = y.Length > 0;
        for (long r = 0; r < rows; r++)
        {
            long k = r * cols + j;
            block += prod ? x[k] * y[k] : x[k];
            if ((r & 63) == 63) { s += block; block = 0; }
        }
        sums[j] += s + block;
    }

    /// <summary>Group-per-block sum of x into out[0] (atomically); out must start at 0 or hold a running value.</summary>
    public static void SumAtomic(ArrayView<float> x, ArrayView<float> @out, int squares, float scale)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long i = (long)Grid.IdxX * Group.DimX + Group.IdxX;
        long stride = (long)Grid.DimX * Group.DimX;
        float s = 0;
        for (; i < x.Length; i += stride) s += squares != 0 ? x[i] * x[i] : x[i];
        s = GroupSum(s, shared);
        if (Group.IdxX == 0) Atomic.Add(ref @out[0], s * scale);
    }

    public static void Dropout(Index1D i, ArrayView<float> x, float p, ulong seed, float scale, ArrayView<float> y, int accumulate)
    {
        float v = Uniform(seed, i) >= p ? x[i] * scale : 0f;
        if (accumulate != 0) y[i] += v;
        else y[i] = v;
    }

    public static void AdamW(Index1D i, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v,
        float lr, float b1, float b2, float eps, float wd, float c1, float c2)
    {
        float gi = g[i];
        float mi = b1 * m[i] + (1f - b1) * gi;
        float vi = b2 * v[i] + (1f - b2) * gi * gi;
        m[i] = mi; v[i] = vi;
        p[i] -= lr * (mi * c1 / (MathF.Sqrt(vi * c2) + eps) + wd * p[i]);
    }

    /// <summary>g[i] *= maxNorm / (norm + 1e-6) when the norm (sqrt of sumSq[0]) exceeds maxNorm; decided on the device.</summary>
    public static void ClipScale(Index1D i, ArrayView<float> g, ArrayView<float> sumSq, float maxNorm)
    {
        float n = MathF.Sqrt(sumSq[0]);
        if (n > maxNorm) g[i] *= maxNorm / (n + 1e-6f);
    }

    public static void SqrtInPlace(Index1D i, ArrayView<float> x) => x[i] = MathF.Sqrt(x[i]);

    // ---------------------------------------------------------------- layout
    /// <summary>x [A, B, C, D] -> y [A, C, B, D] (accumulate: y += ...), one thread per element of x.</summary>
    public static void SwapAxes12(Index1D idx, ArrayView<float> x, ArrayView<float> y, int b, int c, int d, int accumulate)
    {
        long i = idx;
        int l = (int)(i % d); long r = i / d;
        int k = (int)(r % c); r /= c;
        int j = (int)(r % b); long a = r / b;
        long o = ((a * c + k) * b + j) * d + l;
        if (accumulate != 0) y[o] += x[i];
        else y[o] = x[i];
    }

    /// <summary>Copies rows of a [B, Ta, C] into y [B, Ty, C] at sequence offset `at` (accumulate: y += ...); reversed: y -> a.</summary>
    public static void SeqCopy(Index1D idx, ArrayView<float> a, ArrayView<float> y, int ta, int ty, int c, int at, int accumulate, int reversed)
    {
        long i = idx;
        int ch = (int)(i % c); long r = i / c;
        int t = (int)(r % ta); long b = r / ta;
        long o = (b * ty + at + t) * c + ch;
        if (reversed != 0)
        {
            if (accumulate != 0) a[i] += y[o];
            else a[i] = y[o];
        }
        else if (accumulate != 0) y[o] += a[i];
        else y[o] = a[i];
    }

    public static void Embedding(Index1D idx, ArrayView<int> ids, ArrayView<float> table, int c, ArrayView<float> y)
    {
        long n = idx / c;
        int ch = (int)(idx % c);
        y[idx] = table[(long)ids[n] * c + ch];
    }

    public static void EmbeddingBackward(Index1D idx, ArrayView<int> ids, ArrayView<float> dy, int c, ArrayView<float> dtable)
    {
        long n = idx / c;
        int ch = (int)(idx % c);
        Atomic.Add(ref dtable[(long)ids[n] * c + ch], dy[idx]);
    }

    /// <summary>y[b, c] = mean over kept t of x[b, t, c]; one thread per (b, c).</summary>
    public static void MeanPool(Index1D idx, ArrayView<float> x, ArrayView<int> mask, int t, int c, ArrayView<float> y)
    {
        long b = idx / c;
        int ch = (int)(idx % c);
        float s = 0; int n = 0;
        for (int k = 0; k < t; k++)
        {
            if (mask.Length > 0 && mask[b * t + k] == 0) continue;
            s += x[(b * t + k) * c + ch];
            n++;
        }
        y[idx] = n > 0 ? s / n : 0f;
    }

    public static void MeanPoolBackward(Index1D idx, ArrayView<int> mask, ArrayView<float> dy, int t, int c, ArrayView<float> dx)
    {
        long bt = idx / c;
        int ch = (int)(idx % c);
        long b = bt / t;
        if (mask.Length > 0 && mask[bt] == 0) return;
        int n = t;
        if (mask.Length > 0)
        {
            n = 0;
            for (int k = 0; k < t; k++) if (mask[b * t + k] != 0) n++;
        }
        dx[idx] += dy[b * c + ch] / n;
    }

    // ---------------------------------------------------------------- rows: one group per row
    public static void LayerNorm(ArrayView<float> x, ArrayView<float> g, ArrayView<float> bta, float eps, int c,
        ArrayView<float> y, ArrayView<float> mean, ArrayView<float> rstd)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long row = Grid.IdxX;
        long o = row * c;
        float s = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX) s += x[o + j];
        float m = GroupSum(s, shared) / c;
        float v = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX) { float d = x[o + j] - m; v += d * d; }
        float rs = 1f / MathF.Sqrt(GroupSum(v, shared) / c + eps);
        for (int j = Group.IdxX; j < c; j += Group.DimX) y[o + j] = (x[o + j] - m) * rs * g[j] + bta[j];
        if (Group.IdxX == 0) { mean[row] = m; rstd[row] = rs; }
    }

    public static void LayerNormBackwardX(ArrayView<float> x, ArrayView<float> g, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dy, int c, ArrayView<float> dx)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long row = Grid.IdxX;
        long o = row * c;
        float m = mean[row], rs = rstd[row];
        float sg = 0, sgx = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX)
        {
            float gj = dy[o + j] * g[j];
            sg += gj;
            sgx += gj * (x[o + j] - m) * rs;
        }
        sg = GroupSum(sg, shared) / c;
        sgx = GroupSum(sgx, shared) / c;
        for (int j = Group.IdxX; j < c; j += Group.DimX)
        {
            float xh = (x[o + j] - m) * rs;
            dx[o + j] += rs * (dy[o + j] * g[j] - sg - xh * sgx);
        }
    }

    /// <summary>dgamma[j] += sum_r dy * xhat, dbeta[j] += sum_r dy: one thread per column.</summary>
    public static void LayerNormBackwardParams(Index1D j, ArrayView<float> x, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dy, long rows, int c, ArrayView<float> dg, ArrayView<float> db)
    {
        float sg = 0, sb = 0, bg = 0, bb = 0;   // blocked sums, as ColumnSums
        for (long r = 0; r < rows; r++)
        {
            long k = r * c + j;
            bg += dy[k] * (x[k] - mean[r]) * rstd[r];
            bb += dy[k];
            if ((r & 63) == 63) { sg += bg; sb += bb; bg = 0; bb = 0; }
        }
        if (dg.Length > 0) dg[j] += sg + bg;
        if (db.Length > 0) db[j] += sb + bb;
    }

    public static void Softmax(ArrayView<float> x, ArrayView<float> mask, long rowsPerMask, int c, ArrayView<float> y)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long row = Grid.IdxX;
        long o = row * c, mo = row / rowsPerMask * c;
        bool hasMask = mask.Length > 0;
        float mx = float.NegativeInfinity;
        for (int j = Group.IdxX; j < c; j += Group.DimX) mx = MathF.Max(mx, x[o + j] + (hasMask ? mask[mo + j] : 0f));
        mx = GroupMax(mx, shared);
        if (mx == float.NegativeInfinity)
        {
            for (int j = Group.IdxX; j < c; j += Group.DimX) y[o + j] = 0f;
            return;
        }
        float s = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX)
        {
            float e = MathF.Exp(x[o + j] + (hasMask ? mask[mo + j] : 0f) - mx);
            y[o + j] = e;
            s += e;
        }
        float inv = 1f / GroupSum(s, shared);
        for (int j = Group.IdxX; j < c; j += Group.DimX) y[o + j] *= inv;
    }

    public static void SoftmaxBackward(ArrayView<float> y, ArrayView<float> dy, int c, ArrayView<float> dx)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long o = (long)Grid.IdxX * c;
        float d = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX) d += y[o + j] * dy[o + j];
        d = GroupSum(d, shared);
        for (int j = Group.IdxX; j < c; j += Group.DimX) dx[o + j] += y[o + j] * (dy[o + j] - d);
    }

    public static void L2Normalize(ArrayView<float> x, float eps, int c, ArrayView<float> y)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long o = (long)Grid.IdxX * c;
        float s = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX) s += x[o + j] * x[o + j];
        float n = MathF.Max(MathF.Sqrt(GroupSum(s, shared)), eps);
        for (int j = Group.IdxX; j < c; j += Group.DimX) y[o + j] = x[o + j] / n;
    }

    public static void L2NormalizeBackward(ArrayView<float> x, ArrayView<float> dy, float eps, int c, ArrayView<float> dx)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long o = (long)Grid.IdxX * c;
        float ss = 0, dot = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX) { ss += x[o + j] * x[o + j]; dot += x[o + j] * dy[o + j]; }
        ss = GroupSum(ss, shared);
        dot = GroupSum(dot, shared);
        float n = MathF.Sqrt(ss);
        for (int j = Group.IdxX; j < c; j += Group.DimX)
            dx[o + j] += n > eps ? dy[o + j] / n - x[o + j] * dot / (n * n * n) : dy[o + j] / eps;
    }

    /// <summary>
    /// Cross-entropy rows: lse[row] and the loss term (lse - x_t; log1p of the off-target mass when x_t is the row max),
    /// added atomically into loss[0] already divided by count. Rows with a negative target add nothing.
    /// </summary>
    public static void CrossEntropy(ArrayView<float> x, ArrayView<int> targets, int c, float invCount, ArrayView<float> loss, ArrayView<float> lse)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long row = Grid.IdxX;
        long o = row * c;
        float mx = float.NegativeInfinity;
        for (int j = Group.IdxX; j < c; j += Group.DimX) mx = MathF.Max(mx, x[o + j]);
        mx = GroupMax(mx, shared);
        int t = targets[row];
        float xt = t >= 0 ? x[o + t] : 0f;
        float s = 0, off = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX)
        {
            s += MathF.Exp(x[o + j] - mx);
            if (j != t) off += MathF.Exp(x[o + j] - xt);
        }
        s = GroupSum(s, shared);
        off = GroupSum(off, shared);
        float l = mx + MathF.Log(s);
        if (Group.IdxX == 0)
        {
            lse[row] = l;
            if (t >= 0)
            {
                float u = 1f + off;
                float term = xt < mx ? l - xt : (u == 1f ? off : MathF.Log(u) * off / (u - 1f));
                Atomic.Add(ref loss[0], term * invCount);
            }
        }
    }

    public static void CrossEntropyBackward(ArrayView<float> x, ArrayView<int> targets, ArrayView<float> lse, ArrayView<float> dloss,
        int c, float invCount, ArrayView<float> dx)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long row = Grid.IdxX;
        int t = targets[row];
        if (t < 0) return;
        long o = row * c;
        float g = dloss[0] * invCount, l = lse[row];
        float off = 0;
        for (int j = Group.IdxX; j < c; j += Group.DimX)
        {
            if (j == t) continue;
            float p = MathF.Exp(x[o + j] - l);
            off += p;
            dx[o + j] += g * p;
        }
        off = GroupSum(off, shared);
        if (Group.IdxX == 0) dx[o + t] -= g * off;   // p_t - 1 = -(sum of the others)
    }

    public static void Bce(Index1D i, ArrayView<float> x, ArrayView<float> t, ArrayView<float> terms)
    {
        float v = x[i];
        terms[i] = MathF.Max(v, 0f) - v * t[i] + MathF.Log(1f + MathF.Exp(-MathF.Abs(v)));
    }

    public static void BceBackward(Index1D i, ArrayView<float> x, ArrayView<float> t, ArrayView<float> dloss, float invN, ArrayView<float> dx)
        => dx[i] += dloss[0] * invN * (1f / (1f + MathF.Exp(-x[i])) - t[i]);

    /// <summary>
    /// InfoNCE rows (cols = 0) or columns (cols = 1) of S [n, n]: lse and the loss term of each, added into loss[0] / n.
    /// One group per row/column; columns read strided (S is small next to the GEMM that made it).
    /// </summary>
    public static void InfoNceLse(ArrayView<float> s, int n, int cols, ArrayView<float> lse, ArrayView<float> loss)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long i = Grid.IdxX;
        long step = cols != 0 ? n : 1, o = cols != 0 ? i : i * n;
        float mx = float.NegativeInfinity;
        for (int j = Group.IdxX; j < n; j += Group.DimX) mx = MathF.Max(mx, s[o + j * step]);
        mx = GroupMax(mx, shared);
        float d = s[o + i * step];
        float sum = 0, off = 0;
        for (int j = Group.IdxX; j < n; j += Group.DimX)
        {
            float v = s[o + j * step];
            sum += MathF.Exp(v - mx);
            if (j != i) off += MathF.Exp(v - d);
        }
        sum = GroupSum(sum, shared);
        off = GroupSum(off, shared);
        if (Group.IdxX == 0)
        {
            float ls = MathF.Log(sum);
            lse[i] = mx + ls;
            float u = 1f + off;
            // lse - d as (max - d) + log(sum), not rounding lse (~|S|) first
            float term = d < mx ? (mx - d) + ls : (u == 1f ? off : MathF.Log(u) * off / (u - 1f));
            Atomic.Add(ref loss[0], term / n);
        }
    }

    /// <summary>Off-diagonal softmax mass of each column: colOff[j] = sum_{i != j} exp(S_ij - lseCol_j); one group per column.</summary>
    public static void InfoNceColOff(ArrayView<float> s, ArrayView<float> lseCol, int n, ArrayView<float> colOff)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long j = Grid.IdxX;
        float off = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX) if (i != j) off += MathF.Exp(s[(long)i * n + j] - lseCol[j]);
        off = GroupSum(off, shared);
        if (Group.IdxX == 0) colOff[j] = off;
    }

    /// <summary>In place: S_ij -> g (exp(S_ij - lseRow_i) + exp(S_ij - lseCol_j) - 2 delta_ij), the diagonal as minus the off-diagonal mass.</summary>
    public static void InfoNceGrad(ArrayView<float> s, ArrayView<float> lseRow, ArrayView<float> lseCol, ArrayView<float> colOff,
        ArrayView<float> dloss, int n, float scale)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        long i = Grid.IdxX;
        long o = i * n;
        float g = dloss[0] * scale;
        float rowOff = 0;
        for (int j = Group.IdxX; j < n; j += Group.DimX)
        {
            if (j == i) continue;
            float v = s[o + j];
            float pr = MathF.Exp(v - lseRow[i]);
            rowOff += pr;
            s[o + j] = g * (pr + MathF.Exp(v - lseCol[j]));
        }
        rowOff = GroupSum(rowOff, shared);
        if (Group.IdxX == 0) s[o + i] = -g * (rowOff + colOff[i]);
    }

    // ---------------------------------------------------------------- GEMM
    /// <summary>
    /// C = alpha op(A) op(B) (+ bias) (+ C): a group of T x T threads owns a (T*R) x (T*R) block of C, walks K in tiles of
    /// 16 staged through shared memory (coalesced loads for row-major operands), and each thread keeps R x R = 16
    /// accumulators in registers. Grid: (ceil(N / BT), ceil(M / BT), batch).
    /// </summary>
    public static void Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> c, GemmArgs p)
    {
        var sa = SharedMemory.Allocate<float>(GemmMaxBt * GemmKt);
        var sb = SharedMemory.Allocate<float>(GemmKt * GemmMaxBt);
        int T = p.T, bt = T * GemmR;
        int tx = Group.IdxX, ty = Group.IdxY, tid = ty * T + tx, threads = T * T;
        int m0 = Grid.IdxY * bt, n0 = Grid.IdxX * bt;
        long oa = Grid.IdxZ * p.StrideA, ob = Grid.IdxZ * p.StrideB, oc = Grid.IdxZ * p.StrideC;
        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
        float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
        for (int k0 = 0; k0 < p.K; k0 += GemmKt)
        {
            for (int e = tid; e < bt * GemmKt; e += threads)
            {
                int row = e / GemmKt, kk = e % GemmKt;
                int gi = m0 + row, gk = k0 + kk;
                if (p.TransA != 0) { row = e % bt; kk = e / bt; gi = m0 + row; gk = k0 + kk; }
                float v = 0f;
                if (gi < p.M && gk < p.K) v = p.TransA != 0 ? a[oa + (long)gk * p.Lda + gi] : a[oa + (long)gi * p.Lda + gk];
                sa[row * GemmKt + kk] = v;
            }
            for (int e = tid; e < bt * GemmKt; e += threads)
            {
                int kk = e / bt, col = e % bt;
                if (p.TransB != 0) { col = e / GemmKt; kk = e % GemmKt; }
                int gj = n0 + col, gk = k0 + kk;
                float v = 0f;
                if (gj < p.N && gk < p.K) v = p.TransB != 0 ? b[ob + (long)gj * p.Ldb + gk] : b[ob + (long)gk * p.Ldb + gj];
                sb[kk * bt + col] = v;
            }
            Group.Barrier();
            for (int kk = 0; kk < GemmKt; kk++)
            {
                int ra = (ty * GemmR) * GemmKt + kk;
                float a0 = sa[ra], a1 = sa[ra + GemmKt], a2 = sa[ra + 2 * GemmKt], a3 = sa[ra + 3 * GemmKt];
                int rb = kk * bt + tx * GemmR;
                float b0 = sb[rb], b1 = sb[rb + 1], b2 = sb[rb + 2], b3 = sb[rb + 3];
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }
            Group.Barrier();
        }
        int i0 = m0 + ty * GemmR, j0 = n0 + tx * GemmR;
        Store(c, p, oc, bias, i0, j0, c00, c01, c02, c03);
        Store(c, p, oc, bias, i0 + 1, j0, c10, c11, c12, c13);
        Store(c, p, oc, bias, i0 + 2, j0, c20, c21, c22, c23);
        Store(c, p, oc, bias, i0 + 3, j0, c30, c31, c32, c33);
    }

    private static void Store(ArrayView<float> c, GemmArgs p, long oc, ArrayView<float> bias, int i, int j0, float v0, float v1, float v2, float v3)
    {
        if (i >= p.M) return;
        StoreOne(c, p, oc, bias, i, j0, v0);
        StoreOne(c, p, oc, bias, i, j0 + 1, v1);
        StoreOne(c, p, oc, bias, i, j0 + 2, v2);
        StoreOne(c, p, oc, bias, i, j0 + 3, v3);
    }

    private static void StoreOne(ArrayView<float> c, GemmArgs p, long oc, ArrayView<float> bias, int i, int j, float v)
    {
        if (j >= p.N) return;
        long k = oc + (long)i * p.Ldc + j;
        float r = p.Alpha * v + (p.HasBias != 0 ? bias[j] : 0f);
        c[k] = p.Accumulate != 0 ? c[k] + r : r;
    }
}
