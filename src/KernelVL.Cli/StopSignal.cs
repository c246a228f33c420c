using System.Runtime.InteropServices;

namespace KernelVL.Cli;

/// <summary>
/// Ctrl-C (SIGINT) and SIGTERM (kill, docker stop, systemd, Slurm) as a request to stop instead of the runtime's default,
/// which ends the process at once (no message, temporary files left behind): the work stops at its next check of
/// <see cref="Token"/> and the command exits with <see cref="Code"/>.
/// </summary>
internal sealed class StopSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly ConsoleCancelEventHandler _onCancel;
    private readonly PosixSignalRegistration _onTerm;
    private volatile int _code = ErrorReporting.Interrupted;

    public StopSignal()
    {
        _onCancel = (_, e) => { e.Cancel = true; _cts.Cancel(); };
        Console.CancelKeyPress += _onCancel;
        _onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; _code = ErrorReporting.Terminated; _cts.Cancel(); });
    }

    public CancellationToken Token => _cts.Token;

    public bool Requested => _cts.IsCancellationRequested;

    /// <summary>The exit code of a stopped command: 130 after Ctrl-C, 143 after SIGTERM.</summary>
    public int Code => _code;

    /// <summary>What asked for the stop, in a user's words.</summary>
    public string Cause => _code == ErrorReporting.Terminated ? "SIGTERM" : "Ctrl-C";

    public void Dispose()
    {
        Console.CancelKeyPress -= _onCancel;
        _onTerm.Dispose();
        _cts.Dispose();
    }
}
