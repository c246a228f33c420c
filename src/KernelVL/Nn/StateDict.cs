using KernelVL.IO;

namespace KernelVL.Nn;

/// <summary>Saves a module's parameters to safetensors under their names, and loads them back with every mismatch reported by name.</summary>
public static class StateDict
{
    public static void Save(Module module, string path, string prefix = "", SafeTensorsDType dtype = SafeTensorsDType.F32)
        => SafeTensorsWriter.Write(path, module.NamedParameters(prefix).Select(p => new SafeTensorsWriter.Entry(p.Name, p.Tensor.Shape.ToArray(), p.Tensor.ToArray())), dtype);

    /// <summary>
    /// Loads every parameter of the module from the file. Missing, unknown (with <paramref name="allowUnknown"/> false)
    /// and mis-shaped tensors are all listed in one <see cref="BadInputException"/> naming the file; nothing is loaded then.
    /// Parameters for which <paramref name="optional"/> is true may be absent (they keep their initial values).
    /// Tensors for which <paramref name="skip"/> is true (buffers that are no parameters, tied copies) are passed over.
    /// </summary>
    public static void Load(Module module, string path, string prefix = "", bool allowUnknown = false, Func<string, bool>? skip = null, Func<string, bool>? optional = null)
    {
        using var file = SafeTensorsFile.Open(path);
        var wanted = module.NamedParameters(prefix).ToList();
        var names = wanted.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
        var missing = new List<string>();
        var misshaped = new List<string>();
        foreach (var (name, t) in wanted)
        {
            if (!file.Tensors.TryGetValue(name, out var info))
            {
                if (!(optional?.Invoke(name) ?? false)) missing.Add($"{name} {t.Shape}");
            }
            else if (!info.Shape.SequenceEqual(t.Shape.ToArray())) misshaped.Add($"{name} is [{string.Join(", ", info.Shape)}], the model needs {t.Shape}");
        }
        var unknown = allowUnknown ? [] : file.Tensors.Keys.Where(k => !names.Contains(k) && !(skip?.Invoke(k) ?? false)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        static string List(string what, List<string> items) =>
            items.Count == 0 ? "" : $"{items.Count} {what}: {string.Join(", ", items.Take(6))}{(items.Count > 6 ? $", and {items.Count - 6} more" : "")}";
        var parts = new[] { List("mis-shaped", misshaped), List("missing", missing), List("unknown", unknown) }.Where(p => p.Length > 0).ToArray();
        if (parts.Length > 0) throw new BadInputException($"{path}: does not fit the model: {string.Join("; ", parts)}");
        foreach (var (name, t) in wanted)
            if (file.Tensors.ContainsKey(name)) file.CopyTo(name, t);
    }
}
