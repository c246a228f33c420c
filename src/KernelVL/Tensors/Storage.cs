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

    private readonly nuint _bytes;

    public CpuStorage(IBackend backend, long count, DType dtype) : base(backend, count, dtype)
    {
        _bytes = HostMemoryPool.RoundUp((nuint)Math.Max(1, count * dtype.SizeInBytes()));
        _ptr = HostMemoryPool.Rent(_bytes);
    }

    public void* Pointer => _ptr != null ? _ptr : throw new ObjectDisposedException(nameof(CpuStorage));

    protected override void Free()
    {
        HostMemoryPool.Return(_ptr, _bytes);
        _ptr = null;
    }
}

/// <summary>
/// Recycles host tensor memory. A training or inference step allocates the same shapes every time, and large native
/// allocations are fresh mmaps whose every page faults on first touch and which munmap on free: measured, that made a
/// small model's step 2-5x slower than its arithmetic. Freed blocks of 64 KiB and more are kept per exact (rounded)
/// size, up to <see cref="MaxCachedBytes"/> in all, and handed out again; smaller ones go straight to malloc.
/// Memory handed out again is not cleared (a tensor's contents are undefined until written, as with Empty).
/// </summary>
public static unsafe class HostMemoryPool
{
    private const nuint Granule = 4096, PoolFrom = 64 * 1024;
    private static readonly object Gate = new();
    private static readonly Dictionary<nuint, Stack<nint>> Free = new();
    private static long _cached;

    /// <summary>Cap on the bytes kept for reuse (default 2 GiB).</summary>
    public static long MaxCachedBytes { get; set; } = 2L << 30;

    public static long CachedBytes => Interlocked.Read(ref _cached);

    internal static nuint RoundUp(nuint bytes) => bytes < PoolFrom ? bytes : (bytes + Granule - 1) / Granule * Granule;

    internal static void* Rent(nuint bytes)
    {
        if (bytes >= PoolFrom)
        {
            lock (Gate)
            {
                if (Free.TryGetValue(bytes, out var stack) && stack.Count > 0)
                {
                    _cached -= (long)bytes;
                    return (void*)stack.Pop();
                }
            }
        }
        void* p = NativeMemory.AlignedAlloc(bytes, CpuStorage.Alignment);
        if (p == null)
        {
            Trim();
            p = NativeMemory.AlignedAlloc(bytes, CpuStorage.Alignment);
            if (p == null) throw new OutOfMemoryException($"could not allocate {bytes} bytes of host memory");
        }
        return p;
    }

    internal static void Return(void* p, nuint bytes)
    {
        if (p == null) return;
        if (bytes >= PoolFrom)
        {
            lock (Gate)
            {
                if (_cached + (long)bytes <= MaxCachedBytes)
                {
                    if (!Free.TryGetValue(bytes, out var stack)) Free[bytes] = stack = new Stack<nint>();
                    stack.Push((nint)p);
                    _cached += (long)bytes;
                    return;
                }
            }
        }
        NativeMemory.AlignedFree(p);
    }

    /// <summary>Frees every cached block.</summary>
    public static void Trim()
    {
        lock (Gate)
        {
            foreach (var stack in Free.Values)
                while (stack.Count > 0) NativeMemory.AlignedFree((void*)stack.Pop());
            Free.Clear();
            _cached = 0;
        }
    }
}
