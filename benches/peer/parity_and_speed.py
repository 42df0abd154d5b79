"""Parity and speed of minisora's DiT forward against a plain PyTorch peer.

For each preset and token count:
1. `minisora bench export` writes a DiT's weights, inputs and its forward's
   output; the PyTorch model (minisora_dit.py) loads the same weights
   (strict) and must reproduce the output: max|a - b| / max|b| below 1e-4
   in f32 (1e-2 in bf16).
2. Rounds alternate between timing the PyTorch forward (inference mode,
   after warm-up) and `minisora bench --json` at the same shape, each on
   `--threads` threads; each side reports the median of its rounds.

Exit status 1 if any case misses parity, 2 on any other failure (torch or
safetensors missing, minisora failing). `run.sh` installs the Python
packages into a virtual environment and runs this.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn


def fail(message: str) -> NoReturn:
    """Ends the run with `message` and status 2: something other than parity went wrong."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    from safetensors.torch import load_file
except ImportError as err:
    fail(
        f"parity_and_speed.py needs torch and safetensors ({err}); "
        "benches/peer/run.sh installs them into benches/peer/.venv, "
        "or: pip install torch safetensors numpy"
    )

from minisora_dit import MinisoraDiT

REPO = Path(__file__).resolve().parents[2]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
# largest relative error a dtype may show against minisora's f32 output:
# f32 differs only in summation order; bf16 keeps 8 bits of mantissa
TOLERANCE = {"f32": 1e-4, "bf16": 1e-2}
INPUTS = ("x", "t", "context", "pooled", "keep")


@dataclass
class CaseResult:
    preset: str
    tokens: int
    batch: int
    rel_error: float
    parity_ok: bool
    minisora_ms: float | None = None
    torch_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        """minisora time over PyTorch time: above 1, minisora is slower."""
        if self.minisora_ms is None or self.torch_ms is None:
            return None
        return self.minisora_ms / self.torch_ms


