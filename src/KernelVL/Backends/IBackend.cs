using KernelVL.Tensors;

namespace KernelVL;

/// <summary>Hyper-parameters of one AdamW step (decoupled weight decay, bias correction).</summary>
public readonly record struct AdamWParams(float LearningRate, float Beta1 = 0.9f, float Beta2 = 0.999f, float Eps = 1e-8f, float WeightDecay = 0.0f);

/// <summary>
/// The backend contract: every op the engine runs, forward and backward. All tensors are contiguous
/// and row-major; outputs are preallocated by the caller; arguments are ordered inputs, parameters,
/// outputs. Forward ops overwrite their outputs. <b>Backward ops accumulate</b> (+=) into every
/// gradient they are given and skip the ones passed as null.
/// Integer masks are i32 with nonzero = keep. Scalars that the GPU keeps on the device (losses, the
/// gradient norm, a loss's incoming gradient) are one-element tensors.
/// </summary>
public interface IBackend : IDisposable
{
    string Name { get; }

    /// <summary>Waits until every op issued so far has finished (a no-op for synchronous host backends). Timers call it.</summary>
    void Synchronize();

    // ---- memory ----
    /// <summary>Uninitialised tensor on this backend, tracked by the current <see cref="Autograd.TensorScope"/>.</summary>
    Tensor Empty(Shape shape, DType dtype = DType.F32);
    void Fill(Tensor x, float value);
    void Copy(Tensor src, Tensor dst);
    void CopyFromHost(ReadOnlySpan<float> src, Tensor dst);
    void CopyFromHost(ReadOnlySpan<int> src, Tensor dst);
    void CopyToHost(Tensor src, Span<float> dst);
    void CopyToHost(Tensor src, Span<int> dst);

