#!/usr/bin/env bash
# One prepared run on the GPU machine, within about 7 minutes of wall time:
#   1. the GPU, its driver and PyTorch (nvidia-smi, python3);
#   2. `minisora bench gpu-check` (at most MINISORA_BUDGET_S + 40 s): parity of
#      minisora's CUDA kernels against their CPU references (every attention
#      kernel: scalar, mma, pipelined), the bf16 matmul peak, the tensor-core
#      attention kernels alone, then one denoising step for presets S, B, L,
#      XL at 1k, 4k, 16k and 32k tokens (batch 2, bf16) with the fastest
#      kernel that passed, after timing each op of an XL block at 16k tokens
#      alone (where a step's time goes); then the steps from 16k tokens again
#      with the cuBLASLt linear layers (bias and GELU fused), if they passed;
#   3. the PyTorch peer (benches/peer/gpu_speed.py, at most TORCH_BUDGET_S +
#      60 s) on the same shapes: SDPA alone (and each of its backends), the
#      step cases, and the table of both with their ratio;
#   4. the whole pipeline on the GPU: `generate` in bf16 and f32 (contact
#      sheets into $OUT) and `eval` of the shipped model.
# Each part has a hard `timeout`, so the whole stays bounded even when a part
# hangs; everything printed is also saved in $OUT (gpu-check.log).
#
# Usage: scripts/gpu-check.sh [BINARY]
#   BINARY   minisora built with `--no-default-features --features cuda`
#            [default: .gpu/minisora, else target/release/minisora]; where only
#            BINARY.xz exists it is unpacked first (the device tool carries at
#            most 64 MiB: strip and xz the binary, carry the folder)
# Environment:
#   OUT               folder for the reports [default: $OUT, which the device
#                     tool sets, else /tmp/minisora-gpu-check]
#   MINISORA_BUDGET_S seconds for minisora's part [180]
#   TORCH_BUDGET_S    seconds for the PyTorch step cases [80]
#   EVAL_COUNT        held-out prompts of each kind for `eval --device cuda` [10]
#   TORCH_PROFILE     PRESET:TOKENS: also PyTorch's profiler over one forward of
#                     that case (set beside minisora's block breakdown) [XL:16384]
#   PIPELINE          0 skips part 4 (generate and eval) [1]
#   PLAN              the step cases for the peer when minisora's part wrote
#                     none (`minisora bench gpu-check --plan-only --json F`,
#                     made on any machine) [default: .gpu/plan.json]
#   CUDA_LIB_DIRS     extra folders to search for the CUDA libraries, ':'-separated
#
# Prepare it on a machine with the CUDA toolkit (README, "Running on a GPU"):
#   cargo build --release --no-default-features --features cuda --bin minisora
#   mkdir -p .gpu && strip -o .gpu/minisora target/release/minisora && xz -f -T0 .gpu/minisora
#   minisora bench gpu-check --plan-only --json .gpu/plan.json   # any build
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
out=${OUT:-/tmp/minisora-gpu-check}
mkdir -p "$out"
exec > >(tee -a "$out/gpu-check.log") 2>&1
minisora_budget=${MINISORA_BUDGET_S:-180}
torch_budget=${TORCH_BUDGET_S:-80}
TORCH_PROFILE=${TORCH_PROFILE-XL:16384}
plan=${PLAN:-.gpu/plan.json}
start=$SECONDS

bin=${1:-}
if [ -z "$bin" ]; then
    for candidate in .gpu/minisora target/release/minisora; do
        if [ -f "$candidate" ] || [ -f "$candidate.xz" ]; then
            bin=$candidate
            break
        fi
    done
fi
if [ -n "$bin" ] && [ ! -f "$bin" ] && [ -f "$bin.xz" ]; then
    xz -dc "$bin.xz" > "/tmp/minisora-cuda" && chmod +x /tmp/minisora-cuda && bin=/tmp/minisora-cuda
fi

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used,clocks.max.sm --format=csv \
    || echo "nvidia-smi failed"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' \
    || echo "no PyTorch"