def median(samples: list[float]) -> float:
    """The median as minisora's `bench::median_p90` takes it (the upper middle of an even count)."""
    ordered = sorted(samples)
    return ordered[math.floor((len(ordered) - 1) * 0.5 + 0.5)]


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_minisora(args: argparse.Namespace, command: list[str]) -> str:
    """Runs the minisora binary with `command` on `--threads` threads; its stdout."""
    # candle's matrix multiply sizes its thread pool from RAYON_NUM_THREADS
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    done = subprocess.run([str(args.minisora), *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"minisora {' '.join(command)} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def export(args: argparse.Namespace, preset: str, tokens: int, out: Path) -> None:
    """Writes config.json, weights.safetensors, inputs.safetensors and output.safetensors to `out`."""
    run_minisora(
        args,
        ["bench", "export", "--preset", preset, "--tokens", str(tokens), "--batch", str(args.batch),
         "--local-mix", "true" if args.local_mix else "false",
         *(["--rope-base", str(args.rope_base)] if args.rope_base is not None else []),
         *(["--rope-pairs", args.rope_pairs] if args.rope_pairs is not None else []), "--out", str(out)],
    )


def load_case(
    folder: Path, device: torch.device, dtype: torch.dtype
) -> tuple[MinisoraDiT, list[torch.Tensor], torch.Tensor]:
    """The exported model, its inputs (on `device` in `dtype`) and minisora's output (CPU f32)."""
    config = json.loads((folder / "config.json").read_text())
    # built without memory, then given the loaded tensors: no throw-away init
    with torch.device("meta"):
        model = MinisoraDiT(config["dit"])
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "output.safetensors")["out"]
    want = (config["batch"], config["dit"]["latent_channels"], *config["latent"])
    if tuple(inputs["x"].shape) != want:
        fail(f"{folder}: x has shape {tuple(inputs['x'].shape)}, config.json says {want}")
    # a self-conditioning DiT's export carries the estimate it was called with
    names = INPUTS + (("estimate",) if "estimate" in inputs else ())
    return model, [inputs[name].to(device=device, dtype=dtype) for name in names], expected


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected|, in f64."""
    actual, expected = actual.detach().to("cpu", torch.float64), expected.to(torch.float64)
    if actual.shape != expected.shape:
        fail(f"output shape {tuple(actual.shape)} differs from minisora's {tuple(expected.shape)}")
    scale = expected.abs().max().item()
    if scale == 0.0:
        # the zero-initialised layers (ada, final_ada, final_linear) left as
        # they start make every output zero, which any model would match
        fail("minisora's exported output is all zeros: the export must randomise every weight")
    return (actual - expected).abs().max().item() / scale


def time_torch(
    args: argparse.Namespace, model: MinisoraDiT, inputs: list[torch.Tensor], device: torch.device
) -> float:
    """Median milliseconds of one PyTorch forward over `--repeat` steps after `--warmup`."""
    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(*inputs)
        synchronize(device)
        for _ in range(args.repeat):
            start = time.perf_counter()
            model(*inputs)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return median(times) * 1e3


def time_minisora(args: argparse.Namespace, preset: str, tokens: int) -> float:
    """Median milliseconds of minisora's forward at the same shape (`minisora bench`, no guidance)."""
    out = run_minisora(
        args,
        ["bench", "--preset", preset, "--tokens", str(tokens), "--batch", str(args.batch),
         "--repeat", str(args.repeat), "--warmup", str(args.warmup),
         "--device", args.device, "--dtype", args.dtype, "--json"],
    )
    # bench times each shape with and without guidance; the unguided case
    # has forward batch --batch, the shape the export ran
    cases = [c for c in json.loads(out)["cases"] if not c["guidance"]]
    if len(cases) != 1:
        fail(f"minisora bench gave {len(cases)} unguided cases for {preset} at {tokens} tokens, not 1")
    return cases[0]["median_ms"]


def run_case(args: argparse.Namespace, preset: str, tokens: int, folder: Path) -> CaseResult:
    """Exports the case into `folder`, checks parity, then (if it holds) times both sides."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    export(args, preset, tokens, folder)
    model, inputs, expected = load_case(folder, device, dtype)
    with torch.inference_mode():
        error = relative_error(model(*inputs), expected)
    result = CaseResult(preset, tokens, args.batch, error, error < TOLERANCE[args.dtype])
    if not result.parity_ok or args.parity_only:
        return result
    torch_ms, minisora_ms = [], []
    for _ in range(args.rounds):
        # alternating, so that a slow phase of the machine touches both sides
        torch_ms.append(time_torch(args, model, inputs, device))
        minisora_ms.append(time_minisora(args, preset, tokens))
    result.torch_ms, result.minisora_ms = median(torch_ms), median(minisora_ms)
    return result


def print_table(args: argparse.Namespace, results: list[CaseResult]) -> None:
    print(f"device {args.device}, dtype {args.dtype}, {args.threads} threads, torch {torch.__version__}")
    header = ("preset", "tokens", "batch", "rel err", "minisora ms", "torch ms", "ratio")
    print("{:<8} {:>6} {:>5} {:>9} {:>11} {:>9} {:>6}".format(*header))
    for r in results:
        minisora_ms, torch_ms, ratio = (
            "-" if v is None else f"{v:.2f}" for v in (r.minisora_ms, r.torch_ms, r.ratio)
        )
        flag = "" if r.parity_ok else f"  FAIL (>= {TOLERANCE[args.dtype]:g})"
        print(
            f"{r.preset:<8} {r.tokens:>6} {r.batch:>5} {r.rel_error:>9.2e} "
            f"{minisora_ms:>11} {torch_ms:>9} {ratio:>6}{flag}"
        )
    print("rel err: max|torch - minisora| / max|minisora| on the exported weights and inputs")
    print("ms: median forward latency over rounds; ratio: minisora / torch (above 1: minisora slower)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minisora", type=Path, default=REPO / "target" / "release" / "minisora",
                        help="the minisora binary (default: target/release/minisora)")
    parser.add_argument(
        "--preset", action="append", help="preset (default, S, B, L, XL, tiny); repeatable [default]"
    )
    parser.add_argument("--tokens", type=int, action="append", help="video tokens per clip; repeatable [128]")
    parser.add_argument("--batch", type=int, default=1, help="clips per forward")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    parser.add_argument("--repeat", type=int, default=10, help="timed forwards per round, each side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards before each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per case")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                        help="dtype of the torch model and of minisora bench (parity is always "
                        "against minisora's f32 export)")
    parser.add_argument("--parity-only", action="store_true", help="check parity, skip timing")
    parser.add_argument("--local-mix", action="store_true",
                        help="export the presets with the DiT's local mix (DitConfig.local_mix); "
                        "needs --parity-only, since minisora bench times the presets as they are")
    parser.add_argument("--rope-base", type=float,
                        help="export the presets with this RoPE base (DitConfig.rope_base); needs --parity-only")
    parser.add_argument("--rope-pairs", metavar="T,H,W",
                        help="export the presets with these RoPE pairs per axis (DitConfig.rope_pairs; they must "
                        "add up to half of every preset's head size); needs --parity-only")
    parser.add_argument("--work-dir", type=Path, help="keep the exports here instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    args.preset = args.preset or ["default"]
    args.tokens = args.tokens or [128]
    if min(args.batch, args.threads, args.repeat, args.rounds) < 1 or args.warmup < 0:
        parser.error("--batch, --threads, --repeat and --rounds must be at least 1, --warmup at least 0")
    if args.local_mix and not args.parity_only:
        parser.error("--local-mix checks parity only: add --parity-only")
    if args.rope_base is not None and not args.parity_only:
        parser.error("--rope-base checks parity only: add --parity-only")
    if args.rope_pairs is not None and not args.parity_only:
        parser.error("--rope-pairs checks parity only: add --parity-only")
    if not args.minisora.is_file():
        parser.error(f"no minisora binary at {args.minisora} (cargo build --release, or pass --minisora)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but this torch sees no GPU")
    return args


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for preset in args.preset:
        for tokens in args.tokens:
            name = f"{preset}-{tokens}-b{args.batch}"
            if args.work_dir:
                folder = args.work_dir / name
                folder.mkdir(parents=True, exist_ok=True)
                results.append(run_case(args, preset, tokens, folder))
                continue
            # one folder per case, gone after it: an XL export is ~3 GB
            with tempfile.TemporaryDirectory(prefix=f"minisora-peer-{name}-") as tmp:
                results.append(run_case(args, preset, tokens, Path(tmp)))
    if args.json:
        report: dict[str, Any] = {
            "device": args.device,
            "dtype": args.dtype,
            "threads": args.threads,
            "torch": torch.__version__,
            "tolerance": TOLERANCE[args.dtype],
            "cases": [{**asdict(r), "ratio": r.ratio} for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        print_table(args, results)
    return 0 if all(r.parity_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
