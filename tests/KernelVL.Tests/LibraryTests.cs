using KernelVL.Backends;
using KernelVL.Model;
using KernelVL.Retrieval;

namespace KernelVL.Tests;

/// <summary>The README's library examples, run as written.</summary>
public sealed class LibraryTests(TinyShapesFixture fx) : IClassFixture<TinyShapesFixture>
{
    /// <summary>The README's retrieval example is, line for line, the code the test below runs (no drift between them).</summary>
    [Fact]
    public void TheReadmesRetrievalExampleIsTheTestedCode()
    {
        string readme = File.ReadAllText(Path.Combine(BuiltOutput.Repository, "README.md"));
        int at = readme.IndexOf("Retrieval with a decomposed checkpoint", StringComparison.Ordinal);
        Assert.True(at >= 0, "README.md lost its retrieval example");
        int start = readme.IndexOf("```csharp\n", at, StringComparison.Ordinal) + "```csharp\n".Length;
        var example = readme[start..readme.IndexOf("```", start, StringComparison.Ordinal)].Split('\n')
            .Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith("using KernelVL", StringComparison.Ordinal)).ToList();
        string source = File.ReadAllText(Path.Combine(BuiltOutput.Repository, "tests", "KernelVL.Tests", "LibraryTests.cs"));
        int from = source.IndexOf("// ---- as in " + "README.md (\"The library\")", StringComparison.Ordinal);   // split: not to find this line
        Assert.True(from >= 0, "LibraryTests.cs lost its marked copy of the example");
        var tested = source[from..source.IndexOf("// ----\n", from + 10, StringComparison.Ordinal)].Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).Skip(1).ToList();
        Assert.Equal(example, tested);
    }

    [Fact]
    public void TheReadmesRetrievalExampleRuns()
    {
        string checkpoint = fx.Init, imageRoot = Path.Combine(Path.GetDirectoryName(fx.Data)!, "images");
        var files = Directory.GetFiles(imageRoot, "*.png").Order(StringComparer.Ordinal).Take(12).ToList();
        string folder = Path.Combine(fx.Dir, "library-" + Guid.NewGuid().ToString("N"));

        // ---- as in README.md ("The library")
        using var be = BackendFactory.Create("cpu");
        using var model = VlModel.Load(checkpoint, be);                       // config.json, model.safetensors, vocab.txt
        var encoder = new DecomposedEncoder(model, batchSize: 32);
        var pre = model.Preprocessor();
        var images = files.Select(pre.Load).ToList();                         // a bad file: BadInputException naming it
        float[] vectors = encoder.EncodeImages(images);                       // [N, D] unit rows

        using (var index = EmbeddingIndex.CreateOrResume(folder, EmbeddingIndex.Fingerprint(checkpoint), encoder.Dim, VectorDType.F16, imageRoot))
            index.Append("image", files.Select((f, i) => new IndexItem("image", i, f, Path: Path.GetRelativePath(imageRoot, f))).ToList(), vectors);

        var opened = EmbeddingIndex.Open(folder, EmbeddingIndex.Fingerprint(checkpoint));
        float[] query = encoder.EncodeTexts(["a small red circle left of a large blue square"]);   // [1, D]
        List<SearchHit> hits = opened.Search(be, "image", query, k: 5)[0];    // best first: Rank, Score, Item.Path
        float match = model.MatchScore(images[0], "a red circle");            // the cross-encoder's score of one pair (rerank)
        // ----

        // Against an independent reference: every image's score recomputed in f64 from its f16-rounded vector.
        int d = encoder.Dim;
        var expect = Enumerable.Range(0, files.Count)
            .Select(i => (i, s: Enumerable.Range(0, d).Sum(j => (double)(float)(Half)vectors[i * d + j] * query[j])))
            .OrderByDescending(x => x.s).ThenBy(x => x.i).Take(5).ToList();
        Assert.Equal(5, hits.Count);
        for (int r = 0; r < 5; r++)
        {
            Assert.Equal(r + 1, hits[r].Rank);
            Assert.Equal(expect[r].s, hits[r].Score, 4);
            Assert.True(File.Exists(Path.Combine(imageRoot, hits[r].Item.Path!)));
        }
        if (expect[0].s - expect[1].s > 1e-5)   // the best image, unless two score the same to rounding
            Assert.Equal(Path.GetRelativePath(imageRoot, files[expect[0].i]), hits[0].Item.Path);
        Assert.True(float.IsFinite(match));
        Assert.Throws<BadInputException>(() => pre.Load(Path.Combine(imageRoot, "missing.png")));
    }
}
