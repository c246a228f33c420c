using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace KernelVL.Data;

/// <summary>
/// A synthetic image-caption dataset where word order and attribute binding matter: each image holds two shapes, each
/// with a colour and a size, in a spatial relation ("a small red circle left of a large blue square"); swapping the
/// colours or the relation gives another image's caption. Five phrasings per image. Drawn with ImageSharp (pixel
/// loops: the project has no drawing library), written as PNGs plus a Karpathy split JSON that every command reads.
/// </summary>
public static partial class SyntheticShapes
{
    public static readonly string[] Shapes = ["circle", "square", "triangle", "cross"];
    public static readonly (string Name, Rgb24 Color)[] Colors =
    [
        ("red", new(220, 40, 40)), ("green", new(40, 170, 60)), ("blue", new(40, 80, 220)), ("yellow", new(235, 215, 40)),
        ("purple", new(150, 60, 190)), ("white", new(245, 245, 245)),
    ];
    public static readonly string[] Sizes = ["small", "large"];
    public static readonly string[] Relations = ["left of", "right of", "above", "below"];

    /// <summary>One object of a scene.</summary>
    public sealed record Thing(int Shape, int Color, int Size)
    {
        public string Words => $"{Sizes[Size]} {Colors[Color].Name} {Shapes[Shape]}";
    }

    /// <summary>A scene: A is <see cref="Relation"/> B.</summary>
    public sealed record Scene(Thing A, Thing B, int Relation)
    {
        private static readonly int[] Inverse = [1, 0, 3, 2];

        /// <summary>Five phrasings of the same scene (two of them state it from B's side).</summary>
        public string[] Captions()
        {
            string a = A.Words, b = B.Words, rel = Relations[Relation], inv = Relations[Inverse[Relation]];
            string an(string w) => w.StartsWith('a') || w.StartsWith('e') || w.StartsWith('i') || w.StartsWith('o') || w.StartsWith('u') ? "an" : "a";
            return
            [
                $"a {a} {rel} a {b}",
                $"a {b} {inv} a {a}",
                $"there is a {a} {rel} a {b}",
                $"the {Colors[A.Color].Name} {Shapes[A.Shape]} is {Sizes[A.Size]} and {rel} the {Sizes[B.Size]} {Colors[B.Color].Name} {Shapes[B.Shape]}",
                $"{an(Sizes[B.Size])} {Sizes[B.Size]} {Shapes[B.Shape]} in {Colors[B.Color].Name} {inv} a {Colors[A.Color].Name} {Shapes[A.Shape]} that is {Sizes[A.Size]}",
            ];
        }

        /// <summary>A canonical key: two scenes with equal keys are the same picture description.</summary>
        public string Key => $"{A.Shape}{A.Color}{A.Size}|{B.Shape}{B.Color}{B.Size}|{Relation}";
    }

    /// <summary>A random scene; the two objects always differ in colour (so "the red one" is well defined).</summary>
    public static Scene RandomScene(Random rng)
    {
        var a = new Thing(rng.Next(Shapes.Length), rng.Next(Colors.Length), rng.Next(Sizes.Length));
        int cb;
        do cb = rng.Next(Colors.Length); while (cb == a.Color);
        var b = new Thing(rng.Next(Shapes.Length), cb, rng.Next(Sizes.Length));
        return new Scene(a, b, rng.Next(Relations.Length));
    }

    /// <summary>Draws a scene at size x size pixels: a noisy grey background, the two objects placed by the relation with jitter.</summary>
    public static Image<Rgb24> Render(Scene s, int size, Random rng)
    {
        var img = new Image<Rgb24>(size, size);
        int bg = 60 + rng.Next(50);
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
            {
                int n = bg + rng.Next(-12, 13);
                img[x, y] = new Rgb24((byte)n, (byte)n, (byte)(n + 5));
            }
        // Cell centres: A and B on opposite halves along the relation's axis.
        double q = size / 4.0;
        double jitter() => (rng.NextDouble() - 0.5) * size * 0.12;
        (double ax, double ay, double bx, double by) = s.Relation switch
        {
            0 => (q, 2 * q, 3 * q, 2 * q),        // A left of B
            1 => (3 * q, 2 * q, q, 2 * q),
            2 => (2 * q, q, 2 * q, 3 * q),        // A above B
            _ => (2 * q, 3 * q, 2 * q, q),
        };
        double across() => (rng.NextDouble() - 0.5) * size * 0.3;
        if (s.Relation < 2) { double o = across(); ay += o; by += o + jitter(); }
        else { double o = across(); ax += o; bx += o + jitter(); }
        Draw(img, s.A, ax + jitter(), ay + jitter(), size);
        Draw(img, s.B, bx + jitter(), by + jitter(), size);
        return img;
    }

