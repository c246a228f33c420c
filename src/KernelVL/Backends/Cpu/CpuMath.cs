using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KernelVL.Backends.Cpu;

/// <summary>
/// Vectorised f32 math the Cpu backend needs beyond TensorPrimitives: the exact-erf GELU and its
/// derivative, and a softmax row. Vector512 where the hardware has it, Vector256 otherwise, scalar tails.
/// </summary>
internal static unsafe class CpuMath
{
    /// <summary>Use the 512-bit paths (tests clear it to exercise the Vector256 fallback on AVX-512 machines).</summary>
    internal static bool Use512 = Vector512.IsHardwareAccelerated;
    internal static bool Use256 => Vector256.IsHardwareAccelerated;

    private const float InvSqrt2 = 0.70710678118654752f;
    private const float InvSqrt2Pi = 0.39894228040143268f;

    // ---------------------------------------------------------------- f16 -> f32

    private const float TwoPow112 = 5.192296858534828e33f;   // 2^112: a half's exponent bias (15) to a float's (127)

    /// <summary>
    /// Widens n halves to floats, exactly (every f16 value, subnormals, signed zeros, infinities, NaN payloads): each half's
    /// bits, sign-extended to 32 and shifted into a float's place (sign kept, the exponent's upper bits cleared), are a
    /// float 2^-112 times the half's value, so one multiplication by 2^112 finishes normals and subnormals alike; a vector
    /// holding an infinity or a NaN is converted by the runtime's scalar conversion instead (so NaNs come out as it makes
    /// them, quiet). About 6 vector ops per 16 halves (TensorPrimitives' ConvertToSingle has no F16C path in .NET: this is
    /// several times faster).
    /// </summary>
    public static void WidenHalves(Half* src, float* dst, int n)
    {
        int i = 0;
        short* s = (short*)src;
        if (Use512 && Avx512F.IsSupported)
        {
            var mask = Vector512.Create(unchecked((int)0x8FFFE000));
            var expo = Vector512.Create(0x0F800000);
            var scale = Vector512.Create(TwoPow112);
            for (; i <= n - 16; i += 16)
            {
                var raw = Avx512F.ConvertToVector512Int32(Vector256.Load(s + i)) << 13 & mask;   // sign | exponent (5 bits) | mantissa
                (raw.AsSingle() * scale).Store(dst + i);
                if (Vector512.EqualsAny(raw & expo, expo))                                      // exponent 31: infinity or NaN
                    for (int j = i; j < i + 16; j++) dst[j] = (float)src[j];
            }
        }
        else if (Use256 && Avx2.IsSupported)
        {
            var mask = Vector256.Create(unchecked((int)0x8FFFE000));
            var expo = Vector256.Create(0x0F800000);
            var scale = Vector256.Create(TwoPow112);
            for (; i <= n - 8; i += 8)
            {
                var raw = Avx2.ConvertToVector256Int32(Vector128.Load(s + i)) << 13 & mask;
                (raw.AsSingle() * scale).Store(dst + i);
                if (Vector256.EqualsAny(raw & expo, expo))
                    for (int j = i; j < i + 8; j++) dst[j] = (float)src[j];
            }
        }
        for (; i < n; i++) dst[i] = (float)src[i];
    }

