using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using KernelVL.Autograd;
using KernelVL.Backends.Ilgpu;
using KernelVL.Cuda;
using KernelVL.Tensors;
using KernelVL.Testing;
using V = ILGPU.ArrayView<float>;

namespace KernelVL.Backends.Cuda;

/// <summary>
/// The ILGPU backend on ILGPU's CUDA accelerator, with the hand-written kernels of kernels/*.cu taking over the hot ops:
/// the GEMM behind MatMul and MatMulBackward (tensor cores, bf16 operands, f32 accumulation), attention forward at head
/// dim 64, layer norm forward, the fused InfoNCE loss and its gradient, and top-k search. Everything else, and the shapes
/// those kernels do not take (other head dims, huge grids), runs the ILGPU kernels. Both share ILGPU's context, default
/// stream and pooled buffers, so the ops stay ordered and no memory is copied between them. Modules are loaded once, in
/// the constructor (NVRTC CUBIN for the device where it can, else the embedded PTX: <see cref="KernelSources"/>).
/// </summary>
public sealed class CudaBackend : IlgpuBackend, IHalfRowsTopK, IOpBudgets
{
    public const string BackendName = "cuda";
    private const int MaxGridYZ = 65535;
    private const int TopKChunk = 1024, TopKMaxDim = 9216;   // topk.cu: rows per chunk; the query lives in dynamic shared memory
    private const int NceTile = 64;
    // topk.cu version 2 (topk_tc_f16): tile sizes and dynamic shared memory, as the kernel defines them.
    private const int TcQueries = 128, TcRows = 256, TcMaxList = 64, TcMaxK = 48;
    internal const int TcSharedBytes = 3 * (TcQueries * 32 * 2 + TcRows * 32 * 2) + TcQueries * (2 * TcMaxList + 2 * 64) * 4 + TcQueries * 3 * 4 + 16;

    private static readonly string[] Kernels = ["gemm", "attention", "layernorm", "infonce", "topk"];

    private readonly CudaDriver _driver;
    private readonly CudaModules _modules;
    private readonly nint _context, _stream;
    private readonly KernelArgs _args = new();
    private readonly nint _gemm, _attn64, _layerNorm, _nceDiag, _nceTiles, _nceCombine, _sum, _nceBackTiles, _nceBackDiag, _topkChunks, _topkChunksF16, _topkMerge;
    private readonly nint _tcQueries, _tcMaxNorm, _tcScore, _tcRescore, _gemm2, _toBf16, _attn64v2;

    /// <summary>
    /// Which attention forward runs at head dim 64: 1 (64 query rows a block, synchronous K/V staging), 2 (128 rows,
    /// the next K/V tile loaded while the current one is multiplied, ldmatrix) or 3 (version 2 with both products on
    /// Hopper's wgmma, Q and P from registers; version 2 where unavailable). Defaults to the KERNELVL_CUDA_ATTENTION
    /// environment variable, else 1: a newer version becomes the default once it has passed on a GPU.
    /// </summary>
    public int AttentionVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_ATTENTION") switch { "2" => 2, "3" => 3, _ => 1 };

    /// <summary>Why attention version 3 (gemm_sm90.cu's attention_forward_d64_wgmma: version 2 on wgmma) cannot run here, or null.</summary>
    public string? AttentionV3Unavailable { get; }
    internal const int Attn3SharedBytes = 6 * 64 * 128 + 3 * 64 * 4 + 1024;   // K and V^T triple-buffered, mask bias, alignment
    private const int Gemm2Rows = 128, Gemm2Cols = 256;
    internal const int Gemm2SharedBytes = 4 * (128 + 256) * 64;                                       // gemm.cu version 2
    internal const int Gemm3SharedBytes = 4 * (128 + 256) * 128 + 1024;                               // gemm_sm90.cu (version 3)
    internal const int Gemm4SharedBytes = Gemm3SharedBytes + 2 * 4 * 8, Gemm4Threads = 288;         // version 4: + 8 mbarriers
    internal const int Tc3Threads = 384;   // top-k version 3: two consumer warpgroups + a producer warpgroup (setmaxnreg)
    internal const int Tc3SharedBytes = 3 * (128 + 256) * 128 + 1024 + 2 * (64 * (4 * 32) * 4 + 64 * 3 * 4 + 16) + 2 * 3 * 8;   // top-k version 3: stages, alignment, two warpgroups' lists, mbarriers
    private readonly CudaModules? _sm90;
    private readonly nint _gemm3, _gemmF32x3, _lnBackDx, _lnBackPartial, _lnBackCombine, _attnDelta, _attnDkDv, _attnDq, _spin, _l2Flush;
    private readonly nint _nceDiagOf, _nceStats, _nceBackTilesOf, _gemm4, _tc3, _gemmTf32x3, _splitTf32, _attn3, _splitReduce, _gemm4x2, _tc3x4;
    private readonly int _gemm4Clusters;   // clusters of two of gemm_bf16_wgmma_tma_x2 that the device runs at once
    private readonly int _topk3Clusters;   // clusters of four of topk_tc_f16_wgmma_x4 that the device runs at once

    /// <summary>Why the Hopper 3xTF32 GEMM (PreciseGemmVersion 3, gemm_sm90.cu's gemm_tf32x3_wgmma_tma) cannot run here, or null.</summary>
    public string? PreciseGemmV3Unavailable { get; }

    /// <summary>Why top-k version 3 (gemm_sm90.cu's topk_tc_f16_wgmma) cannot run here, or null.</summary>
    public string? TopKV3Unavailable { get; }

    /// <summary>Why top-k version 3 in clusters of four (topk_tc_f16_wgmma_x4) cannot run here (version 3's reasons, a driver without cluster launches), or null.</summary>
    public string? TopKV3ClusterUnavailable { get; }

