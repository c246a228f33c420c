#!/usr/bin/env bash
# Assembles the build's PTX (src/KernelVL/obj/<Configuration>/ptx/*.ptx) for a GPU architecture with ptxas -v and
# prints each kernel's registers, shared memory, stack and spills; exits 1 on any spill or stack frame, 2 when ptxas
# or the PTX is missing. No GPU needed. Usage: kernels/ptxas-check.sh [Configuration (Release)] [arch (sm_90)]
set -uo pipefail
cd "$(dirname "$0")/.."
config=${1:-Release}; arch=${2:-sm_90}
command -v ptxas >/dev/null || { echo "ptxas-check: ptxas not found (Debian: nvidia-cuda-toolkit, non-free)"; exit 2; }
shopt -s nullglob
files=(src/KernelVL/obj/"$config"/ptx/*.ptx)
[ ${#files[@]} -gt 0 ] || { echo "ptxas-check: no PTX under src/KernelVL/obj/$config/ptx: build first (dotnet build -c $config)"; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bad=0
for f in "${files[@]}"; do
  name=$(basename "$f" .ptx)
  if ! ptxas -arch="$arch" -v -o "$tmp/$name.cubin" "$f" > "$tmp/$name.log" 2>&1; then
    echo "$name: ptxas failed"; cat "$tmp/$name.log"; bad=1; continue
  fi
  # ptxas -v prints, per entry: "Compiling entry function 'X'", "N bytes stack frame, S bytes spill stores, L bytes spill loads",
  # "Used R registers, B bytes smem"
  awk -v file="$name" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']*'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { stack = $5; spills = $9 + $13 }
    /Used [0-9]+ registers/ && fn != "" {
      smem = ($0 ~ /smem/) ? $0 : ""; sub(/.*registers,? ?/, "", smem)
      printf "%-10s %-28s %3d registers  %-22s stack %s, spills %s\n", file, fn, $5, smem, stack, spills
      if (stack + spills > 0) bad = 1
      fn = ""
    }
    END { exit bad }' "$tmp/$name.log" || bad=1
done
[ $bad = 0 ] && echo "ptxas-check: every kernel assembles for $arch without spills" || echo "ptxas-check: FAILED"
exit $bad
