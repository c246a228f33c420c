namespace KernelVL.Training;

public enum TrainStage
{
    /// <summary>Stage 1: the single-stream VL transformer learns with image-text matching (hard in-batch negatives) and masked language modelling.</summary>
    Pretrain,
    /// <summary>Stage 2 (VLDeformer): bidirectional InfoNCE over single-modality embeddings from the same weights.</summary>
    Decompose,
}

/// <summary>
/// Everything a training run is given. Defaults per stage come from <see cref="For"/> (stage 2: PAPER.md's recipe).
/// The options that shape the run (data, batch, schedule, seed) are fingerprinted into the checkpoint, and a resume with
/// different ones is refused.
/// </summary>
public sealed record TrainOptions
{
    public required TrainStage Stage { get; init; }
    /// <summary>Karpathy split JSON.</summary>
    public required string Data { get; init; }
    /// <summary>The folder image paths in <see cref="Data"/> are relative to.</summary>
    public required string Images { get; init; }
    /// <summary>Output folder: the best model (a checkpoint folder), metrics.jsonl, plots, and train/last for resuming.</summary>
    public required string Out { get; init; }
    /// <summary>Checkpoint to start from (stage 2: required; stage 1: optional, else from scratch).</summary>
    public string? Init { get; init; }
    /// <summary>Config preset when training from scratch (tiny, small, base).</summary>
    public string Config { get; init; } = "small";
    /// <summary>vocab.txt when training from scratch; else one is built from the training captions.</summary>
    public string? Vocab { get; init; }
    public int MaxVocab { get; init; } = 4096;
    public string Backend { get; init; } = "cpu";
    public int Seed { get; init; } = 1;
    public int Epochs { get; init; } = 10;
    /// <summary>Effective batch (pairs per optimiser step).</summary>
    public int BatchSize { get; init; } = 64;
    /// <summary>Pairs per forward pass (gradient accumulation; stage 2 uses gradient caching so negatives span the whole batch).</summary>
    public int MicroBatch { get; init; } = 64;
    public float LearningRate { get; init; } = 7.5e-6f;
    public float WeightDecay { get; init; } = 0.05f;
    public float Eps { get; init; } = 1e-8f;
    public float Clip { get; init; } = 1.0f;
    public int Warmup { get; init; } = 200;
    public float Temperature { get; init; } = 0.005f;
    public float MlmProbability { get; init; } = 0.15f;
    /// <summary>Stage 1: share of ITM negatives drawn by similarity (hard); the rest are uniform over the batch (easy).</summary>
    public float HardNegatives { get; init; } = 0.5f;
    /// <summary>Stage 1: weight of the optional image-text contrastive alignment term on [CLS] embeddings (0: ITM + MLM only, as ViLT).</summary>
    public float ItcWeight { get; init; }
    /// <summary>Stage 1: weight of the ranking term (each positive against its hard negatives, softmax over match scores, as ViLT's retrieval fine-tuning; 0: off).</summary>
    public float RankWeight { get; init; }
    /// <summary>Stage 1: negatives per positive on each side (captions for its image, images for its caption).</summary>
    public int NegativesPerSide { get; init; } = 1;
    /// <summary>Evaluate every this many steps (0: at the end of each epoch).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Held-out images evaluated (with all their captions); the cross-encoder's evaluation is quadratic, so stage 1 uses fewer.</summary>
    public int EvalImages { get; init; } = 1000;
    public string EvalSplit { get; init; } = "val";
    /// <summary>Write the resumable checkpoint every this many steps (0: at each evaluation).</summary>
    public int CheckpointEvery { get; init; }
    public bool Resume { get; init; }
    public bool Strict { get; init; }
    public int Workers { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>The stage's defaults: stage 2 as PAPER.md (AdamW 7.5e-6, wd 0.05, clip 1, 200 warm-up steps, tau 0.005); stage 1 as ViLT (1e-4, wd 0.01).</summary>
    public static TrainOptions For(TrainStage stage, string data, string images, string outDir) => stage == TrainStage.Decompose
        ? new() { Stage = stage, Data = data, Images = images, Out = outDir }
        : new() { Stage = stage, Data = data, Images = images, Out = outDir, LearningRate = 1e-4f, WeightDecay = 0.01f, EvalImages = 100 };

    /// <summary>Checks the values; a bad one is a <see cref="BadInputException"/> naming the option.</summary>
    public void Validate()
    {
        void Need(bool ok, string what)
        {
            if (!ok) throw new BadInputException(what);
        }
        Need(!File.Exists(Out), $"--out {Out}: is a file, not a folder");
        Need(Epochs >= 1, $"--epochs must be at least 1, got {Epochs}");
        Need(BatchSize >= 2, $"--batch must be at least 2 (in-batch negatives), got {BatchSize}");
        Need(MicroBatch >= 1, $"--micro-batch must be at least 1, got {MicroBatch}");
        Need(LearningRate > 0 && float.IsFinite(LearningRate), $"--lr must be finite and positive, got {LearningRate}");
        Need(WeightDecay >= 0 && float.IsFinite(WeightDecay), $"--weight-decay must be finite and >= 0, got {WeightDecay}");
        Need(Eps > 0 && float.IsFinite(Eps), $"--eps must be finite and positive, got {Eps}");
        Need(Clip >= 0 && float.IsFinite(Clip), $"--clip must be finite and >= 0 (0: no clipping), got {Clip}");
        Need(Warmup >= 0, $"--warmup must be >= 0, got {Warmup}");
        Need(Temperature > 0 && float.IsFinite(Temperature), $"--temperature must be finite and positive, got {Temperature}");
        Need(MlmProbability > 0 && MlmProbability < 1, $"--mlm-probability must be in (0, 1), got {MlmProbability}");
        Need(ItcWeight >= 0 && float.IsFinite(ItcWeight), $"--itc-weight must be finite and >= 0, got {ItcWeight}");
        Need(RankWeight >= 0 && float.IsFinite(RankWeight), $"--rank-weight must be finite and >= 0, got {RankWeight}");
        Need(NegativesPerSide >= 1 && NegativesPerSide <= 15, $"--negatives must be in 1..15, got {NegativesPerSide}");
        Need(Stage != TrainStage.Pretrain || NegativesPerSide < BatchSize,
            $"--negatives {NegativesPerSide}: a batch of {BatchSize} holds only {BatchSize - 1} other pairs to draw each positive's negatives from (raise --batch or lower --negatives)");
        Need(HardNegatives >= 0 && HardNegatives <= 1, $"--hard-negatives must be in [0, 1], got {HardNegatives}");
        Need(EvalImages >= 2, $"--eval-images must be at least 2, got {EvalImages}");
        Need(EvalEvery >= 0 && CheckpointEvery >= 0, "--eval-every and --checkpoint-every must be >= 0");
        Need(Workers >= 1, $"--workers must be at least 1, got {Workers}");
        Need(Stage == TrainStage.Pretrain || Init is not null, "decomposition starts from a trained VL transformer: give --model");
    }

    /// <summary>
    /// What a resumed run must share with the run it continues, each named as on the command line: the options that shape
    /// the run and the dataset file's SHA-256 (<paramref name="dataSha256"/>: the splits, the schedule's length and the
    /// captions). The fields after --negatives were added on 2026-11-30, the image root on 2026-11-29: see <see cref="LegacyFingerprint"/>.
    /// </summary>
    public IReadOnlyList<(string Option, string Value)> FingerprintFields(string dataSha256)
    {
        static string F(float v) => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        static string I(int v) => v.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return
        [
            ("the stage", Stage.ToString()), ("--data", Path.GetFullPath(Data)), ("--images", Path.TrimEndingDirectorySeparator(Path.GetFullPath(Images))),
            (Stage == TrainStage.Pretrain ? "--init" : "--model", Init is null ? "" : Path.GetFullPath(Init)), ("--config", Config), ("--seed", I(Seed)),
            ("--epochs", I(Epochs)), ("--batch", I(BatchSize)), ("--lr", F(LearningRate)), ("--weight-decay", F(WeightDecay)), ("--warmup", I(Warmup)),
            ("--temperature", F(Temperature)), ("--mlm-probability", F(MlmProbability)), ("--hard-negatives", F(HardNegatives)), ("--itc-weight", F(ItcWeight)),
            ("--rank-weight", F(RankWeight)), ("--negatives", I(NegativesPerSide)),
            ("--clip", F(Clip)), ("--eps", F(Eps)), ("--eval-split", EvalSplit), ("--eval-images", I(EvalImages)), ("the contents of --data", dataSha256),
        ];
    }

    /// <summary>The fingerprint in trainer_state.json: <see cref="FingerprintFields"/>' values, joined by '|'.</summary>
    public string Fingerprint(string dataSha256) => string.Join("|", FingerprintFields(dataSha256).Select(f => f.Value));

    /// <summary>
    /// The forms written before 2026-11-30 (up to --negatives: without --clip, --eps, the evaluation and the data's
    /// contents; <paramref name="withImages"/> false: before 2026-11-29, without the image root too). A resume still
    /// accepts them; the options they lack are then not checked.
    /// </summary>
    public string LegacyFingerprint(bool withImages) => string.Join("|", FingerprintFields("").TakeWhile(f => f.Option != "--clip")
        .Where(f => withImages || f.Option != "--images").Select(f => f.Value));

    /// <summary>The SHA-256 of the dataset file's bytes (lower-case hex), for <see cref="Fingerprint"/>.</summary>
    public string DataSha256()
    {
        using var f = File.OpenRead(Data);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(f));
    }
}

/// <summary>What the trainer reports after each step.</summary>
public sealed record TrainProgress(TrainStage Stage, int Step, int TotalSteps, int Epoch, float Loss, float LearningRate, double ExamplesPerSecond, TimeSpan Elapsed, TimeSpan Eta);

/// <summary>One evaluation on the held-out split.</summary>
public sealed record EvalRecord(int Step, int Epoch, Retrieval.RecallResult Recall, double Seconds, string Mode);

/// <summary>How a run ended.</summary>
public sealed record TrainSummary(int Steps, int Epochs, float FinalLoss, EvalRecord? Best, EvalRecord? Last, int SkippedImages, int SkippedPairs, double Seconds, bool Stopped);