    /// <summary>
    /// Blocks a cluster for top-k version 3: 1 (every block loads its queries and the corpus tiles) or 4 (four query
    /// tiles score the same corpus tiles: each loads a quarter of a corpus tile and TMA multicasts it into all four, so
    /// L2 serves 24 KB a stage per block instead of 48; topk_tc_f16_wgmma_x4, used where the query tiles are a multiple
    /// of four or at least 16, version 3 unclustered elsewhere). Defaults to KERNELVL_CUDA_TOPK_CLUSTER, else 1: 4
    /// becomes the default once it has run faster on a GPU.
    /// </summary>
    public int TopKCluster { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_TOPK_CLUSTER") == "4" ? 4 : 1;

    /// <summary>Which scorer the last <see cref="TopKF16"/> call ran: "v1", "v2 mma.sync" or "v3 wgmma + TMA" (a version 3 request
    /// runs version 2 where version 3 cannot: k over 16, an unavailable device, an operand TMA cannot map).</summary>
    public string LastTopKScorer { get; private set; } = "";

    /// <summary>Why gemm_sm90.cu version 4 (TMA + warp-specialised wgmma) cannot run here (version 3's reasons, or a driver without tensor maps), or null.</summary>
    public string? GemmV4Unavailable { get; }

    /// <summary>Why version 4 in clusters of two blocks (gemm_bf16_wgmma_tma_x2) cannot run here (version 4's reasons, a driver without cluster launches, no cluster resident), or null.</summary>
    public string? GemmV4ClusterUnavailable { get; }

    /// <summary>
    /// Blocks a cluster for GEMM version 4: 1 (every block loads its own A and B tiles) or 2 (two blocks with the same
    /// column tile and adjacent row tiles share B: each loads half of it and TMA multicasts that half into both, so L2
    /// serves 32 KB a stage per block instead of 48; gemm_bf16_wgmma_tma_x2, version 4 unclustered where unavailable).
    /// Defaults to KERNELVL_CUDA_GEMM_CLUSTER, else 1: 2 becomes the default once it has run faster on a GPU.
    /// </summary>
    public int GemmCluster { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_GEMM_CLUSTER") == "2" ? 2 : 1;

    /// <summary>The cluster size the last version-4 GEMM ran with (1 or 2), or 0 before any.</summary>
    public int LastGemmCluster { get; private set; }

    /// <summary>
    /// The InfoNCE loss and gradient: 1 (infonce.cu version 1: S recomputed in 64x64 f32 FMA tiles by the forward and the
    /// backward, the gradient GEMMs per <see cref="PreciseGemmVersion"/>) or 2 (S = invT t v^T once per call on
    /// gemm_f32x3's tensor cores into an [N, N] buffer, the loss and G bandwidth-bound passes over it, G in place, the
    /// gradient GEMMs on gemm_f32x3). Version 2 needs N^2 floats of device memory and runs for N up to
    /// <see cref="InfoNceV2MaxN"/> (version 1 above). Defaults to KERNELVL_CUDA_INFONCE, else 1: version 2 becomes the
    /// default once it has passed on a GPU.
    /// </summary>
    public int InfoNceVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_INFONCE") == "2" ? 2 : 1;

    /// <summary>
    /// The parity registry's budget for ops this configuration computes less exactly than f32 (<see cref="IOpBudgets"/>):
    /// InfoNCE version 2's S on 3xTF32 (hi + lo tf32 split, lo x lo dropped) keeps ~21 bits of each product where f32
    /// FMA keeps 24, so S carries up to ~8x f32's relative error, and at small N the loss is that error itself (each
    /// term a difference of scores). Measured on the emulated driver (2026-11-28): the registry's N 2 case over 5000
    /// seeds, max 5.7e-6, 4 seeds above the f32 budget of 5e-6 (p99.9 4.6e-6), against 2.6e-6 worst of 1000 for
    /// version 1's f32 tiles; 1e-5, the backward's own budget, which the backward meets in both versions (worst 7.2e-6,
    /// the cpu backend's 6.9e-6). Version 1 and every other backend keep 5e-6.
    /// </summary>
    public double? BudgetFor(string op) => op == "infonce" && InfoNceVersion == 2 ? InfoNceTf32x3Budget : null;

    /// <summary>InfoNCE version 2's loss budget in the parity registry (<see cref="BudgetFor"/>).</summary>
    public const double InfoNceTf32x3Budget = 1e-5;

    /// <summary>The largest batch InfoNCE version 2 takes: its [N, N] f32 score buffer stays within 1 GiB.</summary>
    public const int InfoNceV2MaxN = 16384;

    /// <summary>
    /// InfoNCE version 2 keeps the forward's S [N, N] for the backward that follows it (the autograd node's), which then
    /// turns it into G in place instead of computing S again (the backward's three f32-accurate GEMMs become two). One
    /// S is kept: that of the last forward, while N^2 floats are at most <see cref="InfoNceKeepMaxBytes"/>; the
    /// backward takes it only when its lseRow tensor is that forward's and t, v (device addresses) and 1/tau are the
    /// same, and releases it (it holds G afterwards); any other backward computes S as before. What the backward
    /// already requires makes this exact: t and v unchanged since the forward that wrote lseRow. A forward whose
    /// backward never comes (an evaluation without a tape) leaves its S held until the next InfoNCE forward,
    /// ReleaseInfoNceScores or Dispose: one S at most. Defaults to on; KERNELVL_CUDA_INFONCE_KEEP=0 turns it off.
    /// <see cref="InfoNceScoresKept"/> says whether one is held.
    /// </summary>
    public bool KeepInfoNceScores { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_INFONCE_KEEP") != "0";

    /// <summary>The most device memory a kept InfoNCE score matrix may hold (N 8192).</summary>
    public const long InfoNceKeepMaxBytes = 256L << 20;

    /// <summary>Whether an InfoNCE forward's S is held for its backward (<see cref="KeepInfoNceScores"/>).</summary>
    public bool InfoNceScoresKept => _nceKept is not null;

    /// <summary>How many InfoNCE backward calls took the forward's S (diagnostics and tests).</summary>
    public int InfoNceScoresReused { get; private set; }

    private sealed record NceKept(Tensor S, Tensor LseRow, nint T, nint V, float InvTemperature);
    private NceKept? _nceKept;

    /// <summary>Frees a kept InfoNCE score matrix (also done by the next forward, the backward that takes it, and Dispose).</summary>
    public void ReleaseInfoNceScores()
    {
        _nceKept?.S.Dispose();
        _nceKept = null;
    }

    /// <summary>
    /// Attention backward at head dim 64: 1 (the ILGPU kernel) or 2 (attention.cu: dK/dV over key tiles and dQ over
    /// query tiles on the tensor cores, no atomics). Defaults to KERNELVL_CUDA_ATTENTION_BACKWARD, else 1.
    /// </summary>
    public int AttentionBackwardVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_ATTENTION_BACKWARD") == "2" ? 2 : 1;

    /// <summary>
    /// Layer norm backward: 1 (the ILGPU kernels; dgamma/dbeta one thread per column over every row) or 2 (layernorm.cu:
    /// a block per row for dx, column sums over row chunks). Defaults to KERNELVL_CUDA_LAYERNORM_BACKWARD, else 1.
    /// </summary>
    public int LayerNormBackwardVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_LAYERNORM_BACKWARD") == "2" ? 2 : 1;

    /// <summary>
    /// The f32-accurate GEMM behind the InfoNCE gradient (and InfoNCE version 2's scores): 1 (the ILGPU f32 kernel on
    /// the CUDA cores), 2 (gemm.cu's gemm_f32x3: three tf32 mma.sync products of split operands) or 3 (the same split
    /// written K-major by split_tf32_kmajor, then gemm_sm90.cu's wgmma + TMA kernel; version 2 where unavailable).
    /// InfoNCE version 2 takes version 2 when this is 1. Defaults to KERNELVL_CUDA_GEMM_F32, else 1: a newer version
    /// becomes the default once it has passed on a GPU.
    /// </summary>
    public int PreciseGemmVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_GEMM_F32") switch { "2" => 2, "3" => 3, _ => 1 };

    /// <summary>Why gemm_sm90.cu (version 3, wgmma) cannot run here (not Hopper, no NVRTC, a failed compile), or null.</summary>
    public string? GemmV3Unavailable { get; }

    /// <summary>Why gemm.cu version 2 cannot run on this device (too little shared memory), or null.</summary>
    public string? GemmV2Unavailable { get; }

    /// <summary>
    /// Which GEMM MatMul, MatMulBackward and MatMulGelu run: 1 (f32 operands rounded to bf16 while staging, register
    /// double buffer), 2 (operands first converted to K-major bf16 in memory, then the cp.async/ldmatrix kernel) or
    /// 3 (the same operands on Hopper's wgmma, kernels/gemm_sm90.cu; version 2 where it is unavailable) or 4 (version 3's
    /// tiles fed by TMA with a producer warp and mbarriers; version 3, then 2, where unavailable or where an operand's
    /// strides do not meet TMA's rules; every version needs 16-byte aligned rows, which MatMulBf16 checks). Defaults to
    /// the KERNELVL_CUDA_GEMM environment variable, else 1: a newer version becomes the default once it has passed on a GPU.
    /// </summary>
    public int GemmVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_GEMM") switch { "2" => 2, "3" => 3, "4" => 4, _ => 1 };

    /// <summary>
    /// Whether version 4 splits K where its tiles would leave most multiprocessors idle (<see cref="Gemm4KSteps"/>);
    /// on unless KERNELVL_CUDA_GEMM_SPLITK=0. <see cref="LastGemmSplits"/> says how many splits the last version-4 call used.
    /// </summary>
    public bool GemmSplitK { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_GEMM_SPLITK") != "0";

    /// <summary>
    /// Whether version 4 runs persistent (one block per multiprocessor taking turns over the tiles, the next tile's
    /// stages loading during the last one's epilogue) or one block per tile; persistent unless KERNELVL_CUDA_GEMM_PERSISTENT=0.
    /// </summary>
    public bool GemmPersistent { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_GEMM_PERSISTENT") != "0";

    /// <summary>The K splits of the last GEMM version 4 ran (1: none), or 0 before any.</summary>
    public int LastGemmSplits { get; private set; }
    private readonly int _multiprocessors;

    /// <summary>Why topk.cu version 2 cannot run on this device (too little shared memory), or null.</summary>
    public string? TopKV2Unavailable { get; }

    /// <summary>
    /// Which top-k kernels <see cref="TopKF16"/> runs: 1 (exact f32 scoring on the CUDA cores, chunk sorts), 2 (tensor-core
    /// scoring, exact rescoring of candidates, version 1 for any query whose certificate fails) or 3 (version 2 with the
    /// scores from Hopper's wgmma fed by TMA, k up to 16; version 2 elsewhere). Defaults to the KERNELVL_CUDA_TOPK
    /// environment variable, else 1: a newer version becomes the default once it has passed on a GPU.
    /// </summary>
    public int TopKVersion { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_TOPK") switch { "2" => 2, "3" => 3, _ => 1 };

    /// <summary>Queries of the last version-2 <see cref="TopKF16"/> call that failed the certificate and ran version 1.</summary>
    public int LastTopKFallbacks { get; private set; }

    /// <summary>How each kernel file was loaded (NVRTC CUBIN for the device, from the cache or fresh, or the embedded PTX).</summary>
    public IReadOnlyList<KernelSource> KernelSources =>
        _sm90 is not null ? [.. _modules.Sources, .. _sm90.Sources]
        : GemmV3Unavailable is { } why ? [.. _modules.Sources, new KernelSource("gemm_sm90", "not loaded", why)] : _modules.Sources;

    /// <summary>An entry of the sm_90a module with its dynamic shared memory allowed: null, or why it cannot run.</summary>
    private string? Sm90Entry(string entry, int sharedBytes, out nint function)
    {
        function = 0;
        try
        {
            function = Fn(_sm90!, "gemm_sm90", entry);
            _driver.SetMaxDynamicSharedMemory(function, sharedBytes);
            return null;
        }
        catch (KernelVLException e)
        {
            return $"{entry}: {e.Message.Split('\n')[0]}";
        }
    }

    /// <summary>The registers a thread of top-k version 3 starts with (its __launch_bounds__(384, 1): 65536 / 384, rounded
    /// down to a multiple of 8).</summary>
    internal const int Tc3Registers = 168;

    /// <summary>
    /// Null if <paramref name="entry"/> (top-k version 3) starts with the <see cref="Tc3Registers"/> a thread that its
    /// setmaxnreg split assumes, else why not: the producer warpgroup gives registers back (setmaxnreg.dec 40) and the two
    /// consumer warpgroups take them (setmaxnreg.inc 232), 40 x 128 + 232 x 256 = 168 x 384; started with fewer, the
    /// increase waits for registers the block does not have, and the launch hangs. ptxas normally allocates exactly 168
    /// (or warns, C7508, and drops the split); this reads what the loaded CUBIN or JIT-compiled PTX really got, so that
    /// a compiler that differs falls back to version 2 instead of hanging the first run on a new card.
    /// </summary>
    private string? SetmaxnregSplit(string entry, nint function)
    {
        try
        {
            int regs = _driver.Registers(function);
            return regs == Tc3Registers ? null
                : $"{entry}: {regs} registers a thread, where its setmaxnreg split (40 x 128 + 232 x 256 = {Tc3Registers} x 384) needs {Tc3Registers}: it could hang";
        }
        catch (KernelVLException e)
        {
            return $"{entry}: {e.Message.Split('\n')[0]}";
        }
    }

    /// <summary>Null, with how many clusters of <paramref name="entry"/> (<paramref name="clusterX"/> blocks each) the device holds at
    /// once, or why it holds none.</summary>
    private string? ClusterOccupancy(string entry, nint function, uint threads, uint sharedBytes, uint clusterX, out int clusters)
    {
        clusters = 0;
        try
        {
            clusters = _driver.MaxActiveClusters(function, threads, sharedBytes, clusterX);
            return clusters > 0 ? null : $"{entry}: the device runs no cluster of {clusterX} such blocks at once";
        }
        catch (KernelVLException e)
        {
            return $"{entry}: {e.Message.Split('\n')[0]}";
        }
    }

    /// <summary>Whether each opt-in kernel version can run on this device, or why not: one line each, for info --probe and the perf logs.</summary>
    public IReadOnlyList<string> VersionAvailability =>
    [
        $"gemm v2 (bf16 cp.async + mma.sync): {GemmV2Unavailable ?? "available"}",
        $"gemm v3 (wgmma): {GemmV3Unavailable ?? "available"}",
        $"gemm v4 (TMA + warp-specialised wgmma): {GemmV4Unavailable ?? "available"}",
        $"gemm v4 in clusters of 2 (B multicast): {GemmV4ClusterUnavailable ?? $"available ({_gemm4Clusters} clusters resident)"}",
        $"gemm f32 v3 (3xTF32 on wgmma + TMA): {PreciseGemmV3Unavailable ?? "available"}",
        $"attention v3 (wgmma): {AttentionV3Unavailable ?? "available"}",
        $"topk v2 (mma.sync f16): {TopKV2Unavailable ?? "available"}",
        $"topk v3 (wgmma + TMA f16): {TopKV3Unavailable ?? "available"}",
        $"topk v3 in clusters of 4 (corpus multicast): {TopKV3ClusterUnavailable ?? $"available ({_topk3Clusters} clusters resident)"}",
        $"selected: gemm v{GemmVersion}, gemm f32 v{PreciseGemmVersion}, topk v{TopKVersion}, attention v{AttentionVersion}, "
            + $"gemm v4 cluster {GemmCluster}, topk v3 cluster {TopKCluster}, attention backward v{AttentionBackwardVersion}, layernorm backward v{LayerNormBackwardVersion}, infonce v{InfoNceVersion}{(InfoNceVersion == 2 && KeepInfoNceScores ? " (S kept for the backward)" : "")}",
    ];

    /// <summary>Null when this machine can run the backend, else why not.</summary>
    public static string? Unavailable()
    {
        try
        {
            if (CudaDriver.Load(DriverOverride).IsEmulator) return null;
        }
        catch (BackendException e)
        {
            return e.Message;
        }
        return CudaUnavailable();
    }

    /// <summary>
    /// KERNELVL_CUDA_DRIVER: a driver library to load in place of libcuda.so.1. Meant for the host emulator's
    /// (kernels/emu/build-driver.sh): with it, this backend, the parity registry (perf check --backend cuda) and
    /// perf/gpu/run-v2.sh's checks run on a machine without a GPU, slowly (small shapes only).
    /// </summary>
    public const string DriverVariable = "KERNELVL_CUDA_DRIVER";

    private static string? DriverOverride => Environment.GetEnvironmentVariable(DriverVariable) is { Length: > 0 } p ? p : null;

    public static CudaBackend Create()
    {
        string? driver = DriverOverride;
        if (driver is not null && CudaDriver.Load(driver).IsEmulator) return CreateEmulated(driver);
        var (context, acc) = CreateDevice(BackendName, d => d.AcceleratorType == AcceleratorType.Cuda);
        return new CudaBackend(context, acc, driver);
    }

    /// <summary>
    /// This backend without a GPU, for tests: the driver is the host emulator's (<paramref name="driverLibrary"/>, built
    /// by kernels/emu/build-driver.sh), which runs every kernel of kernels/*.cu on the emulator, and the ILGPU side runs
    /// on ILGPU's CPU accelerator, whose buffers are host memory. It describes an H100 (sm_90, 132 multiprocessors), so
    /// every version's host code runs as it would there, Hopper kernels included (no NVRTC: the emulator has the
    /// sources compiled in). Slow (one fiber per CUDA thread): small shapes only.
    /// </summary>
    public static CudaBackend CreateEmulated(string driverLibrary)
    {
        var (context, acc) = CreateDevice(BackendName, d => d.AcceleratorType == AcceleratorType.CPU);
        return new CudaBackend(context, acc, driverLibrary);
    }

    /// <summary>Whether the kernels run on the host emulator (<see cref="CreateEmulated"/>).</summary>
    public bool Emulated { get; }

    private CudaBackend(Context context, Accelerator acc, string? driverLibrary) : base(BackendName, context, acc)
    {
        try
        {
            _driver = CudaDriver.Load(driverLibrary);
            Emulated = _driver.IsEmulator;
            _context = acc.NativePtr;
            _driver.SetCurrentContext(_context);
            _stream = acc.DefaultStream is CudaStream cs ? cs.StreamPtr
                : Emulated ? 0 : throw new BackendException($"the {BackendName} backend needs ILGPU's CUDA accelerator, got {acc.AcceleratorType}");
            if (Emulated && acc.AcceleratorType != AcceleratorType.CPU)
                throw new BackendException($"the emulated driver runs kernels on host memory: it needs ILGPU's CPU accelerator, got {acc.AcceleratorType}");
            _modules = new CudaModules(_driver, Kernels, useNvrtc: !Emulated);
            _gemm = Fn(_modules, "gemm", "gemm_bf16");
            _attn64 = Fn(_modules, "attention", "attention_forward_d64");
            _layerNorm = Fn(_modules, "layernorm", "layernorm_forward");
            _nceDiag = Fn(_modules, "infonce", "infonce_diag");
            _nceTiles = Fn(_modules, "infonce", "infonce_forward_tiles");
            _nceCombine = Fn(_modules, "infonce", "infonce_combine");
            _sum = Fn(_modules, "infonce", "sum_scaled_f64");
            _nceBackTiles = Fn(_modules, "infonce", "infonce_backward_tiles");
            _nceBackDiag = Fn(_modules, "infonce", "infonce_backward_diag");
            _topkChunks = Fn(_modules, "topk", "topk_chunks");
            _topkChunksF16 = Fn(_modules, "topk", "topk_chunks_f16");
            _topkMerge = Fn(_modules, "topk", "topk_merge");
            _tcQueries = Fn(_modules, "topk", "topk_f16_queries");
            _tcMaxNorm = Fn(_modules, "topk", "topk_f16_max_norm");
            _tcScore = Fn(_modules, "topk", "topk_tc_f16");
            _tcRescore = Fn(_modules, "topk", "topk_f16_rescore");
            _gemm2 = Fn(_modules, "gemm", "gemm_bf16_tn");
            _gemmF32x3 = Fn(_modules, "gemm", "gemm_f32x3");
            _splitTf32 = Fn(_modules, "gemm", "split_tf32_kmajor");
            _nceDiagOf = Fn(_modules, "infonce", "infonce_diag_of");
            _nceStats = Fn(_modules, "infonce", "infonce_stats_tiles");
            _nceBackTilesOf = Fn(_modules, "infonce", "infonce_backward_tiles_of");
            _lnBackDx = Fn(_modules, "layernorm", "layernorm_backward_dx");
            _attnDelta = Fn(_modules, "attention", "attention_backward_delta");
            _attnDkDv = Fn(_modules, "attention", "attention_backward_dkdv_d64");
            _attnDq = Fn(_modules, "attention", "attention_backward_dq_d64");
            _lnBackPartial = Fn(_modules, "layernorm", "layernorm_backward_params_partial");
            _lnBackCombine = Fn(_modules, "layernorm", "layernorm_backward_params_combine");
            _spin = Fn(_modules, "layernorm", "kv_spin");
            _l2Flush = Fn(_modules, "layernorm", "kv_l2_flush");
            _attn64v2 = Fn(_modules, "attention", "attention_forward_d64_v2");
            _toBf16 = Fn(_modules, "gemm", "convert_bf16_kmajor");
            _splitReduce = Fn(_modules, "gemm", "gemm_splitk_reduce");
            _multiprocessors = _driver.MultiprocessorCount(_driver.CurrentDevice);
            try
            {
                _driver.SetMaxDynamicSharedMemory(_gemm2, Gemm2SharedBytes);
            }
            catch (KernelVLException e)   // the driver's refusal (a CudaException) on cards with less shared memory per block
            {
                GemmV2Unavailable = $"gemm_bf16_tn needs {Gemm2SharedBytes} bytes of shared memory per block: {e.Message}";
            }
            // Version 3 lives in its own module: its body exists only in an NVRTC sm_90a build, and a failure to build or
            // load it leaves the other kernels alone.
            if (_modules.Capability is not (9, 0)) GemmV3Unavailable = $"gemm_sm90.cu needs compute capability 9.0 (sm_90a), this device is {_modules.Capability.Major}.{_modules.Capability.Minor}";
            else
            {
                try
                {
                    _sm90 = new CudaModules(_driver, ["gemm_sm90"], useNvrtc: !Emulated);
                    if (!Emulated && !_sm90.Sources[0].Path.StartsWith("nvrtc", StringComparison.Ordinal))
                        GemmV3Unavailable = $"gemm_sm90.cu was not compiled by NVRTC for sm_90a ({_sm90.Sources[0].Detail}): its embedded PTX is empty";
                    else
                    {
                        _gemm3 = Fn(_sm90, "gemm_sm90", "gemm_bf16_wgmma");
                        _driver.SetMaxDynamicSharedMemory(_gemm3, Gemm3SharedBytes);
                        // Attention v3 needs only the module; the others also TMA's tensor maps.
                        AttentionV3Unavailable = Sm90Entry("attention_forward_d64_wgmma", Attn3SharedBytes, out _attn3);
                        string? noMaps = _driver.HasTensorMaps ? null : $"{CudaDriver.LibraryName} has no cuTensorMapEncodeTiled (CUDA 12.0 or later)";
                        string? noClusters = _driver.HasClusters ? null : $"{CudaDriver.LibraryName} has no cuLaunchKernelEx / cuOccupancyMaxActiveClusters (CUDA 12.0 or later)";
                        GemmV4Unavailable = noMaps ?? Sm90Entry("gemm_bf16_wgmma_tma", Gemm4SharedBytes, out _gemm4);
                        GemmV4ClusterUnavailable = GemmV4Unavailable
                            ?? noClusters
                            ?? Sm90Entry("gemm_bf16_wgmma_tma_x2", Gemm4SharedBytes, out _gemm4x2)
                            ?? ClusterOccupancy("gemm_bf16_wgmma_tma_x2", _gemm4x2, Gemm4Threads, Gemm4SharedBytes, 2, out _gemm4Clusters);
                        PreciseGemmV3Unavailable = noMaps ?? Sm90Entry("gemm_tf32x3_wgmma_tma", Gemm4SharedBytes, out _gemmTf32x3);
                        TopKV3Unavailable = noMaps ?? Sm90Entry("topk_tc_f16_wgmma", Tc3SharedBytes, out _tc3) ?? SetmaxnregSplit("topk_tc_f16_wgmma", _tc3);
                        TopKV3ClusterUnavailable = TopKV3Unavailable
                            ?? noClusters
                            ?? Sm90Entry("topk_tc_f16_wgmma_x4", Tc3SharedBytes, out _tc3x4)
                            ?? SetmaxnregSplit("topk_tc_f16_wgmma_x4", _tc3x4)
                            ?? ClusterOccupancy("topk_tc_f16_wgmma_x4", _tc3x4, Tc3Threads, Tc3SharedBytes, 4, out _topk3Clusters);
                    }
                }
                catch (KernelVLException e)
                {
                    GemmV3Unavailable = $"gemm_sm90.cu: {e.Message.Split('\n')[0]}";
                }
            }
            if (GemmV3Unavailable is not null)   // no sm_90a module: none of its kernels
                GemmV4Unavailable = GemmV4ClusterUnavailable = PreciseGemmV3Unavailable = TopKV3Unavailable = TopKV3ClusterUnavailable = AttentionV3Unavailable = GemmV3Unavailable;
            try
            {
                _driver.SetMaxDynamicSharedMemory(_tcScore, TcSharedBytes);
            }
            catch (KernelVLException e)   // e.g. sm_86 / sm_89 cards: 99 KB per block
            {
                TopKV2Unavailable = $"topk_tc_f16 needs {TcSharedBytes} bytes of shared memory per block: {e.Message}";
            }
        }
        catch
        {
            _sm90?.Dispose();
            _args.Dispose();
            base.Dispose();
            throw;
        }
    }

    // ---------------------------------------------------------------- launching
    /// <summary>The device address of a view's first element (ILGPU's buffer pointer + the view's offset).</summary>
    private static nint P(V view) => view.Length == 0 ? 0 : view.LoadEffectiveAddressAsPtr();
    private static nint P(ArrayView<int> view) => view.Length == 0 ? 0 : view.LoadEffectiveAddressAsPtr();
    private nint P(Tensor t) => t.DType == DType.I32 ? P(I(t)) : P(F(t));
    private nint P(Tensor? t, bool _) => t is null ? 0 : P(t);

    private static uint Blocks(long items, int perBlock) => checked((uint)((items + perBlock - 1) / perBlock));

    /// <summary>Starts the launch: the argument list is cleared; add the arguments in the kernel's order, then <see cref="Go"/>.</summary>
    private KernelArgs Args()
    {
        _args.Clear();
        return _args;
    }

    // Each function's parameter sizes from its PTX (kernel file, entry), checked against the arguments on every launch.
    private readonly Dictionary<nint, (string Name, IReadOnlyList<int> Sizes)> _signatures = [];

    private nint Fn(CudaModules modules, string kernel, string entry)
    {
        nint f = modules.Function(kernel, entry);
        _signatures[f] = ($"{kernel}.cu {entry}", EmbeddedKernels.ParamSizes(kernel, entry));
        return f;
    }

    private void Go(nint function, (uint X, uint Y, uint Z) grid, uint threads, uint sharedBytes = 0)
    {
        if (_signatures.TryGetValue(function, out var sig) && _args.Mismatch(sig.Sizes) is { } why)
            throw new BackendException($"launching {sig.Name}: {why}");
        // ILGPU binds its context to the threads it runs on; a launch from another thread must bind it first.
        _driver.SetCurrentContext(_context);
        _driver.Launch(function, grid, (threads, 1, 1), sharedBytes, _stream, _args);
    }

    // Go in thread block clusters of clusterX blocks along x (cuLaunchKernelEx).
    private void GoCluster(nint function, (uint X, uint Y, uint Z) grid, uint threads, uint sharedBytes, uint clusterX)
    {
        if (_signatures.TryGetValue(function, out var sig) && _args.Mismatch(sig.Sizes) is { } why)
            throw new BackendException($"launching {sig.Name}: {why}");
        _driver.SetCurrentContext(_context);
        _driver.LaunchCluster(function, grid, (threads, 1, 1), sharedBytes, _stream, clusterX, _args);
    }

    /// <summary>
    /// The device's time per call of <paramref name="op"/> (milliseconds, the median over batches), measured with CUDA
    /// events on this backend's stream. One event pair around a call on an idle stream would time the host too: the
    /// start event completes at once, and the kernels begin only when the host has launched them, which for a
    /// microsecond kernel is most of the span. So each batch first launches a busy wait (kv_spin) that holds the
    /// stream while <c>calls</c> calls are enqueued behind it, then the event pair around those calls: they run back to
    /// back, as in a model's forward pass. Whether the wait outlasted the enqueueing is checked (the start event must
    /// still be pending when the last call is enqueued); if not, the batch is redone with a four times longer wait. An
    /// op that waits for the device itself (one that reads a count back, say) can never be queued: after the longest
    /// wait it is timed with one event pair per call instead, host gaps included, and <see cref="LastTiming"/> says so.
    /// <paramref name="before"/>, if given, runs before each batch's wait, untimed (an L2 flush), and makes every batch
    /// a single call. <paramref name="reps"/>: the calls timed in all (at least five batches).
    /// </summary>
    public double MedianMs(Action op, int warmup, int reps, Action? before = null)
    {
        _driver.SetCurrentContext(_context);
        nint start = _driver.CreateEvent(), end = _driver.CreateEvent();
        using var spins = Empty(new Shape(2));   // kv_spin's iteration count (8 bytes)
        try
        {
            // Warm-up, and two estimates: the host's time to enqueue a call, and the span of one call on an idle stream
            // (an upper bound of the device's time).
            var sw = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < warmup; i++) op();
            double hostMs = warmup > 0 ? sw.Elapsed.TotalMilliseconds / warmup : 0;
            Synchronize();
            double spanMs = PerCallMs(op, start, end, Emulated ? 1 : 3);
            int calls = before is not null ? 1 : (int)Math.Clamp(Math.Round(1.0 / Math.Max(spanMs, 1e-3)), 1, 64);
            int batches = Math.Max(5, (reps + calls - 1) / calls);
            double spinMs = Math.Clamp(2 * calls * hostMs + 0.2, 0.2, MaxSpinMs);
            var times = new List<double>(batches);
            while (times.Count < batches)
            {
                before?.Invoke();
                Args().Add((long)(spinMs * 1e6)).Add(P(spins));
                Go(_spin, (1, 1, 1), 32);
                _driver.RecordEvent(start, _stream);
                for (int i = 0; i < calls; i++) op();
                _driver.RecordEvent(end, _stream);
                bool queued = !_driver.EventCompleted(start);
                double ms = _driver.ElapsedMs(start, end) / calls;
                Synchronize();   // the stream is idle now: recycles the calls' temporaries instead of allocating new ones
                if (queued) { times.Add(ms); continue; }
                if (spinMs < MaxSpinMs && !Emulated) { spinMs = Math.Min(MaxSpinMs, spinMs * 4); continue; }
                // Never queued: the op waits for the device (or the host cannot keep up with it). One pair per call. (The
                // host emulator runs each launch to completion before it returns: never queued, known after one try.)
                LastTiming = Emulated ? "per call: the host emulator runs each launch to completion"
                    : "per call: the op could not be queued behind a wait (it waits for the device, or its host work outlasts it): host gaps included";
                return PerCallMs(op, start, end, Math.Max(1, reps), before);
            }
            LastTiming = $"queued, {(calls == 1 ? "one call" : $"{calls} calls")} a batch behind a {spinMs.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)} ms wait";
            times.Sort();
            return times[times.Count / 2];
        }
        finally
        {
            _driver.DestroyEvent(start);
            _driver.DestroyEvent(end);
            Synchronize();
        }
    }

    /// <summary>
    /// For checks only (the perf benches set it around a version's check call, never around its timing): the scratch one
    /// kernel writes and the next reads (split-K's slices, top-k's per-slice and candidate lists) is filled with NaN and
    /// -1 as it is rented. The allocator recycles buffers by size, so without it a version that skips part of its work
    /// could pass its check on what an earlier version left in the same buffer, and be timed as the fastest.
    /// </summary>
    public bool PoisonScratch { get; set; }

    private void Poison(params Tensor[] scratch)
    {
        if (!PoisonScratch) return;
        foreach (var t in scratch) Fill(t, t.DType == DType.I32 ? -1f : float.NaN);
    }

    /// <summary>The longest busy wait <see cref="MedianMs"/> puts before a batch (ms).</summary>
    internal const double MaxSpinMs = 50;

    /// <summary>How the last <see cref="MedianMs"/> timed its op: queued behind a busy wait (the device's time), or one
    /// event pair per call (host gaps included), with the reason.</summary>
    public string LastTiming { get; private set; } = "";

    // The median of one event pair per call on an idle stream (each call's temporaries recycled by a synchronisation).
    private double PerCallMs(Action op, nint start, nint end, int reps, Action? before = null)
    {
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            before?.Invoke();
            _driver.RecordEvent(start, _stream);
            op();
            _driver.RecordEvent(end, _stream);
            times[i] = _driver.ElapsedMs(start, end);
            Synchronize();
        }
        Array.Sort(times);
        return times[reps / 2];
    }

    // ---------------------------------------------------------------- matmul (MatMul and MatMulBackward of the base class route here)
    protected override void LaunchGemm(int m, int n, int k, V a, int lda, bool transA, long strideA, V b, int ldb, bool transB, long strideB,
        V c, int ldc, long strideC, int batch, V bias, bool accumulate)
    {
        if (m == 0 || n == 0 || batch == 0) return;
        if (GemmVersion >= 2 && GemmV2Unavailable is null && Blocks(n, Gemm2Cols) <= MaxGridYZ && batch <= MaxGridYZ && KMajorRows(m) && KMajorRows(n))
        {
            LaunchGemmV2(m, n, k, a, lda, transA, strideA, b, ldb, transB, strideB, c, ldc, strideC, batch, bias, accumulate, gelu: false);
            return;
        }
        uint gy = Blocks(m, 128);
        if (gy > MaxGridYZ || batch > MaxGridYZ)
        {
            base.LaunchGemm(m, n, k, a, lda, transA, strideA, b, ldb, transB, strideB, c, ldc, strideC, batch, bias, accumulate);
            return;
        }
        Args().Add(P(a)).Add(P(b)).Add(P(bias)).Add(P(c)).Add(m).Add(n).Add(k).Add(lda).Add(ldb).Add(ldc)
            .Add(transA ? 1 : 0).Add(transB ? 1 : 0).Add(strideA).Add(strideB).Add(strideC).Add(1f).Add(accumulate ? 1 : 0).Add(0);
        Go(_gemm, (Blocks(n, 128), gy, (uint)batch), 256);
    }

    /// <summary>
    /// y = gelu(a @ op(b) + bias) in one launch (the GEMM's fused epilogue): a [..., M, K], b [K, N] ([N, K] when transB,
    /// a weight shared by the batch), bias [N] or null, y [..., M, N]. Not part of the backend contract: the model's
    /// FFN can call it where the backend is this one.
    /// </summary>
    public void MatMulGelu(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transB)
    {
        var d = Contract.MatMul(a, b, bias, y, false, transB);
        if (!d.SharedB) Contract.Fail("matmul gelu", $"b must be a rank-2 weight, got {b.Shape}");
        long m = (long)d.Batch * d.M;
        if (m == 0 || d.N == 0) return;
        if (GemmVersion >= 2 && GemmV2Unavailable is null && Blocks(d.N, Gemm2Cols) <= MaxGridYZ && KMajorRows(m) && KMajorRows(d.N))
        {
            LaunchGemmV2((int)m, d.N, d.K, F(a), d.K, false, 0, F(b), b.Shape[-1], transB, 0, F(y), d.N, 0, 1, bias is null ? V.Empty : F(bias), false, gelu: true);
            return;
        }
        if (Blocks(m, 128) > MaxGridYZ) throw new BackendException($"matmul gelu: {m} rows are more than one launch takes");
        Args().Add(P(a)).Add(P(b)).Add(P(bias, true)).Add(P(y)).Add((int)m).Add(d.N).Add(d.K).Add(d.K).Add(b.Shape[-1]).Add(d.N)
            .Add(0).Add(transB ? 1 : 0).Add(0L).Add(0L).Add(0L).Add(1f).Add(0).Add(1);
        Go(_gemm, (Blocks(d.N, 128), Blocks(m, 128), 1), 256);
    }

    /// <summary>
    /// Version 2 of the GEMM for the engine's f32 operands: each is rounded to bf16 into a K-major temporary (A as
    /// [M, Kp], op(B) as its transpose [N, Kp], Kp = K rounded up to 8, zero-padded), then gemm_bf16_tn.
    /// </summary>
    private void LaunchGemmV2(int m, int n, int k, V a, int lda, bool transA, long strideA, V b, int ldb, bool transB, long strideB,
        V c, int ldc, long strideC, int batch, V bias, bool accumulate, bool gelu)
    {
        int kp = (k + 7) / 8 * 8;
        int batchA = strideA == 0 ? 1 : batch, batchB = strideB == 0 ? 1 : batch;
        using var a16 = Empty(new Shape(batchA, m, Math.Max(1, kp / 2)));    // [batch, M, Kp] bf16, two to an element
        ConvertBf16KMajor(P(a), m, k, lda, transA, strideA, batchA, P(a16), kp);
        // op(B)(k, n) is Bt(n, k): Bt = B itself when transB (B stored [N, K]), else B's transpose. A weight of an open
        // CacheBf16Weights scope is converted once, at its first use, and kept until the scope closes.
        var key = (P(b), n, k, ldb, !transB);
        bool cacheable = strideB == 0 && _weights is { } w && w.Holds(P(b));
        Tensor? cached = cacheable ? _weights!.Copies.GetValueOrDefault(key) : null, temp = null;
        try
        {
            if (cached is null)
            {
                using (TensorScope.Untracked())   // a kept copy outlives the caller's scope
                    temp = Empty(new Shape(batchB, n, Math.Max(1, kp / 2)));    // [batch, N, Kp] bf16
                ConvertBf16KMajor(P(b), n, k, ldb, !transB, strideB, batchB, P(temp), kp);
                if (cacheable) (cached, temp) = (_weights!.Copies[key] = temp, null);
            }
            GemmBf16TnLaunch(P(a16), P(cached ?? temp!), bias.Length == 0 ? 0 : P(bias), P(c), m, n, kp, kp, kp, ldc,
                strideA == 0 ? 0 : (long)m * kp, strideB == 0 ? 0 : (long)n * kp, strideC, batch, accumulate, gelu);
        }
        finally
        {
            temp?.Dispose();
        }
    }

    // ---------------------------------------------------------------- bf16 weight copies for inference
    private WeightCopies? _weights;

    /// <summary>
    /// Whether <see cref="CacheBf16Weights"/> keeps copies (KERNELVL_CUDA_WEIGHT_CACHE=0 turns it off: every GEMM then
    /// converts its weight again, as training must).
    /// </summary>
    public bool CacheWeights { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_WEIGHT_CACHE") != "0";

    /// <summary>
    /// For inference over many batches with fixed weights: until the returned scope is disposed, the GEMMs of versions
    /// 2-4 (the f32 MatMul and MatMulGelu paths, which round each operand to a bf16 K-major copy per call) convert each
    /// of <paramref name="weights"/> once, at its first use as a shared B operand, and reuse that copy (the weights of
    /// the base model: ~170 MB of bf16, and ~0.5 GB of conversion traffic saved per forward pass). The weights must not
    /// change meanwhile: <see cref="AdamW"/> on one throws. A scope opened inside another is a no-op (the outer one
    /// keeps its copies); disposing frees the copies.
    /// </summary>
    public IDisposable CacheBf16Weights(IEnumerable<Tensor> weights)
    {
        if (_weights is not null || !CacheWeights) return new WeightCopies(null);
        var scope = new WeightCopies(this);
        foreach (var t in weights)
            if (t.DType == DType.F32 && t.Numel > 0) scope.Frozen[P(t)] = t;
        return _weights = scope;
    }

    /// <summary>The number of bf16 weight copies the open <see cref="CacheBf16Weights"/> scope holds (0 without one).</summary>
    public int CachedWeightCopies => _weights?.Copies.Count ?? 0;

    private sealed class WeightCopies(CudaBackend? owner) : IDisposable
    {
        public readonly Dictionary<nint, Tensor> Frozen = [];
        public readonly Dictionary<(nint, int, int, int, bool), Tensor> Copies = [];
        // A held weight disposed inside the scope no longer counts: its address may come back for another tensor.
        public bool Holds(nint address) => Frozen.TryGetValue(address, out var t) && !t.IsDisposed;

        public void Dispose()
        {
            if (owner is null || owner._weights != this) return;
            try
            {
                owner.Synchronize();   // the copies may still be read by queued GEMMs
            }
            finally
            {
                foreach (var c in Copies.Values) c.Dispose();
                Copies.Clear();
                owner._weights = null;
            }
        }
    }

    // Writes to a weight held by an open CacheBf16Weights scope would leave its bf16 copy stale: refused.
    private void RefuseHeld(string op, Tensor t)
    {
        if (_weights is { } w && t.Numel > 0 && t.DType == DType.F32 && w.Holds(P(t)))
            throw new BackendException($"{op}: {t.Name ?? t.Shape.ToString()} is held fixed by an open CacheBf16Weights scope (inference): close it before changing the weights");
    }

    public override void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWParams p, int step)
    {
        RefuseHeld("adamw", param);
        base.AdamW(param, grad, m, v, p, step);
    }

    public override void Fill(Tensor x, float value)
    {
        RefuseHeld("fill", x);
        base.Fill(x, value);
    }

    public override void Copy(Tensor src, Tensor dst)
    {
        RefuseHeld("copy", dst);
        base.Copy(src, dst);
    }

    public override void CopyFromHost(ReadOnlySpan<float> src, Tensor dst)
    {
        RefuseHeld("copy", dst);
        base.CopyFromHost(src, dst);
    }

    /// <summary>op(x) [R, Kc] f32 (x [R, Kc] with leading dim ld, or x [Kc, R] when trans), batches strideX apart -> y [batch, R, ldy] bf16.</summary>
    private void ConvertBf16KMajor(nint x, int r, int kc, int ld, bool trans, long strideX, int batch, nint y, int ldy)
    {
        if (r == 0 || ldy == 0) return;
        Args().Add(x).Add(r).Add(kc).Add(ld).Add(trans ? 1 : 0).Add(strideX).Add(y).Add(ldy);
        Go(_toBf16, (Blocks(ldy, 32), Blocks(r, 32), (uint)batch), 256);
    }

    private void GemmBf16TnLaunch(nint a, nint b, nint bias, nint c, int m, int n, int k, int lda, int ldb, int ldc,
        long strideA, long strideB, long strideC, int batch, bool accumulate, bool gelu)
    {
        // (K = 0 stays on version 3 / 2, whose epilogue writes the bias or zeros: a tensor map's extents must be non-zero.)
        if (GemmVersion == 4 && GemmV4Unavailable is null && k > 0 && TmaOperand(a, m, lda, strideA) && TmaOperand(b, n, ldb, strideB))
        {
            // 3-D maps {K, rows, batch}; an operand shared by every batch is a one-batch map read at batch 0.
            var ta = _driver.EncodeTensorMap(CudaDriver.TensorMapBf16, a, (ulong)k, (ulong)m, strideA == 0 ? 1UL : (ulong)batch, 2UL * (ulong)lda,
                2UL * (ulong)(strideA == 0 ? (long)m * lda : strideA), 64, Gemm2Rows);
            // Clusters of two (B shared, each block loading half of its rows: the map's box is half a tile) where there are
            // two row tiles to pair.
            bool cluster = GemmCluster == 2 && GemmV4ClusterUnavailable is null && m > Gemm2Rows;
            var tb = _driver.EncodeTensorMap(CudaDriver.TensorMapBf16, b, (ulong)k, (ulong)n, strideB == 0 ? 1UL : (ulong)batch, 2UL * (ulong)ldb,
                2UL * (ulong)(strideB == 0 ? (long)n * ldb : strideB), 64, (uint)(cluster ? Gemm2Cols / 2 : Gemm2Cols));
            LastGemmCluster = cluster ? 2 : 1;
            int ksteps = GemmSplitK ? Gemm4KSteps(m, n, k, batch, _multiprocessors) : 0;
            if (ksteps > 0)
            {
                // Split-K: slice z of w [splits, M, N] = A[:, K steps of split z] B[...]^T, then the slices added in
                // order with the bias, GELU and accumulate (gemm_splitk_reduce).
                int splits = ((k + 63) / 64 + ksteps - 1) / ksteps;
                using var w = Empty(new Shape(splits, m, n));
                Poison(w);
                Args().Add(ta).Add(tb).Add((nint)0).Add(P(w)).Add(m).Add(n).Add(k).Add(n).Add(1).Add(1)
                    .Add((long)m * n).Add(1f).Add(0).Add(0).Add(ksteps).Add(splits);
                Gemm4Go(cluster, m, n, splits);
                Args().Add(P(w)).Add(splits).Add(bias).Add(c).Add(m).Add(n).Add(ldc).Add(accumulate ? 1 : 0).Add(gelu ? 1 : 0);
                Go(_splitReduce, ((uint)Math.Min(Blocks((long)m * n, 256), 8L * _multiprocessors), 1, 1), 256);
                LastGemmSplits = splits;
                return;
            }
            Args().Add(ta).Add(tb).Add(bias).Add(c).Add(m).Add(n).Add(k).Add(ldc).Add(strideA == 0 ? 0 : 1).Add(strideB == 0 ? 0 : 1)
                .Add(strideC).Add(1f).Add(accumulate ? 1 : 0).Add(gelu ? 1 : 0).Add(0).Add(batch);
            Gemm4Go(cluster, m, n, batch);
            LastGemmSplits = 1;
            return;
        }
        Args().Add(a).Add(b).Add(bias).Add(c).Add(m).Add(n).Add(k).Add(lda).Add(ldb).Add(ldc).Add(strideA).Add(strideB).Add(strideC)
            .Add(1f).Add(accumulate ? 1 : 0).Add(gelu ? 1 : 0);
        // Versions 2 and 3 take the same arguments and the same 128 x 256 block tiles.
        if (GemmVersion >= 3 && GemmV3Unavailable is null)
            Go(_gemm3, (Blocks(m, Gemm2Rows), Blocks(n, Gemm2Cols), (uint)batch), 256, Gemm3SharedBytes);
        else
            Go(_gemm2, (Blocks(m, Gemm2Rows), Blocks(n, Gemm2Cols), (uint)batch), 256, Gemm2SharedBytes);
    }

    // Version 4 with the arguments added: its grid is its work items (128 x 256 tiles x zcount), at most one block per
    // multiprocessor when persistent. In clusters of two, the items are pairs of row tiles, a cluster each, at most as
    // many clusters as are resident at once when persistent (cuOccupancyMaxActiveClusters: a cluster waiting for
    // another's end would hold a whole share of the items back).
    private void Gemm4Go(bool cluster, int m, int n, int zcount)
    {
        if (!cluster)
        {
            long items = (long)Blocks(m, Gemm2Rows) * Blocks(n, Gemm2Cols) * zcount;
            Go(_gemm4, ((uint)(GemmPersistent || items > int.MaxValue ? Math.Min(items, _multiprocessors) : items), 1, 1), Gemm4Threads, Gemm4SharedBytes);
            return;
        }
        long pairs = (Blocks(m, Gemm2Rows) + 1L) / 2 * Blocks(n, Gemm2Cols) * zcount;
        long clusters = GemmPersistent || pairs > int.MaxValue / 2 ? Math.Min(pairs, _gemm4Clusters) : pairs;
        GoCluster(_gemm4x2, ((uint)(2 * clusters), 1, 1), Gemm4Threads, Gemm4SharedBytes, 2);
    }

    /// <summary>
    /// Split-K for GEMM version 4: the K steps (64 wide) each split takes, or 0 for no split. Only where one batch's
    /// 128 x 256 tiles would leave more than half the multiprocessors idle and K is deep (>= 16 steps): as many splits
    /// as fill the idle ones, at most 8, each at least 8 steps (the slices' extra traffic, 2 x splits x M x N x 4
    /// bytes, stays small beside the time saved). The model's 1024 x 768 x 3072 on 132 SMs: 24 tiles x 48 steps -> 5
    /// splits of 10 (120 blocks); 1024 x 768 x 768 (12 steps), 1024 x 3072 x 768 (96 tiles) and 4096^3: none.
    /// </summary>
    internal static int Gemm4KSteps(int m, int n, int k, int batch, int multiprocessors)
    {
        long tiles = (long)Blocks(m, Gemm2Rows) * Blocks(n, Gemm2Cols) * batch;
        int steps = (k + 63) / 64;
        if (batch != 1 || steps < 16 || tiles * 2 > multiprocessors) return 0;
        int splits = (int)Math.Min(Math.Min(multiprocessors / tiles, steps / 8), 8);
        if (splits < 2) return 0;
        return (steps + splits - 1) / splits;
    }

    /// <summary>Whether convert_bf16_kmajor / split_tf32_kmajor take this many rows (32 a block on grid y).</summary>
    private static bool KMajorRows(long rows) => Blocks(rows, 32) <= MaxGridYZ;

    /// <summary>
    /// Whether a bf16 operand [batch, rows, ld] at <paramref name="p"/> meets TMA's rules as version 4 maps it: a 16-byte
    /// aligned address, row and batch strides multiples of 16 bytes (ld and the batch stride multiples of 8 elements)
    /// below 2^40 bytes, and extents that are not zero. convert_bf16_kmajor's outputs always do; a caller's own bf16
    /// tensors may not.
    /// </summary>
    internal static bool TmaOperand(nint p, int rows, int ld, long stride) =>
        rows > 0 && ld > 0 && p % 16 == 0 && ld % 8 == 0 && stride % 8 == 0 && 2L * Math.Max((long)rows * ld, stride) < (1L << 40);

    /// <summary>
    /// x [R, K] f32 (or x [K, R] when <paramref name="trans"/>) -> [R, Kp] bf16 in a tensor of R * Kp / 2 raw elements
    /// (Kp = K rounded up to 8, zero-padded): the operand layout of <see cref="MatMulBf16"/>.
    /// </summary>
    public Tensor ToBf16KMajor(Tensor x, bool trans)
    {
        if (x.Rank != 2 || x.DType != DType.F32) Contract.Fail("to bf16", $"x must be a rank-2 f32 tensor, got {x.Shape} {x.DType}");
        int r = trans ? x.Shape[1] : x.Shape[0], k = trans ? x.Shape[0] : x.Shape[1], kp = (k + 7) / 8 * 8;
        var y = Empty(new Shape(r, Math.Max(1, kp / 2)));
        ConvertBf16KMajor(P(x), r, k, x.Shape[1], trans, 0, 1, P(y), kp);
        return y;
    }

    /// <summary>
    /// c [M, N] f32 = a b^T (+ bias) on version 2's kernel (version 3's or 4's with GemmVersion 3 or 4), a [M, Kp] and b [N, Kp] bf16 as <see cref="ToBf16KMajor"/>
    /// writes them (Kp = K rounded up to 8): the GEMM alone, operands already in memory as bf16 (what cuBLAS and
    /// torch bf16 are timed with).
    /// </summary>
    public void MatMulBf16(Tensor a, Tensor b, int k, Tensor? bias, Tensor c)
    {
        const string op = "matmul bf16";
        if (c.Rank != 2) Contract.Fail(op, $"c must be [M, N], got {c.Shape}");
        int m = c.Shape[0], n = c.Shape[1], kp = (k + 7) / 8 * 8;
        if (k < 1) Contract.Fail(op, $"k must be positive, got {k}");
        Contract.Dims(op, "a", a, m, kp / 2);
        Contract.Dims(op, "b", b, n, kp / 2);
        if (bias is not null) Contract.Dims(op, "bias", bias, n);
        if (GemmV2Unavailable is { } why) throw new BackendException(why);
        // Every version stages rows with 16-byte copies (cp.async or TMA): a view at an odd offset would fault the context.
        if (P(a) % 16 != 0 || P(b) % 16 != 0)
            Contract.Fail(op, "a and b must start 16-byte aligned (bf16 views at offsets that are multiples of 8 elements)");
        if (m == 0 || n == 0) return;
        GemmBf16TnLaunch(P(a), P(b), P(bias, true), P(c), m, n, kp, kp, kp, n, 0, 0, 0, 1, false, false);
    }

    // ---------------------------------------------------------------- attention
    public override void Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse)
    {
        var d = Contract.Attention(q, k, v, keyMask, o, lse);
        if (d.D != 64 || (long)d.B * d.H > MaxGridYZ)
        {
            base.Attention(q, k, v, keyMask, scale, o, lse);
            return;
        }
        if (d.B * d.H * d.Tq == 0) return;
        Args().Add(P(q)).Add(P(k)).Add(P(v)).Add(P(keyMask, true)).Add(d.H).Add(d.Tq).Add(d.Tk).Add(scale).Add(P(o)).Add(P(lse));
        // Versions 2 and 3 read K and V with 16-byte loads: they need them 16-byte aligned (views at offsets of 4 elements).
        if (AttentionVersion == 3 && AttentionV3Unavailable is null && P(k) % 16 == 0 && P(v) % 16 == 0)
            Go(_attn3, (Blocks(d.Tq, 128), (uint)(d.B * d.H), 1), 256, Attn3SharedBytes);
        else if (AttentionVersion >= 2 && P(k) % 16 == 0 && P(v) % 16 == 0)
            Go(_attn64v2, (Blocks(d.Tq, 128), (uint)(d.B * d.H), 1), 256);
        else
            Go(_attn64, (Blocks(d.Tq, 64), (uint)(d.B * d.H), 1), 128);
    }

    public override void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv)
    {
        var d = Contract.AttentionBackward(q, k, v, keyMask, o, lse, dO, dq, dk, dv);
        if (AttentionBackwardVersion != 2 || d.D != 64 || (long)d.B * d.H > MaxGridYZ)
        {
            base.AttentionBackward(q, k, v, keyMask, scale, o, lse, dO, dq, dk, dv);
            return;
        }
        long rows = (long)d.B * d.H * d.Tq;
        if (rows == 0 || d.Tk == 0 || (dq is null && dk is null && dv is null)) return;
        uint bh = (uint)(d.B * d.H);
        using var delta = Empty(new Shape(d.B, d.H, d.Tq));   // [B, H, Tq] sum_d dO o
        Args().Add(P(o)).Add(P(dO)).Add(rows).Add(P(delta));
        Go(_attnDelta, (Blocks(rows, 8), 1, 1), 256);
        if (dk is not null || dv is not null)
        {
            // The kernel writes both; a missing one goes to a scratch tensor.
            using var scratch = dk is null || dv is null ? Empty(k.Shape) : null;
            Args().Add(P(q)).Add(P(k)).Add(P(v)).Add(P(keyMask, true)).Add(P(lse)).Add(P(delta)).Add(P(dO))
                .Add(d.H).Add(d.Tq).Add(d.Tk).Add(scale).Add(P(dk ?? scratch!)).Add(P(dv ?? scratch!));
            Go(_attnDkDv, (Blocks(d.Tk, 64), bh, 1), 128);
        }
        if (dq is not null)
        {
            Args().Add(P(q)).Add(P(k)).Add(P(v)).Add(P(keyMask, true)).Add(P(lse)).Add(P(delta)).Add(P(dO))
                .Add(d.H).Add(d.Tq).Add(d.Tk).Add(scale).Add(P(dq));
            Go(_attnDq, (Blocks(d.Tq, 64), bh, 1), 128);
        }
    }

    // ---------------------------------------------------------------- layer norm
    public override void LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor y, Tensor mean, Tensor rstd)
    {
        const string op = "layernorm";
        var (r, c) = Contract.Rows(op, "x", x);
        Contract.Dims(op, "gamma", gamma, c); Contract.Dims(op, "beta", beta, c);
        Contract.SameShape(op, "x", x, "y", y); Contract.Dims(op, "mean", mean, r); Contract.Dims(op, "rstd", rstd, r);
        if (r == 0) return;
        // x, gamma, beta -> y, mean, rstd; no residual and no h output (the kernel's fused residual is not part of the contract).
        Args().Add(P(x)).Add((nint)0).Add(P(gamma)).Add(P(beta)).Add((nint)0).Add(P(y)).Add(P(mean)).Add(P(rstd)).Add(c).Add(eps);
        Go(_layerNorm, ((uint)r, 1, 1), 256);
    }

    public override void LayerNormBackward(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dgamma, Tensor? dbeta)
    {
        const string op = "layernorm backward";
        var (r, c) = Contract.Rows(op, "x", x);
        if (LayerNormBackwardVersion != 2)
        {
            base.LayerNormBackward(x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
            return;
        }
        Contract.SameShape(op, "x", x, "dy", dy); Contract.SameShapeOrNull(op, "x", x, "dx", dx);
        Contract.DimsOrNull(op, "dgamma", dgamma, c); Contract.DimsOrNull(op, "dbeta", dbeta, c);
        if (r == 0 || c == 0) return;
        if (dx is not null)
        {
            Args().Add(P(x)).Add(P(gamma)).Add(P(mean)).Add(P(rstd)).Add(P(dy)).Add(c).Add(P(dx));
            Go(_lnBackDx, ((uint)r, 1, 1), 256);
        }
        if (dgamma is null && dbeta is null) return;
        // About 8 blocks per multiprocessor: ceil(c / 32) column groups x row chunks.
        uint colGroups = Blocks(c, 32);
        int chunks = (int)Math.Clamp((8L * _multiprocessors + colGroups - 1) / colGroups, 1, Math.Min(MaxGridYZ, (r + 7) / 8));
        int per = (int)((r + chunks - 1) / chunks);
        chunks = (int)((r + per - 1) / per);
        using var pg = Empty(new Shape(chunks, c));   // [chunks, c] partial sums of dy xhat
        using var pb = Empty(new Shape(chunks, c));   // [chunks, c] partial sums of dy
        Args().Add(P(x)).Add(P(mean)).Add(P(rstd)).Add(P(dy)).Add((long)r).Add(c).Add(per).Add(P(pg)).Add(P(pb));   // rows: long long
        Go(_lnBackPartial, (colGroups, (uint)chunks, 1), 256);
        Args().Add(P(pg)).Add(P(pb)).Add(chunks).Add(c).Add(P(dgamma, true)).Add(P(dbeta, true));
        Go(_lnBackCombine, (Blocks(c, 256), 1, 1), 256);
    }

    // ---------------------------------------------------------------- InfoNCE
    public override void InfoNce(Tensor t, Tensor v, float invTemperature, Tensor loss, Tensor lseRow, Tensor lseCol)
    {
        const string op = "infonce";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v); Contract.Scalar(op, "loss", loss);
        Contract.Dims(op, "lseRow", lseRow, n); Contract.Dims(op, "lseCol", lseCol, n);
        if (n == 0)
        {
            Fill(loss, 0f);
            return;
        }
        int nb = (n + NceTile - 1) / NceTile;
        if (nb > MaxGridYZ)
        {
            base.InfoNce(t, v, invTemperature, loss, lseRow, lseCol);
            return;
        }
        using var diag = Empty(new Shape(n));                   // [n] S_ii
        using var part = Empty(new Shape(6, nb, n));            // row max, sum, off; column max, sum, off: each [nb, n]
        using var terms = Empty(new Shape(2 * n));              // [2n] per-row then per-column loss terms
        V pv = F(part);
        long slab = (long)nb * n;
        ReleaseInfoNceScores();   // only the last forward's S is kept
        if (InfoNceVersion == 2 && n <= InfoNceV2MaxN)
        {
            var sm = Empty(new Shape(n, n));                    // [n, n] S = invT t v^T
            try
            {
                NceScores(t, v, invTemperature, sm);
                NceStats(sm, diag, part);
                if (KeepInfoNceScores && 4L * n * n <= InfoNceKeepMaxBytes)
                {
                    _nceKept = new NceKept(sm, lseRow, P(t), P(v), invTemperature);
                    sm = null;
                }
            }
            finally { sm?.Dispose(); }
        }
        else
        {
            Args().Add(P(t)).Add(P(v)).Add(n).Add(dim).Add(invTemperature).Add(P(diag));
            Go(_nceDiag, (Blocks(n, 32), 1, 1), 32);   // one warp a block: the serial rows spread over the SMs
            Args().Add(P(t)).Add(P(v)).Add(P(diag)).Add(n).Add(dim).Add(invTemperature);
            for (int s = 0; s < 6; s++) _args.Add(P(pv.SubView(s * slab, slab)));
            Go(_nceTiles, ((uint)nb, (uint)nb, 1), 256);
        }
        NceCombine(diag, part, lseRow, lseCol, terms, loss);
    }

    // InfoNCE's steps (version 2 where the name says so), shared by the ops and InfoNcePhases. n = t's rows, nb its tiles.
    private static int NceTiles(int n) => (n + NceTile - 1) / NceTile;

    /// <summary>Version 2: sm [n, n] = invT t v^T on the f32-accurate GEMM (t, v [n, dim]).</summary>
    private void NceScores(Tensor t, Tensor v, float invTemperature, Tensor sm)
    {
        int n = t.Shape[0], dim = t.Shape[1];
        LaunchGemmF32x3(n, n, dim, F(t), dim, false, F(v), dim, true, F(sm), n, invTemperature, accumulate: false);
    }

    /// <summary>Version 2: diag [n] = S_ii, part [6, nb, n] = each tile's row and column max, sum and off-diagonal mass, one read of sm.</summary>
    private void NceStats(Tensor sm, Tensor diag, Tensor part)
    {
        int n = sm.Shape[0], nb = NceTiles(n);
        long slab = (long)nb * n;
        V pv = F(part);
        Args().Add(P(sm)).Add(n).Add(P(diag));
        Go(_nceDiagOf, (Blocks(n, 256), 1, 1), 256);
        Args().Add(P(sm)).Add(P(diag)).Add(n);
        for (int s = 0; s < 6; s++) _args.Add(P(pv.SubView(s * slab, slab)));
        Go(_nceStats, ((uint)nb, (uint)nb, 1), 256);
    }

    /// <summary>The tiles' statistics -> lseRow, lseCol [n] and loss = the mean of the 2n terms [2n].</summary>
    private void NceCombine(Tensor diag, Tensor part, Tensor lseRow, Tensor lseCol, Tensor terms, Tensor loss)
    {
        int n = diag.Shape[0], nb = NceTiles(n);
        long slab = (long)nb * n;
        V pv = F(part);
        Args().Add(P(diag));
        for (int s = 0; s < 6; s++) _args.Add(P(pv.SubView(s * slab, slab)));
        _args.Add(n).Add(nb).Add(P(lseRow)).Add(P(lseCol)).Add(P(terms));
        Go(_nceCombine, (Blocks(2L * n, 256), 1, 1), 256);
        Args().Add(P(terms)).Add(2 * n).Add(1f / n).Add(P(loss));
        Go(_sum, (1, 1, 1), 1024);
    }

    /// <summary>Version 2: g [n, n] holding S becomes G = dloss/dS invT in place (one read and one write); off [2, nb, n] the off-diagonal masses.</summary>
    private void NceGradTiles(Tensor g, Tensor lseRow, Tensor lseCol, Tensor dloss, float invTemperature, Tensor off)
    {
        int n = g.Shape[0], nb = NceTiles(n);
        long slab = (long)nb * n;
        V ov = F(off);
        Args().Add(P(g)).Add(P(lseRow)).Add(P(lseCol)).Add(P(dloss)).Add(n).Add(invTemperature)
            .Add(P(ov.SubView(0, slab))).Add(P(ov.SubView(slab, slab)));
        Go(_nceBackTilesOf, ((uint)nb, (uint)nb, 1), 256);
    }

    /// <summary>G's diagonal from the off-diagonal masses (both versions).</summary>
    private void NceGradDiagonal(Tensor off, Tensor dloss, float invTemperature, Tensor g)
    {
        int n = g.Shape[0], nb = NceTiles(n);
        long slab = (long)nb * n;
        V ov = F(off);
        Args().Add(P(ov.SubView(0, slab))).Add(P(ov.SubView(slab, slab))).Add(P(dloss)).Add(n).Add(nb).Add(invTemperature).Add(P(g));
        Go(_nceBackDiag, (Blocks(n, 256), 1, 1), 256);
    }

    /// <summary>Version 2: dt += G v, dv += G^T t on the f32-accurate GEMM.</summary>
    private void NceGradGemms(Tensor g, Tensor t, Tensor v, Tensor? dt, Tensor? dv)
    {
        int n = t.Shape[0], dim = t.Shape[1];
        if (dt is not null) LaunchGemmF32x3(n, dim, n, F(g), n, false, F(v), dim, false, F(dt), dim, 1f, accumulate: true);
        if (dv is not null) LaunchGemmF32x3(n, dim, n, F(g), n, true, F(t), dim, false, F(dv), dim, 1f, accumulate: true);
    }

    /// <summary>
    /// InfoNCE version 2's forward and backward over t, v [n, dim] (n <= InfoNceV2MaxN), each step timed alone (CUDA
    /// events, the median of <paramref name="reps"/>): what the issue's "bandwidth-bound" asks about is visible per step,
    /// the passes over the [n, n] matrix against their bytes, the GEMMs against their FLOPs. Each step runs on the
    /// buffers the previous ones filled (the in-place G pass again over G when repeated: the same work). Returns
    /// (step, median ms, bytes it must move, FLOPs, how it was timed: <see cref="LastTiming"/>), and the loss of the first forward (to check the data were real).
    /// </summary>
    public (IReadOnlyList<(string Step, double Ms, double Bytes, double Flops, string Timing)> Steps, float Loss) InfoNcePhases(Tensor t, Tensor v, float invTemperature, int warmup, int reps)
    {
        var (n, dim) = Contract.Rows("infonce phases", "t", t);
        Contract.SameShape("infonce phases", "t", t, "v", v);
        if (n < 1 || n > InfoNceV2MaxN) Contract.Fail("infonce phases", $"n must be in 1..{InfoNceV2MaxN} (version 2), got {n}");
        int nb = NceTiles(n);
        using var sm = Empty(new Shape(n, n));            // [n, n] S, then G
        using var diag = Empty(new Shape(n));
        using var part = Empty(new Shape(6, nb, n));
        using var terms = Empty(new Shape(2 * n));
        using var loss = Empty(new Shape(1));
        using var lseRow = Empty(new Shape(n));
        using var lseCol = Empty(new Shape(n));
        using var dloss = Empty(new Shape(1));
        using var off = Empty(new Shape(2, nb, n));
        using var dt = Empty(new Shape(n, dim));
        using var dv = Empty(new Shape(n, dim));
        Fill(dloss, 1f);
        Fill(dt, 0f);
        Fill(dv, 0f);
        double nn = (double)n * n, nd = (double)n * dim, parts = 4.0 * nb * n;
        var steps = new List<(string, double, double, double, string)>();
        // The passes over S are timed with the L2 cache flushed before each call (a read of 256 MB, untimed: kv_l2_flush,
        // which leaves the L2 clean, where a memset would leave it dirty for the timed pass to write back): S (64 MB at
        // n 4096) would otherwise be read largely from an H100's 50 MB L2 when the pass is repeated, and the copy rate it
        // is compared with is HBM's. (On the host emulator a small buffer: the launch is checked, the emulator has no L2.)
        using var flush = Empty(new Shape(Emulated ? 1 << 16 : 64 << 20));
        using var sink = Empty(new Shape(1));
        Fill(flush, 0f);
        Action cold = () =>
        {
            Args().Add(P(flush)).Add(flush.Numel).Add(P(sink));
            Go(_l2Flush, ((uint)(8 * _multiprocessors), 1, 1), 256);
        };
        void Step(string name, Action a, double bytes, double flops, bool pass = false) => steps.Add((name, MedianMs(a, warmup, reps, pass ? cold : null), bytes, flops, LastTiming + (pass ? ", L2 flushed before each call" : "")));
        string gemm = PreciseGemmVersion == 3 && PreciseGemmV3Unavailable is null ? "3xTF32 wgmma" : "3xTF32 mma.sync";
        Step($"S = invT t v^T ({gemm})", () => NceScores(t, v, invTemperature, sm), 4 * (2 * nd + nn), 2 * nn * dim);
        Step("diagonal + row/column statistics (one read of S)", () => NceStats(sm, diag, part), 4 * (nn + 2 * n) + 6 * parts, 6 * nn, pass: true);
        Step("combine: lse, loss", () => NceCombine(diag, part, lseRow, lseCol, terms, loss), 6 * parts + 4.0 * 5 * n, 10.0 * n * nb);
        var first = new float[1];
        CopyToHost(loss, first);
        Step("G = dloss/dS over S in place (one read, one write)", () => NceGradTiles(sm, lseRow, lseCol, dloss, invTemperature, off), 8 * nn + 2 * parts, 8 * nn, pass: true);
        Step("G diagonal", () => NceGradDiagonal(off, dloss, invTemperature, sm), 2 * parts + 8.0 * n, 2.0 * n * nb);
        Step($"dt += G v, dv += G^T t ({gemm})", () => NceGradGemms(sm, t, v, dt, dv), 4 * (nn + 4 * nd), 4 * nn * dim);
        return (steps, first[0]);
    }

    public override void InfoNceBackward(Tensor t, Tensor v, float invTemperature, Tensor lseRow, Tensor lseCol, Tensor dloss, Tensor? dt, Tensor? dv)
    {
        const string op = "infonce backward";
        var (n, dim) = Contract.Rows(op, "t", t);
        Contract.SameShape(op, "t", t, "v", v);
        Contract.SameShapeOrNull(op, "t", t, "dt", dt); Contract.SameShapeOrNull(op, "v", v, "dv", dv);
        Contract.Dims(op, "lseRow", lseRow, n); Contract.Dims(op, "lseCol", lseCol, n); Contract.Scalar(op, "dloss", dloss);
        if (n == 0 || (dt is null && dv is null)) return;
        int nb = (n + NceTile - 1) / NceTile;
        if (nb > MaxGridYZ)
        {
            base.InfoNceBackward(t, v, invTemperature, lseRow, lseCol, dloss, dt, dv);
            return;
        }
        bool v2 = InfoNceVersion == 2 && n <= InfoNceV2MaxN;
        // Version 2: the forward's S when this is its backward (KeepInfoNceScores), taken over (G is written over it).
        Tensor? kept = null;
        if (v2 && _nceKept is { } k && ReferenceEquals(k.LseRow, lseRow) && k.T == P(t) && k.V == P(v)
            && k.InvTemperature == invTemperature && k.S.Shape[0] == n)
        {
            kept = k.S;
            _nceKept = null;
            InfoNceScoresReused++;
        }
        using var g = kept ?? Empty(new Shape(n, n));           // [n, n] dloss/dS * invT (version 2: S first, G over it)
        using var off = Empty(new Shape(2, nb, n));             // row and column off-diagonal masses, each [nb, n]
        V ov = F(off);
        long slab = (long)nb * n;
        if (v2)
        {
            if (kept is null) NceScores(t, v, invTemperature, g);
            NceGradTiles(g, lseRow, lseCol, dloss, invTemperature, off);
        }
        else
        {
            Args().Add(P(t)).Add(P(v)).Add(P(lseRow)).Add(P(lseCol)).Add(P(dloss)).Add(n).Add(dim).Add(invTemperature).Add(P(g))
                .Add(P(ov.SubView(0, slab))).Add(P(ov.SubView(slab, slab)));
            Go(_nceBackTiles, ((uint)nb, (uint)nb, 1), 256);
        }
        NceGradDiagonal(off, dloss, invTemperature, g);
        // dt += G v, dv += G^T t in f32: bf16 operands would cost ~3e-3 of the gradient.
        if (v2)
        {
            NceGradGemms(g, t, v, dt, dv);
            return;
        }
        if (dt is not null) LaunchGemmPrecise(n, dim, n, F(g), n, false, F(v), dim, false, F(dt), dim);
        if (dv is not null) LaunchGemmPrecise(n, dim, n, F(g), n, true, F(t), dim, false, F(dv), dim);
    }

    /// <summary>
    /// op(x) [R, Kc] f32 (x [R, Kc] with leading dim ld, or x [Kc, R] when trans) -> hi, lo [R, ldy]: the operand layout
    /// of gemm_tf32x3_wgmma_tma.
    /// </summary>
    private void SplitTf32(nint x, int r, int kc, int ld, bool trans, nint hi, nint lo, int ldy)
    {
        Args().Add(x).Add(r).Add(kc).Add(ld).Add(trans ? 1 : 0).Add(hi).Add(lo).Add(ldy);
        Go(_splitTf32, (Blocks(ldy, 32), Blocks(r, 32), 1), 256);
    }

    /// <summary>c [M, N] += op(a) op(b) at f32 accuracy (one batch, no bias): PreciseGemmVersion 2 or 3 on the tensor cores, else the ILGPU f32 GEMM.</summary>
    private void LaunchGemmPrecise(int m, int n, int k, V a, int lda, bool transA, V b, int ldb, bool transB, V c, int ldc)
    {
        if (PreciseGemmVersion < 2 || Blocks(m, 128) > MaxGridYZ)
        {
            LaunchGemmF32(m, n, k, a, lda, transA, 0, b, ldb, transB, 0, c, ldc, 0, 1, V.Empty, true);
            return;
        }
        LaunchGemmF32x3(m, n, k, a, lda, transA, b, ldb, transB, c, ldc, 1f, accumulate: true);
    }

    /// <summary>
    /// c [M, N] = alpha op(a) op(b) (+ c when accumulate) at f32 accuracy on the tensor cores (one batch, no bias; M within
    /// the grid): the Hopper wgmma + TMA kernel with PreciseGemmVersion 3 where it runs, else gemm_f32x3.
    /// </summary>
    private void LaunchGemmF32x3(int m, int n, int k, V a, int lda, bool transA, V b, int ldb, bool transB, V c, int ldc, float alpha, bool accumulate)
    {
        if (PreciseGemmVersion == 3 && PreciseGemmV3Unavailable is null && k > 0 && Blocks(n, Gemm2Cols) <= MaxGridYZ && KMajorRows(m) && KMajorRows(n))
        {
            // op(a) [M, K] and op(b)^T [N, K] split into tf32 hi + lo, K-major, K rounded up to 4 (16-byte rows).
            int kp = (k + 3) / 4 * 4;
            using var ahi = Empty(new Shape(m, kp));
            using var alo = Empty(new Shape(m, kp));
            using var bhi = Empty(new Shape(n, kp));
            using var blo = Empty(new Shape(n, kp));
            if (new[] { P(ahi), P(alo), P(bhi), P(blo) }.All(p => p % 16 == 0))
            {
                SplitTf32(P(a), m, k, lda, transA, P(ahi), P(alo), kp);
                SplitTf32(P(b), n, k, ldb, !transB, P(bhi), P(blo), kp);
                TensorMap Map(Tensor x, int rows, uint box) =>
                    _driver.EncodeTensorMap(CudaDriver.TensorMapF32, P(x), (ulong)kp, (ulong)rows, 1, 4UL * (ulong)kp, 4UL * (ulong)kp * (ulong)rows, 32, box);
                Args().Add(Map(ahi, m, Gemm2Rows)).Add(Map(alo, m, Gemm2Rows)).Add(Map(bhi, n, Gemm2Cols)).Add(Map(blo, n, Gemm2Cols))
                    .Add(P(c)).Add(m).Add(n).Add(kp).Add(ldc).Add(alpha).Add(accumulate ? 1 : 0);
                Go(_gemmTf32x3, (Blocks(m, Gemm2Rows), Blocks(n, Gemm2Cols), 1), Gemm4Threads, Gemm4SharedBytes);
                return;
            }
        }
        Args().Add(P(a)).Add(P(b)).Add((nint)0).Add(P(c)).Add(m).Add(n).Add(k).Add(lda).Add(ldb).Add(ldc)
            .Add(transA ? 1 : 0).Add(transB ? 1 : 0).Add(0L).Add(0L).Add(0L).Add(alpha).Add(accumulate ? 1 : 0);
        Go(_gemmF32x3, (Blocks(n, 128), Blocks(m, 128), 1), 256);
    }

    // ---------------------------------------------------------------- retrieval
    public override void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices)
    {
        var (q, n, d) = Contract.TopK(queries, corpus, k, scores, indices);
        if (q == 0) return;
        if (!TopKFits(n, d))
        {
            base.TopK(queries, corpus, k, scores, indices);
            return;
        }
        TopKLaunch(_topkChunks, P(queries), q, d, P(corpus), n, k, P(scores), P(indices));
    }

