using KernelVL.Tensors;

namespace KernelVL.Backends;

/// <summary>
/// Optional backend capability: exact top-k by inner product straight from f16 rows in host memory (a memory-mapped
/// index segment), so that a backend can move the halves as they are (the cuda backend uploads them and runs its f16
/// kernels, half the bytes of widened rows) instead of taking f32 rows. The contract of <see cref="IBackend.TopK"/>
/// otherwise: queries [Q, D] on this backend, rows N x D halves row-major (N = rows.Length / D), scores [Q, k] and
/// indices i32 [Q, k] (row numbers within these rows), higher score first, ties to the lower row.
/// </summary>
public interface IHalfRowsTopK
{
    /// <summary>
    /// Rows per call the backend works best with (the index's block size on this path), or 0 where the backend gains
    /// nothing from f16 rows (host backends: the index then widens rows into one reused block itself, which is faster).
    /// </summary>
    int PreferredHalfRows { get; }

    /// <param name="maxRowNorm">an upper bound on the rows' L2 norms where the caller knows one, else null</param>
    void TopKHalfRows(Tensor queries, ReadOnlySpan<Half> rows, int k, Tensor scores, Tensor indices, float? maxRowNorm = null);
}
