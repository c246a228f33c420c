using System.Runtime.Intrinsics;

namespace KernelVL.Backends.Cpu;

/// <summary>Vectorised f32 math the Cpu backend needs beyond TensorPrimitives: the exact-erf GELU and its derivative.</summary>
internal static unsafe class CpuMath
{
    private const float InvSqrt2 = 0.70710678118654752f;
    private const float InvSqrt2Pi = 0.39894228040143268f;

    /// <summary>
    /// erfc(z) for z >= 0 with fractional error below 1.2e-7: t = 1/(1 + z/2),
    /// erfc = t exp(-z^2 + P(t)) with the classic 10-term Chebyshev fit of P.
    /// </summary>
    private static float ErfcPos(float z)
    {
        float t = 1f / (1f + 0.5f * z);
        float p = -0.82215223f + t * 0.17087277f;
        p = 1.48851587f + t * p; p = -1.13520398f + t * p; p = 0.27886807f + t * p; p = -0.18628806f + t * p;
        p = 0.09678418f + t * p; p = 0.37409196f + t * p; p = 1.00002368f + t * p; p = -1.26551223f + t * p;
        return t * MathF.Exp(-z * z + p);
    }

    private static Vector512<float> ErfcPos(Vector512<float> z)
    {
        var one = Vector512.Create(1f);
        var t = one / (one + Vector512.Create(0.5f) * z);
        var p = Vector512.Create(-0.82215223f) + t * Vector512.Create(0.17087277f);
        p = Vector512.Create(1.48851587f) + t * p; p = Vector512.Create(-1.13520398f) + t * p;
        p = Vector512.Create(0.27886807f) + t * p; p = Vector512.Create(-0.18628806f) + t * p;
        p = Vector512.Create(0.09678418f) + t * p; p = Vector512.Create(0.37409196f) + t * p;
        p = Vector512.Create(1.00002368f) + t * p; p = Vector512.Create(-1.26551223f) + t * p;
        return t * Vector512.Exp(p - z * z);
    }

    /// <summary>1 + erf(u), accurate in relative terms also where it is tiny (u very negative).</summary>
    private static float OnePlusErf(float u) => u >= 0 ? 2f - ErfcPos(u) : ErfcPos(-u);

    private static Vector512<float> OnePlusErf(Vector512<float> u)
    {
        var e = ErfcPos(Vector512.Abs(u));
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(u, Vector512<float>.Zero), Vector512.Create(2f) - e, e);
    }

    public static void Gelu(float* x, float* y, long n)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var half = Vector512.Create(0.5f);
            var s = Vector512.Create(InvSqrt2);
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                (half * v * OnePlusErf(v * s)).Store(y + i);
            }
        }
        for (; i < n; i++) y[i] = 0.5f * x[i] * OnePlusErf(x[i] * InvSqrt2);
    }

    /// <summary>dx += dy * (Phi(x) + x phi(x)).</summary>
    public static void GeluBackward(float* x, float* dy, float* dx, long n)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var half = Vector512.Create(0.5f);
            var s = Vector512.Create(InvSqrt2);
            var c = Vector512.Create(InvSqrt2Pi);
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector512.Load(x + i);
                var cdf = half * OnePlusErf(v * s);
                var pdf = c * Vector512.Exp(-half * v * v);
                (Vector512.Load(dx + i) + Vector512.Load(dy + i) * (cdf + v * pdf)).Store(dx + i);
            }
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
        int i = 0;
        float mx = float.NegativeInfinity;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var vm = Vector512.Create(float.NegativeInfinity);
            for (; i + 16 <= n; i += 16) vm = Vector512.Max(vm, Vector512.Load(y + i));
            mx = Vector512.Max(vm, Vector512.Create(mx)).ToScalar();
            for (int l = 1; l < 16; l++) mx = MathF.Max(mx, vm.GetElement(l));
        }
        for (; i < n; i++) mx = MathF.Max(mx, y[i]);
        if (float.IsNegativeInfinity(mx))
        {
            new Span<float>(y, n).Clear();
            return;
        }
        i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vmx = Vector512.Create(mx);
            var vs = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var e = Vector512.Exp(Vector512.Load(y + i) - vmx);
                e.Store(y + i);
                vs += e;
            }
            sum = Vector512.Sum(vs);
        }
        for (; i < n; i++)
        {
            y[i] = MathF.Exp(y[i] - mx);
            sum += y[i];
        }
        System.Numerics.Tensors.TensorPrimitives.Multiply(new Span<float>(y, n), 1f / sum, new Span<float>(y, n));
    }
}
