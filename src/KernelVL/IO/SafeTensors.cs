using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using KernelVL.Tensors;

namespace KernelVL.IO;

/// <summary>Element types of the safetensors format that the engine reads and writes.</summary>
public enum SafeTensorsDType { F32, F16, BF16, I32 }

/// <summary>One tensor's entry in a safetensors header: dtype, shape and its byte range in the data section.</summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, int[] Shape, long Begin, long End)
{
    public long Numel => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// A safetensors file (8-byte little-endian header length, a JSON header, then the raw data), memory-mapped and
/// validated before anything is trusted: header length against the file size and a size cap, valid UTF-8 JSON of the
/// expected shape, known dtypes, no duplicate names, offsets in range, ordered without overlaps or holes, and
/// shape x dtype size equal to each byte span. Any problem is a <see cref="BadInputException"/> naming the file.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    public const long MaxHeaderBytes = 100L << 20;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;
    private readonly long _dataStart, _length;

    public string Path { get; }
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafeTensorsFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* basePtr, long length,
        long dataStart, Dictionary<string, SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path; _map = map; _view = view; _base = basePtr; _length = length; _dataStart = dataStart;
        Tensors = tensors; Metadata = metadata;
    }

    public static int ElementSize(SafeTensorsDType d) => d switch { SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4, _ => 2 };

    private static BadInputException Bad(string path, string problem) => new($"{path}: {problem}");

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw Bad(path, "no such file");
        long length = new FileInfo(path).Length;
        if (length < 8) throw Bad(path, $"not a safetensors file: {length} bytes, shorter than the 8-byte header length");
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        p += view.PointerOffset;
        try
        {
            long headerLen = *(long*)p;   // little-endian on every platform .NET runs this engine on
            if (headerLen <= 0 || headerLen > MaxHeaderBytes) throw Bad(path, $"header length {headerLen} is outside (0, {MaxHeaderBytes}]");
            if (8 + headerLen > length) throw Bad(path, $"header length {headerLen} runs past the end of the {length}-byte file (truncated?)");
            var (tensors, metadata) = ParseHeader(path, new ReadOnlySpan<byte>(p + 8, (int)headerLen), length - 8 - headerLen);
            return new SafeTensorsFile(path, map, view, p, length, 8 + headerLen, tensors, metadata);
        }
        catch
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            map.Dispose();
            throw;
        }
    }

    private static (Dictionary<string, SafeTensorInfo>, Dictionary<string, string>) ParseHeader(string path, ReadOnlySpan<byte> header, long dataBytes)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header.ToArray());
        }
        catch (JsonException e)
        {
            throw Bad(path, $"the header is not valid JSON ({e.Message})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, "the header is not a JSON object");
            var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, "__metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : throw Bad(path, $"__metadata__.{m.Name} is not a string");
                    continue;
                }
                if (tensors.ContainsKey(prop.Name)) throw Bad(path, $"tensor '{prop.Name}' is listed twice");
                tensors[prop.Name] = ParseEntry(path, prop.Name, prop.Value);
            }
            // Offsets: each span inside the data section, spans in order, no overlaps, no holes, the data fully used.
            long expected = 0;
            foreach (var t in tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End))
            {
                if (t.Begin != expected)
                    throw Bad(path, t.Begin < expected ? $"tensor '{t.Name}' overlaps the previous one (starts at {t.Begin}, previous ends at {expected})"
                                                       : $"a hole in the data before tensor '{t.Name}' ({expected} to {t.Begin})");
                if (t.End > dataBytes) throw Bad(path, $"tensor '{t.Name}' ends at byte {t.End}, past the {dataBytes} bytes of data (truncated?)");
                expected = t.End;
            }
            if (expected != dataBytes) throw Bad(path, $"{dataBytes - expected} bytes of data after the last tensor belong to no tensor");
            return (tensors, metadata);
        }
    }

    private static SafeTensorInfo ParseEntry(string path, string name, JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) throw Bad(path, $"tensor '{name}': entry is not an object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad(path, $"tensor '{name}': no dtype");
        var dtype = dt.GetString() switch
        {
            "F32" => SafeTensorsDType.F32, "F16" => SafeTensorsDType.F16, "BF16" => SafeTensorsDType.BF16, "I32" => SafeTensorsDType.I32,
            var other => throw Bad(path, $"tensor '{name}': dtype {other} is not supported (F32, F16, BF16, I32)"),
        };
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad(path, $"tensor '{name}': no shape");
        var shape = new List<int>();
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt32(out int v) || v < 0) throw Bad(path, $"tensor '{name}': shape entry {d} is not a non-negative int");
            shape.Add(v);
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad(path, $"tensor '{name}': data_offsets must be [begin, end]");
        if (!off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Bad(path, $"tensor '{name}': data_offsets [{off[0]}, {off[1]}] are not 0 <= begin <= end");
        var info = new SafeTensorInfo(name, dtype, shape.ToArray(), begin, end);
        long want;
        try { want = checked(info.Numel * ElementSize(dtype)); }
        catch (OverflowException) { throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] is too large"); }
        if (want != end - begin)
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] x {dtype} is {want} bytes, its data span is {end - begin}");
        return info;
    }

    private SafeTensorInfo Info(string name) => Tensors.TryGetValue(name, out var t) ? t : throw Bad(Path, $"no tensor named '{name}'");

    /// <summary>The raw little-endian bytes of a tensor, straight from the mapping.</summary>
    public ReadOnlySpan<byte> Bytes(string name)
    {
        var t = Info(name);
        return new ReadOnlySpan<byte>(_base + _dataStart + t.Begin, checked((int)(t.End - t.Begin)));
    }

    /// <summary>A tensor's values as f32 (F16 and BF16 widened exactly).</summary>
    public float[] ReadF32(string name)
    {
        var t = Info(name);
        var b = Bytes(name);
        var r = new float[t.Numel];
        switch (t.DType)
        {
            case SafeTensorsDType.F32: b.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(r.AsSpan())); break;
            case SafeTensorsDType.F16: for (int i = 0; i < r.Length; i++) r[i] = (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(b[(2 * i)..])); break;
            case SafeTensorsDType.BF16: for (int i = 0; i < r.Length; i++) r[i] = BitConverter.Int32BitsToSingle(BitConverter.ToUInt16(b[(2 * i)..]) << 16); break;
            default: throw Bad(Path, $"tensor '{name}' is {t.DType}, not a floating-point tensor");
        }
        return r;
    }

    /// <summary>Copies a tensor into dst (any backend), checking the shape.</summary>
    public void CopyTo(string name, Tensor dst)
    {
        var t = Info(name);
        if (dst.Shape != new Shape(t.Shape)) throw Bad(Path, $"tensor '{name}' is [{string.Join(", ", t.Shape)}], the model expects {dst.Shape}");
        var values = ReadF32(name);
        // A NaN or infinite weight (a diverged run's checkpoint) would otherwise surface far later, e.g. as "a NaN
        // score" at the end of an evaluation, naming nothing.
        if (!AllFinite(values, out int bad)) throw Bad(Path, $"tensor '{name}' holds {values[bad]} at element {bad} (a diverged run's weights?)");
        dst.Backend.CopyFromHost(values, dst);
    }

    // Whether every value is finite; else the first that is not. MaxMagnitude is NaN with a NaN and infinite with an
    // infinity (one vectorised pass); the position is looked for only on failure.
    private static bool AllFinite(float[] v, out int at)
    {
        at = -1;
        if (v.Length == 0 || float.IsFinite(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(v))) return true;
        at = Array.FindIndex(v, x => !float.IsFinite(x));
        return false;
    }

    public void Dispose()
    {
        if (_view is null) return;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map?.Dispose();
    }
}

