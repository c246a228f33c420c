namespace KernelVL.Training;

/// <summary>Linear warm-up to the base rate, then a cosine decay to zero at the last step (PAPER.md: 200 warm-up steps).</summary>
public static class Schedule
{
    /// <summary>Learning rate of step (1-based) out of <paramref name="total"/>.</summary>
    public static float Cosine(float baseLr, int step, int warmup, int total)
    {
        if (step <= 0) throw new ArgumentOutOfRangeException(nameof(step), "steps count from 1");
        warmup = Math.Min(warmup, Math.Max(0, total - 1));
        if (step <= warmup) return baseLr * step / warmup;
        double progress = Math.Min(1.0, (step - warmup) / (double)Math.Max(1, total - warmup));
        return (float)(baseLr * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
