using System.Runtime.InteropServices;
using System.Text;

namespace KernelVL.Cuda;

/// <summary>
/// The project's own binding of the CUDA driver API (libcuda.so.1): only the calls the Cuda backend makes, resolved
/// once as unmanaged function pointers. Every failing call becomes a <see cref="CudaException"/> naming the call and
/// the CUresult. A machine without the driver gets a <see cref="BackendException"/> saying so, never a crash.
/// The context is ILGPU's (its accelerator's NativePtr), so both share memory and the stream.
/// </summary>
public sealed unsafe class CudaDriver
{
    public const string LibraryName = "libcuda.so.1";

    private readonly delegate* unmanaged<uint, int> _cuInit;
    private readonly delegate* unmanaged<int*, int> _cuDriverGetVersion;
    private readonly delegate* unmanaged<int, byte**, int> _cuGetErrorString;
    private readonly delegate* unmanaged<nint, int> _cuCtxSetCurrent;
    private readonly delegate* unmanaged<nint*, void*, uint, int*, void**, int> _cuModuleLoadDataEx;
    private readonly delegate* unmanaged<nint, int> _cuModuleUnload;
    private readonly delegate* unmanaged<nint*, nint, byte*, int> _cuModuleGetFunction;
    private readonly delegate* unmanaged<nint, int, int, int> _cuFuncSetAttribute;
    private readonly delegate* unmanaged<int*, int, nint, int> _cuFuncGetAttribute;
    private readonly delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> _cuLaunchKernel;
    private readonly delegate* unmanaged<nint, int> _cuStreamSynchronize;
    private readonly delegate* unmanaged<int*, int> _cuCtxGetDevice;
    private readonly delegate* unmanaged<nint*, uint, int> _cuEventCreate;
    private readonly delegate* unmanaged<nint, nint, int> _cuEventRecord;
    private readonly delegate* unmanaged<nint, int> _cuEventSynchronize, _cuEventDestroy, _cuEventQuery;
    private readonly delegate* unmanaged<float*, nint, nint, int> _cuEventElapsedTime;
    private readonly delegate* unmanaged<int*, int, int, int> _cuDeviceGetAttribute;
    private readonly delegate* unmanaged<TensorMap*, int, uint, nint, ulong*, ulong*, uint*, uint*, int, int, int, int, int> _cuTensorMapEncodeTiled;
    private readonly delegate* unmanaged<LaunchConfig*, nint, void**, void**, int> _cuLaunchKernelEx;
    private readonly delegate* unmanaged<int*, nint, LaunchConfig*, int> _cuOccupancyMaxActiveClusters;

    /// <summary>
    /// True for the host emulator's driver (kernels/emu/fake_driver.cpp, loaded by <see cref="Load"/> from a path given to
    /// <c>CudaBackend.CreateEmulated</c>): the same calls, every kernel run by the emulator on host memory.
    /// </summary>
    public bool IsEmulator { get; }

