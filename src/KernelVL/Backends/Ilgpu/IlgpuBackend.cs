using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using KernelVL.Tensors;
using static KernelVL.Backends.Ilgpu.IlgpuKernels;
using Stream = ILGPU.Runtime.AcceleratorStream;
using V = ILGPU.ArrayView<float>;
using VI = ILGPU.ArrayView<int>;

namespace KernelVL.Backends.Ilgpu;

/// <summary>
/// Every op of the contract as an ILGPU kernel, on any accelerator ILGPU supports: CUDA on an NVIDIA GPU, and
/// ILGPU's CPU accelerator, which runs the same kernels (slowly: ~400x the Cpu backend) so the tests check them
/// on machines without a GPU. Kernels are compiled and loaded once, in the constructor, into typed launchers;
/// arguments are checked on the host (the shared <see cref="Contract"/>) before every launch; all launches go to
/// the accelerator's default stream, in order. f32 and i32 only. The Cuda backend derives from it and replaces the hot
/// ops (the virtual members) with hand-written kernels on the same context, stream and buffers.
/// </summary>
public unsafe class IlgpuBackend : IBackend
{
    private readonly Context _context;
    private readonly Accelerator _acc;
    private readonly IlgpuAllocator _alloc;
    private readonly Stream _s;
    private readonly int _rowGroup, _gemmT, _attnGroup, _topkGroup;

    public string Name { get; }
    public Accelerator Accelerator => _acc;

    /// <summary>The CPU accelerator (always available; for tests).</summary>
    public static IlgpuBackend CreateCpu() => Create("ilgpu-cpu", d => d.AcceleratorType == AcceleratorType.CPU);

    /// <summary>The first CUDA device; throws <see cref="BackendException"/> when there is none.</summary>
    public static IlgpuBackend CreateCuda() => Create("ilgpu-cuda", d => d.AcceleratorType == AcceleratorType.Cuda);

    /// <summary>Null when a CUDA device is usable through ILGPU, else why not.</summary>
    public static string? CudaUnavailable()
    {
        try
        {
            using var ctx = Context.Create(b => b.Cuda());
            return ctx.Devices.Any(d => d.AcceleratorType == AcceleratorType.Cuda) ? null : "no CUDA device found by ILGPU";
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return $"ILGPU could not initialise CUDA: {e.Message}";
        }
    }

    private static IlgpuBackend Create(string name, Func<Device, bool> pick)
    {
        var (context, acc) = CreateDevice(name, pick);
        return new IlgpuBackend(name, context, acc);
    }

    /// <summary>The ILGPU context every ILGPU backend compiles its kernels in (algorithms enabled: XMath for Math.*).</summary>
    internal static Context CreateContext() => Context.Create(b => b.Default().EnableAlgorithms().Math(MathMode.Default));

