using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Half = System.Half;
using KernelVL.Backends;
using KernelVL.Backends.Cuda;
using KernelVL.Autograd;
using KernelVL.Model;
using KernelVL.Retrieval;
using KernelVL.Tensors;
using KernelVL.Testing;

namespace KernelVL.Tests;

/// <summary>
/// The emulated CUDA driver (kernels/emu/fake_driver.cpp), built once for the test class: the cuda backend's C# runs
/// end to end on it, each kernel executed by the host emulator.
/// </summary>
public sealed class EmulatedDriver : IDisposable
{
    public string? Library { get; }
    public string? WhyNot { get; }
    private readonly string? _dir;

    public EmulatedDriver()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "kernels", "emu", "build-driver.sh"))) root = Path.GetDirectoryName(root);
        bool clang = Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(d => File.Exists(Path.Combine(d, "clang++-14")));
        if (root is null) { WhyNot = "kernels/emu is not above the test binaries (not a source checkout)"; return; }
        if (!clang) { WhyNot = "clang++-14 is not installed"; return; }
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64) { WhyNot = "the emulator's fiber switch is x86-64 assembly"; return; }
        _dir = Directory.CreateTempSubdirectory("kernelvl-emu-driver-").FullName;
        var psi = new System.Diagnostics.ProcessStartInfo("bash", [Path.Combine(root, "kernels", "emu", "build-driver.sh"), _dir])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"kernels/emu/build-driver.sh failed: {stderr.Result}");
        Library = Path.Combine(_dir, "libkv_emu_cuda.so");
    }

    public void Dispose()
    {
        if (_dir is not null) Directory.Delete(_dir, recursive: true);
    }
}

/// <summary>
/// The cuda backend without a GPU: <see cref="CudaBackend.CreateEmulated"/> on the emulated driver, so that what the
/// kernel-level emulator tests cannot see runs too: the backend's own launches (argument lists checked against each
/// kernel's PTX parameters, grids, dynamic shared memory against the driver's limits, TMA maps through
/// cuTensorMapEncodeTiled's rules), its plans (GEMM version 4's persistent grid and split-K with the reduce, top-k
/// version 2/3's slices, merge, rescoring and the fallback of the queries that fail the certificate), conversions and
/// temporaries, for every kernel version, against the scalar reference through the parity registry. What a first GPU
/// run would find in the host code, found here; what it leaves to the GPU: real timing, the hardware's memory model and
/// schedules beyond the emulator's three, and NVRTC 13's compilation.
/// </summary>
public sealed class EmulatedCudaTests(EmulatedDriver driver, TinyShapesFixture fx) : IClassFixture<EmulatedDriver>, IClassFixture<TinyShapesFixture>
{
    private CudaBackend Backend()
    {
        Skip.If(driver.Library is null, driver.WhyNot);
        return CudaBackend.CreateEmulated(driver.Library!);
    }

    /// <summary>How many times the emulated driver has run each kernel (kv_emu_launch_count), so a test can show that the path it means ran.</summary>
    private long Launches(string kernel) =>
        Marshal.GetDelegateForFunctionPointer<LaunchCount>(NativeLibrary.GetExport(NativeLibrary.Load(driver.Library!), "kv_emu_launch_count"))(kernel);

    private delegate long LaunchCount([MarshalAs(UnmanagedType.LPStr)] string kernel);

    /// <summary>Each configuration the GPU script's checks group runs (perf/gpu/run-v2.sh), and the registry ops it covers.</summary>
    /// <summary>
    /// Each configuration the GPU script's checks group runs (perf/gpu/run-v2.sh), the registry ops it covers, and the
    /// kernels that must have run for it (so that a silent fallback to another version cannot pass).
    /// </summary>
    public static IEnumerable<object[]> Configurations() =>
    [
        ["defaults (version 1)", "^(matmul|attention|layernorm|infonce|topk)", "gemm_bf16 attention_forward_d64 layernorm_forward infonce_forward_tiles infonce_backward_tiles topk_chunks topk_merge"],
        ["GEMM=2", "^matmul", "gemm_bf16_tn convert_bf16_kmajor"],
        ["GEMM=3", "^matmul", "gemm_bf16_wgmma convert_bf16_kmajor"],
        ["GEMM=4", "^matmul", "gemm_bf16_wgmma_tma gemm_splitk_reduce"],
        ["GEMM=4,GEMM_SPLITK=0", "^matmul", "gemm_bf16_wgmma_tma"],
        ["GEMM=4,GEMM_PERSISTENT=0", "^matmul", "gemm_bf16_wgmma_tma gemm_splitk_reduce"],
        ["GEMM=4,GEMM_CLUSTER=2", "^matmul", "gemm_bf16_wgmma_tma_x2 gemm_splitk_reduce"],
        ["GEMM=4,GEMM_CLUSTER=2,GEMM_PERSISTENT=0", "^matmul", "gemm_bf16_wgmma_tma_x2"],
        ["GEMM_F32=2", "^infonce", "gemm_f32x3"],
        ["GEMM_F32=3", "^infonce", "gemm_tf32x3_wgmma_tma split_tf32_kmajor"],
        ["INFONCE=2", "^infonce", "infonce_stats_tiles infonce_backward_tiles_of gemm_f32x3"],
        ["INFONCE=2,GEMM_F32=3", "^infonce", "infonce_stats_tiles infonce_backward_tiles_of gemm_tf32x3_wgmma_tma"],
        ["ATTENTION=2", "^attention$", "attention_forward_d64_v2"],
        ["ATTENTION=3", "^attention$", "attention_forward_d64_wgmma"],
        ["ATTENTION_BACKWARD=2", "^attention_backward", "attention_backward_delta attention_backward_dkdv_d64 attention_backward_dq_d64"],
        ["LAYERNORM_BACKWARD=2", "^layernorm_backward", "layernorm_backward_dx layernorm_backward_params_partial layernorm_backward_params_combine"],
    ];

