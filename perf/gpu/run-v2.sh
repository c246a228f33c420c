#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, with perf/gpu/bundle carried (made by prepare.sh): the first GPU run
# of the kernels that are opt-in until it passes (topk.cu v2 tensor-core search, gemm_sm90.cu's top-k v3 on wgmma + TMA, gemm.cu v2 bf16 pipeline,
# gemm_sm90.cu v3 wgmma and v4 TMA + warp-specialised wgmma (also in clusters of two sharing B by TMA multicast; top-k v3
# likewise in clusters of four sharing the corpus tiles), gemm.cu f32x3 for the InfoNCE gradient, infonce.cu v2 (S on gemm_f32x3), attention.cu v2 and
# backward, layernorm.cu backward).
# Three groups, each well under the device tool's 10 minutes a command; run them as separate calls, checks first:
#   ONLY=checks bash perf/gpu/run-v2.sh    parity of every new kernel (registry cases with the version switched on,
#                                          the top-k stress suite), all at once: ~1.5-2 minutes
#   ONLY=timings bash perf/gpu/run-v2.sh   each new version beside the old one, and PyTorch, ~5-7 minutes; every bench
#                                          checks what it times, so with 15 minutes of device time run this one first
#                                          (timeout_s 600), then the checks group if time is left
#   ONLY=search bash perf/gpu/run-v2.sh    index search: today's path, and f16 rows as halves with top-k v1 / v2 / v3;
#                                          model throughput (perf e2e) with version 1 and with every new version
# Rehearsal without a GPU (here): bash kernels/emu/build-driver.sh DIR, then KERNELVL_CUDA_DRIVER=DIR/libkv_emu_cuda.so
# ONLY=checks bash perf/gpu/run-v2.sh runs the checks group on the host emulator's driver (~2 min on 2 cores). The
# timings group's benches at the emulator's sizes, each then read by `targets` (done 2026-11-28: all rows ok):
# gemm-bf16 --shapes 256x512x192,130x256x64 (~35 s; 128x256x2048 for split-K, ~75 s), topk-f16 --n 3000 --q 512 --d 64
# (~9 min, v1 the slow one; Q 512 = four query tiles, for the clusters of four), infonce-phases --n 512 --d 64 (~12 s).
# Each group's results (and the NVRTC CUBINs, for cuobjdump -sass on the build machine) are packed into
# $OUT/v2-GROUP.tgz: the device tool brings back only a few files. Also when stopped (TERM, the device tool's time
# limit): what ran is packed. The timings group runs the PyTorch baselines and the targets' kernels first, and ends with
# `KernelVL.Perf targets`: the table of issue 4's ratios (targets.md) to commit under perf/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
source perf/gpu/env.sh
group=${ONLY:-checks}
# The results are gathered outside $OUT and only packed into it: the device tool brings back 8 files at most, so a
# run killed at its limit without the trap running must not leave a folder of many files there.
WORK=$(mktemp -d); R="$WORK/v2-$group"; mkdir -p "$R"
export XDG_CACHE_HOME="$R/cache"
# The script's own deadline (seconds since it started, env.sh's unpacking included), inside the device tool's 600 s
# a command: the steps after the first targets table are skipped when they could run past it.
deadline=${DEADLINE:-570}
# Packed however the script ends, also when the device tool's time limit stops it (TERM): what ran comes back.
pack() { trap - EXIT TERM INT; [ -d "$R" ] || return 0; tar -C "$WORK" -czf "$OUT/v2-$group.tgz" "v2-$group" && rm -rf "$R" && echo "== packed: $OUT/v2-$group.tgz"; }
trap pack EXIT
# The runs under `timeout` are stopped by name (this machine runs only them).
stop_runs() { pkill -TERM -f "$bundle/perf/KernelVL.Perf.dll"; pkill -TERM -f "$bundle/cli/kernelvl.dll"; pkill -TERM -f perf/gpu/torch_baselines.py; wait; }
# Whether a step of `limit` seconds (and the final table's 30) still fits before the deadline; says so when not.
fits() { if [ $((deadline - SECONDS)) -ge $(($1 + 30)) ]; then return 0; fi; echo "== skipped (${SECONDS} s of ${deadline} used): $2"; return 1; }
trap 'echo "== stopped (time limit?): packing what ran"; stop_runs; pack; exit 124' TERM INT

