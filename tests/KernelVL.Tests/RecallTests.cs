using KernelVL.Data;
using KernelVL.IO;
using KernelVL.Retrieval;

namespace KernelVL.Tests;

public class RecallTests
{
    [Fact]
    public void HandComputedCaseWithTheFiveCaptionsRule()
    {
        // images x captions; captions 0, 1 are image 0's, 2, 3 image 1's.
        float[] s = [0.9f, 0.1f, 0.5f, 0.2f,
                     0.3f, 0.8f, 0.7f, 0.6f];
        var r = Recall.Evaluate(s, 2, [0, 0, 1, 1]);
        // i2t: image 0's best caption (0) is first; image 1's best own caption (2, 0.7) is behind caption 1 (0.8): rank 2.
        Assert.Equal(new RecallAt(50, 100, 100, 1, 1.5), r.I2T);
        // t2i: caption 1 prefers image 1 (0.8 > 0.1): rank 2; the others rank 1.
        Assert.Equal(new RecallAt(75, 100, 100, 1, 1.25), r.T2I);
        Assert.Equal(50 + 100 + 100 + 75 + 100 + 100, r.Rsum);
    }

    [Fact]
    public void TiesGoToTheLowerIndex()
    {
        float[] row = [0.5f, 0.5f, 0.9f, 0.5f];
        Assert.Equal(2, Recall.Rank(row, 0));
        Assert.Equal(3, Recall.Rank(row, 1));
        Assert.Equal(4, Recall.Rank(row, 3));
        Assert.Equal(1, Recall.Rank(row, 2));
    }

    [Fact]
    public void MedianRankAndRecallAtKCountEdges()
    {
        var r = Recall.Summarise([1, 5, 6, 10, 11, 30]);
        Assert.Equal(100.0 / 6, r.R1, 9);
        Assert.Equal(200.0 / 6, r.R5, 9);
        Assert.Equal(400.0 / 6, r.R10, 9);
        Assert.Equal(Math.Floor((5.0 + 9.0) / 2) + 1, r.MedR);   // 0-based ranks 5 and 9 in the middle
    }

    [Fact]
    public void BlockedEmbeddingEvaluationEqualsTheDenseMatrix()
    {
        var rng = new Random(Random.Shared.Next());
        int images = 37, per = 5, d = 16;
        float[] Unit(int n)
        {
            var v = new float[n * d];
            for (int i = 0; i < n; i++)
            {
                double norm = 0;
                for (int j = 0; j < d; j++) { v[i * d + j] = (float)(rng.NextDouble() - 0.5); norm += v[i * d + j] * v[i * d + j]; }
                for (int j = 0; j < d; j++) v[i * d + j] /= (float)Math.Sqrt(norm);
            }
            return v;
        }
        var img = Unit(images);
        var txt = Unit(images * per);
        var owner = Enumerable.Range(0, images * per).Select(c => c / per).ToArray();
        var dense = new float[images * images * per];
        for (int i = 0; i < images; i++)
            for (int c = 0; c < images * per; c++)
            {
                double s = 0;
                for (int j = 0; j < d; j++) s += (double)img[i * d + j] * txt[c * d + j];
                dense[i * images * per + c] = (float)s;
            }
        // The dense matrix is computed in double then rounded, the blocked one in float: compare the summaries, which
        // agree unless two scores fall within rounding of each other (vanishingly rare at d = 16 with random vectors).
        var a = Recall.Evaluate(dense, images, owner);
        var b = Recall.FromEmbeddings(img, txt, d, owner, block: 8);
        Assert.Equal(a.I2T.R1, b.I2T.R1);
        Assert.Equal(a.T2I.R5, b.T2I.R5);
        Assert.Equal(a.Rsum, b.Rsum, 9);
    }

