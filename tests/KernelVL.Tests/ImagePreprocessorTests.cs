using System.Buffers.Binary;
using KernelVL.Imaging;
using KernelVL.Model;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Metadata.Profiles.Exif;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace KernelVL.Tests;

public sealed class ImagePreprocessorTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "kernelvl-img-" + Guid.NewGuid().ToString("N"));

    public ImagePreprocessorTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static Image<Rgb24> Random(int w, int h, int seed)
    {
        var rng = new Random(seed);
        var img = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                img[x, y] = new Rgb24((byte)rng.Next(256), (byte)rng.Next(256), (byte)rng.Next(256));
        return img;
    }

    [Theory]
    // (input h, w) -> ViltImageProcessor's size with shorter 384, longer 640, divisor 32 (worked by hand from its formula)
    [InlineData(480, 640, 384, 512)]    // 4:3 landscape: 384 x 512
    [InlineData(640, 480, 512, 384)]
    [InlineData(375, 500, 384, 512)]    // 384 x 512.0 -> 512
    [InlineData(100, 1000, 64, 640)]    // 10:1: the longer side caps at 640, the shorter follows to 64
    [InlineData(333, 500, 384, 576)]    // 576.6 -> int(577.1) = 577 -> 576
    [InlineData(384, 384, 384, 384)]
    [InlineData(10, 13, 384, 480)]      // upscaled: 499.2 -> 499 -> 480
    public void OutputSizeFollowsTheViltResizeRule(int h, int w, int eh, int ew)
        => Assert.Equal((eh, ew), new ImagePreprocessor(384, 640, 32).OutputSize(h, w));

    [Fact]
    public void PixelsAreNormalisedChannelMajorAtTheResizedSize()
    {
        // A flat colour survives any resampling exactly: (v / 255 - 0.5) / 0.5 per channel, in [3, H, W] order.
        using var img = new Image<Rgb24>(50, 40, new Rgb24(255, 0, 51));
        string path = Path.Combine(_dir, "flat.png");
        img.SaveAsPng(path);
        var p = new ImagePreprocessor(32, 64, 16).Load(path);
        Assert.Equal((32, 32), (p.Height, p.Width));   // 40x50 -> 32 x 40 -> 32 x 32
        Assert.All(p.Pixels[..(32 * 32)], v => Assert.Equal(1f, v, 6));
        Assert.All(p.Pixels[(32 * 32)..(2 * 32 * 32)], v => Assert.Equal(-1f, v, 6));
        Assert.All(p.Pixels[(2 * 32 * 32)..], v => Assert.Equal(-0.6f, v, 6));
    }

    [Fact]
    public void ExifOrientationIsApplied()
    {
        // Orientation 6 = "rotate 90 clockwise to display": the result must equal the upright image stored plainly.
        using var stored = Random(48, 32, 1);
        using var upright = stored.Clone(c => c.Rotate(RotateMode.Rotate90));
        stored.Metadata.ExifProfile = new ExifProfile();
        stored.Metadata.ExifProfile.SetValue(ExifTag.Orientation, (ushort)6);
        string a = Path.Combine(_dir, "exif.png"), b = Path.Combine(_dir, "upright.png");
        stored.SaveAsPng(a);
        upright.SaveAsPng(b);
        var pre = new ImagePreprocessor(32, 64, 16);
        var x = pre.Load(a);
        var y = pre.Load(b);
        Assert.Equal((48, 32), (x.Height, x.Width));
        Assert.Equal(y.Pixels, x.Pixels);
    }

    [Fact]
    public void HugeImagesAreRefusedFromTheHeaderBeforeDecoding()
    {
        // A PNG whose header claims 60000 x 60000 and that has no pixel data: only the header is read.
        var png = new List<byte>([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, 60000);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), 60000);
        ihdr[8] = 8; ihdr[9] = 2;   // 8-bit RGB
        Chunk(png, "IHDR", ihdr);
        Chunk(png, "IEND", []);
        string path = Path.Combine(_dir, "bomb.png");
        File.WriteAllBytes(path, png.ToArray());
        var e = Assert.Throws<BadInputException>(() => new ImagePreprocessor(384, 640, 32).Load(path));
        Assert.Contains("bomb.png", e.Message);
        Assert.Contains("60000x60000", e.Message);
        Assert.Contains("megapixel limit", e.Message);
        // A cap can be set lower.
        using var small = Random(20, 20, 2);
        string ok = Path.Combine(_dir, "small.png");
        small.SaveAsPng(ok);
        Assert.Contains("megapixel limit", Assert.Throws<BadInputException>(() => new ImagePreprocessor(16, 32, 16, maxPixels: 399).Load(ok)).Message);
    }

    [Fact]
    public void PngTextChunksAreNotInflated()
    {
        // A zTXt chunk holding 64 MB of text deflated to ~64 KB (a text bomb: 1 MB of file can carry 1 GB): the decoder
        // used to inflate it in Identify and Load alike (3 GB and 37 s for a 1 GB one). The pixels are what the same PNG
        // without the chunk gives, and the load allocates far less than the text's size. An EXIF orientation stays
        // applied (ExifOrientationIsApplied); a chunk that runs past the end is left to the decoder.
        using var img = Random(20, 20, 3);
        string plain = Path.Combine(_dir, "plain.png");
        img.SaveAsPng(plain);
        byte[] bytes = File.ReadAllBytes(plain);
        using var deflated = new MemoryStream();
        using (var z = new System.IO.Compression.ZLibStream(deflated, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
        {
            var text = new byte[1 << 20];
            Array.Fill(text, (byte)'A');
            for (int i = 0; i < 64; i++) z.Write(text);
        }
        var chunk = new List<byte>();
        Chunk(chunk, "zTXt", [.. "Comment"u8.ToArray(), 0, 0, .. deflated.ToArray()]);
        string bomb = Path.Combine(_dir, "ztxt.png");
        File.WriteAllBytes(bomb, [.. bytes.AsSpan(0, 33).ToArray(), .. chunk, .. bytes.AsSpan(33).ToArray()]);   // after IHDR (8 + 25 bytes)
        var pre = new ImagePreprocessor(16, 32, 16);
        var expected = pre.Load(plain);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var got = pre.Load(bomb);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(expected.Pixels, got.Pixels);
        Assert.True(allocated < 16L << 20, $"loading the 20x20 PNG allocated {allocated >> 20} MB");
        // Damaged files: a cut through the text chunk drops it and what follows; a cut after it drops the text and keeps
        // the damaged rest for the decoder (the text went all the same: a damaged tail is no way past the strip).
        byte[] whole = File.ReadAllBytes(bomb);
        Assert.Equal(whole[..33], ImagePreprocessor.WithoutPngText(whole[..(33 + 1000)]));
        Assert.Equal(bytes[..^20], ImagePreprocessor.WithoutPngText(whole[..^20]));
    }

    private static void Chunk(List<byte> png, string type, byte[] data)
    {
        var len = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        png.AddRange(len);
        var body = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        png.AddRange(body);
        var crc = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(body));
        png.AddRange(crc);
    }

    private static uint Crc32(byte[] data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    [Fact]
    public void MissingTruncatedAndForeignFilesAreNamedErrors()
    {
        var pre = new ImagePreprocessor(32, 64, 16);
        Assert.Contains("no such file", Assert.Throws<BadInputException>(() => pre.Load(Path.Combine(_dir, "none.jpg"))).Message);
        string text = Path.Combine(_dir, "notes.jpg");
        File.WriteAllText(text, "this is not an image at all, just some text pretending");
        var e = Assert.Throws<BadInputException>(() => pre.Load(text));
        Assert.Contains("notes.jpg", e.Message);
        using var img = Random(64, 64, 3);
        using var ms = new MemoryStream();
        img.SaveAsJpeg(ms);
        string cut = Path.Combine(_dir, "cut.jpg");
        File.WriteAllBytes(cut, ms.ToArray()[..(int)(ms.Length / 3)]);
        // ImageSharp decodes what a truncated JPEG holds (grey below the cut), as browsers do; a truncated header is an error.
        string head = Path.Combine(_dir, "head.jpg");
        File.WriteAllBytes(head, ms.ToArray()[..40]);
        Assert.Contains("head.jpg", Assert.Throws<BadInputException>(() => pre.Load(head)).Message);
        var partial = pre.Load(cut);
        Assert.Equal((32, 32), (partial.Height, partial.Width));
    }

    [Fact]
    public void PatchBatchesCutImagesIntoRowMajorPatchesAndPad()
    {
        var a = new PreparedImage(Enumerable.Range(0, 3 * 4 * 6).Select(i => (float)i).ToArray(), 4, 6);
        var b = new PreparedImage(Enumerable.Range(0, 3 * 2 * 2).Select(i => -1f - i).ToArray(), 2, 2);
        var pb = PatchBatch.From([a, b], 2);
        Assert.Equal(6, pb.MaxPatches);                // 2 x 3 patches, and 1 x 1 padded to 6
        Assert.Equal([2, 1], pb.GridH);
        Assert.Equal([3, 1], pb.GridW);
        // image a, patch (row 1, col 2): channel c, pixel (y, x) = a[c, 2 + y, 4 + x]
        int pp = 12;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 2; y++)
                for (int x = 0; x < 2; x++)
                    Assert.Equal(a.Pixels[c * 24 + (2 + y) * 6 + 4 + x], pb.Patches[5 * pp + c * 4 + y * 2 + x]);
        Assert.Equal(b.Pixels, pb.Patches[(6 * pp)..(7 * pp)].Where((_, i) => true).ToArray());
        Assert.All(pb.Patches[(7 * pp)..], v => Assert.Equal(0f, v));
        Assert.Throws<ShapeException>(() => PatchBatch.From([new PreparedImage(new float[3 * 3 * 4], 3, 4)], 2));
    }
}
