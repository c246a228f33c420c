using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.Backends;
using KernelVL.Data;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Model;
using KernelVL.Retrieval;
using KernelVL.Training;

namespace KernelVL.Cli;

/// <summary>`kernelvl index`, `search` and `eval`.</summary>
internal static class RetrievalCommands
{
    public static readonly string[] ImageExtensions = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"];

    /// <summary>A test split's readable images, their captions and each caption's image (unreadable images skipped with a warning).</summary>
    /// <summary>The readable images of a split (and their captions); <see cref="Skipped"/> of the split's were not.</summary>
    public sealed record EvalSet(List<PreparedImage> Images, List<string> ImagePaths, List<string> Captions, List<int> Owner)
    {
        public int Skipped { get; init; }
    }

    /// <summary>The most items or pairs a forward pass takes (--batch): a larger batch only costs memory (a value of
    /// 100000 filled a 24 GB machine on 20 images).</summary>
    public const int MaxBatch = 4096;

    /// <summary>Reads a dataset, printing what it skipped (empty or over-long captions, images left without any) as warnings.</summary>
    public static KarpathyDataset LoadData(string path, bool strict = false)
    {
        var ds = KarpathyDataset.Load(path, strict);
        foreach (var p in ds.Problems.Take(5)) Console.Error.WriteLine($"kernelvl: warning: skipped: {p}");
        if (ds.Problems.Count > 5) Console.Error.WriteLine($"kernelvl: warning: ... and {ds.Problems.Count - 5} more skipped in {path}");
        return ds;
    }

    public static EvalSet LoadSplit(VlModel model, string data, string imagesRoot, string split, int limit, bool strict, string label = "load")
    {
        var ds = LoadData(data, strict);
        var imgs = ds.Split(split).Take(limit > 0 ? limit : int.MaxValue).ToList();
        var cache = new ImageCache(imgs, imagesRoot, model.Preprocessor(), strict);
        int warned = 0;
        cache.Warn = w => { if (warned++ < 10) Console.Error.WriteLine($"kernelvl: warning: {w}"); };
        PreparedImage?[] loaded;
        using (var bar = new ProgressBar($"{label} images", imgs.Count))
            loaded = cache.GetMany(Enumerable.Range(0, imgs.Count).ToList(), Environment.ProcessorCount, d => bar.Report(d));
        var set = new EvalSet(new(), new(), new(), new());
        for (int i = 0; i < imgs.Count; i++)
        {
            if (loaded[i] is null) continue;
            foreach (var c in imgs[i].Captions) { set.Captions.Add(c); set.Owner.Add(set.Images.Count); }
            set.Images.Add(loaded[i]!);
            set.ImagePaths.Add(imgs[i].Path);
        }
        if (cache.FailedCount > 0) Console.Error.WriteLine($"kernelvl: warning: {cache.FailedCount} unreadable images skipped");
        if (set.Images.Count < 2) throw new BadInputException($"{data}: fewer than 2 readable images in split '{split}'");
        return set with { Skipped = cache.FailedCount };
    }

    private static Option<string> ModelOption() => new("--model") { Description = "Checkpoint folder (config.json, model.safetensors, vocab.txt)", Required = true };

