#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, with perf/gpu/bundle carried (made by prepare.sh).
# Unpacks the .NET runtime, checks that libcuda, libnvrtc and ILGPU's CUDA accelerator load and run a
# kernel, runs the parity registry there, and times the PyTorch baselines the CUDA kernels will be
# measured against. Everything lands in $OUT (or a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=perf/gpu/bundle
OUT=${OUT:-$(mktemp -d)}
[ -f "$bundle/dotnet-runtime.tar.xz" ] || { echo "error: $bundle is missing: run perf/gpu/prepare.sh first and carry it" >&2; exit 2; }

export DOTNET_ROOT=$(mktemp -d)
tar -C "$DOTNET_ROOT" -xJf "$bundle/dotnet-runtime.tar.xz"
export PATH="$DOTNET_ROOT:$PATH" DOTNET_CLI_TELEMETRY_OPTOUT=1
# Without libicu .NET only starts in invariant mode (then the tokenizer cannot strip accents: Unicode normalisation needs ICU).
ldconfig -p 2>/dev/null | grep -q libicuuc || export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1

echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
echo "== CUDA libraries"
ls -l /usr/lib/x86_64-linux-gnu/libcuda.so* /usr/local/nvidia/lib64/libcuda.so* 2>/dev/null | head -n 4
# libnvrtc: the toolkit's, else PyTorch's wheel. Never a 'stubs' folder: it holds a stub libcuda.so that
# shadows the real driver for anything that asks for "libcuda.so" (ILGPU does) and makes cuInit fail.
nvrtc_dirs=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libnvrtc.so*' -print 2>/dev/null | grep -v /stubs/ | xargs -r -n1 dirname | sort -u)
echo "libnvrtc found in: ${nvrtc_dirs:-nowhere}"
first=$(echo "$nvrtc_dirs" | grep -m1 cuda || echo "$nvrtc_dirs" | head -n 1)
[ -n "$first" ] && export LD_LIBRARY_PATH="$first${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

echo "== kernelvl info --probe"
dotnet "$bundle/cli/kernelvl.dll" info --probe --json > "$OUT/info.json"; echo "exit $?"
python3 - "$OUT/info.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("runtime:", d["runtime"]); print("cpu:", d["cpu"], d["cores"], "cores")
print("cuda driver:", d["cuda_driver"], "| nvrtc:", d["nvrtc"])
for p in d["ilgpu_probe"]: print(f'  {p["type"]:8} {"ok" if p["ok"] else "FAILED"}  {p["device"]}: {p["detail"]}')
PY

echo "== parity registry on the cpu backend ($(nproc) cores)"
dotnet "$bundle/perf/KernelVL.Perf.dll" check --backend cpu 2>&1 | tail -n 5 | tee "$OUT/check-cpu.txt"

echo "== parity registry on the ilgpu backend (ILGPU's CUDA accelerator)"
dotnet "$bundle/perf/KernelVL.Perf.dll" check --backend ilgpu-cuda 2>&1 | tail -n 20 | tee "$OUT/check-ilgpu.txt"

if [ "${SKIP_ILGPU_OPS:-0}" != 1 ]; then
  echo "== ops --backend ilgpu (checked against the reference, then timed)"
  dotnet "$bundle/perf/KernelVL.Perf.dll" ops --backend ilgpu-cuda --json "$OUT/ilgpu-ops.json" ${ILGPU_OPS_FILTER:+--filter "$ILGPU_OPS_FILTER"} \
    > "$OUT/ilgpu-ops.md" 2> "$OUT/ilgpu-ops.log"
  echo "exit $?"; tail -n 6 "$OUT/ilgpu-ops.md"
fi

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  echo "== PyTorch baselines"
  python3 perf/gpu/torch_baselines.py --out "$OUT/torch-baselines.json"
fi
