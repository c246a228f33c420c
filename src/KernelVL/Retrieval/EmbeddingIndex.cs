using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.Autograd;
using KernelVL.IO;
using KernelVL.Tensors;

namespace KernelVL.Retrieval;

/// <summary>How vectors are stored in segments.</summary>
public enum VectorDType { F16, F32 }

/// <summary>One indexed item: an image (path relative to the manifest's image root) or a caption (its text).</summary>
/// <param name="Bytes">An image file's size when it was indexed (a resumed build warns when it changed); null for captions and older indexes.</param>
/// <param name="ModifiedMs">An image file's last write time (Unix ms, UTC) when it was indexed.</param>
/// <param name="Sha256">An image file's SHA-256 when it was indexed: a file whose stamp changed but whose content did not
/// (touched, copied without its times) is not encoded again.</param>
public sealed record IndexItem(string Kind, int Row, string Id, string? Path = null, string? Caption = null, string? ImageId = null, long? Bytes = null, long? ModifiedMs = null, string? Sha256 = null);

/// <summary>A search hit: the item, its row in its collection and its inner-product score.</summary>
public sealed record SearchHit(int Rank, float Score, IndexItem Item);

/// <summary>
/// A persistent embedding index: a folder with manifest.json (format version, model fingerprint, and per kind of item,
/// "image" and "caption", the vector width, dtype, row count and segment files with their row counts and SHA-256),
/// row-major little-endian f16 or f32 segment files, and the items file (items.jsonl, or items-N.jsonl as the manifest's
/// items_file names it once rows were removed; one line per row: kind, row within the kind, id,
/// path or caption). The manifest is replaced atomically after each completed segment, so a build killed at any
/// moment leaves an index that opens and searches (rows past the manifest are ignored, and a resumed build drops them).
/// Rows are removed (<see cref="Remove"/>: a resumed build refreshing changed or deleted images) by writing the segments
/// that held them anew, without them, and the items to a new items file, then switching the manifest to both at once.
/// Search memory-maps the segments and streams them through the backend's top-k in blocks, so an index larger than RAM
/// works.
/// </summary>
public sealed class EmbeddingIndex : IDisposable
{
    /// <summary>The file a build holds locked (exclusively) while it writes the folder: a second build is refused.</summary>
    public const string LockFile = "build.lock";
    private FileStream? _lock;

    /// <summary>Releases the build lock (the lock file stays: removing it could let two builds lock two different files).</summary>
    public void Dispose()
    {
        _lock?.Dispose();
        _lock = null;
    }

    /// <summary>The newest format this build reads and writes. Version 2 (written once rows were removed) names its items
    /// file in items_file, which version 1 readers do not look for; version 1 indexes always use items.jsonl.</summary>
    public const int FormatVersion = 2;
    public const string ManifestFile = "manifest.json", ItemsFile = "items.jsonl";
    public static readonly string[] Kinds = ["image", "caption"];

    /// <summary>A segment file; f16 segments also carry <paramref name="MaxNorm"/>, an upper bound on their rows' L2 norms
    /// (<see cref="RowNorms.MaxNormUpperBound"/>; null in indexes written before it, or where a row is not finite).</summary>
    public sealed record Segment(string File, int Rows, string Sha256, float? MaxNorm = null);

    public sealed class Collection
    {
        public required string Kind { get; init; }
        public List<Segment> Segments { get; } = new();
        public int Rows => Segments.Sum(s => s.Rows);
    }

    public string Folder { get; }
    public string ModelFingerprint { get; }
    public int Dim { get; }
    public VectorDType DType { get; }
    public string? ImageRoot { get; private set; }
    /// <summary>What the build indexes ("folder", or "data FILE, split NAME"); null in indexes written before 2026-11-29.</summary>
    public string? Source { get; private set; }
    private bool _strayItemLines;   // the items file has lines past the manifest (a killed build): rewritten when resumed
    /// <summary>The items file the manifest names (<see cref="ItemsFile"/> until rows are first removed).</summary>
    public string ItemsFileName { get; private set; } = ItemsFile;
    public IReadOnlyDictionary<string, Collection> Collections => _collections;
    private readonly Dictionary<string, Collection> _collections;
    private readonly Dictionary<(string, int), IndexItem> _items = new();

    private EmbeddingIndex(string folder, string fingerprint, int dim, VectorDType dtype, string? imageRoot, Dictionary<string, Collection> collections)
    {
        Folder = folder;
        ModelFingerprint = fingerprint;
        Dim = dim;
        DType = dtype;
        ImageRoot = imageRoot;
        _collections = collections;
    }

    public int ElementSize => DType == VectorDType.F16 ? 2 : 4;

    /// <summary>The fingerprint of a checkpoint folder: SHA-256 over its config.json and model.safetensors.</summary>
    public static string Fingerprint(string checkpoint)
    {
        using var sha = SHA256.Create();
        foreach (var f in new[] { "config.json", "model.safetensors" })
        {
            string p = System.IO.Path.Combine(checkpoint, f);
            if (!File.Exists(p)) throw new BadInputException($"{p}: no such file (a checkpoint folder holds config.json and model.safetensors)");
            using var s = File.OpenRead(p);
            var buf = new byte[1 << 20];
            int n;
            while ((n = s.Read(buf, 0, buf.Length)) > 0) sha.TransformBlock(buf, 0, n, null, 0);
        }
        sha.TransformFinalBlock([], 0, 0);
        return Convert.ToHexStringLower(sha.Hash!);
    }

    private static string Short(string fingerprint) => fingerprint.Length > 12 ? fingerprint[..12] + "..." : fingerprint;

    // ---- opening ----

    /// <summary>
    /// Opens an index. With <paramref name="expectedFingerprint"/>, an index built by another model is refused; with
    /// <paramref name="verify"/>, every segment's checksum is checked (a mismatch names the segment).
    /// </summary>
    public static EmbeddingIndex Open(string folder, string? expectedFingerprint = null, bool verify = true)
    {
        string mpath = System.IO.Path.Combine(folder, ManifestFile);
        // A build that refreshes or compacts the index switches the manifest, then deletes the files the old one listed:
        // an open that read the old manifest and then misses one of them reads the new manifest again.
        for (int attempt = 0; ; attempt++)
        {
            string text = ReadManifest(folder, mpath);
            try
            {
                return OpenFrom(folder, mpath, text, expectedFingerprint, verify);
            }
            catch (Exception e) when (e is BadInputException or IOException && attempt < 20 && ReadManifest(folder, mpath) != text)
            {
            }
            catch (FileNotFoundException e)
            {
                throw new BadInputException($"{e.FileName ?? folder}: missing (was the index removed while it was read?)");
            }
        }
    }

