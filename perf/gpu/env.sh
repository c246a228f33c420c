# Sourced by run.sh (and by one-off commands on the GPU machine): unpacks the carried .NET runtime, finds libnvrtc
# and cuBLAS, and defines perf() = the perf harness under a time limit. Needs OUT set.
bundle=perf/gpu/bundle
OUT=${OUT:-$(mktemp -d)}
[ -f "$bundle/dotnet-runtime.tar.xz" ] || { echo "error: $bundle is missing: run perf/gpu/prepare.sh first and carry it" >&2; exit 2; }

export DOTNET_ROOT=$(mktemp -d)
# Without the runtime every later `dotnet` is "command not found" while the script goes on: stop here instead.
tar -C "$DOTNET_ROOT" -xJf "$bundle/dotnet-runtime.tar.xz" \
  || { echo "error: could not unpack $bundle/dotnet-runtime.tar.xz into $DOTNET_ROOT (tar says why above: no xz, a damaged bundle, a full disk)" >&2; exit 2; }
export PATH="$DOTNET_ROOT:$PATH" DOTNET_CLI_TELEMETRY_OPTOUT=1
# Without libicu .NET only starts in invariant mode (then the tokenizer cannot strip accents: Unicode normalisation needs ICU).
# grep -c reads all of ldconfig's output: grep -q would stop at the first match, and under run-v2.sh's pipefail the
# SIGPIPE that ldconfig then gets (output over the 64 KiB pipe buffer) fails the test although ICU is there.
ldconfig -p 2>/dev/null | grep -c libicuuc > /dev/null || export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1

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


# ILGPU.Algorithms' CuBlas asks for libcublas.so.12 (or .11); a CUDA 13 machine has libcublas.so.13 with the same
# v2 entry points. A private folder of links lets it load that one; the real folder comes after it for libcublasLt.
cublas=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcublas.so.1[0-9]' -print 2>/dev/null | grep -v /stubs/ | sort -V | tail -n 1)
if [ -n "$cublas" ]; then
  links=$(mktemp -d)
  for v in 11 12 13; do [ -e "$(dirname "$cublas")/libcublas.so.$v" ] || ln -s "$cublas" "$links/libcublas.so.$v"; done
  export LD_LIBRARY_PATH="$links:$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "cuBLAS: $cublas"
fi
# Run in the background and waited for: bash runs a trap (run-v2.sh packs its results on TERM) only between commands,
# and a foreground step would first run to its own limit (timeout leads its own process group: a stop misses it).
perf() { local limit=$1; shift; timeout "$limit" dotnet "$bundle/perf/KernelVL.Perf.dll" "$@" & wait $!; }
