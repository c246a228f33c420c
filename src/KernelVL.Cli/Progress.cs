using System.Diagnostics;

namespace KernelVL.Cli;

/// <summary>
/// A progress bar on stderr: redrawn in place (at most ~10 times a second) when stderr is a terminal, else one plain
/// line every few seconds (logs stay readable). Shows done/total, percent, rate, ETA and a status text.
/// </summary>
internal sealed class ProgressBar : IDisposable
{
    private readonly string _label;
    private readonly long _total;
    private readonly string _unit;
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly bool _tty = !Console.IsErrorRedirected;
    private double _lastDraw = -1;
    private long _done;
    private string _status = "";
    private bool _ended;
    private long _drawn = -1;

    public ProgressBar(string label, long total, string unit = "")
    {
        _label = label;
        _total = Math.Max(1, total);
        _unit = unit;
        Draw(force: true);
    }

    public void Report(long done, string? status = null)
    {
        _done = done;
        if (status is not null) _status = status;
        Draw(force: done >= _total);
    }

    /// <summary>A new status text at the same count (e.g. an evaluation between two steps).</summary>
    public void Status(string status) => Report(_done, status);

    /// <summary>Prints a line above the bar (warnings, evaluation results) without garbling it.</summary>
    public void Line(string text)
    {
        if (_tty) Console.Error.Write("\r\x1b[K");
        Console.Error.WriteLine(text);
        _lastDraw = -1;
        Draw(force: true);
    }

    private void Draw(bool force)
    {
        double t = _sw.Elapsed.TotalSeconds;
        if (!force && t - _lastDraw < (_tty ? 0.1 : 5)) return;
        _lastDraw = t;
        _drawn = _done;
        double f = Math.Clamp(_done / (double)_total, 0, 1);
        double rate = t > 0 ? _done / t : 0;
        string eta = rate > 0 && _done < _total ? Format(TimeSpan.FromSeconds((_total - _done) / rate)) : "--";
        string text = $"{_label} {_done}/{_total}{_unit} {f * 100,3:F0}% {rate:F1}{_unit}/s elapsed {Format(_sw.Elapsed)} eta {eta} {_status}";
        if (_tty)
        {
            int width = 24, fill = (int)(f * width);
            Console.Error.Write($"\r\x1b[K[{new string('#', fill)}{new string('.', width - fill)}] {text}");
        }
        else Console.Error.WriteLine(text);
    }

    public static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : t.TotalMinutes >= 1 ? $"{t.Minutes}m{t.Seconds:D2}s" : $"{t.TotalSeconds:F1}s";

    public void Dispose()
    {
        if (_ended) return;
        _ended = true;
        if (_drawn != _done) Draw(force: true);
        if (_tty) Console.Error.WriteLine();
    }
}