    private static string ReadManifest(string folder, string mpath)
    {
        try
        {
            return File.ReadAllText(mpath);
        }
        catch (FileNotFoundException)
        {
            throw new BadInputException($"{folder}: not an index (no {ManifestFile})");
        }
        catch (DirectoryNotFoundException)
        {
            throw new BadInputException($"{folder}: not an index (no {ManifestFile})");
        }
    }

    private static EmbeddingIndex OpenFrom(string folder, string mpath, string text, string? expectedFingerprint, bool verify)
    {
        JsonObject m;
        try
        {
            m = JsonNode.Parse(text) as JsonObject ?? throw new BadInputException($"{mpath}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new BadInputException($"{mpath}: not valid JSON ({e.Message})");
        }
        var idx = FromManifest(folder, mpath, m);
        if (expectedFingerprint is not null && idx.ModelFingerprint != expectedFingerprint)
            throw new BadInputException($"{folder}: built with another model (fingerprint {Short(idx.ModelFingerprint)}, this model is {Short(expectedFingerprint)}): rebuild the index with this model");
        foreach (var c in idx._collections.Values)
            foreach (var s in c.Segments)
            {
                string p = System.IO.Path.Combine(folder, s.File);
                if (!File.Exists(p)) throw new BadInputException($"{p}: segment listed in the manifest is missing");
                long expected = (long)s.Rows * idx.Dim * idx.ElementSize;
                if (new FileInfo(p).Length != expected) throw new BadInputException($"{p}: {new FileInfo(p).Length} bytes, the manifest says {s.Rows} rows x {idx.Dim} x {idx.ElementSize} = {expected}");
                if (verify) idx.Verify(p, s);
            }
        idx.LoadItems();
        return idx;
    }

    /// <summary>One read of a segment: its SHA-256 against the manifest's, and where the manifest gives a max_norm, that
    /// no row's norm exceeds it (a smaller bound would let the cuda backend's f16 top-k return inexact results).</summary>
    private void Verify(string path, Segment seg)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        int rowBytes = Dim * ElementSize;
        var buf = new byte[(long)Math.Max(1, (1 << 20) / rowBytes) * rowBytes];
        float norm = 0;
        using (var f = File.OpenRead(path))
        {
            int n;
            while ((n = f.ReadAtLeast(buf, buf.Length, throwOnEndOfStream: false)) > 0)
            {
                sha.AppendData(buf, 0, n);
                if (seg.MaxNorm is not null && n % rowBytes == 0)
                    norm = Math.Max(norm, RowNorms.MaxNormUpperBound(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(buf.AsSpan(0, n)), Dim));
            }
        }
        if (Convert.ToHexStringLower(sha.GetHashAndReset()) != seg.Sha256) throw new BadInputException($"{path}: checksum mismatch (the segment is corrupt)");
        // One f32 step of slack: the summation order (the machine's vector width) may move the rounded-up bound by one.
        if (seg.MaxNorm is { } m && norm > MathF.BitIncrement(m))
            throw new BadInputException($"{path}: a row's norm reaches {norm}, above the manifest's max_norm {m} (the manifest was edited; rebuild the index)");
    }

    private static EmbeddingIndex FromManifest(string folder, string mpath, JsonObject m)
    {
        T Need<T>(JsonNode? n, string what)
        {
            try
            {
                if (n is JsonValue v && v.TryGetValue(out T? x) && x is not null) return x;
            }
            catch (InvalidOperationException) { }
            throw new BadInputException($"{mpath}: missing or malformed {what}");
        }
        int version = Need<int>(m["format_version"], "format_version");
        if (version is < 1 or > FormatVersion) throw new BadInputException($"{mpath}: format version {version}, this build reads 1 to {FormatVersion}");
        int dim = Need<int>(m["dim"], "dim");
        if (dim < 1) throw new BadInputException($"{mpath}: dim must be positive");
        var dtype = Need<string>(m["dtype"], "dtype") switch
        {
            "f16" => VectorDType.F16,
            "f32" => VectorDType.F32,
            var d => throw new BadInputException($"{mpath}: dtype {d} (f16 or f32)"),
        };
        var cols = new Dictionary<string, Collection>();
        if (m["collections"] is not JsonObject co) throw new BadInputException($"{mpath}: missing collections");
        foreach (var kind in Kinds)
        {
            var c = new Collection { Kind = kind };
            if (co[kind] is JsonObject ck)
            {
                if (ck["segments"] is not JsonArray segs) throw new BadInputException($"{mpath}: collection {kind} has no segments array");
                foreach (var s in segs)
                {
                    if (s is not JsonObject so) throw new BadInputException($"{mpath}: a segment of {kind} is not an object");
                    string file = Need<string>(so["file"], "segment file");
                    if (file.Contains('/') || file.Contains('\\') || file.StartsWith('.')) throw new BadInputException($"{mpath}: segment name {file} must be a plain file name");
                    float? maxNorm = null;
                    if (so["max_norm"] is { } mn)
                    {
                        if (dtype != VectorDType.F16) throw new BadInputException($"{mpath}: segment {file} has a max_norm, which only f16 segments carry");
                        float x = Need<float>(mn, $"max_norm of segment {file}");
                        if (!(x >= 0 && float.IsFinite(x))) throw new BadInputException($"{mpath}: max_norm of segment {file} must be finite and >= 0, got {x}");
                        maxNorm = x;
                    }
                    c.Segments.Add(new Segment(file, Need<int>(so["rows"], "segment rows"), Need<string>(so["sha256"], "segment sha256"), maxNorm));
                }
                if (ck["rows"] is JsonValue rv && rv.TryGetValue(out int rows) && rows != c.Rows)
                    throw new BadInputException($"{mpath}: collection {kind} says {rows} rows, its segments hold {c.Rows}");
            }
            cols[kind] = c;
        }
        // Read whenever present: builds of 2026-11-29 wrote a renamed items file under format version 1.
        string itemsFile = m["items_file"] is null ? ItemsFile : Need<string>(m["items_file"], "items_file");
        if (!IsItemsFileName(itemsFile)) throw new BadInputException($"{mpath}: items_file {itemsFile} must be a plain file name items[-N].jsonl");
        return new EmbeddingIndex(folder, Need<string>(m["model_fingerprint"], "model_fingerprint"), dim, dtype, (string?)m["image_root"], cols)
        {
            Source = m["source"] is JsonValue sv && sv.TryGetValue(out string? src) ? src : null,
            ItemsFileName = itemsFile,
            _nextSegment = m["next_segment"] is null ? 0 : Math.Max(0, Need<int>(m["next_segment"], "next_segment")),
        };
    }

