using System.Runtime.InteropServices;
using KernelVL.Cuda;

namespace KernelVL.Tests;

/// <summary>What of the CUDA path can be checked without a GPU: the build's PTX, error mapping, argument packing, a missing driver.</summary>
public unsafe class CudaBindingTests
{
    [Fact]
    public void EveryKernelSourceIsCompiledToPtxAndEmbedded()
    {
        Assert.Contains("layernorm", EmbeddedKernels.Names);
        foreach (var name in EmbeddedKernels.Names)
        {
            string ptx = EmbeddedKernels.Ptx(name);
            Assert.Contains(".target sm_80", ptx);
            Assert.Contains(".visible .entry", ptx);
            // every extern "C" __global__ of the source is an entry of the PTX
            foreach (var line in EmbeddedKernels.Source(name).Split('\n').Where(l => l.Contains("__global__ void")))
            {
                string kernel = line[(line.IndexOf("void ", StringComparison.Ordinal) + 5)..].Split('(')[0].Trim();
                Assert.Contains($".entry {kernel}(", ptx);
            }
        }
        Assert.Contains(".entry layernorm_forward(", EmbeddedKernels.Ptx("layernorm"));
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
}
