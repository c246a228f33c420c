using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Memory;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using KernelVL.Model;

namespace KernelVL.Imaging;

/// <summary>One preprocessed image: pixels [3, Height, Width] (channel-major), normalised to [-1, 1].</summary>
public sealed record PreparedImage(float[] Pixels, int Height, int Width);

/// <summary>
/// ViLT's image preprocessing through ImageSharp 2.1, as Hugging Face's ViltImageProcessor does it: RGB, EXIF orientation
/// applied, resized (bicubic) so the shorter side is the config's image size and the longer at most its cap, both then
/// rounded down to multiples of the patch size, rescaled to [0, 1] and normalised with mean 0.5, std 0.5.
/// Files are identified before decoding and refused above <see cref="MaxPixels"/> (decompression bombs); decoding runs
/// under an allocation limit. Every problem is a <see cref="BadInputException"/> naming the file.
/// </summary>
public sealed class ImagePreprocessor
{
    /// <summary>The default cap on width x height of an input file (~100 megapixels, e.g. 12000 x 8000).</summary>
    public const long DefaultMaxPixels = 100_000_000;

    private static readonly Lazy<Configuration> Limited = new(() =>
    {
        var c = Configuration.Default.Clone();
        c.MemoryAllocator = MemoryAllocator.Create(new MemoryAllocatorOptions { AllocationLimitMegabytes = 1024 });
        return c;
    });

    public int ShorterSide { get; }
    public int LongerSideCap { get; }
    public int SizeDivisor { get; }
    public long MaxPixels { get; }

    public ImagePreprocessor(int shorterSide, int longerSideCap, int sizeDivisor, long maxPixels = DefaultMaxPixels)
    {
        if (shorterSide < sizeDivisor || longerSideCap < shorterSide || sizeDivisor < 1)
            throw new BadInputException($"image sizes: shorter side {shorterSide}, longer cap {longerSideCap} and divisor {sizeDivisor} do not fit together");
        ShorterSide = shorterSide;
        LongerSideCap = longerSideCap;
        SizeDivisor = sizeDivisor;
        MaxPixels = maxPixels;
    }

    /// <summary>ViLT's settings from a config: shorter side image_size, longer cap kernelvl_max_image_side, patches of patch_size.</summary>
    public static ImagePreprocessor For(VlTransformerConfig cfg) => new(cfg.ImageSize, cfg.MaxImageSide, cfg.PatchSize);

    /// <summary>ViltImageProcessor's output size for an input of h x w (get_resize_output_image_size with size_divisor).</summary>
    public (int Height, int Width) OutputSize(int h, int w)
    {
        double scale = ShorterSide / (double)Math.Min(h, w);
        double nh, nw;
        if (h < w) { nh = ShorterSide; nw = scale * w; }
        else { nh = scale * h; nw = ShorterSide; }
        if (Math.Max(nh, nw) > LongerSideCap)
        {
            double s = LongerSideCap / Math.Max(nh, nw);
            nh *= s;
            nw *= s;
        }
        int oh = (int)(nh + 0.5) / SizeDivisor * SizeDivisor, ow = (int)(nw + 0.5) / SizeDivisor * SizeDivisor;
        return (Math.Max(oh, SizeDivisor), Math.Max(ow, SizeDivisor));
    }

    /// <summary>Throws a <see cref="BadInputException"/> unless <paramref name="path"/> is an existing file.</summary>
    public static void RequireFile(string path)
    {
        if (Directory.Exists(path)) throw new BadInputException($"{path}: is a folder, not an image file");
        if (!File.Exists(path)) throw new BadInputException($"{path}: no such file");
    }

    /// <summary>Reads, checks and preprocesses one image file.</summary>
    public PreparedImage Load(string path) => Load(KernelVL.IO.ImageFiles.ReadRegularFile(path), path);