    private void LoadItems()
    {
        string path = System.IO.Path.Combine(Folder, ItemsFileName);
        if (!File.Exists(path)) throw new BadInputException($"{path}: no such file");
        int line = 0;
        foreach (var l in File.ReadLines(path))
        {
            line++;
            if (l.Length == 0) continue;
            JsonObject? o;
            try { o = JsonNode.Parse(l) as JsonObject; }
            catch (JsonException) { o = null; }
            if (o is null) { _strayItemLines = true; break; }   // a line cut by a kill: the manifest decides what is indexed
            string? kind = (string?)o["kind"];
            if (kind is null || !_collections.TryGetValue(kind, out var c) || o["row"] is not JsonValue rv || !rv.TryGetValue(out int row)) { _strayItemLines = true; continue; }
            if (row >= c.Rows) { _strayItemLines = true; continue; }   // written after the last completed segment
            _items[(kind, row)] = new IndexItem(kind, row, (string?)o["id"] ?? "", (string?)o["path"], (string?)o["caption"], (string?)o["image_id"],
                o["bytes"] is JsonValue bv && bv.TryGetValue(out long b) ? b : null, o["modified_ms"] is JsonValue tv && tv.TryGetValue(out long t) ? t : null,
                o["sha256"] is JsonValue hv && hv.TryGetValue(out string? h) ? h : null);
        }
        foreach (var c in _collections.Values)
            for (int r = 0; r < c.Rows; r++)
                if (!_items.ContainsKey((c.Kind, r))) throw new BadInputException($"{path}: no item for {c.Kind} row {r}");
    }

    public IndexItem Item(string kind, int row) => _items[(kind, row)];

    // ---- building ----

