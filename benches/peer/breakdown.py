"""Where a DiT block's time goes, minisora against PyTorch, op by op.

minisora's side is `minisora bench gpu-check --device cpu --breakdown
PRESET:TOKENS --dtype f32`, which times each op of one block alone at the
step's shapes. This script times what the PyTorch peer's block
(minisora_dit.py) runs for the same op at the same shapes on the same
threads, and prints both with their ratio and their weight in a block
(median ms times how many times a block runs the op).

The PyTorch column is what the peer's model does, not a transcription of
minisora's op: its linear layers add their bias inside the matrix multiply
(addmm), so its bias adds read 0; its head splits are views, so they read
the cost of a view. That is the point: the table shows which of minisora's
ops the peer does not pay for at all, as well as which ones it runs faster.

Usage (torch from benches/peer/.venv, as run.sh sets up):
    benches/peer/.venv/bin/python benches/peer/breakdown.py --preset S --tokens 256 --batch 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

try:
    import torch
    import torch.nn.functional as F
except ImportError as err:
    print(f"error: breakdown.py needs torch ({err}); benches/peer/run.sh installs it", file=sys.stderr)
    sys.exit(2)

from minisora_dit import EPS, MASK_SCALE, apply_rope, merge_heads, modulate_norm, rope_3d, split_heads

REPO = Path(__file__).resolve().parents[2]


def median_ms(f: Callable[[], object], repeat: int) -> float:
    """Median wall time of `f` over `repeat` calls, after two warm-up calls."""
    f()
    f()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def minisora_side(args: argparse.Namespace, folder: Path) -> tuple[dict, list[dict]]:
    """The preset's DiT config (from `bench export`) and minisora's block breakdown."""
    base = [str(args.minisora), "bench"]
    subprocess.run(
        base + ["export", "--preset", args.preset, "--tokens", str(args.tokens), "--batch", str(args.batch),
                "--out", str(folder / "export")],
        check=True, capture_output=True, text=True,
    )
    config = json.loads((folder / "export" / "config.json").read_text())["dit"]
    report = folder / "gpu.json"
    subprocess.run(
        base + ["gpu-check", "--device", "cpu", "--presets", "tiny", "--tokens", "16", "--dtype", "f32",
                "--batch", str(args.batch), "--breakdown", f"{args.preset}:{args.tokens}", "--json", str(report)],
        check=True, capture_output=True, text=True,
    )
    return config, json.loads(report.read_text())["breakdown"]


def torch_ops(config: dict, b: int, n: int) -> list[Callable[[], object]]:
    """The peer's work for each op of minisora's breakdown list, in its order."""
    d, h = config["hidden"], config["heads"]
    dh, hidden, l = d // h, config["mlp_ratio"] * d, config["context_len"]
    g = torch.Generator().manual_seed(100)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    x = rand(b, n, d)
    rows = x.reshape(b * n, d)
    shift, scale, gate = rand(b, 1, d, scale=0.1), rand(b, 1, d, scale=0.1), rand(b, 1, d, scale=0.1)
    w_qkv, w_d, w_up, w_down = rand(3 * d, d, scale=0.03), rand(d, d, scale=0.03), rand(hidden, d, scale=0.03), rand(
        d, hidden, scale=0.03
    )
    b3, b1, b4 = rand(3 * d, scale=0.1), rand(d, scale=0.1), rand(hidden, scale=0.1)
    qkv_rows = F.linear(rows, w_qkv, b3)
    up_rows = F.linear(rows, w_up, b4)
    q, k, v = (split_heads(part, h) for part in qkv_rows.reshape(b, n, 3 * d).split(d, dim=-1))
    cos, sin = rope_3d((1, 1, n), dh, torch.device("cpu"), torch.float32)
    ck, cv = rand(b, h, l, dh), rand(b, h, l, dh)
    bias = ((torch.ones(b, l) - 1.0) * MASK_SCALE).reshape(b, 1, 1, l)
    nothing = lambda: None  # noqa: E731: fused into the matmul (addmm), nothing to run
    return [
        lambda: modulate_norm(x, shift, scale),
        lambda: F.linear(rows, w_qkv, b3),
        lambda: F.linear(rows, w_d, b1),
        lambda: F.linear(rows, w_up, b4),
        lambda: F.linear(up_rows, w_down, b1),
        nothing,
        nothing,
        nothing,
        lambda: F.gelu(up_rows, approximate="tanh"),
        lambda: [split_heads(part, h) for part in qkv_rows.reshape(b, n, 3 * d).split(d, dim=-1)],
        lambda: split_heads(x, h),
        lambda: merge_heads(q),
        lambda: apply_rope(q, cos, sin),
        lambda: F.scaled_dot_product_attention(q, k, v),
        lambda: F.scaled_dot_product_attention(q, ck, cv, attn_mask=bias),
        lambda: x * gate,
        lambda: x + x,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (minisora uses every core)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--minisora", type=Path, default=REPO / "target" / "release" / "minisora")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config, ours = minisora_side(args, Path(tmp))
    theirs = torch_ops(config, args.batch, args.tokens)
    if len(ours) != len(theirs):
        print(f"error: minisora's breakdown has {len(ours)} ops, this script knows {len(theirs)}", file=sys.stderr)
        sys.exit(2)
    print(f"one block of {args.preset} at {args.tokens} tokens x {args.batch} clips, f32, "
          f"torch {torch.__version__} on {args.threads} threads (eps {EPS})")
    print(f"{'op':<46} {'x':>2} {'minisora ms':>11} {'torch ms':>9} {'ratio':>6} {'block ms (m / t)':>17}")
    sums = [0.0, 0.0]
    with torch.inference_mode():
        for op, f in zip(ours, theirs):
            t = median_ms(f, args.repeat)
            m, count = op["median_ms"], op["per_block"]
            sums[0] += m * count
            sums[1] += t * count
            ratio = f"{m / t:6.2f}" if t > 1e-3 else "     -"
            print(f"{op['what']:<46} {count:>2} {m:>11.3f} {t:>9.3f} {ratio} {m * count:>8.2f} / {t * count:<7.2f}")
    print(f"{'block, summed':<46} {'':>2} {'':>11} {'':>9} {sums[0] / sums[1]:6.2f} {sums[0]:>8.2f} / {sums[1]:<7.2f}")


if __name__ == "__main__":
    main()
