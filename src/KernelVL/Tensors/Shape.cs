namespace KernelVL.Tensors;

/// <summary>An immutable row-major shape; the last dimension is contiguous.</summary>
public readonly struct Shape : IEquatable<Shape>
{
    private readonly int[] _dims;

    public Shape(params int[] dims)
    {
        ArgumentNullException.ThrowIfNull(dims);
        foreach (int d in dims)
            if (d < 0) throw new ShapeException($"negative dimension in shape [{string.Join(", ", dims)}]");
        _dims = (int[])dims.Clone();
    }

    public int Rank => _dims?.Length ?? 0;
    public int this[int axis] => _dims[axis < 0 ? axis + _dims.Length : axis];
    public ReadOnlySpan<int> Dims => _dims;

    /// <summary>Number of elements (1 for a rank-0 scalar).</summary>
    public long Numel
    {
        get
        {
            long n = 1;
            if (_dims is null) return n;
            foreach (int d in _dims) n *= d;
            return n;
        }
    }

    /// <summary>Product of all dimensions but the last: the number of rows when the last dim is a row.</summary>
    public long Rows => Rank == 0 ? 1 : Product(0, Rank - 1);

    /// <summary>Product of dimensions [from, to).</summary>
    public long Product(int from, int to)
    {
        long n = 1;
        for (int i = from; i < to; i++) n *= _dims[i];
        return n;
    }

    public Shape WithDim(int axis, int size)
    {
        var d = (int[])_dims.Clone();
        d[axis < 0 ? axis + d.Length : axis] = size;
        return new Shape(d);
    }

    public int[] ToArray() => (int[])(_dims ?? []).Clone();

    public bool Equals(Shape other) => Dims.SequenceEqual(other.Dims);
    public override bool Equals(object? obj) => obj is Shape s && Equals(s);
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (int d in Dims) h.Add(d);
        return h.ToHashCode();
    }
    public static bool operator ==(Shape a, Shape b) => a.Equals(b);
    public static bool operator !=(Shape a, Shape b) => !a.Equals(b);
    public override string ToString() => $"[{string.Join(", ", (_dims ?? []))}]";
    public static implicit operator Shape(int[] dims) => new(dims);
}
