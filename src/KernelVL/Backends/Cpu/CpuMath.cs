using System.Runtime.Intrinsics;

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

    // erfc(z) for z >= 0 with fractional error below 1.2e-7: t = 1/(1 + z/2), erfc = t exp(-z^2 + P(t)),
    // P the classic 10-term Chebyshev fit. The same polynomial at every width.
    private const float P0 = -1.26551223f, P1 = 1.00002368f, P2 = 0.37409196f, P3 = 0.09678418f, P4 = -0.18628806f,
        P5 = 0.27886807f, P6 = -1.13520398f, P7 = 1.48851587f, P8 = -0.82215223f, P9 = 0.17087277f;

    private static float ErfcPos(float z)
    {
        float t = 1f / (1f + 0.5f * z);
        float p = P8 + t * P9;
        p = P7 + t * p; p = P6 + t * p; p = P5 + t * p; p = P4 + t * p; p = P3 + t * p; p = P2 + t * p; p = P1 + t * p; p = P0 + t * p;
        return t * MathF.Exp(-z * z + p);
    }

    private static Vector512<float> ErfcPos(Vector512<float> z)
    {
        var t = Vector512<float>.One / (Vector512<float>.One + Vector512.Create(0.5f) * z);
        var p = Vector512.Create(P8) + t * Vector512.Create(P9);
        p = Vector512.Create(P7) + t * p; p = Vector512.Create(P6) + t * p; p = Vector512.Create(P5) + t * p;
        p = Vector512.Create(P4) + t * p; p = Vector512.Create(P3) + t * p; p = Vector512.Create(P2) + t * p;
        p = Vector512.Create(P1) + t * p; p = Vector512.Create(P0) + t * p;
        return t * Vector512.Exp(p - z * z);
    }

    private static Vector256<float> ErfcPos(Vector256<float> z)
    {
        var t = Vector256<float>.One / (Vector256<float>.One + Vector256.Create(0.5f) * z);
        var p = Vector256.Create(P8) + t * Vector256.Create(P9);
        p = Vector256.Create(P7) + t * p; p = Vector256.Create(P6) + t * p; p = Vector256.Create(P5) + t * p;
        p = Vector256.Create(P4) + t * p; p = Vector256.Create(P3) + t * p; p = Vector256.Create(P2) + t * p;
        p = Vector256.Create(P1) + t * p; p = Vector256.Create(P0) + t * p;
        return t * Vector256.Exp(p - z * z);
    }

    // 1 + erf(u), accurate in relative terms also where it is tiny (u very negative).
    private static float OnePlusErf(float u) => u >= 0 ? 2f - ErfcPos(u) : ErfcPos(-u);

    private static Vector512<float> OnePlusErf(Vector512<float> u)
    {
        var e = ErfcPos(Vector512.Abs(u));
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(u, Vector512<float>.Zero), Vector512.Create(2f) - e, e);
    }

    private static Vector256<float> OnePlusErf(Vector256<float> u)
    {
        var e = ErfcPos(Vector256.Abs(u));
        return Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(u, Vector256<float>.Zero), Vector256.Create(2f) - e, e);
    }

    /// <summary>y = x/2 (1 + erf(x / sqrt 2)).</summary>
    public static void Gelu(float* x, float* y, long n)
    {
        long i = 0;
        if (Use512)
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                (Vector512.Create(0.5f) * v * OnePlusErf(v * Vector512.Create(InvSqrt2))).Store(y + i);
            }
        if (Use256)
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                (Vector256.Create(0.5f) * v * OnePlusErf(v * Vector256.Create(InvSqrt2))).Store(y + i);
            }
        for (; i < n; i++) y[i] = 0.5f * x[i] * OnePlusErf(x[i] * InvSqrt2);
    }

    /// <summary>dx += dy * (Phi(x) + x phi(x)).</summary>
    public static void GeluBackward(float* x, float* dy, float* dx, long n)
    {
        long i = 0;
        if (Use512)
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                var cdf = Vector512.Create(0.5f) * OnePlusErf(v * Vector512.Create(InvSqrt2));
                var pdf = Vector512.Create(InvSqrt2Pi) * Vector512.Exp(Vector512.Create(-0.5f) * v * v);
                (Vector512.Load(dx + i) + Vector512.Load(dy + i) * (cdf + v * pdf)).Store(dx + i);
            }
        if (Use256)
            for (; i + 8 <= n; i += 8)
            {
                var v = Vector256.Load(x + i);
                var cdf = Vector256.Create(0.5f) * OnePlusErf(v * Vector256.Create(InvSqrt2));
                var pdf = Vector256.Create(InvSqrt2Pi) * Vector256.Exp(Vector256.Create(-0.5f) * v * v);
                (Vector256.Load(dx + i) + Vector256.Load(dy + i) * (cdf + v * pdf)).Store(dx + i);
            }
        for (; i < n; i++)
        {
            float v = x[i];
            float cdf = 0.5f * OnePlusErf(v * InvSqrt2);
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
        int i = 0;
        float sum = 0;
        if (Use512)
        {
            var vs = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var e = Vector512.Exp(Vector512.Load(y + i) - Vector512.Create(mx));
                e.Store(y + i);
                vs += e;
            }
            sum += Vector512.Sum(vs);
        }
        if (Use256)
        {
            var vs = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(y + i) - Vector256.Create(mx));
                e.Store(y + i);
                vs += e;
            }
            sum += Vector256.Sum(vs);
        }
        for (; i < n; i++)
        {
            y[i] = MathF.Exp(y[i] - mx);
            sum += y[i];
        }
        System.Numerics.Tensors.TensorPrimitives.Multiply(row, 1f / sum, row);
    }
}
