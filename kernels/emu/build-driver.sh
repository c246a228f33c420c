#!/usr/bin/env bash
# Builds the emulated CUDA driver (kernels/emu/fake_driver.cpp: libcuda's calls on the host emulator, every kernel of
# kernels/*.cu compiled in) as OUT/libkv_emu_cuda.so. Needs clang++-14 and an x86-64 machine. Usage: build-driver.sh OUT
set -euo pipefail
out=${1:?usage: build-driver.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")"
# Each kernel's __launch_bounds__(threads[, blocks]) as KV_BOUND(name, threads[, blocks]) lines, compiled into the
# driver's table (the macros they use come from the kernel sources it includes).
grep -h -o 'extern "C" __global__ void __launch_bounds__(.*) [a-z0-9_]*(' ../*.cu \
  | sed -E 's/.*__launch_bounds__\((.*)\) ([a-z0-9_]+)\($/KV_BOUND(\2, \1)/' > "$out/launch_bounds.inc"
clang++-14 -I "$out" -std=c++20 -O2 -shared -fPIC -pthread -Wno-unknown-pragmas -Wno-pass-failed -o "$out/libkv_emu_cuda.so.tmp" fake_driver.cpp
mv "$out/libkv_emu_cuda.so.tmp" "$out/libkv_emu_cuda.so"
