"""The PyTorch peer on a GPU, timed on the shapes `minisora bench gpu-check` ran.

Reads the JSON report that `minisora bench gpu-check --json FILE` writes
(its `plan` lists every step case: preset, DiT configuration, latent size,
batch; `steps` and `attention` hold minisora's times), then, on the same
GPU in the same dtype (bf16 by default):

1. times one forward of `minisora_dit.MinisoraDiT` (random weights, no
   export: parity is `parity_and_speed.py`'s job) for each case, in
   inference mode, attention by `F.scaled_dot_product_attention`;
2. times SDPA alone at the shapes minisora's attention kernel was timed at;
3. prints both tables with minisora's figures and the ratio
   (minisora / torch: above 1, minisora is slower).

Only torch is needed (no safetensors, no numpy). A time budget sizes the
repeats like the Rust side does; cases that would not fit are skipped and
said so. Exit status 2 on a setup failure (no torch, no GPU, no report).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

try:
    import torch
    import torch.nn.functional as F
except ImportError as err:
    print(f"error: gpu_speed.py needs torch ({err})", file=sys.stderr)
    sys.exit(2)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minisora_dit import MinisoraDiT  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

# "cuda", or "cpu" for a dry run of the whole script on small cases (`--device cpu`)
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median(samples: list[float]) -> float:
    """The median as minisora's `bench::median_p90` takes it (the upper middle of an even count)."""
    ordered = sorted(samples)
    return ordered[math.floor((len(ordered) - 1) * 0.5 + 0.5)]


def time_ms(fn, repeat: int) -> float:
    """Median milliseconds of `fn` over `repeat` calls after one warm-up, synchronised."""
    fn()
    sync()
    times = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return median(times)


def step_flops(dit: dict[str, Any], tokens: int, batch: int) -> float:
    """`DitConfig::step_cost` (src/dit/config.rs): total FLOPs of one forward."""
    n, b, d = tokens, batch, dit["hidden"]
    l, e, r, f = dit["context_len"], dit["context_dim"], dit["mlp_ratio"], dit["freq_dim"]
    p = dit["latent_channels"] * dit["patch"]["t"] * dit["patch"]["h"] * dit["patch"]["w"]
    depth = dit["depth"]

    def mm(m: int, k: int, nn: int) -> int:
        return 2 * m * k * nn

    attention = mm(n, d, n) + mm(n, n, d) + mm(n, d, l) + mm(n, l, d)
    proj = mm(n, d, 3 * d) + mm(n, d, d) + mm(n, d, d) + mm(l, d, 2 * d) + mm(n, d, d)
    mlp = mm(n, d, r * d) + mm(n, r * d, d)
    if dit.get("local_mix", False):
        mlp += 2 * 9 * n * d  # the depthwise 3x3 mix
    other = (mm(n, p, d) + mm(1, f, d) + mm(1, d, d) + mm(l, e, d) + mm(1, e, d)
             + depth * mm(1, d, 6 * d) + mm(1, d, 2 * d) + mm(n, d, p))
    # absolute position embedding: once per forward, shared by the batch
    pos = mm(n, 6 * 16, d) if dit.get("pos_embed", False) else 0
    return float(b * depth * (attention + proj + mlp) + b * other + pos)