/// <summary>Writes safetensors files: tensors in the given order, 8-byte aligned header, written to a temporary name and renamed into place.</summary>
public static class SafeTensorsWriter
{
    public sealed record Entry(string Name, int[] Shape, float[] Values);

    public static void Write(string path, IEnumerable<Entry> entries, SafeTensorsDType dtype = SafeTensorsDType.F32, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (dtype == SafeTensorsDType.I32) throw new ArgumentException("write floating-point tensors (F32, F16, BF16)");
        var list = entries.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in list)
        {
            if (!names.Add(e.Name)) throw new ArgumentException($"tensor '{e.Name}' given twice");
            long numel = e.Shape.Aggregate(1L, (a, d) => a * d);
            if (numel != e.Values.Length) throw new ShapeException($"tensor '{e.Name}': shape [{string.Join(", ", e.Shape)}] has {numel} elements, {e.Values.Length} given");
        }
        int size = SafeTensorsFile.ElementSize(dtype);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in list)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", dtype.ToString());
                w.WriteStartArray("shape");
                foreach (int d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + (long)e.Values.Length * size);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += (long)e.Values.Length * size;
            }
            w.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while ((8 + header.Count) % 8 != 0) header.Add((byte)' ');   // pad with spaces so the data is 8-byte aligned
        // A temporary name of its own (two writers never share it), removed if the write fails (a full disk).
        AtomicFile.Write(path, f =>
        {
            f.Write(BitConverter.GetBytes((long)header.Count));
            f.Write(header.ToArray());
            foreach (var e in list)
            {
                var bytes = new byte[(long)e.Values.Length * size];
                for (int i = 0; i < e.Values.Length; i++)
                {
                    switch (dtype)
                    {
                        case SafeTensorsDType.F32: BitConverter.TryWriteBytes(bytes.AsSpan(4 * i), e.Values[i]); break;
                        case SafeTensorsDType.F16: BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), BitConverter.HalfToUInt16Bits((Half)e.Values[i])); break;
                        case SafeTensorsDType.BF16: BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), ToBf16(e.Values[i])); break;
                    }
                }
                f.Write(bytes);
            }
        });
    }

    /// <summary>f32 -> bf16 with round-to-nearest-even (NaN stays NaN).</summary>
    public static ushort ToBf16(float v)
    {
        uint bits = BitConverter.SingleToUInt32Bits(v);
        if (float.IsNaN(v)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
