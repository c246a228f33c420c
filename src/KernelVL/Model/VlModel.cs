using KernelVL.Autograd;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Nn;
using KernelVL.Tensors;
using KernelVL.Text;

namespace KernelVL.Model;

/// <summary>The heads a model carries (a checkpoint may hold any of them).</summary>
[Flags]
public enum VlHeads
{
    None = 0,
    /// <summary>The retrieval match score: Linear(C, 1) on the pooled output (ViLT's rank_output).</summary>
    Rank = 1,
    /// <summary>The 2-way image-text matching head (ViLT's itm_score.fc, Oscar's classifier).</summary>
    Itm = 2,
    /// <summary>Masked language modelling: transform + decoder tied to the word embeddings (mlm_score / cls.predictions).</summary>
    Mlm = 4,
    All = Rank | Itm | Mlm,
}

/// <summary>One pass of the transformer: last hidden states [B, T, C], the key mask i32 [B, T], the text's length (text comes first).</summary>
public sealed record VlEncoded(Tensor Hidden, Tensor Mask, int TextLength);

/// <summary>
/// The single-stream VL transformer, ViLT (pixels) or Oscar/VinVL (regions) behind one config, with the public
/// checkpoint names (vilt.embeddings.*, vilt.encoder.layer.N.*, rank_output, itm_score.fc, mlm_score.*; bert.*,
/// classifier, cls.predictions.* for Oscar). <see cref="Score"/> is the early-interaction (cross-encoder) match score;
/// <see cref="Embed"/> is VLDeformer's single-modality embedding through the same weights. Call the forwards inside a
/// <see cref="TensorScope"/>: the input tensors they upload and every intermediate belong to the step and are freed with
/// it (outside a scope they are the caller's to dispose).
/// </summary>
public sealed class VlModel : Module
{
    private readonly ViltEmbeddings? _vilt;
    private readonly Embedding? _bertWord, _bertPosition, _bertType;
    private readonly Nn.LayerNorm? _bertTextNorm, _regionNorm;
    private readonly Linear? _region;
    private readonly List<TransformerLayer> _layers = new();
    private readonly Nn.LayerNorm? _final;
    private readonly Linear _pooler;
    private readonly Linear? _rank, _itm;
    private readonly MlmHead? _mlm;
    private readonly Dictionary<(int, int), float[]> _resampleCache = new();

    public VlTransformerConfig Config { get; }
    public VlHeads Heads { get; }

    /// <summary>The tokenizer of the checkpoint's vocab.txt (set by <see cref="Load"/>, or by whoever builds the model).</summary>
    public TextTokenizer? Tokenizer { get; set; }