    /// <summary>
    /// Top-k over an f16 corpus (the index's storage type; the engine's tensors hold 4-byte elements, so the corpus is a
    /// raw ILGPU view of IEEE halves on this backend's accelerator). queries [Q, D] f32, corpus [N * D] f16 row-major,
    /// scores [Q, k] and indices i32 [Q, k]: the contract of <see cref="IBackend.TopK"/>, scores in f32.
    /// <paramref name="maxRowNorm"/>: an upper bound on the corpus rows' L2 norms where the caller knows one (version 2
    /// otherwise measures it, one extra pass over the corpus); a wrong bound can make version 2's result inexact.
    /// </summary>
    public void TopKF16(Tensor queries, ArrayView<System.Half> corpus, int k, Tensor scores, Tensor indices, float? maxRowNorm = null)
    {
        const string op = "topk f16";
        if (queries.Rank != 2) Contract.Fail(op, $"queries must be [Q, D], got {queries.Shape}");
        int q = queries.Shape[0], d = queries.Shape[1];
        if (d == 0 || corpus.Length % d != 0) Contract.Fail(op, $"corpus of {corpus.Length} halves is not [N, {d}]");
        long n = corpus.Length / d;
        if (n > int.MaxValue) Contract.Fail(op, $"corpus of {n} rows: at most {int.MaxValue}");
        if (k < 1 || k > Math.Min(n, Contract.MaxTopK)) Contract.Fail(op, $"k must be in [1, min(N = {n}, {Contract.MaxTopK})], got {k}");
        if (maxRowNorm is { } mr && !(mr >= 0 && float.IsFinite(mr))) Contract.Fail(op, $"maxRowNorm must be finite and >= 0, got {mr}");
        Contract.Dims(op, "scores", scores, q, k);
        Contract.DTypeIs(op, "indices", indices, DType.I32);
        Contract.Dims(op, "indices", indices, q, k);
        if (!TopKFits((int)n, d)) throw new BackendException($"{op}: D = {d} > {TopKMaxDim} or N = {n} too large for topk.cu");
        LastTopKFallbacks = 0;
        if (q == 0) return;
        nint corpusPtr = corpus.LoadEffectiveAddressAsPtr();
        if (TopKVersion >= 2 && TopKV2Plan(q, (int)n, d, k, corpusPtr, _multiprocessors, TopKV2Unavailable is null) is { } plan)
        {
            TopKF16V2(plan, queries, corpusPtr, (int)n, k, scores, indices, maxRowNorm);
            return;
        }
        TopKLaunch(_topkChunksF16, P(queries), q, d, corpusPtr, (int)n, k, P(scores), P(indices));
        LastTopKScorer = "v1";
    }