    private static void Draw(Image<Rgb24> img, Thing t, double cx, double cy, int size)
    {
        double r = size * (t.Size == 0 ? 0.09 : 0.17);
        var col = Colors[t.Color].Color;
        for (int y = (int)(cy - r - 1); y <= (int)(cy + r + 1); y++)
            for (int x = (int)(cx - r - 1); x <= (int)(cx + r + 1); x++)
            {
                if ((uint)x >= (uint)size || (uint)y >= (uint)size) continue;
                double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
                bool inside = t.Shape switch
                {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => Math.Abs(dx) <= r * 0.85 && Math.Abs(dy) <= r * 0.85,
                    2 => dy <= r * 0.8 && dy >= -r && Math.Abs(dx) <= (dy + r) * 0.6,
                    _ => (Math.Abs(dx) <= r * 0.3 && Math.Abs(dy) <= r) || (Math.Abs(dy) <= r * 0.3 && Math.Abs(dx) <= r),
                };
                if (inside) img[x, y] = col;
            }
    }

    /// <summary>The scene with the two objects' colours exchanged: the same words in its captions, bound the other way.</summary>
    public static Scene ColourSwapped(Scene s) => s with { A = s.A with { Color = s.B.Color }, B = s.B with { Color = s.A.Color } };

    /// <summary>
    /// Makes <paramref name="dir"/> ready for a new dataset: a folder that does not exist or is empty is left as it is; one
    /// that holds only what this generator writes (dataset.json of a kernelvl-shapes set, images/NNNNNN.png, and the
    /// temporary files of a write that was interrupted) has those deleted, so that no image of an earlier, larger run
    /// stays behind; anything else there is refused, before any file is touched.
    /// </summary>
    public static void ClearPrevious(string dir)
    {
        foreach (var f in PreviousFiles(dir)) File.Delete(f);
    }