def time_steps(args: argparse.Namespace, report: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    """One forward per planned case; returns a row per case."""
    dtype = DTYPES[args.dtype]
    peak = report.get("matmul_peak_gflops") or 0.0
    rows = []
    model, model_key = None, None
    plan = report["plan"]
    for i, case in enumerate(plan):
        row: dict[str, Any] = {"preset": case["preset"], "tokens": case["tokens"], "batch": case["batch"]}
        rows.append(row)
        flops = step_flops(case["dit"], case["tokens"], case["batch"])
        # a conservative guess of a step: a quarter of the matmul peak (or
        # 200 TFLOP/s when minisora measured none), plus overheads
        guess = flops / (0.25 * (peak * 1e9 if peak > 0 else 8e14)) + 0.05
        left = deadline - time.monotonic()
        if 2 * guess > left:
            row["skipped"] = f"about {guess:.1f} s a step, {left:.0f} s of the budget left"
            print(f"torch {case['preset']} {case['tokens']}: skipped ({row['skipped']})", flush=True)
            continue
        repeat = max(1, min(5, int(left / (len(plan) - i) / guess) - 1))
        key = json.dumps(case["dit"], sort_keys=True)
        try:
            if key != model_key:
                model = None
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
                # built on the GPU directly: initialising XL on the CPU takes seconds
                with torch.device(DEVICE):
                    model = MinisoraDiT(case["dit"]).to(dtype).eval()
                model_key = key
            b, (lt, lh, lw) = case["batch"], case["latent"]
            dit = case["dit"]
            x = torch.randn(b, dit["latent_channels"], lt, lh, lw, device=DEVICE, dtype=dtype)
            t = torch.full((b,), 0.5, device=DEVICE, dtype=dtype)
            context = torch.randn(b, dit["context_len"], dit["context_dim"], device=DEVICE, dtype=dtype)
            pooled = torch.randn(b, dit["context_dim"], device=DEVICE, dtype=dtype)
            keep = torch.ones(b, dit["context_len"], device=DEVICE, dtype=dtype)
            cuda = DEVICE == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() if cuda else 0
            with torch.inference_mode():
                ms = time_ms(lambda: model(x, t, context, pooled, keep), repeat)
            row.update(
                median_ms=ms,
                tflops=flops / (ms / 1e3) / 1e12,
                peak_memory_bytes=torch.cuda.max_memory_allocated() - before if cuda else 0,
                repeat=repeat,
            )
            print(f"torch {case['preset']} {case['tokens']}: {ms:.2f} ms", flush=True)
        except torch.cuda.OutOfMemoryError as err:
            row["skipped"] = f"out of memory: {err}".splitlines()[0]
            print(f"torch {case['preset']} {case['tokens']}: {row['skipped']}", flush=True)
            model, model_key = None, None
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def time_attention(args: argparse.Namespace, report: dict[str, Any]) -> list[dict[str, Any]]:
    """SDPA at each (B, H, N, Dh) shape minisora's attention kernels were timed at."""
    dtype = DTYPES[args.dtype]
    rows = []
    shapes = []
    for a in report.get("attention", []):
        shape = (a["batch"], a["heads"], a["tokens"], a["head_dim"])
        if shape not in shapes:
            shapes.append(shape)
    for b, h, n, dh in shapes:
        q, k, v = (torch.randn(b, h, n, dh, device=DEVICE, dtype=dtype) for _ in range(3))
        flops = 4.0 * b * h * n * n * dh
        with torch.inference_mode():
            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), 5)
            # each backend SDPA can choose from, to tell which one it chose
            backends = {}
            for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
                try:
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    with sdpa_kernel(getattr(SDPBackend, name)):
                        backends[name.lower()] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), 3)
                except Exception as err:  # a backend this torch or GPU lacks
                    backends[name.lower()] = f"unavailable: {str(err).splitlines()[0][:80]}"
        rows.append({"batch": b, "heads": h, "tokens": n, "head_dim": dh, "median_ms": ms,
                     "tflops": flops / (ms / 1e3) / 1e12, "backends_ms": backends})
        print(f"torch sdpa {b}x{h}x{n}x{dh}: {ms:.2f} ms ({flops / (ms / 1e3) / 1e12:.1f} TFLOP/s); by backend: "
              + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in backends.items()),
              flush=True)
        del q, k, v
    return rows


