namespace KernelVL.Cuda;

/// <summary>A CUDA driver call failed: names the call and the CUresult (name, number, and the driver's description).</summary>
public sealed class CudaException : KernelVLException
{
    public CudaException(string call, int result, string? description = null, string? log = null)
        : base($"{call} failed: {CudaErrors.Name(result)} ({result}){(description is null ? "" : ": " + description)}{(string.IsNullOrWhiteSpace(log) ? "" : "\n" + log.Trim())}")
    {
        Call = call;
        Result = result;
    }

    public string Call { get; }
    public int Result { get; }
}

/// <summary>CUresult names (cuda.h) for the codes this project can meet; others print as their number.</summary>
public static class CudaErrors
{
    private static readonly Dictionary<int, string> Names = new()
    {
        [0] = "CUDA_SUCCESS", [1] = "CUDA_ERROR_INVALID_VALUE", [2] = "CUDA_ERROR_OUT_OF_MEMORY",
        [3] = "CUDA_ERROR_NOT_INITIALIZED", [4] = "CUDA_ERROR_DEINITIALIZED", [34] = "CUDA_ERROR_STUB_LIBRARY",
        [35] = "CUDA_ERROR_DEVICE_UNAVAILABLE", [100] = "CUDA_ERROR_NO_DEVICE", [101] = "CUDA_ERROR_INVALID_DEVICE",
        [200] = "CUDA_ERROR_INVALID_IMAGE", [201] = "CUDA_ERROR_INVALID_CONTEXT", [209] = "CUDA_ERROR_NO_BINARY_FOR_GPU",
        [218] = "CUDA_ERROR_INVALID_PTX", [222] = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", [223] = "CUDA_ERROR_NVLINK_UNCORRECTABLE",
        [224] = "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", [300] = "CUDA_ERROR_INVALID_SOURCE", [301] = "CUDA_ERROR_FILE_NOT_FOUND",
        [400] = "CUDA_ERROR_INVALID_HANDLE", [500] = "CUDA_ERROR_NOT_FOUND", [600] = "CUDA_ERROR_NOT_READY",
        [700] = "CUDA_ERROR_ILLEGAL_ADDRESS", [701] = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", [702] = "CUDA_ERROR_LAUNCH_TIMEOUT",
        [719] = "CUDA_ERROR_LAUNCH_FAILED", [801] = "CUDA_ERROR_NOT_SUPPORTED", [999] = "CUDA_ERROR_UNKNOWN",
    };

    public static string Name(int result) => Names.TryGetValue(result, out var n) ? n : $"CUresult {result}";
}
