using System.Globalization;
using System.Text;
using KernelVL.IO;

namespace KernelVL.Text;

/// <summary>
/// Builds a WordPiece vocab.txt for training from scratch: the special tokens ([PAD] = 0, [UNK], [CLS], [SEP], [MASK]),
/// every character seen and its ##continuation (so no word is ever [UNK]), then whole words by frequency. Words are
/// split as the uncased BERT tokenizer splits them (lower case, accents stripped, punctuation on its own).
/// </summary>
public static class VocabBuilder
{
    public static readonly string[] Special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

    public static IEnumerable<string> Words(string text)
    {
        var sb = new StringBuilder();
        foreach (char ch in text.ToLowerInvariant().Normalize(NormalizationForm.FormD))
        {
            if (CharUnicodeInfo.GetUnicodeCategory(ch) == UnicodeCategory.NonSpacingMark) continue;
            if (char.IsWhiteSpace(ch) || char.IsPunctuation(ch) || char.IsSymbol(ch))
            {
                if (sb.Length > 0) { yield return sb.ToString(); sb.Clear(); }
                if (!char.IsWhiteSpace(ch)) yield return ch.ToString();
            }
            else sb.Append(ch);
        }
        if (sb.Length > 0) yield return sb.ToString();
    }

    /// <summary>The vocabulary, at most <paramref name="maxSize"/> entries (words beyond that are spelled with ##pieces).</summary>
    public static List<string> Build(IEnumerable<string> texts, int maxSize)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var chars = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var t in texts)
            foreach (var w in Words(t))
            {
                counts[w] = counts.GetValueOrDefault(w) + 1;
                foreach (var r in w.EnumerateRunes()) chars.Add(r.ToString());
            }
        var vocab = new List<string>(Special);
        var seen = new HashSet<string>(vocab, StringComparer.Ordinal);
        void Add(string s)
        {
            if (seen.Add(s)) vocab.Add(s);
        }
        foreach (var c in chars) Add(c);
        foreach (var c in chars) Add("##" + c);
        if (vocab.Count > maxSize) throw new BadInputException($"the captions use {chars.Count} distinct characters: a vocabulary of {maxSize} cannot hold them and their continuations");
        foreach (var (w, _) in counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (vocab.Count >= maxSize) break;
            Add(w);
        }
        return vocab;
    }

    public static void Write(string path, IReadOnlyList<string> vocab) => AtomicFile.WriteAllText(path, string.Join('\n', vocab) + "\n");
}