    // ---- matmul ----
    /// <summary>
    /// y = op(a) @ op(b) (+ bias) (+ y when accumulate). The last two dims are the matrix, leading dims
    /// a batch. a [..., M, K] ([..., K, M] when transA); b [..., K, N] ([..., N, K] when transB) with the
    /// same batch as a, or rank 2 (shared by the batch); bias [N]; y [..., M, N].
    /// </summary>
    void MatMul(Tensor a, Tensor b, Tensor? bias, Tensor y, bool transA, bool transB, bool accumulate = false);
    /// <summary>da += d/da, db += d/db (summed over the batch when b is shared), dbias += column sums of dy.</summary>
    void MatMulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db, Tensor? dbias, bool transA, bool transB);

    // ---- elementwise; b's shape is a suffix of a's (b broadcasts over a's leading dims) ----
    void Add(Tensor a, Tensor b, Tensor y);
    void AddBackward(Tensor dy, Tensor? da, Tensor? db);
    void Mul(Tensor a, Tensor b, Tensor y);
    void MulBackward(Tensor a, Tensor b, Tensor dy, Tensor? da, Tensor? db);
    /// <summary>y = s * x.</summary>
    void Scale(Tensor x, float s, Tensor y);
    void ScaleBackward(Tensor dy, float s, Tensor dx);
    /// <summary>y = x/2 (1 + erf(x/sqrt 2)), the exact form of BERT/ViLT.</summary>
    void Gelu(Tensor x, Tensor y);
    void GeluBackward(Tensor x, Tensor dy, Tensor dx);
    void Tanh(Tensor x, Tensor y);
    void TanhBackward(Tensor y, Tensor dy, Tensor dx);
    /// <summary>y [1] = sum of all x.</summary>
    void SumAll(Tensor x, Tensor y);
    void SumAllBackward(Tensor dy, Tensor dx);

    // ---- normalisation and softmax ----
    /// <summary>x [R, C], gamma [C], beta [C] -> y [R, C], mean [R], rstd [R] (biased variance).</summary>
    void LayerNorm(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor y, Tensor mean, Tensor rstd);
    void LayerNormBackward(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dgamma, Tensor? dbeta);
    /// <summary>
    /// Softmax over the last dim with an additive mask. x [R, C]; mask [Rm, C] or null, where Rm divides R
    /// and row r uses mask row r / (R / Rm) (scores [B, H, T, T] with mask [B, T] viewed as [B, 1, T]... use Rm = B).
    /// </summary>
    void Softmax(Tensor x, Tensor? mask, Tensor y);
    void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx);

    // ---- attention ----
    /// <summary>
    /// Scaled dot-product attention with a key-padding mask. q [B, H, Tq, D], k and v [B, H, Tk, D],
    /// keyMask i32 [B, Tk] or null -> o [B, H, Tq, D] and lse [B, H, Tq] (the log-sum-exp of each row's
    /// scaled scores, kept for the backward; -inf when every key of the row is masked, whose output is 0).
    /// </summary>
    void Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse);
    void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor? keyMask, float scale, Tensor o, Tensor lse, Tensor dO,
        Tensor? dq, Tensor? dk, Tensor? dv);
    /// <summary>x [A, B, C, D] -> y [A, C, B, D] (split heads [B, T, H, D] -> [B, H, T, D] and back). Its own inverse.</summary>
    void SwapAxes12(Tensor x, Tensor y);
    void SwapAxes12Backward(Tensor dy, Tensor dx);

    // ---- embeddings, pooling, sequences ----
    /// <summary>ids i32 [N] in [0, V), table [V, C] -> y [N, C].</summary>
    void Embedding(Tensor ids, Tensor table, Tensor y);
    /// <summary>dtable[ids[n]] += dy[n] (scatter-add; repeated ids accumulate).</summary>
    void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable);
    /// <summary>y = x * keep / (1 - p), keep = CounterRng.Uniform(seed, i) >= p, same mask on every backend.</summary>
    void Dropout(Tensor x, float p, ulong seed, Tensor y);
    void DropoutBackward(Tensor dy, float p, ulong seed, Tensor dx);
    /// <summary>x [B, T, C], mask i32 [B, T] or null -> y [B, C] = mean over kept positions (0 when none).</summary>
    void MeanPool(Tensor x, Tensor? mask, Tensor y);
    void MeanPoolBackward(Tensor? mask, Tensor dy, Tensor dx);
    /// <summary>x [N, C] -> y = x / max(|x|, eps) per row.</summary>
    void L2Normalize(Tensor x, float eps, Tensor y);
    void L2NormalizeBackward(Tensor x, float eps, Tensor dy, Tensor dx);
    /// <summary>a [B, Ta, C], b [B, Tb, C] -> y [B, Ta + Tb, C] (along the sequence).</summary>
    void Concat(Tensor a, Tensor b, Tensor y);
    void ConcatBackward(Tensor dy, Tensor? da, Tensor? db);
    /// <summary>x [B, T, C] -> y [B, L, C] = x[:, start:start+L, :].</summary>
    void Slice(Tensor x, int start, Tensor y);
    void SliceBackward(Tensor dy, int start, Tensor dx);

    // ---- losses (mean over counted rows; the loss and its incoming gradient are [1] tensors) ----
    /// <summary>logits [N, V], targets i32 [N] (negative = ignored) -> loss [1], lse [N].</summary>
    void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor lse);
    void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, Tensor dloss, Tensor dlogits);
    /// <summary>x [N] logits, targets f32 [N] in [0, 1] -> loss [1].</summary>
    void BceWithLogits(Tensor x, Tensor targets, Tensor loss);
    void BceWithLogitsBackward(Tensor x, Tensor targets, Tensor dloss, Tensor dx);
    /// <summary>
    /// Bidirectional InfoNCE (PAPER.md): S = t v^T * invTemperature, loss = CE(S, diag) + CE(S^T, diag), each a mean
    /// over the N pairs. t [N, D], v [N, D] -> loss [1], lseRow [N], lseCol [N].
    /// </summary>
    void InfoNce(Tensor t, Tensor v, float invTemperature, Tensor loss, Tensor lseRow, Tensor lseCol);
    void InfoNceBackward(Tensor t, Tensor v, float invTemperature, Tensor lseRow, Tensor lseCol, Tensor dloss, Tensor? dt, Tensor? dv);

    // ---- retrieval ----
    /// <summary>
    /// Exact top-k by inner product: queries [Q, D] against corpus [N, D] -> the k best scores [Q, k] (descending) and
    /// their corpus rows, indices i32 [Q, k]; ties go to the lower index. 1 <= k <= min(N, 1024). Fast backends
    /// select on the fly over tiles of scores: no [Q, N] matrix for large N.
    /// </summary>
    void TopK(Tensor queries, Tensor corpus, int k, Tensor scores, Tensor indices);

    // ---- optimiser ----
    /// <summary>One AdamW step, in place: param, m, v [same shape]; step counts from 1.</summary>
    void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWParams p, int step);
    /// <summary>norm [1] = global L2 norm of all grads; when it exceeds maxNorm every grad is scaled by maxNorm / (norm + 1e-6).</summary>
    void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm);
}
