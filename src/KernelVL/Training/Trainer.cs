using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.Autograd;
using KernelVL.Data;
using KernelVL.Imaging;
using KernelVL.IO;
using KernelVL.Model;
using KernelVL.Retrieval;
using KernelVL.Tensors;
using KernelVL.Text;

namespace KernelVL.Training;

/// <summary>
/// Runs stage 1 (ITM with hard in-batch negatives + MLM) or stage 2 (VLDeformer's bidirectional InfoNCE) over a Karpathy
/// split. All randomness (data order, caption choice, masking, negatives, dropout) is a function of the seed and the
/// step, so a run resumed from its last checkpoint continues exactly as the uninterrupted run would (on the Cpu backend,
/// whose kernels are deterministic). Output folder: the best model by image-to-text R@1 (a checkpoint folder),
/// metrics.jsonl, loss.png, recall.png, and train/last (model + optimizer + trainer state) for --resume.
/// </summary>
public sealed class Trainer
{
    private readonly TrainOptions _o;
    private readonly IBackend _backend;
    public Action<TrainProgress>? Progress { get; set; }
    public Action<EvalRecord>? Evaluated { get; set; }
    public Action<string>? Warn { get; set; }
    public Action<string>? Info { get; set; }
    /// <summary>An evaluation's progress: pairs (stage 1's cross-encoder) or items scored so far, and in all.</summary>
    public Action<long, long>? EvalProgress { get; set; }

    public const string LastFolder = "train/last", MetricsFile = "metrics.jsonl", StateFile = "trainer_state.json", OptimizerFile = "optimizer.safetensors";
    /// <summary>In --out while a run uses it (<see cref="FolderLock"/>): a second run of the same folder is refused.</summary>
    public const string LockFile = ".lock";

    /// <summary>This run's <see cref="TrainOptions.Fingerprint"/>, and the dataset file's hash in it (set by <see cref="Run"/>).</summary>
    private string _fingerprint = "", _dataSha256 = "";

    public Trainer(TrainOptions options, IBackend backend)
    {
        options.Validate();
        _o = options;
        _backend = backend;
    }

    private static int Mix(params long[] parts)
    {
        ulong h = 1469598103934665603UL;
        foreach (long p in parts) h = (h ^ (ulong)p) * 1099511628211UL;
        return (int)(h ^ (h >> 32)) & int.MaxValue;
    }

