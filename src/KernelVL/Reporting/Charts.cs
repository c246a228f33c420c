using KernelVL.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace KernelVL.Reporting;

/// <summary>A raster to draw charts on: filled rectangles, lines, bitmap text; saved as PNG atomically.</summary>
public sealed class Canvas : IDisposable
{
    public Image<Rgb24> Image { get; }
    public int Width => Image.Width;
    public int Height => Image.Height;

    public Canvas(int width, int height, Rgb24? background = null)
    {
        Image = new Image<Rgb24>(width, height, background ?? new Rgb24(255, 255, 255));
    }

    public void Pixel(int x, int y, Rgb24 c)
    {
        if ((uint)x < (uint)Width && (uint)y < (uint)Height) Image[x, y] = c;
    }

    public void Fill(int x, int y, int w, int h, Rgb24 c)
    {
        for (int j = Math.Max(0, y); j < Math.Min(Height, y + h); j++)
            for (int i = Math.Max(0, x); i < Math.Min(Width, x + w); i++) Image[i, j] = c;
    }

    /// <summary>A line of the given thickness (Bresenham, a square pen).</summary>
    public void Line(double x0, double y0, double x1, double y1, Rgb24 c, int thickness = 1)
    {
        int ax = (int)Math.Round(x0), ay = (int)Math.Round(y0), bx = (int)Math.Round(x1), by = (int)Math.Round(y1);
        int dx = Math.Abs(bx - ax), dy = -Math.Abs(by - ay), sx = ax < bx ? 1 : -1, sy = ay < by ? 1 : -1, err = dx + dy;
        int r = thickness / 2;
        while (true)
        {
            Fill(ax - r, ay - r, thickness, thickness, c);
            if (ax == bx && ay == by) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; ax += sx; }
            if (e2 <= dx) { err += dx; ay += sy; }
        }
    }

    public void Text(int x, int y, string s, Rgb24 c, int scale = 1)
    {
        foreach (char ch in s)
        {
            var g = PixelFont.Glyph(ch);
            for (int row = 0; row < PixelFont.Height; row++)
                for (int col = 0; col < PixelFont.Width; col++)
                    if ((g[row] >> (PixelFont.Width - 1 - col) & 1) != 0) Fill(x + col * scale, y + row * scale, scale, scale, c);
            x += PixelFont.Advance * scale;
        }
    }

    public void Save(string path) => AtomicFile.Write(path, s => Image.SaveAsPng(s));

    public void Dispose() => Image.Dispose();
}

/// <summary>Line charts (training curves) and grouped bar charts (recall by method), as PNG.</summary>
public static class Charts
{
    public static readonly Rgb24[] Palette =
    [
        new(31, 119, 180), new(255, 127, 14), new(44, 160, 44), new(214, 39, 40), new(148, 103, 189), new(140, 86, 75), new(227, 119, 194), new(127, 127, 127),
    ];

    private static readonly Rgb24 Ink = new(30, 30, 30), Grid = new(225, 225, 225);

    public sealed record Series(string Name, IReadOnlyList<(double X, double Y)> Points);