echo "== kernelvl info --probe (libcuda, libnvrtc, ILGPU's CUDA accelerator, how each kernel file loaded)"
timeout 45 dotnet "$bundle/cli/kernelvl.dll" info --probe > "$R/info.txt" 2>&1; echo "exit $?"; tail -n 20 "$R/info.txt"

if [ "$group" = checks ]; then
  # Correctness only, so every check runs at once (one process each: a kernel that faults poisons only its own
  # context; the NVRTC cache is written atomically per process): about a minute and a half instead of five.
  if [ -n "${KERNELVL_CUDA_DRIVER:-}" ]; then
    # A rehearsal on the host emulator's driver (no GPU): the suite's 70k-row cases would take hours there;
    # EmulatedCudaTests runs the same kinds of cases at small sizes.
    echo "== topk versions 2 and 3: the stress suite skipped (KERNELVL_CUDA_DRIVER=$KERNELVL_CUDA_DRIVER: emulated)"
    echo "skipped on the emulated driver" > "$R/topk-suite.md"; echo "exit 0 (skipped)" > "$R/topk-suite.exit"
  else
    echo "== topk versions 2 and 3: the stress suite (every query against f64 and version 1), in the background"
    ( perf 120 topk-f16 --suite > "$R/topk-suite.md" 2>&1; echo "exit $?" > "$R/topk-suite.exit" ) &
  fi
  # Each entry: VAR=VALUE[,VAR=VALUE...] (KERNELVL_CUDA_ prefixed) and the registry filter.
  checks=("GEMM=2 ^matmul" "GEMM=3 ^matmul" "GEMM=4 ^matmul" "GEMM=4,GEMM_SPLITK=0 ^matmul" "GEMM=4,GEMM_PERSISTENT=0 ^matmul" "GEMM=4,GEMM_CLUSTER=2 ^matmul" "GEMM_F32=2 ^infonce" "GEMM_F32=3 ^infonce" "INFONCE=2 ^infonce"
          "INFONCE=2,GEMM_F32=3 ^infonce" "ATTENTION=2 ^attention " "ATTENTION=3 ^attention " "LAYERNORM_BACKWARD=2 ^layernorm_backward" "ATTENTION_BACKWARD=2 ^attention_backward")
  for v in "${checks[@]}"; do
    vars=${v%% *}; filter=${v#* }; name=${vars//[=,]/-}
    envs=(); IFS=, read -ra pairs <<< "$vars"; for p in "${pairs[@]}"; do envs+=("KERNELVL_CUDA_$p"); done
    ( env "${envs[@]}" timeout 90 dotnet "$bundle/perf/KernelVL.Perf.dll" check --backend cuda --filter "$filter" \
        > "$R/check-$name.txt" 2>&1; echo "exit $?" > "$R/check-$name.exit" ) &
  done
  wait
  for v in "${checks[@]}"; do
    vars=${v%% *}; filter=${v#* }; name=${vars//[=,]/-}
    echo "== KERNELVL_CUDA_${vars//,/ KERNELVL_CUDA_}: the parity registry's '$filter' cases ($(cat "$R/check-$name.exit"))"
    grep -E "^kernel gemm_sm90|^kernel version selected|FAIL|passed|failed|unavailable" "$R/check-$name.txt" | tail -n 6
  done
  echo "== topk versions 2 and 3: the stress suite ($(cat "$R/topk-suite.exit"))"; tail -n 9 "$R/topk-suite.md"
  # ptxas's performance notes from the card's NVRTC (a serialised wgmma, an injected wait: C75xx), which the build
  # machine's NVRTC 12.4/12.5 did not give; each names its function.
  echo "== ptxas performance notes in the kernel lines (none is the goal)"
  grep -h -o "(C75[0-9][0-9])[^|]*" "$R"/check-*.txt "$R/info.txt" 2>/dev/null | sort -u | head -n 12 || true
elif [ "$group" = timings ]; then
  # Ordered by what issue 4's ratios need, so that a run cut short still has them: the PyTorch baselines (every
  # ratio's denominator; its JSON is rewritten after each row), the four targets' kernels, the headline baselines once
  # more (the card's drift within the run: targets takes the faster of the two, the conservative ratio), the targets'
  # table; then the version 1 / 2 comparison of the ops for the flips, and the table again with those files. The time
  # limits of the steps up to the first table, the info probe included, add up to 525 s of the device tool's 600 s a command.
  torch_run() { timeout "$1" python3 perf/gpu/torch_baselines.py --out "$2" "${@:3}" > "$2.log" 2>&1 & wait $!; echo "exit $?"; tail -n 24 "$2.log"; }
  targets() { echo "== issue 4's targets, ratios within this run ($R/targets.md, targets.json)$1"
              timeout 30 dotnet "$bundle/perf/KernelVL.Perf.dll" targets "$R" 2>&1 | grep -E '^\| |targets:' | cut -c1-200; }
  if [ "${SKIP_TORCH:-0}" != 1 ]; then
    echo "== PyTorch baselines (same card, same run)"
    torch_run 90 "$R/torch-baselines.json"
  fi
  echo "== gemm versions 1, 2, 3, 4 (4 also in clusters of 2) at the targets' shapes (checked, then timed)"
  perf 100 gemm-bf16 --json "$R/gemm-bf16.json" > "$R/gemm-bf16.md" 2>&1; echo "exit $?"; tail -n 45 "$R/gemm-bf16.md"
  echo "== top-k 1M x 768 f16, Q 1024, k 10: versions 1, 2 and 3 (3 also in clusters of 4)"
  perf 100 topk-f16 --json "$R/topk-f16.json" > "$R/topk-f16.md" 2> "$R/topk-f16.log"; echo "exit $?"
  tail -n 4 "$R/topk-f16.log"; tail -n 7 "$R/topk-f16.md"
  echo "== attention forward version 3 (wgmma), checked against the cpu backend, then timed"
  KERNELVL_CUDA_ATTENTION=3 perf 60 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 --json "$R/ops-attention-v3.json" \
    --filter '^attention .*D64' > "$R/ops-attention-v3.md" 2> "$R/ops-attention-v3.log"; echo "exit $?"
  grep -E '^\| attention' "$R/ops-attention-v3.md" | cut -c1-140
  echo "== InfoNCE version 2 step by step at N 4096, D 768 (GB/s of the passes over S, L2 flushed; TFLOP/s of the GEMMs; the gradient checked)"
  perf 60 infonce-phases --json "$R/infonce-phases.json" > "$R/infonce-phases.md" 2>&1; echo "exit $?"; cat "$R/infonce-phases.md"
  if [ "${SKIP_TORCH:-0}" != 1 ]; then
    echo "== PyTorch headline baselines again (copy, bf16 GEMMs, SDPA): the card's drift within the run"
    torch_run 40 "$R/torch-baselines-after.json" --subset headline
  fi
  targets ""
  # A copy of everything so far, in case the rest is cut short by the device tool's limit (no trap then).
  tar -C "$WORK" -czf "$OUT/v2-$group-first.tgz" "v2-$group" && echo "== packed so far: $OUT/v2-$group-first.tgz"
  if fits 40 "InfoNCE version 2 on the Hopper 3xTF32 GEMM"; then
  echo "== InfoNCE version 2 on the Hopper 3xTF32 GEMM (KERNELVL_CUDA_GEMM_F32=3), checked against the cpu backend, then timed"
  KERNELVL_CUDA_INFONCE=2 KERNELVL_CUDA_GEMM_F32=3 perf 40 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 \
    --json "$R/ops-infonce-f32v3.json" --filter 'infonce.*N4096' > "$R/ops-infonce-f32v3.md" 2> "$R/ops-infonce-f32v3.log"; echo "exit $?"
  grep -E '^\| infonce' "$R/ops-infonce-f32v3.md" | cut -c1-140
  fi
  for ver in 1 2; do
    fits 40 "ops version $ver" || continue
    echo "== attention forward/backward, InfoNCE (S and its gradient GEMMs), layer norm backward: version $ver (checked against the cpu backend, then timed)"
    KERNELVL_CUDA_ATTENTION=$ver KERNELVL_CUDA_GEMM_F32=$ver KERNELVL_CUDA_INFONCE=$ver KERNELVL_CUDA_ATTENTION_BACKWARD=$ver KERNELVL_CUDA_LAYERNORM_BACKWARD=$ver \
      perf 40 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 --json "$R/ops-v$ver.json" \
      --filter '^attention.*D64|infonce.*N4096|^layernorm_backward' > "$R/ops-v$ver.md" 2> "$R/ops-v$ver.log"; echo "exit $?"
    grep -E '^\| (attention|infonce|layernorm)' "$R/ops-v$ver.md" | cut -c1-140
  done
  # The table again with every file (also runnable on the build machine over an unpacked v2-timings.tgz, e.g. after
  # a run cut short: dotnet perf/KernelVL.Perf/bin/Release/net10.0/KernelVL.Perf.dll targets DIR).
  targets " with the version 1 / 2 files"
elif [ "$group" = search ]; then
  echo "== index search as it is today (rows widened on the host, f32 top-k)"
  perf 60 search --backend cuda --json "$R/search-widened.json" > "$R/search-widened.md" 2>&1; echo "exit $?"
  grep -E '^\| cuda' "$R/search-widened.md" | cut -c1-120
  for ver in 1 2 3 3c4; do
    echo "== index search with f16 rows handed to the cuda backend as halves (KERNELVL_CUDA_HALF_ROWS=1), top-k version $ver"
    KERNELVL_CUDA_HALF_ROWS=1 KERNELVL_CUDA_TOPK=${ver%c4} KERNELVL_CUDA_TOPK_CLUSTER=$([ $ver = 3c4 ] && echo 4 || echo 1) \
      perf 60 search --backend cuda --json "$R/search-v$ver.json" > "$R/search-v$ver.md" 2>&1; echo "exit $?"
    grep -E '^\| cuda' "$R/search-v$ver.md" | cut -c1-120
  done
  # Model throughput (random base weights): version 1 as measured before, then every new version at once, the
  # inference GEMMs on their bf16 weight copies (VlModel.InferenceWeights).
  for set in v1 new; do
    echo "== model throughput, perf e2e base on cuda: $set kernels"
    if [ $set = new ]; then envs=(KERNELVL_CUDA_GEMM=4 KERNELVL_CUDA_ATTENTION=3 KERNELVL_CUDA_LAYERNORM_BACKWARD=2 KERNELVL_CUDA_ATTENTION_BACKWARD=2); else envs=(KERNELVL_CUDA_GEMM=1); fi
    env "${envs[@]}" timeout 120 dotnet "$bundle/perf/KernelVL.Perf.dll" e2e --backend cuda --min-time 0.2 --json "$R/e2e-$set.json" > "$R/e2e-$set.md" 2>&1; echo "exit $?"
    grep -E '^cuda' "$R/e2e-$set.md"
  done
else
  echo "ONLY must be checks, timings or search, got '$group'" >&2; exit 2
fi
