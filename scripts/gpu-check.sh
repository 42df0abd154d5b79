#!/usr/bin/env bash
# One prepared run on the GPU machine, within 8 minutes of wall time:
#   1. the GPU and driver (nvidia-smi);
#   2. `minisora bench gpu-check` (at most MINISORA_BUDGET_S + 40 s): parity of
#      minisora's CUDA kernels against their CPU references, the bf16 matmul
#      peak, the attention kernel alone, and one denoising step for presets
#      S, B, L, XL at 1k, 4k, 16k and 32k tokens (batch 2, bf16);
#   3. the PyTorch peer (benches/peer/gpu_speed.py, at most TORCH_BUDGET_S +
#      40 s) on the same shapes, and the table of both with their ratio.
# Each part has a hard `timeout`, so the whole stays under about 7 minutes
# even when a part hangs.
#
# Usage: scripts/gpu-check.sh [BINARY]
#   BINARY   minisora built with `--no-default-features --features cuda`
#            [default: target/release/minisora]; if only BINARY.xz exists it
#            is unpacked into $OUT first (the device tool carries 64 MiB)
# Environment:
#   OUT               folder for minisora.json and torch.json [default: $OUT,
#                     which the device tool sets, else /tmp/minisora-gpu-check]
#   MINISORA_BUDGET_S seconds for minisora's part [240]
#   TORCH_BUDGET_S    seconds for the PyTorch step cases [90]
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
bin=${1:-target/release/minisora}
out=${OUT:-/tmp/minisora-gpu-check}
minisora_budget=${MINISORA_BUDGET_S:-240}
torch_budget=${TORCH_BUDGET_S:-90}
mkdir -p "$out"
start=$SECONDS

if [ ! -f "$bin" ] && [ -f "$bin.xz" ]; then
    xz -dc "$bin.xz" > "$out/minisora" && chmod +x "$out/minisora" && bin="$out/minisora"
fi
if [ ! -f "$bin" ]; then
    echo "error: no minisora binary at $bin (build it with --no-default-features --features cuda)" >&2
    exit 2
fi
chmod +x "$bin" 2>/dev/null

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv \
    || echo "nvidia-smi failed"

# shared/gpu/run-gpu.sh finds the CUDA 13 libraries the binary links (from
# /usr/local/cuda or PyTorch's nvidia-* wheels) and puts them on
# LD_LIBRARY_PATH; the GPU machine's copy of the repo has shared/ inside it
runner=()
for dir in "$root/shared/gpu" "$root/../shared/gpu" /work/shared/gpu; do
    if [ -f "$dir/run-gpu.sh" ]; then
        runner=(bash "$dir/run-gpu.sh")
        break
    fi
done
if [ ${#runner[@]} -eq 0 ]; then
    echo "warning: shared/gpu/run-gpu.sh not found: running the binary with the library path as it is" >&2
fi

echo "== minisora ($((SECONDS - start)) s)"
timeout --kill-after=5 $((minisora_budget + 40)) "${runner[@]}" "$bin" bench gpu-check \
    --budget-s "$minisora_budget" --json "$out/minisora.json"
status=$?
[ $status -eq 124 ] && echo "minisora's part ran out of time (its report keeps the plan and what finished)"

echo "== PyTorch peer ($((SECONDS - start)) s)"
if [ -f "$out/minisora.json" ] && command -v python3 >/dev/null; then
    timeout --kill-after=5 $((torch_budget + 40)) python3 benches/peer/gpu_speed.py \
        --cases "$out/minisora.json" --budget-s "$torch_budget" --json "$out/torch.json" \
        || echo "the PyTorch peer failed or ran out of time"
else
    echo "skipped: no $out/minisora.json or no python3"
fi

echo "== done in $((SECONDS - start)) s; reports in $out"
exit $status
