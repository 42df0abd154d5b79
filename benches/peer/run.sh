#!/usr/bin/env bash
# Parity and speed of minisora's DiT against the PyTorch peer in this folder.
# Uses a Python that already has torch, safetensors and numpy; otherwise
# makes benches/peer/.venv and installs them there (on a CPU-only machine
# the CUDA wheel is the one pip finds: about 3 GB, and it runs on CPU).
# Arguments go to parity_and_speed.py (--help lists them); the minisora
# binary defaults to target/release/minisora.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
need='import torch, safetensors, numpy'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$need" 2>/dev/null; then
    python="$venv/bin/python"
elif python3 -c "$need" 2>/dev/null; then
    python=python3
else
    echo "installing torch, safetensors and numpy into $venv (about 3 GB)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install torch safetensors numpy >&2
    python="$venv/bin/python"
fi

exec "$python" "$here/parity_and_speed.py" "$@"
