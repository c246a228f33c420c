using System.Diagnostics;
using System.Numerics;
using System.Text.Json.Nodes;
using KernelVL.Backends;
using KernelVL.Backends.Cpu;
using KernelVL.Retrieval;
using KernelVL.Tensors;

namespace KernelVL.Tests;

public sealed class IndexTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-index-" + Guid.NewGuid().ToString("N"));

    public IndexTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static float[] UnitRows(Random rng, int n, int d, int distinct = 0)
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

    internal static List<IndexItem> Items(int start, int n) => Enumerable.Range(start, n).Select(i => new IndexItem("image", 0, $"id{i}", Path: $"p{i}.png")).ToList();

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
        // Both block sizes and three paths: rows widened by the index into a block tensor, rows handed over as halves
        // (IHalfRowsTopK, the cuda backend's path; the host backends implement it by widening each block), and rows
        // read where they lie in the mapping (IHostRowsTopK, the cpu backend's path by default: f16 tiles widened by it).
        foreach (var (block, halfRows) in new (int?, bool?)[] { (100, false), (65536, false), (100, true), (65536, true), (100, null), (null, null) })
        {
            if (halfRows == true && dtype != VectorDType.F16) continue;
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

    [Theory]
    [InlineData(VectorDType.F32)]
    [InlineData(VectorDType.F16)]
    public void RemovedRowsLeaveSearchAsABruteForceOverTheRestAndAppendsFollow(VectorDType dtype)
    {
        var rng = new Random(Random.Shared.Next());
        int d = 16, n = 90, k = 12;
        var corpus = UnitRows(rng, n + 10, d);
        string f = Path.Combine(_dir, "rm");
        var idx = EmbeddingIndex.CreateOrResume(f, "fp", d, dtype, "/images");
        for (int s = 0; s < n; s += 20) idx.Append("image", Items(s, Math.Min(20, n - s)), corpus.AsSpan(s * d, Math.Min(20, n - s) * d));
        idx.Append("caption", [new IndexItem("caption", 0, "c0", Caption: "a caption", ImageId: "id3")], corpus.AsSpan(0, d));
        string segmentsBefore = string.Join(",", idx.Collections["image"].Segments.Select(s => s.File));
        // Rows in segments 0, 2 and 3, and the whole of segment 1 (rows 20-39); segment 4 untouched.
        var gone = new HashSet<int>(Enumerable.Range(20, 20)) { rng.Next(0, 20), rng.Next(0, 20), rng.Next(40, 60), 79 };
        idx.Remove(new Dictionary<string, List<int>> { ["image"] = gone.ToList() });
        var kept = Enumerable.Range(0, n).Where(r => !gone.Contains(r)).ToList();
        Assert.Equal(kept.Count, idx.Collections["image"].Rows);
        Assert.Equal(4, idx.Collections["image"].Segments.Count);   // 0, 2, 3 rewritten; 1 dropped; 4 as it was
        Assert.Equal(segmentsBefore.Split(',')[4], idx.Collections["image"].Segments[3].File);
        Assert.DoesNotContain(idx.Collections["image"].Segments.Take(3), s => segmentsBefore.Contains(s.File));
        // Appends after a removal take new names, and rows after the kept ones.
        idx.Append("image", Items(n, 10), corpus.AsSpan(n * d, 10 * d));
        kept.AddRange(Enumerable.Range(n, 10));
        idx.Dispose();

        using var be = new CpuBackend();
        var opened = EmbeddingIndex.Open(f, "fp", verify: true);
        Assert.Equal(kept.Select(r => $"id{r}"), Enumerable.Range(0, kept.Count).Select(r => opened.Item("image", r).Id));
        Assert.Equal("id3", opened.Item("caption", 0).ImageId);
        var stored = kept.SelectMany(r => corpus[(r * d)..((r + 1) * d)]).Select(x => dtype == VectorDType.F32 ? x : (float)(Half)x).ToArray();
        Assert.Equal(stored, opened.ReadAll("image"));
        var query = UnitRows(new Random(rng.Next()), 1, d);
        var hits = opened.Search(be, "image", query, k, blockRows: 7)[0];
        var expect = Brute(stored, query, d, k);
        for (int r = 0; r < k; r++)
        {
            Assert.Equal(expect[r].Score, hits[r].Score, 4);
            Assert.Equal($"id{kept[expect[r].Row]}", hits[r].Item.Id);
        }
        // Only the listed files remain; the removed segments and the first items file are deleted.
        var listed = opened.Collections.Values.SelectMany(c => c.Segments).Select(s => s.File).Append(opened.ItemsFileName).Append("manifest.json");
        Assert.Equal(listed.Order(StringComparer.Ordinal), Directory.GetFiles(f).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Throws<ArgumentOutOfRangeException>(() => opened.Remove(new Dictionary<string, List<int>> { ["image"] = [kept.Count] }));
    }

    [Fact]
    public void SegmentNamesAreNeverTakenTwiceAndAFailedRemovalChangesNothing()
    {
        int d = 8;
        var v = UnitRows(new Random(4), 40, d);
        string f = Path.Combine(_dir, "names");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, null);
        idx.Append("image", Items(0, 4), v.AsSpan(0, 4 * d));
        idx.Append("image", Items(4, 4), v.AsSpan(4 * d, 4 * d));
        var seen = new HashSet<string>(idx.Collections["image"].Segments.Select(x => x.File));
        Assert.Equal(1, (int)JsonNode.Parse(File.ReadAllText(Path.Combine(f, "manifest.json")))!["format_version"]!);
        // The last segment removed whole, then appends, a removal and a merge, across a reopen: every segment a step adds
        // has a name no earlier step used.
        void Step(Action step)
        {
            var listed = idx.Collections["image"].Segments.Select(x => x.File).ToHashSet();
            step();
            foreach (var file in idx.Collections["image"].Segments.Select(x => x.File).Where(x => !listed.Contains(x)))
                Assert.True(seen.Add(file), $"{file} named a second segment");
        }
        Step(() => idx.Remove(new Dictionary<string, List<int>> { ["image"] = [4, 5, 6, 7] }));
        idx.Dispose();
        idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, null);
        Step(() => idx.Append("image", Items(8, 4), v.AsSpan(8 * d, 4 * d)));
        Step(() => idx.Remove(new Dictionary<string, List<int>> { ["image"] = [0] }));
        Step(() => idx.Append("image", Items(12, 2), v.AsSpan(12 * d, 2 * d)));
        Step(() => idx.Compact(100));
        Assert.Single(idx.Collections["image"].Segments);
        Assert.Equal(2, (int)JsonNode.Parse(File.ReadAllText(Path.Combine(f, "manifest.json")))!["format_version"]!);
        Assert.Equal([1, 2, 3, 8, 9, 10, 11, 12, 13], Enumerable.Range(0, 9).Select(r => int.Parse(idx.Item("image", r).Id[2..])));

        // Rows out of range for the second kind: refused before anything is written or changed.
        idx.Append("caption", [new IndexItem("caption", 0, "c0", Caption: "x")], v.AsSpan(0, d));
        string manifest = File.ReadAllText(Path.Combine(f, "manifest.json"));
        var before = Directory.GetFiles(f).Order(StringComparer.Ordinal).ToList();
        var vectors = idx.ReadAll("image");
        Assert.Throws<ArgumentOutOfRangeException>(() => idx.Remove(new Dictionary<string, List<int>> { ["image"] = [0], ["caption"] = [1] }));
        Assert.Equal(manifest, File.ReadAllText(Path.Combine(f, "manifest.json")));
        Assert.Equal(before, Directory.GetFiles(f).Order(StringComparer.Ordinal).ToList());
        Assert.Equal(vectors, idx.ReadAll("image"));
        Assert.Equal(9, idx.Collections["image"].Rows);

        // A manifest from a newer format is refused by name.
        File.WriteAllText(Path.Combine(f, "manifest.json"), manifest.Replace("\"format_version\": 2", "\"format_version\": 3"));
        Assert.Contains("format version 3, this build reads 1 to 2", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f)).Message);
    }

    [Fact]
    public void GoneIsToldFromUnknownAndADataFileIsTheSameSourceThroughALink()
    {
        string dir = Path.Combine(_dir, "listed");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "here.png"), "x");
        Assert.True(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "here.png")));
        Assert.False(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "gone.png")));
        Assert.False(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "HERE.png")));   // case-sensitive, as the file system
        Assert.Null(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "missing-folder", "x.png")));
        Assert.False(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "her?.png")));   // a name, not a search pattern
        Assert.False(KernelVL.IO.ImageFiles.Listed(Path.Combine(dir, "*.png")));
        // A relative link under a symlinked folder: resolved by the kernel, not as text ('..' from the real folder).
        string real = Path.Combine(_dir, "real"), shared = Path.Combine(_dir, "shared"), alias = Path.Combine(_dir, "alias");
        Directory.CreateDirectory(Path.Combine(real, "sub"));
        Directory.CreateDirectory(shared);
        File.WriteAllText(Path.Combine(shared, "x.png"), "twelve bytes");
        File.CreateSymbolicLink(Path.Combine(real, "sub", "x.png"), Path.Combine("..", "..", "shared", "x.png"));
        Directory.CreateSymbolicLink(alias, Path.Combine(real, "sub"));
        string viaAlias = Path.Combine(alias, "x.png");   // as text: _dir/shared/.. -> wrong; the kernel: real/sub/../../shared
        Assert.False(KernelVL.IO.ImageFiles.LeadsNowhere(viaAlias));
        Assert.Equal(12, EmbeddingIndex.FileStamp(viaAlias).Bytes);
        File.Delete(Path.Combine(shared, "x.png"));
        Assert.True(KernelVL.IO.ImageFiles.LeadsNowhere(viaAlias));
        Assert.Null(EmbeddingIndex.FileStamp(viaAlias).Bytes);
        string link = Path.Combine(_dir, "data-link.json");
        File.WriteAllText(Path.Combine(dir, "d.json"), "{}");
        File.CreateSymbolicLink(link, Path.Combine(dir, "d.json"));
        Assert.True(EmbeddingIndex.SameSource($"data {Path.Combine(dir, "d.json")}, split test", $"data {link}, split test"));
        Assert.False(EmbeddingIndex.SameSource($"data {Path.Combine(dir, "d.json")}, split test", $"data {link}, split val"));
        Assert.False(EmbeddingIndex.SameSource("folder", $"data {link}, split test"));
    }

    [Fact]
    public void CompactionMergesAdjacentPartialSegmentsAndKeepsEveryRow()
    {
        var rng = new Random(Random.Shared.Next());
        int d = 12;
        int[] sizes = [3, 3, 3, 10, 2, 2, 8, 1];
        var v = UnitRows(rng, sizes.Sum(), d);
        string f = Path.Combine(_dir, "cp");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F16, null);
        int at = 0;
        foreach (int n in sizes) { idx.Append("image", Items(at, n), v.AsSpan(at * d, n * d)); at += n; }
        idx.Append("caption", [new IndexItem("caption", 0, "c", Caption: "x")], v.AsSpan(0, d));
        var before = idx.ReadAll("image");
        string items = File.ReadAllText(Path.Combine(f, idx.ItemsFileName));
        // Greedy runs of at most 8 rows: 3+3 | 3 | 10 | 2+2 | 8 | 1.
        Assert.Equal((4, 2), idx.Compact(8));
        Assert.Equal([6, 3, 10, 4, 8, 1], idx.Collections["image"].Segments.Select(s => s.Rows));
        Assert.Equal((0, 0), idx.Compact(8));
        Assert.Equal((6, 2), idx.Compact(100, maxBytes: 20L * d * 2));   // at most 20 rows of f16 a segment: 6+3+10, then 4+8+1
        Assert.Equal([19, 13], idx.Collections["image"].Segments.Select(s => s.Rows));
        Assert.Equal((2, 1), idx.Compact(100));
        idx.Dispose();
        var opened = EmbeddingIndex.Open(f, "m", verify: true);   // checksums and max_norm of the merged segments
        Assert.Equal(before, opened.ReadAll("image"));
        Assert.Equal(items, File.ReadAllText(Path.Combine(f, opened.ItemsFileName)));
        Assert.Equal([32], opened.Collections["image"].Segments.Select(s => s.Rows));
        var listed = opened.Collections.Values.SelectMany(c => c.Segments).Select(s => s.File).Append(opened.ItemsFileName).Append("manifest.json");
        Assert.Equal(listed.Order(StringComparer.Ordinal), Directory.GetFiles(f).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void ARemovalKilledBeforeItsManifestLeavesTheIndexAsItWasAndAResumeDeletesItsFiles()
    {
        int d = 8;
        var v = UnitRows(new Random(5), 12, d);
        string f = Path.Combine(_dir, "rk");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, null);
        idx.Append("image", Items(0, 6), v.AsSpan(0, 6 * d));
        idx.Append("image", Items(6, 6), v.AsSpan(6 * d));
        string manifest = File.ReadAllText(Path.Combine(f, "manifest.json"));
        // What a removal writes before its manifest switch: a rewritten segment and a new items file.
        File.WriteAllBytes(Path.Combine(f, "seg-image-00002.f32"), new byte[5 * d * 4]);
        File.WriteAllText(Path.Combine(f, "items-00001.jsonl"), "{\"kind\":\"image\",\"row\":0,\"id\":\"id1\"}\n");
        var searchable = EmbeddingIndex.Open(f, "m");
        Assert.Equal(12, searchable.Collections["image"].Rows);
        Assert.Equal("id0", searchable.Item("image", 0).Id);
        // And temporary files of writes a kill cut short; a user's file that merely starts like ours stays.
        string tmp = Path.Combine(f, $".seg-image-00002.f32.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        File.WriteAllText(tmp, "");
        File.WriteAllText(Path.Combine(f, "seg-notes.txt"), "mine");
        var resumed = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, null);
        Assert.False(File.Exists(tmp));
        Assert.Equal("mine", File.ReadAllText(Path.Combine(f, "seg-notes.txt")));
        Assert.Equal(manifest, File.ReadAllText(Path.Combine(f, "manifest.json")));
        Assert.False(File.Exists(Path.Combine(f, "seg-image-00002.f32")));
        Assert.False(File.Exists(Path.Combine(f, "items-00001.jsonl")));
        // A manifest naming an items file outside the folder is refused.
        File.WriteAllText(Path.Combine(f, "manifest.json"), manifest.Replace("\"items_file\": \"items.jsonl\"", "\"items_file\": \"../x.jsonl\"").Replace("\"format_version\": 1", "\"format_version\": 2"));
        Assert.Contains("items_file", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f)).Message);
    }

    [Fact]
    public void ARefreshPlanFindsGoneMovedChangedAndRewordedItems()
    {
        int d = 4;
        string root = Path.Combine(_dir, "imgs");
        Directory.CreateDirectory(root);
        foreach (var name in new[] { "a.png", "b.png", "c.png", "d.png" }) File.WriteAllBytes(Path.Combine(root, name), new byte[10]);
        string f = Path.Combine(_dir, "plan");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, root);
        IndexItem Img(string id, string path)
        {
            var (b, t) = EmbeddingIndex.FileStamp(Path.Combine(root, path));
            return new IndexItem("image", 0, id, Path: path, Bytes: b, ModifiedMs: t);
        }
        idx.Append("image", [Img("a", "a.png"), Img("b", "b.png"), Img("c", "c.png"), Img("d", "d.png"), new IndexItem("image", 0, "old", Path: "old.png")], UnitRows(new Random(1), 5, d));
        idx.Append("caption", [new IndexItem("caption", 0, "k0", Caption: "one"), new IndexItem("caption", 0, "k1", Caption: "two")], UnitRows(new Random(2), 2, d));
        File.Delete(Path.Combine(root, "b.png"));                          // gone from the disk
        File.WriteAllBytes(Path.Combine(root, "c.png"), new byte[11]);       // changed size
        var images = new Dictionary<string, string> { ["a"] = "a.png", ["b"] = "b.png", ["c"] = "c.png", ["d"] = "e.png", ["old"] = "old.png" };   // d now names another file
        var plan = idx.PlanRefresh(root, images, new Dictionary<string, string> { ["k0"] = "one", ["k1"] = "two, reworded" });
        Assert.Equal([1], plan.Rows["image"]);   // b gone now; "old" (indexed before files were stamped, still listed) is kept
        Assert.Equal(["c", "d"], plan.ChangedImageIds.Order(StringComparer.Ordinal));   // replaced as their new vectors land
        Assert.Equal(1, plan.Unstamped);
        // A changed file that cannot be read now (a pipe here; permissions alike) is kept, not replaced by nothing.
        File.Move(Path.Combine(root, "a.png"), Path.Combine(root, "a.bak"));
        using (var mk = Process.Start("mkfifo", [Path.Combine(root, "a.png")])) mk.WaitForExit();
        var piped = idx.PlanRefresh(root, images, new Dictionary<string, string>());
        Assert.Equal(1, piped.Unreadable);
        Assert.DoesNotContain("a", piped.ChangedImageIds);
        Assert.DoesNotContain(0, piped.Rows["image"]);
        File.Delete(Path.Combine(root, "a.png"));
        File.Move(Path.Combine(root, "a.bak"), Path.Combine(root, "a.png"));
        // The mass-removal guard's edges: more than half, and at least two.
        Assert.Equal([false, true, false, true, false], new[] { (1, 1), (2, 2), (2, 4), (3, 4), (0, 0) }
            .Select(x => (piped with { GoneImages = x.Item1 }).RemovesMostOf(x.Item2)));
        var reported = new List<int>();
        idx.PlanRefresh(root, images, new Dictionary<string, string>(), progress: reported.Add);
        Assert.Equal([5], reported);   // every 1024 images, and at the end
        // What is under a folder that could not be read is left alone: b's file "gone" is not counted under an unknown root.
        var unknown = idx.PlanRefresh(root, images, new Dictionary<string, string>(), p => p == "b.png");
        Assert.Empty(unknown.Rows["image"]);
        Assert.Equal(0, unknown.GoneImages);
        Assert.Equal([1], plan.Rows["caption"]);
        Assert.Equal((2, 1, 1, 0), (plan.ChangedImages, plan.GoneImages, plan.ChangedCaptions, plan.GoneCaptions));
        var without = new Dictionary<string, string>(images);
        without.Remove("a");
        var all = idx.PlanRefresh(root, without, new Dictionary<string, string>());
        Assert.Equal([0, 1], all.Rows["image"]);
        Assert.Equal((2, 2, 0, 2), (all.ChangedImages, all.GoneImages, all.ChangedCaptions, all.GoneCaptions));
        // After the first plan's removal, the same source has nothing more to refresh.
        idx.Remove(plan.Rows);
        Assert.Equal(["a", "c", "d", "old"], Enumerable.Range(0, 4).Select(r => idx.Item("image", r).Id));
        var again = idx.PlanRefresh(root, images, new Dictionary<string, string> { ["k0"] = "one" });
        Assert.False(again.Any);
        Assert.Equal(["c", "d"], again.ChangedImageIds.Order(StringComparer.Ordinal));
        // c encoded again: its old row goes in the switch that adds the new one; a row of another id is refused; d removed.
        var rowOf = idx.RowsById("image");
        var before = idx.ReadAll("image");
        Assert.Throws<ArgumentException>(() => idx.Append("image", [Img("c", "c.png")], UnitRows(new Random(9), 1, d), [rowOf["c"], rowOf["d"]]));
        idx.Remove(new Dictionary<string, List<int>> { ["image"] = [rowOf["d"]] });
        rowOf = idx.RowsById("image");
        idx.Append("image", [Img("c", "c.png")], UnitRows(new Random(9), 1, d), [rowOf["c"]]);
        Assert.Equal(["a", "old", "c"], Enumerable.Range(0, 3).Select(r => idx.Item("image", r).Id));
        Assert.Equal(3, idx.Collections["image"].Rows);
        Assert.Equal(before[..d].Concat(before[(3 * d)..(4 * d)]).Concat(UnitRows(new Random(9), 1, d)), idx.ReadAll("image"));
        Assert.False(idx.PlanRefresh(root, new Dictionary<string, string> { ["a"] = "a.png", ["c"] = "c.png", ["old"] = "old.png" }, new Dictionary<string, string> { ["k0"] = "one" }) is { Any: true } or { ChangedImageIds.Count: > 0 });
    }

    [Fact]
    public void ARehashFindsBytesChangedUnderTheirOldSizeAndWriteTime()
    {
        int d = 4;
        var rng = new Random(Random.Shared.Next());
        string root = Path.Combine(_dir, "rehash");
        Directory.CreateDirectory(root);
        byte[] Bytes() { var b = new byte[32]; rng.NextBytes(b); return b; }
        var content = new Dictionary<string, byte[]>();
        foreach (var name in new[] { "a.png", "b.png", "c.png", "d.png" }) File.WriteAllBytes(Path.Combine(root, name), content[name] = Bytes());
        var idx = EmbeddingIndex.CreateOrResume(Path.Combine(_dir, "rehash-index"), "m", d, VectorDType.F32, root);
        IndexItem Img(string name, bool hashed = true)
        {
            var (b, t) = EmbeddingIndex.FileStamp(Path.Combine(root, name));
            return new IndexItem("image", 0, name, Path: name, Bytes: b, ModifiedMs: t, Sha256: hashed ? EmbeddingIndex.Sha256Hex(content[name]) : null);
        }
        File.WriteAllBytes(Path.Combine(root, "e.png"), Bytes());
        idx.Append("image", [Img("a.png"), Img("b.png"), Img("c.png"), Img("d.png", hashed: false), new IndexItem("image", 0, "e.png", Path: "e.png")], UnitRows(rng, 5, d));
        // b: other bytes of the same length, its write time put back (a restore from a backup); c: touched, same bytes.
        string b = Path.Combine(root, "b.png"), c = Path.Combine(root, "c.png");
        var when = File.GetLastWriteTimeUtc(b);
        var other = Bytes();
        File.WriteAllBytes(b, other);
        File.SetLastWriteTimeUtc(b, when);
        File.SetLastWriteTimeUtc(c, File.GetLastWriteTimeUtc(c).AddMinutes(5));
        var images = new[] { "a.png", "b.png", "c.png", "d.png", "e.png" }.ToDictionary(n => n, n => n);
        var captions = new Dictionary<string, string>();
        // By stamps alone b looks unchanged; c is restamped (same bytes).
        var plain = idx.PlanRefresh(root, images, captions);
        Assert.Empty(plain.ChangedImageIds);
        Assert.Equal(["c.png"], plain.Restamped.Select(i => i.Id));
        Assert.Equal(1, plain.Unstamped);   // e: indexed before files were stamped
        // Hashing every image finds b; c is restamped as before; a is left alone; d, indexed without a hash, and e,
        // without a stamp, cannot be told from their bytes, so they count as changed (encoded again, they get both).
        var reported = new List<int>();
        var full = idx.PlanRefresh(root, images, captions, progress: reported.Add, rehash: true);
        Assert.Equal(["b.png", "d.png", "e.png"], full.ChangedImageIds.Order(StringComparer.Ordinal));
        Assert.Equal((3, 0, 2), (full.ChangedImages, full.Unstamped, full.RehashUnknown));   // d and e could not be compared
        Assert.Equal(["c.png"], full.Restamped.Select(i => i.Id));
        Assert.Empty(full.Rows["image"]);
        Assert.Equal([5], reported);
        // The same bytes back: nothing differs but what cannot be told.
        File.WriteAllBytes(b, content["b.png"]);
        File.SetLastWriteTimeUtc(b, when);
        Assert.Equal(["d.png", "e.png"], idx.PlanRefresh(root, images, captions, rehash: true).ChangedImageIds.Order(StringComparer.Ordinal));
        // An unstamped image whose file is gone from a folder that lists: gone, as without --rehash for stamped ones.
        File.Delete(Path.Combine(root, "e.png"));
        var gone = idx.PlanRefresh(root, images, captions, rehash: true);
        Assert.Equal(1, gone.GoneImages);
        Assert.Equal([4], gone.Rows["image"]);
    }

    [Fact]
    public void ABuildIsRefusedOntoAFileAForeignFolderOrAnIndexOfOtherImages()
    {
        int d = 8;
        var v = UnitRows(new Random(2), 4, d);
        string f = Path.Combine(_dir, "src");
        EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images", "data /d.json, split test").Append("image", Items(0, 4), v);
        string manifest = File.ReadAllText(Path.Combine(f, "manifest.json")), items = File.ReadAllText(Path.Combine(f, "items.jsonl"));
        Assert.Contains("another index", Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/other", "data /d.json, split test")).Message);
        Assert.Contains("built from data /d.json, split test, this build is data /d.json, split val",
            Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images", "data /d.json, split val")).Message);
        // Refusals and a resume with nothing stray leave the index's files as they were.
        EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images/", "data /d.json, split test");
        Assert.Equal(manifest, File.ReadAllText(Path.Combine(f, "manifest.json")));
        Assert.Equal(items, File.ReadAllText(Path.Combine(f, "items.jsonl")));

        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "precious");
        Assert.Contains("is a file", Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(file, "m", d, VectorDType.F32, null)).Message);
        Assert.Equal("precious", File.ReadAllText(file));
        string foreign = Path.Combine(_dir, "checkpoint");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "config.json"), "{}");
        Assert.Contains("not empty and not an index", Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(foreign, "m", d, VectorDType.F32, null)).Message);
        Assert.Equal(["config.json"], Directory.GetFiles(foreign).Select(Path.GetFileName));
        // One build at a time: a second exclusive open of the folder is refused until the first is disposed.
        using (var writer = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images", "data /d.json, split test", exclusive: true))
            Assert.Contains("another kernelvl index build", Assert.Throws<BadInputException>(() => EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images", "data /d.json, split test", exclusive: true)).Message);
        EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, "/images", "data /d.json, split test", exclusive: true).Dispose();

        // A first build killed before its first manifest (items and a segment written): started afresh, not refused.
        string killed = Path.Combine(_dir, "killed");
        Directory.CreateDirectory(killed);
        File.WriteAllText(Path.Combine(killed, "items.jsonl"), "{\"kind\":\"image\",\"row\":0,\"id\":\"x\"}\n");
        File.WriteAllBytes(Path.Combine(killed, "seg-image-00000.f32"), new byte[4 * d]);
        Assert.Equal(0, EmbeddingIndex.CreateOrResume(killed, "m", d, VectorDType.F32, null).Collections["image"].Rows);

        string empty = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(empty);
        Assert.Equal(0, EmbeddingIndex.CreateOrResume(empty, "m", d, VectorDType.F32, null).Collections["image"].Rows);
    }

    [Fact]
    public void AFolderScanFollowsSymlinksButReadsEachRealFolderOnce()
    {
        string root = Path.Combine(_dir, "scan");
        Directory.CreateDirectory(Path.Combine(root, "a", "b"));
        string elsewhere = Path.Combine(_dir, "elsewhere");
        Directory.CreateDirectory(elsewhere);
        foreach (var f in new[] { "x.png", "a/y.JPG", "a/b/z.webp", "a/notes.txt" }) File.WriteAllText(Path.Combine(root, f), "");
        File.WriteAllText(Path.Combine(elsewhere, "w.png"), "");
        Directory.CreateSymbolicLink(Path.Combine(root, "a", "b", "loop"), Path.Combine(root, "a"));   // a cycle
        Directory.CreateSymbolicLink(Path.Combine(root, "up"), root);                                   // the root again
        Directory.CreateSymbolicLink(Path.Combine(root, "linked"), elsewhere);                          // a real folder elsewhere
        var warnings = new List<string>();
        var files = KernelVL.IO.ImageFiles.Under(root, [".png", ".jpg", ".webp"], warnings.Add);
        Assert.Equal(["a/b/z.webp", "a/y.JPG", "linked/w.png", "x.png"], files);
        Assert.Equal(2, warnings.Count);
        Assert.Contains("2 symlinked folders lead to folders already read", warnings[0]);
        Assert.Contains("1 files of other types not read (1 .txt;", warnings[1]);
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

    /// <summary>
    /// The norm bound against exact arithmetic: every half is m 2^-24 for an integer m, so 2^48 times a row's sum of
    /// squares is an integer, computed exactly with BigInteger, as is 2^48 bound^2. The bound must be at or above the
    /// largest row norm and within 2^-22 of it, over fresh random rows at several scales (subnormals to 65504).
    /// </summary>
    [Fact]
    public void RowNormBoundIsAnUpperBoundWithinRounding()
    {
        var rng = new Random(Random.Shared.Next());
        foreach (var (scale, dim) in new[] { (1e-6, 7), (1.0, 768), (300.0, 33), (65504.0, 1024) })
        {
            int n = 50;
            var rows = new Half[n * dim];
            for (int i = 0; i < rows.Length; i++) rows[i] = (Half)(scale * (2 * rng.NextDouble() - 1));
            rows[rng.Next(rows.Length)] = (Half)(scale >= 65504 ? 65504.0 : scale);   // an extreme value somewhere
            BigInteger Scaled(Half h) => new BigInteger(Math.ScaleB((double)h, 24));   // exact: m with h = m 2^-24
            var exact = BigInteger.Zero;
            for (int r = 0; r < n; r++)
            {
                var sum = BigInteger.Zero;
                for (int j = 0; j < dim; j++) { var m = Scaled(rows[r * dim + j]); sum += m * m; }
                if (sum > exact) exact = sum;
            }
            float bound = RowNorms.MaxNormUpperBound(rows, dim);
            // bound = b 2^e exactly (b < 2^24); 2^48 bound^2 = b^2 2^(2e + 48).
            int e = (int)Math.Floor(Math.Log2(bound)) - 23;
            var b = new BigInteger(Math.ScaleB(bound, -e));
            var bound2 = 2 * e + 48 >= 0 ? b * b << (2 * e + 48) : b * b >> -(2 * e + 48);
            Assert.True(bound2 >= exact, $"scale {scale}: bound {bound} below the largest norm");
            double norm = Math.Sqrt((double)exact) * Math.ScaleB(1, -24);
            Assert.True(bound <= norm * (1 + Math.ScaleB(1, -22)), $"scale {scale}: bound {bound} vs norm {norm}");
        }
        Assert.Equal(0f, RowNorms.MaxNormUpperBound([], 4));
        Assert.Equal(float.PositiveInfinity, RowNorms.MaxNormUpperBound([(Half)1, Half.NaN, (Half)0, (Half)2], 2));
        Assert.Throws<ShapeException>(() => RowNorms.MaxNormUpperBound(new Half[5], 2));
    }

    /// <summary>A host backend that records the norm bound the index hands to the f16 rows path.</summary>
    private sealed class RecordingBackend : ReferenceBackend, IHalfRowsTopK
    {
        public List<float?> Bounds { get; } = [];
        public new void TopKHalfRows(Tensor queries, ReadOnlySpan<Half> rows, int k, Tensor scores, Tensor indices, float? maxRowNorm = null)
        {
            Bounds.Add(maxRowNorm);
            base.TopKHalfRows(queries, rows, k, scores, indices, maxRowNorm);
        }
    }

    [Fact]
    public void F16SegmentsKeepANormBoundThatSearchPassesOnAndOpenChecks()
    {
        var rng = new Random(Random.Shared.Next());
        int d = 16;
        string f = Path.Combine(_dir, "n");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F16, null);
        var v = UnitRows(rng, 40, d);
        for (int i = 0; i < 20 * d; i++) v[i] *= 3f;   // the first segment's rows of norm 3
        idx.Append("image", Items(0, 20), v.AsSpan(0, 20 * d));
        idx.Append("image", Items(20, 20), v.AsSpan(20 * d));
        var opened = EmbeddingIndex.Open(f, "m");
        var segs = opened.Collections["image"].Segments;
        for (int s = 0; s < 2; s++)
        {
            var halves = v.AsSpan(s * 20 * d, 20 * d).ToArray().Select(x => (Half)x).ToArray();
            double largest = Enumerable.Range(0, 20).Max(r => Math.Sqrt(Enumerable.Range(0, d).Sum(j => (double)halves[r * d + j] * (double)halves[r * d + j])));
            Assert.NotNull(segs[s].MaxNorm);
            Assert.InRange(segs[s].MaxNorm!.Value, largest, largest * (1 + 1e-6));
        }
        using var be = new RecordingBackend();
        var q = UnitRows(rng, 2, d);
        opened.Search(be, "image", q, 5, blockRows: 8, halfRows: true);
        Assert.Equal(6, be.Bounds.Count);   // 3 blocks of each segment, each with its segment's bound
        Assert.All(be.Bounds.Take(3), b => Assert.Equal(segs[0].MaxNorm, b));
        Assert.All(be.Bounds.Skip(3), b => Assert.Equal(segs[1].MaxNorm, b));

        string manifest = Path.Combine(f, "manifest.json");
        string text = File.ReadAllText(manifest);
        var m = JsonNode.Parse(text)!;
        // An index written before the bound existed: opens, and search passes no bound.
        var old = JsonNode.Parse(text)!;
        foreach (var s in old["collections"]!["image"]!["segments"]!.AsArray()) s!.AsObject().Remove("max_norm");
        File.WriteAllText(manifest, old.ToJsonString());
        Assert.All(EmbeddingIndex.Open(f, "m").Collections["image"].Segments, s => Assert.Null(s.MaxNorm));
        // A bound below the rows' norms (an edited manifest) is refused, naming the segment.
        m["collections"]!["image"]!["segments"]![0]!["max_norm"] = 2.5f;
        File.WriteAllText(manifest, m.ToJsonString());
        var e = Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f, "m"));
        Assert.Contains("seg-image-00000.f16", e.Message);
        Assert.Contains("max_norm", e.Message);
        foreach (var bad in new JsonNode[] { JsonValue.Create(-1f), JsonValue.Create("big") })
        {
            m["collections"]!["image"]!["segments"]![1]!["max_norm"] = bad.DeepClone();
            m["collections"]!["image"]!["segments"]![0]!["max_norm"] = 3.1f;
            File.WriteAllText(manifest, m.ToJsonString());
            Assert.Contains("max_norm of segment seg-image-00001.f16", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f, "m")).Message);
        }
        // f32 segments carry none (their search needs no bound): a manifest giving one is refused.
        string f32 = Path.Combine(_dir, "n32");
        EmbeddingIndex.CreateOrResume(f32, "m", d, VectorDType.F32, null).Append("image", Items(0, 4), UnitRows(rng, 4, d));
        var m32 = JsonNode.Parse(File.ReadAllText(Path.Combine(f32, "manifest.json")))!;
        Assert.Null(m32["collections"]!["image"]!["segments"]![0]!["max_norm"]);
        m32["collections"]!["image"]!["segments"]![0]!["max_norm"] = 1f;
        File.WriteAllText(Path.Combine(f32, "manifest.json"), m32.ToJsonString());
        Assert.Contains("only f16 segments", Assert.Throws<BadInputException>(() => EmbeddingIndex.Open(f32, "m")).Message);
    }
}

