using System.CommandLine;
using KernelVL.Backends;
using KernelVL.Training;

namespace KernelVL.Cli;

/// <summary>`kernelvl pretrain` (stage 1) and `kernelvl decompose` (stage 2, VLDeformer).</summary>
internal static class TrainCommands
{
    /// <summary>--device: auto = the cuda backend where a GPU is present, else cpu.</summary>
    public static Option<string> DeviceOption() => new("--device") { Description = "Backend: auto (cuda where a GPU is present, else cpu), cpu, cuda, ilgpu, ilgpu-cuda, ilgpu-cpu, reference", DefaultValueFactory = _ => "auto" };

    public static string ResolveDevice(string device)
    {
        // auto takes a real GPU only: with KERNELVL_CUDA_DRIVER naming the host emulator's driver, cuda must be asked for.
        if (device == "auto")
            return BackendFactory.Unavailable("cuda") is null && string.IsNullOrEmpty(Environment.GetEnvironmentVariable(KernelVL.Backends.Cuda.CudaBackend.DriverVariable)) ? "cuda" : "cpu";
        if (BackendFactory.Unavailable(device) is { } why) throw new BadInputException($"--device {device}: {why}");
        if (device == "ilgpu" && BackendFactory.Resolve(device) == "ilgpu-cpu")
            Console.Error.WriteLine("kernelvl: warning: --device ilgpu: no CUDA GPU here, so ILGPU's CPU accelerator, a test backend ~400x slower than --device cpu");
        return device;
    }

    public static Command Pretrain() => Create(TrainStage.Pretrain);
    public static Command Decompose() => Create(TrainStage.Decompose);

