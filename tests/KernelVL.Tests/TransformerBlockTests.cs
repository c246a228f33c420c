using KernelVL.Autograd;
using KernelVL.Backends;
using KernelVL.Tensors;

namespace KernelVL.Tests;

/// <summary>
/// Gradients through a whole 2-layer pre-LN single-stream transformer with every op of the contract
/// in one graph (embeddings, patch projection, concat, dropout, attention with padding, GELU MLP, layer
/// norms, slices, pooling, tanh, L2 norm) and the three losses on top (InfoNCE, MLM cross-entropy, ITM BCE).
/// Checked by finite differences in f64, and each fast backend's f32 gradients against them.
/// </summary>
public unsafe class TransformerBlockTests
{
    private const int B = 3, Tt = 5, Ti = 4, Patch = 6, C = 8, H = 2, Layers = 2, Vocab = 11, Ffn = 12;

    private sealed class Net : IDisposable
    {
        public readonly List<Tensor> Params = new();
        private readonly Dictionary<string, Tensor> _p = new();
        private readonly IBackend _be;
        private readonly Tensor _ids, _patches, _mask, _textMask, _targets, _itm;

        public Net(IBackend be, DType dtype, int seed)
        {
            _be = be;
            var rng = new Random(seed);
            Tensor New(string name, double std, double mean, params int[] dims)
            {
                var host = new double[new Shape(dims).Numel];
                for (int i = 0; i < host.Length; i++) host[i] = mean + std * GradCheckTests.Normal(rng);
                var t = Make(host, dtype, dims);
                t.RequiresGrad = true;
                t.Name = name;
                _p[name] = t;
                Params.Add(t);
                return t;
            }
            New("word", 0.5, 0, Vocab, C); New("pos", 0.5, 0, Tt, C);
            New("patch.w", 0.4, 0, C, Patch); New("patch.b", 0.1, 0, C);
            for (int l = 0; l < Layers; l++)
            {
                New($"{l}.ln1.g", 0.1, 1, C); New($"{l}.ln1.b", 0.1, 0, C);
                foreach (var m in new[] { "q", "k", "v", "o" }) { New($"{l}.{m}.w", 0.35, 0, C, C); New($"{l}.{m}.b", 0.1, 0, C); }
                New($"{l}.ln2.g", 0.1, 1, C); New($"{l}.ln2.b", 0.1, 0, C);
                New($"{l}.fc1.w", 0.35, 0, Ffn, C); New($"{l}.fc1.b", 0.1, 0, Ffn);
                New($"{l}.fc2.w", 0.3, 0, C, Ffn); New($"{l}.fc2.b", 0.1, 0, C);
            }
            New("lnf.g", 0.1, 1, C); New("lnf.b", 0.1, 0, C);
            New("mlm.w", 0.35, 0, Vocab, C); New("mlm.b", 0.1, 0, Vocab);
            New("itm.w", 0.35, 0, 1, C); New("itm.b", 0.1, 0, 1);

            var ids = new int[B * Tt]; var targets = new int[B * Tt];
            for (int i = 0; i < ids.Length; i++) { ids[i] = rng.Next(Vocab); targets[i] = rng.NextDouble() < 0.4 ? rng.Next(Vocab) : -100; }
            var patches = new double[B * Ti * Patch];
            for (int i = 0; i < patches.Length; i++) patches[i] = GradCheckTests.Normal(rng);
            int[] textLen = [5, 3, 2];
            var mask = new int[B * (Tt + Ti)]; var textMask = new int[B * Tt];
            for (int b = 0; b < B; b++)
            {
                for (int t = 0; t < Tt; t++) { mask[b * (Tt + Ti) + t] = textMask[b * Tt + t] = t < textLen[b] ? 1 : 0; }
                for (int t = 0; t < Ti; t++) mask[b * (Tt + Ti) + Tt + t] = 1;
            }
            _ids = MakeInt(ids, B, Tt); _targets = MakeInt(targets, B * Tt); _mask = MakeInt(mask, B, Tt + Ti); _textMask = MakeInt(textMask, B, Tt);
            _patches = Make(patches, dtype, B, Ti, Patch);
            _itm = Make([1, 0, 1], dtype, B);
        }

        private Tensor Make(double[] host, DType dtype, params int[] dims)
        {
            using var _ = TensorScope.Untracked();
            var t = _be.Empty(new Shape(dims), dtype);
            if (dtype == DType.F64) host.CopyTo(GradCheckTests.D(t));
            else _be.CopyFromHost(host.Select(v => (float)v).ToArray(), t);
            return t;
        }

        private Tensor MakeInt(int[] host, params int[] dims)
        {
            using var _ = TensorScope.Untracked();
            var t = _be.Empty(new Shape(dims), DType.I32);
            _be.CopyFromHost(host, t);
            return t;
        }

        private Tensor P(string name) => _p[name];

        private Tensor Heads(Tensor x) => Ops.SwapAxes12(Ops.Reshape(x, B, Tt + Ti, H, C / H));   // [B, T, C] -> [B, H, T, D]

