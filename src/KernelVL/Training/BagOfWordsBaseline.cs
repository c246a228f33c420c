using System.Diagnostics;
using KernelVL.Autograd;
using KernelVL.Data;
using KernelVL.Imaging;
using KernelVL.Model;
using KernelVL.Nn;
using KernelVL.Retrieval;
using KernelVL.Tensors;
using KernelVL.Text;

namespace KernelVL.Training;

/// <summary>
/// The contrast for the demo: a dual encoder whose text side is a bag of words (the mean of learned word vectors, then a
/// linear map: no word order, so "a red circle left of a blue square" and "a blue circle left of a red square" embed
/// alike) and whose image side is an MLP over position-aware patches, mean-pooled. Trained with the same InfoNCE loss on
/// the same pairs. Both sides L2-normalised.
/// </summary>
public sealed class BagOfWordsBaseline : Module
{
    private readonly Nn.Embedding _words, _patchPos;
    private readonly Linear _text, _patch, _image;
    private readonly int _patchSize;

    public TextTokenizer Tokenizer { get; }

    public BagOfWordsBaseline(IBackend backend, TextTokenizer tokenizer, int vocab, int dim, int patchSize, int maxPatches, int seed) : base(backend)
    {
        Tokenizer = tokenizer;
        _patchSize = patchSize;
        var rng = new Random(seed);
        _words = Child("words", new Nn.Embedding(backend, vocab, dim, rng, std: 0.1f));
        _text = Child("text", new Linear(backend, dim, dim, true, rng, std: 0.1f));
        _patch = Child("patch", new Linear(backend, 3 * patchSize * patchSize, dim, true, rng, std: 0.05f));
        _patchPos = Child("patch_position", new Nn.Embedding(backend, maxPatches, dim, rng, std: 0.1f));
        _image = Child("image", new Linear(backend, dim, dim, true, rng, std: 0.1f));
    }

    private Tensor Ints(int[] v, params int[] dims)
    {
        var t = Backend.Empty(new Shape(dims), DType.I32);
        Backend.CopyFromHost(v, t);
        return t;
    }

    /// <summary>Captions -> [B, C] unit vectors (inside a TensorScope).</summary>
    public Tensor EncodeText(IReadOnlyList<string> captions)
    {
        var tb = Tokenizer.EncodeBatch(captions);
        var e = _words.Forward(Ints(tb.Ids, tb.Batch, tb.Length));                   // [B, T, C]
        return Ops.L2Normalize(_text.Forward(Ops.MeanPool(e, Ints(tb.Mask, tb.Batch, tb.Length))));
    }

    /// <summary>Images -> [B, C] unit vectors (inside a TensorScope).</summary>
    public Tensor EncodeImages(IReadOnlyList<PreparedImage> images)
    {
        var pb = PatchBatch.From(images, _patchSize);
        int b = pb.Batch, n = pb.MaxPatches, pp = 3 * _patchSize * _patchSize;
        var x = Backend.Empty(new Shape(b, n, pp));
        Backend.CopyFromHost(pb.Patches, x);
        var mask = new int[b * n];
        for (int i = 0; i < b; i++) Array.Fill(mask, 1, i * n, pb.Count(i));
        var pos = _patchPos.Forward(Ints(Enumerable.Range(0, n).ToArray(), n));       // [N, C]
        var h = Ops.Gelu(Ops.Add(_patch.Forward(x), pos));                             // [B, N, C]
        return Ops.L2Normalize(_image.Forward(Ops.MeanPool(h, Ints(mask, b, n))));
    }

    /// <summary>Trains on (image, caption) pairs: each epoch one random caption per image, InfoNCE with in-batch negatives.</summary>
    public List<float> Train(IReadOnlyList<PreparedImage> images, IReadOnlyList<IReadOnlyList<string>> captions, int epochs, int batch, float lr, float temperature, int seed,
        Action<int, int, float>? progress = null)
    {
        using var opt = new AdamWOptimizer(this) { WeightDecay = 0.01f };
        var rng = new Random(seed);
        var losses = new List<float>();
        int perEpoch = Math.Max(1, images.Count / batch), total = perEpoch * epochs, step = 0;
        for (int e = 0; e < epochs; e++)
        {
            var order = Enumerable.Range(0, images.Count).ToArray();
            rng.Shuffle(order);
            for (int k = 0; k < perEpoch; k++)
            {
                var idx = order.Skip(k * batch).Take(batch).ToList();
                using var scope = new TensorScope();
                var t = EncodeText(idx.Select(i => captions[i][rng.Next(captions[i].Count)]).ToList());
                var v = EncodeImages(idx.Select(i => images[i]).ToList());
                var loss = Ops.InfoNce(t, v, temperature);
                float l = loss.Item();
                Tape.Backward(loss);
                opt.Apply(Schedule.Cosine(lr, ++step, Math.Min(20, total / 10), total), 1f);
                losses.Add(l);
                progress?.Invoke(step, total, l);
            }
        }
        return losses;
    }

    /// <summary>Unit vectors of many captions or images, in batches, no gradients.</summary>
    public float[] Embed<T>(IReadOnlyList<T> items, Func<List<T>, Tensor> encode, int dim, int batch = 64)
    {
        var r = new float[(long)items.Count * dim];
        using var _ = Tape.NoGrad();
        for (int s = 0; s < items.Count; s += batch)
        {
            int n = Math.Min(batch, items.Count - s);
            using var scope = new TensorScope();
            Backend.CopyToHost(encode(items.Skip(s).Take(n).ToList()), r.AsSpan(s * dim, n * dim));
        }
        return r;
    }
}
