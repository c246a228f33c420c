#!/usr/bin/env bash
# A development aid, not a dependency: fetches Debian trixie's NVRTC 12.4 (non-free: libnvrtc12, libnvrtc-builtins12.4)
# and unpacks it, without installing anything, so that a machine with no GPU and no CUDA 12 can compile the kernels for
# sm_90a exactly as the cuda backend does on a Hopper GPU (wgmma, TMA and mbarrier syntax, registers, spills, ptxas's
# wgmma serialisation warning). Then:
#   LD_LIBRARY_PATH=DIR/usr/lib/x86_64-linux-gnu dotnet test tests/KernelVL.Tests -c Release --filter EveryKernelCompilesThroughNvrtc
# Usage: kernels/fetch-nvrtc12.sh [DIR (default ~/.cache/kernelvl/nvrtc12)]; prints the LD_LIBRARY_PATH to use.
set -euo pipefail
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelvl/nvrtc12}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ver="12.4.127~12.4.1-2"
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for pkg in "libnvrtc-builtins12.4_${ver}_amd64.deb" "libnvrtc12_${ver}_amd64.deb"; do
  curl -fsS --max-time 300 -o "$tmp/$pkg" "$mirror/pool/non-free/n/nvidia-cuda-toolkit/$pkg" \
    || { echo "fetch-nvrtc12: could not download $pkg from $mirror (a newer trixie revision may have replaced it)" >&2; exit 2; }
  dpkg -x "$tmp/$pkg" "$dir"
done
echo "LD_LIBRARY_PATH=$dir/usr/lib/x86_64-linux-gnu"
