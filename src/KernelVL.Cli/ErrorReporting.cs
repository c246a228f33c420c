using KernelVL;

namespace KernelVL.Cli;

/// <summary>The only place exceptions become exit codes: 2 for bad input (a full disk too), 1 for any other failure (130: stopped by Ctrl-C).</summary>
internal static class ErrorReporting
{
    /// <summary>
    /// Interrupted: stopped by Ctrl-C (SIGINT) after writing what resumes the work (128 + SIGINT, the shell's code);
    /// Terminated: the same stop asked for by SIGTERM (128 + 15).
    /// </summary>
    public const int Ok = 0, Failure = 1, BadInput = 2, Interrupted = 130, Terminated = 143;

    public static int Report(Exception e, bool verbose)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerException! : e;
        int code = inner switch
        {
            BadInputException or ShapeException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or PathTooLongException => BadInput,
            IOException io when NoRoom(io) => BadInput,
            _ => Failure,
        };
        Console.Error.WriteLine($"kernelvl: {(code == BadInput ? "bad input" : "error")}: {inner.Message}");
        if (verbose) Console.Error.WriteLine(inner);
        return code;
    }

    /// <summary>
    /// A write the file system refused for want of room or of write access (ENOSPC, EDQUOT, EROFS; on Linux and macOS .NET
    /// puts the errno in HResult): the place the user gave is at fault, as with a folder they cannot write to.
    /// </summary>
    private static bool NoRoom(IOException e) => OperatingSystem.IsWindows()
        ? e.HResult is unchecked((int)0x80070070) or unchecked((int)0x80070027)   // ERROR_DISK_FULL, ERROR_HANDLE_DISK_FULL
        : e.HResult is 28 or 30 || e.HResult == (OperatingSystem.IsMacOS() ? 69 : 122);

    /// <summary>
    /// A parser's message in a user's words: "Cannot parse argument 'abc' for option '-k' as expected type
    /// 'System.Int32'." becomes "-k: 'abc' is not an integer"; other messages lose their final period only.
    /// </summary>
    public static string Usage(string message)
    {
        var m = System.Text.RegularExpressions.Regex.Match(message, @"^Cannot parse argument '(.*)' for option '(.*)' as expected type '(?:System\.)?(\w+)'\.?$");
        if (!m.Success) return message.TrimEnd('.');
        string what = m.Groups[3].Value switch
        {
            "Int32" or "Int64" or "Int16" or "UInt32" or "UInt64" => "an integer",
            "Single" or "Double" or "Decimal" => "a number",
            "Boolean" => "true or false",
            var t => $"a {t}",
        };
        return $"{m.Groups[2].Value}: '{m.Groups[1].Value}' is not {what}";
    }

    /// <summary>Runs a command body and maps its exceptions (System.CommandLine would otherwise print them its own way).</summary>
    public static Func<System.CommandLine.ParseResult, int> Guard(Func<System.CommandLine.ParseResult, int> body) => r =>
    {
        try { return body(r); }
        catch (Exception e) { return Report(e, r.GetValue<bool>("--verbose")); }
    };
}
