using KernelVL.Tensors;

namespace KernelVL.Testing;

/// <summary>
/// What one run of an <see cref="OpCase"/> sees: its backend, and inputs drawn once per case and
/// shared by every backend it runs on. Outputs are views into larger buffers whose tails hold a
/// sentinel (guard region) and whose bodies start as NaN, so out-of-bounds writes and unwritten
/// elements are caught. Accumulating outputs (gradients) start from shared random values.
/// </summary>
public sealed class OpContext : IDisposable
{
    public const int GuardElements = 64;
    public const float Sentinel = 1234.5678f;

    private readonly Dictionary<string, float[]> _hostF = new();
    private readonly Dictionary<string, int[]> _hostI = new();
    private readonly List<Tensor> _owned = new();
    private readonly List<Slot> _slots = new();
    private readonly Dictionary<string, Tensor> _byName = new();
    private readonly Random _rng;

    public OpContext(IBackend backend, Random rng, OpContext? inputsFrom = null)
    {
        B = backend;
        _rng = rng;
        if (inputsFrom is not null)
        {
            _hostF = inputsFrom._hostF;
            _hostI = inputsFrom._hostI;
        }
    }

    public IBackend B { get; }

    /// <summary>The call under test, as recorded by <see cref="Op"/>: the perf harness times repeated calls of it.</summary>
    public Action? Timed { get; private set; }

    /// <summary>
    /// Runs the op under test once and records it for timing. Tensors are memoised by name, so calling the
    /// action again reuses the same inputs and outputs (accumulating outputs keep accumulating).
    /// </summary>
    public void Op(Action call)
    {
        call();
        Timed = call;
    }

    public enum SlotKind { Input, Output, Accumulate, InOut }

    private sealed record Slot(string Name, SlotKind Kind, Tensor Buffer, Tensor View, float[]? Initial);

    /// <summary>A slot read back: <paramref name="Dims"/> its shape (for locating errors), Values row-major.</summary>
    public sealed record Result(string Name, SlotKind Kind, float[] Values, float[]? Initial, bool GuardIntact, bool InputIntact, int[]? Dims = null);

    // ---------------------------------------------------------------- inputs
    private float[] HostF(string name, long n, Func<Random, float> gen)
    {
        if (!_hostF.TryGetValue(name, out var h))
        {
            h = new float[n];
            for (long i = 0; i < n; i++) h[i] = gen(_rng);
            _hostF[name] = h;
        }
        if (h.Length != n) throw new InvalidOperationException($"input {name} was drawn with {h.Length} elements, now asked for {n}");
        return h;
    }