    /// <summary>How version 2 splits a search: kp candidates per query, query tiles x corpus slices of tilesPerSlice 256-row tiles.</summary>
    public sealed record TopKV2Layout(int Kp, int QueryTiles, int Slices, int TilesPerSlice);

    /// <summary>
    /// Version 2's layout for Q queries over N x D, or null where it does not apply (k above 48, D not a multiple of 8,
    /// a corpus not 16-byte aligned, or the device short of shared memory). About two blocks per multiprocessor in all,
    /// the query tile varying fastest so that the blocks of one corpus slice run together.
    /// </summary>
    public static TopKV2Layout? TopKV2Plan(int q, int n, int d, int k, nint corpusAddress, int multiprocessors, bool deviceFits)
    {
        if (!deviceFits || k > TcMaxK || d % 8 != 0 || corpusAddress % 16 != 0 || q <= 0 || n <= 0) return null;
        int kp = k <= 16 ? 32 : TcMaxList;
        int qTiles = (q + TcQueries - 1) / TcQueries;
        int tiles = (n + TcRows - 1) / TcRows;
        int slices = Math.Clamp((2 * Math.Max(1, multiprocessors) + qTiles - 1) / qTiles, 1, Math.Min(tiles, MaxGridYZ));
        int perSlice = (tiles + slices - 1) / slices;
        slices = (tiles + perSlice - 1) / perSlice;   // no empty slice
        return new TopKV2Layout(kp, qTiles, slices, perSlice);
    }

