#!/usr/bin/env bash
# Run HERE (the build machine): publishes the kernelvl CLI and the perf harness framework-dependent,
# and packs this machine's .NET runtime as a tar.xz, all into perf/gpu/bundle (git-ignored, < 64 MiB),
# for the GPU machine, which has no .NET. Then run perf/gpu/run.sh there, carrying perf/gpu/bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=perf/gpu/bundle
rm -rf "$out"
mkdir -p "$out"
dotnet publish src/KernelVL.Cli -c Release -o "$out/cli" --no-self-contained -p:DebugType=none >/dev/null
dotnet publish perf/KernelVL.Perf -c Release -o "$out/perf" --no-self-contained -p:DebugType=none >/dev/null
root=$(dirname "$(readlink -f "$(command -v dotnet)")")
ver=$(dotnet --list-runtimes | awk '/^Microsoft.NETCore.App/ {print $2}' | sort -V | tail -n 1)
tar -C "$root" -cJf "$out/dotnet-runtime.tar.xz" dotnet host "shared/Microsoft.NETCore.App/$ver"
du -sh "$out"
