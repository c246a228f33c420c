namespace KernelVL.Retrieval;

/// <summary>Recall at 1, 5 and 10 (percent), and the median and mean rank (1 = first) of one direction.</summary>
public sealed record RecallAt(double R1, double R5, double R10, double MedR, double MeanR);

/// <summary>Both directions: image -> text (i2t) and text -> image (t2i); RSUM is the sum of the six recalls.</summary>
public sealed record RecallResult(RecallAt I2T, RecallAt T2I)
{
    public double Rsum => I2T.R1 + I2T.R5 + I2T.R10 + T2I.R1 + T2I.R5 + T2I.R10;
    /// <summary>The mean of the six recalls.</summary>
    public double MeanRecall => Rsum / 6;

    /// <summary>The mean of several results (COCO-1K: the five folds).</summary>
    public static RecallResult Mean(IReadOnlyList<RecallResult> rs)
    {
        static RecallAt M(IEnumerable<RecallAt> a)
        {
            var l = a.ToList();
            return new(l.Average(x => x.R1), l.Average(x => x.R5), l.Average(x => x.R10), l.Average(x => x.MedR), l.Average(x => x.MeanR));
        }
        return new(M(rs.Select(r => r.I2T)), M(rs.Select(r => r.T2I)));
    }
}

/// <summary>
/// The standard cross-modal retrieval protocol (PAPER.md): each image has several captions; i2t ranks all captions for an
/// image and counts the best-ranked of its own; t2i ranks all images for a caption and counts its one image. Ranks are
/// 1-based; ties go to the lower index (a competitor with an equal score and a lower index ranks before), the same rule
/// as the top-k search.
/// </summary>
public static class Recall
{
    /// <summary>1-based rank of <paramref name="target"/> in <paramref name="scores"/> (higher is better; ties to the lower index).</summary>
    public static int Rank(ReadOnlySpan<float> scores, int target)
    {
        float s = scores[target];
        if (float.IsNaN(s)) throw new ArgumentException("a NaN score");
        int r = 1;
        for (int j = 0; j < scores.Length; j++)
            if (scores[j] > s || (scores[j] == s && j < target)) r++;
        return r;
    }

    /// <summary>Ranks -> R@1/5/10 in percent, median and mean rank.</summary>
    public static RecallAt Summarise(IReadOnlyList<int> ranks)
    {
        if (ranks.Count == 0) throw new ArgumentException("no ranks");
        var sorted = ranks.OrderBy(r => r).ToArray();
        double At(int k) => 100.0 * sorted.Count(r => r <= k) / sorted.Length;
        // medr as the usual implementations compute it: floor(median(rank0)) + 1 on 0-based ranks.
        double med = Math.Floor(sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] - 1 : (sorted[sorted.Length / 2 - 1] - 1 + sorted[sorted.Length / 2] - 1) / 2.0) + 1;
        return new(At(1), At(5), At(10), med, sorted.Average());
    }

    /// <summary>
    /// Both directions from a dense score matrix [images, captions] (row-major) and each caption's image.
    /// </summary>
    public static RecallResult Evaluate(ReadOnlySpan<float> scores, int images, IReadOnlyList<int> captionImage)
    {
        int captions = captionImage.Count;
        if (scores.Length != (long)images * captions) throw new ShapeException($"{scores.Length} scores for {images} images x {captions} captions");
        var own = Own(images, captionImage);
        var i2t = new int[images];
        for (int i = 0; i < images; i++)
        {
            var row = scores.Slice(i * captions, captions);
            int best = int.MaxValue;
            foreach (int c in own[i]) best = Math.Min(best, Rank(row, c));
            i2t[i] = best;
        }
        var t2i = new int[captions];
        var col = new float[images];
        for (int c = 0; c < captions; c++)
        {
            for (int i = 0; i < images; i++) col[i] = scores[i * captions + c];
            t2i[c] = Rank(col, captionImage[c]);
        }
        return new(Summarise(i2t), Summarise(t2i));
    }

    /// <summary>Each image's captions; every image must have at least one.</summary>
    public static List<int>[] Own(int images, IReadOnlyList<int> captionImage)
    {
        var own = Enumerable.Range(0, images).Select(_ => new List<int>()).ToArray();
        for (int c = 0; c < captionImage.Count; c++)
        {
            if ((uint)captionImage[c] >= (uint)images) throw new ShapeException($"caption {c} belongs to image {captionImage[c]}, outside 0..{images - 1}");
            own[captionImage[c]].Add(c);
        }
        for (int i = 0; i < images; i++)
            if (own[i].Count == 0) throw new ShapeException($"image {i} has no caption");
        return own;
    }

    /// <summary>
    /// Both directions from unit embeddings, images [I, D] and captions [C, D] (row-major), scored by inner product in
    /// blocks (no I x C matrix in memory). Blocks are scored by <paramref name="score"/>(queries, qCount, corpus, nCount)
    /// -> [qCount, nCount]; the default is a plain dot-product loop (callers pass a backend GEMM).
    /// </summary>
    public static RecallResult FromEmbeddings(float[] imageVecs, float[] textVecs, int dim, IReadOnlyList<int> captionImage,
        Func<float[], int, float[], int, float[]>? score = null, int block = 256)
    {
        int images = imageVecs.Length / dim, captions = textVecs.Length / dim;
        if (captions != captionImage.Count) throw new ShapeException($"{captions} caption vectors for {captionImage.Count} captions");
        score ??= Dot;
        var own = Own(images, captionImage);
        var i2t = new int[images];
        for (int s = 0; s < images; s += block)
        {
            int n = Math.Min(block, images - s);
            var q = imageVecs[(s * dim)..((s + n) * dim)];
            var sc = score(q, n, textVecs, captions);
            for (int i = 0; i < n; i++)
            {
                var row = sc.AsSpan(i * captions, captions);
                int best = int.MaxValue;
                foreach (int c in own[s + i]) best = Math.Min(best, Rank(row, c));
                i2t[s + i] = best;
            }
        }
        var t2i = new int[captions];
        for (int s = 0; s < captions; s += block)
        {
            int n = Math.Min(block, captions - s);
            var q = textVecs[(s * dim)..((s + n) * dim)];
            var sc = score(q, n, imageVecs, images);
            for (int c = 0; c < n; c++) t2i[s + c] = Rank(sc.AsSpan(c * images, images), captionImage[s + c]);
        }
        return new(Summarise(i2t), Summarise(t2i));
    }

    private static float[] Dot(float[] q, int qn, float[] x, int xn)
    {
        int d = q.Length / qn;
        var r = new float[qn * xn];
        Parallel.For(0, qn, i =>
        {
            var a = q.AsSpan(i * d, d);
            for (int j = 0; j < xn; j++) r[i * xn + j] = System.Numerics.Tensors.TensorPrimitives.Dot(a, x.AsSpan(j * d, d));
        });
        return r;
    }

    /// <summary>COCO-1K: the test images cut into consecutive folds of <paramref name="foldSize"/> (with their captions); returns each fold's image range.</summary>
    public static IEnumerable<(int Start, int Count)> Folds(int images, int foldSize = 1000)
    {
        for (int s = 0; s + foldSize <= images; s += foldSize) yield return (s, foldSize);
    }
}
