#!/usr/bin/env bash
# A development aid, not a dependency: fetches Debian's NVRTC 12 (non-free: libnvrtc12 and its libnvrtc-builtins12.x)
# and unpacks it, without installing anything, so that a machine with no GPU and no CUDA 12 can compile the kernels for
# sm_90a exactly as the cuda backend does on a Hopper GPU (wgmma, TMA and mbarrier syntax, registers, spills, ptxas's
# wgmma serialisation and injected-wait warnings). Then:
#   LD_LIBRARY_PATH=DIR/usr/lib/x86_64-linux-gnu dotnet test tests/KernelVL.Tests -c Release --filter EveryKernelCompilesThroughNvrtc
# Newer is stricter: ptxas 12.5 reports waits it injects (C7517) and serialisations (C7518) that 12.4 passed silently,
# and the GPU machine's NVRTC is 13. So the suites are tried newest first (experimental had 12.5 on 2026-11-28, trixie
# 12.4); SUITES="trixie" picks one. The package names are read from the suite's index, not hard-coded (revisions move).
# Usage: kernels/fetch-nvrtc12.sh [DIR (default ~/.cache/kernelvl/nvrtc12)]; prints the version and the LD_LIBRARY_PATH.
set -euo pipefail
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelvl/nvrtc12}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Prints the pool path of package $1 in the index $2 (Debian's Packages format), or nothing.
pool_path() { awk -v p="$1" '/^Package: /{hit = ($2 == p)} hit && /^Filename: /{print $2; exit}' "$2"; }
for suite in ${SUITES:-experimental sid trixie}; do
  curl -fsS --max-time 120 -o "$tmp/Packages.xz" "$mirror/dists/$suite/non-free/binary-amd64/Packages.xz" || continue
  xz -dc "$tmp/Packages.xz" > "$tmp/Packages"
  lib=$(pool_path libnvrtc12 "$tmp/Packages")
  [ -n "$lib" ] || continue
  # libnvrtc12's own version names its builtins package: libnvrtc12_12.5.40~... -> libnvrtc-builtins12.5
  minor=$(basename "$lib" | sed -E 's/^libnvrtc12_12\.([0-9]+)\..*/\1/')
  builtins=$(pool_path "libnvrtc-builtins12.$minor" "$tmp/Packages")
  [ -n "$builtins" ] || continue
  mkdir -p "$dir"
  for pkg in "$builtins" "$lib"; do
    curl -fsS --max-time 300 -o "$tmp/pkg.deb" "$mirror/$pkg" \
      || { echo "fetch-nvrtc12: could not download $mirror/$pkg" >&2; exit 2; }
    dpkg -x "$tmp/pkg.deb" "$dir"
  done
  echo "NVRTC 12.$minor from Debian $suite"
  echo "LD_LIBRARY_PATH=$dir/usr/lib/x86_64-linux-gnu"
  exit 0
done
echo "fetch-nvrtc12: no suite of ${SUITES:-experimental sid trixie} at $mirror has libnvrtc12 with its builtins" >&2
exit 2
