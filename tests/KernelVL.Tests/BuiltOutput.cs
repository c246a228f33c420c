namespace KernelVL.Tests;

/// <summary>Where the solution's other programs (built before the tests: ReferenceOutputAssembly="false") put their dll.</summary>
internal static class BuiltOutput
{
    /// <summary>&lt;repository&gt;/<paramref name="projectDir"/>/bin/&lt;the tests' configuration&gt;/net10.0/<paramref name="dll"/>.</summary>
    public static string Dll(string projectDir, string dll)
    {
        string dir = AppContext.BaseDirectory;
        string config = dir.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
        for (var d = new DirectoryInfo(dir); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "KernelVL.sln")))
                return Path.Combine(d.FullName, projectDir, "bin", config, "net10.0", dll);
        throw new FileNotFoundException("KernelVL.sln not found above the test assembly");
    }
}
