using System.Text.Json;
using System.Text.Json.Nodes;
using KernelVL.Reporting;

namespace KernelVL.Training;

/// <summary>loss.png and recall.png in a training output folder, drawn from its metrics.jsonl.</summary>
public static class TrainingPlots
{
    public static void Write(string outDir)
    {
        string metrics = Path.Combine(outDir, Trainer.MetricsFile);
        if (!File.Exists(metrics)) return;
        var loss = new List<(double, double)>();
        var recall = new Dictionary<string, List<(double, double)>> { ["i2t R@1"] = new(), ["t2i R@1"] = new(), ["mean R@1,5,10"] = new() };
        foreach (var line in File.ReadLines(metrics))
        {
            JsonObject? o;
            try { o = JsonNode.Parse(line) as JsonObject; }
            catch (JsonException) { continue; }
            if (o?["step"] is not JsonValue sv || !sv.TryGetValue(out int step)) continue;
            if (o["eval"] is not null)
            {
                recall["i2t R@1"].Add((step, (double?)o["i2t_r1"] ?? double.NaN));
                recall["t2i R@1"].Add((step, (double?)o["t2i_r1"] ?? double.NaN));
                recall["mean R@1,5,10"].Add((step, ((double?)o["rsum"] ?? double.NaN) / 6));
            }
            else if (o["loss"] is JsonValue lv && lv.TryGetValue(out double l)) loss.Add((step, l));
        }
        Charts.Line(Path.Combine(outDir, "loss.png"), "training loss", "step", "loss", [new Charts.Series("loss", loss), new Charts.Series("moving mean (20)", Smooth(loss, 20))], logY: true);
        Charts.Line(Path.Combine(outDir, "recall.png"), "held-out recall (%)", "step", "recall", recall.Select(kv => new Charts.Series(kv.Key, kv.Value)).ToList());
    }

    private static List<(double, double)> Smooth(List<(double X, double Y)> p, int n)
    {
        var r = new List<(double, double)>(p.Count);
        for (int i = 0; i < p.Count; i++)
        {
            var w = p.Skip(Math.Max(0, i - n + 1)).Take(Math.Min(n, i + 1)).Where(q => double.IsFinite(q.Y)).ToList();
            if (w.Count > 0) r.Add((p[i].X, w.Average(q => q.Y)));
        }
        return r;
    }
}
