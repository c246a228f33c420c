using System.Text;
using KernelVL.IO;

namespace KernelVL.Tests;

public class SafeTensorsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvl-st-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string File(string name) => Path.Combine(_dir, name);

    [Fact]
    public void AFailedWriteLeavesNoTemporaryFile()
    {
        // The rename fails (a non-empty folder has the target's name) after the bytes were written.
        string target = File("model.safetensors");
        Directory.CreateDirectory(target);
        System.IO.File.WriteAllText(Path.Combine(target, "x"), "x");
        Assert.ThrowsAny<Exception>(() => SafeTensorsWriter.Write(target, [new SafeTensorsWriter.Entry("w", [2], [1f, 2f])]));
        Assert.Equal([target], Directory.GetFileSystemEntries(_dir));
    }

    /// <summary>A file built by hand from the format's spec (independent of the writer).</summary>
    private string Handmade(string header, byte[] data, string name = "hand.safetensors", long? claimedHeaderLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = BitConverter.GetBytes(claimedHeaderLength ?? h.Length).Concat(h).Concat(data).ToArray();
        string p = File(name);
        System.IO.File.WriteAllBytes(p, bytes);
        return p;
    }

    private static byte[] F32(params float[] v) => v.SelectMany(BitConverter.GetBytes).ToArray();

    [Fact]
    public void ReadsAHandBuiltFileWithF32AndBf16()
    {
        // BF16 1.0 = 0x3F80, -2.5 = 0xC020 (little-endian bytes).
        var data = F32(1.5f, -3.25f).Concat(new byte[] { 0x80, 0x3F, 0x20, 0xC0 }).ToArray();
        string p = Handmade("""{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}""", data);
        using var f = SafeTensorsFile.Open(p);
        Assert.Equal(new[] { 1.5f, -3.25f }, f.ReadF32("a"));
        Assert.Equal(new[] { 1f, -2.5f }, f.ReadF32("b"));
        Assert.Equal(new[] { 1, 2 }, f.Tensors["b"].Shape);
        Assert.Equal("pt", f.Metadata["format"]);
    }

    [Theory]
    [InlineData(SafeTensorsDType.F32, 0.0)]
    [InlineData(SafeTensorsDType.F16, 1.0 / 2048)]
    [InlineData(SafeTensorsDType.BF16, 1.0 / 256)]
    public void RoundTripsWithinTheDTypesPrecision(SafeTensorsDType dtype, double relTol)
    {
        var rng = new Random(Random.Shared.Next());
        var a = Enumerable.Range(0, 3 * 5).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var b = Enumerable.Range(0, 7).Select(_ => (float)(rng.NextDouble() * 100 - 50)).ToArray();
        string p = File($"rt-{dtype}.safetensors");
        SafeTensorsWriter.Write(p, [new("w.weight", [3, 5], a), new("w.bias", [7], b)], dtype, new Dictionary<string, string> { ["by"] = "test" });
        Assert.False(System.IO.File.Exists(p + ".tmp"));
        using var f = SafeTensorsFile.Open(p);
        Assert.Equal("test", f.Metadata["by"]);
        foreach (var (name, want) in new[] { ("w.weight", a), ("w.bias", b) })
        {
            var got = f.ReadF32(name);
            for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(got[i] - want[i]) <= relTol * Math.Abs(want[i]), $"{name}[{i}]: {got[i]} vs {want[i]}");
        }
    }

    public static IEnumerable<object?[]> Corruptions()
    {
        string ok = """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""";
        yield return ["truncated header length", ok, 8, (long?)4000, "runs past the end"];
        yield return ["zero header length", ok, 8, (long?)0, "header length 0"];
        yield return ["not JSON", "{\"a\": [", 8, null, "not valid JSON"];
        yield return ["unknown dtype", """{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}""", 8, null, "dtype F64 is not supported"];
        yield return ["duplicate name", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, null, "listed twice"];
        yield return ["overlap", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, null, "overlaps"];
        yield return ["hole", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, null, "a hole"];
        yield return ["shape vs span", """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8, null, "is 12 bytes, its data span is 8"];
        yield return ["past the data", """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8, null, "past the 8 bytes of data"];
        yield return ["unused bytes", ok, 12, null, "belong to no tensor"];
        yield return ["negative shape", """{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}""", 8, null, "not a non-negative int"];
        yield return ["bad offsets", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}""", 8, null, "not 0 <= begin <= end"];
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void CorruptFilesAreRejectedWithTheFileAndTheProblem(string what, string header, int dataBytes, long? claimed, string expected)
    {
        string p = Handmade(header, new byte[dataBytes], $"{what.Replace(' ', '-')}.safetensors", claimed);
        var e = Assert.Throws<BadInputException>(() => SafeTensorsFile.Open(p));
        Assert.Contains(p, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MissingShortAndMismatchedAreClearErrors()
    {
        Assert.Contains("no such file", Assert.Throws<BadInputException>(() => SafeTensorsFile.Open(File("nope.safetensors"))).Message);
        string tiny = File("tiny.safetensors");
        System.IO.File.WriteAllBytes(tiny, [1, 2, 3]);
        Assert.Contains("shorter than the 8-byte header length", Assert.Throws<BadInputException>(() => SafeTensorsFile.Open(tiny)).Message);
        string p = File("one.safetensors");
        SafeTensorsWriter.Write(p, [new("x", [2, 2], [1, 2, 3, 4])]);
        using var f = SafeTensorsFile.Open(p);
        Assert.Contains("no tensor named 'y'", Assert.Throws<BadInputException>(() => f.ReadF32("y")).Message);
        using var be = new Backends.Cpu.CpuBackend();
        using var t = be.Empty(new Tensors.Shape(4));
        Assert.Contains("the model expects [4]", Assert.Throws<BadInputException>(() => f.CopyTo("x", t)).Message);
        using var ok = be.Empty(new Tensors.Shape(2, 2));
        f.CopyTo("x", ok);
        Assert.Equal(new float[] { 1, 2, 3, 4 }, ok.ToArray());
    }
}