    /// <summary>
    /// Runs until the last epoch ends or <paramref name="ct"/> is cancelled: then it stops after the step in progress (or
    /// the evaluation in progress, which is dropped) and writes the resumable checkpoint of that step first.
    /// --out is locked (<see cref="LockFile"/>) for the whole run. Every input (data, splits, image folder, the checkpoint
    /// or preset, --out) is checked before anything but the lock is written to --out; a bad one found while setting up
    /// (e.g. fewer than 2 readable held-out images) removes an --out this run created.
    /// </summary>
    public TrainSummary Run(CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        if (!Directory.Exists(_o.Images)) throw new BadInputException($"{_o.Images}: no such folder (the images' root, --images)");
        var data = KarpathyDataset.Load(_o.Data, _o.Strict);
        _dataSha256 = _o.DataSha256();
        _fingerprint = _o.Fingerprint(_dataSha256);
        foreach (var p in data.Problems.Take(5)) Warn?.Invoke(p);
        if (data.Problems.Count > 5) Warn?.Invoke($"... and {data.Problems.Count - 5} more problems in {_o.Data}");
        var train = data.Split("train");
        IReadOnlyList<DatasetImage> held;
        try { held = data.Split(_o.EvalSplit); }
        catch (BadInputException e)
        {
            // No other split in its place, not even by default: the best checkpoint is chosen on this one, and chosen on
            // test it would carry the test results into the model (they would no longer be held out).
            throw new BadInputException($"--eval-split {_o.EvalSplit}: {e.Message}: the best checkpoint is chosen on it, and no other split is used in its place" +
                (_o.EvalSplit == "test" ? "" : " (give --eval-split test to choose it on the test split, whose results are then no longer held out)"));
        }
        held = held.Take(_o.EvalImages).ToList();
        if (train.Count < 2) throw new BadInputException($"{_o.Data}: the train split has {train.Count} image: at least 2 are needed (in-batch negatives)");
        if (held.Count < 2) throw new BadInputException($"{_o.Data}: the held-out split has {held.Count} image: at least 2 are needed to evaluate");
        // Steps are counted in int (the schedule, the checkpoints, the log): a product that does not fit would wrap
        // (a run of "1" step at learning rate 0).
        int perEpoch = Math.Max(1, train.Count / _o.BatchSize);
        long steps = (long)perEpoch * _o.Epochs;
        if (steps > int.MaxValue)
            throw new BadInputException($"--epochs {_o.Epochs}: {steps} steps ({perEpoch} per epoch), more than the {int.MaxValue} a run can count");
        int total = (int)steps;
        string last = Path.Combine(_o.Out, LastFolder);
        if (_o.Init is not null && Paths.Same(_o.Init, _o.Out))
            throw new BadInputException($"--out {_o.Out}: is the checkpoint this run starts from ({(_o.Stage == TrainStage.Pretrain ? "--init" : "--model")}): give another folder");

        bool outExisted = Directory.Exists(_o.Out), outWasEmpty = outExisted && HoldsNothing(_o.Out);
        // One process at a time in --out, from before it is looked at until the run ends: two runs (or two resumes) of
        // one folder would overwrite each other's checkpoints and interleave their metrics.
        using var outLock = FolderLock.TryTake(_o.Out, LockFile)
            ?? throw new BadInputException($"--out {_o.Out}: another kernelvl process is using it (a training run); wait for it to end, or give another folder");
        // A setup that fails after --out was written to (the lock, a built vocabulary) leaves it as it was: removed, or
        // emptied again. The lock goes first (its file with it): on Windows an open file cannot be deleted. Only ever
        // called just before the run throws.
        void UndoOut()
        {
            outLock.Dispose();
            if (!outExisted) Directory.Delete(_o.Out, recursive: true);
            else if (outWasEmpty)
                foreach (var e in Directory.EnumerateFileSystemEntries(_o.Out).ToList())
                    if (Directory.Exists(e)) Directory.Delete(e, recursive: true); else File.Delete(e);
        }

        // The model (a checkpoint read and checked, or a preset and a vocabulary): a bad --init, --model, --vocab or
        // --config leaves no folder behind.
        VlModel created;
        string? bestProblem;
        try
        {
            CheckOut(last);
            RemoveStaleTemporaries(last);
            bestProblem = _o.Resume ? BestProblem(last) : null;   // before the model is made: the check loads a second one
            created = CreateModel(train, last);
        }
        catch when (!outExisted || outWasEmpty)
        {
            UndoOut();
            throw;
        }
        using var model = created;
        var pre = model.Preprocessor();
        var trainImages = new ImageCache(train, _o.Images, pre, _o.Strict) { Warn = Warn };
        var heldImages = new ImageCache(held, _o.Images, pre, _o.Strict) { Warn = Warn };
        try
        {
            // Every evaluation needs them: read once now, so that an unreadable held-out split stops the run before it trains.
            var readable = heldImages.GetMany(Enumerable.Range(0, held.Count).ToList(), _o.Workers).Count(i => i is not null);
            if (readable < 2) throw new BadInputException($"{_o.Data}: {readable} of {held.Count} held-out images readable under {_o.Images}: at least 2 are needed to evaluate");
        }
        catch (BadInputException) when (!outExisted || outWasEmpty)
        {
            UndoOut();
            throw;
        }
        using var opt = new AdamWOptimizer(model) { Eps = _o.Eps, WeightDecay = _o.WeightDecay };

        int step = 0;
        double bestR1 = double.NegativeInfinity;
        EvalRecord? best = null, lastEval = null;
        bool evalPending = false;
        if (_o.Resume && File.Exists(Path.Combine(last, StateFile)))
        {
            var (fingerprint, savedStep, savedBest, savedBestEval, pending) = ReadState(Path.Combine(last, StateFile));
            evalPending = pending;
            CheckFingerprint(fingerprint, Path.Combine(last, StateFile));
            opt.Load(Path.Combine(last, OptimizerFile));
            step = savedStep;
            bestR1 = savedBest ?? double.NegativeInfinity;
            // The best's evaluation, for the summary (the best checkpoint may not change in this run): kept in the state
            // ("best"); a state written before it was is matched with the evaluations the checkpoint's steps logged.
            best = savedBestEval ?? (savedBest is { } r1 ? BestFromMetrics(step, r1) : null);
            if (step != opt.Step) throw new BadInputException($"{last}: the optimizer is at step {opt.Step}, the trainer state at {step}");
            if (bestProblem is not null)
            {
                // The best so far is gone (damaged or removed outside the run): a run that ended now would leave no model.
                // The checkpoint's step is evaluated again, and the best is kept from there.
                Warn?.Invoke($"{bestProblem}: the best checkpoint (i2t R@1 {bestR1:F1}) is lost; step {step} is evaluated first and the best is kept from there");
                bestR1 = double.NegativeInfinity;
                best = null;
                evalPending = true;
            }
            if (evalPending) Info?.Invoke($"resuming {_o.Stage} at step {step} of {total}: its evaluation was cut short, made first");
            else Info?.Invoke(step >= total ? $"the run in {_o.Out} finished at step {step}: nothing to resume" : $"resuming {_o.Stage} at step {step + 1} of {total}");
        }
        else if (_o.Resume) Info?.Invoke($"nothing to resume in {last}: starting");
        if (step > 0 && !File.Exists(MetricsPath))
        {
            // The log of the checkpoint's steps is gone (removed or moved outside the run), and the checkpoint holds no
            // per-step losses to rebuild it from: said, not silently replaced by a log that starts at the resumed step.
            bool more = evalPending || step < total;
            Warn?.Invoke($"{MetricsPath}: missing: the metrics of steps 1 to {step} are lost; " +
                (more ? $"a new {MetricsFile} starts at step {(evalPending ? step : step + 1)} (loss.png and recall.png with it)" : "the run had finished, so none is written"));
        }
        TruncateMetrics(step, dropEvalAtStep: evalPending);

        float loss = float.NaN;
        int skippedPairs = 0;
        var window = new Queue<(double Seconds, int Examples)>();
        bool stopped = false;
        int trained = 0;   // steps of this run that had a batch to train on
        bool fromStart = step == 0;

        // One evaluation on the held-out images; false when it was cancelled (then the step's checkpoint says so, and a
        // resumed run evaluates first).
        bool EvaluateAndKeepBest(int atStep, int epoch)
        {
            try
            {
                lastEval = Evaluate(model, heldImages, held, atStep, epoch, ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return false;
            }
            AppendMetrics(EvalRow(lastEval));
            Evaluated?.Invoke(lastEval);
            if (lastEval.Recall.I2T.R1 > bestR1 || best is null && bestR1 == double.NegativeInfinity)
            {
                bestR1 = lastEval.Recall.I2T.R1;
                best = lastEval;
                model.Save(_o.Out, StageName);   // the best model is the output folder itself
            }
            TrainingPlots.Write(_o.Out);
            return true;
        }

        if (evalPending)
        {
            if (EvaluateAndKeepBest(step, (int)Math.Max(1, ((long)step + perEpoch - 1) / perEpoch))) SaveLast(model, opt, last, step, bestR1, best);
            else stopped = true;
        }
        for (int epoch = step / perEpoch; epoch < _o.Epochs && !stopped; epoch++)
        {
            int first = step - epoch * perEpoch;
            using var loader = new BatchPrefetcher(EpochBatches(train, epoch, perEpoch).Skip(first), trainImages, _o.Workers);
            for (int k = first; k < perEpoch; k++)
            {
                var batch = loader.Next() ?? throw new KernelVLException("the data loader ended early");
                skippedPairs += batch.Skipped;
                var t0 = sw.Elapsed.TotalSeconds;
                step++;
                float lr = Schedule.Cosine(_o.LearningRate, step, _o.Warmup, total);
                if (batch.Items.Count >= 2)
                {
                    trained++;
                    loss = _o.Stage == TrainStage.Decompose ? DecomposeStep(model, batch, step) : PretrainStep(model, batch, step);
                    if (!float.IsFinite(loss)) throw Diverged($"the loss is {loss} at step {step}: training diverged");
                    try { opt.Apply(lr, _o.Clip); }
                    catch (TrainingDivergedException e) { throw Diverged(e.Message); }
                }
                else
                {
                    Warn?.Invoke($"step {step}: fewer than 2 readable pairs in the batch: skipped");
                    opt.ZeroGrad();
                }
                double dt = sw.Elapsed.TotalSeconds - t0;
                window.Enqueue((dt, batch.Items.Count));
                if (window.Count > 20) window.Dequeue();
                double eps = window.Sum(w => w.Examples) / Math.Max(1e-9, window.Sum(w => w.Seconds));
                var eta = TimeSpan.FromSeconds(window.Average(w => w.Seconds) * (total - step));
                var row = new JsonObject { ["step"] = step, ["epoch"] = epoch + 1, ["loss"] = float.IsFinite(loss) ? loss : null, ["lr"] = lr, ["examples_per_s"] = Math.Round(eps, 2), ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 2) };
                if (_lastParts is not null) foreach (var (key, value) in _lastParts) row[key] = value?.DeepClone();   // stage 1: the ITM and MLM terms
                AppendMetrics(row);
                Progress?.Invoke(new TrainProgress(_o.Stage, step, total, epoch + 1, loss, lr, eps, sw.Elapsed, eta));
                bool endOfEpoch = k == perEpoch - 1;
                if (fromStart && epoch == 0 && endOfEpoch && trained == 0)
                {
                    // Nothing could be trained on: bad input, found before any evaluation or checkpoint of the empty run.
                    if (!outExisted || outWasEmpty) UndoOut();
                    throw new BadInputException($"{_o.Data}: no batch of the first epoch had 2 readable pairs ({trainImages.FailedCount} of {train.Count} training images unreadable under {_o.Images})");
                }
                bool eval = _o.EvalEvery > 0 ? step % _o.EvalEvery == 0 || step == total : endOfEpoch;
                if (ct.IsCancellationRequested)
                {
                    // Stopped (Ctrl-C): this step's checkpoint, its evaluation (if it had one) left for the resumed run.
                    SaveLast(model, opt, last, step, bestR1, best, evalPending: eval);
                    stopped = true;
                    break;
                }
                if (eval && !EvaluateAndKeepBest(step, epoch + 1))
                {
                    SaveLast(model, opt, last, step, bestR1, best, evalPending: true);
                    stopped = true;
                    break;
                }
                if (eval || (_o.CheckpointEvery > 0 && step % _o.CheckpointEvery == 0) || step == total)
                    SaveLast(model, opt, last, step, bestR1, best);
                if (eval && ct.IsCancellationRequested)
                {
                    // Stopped during an evaluation that does not look at the token (stage 2's, seconds): its checkpoint is written.
                    stopped = true;
                    break;
                }
            }
        }
        if (!stopped) TrainingPlots.Write(_o.Out);
        return new TrainSummary(step, _o.Epochs, loss, best, lastEval, trainImages.FailedCount + heldImages.FailedCount, skippedPairs, sw.Elapsed.TotalSeconds, stopped);
    }