    public static float Normal(Random r) => (float)(Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()));

    /// <summary>A random N(0, std^2) f32 input.</summary>
    public Tensor In(string name, params int[] dims) => In(name, 1f, dims);

    public Tensor In(string name, float std, params int[] dims)
        => Add(name, SlotKind.Input, new Shape(dims), HostF(name, new Shape(dims).Numel, r => std * Normal(r)));

    /// <summary>A random f32 input from a custom distribution.</summary>
    public Tensor InWith(string name, Func<Random, float> gen, params int[] dims)
        => Add(name, SlotKind.Input, new Shape(dims), HostF(name, new Shape(dims).Numel, gen));

    /// <summary>Random ints in [0, high): ids, targets.</summary>
    public Tensor Ints(string name, int high, params int[] dims) => IntsWith(name, r => r.Next(high), dims);

    public Tensor IntsWith(string name, Func<Random, int> gen, params int[] dims)
    {
        if (_byName.TryGetValue(name, out var known)) return known;
        var shape = new Shape(dims);
        if (!_hostI.TryGetValue(name, out var h))
        {
            h = new int[shape.Numel];
            for (int i = 0; i < h.Length; i++) h[i] = gen(_rng);
            _hostI[name] = h;
        }
        var t = B.Empty(shape, DType.I32);
        B.CopyFromHost(h, t);
        _owned.Add(t);
        _byName[name] = t;
        return t;
    }

    /// <summary>The integer inputs (masks, ids) by name, as the host wrote them.</summary>
    public IReadOnlyDictionary<string, int[]> HostInts => _hostI;

    /// <summary>Key-padding mask i32 [b, t]: each row keeps a random prefix of length >= 1 (row 0 keeps all; with allowEmpty the last keeps none).</summary>
    public Tensor Mask(string name, int b, int t, bool allowEmpty = false)
    {
        if (_byName.TryGetValue(name, out var known)) return known;
        var shape = new Shape(b, t);
        if (!_hostI.TryGetValue(name, out var h))
        {
            h = new int[b * t];
            for (int i = 0; i < b; i++)
            {
                int keep = i == 0 ? t : 1 + _rng.Next(t);
                if (allowEmpty && i == b - 1 && b > 1) keep = 0;
                for (int j = 0; j < keep; j++) h[i * t + j] = 1;
            }
            _hostI[name] = h;
        }
        var m = B.Empty(shape, DType.I32);
        B.CopyFromHost(h, m);
        _owned.Add(m);
        _byName[name] = m;
        return m;
    }

    // ---------------------------------------------------------------- outputs
    /// <summary>An output the op must overwrite entirely (starts as NaN).</summary>
    public Tensor Out(string name, params int[] dims) => Add(name, SlotKind.Output, new Shape(dims), null);

    /// <summary>A gradient the op accumulates into (starts from shared random values).</summary>
    public Tensor Acc(string name, params int[] dims)
    {
        var shape = new Shape(dims);
        return Add(name, SlotKind.Accumulate, shape, HostF(name + ".init", shape.Numel, Normal));
    }

    /// <summary>A tensor updated in place (optimizer state, clipped gradients).</summary>
    public Tensor InOut(string name, Func<Random, float> gen, params int[] dims)
    {
        var shape = new Shape(dims);
        return Add(name, SlotKind.InOut, shape, HostF(name, shape.Numel, gen));
    }

    /// <summary>An i32 output (e.g. top-k indices): guarded and poisoned like <see cref="Out"/>, checked by the case's validator.</summary>
    public Tensor OutInts(string name, params int[] dims)
    {
        if (_byName.TryGetValue(name, out var known)) return known;
        var shape = new Shape(dims);
        long n = shape.Numel;
        var buffer = B.Empty(new Shape(checked((int)(n + GuardElements))), DType.I32);
        var host = new int[n + GuardElements];
        Array.Fill(host, int.MinValue, 0, (int)n);
        Array.Fill(host, IntSentinel, (int)n, GuardElements);
        B.CopyFromHost(host, buffer);
        using var body = buffer.Narrow0(0, (int)n);
        var view = body.Reshape(shape.ToArray());
        _owned.Add(buffer);
        _owned.Add(view);
        _intSlots.Add((name, buffer, view));
        _byName[name] = view;
        return view;
    }

    public const int IntSentinel = -12345678;
    private readonly List<(string Name, Tensor Buffer, Tensor View)> _intSlots = new();

    /// <summary>An i32 output's values, or a problem with its guard region.</summary>
    public (int[] Values, string? Problem) ReadInts(string name)
    {
        var (n, buffer, view) = _intSlots.First(s => s.Name == name);
        var all = buffer.ToArrayI32();
        for (long i = view.Numel; i < all.Length; i++)
            if (all[i] != IntSentinel) return ([], $"wrote past the end of {n}");
        return (all[..(int)view.Numel], null);
    }

    /// <summary>The current values of a float slot on this context's backend.</summary>
    public float[] Read(string name) => _slots.First(s => s.Name == name).View.ToArray();

    /// <summary>The host copy of a float input drawn for this case.</summary>
    public float[] Host(string name) => _hostF[name];

    /// <summary>A plain scratch tensor the case uses between calls (not compared).</summary>
    public Tensor Temp(params int[] dims)
    {
        var t = B.Empty(new Shape(dims));
        _owned.Add(t);
        return t;
    }

    private Tensor Add(string name, SlotKind kind, Shape shape, float[]? initial)
    {
        if (_byName.TryGetValue(name, out var known))
        {
            if (known.Shape != shape) throw new InvalidOperationException($"{name} was created as {known.Shape}, now asked as {shape}");
            return known;
        }
        long n = shape.Numel;
        var buffer = B.Empty(new Shape(checked((int)(n + GuardElements))));
        var host = new float[n + GuardElements];
        if (initial is null) Array.Fill(host, float.NaN, 0, (int)n);
        else initial.CopyTo(host, 0);
        Array.Fill(host, Sentinel, (int)n, GuardElements);
        B.CopyFromHost(host, buffer);
        using var body = buffer.Narrow0(0, (int)n);
        var view = body.Reshape(shape.ToArray());
        _owned.Add(buffer);
        _owned.Add(view);
        _slots.Add(new Slot(name, kind, buffer, view, initial is null ? null : (float[])initial.Clone()));
        _byName[name] = view;
        return view;
    }

    /// <summary>Reads every non-input slot back, with guard and input-integrity checks.</summary>
    public IReadOnlyList<Result> Collect()
    {
        var results = new List<Result>();
        foreach (var s in _slots)
        {
            var all = s.Buffer.ToArray();
            long n = s.View.Numel;
            bool guard = true;
            for (long i = n; i < all.Length; i++) if (all[i] != Sentinel && !(float.IsNaN(all[i]) && float.IsNaN(Sentinel))) guard = false;
            var values = all.AsSpan(0, (int)n).ToArray();
            bool intact = s.Kind != SlotKind.Input || values.AsSpan().SequenceEqual(s.Initial);
            results.Add(new Result(s.Name, s.Kind, values, s.Initial, guard, intact, [.. s.View.Shape.Dims]));
        }
        return results;
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }
}
