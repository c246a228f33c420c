using System.Diagnostics;
using KernelVL.Autograd;
using KernelVL.Imaging;
using KernelVL.Model;
using KernelVL.Tensors;

namespace KernelVL.Retrieval;

/// <summary>One retrieval mode's result on a test set: recall both ways, the wall time of the whole mode (encoding included).</summary>
public sealed record ModeResult(string Mode, RecallResult Recall, double Seconds, long CrossPairs = 0, RecallResult? Coco1K = null, string? Note = null);

/// <summary>
/// The three ways to retrieve with a VL transformer, evaluated by the standard protocol on the same test set:
/// decomposed (VLDeformer: encode every image and caption once, inner products), cross (the early-interaction
/// cross-encoder scores every image-caption pair), rerank (decomposed top-K candidates rescored by the cross-encoder,
/// both directions; the rest keep their decomposed order after them).
/// </summary>
public static class RetrievalEval
{
    /// <summary>queries [qn, d] x corpus [xn, d] -> scores [qn, xn] through the backend's GEMM.</summary>
    public static float[] Scores(IBackend backend, float[] queries, int qn, float[] corpus, int xn)
    {
        int d = queries.Length / qn;
        using var _ = Tape.NoGrad();
        using var scope = new TensorScope();
        var q = backend.Empty(new Shape(qn, d));
        var x = backend.Empty(new Shape(xn, d));
        backend.CopyFromHost(queries, q);
        backend.CopyFromHost(corpus, x);
        var s = backend.Empty(new Shape(qn, xn));
        backend.MatMul(q, x, null, s, transA: false, transB: true);
        var r = new float[(long)qn * xn];
        backend.CopyToHost(s, r);
        return r;
    }

