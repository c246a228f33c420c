namespace KernelVL;

/// <summary>
/// Counter-based random numbers: value i of stream <c>seed</c> is a pure function of (seed, i), so
/// every backend draws the same dropout mask in any order and the backward recomputes it instead of
/// storing it. The mixer is SplitMix64's finaliser over seed and counter.
/// </summary>
public static class CounterRng
{
    public static ulong Hash(ulong seed, ulong counter)
    {
        ulong z = seed * 0x9E3779B97F4A7C15UL + counter * 0xD1B54A32D192ED03UL + 0x632BE59BD9B4E019UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 24 bits of resolution (exact in f32).</summary>
    public static float Uniform(ulong seed, long index) => (Hash(seed, (ulong)index) >> 40) * (1.0f / 16777216.0f);
}
