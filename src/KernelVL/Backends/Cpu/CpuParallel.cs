namespace KernelVL.Backends.Cpu;

/// <summary>Splits a range into contiguous chunks over the cores; runs inline when the work is small.</summary>
internal static class CpuParallel
{
    public static int Threads => Environment.ProcessorCount;

    /// <summary>Calls body(start, end) over [0, count) in chunks of at least <paramref name="grain"/> items.</summary>
    public static void For(long count, long grain, Action<long, long> body)
    {
        if (count <= 0) return;
        long chunks = Math.Min(Threads * 4L, Math.Max(1, count / Math.Max(1, grain)));
        if (chunks <= 1 || Threads == 1) { body(0, count); return; }
        long per = (count + chunks - 1) / chunks;
        Parallel.For(0, (int)chunks, c =>
        {
            long s = c * per, e = Math.Min(count, s + per);
            if (s < e) body(s, e);
        });
    }

    /// <summary>One call per item, items spread over the cores (for independent tiles).</summary>
    public static void Each(int count, Action<int> body)
    {
        if (count <= 0) return;
        if (count == 1 || Threads == 1) { for (int i = 0; i < count; i++) body(i); return; }
        Parallel.For(0, count, body);
    }
}
