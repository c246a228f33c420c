using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.IO;

namespace KernelVL.Data;

/// <summary>
/// One image of a Karpathy split: its file (relative to the image root) and its captions (usually five). Group (optional,
/// this project's "kernelvl_group" field) ties images that are each other's hard negatives (the synthetic set's
/// attribute-swapped twins); training keeps a group in one batch.
/// </summary>
public sealed record DatasetImage(int Id, string Path, string Split, IReadOnlyList<string> Captions, int? Group = null);

/// <summary>
/// An image-caption dataset in the Karpathy split format (dataset_coco.json / dataset_flickr30k.json):
/// {"images": [{"filepath"?, "filename", "split", "imgid"?, "sentences": [{"raw": ...}, ...]}, ...]}. "restval" counts as
/// train. Malformed files are a <see cref="BadInputException"/> naming the file and the entry.
/// </summary>
public sealed class KarpathyDataset
{
    public string Source { get; }
    public IReadOnlyList<DatasetImage> Images { get; }

    /// <summary>What was skipped while reading (empty captions, images left without any): empty unless the file had such entries.</summary>
    public IReadOnlyList<string> Problems { get; }

    public KarpathyDataset(string source, IReadOnlyList<DatasetImage> images, IReadOnlyList<string>? problems = null)
    {
        Source = source;
        Images = images;
        Problems = problems ?? [];
    }

    /// <summary>
    /// Reads the file. Empty captions and images without captions are skipped and listed in <see cref="Problems"/>, or
    /// are an error with <paramref name="strict"/>; a file that is not in the format is always an error.
    /// </summary>
    public static KarpathyDataset Load(string path, bool strict = false)
    {
        if (Directory.Exists(path)) throw new BadInputException($"{path}: is a folder, not a dataset's JSON file");
        if (!File.Exists(path)) throw new BadInputException($"{path}: no such file");
        JsonNode? root;
        try
        {
            using var s = File.OpenRead(path);
            root = JsonNode.Parse(s);
        }
        catch (JsonException e)
        {
            throw new BadInputException($"{path}: not valid JSON ({e.Message})");
        }
        // System.Text.Json checks a string's UTF-8 and an object's keys only when they are read: a caption with invalid
        // UTF-8 or a lone surrogate escape, or a key given twice, surfaces below as an InvalidOperationException or
        // ArgumentException, which becomes a bad-input error naming the file and the entry.
        string at = "the top level";
        try
        {
            return Read(path, root, strict, ref at);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            throw new BadInputException($"{path}: {at}: not valid JSON text ({e.Message})");
        }
    }

    private static KarpathyDataset Read(string path, JsonNode? root, bool strict, ref string at)
    {
        if (root is not JsonObject o || o["images"] is not JsonArray arr) throw new BadInputException($"{path}: no \"images\" array (expected the Karpathy split format)");
        var images = new List<DatasetImage>(arr.Count);
        var fileOf = new Dictionary<(string Split, string File), int>();   // an image file listed twice in one split
        var problems = new List<string>();
        var firstOf = new Dictionary<int, int>();   // imgid -> the first entry that has it
        void Problem(string message)
        {
            if (strict) throw new BadInputException(message);
            problems.Add(message);
        }
        for (int i = 0; i < arr.Count; i++)
        {
            at = $"images[{i}]";
            string Where() => $"{path}: images[{i}]";
            if (arr[i] is not JsonObject im) throw new BadInputException($"{Where()} is not an object");
            string? file = Str(im, "filename", Where) ?? throw new BadInputException($"{Where()} has no filename");
            string? dir = Str(im, "filepath", Where);
            string split = Str(im, "split", Where) ?? throw new BadInputException($"{Where()} has no split");
            if (split == "restval") split = "train";
            if (im["sentences"] is not JsonArray sents) throw new BadInputException($"{Where()} ({file}) has no sentences array");
            var caps = new List<string>(sents.Count);
            for (int k = 0; k < sents.Count; k++)
            {
                var s = sents[k];
                if (s is JsonObject so0 && so0["raw"] is { } r0 && r0.GetValueKind() != JsonValueKind.String && r0.GetValueKind() != JsonValueKind.Null)
                {
                    Problem($"{Where()} ({file}): sentence {k}'s \"raw\" is {Kind(r0)}, not a string");
                    continue;
                }
                string? raw = s is JsonObject so ? Str(so, "raw") : s is JsonValue sv && sv.TryGetValue(out string? plain) ? plain : null;   // a sentence may be a plain string
                if (raw is null && s is JsonObject st && st["tokens"] is JsonArray toks) raw = string.Join(' ', toks.Select(t => t?.ToString()));
                if (string.IsNullOrWhiteSpace(raw)) Problem($"{Where()} ({file}): sentence {k} is empty");
                else if (raw.Length > Text.TextTokenizer.MaxCharacters) Problem($"{Where()} ({file}): sentence {k} has {raw.Length} characters, over the {Text.TextTokenizer.MaxCharacters}-character limit");
                else caps.Add(raw);
            }
            if (caps.Count == 0)
            {
                Problem($"{Where()} ({file}) has no usable sentences: skipped");
                continue;
            }
            int id = im["imgid"] is JsonValue v && v.TryGetValue(out int x) ? x : i;
            if (!firstOf.TryAdd(id, i)) throw new BadInputException($"{Where()} ({file}): imgid {id} repeats images[{firstOf[id]}]'s");
            int? group = im["kernelvl_group"] is JsonValue gv && gv.TryGetValue(out int g) ? g : null;
            string rel = dir is null ? file : System.IO.Path.Combine(dir, file);
            if (System.IO.Path.IsPathRooted(rel)) throw new BadInputException($"{Where()}: image path '{rel}' is absolute (paths are relative to the image root, --images)");
            if (!InsideRoot(rel)) throw new BadInputException($"{Where()}: image path '{rel}' leaves the image root (paths are relative to it, without '..' above it)");
            // The same file twice in one split: its captions would compete with themselves (an evaluation scores each
            // against both copies, whose embeddings are equal).
            string normal = Normal(rel);
            if (!fileOf.TryAdd((split, normal), i))
                throw new BadInputException($"{Where()}: image '{rel}' is listed twice in split '{split}' (also images[{fileOf[(split, normal)]}]); merge the two entries' sentences");
            images.Add(new DatasetImage(id, rel, split, caps, group));
        }
        return new KarpathyDataset(path, images, problems);
    }

