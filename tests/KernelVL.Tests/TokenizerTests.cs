using KernelVL.Text;

namespace KernelVL.Tests;

/// <summary>Golden ids worked out by hand with the uncased-BERT WordPiece rules on a small vocabulary.</summary>
public class TokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvl-tok-").FullName;
    private readonly string _vocab;

    public TokenizerTests()
    {
        _vocab = Path.Combine(_dir, "vocab.txt");
        // id:          0      1      2      3      4     5   6     7       8     9   10     11      12   13     14    15
        File.WriteAllLines(_vocab, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "left", "of", "blue", "square", "##s", "cafe", "the", "small", ","]);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void LowerCasesStripsAccentsSplitsWordPiecesAndMarksUnknowns()
    {
        var tok = TextTokenizer.Load(_vocab, 40);
        Assert.Equal([2, 5, 15, 6, 7, 12, 8, 9, 14, 10, 11, 3], tok.Encode("A small RED Circles left of the blue square"));
        Assert.Equal([2, 13, 16, 1, 3], tok.Encode("Café, zebra"));
        Assert.Equal((0, 2, 3, 4, 1), (tok.PadId, tok.ClsId, tok.SepId, tok.MaskId, tok.UnknownId));
    }

    [Fact]
    public void TruncatesToTheMaxLengthAndPadsBatches()
    {
        var tok = TextTokenizer.Load(_vocab, 6);
        Assert.Equal([2, 5, 15, 6, 7, 3], tok.Encode("a small red circle left of the blue square"));
        var batch = tok.EncodeBatch(["red square", "a small blue circle"]);
        Assert.Equal(6, batch.Length);
        Assert.Equal([2, 6, 11, 3, 0, 0, 2, 5, 15, 10, 7, 3], batch.Ids);
        Assert.Equal([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], batch.Mask);
        Assert.Equal(6, tok.EncodeBatch(["red"], padToMax: true).Length);
    }

    [Fact]
    public void EmptyOversizedAndMissingInputsAreClearErrors()
    {
        var tok = TextTokenizer.Load(_vocab, 40);
        Assert.Contains("empty text", Assert.Throws<BadInputException>(() => tok.Encode("   ")).Message);
        Assert.Contains("character limit", Assert.Throws<BadInputException>(() => tok.Encode(new string('a', 20_000))).Message);
        Assert.Contains("no such file", Assert.Throws<BadInputException>(() => TextTokenizer.Load(Path.Combine(_dir, "none.txt"), 40)).Message);
    }
}