    /// <summary>
    /// The files <see cref="ClearPrevious"/> deletes in <paramref name="dir"/>, found and checked with nothing touched;
    /// throws <see cref="ForeignEntryException"/> naming the first entry this generator does not write.
    /// </summary>
    /// <param name="imagesOwned">
    /// The caller knows the folder to be its own (the demo, by its marker): images named as this generator names them are
    /// taken as its own without a kernelvl-shapes dataset.json, which a run stopped during the images has not written yet.
    /// </param>
    public static List<string> PreviousFiles(string dir, bool imagesOwned = false)
    {
        if (File.Exists(dir)) throw new BadInputException($"{dir}: is a file, not a folder");
        var generated = new List<string>();
        if (!Directory.Exists(dir)) return generated;
        string json = Path.Combine(dir, "dataset.json"), images = Path.Combine(dir, "images");
        if (Directory.Exists(json)) throw new ForeignEntryException(json, $"{json}: is a folder, where the dataset's JSON goes");
        if (File.Exists(images)) throw new ForeignEntryException(images, $"{images}: is a file, where the images' folder goes");
        if (Directory.Exists(images) && new DirectoryInfo(images).LinkTarget is not null)
            throw new ForeignEntryException(images, $"{images}: is a link to another folder: give a new or an empty folder");
        bool shapesSet = false;   // a kernelvl-shapes dataset.json: the images are its (never judged by their names alone)
        foreach (var e in Directory.EnumerateFileSystemEntries(dir))
        {
            string name = Path.GetFileName(e);
            if (name == "images") continue;
            bool ours = name == "dataset.json" ? shapesSet = File.Exists(e) && File.ReadAllText(e).Contains("\"kernelvl-shapes\"", StringComparison.Ordinal)
                      : IO.AtomicFile.IsTemporaryOf(name, "dataset.json");
            if (!ours) throw new ForeignEntryException(e, $"{dir}: holds {name}, which is not part of a kernelvl shapes dataset: give a new or an empty folder");
            generated.Add(e);
        }
        if (Directory.Exists(images))
            foreach (var e in Directory.EnumerateFileSystemEntries(images))
            {
                string name = Path.GetFileName(e);
                bool temporary = name.Length > 11 && ImageName().IsMatch(name.Substring(1, 10)) && IO.AtomicFile.IsTemporaryOf(name, name.Substring(1, 10));
                if (!File.Exists(e) || new FileInfo(e).LinkTarget is not null || !(ImageName().IsMatch(name) || temporary))
                    throw new ForeignEntryException(e, $"{images}: holds {name}, which this generator does not write: give a new or an empty folder");
                if (!shapesSet && !temporary && !imagesOwned)
                    throw new ForeignEntryException(e, $"{images}: holds {name}, but no kernelvl shapes dataset.json says it is one of its images (an interrupted run?): remove the folder, or give a new one");
                generated.Add(e);
            }
        return generated;
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^\d{6}\.png$")]
    private static partial System.Text.RegularExpressions.Regex ImageName();

    /// <summary>
    /// Writes <paramref name="train"/> + <paramref name="val"/> + <paramref name="test"/> distinct scenes as PNGs under
    /// DIR/images and the split as DIR/dataset.json; returns the JSON's path. Scenes come in twins: a scene and its
    /// colour-swapped twin, in the same split and group, so every split holds pairs that only attribute binding tells
    /// apart (a bag of words cannot). Deterministic under the seed, which must not be negative: .NET's seeded
    /// <see cref="Random"/> takes a seed's absolute value, so -N would draw the scenes of N.
    /// </summary>
    /// <param name="cancel">Checked before each image: a stop leaves whole images and no dataset.json.</param>
    public static string Generate(string dir, int train, int val, int test, int size, int seed, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        if (File.Exists(dir)) throw new BadInputException($"{dir}: is a file, not a folder");
        if (seed < 0) throw new BadInputException($"seed {seed}: must be 0 or more (a negative seed would draw the scenes of {(seed == int.MinValue ? int.MaxValue : -seed)})");
        var rng = new Random(seed);
        var seen = new HashSet<string>();
        var scenes = new List<Scene>();
        var groups = new List<int>();
        int total = train + val + test, tries = 0;
        int[] splitEnds = [train, train + val, total];
        while (scenes.Count < total)
        {
            var s = RandomScene(rng);
            var twin = ColourSwapped(s);
            int end = splitEnds.First(e => e > scenes.Count);
            bool pair = end - scenes.Count >= 2;   // an odd split ends with a single scene
            if (seen.Contains(s.Key) || (pair && seen.Contains(twin.Key)))
            {
                if (++tries > 100 * total) throw new BadInputException($"cannot draw {total} distinct scenes (the generator has fewer than that; 7000 in all is safe)");
                continue;
            }
            seen.Add(s.Key);
            scenes.Add(s);
            groups.Add(scenes.Count - 1);
            if (pair)
            {
                seen.Add(twin.Key);
                scenes.Add(twin);
                groups.Add(scenes.Count - 2);
            }
        }
        ClearPrevious(dir);   // after the scenes are drawn: a count that cannot be drawn leaves an earlier set as it was
        Directory.CreateDirectory(Path.Combine(dir, "images"));
        var images = new List<DatasetImage>(total);
        for (int i = 0; i < total; i++)
        {
            cancel.ThrowIfCancellationRequested();
            string split = i < train ? "train" : i < train + val ? "val" : "test";
            string rel = Path.Combine("images", $"{i:D6}.png");
            using (var img = Render(scenes[i], size, new Random(seed * 7919 + i)))
                IO.AtomicFile.Write(Path.Combine(dir, rel), s => img.SaveAsPng(s));
            images.Add(new DatasetImage(i, rel, split, scenes[i].Captions(), groups[i]));
            progress?.Invoke(i + 1, total);
        }
        string json = Path.Combine(dir, "dataset.json");
        KarpathyDataset.Save(json, images, "kernelvl-shapes");
        return json;
    }
}