def profile(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """PyTorch's profiler over one forward of the case `args.profile` (PRESET:TOKENS): the CUDA
    kernels by total time, to set beside minisora's block breakdown."""
    preset, tokens = args.profile.split(":")
    case = next((c for c in report["plan"] if c["preset"] == preset and c["tokens"] == int(tokens)), None)
    if case is None:
        print(f"profile: no planned case {args.profile}")
        return
    dtype = DTYPES[args.dtype]
    dit = case["dit"]
    b, (lt, lh, lw) = case["batch"], case["latent"]
    with torch.device(DEVICE):
        model = MinisoraDiT(dit).to(dtype).eval()
    x = torch.randn(b, dit["latent_channels"], lt, lh, lw, device=DEVICE, dtype=dtype)
    t = torch.full((b,), 0.5, device=DEVICE, dtype=dtype)
    context = torch.randn(b, dit["context_len"], dit["context_dim"], device=DEVICE, dtype=dtype)
    pooled = torch.randn(b, dit["context_dim"], device=DEVICE, dtype=dtype)
    keep = torch.ones(b, dit["context_len"], device=DEVICE, dtype=dtype)
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.inference_mode():
        model(x, t, context, pooled, keep)
        sync()
        with torch.profiler.profile(activities=activities) as prof:
            model(x, t, context, pooled, keep)
            sync()
    key = "cuda_time_total" if DEVICE == "cuda" else "cpu_time_total"
    print(f"\ntorch profile of one {args.profile} forward (batch {b}), top kernels by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(report: dict[str, Any], steps: list[dict[str, Any]], attention: list[dict[str, Any]]) -> None:
    mine = {(s["preset"], s["tokens"]): s for s in report.get("steps", [])}
    peak = report.get("matmul_peak_gflops") or 0.0
    print(f"\ndenoising step, batch {steps[0]['batch'] if steps else '-'}, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}; "
          f"bf16 matmul peak {peak / 1e3:.1f} TFLOP/s (minisora's measurement)")
    print(f"{'preset':<6} {'tokens':>6} {'minisora ms':>11} {'TFLOP/s':>8} {'peak':>5} {'mem GiB':>8}"
          f" {'torch ms':>9} {'TFLOP/s':>8} {'mem GiB':>8} {'ratio':>6}")
    for row in steps:
        m = mine.get((row["preset"], row["tokens"]))
        m_ms = m["median_ms"] if m else None
        m_tf = m["achieved_gflops"] / 1e3 if m else None
        m_frac = 100 * m["peak_fraction"] if m else None
        m_mem = m["peak_memory_bytes"] / 2**30 if m and m.get("peak_memory_bytes") is not None else None
        t_ms = row.get("median_ms")
        t_mem = row["peak_memory_bytes"] / 2**30 if "peak_memory_bytes" in row else None
        ratio = m_ms / t_ms if m_ms and t_ms else None
        print(f"{row['preset']:<6} {row['tokens']:>6} {fmt(m_ms, '11.2f')} {fmt(m_tf, '8.1f')}"
              f" {fmt(m_frac, '4.0f')}% {fmt(m_mem, '8.2f')} {fmt(t_ms, '9.2f')}"
              f" {fmt(row.get('tflops'), '8.1f')} {fmt(t_mem, '8.2f')} {fmt(ratio, '6.2f')}")
    print("ratio: minisora / torch (above 1: minisora slower); peak: minisora's TFLOP/s over the matmul peak")
    if attention:
        sdpa = {(t["batch"], t["heads"], t["tokens"], t["head_dim"]): t for t in attention}
        print("\nattention alone (no mask)")
        print(f"{'kernel':<10} {'shape':<20} {'minisora ms':>11} {'TFLOP/s':>8} {'sdpa ms':>8} {'TFLOP/s':>8} {'ratio':>6}")
        for m in report.get("attention", []):
            t = sdpa.get((m["batch"], m["heads"], m["tokens"], m["head_dim"]))
            shape = f"{m['batch']}x{m['heads']}x{m['tokens']}x{m['head_dim']}"
            t_ms = t["median_ms"] if t else None
            print(f"{m.get('kernel', '-'):<10} {shape:<20} {m['median_ms']:>11.2f} {m['tflops']:>8.1f}"
                  f" {fmt(t_ms, '8.2f')} {fmt(t['tflops'] if t else None, '8.1f')}"
                  f" {fmt(m['median_ms'] / t_ms if t_ms else None, '6.2f')}")
        print(f"the steps ran minisora's {report.get('attention_kernel', '?')} kernel")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, required=True, help="minisora bench gpu-check's JSON report")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--budget-s", type=float, default=100.0, help="seconds for the step cases")
    parser.add_argument("--json", type=Path, help="also write the torch figures here")
    parser.add_argument("--profile", metavar="PRESET:TOKENS",
                        help="also run PyTorch's profiler over one forward of this planned case")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run of the script (small cases), not a measurement")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("error: this torch sees no GPU", file=sys.stderr)
        return 2
    try:
        report = json.loads(args.cases.read_text())
    except (OSError, ValueError) as err:
        print(f"error: cannot read {args.cases}: {err}", file=sys.stderr)
        return 2
    start = time.monotonic()
    attention = time_attention(args, report)
    steps = time_steps(args, report, start + args.budget_s)
    print_tables(report, steps, attention)
    if args.profile:
        try:
            profile(args, report)
        except Exception as err:  # the tables are out already; say what failed
            print(f"profile failed: {err}")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "dtype": args.dtype,
                                         "steps": steps, "attention": attention}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
