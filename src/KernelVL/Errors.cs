namespace KernelVL;

/// <summary>Base of every exception the library throws on purpose. The CLI maps these to exit codes.</summary>
public class KernelVLException : Exception
{
    public KernelVLException(string message) : base(message) { }
    public KernelVLException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A tensor argument has the wrong rank, size or dtype for the op it was given to.</summary>
public sealed class ShapeException : KernelVLException
{
    public ShapeException(string message) : base(message) { }
}

/// <summary>Input from outside the process (a file, a command-line value) is malformed. CLI exit code 2.</summary>
public class BadInputException : KernelVLException
{
    public BadInputException(string message) : base(message) { }
    public BadInputException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>An index changed under an open of it (a build removed or merged the segments it had listed): open it again.</summary>
public sealed class IndexChangedException : BadInputException
{
    public IndexChangedException(string message) : base(message) { }
}

/// <summary>
/// A folder about to be replaced holds an entry its writer does not make (a user's file, a link): refused before anything
/// in it is deleted. <see cref="Entry"/> is its path, for callers that word the refusal their own way.
/// </summary>
public sealed class ForeignEntryException : BadInputException
{
    public ForeignEntryException(string entry, string message) : base(message) => Entry = entry;

    public string Entry { get; }
}

/// <summary>A backend cannot do what was asked (not available on this machine, op missing, device error).</summary>
public sealed class BackendException : KernelVLException
{
    public BackendException(string message) : base(message) { }
    public BackendException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// Training produced a non-finite loss or gradient: the options given (the learning rate, the temperature) made the steps
/// too large or the loss too sharp, so it is bad input (CLI exit code 2) and its message names them.
/// </summary>
public sealed class TrainingDivergedException : BadInputException
{
    public TrainingDivergedException(string message) : base(message) { }
}