    public VlModel(IBackend backend, VlTransformerConfig cfg, int seed, DType dtype = DType.F32, VlHeads heads = VlHeads.All) : base(backend, dtype)
    {
        Config = cfg;
        Heads = heads;
        var rng = new Random(seed);
        int c = cfg.HiddenSize;
        bool vilt = cfg.Family == VlFamily.Vilt;
        var root = Child(vilt ? "vilt" : "bert", new Group(backend, dtype));
        Tensor word;
        if (vilt)
        {
            _vilt = root.Add("embeddings", new ViltEmbeddings(backend, cfg, rng, dtype));
            word = _vilt.WordEmbeddings;
        }
        else
        {
            var e = root.Add("embeddings", new Group(backend, dtype));
            _bertWord = e.Add("word_embeddings", new Embedding(backend, cfg.VocabSize, c, rng, dtype: dtype));
            _bertPosition = e.Add("position_embeddings", new Embedding(backend, cfg.MaxTextLength, c, rng, dtype: dtype));
            _bertType = e.Add("token_type_embeddings", new Embedding(backend, cfg.TypeVocabSize, c, rng, dtype: dtype));
            _bertTextNorm = e.Add("LayerNorm", new Nn.LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
            _region = root.Add("img_embedding", new Linear(backend, cfg.RegionFeatureSize, c, true, rng, dtype: dtype));
            _regionNorm = root.Add("LayerNorm", new Nn.LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
            word = _bertWord.Weight;
        }
        var layers = root.Add("encoder", new Group(backend, dtype)).Add("layer", new Group(backend, dtype));
        for (int i = 0; i < cfg.NumLayers; i++) _layers.Add(layers.Add(i.ToString(System.Globalization.CultureInfo.InvariantCulture), new TransformerLayer(backend, cfg, rng, dtype)));
        if (vilt) _final = root.Add("layernorm", new Nn.LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
        _pooler = root.Add("pooler", new Group(backend, dtype)).Add("dense", new Linear(backend, c, c, true, rng, dtype: dtype));
        if (heads.HasFlag(VlHeads.Rank)) _rank = Child("rank_output", new Linear(backend, c, 1, true, rng, dtype: dtype));
        if (heads.HasFlag(VlHeads.Itm))
            _itm = vilt ? Child("itm_score", new Group(backend, dtype)).Add("fc", new Linear(backend, c, 2, true, rng, dtype: dtype))
                        : Child("classifier", new Linear(backend, c, 2, true, rng, dtype: dtype));
        if (heads.HasFlag(VlHeads.Mlm))
            _mlm = vilt ? Child("mlm_score", new MlmHead(backend, cfg, word, rng, dtype))
                        : Child("cls", new Group(backend, dtype)).Add("predictions", new MlmHead(backend, cfg, word, rng, dtype));
    }

    /// <summary>The names of the heads' weights, to tell from a checkpoint which heads it holds.</summary>
    public static VlHeads HeadsIn(IEnumerable<string> tensorNames)
    {
        var h = VlHeads.None;
        foreach (var n in tensorNames)
        {
            if (n == "rank_output.weight") h |= VlHeads.Rank;
            else if (n is "itm_score.fc.weight" or "classifier.weight") h |= VlHeads.Itm;
            else if (n is "mlm_score.transform.dense.weight" or "cls.predictions.transform.dense.weight") h |= VlHeads.Mlm;
        }
        return h;
    }

    /// <summary>The head a parameter name belongs to (None for the encoder's own).</summary>
    public static VlHeads HeadOf(string name) =>
        name.StartsWith("rank_output.", StringComparison.Ordinal) ? VlHeads.Rank
        : name.StartsWith("itm_score.", StringComparison.Ordinal) || name.StartsWith("classifier.", StringComparison.Ordinal) ? VlHeads.Itm
        : name.StartsWith("mlm_score.", StringComparison.Ordinal) || name.StartsWith("cls.predictions.", StringComparison.Ordinal) ? VlHeads.Mlm
        : VlHeads.None;

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

    /// <summary>Runs the transformer over text, then image ([CLS] + patches, or regions), either or both.</summary>
    /// <param name="seed">Dropout and max_image_length sampling draw from it (fixed seed: the same patches every call).</param>
    public VlEncoded Encode(VlBatch x, bool training = false, ulong seed = 0)
    {
        int b = x.Batch;
        Tensor? seq = null;
        var mask = new List<int[]>();
        int textLength = 0;
        if (x.TextIds is not null)
        {
            int t = x.TextLength;
            if (x.TextIds.Length != b * t) throw new ShapeException($"text ids: {x.TextIds.Length} values for [{b}, {t}]");
            if (x.TextMask is not null && x.TextMask.Length != b * t) throw new ShapeException($"text mask: {x.TextMask.Length} values for [{b}, {t}]");
            if (t > Config.MaxTextLength) throw new ShapeException($"text of {t} tokens is longer than the model's {Config.MaxTextLength}");
            foreach (int id in x.TextIds)
                if ((uint)id >= (uint)Config.VocabSize) throw new ShapeException($"token id {id} is outside the vocabulary of {Config.VocabSize}");
            var ids = Ints(x.TextIds, b, t);
            var zeros = Ints(new int[b * t], b, t);
            var positions = Ints(Enumerable.Range(0, t).ToArray(), t);
            seq = _vilt is not null
                ? _vilt.Text(ids, zeros, zeros, positions)   // token type 0, modality 0
                : _bertTextNorm!.Forward(Ops.Add(Ops.Add(_bertWord!.Forward(ids), _bertType!.Forward(zeros)), _bertPosition!.Forward(positions)));
            mask.Add(x.TextMask ?? Enumerable.Repeat(1, b * t).ToArray());
            textLength = t;
        }
        if (x.Images is not null)
        {
            if (_vilt is null) throw new ShapeException("an Oscar model takes region features, not pixels");
            if (x.Images.Batch != b) throw new ShapeException($"{x.Images.Batch} images for a batch of {b}");
            var (patches, n, resample, pm) = ImageInputs(x.Images, seed);
            int pp = Config.NumChannels * Config.PatchSize * Config.PatchSize, g = Config.ImageSize / Config.PatchSize;
            var ones = Ints(Enumerable.Repeat(1, b * (n + 1)).ToArray(), b, n + 1);
            var img = _vilt.Image(Floats(patches, b, n, pp), Floats(resample, b * n, g * g), ones);   // [B, 1 + N, C]
            seq = seq is null ? img : Ops.Concat(seq, img);
            mask.Add(pm);
        }
        else if (x.Regions is not null)
        {
            if (_region is null) throw new ShapeException("a ViLT model takes pixels, not region features");
            var r = x.Regions;
            if (r.Batch != b) throw new ShapeException($"{r.Batch} region sets for a batch of {b}");
            if (r.FeatureSize != Config.RegionFeatureSize) throw new ShapeException($"region features of {r.FeatureSize} values, the model takes {Config.RegionFeatureSize}");
            if (r.Features.Length != (long)b * r.MaxRegions * r.FeatureSize) throw new ShapeException($"region features: {r.Features.Length} values for [{b}, {r.MaxRegions}, {r.FeatureSize}]");
            var img = _regionNorm!.Forward(_region.Forward(Floats(r.Features, b, r.MaxRegions, r.FeatureSize)));   // [B, R, C]
            seq = seq is null ? img : Ops.Concat(seq, img);
            var rm = new int[b * r.MaxRegions];
            for (int i = 0; i < b; i++) Array.Fill(rm, 1, i * r.MaxRegions, Math.Min(r.Counts[i], r.MaxRegions));
            mask.Add(rm);
        }
        if (seq is null) throw new ShapeException("a batch needs text, images or both");
        int total = seq.Shape[1];
        var keys = new int[b * total];   // [B, total]: each modality's mask rows side by side
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
        return new VlEncoded(_final is null ? h : _final.Forward(h), keyMask, textLength);
    }

    /// <summary>
    /// The image part on the host: patches [B, N, 3PP] (at most max_image_length of each image's patches, drawn with the
    /// seed, when the config caps them), the position resampling [B * N, G*G] and the mask [B, 1 + N] ([CLS] first).
    /// </summary>
    private (float[] Patches, int N, float[] Resample, int[] Mask) ImageInputs(PatchBatch pb, ulong seed)
    {
        int b = pb.Batch, pp = Config.NumChannels * Config.PatchSize * Config.PatchSize, g = Config.ImageSize / Config.PatchSize, g2 = g * g;
        if (pb.Patches.Length != (long)b * pb.MaxPatches * pp) throw new ShapeException($"patches: {pb.Patches.Length} values for [{b}, {pb.MaxPatches}, {pp}]");
        var rows = new int[b][];
        for (int i = 0; i < b; i++)
        {
            int count = pb.Count(i);
            if (count < 1 || count > pb.MaxPatches) throw new ShapeException($"image {i}: a {pb.GridH[i]}x{pb.GridW[i]} grid in {pb.MaxPatches} patch rows");
            var all = Enumerable.Range(0, count).ToArray();
            if (Config.MaxImageLength > 0 && count > Config.MaxImageLength)
            {
                new Random(unchecked((int)(seed * 7919 + (ulong)i))).Shuffle(all);   // ViLT samples max_image_length patches
                all = all[..Config.MaxImageLength];
                Array.Sort(all);
            }
            rows[i] = all;
        }
        int n = rows.Max(r => r.Length);
        var patches = new float[(long)b * n * pp];
        var resample = new float[(long)b * n * g2];
        var mask = new int[b * (n + 1)];
        for (int i = 0; i < b; i++)
        {
            int gh = pb.GridH[i], gw = pb.GridW[i];
            if (!_resampleCache.TryGetValue((gh, gw), out var weights))
                _resampleCache[(gh, gw)] = weights = Interpolation.BilinearAlignCorners(g, g, gh, gw);   // [gh*gw, G*G]
            mask[i * (n + 1)] = 1;
            for (int j = 0; j < rows[i].Length; j++)
            {
                int src = rows[i][j];
                Array.Copy(pb.Patches, ((long)i * pb.MaxPatches + src) * pp, patches, ((long)i * n + j) * pp, pp);
                Array.Copy(weights, (long)src * g2, resample, ((long)i * n + j) * g2, g2);
                mask[i * (n + 1) + 1 + j] = 1;
            }
        }
        return (patches, n, resample, mask);
    }

    /// <summary>The pooled output: tanh(pooler(h[:, 0])) -> [B, C].</summary>
    public Tensor Pooled(VlEncoded e)
    {
        int b = e.Hidden.Shape[0], c = Config.HiddenSize;
        return Ops.Tanh(_pooler.Forward(Ops.Reshape(Ops.Slice(e.Hidden, 0, 1), b, c)));
    }

    /// <summary>The 2-way image-text matching logits [B, 2] (index 1 = match).</summary>
    public Tensor ItmLogits(Tensor pooled) => (_itm ?? throw new BadInputException("this model has no ITM head")).Forward(pooled);

    /// <summary>The retrieval head's score [B].</summary>
    public Tensor RankScore(Tensor pooled) => Ops.Reshape((_rank ?? throw new BadInputException("this model has no rank_output head")).Forward(pooled), pooled.Shape[0]);

    /// <summary>MLM logits over the text positions [B, T, V].</summary>
    public Tensor MlmLogits(VlEncoded e)
    {
        if (_mlm is null) throw new BadInputException("this model has no MLM head");
        if (e.TextLength == 0) throw new ShapeException("MLM needs text in the batch");
        return _mlm.Forward(Ops.Slice(e.Hidden, 0, e.TextLength));
    }

    /// <summary>
    /// The cross-encoder's match score of each (text, image) pair [B]: the rank_output head where the model has it, else
    /// the ITM head's logit(match) - logit(no match).
    /// </summary>
    public Tensor Score(VlBatch x, bool training = false, ulong seed = 0)
    {
        if (!x.HasText || !x.HasImages) throw new ShapeException("a match score needs text and an image in every pair");
        var pooled = Pooled(Encode(x, training, seed));
        if (_rank is not null) return RankScore(pooled);
        if (_itm is null) throw new BadInputException("this model has neither a rank_output nor an ITM head to score pairs with");
        var logits = ItmLogits(pooled);                                          // [B, 2]
        var diff = Ops.MatMul(logits, Floats([-1f, 1f], 2, 1));                  // [B, 1]
        return Ops.Reshape(diff, x.Batch);
    }

    /// <summary>
    /// VLDeformer's embedding of one modality: mean over positions (VLDeformer's code counts padding too; here only
    /// kept positions), tanh, L2-normalised -> [B, C]; or the [CLS] position with <see cref="VlPooling.Cls"/>.
    /// </summary>
    /// <param name="pooling">Overrides the config's pooling (stage 1's alignment term uses [CLS]).</param>
    public Tensor Embed(VlBatch x, bool training = false, ulong seed = 0, VlPooling? pooling = null)
    {
        if (x.HasText == x.HasImages) throw new ShapeException("an embedding is of one modality: give text or images");
        var e = Encode(x, training, seed);
        var pooled = (pooling ?? Config.Pooling) == VlPooling.Cls
            ? Ops.Reshape(Ops.Slice(e.Hidden, 0, 1), x.Batch, Config.HiddenSize)
            : Ops.Tanh(Ops.MeanPool(e.Hidden, e.Mask));
        return Ops.L2Normalize(pooled);
    }

    // ---- checkpoints ----

    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors", VocabFile = "vocab.txt";

    /// <summary>
    /// Loads a checkpoint folder (config.json, model.safetensors, vocab.txt) onto a backend. The heads are those the file
    /// holds; buffers that are no parameters (position_ids, token_type_ids) and the tied MLM decoder (its weight and bias are the
    /// word embeddings and mlm_score.bias) are accepted and skipped; any other
    /// unknown, missing or mis-shaped tensor is an error naming it.
    /// </summary>
    /// <param name="ensureHeads">Heads to have even when the file lacks them (freshly initialised; e.g. pretraining an encoder checkpoint).</param>
    public static VlModel Load(string folder, IBackend backend, DType dtype = DType.F32, VlHeads ensureHeads = VlHeads.None, int seed = 0)
    {
        if (!Directory.Exists(folder)) throw new BadInputException($"{folder}: no such checkpoint folder");
        var cfg = VlTransformerConfig.Load(Path.Combine(folder, ConfigFile));
        string weights = Path.Combine(folder, WeightsFile), vocab = Path.Combine(folder, VocabFile);
        if (!File.Exists(weights)) throw new BadInputException($"{weights}: no such file (a checkpoint folder holds {ConfigFile}, {WeightsFile} and {VocabFile})");
        VlHeads heads;
        using (var f = SafeTensorsFile.Open(weights))
        {
            heads = HeadsIn(f.Tensors.Keys);
            // Before anything is allocated: a config whose sizes need more values than the file holds cannot match it
            // (a wrong hidden_size would otherwise allocate the model first, seconds and gigabytes, or fail for memory).
            long held = f.Tensors.Values.Sum(t => t.Numel);
            Int128 least = (Int128)cfg.VocabSize * cfg.HiddenSize + cfg.NumLayers * (4 * (Int128)cfg.HiddenSize * cfg.HiddenSize + 2 * (Int128)cfg.HiddenSize * cfg.IntermediateSize);   // a long wrapped for hidden_size 2^30
            if (least > held)
                throw new BadInputException($"{Path.Combine(folder, ConfigFile)}: describes a model of at least {least} weights (vocab_size {cfg.VocabSize}, hidden_size {cfg.HiddenSize}, " +
                    $"{cfg.NumLayers} layers, intermediate_size {cfg.IntermediateSize}) but {weights} holds {held}: the config does not belong to these weights");
        }
        var tokenizer = TextTokenizer.Load(vocab, cfg.MaxTextLength);
        // One token per row of the word embeddings: fewer would leave rows no text reaches (a truncated file, silently
        // read as [UNK] for the words it lost), more would give ids past the embeddings.
        if (tokenizer.VocabularySize != cfg.VocabSize)
            throw new BadInputException($"{vocab}: {tokenizer.VocabularySize} tokens, but {Path.Combine(folder, ConfigFile)} has vocab_size {cfg.VocabSize}: the vocabulary does not belong to this model");
        var fresh = ensureHeads & ~heads;
        var model = new VlModel(backend, cfg, seed, dtype, heads | ensureHeads);
        try
        {
            StateDict.Load(model, weights, optional: n => (HeadOf(n) & fresh) != VlHeads.None, skip: n => n.EndsWith(".position_ids", StringComparison.Ordinal) || n.EndsWith(".token_type_ids", StringComparison.Ordinal)
                || n.StartsWith("mlm_score.decoder.", StringComparison.Ordinal) || n.StartsWith("cls.predictions.decoder.", StringComparison.Ordinal));
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.Tokenizer = tokenizer;
        return model;
    }

    /// <summary>Writes the checkpoint folder (each file to a temporary name, then renamed into place).</summary>
    /// <param name="stage">The training stage to record in config.json (<see cref="VlTransformerConfig.Stage"/>); null: the config's own.</param>
    public void Save(string folder, string? stage = null)
    {
        if (Tokenizer is null) throw new BadInputException("the model has no tokenizer: a checkpoint needs its vocab.txt");
        if (stage is not (null or VlTransformerConfig.PretrainStage or VlTransformerConfig.DecomposeStage))
            throw new ArgumentOutOfRangeException(nameof(stage), stage, $"a checkpoint's stage is {VlTransformerConfig.PretrainStage} or {VlTransformerConfig.DecomposeStage} (its config.json would not load)");
        Directory.CreateDirectory(folder);
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFile), (stage is null ? Config : Config with { Stage = stage }).ToJson());
        StateDict.Save(this, Path.Combine(folder, WeightsFile));
        string vocab = Path.Combine(folder, VocabFile);
        if (!string.Equals(Path.GetFullPath(vocab), Path.GetFullPath(Tokenizer.VocabPath), StringComparison.Ordinal))
            AtomicFile.WriteAllText(vocab, File.ReadAllText(Tokenizer.VocabPath));
    }

    // ---- convenience: raw inputs ----

    private TextTokenizer Tok => Tokenizer ?? throw new BadInputException("the model has no tokenizer (load it from a checkpoint folder with vocab.txt)");

    /// <summary>Tokenises captions into a text-only batch.</summary>
    public VlBatch TextBatch(IReadOnlyList<string> captions)
    {
        var t = Tok.EncodeBatch(captions);
        return new VlBatch(t.Batch, t.Ids, t.Mask, t.Length);
    }

    /// <summary>Patches of preprocessed images as an image-only batch.</summary>
    public VlBatch ImageBatch(IReadOnlyList<PreparedImage> images)
    {
        if (Config.Family != VlFamily.Vilt) throw new BadInputException("an Oscar model takes region features (features.tsv), not pixels");
        return new VlBatch(images.Count, Images: PatchBatch.From(images, Config.PatchSize));
    }

    /// <summary>The image preprocessing this model's config asks for.</summary>
    public ImagePreprocessor Preprocessor() => ImagePreprocessor.For(Config);

    /// <summary>
    /// For inference over many batches with these weights fixed: on the cuda backend its GEMMs keep a bf16 copy of each
    /// weight matrix until the returned scope is disposed (<see cref="Backends.Cuda.CudaBackend.CacheBf16Weights"/>),
    /// instead of converting every weight in every call; on other backends nothing (null).
    /// </summary>
    public IDisposable? InferenceWeights() => Backend is Backends.Cuda.CudaBackend cuda ? cuda.CacheBf16Weights(Parameters()) : null;

    /// <summary>The cross-encoder score of one (image, caption) pair.</summary>
    public float MatchScore(PreparedImage image, string caption) => ScorePairs([image], [caption])[0];

    /// <summary>Cross-encoder scores of pairs (images[i], captions[i]), in batches; no gradients.</summary>
    public float[] ScorePairs(IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions, int batchSize = 32)
    {
        if (images.Count != captions.Count) throw new ShapeException($"{images.Count} images for {captions.Count} captions");
        var scores = new float[images.Count];
        using var _ = Tape.NoGrad();
        using var weights = InferenceWeights();
        for (int s = 0; s < images.Count; s += batchSize)
        {
            int n = Math.Min(batchSize, images.Count - s);
            var text = TextBatch(captions.Skip(s).Take(n).ToList());
            var img = ImageBatch(images.Skip(s).Take(n).ToList());
            using var scope = new TensorScope();
            Backend.CopyToHost(Score(text with { Images = img.Images }), scores.AsSpan(s, n));
        }
        return scores;
    }
}

/// <summary>The MLM head (BERT's prediction head): transform (dense, GELU, LayerNorm), then the decoder tied to the word embeddings, plus a bias.</summary>
public sealed class MlmHead : Module
{
    private readonly Linear _dense;
    private readonly Nn.LayerNorm _norm;
    private readonly Tensor _decoder, _bias;

    public MlmHead(IBackend backend, VlTransformerConfig cfg, Tensor wordEmbeddings, Random rng, DType dtype = DType.F32) : base(backend, dtype)
    {
        var t = Child("transform", new Group(backend, dtype));
        _dense = t.Add("dense", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, true, rng, dtype: dtype));
        _norm = t.Add("LayerNorm", new Nn.LayerNorm(backend, cfg.HiddenSize, cfg.LayerNormEps, rng, dtype));
        _decoder = wordEmbeddings;   // [V, C], owned by the embeddings
        _bias = Param("bias", "zeros", rng, cfg.VocabSize);
    }

    /// <summary>x [B, T, C] -> logits [B, T, V].</summary>
    public Tensor Forward(Tensor x) => Ops.Linear(_norm.Forward(Ops.Gelu(_dense.Forward(x))), _decoder, _bias);
}
