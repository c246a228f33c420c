using Microsoft.ML.Tokenizers;

namespace KernelVL.Text;

/// <summary>A batch of tokenised texts: ids and attention masks [B, T] (row-major), T = the longest in the batch.</summary>
public sealed record TokenBatch(int[] Ids, int[] Mask, int Batch, int Length);

/// <summary>
/// Uncased-BERT WordPiece tokenisation (as ViLT/BERT: lower-casing and accent stripping) from a checkpoint's
/// vocab.txt, through Microsoft.ML.Tokenizers' BertTokenizer; adds [CLS] ... [SEP], truncates to the model's
/// maximum text length and pads batches with [PAD] (mask 0).
/// </summary>
public sealed class TextTokenizer
{
    /// <summary>Texts longer than this are refused before tokenising (they would be truncated to a few dozen tokens anyway).</summary>
    public const int MaxCharacters = 10_000;

    private readonly BertTokenizer _bert;

    public int MaxLength { get; }
    public int PadId => _bert.PaddingTokenId;
    public int ClsId => _bert.ClassificationTokenId;
    public int SepId => _bert.SeparatorTokenId;
    public int MaskId => _bert.MaskingTokenId;
    public int UnknownId => _bert.UnknownTokenId;

    /// <summary>The vocab.txt it was read from.</summary>
    public string VocabPath { get; }

    /// <summary>The number of tokens in the vocabulary (the largest id + 1).</summary>
    public int VocabularySize { get; }

    private TextTokenizer(BertTokenizer bert, int maxLength, string vocabPath, int vocabularySize)
    {
        _bert = bert;
        MaxLength = maxLength;
        VocabPath = vocabPath;
        VocabularySize = vocabularySize;
    }

    public static TextTokenizer Load(string vocabPath, int maxLength)
    {
        if (!File.Exists(vocabPath)) throw new BadInputException($"{vocabPath}: no such file");
        if (maxLength < 2) throw new BadInputException($"{vocabPath}: a maximum text length of {maxLength} leaves no room for [CLS] and [SEP]");
        try
        {
            int tokens = CheckLines(vocabPath);
            var bert = BertTokenizer.Create(vocabPath, new BertOptions { LowerCaseBeforeTokenization = true, RemoveNonSpacingMarks = true });
            return new TextTokenizer(bert, maxLength, vocabPath, tokens);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or IOException)
        {
            throw new BadInputException($"{vocabPath}: not a usable WordPiece vocabulary ({e.Message})");
        }
    }

    /// <summary>
    /// The number of tokens in a vocab.txt, one a line, whose ids are their line numbers: a blank line would take an id
    /// that no token has (the model's rows and the ids would disagree, found only mid-run), and a token repeated would
    /// have two; both are bad input naming the file and the line.
    /// </summary>
    private static int CheckLines(string vocabPath)
    {
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        int line = 0;
        foreach (var token in File.ReadLines(vocabPath))
        {
            line++;
            if (string.IsNullOrWhiteSpace(token)) throw new BadInputException($"{vocabPath}: line {line} is blank (each line is one token, its id the line's number)");
            if (!seen.TryAdd(token, line)) throw new BadInputException($"{vocabPath}: line {line} repeats the token '{token}' of line {seen[token]}");
        }
        return line;
    }

    /// <summary>[CLS] tokens [SEP], truncated to <see cref="MaxLength"/>.</summary>
    public int[] Encode(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new BadInputException("empty text: nothing to encode");
        if (text.Length > MaxCharacters) throw new BadInputException($"text of {text.Length} characters is over the {MaxCharacters}-character limit");
        var pieces = _bert.EncodeToIds(text, addSpecialTokens: false);
        int keep = Math.Min(pieces.Count, MaxLength - 2);
        var ids = new int[keep + 2];
        ids[0] = ClsId;
        for (int i = 0; i < keep; i++) ids[i + 1] = pieces[i];
        ids[^1] = SepId;
        return ids;
    }

    /// <summary>
    /// What encoding a query loses: its word pieces, how many are cut off at <see cref="MaxLength"/>, and how many are
    /// [UNK] (words the vocabulary cannot spell). A search warns about both: the encoder never sees them.
    /// </summary>
    public (int Pieces, int CutOff, int Unknown) Losses(string text)
    {
        if (string.IsNullOrWhiteSpace(text) || text.Length > MaxCharacters) return (0, 0, 0);
        var pieces = _bert.EncodeToIds(text, addSpecialTokens: false);
        return (pieces.Count, Math.Max(0, pieces.Count - (MaxLength - 2)), pieces.Count(id => id == UnknownId));
    }

    /// <summary>Encodes a batch, padded to its longest member (or to <see cref="MaxLength"/> with padToMax).</summary>
    public TokenBatch EncodeBatch(IReadOnlyList<string> texts, bool padToMax = false)
    {
        var rows = texts.Select(Encode).ToArray();
        int t = padToMax ? MaxLength : rows.Length == 0 ? 0 : rows.Max(r => r.Length);
        var ids = new int[rows.Length * t];
        var mask = new int[rows.Length * t];
        Array.Fill(ids, PadId);
        for (int b = 0; b < rows.Length; b++)
        {
            rows[b].CopyTo(ids, b * t);
            Array.Fill(mask, 1, b * t, rows[b].Length);
        }
        return new TokenBatch(ids, mask, rows.Length, t);
    }
}