    // ---------------------------------------------------------------- exp
    // exp(x) = 2^n e^r with n = round(x log2 e), r = x - n ln 2 (ln 2 split in two for exactness) and e^r from
    // a degree-6 polynomial on |r| <= ln2/2 (Cephes' expf coefficients): ~1 ulp, and 2-3x the throughput of
    // the runtime's Vector512.Exp, which widens to double. Inputs below -87.3 give 0 (so -inf, a masked score,
    // gives exactly 0); inputs above 88.37 are clamped (no caller exponentiates a positive number that large).
    private const float ExpHi = 88.37f, ExpLo = -87.33f, Log2E = 1.44269504088896341f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    private const float RoundMagic = 12582912f;          // 1.5 * 2^23
    private const int RoundMagicBits = 0x4B400000;        // its bit pattern
    private const float E1 = 1.9875691500e-4f, E2 = 1.3981999507e-3f, E3 = 8.3334519073e-3f, E4 = 4.1665795894e-2f, E5 = 1.6666665459e-1f, E6 = 5.0000001201e-1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Exp(Vector512<float> x)
    {
        var under = Vector512.LessThan(x, Vector512.Create(ExpLo));
        x = Vector512.Min(x, Vector512.Create(ExpHi));
        x = Vector512.Max(x, Vector512.Create(ExpLo));
        // Round to nearest with the 1.5 * 2^23 trick: t's low mantissa bits then hold n as an integer.
        var t = Vector512.FusedMultiplyAdd(x, Vector512.Create(Log2E), Vector512.Create(RoundMagic));
        var n = t - Vector512.Create(RoundMagic);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(E1), r, Vector512.Create(E2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(E3)); p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(E4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(E5)); p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(E6));
        var y = Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
        var scale = (t.AsInt32() - Vector512.Create(RoundMagicBits) + Vector512.Create(127)) << 23;
        return Vector512.ConditionalSelect(under, Vector512<float>.Zero, y * scale.AsSingle());
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Exp(Vector256<float> x)
    {
        var under = Vector256.LessThan(x, Vector256.Create(ExpLo));
        x = Vector256.Min(x, Vector256.Create(ExpHi));
        x = Vector256.Max(x, Vector256.Create(ExpLo));
        var t = Vector256.FusedMultiplyAdd(x, Vector256.Create(Log2E), Vector256.Create(RoundMagic));
        var n = t - Vector256.Create(RoundMagic);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(E1), r, Vector256.Create(E2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(E3)); p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(E4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(E5)); p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(E6));
        var y = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        var scale = (t.AsInt32() - Vector256.Create(RoundMagicBits) + Vector256.Create(127)) << 23;
        return Vector256.ConditionalSelect(under, Vector256<float>.Zero, y * scale.AsSingle());
    }

    /// <summary>dst[i] = exp(src[i] - shift); returns the sum. dst may be src.</summary>
    public static float ExpShift(float* src, float* dst, int n, float shift)
    {
        int i = 0;
        float sum = 0;
        if (Use512)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var e = Exp(Vector512.Load(src + i) - Vector512.Create(shift));
                e.Store(dst + i);
                acc += e;
            }
            sum += Vector512.Sum(acc);
        }
        if (Use256)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var e = Exp(Vector256.Load(src + i) - Vector256.Create(shift));
                e.Store(dst + i);
                acc += e;
            }
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            dst[i] = MathF.Exp(src[i] - shift);
            sum += dst[i];
        }
        return sum;
    }

    /// <summary>dst[i] = exp(a[i] - b[i]) (a row minus per-column log-sum-exps). dst may be a.</summary>
    public static void ExpDiff(float* a, float* b, float* dst, int n)
    {
        int i = 0;
        if (Use512)
            for (; i + 16 <= n; i += 16) Exp(Vector512.Load(a + i) - Vector512.Load(b + i)).Store(dst + i);
        if (Use256)
            for (; i + 8 <= n; i += 8) Exp(Vector256.Load(a + i) - Vector256.Load(b + i)).Store(dst + i);
        for (; i < n; i++) dst[i] = MathF.Exp(a[i] - b[i]);
    }

    /// <summary>Sum of exp(x[i] - shift), nothing stored.</summary>
    public static float SumExpShift(float* x, int n, float shift)
    {
        int i = 0;
        float sum = 0;
        if (Use512)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16) acc += Exp(Vector512.Load(x + i) - Vector512.Create(shift));
            sum += Vector512.Sum(acc);
        }
        if (Use256)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8) acc += Exp(Vector256.Load(x + i) - Vector256.Create(shift));
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += MathF.Exp(x[i] - shift);
        return sum;
    }

    /// <summary>log(sum exp(x)) of one row in two passes and no scratch; -inf when every entry is -inf.</summary>
    public static float LogSumExp(float* x, int n)
    {
        float mx = System.Numerics.Tensors.TensorPrimitives.Max(new ReadOnlySpan<float>(x, n));
        if (float.IsNegativeInfinity(mx)) return mx;
        return mx + MathF.Log(SumExpShift(x, n, mx));
    }

    // erfc(a / sqrt 2) for a >= 0 with fractional error below 1.2e-7: z = a / sqrt 2, t = 1/(1 + z/2),
    // erfc = t exp(P(t) - a^2/2), P the classic 10-term Chebyshev fit, the same polynomial at every width. The exponent
    // reaches -50 in gelu's tail, where each f32 rounding of it costs up to u/2 |exponent| of the result: squaring
    // z = a / sqrt 2 (itself rounded) and then adding P cost up to ~3u |exponent| (gelu 1x1 measured 3.0e-6 against
    // its 2e-6 budget, 1 seed in 200). Here p - a^2/2 is rounded once (one FMA): u x^2/2 + ~5e-7 at most (u = 2^-24),
    // 2e-6 at x = -7, 0.8e-6 at x = -3, for the cost of the multiply-add it replaces.
    private const float P0 = -1.26551223f, P1 = 1.00002368f, P2 = 0.37409196f, P3 = 0.09678418f, P4 = -0.18628806f,
        P5 = 0.27886807f, P6 = -1.13520398f, P7 = 1.48851587f, P8 = -0.82215223f, P9 = 0.17087277f;

    private static float ErfcScaledPos(float a)
    {
        float t = 1f / (1f + 0.5f * (a * InvSqrt2));
        float p = P8 + t * P9;
        p = P7 + t * p; p = P6 + t * p; p = P5 + t * p; p = P4 + t * p; p = P3 + t * p; p = P2 + t * p; p = P1 + t * p; p = P0 + t * p;
        return t * MathF.Exp(MathF.FusedMultiplyAdd(-0.5f * a, a, p));   // p - a^2/2, rounded once
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ErfcScaledPos(Vector512<float> a)
    {
        var t = Vector512<float>.One / (Vector512<float>.One + Vector512.Create(0.5f) * (a * Vector512.Create(InvSqrt2)));
        var p = Vector512.Create(P8) + t * Vector512.Create(P9);
        p = Vector512.Create(P7) + t * p; p = Vector512.Create(P6) + t * p; p = Vector512.Create(P5) + t * p;
        p = Vector512.Create(P4) + t * p; p = Vector512.Create(P3) + t * p; p = Vector512.Create(P2) + t * p;
        p = Vector512.Create(P1) + t * p; p = Vector512.Create(P0) + t * p;
        return t * Exp(Vector512.FusedMultiplyAdd(Vector512.Create(-0.5f) * a, a, p));   // p - a^2/2, rounded once
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ErfcScaledPos(Vector256<float> a)
    {
        var t = Vector256<float>.One / (Vector256<float>.One + Vector256.Create(0.5f) * (a * Vector256.Create(InvSqrt2)));
        var p = Vector256.Create(P8) + t * Vector256.Create(P9);
        p = Vector256.Create(P7) + t * p; p = Vector256.Create(P6) + t * p; p = Vector256.Create(P5) + t * p;
        p = Vector256.Create(P4) + t * p; p = Vector256.Create(P3) + t * p; p = Vector256.Create(P2) + t * p;
        p = Vector256.Create(P1) + t * p; p = Vector256.Create(P0) + t * p;
        return t * Exp(Vector256.FusedMultiplyAdd(Vector256.Create(-0.5f) * a, a, p));   // p - a^2/2, rounded once
    }

    // 1 + erf(x / sqrt 2) = 2 Phi(x), accurate in relative terms also where it is tiny (x very negative).
    private static float TwoPhi(float x) => x >= 0 ? 2f - ErfcScaledPos(x) : ErfcScaledPos(-x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> TwoPhi(Vector512<float> x)
    {
        var e = ErfcScaledPos(Vector512.Abs(x));
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), Vector512.Create(2f) - e, e);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> TwoPhi(Vector256<float> x)
    {
        var e = ErfcScaledPos(Vector256.Abs(x));
        return Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(x, Vector256<float>.Zero), Vector256.Create(2f) - e, e);
    }

    /// <summary>y = x/2 (1 + erf(x / sqrt 2)).</summary>
    public static void Gelu(float* x, float* y, long n)
    {
        long i = 0;
        if (Use512)
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                (Vector512.Create(0.5f) * v * TwoPhi(v)).Store(y + i);
            }
        if (Use256)
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                (Vector256.Create(0.5f) * v * TwoPhi(v)).Store(y + i);
            }
        for (; i < n; i++) y[i] = 0.5f * x[i] * TwoPhi(x[i]);
    }

    /// <summary>dx += dy * (Phi(x) + x phi(x)).</summary>
    public static void GeluBackward(float* x, float* dy, float* dx, long n)
    {
        long i = 0;
        if (Use512)
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                var cdf = Vector512.Create(0.5f) * TwoPhi(v);
                var pdf = Vector512.Create(InvSqrt2Pi) * Exp(Vector512.Create(-0.5f) * v * v);
                (Vector512.Load(dx + i) + Vector512.Load(dy + i) * (cdf + v * pdf)).Store(dx + i);
            }
        if (Use256)
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                var cdf = Vector256.Create(0.5f) * TwoPhi(v);
                var pdf = Vector256.Create(InvSqrt2Pi) * Exp(Vector256.Create(-0.5f) * v * v);
                (Vector256.Load(dx + i) + Vector256.Load(dy + i) * (cdf + v * pdf)).Store(dx + i);
            }
        for (; i < n; i++)
        {
            float v = x[i];
            float cdf = 0.5f * TwoPhi(v);
            float pdf = InvSqrt2Pi * MathF.Exp(-0.5f * v * v);
            dx[i] += dy[i] * (cdf + v * pdf);
        }
    }

    /// <summary>
    /// In place: y = softmax(y) over one row, in three passes (max; exp and sum together; scale). A row whose
    /// entries are all -inf (fully masked) becomes zeros.
    /// </summary>
    public static void SoftmaxRow(float* y, int n)
    {
        var row = new Span<float>(y, n);
        float mx = System.Numerics.Tensors.TensorPrimitives.Max(row);
        if (float.IsNegativeInfinity(mx))
        {
            row.Clear();
            return;
        }
        float sum = ExpShift(y, y, n, mx);
        System.Numerics.Tensors.TensorPrimitives.Multiply(row, 1f / sum, row);
    }

    /// <summary>
    /// dst = src * s. With <paramref name="streaming"/> (for outputs far larger than the caches) it uses
    /// non-temporal stores where dst is 64-byte aligned, so the output's lines are not first read from memory.
    /// </summary>
    public static void ScaleStore(float* src, float s, float* dst, int n, bool streaming)
    {
        int i = 0;
        if (streaming && Use512 && ((nuint)dst & 63) == 0)
        {
            for (; i + 16 <= n; i += 16) (Vector512.Load(src + i) * Vector512.Create(s)).StoreAlignedNonTemporal(dst + i);
        }
        System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(src + i, n - i), s, new Span<float>(dst + i, n - i));
    }

    /// <summary>
    /// Inverted dropout over elements [start, start + n) of a tensor: y = x / (1 - p) where
    /// CounterRng.Uniform(seed, index) >= p, else 0 (or y += that, when accumulating). The counter hash runs on
    /// 64-bit lanes; keep-tests compare the hash's top 24 bits with ceil(p 2^24), which is exactly Uniform >= p.
    /// </summary>
    public static void DropoutScale(float* x, float* y, long n, long start, float p, ulong seed, bool accumulate)
    {
        float s = 1f / (1f - p);
        ulong threshold = (ulong)Math.Ceiling(p * 16777216.0);
        ulong seedTerm = seed * 0x9E3779B97F4A7C15UL + 0x632BE59BD9B4E019UL;
        long i = 0;
        if (Use512)
        {
            var lane = Vector512.Create(0UL, 1, 2, 3, 4, 5, 6, 7);
            for (; i + 16 <= n; i += 16)
            {
                var k0 = Hash(Vector512.Create((ulong)(start + i)) + lane, seedTerm);
                var k1 = Hash(Vector512.Create((ulong)(start + i + 8)) + lane, seedTerm);
                var keep = Vector512.Narrow(Vector512.GreaterThanOrEqual(k0, Vector512.Create(threshold)),
                                            Vector512.GreaterThanOrEqual(k1, Vector512.Create(threshold))).AsSingle();
                var v = Vector512.ConditionalSelect(keep, Vector512.Load(x + i) * Vector512.Create(s), Vector512<float>.Zero);
                (accumulate ? Vector512.Load(y + i) + v : v).Store(y + i);
            }
        }
        if (Use256)
        {
            var lane = Vector256.Create(0UL, 1, 2, 3);
            for (; i + 8 <= n; i += 8)
            {
                var k0 = Hash(Vector256.Create((ulong)(start + i)) + lane, seedTerm);
                var k1 = Hash(Vector256.Create((ulong)(start + i + 4)) + lane, seedTerm);
                var keep = Vector256.Narrow(Vector256.GreaterThanOrEqual(k0, Vector256.Create(threshold)),
                                            Vector256.GreaterThanOrEqual(k1, Vector256.Create(threshold))).AsSingle();
                var v = Vector256.ConditionalSelect(keep, Vector256.Load(x + i) * Vector256.Create(s), Vector256<float>.Zero);
                (accumulate ? Vector256.Load(y + i) + v : v).Store(y + i);
            }
        }
        for (; i < n; i++)
        {
            float v = CounterRng.Uniform(seed, start + i) >= p ? x[i] * s : 0f;
            y[i] = accumulate ? y[i] + v : v;
        }
    }

    // CounterRng.Hash on 64-bit lanes, returning the top 24 bits (what Uniform scales by 2^-24).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Hash(Vector512<ulong> counter, ulong seedTerm)
    {
        var z = Vector512.Create(seedTerm) + counter * Vector512.Create(0xD1B54A32D192ED03UL);
        z = (z ^ (z >>> 30)) * Vector512.Create(0xBF58476D1CE4E5B9UL);
        z = (z ^ (z >>> 27)) * Vector512.Create(0x94D049BB133111EBUL);
        return (z ^ (z >>> 31)) >>> 40;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ulong> Hash(Vector256<ulong> counter, ulong seedTerm)
    {
        var z = Vector256.Create(seedTerm) + counter * Vector256.Create(0xD1B54A32D192ED03UL);
        z = (z ^ (z >>> 30)) * Vector256.Create(0xBF58476D1CE4E5B9UL);
        z = (z ^ (z >>> 27)) * Vector256.Create(0x94D049BB133111EBUL);
        return (z ^ (z >>> 31)) >>> 40;
    }

    /// <summary>
    /// Asks for the cache lines of [p, p + floats) ahead of use. Row kernels call it for a row or two ahead: rows of
    /// a few KB each start a new page, where the hardware prefetcher stops, so a lone core stalls on every row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(float* p, long floats)
    {
        if (!Sse.IsSupported) return;
        for (long o = 0; o < floats; o += 16) Sse.Prefetch0(p + o);
    }

    /// <summary>
    /// One row of the layer-norm backward, fused into two passes over the row: (1) xhat and g = dy * gamma on the fly,
    /// the two row sums, and dgamma += dy * xhat, dbeta += dy into the caller's partial sums; (2) dx += rstd (g - mean(g)
    /// - xhat mean(g xhat)), recomputing xhat and g. dx may be null (only the parameter gradients wanted).
    /// </summary>
    public static void LayerNormBackwardRow(float* x, float* dy, float* gamma, float mean, float rstd, int c, float* dx, float* dgamma, float* dbeta)
    {
        int i = 0;
        float sg = 0, sgx = 0;
        if (Use512)
        {
            Vector512<float> ag = default, agx = default, vm = Vector512.Create(mean), vr = Vector512.Create(rstd);
            for (; i + 16 <= c; i += 16)
            {
                var d = Vector512.Load(dy + i);
                var xh = (Vector512.Load(x + i) - vm) * vr;
                var g = d * Vector512.Load(gamma + i);
                ag += g; agx += g * xh;
                (Vector512.Load(dgamma + i) + d * xh).Store(dgamma + i);
                (Vector512.Load(dbeta + i) + d).Store(dbeta + i);
            }
            sg += Vector512.Sum(ag); sgx += Vector512.Sum(agx);
        }
        if (Use256)
        {
            Vector256<float> ag = default, agx = default, vm = Vector256.Create(mean), vr = Vector256.Create(rstd);
            for (; i + 8 <= c; i += 8)
            {
                var d = Vector256.Load(dy + i);
                var xh = (Vector256.Load(x + i) - vm) * vr;
                var g = d * Vector256.Load(gamma + i);
                ag += g; agx += g * xh;
                (Vector256.Load(dgamma + i) + d * xh).Store(dgamma + i);
                (Vector256.Load(dbeta + i) + d).Store(dbeta + i);
            }
            sg += Vector256.Sum(ag); sgx += Vector256.Sum(agx);
        }
        for (; i < c; i++)
        {
            float xh = (x[i] - mean) * rstd, g = dy[i] * gamma[i];
            sg += g; sgx += g * xh;
            dgamma[i] += dy[i] * xh;
            dbeta[i] += dy[i];
        }
        if (dx == null) return;
        float mg = sg / c, mgx = sgx / c;
        i = 0;
        if (Use512)
        {
            Vector512<float> vm = Vector512.Create(mean), vr = Vector512.Create(rstd), vmg = Vector512.Create(mg), vmgx = Vector512.Create(mgx);
            for (; i + 16 <= c; i += 16)
            {
                var xh = (Vector512.Load(x + i) - vm) * vr;
                var g = Vector512.Load(dy + i) * Vector512.Load(gamma + i);
                (Vector512.Load(dx + i) + vr * (g - vmg - xh * vmgx)).Store(dx + i);
            }
        }
        if (Use256)
        {
            Vector256<float> vm = Vector256.Create(mean), vr = Vector256.Create(rstd), vmg = Vector256.Create(mg), vmgx = Vector256.Create(mgx);
            for (; i + 8 <= c; i += 8)
            {
                var xh = (Vector256.Load(x + i) - vm) * vr;
                var g = Vector256.Load(dy + i) * Vector256.Load(gamma + i);
                (Vector256.Load(dx + i) + vr * (g - vmg - xh * vmgx)).Store(dx + i);
            }
        }
        for (; i < c; i++)
        {
            float xh = (x[i] - mean) * rstd, g = dy[i] * gamma[i];
            dx[i] += rstd * (g - mg - xh * mgx);
        }
    }
}
