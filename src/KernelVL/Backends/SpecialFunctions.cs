namespace KernelVL;

/// <summary>Special functions .NET lacks, in double precision (the reference) and fast f32 forms (the Cpu backend).</summary>
public static class SpecialFunctions
{
    /// <summary>
    /// erf(x) to ~1e-16 relative: erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)),
    /// a series of positive terms (no cancellation), and +-1 beyond |x| = 6 where 1 - erf < 3e-17.
    /// </summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        if (ax >= 6) return Math.Sign(x);
        double term = ax, sum = ax, x2 = ax * ax;
        for (int n = 1; n < 200; n++)
        {
            term *= 2 * x2 / (2 * n + 1);
            sum += term;
            if (term < sum * 1e-17) break;
        }
        double r = 2 / Math.Sqrt(Math.PI) * Math.Exp(-x2) * sum;
        return x < 0 ? -r : r;
    }
}
