using KernelVL;

namespace KernelVL.Cli;

/// <summary>The only place exceptions become exit codes: 2 for bad input, 1 for any other failure.</summary>
internal static class ErrorReporting
{
    public const int Ok = 0, Failure = 1, BadInput = 2;

    public static int Report(Exception e, bool verbose)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerException! : e;
        int code = inner switch
        {
            BadInputException or ShapeException or FileNotFoundException or DirectoryNotFoundException => BadInput,
            _ => Failure,
        };
        Console.Error.WriteLine($"kernelvl: {(code == BadInput ? "bad input" : "error")}: {inner.Message}");
        if (verbose) Console.Error.WriteLine(inner);
        return code;
    }

    /// <summary>Runs a command body and maps its exceptions (System.CommandLine would otherwise print them its own way).</summary>
    public static Func<System.CommandLine.ParseResult, int> Guard(Func<System.CommandLine.ParseResult, int> body) => r =>
    {
        try { return body(r); }
        catch (Exception e) { return Report(e, r.GetValue<bool>("--verbose")); }
    };
}
