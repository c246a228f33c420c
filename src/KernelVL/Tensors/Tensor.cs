using KernelVL.Autograd;

namespace KernelVL.Tensors;

/// <summary>
/// A contiguous, row-major n-d array on one backend. Views (reshape, slices along the first dim)
/// share the storage and are cheap. Disposal is explicit; a <see cref="TensorScope"/> disposes a
/// step's temporaries together. Parameters carry <see cref="Grad"/>.
/// </summary>
public sealed unsafe class Tensor : IDisposable
{
    private Storage? _storage;

    internal Tensor(Storage storage, long offset, Shape shape, bool addRef)
    {
        if (offset < 0 || offset + shape.Numel > storage.Count)
            throw new ShapeException($"view of {shape} at offset {offset} does not fit a storage of {storage.Count} elements");
        if (addRef) storage.AddRef();
        _storage = storage;
        Offset = offset;
        Shape = shape;
        TensorScope.Track(this);
    }

    public Shape Shape { get; }
    public long Offset { get; }
    public DType DType => Storage.DType;
    public IBackend Backend => Storage.Backend;
    public Storage Storage => _storage ?? throw new ObjectDisposedException(nameof(Tensor), $"tensor {Name ?? Shape.ToString()} was disposed");
    public long Numel => Shape.Numel;
    public int Rank => Shape.Rank;
    public bool IsDisposed => _storage is null;

    /// <summary>Optional name, used in error messages and checkpoints.</summary>
    public string? Name { get; set; }

    // ---- autograd ----
    /// <summary>True for parameters and for op results that depend on one while gradients are recorded.</summary>
    public bool RequiresGrad { get; set; }
    /// <summary>True when the tensor was made by the user (parameter or input), not recorded as an op result.</summary>
    public bool IsLeaf { get; internal set; } = true;
    /// <summary>Accumulated gradient (same shape), created on first use and zero-initialised.</summary>
    public Tensor? Grad { get; set; }

    /// <summary>Returns <see cref="Grad"/>, allocating a zeroed one first. Leaf gradients outlive step scopes.</summary>
    public Tensor EnsureGrad()
    {
        if (Grad is not null) return Grad;
        using (IsLeaf ? TensorScope.Untracked() : default)
        {
            var g = Backend.Empty(Shape, DType == DType.I32 ? DType.F32 : DType);
            Backend.Fill(g, 0f);
            Grad = g;
        }
        return Grad;
    }

    public void ZeroGrad()
    {
        if (Grad is not null) Backend.Fill(Grad, 0f);
    }

    // ---- views ----
    public Tensor Reshape(params int[] dims)
    {
        int infer = Array.IndexOf(dims, -1);
        if (infer >= 0)
        {
            long known = 1;
            for (int i = 0; i < dims.Length; i++) if (i != infer) known *= dims[i];
            if (known == 0 || Numel % known != 0) throw new ShapeException($"cannot reshape {Shape} to [{string.Join(", ", dims)}]");
            dims = (int[])dims.Clone();
            dims[infer] = (int)(Numel / known);
        }
        var shape = new Shape(dims);
        if (shape.Numel != Numel) throw new ShapeException($"cannot reshape {Shape} ({Numel} elements) to {shape}");
        return new Tensor(Storage, Offset, shape, addRef: true) { RequiresGrad = false };
    }

    /// <summary>Rows [start, start+length) of the first dimension, as a view.</summary>
    public Tensor Narrow0(int start, int length)
    {
        if (Rank == 0) throw new ShapeException("cannot slice a scalar");
        if (start < 0 || length < 0 || start + length > Shape[0])
            throw new ShapeException($"slice [{start}, {start + length}) out of range for dim 0 of {Shape}");
        long inner = Shape.Product(1, Rank);
        return new Tensor(Storage, Offset + start * inner, Shape.WithDim(0, length), addRef: true);
    }

    /// <summary>Element i of the first dimension, as a view with that dim removed.</summary>
    public Tensor Select0(int index)
    {
        var v = Narrow0(index, 1);
        var dims = Shape.ToArray()[1..];
        var r = new Tensor(v.Storage, v.Offset, new Shape(dims), addRef: true);
        v.Dispose();
        return r;
    }

    // ---- host access (CPU storage only) ----
    public Span<float> Span
    {
        get
        {
            if (DType != DType.F32) throw new ShapeException($"tensor {Shape} is {DType.Name()}, not f32");
            return new Span<float>((float*)HostPointer, checked((int)Numel));
        }
    }

    public Span<int> SpanI32
    {
        get
        {
            if (DType != DType.I32) throw new ShapeException($"tensor {Shape} is {DType.Name()}, not i32");
            return new Span<int>((int*)HostPointer, checked((int)Numel));
        }
    }

    /// <summary>Address of element 0 for host-memory tensors.</summary>
    public void* HostPointer => Storage is CpuStorage cpu
        ? (byte*)cpu.Pointer + Offset * DType.SizeInBytes()
        : throw new BackendException($"tensor {Shape} lives on {Backend.Name}, not in host memory");

    public float* F32Ptr => DType == DType.F32 ? (float*)HostPointer : throw new ShapeException($"tensor {Shape} is {DType.Name()}, not f32");
    public int* I32Ptr => DType == DType.I32 ? (int*)HostPointer : throw new ShapeException($"tensor {Shape} is {DType.Name()}, not i32");

    /// <summary>Copies the elements to a new host array (any backend).</summary>
    public float[] ToArray()
    {
        var a = new float[Numel];
        Backend.CopyToHost(this, a);
        return a;
    }

    public int[] ToArrayI32()
    {
        var a = new int[Numel];
        Backend.CopyToHost(this, a);
        return a;
    }

    /// <summary>The value of a one-element tensor.</summary>
    public float Item()
    {
        if (Numel != 1) throw new ShapeException($"Item() needs one element, tensor is {Shape}");
        return ToArray()[0];
    }

    public void Dispose()
    {
        var s = Interlocked.Exchange(ref _storage, null);
        if (s is null) return;
        s.Release();
        Grad?.Dispose();
        Grad = null;
    }

    public override string ToString() => $"Tensor{(Name is null ? "" : " " + Name)} {Shape} {DType.Name()} on {Backend.Name}";
}