    private void TopKF16V2(TopKV2Layout plan, Tensor queryRows, nint corpus, int n, int k, Tensor scores, Tensor indices, float? maxRowNorm)
    {
        int kp = plan.Kp, q = queryRows.Shape[0], d = queryRows.Shape[1];
        nint queries = P(queryRows);
        using var qh = Empty(new Shape(q, d / 2));                              // [Q, D] f16 bits, two to an element
        using var maxNorm = Empty(new Shape(1));
        using var partS = Empty(new Shape(q, plan.Slices, kp));                 // [Q, slices, kp] each slice's best, best first
        using var partI = Empty(new Shape(q, plan.Slices, kp), DType.I32);
        using var candS = Empty(new Shape(q, kp));                              // [Q, kp] the best approximate candidates
        using var candI = Empty(new Shape(q, kp), DType.I32);
        using var fail = Empty(new Shape(q), DType.I32);                        // [Q] 1: the certificate failed
        Poison(partS, partI, candS, candI);
        long elems = (long)q * d;
        Args().Add(queries).Add(elems).Add(P(qh));
        Go(_tcQueries, ((uint)Math.Min(Blocks(elems, 256), 65535u), 1, 1), 256);
        Fill(maxNorm, maxRowNorm ?? 0f);
        if (maxRowNorm is null)
        {
            Args().Add(corpus).Add(n).Add(d).Add(P(maxNorm));
            Go(_tcMaxNorm, ((uint)Math.Min(Blocks(n, 8), 8L * _multiprocessors), 1, 1), 256);
        }
        if (TopKVersion == 3 && TopKV3Unavailable is null && kp == 32 && TmaOperand(P(qh), q, d, 0) && TmaOperand(corpus, n, d, 0))
        {
            // Version 3: 2-D operands as one-batch TMA maps, boxes of 64 of D x 128 queries and x 256 corpus rows (a
            // quarter of that in clusters of four, each block loading its share of the corpus tile).
            bool cluster = TopKCluster == 4 && TopKV3ClusterUnavailable is null && (plan.QueryTiles % 4 == 0 || plan.QueryTiles >= 16);
            var tq = _driver.EncodeTensorMap(CudaDriver.TensorMapF16, P(qh), (ulong)d, (ulong)q, 1, 2UL * (ulong)d, 2UL * (ulong)d * (ulong)q, 64, TcQueries);
            var tc = _driver.EncodeTensorMap(CudaDriver.TensorMapF16, corpus, (ulong)d, (ulong)n, 1, 2UL * (ulong)d, 2UL * (ulong)d * (ulong)n, 64,
                (uint)(cluster ? TcRows / 4 : TcRows));
            Args().Add(tq).Add(tc).Add(q).Add(n).Add(d).Add(plan.TilesPerSlice).Add(P(partS)).Add(P(partI));
            if (cluster)
            {
                GoCluster(_tc3x4, ((uint)(plan.QueryTiles + 3) / 4 * 4, (uint)plan.Slices, 1), Tc3Threads, Tc3SharedBytes, 4);
                LastTopKScorer = "v3 wgmma + TMA, clusters of 4";
            }
            else
            {
                Go(_tc3, ((uint)plan.QueryTiles, (uint)plan.Slices, 1), Tc3Threads, Tc3SharedBytes);
                LastTopKScorer = "v3 wgmma + TMA";
            }
        }
        else
        {
            Args().Add(P(qh)).Add(corpus).Add(q).Add(n).Add(d).Add(plan.TilesPerSlice).Add(kp).Add(P(partS)).Add(P(partI));
            Go(_tcScore, ((uint)plan.QueryTiles, (uint)plan.Slices, 1), 256, TcSharedBytes);
            LastTopKScorer = "v2 mma.sync";
        }
        Args().Add(P(partS)).Add(P(partI)).Add(plan.Slices).Add(kp).Add(kp).Add(P(candS)).Add(P(candI));
        Go(_topkMerge, ((uint)q, 1, 1), 256);
        Args().Add(queries).Add(corpus).Add(n).Add(d).Add(kp).Add(P(candS)).Add(P(candI)).Add(P(maxNorm)).Add(k)
            .Add(P(scores)).Add(P(indices)).Add(P(fail));
        Go(_tcRescore, ((uint)q, 1, 1), 256, (uint)(d * sizeof(float)));
        var failed = new int[q];
        CopyToHost(fail, failed);
        int[] rows = [.. Enumerable.Range(0, q).Where(i => failed[i] != 0)];
        LastTopKFallbacks = rows.Length;
        if (rows.Length > 0) TopKF16Fallback(rows, queryRows, corpus, n, k, scores, indices);
    }

