using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using KernelVL.Backends.Ilgpu;

namespace KernelVL.Tests;

/// <summary>
/// The ILGPU kernels (the ilgpu-cuda backend's, and the cuda backend's for every op without a hand kernel) compiled by
/// ILGPU's PTX backend for sm_90 in the backends' own context, without a GPU: what the card's accelerator does when a
/// backend loads them, minus the driver's JIT. A construct the PTX backend cannot translate (an f64 Math call without
/// ILGPU.Algorithms, a managed allocation) would otherwise first show as the cuda backend failing to start on the card.
/// </summary>
public class IlgpuPtxTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly Type[] KernelClasses = [typeof(IlgpuKernels), typeof(IlgpuAttention), typeof(IlgpuTopK)];

    /// <summary>Every public static void method of the kernel classes, with how it is launched (an Index first parameter: implicitly grouped).</summary>
    public static IEnumerable<object[]> Kernels() =>
        KernelClasses.SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly))
            .Where(m => m.ReturnType == typeof(void))
            .Select(m => new object[] { $"{m.DeclaringType!.Name}.{m.Name}" });

    private static MethodInfo Find(string name)
    {
        var parts = name.Split('.');
        return KernelClasses.Single(t => t.Name == parts[0]).GetMethod(parts[1], BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly)!;
    }

    private static string CompileForSm90(Context context, MethodInfo kernel)
    {
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null!);
        var first = kernel.GetParameters().FirstOrDefault()?.ParameterType;
        var entry = first == typeof(Index1D) || first == typeof(Index2D) || first == typeof(Index3D)
            ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel)
            : EntryPointDescription.FromExplicitlyGroupedKernel(kernel);
        return ((PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty)).PTXAssembly;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesToPtxForSm90(string name)
    {
        using var context = IlgpuBackend.CreateContext();
        string ptx = CompileForSm90(context, Find(name));
        output.WriteLine($"{name}: {ptx.Length} characters of PTX");
        Assert.Contains(".target sm_", ptx);            // ILGPU 1.5.3 writes sm_80 for an sm_90 device at ISA 8.0: the driver JITs it forward
        Assert.Contains(".visible .entry Kernel_", ptx);
    }

    [Fact]
    public void CoversEveryKernelTheBackendLoadsAndFailsOnAnUntranslatableOne()
    {
        Assert.True(Kernels().Count() >= 40, $"{Kernels().Count()} kernels found");
        using var context = IlgpuBackend.CreateContext();
        Assert.ThrowsAny<Exception>(() => CompileForSm90(context, typeof(IlgpuPtxTests).GetMethod(nameof(Allocates), BindingFlags.NonPublic | BindingFlags.Static)!));
    }

    // A kernel ILGPU cannot translate: a managed array allocation.
    private static void Allocates(Index1D i, ArrayView<float> x)
    {
        var scratch = new float[(int)i + 1];
        x[i] = scratch.Length;
    }
}