    private CudaDriver(nint lib)
    {
        IsEmulator = NativeLibrary.TryGetExport(lib, "kv_emu_driver", out _);
        _cuInit = (delegate* unmanaged<uint, int>)Export(lib, "cuInit");
        _cuDriverGetVersion = (delegate* unmanaged<int*, int>)Export(lib, "cuDriverGetVersion");
        _cuGetErrorString = (delegate* unmanaged<int, byte**, int>)Export(lib, "cuGetErrorString");
        _cuCtxSetCurrent = (delegate* unmanaged<nint, int>)Export(lib, "cuCtxSetCurrent");
        _cuModuleLoadDataEx = (delegate* unmanaged<nint*, void*, uint, int*, void**, int>)Export(lib, "cuModuleLoadDataEx");
        _cuModuleUnload = (delegate* unmanaged<nint, int>)Export(lib, "cuModuleUnload");
        _cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)Export(lib, "cuModuleGetFunction");
        _cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)Export(lib, "cuFuncSetAttribute");
        _cuFuncGetAttribute = (delegate* unmanaged<int*, int, nint, int>)Export(lib, "cuFuncGetAttribute");
        _cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)Export(lib, "cuLaunchKernel");
        _cuStreamSynchronize = (delegate* unmanaged<nint, int>)Export(lib, "cuStreamSynchronize");
        _cuCtxGetDevice = (delegate* unmanaged<int*, int>)Export(lib, "cuCtxGetDevice");
        _cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)Export(lib, "cuDeviceGetAttribute");
        _cuEventCreate = (delegate* unmanaged<nint*, uint, int>)Export(lib, "cuEventCreate");
        _cuEventRecord = (delegate* unmanaged<nint, nint, int>)Export(lib, "cuEventRecord");
        _cuEventSynchronize = (delegate* unmanaged<nint, int>)Export(lib, "cuEventSynchronize");
        _cuEventDestroy = (delegate* unmanaged<nint, int>)Export(lib, "cuEventDestroy_v2");
        _cuEventQuery = (delegate* unmanaged<nint, int>)Export(lib, "cuEventQuery");
        // CUDA 12.8 added the _v2 entry (the plain one is deprecated in CUDA 13); the same signature either way.
        _cuEventElapsedTime = (delegate* unmanaged<float*, nint, nint, int>)(NativeLibrary.TryGetExport(lib, "cuEventElapsedTime_v2", out var et)
            ? (void*)et : Export(lib, "cuEventElapsedTime"));
        // CUDA 12.0+ (Hopper's TMA); null on older drivers, which makes gemm_sm90.cu version 4 unavailable, nothing else.
        _cuTensorMapEncodeTiled = NativeLibrary.TryGetExport(lib, "cuTensorMapEncodeTiled", out var tm)
            ? (delegate* unmanaged<TensorMap*, int, uint, nint, ulong*, ulong*, uint*, uint*, int, int, int, int, int>)tm : null;
        // CUDA 12.0+ (thread block clusters); null on older drivers, which makes the clustered GEMM unavailable, nothing else.
        _cuLaunchKernelEx = NativeLibrary.TryGetExport(lib, "cuLaunchKernelEx", out var lx) ? (delegate* unmanaged<LaunchConfig*, nint, void**, void**, int>)lx : null;
        _cuOccupancyMaxActiveClusters = NativeLibrary.TryGetExport(lib, "cuOccupancyMaxActiveClusters", out var oc)
            ? (delegate* unmanaged<int*, nint, LaunchConfig*, int>)oc : null;
        // A driver library without a usable GPU (a container or machine with the NVIDIA libraries installed, no device
        // or no access to it) fails here: that makes the backend unavailable, it is not an error of a CUDA call.
        try
        {
            Check("cuInit", _cuInit(0));
        }
        catch (CudaException e)
        {
            throw new BackendException($"{LibraryName} loaded but {e.Message}: no usable GPU, so the cuda backend is unavailable");
        }
    }

    private static void* Export(nint lib, string name) =>
        NativeLibrary.TryGetExport(lib, name, out var p) ? (void*)p
        : throw new BackendException($"{LibraryName} has no {name}: the NVIDIA driver is too old for this project");

    /// <summary>
    /// Loads the driver (or, with <paramref name="library"/>, that file instead: the emulator's driver in tests); throws
    /// <see cref="BackendException"/> with the reason when it cannot be loaded.
    /// </summary>
    public static CudaDriver Load(string? library = null)
    {
        if (library is not null)
            return NativeLibrary.TryLoad(library, out var given) ? new CudaDriver(given)
                : throw new BackendException($"{library}: could not be loaded as a CUDA driver library");
        if (!NativeLibrary.TryLoad(LibraryName, out var lib))
            throw new BackendException($"{LibraryName} could not be loaded: this machine has no NVIDIA driver, so the cuda backend is unavailable");
        return new CudaDriver(lib);
    }

    /// <summary>Throws a <see cref="CudaException"/> for a failed call, with the driver's own description where it has one.</summary>
    public void Check(string call, int result, string? log = null)
    {
        if (result == 0) return;
        string? description = null;
        byte* s = null;
        if (_cuGetErrorString != null && _cuGetErrorString(result, &s) == 0 && s != null) description = Marshal.PtrToStringUTF8((nint)s);
        throw new CudaException(call, result, description, log);
    }

    public int DriverVersion
    {
        get
        {
            int v;
            Check("cuDriverGetVersion", _cuDriverGetVersion(&v));
            return v;
        }
    }

    public void SetCurrentContext(nint context) => Check("cuCtxSetCurrent", _cuCtxSetCurrent(context));

    /// <summary>The device of the calling thread's current context.</summary>
    public int CurrentDevice
    {
        get
        {
            int d;
            Check("cuCtxGetDevice", _cuCtxGetDevice(&d));
            return d;
        }
    }

    /// <summary>CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76.</summary>
    public (int Major, int Minor) ComputeCapability(int device) => (Attribute(device, 75), Attribute(device, 76));

    /// <summary>CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16.</summary>
    public int MultiprocessorCount(int device) => Attribute(device, 16);

    private int Attribute(int device, int attribute)
    {
        int v;
        Check($"cuDeviceGetAttribute({attribute})", _cuDeviceGetAttribute(&v, attribute, device));
        return v;
    }

    /// <summary>Loads PTX (JIT-compiled by the driver) or a CUBIN; a failure carries the JIT's error log.</summary>
    public nint LoadModule(ReadOnlySpan<byte> image)
    {
        const int CU_JIT_ERROR_LOG_BUFFER = 5, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;
        var log = new byte[16384];
        var copy = new byte[image.Length + 1];   // NUL-terminated for PTX
        image.CopyTo(copy);
        fixed (byte* img = copy, logp = log)
        {
            int* options = stackalloc int[] { CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES };
            void** values = stackalloc void*[] { logp, (void*)(nint)log.Length };
            nint module;
            int r = _cuModuleLoadDataEx(&module, img, 2, options, values);
            if (r != 0) Check("cuModuleLoadDataEx", r, Encoding.UTF8.GetString(log).TrimEnd('\0'));
            return module;
        }
    }

    public void UnloadModule(nint module) => Check("cuModuleUnload", _cuModuleUnload(module));

    public nint GetFunction(nint module, string name)
    {
        var bytes = Encoding.ASCII.GetBytes(name + "\0");
        fixed (byte* n = bytes)
        {
            nint f;
            Check($"cuModuleGetFunction({name})", _cuModuleGetFunction(&f, module, n));
            return f;
        }
    }

    /// <summary>Whether this driver can encode TMA tensor maps (cuTensorMapEncodeTiled, CUDA 12.0 and later).</summary>
    public bool HasTensorMaps => _cuTensorMapEncodeTiled != null;

    /// <summary>CUtensorMapDataType of the element types the kernels load by TMA (f32 also carries tf32 bit patterns unchanged).</summary>
    public const int TensorMapF16 = 6, TensorMapF32 = 7, TensorMapBf16 = 9;

    /// <summary>
    /// A tiled 3-D TMA map of a tensor (<paramref name="dataType"/>: <see cref="TensorMapBf16"/>, <see cref="TensorMapF16"/>
    /// or <see cref="TensorMapF32"/>) {k (innermost), rows, batch} at <paramref name="address"/>: rows
    /// <paramref name="rowBytes"/> apart, batches <paramref name="batchBytes"/> apart; boxes of boxK x boxRows x 1
    /// elements land in shared memory in the 128B swizzle (boxK times the element size must be 128), out-of-bounds elements as zeros,
    /// L2 promotion 256 B. cuTensorMapEncodeTiled's own checks (16-byte aligned address and strides, box <= 256)
    /// become a <see cref="CudaException"/>.
    /// </summary>
    public TensorMap EncodeTensorMap(int dataType, nint address, ulong k, ulong rows, ulong batch, ulong rowBytes, ulong batchBytes, uint boxK, uint boxRows)
    {
        if (dataType is not (TensorMapF16 or TensorMapF32 or TensorMapBf16)) throw new ArgumentOutOfRangeException(nameof(dataType), dataType, "f16 (6), f32 (7) or bf16 (9)");
        if (_cuTensorMapEncodeTiled == null) throw new BackendException($"{LibraryName} has no cuTensorMapEncodeTiled (CUDA 12.0 or later needed)");
        // The driver requires the map's own address 64-byte aligned (CUDA 13's header declares CUtensorMap alignas(128));
        // a C# local is only 8-byte aligned, so the map is encoded into an aligned stack buffer and copied out (only the
        // encode call needs the alignment: the launch copies the bytes into the kernel's parameter space).
        byte* raw = stackalloc byte[sizeof(TensorMap) + 127];
        var map = (TensorMap*)(((nint)raw + 127) & ~(nint)127);
        ulong* dims = stackalloc ulong[3] { k, rows, batch };
        ulong* strides = stackalloc ulong[2] { rowBytes, batchBytes };
        uint* box = stackalloc uint[3] { boxK, boxRows, 1 };
        uint* elementStrides = stackalloc uint[3] { 1, 1, 1 };
        // rank 3, INTERLEAVE_NONE 0, SWIZZLE_128B 3, L2_PROMOTION_L2_256B 3, FLOAT_OOB_FILL_NONE 0 (zeros)
        Check("cuTensorMapEncodeTiled", _cuTensorMapEncodeTiled(map, dataType, 3, address, dims, strides, box, elementStrides, 0, 3, 3, 0));
        return *map;
    }

    /// <summary>CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8: lets a kernel use more than 48 KB of shared memory.</summary>
    public void SetMaxDynamicSharedMemory(nint function, int bytes) => Check("cuFuncSetAttribute", _cuFuncSetAttribute(function, 8, bytes));

    /// <summary>CU_FUNC_ATTRIBUTE_NUM_REGS = 4: the registers a thread of the kernel is given (what ptxas allocated).</summary>
    public int Registers(nint function)
    {
        int regs;
        Check("cuFuncGetAttribute", _cuFuncGetAttribute(&regs, 4, function));
        return regs;
    }

    public void Launch(nint function, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, uint sharedBytes, nint stream, KernelArgs args)
        => Check("cuLaunchKernel", _cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, stream, args.Pointers, null));

    /// <summary>Whether this driver launches thread block clusters (cuLaunchKernelEx and cuOccupancyMaxActiveClusters, CUDA 12.0 and later).</summary>
    public bool HasClusters => _cuLaunchKernelEx != null && _cuOccupancyMaxActiveClusters != null;

    /// <summary>
    /// Launches <paramref name="function"/> in clusters of <paramref name="clusterX"/> blocks along x (grid.X a multiple
    /// of it) by cuLaunchKernelEx with the CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION attribute.
    /// </summary>
    public void LaunchCluster(nint function, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, uint sharedBytes, nint stream, uint clusterX, KernelArgs args)
    {
        if (_cuLaunchKernelEx == null) throw new BackendException($"{LibraryName} has no cuLaunchKernelEx (CUDA 12.0 or later needed)");
        var attribute = LaunchAttribute.ClusterDimension(clusterX);
        var config = new LaunchConfig(grid, block, sharedBytes, stream, &attribute);
        Check("cuLaunchKernelEx", _cuLaunchKernelEx(&config, function, args.Pointers, null));
    }

    /// <summary>
    /// How many clusters of <paramref name="clusterX"/> blocks of this launch shape can run at once on the device
    /// (cuOccupancyMaxActiveClusters; the function's dynamic shared memory must be allowed first): a persistent
    /// clustered grid launches no more than that, so that every cluster is resident and none waits for another's end.
    /// </summary>
    public int MaxActiveClusters(nint function, uint blockThreads, uint sharedBytes, uint clusterX)
    {
        if (_cuOccupancyMaxActiveClusters == null) throw new BackendException($"{LibraryName} has no cuOccupancyMaxActiveClusters (CUDA 12.0 or later needed)");
        var attribute = LaunchAttribute.ClusterDimension(clusterX);
        var config = new LaunchConfig((clusterX, 1, 1), (blockThreads, 1, 1), sharedBytes, 0, &attribute);
        int n;
        Check("cuOccupancyMaxActiveClusters", _cuOccupancyMaxActiveClusters(&n, function, &config));
        return n;
    }

    public void Synchronize(nint stream) => Check("cuStreamSynchronize", _cuStreamSynchronize(stream));

    public nint CreateEvent()
    {
        nint e;
        Check("cuEventCreate", _cuEventCreate(&e, 0));
        return e;
    }

    public void RecordEvent(nint e, nint stream) => Check("cuEventRecord", _cuEventRecord(e, stream));
    public void DestroyEvent(nint e) => Check("cuEventDestroy", _cuEventDestroy(e));

    /// <summary>Whether the work before a recorded event has completed (cuEventQuery: CUDA_SUCCESS, or
    /// CUDA_ERROR_NOT_READY while it runs); any other result is a <see cref="CudaException"/>.</summary>
    public bool EventCompleted(nint e)
    {
        int rc = _cuEventQuery(e);
        if (rc == NotReady) return false;
        Check("cuEventQuery", rc);
        return true;
    }

    private const int NotReady = 600;   // CUDA_ERROR_NOT_READY

    /// <summary>Milliseconds between two recorded events, once the second has completed (waits for it).</summary>
    public float ElapsedMs(nint start, nint end)
    {
        Check("cuEventSynchronize", _cuEventSynchronize(end));
        float ms;
        Check("cuEventElapsedTime", _cuEventElapsedTime(&ms, start, end));
        return ms;
    }
}

