#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, with perf/gpu/bundle carried (made by prepare.sh): the first GPU run
# of the version-2/3 kernels (topk.cu tensor-core search, gemm.cu bf16 pipeline, gemm_sm90.cu wgmma, attention.cu
# prefetching), which are opt-in until this passes.
# About 5 minutes on an H100, each step under its own time limit. Results (and the NVRTC CUBINs, for cuobjdump -sass
# on the build machine) are packed into $OUT/v2-results.tgz: the device tool brings back only a few files.
set -uo pipefail
cd "$(dirname "$0")/../.."
source perf/gpu/env.sh
R="$OUT/v2"; mkdir -p "$R"
export XDG_CACHE_HOME="$R/cache"

echo "== kernelvl info --probe (libcuda, libnvrtc, ILGPU's CUDA accelerator, how each kernel file loaded)"
timeout 45 dotnet "$bundle/cli/kernelvl.dll" info --probe > "$R/info.txt" 2>&1; echo "exit $?"; tail -n 12 "$R/info.txt"

echo "== topk version 2: the stress suite (every query against f64 and version 1)"
KERNELVL_CUDA_TOPK=2 perf 90 topk-f16 --suite > "$R/topk-suite.md" 2>&1; echo "exit $?"; tail -n 9 "$R/topk-suite.md"

echo "== gemm version 2: the parity registry's matmul cases (transposes, batches, bias, accumulate, GELU) on it"
KERNELVL_CUDA_GEMM=2 perf 60 check --backend cuda --filter '^matmul' > "$R/check-matmul-v2.txt" 2>&1; echo "exit $?"
grep -v '^kernel ' "$R/check-matmul-v2.txt" | tail -n 6

echo "== gemm version 3 (wgmma, sm_90a): the same matmul cases (its module line says whether NVRTC built it)"
KERNELVL_CUDA_GEMM=3 perf 60 check --backend cuda --filter '^matmul' > "$R/check-matmul-v3.txt" 2>&1; echo "exit $?"
grep -v '^kernel ' "$R/check-matmul-v3.txt" | tail -n 6

echo "== InfoNCE backward on the 3xTF32 GEMM: the registry's infonce cases (f32 budget), then N 4096 timed, both versions"
KERNELVL_CUDA_GEMM_F32=2 perf 60 check --backend cuda --filter '^infonce' > "$R/check-infonce-f32x3.txt" 2>&1; echo "exit $?"
grep -v '^kernel ' "$R/check-infonce-f32x3.txt" | tail -n 4
for ver in 1 2; do
  KERNELVL_CUDA_GEMM_F32=$ver perf 60 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 --json "$R/infonce-f32-v$ver.json" \
    --filter 'infonce.*N4096' > "$R/infonce-f32-v$ver.md" 2> "$R/infonce-f32-v$ver.log"; echo "v$ver exit $?"
  grep -E '^\| infonce' "$R/infonce-f32-v$ver.md" | cut -c1-140
done

echo "== attention version 2: the parity registry's attention cases on it"
KERNELVL_CUDA_ATTENTION=2 perf 60 check --backend cuda --filter '^attention ' > "$R/check-attention-v2.txt" 2>&1; echo "exit $?"
grep -v '^kernel ' "$R/check-attention-v2.txt" | tail -n 6

echo "== attention versions 1 and 2 at T 256/512/1024 (checked against the cpu backend, then timed)"
for ver in 1 2; do
  KERNELVL_CUDA_ATTENTION=$ver perf 60 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 --json "$R/attention-v$ver.json" \
    --filter '^attention .*D64' > "$R/attention-v$ver.md" 2> "$R/attention-v$ver.log"; echo "v$ver exit $?"
  grep -E '^\| attention' "$R/attention-v$ver.md" | cut -c1-140
done

echo "== gemm version 2 vs version 1 at the targets' shapes (checked, then timed)"
perf 90 gemm-bf16 --json "$R/gemm-bf16.json" > "$R/gemm-bf16.md" 2>&1; echo "exit $?"; tail -n 15 "$R/gemm-bf16.md"

echo "== top-k 1M x 768 f16, Q 1024, k 10: versions 1 and 2"
perf 120 topk-f16 --json "$R/topk-f16.json" > "$R/topk-f16.md" 2> "$R/topk-f16.log"; echo "exit $?"
tail -n 3 "$R/topk-f16.log"; tail -n 2 "$R/topk-f16.md"

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  echo "== PyTorch baselines (same card, same run)"
  timeout 60 python3 perf/gpu/torch_baselines.py --out "$R/torch-baselines.json" 2>&1 | tail -n 14
fi
tar -C "$OUT" -czf "$OUT/v2-results.tgz" v2 && rm -rf "$R"
echo "== packed: $OUT/v2-results.tgz"