    [Fact]
    public void FoldsAreConsecutiveThousands()
    {
        Assert.Equal([(0, 1000), (1000, 1000), (2000, 1000), (3000, 1000), (4000, 1000)], Recall.Folds(5000));
        Assert.Equal([(0, 10), (10, 10)], Recall.Folds(25, 10));
        Assert.Throws<ShapeException>(() => Recall.Evaluate(new float[4], 2, [0, 0]));   // image 1 has no caption
    }

    [SkippableFact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void AtomicWritesKeepTheModeAndWriteThroughASymlink()
    {
        Skip.If(OperatingSystem.IsWindows(), "unix permission bits and symlinks");
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-atomic-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string file = Path.Combine(dir, "results.json"), link = Path.Combine(dir, "latest.json");
            File.WriteAllText(file, "old");
            File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);   // 600: private results
            File.CreateSymbolicLink(link, "results.json");
            AtomicFile.WriteAllText(link, "new");
            Assert.Equal("results.json", new FileInfo(link).LinkTarget);   // the link stays a link
            Assert.Equal("new", File.ReadAllText(file));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            Assert.Equal(["latest.json", "results.json"], Directory.GetFiles(dir).Select(Path.GetFileName).Order());   // no temporary left
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void AFolderLockIsHeldByOneAndNotByAHandleOnADeletedFile()
    {
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-lock-" + Guid.NewGuid().ToString("N"));
        try
        {
            using (var held = FolderLock.TryTake(dir, ".lock"))
            {
                Assert.NotNull(held);
                Assert.Null(FolderLock.TryTake(dir, ".lock"));   // a second claim while held
            }
            Assert.False(File.Exists(Path.Combine(dir, ".lock")));   // let go: deleted
            using (var again = FolderLock.TryTake(dir, ".lock")) Assert.NotNull(again);
            // The race of three: a handle on the file its holder deleted as it let go, while a new file already stands at
            // the path (a third process's). The path's presence would say "ours"; the handle must not.
            string path = Path.Combine(dir, "race.lock");
            File.WriteAllText(path, "");
            using var stale = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            Assert.True(FolderLock.StillNamed(stale, path));
            File.Delete(path);
            File.WriteAllText(path, "");
            Assert.Equal(!OperatingSystem.IsLinux(), FolderLock.StillNamed(stale, path));
            using var fresh = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            Assert.True(FolderLock.StillNamed(fresh, path));
            // Only a lock held elsewhere is "in use": a read-only folder, a full disk or no inodes are thrown as they are.
            using (var held = FolderLock.TryTake(dir, "held.lock"))
            {
                var conflict = Assert.ThrowsAny<IOException>(() => new FileStream(Path.Combine(dir, "held.lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
                Assert.True(FolderLock.IsLockConflict(conflict), $"0x{conflict.HResult:X8} {conflict.Message}");
            }
            if (File.Exists("/dev/full"))
            {
                var full = Assert.ThrowsAny<IOException>(() => { using var f = new FileStream("/dev/full", FileMode.Open, FileAccess.Write); f.WriteByte(1); f.Flush(); });
                Assert.False(FolderLock.IsLockConflict(full), full.Message);
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void ShapesReplacesOnlyItsOwnEarlierOutput()
    {
        // A rerun into an earlier set's folder left the earlier, larger set's images beside the new ones (and a killed
        // write's temporary file); a folder holding anything else is refused before a file is touched.
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-shapes-" + Guid.NewGuid().ToString("N"));
        try
        {
            SyntheticShapes.Generate(dir, 10, 0, 10, 16, seed: 1);
            string images = Path.Combine(dir, "images");
            Assert.Equal(20, Directory.GetFiles(images).Length);
            File.WriteAllText(Path.Combine(images, ".000003.png.123.0123456789abcdef0123456789abcdef.tmp"), "partial");
            SyntheticShapes.Generate(dir, 3, 0, 3, 16, seed: 2);
            Assert.Equal(Enumerable.Range(0, 6).Select(i => $"{i:D6}.png"), Directory.GetFiles(images).Select(Path.GetFileName).Order());
            Assert.Equal(6, KarpathyDataset.Load(Path.Combine(dir, "dataset.json")).Images.Count);
            File.WriteAllText(Path.Combine(images, "holiday.png"), "mine");
            Assert.Contains("holds holiday.png", Assert.ThrowsAny<BadInputException>(() => SyntheticShapes.Generate(dir, 3, 0, 3, 16, 1)).Message);
            Assert.Equal(7, Directory.GetFiles(images).Length);   // nothing deleted
            // Frames named as this generator names its images, without its dataset.json: never judged by names alone.
            string frames = Path.Combine(dir, "frames");
            Directory.CreateDirectory(Path.Combine(frames, "images"));
            File.WriteAllText(Path.Combine(frames, "images", "000000.png"), "a user's frame");
            Assert.Contains("no kernelvl shapes dataset.json", Assert.ThrowsAny<BadInputException>(() => SyntheticShapes.Generate(frames, 3, 0, 3, 16, 1)).Message);
            Assert.True(File.Exists(Path.Combine(frames, "images", "000000.png")));
            string other = Path.Combine(dir, "other");
            Directory.CreateDirectory(Path.Combine(other, "dataset.json"));
            Assert.Contains("is a folder, where the dataset's JSON goes", Assert.ThrowsAny<BadInputException>(() => SyntheticShapes.Generate(other, 3, 0, 3, 16, 1)).Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void KarpathyJsonRoundTripsAndBadFilesAreNamed()
    {
        string dir = Path.Combine(Path.GetTempPath(), "kernelvl-ds-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "d.json");
            KarpathyDataset.Save(path, [new DatasetImage(0, "img/a.png", "train", ["a red circle.", "a circle that is red"]), new DatasetImage(1, "b.png", "test", ["a blue square"])]);
            var ds = KarpathyDataset.Load(path);
            Assert.Equal(2, ds.Images.Count);
            Assert.Equal(Path.Combine("img", "a.png"), ds.Images[0].Path);
            Assert.Equal(["a red circle.", "a circle that is red"], ds.Images[0].Captions);
            Assert.Single(ds.Split("test"));
            Assert.Contains("no images in split 'val'", Assert.Throws<BadInputException>(() => ds.Split("val")).Message);
            File.WriteAllText(path, "{\"images\": [{\"filename\": \"x.jpg\", \"split\": \"test\", \"sentences\": [{\"raw\": \" \"}]}, {\"filename\": \"y.jpg\", \"split\": \"test\", \"sentences\": [{\"raw\": \"\"}, {\"raw\": \"ok\"}]}]}");
            Assert.Contains("images[0] (x.jpg): sentence 0 is empty", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path, strict: true)).Message);
            var lenient = KarpathyDataset.Load(path);
            Assert.Equal(["ok"], Assert.Single(lenient.Images).Captions);
            Assert.Equal(3, lenient.Problems.Count);   // two empty sentences, one image left without any
            Assert.Contains("is a folder, not a dataset's JSON file", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(dir)).Message);
            File.WriteAllText(path, "{\"images\": [");
            Assert.Contains("not valid JSON", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);

            // Two entries with one imgid: an index would hold two items of one id.
            File.WriteAllText(path, "{\"images\": [{\"filename\": \"x.jpg\", \"imgid\": 7, \"split\": \"test\", \"sentences\": [{\"raw\": \"a\"}]}, {\"filename\": \"y.jpg\", \"imgid\": 7, \"split\": \"test\", \"sentences\": [{\"raw\": \"b\"}]}]}");
            Assert.Contains("images[1] (y.jpg): imgid 7 repeats images[0]'s", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            // An image path must stay below the image root.
            string rooted = Path.Combine(Path.GetTempPath(), "x.png").Replace('\\', '/');
            foreach (var (fp, fn) in new[] { ("", "../../outside/secret"), ("imgs", "../../x.png"), ("", rooted), ("..", "x.png") })
            {
                File.WriteAllText(path, $"{{\"images\": [{{\"filepath\": \"{fp}\", \"filename\": \"{fn}\", \"split\": \"test\", \"sentences\": [{{\"raw\": \"a\"}}]}}]}}");
                Assert.Contains(fn == rooted ? "is absolute" : "leaves the image root", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            }
            // Text that is not valid (found by System.Text.Json only when read): exit 1 with an unnamed message before.
            string one = "{\"images\": [{\"filename\": \"x.jpg\", \"split\": \"test\", \"sentences\": [{\"raw\": \"RAW\"}]}]}";
            int cut = one.IndexOf("RAW", StringComparison.Ordinal);
            File.WriteAllBytes(path, [.. System.Text.Encoding.UTF8.GetBytes(one[..cut]), 0xff, 0xfe, .. System.Text.Encoding.UTF8.GetBytes(one[(cut + 3)..])]);
            Assert.Contains("d.json: images[0]: not valid JSON text", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            File.WriteAllText(path, one.Replace("RAW", "\\ud800 red"));   // a lone surrogate escape
            Assert.Contains("images[0]: not valid JSON text", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            File.WriteAllText(path, one.Replace("\"split\": \"test\"", "\"split\": \"test\", \"split\": \"train\""));   // a key twice
            Assert.Contains("images[0]: not valid JSON text", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            // Fields of the wrong kind are named (they were read as missing, or raw fell back to tokens).
            File.WriteAllText(path, one.Replace("\"split\": \"test\"", "\"split\": 3"));
            Assert.Contains("images[0]: \"split\" is a number, not a string", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            File.WriteAllText(path, one.Replace("\"RAW\"", "{\"a\": 1}, \"tokens\": [\"a\"]"));
            Assert.Contains("sentence 0's \"raw\" is an object, not a string", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path, strict: true)).Message);
            File.WriteAllText(path, one.Replace("{\"raw\": \"RAW\"}", "\"a plain red circle\""));   // sentences as plain strings
            Assert.Equal(["a plain red circle"], Assert.Single(KarpathyDataset.Load(path).Images).Captions);
            // One image file twice in a split (different imgids): its captions would compete with its own copy.
            File.WriteAllText(path, "{\"images\": [{\"filename\": \"x.jpg\", \"imgid\": 1, \"split\": \"test\", \"sentences\": [{\"raw\": \"a\"}]}, {\"filepath\": \".\", \"filename\": \"x.jpg\", \"imgid\": 2, \"split\": \"test\", \"sentences\": [{\"raw\": \"b\"}]}, {\"filename\": \"x.jpg\", \"imgid\": 3, \"split\": \"train\", \"sentences\": [{\"raw\": \"c\"}]}]}");
            Assert.Contains("images[1]: image './x.jpg' is listed twice in split 'test' (also images[0])", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path)).Message);
            Assert.True(KarpathyDataset.InsideRoot("a/../b.png") && KarpathyDataset.InsideRoot("./a/b.png"));
            // A caption over the tokenizer's limit is skipped and listed (an error with strict), not met later mid-build.
            string longCaption = string.Concat(Enumerable.Repeat("red ", 2600));
            File.WriteAllText(path, $"{{\"images\": [{{\"filename\": \"x.jpg\", \"split\": \"test\", \"sentences\": [{{\"raw\": \"{longCaption}\"}}, {{\"raw\": \"ok\"}}]}}]}}");
            var trimmed = KarpathyDataset.Load(path);
            Assert.Equal(["ok"], Assert.Single(trimmed.Images).Captions);
            Assert.Contains("sentence 0 has 10400 characters, over the 10000-character limit", Assert.Single(trimmed.Problems));
            Assert.Contains("10000-character limit", Assert.Throws<BadInputException>(() => KarpathyDataset.Load(path, strict: true)).Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
