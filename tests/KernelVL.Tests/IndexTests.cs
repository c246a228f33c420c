using System.Diagnostics;
using System.Text.Json.Nodes;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Retrieval;

namespace KernelVL.Tests;

public sealed class IndexTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-index-" + Guid.NewGuid().ToString("N"));

    public IndexTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[] UnitRows(Random rng, int n, int d, int distinct = 0)
    {
        var v = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            int src = distinct > 0 ? i % distinct : i;   // repeated rows make exact ties
            var r = new Random(src * 7919 + rng.Next(1) + 17);
            double norm = 0;
            for (int j = 0; j < d; j++) { v[i * d + j] = (float)(r.NextDouble() - 0.5); norm += v[i * d + j] * v[i * d + j]; }
            for (int j = 0; j < d; j++) v[i * d + j] /= (float)Math.Sqrt(norm);
        }
        return v;
    }

    private static List<IndexItem> Items(int start, int n) => Enumerable.Range(start, n).Select(i => new IndexItem("image", 0, $"id{i}", Path: $"p{i}.png")).ToList();

    /// <summary>Brute force: every score in f64 from the stored (possibly f16-rounded) values, sorted descending, ties to the lower row.</summary>
    private static (int Row, double Score)[] Brute(float[] corpus, float[] query, int d, int k) =>
        Enumerable.Range(0, corpus.Length / d).Select(r => (r, Enumerable.Range(0, d).Sum(j => (double)corpus[r * d + j] * query[j])))
            .OrderByDescending(x => x.Item2).ThenBy(x => x.r).Take(k).ToArray();

    [Theory]
    [InlineData(VectorDType.F32)]
    [InlineData(VectorDType.F16)]
    public void SearchOverSegmentsEqualsABruteForceSortWithTies(VectorDType dtype)
    {
        var rng = new Random(Random.Shared.Next());
        int d = 24, n = 1000, q = 5, k = 37;
        var corpus = UnitRows(rng, n, d, distinct: 300);   // every vector three or four times: ties across segments
        var idx = EmbeddingIndex.CreateOrResume(Path.Combine(_dir, "i"), "fp", d, dtype, null);
        for (int s = 0; s < n; s += 128) idx.Append("image", Items(s, Math.Min(128, n - s)), corpus.AsSpan(s * d, Math.Min(128, n - s) * d));
        var stored = dtype == VectorDType.F32 ? corpus : corpus.Select(x => (float)(Half)x).ToArray();
        var queries = UnitRows(new Random(rng.Next()), q, d).Select(x => x).ToArray();
        for (int i = 0; i < q; i++) for (int j = 0; j < d; j++) queries[i * d + j] = -queries[i * d + j] * 0.5f + corpus[(i * 37 % n) * d + j];   // near some rows
        using var be = new CpuBackend();
        var opened = EmbeddingIndex.Open(idx.Folder, "fp");
        // Both block sizes, and for f16 both paths: rows widened by the index, and rows handed over as halves
        // (IHalfRowsTopK, the cuda backend's path; the host backends implement it by widening each block).
        foreach (var (block, halfRows) in new[] { (100, false), (65536, false), (100, true), (65536, true) })
        {
            if (halfRows && dtype != VectorDType.F16) continue;
            var hits = opened.Search(be, "image", queries, k, blockRows: block, halfRows: halfRows);
            for (int i = 0; i < q; i++)
            {
                var expect = Brute(stored, queries[(i * d)..((i + 1) * d)], d, k);
                Assert.Equal(k, hits[i].Count);
                for (int r = 0; r < k; r++)
                {
                    Assert.Equal(expect[r].Score, hits[i][r].Score, 4);
                    // Rows whose scores agree to rounding may swap; exact duplicates must keep the lower row first.
                    if (r + 1 < k && Math.Abs(expect[r].Score - expect[r + 1].Score) > 1e-5 && (r == 0 || Math.Abs(expect[r].Score - expect[r - 1].Score) > 1e-5))
                        Assert.Equal(expect[r].Row, hits[i][r].Item.Row);
                }
                for (int r = 1; r < k; r++)
                    Assert.True(hits[i][r - 1].Score > hits[i][r].Score || (hits[i][r - 1].Score == hits[i][r].Score && hits[i][r - 1].Item.Row < hits[i][r].Item.Row));
                Assert.Equal($"id{hits[i][0].Item.Row}", hits[i][0].Item.Id);
            }
        }
    }

    [Fact]
    public void AResumedBuildAppendsAndOtherModelsAreRefused()
    {
        int d = 8;
        var v = UnitRows(new Random(1), 30, d);
        string f = Path.Combine(_dir, "r");
        var a = EmbeddingIndex.CreateOrResume(f, "model-a", d, VectorDType.F32, "/images");
        a.Append("image", Items(0, 20), v.AsSpan(0, 20 * d));
        // A build killed after writing items but before the manifest: the extra lines are ignored, then dropped on resume.
        File.AppendAllText(Path.Combine(f, "items.jsonl"), "{\"kind\":\"image\",\"row\":20,\"id\":\"ghost\"}\n{\"kind\":\"ima");
        File.WriteAllBytes(Path.Combine(f, "seg-image-00001.f32"), new byte[12]);
        var b = EmbeddingIndex.CreateOrResume(f, "model-a", d, VectorDType.F32, "/images");
        Assert.Equal(20, b.Collections["image"].Rows);
        Assert.Equal(20, b.IndexedIds("image").Count);
        Assert.False(File.Exists(Path.Combine(f, "seg-image-00001.f32")));
        b.Append("image", Items(20, 10), v.AsSpan(20 * d));
        var c = EmbeddingIndex.Open(f, "model-a");
        Assert.Equal(30, c.Collections["image"].Rows);
        Assert.Equal("id25", c.Item("image", 25).Id);
        Assert.Equal(v[(25 * d)..(26 * d)], c.ReadAll("image")[(25 * d)..(26 * d)]);
        Assert.Contains("another model", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f, "model-b")).Message);
        Assert.Contains("another model", Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(f, "model-b", d, VectorDType.F32, null)).Message);
    }

    [Fact]
    public void CorruptManifestsAndSegmentsAreNamed()
    {
        int d = 4;
        string f = Path.Combine(_dir, "c");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F16, null);
        idx.Append("image", Items(0, 3), UnitRows(new Random(2), 3, d));
        idx.Append("image", Items(3, 3), UnitRows(new Random(3), 3, d));
        string seg = Path.Combine(f, "seg-image-00001.f16");
        var bytes = File.ReadAllBytes(seg);
        bytes[5] ^= 0x40;
        File.WriteAllBytes(seg, bytes);
        var e = Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f, "m"));
        Assert.Contains("seg-image-00001.f16", e.Message);
        Assert.Contains("checksum", e.Message);
        File.WriteAllBytes(seg, bytes[..10]);
        Assert.Contains("seg-image-00001.f16", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f, "m")).Message);
        string manifest = Path.Combine(f, "manifest.json");
        File.WriteAllText(manifest, "{\"format_version\": 1, \"dim\": ");
        Assert.Contains("not valid JSON", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f)).Message);
        File.WriteAllText(manifest, "{\"format_version\": 7}");
        Assert.Contains("format version 7", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f)).Message);
        Assert.Contains("not an index", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(_dir)).Message);
    }

    [Fact]
    public void RerankedRanksPutTheRescoredCandidatesFirst()
    {
        float[] first = [0.9f, 0.8f, 0.7f, 0.6f, 0.5f];
        int[] cand = [0, 1, 2];
        float[] cross = [0.1f, 0.9f, 0.5f];   // the cross-encoder prefers 1, then 2, then 0
        Assert.Equal(1, RetrievalEval.RerankedRank(first, cand, cross, 1));
        Assert.Equal(3, RetrievalEval.RerankedRank(first, cand, cross, 0));
        Assert.Equal(4, RetrievalEval.RerankedRank(first, cand, cross, 3));   // after the 3 candidates, by first-stage score
        Assert.Equal(5, RetrievalEval.RerankedRank(first, cand, cross, 4));
        Assert.Equal([2, 0, 3], RetrievalEval.TopIndices([0.5f, 0.2f, 0.9f, 0.5f], 3));   // the tie at 0.5: lower index first
    }
}