    /// <summary>An ILGPU context (algorithms enabled) and an accelerator on the first device that <paramref name="pick"/> accepts.</summary>
    protected static (Context Context, Accelerator Accelerator) CreateDevice(string name, Func<Device, bool> pick)
    {
        var context = CreateContext();
        var device = context.Devices.FirstOrDefault(pick);
        if (device is null)
        {
            context.Dispose();
            throw new BackendException($"backend '{name}': ILGPU finds no such device (devices: {string.Join(", ", context.Devices.Select(d => d.AcceleratorType))})");
        }
        try
        {
            return (context, device.CreateAccelerator(context));
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    protected IlgpuBackend(string name, Context context, Accelerator acc)
    {
        Name = name;
        _context = context;
        _acc = acc;
        _alloc = new IlgpuAllocator(acc);
        _s = acc.DefaultStream;
        int maxThreads = acc.MaxNumThreadsPerGroup;
        _rowGroup = PowerOfTwoAtMost(Math.Min(MaxGroup, maxThreads));
        _gemmT = maxThreads >= 256 ? 16 : maxThreads >= 64 ? 8 : 4;
        _attnGroup = PowerOfTwoAtMost(Math.Min(64, maxThreads));

        _fill = acc.LoadAutoGroupedKernel<Index1D, V, float>(IlgpuKernels.Fill);
        _binary = acc.LoadAutoGroupedKernel<Index1D, V, V, V, long, int>(Binary);
        _axpy = acc.LoadAutoGroupedKernel<Index1D, V, V, long, float, V>(AxpyBroadcast);
        _scale = acc.LoadAutoGroupedKernel<Index1D, V, float, V>(IlgpuKernels.Scale);
        _gelu = acc.LoadAutoGroupedKernel<Index1D, V, V>(IlgpuKernels.Gelu);
        _geluB = acc.LoadAutoGroupedKernel<Index1D, V, V, V>(IlgpuKernels.GeluBackward);
        _tanh = acc.LoadAutoGroupedKernel<Index1D, V, V>(IlgpuKernels.Tanh);
        _tanhB = acc.LoadAutoGroupedKernel<Index1D, V, V, V>(IlgpuKernels.TanhBackward);
        _addScalar = acc.LoadAutoGroupedKernel<Index1D, V, V>(AddScalarFrom);
        _colSums = acc.LoadAutoGroupedKernel<Index1D, V, V, long, int, V>(ColumnSums);
        _sumAtomic = acc.LoadKernel<V, V, int, float>(SumAtomic);
        _dropout = acc.LoadAutoGroupedKernel<Index1D, V, float, ulong, float, V, int>(IlgpuKernels.Dropout);
        _adamw = acc.LoadAutoGroupedKernel<Index1D, V, V, V, V, float, float, float, float, float, float, float>(IlgpuKernels.AdamW);
        _clipScale = acc.LoadAutoGroupedKernel<Index1D, V, V, float>(ClipScale);
        _sqrt = acc.LoadAutoGroupedKernel<Index1D, V>(SqrtInPlace);
        _swap = acc.LoadAutoGroupedKernel<Index1D, V, V, int, int, int, int>(IlgpuKernels.SwapAxes12);
        _seqCopy = acc.LoadAutoGroupedKernel<Index1D, V, V, int, int, int, int, int, int>(SeqCopy);
        _embed = acc.LoadAutoGroupedKernel<Index1D, VI, V, int, V>(IlgpuKernels.Embedding);
        _embedB = acc.LoadAutoGroupedKernel<Index1D, VI, V, int, V>(IlgpuKernels.EmbeddingBackward);
        _meanPool = acc.LoadAutoGroupedKernel<Index1D, V, VI, int, int, V>(IlgpuKernels.MeanPool);
        _meanPoolB = acc.LoadAutoGroupedKernel<Index1D, VI, V, int, int, V>(IlgpuKernels.MeanPoolBackward);
        _ln = acc.LoadKernel<V, V, V, float, int, V, V, V>(IlgpuKernels.LayerNorm);
        _lnBx = acc.LoadKernel<V, V, V, V, V, int, V>(LayerNormBackwardX);
        _lnBp = acc.LoadAutoGroupedKernel<Index1D, V, V, V, V, long, int, V, V>(LayerNormBackwardParams);
        _softmax = acc.LoadKernel<V, V, long, int, V>(IlgpuKernels.Softmax);
        _softmaxB = acc.LoadKernel<V, V, int, V>(IlgpuKernels.SoftmaxBackward);
        _l2 = acc.LoadKernel<V, float, int, V>(IlgpuKernels.L2Normalize);
        _l2B = acc.LoadKernel<V, V, float, int, V>(IlgpuKernels.L2NormalizeBackward);
        _ce = acc.LoadKernel<V, VI, int, float, V, V>(IlgpuKernels.CrossEntropy);
        _ceB = acc.LoadKernel<V, VI, V, V, int, float, V>(IlgpuKernels.CrossEntropyBackward);
        _bce = acc.LoadAutoGroupedKernel<Index1D, V, V, V>(Bce);
        _bceB = acc.LoadAutoGroupedKernel<Index1D, V, V, V, float, V>(BceBackward);
        _nceLse = acc.LoadKernel<V, int, int, V, V>(InfoNceLse);
        _nceColOff = acc.LoadKernel<V, V, int, V>(InfoNceColOff);
        _nceGrad = acc.LoadKernel<V, V, V, V, V, int, float>(InfoNceGrad);
        _gemm = acc.LoadKernel<V, V, V, V, GemmArgs>(Gemm);
        _attn = acc.LoadKernel<V, V, V, VI, AttnArgs, V, V>(IlgpuAttention.Forward);
        _attnB = acc.LoadKernel<V, V, V, VI, AttnArgs, V, V, V, V, V, V>(IlgpuAttention.Backward);
        _topkSelect = acc.LoadKernel<V, int, int, int, int, V, VI>(IlgpuTopK.Select);
        _topkWrite = acc.LoadAutoGroupedKernel<Index2D, V, VI, int, int, V, VI>(IlgpuTopK.Write);
        _topkGroup = PowerOfTwoAtMost(Math.Min(512, maxThreads));
    }

    private static int PowerOfTwoAtMost(int n)
    {
        int p = 1;
        while (p * 2 <= n) p *= 2;
        return p;
    }

    // ---------------------------------------------------------------- launchers (loaded once)
    private readonly Action<Stream, Index1D, V, float> _fill;
    private readonly Action<Stream, Index1D, V, V, V, long, int> _binary;
    private readonly Action<Stream, Index1D, V, V, long, float, V> _axpy;
    private readonly Action<Stream, Index1D, V, float, V> _scale;
    private readonly Action<Stream, Index1D, V, V> _gelu, _tanh, _addScalar;
    private readonly Action<Stream, Index1D, V, V, V> _geluB, _tanhB;
    private readonly Action<Stream, Index1D, V, V, long, int, V> _colSums;
    private readonly Action<Stream, KernelConfig, V, V, int, float> _sumAtomic;
    private readonly Action<Stream, Index1D, V, float, ulong, float, V, int> _dropout;
    private readonly Action<Stream, Index1D, V, V, V, V, float, float, float, float, float, float, float> _adamw;
    private readonly Action<Stream, Index1D, V, V, float> _clipScale;
    private readonly Action<Stream, Index1D, V> _sqrt;
    private readonly Action<Stream, Index1D, V, V, int, int, int, int> _swap;
    private readonly Action<Stream, Index1D, V, V, int, int, int, int, int, int> _seqCopy;
    private readonly Action<Stream, Index1D, VI, V, int, V> _embed, _embedB;
    private readonly Action<Stream, Index1D, V, VI, int, int, V> _meanPool;
    private readonly Action<Stream, Index1D, VI, V, int, int, V> _meanPoolB;
    private readonly Action<Stream, KernelConfig, V, V, V, float, int, V, V, V> _ln;
    private readonly Action<Stream, KernelConfig, V, V, V, V, V, int, V> _lnBx;
    private readonly Action<Stream, Index1D, V, V, V, V, long, int, V, V> _lnBp;
    private readonly Action<Stream, KernelConfig, V, V, long, int, V> _softmax;
    private readonly Action<Stream, KernelConfig, V, V, int, V> _softmaxB;
    private readonly Action<Stream, KernelConfig, V, float, int, V> _l2;
    private readonly Action<Stream, KernelConfig, V, V, float, int, V> _l2B;
    private readonly Action<Stream, KernelConfig, V, VI, int, float, V, V> _ce;
    private readonly Action<Stream, KernelConfig, V, VI, V, V, int, float, V> _ceB;
    private readonly Action<Stream, Index1D, V, V, V> _bce;
    private readonly Action<Stream, Index1D, V, V, V, float, V> _bceB;
    private readonly Action<Stream, KernelConfig, V, int, int, V, V> _nceLse;
    private readonly Action<Stream, KernelConfig, V, V, int, V> _nceColOff;
    private readonly Action<Stream, KernelConfig, V, V, V, V, V, int, float> _nceGrad;
    private readonly Action<Stream, KernelConfig, V, V, V, V, GemmArgs> _gemm;
    private readonly Action<Stream, KernelConfig, V, V, V, VI, AttnArgs, V, V> _attn;
    private readonly Action<Stream, KernelConfig, V, V, V, VI, AttnArgs, V, V, V, V, V, V> _attnB;
    private readonly Action<Stream, KernelConfig, V, int, int, int, int, V, VI> _topkSelect;
    private readonly Action<Stream, Index2D, V, VI, int, int, V, VI> _topkWrite;

    // ---------------------------------------------------------------- views
    private IlgpuStorage Own(Tensor t) => t.Storage as IlgpuStorage is { } s && ReferenceEquals(s.Backend, this)
        ? s : throw new BackendException($"{t} does not live on this {Name} backend");

    protected V F(Tensor t)
    {
        if (t.DType != DType.F32) throw new ShapeException($"{Name}: expected an f32 tensor, got {t.DType.Name()} {t.Shape}");
        return Own(t).Ints.Cast<float>().SubView(t.Offset, t.Numel);
    }

    protected V F(Tensor? t, bool _) => t is null ? V.Empty : F(t);

    protected VI I(Tensor t)
    {
        if (t.DType != DType.I32) throw new ShapeException($"{Name}: expected an i32 tensor, got {t.DType.Name()} {t.Shape}");
        return Own(t).Ints.SubView(t.Offset, t.Numel);
    }

    protected VI I(Tensor? t, bool _) => t is null ? VI.Empty : I(t);

    private KernelConfig Rows(long rows) => new(new Index1D(checked((int)rows)), new Index1D(_rowGroup));

    // ---------------------------------------------------------------- memory
    public Tensor Empty(Shape shape, DType dtype = DType.F32) => new(new IlgpuStorage(this, _alloc, shape.Numel, dtype), 0, shape, addRef: false);

    public virtual void Fill(Tensor x, float value)
    {
        if (x.Numel == 0) return;
        if (x.DType == DType.I32) { CopyFromHost(Enumerable.Repeat((int)value, (int)x.Numel).ToArray(), x); return; }
        _fill(_s, (int)x.Numel, F(x), value);
    }

    public virtual void Copy(Tensor src, Tensor dst)
    {
        Contract.SameShape("copy", "src", src, "dst", dst);
        if (src.DType != dst.DType) Contract.Fail("copy", $"dtypes differ: {src.DType.Name()} -> {dst.DType.Name()}");
        Own(src).Ints.SubView(src.Offset, src.Numel).CopyTo(_s, Own(dst).Ints.SubView(dst.Offset, dst.Numel));
    }

    /// <summary>Host halves into a device view of at least as many elements (synchronous, like the other copies).</summary>
    protected void UploadHalves(ReadOnlySpan<System.Half> src, ArrayView<System.Half> dst)
    {
        if (src.Length == 0) return;
        if (dst.Length < src.Length) Contract.Fail("copy", $"{src.Length} halves for a buffer of {dst.Length}");
        Synchronize();   // queued kernels may still read the old contents
        fixed (System.Half* p = src)
        {
            dst.SubView(0, src.Length).CopyFromCPU(_s, ref *p, src.Length);
            Synchronize();
        }
    }

    public virtual void CopyFromHost(ReadOnlySpan<float> src, Tensor dst)
    {
        if (src.Length != dst.Numel) Contract.Fail("copy", $"{src.Length} host values for a tensor of {dst.Shape}");
        if (src.Length == 0) return;
        Synchronize();   // queued kernels may still read the old contents
        // Pinned for the whole copy: the copy works on a raw address, and a GC may move an unpinned array meanwhile.
        fixed (float* p = src)
        {
            F(dst).CopyFromCPU(_s, ref *p, src.Length);
            Synchronize();
        }
    }

    public void CopyFromHost(ReadOnlySpan<int> src, Tensor dst)
    {
        if (src.Length != dst.Numel) Contract.Fail("copy", $"{src.Length} host values for a tensor of {dst.Shape}");
        if (src.Length == 0) return;
        Synchronize();
        fixed (int* p = src)
        {
            I(dst).CopyFromCPU(_s, ref *p, src.Length);
            Synchronize();
        }
    }

    public void CopyToHost(Tensor src, Span<float> dst)
    {
        if (dst.Length != src.Numel) Contract.Fail("copy", $"{dst.Length} host slots for a tensor of {src.Shape}");
        if (dst.Length == 0) return;
        Synchronize();
        fixed (float* p = dst)
        {
            F(src).CopyToCPU(_s, ref *p, dst.Length);
            Synchronize();
        }
    }

    public void CopyToHost(Tensor src, Span<int> dst)
    {
        if (dst.Length != src.Numel) Contract.Fail("copy", $"{dst.Length} host slots for a tensor of {src.Shape}");
        if (dst.Length == 0) return;
        Synchronize();
        fixed (int* p = dst)
        {
            I(src).CopyToCPU(_s, ref *p, dst.Length);
            Synchronize();
        }
    }

    public void Synchronize()
    {
        _s.Synchronize();
        _alloc.Reclaim();
    }

    // ---------------------------------------------------------------- matmul
    /// <summary>The GEMM behind MatMul and MatMulBackward (the Cuda backend's tensor-core kernel replaces it there).</summary>
    protected virtual void LaunchGemm(int m, int n, int k, V a, int lda, bool transA, long strideA, V b, int ldb, bool transB, long strideB,
        V c, int ldc, long strideC, int batch, V bias, bool accumulate)
        => LaunchGemmF32(m, n, k, a, lda, transA, strideA, b, ldb, transB, strideB, c, ldc, strideC, batch, bias, accumulate);

    /// <summary>
    /// The f32 ILGPU GEMM: C = op(A) op(B) (+ bias) (+ C). A [batch][m, k] (transA: [k, m]) with leading dim lda, B [batch][k, n]
    /// (transB: [n, k]), C [batch][m, n] with leading dim ldc; batch offsets are the strides (0 = shared). Ops whose accuracy
    /// needs f32 products (top-k scores, InfoNCE's gradient) call this one directly.
    /// </summary>
    protected void LaunchGemmF32(int m, int n, int k, V a, int lda, bool transA, long strideA, V b, int ldb, bool transB, long strideB,
        V c, int ldc, long strideC, int batch, V bias, bool accumulate)
    {
        if (m == 0 || n == 0 || batch == 0) return;
        int bt = _gemmT * GemmR;
        var p = new GemmArgs
        {
            M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc, TransA = transA ? 1 : 0, TransB = transB ? 1 : 0,
            HasBias = bias.Length > 0 ? 1 : 0, Accumulate = accumulate ? 1 : 0, T = _gemmT,
            StrideA = strideA, StrideB = strideB, StrideC = strideC, Alpha = 1f,
        };
        var grid = new Index3D((n + bt - 1) / bt, (m + bt - 1) / bt, batch);
        _gemm(_s, new KernelConfig(grid, new Index3D(_gemmT, _gemmT, 1)), a, b, bias, c, p);
    }

    public void MatMul(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transA, bool transB, bool accumulate = false)
    {
        var d = Contract.MatMul(a, b, bias, y, transA, transB);
        int lda = a.Shape[-1], ldb = b.Shape[-1];
        if (d.SharedB && !transA)
            LaunchGemm(d.Batch * d.M, d.N, d.K, F(a), lda, false, 0, F(b), ldb, transB, 0, F(y), d.N, 0, 1, F(bias, true), accumulate);
        else
            LaunchGemm(d.M, d.N, d.K, F(a), lda, transA, (long)d.M * d.K, F(b), ldb, transB, d.SharedB ? 0 : (long)d.K * d.N,
                F(y), d.N, (long)d.M * d.N, d.Batch, F(bias, true), accumulate);
    }

    public void MatMulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db, Tensor? dbias, bool transA, bool transB)
    {
        var d = Contract.MatMul(a, b, dbias, dy, transA, transB);
        Contract.SameShapeOrNull("matmul backward", "a", a, "da", da);
        Contract.SameShapeOrNull("matmul backward", "b", b, "db", db);
        int M = d.M, N = d.N, K = d.K, lda = a.Shape[-1], ldb = b.Shape[-1];
        long sa = (long)M * K, sb = d.SharedB ? 0 : (long)K * N, sy = (long)M * N;
        V A = F(a), B = F(b), DY = F(dy);
        if (da is not null)
        {
            if (!transA && d.SharedB) LaunchGemm(d.Batch * M, K, N, DY, N, false, 0, B, ldb, !transB, 0, F(da), K, 0, 1, V.Empty, true);
            else if (!transA) LaunchGemm(M, K, N, DY, N, false, sy, B, ldb, !transB, sb, F(da), K, sa, d.Batch, V.Empty, true);
            else LaunchGemm(K, M, N, B, ldb, transB, sb, DY, N, true, sy, F(da), M, sa, d.Batch, V.Empty, true);
        }
        if (db is not null)
        {
            if (d.SharedB && !transA)
            {
                int rows = d.Batch * M;
                if (!transB) LaunchGemm(K, N, rows, A, lda, true, 0, DY, N, false, 0, F(db), N, 0, 1, V.Empty, true);
                else LaunchGemm(N, K, rows, DY, N, true, 0, A, lda, false, 0, F(db), K, 0, 1, V.Empty, true);
            }
            else
            {
                // Per batch (a shared b accumulates every batch's product into the same db, one launch after another).
                int launches = d.SharedB ? d.Batch : 1, inner = d.SharedB ? 1 : d.Batch;
                for (int p = 0; p < launches; p++)
                {
                    var Ap = A.SubView(p * sa); var DYp = DY.SubView(p * sy);
                    if (!transB) LaunchGemm(K, N, M, Ap, lda, !transA, sa, DYp, N, false, sy, F(db), N, sb, inner, V.Empty, true);
                    else LaunchGemm(N, K, M, DYp, N, true, sy, Ap, lda, transA, sa, F(db), K, sb, inner, V.Empty, true);
                }
            }
        }
        if (dbias is not null) _colSums(_s, N, DY, V.Empty, (long)d.Batch * M, N, F(dbias));
    }

    // ---------------------------------------------------------------- elementwise
    public void Add(Tensor a, Tensor b, Tensor y)
    {
        var (_, inner) = Contract.Broadcast("add", a, b);
        Contract.SameShape("add", "a", a, "y", y);
        if (a.Numel > 0) _binary(_s, (int)a.Numel, F(a), F(b), F(y), Math.Max(1, inner), 0);
    }

    public void AddBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        if (da is not null)
        {
            Contract.SameShape("add backward", "dy", dy, "da", da);
            if (dy.Numel > 0) _axpy(_s, (int)dy.Numel, F(dy), V.Empty, 1, 1f, F(da));
        }
        if (db is null) return;
        var (outer, inner) = Contract.Broadcast("add backward", dy, db);
        if (inner > 0) _colSums(_s, (int)inner, F(dy), V.Empty, outer, (int)inner, F(db));
    }