    /// <summary>"Nice" tick values covering [lo, hi].</summary>
    public static double[] Ticks(double lo, double hi, int target = 5)
    {
        if (!(hi > lo)) hi = lo + 1;
        double raw = (hi - lo) / target, mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 2.5, 5, 10 }.Select(m => m * mag).First(s => s >= raw);
        var t = new List<double>();
        for (double v = Math.Ceiling(lo / step) * step; v <= hi + step * 1e-9; v += step) t.Add(Math.Round(v, 10));
        return t.ToArray();
    }

    private static string Label(double v) => Math.Abs(v) < 1e-9 ? "0" : Math.Abs(v) >= 1000 || v == Math.Round(v) ? v.ToString("0", System.Globalization.CultureInfo.InvariantCulture)
        : Math.Abs(v) >= 1 ? v.ToString("0.#", System.Globalization.CultureInfo.InvariantCulture) : v.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);

    public static void Line(string path, string title, string xLabel, string yLabel, IReadOnlyList<Series> series, int width = 800, int height = 480, bool logY = false)
    {
        var pts = series.SelectMany(s => s.Points).Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y) && (!logY || p.Y > 0)).ToList();
        using var c = new Canvas(width, height);
        int left = 70, right = width - 20, top = 40, bottom = height - 60;
        c.Text(left, 12, title, Ink, 2);
        if (pts.Count == 0)
        {
            c.Text(left, height / 2, "no data yet", Ink, 2);
            c.Save(path);
            return;
        }
        double F(double y) => logY ? Math.Log10(y) : y;
        double x0 = pts.Min(p => p.X), x1 = pts.Max(p => p.X), y0 = pts.Min(p => F(p.Y)), y1 = pts.Max(p => F(p.Y));
        if (x1 == x0) x1 = x0 + 1;
        if (y1 == y0) { y0 -= 0.5; y1 += 0.5; }
        double pad = (y1 - y0) * 0.05;
        y0 -= pad; y1 += pad;
        double X(double x) => left + (x - x0) / (x1 - x0) * (right - left);
        double Y(double y) => bottom - (F(y) - y0) / (y1 - y0) * (bottom - top);
        foreach (var t in Ticks(y0, y1))
        {
            double py = bottom - (t - y0) / (y1 - y0) * (bottom - top);
            c.Line(left, py, right, py, Grid);
            string s = logY ? Label(Math.Pow(10, t)) : Label(t);
            c.Text(left - 6 - PixelFont.Measure(s), (int)py - 3, s, Ink);
        }
        foreach (var t in Ticks(x0, x1))
        {
            double px = X(t);
            c.Line(px, bottom, px, bottom + 4, Ink);
            c.Text((int)px - PixelFont.Measure(Label(t)) / 2, bottom + 8, Label(t), Ink);
        }
        c.Line(left, top, left, bottom, Ink);
        c.Line(left, bottom, right, bottom, Ink);
        c.Text((left + right - PixelFont.Measure(xLabel)) / 2, height - 22, xLabel, Ink);
        c.Text(6, top - 14, yLabel + (logY ? " (log)" : ""), Ink);
        for (int k = 0; k < series.Count; k++)
        {
            var col = Palette[k % Palette.Length];
            var p = series[k].Points.Where(q => double.IsFinite(q.Y) && (!logY || q.Y > 0)).ToList();
            for (int i = 1; i < p.Count; i++) c.Line(X(p[i - 1].X), Y(p[i - 1].Y), X(p[i].X), Y(p[i].Y), col, 2);
            if (p.Count == 1) c.Fill((int)X(p[0].X) - 2, (int)Y(p[0].Y) - 2, 5, 5, col);
            int ly = top + 6 + 14 * k;
            c.Fill(right - 150, ly, 12, 7, col);
            c.Text(right - 134, ly, series[k].Name, Ink);
        }
        c.Save(path);
    }

    /// <summary>Grouped bars: one group per category, one bar per series (values in [0, max]).</summary>
    public static void Bars(string path, string title, IReadOnlyList<string> categories, IReadOnlyList<(string Name, double[] Values)> series, double max = 100, int width = 900, int height = 480)
    {
        using var c = new Canvas(width, height);
        int left = 60, right = width - 20, top = 40 + 14 * ((series.Count + 2) / 3), bottom = height - 50;
        c.Text(left, 12, title, Ink, 2);
        foreach (var t in Ticks(0, max))
        {
            double py = bottom - t / max * (bottom - top);
            c.Line(left, py, right, py, Grid);
            c.Text(left - 6 - PixelFont.Measure(Label(t)), (int)py - 3, Label(t), Ink);
        }
        double group = (right - left) / (double)categories.Count, bar = group * 0.8 / Math.Max(1, series.Count);
        for (int g = 0; g < categories.Count; g++)
        {
            double gx = left + g * group + group * 0.1;
            for (int s = 0; s < series.Count; s++)
            {
                double v = Math.Clamp(series[s].Values[g], 0, max);
                int h = (int)Math.Round(v / max * (bottom - top));
                c.Fill((int)(gx + s * bar), bottom - h, Math.Max(1, (int)bar - 2), h, Palette[s % Palette.Length]);
            }
            c.Text((int)(left + g * group + group / 2 - PixelFont.Measure(categories[g]) / 2.0), bottom + 8, categories[g], Ink);
        }
        c.Line(left, bottom, right, bottom, Ink);
        for (int s = 0; s < series.Count; s++)
        {
            int lx = left + (s % 3) * 260, ly = 34 + 14 * (s / 3);
            c.Fill(lx, ly, 12, 7, Palette[s % Palette.Length]);
            c.Text(lx + 16, ly, series[s].Name, Ink);
        }
        c.Save(path);
    }
}