    /// <summary>
    /// Version 1 for the queries that failed version 2/3's certificate, all in one search (near-ties, e.g. a corpus of
    /// duplicated rows, can fail many: one launch pair over the gathered queries instead of a pair per query), their
    /// rows of scores [Q, k] / indices [Q, k] replaced through the host (Q k 8 bytes each way).
    /// </summary>
    private void TopKF16Fallback(int[] rows, Tensor queries, nint corpus, int n, int k, Tensor scores, Tensor indices)
    {
        int f = rows.Length, q = queries.Shape[0], d = queries.Shape[1];
        using var ids = Empty(new Shape(f), DType.I32);          // [F] the failed queries
        using var fq = Empty(new Shape(f, d));                    // [F, D] their rows
        using var fs = Empty(new Shape(f, k));                    // [F, k]
        using var fi = Empty(new Shape(f, k), DType.I32);         // [F, k]
        CopyFromHost(rows, ids);
        Embedding(ids, queries, fq);
        TopKLaunch(_topkChunksF16, P(fq), f, d, corpus, n, k, P(fs), P(fi));
        var (hs, hi, s, ix) = (new float[checked(f * k)], new int[checked(f * k)], new float[checked(q * k)], new int[checked(q * k)]);
        CopyToHost(fs, hs);
        CopyToHost(fi, hi);
        CopyToHost(scores, s);
        CopyToHost(indices, ix);
        for (int j = 0; j < f; j++)
        {
            Array.Copy(hs, j * k, s, rows[j] * k, k);
            Array.Copy(hi, j * k, ix, rows[j] * k, k);
        }
        CopyFromHost(s, scores);
        CopyFromHost(ix, indices);
    }