    // ---------------------------------------------------------------- index
    public static Command Index()
    {
        var model = ModelOption();
        var images = new Option<string>("--images") { Description = "Folder of images (searched recursively: jpg, png, webp, bmp, gif, tiff), or the image root of --data (default with --data: the JSON's folder)" };
        var data = new Option<string>("--data") { Description = "Karpathy split JSON: index that split's images and captions instead of a folder" };
        var split = new Option<string>("--split") { Description = "Split of --data to index", DefaultValueFactory = _ => "test" };
        var outDir = new Option<string>("--out") { Description = "Index folder (created; an existing one with the same model is resumed, and refreshed: images changed since encoded again, deleted ones removed)", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Vector storage: f16 or f32", DefaultValueFactory = _ => "f16" };
        var batch = new Option<int>("--batch") { Description = "Items per encoder pass", DefaultValueFactory = _ => 32 };
        var segment = new Option<int>("--segment-rows") { Description = "Rows per segment file (each completed segment is durable)", DefaultValueFactory = _ => 4096 };
        var massRemoval = new Option<bool>("--allow-mass-removal") { Description = "Let a rerun remove more than half of the indexed images as gone (refused without it: an unmounted or moved image folder looks like every image deleted)" };
        var rehash = new Option<bool>("--rehash") { Description = "On a rerun, hash every indexed image (not only those whose size or write time changed) and encode again those whose bytes differ: for files replaced under their old size and times, e.g. restored from a backup (reads every image)" };
        var device = TrainCommands.DeviceOption();
        var cmd = new Command("index", "Encode images (and a dataset's captions) with the decomposed encoders into a persistent, resumable index");
        foreach (var o in new Option[] { model, images, data, split, outDir, dtype, batch, segment, massRemoval, rehash, device }) cmd.Options.Add(o);
        cmd.SetAction(ErrorReporting.Guard(r =>
        {
            var dt = r.GetValue(dtype) switch { "f16" => VectorDType.F16, "f32" => VectorDType.F32, var x => throw new BadInputException($"--dtype must be f16 or f32, got {x}") };
            int seg = r.GetValue(segment), bs = r.GetValue(batch);
            if (seg < 1 || bs < 1) throw new BadInputException("--segment-rows and --batch must be positive");
            if (bs > MaxBatch) throw new BadInputException($"--batch {bs}: at most {MaxBatch} items per encoder pass (a larger batch only costs memory)");
            string? dataArg = r.GetValue(data);
            if (r.GetValue(images) is null && dataArg is null) throw new BadInputException("give --images (a folder of images), or --data (a dataset; its images' root defaults to the JSON's folder)");
            if (dataArg is null && r.GetResult(split) is { Implicit: false }) throw new BadInputException("--split selects a split of --data: give --data, or drop --split to index a folder");
            string ckpt = r.GetValue(model)!, outPath = r.GetValue(outDir)!;
            string root = Path.GetFullPath(r.GetValue(images) ?? Path.GetDirectoryName(Path.GetFullPath(dataArg!))!);
            if (!Directory.Exists(root)) throw new BadInputException($"{root}: no such folder");
            // Every input is read and checked before the index folder is made or touched.
            // What to index: (id, relative path) of images, and (id, caption, image id) of captions.
            List<(string Id, string Path)> imageItems;
            var unreadableFolders = new List<string>();   // folder mode: folders the scan could not read
            var captionItems = new List<(string Id, string Caption, string ImageId)>();
            string? dataPath = r.GetValue(data);
            string source;
            if (dataPath is null)
            {
                imageItems = ImageFiles.Under(root, ImageExtensions, w => Console.Error.WriteLine($"kernelvl: warning: {w}"), unreadableFolders).Select(f => (f, f)).ToList();
                source = "folder";
            }
            else
            {
                var ds = LoadData(dataPath).Split(r.GetValue(split)!);
                imageItems = ds.Select(i => ($"img:{i.Id}", i.Path)).ToList();
                foreach (var i in ds)
                    for (int c = 0; c < i.Captions.Count; c++) captionItems.Add(($"cap:{i.Id}:{c}", i.Captions[c], $"img:{i.Id}"));
                source = $"data {Path.GetFullPath(dataPath)}, split {r.GetValue(split)}";
            }
            if (imageItems.Count == 0) throw new BadInputException($"{root}: no images ({string.Join(", ", ImageExtensions)})");
            using var backend = BackendFactory.Create(TrainCommands.ResolveDevice(r.GetValue(device)!));
            using var m = VlModel.Load(ckpt, backend);
            WarnStages(m, ckpt, encodes: true, null, null, scoresPairs: false);
            if ((long)seg * m.Config.HiddenSize * (dt == VectorDType.F16 ? 2 : 4) > EmbeddingIndex.MaxSegmentBytes)
                throw new BadInputException($"--segment-rows {seg}: segments of {seg} x {m.Config.HiddenSize} {r.GetValue(dtype)} values exceed {EmbeddingIndex.MaxSegmentBytes >> 20} MiB");
            var imageMap = imageItems.ToDictionary(i => i.Id, i => i.Path, StringComparer.Ordinal);
            var captionMap = captionItems.ToDictionary(c => c.Id, c => c.Caption, StringComparer.Ordinal);
            if (File.Exists(Path.Combine(outPath, EmbeddingIndex.ManifestFile)))
            {
                // An index from before indexes recorded their source takes this build's as its own: refused, untouched, when
                // that would remove every image it holds (most likely the wrong --out, not a folder emptied and refilled).
                using var before = EmbeddingIndex.Open(outPath, verify: false);
                int held = before.Collections["image"].Rows;
                if (before.Source is null && held > 0 && !before.ItemsOf("image").Any(it => imageMap.TryGetValue(it.Id, out var p) && p == it.Path))
                    throw new BadInputException($"{outPath}: an index that does not record what it was built from, and none of its {held} images is in this build's source ({source}): " +
                        "give another --out (or delete the folder to rebuild it from this source)");
            }
            bool fresh = !Path.Exists(outPath);
            using var idx = EmbeddingIndex.CreateOrResume(outPath, EmbeddingIndex.Fingerprint(ckpt), m.Config.HiddenSize, dt, root, source, exclusive: true);
            var enc = new DecomposedEncoder(m, bs);
            var pre = m.Preprocessor();
            // Ctrl-C stops the check of the indexed images (nothing changed yet), or the encoding at the next batch: the
            // completed segments stay (durable), the one in progress is redone by a rerun.
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            try
            {
                // A resumed build first refreshes what went stale since: items gone from the source are removed here (one
                // atomic switch of the index: a search sees it before or after); changed images are encoded again below,
                // each old vector replaced in the switch that adds its new one (a search finds one of the two, never none).
                // What is under a folder that could not be read, or a symlink that leads nowhere, is unknown, not gone: kept.
                var unknownPaths = unreadableFolders.ToHashSet(StringComparer.Ordinal);
                bool Unknown(string path)
                {
                    // The path or a folder above it (a set lookup per level: a scan may report many dangling links).
                    if (unknownPaths.Contains(".")) return true;
                    for (int cut = path.Length; cut > 0; cut = path.LastIndexOf('/', cut - 1))
                        if (unknownPaths.Contains(path[..cut])) return true;
                    return false;
                }
                EmbeddingIndex.Refresh plan;
                bool rehashAll = r.GetValue(rehash);
                using (var bar = idx.Collections["image"].Rows >= (rehashAll ? 256 : 4096) ? new ProgressBar(rehashAll ? "hash indexed images" : "check indexed images", idx.Collections["image"].Rows) : null)
                    plan = idx.PlanRefresh(root, imageMap, captionMap, unreadableFolders.Count > 0 ? Unknown : null, n => bar?.Report(n), cts.Token, rehashAll);
                int indexed = idx.Collections["image"].Rows;
                if (plan.RemovesMostOf(indexed) && !r.GetValue(massRemoval))
                    throw new BadInputException($"{outPath}: {plan.GoneImages} of its {indexed} images are gone from {root} (deleted, or no longer in the source): nothing changed. " +
                        "If the folder is offline or moved, bring it back; if they were deleted, rerun with --allow-mass-removal");
                if (plan.Unreadable > 0)
                    Console.Error.WriteLine($"kernelvl: warning: {plan.Unreadable} indexed images cannot be read now (changed, or their folder cannot be read or is missing): kept as they were");
                if (rehashAll)
                    Console.Error.WriteLine($"kernelvl: --rehash: {plan.ChangedImages - plan.RehashUnknown} of the {indexed - plan.Unreadable - plan.RehashUnknown} indexed images hashed differ from what was encoded" +
                                            (plan.RehashUnknown > 0 ? $"; {plan.RehashUnknown} indexed without a stamp or hash are encoded again (then they have both)" : ""));
                if (plan.Unstamped > 0)
                    Console.Error.WriteLine($"kernelvl: warning: {plan.Unstamped} indexed images carry no file stamp (indexed before 2026-11-29): changes to them are not seen; rerun with --rehash to encode them again, stamped");
                if (plan.Any)
                {
                    idx.Remove(plan.Rows, plan.Restamped);
                    if (plan.Restamped.Count > 0) Console.Error.WriteLine($"kernelvl: {plan.Restamped.Count} images were touched but hold the same bytes: kept");
                }
                if (plan.Rows.Values.Any(x => x.Count > 0) || plan.ChangedImages > 0)
                    Console.Error.WriteLine($"kernelvl: refreshing {outPath}: {plan.ChangedImages} changed images to encode again, {plan.GoneImages} gone " +
                        $"(deleted, or no longer in the source) removed; {plan.ChangedCaptions} changed captions to encode again, {plan.GoneCaptions} gone removed");
                var doneImages = idx.IndexedIds("image");
                doneImages.ExceptWith(plan.ChangedImageIds);
                var doneCaps = idx.IndexedIds("caption");
                // Changed images first: they then share one chunk, or a few, and so one switch, or a few, each of which
                // rewrites the items file and the segments their old rows are in.
                var todoImages = imageItems.Where(i => !doneImages.Contains(i.Id)).OrderBy(i => plan.ChangedImageIds.Contains(i.Id) ? 0 : 1).ToList();
                var todoCaps = captionItems.Where(c => !doneCaps.Contains(c.Id)).ToList();
                if (doneImages.Count + doneCaps.Count > 0)
                    Console.Error.WriteLine($"kernelvl: resuming: {doneImages.Count} images and {doneCaps.Count} captions already indexed");
                int skipped = 0, keptStale = 0;
                var sw = Stopwatch.StartNew();
                try
                {
                    if (todoImages.Count > 0)   // no bar of nothing to do
                    using (var bar = new ProgressBar("index images", todoImages.Count))
                    {
                        for (int s = 0; s < todoImages.Count; s += seg)
                        {
                            var chunk = todoImages.Skip(s).Take(seg).ToList();
                            var prepared = new PreparedImage?[chunk.Count];
                            var stamps = new (long? Bytes, long? ModifiedMs)[chunk.Count];   // read before the decode: a later change shows as stale
                            var hashes = new string?[chunk.Count];
                            Parallel.For(0, chunk.Count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount, CancellationToken = cts.Token }, i =>
                            {
                                try
                                {
                                    string file = Path.Combine(root, chunk[i].Path);
                                    stamps[i] = EmbeddingIndex.FileStamp(file);
                                    var bytes = ImageFiles.ReadRegularFile(file);
                                    hashes[i] = EmbeddingIndex.Sha256Hex(bytes);
                                    prepared[i] = pre.Load(bytes, file);
                                }
                                catch (BadInputException e)
                                {
                                    // The first 20 named; the rest counted in the summary line.
                                    if (Interlocked.Increment(ref skipped) <= 20) bar.Line($"kernelvl: warning: skipped: {e.Message}");
                                }
                            });
                            var keep = Enumerable.Range(0, chunk.Count).Where(i => prepared[i] is not null).ToList();
                            var vecs = enc.EncodeImages(keep.Select(i => prepared[i]!).ToList(), n => { cts.Token.ThrowIfCancellationRequested(); bar.Report(s + n); });
                            // Changed images of this chunk: their old rows go in the switch that adds the new ones. One that
                            // could not be loaded keeps its old vector (a folder of files truncated or half-copied must not
                            // empty the index); the next rerun tries it again.
                            var replaces = new List<int>();
                            if (chunk.Any(item => plan.ChangedImageIds.Contains(item.Id)))
                            {
                                var rowOf = idx.RowsById("image");
                                foreach (int i in keep)
                                    if (plan.ChangedImageIds.Contains(chunk[i].Id) && rowOf.TryGetValue(chunk[i].Id, out int old)) replaces.Add(old);
                                keptStale += chunk.Count(item => plan.ChangedImageIds.Contains(item.Id)) - replaces.Count;
                            }
                            idx.Append("image", keep.Select(i => new IndexItem("image", 0, chunk[i].Id, Path: chunk[i].Path, Bytes: stamps[i].Bytes, ModifiedMs: stamps[i].ModifiedMs, Sha256: hashes[i])).ToList(), vecs, replaces);
                            bar.Report(s + chunk.Count);
                        }
                    }
                    if (idx.Collections["image"].Rows == 0)
                    {
                        // Nothing readable: no index to search. A folder this run made is removed.
                        idx.Dispose();
                        if (fresh) Directory.Delete(outPath, recursive: true);
                        throw new BadInputException($"{root}: none of the {imageItems.Count} images could be read (see the warnings above): nothing indexed");
                    }
                    if (todoCaps.Count > 0)
                        using (var bar = new ProgressBar("index captions", todoCaps.Count))
                            for (int s = 0; s < todoCaps.Count; s += seg)
                            {
                                var chunk = todoCaps.Skip(s).Take(seg).ToList();
                                var vecs = enc.EncodeTexts(chunk.Select(c => c.Caption).ToList(), n => { cts.Token.ThrowIfCancellationRequested(); bar.Report(s + n); });
                                idx.Append("caption", chunk.Select(c => new IndexItem("caption", 0, c.Id, Caption: c.Caption, ImageId: c.ImageId)).ToList(), vecs);
                            }
                }
                catch (OperationCanceledException) when (cts.IsCancellationRequested)
                {
                    Console.Error.WriteLine($"kernelvl: stopped: {idx.Collections["image"].Rows} images and {idx.Collections["caption"].Rows} captions are in {outPath}; rerun the same command to resume");
                    return ErrorReporting.Interrupted;
                }
                if (keptStale > 0)
                    Console.Error.WriteLine($"kernelvl: warning: {keptStale} changed images could not be loaded (see the warnings above): their old vectors are kept until a rerun can encode them");
                // Partial segments of resumed runs and segments shrunk by a refresh are merged back into full ones.
                var (merged, into) = idx.Compact(seg);
                if (merged > 0) Console.Error.WriteLine($"kernelvl: merged {merged} segments into {into} (of up to {seg} rows)");
                Console.WriteLine($"indexed {todoImages.Count - skipped} images and {todoCaps.Count} captions in {ProgressBar.Format(sw.Elapsed)} " +
                    $"({idx.Collections["image"].Rows} images, {idx.Collections["caption"].Rows} captions in {outPath}){(skipped > 0 ? $"; {skipped} unreadable images skipped{(skipped > 20 ? " (the first 20 named above)" : "")}" : "")}");
                return ErrorReporting.Ok;
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                Console.Error.WriteLine($"kernelvl: stopped while checking the indexed images: {outPath} is as it was; rerun the same command to resume");
                return ErrorReporting.Interrupted;
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
        }));
        return cmd;
    }

    // ---------------------------------------------------------------- search
    public static Command Search()
    {
        var model = ModelOption();
        var index = new Option<string>("--index") { Description = "Index folder built by kernelvl index with this model", Required = true };
        var text = new Option<string>("--text") { Description = "Text query: find images" };
        var image = new Option<string>("--image") { Description = "Image query (a file): find captions" };
        var k = new Option<int>("-k", "--top") { Description = "Results to show", DefaultValueFactory = _ => 10 };
        var rerank = new Option<int>("--rerank") { Description = "Rescore the top N with the cross-encoder (0: off)", DefaultValueFactory = _ => 0 };
        var crossModel = new Option<string>("--cross-model") { Description = "Checkpoint scoring the pairs for --rerank (default: --model); for a decomposed model, the stage-1 model it came from reranks best" };
        var json = new Option<bool>("--json") { Description = "Print the results as JSON" };
        var verify = new Option<bool>("--verify") { Description = "Check every segment's SHA-256 before searching (reads the whole index; the sizes are always checked)" };
        var device = TrainCommands.DeviceOption();
        var cmd = new Command("search", "Search an index: text -> images (--text) or image -> captions (--image), optionally reranked by the cross-encoder");
        foreach (var o in new Option[] { model, index, text, image, k, rerank, crossModel, json, verify, device }) cmd.Options.Add(o);
        cmd.SetAction(ErrorReporting.Guard(r =>
        {
            string? q = r.GetValue(text), qi = r.GetValue(image);
            if ((q is null) == (qi is null)) throw new BadInputException("give exactly one of --text and --image");
            int top = r.GetValue(k), rr = r.GetValue(rerank);
            if (top < 1 || top > Contract.MaxTopK) throw new BadInputException($"-k must be in 1..{Contract.MaxTopK}, got {top}");
            if (rr < 0 || rr > Contract.MaxTopK) throw new BadInputException($"--rerank must be in 0..{Contract.MaxTopK}, got {rr}");
            if (qi is not null) ImagePreprocessor.RequireFile(qi);   // before the model is loaded
            if (rr == 0 && r.GetValue(crossModel) is not null) throw new BadInputException("--cross-model scores the pairs of --rerank: give --rerank N too");
            string ckpt = r.GetValue(model)!;
            using var backend = BackendFactory.Create(TrainCommands.ResolveDevice(r.GetValue(device)!));
            using var m = VlModel.Load(ckpt, backend);
            using var cm = rr > 0 && r.GetValue(crossModel) is { } cp ? VlModel.Load(cp, backend) : null;
            WarnStages(m, ckpt, encodes: true, cm, r.GetValue(crossModel), scoresPairs: rr > 0);
            var openWatch = Stopwatch.StartNew();
            // Lengths are checked at the open and again as each segment is mapped; the checksums (a read of the whole
            // index, seconds on a large one) only with --verify: the build that wrote them and every resume check them.
            // On cuda the f16 search's exactness rests on each segment's max_norm, which the checksum pass also checks.
            bool verifyAll = r.GetValue(verify) || backend is KernelVL.Backends.IHalfRowsTopK { PreferredHalfRows: > 0 };
            var idx = EmbeddingIndex.Open(r.GetValue(index)!, EmbeddingIndex.Fingerprint(ckpt), verify: verifyAll);
            double openMs = openWatch.Elapsed.TotalMilliseconds;
            if (q is not null && m.Tokenizer is { } tok)
            {
                // What the encoder will not see: said, so that a query cut short or spelled outside the vocabulary is no mystery.
                var (pieces, cut, unknown) = tok.Losses(q);
                if (cut > 0) Console.Error.WriteLine($"kernelvl: warning: the query has {pieces} word pieces; the model reads the first {pieces - cut}, the last {cut} are ignored");
                if (unknown > 0) Console.Error.WriteLine($"kernelvl: warning: {unknown} of the query's {pieces} word pieces are not in the model's vocabulary ([UNK])");
            }
            var sw = Stopwatch.StartNew();
            var enc = new DecomposedEncoder(m, 1);
            PreparedImage? queryImage = qi is null ? null : m.Preprocessor().Load(qi);
            float[] qv = q is not null ? enc.EncodeTexts([q]) : enc.EncodeImages([queryImage!]);
            string kind = q is not null ? "image" : "caption";
            double encodeMs = sw.Elapsed.TotalMilliseconds;
            List<SearchHit> hits;
            try
            {
                hits = idx.Search(backend, kind, qv, Math.Max(top, rr))[0];
            }
            catch (IndexChangedException)
            {
                // A build refreshing the index replaced a segment between the open and the search: once more, from its new manifest.
                idx = EmbeddingIndex.Open(r.GetValue(index)!, EmbeddingIndex.Fingerprint(ckpt), verify: verifyAll);
                hits = idx.Search(backend, kind, qv, Math.Max(top, rr))[0];
            }
            double searchMs = sw.Elapsed.TotalMilliseconds - encodeMs;
            var cross = new Dictionary<int, float>();
            int reranked = 0;
            if (rr > 0)
            {
                var scorer = cm ?? m;
                var cand = hits.Take(rr).ToList();
                var imgs = new List<PreparedImage>();
                var caps = new List<string>();
                var scored = new List<SearchHit>();
                var unreadable = new List<SearchHit>();
                var pre = scorer.Preprocessor();
                PreparedImage? crossQuery = qi is null ? null : cm is null ? queryImage : pre.Load(qi);   // the scorer's own preprocessing
                foreach (var h in cand)
                {
                    if (q is not null)
                    {
                        string root = idx.ImageRoot ?? throw new BadInputException($"{idx.Folder}: the index has no image root to rerank from");
                        try { imgs.Add(pre.Load(Path.Combine(root, h.Item.Path!))); }
                        catch (BadInputException e)
                        {
                            // An image deleted or damaged since it was indexed: kept after the rescored ones, in its place by vector score.
                            Console.Error.WriteLine($"kernelvl: warning: not reranked: {e.Message}");
                            unreadable.Add(h);
                            continue;
                        }
                        caps.Add(q);
                    }
                    else
                    {
                        imgs.Add(crossQuery!);
                        caps.Add(h.Item.Caption!);
                    }
                    scored.Add(h);
                }
                var s = scorer.ScorePairs(imgs, caps);
                for (int i = 0; i < scored.Count; i++) cross[scored[i].Item.Row] = s[i];
                reranked = scored.Count;
                var reordered = scored.Select((h, i) => (h, s: s[i])).OrderByDescending(x => x.s).ThenBy(x => x.h.Item.Row).Select(x => x.h)
                    .Concat(unreadable).Concat(hits.Skip(rr)).ToList();
                hits = reordered.Select((h, i) => h with { Rank = i + 1 }).ToList();
            }
            double totalMs = sw.Elapsed.TotalMilliseconds;
            hits = hits.Take(top).ToList();
            if (r.GetValue(json))
            {
                var o = new JsonObject
                {
                    ["query"] = q ?? qi, ["kind"] = kind, ["k"] = top, ["rerank"] = rr, ["reranked"] = reranked,
                    ["open_ms"] = Math.Round(openMs, 2), ["encode_ms"] = Math.Round(encodeMs, 2), ["search_ms"] = Math.Round(searchMs, 2), ["rerank_ms"] = rr > 0 ? Math.Round(totalMs - encodeMs - searchMs, 2) : 0, ["total_ms"] = Math.Round(openMs + totalMs, 2),
                    ["results"] = new JsonArray(hits.Select(h =>
                    {
                        var x = new JsonObject { ["rank"] = h.Rank, ["score"] = h.Score, ["id"] = h.Item.Id };
                        if (cross.TryGetValue(h.Item.Row, out var c)) x["cross_score"] = c;
                        if (h.Item.Path is not null) x["path"] = h.Item.Path;
                        if (h.Item.Caption is not null) x["caption"] = h.Item.Caption;
                        if (h.Item.ImageId is not null) x["image_id"] = h.Item.ImageId;
                        return (JsonNode)x;
                    }).ToArray()),
                };
                Console.WriteLine(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
            }
            else
            {
                Console.WriteLine($"{(q is not null ? $"images for \"{q}\"" : $"captions for {qi}")} ({idx.Collections[kind].Rows} in the index; open {openMs:F0} ms, encode {encodeMs:F1} ms, search {searchMs:F1} ms{(rr > 0 ? $", rerank of {reranked} {totalMs - encodeMs - searchMs:F0} ms" : "")})");
                foreach (var h in hits)
                    Console.WriteLine($"{h.Rank,4}  {h.Score,8:F4}{(cross.TryGetValue(h.Item.Row, out var c) ? $"  cross {c,9:F4}" : "")}  {Printable(h.Item.Path ?? h.Item.Caption ?? "")}{(h.Item.ImageId is { } owner ? $"  ({owner})" : "")}");
            }
            return ErrorReporting.Ok;
        }));
        return cmd;
    }

    /// <summary>One line of a result as a terminal shows it: control characters (newlines, escapes, NUL) as \n, \t, \uXXXX.</summary>
    public static string Printable(string text)
    {
        if (!text.Any(char.IsControl)) return text;
        var sb = new System.Text.StringBuilder(text.Length + 8);
        foreach (char ch in text)
            sb.Append(ch switch { '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", _ when char.IsControl(ch) => $"\\u{(int)ch:x4}", _ => ch.ToString() });
        return sb.ToString();
    }

    // ---------------------------------------------------------------- eval
    public static Command Eval()
    {
        var model = ModelOption();
        var data = new Option<string>("--data") { Description = "Karpathy split JSON", Required = true };
        var images = new Option<string>("--images") { Description = "Image root of --data (default: the JSON's folder)" };
        var split = new Option<string>("--split") { Description = "Split evaluated", DefaultValueFactory = _ => "test" };
        var mode = new Option<string>("--mode") { Description = "decomposed, cross, rerank or all", DefaultValueFactory = _ => "decomposed" };
        var limit = new Option<int>("--limit") { Description = "Only the first N images of the split (and their captions); 0: all", DefaultValueFactory = _ => 0 };
        var rerankK = new Option<int>("--rerank-k") { Description = "Candidates rescored per query in rerank mode", DefaultValueFactory = _ => 16 };
        var json = new Option<string>("--json") { Description = "Write the results as JSON to this file" };
        var batch = new Option<int>("--batch") { Description = $"Items or pairs per forward pass (at most {MaxBatch})", DefaultValueFactory = _ => 32 };
        var crossModel = new Option<string>("--cross-model") { Description = "Checkpoint scoring pairs in the cross and rerank modes (default: --model), e.g. the stage-1 model a decomposed one came from" };
        var strict = new Option<bool>("--strict") { Description = "Stop at the first unreadable image instead of skipping it (skipped images are counted in the table and the JSON)" };
        var device = TrainCommands.DeviceOption();
        var cmd = new Command("eval", "Recall@1/5/10 both ways (RSUM, medr; COCO-1K = the mean of 1000-image folds when the split has 2000+ images) for decomposed, cross-encoder and rerank retrieval, with their wall times");
        foreach (var o in new Option[] { model, data, images, split, mode, limit, rerankK, json, batch, crossModel, strict, device }) cmd.Options.Add(o);
        cmd.SetAction(ErrorReporting.Guard(r =>
        {
            string md = r.GetValue(mode)!;
            if (md is not ("decomposed" or "cross" or "rerank" or "all")) throw new BadInputException($"--mode must be decomposed, cross, rerank or all, got {md}");
            string dataPath = r.GetValue(data)!;
            int lim = r.GetValue(limit), rk = r.GetValue(rerankK), bsz = r.GetValue(batch);
            if (lim < 0) throw new BadInputException($"--limit must be >= 0 (0: all images), got {lim}");
            if (rk < 1 && md is "rerank" or "all") throw new BadInputException($"--rerank-k must be at least 1, got {rk}");
            if (bsz < 1 || bsz > MaxBatch) throw new BadInputException($"--batch must be 1..{MaxBatch} (a larger batch only costs memory), got {bsz}");
            if (r.GetValue(json) is { } jsonOut)
                CheckResultsPath(jsonOut, [dataPath], [r.GetValue(model)!, r.GetValue(crossModel), r.GetValue(images)]);
            string imageRoot = r.GetValue(images) ?? Path.GetDirectoryName(Path.GetFullPath(dataPath))!;
            if (!Directory.Exists(imageRoot)) throw new BadInputException($"{imageRoot}: no such folder (the images' root, --images)");
            using var backend = BackendFactory.Create(TrainCommands.ResolveDevice(r.GetValue(device)!));
            using var m = VlModel.Load(r.GetValue(model)!, backend);
            var set = LoadSplit(m, dataPath, imageRoot, r.GetValue(split)!, lim, strict: r.GetValue(strict));
            using var cm = r.GetValue(crossModel) is { } cp ? VlModel.Load(cp, backend) : null;
            WarnStages(m, r.GetValue(model)!, encodes: md is not "cross", cm, r.GetValue(crossModel), scoresPairs: md is not "decomposed");
            var doc = Evaluate(m, set, md, rk, bsz, r.GetValue(split)!, cross: cm);
            if (r.GetValue(json) is { } path) AtomicFile.WriteAllText(path, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return ErrorReporting.Ok;
        }));
        return cmd;
    }

    /// <summary>
    /// Warnings (not errors: a comparison may want exactly that) where a checkpoint's recorded stage does not suit its use:
    /// encoding with a stage-1 (pretrain) model, whose pooled embeddings were never trained for retrieval, or scoring
    /// pairs with a stage-2 (decompose) model, whose cross-encoder head stage 2 does not train. Checkpoints without a
    /// recorded stage say nothing.
    /// </summary>
    private static void WarnStages(VlModel m, string modelPath, bool encodes, VlModel? cross, string? crossPath, bool scoresPairs)
    {
        if (encodes && m.Config.Stage == VlTransformerConfig.PretrainStage)
            Console.Error.WriteLine($"kernelvl: warning: --model {modelPath} is a stage-1 (pretrain) checkpoint: its image and text encoders were not " +
                                    "trained for retrieval on their own; decompose it first (kernelvl decompose --model it) for the decomposed mode");
        var scorer = cross ?? m;
        if (scoresPairs && scorer.Config.Stage == VlTransformerConfig.DecomposeStage)
            Console.Error.WriteLine($"kernelvl: warning: {(cross is null ? $"--model {modelPath}" : $"--cross-model {crossPath}")} is a stage-2 (decompose) checkpoint " +
                                    "scoring image-caption pairs: stage 2 does not train its matching head; pass the stage-1 checkpoint it came from as --cross-model");
    }

    /// <summary>
    /// Checks, before an evaluation that may take hours, that its results can be written to <paramref name="path"/>: not
    /// a folder, its folder exists and takes a new file (probed), not one of the run's inputs (the dataset, a file in a
    /// checkpoint or image folder), and, if it exists, a results file of an earlier eval (anything else is refused
    /// rather than replaced: a mistyped --json once replaced the dataset itself).
    /// </summary>
    public static void CheckResultsPath(string path, IEnumerable<string> inputFiles, IEnumerable<string?> inputFolders)
    {
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new BadInputException($"--json {path}: is a folder, not a file");
        string parent = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(parent)) throw new BadInputException($"--json {path}: no such folder {parent}");
        // By the real paths: AtomicFile writes through a symlink, so a link to the dataset is the dataset.
        string real = Paths.Real(full);
        foreach (var f in inputFiles)
            if (Paths.Same(f, real)) throw new BadInputException($"--json {path}: is the dataset being evaluated (--data); give a new file");
        foreach (var d in inputFolders)
            if (d is not null && (Paths.Real(Path.GetDirectoryName(real)!) + Path.DirectorySeparatorChar).StartsWith(Paths.Real(d) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new BadInputException($"--json {path}: lies in {d}, an input of this run (a checkpoint or image folder); give a file elsewhere");
        if (File.Exists(full))
        {
            bool results;
            try
            {
                results = new FileInfo(full).Length < (64 << 20) && JsonNode.Parse(File.ReadAllText(full)) is JsonObject o && o["split"] is JsonValue && o["modes"] is JsonArray;
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or InvalidOperationException or ArgumentException)
            {
                results = false;
            }
            if (!results) throw new BadInputException($"--json {path}: exists and is not the results file of an earlier eval; give a new file (or remove it)");
        }
        string probe = Path.Combine(parent, $".{Path.GetFileName(full)}.{Environment.ProcessId}.probe.tmp");
        try
        {
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BadInputException($"--json {path}: its folder {parent} cannot take a new file ({e.Message})");
        }
    }

    // COCO-1K's label: the mean over consecutive folds of 1000 images (Recall.Folds); the images past the last full fold are in none.
    private static string FoldsLabel(int images) => $"mean of {images / 1000} 1K folds" + (images % 1000 > 0 ? $", {images % 1000} images in none" : "");

    // "12x faster", "1.4x faster", or "2.5x slower" (on small sets rerank can be slower than scoring every pair)
    private static string SpeedRatio(double r) => r >= 10 ? $"{r:F0}x faster" : r >= 1 ? $"{r:F1}x faster" : $"{1 / r:F1}x slower";

    /// <summary>Runs the modes on a set, prints the table, returns the JSON document of the eval command.</summary>
    /// <param name="cross">The early-interaction model for the cross and rerank modes (default: <paramref name="m"/>; the demo uses the stage-1 model).</param>
    /// <param name="cancel">Checked at each progress report: a stop asked for (the demo's Ctrl-C) ends the evaluation there.</param>
    public static JsonObject Evaluate(VlModel m, EvalSet set, string mode, int rerankK, int batch, string split, TextWriter? table = null, VlModel? cross = null,
        CancellationToken cancel = default)
    {
        cross ??= m;
        table ??= Console.Out;
        var results = new List<ModeResult>();
        float[]? iv = null, tv = null;
        double decSeconds = 0;
        ProgressBar? bar = null;
        string? barLabel = null;
        void Progress(string what, long done, long total)
        {
            cancel.ThrowIfCancellationRequested();
            if (barLabel != what) { bar?.Dispose(); bar = new ProgressBar(what, total); barLabel = what; }
            bar!.Report(done);
        }
        void EndBar() { bar?.Dispose(); bar = null; barLabel = null; }
        batch = (int)Math.Min(batch, Math.Max((long)set.Images.Count * set.Captions.Count, 1));   // no buffer larger than the work
        if (mode is "decomposed" or "rerank" or "all")
        {
            var (res, i, t) = RetrievalEval.Decomposed(m, set.Images, set.Captions, set.Owner, batch, Progress, timingRuns: 5);
            EndBar();
            (iv, tv, decSeconds) = (i, t, res.Seconds);
            if (mode != "rerank") results.Add(res);
        }
        if (mode is "cross" or "all")
        {
            long pairs = (long)set.Images.Count * set.Captions.Count;
            double per = RetrievalEval.CrossSecondsPerPair(cross, set.Images, set.Captions, batch);
            Console.Error.WriteLine($"kernelvl: the cross-encoder scores {pairs} pairs: about {ProgressBar.Format(TimeSpan.FromSeconds(per * pairs))} at {1 / per:F0} pairs/s (measured); --limit N evaluates the first N images");
            results.Add(RetrievalEval.Cross(cross, set.Images, set.Captions, set.Owner, batch, Progress));
            EndBar();
        }
        if (mode is "rerank" or "all")
        {
            results.Add(RetrievalEval.Rerank(cross, set.Images, set.Captions, set.Owner, iv!, tv!, decSeconds, rerankK, batch, Progress));
            EndBar();
        }
        table.WriteLine($"{split}: {set.Images.Count} images, {set.Captions.Count} captions" +
                        (set.Skipped > 0 ? $" ({set.Skipped} more of the split's images could not be read and are not in these numbers)" : ""));
        table.WriteLine("| mode | i2t R@1 | R@5 | R@10 | medr | t2i R@1 | R@5 | R@10 | medr | RSUM | seconds |");
        table.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var x in results)
        {
            var a = x.Recall;
            table.WriteLine($"| {x.Mode} | {a.I2T.R1:F1} | {a.I2T.R5:F1} | {a.I2T.R10:F1} | {a.I2T.MedR:F0} | {a.T2I.R1:F1} | {a.T2I.R5:F1} | {a.T2I.R10:F1} | {a.T2I.MedR:F0} | {a.Rsum:F1} | {x.Seconds:F2} |");
            if (x.Coco1K is { } f) table.WriteLine($"| {x.Mode} ({FoldsLabel(set.Images.Count)}) | {f.I2T.R1:F1} | {f.I2T.R5:F1} | {f.I2T.R10:F1} | {f.I2T.MedR:F1} | {f.T2I.R1:F1} | {f.T2I.R5:F1} | {f.T2I.R10:F1} | {f.T2I.MedR:F1} | {f.Rsum:F1} | |");
        }
        var byMode = results.ToDictionary(x => x.Mode);
        // One speedup figure, from the unrounded times (the JSON's seconds are rounded to 4 decimals, which moves a ratio
        // over a decomposed time of milliseconds by percents): the table, the JSON and the demo's report all show this one.
        double? speedup = byMode.TryGetValue("cross", out var cr) && byMode.TryGetValue("decomposed", out var de) && de.Seconds > 0 ? Math.Round(cr.Seconds / de.Seconds, 2) : null;
        if (speedup is { } sp)
            table.WriteLine($"speed: decomposed is {sp:F0}x faster than the cross-encoder over this set" +
                (byMode.TryGetValue("rerank", out var re) ? $"; rerank {SpeedRatio(cr!.Seconds / re.Seconds)}" : ""));
        static JsonObject Dir(RecallAt d) => new() { ["r1"] = Math.Round(d.R1, 3), ["r5"] = Math.Round(d.R5, 3), ["r10"] = Math.Round(d.R10, 3), ["medr"] = d.MedR };
        var modes = new JsonArray();
        foreach (var x in results)
        {
            var o = new JsonObject { ["mode"] = x.Mode, ["i2t"] = Dir(x.Recall.I2T), ["t2i"] = Dir(x.Recall.T2I), ["rsum"] = Math.Round(x.Recall.Rsum, 3), ["seconds"] = Math.Round(x.Seconds, 4) };
            if (x.CrossPairs > 0) o["cross_pairs"] = x.CrossPairs;
            if (x.Coco1K is { } f) o["coco_1k"] = new JsonObject { ["folds"] = set.Images.Count / 1000, ["images_in_no_fold"] = set.Images.Count % 1000, ["i2t"] = Dir(f.I2T), ["t2i"] = Dir(f.T2I), ["rsum"] = Math.Round(f.Rsum, 3) };
            if (x.Note is not null) o["note"] = x.Note;
            modes.Add(o);
        }
        var doc = new JsonObject { ["split"] = split, ["images"] = set.Images.Count, ["captions"] = set.Captions.Count, ["skipped_images"] = set.Skipped, ["modes"] = modes };
        if (speedup is { } figure) doc["speedup_decomposed_vs_cross"] = figure;
        return doc;
    }
}
