using KernelVL.Backends.Cuda;

namespace KernelVL.Perf;

/// <summary>
/// The kernel version of each op family that the cuda backend runs as configured: the version asked for (set, or
/// KERNELVL_CUDA_*), lowered where the device cannot run it (the backend's "...Unavailable" reasons), as the backend's
/// own fallbacks do. Fallbacks that depend on the call (an operand TMA cannot map, top-k's k over 16, InfoNCE above N
/// <see cref="CudaBackend.InfoNceV2MaxN"/>) are not in it. `ops --backend cuda` writes it into its JSON's machine
/// object ("cuda_versions"), so that `targets` labels a row by the version that ran, not by the file's name.
/// </summary>
internal static class CudaVersions
{
    public static SortedDictionary<string, int> Effective(CudaBackend b)
    {
        int gemm = b.GemmVersion < 2 || b.GemmV2Unavailable is not null ? 1
            : b.GemmVersion == 4 && b.GemmV4Unavailable is null ? 4
            : b.GemmVersion >= 3 && b.GemmV3Unavailable is null ? 3 : 2;
        int topk = b.TopKVersion < 2 || b.TopKV2Unavailable is not null ? 1 : b.TopKVersion == 3 && b.TopKV3Unavailable is null ? 3 : 2;
        return new(StringComparer.Ordinal)
        {
            ["attention"] = b.AttentionVersion == 3 && b.AttentionV3Unavailable is null ? 3 : Math.Min(b.AttentionVersion, 2),
            ["attention_backward"] = b.AttentionBackwardVersion,
            ["gemm"] = gemm,
            ["gemm_cluster"] = gemm == 4 && b.GemmCluster == 2 && b.GemmV4ClusterUnavailable is null ? 2 : 1,
            ["gemm_f32"] = b.PreciseGemmVersion == 3 && b.PreciseGemmV3Unavailable is null ? 3 : Math.Min(b.PreciseGemmVersion, 2),
            ["infonce"] = b.InfoNceVersion,
            ["layernorm_backward"] = b.LayerNormBackwardVersion,
            ["topk"] = topk,
            ["topk_cluster"] = topk == 3 && b.TopKCluster == 4 && b.TopKV3ClusterUnavailable is null ? 4 : 1,
        };
    }
}
