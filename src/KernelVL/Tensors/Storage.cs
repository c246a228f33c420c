using System.Runtime.InteropServices;

namespace KernelVL.Tensors;

/// <summary>
/// A reference-counted block of memory owned by one backend. Tensors (and views of them) hold
/// references; the memory is freed deterministically when the last one is disposed, never by the GC.
/// </summary>
public abstract class Storage
{
    private int _refs = 1;

    protected Storage(IBackend backend, long count, DType dtype)
    {
        Backend = backend;
        Count = count;
        DType = dtype;
    }

    public IBackend Backend { get; }
    /// <summary>Number of elements.</summary>
    public long Count { get; }
    public DType DType { get; }
    public long ByteLength => Count * DType.SizeInBytes();
    public bool IsFreed => Volatile.Read(ref _refs) <= 0;

    internal void AddRef()
    {
        if (Interlocked.Increment(ref _refs) <= 1)
            throw new ObjectDisposedException(nameof(Storage), "storage was already freed");
    }

    internal void Release()
    {
        int left = Interlocked.Decrement(ref _refs);
        if (left == 0) Free();
        else if (left < 0) throw new ObjectDisposedException(nameof(Storage), "storage released twice");
    }

    protected abstract void Free();
}

/// <summary>Host memory, 64-byte aligned (one AVX-512 vector / one cache line).</summary>
public sealed unsafe class CpuStorage : Storage
{
    public const int Alignment = 64;
    private void* _ptr;

    public CpuStorage(IBackend backend, long count, DType dtype) : base(backend, count, dtype)
    {
        nuint bytes = (nuint)Math.Max(1, count * dtype.SizeInBytes());
        _ptr = NativeMemory.AlignedAlloc(bytes, Alignment);
        if (_ptr == null) throw new OutOfMemoryException($"could not allocate {bytes} bytes of host memory");
    }

    public void* Pointer => _ptr != null ? _ptr : throw new ObjectDisposedException(nameof(CpuStorage));

    protected override void Free()
    {
        NativeMemory.AlignedFree(_ptr);
        _ptr = null;
    }
}
