using KernelVL.Nn;
using KernelVL.Tensors;

namespace KernelVL.Model;

/// <summary>
/// Host-side inputs of one batch. Text: ids and masks [B, T] row-major. Images: patches [B, N, 3 P P], each patch's
/// pixels in (channel, row, column) order (the Conv2d weight layout), on a GridH x GridW grid, with a patch mask [B, N]
/// (0 = padding) or null. Either modality may be absent (the decomposed encoders use one at a time).
/// </summary>
public sealed record VlBatch(int Batch, int[]? TextIds = null, int[]? TextMask = null, int TextLength = 0,
    float[]? Patches = null, int GridH = 0, int GridW = 0, int[]? PatchMask = null);

/// <summary>
/// ViLT with the public checkpoint names: vilt.embeddings.*, vilt.encoder.layer.N.*, vilt.layernorm, vilt.pooler.dense,
/// rank_output. <see cref="Score"/> is the early-interaction (cross-encoder) match score; <see cref="Embed"/> is
/// VLDeformer's single-modality embedding through the same weights. Call the forwards inside a
/// <see cref="Autograd.TensorScope"/>: the input tensors they upload and every intermediate belong to the step and are
/// freed with it (outside a scope they are the caller's to dispose).
/// </summary>
public sealed class VlModel : Module
{
    private readonly Group _vilt;
    private readonly ViltEmbeddings _emb;
    private readonly List<TransformerLayer> _layers = new();
    private readonly Nn.LayerNorm _final;
    private readonly Linear _pooler, _rank;

    public VlTransformerConfig Config { get; }

    public VlModel(IBackend backend, VlTransformerConfig cfg, int seed, DType dtype = DType.F32) : base(backend, dtype)
    {
        if (cfg.Family != VlFamily.Vilt) throw new BadInputException("this model class implements the ViLT family; Oscar's region embedder is not implemented yet");
        Config = cfg;
        var rng = new Random(seed);
        _vilt = Child("vilt", new Group(backend, dtype));
        _emb = _vilt.Add("embeddings", new ViltEmbeddings(backend, cfg, rng, dtype));
        var layers = _vilt.Add("encoder", new Group(backend, dtype)).Add("layer", new Group(backend, dtype));
        for (int i = 0; i < cfg.NumLayers; i++) _layers.Add(layers.Add(i.ToString(System.Globalization.CultureInfo.InvariantCulture), new TransformerLayer(backend, cfg, rng, dtype)));
        _final = _vilt.Add("layernorm", new Nn.LayerNorm(backend, cfg.HiddenSize, cfg.LayerNormEps, rng, dtype));
        _pooler = _vilt.Add("pooler", new Group(backend, dtype)).Add("dense", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, true, rng, dtype: dtype));
        _rank = Child("rank_output", new Linear(backend, cfg.HiddenSize, 1, true, rng, dtype: dtype));
    }

    private Tensor Ints(int[] values, params int[] dims)
    {
        var t = Backend.Empty(new Shape(dims), DType.I32);
        Backend.CopyFromHost(values, t);
        return t;
    }

    private Tensor Floats(float[] values, params int[] dims)
    {
        var t = Backend.Empty(new Shape(dims), DType);
        Backend.CopyFromHost(values, t);
        return t;
    }

    /// <summary>Last hidden states [B, T, C] and the key mask [B, T] of the sequence: text, then [CLS] + patches, either or both.</summary>
    public (Tensor Hidden, Tensor Mask) Encode(VlBatch x, bool training = false, ulong seed = 0)
    {
        int b = x.Batch, c = Config.HiddenSize;
        Tensor? seq = null;
        var mask = new List<int[]>();
        int total = 0;
        if (x.TextIds is not null)
        {
            int t = x.TextLength;
            if (x.TextIds.Length != b * t) throw new ShapeException($"text ids: {x.TextIds.Length} values for [{b}, {t}]");
            var ids = Ints(x.TextIds, b, t);
            seq = _emb.Text(ids, Ints(new int[b * t], b, t), Ints(new int[b * t], b, t), Ints(Enumerable.Range(0, t).ToArray(), t));   // type 0, modality 0
            mask.Add(x.TextMask ?? Enumerable.Repeat(1, b * t).ToArray());
            total += t;
        }
        if (x.Patches is not null)
        {
            int n = x.GridH * x.GridW, pp = Config.NumChannels * Config.PatchSize * Config.PatchSize;
            if (x.Patches.Length != (long)b * n * pp) throw new ShapeException($"patches: {x.Patches.Length} values for [{b}, {n}, {pp}]");
            int g = Config.ImageSize / Config.PatchSize;
            var resample = Floats(Interpolation.BilinearAlignCorners(g, g, x.GridH, x.GridW), n, g * g);   // [N, G*G], a constant
            var img = _emb.Image(Floats(x.Patches, b, n, pp), x.GridH, x.GridW, resample, Ints(Enumerable.Repeat(1, b * (n + 1)).ToArray(), b, n + 1));
            seq = seq is null ? img : Ops.Concat(seq, img);
            var pm = new int[b * (n + 1)];
            for (int i = 0; i < b; i++)
            {
                pm[i * (n + 1)] = 1;
                for (int j = 0; j < n; j++) pm[i * (n + 1) + 1 + j] = x.PatchMask is null ? 1 : x.PatchMask[i * n + j];
            }
            mask.Add(pm);
            total += n + 1;
        }
        if (seq is null) throw new ShapeException("a batch needs text, images or both");
        // Key mask [B, total]: each modality's mask rows side by side.
        var keys = new int[b * total];
        int at = 0;
        foreach (var m in mask)
        {
            int len = m.Length / b;
            for (int i = 0; i < b; i++) Array.Copy(m, i * len, keys, i * total + at, len);
            at += len;
        }
        var keyMask = Ints(keys, b, total);
        var h = Ops.Dropout(seq, Config.HiddenDropout, seed * 131 + 7, training && Config.HiddenDropout > 0);
        for (int l = 0; l < _layers.Count; l++) h = _layers[l].Forward(h, keyMask, training, seed * 1009 + (ulong)l);
        return (_final.Forward(h), keyMask);
    }

    /// <summary>The cross-encoder's match score of each (text, image) pair: rank_output(tanh(pooler(h[:, 0]))) -> [B].</summary>
    public Tensor Score(VlBatch x, bool training = false, ulong seed = 0)
    {
        var (h, _) = Encode(x, training, seed);
        int b = x.Batch, c = Config.HiddenSize;
        var first = Ops.Reshape(Ops.Slice(h, 0, 1), b, c);
        return Ops.Reshape(_rank.Forward(Ops.Tanh(_pooler.Forward(first))), b);
    }

    /// <summary>
    /// VLDeformer's embedding of one modality: mean over positions (VLDeformer's code counts padding too; here only
    /// kept positions), tanh, L2-normalised -> [B, C]; or the [CLS] position with <see cref="VlPooling.Cls"/>.
    /// </summary>
    public Tensor Embed(VlBatch x, bool training = false, ulong seed = 0)
    {
        if ((x.TextIds is null) == (x.Patches is null)) throw new ShapeException("an embedding is of one modality: give text or images");
        var (h, mask) = Encode(x, training, seed);
        var pooled = Config.Pooling == VlPooling.Cls
            ? Ops.Reshape(Ops.Slice(h, 0, 1), x.Batch, Config.HiddenSize)
            : Ops.Tanh(Ops.MeanPool(h, mask));
        return Ops.L2Normalize(pooled);
    }
}
