namespace KernelVL.Tensors;

public enum DType
{
    F32,
    I32,
    /// <summary>Only the scalar reference backend computes in f64: it is what finite-difference gradient checks run in.</summary>
    F64,
}

public static class DTypeExtensions
{
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.I32 => 4,
        DType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    public static string Name(this DType dtype) => dtype switch
    {
        DType.F32 => "f32",
        DType.I32 => "i32",
        DType.F64 => "f64",
        _ => dtype.ToString(),
    };
}
