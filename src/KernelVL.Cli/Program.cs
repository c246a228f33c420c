using System.CommandLine;
using KernelVL.Cli;

// Numbers in output and files never depend on the user's locale (decimal commas would break tables and JSON readers).
System.Globalization.CultureInfo.DefaultThreadCurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.InvariantCulture;

var verbose = new Option<bool>("--verbose") { Description = "Print stack traces on errors", Recursive = true };
var root = new RootCommand("kernelvl: fast cross-modal (image <-> text) retrieval with decomposed vision-language transformers");
root.Options.Add(verbose);
root.Subcommands.Add(DemoCommand.Create());
root.Subcommands.Add(InfoCommand.Create());
root.Subcommands.Add(ShapesCommand.Create());
root.Subcommands.Add(TrainCommands.Pretrain());
root.Subcommands.Add(TrainCommands.Decompose());
root.Subcommands.Add(RetrievalCommands.Index());
root.Subcommands.Add(RetrievalCommands.Search());
root.Subcommands.Add(RetrievalCommands.Eval());
var parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // Usage errors are bad input: one line each on stderr, exit code 2.
    foreach (var error in parsed.Errors) Console.Error.WriteLine($"kernelvl: bad input: {error.Message}");
    Console.Error.WriteLine("kernelvl: run 'kernelvl --help' for usage");
    return ErrorReporting.BadInput;
}
try
{
    return parsed.Invoke();
}
catch (Exception e)
{
    return ErrorReporting.Report(e, parsed.GetValue(verbose));
}
