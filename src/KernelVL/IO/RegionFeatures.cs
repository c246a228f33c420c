using KernelVL.Model;

namespace KernelVL.IO;

/// <summary>One image's detector regions from a VinVL features.tsv: features [Count, FeatureSize] row-major.</summary>
public sealed record RegionFeatures(string Id, int Count, int FeatureSize, float[] Features);

/// <summary>
/// Reads VinVL's features.tsv: one image per line, <c>id \t num_boxes \t base64(float32 little-endian [num_boxes, F])</c>
/// with F = 2054 (2048 appearance + 6 box values) by default. Every malformed line is an error naming the file and line.
/// </summary>
public static class RegionFeaturesTsv
{
    public static IEnumerable<RegionFeatures> Read(string path, int featureSize = 2054)
    {
        if (!File.Exists(path)) throw new BadInputException($"{path}: no such file");
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (line.Length == 0) continue;
            var parts = line.Split('\t');
            string Where() => $"{path}:{lineNo}";
            if (parts.Length != 3) throw new BadInputException($"{Where()}: expected 3 tab-separated fields (id, num_boxes, base64 features), found {parts.Length}");
            if (!int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) || n < 1 || n > 10_000)
                throw new BadInputException($"{Where()}: num_boxes '{parts[1]}' is not a count between 1 and 10000");
            byte[] bytes;
            try
            {
                bytes = Convert.FromBase64String(parts[2]);
            }
            catch (FormatException)
            {
                throw new BadInputException($"{Where()}: the features are not valid base64");
            }
            long expected = (long)n * featureSize * 4;
            if (bytes.Length != expected)
                throw new BadInputException($"{Where()}: {bytes.Length} bytes of features for {n} boxes of {featureSize} float32 values ({expected} bytes)");
            var f = new float[n * featureSize];
            Buffer.BlockCopy(bytes, 0, f, 0, bytes.Length);
            if (!BitConverter.IsLittleEndian) throw new BackendException("big-endian machines are not supported");
            foreach (float v in f)
                if (!float.IsFinite(v)) throw new BadInputException($"{Where()}: the features of image {parts[0]} hold a NaN or infinity");
            yield return new RegionFeatures(parts[0], n, featureSize, f);
        }
    }

    /// <summary>Stacks images' regions into a padded batch (at most <paramref name="maxRegions"/> each, the first ones kept).</summary>
    public static RegionBatch Batch(IReadOnlyList<RegionFeatures> images, int maxRegions)
    {
        if (images.Count == 0) throw new ShapeException("a region batch needs at least one image");
        int f = images[0].FeatureSize;
        int r = Math.Min(maxRegions, images.Max(i => i.Count));
        var data = new float[(long)images.Count * r * f];
        var counts = new int[images.Count];
        for (int i = 0; i < images.Count; i++)
        {
            if (images[i].FeatureSize != f) throw new ShapeException($"image {images[i].Id}: features of {images[i].FeatureSize} values, the batch has {f}");
            counts[i] = Math.Min(images[i].Count, r);
            Array.Copy(images[i].Features, 0, data, (long)i * r * f, (long)counts[i] * f);
        }
        return new RegionBatch(data, r, f, counts);
    }

    /// <summary>Writes a features.tsv (tests and tools), atomically.</summary>
    public static void Write(string path, IEnumerable<RegionFeatures> images) => AtomicFile.Write(path, s =>
    {
        using var w = new StreamWriter(s, leaveOpen: true);
        foreach (var im in images)
        {
            var bytes = new byte[im.Features.Length * 4];
            Buffer.BlockCopy(im.Features, 0, bytes, 0, bytes.Length);
            w.Write($"{im.Id}\t{im.Count}\t{Convert.ToBase64String(bytes)}\n");
        }
    });
}