    // A relative path below the root, '.' and '..' resolved, separators '/' (the same file however it is written).
    private static string Normal(string relative) => string.Join('/', Parts(relative, out _));

    /// <summary>Whether a relative image path stays below the image root: not rooted, and no '..' climbing above it.</summary>
    public static bool InsideRoot(string relative)
    {
        if (relative.Length == 0 || System.IO.Path.IsPathRooted(relative)) return false;
        Parts(relative, out bool climbs);
        return !climbs;
    }

    // The folders and name of a relative path, '.' and '..' resolved; climbs: a '..' went above where it starts.
    private static List<string> Parts(string relative, out bool climbs)
    {
        var parts = new List<string>();
        climbs = false;
        foreach (var part in relative.Split('/', '\\'))
        {
            if (part == "..") { if (parts.Count > 0) parts.RemoveAt(parts.Count - 1); else climbs = true; }
            else if (part is not ("" or ".")) parts.Add(part);
        }
        return parts;
    }

    private static string? Str(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    // A string field that may be absent or null; any other kind is an error naming the entry.
    private static string? Str(JsonObject o, string key, Func<string> where)
    {
        var n = o[key];
        if (n is null || n.GetValueKind() == JsonValueKind.Null) return null;
        if (n.GetValueKind() != JsonValueKind.String) throw new BadInputException($"{where()}: \"{key}\" is {Kind(n)}, not a string");
        return n.GetValue<string>();
    }

    private static string Kind(JsonNode n) => n.GetValueKind() switch
    {
        JsonValueKind.Number => "a number",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => n.GetValueKind().ToString().ToLowerInvariant(),
    };

    /// <summary>The images of one split (train includes restval).</summary>
    public IReadOnlyList<DatasetImage> Split(string split)
    {
        var r = Images.Where(i => i.Split == split).ToList();
        if (r.Count == 0) throw new BadInputException($"{Source}: no images in split '{split}' (splits: {string.Join(", ", Images.Select(i => i.Split).Distinct())})");
        return r;
    }

    /// <summary>Writes a dataset in the same format, atomically.</summary>
    public static void Save(string path, IEnumerable<DatasetImage> images, string name = "kernelvl")
    {
        int sent = 0;
        var arr = new JsonArray();
        foreach (var im in images)
        {
            var sents = new JsonArray();
            var ids = new JsonArray();
            foreach (var c in im.Captions)
            {
                sents.Add(new JsonObject { ["raw"] = c, ["tokens"] = new JsonArray(c.ToLowerInvariant().Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(t => (JsonNode)JsonValue.Create(t.Trim('.', ','))!).ToArray()), ["sentid"] = sent, ["imgid"] = im.Id });
                ids.Add(sent++);
            }
            string? dir = System.IO.Path.GetDirectoryName(im.Path);
            arr.Add(new JsonObject
            {
                ["filepath"] = string.IsNullOrEmpty(dir) ? null : dir.Replace('\\', '/'),
                ["filename"] = System.IO.Path.GetFileName(im.Path),
                ["split"] = im.Split,
                ["imgid"] = im.Id,
                ["sentids"] = ids,
                ["sentences"] = sents,
            });
            if (im.Group is int g) ((JsonObject)arr[^1]!)["kernelvl_group"] = g;
        }
        AtomicFile.WriteAllText(path, new JsonObject { ["images"] = arr, ["dataset"] = name }.ToJsonString());
    }
}
