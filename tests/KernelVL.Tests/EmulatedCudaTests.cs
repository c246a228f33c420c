using System.Runtime.InteropServices;
using KernelVL.Backends;
using KernelVL.Backends.Cuda;
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
public sealed class EmulatedCudaTests(EmulatedDriver driver) : IClassFixture<EmulatedDriver>
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
        Assert.All(be.VersionAvailability.SkipLast(1), line => Assert.EndsWith(": available", line));
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
        int splits = 0;
        foreach (var c in cases)
        {
            var r = OpCheck.Run(c, be, reference, seed: Random.Shared.Next());
            if (!r.Ok) failures.Add(r.ToString());
            splits = Math.Max(splits, be.LastGemmSplits);
        }
        Assert.True(failures.Count == 0, $"{config}: {failures.Count} of {cases.Count} failed:\n" + string.Join("\n", failures));
        // Version 4 splits K where the registry's deep case leaves most of the 132 multiprocessors idle, unless turned off.
        if (config.StartsWith("GEMM=4", StringComparison.Ordinal)) Assert.Equal(config.Contains("SPLITK=0") ? 1 : 2, splits);
        foreach (var (kernel, n) in before) Assert.True(Launches(kernel) > n, $"{config}: {kernel} never ran");
    }
}