    public void Mul(Tensor a, Tensor b, Tensor y)
    {
        var (_, inner) = Contract.Broadcast("mul", a, b);
        Contract.SameShape("mul", "a", a, "y", y);
        if (a.Numel > 0) _binary(_s, (int)a.Numel, F(a), F(b), F(y), Math.Max(1, inner), 1);
    }

    public void MulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db)
    {
        var (outer, inner) = Contract.Broadcast("mul backward", a, b);
        Contract.SameShape("mul backward", "a", a, "dy", dy);
        if (a.Numel == 0) return;
        if (da is not null) _axpy(_s, (int)a.Numel, F(dy), F(b), Math.Max(1, inner), 1f, F(da));
        if (db is not null) _colSums(_s, (int)inner, F(dy), F(a), outer, (int)inner, F(db));
    }

    public void Scale(Tensor x, float s, Tensor y)
    {
        Contract.SameShape("scale", "x", x, "y", y);
        if (x.Numel > 0) _scale(_s, (int)x.Numel, F(x), s, F(y));
    }

    public void ScaleBackward(Tensor dy, float s, Tensor dx)
    {
        Contract.SameShape("scale backward", "dy", dy, "dx", dx);
        if (dy.Numel > 0) _axpy(_s, (int)dy.Numel, F(dy), V.Empty, 1, s, F(dx));
    }

    public void Gelu(Tensor x, Tensor y)
    {
        Contract.SameShape("gelu", "x", x, "y", y);
        if (x.Numel > 0) _gelu(_s, (int)x.Numel, F(x), F(y));
    }

    public void GeluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        Contract.SameShape("gelu backward", "x", x, "dy", dy);
        Contract.SameShape("gelu backward", "x", x, "dx", dx);
        if (x.Numel > 0) _geluB(_s, (int)x.Numel, F(x), F(dy), F(dx));
    }

    public void Tanh(Tensor x, Tensor y)
    {
        Contract.SameShape("tanh", "x", x, "y", y);
        if (x.Numel > 0) _tanh(_s, (int)x.Numel, F(x), F(y));
    }

    public void TanhBackward(Tensor y, Tensor dy, Tensor dx)
    {
        Contract.SameShape("tanh backward", "y", y, "dy", dy);
        Contract.SameShape("tanh backward", "y", y, "dx", dx);
        if (y.Numel > 0) _tanhB(_s, (int)y.Numel, F(y), F(dy), F(dx));
    }

    /// <summary>acc[0] += scale * sum(x) (or of x^2): group tree sums, one atomic add per group.</summary>
    private void SumInto(V x, V acc, bool squares, float scale = 1f)
    {
        if (x.Length == 0) return;
        int groups = (int)Math.Clamp((x.Length + _rowGroup * 4 - 1) / (_rowGroup * 4), 1, 1024);
        _sumAtomic(_s, new KernelConfig(groups, _rowGroup), x, acc, squares ? 1 : 0, scale);
    }

    public void SumAll(Tensor x, Tensor y)
    {
        Contract.Scalar("sum", "y", y);
        _fill(_s, 1, F(y), 0f);
        SumInto(F(x), F(y), squares: false);
    }

    public void SumAllBackward(Tensor dy, Tensor dx)
    {
        Contract.Scalar("sum backward", "dy", dy);
        if (dx.Numel > 0) _addScalar(_s, (int)dx.Numel, F(dy), F(dx));
    }

    // ---------------------------------------------------------------- rows
    public virtual void LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor y, Tensor mean, Tensor rstd)
    {
        const string op = "layernorm";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.Dims(op, "gamma", gamma, c); Contract.Dims(op, "beta", beta, c);
        Contract.SameShape(op, "x", x, "y", y); Contract.Dims(op, "mean", mean, r); Contract.Dims(op, "rstd", rstd, r);
        if (r > 0) _ln(_s, Rows(r), F(x), F(gamma), F(beta), eps, c, F(y), F(mean), F(rstd));
    }

    public virtual void LayerNormBackward(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dgamma, Tensor? dbeta)
    {
        const string op = "layernorm backward";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "dy", dy); Contract.SameShapeOrNull(op, "x", x, "dx", dx);
        Contract.DimsOrNull(op, "dgamma", dgamma, c); Contract.DimsOrNull(op, "dbeta", dbeta, c);
        if (r == 0) return;
        if (dx is not null) _lnBx(_s, Rows(r), F(x), F(gamma), F(mean), F(rstd), F(dy), c, F(dx));
        if (dgamma is not null || dbeta is not null) _lnBp(_s, c, F(x), F(mean), F(rstd), F(dy), r, c, F(dgamma, true), F(dbeta, true));
    }

    public void Softmax(Tensor x, Tensor? mask, Tensor y)
    {
        const string op = "softmax";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.SameShape(op, "x", x, "y", y);
        long per = 1;
        if (mask is not null)
        {
            if (mask.Rank < 1 || mask.Shape[-1] != c) Contract.Fail(op, $"mask {mask.Shape} must end in {c}");
            long mr = mask.Shape.Rows;
            if (mr == 0 || r % mr != 0) Contract.Fail(op, $"mask rows ({mr}) must divide x rows ({r})");
            per = r / mr;
        }
        if (r > 0) _softmax(_s, Rows(r), F(x), F(mask, true), per, c, F(y));
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx)
    {
        const string op = "softmax backward";
        var (r, c) = Contract.Rows(op, "y", y);
        Contract.SameShape(op, "y", y, "dy", dy); Contract.SameShape(op, "y", y, "dx", dx);
        if (r > 0) _softmaxB(_s, Rows(r), F(y), F(dy), c, F(dx));
    }

    public void L2Normalize(Tensor x, float eps, Tensor y)
    {
        var (r, c) = Contract.Rows("l2 normalize", "x", x);
        Contract.SameShape("l2 normalize", "x", x, "y", y);
        if (r > 0) _l2(_s, Rows(r), F(x), eps, c, F(y));
    }

    public void L2NormalizeBackward(Tensor x, float eps, Tensor dy, Tensor dx)
    {
        var (r, c) = Contract.Rows("l2 normalize backward", "x", x);
        Contract.SameShape("l2 normalize backward", "x", x, "dy", dy);
        Contract.SameShape("l2 normalize backward", "x", x, "dx", dx);
        if (r > 0) _l2B(_s, Rows(r), F(x), F(dy), eps, c, F(dx));
    }

    // ---------------------------------------------------------------- attention and layout
    private AttnArgs AttnArgsOf(Contract.AttentionDims d, Tensor? keyMask, float scale)
    {
        if (d.D > IlgpuAttention.MaxD) throw new BackendException($"{Name}: attention head dim {d.D} > {IlgpuAttention.MaxD} is not supported");
        return new AttnArgs { H = d.H, Tq = d.Tq, Tk = d.Tk, D = d.D, HasMask = keyMask is null ? 0 : 1, Scale = scale };
    }

    private KernelConfig AttnGrid(Contract.AttentionDims d) =>
        new(new Index2D((d.Tq + _attnGroup - 1) / _attnGroup, d.B * d.H), new Index2D(_attnGroup, 1));

    public virtual void Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse)
    {
        var d = Contract.Attention(q, k, v, keyMask, o, lse);
        if (d.B * d.H * d.Tq == 0) return;
        _attn(_s, AttnGrid(d), F(q), F(k), F(v), I(keyMask, true), AttnArgsOf(d, keyMask, scale), F(o), F(lse));
    }

    public virtual void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv)
    {
        var d = Contract.AttentionBackward(q, k, v, keyMask, o, lse, dO, dq, dk, dv);
        if (d.B * d.H * d.Tq == 0) return;
        _attnB(_s, AttnGrid(d), F(q), F(k), F(v), I(keyMask, true), AttnArgsOf(d, keyMask, scale), F(o), F(lse), F(dO),
            F(dq, true), F(dk, true), F(dv, true));
    }

    public void SwapAxes12(Tensor x, Tensor y)
    {
        if (x.Rank != 4) Contract.Fail("swap axes", $"x must be rank 4, got {x.Shape}");
        Contract.Dims("swap axes", "y", y, x.Shape[0], x.Shape[2], x.Shape[1], x.Shape[3]);
        if (x.Numel > 0) _swap(_s, (int)x.Numel, F(x), F(y), x.Shape[1], x.Shape[2], x.Shape[3], 0);
    }

    public void SwapAxes12Backward(Tensor dy, Tensor dx)
    {
        if (dx.Rank != 4) Contract.Fail("swap axes backward", $"dx must be rank 4, got {dx.Shape}");
        Contract.Dims("swap axes backward", "dy", dy, dx.Shape[0], dx.Shape[2], dx.Shape[1], dx.Shape[3]);
        // dy [A, C, B, D] swapped back is [A, B, C, D]: the same kernel with the roles of B and C exchanged.
        if (dy.Numel > 0) _swap(_s, (int)dy.Numel, F(dy), F(dx), dx.Shape[2], dx.Shape[1], dx.Shape[3], 1);
    }

    private void CheckIds(string op, Tensor ids, int vocab)
    {
        var host = ids.ToArrayI32();
        for (int n = 0; n < host.Length; n++)
            if ((uint)host[n] >= (uint)vocab) Contract.Fail(op, $"id {host[n]} at position {n} is outside the vocabulary [0, {vocab})");
    }

    public void Embedding(Tensor ids, Tensor table, Tensor y)
    {
        const string op = "embedding";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        if (table.Rank != 2) Contract.Fail(op, $"table must be [V, C], got {table.Shape}");
        int c = table.Shape[1];
        Contract.Dims(op, "y", y, (int)ids.Numel, c);
        CheckIds(op, ids, table.Shape[0]);
        if (y.Numel > 0) _embed(_s, (int)y.Numel, I(ids), F(table), c, F(y));
    }

    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable)
    {
        const string op = "embedding backward";
        Contract.DTypeIs(op, "ids", ids, DType.I32);
        int c = dtable.Shape[1];
        Contract.Dims(op, "dy", dy, (int)ids.Numel, c);
        CheckIds(op, ids, dtable.Shape[0]);
        if (dy.Numel > 0) _embedB(_s, (int)dy.Numel, I(ids), F(dy), c, F(dtable));
    }

    public void Dropout(Tensor x, float p, ulong seed, Tensor y)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout", "x", x, "y", y);
        if (x.Numel > 0) _dropout(_s, (int)x.Numel, F(x), p, seed, 1f / (1f - p), F(y), 0);
    }

    public void DropoutBackward(Tensor dy, float p, ulong seed, Tensor dx)
    {
        Contract.Dropout(p);
        Contract.SameShape("dropout backward", "dy", dy, "dx", dx);
        if (dy.Numel > 0) _dropout(_s, (int)dy.Numel, F(dy), p, seed, 1f / (1f - p), F(dx), 1);
    }

    public void MeanPool(Tensor x, Tensor? mask, Tensor y)
    {
        var (b, t, c) = Contract.Seq("mean pool", "x", x);
        Contract.Mask("mean pool", mask, b, t);
        Contract.Dims("mean pool", "y", y, b, c);
        if (y.Numel > 0) _meanPool(_s, (int)y.Numel, F(x), I(mask, true), t, c, F(y));
    }

    public void MeanPoolBackward(Tensor? mask, Tensor dy, Tensor dx)
    {
        var (b, t, c) = Contract.Seq("mean pool backward", "dx", dx);
        Contract.Mask("mean pool backward", mask, b, t);
        Contract.Dims("mean pool backward", "dy", dy, b, c);
        if (dx.Numel > 0) _meanPoolB(_s, (int)dx.Numel, I(mask, true), F(dy), t, c, F(dx));
    }

    public void Concat(Tensor a, Tensor b, Tensor y)
    {
        var da = Contract.Seq("concat", "a", a); var db = Contract.Seq("concat", "b", b);
        if (da.B != db.B || da.C != db.C) Contract.Fail("concat", $"a {a.Shape} and b {b.Shape} differ outside the sequence dim");
        Contract.Dims("concat", "y", y, da.B, da.T + db.T, da.C);
        int ty = da.T + db.T;
        if (a.Numel > 0) _seqCopy(_s, (int)a.Numel, F(a), F(y), da.T, ty, da.C, 0, 0, 0);
        if (b.Numel > 0) _seqCopy(_s, (int)b.Numel, F(b), F(y), db.T, ty, da.C, da.T, 0, 0);
    }

    public void ConcatBackward(Tensor dy, Tensor? da, Tensor? db)
    {
        var d = Contract.Seq("concat backward", "dy", dy);
        int ta = da?.Shape[1] ?? d.T - db!.Shape[1];
        Contract.DimsOrNull("concat backward", "da", da, d.B, ta, d.C);
        Contract.DimsOrNull("concat backward", "db", db, d.B, d.T - ta, d.C);
        if (da is not null && da.Numel > 0) _seqCopy(_s, (int)da.Numel, F(da), F(dy), ta, d.T, d.C, 0, 1, 1);
        if (db is not null && db.Numel > 0) _seqCopy(_s, (int)db.Numel, F(db), F(dy), d.T - ta, d.T, d.C, ta, 1, 1);
    }

    public void Slice(Tensor x, int start, Tensor y)
    {
        var d = Contract.Seq("slice", "x", x);
        var g = Contract.Seq("slice", "y", y);
        if (g.B != d.B || g.C != d.C || start < 0 || start + g.T > d.T)
            Contract.Fail("slice", $"y {y.Shape} at {start} does not fit in x {x.Shape}");
        if (y.Numel > 0) _seqCopy(_s, (int)y.Numel, F(y), F(x), g.T, d.T, d.C, start, 0, 1);
    }

    public void SliceBackward(Tensor dy, int start, Tensor dx)
    {
        var d = Contract.Seq("slice backward", "dx", dx);
        var g = Contract.Seq("slice backward", "dy", dy);
        if (g.B != d.B || g.C != d.C || start < 0 || start + g.T > d.T)
            Contract.Fail("slice backward", $"dy {dy.Shape} at {start} does not fit in dx {dx.Shape}");
        if (dy.Numel > 0) _seqCopy(_s, (int)dy.Numel, F(dy), F(dx), g.T, d.T, d.C, start, 1, 0);
    }

    // ---------------------------------------------------------------- losses
    private int CheckTargets(string op, Tensor targets, int v)
    {
        var host = targets.ToArrayI32();
        int count = 0;
        for (int i = 0; i < host.Length; i++)
        {
            if (host[i] >= v) Contract.Fail(op, $"target {host[i]} at row {i} is outside [0, {v})");
            if (host[i] >= 0) count++;
        }
        return count;
    }

    public void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor lse)
    {
        const string op = "cross entropy";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.DTypeIs(op, "targets", targets, DType.I32); Contract.Dims(op, "targets", targets, n);
        Contract.Scalar(op, "loss", loss); Contract.Dims(op, "lse", lse, n);
        int count = CheckTargets(op, targets, v);
        _fill(_s, 1, F(loss), 0f);
        if (n > 0) _ce(_s, Rows(n), F(logits), I(targets), v, count > 0 ? 1f / count : 0f, F(loss), F(lse));
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        const string op = "cross entropy backward";
        var (n, v) = Contract.Rows(op, "logits", logits);
        Contract.SameShape(op, "logits", logits, "dlogits", dlogits);
        int count = CheckTargets(op, targets, v);
        if (n > 0 && count > 0) _ceB(_s, Rows(n), F(logits), I(targets), F(lse), F(dloss), v, 1f / count, F(dlogits));
    }

    public void BceWithLogits(Tensor x, Tensor targets, Tensor loss)
    {
        Contract.SameShape("bce", "x", x, "targets", targets);
        Contract.Scalar("bce", "loss", loss);
        _fill(_s, 1, F(loss), 0f);
        if (x.Numel == 0) return;
        using var terms = Empty(x.Shape);   // per-element terms, then a tree sum: a sum of atomics would round far worse
        _bce(_s, (int)x.Numel, F(x), F(targets), F(terms));
        SumInto(F(terms), F(loss), squares: false, scale: 1f / x.Numel);
    }

    public void BceWithLogitsBackward(Tensor x, Tensor targets, Tensor dloss, Tensor dx)
    {
        Contract.SameShape("bce backward", "x", x, "targets", targets);
        Contract.SameShape("bce backward", "x", x, "dx", dx);
        if (x.Numel > 0) _bceB(_s, (int)x.Numel, F(x), F(targets), F(dloss), 1f / x.Numel, F(dx));
    }

    /// <summary>S = t v^T * invT into a pooled [n, n] temporary (both softmaxes need all of it).</summary>
    private Tensor Similarity(Tensor t, Tensor v, int n, int dim, float invT)
    {
        var s = Empty(new Shape(n, n));
        var p = new GemmArgs { M = n, N = n, K = dim, Lda = dim, Ldb = dim, Ldc = n, TransB = 1, T = _gemmT, Alpha = invT };
        int bt = _gemmT * GemmR;
        if (n > 0) _gemm(_s, new KernelConfig(new Index3D((n + bt - 1) / bt, (n + bt - 1) / bt, 1), new Index3D(_gemmT, _gemmT, 1)), F(t), F(v), V.Empty, F(s), p);
        return s;
    }

    public virtual void InfoNce(Tensor t, Tensor v, float invTemperature, Tensor loss, Tensor lseRow, Tensor lseCol)
    {
        const string op = "infonce";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v); Contract.Scalar(op, "loss", loss);
        Contract.Dims(op, "lseRow", lseRow, n); Contract.Dims(op, "lseCol", lseCol, n);
        _fill(_s, 1, F(loss), 0f);
        if (n == 0) return;
        using var s = Similarity(t, v, n, dim, invTemperature);
        _nceLse(_s, Rows(n), F(s), n, 0, F(lseRow), F(loss));
        _nceLse(_s, Rows(n), F(s), n, 1, F(lseCol), F(loss));
    }

    public virtual void InfoNceBackward(Tensor t, Tensor v, float invTemperature, Tensor lseRow, Tensor lseCol, Tensor dloss, Tensor? dt, Tensor? dv)
    {
        const string op = "infonce backward";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v);
        Contract.SameShapeOrNull(op, "t", t, "dt", dt); Contract.SameShapeOrNull(op, "v", v, "dv", dv);
        if (n == 0) return;
        using var s = Similarity(t, v, n, dim, invTemperature);
        using var colOff = Empty(new Shape(n));
        _nceColOff(_s, Rows(n), F(s), F(lseCol), n, F(colOff));
        _nceGrad(_s, Rows(n), F(s), F(lseRow), F(lseCol), F(colOff), F(dloss), n, invTemperature / n);
        if (dt is not null) LaunchGemmF32(n, dim, n, F(s), n, false, 0, F(v), dim, false, 0, F(dt), dim, 0, 1, V.Empty, true);
        if (dv is not null) LaunchGemmF32(n, dim, n, F(s), n, true, 0, F(t), dim, false, 0, F(dv), dim, 0, 1, V.Empty, true);
    }

    // ---------------------------------------------------------------- retrieval
    public virtual void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopK(queries, corpus, k, scores, indices);
        if (q == 0) return;
        int k2 = PowerOfTwoAtMost(k);
        if (k2 < k) k2 *= 2;
        int w = IlgpuTopK.W;
        using var tile = Empty(new Shape(q, w));                   // [Q, W] scores of one corpus tile
        using var bestS = Empty(new Shape(q, k2));                 // running best, sorted
        using var bestI = Empty(new Shape(q, k2), DType.I32);
        V C = F(corpus);
        for (int t0 = 0; t0 < n; t0 += w)
        {
            int cols = Math.Min(w, n - t0);
            LaunchGemmF32(q, cols, d, F(queries), d, false, 0, C.SubView((long)t0 * d), d, true, 0, F(tile), w, 0, 1, V.Empty, false);
            _topkSelect(_s, new KernelConfig(q, _topkGroup), F(tile), t0, cols, k2, t0 == 0 ? 1 : 0, F(bestS), I(bestI));
        }
        _topkWrite(_s, new Index2D(q, k), F(bestS), I(bestI), k2, k, F(scores), I(indices));
    }

    // ---------------------------------------------------------------- optimiser
    public virtual void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWParams p, int step)
    {
        Contract.SameShape("adamw", "param", param, "grad", grad);
        Contract.SameShape("adamw", "param", param, "m", m);
        Contract.SameShape("adamw", "param", param, "v", v);
        if (step < 1) Contract.Fail("adamw", $"step counts from 1, got {step}");
        float c1 = 1f / (1f - MathF.Pow(p.Beta1, step)), c2 = 1f / (1f - MathF.Pow(p.Beta2, step));
        if (param.Numel > 0)
            _adamw(_s, (int)param.Numel, F(param), F(grad), F(m), F(v), p.LearningRate, p.Beta1, p.Beta2, p.Eps, p.WeightDecay, c1, c2);
    }

    public void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm)
    {
        Contract.Scalar("clip grad norm", "norm", norm);
        // Sum of squares into norm[0]; every grad is scaled on the device from it (no host round trip); then sqrt.
        _fill(_s, 1, F(norm), 0f);
        foreach (var g in grads) SumInto(F(g), F(norm), squares: true);
        foreach (var g in grads) if (g.Numel > 0) _clipScale(_s, (int)g.Numel, F(g), F(norm), maxNorm);
        _sqrt(_s, 1, F(norm));
    }

    public virtual void Dispose()
    {
        _s.Synchronize();
        _alloc.Dispose();
        _acc.Dispose();
        _context.Dispose();
    }
}