    private static Command Create(TrainStage stage)
    {
        bool pre = stage == TrainStage.Pretrain;
        var d = TrainOptions.For(stage, "", "", "");
        var data = new Option<string>("--data") { Description = "Karpathy split JSON (train, val/test splits)", Required = true };
        var images = new Option<string>("--images") { Description = "Folder the dataset's image paths are relative to (default: the JSON's folder)" };
        var outDir = new Option<string>("--out") { Description = "Output folder: the best checkpoint, metrics.jsonl, loss.png, recall.png, train/last for --resume", Required = true };
        var model = new Option<string>(pre ? "--init" : "--model") { Description = pre ? "Continue from this checkpoint (default: train from scratch)" : "The stage-1 checkpoint to decompose", Required = !pre };
        var config = new Option<string>("--config") { Description = "Model size when training from scratch: tiny, small, base", DefaultValueFactory = _ => d.Config };
        var vocab = new Option<string>("--vocab") { Description = "vocab.txt when training from scratch (default: built from the training captions)" };
        var epochs = new Option<int>("--epochs") { Description = "Passes over the training images", DefaultValueFactory = _ => d.Epochs };
        var batch = new Option<int>("--batch") { Description = "Pairs per optimiser step (the effective batch)", DefaultValueFactory = _ => d.BatchSize };
        var micro = new Option<int>("--micro-batch") { Description = "Pairs per forward pass (accumulated up to --batch)", DefaultValueFactory = _ => d.MicroBatch };
        var lr = new Option<float>("--lr") { Description = "Peak learning rate (AdamW)", DefaultValueFactory = _ => d.LearningRate };
        var wd = new Option<float>("--weight-decay") { Description = "AdamW weight decay (matrices only)", DefaultValueFactory = _ => d.WeightDecay };
        var eps = new Option<float>("--eps") { Description = "AdamW epsilon", DefaultValueFactory = _ => d.Eps };
        var clip = new Option<float>("--clip") { Description = "Gradient norm clip (0: none)", DefaultValueFactory = _ => d.Clip };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps before the cosine decay", DefaultValueFactory = _ => d.Warmup };
        var temp = new Option<float>("--temperature") { Description = "InfoNCE temperature tau", DefaultValueFactory = _ => d.Temperature };
        var mlm = new Option<float>("--mlm-probability") { Description = "Share of caption tokens masked for MLM", DefaultValueFactory = _ => d.MlmProbability };
        var itc = new Option<float>("--itc-weight") { Description = "Weight of an image-text contrastive term on [CLS] embeddings (ALBEF's align-before-fuse; 0: off)", DefaultValueFactory = _ => d.ItcWeight };
        var rankW = new Option<float>("--rank-weight") { Description = "Weight of a ranking term: each positive against its hard negatives by softmax over match scores (0: off)", DefaultValueFactory = _ => d.RankWeight };
        var negs = new Option<int>("--negatives") { Description = "ITM negatives per positive on each side (captions for its image, images for its caption)", DefaultValueFactory = _ => d.NegativesPerSide };
        var hard = new Option<float>("--hard-negatives") { Description = "Share of ITM negatives drawn by similarity (the rest uniform over the batch)", DefaultValueFactory = _ => d.HardNegatives };
        var evalEvery = new Option<int>("--eval-every") { Description = "Evaluate every N steps (0: at the end of each epoch)", DefaultValueFactory = _ => d.EvalEvery };
        var evalImages = new Option<int>("--eval-images") { Description = "Held-out images evaluated, with all their captions", DefaultValueFactory = _ => d.EvalImages };
        var evalSplit = new Option<string>("--eval-split") { Description = "Held-out split", DefaultValueFactory = _ => d.EvalSplit };
        var ckptEvery = new Option<int>("--checkpoint-every") { Description = "Write the resumable checkpoint every N steps (0: at each evaluation)", DefaultValueFactory = _ => d.CheckpointEvery };
        var resume = new Option<bool>("--resume") { Description = "Continue the run in --out from its last checkpoint" };
        var strict = new Option<bool>("--strict") { Description = "Stop at the first unreadable image or empty caption instead of skipping it" };
        var seed = new Option<int>("--seed") { Description = "Seed of every random choice (the cpu backend is deterministic under it)", DefaultValueFactory = _ => d.Seed };
        var workers = new Option<int>("--workers") { Description = "Image decoding threads", DefaultValueFactory = _ => d.Workers };
        var device = DeviceOption();
        var cmd = new Command(pre ? "pretrain" : "decompose", pre
            ? "Stage 1: train the single-stream VL transformer (image-text matching with hard negatives + masked language modelling)"
            : "Stage 2 (VLDeformer): decompose a VL transformer into image and text encoders by contrastive fine-tuning");
        foreach (var o in new Option[] { data, images, outDir, model, epochs, batch, micro, lr, wd, eps, clip, warmup, evalEvery, evalImages, evalSplit, ckptEvery, resume, strict, seed, workers, device })
            cmd.Options.Add(o);
        if (pre) { cmd.Options.Add(config); cmd.Options.Add(vocab); cmd.Options.Add(mlm); cmd.Options.Add(hard); cmd.Options.Add(itc); cmd.Options.Add(rankW); cmd.Options.Add(negs); }
        else cmd.Options.Add(temp);
        cmd.SetAction(ErrorReporting.Guard(r =>
        {
            string dataPath = r.GetValue(data)!;
            // --config and --vocab shape a model made from scratch: with --init the checkpoint is the model (its size and
            // its vocabulary), so given ones would be ignored. Only values the user gave: --config has a default.
            if (pre && r.GetValue(model) is { } init && new Option[] { config, vocab }.Where(x => r.GetResult(x) is { Implicit: false }).Select(x => x.Name).ToList() is { Count: > 0 } given)
                throw new BadInputException($"{string.Join(" and ", given)}: {(given.Count == 1 ? "sets" : "set")} up a model trained from scratch, but --init {init} gives the model (its size and vocabulary): drop {(given.Count == 1 ? "it" : "them")}, or drop --init");
            var o = d with
            {
                Data = dataPath,
                Images = r.GetValue(images) ?? Path.GetDirectoryName(Path.GetFullPath(dataPath))!,
                Out = r.GetValue(outDir)!,
                Init = r.GetValue(model),
                Config = r.GetValue(config) ?? d.Config,
                Vocab = r.GetValue(vocab),
                Epochs = r.GetValue(epochs), BatchSize = r.GetValue(batch), MicroBatch = r.GetValue(micro),
                LearningRate = r.GetValue(lr), WeightDecay = r.GetValue(wd), Eps = r.GetValue(eps), Clip = r.GetValue(clip), Warmup = r.GetValue(warmup),
                Temperature = pre ? d.Temperature : r.GetValue(temp), MlmProbability = pre ? r.GetValue(mlm) : d.MlmProbability, HardNegatives = pre ? r.GetValue(hard) : d.HardNegatives, ItcWeight = pre ? r.GetValue(itc) : d.ItcWeight, RankWeight = pre ? r.GetValue(rankW) : d.RankWeight, NegativesPerSide = pre ? r.GetValue(negs) : d.NegativesPerSide,
                EvalEvery = r.GetValue(evalEvery), EvalImages = r.GetValue(evalImages), EvalSplit = r.GetValue(evalSplit)!, CheckpointEvery = r.GetValue(ckptEvery),
                Resume = r.GetValue(resume), Strict = r.GetValue(strict), Seed = r.GetValue(seed), Workers = r.GetValue(workers),
            };
            string dev = ResolveDevice(r.GetValue(device)!);
            return Run(o with { Backend = dev });
        }));
        return cmd;
    }

