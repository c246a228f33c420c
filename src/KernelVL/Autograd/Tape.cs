using KernelVL.Tensors;

namespace KernelVL.Autograd;

/// <summary>
/// Records the backward rule of every op run while gradients are enabled, on this thread, and runs
/// them in reverse on <see cref="Backward"/>. Gradients accumulate (+=) into <see cref="Tensor.Grad"/>.
/// </summary>
public static class Tape
{
    private readonly record struct Node(string Op, Tensor Output, Action<Tensor> Backward, Tensor[] Saved);

    [ThreadStatic] private static List<Node>? _nodes;
    [ThreadStatic] private static int _noGrad;

    /// <summary>True while ops record their backward rules (the default; off inside <see cref="NoGrad"/>).</summary>
    public static bool IsRecording => _noGrad == 0;

    /// <summary>Number of recorded, not yet run nodes.</summary>
    public static int Count => _nodes?.Count ?? 0;

    /// <summary>Inside the returned region, ops record nothing and results never require gradients.</summary>
    public static NoGradRegion NoGrad()
    {
        _noGrad++;
        return new NoGradRegion(true);
    }

    public readonly struct NoGradRegion : IDisposable
    {
        private readonly bool _active;
        internal NoGradRegion(bool active) => _active = active;
        public void Dispose()
        {
            if (_active) _noGrad--;
        }
    }

    /// <summary>True when an op over these inputs must record: recording is on and some input requires grad.</summary>
    public static bool ShouldRecord(params ReadOnlySpan<Tensor?> inputs)
    {
        if (_noGrad != 0) return false;
        foreach (var t in inputs) if (t is not null && t.RequiresGrad) return true;
        return false;
    }

    /// <summary>Records <paramref name="backward"/>, called with the output's gradient during <see cref="Backward"/>.</summary>
    /// <remarks><paramref name="saved"/>: tensors kept only for the backward (statistics, log-sum-exps), freed once it ran or the tape is cleared.</remarks>
    public static void Record(string op, Tensor output, Action<Tensor> backward, params Tensor[] saved)
    {
        output.RequiresGrad = true;
        output.IsLeaf = false;
        (_nodes ??= new()).Add(new Node(op, output, backward, saved));
    }

    /// <summary>
    /// Seeds d(loss)/d(loss) = 1 and runs every recorded rule in reverse order, then clears the tape.
    /// <paramref name="loss"/> must be a one-element tensor.
    /// </summary>
    public static void Backward(Tensor loss)
    {
        if (loss.Numel != 1) throw new ShapeException($"backward needs a one-element loss, got {loss.Shape}");
        if (!loss.RequiresGrad) throw new KernelVLException("the loss does not depend on any tensor that requires grad");
        var nodes = _nodes ?? new();
        try
        {
            var seed = loss.EnsureGrad();
            loss.Backend.Fill(seed, 1f);
            for (int i = nodes.Count - 1; i >= 0; i--)
            {
                var n = nodes[i];
                if (!n.Output.IsDisposed && n.Output.Grad is not null) n.Backward(n.Output.Grad);
                foreach (var t in n.Saved) t.Dispose();
            }
        }
        finally
        {
            Clear();
        }
    }

    /// <summary>Drops every recorded node without running it (e.g. after an evaluation forward pass).</summary>
    public static void Clear()
    {
        if (_nodes is null) return;
        foreach (var n in _nodes) foreach (var t in n.Saved) t.Dispose();
        _nodes.Clear();
    }
}