# The CUDA libraries the binary links (libcublas, libcurand, libcudart; libcuda
# comes with the driver): /usr/local/cuda, or the nvidia-* wheels beside
# PyTorch. Their folders go on LD_LIBRARY_PATH.
lib_dirs=()
IFS=: read -ra extra <<< "${CUDA_LIB_DIRS:-}"
for d in "${extra[@]}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
    [ -n "$d" ] && [ -d "$d" ] && lib_dirs+=("$d")
done
if command -v python3 >/dev/null; then
    while read -r sp; do
        for d in "$sp"/nvidia/cu13/lib "$sp"/nvidia/*/lib; do [ -d "$d" ] && lib_dirs+=("$d"); done
    done < <(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + sys.path))' 2>/dev/null | sort -u)
fi
if [ ${#lib_dirs[@]} -gt 0 ]; then
    joined=$(IFS=:; echo "${lib_dirs[*]}")
    export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

status=2
echo "== minisora ($((SECONDS - start)) s)"
if [ -z "$bin" ] || [ ! -f "$bin" ]; then
    echo "error: no minisora binary (build it with --no-default-features --features cuda; see the top of this script)"
else
    chmod +x "$bin" 2>/dev/null
    ldd "$bin" | grep -E 'libcuda|libcublas|libcurand|libcudart|not found'
    timeout --kill-after=5 $((minisora_budget + 40)) "$bin" bench gpu-check \
        --budget-s "$minisora_budget" --json "$out/minisora.json"
    status=$?
    [ $status -eq 124 ] && echo "minisora's part ran out of time (its report keeps the plan and what finished)"
fi

echo "== PyTorch peer ($((SECONDS - start)) s)"
cases="$out/minisora.json"
if [ ! -f "$cases" ] && [ -f "$plan" ]; then
    echo "minisora wrote no report: the peer times the cases of $plan alone"
    cases=$plan
fi
if [ -f "$cases" ] && command -v python3 >/dev/null; then
    PYTHONUNBUFFERED=1 timeout --kill-after=5 $((torch_budget + 60)) python3 benches/peer/gpu_speed.py \
        --cases "$cases" --budget-s "$torch_budget" --json "$out/torch.json" \
        ${TORCH_PROFILE:+--profile "$TORCH_PROFILE"} \
        || echo "the PyTorch peer failed or ran out of time"
else
    echo "skipped: no step cases ($out/minisora.json, $plan) or no python3"
fi

echo "== the whole pipeline on the GPU ($((SECONDS - start)) s)"
# text encoder, DiT, sampler and decoder of the shipped model, in bf16 and f32;
# the clips come back as contact sheets (no FFmpeg in a GPU build)
if [ "${PIPELINE:-1}" = 0 ]; then
    echo "skipped (PIPELINE=0)"
elif [ -n "$bin" ] && [ -f "$bin" ] && [ -d samples/model ]; then
    for dt in bf16 f16 f32; do
        t0=$SECONDS
        timeout --kill-after=5 60 "$bin" generate "a red circle moving right and a small blue square moving up" \
            --device cuda --dtype $dt --seed 0 -o "$out/generate-$dt.png" \
            && echo "generate ($dt, 20 steps, guidance 3): $((SECONDS - t0)) s with loading" \
            || echo "generate ($dt) failed"
    done
    timeout --kill-after=5 ${EVAL_BUDGET_S:-90} "$bin" eval --device cuda --count ${EVAL_COUNT:-10} \
        || echo "eval on the GPU failed or ran out of time"
    # the compression network alone, encoder included: the same 50 held-out
    # clips on the CPU (the f32 reference) and on the GPU in each dtype
    for dev_dt in "cpu f32" "cuda f32" "cuda bf16" "cuda f16"; do
        read -r dev dt <<< "$dev_dt"
        echo "vae eval --device $dev --dtype $dt:"
        timeout --kill-after=5 60 "$bin" vae eval --device "$dev" --dtype "$dt" --count 50 \
            || echo "vae eval ($dev, $dt) failed"
    done
fi

echo "== done in $((SECONDS - start)) s; reports in $out"
exit $status
