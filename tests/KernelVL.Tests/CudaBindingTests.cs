using System.Runtime.InteropServices;
using KernelVL.Backends.Cuda;
using KernelVL.Cuda;
using KernelVL.Testing;

namespace KernelVL.Tests;

/// <summary>What of the CUDA path can be checked without a GPU: the build's PTX, error mapping, argument packing, a missing driver.</summary>
public unsafe class CudaBindingTests
{
    [Fact]
    public void EveryKernelSourceIsCompiledToPtxAndEmbedded()
    {
        foreach (var k in new[] { "layernorm", "gemm", "gemm_sm90", "attention", "infonce", "topk" }) Assert.Contains(k, EmbeddedKernels.Names);
        Assert.Contains("#pragma once", EmbeddedKernels.Header(CudaModules.HeaderName));
        foreach (var name in EmbeddedKernels.Names)
        {
            string ptx = EmbeddedKernels.Ptx(name);
            Assert.Contains(".target sm_80", ptx);
            Assert.Contains(".visible .entry", ptx);
            // every extern "C" __global__ of the source is an entry of the PTX
            var kernels = System.Text.RegularExpressions.Regex.Matches(EmbeddedKernels.Source(name), @"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(");
            Assert.NotEmpty(kernels);
            foreach (System.Text.RegularExpressions.Match m in kernels) Assert.Contains($".entry {m.Groups[1].Value}(", ptx);
        }
        Assert.Contains(".entry layernorm_forward(", EmbeddedKernels.Ptx("layernorm"));
        // The tensor-core kernels really use the tensor cores, and no register array spilled to local memory.
        foreach (var k in new[] { "gemm", "attention" })
        {
            Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", EmbeddedKernels.Ptx(k));
            Assert.DoesNotContain("__local_depot", EmbeddedKernels.Ptx(k));
        }
        // topk version 2: f16 tensor cores fed by cp.async and ldmatrix, its 128-float accumulator kept in registers.
        string topk = EmbeddedKernels.Ptx("topk");
        foreach (var insn in new[] { "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "cp.async.cg.shared.global", "ldmatrix.sync.aligned.m8n8.x4.shared.b16" })
            Assert.Contains(insn, topk);
        Assert.DoesNotContain("__local_depot", topk);
    }

    [SkippableFact]
    public void EveryKernelCompilesThroughNvrtcToCubinWhereLibnvrtcExists()
    {
        // The run-time path (NVRTC, then CUBIN for the device) checked on a machine without a GPU where a libnvrtc is
        // installed: the sources must compile under NVRTC's own headers too, not just clang's, and assemble for Hopper.
        Nvrtc nvrtc;
        try { nvrtc = Nvrtc.Load(); }
        catch (BackendException e) { Skip.If(true, e.Message); return; }
        Skip.IfNot(nvrtc.CanEmitCubin, $"{nvrtc.Library} cannot emit CUBIN");
        // sm_90a where NVRTC knows it (12.0+); CUDA 11.8 knows sm_90.
        var options = nvrtc.Version.Major >= 12 ? CudaModules.Options((9, 0)).ToList() : ["--gpu-architecture=sm_90", "--std=c++17", "-DKERNELVL_NVRTC=1"];
        var headers = CudaModules.Headers();
        Assert.Contains("topk_common.h", headers.Keys);
        foreach (var k in new[] { "layernorm", "gemm", "gemm_sm90", "attention", "infonce", "topk" })
        {
            var (image, compileLog) = nvrtc.Compile(EmbeddedKernels.Source(k), $"{k}.cu", headers, options, cubin: true);
            Assert.True(image.Length > 1000, $"{k}: CUBIN of {image.Length} bytes");
            // No front-end warning (e.g. #1556-D: extern shared arrays of one name with different linkage).
            if (nvrtc.Version.Major >= 12) Assert.DoesNotContain("warning #", compileLog);
            Assert.Equal(0x7f, image[0]);   // an ELF image
            Assert.Equal((byte)'E', image[1]);
        }
        if (nvrtc.Version.Major >= 12)
        {
            // NVRTC 12+ assembles sm_90a here (kernels/fetch-nvrtc12.sh gets one without a GPU): the Hopper kernels with
            // ptxas -v must not spill, and no wgmma may be serialised (ptxas's C7515: ordinary instructions writing the
            // accumulators inside a wgmma pipeline, which costs most of the tensor cores' rate).
            var (_, log) = nvrtc.Compile(EmbeddedKernels.Source("gemm_sm90"), "gemm_sm90.cu", headers, [.. options, "--ptxas-options=-v"], cubin: true);
            Assert.DoesNotContain("C7515", log);
            Assert.DoesNotContain("wgmma.mma_async instructions are serialized", log);   // C7513 and its kin too (C7518)
            // C7517: a warpgroup wait ptxas inserts itself (12.5 does before any ordinary write to a register a wgmma
            // defined while any group is in flight): it silently ends the overlap the kernel was written for.
            Assert.DoesNotContain("C7517", log);
            Assert.DoesNotContain("Potential Performance Loss", log);
            // C7508: ptxas drops every setmaxnreg when it cannot tell the registers at entry (top-k version 3 would
            // silently run its consumers at 168 registers); __launch_bounds__(384, 1) is what lets it tell.
            Assert.DoesNotContain("C7508", log);
            foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(log,
                         @"Compiling entry function '(\w+)'[^\n]*\n(?:[^\n]*\n)*?[^\n]*?(\d+) bytes spill stores"))
                Assert.True(m.Groups[2].Value == "0", $"{m.Groups[1].Value} spills under NVRTC {nvrtc.Version.Major}.{nvrtc.Version.Minor}:\n{log}");
            Assert.Contains("topk_tc_f16_wgmma", log);
        }
        // gemm_sm90.cu's wgmma body (sm_90a only, which CUDA 11.8 cannot assemble): NVRTC's front end must still take it
        // (the 130-operand wgmma asm, the descriptor arithmetic) and emit PTX with the instructions.
        var (ptx, _) = nvrtc.Compile(EmbeddedKernels.Source("gemm_sm90"), "gemm_sm90.cu", headers,
            ["--gpu-architecture=compute_90", "--std=c++17", "-DKERNELVL_NVRTC=1", "-DKERNELVL_SM90A=1"], cubin: false);
        string text = System.Text.Encoding.UTF8.GetString(ptx);
        Assert.Contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", text);
        Assert.Contains("fence.proxy.async.shared::cta", text);
        Assert.DoesNotContain("__local_depot", text);   // the 128-float accumulators stay in registers (versions 3 and 4)
        // Version 4: TMA copies and mbarriers, and the tensor maps read where they are (__grid_constant__: the
        // parameter's own generic address, cvta.param), not from a local copy that TMA could not use.
        string v4 = text[text.IndexOf(".entry gemm_bf16_wgmma_tma(", StringComparison.Ordinal)..];
        Assert.Contains("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes", v4);
        Assert.Contains("mbarrier.try_wait.parity.shared::cta.b64", v4);
        Assert.Contains("mbarrier.arrive.expect_tx.shared::cta.b64", v4);
        Assert.Contains("cvta.param.u64", v4);
        Assert.Contains("wgmma.wait_group.sync.aligned 1;", v4);   // one wgmma group kept in flight
        // Version 4 in clusters of two: B multicast into both blocks, the consumers' remote arrivals, the cluster barrier.
        string x2 = text[text.IndexOf(".entry gemm_bf16_wgmma_tma_x2(", StringComparison.Ordinal)..];
        x2 = x2[..(x2.IndexOf(".entry ", 10, StringComparison.Ordinal) is var end2 and > 0 ? end2 : x2.Length)];
        Assert.Contains("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster", x2);
        Assert.Contains("mapa.shared::cluster.u32", x2);
        Assert.Contains("mbarrier.arrive.release.cluster.shared::cluster.b64", x2);
        Assert.Contains("mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64", x2);
        Assert.Contains("barrier.cluster.arrive.release", x2);
        Assert.Contains("%cluster_ctarank", x2);
        // Top-k version 3 in clusters of four: the corpus tile multicast likewise.
        string t4 = text[text.IndexOf(".entry topk_tc_f16_wgmma_x4(", StringComparison.Ordinal)..];
        t4 = t4[..(t4.IndexOf(".entry ", 10, StringComparison.Ordinal) is var end4 and > 0 ? end4 : t4.Length)];
        Assert.Contains(".multicast::cluster", t4);
        Assert.Contains("mbarrier.arrive.release.cluster.shared::cluster.b64", t4);
        Assert.Contains("barrier.cluster.wait.acquire", t4);
        // The Hopper 3xTF32 GEMM: tf32 wgmma over four TMA maps.
        string f3 = text[text.IndexOf(".entry gemm_tf32x3_wgmma_tma", StringComparison.Ordinal)..];
        Assert.Contains("wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32", f3);
        // Attention version 3: register-A wgmma m64n64k16 for both products.
        string a3 = text[text.IndexOf(".entry attention_forward_d64_wgmma", StringComparison.Ordinal)..];
        Assert.Contains("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", a3);
        // Top-k version 3: the f16 wgmma on TMA-loaded stages, the consumers' named barrier.
        string t3 = text[text.IndexOf(".entry topk_tc_f16_wgmma", StringComparison.Ordinal)..];
        Assert.Contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16", t3);
        Assert.Contains("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes", t3);
    }

    [Fact]
    public void TmaOperandsAreThoseTensorMapsTake()
    {
        // gemm_sm90.cu version 4 maps an operand [batch, rows, ld] bf16 only where cuTensorMapEncodeTiled would take it.
        Assert.True(CudaBackend.TmaOperand(4096, 128, 776, 0));
        Assert.True(CudaBackend.TmaOperand(4096, 128, 776, 128L * 776));
        Assert.False(CudaBackend.TmaOperand(4096 + 8, 128, 776, 0));       // address not 16-byte aligned
        Assert.False(CudaBackend.TmaOperand(4096, 128, 770, 0));           // rows 1540 bytes apart: not a multiple of 16
        Assert.False(CudaBackend.TmaOperand(4096, 128, 776, 128L * 776 + 4)); // batch stride not a multiple of 16 bytes
        Assert.False(CudaBackend.TmaOperand(4096, 1 << 20, 1 << 20, 0));  // 2^41 bytes: past TMA's stride range
        Assert.False(CudaBackend.TmaOperand(4096, 0, 776, 0));            // no rows: a tensor map's extents must be non-zero
    }

    [Theory]
    [InlineData(1024, 768, 3072, 1, 132, 10)]   // the model's FFN down projection: 24 tiles x 48 steps -> 5 splits of 10
    [InlineData(1024, 768, 768, 1, 132, 0)]     // 12 steps: too shallow to pay for the slices
    [InlineData(1024, 3072, 768, 1, 132, 0)]    // 96 tiles: most SMs busy already
    [InlineData(4096, 4096, 4096, 1, 132, 0)]   // 512 tiles
    [InlineData(1024, 768, 3072, 2, 132, 0)]    // batched: no split (z is the batch)
    [InlineData(128, 256, 65536, 1, 132, 128)]  // one tile, 1024 steps: 8 splits (the cap) of 128
    [InlineData(128, 256, 1024, 1, 132, 8)]     // one tile, 16 steps: 2 splits of 8 (each at least 8 steps)
    [InlineData(1024, 768, 3072, 1, 40, 0)]     // a small card: 24 tiles already fill more than half of 40 SMs
    public void GemmV4SplitsKOnlyWhereTilesLeaveMostMultiprocessorsIdle(int m, int n, int k, int batch, int sms, int ksteps)
    {
        Assert.Equal(ksteps, CudaBackend.Gemm4KSteps(m, n, k, batch, sms));
        if (ksteps == 0) return;
        // every split gets at least 8 of the K steps, none is empty, and the splits fit the idle multiprocessors
        int steps = (k + 63) / 64, splits = (steps + ksteps - 1) / ksteps;
        Assert.True(ksteps >= 8 && (splits - 1) * ksteps < steps && splits >= 2 && splits <= 8);
        Assert.True((long)splits * ((m + 127) / 128) * ((n + 255) / 256) <= sms);
    }

    [Fact]
    public void AViewsDeviceAddressIsItsBufferPlusTheOffset()
    {
        // The cuda backend hands kernels view.LoadEffectiveAddressAsPtr() of ILGPU views: on the host it must be the
        // buffer's native pointer plus the view's offset (checked on ILGPU's CPU accelerator, whose pointers are host memory).
        using var context = ILGPU.Context.Create(b => ILGPU.Runtime.CPU.CPUContextExtensions.CPU(b));
        using var acc = context.GetPreferredDevice(preferCPU: true).CreateAccelerator(context);
        using var buffer = acc.Allocate1D<float>(64);
        ILGPU.ArrayView<float> all = buffer.View;
        var view = all.SubView(5, 20);
        Assert.Equal(buffer.NativePtr + 5 * sizeof(float), ILGPU.Runtime.ArrayViewExtensions.LoadEffectiveAddressAsPtr(view));
        Assert.Equal(buffer.NativePtr + 9 * sizeof(float), ILGPU.Runtime.ArrayViewExtensions.LoadEffectiveAddressAsPtr(view.SubView(4)));
    }

    [Fact]
    public void TopKVersion2PlanCoversTheCorpusWithoutEmptySlices()
    {
        // The issue's search on an H100 (132 multiprocessors): 8 query tiles x 33 slices, two blocks per multiprocessor.
        var plan = KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(1024, 1 << 20, 768, 10, 0x10000, 132, true)!;
        Assert.Equal((32, 8, 33), (plan.Kp, plan.QueryTiles, plan.Slices));
        var rng = new Random(7);
        for (int trial = 0; trial < 300; trial++)
        {
            int q = rng.Next(1, 5000), n = rng.Next(1, 3_000_000), k = rng.Next(1, 49), sms = rng.Next(1, 200);
            var p = KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(q, n, 8 * rng.Next(1, 200), k, 4096, sms, true)!;
            int tiles = (n + 255) / 256;
            Assert.True(p.Kp >= k + 16, $"kp {p.Kp} for k {k}");
            Assert.Equal((q + 127) / 128, p.QueryTiles);
            Assert.True((long)p.Slices * p.TilesPerSlice >= tiles, "slices cover the corpus");
            Assert.True((long)(p.Slices - 1) * p.TilesPerSlice < tiles, "the last slice is not empty");
        }
        // Where version 2 does not apply: k above 48, D not a multiple of 8, an unaligned corpus, a device short of shared memory.
        Assert.Null(KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(10, 1000, 768, 49, 4096, 132, true));
        Assert.Null(KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(10, 1000, 100, 10, 4096, 132, true));
        Assert.Null(KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(10, 1000, 768, 10, 4098, 132, true));
        Assert.Null(KernelVL.Backends.Cuda.CudaBackend.TopKV2Plan(10, 1000, 768, 10, 4096, 132, false));
    }

    [Fact]
    public void AMissingNvrtcIsAClearBackendError()
    {
        var e = Assert.Throws<BackendException>(() => Nvrtc.Load(["libnvrtc-does-not-exist.so.99", "/nonexistent/lib64/libnvrtc.so"]));
        Assert.Contains("NVRTC", e.Message);
        Assert.Contains("libnvrtc-does-not-exist.so.99", e.Message);
        Assert.Contains("embedded PTX", e.Message);
    }

    [Fact]
    public void NvrtcCandidatesPreferVersionedNamesAndIncludeCudaHome()
    {
        var names = Nvrtc.Candidates("/opt/cuda");
        Assert.Equal("libnvrtc.so.14", names[0]);
        Assert.True(names.ToList().IndexOf("libnvrtc.so.13") < names.ToList().IndexOf("libnvrtc.so.12"));
        Assert.Contains("libnvrtc.so", names);
        Assert.Contains(Path.Combine("/opt/cuda", "lib64", "libnvrtc.so.13"), names);
        Assert.DoesNotContain(Nvrtc.Candidates(null), n => n.Contains('/'));
    }

    [Fact]
    public void NvrtcOptionsTargetTheExactArchitecture()
    {
        Assert.Equal("--gpu-architecture=sm_90a", CudaModules.Options((9, 0))[0]);
        Assert.Contains("-DKERNELVL_SM90A=1", CudaModules.Options((9, 0)));        // gemm_sm90.cu's wgmma body
        Assert.DoesNotContain("-DKERNELVL_SM90A=1", CudaModules.Options((8, 0)));
        Assert.Equal("--gpu-architecture=sm_80", CudaModules.Options((8, 0))[0]);
        Assert.Equal("--gpu-architecture=sm_89", CudaModules.Options((8, 9))[0]);
    }

    [Fact]
    public void KernelCacheKeysCoverEveryInput()
    {
        string[] o = ["--gpu-architecture=sm_90a"];
        string k = KernelCache.Key("src", "hdr", o, "nvrtc 13.0");
        Assert.Equal(64, k.Length);
        Assert.Equal(k, KernelCache.Key("src", "hdr", o, "nvrtc 13.0"));
        Assert.NotEqual(k, KernelCache.Key("src2", "hdr", o, "nvrtc 13.0"));
        Assert.NotEqual(k, KernelCache.Key("src", "hdr2", o, "nvrtc 13.0"));
        Assert.NotEqual(k, KernelCache.Key("src", "hdr", ["--gpu-architecture=sm_80"], "nvrtc 13.0"));
        Assert.NotEqual(k, KernelCache.Key("src", "hdr", o, "nvrtc 12.8"));
        // Length-prefixed: moving text from one input to the next changes the key.
        Assert.NotEqual(KernelCache.Key("ab", "c", o, "v"), KernelCache.Key("a", "bc", o, "v"));
    }

    [Fact]
    public void KernelCacheWritesAtomicallyAndReadsBack()
    {
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-cache-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            Assert.Null(KernelCache.TryRead(dir, "abc", "cubin"));
            Assert.True(KernelCache.TryWrite(dir, "abc", "cubin", new byte[] { 1, 2, 3 }));
            Assert.Equal(new byte[] { 1, 2, 3 }, KernelCache.TryRead(dir, "abc", "cubin"));
            Assert.True(KernelCache.TryWrite(dir, "abc", "cubin", new byte[] { 4, 5 }));   // replaces
            Assert.Equal(new byte[] { 4, 5 }, KernelCache.TryRead(dir, "abc", "cubin"));
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));   // no temporary left behind
            // A folder that cannot be created: false, nothing thrown (a cache never fails a run).
            string file = Path.Combine(dir, "a-file");
            File.WriteAllText(file, "");
            Assert.False(KernelCache.TryWrite(Path.Combine(file, "sub"), "abc", "cubin", new byte[] { 1 }));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void KernelCacheFollowsXdgCacheHome()
    {
        string? old = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        try
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", "/some/cache");
            Assert.Equal(Path.Combine("/some/cache", "kernelvl"), KernelCache.DefaultDirectory());
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", null);
            Assert.EndsWith(Path.Combine(".cache", "kernelvl"), KernelCache.DefaultDirectory());
        }
        finally
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", old);
        }
    }

    [Fact]
    public void TheCudaBackendIsListedAndSaysWhyItIsUnavailable()
    {
        Assert.Contains("cuda", KernelVL.Backends.BackendFactory.Names);
        bool driver = NativeLibrary.TryLoad(CudaDriver.LibraryName, out var h);
        if (driver) NativeLibrary.Free(h);
        if (!driver) Assert.Contains("libcuda.so.1", KernelVL.Backends.BackendFactory.Unavailable("cuda"));
    }

    [Fact]
    public void CompilerLogsKeepEveryLineOnTheKernelLine()
    {
        // NVRTC 12.5's log for the version of gemm_sm90.cu before 2026-11-28: the notes that matter come after others.
        string log = "gemm_sm90.cu(50): warning #1556-D: name linkage conflicts\n\nptxas info    : (C7518) Potential Performance Loss: "
                     + "wgmma.mma_async instructions are serialized due to program dependence on compiler-inserted WG.DP in divergent path in the function 'topk_tc_f16_wgmma'\r\n"
                     + "ptxas info    : (C7517) warpgroup.wait is injected in around line 36920\n";
        string one = CudaModules.OneLine(log);
        Assert.DoesNotContain('\n', one);
        Assert.DoesNotContain('\r', one);
        Assert.Contains("(C7518) Potential Performance Loss", one);
        Assert.EndsWith("(C7517) warpgroup.wait is injected in around line 36920", one);
        Assert.Equal(2, one.Split(" | ").Length - 1);
    }

    [Fact]
    public void Bf16BudgetsApplyToTheCudaBackendOnly()
    {
        var mm = OpRegistry.MatMul(1, 64, 48, 65, false, false, bias: false, sharedB: false);
        Assert.Equal(BackendBudgets.Bf16, BackendBudgets.For(mm, "cuda"));
        Assert.Equal(mm.Budget, BackendBudgets.For(mm, "ilgpu-cuda"));
        Assert.Equal(mm.Budget, BackendBudgets.For(mm, "cpu"));
        var ln = OpRegistry.LayerNorm(3, 17);
        Assert.Equal(ln.Budget, BackendBudgets.For(ln, "cuda"));
    }

    [Fact]
    public void CudaErrorsNameTheCallAndTheResult()
    {
        var e = new CudaException("cuModuleLoadDataEx", 218, "a PTX JIT compilation failed", "ptxas fatal: bad token");
        Assert.Contains("cuModuleLoadDataEx failed: CUDA_ERROR_INVALID_PTX (218)", e.Message);
        Assert.Contains("ptxas fatal", e.Message);
        Assert.Equal(218, e.Result);
        Assert.Equal("CUDA_ERROR_NO_DEVICE", CudaErrors.Name(100));
        Assert.Equal("CUresult 12345", CudaErrors.Name(12345));
        Assert.IsAssignableFrom<KernelVLException>(e);
    }

    [Fact]
    public void KernelArgumentsArePackedByValueWithoutBoxing()
    {
        using var args = new KernelArgs();
        nint ptr = unchecked((nint)0x1234_5678_9abcL);
        args.Add(ptr).Add(768).Add(1e-5f).Add(3L);
        Assert.Equal(4, args.Count);
        Assert.Equal(ptr, args.Get<nint>(0));
        Assert.Equal(768, args.Get<int>(1));
        Assert.Equal(1e-5f, args.Get<float>(2));
        Assert.Equal(3L, args.Get<long>(3));
        Assert.Equal(768, *(int*)args.Pointers[1]);
        args.Clear();
        Assert.Equal(0, args.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => args.Get<int>(0));
    }

    [SkippableFact]
    public void AMissingDriverIsAClearBackendError()
    {
        bool present = NativeLibrary.TryLoad(CudaDriver.LibraryName, out var h);
        if (present) NativeLibrary.Free(h);
        Skip.If(present, "this machine has an NVIDIA driver");
        var e = Assert.Throws<BackendException>(() => CudaDriver.Load());
        Assert.Contains("libcuda.so.1", e.Message);
        Assert.Contains("no NVIDIA driver", e.Message);
    }

    [SkippableFact]
    public void ADriverLibraryWithoutAGpuIsAClearBackendError()
    {
        // The NVIDIA libraries installed on a machine with no GPU (containers, CI runners, a toolkit from the
        // distribution): cuInit fails with CUDA_ERROR_NO_DEVICE, and every caller must see "unavailable", not a crash.
        bool present = NativeLibrary.TryLoad(CudaDriver.LibraryName, out var h);
        if (present) NativeLibrary.Free(h);
        Skip.IfNot(present, "this machine has no NVIDIA driver library");
        CudaDriver? driver = null;
        try { driver = CudaDriver.Load(); }
        catch (BackendException e)
        {
            Assert.Contains("cuInit failed", e.Message);
            Assert.Contains("unavailable", e.Message);
            Assert.NotNull(KernelVL.Backends.BackendFactory.Unavailable("cuda"));
            return;
        }
        Skip.If(driver is not null, "this machine has a usable GPU");
    }

    [SkippableFact]
    public void EveryKernelPassesItsReferencesOnTheHostEmulator()
    {
        // kernels/emu: the .cu sources compiled for the CPU with their PTX primitives emulated (warp collectives, ldmatrix,
        // mma fragment layouts, cp.async zero-fill), each kernel against an f64 reference on edge-heavy shapes. The only
        // check of the version-2 kernels' index arithmetic on a machine without a GPU; version 1 passing validates the
        // emulator (those kernels passed on an H100).
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "kernels", "emu", "run.sh"))) root = Path.GetDirectoryName(root);
        Skip.If(root is null, "kernels/emu is not above the test binaries (not a source checkout)");
        bool clang = Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(d => File.Exists(Path.Combine(d, "clang++-14")));
        Skip.IfNot(clang, "clang++-14 is not installed");
        Skip.IfNot(RuntimeInformation.ProcessArchitecture == Architecture.X64, "the emulator's fiber switch is x86-64 assembly");
        string outDir = Directory.CreateTempSubdirectory("kernelvl-emu-").FullName;
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo("bash", [Path.Combine(root!, "kernels", "emu", "run.sh")])
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            psi.Environment["EMU_OUT"] = outDir;
            using var p = System.Diagnostics.Process.Start(psi)!;
            var stderr = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            // ~2 minutes alone on 2 cores (four runs, the racecheck the longest); the rest of the suite shares the cores
            Assert.True(p.WaitForExit(TimeSpan.FromMinutes(9)), "the emulator ran past 9 minutes");
            string last = output.TrimEnd().Split('\n').Last();
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {last}\n{output}\n{stderr.Result}");
            Assert.Matches(@"^\d+ passed, 0 failed$", last);
            // The launches' dynamic shared memory (CudaBackend's constants) is what the kernels' own macros give.
            var shared = System.Text.RegularExpressions.Regex.Matches(output, @"^shared (\w+) (\d+)$", System.Text.RegularExpressions.RegexOptions.Multiline)
                .ToDictionary(m => m.Groups[1].Value, m => int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal(CudaBackend.Gemm2SharedBytes, shared["gemm_bf16_tn"]);
            Assert.Equal(CudaBackend.Gemm3SharedBytes, shared["gemm_bf16_wgmma"]);
            Assert.Equal(CudaBackend.Gemm4SharedBytes, shared["gemm_bf16_wgmma_tma"]);
            Assert.Equal(CudaBackend.TcSharedBytes, shared["topk_tc_f16"]);
            Assert.Equal(CudaBackend.Tc3SharedBytes, shared["topk_tc_f16_wgmma"]);
            Assert.Equal(CudaBackend.Attn3SharedBytes, shared["attention_forward_d64_wgmma"]);
            Assert.True(CudaBackend.Tc3SharedBytes <= 227 * 1024, "top-k version 3 fits a Hopper block's shared memory");
            Assert.Matches($"(?m)^threads gemm_bf16_wgmma_tma {CudaBackend.Gemm4Threads}$", output);
            Assert.Matches($"(?m)^threads topk_tc_f16_wgmma {CudaBackend.Tc3Threads}$", output);
        }
        finally
        {
            Directory.Delete(outDir, recursive: true);
        }
    }

    [Fact]
    public void LaunchArgumentsAreCheckedAgainstEveryKernelsParameters()
    {
        // Every entry's parameter sizes as read from its PTX match the C signature in its .cu source (pointers and
        // long long 8 bytes, int and float 4, a tensor map 128): the table the cuda backend checks each launch's arguments against.
        int entries = 0;
        foreach (var name in EmbeddedKernels.Names)
        {
            string src = EmbeddedKernels.Source(name);
            foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(src,
                         @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\)\s+)?(\w+)\(([^)]*)\)"))
            {
                var want = m.Groups[2].Value.Split(',').Select(p => p.Trim())
                    .Select(p => p.Contains("kv_tensor_map", StringComparison.Ordinal) ? 128
                        : p.Contains('*') || p.StartsWith("long long", StringComparison.Ordinal) ? 8 : 4).ToArray();
                Assert.Equal(want, EmbeddedKernels.ParamSizes(name, m.Groups[1].Value));
                entries++;
            }
        }
        int ptxEntries = EmbeddedKernels.Names.Sum(n => System.Text.RegularExpressions.Regex.Matches(EmbeddedKernels.Ptx(n), @"\.entry ").Count);
        Assert.Equal(ptxEntries, entries);   // every entry of the PTX was compared
        // A 4-byte int where the kernel takes a long long is named, not launched.
        using var args = new KernelArgs();
        args.Add((nint)0).Add(5).Add(7L);
        Assert.Null(args.Mismatch([8, 4, 8]));
        Assert.Equal("argument 2 is 8 bytes, the parameter 4", args.Mismatch([8, 4, 4]));
        // A 128-byte struct (a TMA tensor map) travels by value: its bytes as given, its size checked as 128.
        var map = new TensorMap();
        var bytes = MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(ref map, 1));
        Assert.Equal(128, bytes.Length);
        new Random(7).NextBytes(bytes);
        var sent = bytes.ToArray();
        args.Clear();
        args.Add(map).Add(3).Add(map);
        Assert.Null(args.Mismatch([128, 4, 128]));
        Assert.Equal("argument 0 is 128 bytes, the parameter 8", args.Mismatch([8, 4, 128]));
        var back = args.Get<TensorMap>(2);
        Assert.Equal(sent, MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(ref back, 1)).ToArray());
        Assert.Equal(3, args.Get<int>(1));
        Assert.Equal("3 arguments for 2 parameters", args.Mismatch([8, 4]));
    }
}
