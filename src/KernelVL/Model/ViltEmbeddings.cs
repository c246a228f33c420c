using KernelVL.Nn;
using KernelVL.Tensors;

namespace KernelVL.Model;

/// <summary>
/// ViLT's embeddings with the public names (vilt.embeddings.*): text = LayerNorm(word + token type + position); image =
/// the patch projection (Conv2d weight [C, 3, P, P] used as a GEMM over unfolded patches) after a [CLS] token, plus
/// position embeddings resampled bilinearly (align_corners) from the trained grid to the batch's grid; each modality
/// adds its modality-type embedding (token_type_embeddings: 0 text, 1 image).
/// </summary>
public sealed class ViltEmbeddings : Module
{
    private readonly VlTransformerConfig _cfg;
    private readonly int _grid;
    private readonly Embedding _word, _position, _tokenType, _modality;
    private readonly Nn.LayerNorm _textNorm;
    private readonly Tensor _cls, _pos, _patchW, _patchB;

    public ViltEmbeddings(IBackend backend, VlTransformerConfig cfg, Random rng, DType dtype = DType.F32) : base(backend, dtype)
    {
        _cfg = cfg;
        _grid = cfg.ImageSize / cfg.PatchSize;
        int c = cfg.HiddenSize, p = cfg.PatchSize;
        var text = Child("text_embeddings", new Group(backend, dtype));
        _word = text.Add("word_embeddings", new Embedding(backend, cfg.VocabSize, c, rng, dtype: dtype));
        _position = text.Add("position_embeddings", new Embedding(backend, cfg.MaxTextLength, c, rng, dtype: dtype));
        _tokenType = text.Add("token_type_embeddings", new Embedding(backend, cfg.TypeVocabSize, c, rng, dtype: dtype));
        _textNorm = text.Add("LayerNorm", new Nn.LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
        _cls = Param("cls_token", "normal:0.02", rng, 1, 1, c);
        _pos = Param("position_embeddings", "normal:0.02", rng, 1, 1 + _grid * _grid, c);
        var projection = Child("patch_embeddings", new Group(backend, dtype)).Add("projection", new Raw(backend, dtype));
        _patchW = projection.Add("weight", rng, "normal:0.02", c, cfg.NumChannels, p, p);
        _patchB = projection.Add("bias", rng, "zeros", c);
        _modality = Child("token_type_embeddings", new Embedding(backend, cfg.ModalityTypeVocabSize, c, rng, dtype: dtype));
    }

    /// <summary>ids, typeIds, modalityIds i32 [B, T], positionIds i32 [T] -> [B, T, C].</summary>
    public Tensor Text(Tensor ids, Tensor typeIds, Tensor modalityIds, Tensor positionIds)
    {
        int t = ids.Shape[1];
        if (t > _cfg.MaxTextLength) throw new ShapeException($"text of {t} tokens is longer than the model's {_cfg.MaxTextLength}");
        var e = Ops.Add(Ops.Add(_word.Forward(ids), _tokenType.Forward(typeIds)), _position.Forward(positionIds));   // [B, T, C] + [T, C]
        return Ops.Add(_textNorm.Forward(e), _modality.Forward(modalityIds));
    }

    /// <summary>
    /// patches [B, N, 3PP], resample [B * N, G*G] (a constant: row b*N+j holds the bilinear weights of image b's patch j on
    /// the trained G x G grid; zero for padding rows), modalityIds [B, 1 + N] -> [B, 1 + N, C].
    /// </summary>
    public Tensor Image(Tensor patches, Tensor resample, Tensor modalityIds)
    {
        int b = patches.Shape[0], n = patches.Shape[1], c = _cfg.HiddenSize, g2 = _grid * _grid;
        if (resample.Shape[0] != b * n || resample.Shape[1] != g2) throw new ShapeException($"resample {resample.Shape} for {b} images of {n} patches on a {_grid}x{_grid} grid");
        var x = Ops.Linear(patches, Ops.Reshape(_patchW, c, patches.Shape[2]), _patchB);      // [B, N, C]
        var pos = Ops.Reshape(_pos, 1, 1 + g2, c);                                             // [1, 1 + G*G, C]
        var gridPos = Ops.Reshape(Ops.MatMul(resample, Ops.Reshape(Ops.Slice(pos, 1, g2), g2, c)), b, n, c);   // [B, N, C]
        var cls = Ops.Add(Ops.Reshape(_cls, 1, c), Ops.Reshape(Ops.Slice(pos, 0, 1), 1, c));  // [1, C]
        var zeros = Backend.Empty(new Shape(b, 1, c), DType);
        Backend.Fill(zeros, 0f);
        var seq = Ops.Concat(Ops.Add(zeros, cls), Ops.Add(x, gridPos));                       // [B, 1 + N, C]
        return Ops.Add(seq, _modality.Forward(modalityIds));
    }

    /// <summary>The word embedding table [V, C] (the MLM decoder is tied to it).</summary>
    public Tensor WordEmbeddings => _word.Weight;

    /// <summary>Raw parameters under one name (the Conv2d projection's weight and bias).</summary>
    private sealed class Raw(IBackend backend, DType dtype) : Module(backend, dtype)
    {
        public Tensor Add(string name, Random rng, string init, params int[] shape) => Param(name, init, rng, shape);
    }
}