/// <summary>CUlaunchConfig: grid, block, dynamic shared memory, stream and the launch attributes (cuda.h's layout, 56 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct LaunchConfig
{
    public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
    public nint Stream;
    public LaunchAttribute* Attributes;
    public uint AttributeCount;

    public LaunchConfig((uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, uint sharedBytes, nint stream, LaunchAttribute* attribute)
    {
        (GridX, GridY, GridZ) = grid;
        (BlockX, BlockY, BlockZ) = block;
        SharedBytes = sharedBytes;
        Stream = stream;
        Attributes = attribute;
        AttributeCount = 1;
    }
}

/// <summary>CUlaunchAttribute: an id (4 bytes, padded to 8) and a 64-byte value union (72 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct LaunchAttribute
{
    /// <summary>CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION.</summary>
    public const int ClusterDimensionId = 4;
    [FieldOffset(0)] public int Id;
    [FieldOffset(8)] public uint X;
    [FieldOffset(12)] public uint Y;
    [FieldOffset(16)] public uint Z;

    public static LaunchAttribute ClusterDimension(uint x) => new() { Id = ClusterDimensionId, X = x, Y = 1, Z = 1 };
}

/// <summary>
/// A CUtensorMap: the 128 opaque bytes cuTensorMapEncodeTiled writes, passed to a kernel by value (kernelvl_cuda.h's
/// kv_tensor_map, a __grid_constant__ parameter).
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
public unsafe struct TensorMap
{
    public fixed ulong Opaque[16];
}

/// <summary>
/// Kernel arguments packed for cuLaunchKernel: each value is copied into one unmanaged block (8-byte slots, and up to
/// four 128-byte slots for structs such as <see cref="TensorMap"/>) and <see cref="Pointers"/> lists their addresses.
/// No boxing; reusable with <see cref="Clear"/>.
/// </summary>
public sealed unsafe class KernelArgs : IDisposable
{
    private const int MaxArgs = 32, MaxLarge = 4, LargeBytes = 128;
    private byte* _values, _large;
    private void** _pointers;
    private int _count, _largeCount;
    private readonly int[] _sizes = new int[MaxArgs];

    public KernelArgs()
    {
        _values = (byte*)NativeMemory.AllocZeroed(MaxArgs * 8);
        _large = (byte*)NativeMemory.AlignedAlloc(MaxLarge * LargeBytes, 64);
        _pointers = (void**)NativeMemory.AllocZeroed(MaxArgs * (nuint)sizeof(void*));
    }

    public int Count => _count;
    public void** Pointers => _pointers;

    public KernelArgs Add<T>(T value) where T : unmanaged
    {
        if (sizeof(T) > LargeBytes) throw new ArgumentException($"kernel arguments are at most {LargeBytes} bytes, {typeof(T).Name} is {sizeof(T)}");
        if (_count == MaxArgs) throw new ArgumentException($"at most {MaxArgs} kernel arguments");
        byte* slot;
        if (sizeof(T) > 8)
        {
            if (_largeCount == MaxLarge) throw new ArgumentException($"at most {MaxLarge} kernel arguments over 8 bytes");
            slot = _large + _largeCount++ * LargeBytes;
        }
        else slot = _values + _count * 8;
        *(T*)slot = value;
        _sizes[_count] = sizeof(T);
        _pointers[_count++] = slot;
        return this;
    }

    /// <summary>The size in bytes of argument i as it was added.</summary>
    public int SizeOf(int i) => i < _count ? _sizes[i] : throw new ArgumentOutOfRangeException(nameof(i));

    /// <summary>
    /// Null when the arguments match a kernel's parameter sizes (<see cref="EmbeddedKernels.ParamSizes"/>), else what
    /// differs: a 4-byte int passed for a 64-bit parameter would otherwise reach the kernel as garbage.
    /// </summary>
    public string? Mismatch(IReadOnlyList<int> paramSizes)
    {
        if (paramSizes.Count != _count) return $"{_count} arguments for {paramSizes.Count} parameters";
        for (int i = 0; i < _count; i++)
            if (paramSizes[i] != _sizes[i]) return $"argument {i} is {_sizes[i]} bytes, the parameter {paramSizes[i]}";
        return null;
    }

    /// <summary>The value of argument i, as the kernel will see it.</summary>
    public T Get<T>(int i) where T : unmanaged => i < _count ? *(T*)_pointers[i] : throw new ArgumentOutOfRangeException(nameof(i));

    public void Clear() => _count = _largeCount = 0;

    public void Dispose()
    {
        NativeMemory.Free(_values);
        NativeMemory.AlignedFree(_large);
        NativeMemory.Free(_pointers);
        _values = null;
        _large = null;
        _pointers = null;
    }
}

/// <summary>The CUDA kernels of kernels/*.cu as the build embedded them: PTX for sm_80 (JIT-compiled by any newer driver) and the sources.</summary>
public static class EmbeddedKernels
{
    public static IReadOnlyList<string> Names { get; } = typeof(EmbeddedKernels).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith("kernels/", StringComparison.Ordinal) && n.EndsWith(".ptx", StringComparison.Ordinal))
        .Select(n => n["kernels/".Length..^".ptx".Length]).OrderBy(n => n, StringComparer.Ordinal).ToArray();

    public static string Ptx(string name) => Read($"kernels/{name}.ptx");

    /// <summary>The headers of kernels/ (kernelvl_cuda.h, topk_common.h, ...) by file name, as the .cu files include them.</summary>
    public static IReadOnlyList<string> HeaderNames { get; } = typeof(EmbeddedKernels).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith("kernels/", StringComparison.Ordinal) && n.EndsWith(".h", StringComparison.Ordinal))
        .Select(n => n["kernels/".Length..]).OrderBy(n => n, StringComparer.Ordinal).ToArray();

    /// <summary>
    /// The parameter sizes in bytes of entry <paramref name="entry"/> of kernels/<paramref name="name"/>.cu, read from its
    /// embedded PTX (.param .u64/.b64/.f64/.s64: 8, .u32/.s32/.f32/.b32: 4; a struct by value, .param .align A .b8
    /// name[N]: N, e.g. a 128-byte tensor map).
    /// </summary>
    public static IReadOnlyList<int> ParamSizes(string name, string entry)
    {
        string ptx = Ptx(name);
        int at = ptx.IndexOf($".entry {entry}(", StringComparison.Ordinal);
        if (at < 0) throw new BackendException($"kernels/{name}.ptx has no entry {entry}");
        int end = ptx.IndexOf(')', at);
        var sizes = new List<int>();
        foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(ptx[at..end],
                     @"\.param\s+(?:\.align\s+\d+\s+)?\.[a-z](\d+)\s+\w+(?:\[(\d+)\])?"))
            sizes.Add(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) / 8
                      * (m.Groups[2].Success ? int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) : 1));
        return sizes;
    }
    public static string Source(string name) => Read($"kernels/{name}.cu");
    /// <summary>A header of kernels/ by file name (e.g. kernelvl_cuda.h).</summary>
    public static string Header(string fileName) => Read($"kernels/{fileName}");

    private static string Read(string resource)
    {
        using var s = typeof(EmbeddedKernels).Assembly.GetManifestResourceStream(resource)
            ?? throw new BackendException($"kernel resource {resource} is not embedded in this build");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }
}
