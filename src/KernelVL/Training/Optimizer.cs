using KernelVL.Autograd;
using KernelVL.IO;
using KernelVL.Nn;
using KernelVL.Tensors;

namespace KernelVL.Training;

/// <summary>
/// AdamW over a module's parameters with the state (first and second moments) on the backend. Matrices and embedding
/// tables decay; vectors (biases, LayerNorm weights) do not. The global gradient norm is clipped before the step.
/// The state saves to and loads from safetensors (exp_avg.NAME, exp_avg_sq.NAME) so a resumed run continues exactly.
/// </summary>
public sealed class AdamWOptimizer : IDisposable
{
    private readonly List<(string Name, Tensor Param, Tensor M, Tensor V)> _state = new();
    private readonly IBackend _backend;
    private readonly Tensor _norm;

    public int Step { get; private set; }
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.999f;
    public float Eps { get; init; } = 1e-8f;
    public float WeightDecay { get; init; }

    public AdamWOptimizer(Module module)
    {
        _backend = module.Backend;
        using (TensorScope.Untracked())
        {
            foreach (var (name, p) in module.NamedParameters())
            {
                var m = _backend.Empty(p.Shape, p.DType);
                var v = _backend.Empty(p.Shape, p.DType);
                _backend.Fill(m, 0f);
                _backend.Fill(v, 0f);
                _state.Add((name, p, m, v));
            }
            _norm = _backend.Empty(new Shape(1));
        }
    }

    /// <summary>Clips the gradients' global norm to <paramref name="clip"/> (when positive), takes one AdamW step at <paramref name="lr"/>, zeroes the gradients. Returns the norm before clipping.</summary>
    public float Apply(float lr, float clip)
    {
        var grads = _state.Select(s => s.Param.EnsureGrad()).ToList();
        _backend.ClipGradNorm(grads, clip > 0 ? clip : float.PositiveInfinity, _norm);
        float norm = _norm.Item();
        if (!float.IsFinite(norm)) throw new TrainingDivergedException($"the gradient norm is {norm} at step {Step + 1}: training diverged");
        Step++;
        foreach (var (_, p, m, v) in _state)
            _backend.AdamW(p, p.Grad!, m, v, new AdamWParams(lr, Beta1, Beta2, Eps, p.Rank >= 2 ? WeightDecay : 0f), Step);
        foreach (var (_, p, _, _) in _state) p.ZeroGrad();
        return norm;
    }

    public void ZeroGrad()
    {
        foreach (var (_, p, _, _) in _state) p.ZeroGrad();
    }

    public void Save(string path) => SafeTensorsWriter.Write(path, _state.SelectMany(s => new[]
    {
        new SafeTensorsWriter.Entry("exp_avg." + s.Name, s.M.Shape.ToArray(), s.M.ToArray()),
        new SafeTensorsWriter.Entry("exp_avg_sq." + s.Name, s.V.Shape.ToArray(), s.V.ToArray()),
    }), metadata: new Dictionary<string, string> { ["step"] = Step.ToString(System.Globalization.CultureInfo.InvariantCulture) });

    public void Load(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        foreach (var (name, _, m, v) in _state)
        {
            foreach (var (key, t) in new[] { ("exp_avg." + name, m), ("exp_avg_sq." + name, v) })
            {
                if (!f.Tensors.TryGetValue(key, out var info)) throw new BadInputException($"{path}: no optimizer state {key}");
                if (!info.Shape.SequenceEqual(t.Shape.ToArray())) throw new BadInputException($"{path}: {key} is [{string.Join(", ", info.Shape)}], the model needs {t.Shape}");
                f.CopyTo(key, t);
            }
        }
        Step = f.Metadata.TryGetValue("step", out var s) && int.TryParse(s, System.Globalization.CultureInfo.InvariantCulture, out int st) && st >= 0
            ? st : throw new BadInputException($"{path}: no valid step count in the metadata");
    }

    public void Dispose()
    {
        foreach (var (_, _, m, v) in _state) { m.Dispose(); v.Dispose(); }
        _norm.Dispose();
    }
}
