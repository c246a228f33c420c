#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, with perf/gpu/bundle carried (made by prepare.sh).
# Unpacks the .NET runtime, checks that libcuda, libnvrtc and ILGPU's CUDA accelerator load and run a
# kernel, runs the parity registry on the cuda backend (the hand kernels of kernels/*.cu) and on ilgpu-cuda,
# times the hot ops on both, and times the baselines on the same card in the same run: cuBLAS sgemm
# (through ILGPU.Algorithms) and PyTorch. Everything lands in $OUT (or a temporary folder).
# Budget: ~8 minutes on an H100. Each step has its own time limit, so one hung kernel cannot eat the run; the
# limits add up to under 10 minutes (the device tool's cap per command).
# Knobs: SKIP_CPU_CHECK=0 runs the cpu registry too; CUDA_OPS_FILTER, ILGPU_OPS_FILTER pick the ops timed;
# SKIP_ILGPU_OPS=1, SKIP_TORCH=1, SKIP_GPU_SHAPES=1 skip those steps; RUN_E2E=1 adds the model throughput (perf e2e); SKIP_ILGPU_CHECK=0 reruns the ilgpu-cuda
# registry (it passed on the first run; the cuda check's last family covers the same ILGPU kernels).
set -uo pipefail
cd "$(dirname "$0")/../.."
source perf/gpu/env.sh

echo "== kernelvl info --probe"
timeout 45 dotnet "$bundle/cli/kernelvl.dll" info --probe --json > "$OUT/info.json"; echo "exit $?"
python3 - "$OUT/info.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("runtime:", d["runtime"]); print("cpu:", d["cpu"], d["cores"], "cores")
print("cuda driver:", d["cuda_driver"], "| nvrtc:", d["nvrtc"])
for p in d["ilgpu_probe"]: print(f'  {p["type"]:8} {"ok" if p["ok"] else "FAILED"}  {p["device"]}: {p["detail"]}')
for k in d.get("cuda_kernel_sources") or []: print("  kernel", k)
PY

# NVRTC's CUBINs are cached here: the first process compiles them, the later ones read the cache (both paths run),
# and they come back with the results.
export XDG_CACHE_HOME="$OUT/cache"

echo "== parity registry on the cuda backend (hand kernels; the kernel lines say NVRTC cubin or embedded PTX)"
# One process per kernel family: a kernel that faults leaves its CUDA context unusable, and must not hide how the
# other kernels fare. The last family is every op the hand kernels do not take (the ILGPU kernels under the cuda backend).
i=0
for family in '^matmul' '^attention ' '^layernorm ' '^infonce' '^topk' '^(?!matmul|attention |layernorm |infonce|topk)'; do
  i=$((i + 1))
  perf 35 check --backend cuda --filter "$family" > "$OUT/check-cuda-$i.txt" 2>&1
  echo "-- $family: exit $?"
  [ $i = 1 ] && grep '^kernel ' "$OUT/check-cuda-$i.txt"
  grep -v '^kernel ' "$OUT/check-cuda-$i.txt" | tail -n 8
done

echo "== ops --backend cuda: hot ops at the model's shapes (checked against the f64 reference, then timed with CUDA events)"
perf 60 ops --backend cuda --min-time 0.1 --json "$OUT/cuda-ops.json" --filter "${CUDA_OPS_FILTER:-^(matmul|attention |layernorm |infonce|topk)}" \
  > "$OUT/cuda-ops.md" 2> "$OUT/cuda-ops.log"
echo "exit $?"; grep -E '^\| (matmul|attention|layernorm|infonce|topk)' "$OUT/cuda-ops.md" | cut -c1-150

if [ "${SKIP_GPU_SHAPES:-0}" != 1 ]; then
  echo "== ops --backend cuda --gpu-shapes: the issue's targets (checked against the cpu backend)"
  perf 80 ops --backend cuda --gpu-shapes --reference cpu --min-time 0.1 --json "$OUT/cuda-gpu-shapes.json" \
    --filter '4096x4096x4096|Tq512|Tq1024|N4096 D768|Q1024 N65536' > "$OUT/cuda-gpu-shapes.md" 2> "$OUT/cuda-gpu-shapes.log"
  echo "exit $?"; grep -E '^\| ' "$OUT/cuda-gpu-shapes.md" | cut -c1-150
fi

echo "== top-k version 2 (tensor cores + exact rescoring) on the cases that stress it, every query against f64 and version 1"
perf 60 topk-f16 --suite > "$OUT/topk-f16-suite.md" 2>&1; echo "exit $?"
tail -n 9 "$OUT/topk-f16-suite.md"

echo "== top-k over a 1M x 768 f16 corpus, 1024 queries, k 10, versions 1 and 2 (4 queries against an f64 scan, v2 against v1)"
perf 90 topk-f16 --json "$OUT/topk-f16.json" > "$OUT/topk-f16.md" 2> "$OUT/topk-f16.log"; echo "exit $?"
tail -n 3 "$OUT/topk-f16.log"; tail -n 2 "$OUT/topk-f16.md"

echo "== cuBLAS baselines (ILGPU.Algorithms CuBlas, same card)"
perf 40 baselines --json "$OUT/cublas-baselines.json" 2>&1 | tee "$OUT/cublas-baselines.md" | tail -n 10

if [ "${SKIP_CPU_CHECK:-1}" != 1 ]; then
  echo "== parity registry on the cpu backend ($(nproc) cores)"
  perf 120 check --backend cpu 2>&1 | tail -n 5 | tee "$OUT/check-cpu.txt"
fi

if [ "${SKIP_ILGPU_CHECK:-1}" != 1 ]; then
  echo "== parity registry on the ilgpu backend (ILGPU's CUDA accelerator)"
  perf 90 check --backend ilgpu-cuda 2>&1 | tail -n 10 | tee "$OUT/check-ilgpu.txt"
fi

if [ "${SKIP_ILGPU_OPS:-0}" != 1 ]; then
  echo "== ops --backend ilgpu (checked against the reference, then timed)"
  perf 45 ops --backend ilgpu-cuda --min-time 0.1 --json "$OUT/ilgpu-ops.json" --filter "${ILGPU_OPS_FILTER:-^(matmul|attention |layernorm |infonce|topk)}" \
    > "$OUT/ilgpu-ops.md" 2> "$OUT/ilgpu-ops.log"
  echo "exit $?"; tail -n 6 "$OUT/ilgpu-ops.md"
fi

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  echo "== PyTorch baselines"
  timeout 45 python3 perf/gpu/torch_baselines.py --out "$OUT/torch-baselines.json"
fi

if [ "${RUN_E2E:-0}" = 1 ]; then
  echo "== e2e: the ViLT-B/32-sized model's throughput (decomposed images/s, texts/s; cross-encoder pairs/s), random weights"
  perf "${E2E_LIMIT:-60}" e2e --backend cuda --backend ilgpu-cuda --min-time 2 --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.md" | tail -n 8
fi
