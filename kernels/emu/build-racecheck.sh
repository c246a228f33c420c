#!/usr/bin/env bash
# Builds the racecheck binary of the host emulator's tests (kv_racecheck.h): emu_tests.cpp instrumented with clang's
# -fsanitize=thread and KV_RACECHECK, linked with kv_racecheck.cpp (uninstrumented: the hooks, no sanitizer runtime).
# Usage: build-racecheck.sh EMU_DIR OUT_EXE   (EMU_DIR: a kernels/emu folder, beside its kernels' sources)
set -euo pipefail
dir=$1; exe=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# -fno-builtin-memset: a zeroing loop in a kernel stays stores (a memset call would bypass the hooks)
clang++-14 -std=c++20 -O2 -g -pthread -Wno-unknown-pragmas -Wno-pass-failed -fsanitize=thread -fno-builtin-memset -DKV_RACECHECK \
  -c "$dir/emu_tests.cpp" -o "$tmp/tests.o" &
clang++-14 -std=c++20 -O2 -g -c "$dir/kv_racecheck.cpp" -o "$tmp/rt.o"
wait $!
clang++-14 -pthread "$tmp/tests.o" "$tmp/rt.o" -o "$exe" -ldl
