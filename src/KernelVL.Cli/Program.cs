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
// A path or name given as '' (or blanks) is refused by the parser, naming the option: .NET would otherwise read it as
// the current folder in some places and throw "The value cannot be an empty string" (exit 1) in others.
foreach (var command in new[] { root }.Concat(root.Subcommands))
    foreach (var option in command.Options.OfType<Option<string>>())
        option.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<string>() is { } v && string.IsNullOrWhiteSpace(v)) result.AddError($"{option.Name}: an empty value");
        });
var parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // Usage errors are bad input: one line on stderr (every error, in words a user knows), exit code 2.
    var messages = parsed.Errors.Select(e => ErrorReporting.Usage(e.Message)).Distinct().ToList();
    string help = parsed.CommandResult.Command is { } c && c != root ? $"kernelvl {c.Name} --help" : "kernelvl --help";
    Console.Error.WriteLine($"kernelvl: bad input: {string.Join("; ", messages)} (usage: {help})");
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