    /// <summary>
    /// Creates an index folder (new, or empty), or reopens one to resume: same model, dim, dtype, image root and source
    /// required (<paramref name="source"/>: what the build indexes, e.g. "folder" or a data file and split), rows past the
    /// manifest dropped. A file, or a folder that holds other things than an index, is refused untouched.
    /// </summary>
    /// <param name="exclusive">Hold <see cref="LockFile"/> until <see cref="Dispose"/>: another process's build of the same
    /// folder (or a second exclusive open here) is refused instead of interleaving its segments and items.</param>
    public static EmbeddingIndex CreateOrResume(string folder, string fingerprint, int dim, VectorDType dtype, string? imageRoot, string? source = null, bool exclusive = false)
    {
        if (File.Exists(folder)) throw new BadInputException($"{folder}: is a file, not an index folder");
        // A first build killed before its first manifest leaves only index files (items, segments, a temporary file, the
        // lock): started afresh. Anything else is not ours.
        static bool Ours(string name) => name is LockFile || IsItemsFileName(name) || name.StartsWith("seg-", StringComparison.Ordinal) || name.StartsWith('.') && name.EndsWith(".tmp", StringComparison.Ordinal);
        if (Directory.Exists(folder) && !File.Exists(System.IO.Path.Combine(folder, ManifestFile))
            && Directory.EnumerateFileSystemEntries(folder).Any(e => !Ours(System.IO.Path.GetFileName(e))))
            throw new BadInputException($"{folder}: not empty and not an index (no {ManifestFile}): give a new or an empty folder");
        Directory.CreateDirectory(folder);
        FileStream? held = null;
        if (exclusive)
        {
            try
            {
                held = new FileStream(System.IO.Path.Combine(folder, LockFile), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                throw new BadInputException($"{folder}: another kernelvl index build is writing it; wait for it to end (then a rerun resumes)");
            }
        }
        try
        {
            var idx = OpenOrCreate(folder, fingerprint, dim, dtype, imageRoot, source);
            idx._lock = held;
            return idx;
        }
        catch
        {
            held?.Dispose();
            throw;
        }
    }

    private static EmbeddingIndex OpenOrCreate(string folder, string fingerprint, int dim, VectorDType dtype, string? imageRoot, string? source)
    {
        if (File.Exists(System.IO.Path.Combine(folder, ManifestFile)))
        {
            var idx = Open(folder, fingerprint, verify: true);
            if (idx.Dim != dim || idx.DType != dtype) throw new BadInputException($"{folder}: holds {idx.DType.ToString().ToLowerInvariant()} vectors of {idx.Dim}, the build makes {dtype.ToString().ToLowerInvariant()} of {dim}");
            if (idx.ImageRoot is not null && imageRoot is not null && !KernelVL.IO.Paths.Same(idx.ImageRoot, imageRoot))
                throw new BadInputException($"{folder}: indexes images under {idx.ImageRoot}, this build reads {imageRoot}: build another index (--out)");
            if (idx.Source is not null && source is not null && !SameSource(idx.Source, source))
                throw new BadInputException($"{folder}: built from {idx.Source}, this build is {source}: build another index (--out)");
            bool fill = idx.ImageRoot is null && imageRoot is not null || idx.Source is null && source is not null;
            idx.ImageRoot ??= imageRoot;
            idx.Source ??= source;
            if (fill) idx.WriteManifest();
            if (idx._strayItemLines) idx.RewriteItems();   // drop lines past the manifest
            idx.DeleteUnlisted();
            return idx;
        }
        var cols = Kinds.ToDictionary(k => k, k => new Collection { Kind = k });
        var fresh = new EmbeddingIndex(folder, fingerprint, dim, dtype, imageRoot, cols) { Source = source };
        AtomicFile.WriteAllText(System.IO.Path.Combine(folder, ItemsFile), "");
        fresh.WriteManifest();
        return fresh;
    }

    /// <summary>What a resumed build refreshes: rows to remove per kind, images to encode again, items to restamp, and why.</summary>
    /// <param name="Rows">rows to remove at once: images gone, captions gone or changed</param>
    /// <param name="ChangedImageIds">ids of indexed images whose file differs in size or write time from when it was indexed (and in content, where its SHA-256 was recorded), or whose id now names another path: encoded again, each old row replaced when its new vector lands (<see cref="Append"/>'s replaces)</param>
    /// <param name="ChangedImages">their count</param>
    /// <param name="GoneImages">indexed images no longer in the source, or whose file is gone: removed</param>
    /// <param name="ChangedCaptions">captions whose id now holds another text: removed and encoded again</param>
    /// <param name="GoneCaptions">captions no longer in the source: removed</param>
    /// <param name="Restamped">images whose stamp changed but whose content did not: their items with the new stamp (kept, not encoded again)</param>
    /// <param name="Unstamped">indexed images without a recorded stamp (indexes from before 2026-11-29): changes to them cannot be seen</param>
    /// <param name="RehashUnknown">with rehash: the changed images among <paramref name="ChangedImages"/> that were indexed
    /// without a stamp or a hash, so their bytes could not be compared (encoded again all the same)</param>
    /// <param name="Unreadable">indexed images whose stamp changed but whose file cannot be read now, or whose folder cannot be listed or entered, or is missing: kept as they are (unknown)</param>
    public sealed record Refresh(IReadOnlyDictionary<string, List<int>> Rows, int ChangedImages, int GoneImages, int ChangedCaptions, int GoneCaptions,
        IReadOnlyList<IndexItem> Restamped, int Unstamped, IReadOnlySet<string> ChangedImageIds, int Unreadable = 0, int RehashUnknown = 0)
    {
        /// <summary>Whether rows go or items are restamped now (changed images are replaced later, as they are encoded).</summary>
        public bool Any => Rows.Values.Any(r => r.Count > 0) || Restamped.Count > 0;

        /// <summary>Whether the images gone are more than half of the <paramref name="indexed"/> ones (at least two): what an
        /// image folder moved or unmounted looks like, refused unless the user says otherwise.</summary>
        public bool RemovesMostOf(int indexed) => GoneImages >= 2 && GoneImages * 2 > indexed;
    }

    /// <summary>
    /// Compares the indexed items with what the source holds now: <paramref name="images"/> (id -> path under
    /// <paramref name="root"/>) and <paramref name="captions"/> (id -> text). An image is stale when its id is gone, names
    /// another path, or its file is gone or differs in size or write time from the indexed one (items of indexes written
    /// before files were stamped are compared by id and path only); a caption when its id is gone or its text differs.
    /// </summary>
    /// <param name="unknown">image paths whose presence cannot be told (under a folder that could not be read): left as they are</param>
    /// <param name="progress">called with the count of indexed images checked so far, every 1024 (every 64 with
    /// <paramref name="rehash"/>) and at the end (a check reads each file's stamp, and hashes the files whose stamp changed)</param>
    /// <param name="cancel">checked before each image</param>
    /// <param name="rehash">hash every stamped image, not only those whose stamp changed: an image whose bytes differ from
    /// the indexed ones is changed even where its size and write time are the recorded ones (a file restored from a backup
    /// with its old times); one indexed without a recorded hash or stamp counts as changed (encoded again, it gets both)</param>
    public Refresh PlanRefresh(string root, IReadOnlyDictionary<string, string> images, IReadOnlyDictionary<string, string> captions,
        Func<string, bool>? unknown = null, Action<int>? progress = null, CancellationToken cancel = default, bool rehash = false)
    {
        int unreadable = 0;
        var listings = new Dictionary<string, HashSet<string>?>(StringComparer.Ordinal);   // each folder listed once
        int checkedImages = 0;
        var rows = Kinds.ToDictionary(k => k, _ => new List<int>());
        var restamped = new List<IndexItem>();
        var changedIds = new HashSet<string>(StringComparer.Ordinal);
        int changed = 0, gone = 0, capChanged = 0, capGone = 0, unstamped = 0, rehashUnknown = 0;
        foreach (var it in _items.Values.OrderBy(i => i.Row))
        {
            if (it.Kind == "image")
            {
                cancel.ThrowIfCancellationRequested();
                if (++checkedImages % (rehash ? 64 : 1024) == 0) progress?.Invoke(checkedImages);
                if (it.Path is not null && unknown?.Invoke(it.Path) == true) continue;
                if (!images.TryGetValue(it.Id, out var path)) { gone++; rows["image"].Add(it.Row); continue; }
                if (path != it.Path) { changed++; changedIds.Add(it.Id); continue; }
                if (it.Bytes is null && !rehash) { unstamped++; continue; }
                string file = System.IO.Path.Combine(root, path);
                var (bytes, modified) = FileStamp(file);
                // Not there: gone if its folder lists its entries without it; unknown (kept) if the folder cannot be
                // listed or entered, or is not there (moved, unmounted: the source still names the file).
                if (bytes is null)
                {
                    if (ImageFiles.Listed(file, listings) == false) { gone++; rows["image"].Add(it.Row); }
                    else unreadable++;
                }
                else if (it.Bytes is null)
                {
                    // Indexed before files were stamped, and rehashed: its bytes cannot be compared, so it is encoded again
                    // (and stamped then). One that cannot be read now is unknown: kept.
                    if (ImageFiles.CanOpen(file)) { changed++; rehashUnknown++; changedIds.Add(it.Id); }
                    else unreadable++;
                }
                else if (rehash || bytes != it.Bytes || it.ModifiedMs is not null && modified != it.ModifiedMs)
                {
                    // Touched, or copied without its times: the same bytes keep their vector, under the new stamp (only
                    // a file of the same size is hashed). A file that cannot be read now (permissions) is unknown: kept.
                    string? sha = bytes == it.Bytes ? ContentSha256(file) : ImageFiles.CanOpen(file) ? "" : null;
                    bool stampSame = bytes == it.Bytes && (it.ModifiedMs is null || modified == it.ModifiedMs);
                    if (sha is null) unreadable++;
                    else if (sha == it.Sha256) { if (!stampSame) restamped.Add(it with { Bytes = bytes, ModifiedMs = modified }); }
                    else
                    {
                        changed++;
                        changedIds.Add(it.Id);
                        if (rehash && it.Sha256 is null && stampSame) rehashUnknown++;   // (looked at only because of --rehash)
                    }
                }
            }
            else if (it.Kind == "caption")
            {
                if (!captions.TryGetValue(it.Id, out var text)) { capGone++; rows["caption"].Add(it.Row); }
                else if (text != it.Caption) { capChanged++; rows["caption"].Add(it.Row); }
            }
        }
        progress?.Invoke(checkedImages);
        return new Refresh(rows, changed, gone, capChanged, capGone, restamped, unstamped, changedIds, unreadable, rehashUnknown);
    }

    /// <summary>The SHA-256 of bytes as the manifest and the items file record it (lower-case hex).</summary>
    public static string Sha256Hex(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The SHA-256 of a file's bytes (hex), or null when it cannot be read.</summary>
    public static string? ContentSha256(string path)
    {
        try
        {
            return Sha256Hex(ImageFiles.ReadRegularFile(path));
        }
        catch (BadInputException)
        {
            return null;
        }
    }

    /// <summary>A file's size and last write time (Unix ms, UTC) as an <see cref="IndexItem"/> records them; nulls when it
    /// does not exist. A symlink's stamp is its final target's (the link's own would not change when the image does).</summary>
    public static (long? Bytes, long? ModifiedMs) FileStamp(string path)
    {
        var f = new FileInfo(path);
        if (f.LinkTarget is not null)
        {
            // Resolved by the kernel (.NET folds a relative target's '..' as text); a link to nothing: no image there.
            if (Paths.RealOrNull(path) is not { } real) return (null, null);
            f = new FileInfo(real);
        }
        return f.Exists ? (f.Length, new DateTimeOffset(f.LastWriteTimeUtc).ToUnixTimeMilliseconds()) : (null, null);
    }

    /// <summary>Whether two recorded sources are the same: equal, or "data FILE, split NAME" of one split of files that
    /// are the same file (a symlink, another spelling of the path).</summary>
    public static bool SameSource(string a, string b)
    {
        if (a == b) return true;
        static (string File, string Split)? Parse(string s)
        {
            int at = s.LastIndexOf(", split ", StringComparison.Ordinal);
            return s.StartsWith("data ", StringComparison.Ordinal) && at > 5 ? (s[5..at], s[(at + ", split ".Length)..]) : null;
        }
        return Parse(a) is { } x && Parse(b) is { } y && x.Split == y.Split && KernelVL.IO.Paths.Same(x.File, y.File);
    }

    /// <summary>The indexed items of a kind, in row order.</summary>
    public IEnumerable<IndexItem> ItemsOf(string kind) => _items.Values.Where(i => i.Kind == kind).OrderBy(i => i.Row);

    /// <summary>Row of each indexed item of a kind, by id.</summary>
    public Dictionary<string, int> RowsById(string kind) =>
        _items.Values.Where(i => i.Kind == kind).ToDictionary(i => i.Id, i => i.Row, StringComparer.Ordinal);

    /// <summary>Ids already indexed (a resumed build skips them).</summary>
    public HashSet<string> IndexedIds(string kind) => _items.Values.Where(i => i.Kind == kind).Select(i => i.Id).ToHashSet(StringComparer.Ordinal);

    /// <summary>Appends one segment of vectors [items.Count, Dim] (row-major) and its items; durable once it returns.</summary>
    /// <param name="replaces">rows of this kind that these items replace (a changed image's old vector): removed in the
    /// same manifest switch that adds the segment, so a search finds either the old vector or the new one, never neither
    /// nor both</param>
    public void Append(string kind, IReadOnlyList<IndexItem> items, ReadOnlySpan<float> vectors, IReadOnlyCollection<int>? replaces = null)
    {
        if (!_collections.TryGetValue(kind, out var c)) throw new ArgumentException($"unknown kind {kind}");
        if (vectors.Length != items.Count * Dim) throw new ShapeException($"{vectors.Length} values for {items.Count} vectors of {Dim}");
        if (items.Count == 0 && replaces is not { Count: > 0 }) return;
        int start = c.Rows;
        var bytes = new byte[(long)items.Count * Dim * ElementSize];
        if (DType == VectorDType.F32) System.Runtime.InteropServices.MemoryMarshal.AsBytes(vectors).CopyTo(bytes);
        else
            for (int i = 0; i < vectors.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), (Half)vectors[i]);
        if (replaces is { Count: > 0 })
        {
            var ids = items.Select(i => i.Id).ToHashSet(StringComparer.Ordinal);
            foreach (int row in replaces)
                if (!_items.TryGetValue((kind, row), out var old) || !ids.Contains(old.Id))
                    throw new ArgumentException($"replaces: {kind} row {row} is not an item these items replace (same id)", nameof(replaces));
            var rows = new Dictionary<string, List<int>> { [kind] = replaces.ToList() };
            Switch(rows, null, items.Count > 0 ? (kind, bytes, items) : null);
            return;
        }
        var segment = WriteSegment(kind, TakeSegmentNumber(), bytes);
        // Items first (lines past the manifest are ignored), then the manifest that makes the segment part of the index.
        using (var f = new FileStream(System.IO.Path.Combine(Folder, ItemsFileName), FileMode.Append, FileAccess.Write))
        using (var w = new StreamWriter(f))
        {
            for (int i = 0; i < items.Count; i++) w.WriteLine(ItemJson(items[i] with { Kind = kind, Row = start + i }));
            w.Flush();
            f.Flush(flushToDisk: true);
        }
        c.Segments.Add(segment);
        for (int i = 0; i < items.Count; i++) _items[(kind, start + i)] = items[i] with { Kind = kind, Row = start + i };
        WriteManifest();
    }

    /// <summary>Writes a segment file seg-KIND-NNNNN of <paramref name="bytes"/> (whole rows) and returns its manifest entry.</summary>
    private Segment WriteSegment(string kind, int number, byte[] bytes)
    {
        string file = $"seg-{kind}-{number:D5}.{(DType == VectorDType.F16 ? "f16" : "f32")}";
        AtomicFile.WriteAllBytes(System.IO.Path.Combine(Folder, file), bytes);
        float? maxNorm = null;
        if (DType == VectorDType.F16 && RowNorms.MaxNormUpperBound(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes), Dim) is var mn && float.IsFinite(mn))
            maxNorm = mn;
        return new Segment(file, (int)(bytes.LongLength / ((long)Dim * ElementSize)), Sha256Hex(bytes), maxNorm);
    }

