#!/usr/bin/env bash
# Barrier mutation sweep: removes each barrier of the kernels (__syncthreads, bar.sync named barriers, __syncwarp, the
# cluster barrier) one
# at a time, rebuilds the host emulator and runs the tests of the kernels that file holds in the three schedules and the racecheck
# (ordered, race, starve; the shuffled two under 3 seeds, KV_EMU_SEED). A removal the emulator does not notice is listed as SURVIVED: either the barrier is not
# needed (then say so on its line: "kept though redundant", which this script skips) or no schedule or input the
# emulator produces exposes it (a gap to close in emu_tests.cpp or kv_emu.h).
# MUTATE=waits instead loosens each asynchronous wait by one group (cp.async.wait_group N -> N + 1, wgmma.wait_group
# N -> N + 1) and removes each mbarrier wait (kv_mbar_wait, kv_mbar_wait_cluster): every such change must be caught too
# (or be marked the same way).
# Usage: [MUTATE=waits] bash kernels/emu/mutate.sh [file ...]   (default: every kernels/*.cu and kernels/*_common.h)
# Needs clang++-14 and an x86-64 machine; about 30-60 s a barrier on one core. Ends with "N caught, N survived".
set -uo pipefail
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(*.cu *_common.h)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the emulator's test families (KV_EMU_ONLY) that exercise each file's kernels
families() {
  case "$(basename "$1")" in
    attention.cu) echo attention,attention_backward ;;
    attention_common.h) echo attention ;;
    gemm.cu) echo gemm,tf32x3,infonce ;;
    gemm_sm90.cu) echo gemm,tf32x3,attention,topk ;;
    infonce.cu) echo infonce ;;
    layernorm.cu) echo layernorm,layernorm_backward ;;
    topk.cu | topk_common.h) echo topk ;;
    *) echo "" ;;
  esac
}
caught=0; survived=0; marked=0
# SCHEDULES: the runs each mutation gets, mode:seed, until one fails (default: ordered, the racecheck build
# (kv_racecheck.h), then the shuffled two under 3 seeds); SCHEDULES=racecheck:0 asks the racecheck alone, MARKED=1 runs
# the marked lines too.
schedules=${SCHEDULES:-"ordered:0 racecheck:0 race:0 starve:0 race:1 starve:1 race:2 starve:2"}
pattern="__syncthreads\(\)|kv_named_barrier\(|kv_syncwarp\(\)|kv_cluster_sync\(\)"
[ "${MUTATE:-barriers}" = waits ] && pattern="kv_cp_async_wait<|kv_wgmma_wait<|kv_mbar_wait\(|kv_mbar_wait_cluster\("
for f in "${files[@]}"; do
  f=$(basename "$f")
  only=$(families "$f")
  while IFS=: read -r line text; do
    rm -rf "$work/k"; mkdir -p "$work/k"; cp -r ./*.cu ./*.h emu "$work/k/"
    if [ "${MUTATE:-barriers}" = waits ]; then
      sed -i "${line}s/_wait<\([^>]*\)>()/_wait<\1 + 1>()/; ${line}s/kv_mbar_wait([^;]*;/(void)0;/; ${line}s/kv_mbar_wait_cluster([^;]*;/(void)0;/" "$work/k/$f"
    else
      sed -i "${line}s/__syncthreads()/(void)0/; ${line}s/kv_named_barrier([^)]*)/(void)0/; ${line}s/kv_syncwarp()/(void)0/; ${line}s/kv_cluster_sync()/(void)0/" "$work/k/$f"
    fi
    if cmp -s "$f" "$work/k/$f"; then continue; fi
    what="$f:$line $(echo "$text" | sed 's/^ *//' | cut -c1-70)"
    if [[ $text == *"kept though redundant"* ]] && [ -z "${MARKED:-}" ]; then marked=$((marked + 1)); echo "marked redundant  $what"; continue; fi
    if tr ' ' '\n' <<< "$schedules" | grep -qv '^racecheck:' && ! clang++-14 -std=c++20 -O1 -pthread -w -o "$work/emu" "$work/k/emu/emu_tests.cpp" 2> "$work/cc.txt"; then
      echo "build failed  $what"; head -n 3 "$work/cc.txt"; continue
    fi
    if [[ " $schedules " == *" racecheck:"* ]] && ! bash "$work/k/emu/build-racecheck.sh" "$work/k/emu" "$work/emu_rc" 2> "$work/cc.txt"; then
      echo "build failed  $what"; head -n 3 "$work/cc.txt"; continue
    fi
    verdict=""
    for run in $schedules; do
      mode=${run%%:*}; seed=${run#*:}
      exe="$work/emu"; [ "$mode" = racecheck ] && exe="$work/emu_rc"
      ( KV_EMU_MODE=$mode KV_EMU_SEED=$seed KV_EMU_ONLY=$only exec timeout 600 "$exe" > "$work/out.txt" 2> "$work/err.txt" ) 2> /dev/null; rc=$?
      if [ $rc != 0 ]; then
        why=$( (grep -m1 "FAIL" "$work/out.txt"; head -n 1 "$work/err.txt") | head -n 1 | tr -s ' ' | cut -c1-100)
        [ $rc = 124 ] && why="timeout (hang)"
        verdict="caught ($mode, seed $seed: ${why:-exit $rc})"; break
      fi
    done
    if [ -n "$verdict" ]; then caught=$((caught + 1)); echo "$verdict  $what"
    else survived=$((survived + 1)); echo "SURVIVED  $what"; fi
  done < <(grep -n -E "$pattern" "$f" | grep -v -E "^[0-9]+: *//")
done
echo "$caught caught, $survived survived, $marked marked redundant (not run)"
