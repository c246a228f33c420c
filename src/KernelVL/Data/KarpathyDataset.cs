using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.IO;

namespace KernelVL.Data;

/// <summary>One image of a Karpathy split: its file (relative to the image root) and its captions (usually five).</summary>
public sealed record DatasetImage(int Id, string Path, string Split, IReadOnlyList<string> Captions);

/// <summary>
/// An image-caption dataset in the Karpathy split format (dataset_coco.json / dataset_flickr30k.json):
/// {"images": [{"filepath"?, "filename", "split", "imgid"?, "sentences": [{"raw": ...}, ...]}, ...]}. "restval" counts as
/// train. Malformed files are a <see cref="BadInputException"/> naming the file and the entry.
/// </summary>
public sealed class KarpathyDataset
{
    public string Source { get; }
    public IReadOnlyList<DatasetImage> Images { get; }

    public KarpathyDataset(string source, IReadOnlyList<DatasetImage> images)
    {
        Source = source;
        Images = images;
    }

    public static KarpathyDataset Load(string path)
    {
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
        if (root is not JsonObject o || o["images"] is not JsonArray arr) throw new BadInputException($"{path}: no \"images\" array (expected the Karpathy split format)");
        var images = new List<DatasetImage>(arr.Count);
        for (int i = 0; i < arr.Count; i++)
        {
            string Where() => $"{path}: images[{i}]";
            if (arr[i] is not JsonObject im) throw new BadInputException($"{Where()} is not an object");
            string? file = Str(im, "filename") ?? throw new BadInputException($"{Where()} has no filename");
            string? dir = Str(im, "filepath");
            string split = Str(im, "split") ?? throw new BadInputException($"{Where()} has no split");
            if (split == "restval") split = "train";
            if (im["sentences"] is not JsonArray sents || sents.Count == 0) throw new BadInputException($"{Where()} ({file}) has no sentences");
            var caps = new List<string>(sents.Count);
            foreach (var s in sents)
            {
                string? raw = s is JsonObject so ? Str(so, "raw") : null;
                if (raw is null && s is JsonObject st && st["tokens"] is JsonArray toks) raw = string.Join(' ', toks.Select(t => t?.ToString()));
                if (string.IsNullOrWhiteSpace(raw)) throw new BadInputException($"{Where()} ({file}) has an empty sentence");
                caps.Add(raw);
            }
            int id = im["imgid"] is JsonValue v && v.TryGetValue(out int x) ? x : i;
            images.Add(new DatasetImage(id, dir is null ? file : System.IO.Path.Combine(dir, file), split, caps));
        }
        return new KarpathyDataset(path, images);
    }

    private static string? Str(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

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
        }
        AtomicFile.WriteAllText(path, new JsonObject { ["images"] = arr, ["dataset"] = name }.ToJsonString());
    }
}