    /// <summary>
    /// Why the best checkpoint (--out itself) that the trainer state in <paramref name="last"/> counts on cannot be loaded;
    /// null when it loads, or when the state has no best yet (no evaluation ran).
    /// </summary>
    private string? BestProblem(string last)
    {
        string state = Path.Combine(last, StateFile);
        if (!File.Exists(state) || ReadState(state).BestR1 is null) return null;
        try
        {
            using var best = VlModel.Load(_o.Out, _backend);
            return null;
        }
        catch (Exception e) when (e is KernelVLException or IOException)
        {
            return e.Message;
        }
    }

    /// <summary>A divergence, with the options that set the step's size and the loss's sharpness as they were given.</summary>
    private TrainingDivergedException Diverged(string what)
    {
        static string F(float v) => v.ToString("G3", System.Globalization.CultureInfo.InvariantCulture);
        string hint = $"lower --lr (now {F(_o.LearningRate)})";
        if (_o.Stage == TrainStage.Decompose) hint += $" or raise --temperature (now {F(_o.Temperature)}: a small one sharpens the softmax until it overflows)";
        if (_o.Clip == 0) hint += ", or clip the gradients (--clip; now 0: none)";
        return new TrainingDivergedException($"{what}; {hint}");
    }

    /// <summary>The stage this run's checkpoints record in their config.json (<see cref="VlTransformerConfig.Stage"/>).</summary>
    private string StageName => _o.Stage == TrainStage.Pretrain ? VlTransformerConfig.PretrainStage : VlTransformerConfig.DecomposeStage;