    private static void Configure(CudaBackend be, string config)
    {
        foreach (var setting in config.StartsWith("defaults", StringComparison.Ordinal) ? [] : config.Split(','))
        {
            var (name, value) = (setting.Split('=')[0], int.Parse(setting.Split('=')[1], System.Globalization.CultureInfo.InvariantCulture));
            switch (name)
            {
                case "GEMM": be.GemmVersion = value; break;
                case "GEMM_SPLITK": be.GemmSplitK = value != 0; break;
                case "GEMM_PERSISTENT": be.GemmPersistent = value != 0; break;
                case "GEMM_CLUSTER": be.GemmCluster = value; break;
                case "GEMM_F32": be.PreciseGemmVersion = value; break;
                case "INFONCE": be.InfoNceVersion = value; break;
                case "ATTENTION": be.AttentionVersion = value; break;
                case "ATTENTION_BACKWARD": be.AttentionBackwardVersion = value; break;
                case "LAYERNORM_BACKWARD": be.LayerNormBackwardVersion = value; break;
                default: throw new ArgumentException(setting);
            }
        }
    }

    [SkippableFact]
    public void TheEmulatedH100OffersEveryKernelVersion()
    {
        using var be = Backend();
        Assert.True(be.Emulated);
        Assert.All(be.VersionAvailability.SkipLast(1), line => Assert.Matches(@": available( \(.+\))?$", line));
        // cuOccupancyMaxActiveClusters as the emulated driver answers it (the H100's 132 multiprocessors in pairs, in fours:
        // it ignores the blocks' shared memory and threads, which a real driver would not).
        Assert.Contains(be.VersionAvailability, line => line.EndsWith("clusters of 2 (B multicast): available (66 clusters resident)", StringComparison.Ordinal));
        Assert.Contains(be.VersionAvailability, line => line.EndsWith("clusters of 4 (corpus multicast): available (33 clusters resident)", StringComparison.Ordinal));
        Assert.All(be.KernelSources, s => Assert.StartsWith("embedded ptx", s.Path));   // no NVRTC on the emulator: its sources are compiled in
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void RegistryCasesPassOnTheEmulator(string config, string ops, string kernels)
    {
        using var be = Backend();
        Configure(be, config);
        var before = kernels.Split(' ').ToDictionary(k => k, Launches);
        using var reference = new ReferenceBackend();
        var filter = new System.Text.RegularExpressions.Regex(ops);
        var cases = OpRegistry.TestCases().Where(c => filter.IsMatch(c.Op)).ToList();
        Assert.NotEmpty(cases);
        var failures = new List<string>();
        int splits = 0, cluster = 0;
        foreach (var c in cases)
        {
            var r = OpCheck.Run(c, be, reference, seed: Random.Shared.Next());
            if (!r.Ok) failures.Add(r.ToString());
            splits = Math.Max(splits, be.LastGemmSplits);
            cluster = Math.Max(cluster, be.LastGemmCluster);
        }
        Assert.True(failures.Count == 0, $"{config}: {failures.Count} of {cases.Count} failed:\n" + string.Join("\n", failures));
        // Version 4 splits K where the registry's deep case leaves most of the 132 multiprocessors idle, unless turned off.
        if (config.StartsWith("GEMM=4", StringComparison.Ordinal)) Assert.Equal(config.Contains("SPLITK=0") ? 1 : 2, splits);
        // Clusters of two where asked for (and where a case has two row tiles to pair), else none.
        if (config.StartsWith("GEMM=4", StringComparison.Ordinal)) Assert.Equal(config.Contains("CLUSTER=2") ? 2 : 1, cluster);
        foreach (var (kernel, n) in before) Assert.True(Launches(kernel) > n, $"{config}: {kernel} never ran");
    }

    /// <summary>
    /// The f16 top-k (not in the registry: its corpus is halves) through every version's host path: version 2's plan,
    /// merge, rescoring and certificate, version 3's tensor maps, and the one search that serves the queries failing the
    /// certificate (rows repeated 64 times make every query fail it). Each result against an f64 scan (tie-aware) and
    /// version 2/3 against version 1 bit for bit, with and without the norm bound the index passes.
    /// </summary>
    [SkippableTheory]
    [InlineData(3000, 130, 72, 10, 1)]    // partial tiles, D not a multiple of 64, kp 32 (version 3 eligible)
    [InlineData(1500, 40, 64, 40, 1)]     // k 40: kp 64, version 2 only (version 3 serves kp 32)
    [InlineData(2048, 70, 64, 10, 64)]    // 64 copies of each row (kp 32 candidates all copies): every certificate fails, one fallback serves them all
    [InlineData(1100, 400, 72, 10, 1)]    // 4 query tiles: version 3 also in clusters of four (the last tile partly past Q)
    public void HalfCorpusTopKMatchesAnF64ScanInEveryVersion(int n, int q, int d, int k, int copies)
    {
        using var be = Backend();
        be.PoisonScratch = true;   // as the perf benches check: scratch rented as NaN / -1, which no version may read unwritten
        var rng = new Random(Random.Shared.Next());
        var corpus = new Half[n * d];                                         // [N, D]
        for (int r = 0; r < n; r++)
        {
            var src = new Random(r / copies * 7919 + rng.Next(1));
            for (int c = 0; c < d; c++) corpus[r * d + c] = (Half)(2 * src.NextDouble() - 1);
        }
        var queries = new float[q * d];                                       // [Q, D]
        for (int i = 0; i < queries.Length; i++) queries[i] = (float)(2 * rng.NextDouble() - 1);
        using var dev = be.Accelerator.Allocate1D(corpus);
        using var qt = be.Empty(new Shape(q, d));
        using var scores = be.Empty(new Shape(q, k));
        using var indices = be.Empty(new Shape(q, k), DType.I32);
        be.CopyFromHost(queries, qt);
        float bound = RowNorms.MaxNormUpperBound(corpus, d);
        float[]? s1 = null;
        int[]? i1 = null;
        bool clusters = (q + 127) / 128 % 4 == 0;
        foreach (var (version, cluster) in clusters ? new[] { (1, 1), (2, 1), (3, 1), (3, 4) } : new[] { (1, 1), (2, 1), (3, 1) })
            foreach (float? maxNorm in new float?[] { null, bound })
            {
                be.TopKVersion = version;
                be.TopKCluster = cluster;
                long fallbacksBefore = Launches("topk_chunks_f16"), v2 = Launches("topk_tc_f16"), v3 = Launches("topk_tc_f16_wgmma"), v3x4 = Launches("topk_tc_f16_wgmma_x4");
                be.TopKF16(qt, dev.View, k, scores, indices, maxNorm);
                var (s, ix) = (new float[q * k], new int[q * k]);
                be.CopyToHost(scores, s);
                be.CopyToHost(indices, ix);
                string what = $"version {version} ({be.LastTopKScorer}), bound {maxNorm?.ToString() ?? "measured"}";
                for (int i = 0; i < q; i++) AssertTopK(corpus, queries, n, d, k, i, s, ix, what);
                if (version == 1) { s1 = s; i1 = ix; }
                else
                {
                    Assert.Equal(i1, ix);
                    Assert.Equal(s1, s);
                    bool v3Eligible = k <= 16;
                    Assert.True(cluster == 4 ? Launches("topk_tc_f16_wgmma_x4") > v3x4 && Launches("topk_tc_f16_wgmma") == v3
                        : version == 3 && v3Eligible ? Launches("topk_tc_f16_wgmma") > v3 : Launches("topk_tc_f16") > v2, $"{what}: its scoring kernel did not run");
                    // Every query fails the certificate where its candidates are copies of a few rows; one search serves them all.
                    if (copies > 1)
                    {
                        Assert.Equal(q, be.LastTopKFallbacks);
                        Assert.Equal(fallbacksBefore + 1, Launches("topk_chunks_f16"));
                    }
                }
            }
    }

    private static void AssertTopK(Half[] corpus, float[] queries, int n, int d, int k, int i, float[] s, int[] idx, string what)
    {
        var exact = new double[n];
        for (int r = 0; r < n; r++)
        {
            double dot = 0;
            for (int c = 0; c < d; c++) dot += (double)queries[i * d + c] * (double)corpus[r * d + c];
            exact[r] = dot;
        }
        double tol = 1e-5 * d;   // f32 accumulation of D terms of magnitude <= 1
        var seen = new HashSet<int>();
        for (int j = 0; j < k; j++)
        {
            int id = idx[i * k + j];
            Assert.True(id >= 0 && id < n && seen.Add(id), $"{what}: query {i} rank {j}: index {id} out of range or repeated");
            Assert.True(Math.Abs(exact[id] - s[i * k + j]) <= tol, $"{what}: query {i} rank {j}: row {id} scores {exact[id]}, reported {s[i * k + j]}");
            Assert.True(j == 0 || s[i * k + j] <= s[i * k + j - 1], $"{what}: query {i}: not descending at rank {j}");
        }
        double kth = s[i * k + k - 1];
        for (int r = 0; r < n; r++)
            Assert.False(!seen.Contains(r) && exact[r] > kth + tol, $"{what}: query {i}: row {r} scores {exact[r]} > the k-th {kth} but is missing");
    }

    /// <summary>The index's search with f16 rows handed over as halves (the path KERNELVL_CUDA_HALF_ROWS=1 turns on), segments' norm bounds included.</summary>
    [SkippableFact]
    public void IndexSearchOnHalfRowsMatchesTheCpuBackend()
    {
        using var be = Backend();
        be.HalfRowsSearch = true;
        be.TopKVersion = 3;
        var rng = new Random(Random.Shared.Next());
        int d = 64, n = 1200, q = 20, k = 10;
        var v = new float[n * d];
        for (int i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() - 0.5);
        string dir = Directory.CreateTempSubdirectory("kernelvl-emu-index-").FullName;
        try
        {
            var idx = EmbeddingIndex.CreateOrResume(dir, "fp", d, VectorDType.F16, null);
            for (int s = 0; s < n; s += 500)
                idx.Append("image", Enumerable.Range(s, Math.Min(500, n - s)).Select(i => new IndexItem("image", 0, $"id{i}")).ToList(), v.AsSpan(s * d, Math.Min(500, n - s) * d));
            var queries = new float[q * d];
            for (int i = 0; i < queries.Length; i++) queries[i] = (float)(rng.NextDouble() - 0.5);
            var opened = EmbeddingIndex.Open(dir, "fp");
            long tc3 = Launches("topk_tc_f16_wgmma");
            var hits = opened.Search(be, "image", queries, k);
            Assert.True(Launches("topk_tc_f16_wgmma") > tc3, "the index did not reach top-k version 3");
            using var cpu = new KernelVL.Backends.Cpu.CpuBackend();
            var want = opened.Search(cpu, "image", queries, k);
            // Both exact up to f32 summation order (the cpu backend's SIMD sums, the cuda kernels' warp sums): rows must
            // agree wherever their scores are apart by more than that.
            for (int i = 0; i < q; i++)
                for (int j = 0; j < k; j++)
                {
                    Assert.True(Math.Abs(want[i][j].Score - hits[i][j].Score) <= 1e-5f * Math.Max(1f, Math.Abs(want[i][j].Score)), $"query {i} rank {j}");
                    bool apart = (j == 0 || want[i][j - 1].Score - want[i][j].Score > 1e-5f) && (j == k - 1 || want[i][j].Score - want[i][j + 1].Score > 1e-5f);
                    if (apart) Assert.Equal(want[i][j].Item.Row, hits[i][j].Item.Row);
                }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The bf16-operand GEMM entry (perf gemm-bf16's path): ToBf16KMajor, then MatMulBf16 on versions 2-4, against f64 of the rounded operands.</summary>
    [SkippableFact]
    public void Bf16OperandGemmMatchesF64InEveryVersion()
    {
        using var be = Backend();
        be.PoisonScratch = true;   // as gemm-bf16 checks: split-K's slices rented as NaN, which the reduce may not read unwritten
        var rng = new Random(Random.Shared.Next());
        int m = 130, n = 200, k = 1100;   // version 4 splits K here (few tiles, deep K)
        var a = new float[m * k];
        var b = new float[n * k];
        var bias = new float[n];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(2 * rng.NextDouble() - 1);
        for (int i = 0; i < b.Length; i++) b[i] = (float)(2 * rng.NextDouble() - 1);
        for (int i = 0; i < n; i++) bias[i] = (float)(2 * rng.NextDouble() - 1);
        using var at = be.Empty(new Shape(m, k));
        using var bt = be.Empty(new Shape(n, k));
        using var biasT = be.Empty(new Shape(n));
        using var c = be.Empty(new Shape(m, n));
        be.CopyFromHost(a, at);
        be.CopyFromHost(b, bt);
        be.CopyFromHost(bias, biasT);
        static float R(float x) => (float)(BFloat16Round(x));
        foreach (int version in new[] { 2, 3, 4 })
        {
            be.GemmVersion = version;
            using var a16 = be.ToBf16KMajor(at, trans: false);
            using var b16 = be.ToBf16KMajor(bt, trans: false);
            be.MatMulBf16(a16, b16, k, biasT, c);
            var got = new float[m * n];
            be.CopyToHost(c, got);
            double err = 0, max = 0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double want = bias[j];
                    for (int t = 0; t < k; t++) want += (double)R(a[i * k + t]) * R(b[j * k + t]);
                    err = Math.Max(err, Math.Abs(got[i * n + j] - want));
                    max = Math.Max(max, Math.Abs(want));
                }
            Assert.True(err / max < 1e-5, $"version {version}: {err / max:E2} of max |C| (f32 accumulation of exact bf16 products)");
            if (version == 4) Assert.True(be.LastGemmSplits > 1, "version 4 did not split K");
        }
    }

    private static double BFloat16Round(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        bits += 0x7fff + ((bits >> 16) & 1);   // round to nearest even (finite inputs)
        return BitConverter.UInt32BitsToSingle(bits & 0xffff0000u);
    }

    /// <summary>
    /// The model as training runs it (the decomposed encoders' InfoNCE loss and every parameter's gradient) on the
    /// emulated cuda backend with every new kernel version selected, against the cpu backend: heads of 64 so that the
    /// hand attention kernels (forward v3, backward v2) serve the encoder, the GEMMs on version 4 (bias and GELU
    /// epilogues), layer norm backward v2, InfoNCE v2 on the Hopper 3xTF32 GEMM. Budget: the registry's bf16 budget (2e-2 of each gradient's max; measured under 1e-2).
    /// </summary>
    [SkippableFact]
    public void ModelLossAndGradientsMatchTheCpuBackendWithEveryNewVersion()
    {
        using var be = Backend();
        be.GemmVersion = 4;
        be.AttentionVersion = 3;
        be.AttentionBackwardVersion = 2;
        be.LayerNormBackwardVersion = 2;
        be.InfoNceVersion = 2;
        be.PreciseGemmVersion = 3;
        using var cpu = new KernelVL.Backends.Cpu.CpuBackend();
        var cfg = VlModelTests.Micro with { HiddenSize = 128, NumHeads = 2, IntermediateSize = 256 };
        int seed = Random.Shared.Next();
        var text = VlModelTests.Batch(new Random(seed), 4, text: true, image: false);
        var images = VlModelTests.Batch(new Random(seed + 1), 4, text: false, image: true);
        var counts = new[] { "gemm_bf16_wgmma_tma", "attention_forward_d64_wgmma", "attention_backward_dq_d64", "layernorm_backward_dx", "infonce_stats_tiles" }
            .ToDictionary(k => k, Launches);
        (float Loss, Dictionary<string, float[]> Grads) Step(IBackend backend)
        {
            using var m = new VlModel(backend, cfg, seed, heads: VlHeads.None);
            using var scope = new TensorScope();
            var loss = Ops.InfoNce(m.Embed(text), m.Embed(images), 0.1f);
            Tape.Backward(loss);
            var grads = m.NamedParameters().Where(p => p.Tensor.Grad is not null).ToDictionary(p => p.Name, p => p.Tensor.Grad!.ToArray());
            return (loss.ToArray()[0], grads);
        }
        var (lc, gc) = Step(be);
        var (lr, gr) = Step(cpu);
        Assert.True(Math.Abs(lc - lr) <= BackendBudgets.Bf16 * Math.Abs(lr), $"loss {lc} on the emulated cuda backend, {lr} on cpu");
        Assert.Equal(gr.Keys.Order(), gc.Keys.Order());
        Assert.True(gr.Count > 10);
        foreach (var (name, want) in gr)
        {
            // The key bias adds q . b to all of a query's scores alike: softmax ignores it, its gradient is rounding only.
            if (name.EndsWith("attention.key.bias", StringComparison.Ordinal)) continue;
            var got = gc[name];
            double max = want.Max(x => Math.Abs((double)x)), err = want.Zip(got, (a, b) => Math.Abs((double)a - b)).Max();
            Assert.True(err <= BackendBudgets.Bf16 * max, $"{name}: max error {err:E2} against max |grad| {max:E2}");
        }
        foreach (var (kernel, n) in counts) Assert.True(Launches(kernel) > n, $"{kernel} never ran in the model");
        Assert.Equal(1, be.InfoNceScoresReused);   // the autograd backward took its forward's S
        Assert.False(be.InfoNceScoresKept);
    }

    /// <summary>
    /// Inference's bf16 weight copies (CacheBf16Weights / VlModel.InferenceWeights): each weight converted once in a scope,
    /// results bit for bit those of converting it every call, AdamW on a held weight refused, the copies freed on dispose.
    /// </summary>
    [SkippableTheory]
    [InlineData(2)]
    [InlineData(4)]
    public void InferenceKeepsOneBf16CopyOfEachWeight(int version)
    {
        using var be = Backend();
        be.GemmVersion = version;
        var rng = new Random(Random.Shared.Next());
        int m = 70, n = 96, k = 200;
        float[] Draw(int count) => Enumerable.Range(0, count).Select(_ => (float)(2 * rng.NextDouble() - 1)).ToArray();
        using var x = be.Empty(new Shape(m, k));      // [M, K]
        using var w = be.Empty(new Shape(n, k));      // [N, K] a Linear layer's weight
        using var bias = be.Empty(new Shape(n));
        using var y = be.Empty(new Shape(m, n));
        be.CopyFromHost(Draw(m * k), x);
        be.CopyFromHost(Draw(n * k), w);
        be.CopyFromHost(Draw(n), bias);
        be.MatMul(x, w, bias, y, transA: false, transB: true);
        var plain = y.ToArray();
        long converts = Launches("convert_bf16_kmajor");
        using (be.CacheBf16Weights([w]))
        {
            be.MatMul(x, w, bias, y, transA: false, transB: true);
            Assert.Equal(converts + 2, Launches("convert_bf16_kmajor"));   // x, and w once
            Assert.Equal(plain, y.ToArray());
            be.MatMulGelu(x, w, bias, y, transB: true);                     // the same copy serves the fused GELU GEMM
            be.MatMul(x, w, bias, y, transA: false, transB: true);
            Assert.Equal(converts + 4, Launches("convert_bf16_kmajor"));   // x twice more, w not again
            Assert.Equal(plain, y.ToArray());
            Assert.Equal(1, be.CachedWeightCopies);
            using (be.CacheBf16Weights([x])) Assert.Equal(1, be.CachedWeightCopies);   // nested: the outer scope's copies only
            using var g = be.Empty(new Shape(n, k));
            using var m1 = be.Empty(new Shape(n, k));
            using var v1 = be.Empty(new Shape(n, k));
            var e = Assert.Throws<BackendException>(() => be.AdamW(w, g, m1, v1, new AdamWParams(1e-3f, 0.9f, 0.999f, 1e-8f, 0f), 1));
            Assert.Contains("CacheBf16Weights", e.Message);
            // Every other way to change a held weight is refused too (its bf16 copy would go stale).
            Assert.Throws<BackendException>(() => be.Fill(w, 1f));
            Assert.Throws<BackendException>(() => be.Copy(g, w));
            Assert.Throws<BackendException>(() => be.CopyFromHost(new float[n * k], w));
            be.Fill(g, 1f);   // other tensors are not affected
        }
        Assert.Equal(0, be.CachedWeightCopies);
        be.MatMul(x, w, bias, y, transA: false, transB: true);
        Assert.Equal(converts + 6, Launches("convert_bf16_kmajor"));   // converted per call again
        be.CacheWeights = false;
        using (be.CacheBf16Weights([w])) be.MatMul(x, w, bias, y, transA: false, transB: true);
        Assert.Equal(converts + 8, Launches("convert_bf16_kmajor"));
    }

    /// <summary>The model's embeddings under InferenceWeights equal those without, bit for bit, with fewer conversions.</summary>
    [SkippableFact]
    public void ModelEmbeddingsAreTheSameWithTheWeightCopies()
    {
        using var be = Backend();
        be.GemmVersion = 4;
        var cfg = VlModelTests.Micro with { HiddenSize = 128, NumHeads = 2, IntermediateSize = 256 };
        int seed = Random.Shared.Next();
        using var model = new VlModel(be, cfg, seed, heads: VlHeads.None);
        var images = VlModelTests.Batch(new Random(seed), 3, text: false, image: true);
        using var _ = Tape.NoGrad();
        float[] Embed()
        {
            using var scope = new TensorScope();
            return model.Embed(images).ToArray();
        }
        long c0 = Launches("convert_bf16_kmajor");
        var plain = Embed();
        long perPass = Launches("convert_bf16_kmajor") - c0;
        using (model.InferenceWeights())
        {
            Assert.Equal(plain, Embed());
            long c1 = Launches("convert_bf16_kmajor");
            Assert.Equal(plain, Embed());
            long second = Launches("convert_bf16_kmajor") - c1;
            // Each weight matrix used once a pass (the layer's six Linear weights and the patch projection) is no longer
            // converted; the activations, and the position embeddings' resampling matrix (not a parameter), still are.
            Assert.True(be.CachedWeightCopies >= 7, $"{be.CachedWeightCopies} weight copies");
            Assert.Equal(perPass - be.CachedWeightCopies, second);
        }
    }

    /// <summary>
    /// The kernelvl executable on the cuda backend through KERNELVL_CUDA_DRIVER (the emulated driver): an index built
    /// with --device cuda (GEMM version 4, the encoders' bf16 weight copies) holds the vectors the cpu backend makes,
    /// within bf16 rounding, and a search on it with --device cuda (f16 rows handed over as halves, top-k version 3)
    /// returns what the cpu backend's search of the same index returns.
    /// </summary>
    [SkippableFact]
    public void TheCliIndexesAndSearchesOnTheCudaBackend()
    {
        Skip.If(driver.Library is null, driver.WhyNot);
        string dir = Directory.CreateTempSubdirectory("kernelvl-emu-cli-").FullName;
        try
        {
            var env = new Dictionary<string, string>
            {
                [CudaBackend.DriverVariable] = driver.Library!, ["KERNELVL_CUDA_GEMM"] = "4", ["KERNELVL_CUDA_HALF_ROWS"] = "1", ["KERNELVL_CUDA_TOPK"] = "3",
            };
            (int Code, string Out, string Err) Cli(bool cuda, params string[] args) => CliTests.Run(env, [.. args, "--device", cuda ? "cuda" : "cpu"]);
            string images = Path.GetDirectoryName(fx.Data)!;
            string onCuda = Path.Combine(dir, "cuda"), onCpu = Path.Combine(dir, "cpu");
            foreach (var (cuda, idx) in new[] { (true, onCuda), (false, onCpu) })
            {
                var r = Cli(cuda, "index", "--model", fx.Init, "--data", fx.Data, "--images", images, "--split", "test", "--out", idx);
                Assert.True(r.Code == 0, r.Err);
                Assert.Contains("indexed 16 images and 80 captions", r.Out);
            }
            var a = EmbeddingIndex.Open(onCuda);
            var b = EmbeddingIndex.Open(onCpu);
            foreach (var kind in EmbeddingIndex.Kinds)
            {
                var va = a.ReadAll(kind);
                var vb = b.ReadAll(kind);
                Assert.Equal(vb.Length, va.Length);
                double err = va.Zip(vb, (x, y) => Math.Abs((double)x - y)).Max();
                Assert.True(err <= BackendBudgets.Bf16, $"{kind} vectors: max difference {err:E2} between the cuda and cpu builds (unit vectors)");
            }
            string query = "a small red circle left of a large blue square";
            var rc = Cli(true, "search", "--model", fx.Init, "--index", onCpu, "--text", query, "-k", "5", "--json");
            Assert.True(rc.Code == 0, rc.Err);
            var rp = Cli(false, "search", "--model", fx.Init, "--index", onCpu, "--text", query, "-k", "5", "--json");
            Assert.True(rp.Code == 0, rp.Err);
            var hc = System.Text.Json.Nodes.JsonNode.Parse(rc.Out)!["results"]!.AsArray();
            var hp = System.Text.Json.Nodes.JsonNode.Parse(rp.Out)!["results"]!.AsArray();
            Assert.Equal(5, hc.Count);
            // The query vector differs by bf16 rounding: the scores agree to that, and the first hit where it stands clear.
            for (int i = 0; i < 5; i++) Assert.True(Math.Abs((float)hc[i]!["score"]! - (float)hp[i]!["score"]!) <= BackendBudgets.Bf16, $"rank {i}");
            if ((float)hp[0]!["score"]! - (float)hp[1]!["score"]! > 2 * BackendBudgets.Bf16) Assert.Equal((string?)hp[0]!["path"], (string?)hc[0]!["path"]);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The registry's budgets follow the backend's configuration: InfoNCE version 2 (S on 3xTF32) gets its loss budget,
    /// version 1 keeps the registry's f32 one; the backward and other ops are unchanged.
    /// </summary>
    [SkippableFact]
    public void InfoNceVersion2TakesTheTf32x3LossBudget()
    {
        using var be = Backend();
        var loss = OpRegistry.InfoNce(2, 3);
        var backward = OpRegistry.InfoNceBackward(2, 3);
        be.InfoNceVersion = 1;
        Assert.Equal(loss.Budget, BackendBudgets.For(loss, be));
        be.InfoNceVersion = 2;
        Assert.Equal(CudaBackend.InfoNceTf32x3Budget, BackendBudgets.For(loss, be));
        Assert.True(CudaBackend.InfoNceTf32x3Budget > loss.Budget);
        Assert.Equal(backward.Budget, BackendBudgets.For(backward, be));
        Assert.Equal(BackendBudgets.Bf16, BackendBudgets.For(OpRegistry.MatMul(1, 8, 8, 8, false, false, bias: false, sharedB: false), be));
    }

    /// <summary>The emulated backend with InfoNCE version 2 on the Hopper 3xTF32 GEMM.</summary>
    private CudaBackend InfoNceV2Backend()
    {
        var be = Backend();
        be.InfoNceVersion = 2;
        be.PreciseGemmVersion = 3;
        return be;
    }

    /// <summary>[n, d] of uniform values in [-0.5, 0.5) on the backend.</summary>
    private static Tensor RandomRows(CudaBackend be, Random rng, int n, int d)
    {
        var x = be.Empty(new Shape(n, d));
        be.CopyFromHost(Enumerable.Range(0, n * d).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), x);
        return x;
    }

    /// <summary>perf infonce-phases' steps: the same kernels as the op (its loss bit for bit), every step timed.</summary>
    [SkippableFact]
    public void InfoNcePhasesRunTheOpsSteps()
    {
        using var be = InfoNceV2Backend();
        var rng = new Random(Random.Shared.Next());
        int n = 150, d = 40;
        using var t = RandomRows(be, rng, n, d);
        using var v = RandomRows(be, rng, n, d);
        using var loss = be.Empty(new Shape(1));
        using var lr = be.Empty(new Shape(n));
        using var lc = be.Empty(new Shape(n));
        be.InfoNce(t, v, 20f, loss, lr, lc);
        var (steps, phaseLoss) = be.InfoNcePhases(t, v, 20f, warmup: 0, reps: 1);
        Assert.Equal(loss.ToArray()[0], phaseLoss);
        Assert.Equal(6, steps.Count);
        Assert.All(steps, s => Assert.True(s.Ms > 0 && s.Bytes > 0 && s.Flops > 0, s.Step));
        // Timed behind the busy wait (kv_spin, launched on the emulator too), which the emulator's synchronous launches
        // can never outlast: each step is then timed a call at a time, and says so.
        Assert.All(steps, s => Assert.StartsWith("per call: the host emulator", s.Timing));
        // The two passes over S are timed after a read of a flush buffer (kv_l2_flush; a small one on the emulator).
        Assert.Equal(["diagonal + row/column statistics (one read of S)", "G = dloss/dS over S in place (one read, one write)"],
                     steps.Where(s => s.Timing.EndsWith(", L2 flushed before each call", StringComparison.Ordinal)).Select(s => s.Step));
        Assert.Throws<ShapeException>(() => be.InfoNcePhases(be.Empty(new Shape(CudaBackend.InfoNceV2MaxN + 1, 1)), be.Empty(new Shape(CudaBackend.InfoNceV2MaxN + 1, 1)), 1f, 0, 1));
    }

    /// <summary>
    /// InfoNCE version 2's backward takes its forward's S (KeepInfoNceScores): one f32-accurate GEMM fewer (launch
    /// counts), gradients bit for bit those of computing S again; S is not taken by a backward whose forward was not
    /// the last one, nor for another 1/tau, and a kept S is released by the next forward.
    /// </summary>
    [SkippableFact]
    public void InfoNceBackwardTakesItsForwardsScores()
    {
        using var be = InfoNceV2Backend();
        var rng = new Random(Random.Shared.Next());
        int n = 150, d = 40;
        using var t = RandomRows(be, rng, n, d);
        using var v = RandomRows(be, rng, n, d);
        using var t2 = RandomRows(be, rng, n, d);
        using var v2 = RandomRows(be, rng, n, d);
        Tensor Zeros()
        {
            var x = be.Empty(new Shape(n, d));
            be.Fill(x, 0f);
            return x;
        }
        using var dloss = be.Empty(new Shape(1));
        be.Fill(dloss, 0.75f);
        const string gemm = "gemm_tf32x3_wgmma_tma";
        // One forward + backward: (dt, dv, GEMM launches of the backward, whether it took the kept S).
        (float[] Dt, float[] Dv, long Gemms, bool Took) Run(bool keep, float invT = 20f, bool otherForwardBetween = false, float backwardInvT = 20f)
        {
            be.KeepInfoNceScores = keep;
            using var loss = be.Empty(new Shape(1));
            using var lr = be.Empty(new Shape(n));
            using var lc = be.Empty(new Shape(n));
            be.InfoNce(t, v, invT, loss, lr, lc);
            Assert.Equal(keep, be.InfoNceScoresKept);
            if (otherForwardBetween)
            {
                using var l2 = be.Empty(new Shape(1));
                using var r2 = be.Empty(new Shape(n));
                using var c2 = be.Empty(new Shape(n));
                be.InfoNce(t2, v2, invT, l2, r2, c2);
            }
            using var dt = Zeros();
            using var dv = Zeros();
            long before = Launches(gemm);
            int reused = be.InfoNceScoresReused;
            be.InfoNceBackward(t, v, backwardInvT, lr, lc, dloss, dt, dv);
            return (dt.ToArray(), dv.ToArray(), Launches(gemm) - before, be.InfoNceScoresReused > reused);
        }
        var kept = Run(keep: true);
        Assert.True(kept.Took);
        Assert.Equal(2, kept.Gemms);   // dt and dv only
        Assert.False(be.InfoNceScoresKept);
        var again = Run(keep: false);
        Assert.False(again.Took);
        Assert.Equal(3, again.Gemms);  // S again, then dt and dv
        Assert.Equal(again.Dt, kept.Dt);
        Assert.Equal(again.Dv, kept.Dv);
        var replaced = Run(keep: true, otherForwardBetween: true);
        Assert.False(replaced.Took);
        Assert.Equal(again.Dt, replaced.Dt);
        Assert.True(be.InfoNceScoresKept);   // the other forward's S, until the next forward or ReleaseInfoNceScores
        be.ReleaseInfoNceScores();
        Assert.False(be.InfoNceScoresKept);
        var otherTau = Run(keep: true, backwardInvT: 10f);
        Assert.False(otherTau.Took);
        be.ReleaseInfoNceScores();
    }

    [System.Runtime.InteropServices.UnmanagedFunctionPointer(System.Runtime.InteropServices.CallingConvention.Cdecl)]
    private delegate void SetPending(int n);

    /// <summary>
    /// The timing harness (CudaBackend.MedianMs) behind its busy wait: where the driver says the wait was still running
    /// when the batch was enqueued (the emulator is told to say so), each batch's span is divided by its calls and the
    /// median taken; where it was not (the emulator's synchronous launches), one event pair per call, and LastTiming
    /// says which. Either way the op ran, and the time is positive.
    /// </summary>
    [SkippableFact]
    public void MedianMsQueuesCallsBehindABusyWaitOrSaysItTimedThemOneByOne()
    {
        Skip.If(driver.Library is null, driver.WhyNot);
        var pending = System.Runtime.InteropServices.Marshal.GetDelegateForFunctionPointer<SetPending>(
            System.Runtime.InteropServices.NativeLibrary.GetExport(System.Runtime.InteropServices.NativeLibrary.Load(driver.Library!), "kv_emu_set_pending_event_queries"));
        using var be = Backend();
        using var x = be.Empty(new Shape(64, 48));
        using var y = be.Empty(new Shape(64, 48));
        using var g = be.Empty(new Shape(48));
        using var bb = be.Empty(new Shape(48));
        using var mean = be.Empty(new Shape(64));
        using var rstd = be.Empty(new Shape(64));
        be.CopyFromHost(Enumerable.Range(0, 64 * 48).Select(i => (float)Math.Sin(i)).ToArray(), x);
        be.Fill(g, 1f);
        be.Fill(bb, 0f);
        int calls = 0;
        void Op() { calls++; be.LayerNorm(x, g, bb, 1e-5f, y, mean, rstd); }
        double ms = be.MedianMs(Op, warmup: 1, reps: 4);
        Assert.True(ms > 0 && double.IsFinite(ms), $"{ms}");
        Assert.StartsWith("per call: the host emulator", be.LastTiming);
        Assert.Equal(1 + 1 + 1 + 4, calls);   // warm-up, the span estimate, one try behind the wait, then four timed one by one
        pending(1000);
        try
        {
            calls = 0;
            ms = be.MedianMs(Op, warmup: 1, reps: 4);
            Assert.True(ms > 0 && double.IsFinite(ms), $"{ms}");
            Assert.Matches("^queued, (one call|[0-9]+ calls) a batch behind a [0-9.]+ ms wait$", be.LastTiming);
            Assert.True(calls >= 1 + 1 + 5, $"{calls} calls: five batches at least");
        }
        finally
        {
            pending(0);
        }
    }

    private delegate void SetRegisters([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string entry, int registers);

    [SkippableFact]
    public void TopKVersion3IsNotOfferedWhereItsRegisterSplitCouldHang()
    {
        // Top-k version 3's producer warpgroup gives registers to its consumers with setmaxnreg (40 x 128 + 232 x 256 =
        // 168 x 384): started with fewer than 168 a thread, the consumers' increase would wait forever. A CUBIN whose
        // count differs (another compiler) falls back to version 2, saying why, instead of hanging a first run.
        Skip.If(driver.Library is null, driver.WhyNot);
        var set = System.Runtime.InteropServices.Marshal.GetDelegateForFunctionPointer<SetRegisters>(
            System.Runtime.InteropServices.NativeLibrary.GetExport(System.Runtime.InteropServices.NativeLibrary.Load(driver.Library!), "kv_emu_set_registers"));
        set("topk_tc_f16_wgmma", 160);
        try
        {
            using var be = Backend();
            Assert.Contains("160 registers a thread, where its setmaxnreg split", be.TopKV3Unavailable);
            Assert.Equal(be.TopKV3Unavailable, be.TopKV3ClusterUnavailable);
            Assert.Contains(be.VersionAvailability, l => l.Contains("topk v3") && l.Contains("could hang"));
            Assert.Null(be.TopKV2Unavailable);   // the search still runs, on version 2
        }
        finally
        {
            set("topk_tc_f16_wgmma", 0);
        }
        using var ok = Backend();
        Assert.Null(ok.TopKV3Unavailable);
    }

    /// <summary>The emulated driver refuses what the device would: a function its module's PTX does not declare, a block above the kernel's __launch_bounds__.</summary>
    [SkippableFact]
    public void TheEmulatedDriverRefusesWhatTheDeviceWould()
    {
        Skip.If(driver.Library is null, driver.WhyNot);
        var cu = KernelVL.Cuda.CudaDriver.Load(driver.Library);
        Assert.True(cu.IsEmulator);
        nint module = cu.LoadModule(System.Text.Encoding.UTF8.GetBytes(".visible .entry topk_merge(\n.param .u64 a\n)\n{ ret; }\n"));
        try
        {
            Assert.Contains("cuModuleGetFunction(gemm_bf16)", Assert.Throws<KernelVL.Cuda.CudaException>(() => cu.GetFunction(module, "gemm_bf16")).Message);
            nint merge = cu.GetFunction(module, "topk_merge");
            using var args = new KernelVL.Cuda.KernelArgs();
            var e = Assert.Throws<KernelVL.Cuda.CudaException>(() => cu.Launch(merge, (1, 1, 1), (1024, 1, 1), 0, 0, args));   // topk_merge: __launch_bounds__(256)
            Assert.Contains("cuLaunchKernel", e.Message);
            Assert.Throws<KernelVL.Cuda.CudaException>(() => cu.Launch(merge, (1, 1, 1), (256, 1, 1), 64 * 1024, 0, args));   // above 48 KB without the attribute
            Assert.Throws<KernelVL.Cuda.CudaException>(() => cu.SetMaxDynamicSharedMemory(merge, 228 * 1024));             // above 227 KB
        }
        finally
        {
            cu.UnloadModule(module);
        }
    }
}
