using ILGPU;
using ILGPU.Runtime;
using KernelVL.Tensors;

namespace KernelVL.Backends.Ilgpu;

/// <summary>
/// Device memory of an ILGPU accelerator: 4-byte elements (f32 and i32 share the buffer type and are
/// viewed as either). Buffers come from the backend's <see cref="IlgpuAllocator"/> and go back to it when
/// the last tensor referencing them is disposed: a step's temporaries are recycled, not reallocated.
/// </summary>
public sealed class IlgpuStorage : Storage
{
    private readonly IlgpuAllocator _allocator;
    private MemoryBuffer1D<int, Stride1D.Dense>? _buffer;

    internal IlgpuStorage(IBackend backend, IlgpuAllocator allocator, long count, DType dtype) : base(backend, count, dtype)
    {
        if (dtype.SizeInBytes() != 4) throw new BackendException($"the ilgpu backend stores 4-byte elements, not {dtype.Name()}");
        _allocator = allocator;
        _buffer = allocator.Rent(count);
    }

    internal ArrayView<int> Ints => (_buffer ?? throw new ObjectDisposedException(nameof(IlgpuStorage))).View.SubView(0, Count);

    protected override void Free()
    {
        var b = _buffer;
        _buffer = null;
        if (b is not null) _allocator.Return(b);
    }
}

/// <summary>
/// One allocator per accelerator: buffers are binned by size (powers of two, at least 64 elements) and reused.
/// Disposing the allocator frees everything it holds.
/// </summary>
public sealed class IlgpuAllocator : IDisposable
{
    private readonly Accelerator _acc;
    private readonly Dictionary<long, Stack<MemoryBuffer1D<int, Stride1D.Dense>>> _free = new();
    private readonly List<MemoryBuffer1D<int, Stride1D.Dense>> _pending = new();
    private readonly object _lock = new();

    public IlgpuAllocator(Accelerator acc) => _acc = acc;

    /// <summary>Bytes currently held in the free lists.</summary>
    public long PooledBytes { get; private set; }

    private static long Bin(long count)
    {
        long b = 64;
        while (b < count) b <<= 1;
        return b;
    }

    internal MemoryBuffer1D<int, Stride1D.Dense> Rent(long count)
    {
        long bin = Bin(count);
        lock (_lock)
        {
            if (_free.TryGetValue(bin, out var s) && s.Count > 0)
            {
                PooledBytes -= bin * 4;
                return s.Pop();
            }
        }
        try
        {
            return _acc.Allocate1D<int>(bin);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Out of device memory: give the pooled buffers back and try once more. The pending ones may still be read
            // by queued launches (CudaBackend.MedianMs queues many calls without a synchronisation), so the device is
            // waited for first: then nothing queued can touch what Trim frees.
            _acc.Synchronize();
            Trim();
            return _acc.Allocate1D<int>(bin);
        }
    }

    /// <summary>
    /// A released buffer may still be used by launches queued on the stream (a temporary freed at the end of the
    /// host call that enqueued its kernels), so it waits in a pending list until <see cref="Reclaim"/>, which the
    /// backend calls once the stream has synchronised.
    /// </summary>
    internal void Return(MemoryBuffer1D<int, Stride1D.Dense> buffer)
    {
        lock (_lock) _pending.Add(buffer);
    }

    /// <summary>Moves pending buffers to the free lists; call only when no queued work can still touch them.</summary>
    internal void Reclaim()
    {
        lock (_lock)
        {
            foreach (var buffer in _pending)
            {
                if (!_free.TryGetValue(buffer.Length, out var s)) _free[buffer.Length] = s = new();
                s.Push(buffer);
                PooledBytes += buffer.Length * 4;
            }
            _pending.Clear();
        }
    }

    /// <summary>Frees every pooled (unused) buffer.</summary>
    public void Trim()
    {
        lock (_lock)
        {
            foreach (var s in _free.Values) while (s.Count > 0) s.Pop().Dispose();
            foreach (var b in _pending) b.Dispose();
            _pending.Clear();
            PooledBytes = 0;
        }
    }

    public void Dispose() => Trim();
}