    private VlModel CreateModel(IReadOnlyList<DatasetImage> train, string last)
    {
        var heads = _o.Stage == TrainStage.Pretrain ? VlHeads.Itm | VlHeads.Mlm : VlHeads.None;
        if (_o.Resume && File.Exists(Path.Combine(last, StateFile))) return VlModel.Load(last, _backend, ensureHeads: heads, seed: _o.Seed);
        if (_o.Init is not null)
        {
            // The output of decompose given to it again (its stage-1 checkpoint was meant) would be fine-tuned a second
            // time, silently: refused. An unmarked checkpoint (older, or converted) is taken as it is.
            string config = Path.Combine(_o.Init, VlModel.ConfigFile);
            if (_o.Stage == TrainStage.Decompose && File.Exists(config) && VlTransformerConfig.Load(config).Stage == VlTransformerConfig.DecomposeStage)
                throw new BadInputException($"--model {_o.Init}: is already decomposed (written by decompose: {VlModel.ConfigFile} has kernelvl_stage {VlTransformerConfig.DecomposeStage}); " +
                    "give the stage-1 checkpoint it came from (the --out of pretrain)");
            return VlModel.Load(_o.Init, _backend, ensureHeads: heads, seed: _o.Seed);
        }
        // From scratch: a preset, and a vocabulary (given, or built from the training captions) it is sized to; the
        // built vocabulary is the first file written to --out.
        var cfg = VlTransformerConfig.Preset(_o.Config);
        string vocabPath = _o.Vocab ?? Path.Combine(_o.Out, "train", "vocab.txt");
        if (_o.Vocab is null)
        {
            var vocab = VocabBuilder.Build(train.SelectMany(i => i.Captions), _o.MaxVocab);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(vocabPath))!);
            VocabBuilder.Write(vocabPath, vocab);
            Info?.Invoke($"built a vocabulary of {vocab.Count} tokens from the training captions");
        }
        var tok = TextTokenizer.Load(vocabPath, cfg.MaxTextLength);
        // MLM replaces some masked tokens by a random word: there must be one besides the special tokens.
        if (tok.VocabularySize <= VocabBuilder.Special.Length)
            throw new BadInputException($"{vocabPath}: {tok.VocabularySize} tokens, no word besides the special ones ({string.Join(", ", VocabBuilder.Special)})");
        cfg = cfg with { VocabSize = tok.VocabularySize };
        return new VlModel(_backend, cfg, _o.Seed, heads: VlHeads.Itm | VlHeads.Mlm) { Tokenizer = tok };
    }

    /// <summary>Epoch e: the training images in a seeded order, one seeded caption each, cut into batches.</summary>
    private IEnumerable<IReadOnlyList<PairItem>> EpochBatches(IReadOnlyList<DatasetImage> train, int epoch, int perEpoch)
    {
        int[] order;
        var rng = new Random(Mix(_o.Seed, epoch, 11));
        if (train.Any(i => i.Group is not null))
        {
            // Groups (images that are each other's hard negatives) stay together, so they meet in a batch.
            var groups = Enumerable.Range(0, train.Count).GroupBy(i => train[i].Group ?? -1 - i).Select(g => g.ToArray()).ToArray();
            rng.Shuffle(groups);
            order = groups.SelectMany(g => g).ToArray();
        }
        else
        {
            order = Enumerable.Range(0, train.Count).ToArray();
            rng.Shuffle(order);
        }
        for (int k = 0; k < perEpoch; k++)
        {
            int n = Math.Min(_o.BatchSize, train.Count);
            var items = new List<PairItem>(n);
            for (int i = 0; i < n; i++)
            {
                int img = order[(k * _o.BatchSize + i) % order.Length];
                var caps = train[img].Captions;
                items.Add(new PairItem(img, caps[new Random(Mix(_o.Seed, epoch, img, 13)).Next(caps.Count)]));
            }
            yield return items;
        }
    }

    private JsonObject? _lastParts;

    private static List<T> Chunk<T>(IReadOnlyList<T> items, int start, int count) => Enumerable.Range(start, count).Select(i => items[i]).ToList();

    private ulong DropoutSeed(int step, int chunk, int side) => (ulong)Mix(_o.Seed, step, chunk, side, 17);

    /// <summary>
    /// Stage 2 with gradient caching: embeddings of the whole batch without a graph, the InfoNCE loss and its gradient with
    /// respect to the embeddings, then each micro-batch recomputed (same dropout) with a graph and back-propagated from
    /// those gradients. The negatives span the whole batch however small the micro-batch.
    /// </summary>
    private float DecomposeStep(VlModel model, LoadedBatch batch, int step)
    {
        int n = batch.Items.Count, d = model.Config.HiddenSize, mb = _o.MicroBatch;
        var captions = batch.Items.Select(i => i.Caption).ToList();
        var t = new float[n * d];
        var v = new float[n * d];
        using (Tape.NoGrad())
        {
            for (int s = 0, c = 0; s < n; s += mb, c++)
            {
                int m = Math.Min(mb, n - s);
                using var scope = new TensorScope();
                _backend.CopyToHost(model.Embed(model.TextBatch(Chunk(captions, s, m)), training: true, DropoutSeed(step, c, 0)), t.AsSpan(s * d, m * d));
                _backend.CopyToHost(model.Embed(model.ImageBatch(Chunk(batch.Images, s, m)), training: true, DropoutSeed(step, c, 1)), v.AsSpan(s * d, m * d));
            }
        }
        float loss;
        var gt = new float[n * d];
        var gv = new float[n * d];
        using (var scope = new TensorScope())
        {
            var tt = Upload(t, n, d);
            var vv = Upload(v, n, d);
            tt.RequiresGrad = vv.RequiresGrad = true;
            var l = Ops.InfoNce(tt, vv, _o.Temperature);
            loss = l.Item();
            Tape.Backward(l);
            _backend.CopyToHost(tt.Grad!, gt);
            _backend.CopyToHost(vv.Grad!, gv);
            tt.Grad!.Dispose();
            vv.Grad!.Dispose();
        }
        for (int s = 0, c = 0; s < n; s += mb, c++)
        {
            int m = Math.Min(mb, n - s);
            using (var scope = new TensorScope())
            {
                var e = model.Embed(model.TextBatch(Chunk(captions, s, m)), training: true, DropoutSeed(step, c, 0));
                Tape.Backward(Ops.SumAll(Ops.Mul(e, Upload(gt[(s * d)..((s + m) * d)], m, d))));
            }
            using (var scope = new TensorScope())
            {
                var e = model.Embed(model.ImageBatch(Chunk(batch.Images, s, m)), training: true, DropoutSeed(step, c, 1));
                Tape.Backward(Ops.SumAll(Ops.Mul(e, Upload(gv[(s * d)..((s + m) * d)], m, d))));
            }
        }
        return loss;
    }

    private Tensor Upload(float[] host, params int[] dims)
    {
        var x = _backend.Empty(new Shape(dims));
        _backend.CopyFromHost(host, x);
        return x;
    }

    private Tensor UploadInts(int[] host, params int[] dims)
    {
        var x = _backend.Empty(new Shape(dims), DType.I32);
        _backend.CopyFromHost(host, x);
        return x;
    }

    /// <summary>
    /// Stage 1's pairs for a batch of n positives (item i: caption i of image images[i]): per positive i a run of 1 + 2K
    /// pairs, (image i, caption i, 1), then K other captions for image i, then K other images for caption i (as batch
    /// indices, label 0). Each negative: with probability <paramref name="hard"/> drawn by softmax(sim / 0.1) over the
    /// batch, else uniformly; never the positive's own image or caption text. whole: every positive got all its 2K
    /// negatives (false when a batch has too few distinct captions; the missing ones are left out).
    /// </summary>
    internal static List<(int Image, int Caption, int Label)> PretrainPairs(IReadOnlyList<string> captions, IReadOnlyList<int> images,
        Func<int, int, double> sim, int K, float hard, Random rng, out bool whole)
    {
        int n = captions.Count;
        bool Other(int j, int self) => j != self && images[j] != images[self] && captions[j] != captions[self];
        int Sample(int self)
        {
            if (rng.NextDouble() >= hard)
            {
                // An easy negative: any other pair's caption / image (uniform), for the part of the batch that is not hard.
                var others = Enumerable.Range(0, n).Where(j => Other(j, self)).ToList();
                return others.Count == 0 ? -1 : others[rng.Next(others.Count)];
            }
            var w = new double[n];
            double max = double.NegativeInfinity;
            for (int j = 0; j < n; j++)
                if (Other(j, self)) max = Math.Max(max, sim(self, j));
            if (double.IsNegativeInfinity(max)) return -1;
            double sum = 0;
            for (int j = 0; j < n; j++) sum += w[j] = Other(j, self) ? Math.Exp((sim(self, j) - max) / 0.1) : 0;
            double u = rng.NextDouble() * sum;
            for (int j = 0; j < n; j++) if ((u -= w[j]) <= 0 && w[j] > 0) return j;
            return Array.FindLastIndex(w, x => x > 0);
        }
        var pairs = new List<(int Image, int Caption, int Label)>(n * (1 + 2 * K));
        whole = true;
        for (int i = 0; i < n; i++)
        {
            var cs = Enumerable.Range(0, K).Select(_ => Sample(i)).ToArray();
            var ims = Enumerable.Range(0, K).Select(_ => Sample(i)).ToArray();
            pairs.Add((i, i, 1));
            foreach (int jc in cs) if (jc >= 0) pairs.Add((i, jc, 0)); else whole = false;
            foreach (int ji in ims) if (ji >= 0) pairs.Add((ji, i, 0)); else whole = false;
        }
        return pairs;
    }

    /// <summary>
    /// Stage 1: ITM over the positives, K negative captions per image and K negative images per caption (sampled by the
    /// model's own caption similarity, ALBEF-style, or uniformly; never a pair with the same caption text or image), a
    /// ranking term over each such group, plus MLM on the positives' captions (15% of tokens: 80% [MASK], 10% a random
    /// token, 10% kept).
    /// </summary>
    private float PretrainStep(VlModel model, LoadedBatch batch, int step)
    {
        int n = batch.Items.Count, d = model.Config.HiddenSize, mb = _o.MicroBatch;
        var captions = batch.Items.Select(i => i.Caption).ToList();
        var rng = new Random(Mix(_o.Seed, step, 19));
        // Caption similarity from the current weights, no graph.
        var t = new float[n * d];
        using (Tape.NoGrad())
        {
            for (int s = 0; s < n; s += mb)
            {
                int m = Math.Min(mb, n - s);
                using var scope = new TensorScope();
                _backend.CopyToHost(model.Embed(model.TextBatch(Chunk(captions, s, m))), t.AsSpan(s * d, m * d));
            }
        }
        double Dot(float[] a, int i, float[] b, int j) => System.Numerics.Tensors.TensorPrimitives.Dot(a.AsSpan(i * d, d), b.AsSpan(j * d, d));
        // Hardness by the model's caption-caption similarity: it is informative from the first step (captions that share
        // their words embed alike), where the image-text similarity of a cross-encoder in training is not.
        int K = _o.NegativesPerSide, groupSize = 1 + 2 * K;
        var images = batch.Items.Select(it => it.Image).ToList();
        var pairs = PretrainPairs(captions, images, (i, j) => Dot(t, i, t, j), K, _o.HardNegatives, rng, out bool whole);
        // Micro-batches hold whole groups, so the ranking term (below) sees each positive beside its negatives.
        int chunkPairs = whole ? Math.Max(groupSize, mb / groupSize * groupSize) : mb;
        float total = 0, itm = 0, rank = 0;
        for (int s = 0; s < pairs.Count; s += chunkPairs)
        {
            int m = Math.Min(chunkPairs, pairs.Count - s);
            var chunk = pairs.GetRange(s, m);
            using var scope = new TensorScope();
            var x = model.TextBatch(chunk.Select(p => captions[p.Caption]).ToList()) with { Images = PatchBatch.From(chunk.Select(p => batch.Images[p.Image]).ToList(), model.Config.PatchSize) };
            var logits = model.ItmLogits(model.Pooled(model.Encode(x, training: true, DropoutSeed(step, s, 2))));   // [m, 2]
            var l = Ops.Scale(Ops.CrossEntropy(logits, UploadInts(chunk.Select(p => p.Label).ToArray(), m)), m / (float)pairs.Count);
            itm += l.Item();
            if (whole && _o.RankWeight > 0)
            {
                // ViLT's retrieval objective: each positive ranked against its negatives by a softmax over match scores
                // (logit(match) - logit(no match)): image i over {caption i, its K negatives}, caption i likewise.
                int g = m / groupSize;
                var score = Ops.Reshape(Ops.MatMul(logits, Upload([-1f, 1f], 2, 1)), g, groupSize, 1);                  // [g, 1 + 2K, 1]
                var byImage = Ops.Reshape(Ops.Slice(score, 0, 1 + K), g, 1 + K);                                          // [g, 1 + K]
                var byCaption = Ops.Reshape(Ops.Concat(Ops.Slice(score, 0, 1), Ops.Slice(score, 1 + K, K)), g, 1 + K);   // [g, 1 + K]
                var zeros = UploadInts(new int[g], g);
                var r = Ops.Scale(Ops.Add(Ops.CrossEntropy(byImage, zeros), Ops.CrossEntropy(byCaption, zeros)), _o.RankWeight * g / (float)n);
                rank += r.Item();
                l = Ops.Add(l, r);
            }
            Tape.Backward(l);
        }
        total = itm + rank;
        _lastParts = new JsonObject { ["itm"] = Math.Round(itm, 5), ["rank"] = Math.Round(rank, 5) };

        // Optional alignment term (ALBEF's "align before fuse"): InfoNCE over the single-modality [CLS] embeddings of the
        // positives, per micro-batch. Image-text matching learned from scratch sits at the base rate for a long time (the
        // match is an interaction of both inputs); aligned unimodal features give the fusion something to compare.
        float itc = 0;
        if (_o.ItcWeight > 0)
            for (int s = 0; s < n; s += mb)
            {
                int m = Math.Min(mb, n - s);
                if (m < 2) continue;
                using var scope = new TensorScope();
                var te = model.Embed(model.TextBatch(Chunk(captions, s, m)), training: true, DropoutSeed(step, s, 4), VlPooling.Cls);
                var ve = model.Embed(model.ImageBatch(Chunk(batch.Images, s, m)), training: true, DropoutSeed(step, s, 5), VlPooling.Cls);
                var l = Ops.Scale(Ops.InfoNce(te, ve, 0.07f), _o.ItcWeight * m / (float)n);
                itc += l.Item();
                Tape.Backward(l);
            }
        _lastParts["itc"] = Math.Round(itc, 5);
        total += itc;

        // MLM on the positives.
        var tok = model.Tokenizer!;
        var enc = tok.EncodeBatch(captions);
        int len = enc.Length, vocab = model.Config.VocabSize;
        var ids = (int[])enc.Ids.Clone();
        var targets = Enumerable.Repeat(-1, ids.Length).ToArray();
        int masked = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = enc.Ids[i];
            if (enc.Mask[i] == 0 || id == tok.ClsId || id == tok.SepId || rng.NextDouble() >= _o.MlmProbability) continue;
            targets[i] = id;
            masked++;
            double r = rng.NextDouble();
            ids[i] = r < 0.8 ? tok.MaskId : r < 0.9 ? VocabBuilder.Special.Length + rng.Next(vocab - VocabBuilder.Special.Length) : id;
        }
        if (masked == 0)
        {
            int i = 1;   // always at least one target: the first word of the first caption
            targets[i] = enc.Ids[i];
            ids[i] = tok.MaskId;
            masked = 1;
        }
        for (int s = 0; s < n; s += mb)
        {
            int m = Math.Min(mb, n - s);
            var tg = targets[(s * len)..((s + m) * len)];
            int count = tg.Count(x => x >= 0);
            if (count == 0) continue;
            using var scope = new TensorScope();
            var x = new VlBatch(m, ids[(s * len)..((s + m) * len)], enc.Mask[(s * len)..((s + m) * len)], len, PatchBatch.From(Chunk(batch.Images, s, m), model.Config.PatchSize));
            var logits = Ops.Reshape(model.MlmLogits(model.Encode(x, training: true, DropoutSeed(step, s, 3))), m * len, vocab);
            var l = Ops.Scale(Ops.CrossEntropy(logits, UploadInts(tg, m * len)), count / (float)masked);
            total += l.Item();
            Tape.Backward(l);
        }
        _lastParts!["mlm"] = Math.Round(total - itm - rank - itc, 5);
        return total;
    }

    /// <summary>Recall on the held-out images: decomposed (stage 2) or the cross-encoder over every pair (stage 1).</summary>
    private EvalRecord Evaluate(VlModel model, ImageCache cache, IReadOnlyList<DatasetImage> held, int step, int epoch, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var imgs = cache.GetMany(Enumerable.Range(0, held.Count).ToList(), _o.Workers);
        var keep = Enumerable.Range(0, held.Count).Where(i => imgs[i] is not null).ToList();
        if (keep.Count < 2) throw new BadInputException($"{_o.Data}: fewer than 2 readable held-out images to evaluate on");
        var images = keep.Select(i => imgs[i]!).ToList();
        var captions = new List<string>();
        var owner = new List<int>();
        for (int k = 0; k < keep.Count; k++)
            foreach (var c in held[keep[k]].Captions) { captions.Add(c); owner.Add(k); }
        RecallResult r;
        string mode;
        if (_o.Stage == TrainStage.Decompose)
        {
            var enc = new DecomposedEncoder(model, Math.Max(8, _o.MicroBatch));
            r = Recall.FromEmbeddings(enc.EncodeImages(images), enc.EncodeTexts(captions), model.Config.HiddenSize, owner);
            mode = "decomposed";
        }
        else
        {
            long pairs = (long)images.Count * captions.Count;
            var scores = RetrievalEval.CrossScores(model, images, captions, Math.Max(8, _o.MicroBatch), done =>
            {
                ct.ThrowIfCancellationRequested();
                EvalProgress?.Invoke(done, pairs);
            });
            r = Recall.Evaluate(scores, images.Count, owner);
            mode = "cross";
        }
        return new EvalRecord(step, epoch, r, sw.Elapsed.TotalSeconds, mode);
    }

    /// <summary>A resume must run with the options of the run it continues: another one is bad input naming the options that differ.</summary>
    private void CheckFingerprint(string? stored, string statePath)
    {
        if (stored == _fingerprint) return;
        if (stored == _o.LegacyFingerprint(withImages: true) || stored == _o.LegacyFingerprint(withImages: false))
        {
            // Written before these were recorded: they cannot be checked, and refusing would strand the run.
            Info?.Invoke($"{statePath}: written before --clip, --eps, --eval-split, --eval-images and the contents of --data were recorded: they are not checked");
            return;
        }
        var fields = _o.FingerprintFields(_dataSha256);
        var was = stored?.Split('|');
        if (was?.Length == fields.Count && _o.Init is not null)
        {
            // With --init the model is the checkpoint's and --config names nothing; a run started before --config was
            // refused beside --init recorded the one it was given, which cannot be given again now: not checked.
            int config = fields.Select(f => f.Option).ToList().IndexOf("--config");
            if (fields.Where((f, i) => i != config && was[i] != f.Value).Any() is false)
            {
                Info?.Invoke($"{statePath}: the run it continues recorded --config {was[config]}, which --init makes moot: not checked");
                return;
            }
        }
        string which = was?.Length == fields.Count
            ? string.Join(", ", fields.Where((f, i) => was[i] != f.Value).Select(f => f.Option))
            : "data, batch, schedule or seed";
        throw new BadInputException($"{statePath}: written by a run with other options ({which}); resume with the same ones or start a new --out");
    }

    /// <summary>
    /// trainer_state.json: (fingerprint, step, best i2t R@1, the best's evaluation when recorded, whether the step's
    /// evaluation is still to run); a malformed file is bad input naming it.
    /// </summary>
    private static (string? Fingerprint, int Step, double? BestR1, EvalRecord? Best, bool EvalPending) ReadState(string path)
    {
        try
        {
            var st = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new BadInputException($"{path}: not a JSON object");
            int step = st["step"] is JsonValue sv && sv.TryGetValue(out int s) && s >= 0 ? s : throw new BadInputException($"{path}: missing or malformed step");
            double? best = st["best_i2t_r1"] switch
            {
                null => null,
                JsonValue bv when bv.TryGetValue(out double b) => b,
                _ => throw new BadInputException($"{path}: malformed best_i2t_r1"),
            };
            bool pending = st["eval_pending"] is JsonValue pv && pv.TryGetValue(out bool p) && p;
            return (st["fingerprint"] is JsonValue fv && fv.TryGetValue(out string? f) ? f : null, step, best, FromEvalRow(st["best"]), pending);
        }
        catch (JsonException e)
        {
            throw new BadInputException($"{path}: not valid JSON ({e.Message})");
        }
    }

    /// <summary>Nothing in the folder but the lock file (the one this run holds, or one left by a killed run).</summary>
    private static bool HoldsNothing(string folder) => Directory.EnumerateFileSystemEntries(folder).All(e => Path.GetFileName(e) == LockFile);

    /// <summary>
    /// --out must be new or empty, or (with --resume) a training run's folder (the checkpoint the run starts from is refused before).
    /// A kill between SaveLast's two renames left the checkpoint as last.old: put back.
    /// </summary>
    private void CheckOut(string last)
    {
        string o = _o.Out;
        if (!Directory.Exists(o) || HoldsNothing(o)) return;
        if (!File.Exists(MetricsPath) && !Directory.Exists(Path.Combine(o, "train")))
            throw new BadInputException($"--out {o}: not empty and not a training run's folder: give a new or an empty folder");
        // A run that failed before its first checkpoint (bad input found late, a diverged loss) left only its log, plots
        // and vocabulary: nothing to resume or to lose, so a fresh run may start over in it. Only then: a folder with
        // anything else in it (a user's own metrics.jsonl beside their files) is not taken over.
        bool checkpoint = Directory.Exists(last) || Directory.Exists(last + ".old") || File.Exists(Path.Combine(o, VlModel.WeightsFile));
        if (!_o.Resume && checkpoint) throw new BadInputException($"--out {o}: holds a training run: continue it with --resume, or give a new folder");
        string train = Path.Combine(o, "train");
        bool onlyAFailedStart = Directory.EnumerateFileSystemEntries(o).All(e => Path.GetFileName(e) is MetricsFile or "loss.png" or "recall.png" or LockFile or "train" || Stale(Path.GetFileName(e)))
            && (!Directory.Exists(train) || Directory.EnumerateFileSystemEntries(train).All(e => Path.GetFileName(e) is VlModel.VocabFile or "last.tmp" || Stale(Path.GetFileName(e))));
        if (!_o.Resume && !onlyAFailedStart)
            throw new BadInputException($"--out {o}: not empty and not a training run's folder (it holds more than a failed run leaves): give a new or an empty folder");
        if (!_o.Resume) Info?.Invoke($"--out {o}: holds a run that wrote no checkpoint: starting over in it");
        if (!Directory.Exists(last) && Directory.Exists(last + ".old")) Directory.Move(last + ".old", last);
        if (Directory.Exists(last) && !File.Exists(Path.Combine(last, StateFile)))
            throw new BadInputException($"{Path.Combine(last, StateFile)}: missing, so {last} cannot be resumed (remove {last} to start over, or give a new --out)");
    }

    /// <summary>
    /// What a killed run of this folder left half-written (its lock is ours now, so no writer is alive): last.tmp, and the
    /// temporary names of the files a run writes, in --out, train and train/last. Only those names: anything else is
    /// left alone.
    /// </summary>
    private static readonly string[] RunFiles = [MetricsFile, "loss.png", "recall.png", VlModel.ConfigFile, VlModel.WeightsFile, VlModel.VocabFile, StateFile, OptimizerFile];

    // A temporary name of a file a run writes (what a killed write leaves); model.safetensors.tmp and
    // optimizer.safetensors.tmp: the fixed names the safetensors writer used before 2026-11-30.
    private static bool Stale(string name) => RunFiles.Any(f => AtomicFile.IsTemporaryOf(name, f)) || name is $"{VlModel.WeightsFile}.tmp" or $"{OptimizerFile}.tmp";

    /// <summary>
    /// Everything in <paramref name="outDir"/>, a training run's folder (its best checkpoint, log, plots, train/ with the
    /// resumable checkpoint, and what a killed run leaves: the lock, last.tmp, last.old, temporary files), deepest first so
    /// that it can be deleted in that order. Throws <see cref="ForeignEntryException"/> naming the first entry a run does
    /// not write (a user's file, a link), having touched nothing.
    /// </summary>
    public static List<string> RunFolderEntries(string outDir)
    {
        string[] checkpoint = [VlModel.ConfigFile, VlModel.WeightsFile, VlModel.VocabFile, StateFile, OptimizerFile];
        string lastName = Path.GetFileName(LastFolder);
        var found = new List<string>();
        void Walk(string folder, string[] files, string[] folders, Action<string>? into)
        {
            foreach (var e in Directory.EnumerateFileSystemEntries(folder).Order(StringComparer.Ordinal))
            {
                string name = Path.GetFileName(e);
                bool link = new FileInfo(e).LinkTarget is not null;
                if (!link && Directory.Exists(e) && folders.Contains(name)) into?.Invoke(e);
                else if (link || !File.Exists(e) || !(files.Contains(name) || Stale(name)))
                    throw new ForeignEntryException(e, $"{folder}: holds {name}, which a training run does not write");
                found.Add(e);
            }
        }
        Walk(outDir, [MetricsFile, "loss.png", "recall.png", VlModel.ConfigFile, VlModel.WeightsFile, VlModel.VocabFile, LockFile], ["train"],
            train => Walk(train, [VlModel.VocabFile], [lastName, lastName + ".tmp", lastName + ".old"], ckpt => Walk(ckpt, checkpoint, [], null)));
        return found;
    }

    private void RemoveStaleTemporaries(string last)
    {
        if (Directory.Exists(last + ".tmp")) Directory.Delete(last + ".tmp", recursive: true);
        foreach (var folder in new[] { _o.Out, Path.GetDirectoryName(last)!, last })
        {
            if (!Directory.Exists(folder)) continue;
            foreach (var f in Directory.EnumerateFiles(folder).Where(f => Stale(Path.GetFileName(f))).ToList())
                File.Delete(f);
        }
    }

    /// <param name="best">The best checkpoint's evaluation (null before the first, or when an older state did not record it).</param>
    private void SaveLast(VlModel model, AdamWOptimizer opt, string last, int step, double bestR1, EvalRecord? best, bool evalPending = false)
    {
        // Written beside, then swapped in: a kill at any moment leaves either the previous or the new checkpoint whole.
        string tmp = last + ".tmp", old = last + ".old";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        try
        {
            model.Save(tmp, StageName);
            opt.Save(Path.Combine(tmp, OptimizerFile));
            var st = new JsonObject
            {
                ["version"] = 1, ["stage"] = _o.Stage.ToString().ToLowerInvariant(), ["step"] = step, ["fingerprint"] = _fingerprint,
                ["best_i2t_r1"] = double.IsFinite(bestR1) ? bestR1 : null, ["seed"] = _o.Seed,
            };
            if (best is not null) st["best"] = EvalRow(best);
            if (evalPending) st["eval_pending"] = true;
            AtomicFile.WriteAllText(Path.Combine(tmp, StateFile), st.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        catch
        {
            // A failed write (a full disk) leaves the previous checkpoint as it was and gives back the space it took.
            try { Directory.Delete(tmp, true); } catch (IOException) { }
            throw;
        }
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(last)) Directory.Move(last, old);
        Directory.Move(tmp, last);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    private string MetricsPath => Path.Combine(_o.Out, MetricsFile);

    /// <summary>An evaluation as a row of metrics.jsonl (trainer_state.json keeps the best one in the same form).</summary>
    private static JsonObject EvalRow(EvalRecord e) => new()
    {
        ["step"] = e.Step, ["epoch"] = e.Epoch, ["eval"] = e.Mode, ["i2t_r1"] = e.Recall.I2T.R1, ["i2t_r5"] = e.Recall.I2T.R5,
        ["i2t_r10"] = e.Recall.I2T.R10, ["t2i_r1"] = e.Recall.T2I.R1, ["t2i_r5"] = e.Recall.T2I.R5,
        ["t2i_r10"] = e.Recall.T2I.R10, ["rsum"] = e.Recall.Rsum, ["eval_seconds"] = Math.Round(e.Seconds, 2),
    };

    /// <summary>The evaluation in a row of <see cref="EvalRow"/>'s form (median and mean rank are not logged: NaN); null for any other row.</summary>
    private static EvalRecord? FromEvalRow(JsonNode? row)
    {
        if (row is not JsonObject o || o["eval"] is not JsonValue mv || !mv.TryGetValue(out string? mode)) return null;
        int? Int(string key) => o[key] is JsonValue v && v.TryGetValue(out int x) ? x : null;
        double? Num(string key) => o[key] is JsonValue v && v.TryGetValue(out double x) ? x : null;
        if (Int("step") is not { } step || Int("epoch") is not { } epoch
            || Num("i2t_r1") is not { } i1 || Num("i2t_r5") is not { } i5 || Num("i2t_r10") is not { } i10
            || Num("t2i_r1") is not { } t1 || Num("t2i_r5") is not { } t5 || Num("t2i_r10") is not { } t10)
            return null;
        var recall = new RecallResult(new RecallAt(i1, i5, i10, double.NaN, double.NaN), new RecallAt(t1, t5, t10, double.NaN, double.NaN));
        return new EvalRecord(step, epoch, recall, Num("eval_seconds") ?? 0, mode);
    }

    /// <summary>
    /// The best checkpoint's evaluation from metrics.jsonl (a state written before trainer_state.json recorded it): the
    /// first evaluation up to the checkpoint's step with its i2t R@1 (a later one replaces the best only when higher).
    /// </summary>
    private EvalRecord? BestFromMetrics(int step, double bestR1)
    {
        if (!File.Exists(MetricsPath)) return null;
        foreach (var line in File.ReadLines(MetricsPath))
        {
            EvalRecord? e;
            try { e = FromEvalRow(JsonNode.Parse(line)); }
            catch (JsonException) { continue; }
            if (e is not null && e.Step <= step && e.Recall.I2T.R1 == bestR1) return e;
        }
        return null;
    }

    private void AppendMetrics(JsonObject row)
    {
        using var f = new FileStream(MetricsPath, FileMode.Append, FileAccess.Write, FileShare.Read);
        using var w = new StreamWriter(f);
        w.WriteLine(row.ToJsonString());
    }

    /// <summary>On a fresh start the log starts empty; on resume the rows after the checkpoint's step (from the killed run) are dropped.</summary>
    /// <param name="dropEvalAtStep">The checkpoint owes its step's evaluation: a row of it (from a run killed after the
    /// evaluation but before the checkpoint that clears the debt) is dropped, as the evaluation is made again.</param>
    private void TruncateMetrics(int step, bool dropEvalAtStep = false)
    {
        if (!File.Exists(MetricsPath)) return;
        var keep = File.ReadAllLines(MetricsPath).Where(l =>
        {
            try { return step > 0 && JsonNode.Parse(l) is JsonObject o && (int?)o["step"] <= step && !(dropEvalAtStep && o["eval"] is not null && (int?)o["step"] == step); }
            catch (JsonException) { return false; }
        }).ToList();
        AtomicFile.WriteAllText(MetricsPath, keep.Count == 0 ? "" : string.Join('\n', keep) + "\n");
    }
}
