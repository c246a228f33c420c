using System.CommandLine;
using KernelVL.Data;

namespace KernelVL.Cli;

/// <summary>`kernelvl shapes`: writes the synthetic attribute-binding dataset (PNGs + Karpathy JSON) that the demo uses.</summary>
internal static class ShapesCommand
{
    public static Command Create()
    {
        var outDir = new Option<string>("--out") { Description = "Folder for images/ and dataset.json", Required = true };
        var train = new Option<int>("--train") { Description = "Training images", DefaultValueFactory = _ => 2000 };
        var val = new Option<int>("--val") { Description = "Validation images", DefaultValueFactory = _ => 200 };
        var test = new Option<int>("--test") { Description = "Test images", DefaultValueFactory = _ => 500 };
        var size = new Option<int>("--size") { Description = "Image side in pixels", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed") { Description = "Seed, 0 or more", DefaultValueFactory = _ => 1 };
        var cmd = new Command("shapes", "Generate the synthetic image-caption dataset (two coloured shapes in a spatial relation, five captions each) as PNGs and a Karpathy split JSON");
        foreach (var o in new Option[] { outDir, train, val, test, size, seed }) cmd.Options.Add(o);
        cmd.SetAction(ErrorReporting.Guard(r =>
        {
            int n = r.GetValue(train) + r.GetValue(val) + r.GetValue(test);
            if (r.GetValue(train) < 2 || r.GetValue(val) < 0 || r.GetValue(test) < 2) throw new BadInputException("--train and --test need at least 2 images, --val at least 0");
            if (r.GetValue(seed) < 0) throw new BadInputException($"--seed must be 0 or more (a negative seed would draw the scenes of its absolute value), got {r.GetValue(seed)}");
            if (r.GetValue(size) < 16 || r.GetValue(size) > 1024) throw new BadInputException($"--size must be in 16..1024, got {r.GetValue(size)}");
            using var bar = new ProgressBar("shapes", n, " img");
            string json = SyntheticShapes.Generate(r.GetValue(outDir)!, r.GetValue(train), r.GetValue(val), r.GetValue(test), r.GetValue(size), r.GetValue(seed), (d, _) => bar.Report(d));
            bar.Dispose();
            Console.WriteLine(json);
            return ErrorReporting.Ok;
        }));
        return cmd;
    }
}