    /// <summary>The largest segment a build writes or merges into, in bytes (one array in memory).</summary>
    public const long MaxSegmentBytes = 1L << 30;

    private int _nextSegment;          // the manifest's next_segment: numbers handed out are never handed out again
    private bool _segmentFloorChecked;

    /// <summary>
    /// A segment number never used before in this folder: past every segment file listed or on disk (checked once) and
    /// every number handed out before (the manifest's next_segment). A removed or merged segment's name is never taken
    /// again, so a search that opened an earlier manifest never maps another file under a name it listed.
    /// </summary>
    private int TakeSegmentNumber()
    {
        if (!_segmentFloorChecked)
        {
            var files = _collections.Values.SelectMany(c => c.Segments).Select(x => x.File)
                .Concat(Directory.GetFiles(Folder, "seg-*").Select(f => System.IO.Path.GetFileName(f)!));
            foreach (var file in files)
            {
                // seg-KIND-NNNNN.EXT
                string stem = System.IO.Path.GetFileNameWithoutExtension(file);
                int dash = stem.LastIndexOf('-');
                // Numbers of up to 9 digits (as IsSegmentFileName): a stray seg-image-2147483646 must not wrap the counter.
                if (dash >= 0 && int.TryParse(stem.AsSpan(dash + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) && n < 1_000_000_000)
                    _nextSegment = Math.Max(_nextSegment, n + 1);
            }
            _segmentFloorChecked = true;
        }
        return _nextSegment++;
    }

    private static bool IsItemsFileName(string name) =>
        name == ItemsFile || name.StartsWith("items-", StringComparison.Ordinal) && name.EndsWith(".jsonl", StringComparison.Ordinal)
            && name.Length > "items-.jsonl".Length && name.Length <= "items-.jsonl".Length + 9 && name["items-".Length..^".jsonl".Length].All(char.IsAsciiDigit);

    /// <summary>
    /// Removes rows from collections (kind -> rows): each segment holding one is written anew without it under a new name
    /// (one that held nothing else is dropped), the rows after it move up, and the items go to a new items file; then the
    /// manifest is switched to the new segments and items file in one atomic replace, and the files it no longer lists are
    /// deleted. A kill at any moment leaves the index as it was before or after (files written before the switch are
    /// deleted by the next resume). Rows not in the collection are an error.
    /// </summary>
    /// <param name="restamp">items (kind, row as they are now) to write with new stamps in the same switch</param>
    public void Remove(IReadOnlyDictionary<string, List<int>> rows, IReadOnlyCollection<IndexItem>? restamp = null) => Switch(rows, restamp, null);

    /// <summary>Rows removed, items restamped and a segment appended (vectors as bytes, and its items) in one switch.</summary>
    private void Switch(IReadOnlyDictionary<string, List<int>> rows, IReadOnlyCollection<IndexItem>? restamp, (string Kind, byte[] Bytes, IReadOnlyList<IndexItem> Items)? append)
    {
        // Every kind's rows are checked, and every new segment written, before the object or the manifest changes: a
        // failure part way leaves both as they were (the files written are deleted by the next resume).
        var gone = new Dictionary<string, HashSet<int>>();
        foreach (var (kind, c) in _collections)
        {
            gone[kind] = rows.TryGetValue(kind, out var r) ? r.ToHashSet() : [];
            if (gone[kind].Any(x => x < 0 || x >= c.Rows)) throw new ArgumentOutOfRangeException(nameof(rows), $"{kind}: rows to remove must be in 0..{c.Rows - 1}");
        }
        var updated = (restamp ?? []).ToDictionary(i => (i.Kind, i.Row));
        foreach (var key in updated.Keys)
            if (!_items.TryGetValue(key, out var old) || old.Id != updated[key].Id || gone[key.Kind].Contains(key.Row))
                throw new ArgumentException($"restamp: {key.Kind} row {key.Row} is not an item kept by this removal", nameof(restamp));
        if (gone.Values.All(g => g.Count == 0) && updated.Count == 0 && append is null) return;
        var dropped = new List<string>();
        var renumbered = new Dictionary<(string, int), IndexItem>();
        var newSegments = new Dictionary<string, List<Segment>>();
        long rowBytes = (long)Dim * ElementSize;
        foreach (var (kind, c) in _collections)
        {
            var segments = newSegments[kind] = new List<Segment>();
            int oldBase = 0, newRow = 0;
            foreach (var seg in c.Segments)
            {
                var keep = Enumerable.Range(oldBase, seg.Rows).Where(x => !gone[kind].Contains(x)).ToList();
                if (keep.Count == seg.Rows) segments.Add(seg);
                else
                {
                    dropped.Add(seg.File);
                    if (keep.Count > 0)
                    {
                        var old = ReadSegment(seg);
                        var bytes = new byte[keep.Count * rowBytes];
                        for (int i = 0; i < keep.Count; i++) Array.Copy(old, (keep[i] - oldBase) * rowBytes, bytes, i * rowBytes, rowBytes);
                        segments.Add(WriteSegment(kind, TakeSegmentNumber(), bytes));
                    }
                }
                foreach (int x in keep) { renumbered[(kind, newRow)] = updated.GetValueOrDefault((kind, x), _items[(kind, x)]) with { Row = newRow }; newRow++; }
                oldBase += seg.Rows;
            }
            if (append is { } a && a.Kind == kind)
            {
                segments.Add(WriteSegment(kind, TakeSegmentNumber(), a.Bytes));
                foreach (var it in a.Items) { renumbered[(kind, newRow)] = it with { Kind = kind, Row = newRow }; newRow++; }
            }
        }
        string oldItems = ItemsFileName;
        int generation = oldItems == ItemsFile ? 0 : int.Parse(oldItems["items-".Length..^".jsonl".Length], System.Globalization.CultureInfo.InvariantCulture);
        string newItems = $"items-{generation + 1:D5}.jsonl";
        AtomicFile.WriteAllText(System.IO.Path.Combine(Folder, newItems), ItemsText(renumbered.Values));
        // The switch: the object, then the manifest that makes it the index.
        foreach (var (kind, c) in _collections)
        {
            c.Segments.Clear();
            c.Segments.AddRange(newSegments[kind]);
        }
        _items.Clear();
        foreach (var (key, it) in renumbered) _items[key] = it;
        ItemsFileName = newItems;
        WriteManifest();
        DeleteQuietly(dropped.Append(oldItems));
    }

    /// <summary>A listed segment's bytes, its length checked against the manifest.</summary>
    private byte[] ReadSegment(Segment seg)
    {
        string path = System.IO.Path.Combine(Folder, seg.File);
        var bytes = File.ReadAllBytes(path);
        if (bytes.LongLength != (long)seg.Rows * Dim * ElementSize) throw new BadInputException($"{path}: {bytes.LongLength} bytes, the manifest says {seg.Rows} rows x {Dim} x {ElementSize}");
        return bytes;
    }

    /// <summary>Deletes files the manifest no longer lists; one that cannot be deleted now is left to the next resume.</summary>
    private void DeleteQuietly(IEnumerable<string> files)
    {
        foreach (var f in files)
            try { File.Delete(System.IO.Path.Combine(Folder, f)); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    /// <summary>
    /// Merges runs of adjacent segments whose rows fit in <paramref name="segmentRows"/> together into one segment each
    /// (rows and items unchanged): what resumed builds and refreshes leave (a partial segment per run, segments shrunk by
    /// removals) goes back to few full ones. The manifest switches to the merged segments in one atomic replace, then the
    /// merged ones are deleted. Returns how many segments were merged into how many.
    /// </summary>
    /// <param name="maxBytes">the largest merged segment in bytes (one array in memory), whatever <paramref name="segmentRows"/> asks</param>
    public (int Merged, int Into) Compact(int segmentRows, long maxBytes = MaxSegmentBytes)
    {
        if (segmentRows < 1) throw new ArgumentOutOfRangeException(nameof(segmentRows), "must be positive");
        long rowBytes = (long)Dim * ElementSize;
        long cap = Math.Max(1, Math.Min(segmentRows, maxBytes / rowBytes));
        var dropped = new List<string>();
        var newSegments = new Dictionary<string, List<Segment>>();
        int into = 0;
        foreach (var c in _collections.Values)
        {
            var segments = newSegments[c.Kind] = new List<Segment>();
            for (int i = 0; i < c.Segments.Count;)
            {
                int j = i;
                long rows = c.Segments[i].Rows;
                while (j + 1 < c.Segments.Count && rows + c.Segments[j + 1].Rows <= cap) rows += c.Segments[++j].Rows;
                if (j == i) segments.Add(c.Segments[i]);
                else
                {
                    var bytes = new byte[rows * rowBytes];
                    long at = 0;
                    for (int x = i; x <= j; x++)
                    {
                        var part = ReadSegment(c.Segments[x]);
                        part.CopyTo(bytes, at);
                        at += part.LongLength;
                        dropped.Add(c.Segments[x].File);
                    }
                    segments.Add(WriteSegment(c.Kind, TakeSegmentNumber(), bytes));
                    into++;
                }
                i = j + 1;
            }
        }
        if (dropped.Count == 0) return (0, 0);
        foreach (var c in _collections.Values)
        {
            c.Segments.Clear();
            c.Segments.AddRange(newSegments[c.Kind]);
        }
        WriteManifest();
        DeleteQuietly(dropped);
        return (dropped.Count, into);
    }

    /// <summary>Deletes the segment and items files the manifest does not list (left by a build killed before its manifest
    /// switched), and the temporary files of writes a kill cut short (.NAME.PID.GUID.tmp). Other files are left alone.</summary>
    private void DeleteUnlisted()
    {
        var listed = _collections.Values.SelectMany(c => c.Segments).Select(s => s.File).Append(ItemsFileName).ToHashSet(StringComparer.Ordinal);
        foreach (var f in Directory.GetFiles(Folder))
        {
            string name = System.IO.Path.GetFileName(f);
            if (!listed.Contains(name) && (IsSegmentFileName(name) || IsItemsFileName(name) || IsTemporaryOfOurs(name))) DeleteQuietly([name]);
        }
    }

    private static readonly System.Text.RegularExpressions.Regex SegmentName = new(@"^seg-(image|caption)-[0-9]{1,9}\.(f16|f32)$");
    private static readonly System.Text.RegularExpressions.Regex TemporaryName =
        new(@"^\.(manifest\.json|items(-[0-9]{1,9})?\.jsonl|seg-(image|caption)-[0-9]{1,9}\.(f16|f32))\.[0-9]+\.[0-9a-f]{32}\.tmp$");
    private static bool IsSegmentFileName(string name) => SegmentName.IsMatch(name);
    private static bool IsTemporaryOfOurs(string name) => TemporaryName.IsMatch(name);

    private static string ItemJson(IndexItem it)
    {
        var o = new JsonObject { ["kind"] = it.Kind, ["row"] = it.Row, ["id"] = it.Id };
        if (it.Path is not null) o["path"] = it.Path;
        if (it.Caption is not null) o["caption"] = it.Caption;
        if (it.ImageId is not null) o["image_id"] = it.ImageId;
        if (it.Bytes is { } b) o["bytes"] = b;
        if (it.ModifiedMs is { } t) o["modified_ms"] = t;
        if (it.Sha256 is { } h) o["sha256"] = h;
        return o.ToJsonString();
    }

    private void RewriteItems() => AtomicFile.WriteAllText(System.IO.Path.Combine(Folder, ItemsFileName), ItemsText(_items.Values));

    private static string ItemsText(IEnumerable<IndexItem> items) =>
        string.Concat(items.OrderBy(i => i.Kind, StringComparer.Ordinal).ThenBy(i => i.Row).Select(i => ItemJson(i) + "\n"));

    private static JsonNode SegmentJson(Segment s)
    {
        var o = new JsonObject { ["file"] = s.File, ["rows"] = s.Rows, ["sha256"] = s.Sha256 };
        if (s.MaxNorm is { } m) o["max_norm"] = m;
        return o;
    }

    private void WriteManifest()
    {
        var cols = new JsonObject();
        foreach (var c in _collections.Values)
            cols[c.Kind] = new JsonObject
            {
                ["rows"] = c.Rows,
                ["segments"] = new JsonArray(c.Segments.Select(SegmentJson).ToArray()),
            };
        var m = new JsonObject
        {
            // Version 1 while the items file is items.jsonl (readable by builds from before items_file), 2 after.
            ["format_version"] = ItemsFileName == ItemsFile ? 1 : 2,
            ["format"] = "kernelvl embedding index: per collection, segments of row-major little-endian vectors (dtype, dim below), " +
                         "L2-normalised, scored by inner product; an f16 segment's max_norm bounds its rows' L2 norms from above; " +
                         "the items file (items_file) maps (kind, row) to the item, one JSON object a line; next_segment numbers the next segment file",
            ["model_fingerprint"] = ModelFingerprint,
            ["dim"] = Dim,
            ["dtype"] = DType == VectorDType.F16 ? "f16" : "f32",
            ["byte_order"] = "little",
            ["metric"] = "inner_product",
            ["normalized"] = true,
            ["image_root"] = ImageRoot,
            ["source"] = Source,
            ["items_file"] = ItemsFileName,
            ["next_segment"] = _nextSegment,
            ["collections"] = cols,
        };
        AtomicFile.WriteAllText(System.IO.Path.Combine(Folder, ManifestFile), m.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    // ---- search ----

    /// <summary>
    /// Exact top-k by inner product of queries [Q, Dim] against one collection, on a backend: the segments are memory-mapped
    /// and streamed in blocks of rows through the backend's top-k, the per-block winners merged (ties to the lower row).
    /// A host backend that reads rows where they lie (<see cref="Backends.IHostRowsTopK"/>: the cpu backend) gets each
    /// segment's mapped rows, f32 or f16, as they are, a whole segment a call. Otherwise f16 segments go to a backend that
    /// takes f16 rows (<see cref="Backends.IHalfRowsTopK"/>: the cuda backend uploads half the bytes and runs its f16
    /// kernels), and the rest are widened to f32 into one block tensor.
    /// <paramref name="blockRows"/>: rows per block (default: a whole segment on the host rows path, the backend's
    /// preference on the f16 path, else 16384).
    /// <paramref name="halfRows"/>: true / false forces the f16 path on or off, and the host rows path off (tests); null
    /// lets the backend choose.
    /// Returns per query its hits, best first.
    /// </summary>
    public List<SearchHit>[] Search(IBackend backend, string kind, float[] queries, int k, int? blockRows = null, bool? halfRows = null)
    {
        var c = _collections[kind];
        int q = queries.Length / Dim;
        if (q * Dim != queries.Length || q == 0) throw new ShapeException($"{queries.Length} query values for vectors of {Dim}");
        if (c.Rows == 0) throw new BadInputException($"{Folder}: the index holds no {kind} vectors");
        k = Math.Min(k, c.Rows);
        if (k < 1 || k > Contract.MaxTopK) throw new BadInputException($"k must be in 1..{Contract.MaxTopK}, got {k}");
        if (blockRows is < 1) throw new BadInputException($"blockRows must be positive, got {blockRows}");
        var bestS = new float[q][];
        var bestI = new int[q][];
        for (int i = 0; i < q; i++) { bestS[i] = []; bestI[i] = []; }
        var hostRows = halfRows is null ? backend as Backends.IHostRowsTopK : null;
        var half = DType == VectorDType.F16 && hostRows is null ? backend as Backends.IHalfRowsTopK : null;
        if (halfRows == false || (halfRows is null && half?.PreferredHalfRows is null or 0)) half = null;
        int preferred = half?.PreferredHalfRows ?? 0;
        int maxBlock = Math.Min(blockRows ?? (hostRows is not null ? int.MaxValue : preferred > 0 ? preferred : 16384), c.Segments.Max(x => x.Rows));
        using var _ = Tape.NoGrad();
        using var scope = new TensorScope();
        var qt = backend.Empty(new Shape(q, Dim));
        backend.CopyFromHost(queries, qt);
        // The f32 path: one block buffer for the whole search; on a host backend the rows are widened straight into it,
        // elsewhere through a staging array and one upload per block.
        Tensor? block = half is null && hostRows is null ? backend.Empty(new Shape(maxBlock, Dim)) : null;
        bool host = block?.Storage is CpuStorage;
        var staging = block is not null && !host ? new float[(long)maxBlock * Dim] : null;
        int rowBase = 0;
        foreach (var seg in c.Segments)
        {
            using var mapped = MapSegment(seg);
            for (int s = 0; s < seg.Rows; s += maxBlock)
            {
                int n = Math.Min(maxBlock, seg.Rows - s);
                using var inner = new TensorScope();
                int kk = Math.Min(k, n);
                var sc = backend.Empty(new Shape(q, kk));                         // [Q, kk]
                var ix = backend.Empty(new Shape(q, kk), Tensors.DType.I32);      // [Q, kk]
                // Rows [s, s + n) straight from the mapping: to a host backend as they are; as halves to a backend that
                // takes them (with the segment's norm bound, which holds for any of its rows); else widened to f32.
                if (hostRows is not null && DType == VectorDType.F16) hostRows.TopKRows(qt, mapped.Halves(s, n), kk, sc, ix);
                else if (hostRows is not null) hostRows.TopKRows(qt, mapped.Floats(s, n), kk, sc, ix);
                else if (half is not null) half.TopKHalfRows(qt, mapped.Halves(s, n), kk, sc, ix, seg.MaxNorm);
                else
                {
                    var corpus = n == maxBlock ? block! : block!.Narrow0(0, n);
                    if (host) ReadRows(mapped, s, n, corpus.Span);
                    else
                    {
                        ReadRows(mapped, s, n, staging);
                        backend.CopyFromHost(staging.AsSpan(0, n * Dim), corpus);
                    }
                    backend.TopK(qt, corpus, kk, sc, ix);
                }
                var hs = new float[q * kk];
                var hi = new int[q * kk];
                backend.CopyToHost(sc, hs);
                backend.CopyToHost(ix, hi);
                for (int i = 0; i < q; i++) Merge(ref bestS[i], ref bestI[i], hs.AsSpan(i * kk, kk), hi.AsSpan(i * kk, kk), rowBase + s, k);
            }
            rowBase += seg.Rows;
        }
        var result = new List<SearchHit>[q];
        for (int i = 0; i < q; i++)
            result[i] = Enumerable.Range(0, bestS[i].Length).Select(j => new SearchHit(j + 1, bestS[i][j], Item(kind, bestI[i][j]))).ToList();
        return result;
    }

    /// <summary>Maps a segment to read. One removed since the index was opened (a build refreshing or merging it), or whose
    /// length no longer matches the manifest this object read, is an <see cref="IndexChangedException"/>: open again.</summary>
    private MappedSegment MapSegment(Segment seg)
    {
        string path = System.IO.Path.Combine(Folder, seg.File);
        FileStream fs;
        try
        {
            fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (FileNotFoundException)
        {
            throw new IndexChangedException($"{path}: segment removed since the index was opened (a build is refreshing the index): search again");
        }
        long expected = (long)seg.Rows * Dim * ElementSize;
        if (fs.Length != expected)
        {
            long got = fs.Length;
            fs.Dispose();
            throw new IndexChangedException($"{path}: {got} bytes, the manifest read when the index was opened says {expected}: search again");
        }
        return new MappedSegment(MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false), Dim);
    }

    /// <summary>A segment mapped for reading, its memory held (pointer acquired) until disposed.</summary>
    private sealed unsafe class MappedSegment : IDisposable
    {
        private readonly MemoryMappedFile _map;
        private readonly MemoryMappedViewAccessor _view;
        private readonly byte* _base;
        private readonly int _dim;

        public MappedSegment(MemoryMappedFile map, int dim)
        {
            _map = map;
            _dim = dim;
            try
            {
                _view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            }
            catch
            {
                map.Dispose();
                throw;
            }
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;
        }

        /// <summary>Rows [start, start + n) of an f32 segment.</summary>
        public ReadOnlySpan<float> Floats(int start, int n) => new(_base + (long)start * _dim * 4, checked(n * _dim));

        /// <summary>Rows [start, start + n) of an f16 segment.</summary>
        public ReadOnlySpan<Half> Halves(int start, int n) => new(_base + (long)start * _dim * 2, checked(n * _dim));

        public void Dispose()
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
            _map.Dispose();
        }
    }

    /// <summary>Rows [start, start + n) of a segment widened to f32 into <paramref name="dst"/>.</summary>
    private unsafe void ReadRows(MappedSegment mapped, int start, int n, Span<float> dst)
    {
        int count = n * Dim;
        if (dst.Length < count) throw new ArgumentException($"{count} values do not fit in {dst.Length}", nameof(dst));
        if (DType == VectorDType.F32) mapped.Floats(start, n).CopyTo(dst);
        else
            fixed (Half* h = mapped.Halves(start, n))
            fixed (float* d = dst)
                Backends.Cpu.CpuMath.WidenHalves(h, d, count);
    }

    /// <summary>Merges a block's top list (rows offset by <paramref name="offset"/>) into the running best: score descending, ties to the lower row.</summary>
    private static void Merge(ref float[] s, ref int[] ix, ReadOnlySpan<float> bs, ReadOnlySpan<int> bi, int offset, int k)
    {
        int n = Math.Min(k, s.Length + bs.Length);
        var ns = new float[n];
        var ni = new int[n];
        int a = 0, b = 0;
        for (int o = 0; o < n; o++)
        {
            bool takeA = b >= bs.Length || (a < s.Length && (s[a] > bs[b] || (s[a] == bs[b] && ix[a] < bi[b] + offset)));
            if (takeA) { ns[o] = s[a]; ni[o] = ix[a]; a++; }
            else { ns[o] = bs[b]; ni[o] = bi[b] + offset; b++; }
        }
        s = ns;
        ix = ni;
    }

    /// <summary>All vectors of a collection as f32 [Rows, Dim] (evaluation; small collections).</summary>
    public float[] ReadAll(string kind)
    {
        var c = _collections[kind];
        var r = new float[(long)c.Rows * Dim];
        int at = 0;
        foreach (var seg in c.Segments)
        {
            using var mapped = MapSegment(seg);
            var tmp = new float[seg.Rows * Dim];
            ReadRows(mapped, 0, seg.Rows, tmp);
            tmp.CopyTo(r, (long)at * Dim);
            at += seg.Rows;
        }
        return r;
    }

}
