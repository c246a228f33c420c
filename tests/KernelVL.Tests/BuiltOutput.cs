namespace KernelVL.Tests;

/// <summary>Where the solution's other programs (built before the tests: ReferenceOutputAssembly="false") put their dll.</summary>
internal static class BuiltOutput
{
    /// <summary>&lt;repository&gt;/<paramref name="projectDir"/>/bin/&lt;the tests' configuration&gt;/net10.0/<paramref name="dll"/>.</summary>
    public static string Dll(string projectDir, string dll)
    {
        string config = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
        return Path.Combine(Repository, projectDir, "bin", config, "net10.0", dll);
    }

    /// <summary>The repository root: the folder above the test assembly that holds KernelVL.sln.</summary>
    public static string Repository
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "KernelVL.sln"))) return d.FullName;
            throw new FileNotFoundException("KernelVL.sln not found above the test assembly");
        }
    }
}