    /// <summary>Decomposed retrieval: both encoders over the set, then recall from the inner products (and COCO-1K folds when the set has 2+ thousands).</summary>
    /// <param name="timingRuns">The whole mode (encoding + scoring + ranking) is run this many times and the median wall
    /// time reported: it takes well under a second, where one run's time moves by tens of percent with scheduling noise.</param>
    public static (ModeResult Result, float[] ImageVecs, float[] TextVecs) Decomposed(VlModel model, IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions,
        IReadOnlyList<int> owner, int batch = 32, Action<string, long, long>? progress = null, int timingRuns = 3)
    {
        var enc = new DecomposedEncoder(model, batch);
        // Warm-up outside the timer with a full batch of each (JIT, memory pools, threads), as the cross-encoder's rate is
        // measured after a warm-up batch: both modes are timed warm.
        enc.EncodeImages(images.Take(batch).ToList());
        enc.EncodeTexts(captions.Take(batch).ToList());
        var times = new List<double>();
        float[] iv = [], tv = [];
        RecallResult? r = null;
        int d = enc.Dim;
        for (int run = 0; run < Math.Max(1, timingRuns); run++)
        {
            var sw = Stopwatch.StartNew();
            var shown = run == 0 ? progress : null;   // the timing runs repeat the first: its bars only
            iv = enc.EncodeImages(images, n => shown?.Invoke("encode images", n, images.Count));
            tv = enc.EncodeTexts(captions, n => shown?.Invoke("encode captions", n, captions.Count));
            r = Recall.FromEmbeddings(iv, tv, d, owner, (q, qn, x, xn) => Scores(model.Backend, q, qn, x, xn));
            times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        double seconds = times[times.Count / 2];
        var (fi, ft) = (iv, tv);
        var folds = Coco1K(images.Count, owner, (start, count, caps) => Recall.FromEmbeddings(fi[(start * d)..((start + count) * d)],
            caps.SelectMany(c => ft.Skip(c * d).Take(d)).ToArray(), d, caps.Select(c => owner[c] - start).ToList(), (q, qn, x, xn) => Scores(model.Backend, q, qn, x, xn)));
        return (new ModeResult("decomposed", r!, seconds, Coco1K: folds, Note: times.Count > 1 ? $"median wall time of {times.Count} runs" : null), iv, tv);
    }

    /// <summary>COCO-1K: the mean over folds of 1000 images (with their captions) when the set has at least two; else null.</summary>
    private static RecallResult? Coco1K(int images, IReadOnlyList<int> owner, Func<int, int, List<int>, RecallResult> fold)
    {
        if (images < 2000) return null;
        var per = new List<RecallResult>();
        foreach (var (start, count) in Recall.Folds(images))
            per.Add(fold(start, count, Enumerable.Range(0, owner.Count).Where(c => owner[c] >= start && owner[c] < start + count).ToList()));
        return RecallResult.Mean(per);
    }

    /// <summary>The cross-encoder's score of every (image, caption) pair -> [images, captions].</summary>
    public static float[] CrossScores(VlModel model, IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions, int batch, Action<long>? progress = null)
    {
        var scores = new float[(long)images.Count * captions.Count];
        // Room for one batch, but no more than there are pairs: a batch size far past the work (a --micro-batch of
        // int.MaxValue) must not be allocated up front.
        int room = (int)Math.Min(batch, scores.LongLength);
        var pairImages = new List<PreparedImage>(room);
        var pairCaptions = new List<string>(room);
        long at = 0, done = 0;
        for (int i = 0; i < images.Count; i++)
            for (int c = 0; c < captions.Count; c++)
            {
                pairImages.Add(images[i]);
                pairCaptions.Add(captions[c]);
                if (pairImages.Count == batch || (i == images.Count - 1 && c == captions.Count - 1))
                {
                    var s = model.ScorePairs(pairImages, pairCaptions, batch);
                    s.CopyTo(scores, at);
                    at += s.Length;
                    done += s.Length;
                    progress?.Invoke(done);
                    pairImages.Clear();
                    pairCaptions.Clear();
                }
            }
        return scores;
    }

    /// <summary>Seconds per cross-encoder pair, measured on a few batches of real pairs from the set (after one warm-up batch).</summary>
    public static double CrossSecondsPerPair(VlModel model, IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions, int batch = 32)
    {
        var pi = new List<PreparedImage>();
        var pc = new List<string>();
        for (int i = 0; i < batch; i++) { pi.Add(images[i % images.Count]); pc.Add(captions[(i * 7) % captions.Count]); }
        model.ScorePairs(pi, pc, batch);
        var sw = Stopwatch.StartNew();
        int reps = 3;
        for (int r = 0; r < reps; r++) model.ScorePairs(pi, pc, batch);
        return sw.Elapsed.TotalSeconds / (reps * batch);
    }

    /// <summary>The cross-encoder over every (image, caption) pair: images x captions forward passes.</summary>
    public static ModeResult Cross(VlModel model, IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions, IReadOnlyList<int> owner,
        int batch = 32, Action<string, long, long>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        long total = (long)images.Count * captions.Count;
        var scores = CrossScores(model, images, captions, batch, n => progress?.Invoke("cross-encoder pairs", n, total));
        var r = Recall.Evaluate(scores, images.Count, owner);
        double seconds = sw.Elapsed.TotalSeconds;
        var folds = Coco1K(images.Count, owner, (start, count, caps) =>
        {
            var sub = new float[count * caps.Count];
            for (int i = 0; i < count; i++)
                for (int j = 0; j < caps.Count; j++) sub[i * caps.Count + j] = scores[(long)(start + i) * captions.Count + caps[j]];
            return Recall.Evaluate(sub, count, caps.Select(c => owner[c] - start).ToList());
        });
        return new ModeResult("cross", r, seconds, total, folds);
    }

    /// <summary>
    /// Decomposed + rerank: for each image its top-K captions by inner product, for each caption its top-K images, rescored
    /// by the cross-encoder (ALBEF/BLIP's hybrid). <paramref name="decomposedSeconds"/> (the encoding) is added to the time.
    /// </summary>
    public static ModeResult Rerank(VlModel model, IReadOnlyList<PreparedImage> images, IReadOnlyList<string> captions, IReadOnlyList<int> owner,
        float[] imageVecs, float[] textVecs, double decomposedSeconds, int k = 16, int batch = 32, Action<string, long, long>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        int ni = images.Count, nc = captions.Count, d = imageVecs.Length / ni;
        var s = Scores(model.Backend, imageVecs, ni, textVecs, nc);   // [images, captions]
        int ki = Math.Min(k, nc), kc = Math.Min(k, ni);
        long pairs = (long)ni * ki + (long)nc * kc, done = 0;
        var own = Recall.Own(ni, owner);
        var i2t = new int[ni];
        for (int i = 0; i < ni; i++)
        {
            var row = s.AsSpan(i * nc, nc);
            var cand = TopIndices(row, ki);
            var cross = model.ScorePairs(cand.Select(_ => images[i]).ToList(), cand.Select(c => captions[c]).ToList(), batch);
            done += cand.Length;
            progress?.Invoke("rerank pairs", done, pairs);
            int best = int.MaxValue;
            foreach (int target in own[i]) best = Math.Min(best, RerankedRank(row, cand, cross, target));
            i2t[i] = best;
        }
        var t2i = new int[nc];
        var col = new float[ni];
        for (int c = 0; c < nc; c++)
        {
            for (int i = 0; i < ni; i++) col[i] = s[(long)i * nc + c];
            var cand = TopIndices(col, kc);
            var cross = model.ScorePairs(cand.Select(i => images[i]).ToList(), cand.Select(_ => captions[c]).ToList(), batch);
            done += cand.Length;
            progress?.Invoke("rerank pairs", done, pairs);
            t2i[c] = RerankedRank(col, cand, cross, owner[c]);
        }
        var r = new RecallResult(Recall.Summarise(i2t), Recall.Summarise(t2i));
        return new ModeResult("rerank", r, decomposedSeconds + sw.Elapsed.TotalSeconds, pairs, Note: ki == kc ? $"top {ki} rescored by the cross-encoder, both directions" : $"top {ki} captions per image and top {kc} images per caption rescored by the cross-encoder");
    }

    /// <summary>The k best positions of a row (score descending, ties to the lower index).</summary>
    public static int[] TopIndices(ReadOnlySpan<float> row, int k)
    {
        var idx = new int[row.Length];
        for (int i = 0; i < idx.Length; i++) idx[i] = i;
        var copy = row.ToArray();
        Array.Sort(idx, (a, b) => copy[a] != copy[b] ? copy[b].CompareTo(copy[a]) : a.CompareTo(b));
        return idx[..k];
    }

    /// <summary>1-based rank of target when the candidates come first ordered by their cross scores, then the rest by the first-stage scores.</summary>
    public static int RerankedRank(ReadOnlySpan<float> first, int[] candidates, float[] cross, int target)
    {
        int at = Array.IndexOf(candidates, target);
        if (at >= 0)
        {
            int r = 1;
            for (int j = 0; j < candidates.Length; j++)
                if (cross[j] > cross[at] || (cross[j] == cross[at] && candidates[j] < target)) r++;
            return r;
        }
        var inCand = new HashSet<int>(candidates);
        int rank = candidates.Length + 1;
        float s = first[target];
        for (int j = 0; j < first.Length; j++)
            if (!inCand.Contains(j) && (first[j] > s || (first[j] == s && j < target))) rank++;
        return rank;
    }
}