    // The device copy of the f16 rows of the last TopKHalfRows call, grown as needed, freed with the backend.
    private MemoryBuffer1D<System.Half, Stride1D.Dense>? _halfRows;

    /// <summary>
    /// Whether the index hands f16 rows to this backend as halves (<see cref="TopKHalfRows"/>), a quarter of a million
    /// rows a call (384 MB at D 768). Defaults to KERNELVL_CUDA_HALF_ROWS=1, else off (the index widens rows on the host
    /// and uploads f32, as measured on the H100) until the path has run on a GPU.
    /// </summary>
    public bool HalfRowsSearch { get; set; } = Environment.GetEnvironmentVariable("KERNELVL_CUDA_HALF_ROWS") == "1";

    public int PreferredHalfRows => HalfRowsSearch ? 1 << 18 : 0;

    /// <summary>The rows uploaded as they are (f16) into a reused device buffer, then <see cref="TopKF16"/>.</summary>
    public void TopKHalfRows(Tensor queries, ReadOnlySpan<System.Half> rows, int k, Tensor scores, Tensor indices, float? maxRowNorm = null)
    {
        if (_halfRows is null || _halfRows.Length < rows.Length)
        {
            _halfRows?.Dispose();
            _halfRows = null;
            _halfRows = Accelerator.Allocate1D<System.Half>(Math.Max(1, rows.Length));
        }
        UploadHalves(rows, _halfRows.View);
        TopKF16(queries, _halfRows.View.SubView(0, rows.Length), k, scores, indices, maxRowNorm);
    }