    /// <param name="onStop">What to tell the user after Ctrl-C or SIGTERM (the demo cannot be resumed: a rerun starts over).</param>
    /// <param name="stop">The caller's handler of Ctrl-C and SIGTERM (the demo's, for its whole run); by default the run's own.</param>
    public static int Run(TrainOptions o, string label = "", string onStop = "continue with the same command and --resume", StopSignal? stop = null)
    {
        using var ownStop = stop is null ? new StopSignal() : null;
        stop ??= ownStop!;
        using var backend = BackendFactory.Create(o.Backend);
        ProgressBar? bar = null;
        var trainer = new Trainer(o, backend);
        var warnings = 0;
        trainer.Info = s => { if (bar is null) Console.Error.WriteLine($"kernelvl: {s}"); else bar.Line($"kernelvl: {s}"); };
        trainer.Warn = s => { warnings++; if (warnings <= 20) { if (bar is null) Console.Error.WriteLine($"kernelvl: warning: {s}"); else bar.Line($"kernelvl: warning: {s}"); } };
        trainer.Progress = p =>
        {
            bar ??= new ProgressBar($"{label}{(o.Stage == TrainStage.Pretrain ? "pretrain" : "decompose")} step", p.TotalSteps);
            bar.Report(p.Step, $"epoch {p.Epoch} loss {p.Loss:F4} lr {p.LearningRate:E2} {p.ExamplesPerSecond:F1} pairs/s");
        };
        ProgressBar? evalBar = null;   // an evaluation before any step (one owed by a stopped run) has no step bar to show it in
        trainer.EvalProgress = (done, all) =>
        {
            if (bar is not null) { bar.Status($"evaluating: {done}/{all} pairs scored by the cross-encoder"); return; }
            evalBar ??= new ProgressBar($"{label}evaluation pairs", all);
            evalBar.Report(done);
            if (done >= all) { evalBar.Dispose(); evalBar = null; }
        };
        trainer.Evaluated = e =>
        {
            string line = $"eval @ step {e.Step} ({e.Mode}, {e.Seconds:F1}s): i2t R@1/5/10 {e.Recall.I2T.R1:F1}/{e.Recall.I2T.R5:F1}/{e.Recall.I2T.R10:F1}  t2i {e.Recall.T2I.R1:F1}/{e.Recall.T2I.R5:F1}/{e.Recall.T2I.R10:F1}  rsum {e.Recall.Rsum:F1}";
            if (bar is null) Console.Error.WriteLine(line); else { bar.Status(""); bar.Line(line); }
        };
        // Ctrl-C and SIGTERM stop after the step in progress, its checkpoint written; without a handler the runtime would
        // end the process and lose the steps since the last checkpoint.
        TrainSummary s;
        try
        {
            s = trainer.Run(stop.Token);
        }
        finally
        {
            bar?.Dispose();
            evalBar?.Dispose();
        }
        if (warnings > 20) Console.Error.WriteLine($"kernelvl: warning: {warnings} warnings in all ({warnings - 20} not shown)");
        if (s.SkippedImages > 0) Console.Error.WriteLine($"kernelvl: warning: {s.SkippedImages} unreadable images skipped ({s.SkippedPairs} training pairs)");
        Console.WriteLine(s.Stopped
            ? $"stopped at step {s.Steps}: its checkpoint is written; {onStop}"
            : $"done: {s.Steps} steps in {ProgressBar.Format(TimeSpan.FromSeconds(s.Seconds))}{(float.IsFinite(s.FinalLoss) ? $", final loss {s.FinalLoss:F4}" : " (no step left to run)")}");
        if (s.Best is { } b)
            Console.WriteLine($"best: step {b.Step} (epoch {b.Epoch}), i2t R@1 {b.Recall.I2T.R1:F1}, t2i R@1 {b.Recall.T2I.R1:F1}, rsum {b.Recall.Rsum:F1} -> {o.Out}");
        return s.Stopped ? stop.Code : ErrorReporting.Ok;
    }
}
