using KernelVL.Tensors;

namespace KernelVL.Autograd;

/// <summary>
/// Collects every tensor created on this thread while it is the innermost scope and disposes them
/// all (with their gradients) when the scope ends: a training step's temporaries are freed
/// deterministically. <see cref="Keep"/> moves a tensor out to the enclosing scope (or to the caller).
/// </summary>
public sealed class TensorScope : IDisposable
{
    [ThreadStatic] private static TensorScope? _current;
    [ThreadStatic] private static int _untracked;

    private readonly TensorScope? _parent;
    private readonly List<Tensor> _tensors = new();
    private bool _disposed;

    public TensorScope()
    {
        _parent = _current;
        _current = this;
    }

    public int Count => _tensors.Count;

    internal static void Track(Tensor t)
    {
        if (_untracked == 0) _current?._tensors.Add(t);
    }

    /// <summary>Removes <paramref name="t"/> from this scope: it survives, and the caller (or the parent scope) owns it.</summary>
    public Tensor Keep(Tensor t)
    {
        int i = _tensors.LastIndexOf(t);
        if (i < 0) throw new KernelVLException($"{t} does not belong to this scope");
        _tensors.RemoveAt(i);
        _parent?._tensors.Add(t);
        return t;
    }

    /// <summary>Tensors created inside the returned region are not tracked by any scope (parameters, gradients, optimizer state).</summary>
    public static UntrackedRegion Untracked()
    {
        _untracked++;
        return new UntrackedRegion(true);
    }

    public readonly struct UntrackedRegion : IDisposable
    {
        private readonly bool _active;
        internal UntrackedRegion(bool active) => _active = active;
        public void Dispose()
        {
            if (_active) _untracked--;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_current != this) throw new KernelVLException("tensor scopes must be disposed in the reverse order of creation");
        _current = _parent;
        for (int i = _tensors.Count - 1; i >= 0; i--) _tensors[i].Dispose();
        _tensors.Clear();
    }
}
