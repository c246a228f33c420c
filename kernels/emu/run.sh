#!/usr/bin/env bash
# Builds kernels/emu/emu_tests.cpp (the kernels of kernels/*.cu compiled for the host with KV_EMU) and runs it.
# Needs clang++-14 (the build's clang-14 package has it) and libstdc++ with C++20 <barrier>. No GPU.
set -euo pipefail
cd "$(dirname "$0")"
out=${EMU_OUT:-$(mktemp -d)}
clang++-14 -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-pass-failed -o "$out/emu_tests" emu_tests.cpp
"$out/emu_tests"
