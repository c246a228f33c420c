#!/usr/bin/env bash
# Builds kernels/emu/emu_tests.cpp (the kernels of kernels/*.cu compiled for the host with KV_EMU) and runs it twice:
# in order with cp.async landing at its wait (checks the pipelines' commit/wait accounting), and in race mode
# (cp.async lands at once, fibers resumed in a shuffled order that lets warps run ahead: checks the barriers).
# Needs clang++-14 (the build's clang-14 package has it) and an x86-64 machine. No GPU. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")"
out=${EMU_OUT:-$(mktemp -d)}
clang++-14 -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-pass-failed -o "$out/emu_tests" emu_tests.cpp || exit 1
"$out/emu_tests" > "$out/ordered.txt"; rc1=$?
KV_EMU_MODE=race "$out/emu_tests" > "$out/race.txt"; rc2=$?
cat "$out/ordered.txt"
grep -v ' ok' "$out/race.txt" | grep -v 'passed' | grep -v '^shared ' | grep -v '^threads ' | sed 's/^/race mode: /'
count() { tail -n 1 "$1" | awk -v f="$2" '{ print (f == "p") ? $1 : $3 }'; }
p=$(( $(count "$out/ordered.txt" p) + $(count "$out/race.txt" p) )); f=$(( $(count "$out/ordered.txt" f) + $(count "$out/race.txt" f) ))
echo "(both modes: ordered $(tail -n 1 "$out/ordered.txt"); race $(tail -n 1 "$out/race.txt"))"
echo "$p passed, $f failed"
[ $rc1 = 0 ] && [ $rc2 = 0 ]
