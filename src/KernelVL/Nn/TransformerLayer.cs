using KernelVL.Model;
using KernelVL.Tensors;

namespace KernelVL.Nn;

/// <summary>Multi-head self-attention with the HF names: query, key, value (under "attention") and output.dense.</summary>
public sealed class SelfAttention : Module
{
    private readonly int _heads;
    public Linear Query { get; }
    public Linear Key { get; }
    public Linear Value { get; }
    public Linear Output { get; }
    /// <summary>The "output" group (BERT adds its post-attention LayerNorm there).</summary>
    public Group OutputGroup { get; }

    /// <param name="projections">Where q/k/v live: "attention" (ViLT) or "self" (BERT).</param>
    public SelfAttention(IBackend backend, VlTransformerConfig cfg, Random rng, string projections, DType dtype = DType.F32) : base(backend, dtype)
    {
        _heads = cfg.NumHeads;
        var qkv = Child(projections, new Group(backend, dtype));
        Query = qkv.Add("query", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, cfg.QkvBias, rng, dtype: dtype));
        Key = qkv.Add("key", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, cfg.QkvBias, rng, dtype: dtype));
        Value = qkv.Add("value", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, cfg.QkvBias, rng, dtype: dtype));
        OutputGroup = Child("output", new Group(backend, dtype));
        Output = OutputGroup.Add("dense", new Linear(backend, cfg.HiddenSize, cfg.HiddenSize, true, rng, dtype: dtype));
    }

    /// <summary>x [B, T, C], keyMask i32 [B, T] -> [B, T, C].</summary>
    public Tensor Forward(Tensor x, Tensor? keyMask)
    {
        int b = x.Shape[0], t = x.Shape[1], c = x.Shape[2], d = c / _heads;
        Tensor Heads(Tensor y) => Ops.SwapAxes12(Ops.Reshape(y, b, t, _heads, d));   // [B, T, C] -> [B, H, T, D]
        var a = Ops.Attention(Heads(Query.Forward(x)), Heads(Key.Forward(x)), Heads(Value.Forward(x)), keyMask, 1f / MathF.Sqrt(d));
        return Output.Forward(Ops.Reshape(Ops.SwapAxes12(a), b, t, c));
    }
}

/// <summary>A named container for modules that only group names (HF's "attention.output", "intermediate", ...).</summary>
public sealed class Group(IBackend backend, DType dtype = DType.F32) : Module(backend, dtype)
{
    public T Add<T>(string name, T module) where T : Module => Child(name, module);
}

/// <summary>
/// One encoder layer. Pre-LN (ViLT): x + attn(ln_before(x)), then h + mlp(ln_after(h)); names layernorm_before,
/// attention.attention.{query,key,value}, attention.output.dense, layernorm_after, intermediate.dense, output.dense.
/// Post-LN (BERT/Oscar): ln(x + attn(x)), ln(h + mlp(h)); names attention.self.*, attention.output.{dense,LayerNorm},
/// intermediate.dense, output.{dense,LayerNorm}.
/// </summary>
public sealed class TransformerLayer : Module
{
    private readonly bool _preLn;
    private readonly float _dropout;
    private readonly SelfAttention _attn;
    private readonly LayerNorm _ln1, _ln2;
    private readonly Linear _fc1, _fc2;

    public TransformerLayer(IBackend backend, VlTransformerConfig cfg, Random rng, DType dtype = DType.F32) : base(backend, dtype)
    {
        _preLn = cfg.Family == VlFamily.Vilt;
        _dropout = cfg.HiddenDropout;
        int c = cfg.HiddenSize;
        if (_preLn)
        {
            _ln1 = Child("layernorm_before", new LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
            _attn = Child("attention", new SelfAttention(backend, cfg, rng, "attention", dtype));
            _ln2 = Child("layernorm_after", new LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
            _fc1 = Child("intermediate", new Group(backend, dtype)).Add("dense", new Linear(backend, c, cfg.IntermediateSize, true, rng, dtype: dtype));
            _fc2 = Child("output", new Group(backend, dtype)).Add("dense", new Linear(backend, cfg.IntermediateSize, c, true, rng, dtype: dtype));
        }
        else
        {
            _attn = Child("attention", new SelfAttention(backend, cfg, rng, "self", dtype));
            // BERT keeps the attention's LayerNorm beside its output dense: attention.output.LayerNorm
            _ln1 = _attn.OutputGroup.Add("LayerNorm", new LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
            _fc1 = Child("intermediate", new Group(backend, dtype)).Add("dense", new Linear(backend, c, cfg.IntermediateSize, true, rng, dtype: dtype));
            var output = Child("output", new Group(backend, dtype));
            _fc2 = output.Add("dense", new Linear(backend, cfg.IntermediateSize, c, true, rng, dtype: dtype));
            _ln2 = output.Add("LayerNorm", new LayerNorm(backend, c, cfg.LayerNormEps, rng, dtype));
        }
    }

    /// <summary>x [B, T, C], keyMask i32 [B, T] -> [B, T, C]. Dropout (seeded per call) only while training.</summary>
    public Tensor Forward(Tensor x, Tensor? keyMask, bool training = false, ulong seed = 0)
    {
        Tensor Drop(Tensor t, ulong s) => Ops.Dropout(t, _dropout, s, training && _dropout > 0);
        if (_preLn)
        {
            var h = Ops.Add(x, Drop(_attn.Forward(_ln1.Forward(x), keyMask), seed * 2 + 1));
            return Ops.Add(h, Drop(_fc2.Forward(Ops.Gelu(_fc1.Forward(_ln2.Forward(h)))), seed * 2 + 2));
        }
        var a = _ln1.Forward(Ops.Add(x, Drop(_attn.Forward(x, keyMask), seed * 2 + 1)));
        return _ln2.Forward(Ops.Add(a, Drop(_fc2.Forward(Ops.Gelu(_fc1.Forward(a))), seed * 2 + 2)));
    }
}
