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

    /// <summary>
    /// erfc(x) = 1 - erf(x) to ~1e-15 relative also where it is tiny (1 + erf(x) = erfc(-x) loses all its digits in f64
    /// below x = -8, 1e-4 of them at -7, while GELU's reference needs it there): 1 - erf(x) below x = 2 (erfc(2) = 4.7e-3,
    /// so at most ~5e-14 relative lost), from 2 on the continued fraction erfc(x) = exp(-x^2) / sqrt(pi) /
    /// (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...)))), evaluated by the modified Lentz method (57 terms at x = 2, 10 at 10).
    /// </summary>
    public static double Erfc(double x)
    {
        if (double.IsNaN(x)) return x;
        if (x < 2) return 1 - Erf(x);
        const double tiny = 1e-300;
        double f = x, c = x, d = 0;
        for (int n = 1; n < 500; n++)
        {
            double a = n / 2.0;
            d = x + a * d;
            d = 1 / (d == 0 ? tiny : d);
            c = x + a / c;
            if (c == 0) c = tiny;
            double delta = c * d;
            f *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        return Math.Exp(-x * x) / Math.Sqrt(Math.PI) / f;
    }
}
