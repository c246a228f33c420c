using KernelVL.Tensors;

namespace KernelVL.Backends;

/// <summary>
/// Optional backend capability of host backends: exact top-k by inner product over rows where they lie in host memory
/// (a memory-mapped index segment, f32 or f16), without copying them into a tensor first. The contract of
/// <see cref="IBackend.TopK"/> otherwise: queries [Q, D] on this backend, rows N x D row-major (N = rows.Length / D),
/// scores [Q, k] and indices i32 [Q, k] (row numbers within these rows), higher score first, ties to the lower row.
/// f16 rows are widened exactly to f32 before the products, so both overloads give what <see cref="IBackend.TopK"/> gives
/// on the widened rows.
/// </summary>
public interface IHostRowsTopK
{
    void TopKRows(Tensor queries, ReadOnlySpan<float> rows, int k, Tensor scores, Tensor indices);

    void TopKRows(Tensor queries, ReadOnlySpan<Half> rows, int k, Tensor scores, Tensor indices);
}
