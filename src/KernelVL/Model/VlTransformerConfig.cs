using System.Text.Json;
using System.Text.Json.Nodes;

namespace KernelVL.Model;

/// <summary>The two published single-stream families the engine implements behind one config.</summary>
public enum VlFamily
{
    /// <summary>ViLT: pixels cut into patches, pre-LN layers, final LayerNorm.</summary>
    Vilt,
    /// <summary>Oscar/VinVL: detector region features (2054-d), post-LN BERT layers.</summary>
    Oscar,
}

/// <summary>How a decomposed encoder turns the last hidden states into one vector.</summary>
public enum VlPooling
{
    /// <summary>VLDeformer: mean over positions, then tanh (then L2-normalised).</summary>
    MeanTanh,
    /// <summary>The first ([CLS]) position's hidden state.</summary>
    Cls,
}

/// <summary>
/// The VL transformer's configuration, read from a Hugging Face-style config.json (ViLT's field names, so a user's
/// converted dandelin/vilt-b32-* folder is read as it is) plus this project's keys (kernelvl_*). Unknown keys are
/// ignored; malformed or inconsistent values are a <see cref="BadInputException"/> naming the file and the field.
/// </summary>
public sealed record VlTransformerConfig
{
    public VlFamily Family { get; init; } = VlFamily.Vilt;
    public int VocabSize { get; init; } = 30522;
    public int HiddenSize { get; init; } = 768;
    public int NumLayers { get; init; } = 12;
    public int NumHeads { get; init; } = 12;
    public int IntermediateSize { get; init; } = 3072;
    public float LayerNormEps { get; init; } = 1e-12f;
    public float HiddenDropout { get; init; } = 0.0f;
    public float AttentionDropout { get; init; } = 0.0f;
    public int MaxTextLength { get; init; } = 40;
    public int TypeVocabSize { get; init; } = 2;
    public int ModalityTypeVocabSize { get; init; } = 2;
    public bool QkvBias { get; init; } = true;
    public int NumChannels { get; init; } = 3;
    public int ImageSize { get; init; } = 384;
    public int PatchSize { get; init; } = 32;
    /// <summary>Longer image side cap of the ViLT resize (shorter side = ImageSize).</summary>
    public int MaxImageSide { get; init; } = 640;
    /// <summary>Cap on sampled patches per image (ViLT's max_image_length); -1 keeps all.</summary>
    public int MaxImageLength { get; init; } = -1;
    /// <summary>Oscar: region feature width (2048 detector + 6 box).</summary>
    public int RegionFeatureSize { get; init; } = 2054;
    public int MaxRegions { get; init; } = 70;
    public VlPooling Pooling { get; init; } = VlPooling.MeanTanh;

    /// <summary>The values of <see cref="Stage"/>: stage 1 (a cross-encoder) and stage 2 (decomposed into image and text encoders).</summary>
    public const string PretrainStage = "pretrain", DecomposeStage = "decompose";

    /// <summary>
    /// kernelvl_stage: the training command that wrote the checkpoint (<see cref="PretrainStage"/> or
    /// <see cref="DecomposeStage"/>); null where config.json names none (a checkpoint written before the key, or converted
    /// from elsewhere). It says what the weights were trained for; the architecture does not depend on it.
    /// </summary>
    public string? Stage { get; init; }

    public int HeadDim => HiddenSize / NumHeads;

    /// <summary>Presets for training from scratch: tiny (tests), small (the demo), base (ViLT-B/32's shape).</summary>
    public static VlTransformerConfig Preset(string name) => name switch
    {
        "tiny" => new() { VocabSize = 512, HiddenSize = 32, NumLayers = 2, NumHeads = 2, IntermediateSize = 64, MaxTextLength = 16, ImageSize = 32, MaxImageSide = 32, PatchSize = 8, LayerNormEps = 1e-5f },
        "small" => new() { VocabSize = 1024, HiddenSize = 128, NumLayers = 4, NumHeads = 4, IntermediateSize = 512, MaxTextLength = 24, ImageSize = 64, MaxImageSide = 64, PatchSize = 16, LayerNormEps = 1e-5f },
        "base" => new(),
        _ => throw new BadInputException($"unknown config preset '{name}' (tiny, small, base)"),
    };