    private static bool TopKFits(int n, int d) => d > 0 && d <= TopKMaxDim && (n + TopKChunk - 1) / TopKChunk <= MaxGridYZ;

    private void TopKLaunch(nint chunkKernel, nint queries, int q, int d, nint corpus, int n, int k, nint scores, nint indices)
    {
        int k2 = 1;
        while (k2 < k) k2 *= 2;
        int chunks = (n + TopKChunk - 1) / TopKChunk;
        using var partS = Empty(new Shape(q, chunks, k2));                  // [Q, chunks, K2] each chunk's best, best first
        using var partI = Empty(new Shape(q, chunks, k2), DType.I32);
        Poison(partS, partI);
        Args().Add(queries).Add(corpus).Add(n).Add(d).Add(k2).Add(P(partS)).Add(P(partI));
        Go(chunkKernel, ((uint)q, (uint)chunks, 1), 256, (uint)(d * sizeof(float)));
        Args().Add(P(partS)).Add(P(partI)).Add(chunks).Add(k2).Add(k).Add(scores).Add(indices);
        Go(_topkMerge, ((uint)q, 1, 1), 256);
    }

    public override void Dispose()
    {
        Synchronize();
        _driver.SetCurrentContext(_context);
        ReleaseInfoNceScores();
        _halfRows?.Dispose();
        _sm90?.Dispose();
        _modules.Dispose();
        _args.Dispose();
        base.Dispose();
    }
}
