using KernelVL.Autograd;
using KernelVL.Tensors;

namespace KernelVL.Nn;

/// <summary>
/// A piece of the model graph that owns parameters and child modules under hierarchical names
/// ("encoder.layer.0.attention.attention.query.weight"), exactly as the public checkpoints name them. Parameters are
/// allocated once, outside any step scope, and disposed with the module.
/// </summary>
public abstract class Module : IDisposable
{
    private readonly List<(string Name, Tensor Tensor)> _params = new();
    private readonly List<(string Name, Module Module)> _children = new();

    protected Module(IBackend backend, DType dtype = DType.F32)
    {
        Backend = backend;
        DType = dtype;
    }

    public IBackend Backend { get; }
    public DType DType { get; }

    /// <summary>Initialisation draws from this (seeded by the model) so runs are reproducible.</summary>
    protected Random? InitRng { get; set; }

    /// <summary>A new parameter: init "normal:STD", "zeros" or "ones".</summary>
    protected Tensor Param(string name, string init, Random rng, params int[] shape)
    {
        Tensor t;
        using (TensorScope.Untracked()) t = Backend.Empty(new Shape(shape), DType);
        var host = new float[t.Numel];
        if (init == "ones") Array.Fill(host, 1f);
        else if (init.StartsWith("normal:", StringComparison.Ordinal))
        {
            double std = double.Parse(init["normal:".Length..], System.Globalization.CultureInfo.InvariantCulture);
            for (int i = 0; i < host.Length; i++)
                host[i] = (float)(std * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        }
        else if (init != "zeros") throw new ArgumentException($"unknown init '{init}'");
        Backend.CopyFromHost(host, t);
        t.RequiresGrad = true;
        t.Name = name;
        _params.Add((name, t));
        return t;
    }

    protected T Child<T>(string name, T module) where T : Module
    {
        _children.Add((name, module));
        return module;
    }

    /// <summary>Every parameter with its full name under <paramref name="prefix"/>.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> NamedParameters(string prefix = "")
    {
        foreach (var (n, t) in _params) yield return (prefix + n, t);
        foreach (var (n, m) in _children)
            foreach (var p in m.NamedParameters(prefix + n + ".")) yield return p;
    }

    public IEnumerable<Tensor> Parameters() => NamedParameters().Select(p => p.Tensor);

    public long ParameterCount => Parameters().Sum(p => p.Numel);

    public void ZeroGrad()
    {
        foreach (var p in Parameters()) p.ZeroGrad();
    }

    public virtual void Dispose()
    {
        foreach (var (_, t) in _params) t.Dispose();
        foreach (var (_, m) in _children) m.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>PyTorch's Linear: weight [out, in], bias [out]; y = x W^T + b.</summary>
public sealed class Linear : Module
{
    public Tensor Weight { get; }
    public Tensor? Bias { get; }

    public Linear(IBackend backend, int inFeatures, int outFeatures, bool bias, Random rng, float std = 0.02f, DType dtype = DType.F32) : base(backend, dtype)
    {
        Weight = Param("weight", $"normal:{std.ToString(System.Globalization.CultureInfo.InvariantCulture)}", rng, outFeatures, inFeatures);
        Bias = bias ? Param("bias", "zeros", rng, outFeatures) : null;
    }

    /// <summary>x [..., in] -> [..., out].</summary>
    public Tensor Forward(Tensor x) => Ops.Linear(x, Weight, Bias);
}

/// <summary>Layer norm over the last dim: weight (gamma) [C] = 1, bias (beta) [C] = 0.</summary>
public sealed class LayerNorm : Module
{
    public Tensor Weight { get; }
    public Tensor Bias { get; }
    public float Eps { get; }

    public LayerNorm(IBackend backend, int c, float eps, Random rng, DType dtype = DType.F32) : base(backend, dtype)
    {
        Weight = Param("weight", "ones", rng, c);
        Bias = Param("bias", "zeros", rng, c);
        Eps = eps;
    }

    public Tensor Forward(Tensor x) => Ops.LayerNorm(x, Weight, Bias, Eps);
}

/// <summary>A lookup table: weight [V, C].</summary>
public sealed class Embedding : Module
{
    public Tensor Weight { get; }

    public Embedding(IBackend backend, int vocab, int c, Random rng, float std = 0.02f, DType dtype = DType.F32) : base(backend, dtype)
        => Weight = Param("weight", $"normal:{std.ToString(System.Globalization.CultureInfo.InvariantCulture)}", rng, vocab, c);

    /// <summary>ids i32 [...] -> [..., C].</summary>
    public Tensor Forward(Tensor ids) => Ops.Embedding(ids, Weight);
}