        public Tensor Loss()
        {
            int T = Tt + Ti;
            var text = Ops.Add(Ops.Embedding(_ids, P("word")), P("pos"));                 // [B, Tt, C]
            var image = Ops.Linear(_patches, P("patch.w"), P("patch.b"));                 // [B, Ti, C]
            var x = Ops.Dropout(Ops.Concat(text, image), 0.1f, 1234, training: true);      // [B, T, C]
            for (int l = 0; l < Layers; l++)
            {
                var h = Ops.LayerNorm(x, P($"{l}.ln1.g"), P($"{l}.ln1.b"), 1e-5f);
                var q = Heads(Ops.Linear(h, P($"{l}.q.w"), P($"{l}.q.b")));
                var k = Heads(Ops.Linear(h, P($"{l}.k.w"), P($"{l}.k.b")));
                var v = Heads(Ops.Linear(h, P($"{l}.v.w"), P($"{l}.v.b")));
                var a = Ops.Attention(q, k, v, _mask, 1f / MathF.Sqrt(C / H));                 // [B, H, T, D]
                a = Ops.Reshape(Ops.SwapAxes12(a), B, T, C);
                x = Ops.Add(x, Ops.Linear(a, P($"{l}.o.w"), P($"{l}.o.b")));
                h = Ops.LayerNorm(x, P($"{l}.ln2.g"), P($"{l}.ln2.b"), 1e-5f);
                var f = Ops.Linear(Ops.Gelu(Ops.Linear(h, P($"{l}.fc1.w"), P($"{l}.fc1.b"))), P($"{l}.fc2.w"), P($"{l}.fc2.b"));
                x = Ops.Add(x, f);
            }
            x = Ops.LayerNorm(x, P("lnf.g"), P("lnf.b"), 1e-5f);
            var xt = Ops.Slice(x, 0, Tt);                                                    // [B, Tt, C]
            var xi = Ops.Slice(x, Tt, Ti);                                                   // [B, Ti, C]
            var t = Ops.L2Normalize(Ops.Tanh(Ops.MeanPool(xt, _textMask)));                  // [B, C]
            var vi = Ops.L2Normalize(Ops.Tanh(Ops.MeanPool(xi, null)));                      // [B, C]
            var contrastive = Ops.InfoNce(t, vi, 0.2f);
            var logits = Ops.Linear(Ops.Reshape(xt, B * Tt, C), P("mlm.w"), P("mlm.b"));   // [B*Tt, V]
            var mlm = Ops.CrossEntropy(logits, _targets);
            var itm = Ops.BceWithLogits(Ops.Reshape(Ops.Linear(Ops.MeanPool(x, _mask), P("itm.w"), P("itm.b")), B), _itm);
            return Ops.Add(Ops.Add(contrastive, mlm), itm);
        }

        public void Dispose()
        {
            foreach (var t in Params) t.Dispose();
            foreach (var t in new[] { _ids, _patches, _mask, _textMask, _targets, _itm }) t.Dispose();
        }
    }

    [Fact]
    public void FiniteDifferencesThroughTwoLayersInF64()
    {
        using var be = new ReferenceBackend();
        int seed = Random.Shared.Next();
        using var net = new Net(be, DType.F64, seed);
        GradCheckTests.Check(be, new Random(seed), () => net.Loss(), net.Params.ToArray(), budget: 1e-6, maxProbes: 12);
    }

    [SkippableTheory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    [InlineData("ilgpu-cuda")]
    public void F32GradientsMatchTheF64Reference(string backend)
    {
        Skip.If(BackendFactory.Unavailable(backend) is { } why, BackendFactory.Unavailable(backend));
        int seed = Random.Shared.Next();
        using var reference = new ReferenceBackend();
        using var cpu = BackendFactory.Create(backend);
        using var netRef = new Net(reference, DType.F64, seed);
        using var netCpu = new Net(cpu, DType.F32, seed);
        double lossRef, lossCpu;
        using (new TensorScope())
        {
            var l = netRef.Loss(); lossRef = GradCheckTests.D(l)[0]; Tape.Backward(l);
        }
        using (new TensorScope())
        {
            var l = netCpu.Loss(); lossCpu = l.Item(); Tape.Backward(l);
        }
        Assert.True(Math.Abs(lossCpu - lossRef) <= 1e-5 * Math.Abs(lossRef), $"loss {lossCpu} vs {lossRef} (seed {seed})");
        double MaxGrad(string name) => GradCheckTests.D(netRef.Params.First(p => p.Name == name).Grad!).ToArray().Max(Math.Abs);
        for (int i = 0; i < netRef.Params.Count; i++)
        {
            var g = GradCheckTests.D(netRef.Params[i].Grad!).ToArray();
            var x = netCpu.Params[i].Grad!.ToArray();
            // Relative to the tensor's largest gradient. A key bias's gradient is zero in exact arithmetic (softmax
            // ignores a shift shared by all keys): what is left is the f32 rounding of the per-key terms that
            // cancel, whose scale is that of the key projection's weight gradient.
            string name = netRef.Params[i].Name!;
            double scale = name.EndsWith(".k.b") ? MaxGrad(name[..^2] + ".w") : g.Max(Math.Abs), err = 0;
            for (int j = 0; j < g.Length; j++) err = Math.Max(err, Math.Abs(x[j] - g[j]));
            Assert.True(err <= 1e-4 * scale, $"{netRef.Params[i].Name}: rel error {err / scale:E2} (seed {seed})");
        }
    }
}