[CollectionDefinition(nameof(Alone), DisableParallelization = true)]
public sealed class Alone;

/// <summary>Readers and a build on one index at once (in a collection of its own: it loads the machine for seconds, and
/// tests that count the process's allocations must not run beside it).</summary>
[Collection(nameof(Alone))]
public sealed class IndexConcurrencyTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-index-" + Guid.NewGuid().ToString("N"));

    public IndexConcurrencyTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[] UnitRows(Random rng, int n, int d) => IndexTests.UnitRows(rng, n, d);
    private static List<IndexItem> Items(int start, int n) => IndexTests.Items(start, n);

    [Fact]
    public async Task SearchesWhileABuildRemovesAndMergesSegmentsOpenTheOldOrTheNewIndex()
    {
        int d = 8;
        var v = UnitRows(new Random(3), 400, d);
        string f = Path.Combine(_dir, "busy");
        var idx = EmbeddingIndex.CreateOrResume(f, "m", d, VectorDType.F32, null);
        for (int s = 0; s < 40; s += 4) idx.Append("image", Items(s, 4), v.AsSpan(s * d, 4 * d));
        using var stop = new CancellationTokenSource();
        int opened = 0, cycles = 0, changed = 0, searched = 0;
        // Readers on threads of their own: on a busy machine the pool may not start them while the build runs.
        var readers = Enumerable.Range(0, 2).Select(_ => Task.Factory.StartNew(() =>
        {
            using var be = new CpuBackend();
            while (!stop.IsCancellationRequested)
            {
                var x = EmbeddingIndex.Open(f, "m", verify: false);
                Assert.Equal(x.Collections["image"].Rows, Enumerable.Range(0, x.Collections["image"].Rows).Select(r => x.Item("image", r).Id).Distinct().Count());
                Interlocked.Increment(ref opened);
                // A search of what was opened: its hits are the rows of their items (each item idN holds row N % 400 of v),
                // or it is told the index changed (the CLI then opens again).
                List<SearchHit> hits;
                try { hits = x.Search(be, "image", v[(7 * d)..(8 * d)], 5)[0]; }
                catch (IndexChangedException) { Interlocked.Increment(ref changed); continue; }
                foreach (var h in hits)
                {
                    int id = int.Parse(h.Item.Id[2..]) % 400;
                    double want = Enumerable.Range(0, d).Sum(j => (double)v[7 * d + j] * v[id * d + j]);
                    Assert.True(Math.Abs(want - h.Score) < 1e-5, $"hit {h.Item.Id} scored {h.Score}, its vector gives {want}");
                }
                Interlocked.Increment(ref searched);
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        // The build: remove the first row, append a segment, merge; each step switches the manifest and deletes files.
        var sw = Stopwatch.StartNew();
        int next = 40;
        while ((sw.Elapsed.TotalSeconds < 1.5 || Volatile.Read(ref searched) < 20) && sw.Elapsed.TotalSeconds < 30 && readers.All(t => !t.IsCompleted))
        {
            idx.Remove(new Dictionary<string, List<int>> { ["image"] = [0] });
            idx.Append("image", Items(next, 1), v.AsSpan((next % 400) * d, d));
            next++;
            idx.Compact(8);
            cycles++;
        }
        stop.Cancel();
        await Task.WhenAll(readers);   // a reader's failure (a file deleted under an open) fails the test here
        Assert.True(opened >= 20 && cycles > 10 && searched >= 20, $"{opened} opens ({searched} searched, {changed} changed under the search), {cycles} build cycles");
        // An index opened before a removal, searched after it: told to search again (the CLI opens once more).
        var stale = EmbeddingIndex.Open(f, "m");
        idx.Remove(new Dictionary<string, List<int>> { ["image"] = [0] });
        using var cpu = new CpuBackend();
        Assert.Contains("search again", Assert.Throws<IndexChangedException>(() => stale.Search(cpu, "image", v[..d], 3)).Message);
        Assert.Equal(3, EmbeddingIndex.Open(f, "m").Search(cpu, "image", v[..d], 3)[0].Count);
    }
}
