#!/usr/bin/env bash
# Builds kernels/emu/emu_tests.cpp (the kernels of kernels/*.cu compiled for the host with KV_EMU) and runs it twice:
# in order with cp.async landing at its wait (checks the pipelines' commit/wait accounting), and in race mode
# (cp.async lands at once, fibers resumed in a shuffled order that lets warps run ahead: checks the barriers), and in
# starve mode (a victim warp, warpgroup or all warps but one resumed only when the rest of the block is stuck), and
# the racecheck build in the ordered schedule (kv_racecheck.h: any two accesses to a shared byte by different warps, one
# a write, that no barrier, mbarrier or wait orders, whatever the schedule makes of them).
# Any mode stops on a deadlock (every live thread of a block waiting).
# Needs clang++-14 (the build's clang-14 package has it) and an x86-64 machine. No GPU. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")"
out=${EMU_OUT:-$(mktemp -d)}
# The emulator gives each block of a cluster its own dynamic shared memory but not its own static __shared__ (see
# kv_emu_launch): the file of the cluster kernels must declare none.
if grep -n '__shared__' ../gemm_sm90.cu | grep -v 'KV_DYNAMIC_SHARED'; then
    echo "gemm_sm90.cu declares static __shared__ memory, which its cluster kernels' emulation does not give each block"; echo "0 passed, 1 failed"; exit 1
fi
# the plain build and the racecheck build (kv_racecheck.h) side by side, then the four runs two at a time
bash build-racecheck.sh . "$out/emu_racecheck" 2> "$out/racecheck-build.err" & rcb=$!
clang++-14 -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-pass-failed -o "$out/emu_tests" emu_tests.cpp || exit 1
wait $rcb || { cat "$out/racecheck-build.err"; echo "the racecheck build failed"; echo "0 passed, 1 failed"; exit 1; }
( KV_EMU_MODE=racecheck exec "$out/emu_racecheck" > "$out/racecheck.txt" 2> "$out/racecheck.err" ) & rcr=$!
"$out/emu_tests" > "$out/ordered.txt"; rc1=$?
KV_EMU_MODE=race "$out/emu_tests" > "$out/race.txt" 2> "$out/race.err"; rc2=$?
KV_EMU_MODE=starve "$out/emu_tests" > "$out/starve.txt" 2> "$out/starve.err"; rc3=$?
wait $rcr; rc4=$?
cat "$out/ordered.txt"
for m in race starve racecheck; do
    grep -v ' ok' "$out/$m.txt" | grep -v 'passed' | grep -v '^shared ' | grep -v '^threads ' | sed "s/^/$m mode: /"
    sed "s/^/$m mode: /" "$out/$m.err"
done
# a run that crashed (a deadlock, an assertion) has no count line: count it as one failure
count() { local l; l=$(tail -n 1 "$1"); if [[ $l =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    [ "$2" = p ] && echo "${BASH_REMATCH[1]}" || echo "${BASH_REMATCH[2]}"; else [ "$2" = p ] && echo 0 || echo 1; fi; }
p=0; f=0
for m in ordered race starve racecheck; do p=$(( p + $(count "$out/$m.txt" p) )); f=$(( f + $(count "$out/$m.txt" f) )); done
echo "(four modes: ordered $(tail -n 1 "$out/ordered.txt"); race $(tail -n 1 "$out/race.txt"); starve $(tail -n 1 "$out/starve.txt"); racecheck $(tail -n 1 "$out/racecheck.txt"))"
echo "$p passed, $f failed"
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ $rc3 = 0 ] && [ $rc4 = 0 ]
