"""minisora's diffusion transformer (src/dit/model.rs) in plain PyTorch.

A peer for parity and speed checks: the same architecture op for op, with
parameter names equal to the keys candle's VarBuilder gives the Rust model,
so a safetensors file that minisora writes loads with `strict=True`.

The block (DiT, Peebles and Xie 2023, adaLN-Zero; cross-attention as in
PixArt-alpha; 3D RoPE as in Lumina-T2X / Open-Sora):

    c = t_mlp2(silu(t_mlp1(sinusoidal(1000 t)))) + pooled_proj(pooled)    (B, 1, D)
    x = x_embed(patches) + pos_proj(sincos(t, h, w))                       pos_proj if config's pos_embed
        [+ estimate_embed(patches of the previous clean estimate)]          if self_cond and one is given
    shift1, scale1, gate1, shift2, scale2, gate2 = ada(silu(c))
    x += gate1 * proj(SelfAttn(modulate(LN(x), shift1, scale1)))          RoPE on q, k
    x += cross_proj(CrossAttn(norm_cross(x), kv(context_proj(context))))  no gate
    x += gate2 * mlp(modulate(LN(x), shift2, scale2))                    h + mix(h) first if local_mix
    out = final_linear(modulate(LN(x), final_ada(silu(c))))

Attention is `F.scaled_dot_product_attention`, the idiomatic fast path; the
fixed tables (timestep frequencies, RoPE angles) are computed with Python's
`math` (the C library, as Rust's f64 `exp`, `powf`, `cos`, `sin` are) in
float64 and rounded to float32 once, as minisora does, then cached per
shape and device.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# LayerNorm epsilon of every norm in the DiT (model.rs, nn.rs)
EPS = 1e-6
# DiT's timestep embedder: times in [0, 1] scaled to 0..1000 so the
# sinusoid bands spread, and the transformer's base period
TIME_SCALE = 1000.0
MAX_PERIOD = 10_000.0
# additive bias on padded caption tokens: (keep - 1) * 1e9
MASK_SCALE = 1e9

Grid = tuple[int, int, int]


def modulate_norm(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """`layer_norm(x) * (1 + scale) + shift`, the LayerNorm without affine.

    # Shapes
    `x`: `(B, N, D)`; `shift`, `scale`: `(B, 1, D)` -> `(B, N, D)`
    """
    return F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale) + shift


@functools.lru_cache(maxsize=None)
def timestep_freqs(half: int, device: torch.device) -> Tensor:
    """`exp(-ln(max_period) * i / half)` for `i < half`, f64 rounded to f32 (nn.rs `sinusoidal`)."""
    freqs = [math.exp(-math.log(MAX_PERIOD) * i / half) for i in range(half)]
    return torch.tensor(freqs, dtype=torch.float32, device=device)


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of scalars, cosines first: `(B,) -> (B, 2 * (dim // 2))` f32."""
    args = t.float()[:, None] * timestep_freqs(dim // 2, t.device)[None]  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=1)


# every field of dit/config.rs `DitConfig`
CONFIG_KEYS = frozenset({
    "latent_channels", "patch", "hidden", "depth", "heads", "mlp_ratio", "context_dim", "context_len",
    "freq_dim", "pos_embed", "local_mix", "rope_base", "rope_pairs", "self_cond",
})

# RoFormer's RoPE base (nn.rs `ROPE_BASE`), what configs without `rope_base` mean
ROPE_BASE = 10_000.0


def rope_thirds(head_dim: int) -> tuple[int, int, int]:
    """The usual split of a head's rotation pairs (nn.rs `rope_thirds`): a third each to t and h, the rest to w."""
    pairs = head_dim // 2
    return (pairs // 3, pairs // 3, pairs - 2 * (pairs // 3))


@functools.lru_cache(maxsize=None)
def rope_3d(
    grid: Grid,
    head_dim: int,
    device: torch.device,
    dtype: torch.dtype,
    base: float = ROPE_BASE,
    per_axis: tuple[int, int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Cos and sin tables `(N, head_dim / 2)` of 3D RoPE for tokens ordered t, h, w (nn.rs `rope_3d`).

    The rotation pairs are split between the axes, `per_axis` pairs each
    (`DitConfig.rope_pairs`; by default `rope_thirds`); pair `i` of an axis
    with `n` pairs turns by `position * base^(-2i / 2n)`. An angle depends
    only on the axis, the position along it and the pair, so each axis gets
    a small table (computed like the Rust: f64, then f32) gathered per token.
    """
    per_axis = per_axis if per_axis is not None else rope_thirds(head_dim)
    if sum(per_axis) != head_dim // 2:
        raise ValueError(f"RoPE pairs {per_axis} must add up to {head_dim // 2}")
    # (nt, nh, nw) index grids in token order: t slowest, w fastest
    index = [i.flatten() for i in torch.meshgrid(*(torch.arange(s) for s in grid), indexing="ij")]
    cos_parts, sin_parts = [], []
    for size, n, at in zip(grid, per_axis, index):
        freqs = [base ** (-float(2 * i) / float(2 * n)) for i in range(n)]
        angles = [[float(p) * f for f in freqs] for p in range(size)]  # (size, n)
        for parts, fn in ((cos_parts, math.cos), (sin_parts, math.sin)):
            table = torch.tensor([[fn(a) for a in row] for row in angles], dtype=torch.float32)  # (size, n)
            parts.append(table[at])  # (N, n)
    cos = torch.cat(cos_parts, dim=1).to(device=device, dtype=dtype)  # (N, pairs)
    sin = torch.cat(sin_parts, dim=1).to(device=device, dtype=dtype)
    return cos, sin


# frequencies per axis of the absolute position features (nn.rs `POS_FREQS`)
POS_FREQS = 16


@functools.lru_cache(maxsize=None)
def sincos_3d(grid: Grid, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sin-cos features `(N, 6 * POS_FREQS)` of each token's `(t, h, w)` (nn.rs `sincos_3d`).

    Per axis, `cos(p f_i)` then `sin(p f_i)` for `f_i = 10000^(-i / POS_FREQS)`;
    computed in f64 and rounded to f32 once, as the Rust does.
    """
    freqs = [10_000.0 ** (-float(i) / float(POS_FREQS)) for i in range(POS_FREQS)]
    rows = []
    for t in range(grid[0]):
        for h in range(grid[1]):
            for w in range(grid[2]):
                row: list[float] = []
                for p in (t, h, w):
                    row += [math.cos(float(p) * f) for f in freqs]
                    row += [math.sin(float(p) * f) for f in freqs]
                rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).to(device=device, dtype=dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates the interleaved pairs `(x[2i], x[2i+1])` (candle's `rope_i` layout).

    # Shapes
    `x`: `(B, H, N, Dh)`; `cos`, `sin`: `(N, Dh / 2)` -> `(B, H, N, Dh)`
    """
    a, b = x[..., 0::2], x[..., 1::2]  # (B, H, N, Dh / 2) each
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """`(B, N, H * Dh) -> (B, H, N, Dh)`: head-major channels, as nn.rs."""
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """`(B, H, N, Dh) -> (B, N, H * Dh)`."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def patchify(x: Tensor, patch: Grid) -> tuple[Tensor, Grid]:
    """Cuts `(B, C, T, H, W)` into tokens `(B, N, C * pt * ph * pw)` (patch/mod.rs).

    Tokens are ordered t, then h, then w; within a token values are ordered
    channel, then time, then row, then column. Sizes the patch does not
    divide are refused, as minisora's `Remainder::Reject`.
    """
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {(t, h, w)} is not divisible by the patch size {patch}")
    nt, nh, nw = t // pt, h // ph, w // pw
    tokens = (
        x.reshape(b, c, nt, pt, nh, ph, nw, pw)
        .permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, nt, nh, nw, C, pt, ph, pw)
        .reshape(b, nt * nh * nw, c * pt * ph * pw)
    )
    return tokens, (nt, nh, nw)


def unpatchify(tokens: Tensor, grid: Grid, patch: Grid, channels: int) -> Tensor:
    """The inverse of `patchify`: `(B, N, C * pt * ph * pw) -> (B, C, T, H, W)`."""
    b = tokens.shape[0]
    (nt, nh, nw), (pt, ph, pw) = grid, patch
    return (
        tokens.reshape(b, nt, nh, nw, channels, pt, ph, pw)
        .permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, nt, pt, nh, ph, nw, pw)
        .reshape(b, channels, nt * pt, nh * ph, nw * pw)
    )


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (as in DiT)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class LocalMix(nn.Module):
    """A 3x3 depthwise convolution over each frame's `(h, w)` plane of the token
    grid, zero padding, no bias; `weight` `(9, D)`, slot `ky * 3 + kx`."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(9, d))

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        """`(B, N, D)`, tokens in raster order of `grid` -> `(B, N, D)`."""
        b, n, d = x.shape
        t, h, w = grid
        planes = x.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # (B*T, D, H, W)
        kernel = self.weight.t().reshape(d, 1, 3, 3)
        out = F.conv2d(planes, kernel, padding=1, groups=d)
        return out.permute(0, 2, 3, 1).reshape(b, n, d)


class Block(nn.Module):
    """One DiT block: gated self-attention with RoPE, ungated cross-attention, gated MLP."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, local_mix: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.ada = nn.Linear(d, 6 * d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm_cross = nn.LayerNorm(d, eps=EPS)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.cross_proj = nn.Linear(d, d)
        self.mlp = Mlp(d, mlp_ratio * d)
        self.mix = LocalMix(d) if local_mix else None

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        context: Tensor,
        context_bias: Tensor,
        cos: Tensor,
        sin: Tensor,
        grid: Grid,
    ) -> Tensor:
        """
        # Shapes
        - `x`: `(B, N, D)`; `c`: `(B, 1, D)`; `context`: `(B, L, D)` (projected)
        - `context_bias`: `(B, 1, 1, L)` additive; `cos`, `sin`: `(N, Dh / 2)`
        - `grid`: the tokens' `(t, h, w)`, for the local mix
        - returns `(B, N, D)`
        """
        d = x.shape[-1]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # (B, 1, D) each

        # self-attention over the spacetime tokens, positions by 3D RoPE
        h = modulate_norm(x, shift1, scale1)
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(h).split(d, dim=-1))  # (B, H, N, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v)  # scale 1 / sqrt(Dh)
        x = x + self.proj(merge_heads(a)) * gate1

        # cross-attention to the caption
        q = split_heads(self.q(self.norm_cross(x)), self.heads)
        k, v = (split_heads(part, self.heads) for part in self.kv(context).split(d, dim=-1))  # (B, H, L, Dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=context_bias)
        x = x + self.cross_proj(merge_heads(a))

        # MLP, its input first mixed over each token's neighbours
        h = modulate_norm(x, shift2, scale2)
        if self.mix is not None:
            h = h + self.mix(h, grid)
        return x + self.mlp(h) * gate2


class MinisoraDiT(nn.Module):
    """minisora's `Dit`, built from its `DitConfig` as serde writes it (the `"dit"` object of config.json)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        # a key this peer does not know is a setting it would silently drop
        # (dit/config.rs refuses such a config too)
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown DiT config field(s) {unknown}: this peer is older than the config")
        d, heads = config["hidden"], config["heads"]
        if d % heads != 0 or (d // heads) % 2 != 0:
            raise ValueError(f"width {d} must split into {heads} heads of an even size")
        p = config["patch"]
        self.patch: Grid = (p["t"], p["h"], p["w"])
        self.channels: int = config["latent_channels"]
        self.head_dim = d // heads
        self.rope_base: float = config.get("rope_base", ROPE_BASE)
        pairs = config.get("rope_pairs")  # absent: a third each
        self.rope_pairs: tuple[int, int, int] | None = tuple(pairs) if pairs is not None else None
        self.freq_dim: int = config["freq_dim"]
        token_dim = self.channels * math.prod(self.patch)
        e = config["context_dim"]

        self.x_embed = nn.Linear(token_dim, d)
        # self-conditioning: the previous clean estimate's patches, no bias
        self.estimate_embed = nn.Linear(token_dim, d, bias=False) if config.get("self_cond", False) else None
        # absolute positions beside RoPE (configs from before it lack the key)
        self.pos_proj = nn.Linear(6 * POS_FREQS, d, bias=False) if config.get("pos_embed", False) else None
        self.t_mlp1 = nn.Linear(self.freq_dim, d)
        self.t_mlp2 = nn.Linear(d, d)
        self.context_proj = nn.Linear(e, d)
        self.pooled_proj = nn.Linear(e, d)
        # configs from before the local mix lack the key
        mix = config.get("local_mix", False)
        self.blocks = nn.ModuleList(Block(d, heads, config["mlp_ratio"], mix) for _ in range(config["depth"]))
        self.final_ada = nn.Linear(d, 2 * d)
        self.final_linear = nn.Linear(d, token_dim)

    def condition(self, t: Tensor, pooled: Tensor) -> Tensor:
        """`c = t_embedder(t) + pooled_proj(pooled)`.

        # Shapes
        `t`: `(B,)` in `[0, 1]`; `pooled`: `(B, E)` -> `(B, D)`
        """
        freqs = sinusoidal(t * TIME_SCALE, self.freq_dim).to(self.t_mlp1.weight.dtype)  # (B, F)
        return self.t_mlp2(F.silu(self.t_mlp1(freqs))) + self.pooled_proj(pooled)

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, pooled: Tensor, keep: Tensor, estimate: Tensor | None = None
    ) -> Tensor:
        """
        # Shapes
        - `x`: latent `(B, C, T', H', W')`; `t`: `(B,)` in `[0, 1]`
        - `context`: `(B, L, E)`; `pooled`: `(B, E)`; `keep`: `(B, L)`, 1 for words, 0 for padding
        - `estimate`: the previous clean estimate, like `x` (self_cond only; none reads as zeros)
        - returns `(B, C, T', H', W')`
        """
        b, c = x.shape[:2]
        if c != self.channels:
            raise ValueError(f"the DiT takes {self.channels} latent channels, got {c}")
        tokens, grid = patchify(x, self.patch)  # (B, N, P)
        cond = self.condition(t, pooled).unsqueeze(1)  # (B, 1, D)
        context_bias = ((keep - 1.0) * MASK_SCALE).reshape(b, 1, 1, keep.shape[1])  # (B, 1, 1, L)
        cos, sin = rope_3d(grid, self.head_dim, x.device, x.dtype, self.rope_base, self.rope_pairs)  # (N, Dh / 2)
        context = self.context_proj(context)  # (B, L, D)
        h = self.x_embed(tokens)  # (B, N, D)
        if estimate is not None:
            if self.estimate_embed is None:
                raise ValueError("this DiT was not trained with self-conditioning (self_cond)")
            h = h + self.estimate_embed(patchify(estimate, self.patch)[0])
        if self.pos_proj is not None:
            h = h + self.pos_proj(sincos_3d(grid, x.device, x.dtype))  # + (N, D)
        for block in self.blocks:
            h = block(h, cond, context, context_bias, cos, sin, grid)
        shift, scale = self.final_ada(F.silu(cond)).chunk(2, dim=-1)  # (B, 1, D) each
        out = self.final_linear(modulate_norm(h, shift, scale))  # (B, N, P)
        return unpatchify(out, grid, self.patch, c)