    public static VlTransformerConfig Load(string path)
    {
        if (!File.Exists(path)) throw new BadInputException($"{path}: no such file");
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new BadInputException($"{path}: not valid JSON ({e.Message})");
        }
        if (root is not JsonObject o) throw new BadInputException($"{path}: not a JSON object");
        return FromJson(o, path);
    }

    public static VlTransformerConfig FromJson(JsonObject o, string source)
    {
        var d = new VlTransformerConfig();
        int Int(string key, int def, int min)
        {
            if (o[key] is not JsonValue v) return def;
            int x;
            if (v.TryGetValue(out int xi)) x = xi;
            else if (v.TryGetValue(out double xd) && xd == Math.Floor(xd) && Math.Abs(xd) <= int.MaxValue) x = (int)xd;   // 12.0
            else throw new BadInputException($"{source}: {key} must be an integer, got {v.ToJsonString()}");
            if (x < min) throw new BadInputException($"{source}: {key} must be >= {min}, got {x}");
            return x;
        }
        float Float(string key, float def, float min, float max)
        {
            if (o[key] is not JsonValue v) return def;
            if (!v.TryGetValue(out double x)) throw new BadInputException($"{source}: {key} must be a number, got {v.ToJsonString()}");
            if (!(x >= min && x <= max)) throw new BadInputException($"{source}: {key} must be in [{min}, {max}], got {x}");
            return (float)x;
        }
        string? Str(string key) => o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

        string? modelType = Str("model_type");
        var family = Str("kernelvl_family") switch
        {
            null => modelType is "bert" or "oscar" ? VlFamily.Oscar : VlFamily.Vilt,
            "vilt" => VlFamily.Vilt,
            "oscar" => VlFamily.Oscar,
            var f => throw new BadInputException($"{source}: kernelvl_family must be vilt or oscar, got {f}"),
        };
        var pooling = Str("kernelvl_pooling") switch
        {
            null or "mean_tanh" => VlPooling.MeanTanh,
            "cls" => VlPooling.Cls,
            var p => throw new BadInputException($"{source}: kernelvl_pooling must be mean_tanh or cls, got {p}"),
        };
        string? stage = Str("kernelvl_stage") switch
        {
            null => null,
            PretrainStage => PretrainStage,
            DecomposeStage => DecomposeStage,
            var s => throw new BadInputException($"{source}: kernelvl_stage must be {PretrainStage} or {DecomposeStage}, got {s}"),
        };
        string? act = Str("hidden_act");
        if (act is not null && act != "gelu") throw new BadInputException($"{source}: hidden_act {act} is not supported (gelu, the exact erf form)");
        var c = new VlTransformerConfig
        {
            Family = family,
            Pooling = pooling,
            Stage = stage,
            VocabSize = Int("vocab_size", d.VocabSize, 1),
            HiddenSize = Int("hidden_size", d.HiddenSize, 1),
            NumLayers = Int("num_hidden_layers", d.NumLayers, 1),
            NumHeads = Int("num_attention_heads", d.NumHeads, 1),
            IntermediateSize = Int("intermediate_size", d.IntermediateSize, 1),
            LayerNormEps = Float("layer_norm_eps", d.LayerNormEps, 0f, 1f),
            HiddenDropout = Float("hidden_dropout_prob", d.HiddenDropout, 0f, 0.99f),
            AttentionDropout = Float("attention_probs_dropout_prob", d.AttentionDropout, 0f, 0.99f),
            MaxTextLength = Int("max_position_embeddings", d.MaxTextLength, 2),
            TypeVocabSize = Int("type_vocab_size", d.TypeVocabSize, 1),
            ModalityTypeVocabSize = Int("modality_type_vocab_size", d.ModalityTypeVocabSize, 2),
            QkvBias = o["qkv_bias"] is JsonValue qb && qb.TryGetValue(out bool b) ? b : d.QkvBias,
            NumChannels = Int("num_channels", d.NumChannels, 1),
            ImageSize = Int("image_size", d.ImageSize, 1),
            PatchSize = Int("patch_size", d.PatchSize, 1),
            MaxImageSide = Int("kernelvl_max_image_side", Math.Max(d.MaxImageSide, Int("image_size", d.ImageSize, 1)), 1),
            MaxImageLength = Int("max_image_length", d.MaxImageLength, -1),
            RegionFeatureSize = Int("img_feature_dim", d.RegionFeatureSize, 1),
            MaxRegions = Int("max_img_seq_length", d.MaxRegions, 1),
        };
        if (c.HiddenSize % c.NumHeads != 0)
            throw new BadInputException($"{source}: hidden_size {c.HiddenSize} is not a multiple of num_attention_heads {c.NumHeads}");
        if (c.ImageSize % c.PatchSize != 0)
            throw new BadInputException($"{source}: image_size {c.ImageSize} is not a multiple of patch_size {c.PatchSize}");
        if (c.MaxImageLength == 0)
            throw new BadInputException($"{source}: max_image_length must be -1 (all patches) or positive, got 0");
        return c;
    }

    /// <summary>config.json in the Hugging Face names (model_type vilt or bert) plus this project's kernelvl_* keys; <see cref="FromJson"/> reads it back.</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["model_type"] = Family == VlFamily.Vilt ? "vilt" : "bert",
            ["kernelvl_family"] = Family == VlFamily.Vilt ? "vilt" : "oscar",
            ["kernelvl_pooling"] = Pooling == VlPooling.Cls ? "cls" : "mean_tanh",
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["num_hidden_layers"] = NumLayers,
            ["num_attention_heads"] = NumHeads,
            ["intermediate_size"] = IntermediateSize,
            ["hidden_act"] = "gelu",
            ["layer_norm_eps"] = LayerNormEps,
            ["hidden_dropout_prob"] = HiddenDropout,
            ["attention_probs_dropout_prob"] = AttentionDropout,
            ["max_position_embeddings"] = MaxTextLength,
            ["type_vocab_size"] = TypeVocabSize,
            ["modality_type_vocab_size"] = ModalityTypeVocabSize,
            ["qkv_bias"] = QkvBias,
            ["num_channels"] = NumChannels,
            ["image_size"] = ImageSize,
            ["patch_size"] = PatchSize,
            ["kernelvl_max_image_side"] = MaxImageSide,
            ["max_image_length"] = MaxImageLength,
            ["img_feature_dim"] = RegionFeatureSize,
            ["max_img_seq_length"] = MaxRegions,
        };
        if (Stage is not null) o["kernelvl_stage"] = Stage;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
