#!/usr/bin/env bash
# Builds the emulated CUDA driver (kernels/emu/fake_driver.cpp: libcuda's calls on the host emulator, every kernel of
# kernels/*.cu compiled in) as OUT/libkv_emu_cuda.so. Needs clang++-14 and an x86-64 machine. Usage: build-driver.sh OUT
set -euo pipefail
out=${1:?usage: build-driver.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")"
clang++-14 -std=c++20 -O2 -shared -fPIC -pthread -Wno-unknown-pragmas -Wno-pass-failed -o "$out/libkv_emu_cuda.so.tmp" fake_driver.cpp
mv "$out/libkv_emu_cuda.so.tmp" "$out/libkv_emu_cuda.so"