    /// <summary>Preprocesses an encoded image held in memory; <paramref name="name"/> is used in errors.</summary>
    public PreparedImage Load(byte[] encoded, string name)
    {
        encoded = WithoutPngText(encoded);
        IImageInfo? info;
        try
        {
            info = Image.Identify(Limited.Value, encoded, out _);
        }
        catch (Exception e) when (e is ImageFormatException or InvalidDataException or NotSupportedException or ArgumentException or InvalidMemoryOperationException)
        {
            throw new BadInputException($"{name}: not a readable image ({e.Message})");
        }
        if (info is null) throw new BadInputException($"{name}: not an image in a known format (jpeg, png, webp, bmp, gif, tiff, tga, pbm)");
        if (info.Width < 1 || info.Height < 1) throw new BadInputException($"{name}: the image has no pixels ({info.Width}x{info.Height})");
        if ((long)info.Width * info.Height > MaxPixels)
            throw new BadInputException($"{name}: {info.Width}x{info.Height} is over the {MaxPixels / 1e6:0.#}-megapixel limit for an input image");
        try
        {
            using var image = Image.Load<Rgb24>(Limited.Value, encoded);
            return Prepare(image);
        }
        catch (Exception e) when (e is ImageFormatException or InvalidDataException or NotSupportedException or ArgumentException or InvalidMemoryOperationException or IndexOutOfRangeException)
        {
            throw new BadInputException($"{name}: the image could not be decoded, it may be truncated or corrupt ({e.Message})");
        }
    }

    /// <summary>
    /// A PNG's bytes without its text chunks (tEXt, zTXt, iTXt), else the bytes given. ImageSharp inflates every zTXt
    /// and iTXt chunk into a string, in Identify too, with no limit: 1 MB of file can hold 1 GB of text (3 GB of memory
    /// and 37 s for one image). No pixel depends on them; the eXIf chunk, whose orientation is applied, stays. A chunk
    /// whose length runs past the end is kept from there on as it is (the decoder then reports the damage), unless it
    /// is a text chunk (then dropped with the rest); text chunks before it are dropped all the same.
    /// </summary>
    public static byte[] WithoutPngText(byte[] encoded)
    {
        ReadOnlySpan<byte> signature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];
        if (encoded.Length < 8 || !encoded.AsSpan(0, 8).SequenceEqual(signature)) return encoded;
        var keep = new List<(int Start, int Length)>();
        bool dropped = false;
        int pos = 8;
        while (pos + 12 <= encoded.Length)
        {
            long length = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(encoded.AsSpan(pos));
            long end = pos + 12 + length;   // length, type, data, crc
            var type = encoded.AsSpan(pos + 4, 4);
            bool text = type.SequenceEqual("tEXt"u8) || type.SequenceEqual("zTXt"u8) || type.SequenceEqual("iTXt"u8);
            if (end > encoded.Length)   // damaged from here on: kept as it is for the decoder to report, unless it is text
            {
                if (text) dropped = true;
                else keep.Add((pos, encoded.Length - pos));
                pos = encoded.Length;
                break;
            }
            if (text) dropped = true;
            else keep.Add((pos, (int)(end - pos)));
            pos = (int)end;
            if (type.SequenceEqual("IEND"u8)) break;
        }
        if (pos < encoded.Length) keep.Add((pos, encoded.Length - pos));   // bytes after IEND, or a partial chunk header
        if (!dropped) return encoded;
        var result = new byte[8 + keep.Sum(k => (long)k.Length)];
        encoded.AsSpan(0, 8).CopyTo(result);
        int at = 8;
        foreach (var (start, length) in keep)
        {
            encoded.AsSpan(start, length).CopyTo(result.AsSpan(at));
            at += length;
        }
        return result;
    }

    /// <summary>Orients, resizes and normalises a decoded image (which is left unchanged).</summary>
    public PreparedImage Prepare(Image<Rgb24> source)
    {
        using var image = source.Clone(c => c.AutoOrient());
        var (h, w) = OutputSize(image.Height, image.Width);
        image.Mutate(c => c.Resize(new ResizeOptions { Size = new Size(w, h), Mode = ResizeMode.Stretch, Sampler = KnownResamplers.Bicubic }));
        var pixels = new float[3 * h * w];   // [3, H, W]
        int plane = h * w;
        image.ProcessPixelRows(rows =>
        {
            for (int y = 0; y < h; y++)
            {
                var row = rows.GetRowSpan(y);
                for (int x = 0; x < w; x++)
                {
                    int o = y * w + x;
                    pixels[o] = Normalise(row[x].R);
                    pixels[plane + o] = Normalise(row[x].G);
                    pixels[2 * plane + o] = Normalise(row[x].B);
                }
            }
        });
        return new PreparedImage(pixels, h, w);
    }

    // (v / 255 - 0.5) / 0.5, in the order the processor computes it.
    private static float Normalise(byte v) => (float)((v * (1.0 / 255.0) - 0.5) / 0.5);
}
