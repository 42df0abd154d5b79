//! Transformer layers shared by the text encoder and the DiT, built only
//! from ops that carry gradients (candle-nn's fast `layer_norm`,
//! `softmax_last_dim` and `rope_i` cut them: see `shared/STACK_NOTES.md`);
//! LayerNorm, softmax and GELU are minisora's fused ops (`crate::ops`).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::ops::{gelu, norm_modulate, softmax_last};
use crate::vae::blocks::apply_last;
use crate::Result;

/// LayerNorm over the last axis without learned scale or shift (DiT's
/// blocks take theirs from adaLN).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// LayerNorm with a learned scale and shift.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    /// `x`: `(B, N, D)` (the fused path) or any rank.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Ok((b, _, d)) = x.dims3() {
            // the gain as adaLN's (1 + scale), the bias as its shift
            let shift = self.bias.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
            let scale = (&self.weight - 1.0)?
                .reshape((1, 1, d))?
                .broadcast_as((b, 1, d))?;
            return norm_modulate(x, &shift, &scale, 1e-6);
        }
        Ok(layer_norm(x, 1e-6)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// Scaled dot-product attention over heads.
///
/// On a GPU (`cuda` build), unmasked attention is minisora's fused kernel
/// ([`crate::ops::flash_attention`]): no `N x M` scores, which at 32k tokens
/// would not fit. On the CPU it stays candle's matrix multiplies and the
/// fused softmax: faster there than a hand-written loop.
///
/// # Shapes
/// - `q`: `(B, H, N, Dh)`, `k`, `v`: `(B, H, M, Dh)`
/// - `bias`: additive, broadcastable to `(B, H, N, M)` (0 or `-inf`)
/// - returns `(B, H, N, Dh)`
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    // fused: on a GPU always; on the CPU for inference (no input records a
    // backward graph), where its per-head GEMMs run in parallel over heads
    // and query blocks. Training keeps the generic ops below, whose
    // backward candle derives.
    let inference = !(q.track_op() || k.track_op() || v.track_op());
    let fused =
        (q.device().is_cuda() && crate::ops::cuda::COMPILED) || q.device().is_cpu() && inference;
    if bias.is_none() && fused {
        return crate::ops::flash_attention(q, k, v, None);
    }
    let dh = q.dim(D::Minus1)?;
    // the scale on q (N x Dh values) rather than on the scores (N x M);
    // k^T copied to contiguous: the matmul on a strided k^T measured 1.6x
    // slower for the default preset's 12 heads of 64 tokens
    let q = (q * (1.0 / (dh as f64).sqrt()))?;
    let scores = q.matmul(&k.t()?.contiguous()?)?; // (B, H, N, M)
    let scores = match bias {
        Some(b) => scores.broadcast_add(b)?,
        None => scores,
    };
    let weights = softmax_last(&scores)?;
    Ok(weights.matmul(&v.contiguous()?)?)
}

/// `(B, N, H * Dh) -> (B, H, N, Dh)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    Ok(x.reshape((b, n, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `(B, H, N, Dh) -> (B, N, H * Dh)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, n, h * dh))?)
}

/// Two-layer MLP with tanh-approximated GELU (as in DiT).
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(d: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(d, hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(hidden, d, vb.pp("fc2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = match self.fc1.bias() {
            // bias and GELU fused into fc1's GEMM where that is turned on
            Some(b) if crate::ops::fused_linear() && x.device().is_cuda() => {
                let d = x.dim(D::Minus1)?;
                let rows = x.elem_count() / d;
                let h = crate::ops::linear(&x.reshape((rows, d))?, self.fc1.weight(), b, true)?;
                let mut dims = x.dims().to_vec();
                dims.pop();
                dims.push(h.dim(1)?);
                h.reshape(dims)?
            }
            _ => gelu(&apply_last(&self.fc1, x)?)?,
        };
        apply_last(&self.fc2, &hidden)
    }
}

/// Additive attention bias that hides padding keys: `keep` `(B, L)` (1 for
/// a word, 0 for padding, any float dtype) -> `(B, 1, 1, L)` in `dtype`, 0 or
/// `-1e9`. Computed in f32: in f16, `1e9` is infinite and `0 x inf` a NaN,
/// so f16 gets `-65504` (its largest finite magnitude) instead, which keeps
/// a row that sees nothing finite as `-1e9` does in f32 and bf16.
pub fn key_padding_bias(keep: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = keep.dims2()?;
    let big = if dtype == DType::F16 { 65504.0 } else { 1e9 };
    Ok(((keep.to_dtype(DType::F32)? - 1.0)? * big)?
        .to_dtype(dtype)?
        .reshape((b, 1, 1, l))?)
}

/// Sinusoidal features of scalars (timesteps): `(B,) -> (B, dim)`, as in
/// "Attention is all you need" and DiT's timestep embedder. Computed in f32
/// and returned in `t`'s dtype.
pub fn sinusoidal(t: &Tensor, dim: usize, max_period: f64) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(max_period.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?; // (B, half)
    Ok(Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(t.dtype())?)
}

/// RoFormer's RoPE base, 10000: the presets' [`crate::dit::DitConfig::rope_base`],
/// and what configs written without one mean.
pub const ROPE_BASE: f64 = 10_000.0;

/// How [`rope_3d`] splits a head of `head_dim` values by default: its
/// `head_dim / 2` rotation pairs go a third each to t and h, the rest to w
/// (head size 32: 5, 5 and 6 pairs).
pub fn rope_thirds(head_dim: usize) -> [usize; 3] {
    let pairs = head_dim / 2;
    [pairs / 3, pairs / 3, pairs - 2 * (pairs / 3)]
}

/// Cos and sin tables of 3D rotary position embedding (RoPE, Su et al. 2021,
/// one frequency band per axis as in Lumina-T2X / Open-Sora): the head
/// dimension's rotation pairs are split between t, h and w (`per_axis`
/// pairs each, summing to `Dh / 2`; [`rope_thirds`] is the usual split), and
/// each pair turns by its axis position times its frequency. An axis given
/// no pairs is not encoded.
///
/// Pair `i` of an axis with `n` pairs turns `base^(-i / n)` radians per
/// position ([`ROPE_BASE`] is RoFormer's base).
///
/// Returns `(cos, sin)`, each `(N, P)` for `P` the sum of `per_axis` (a
/// head's `Dh / 2`), for integer positions `[t, h, w]`.
pub fn rope_3d(
    positions: &[[usize; 3]],
    per_axis: [usize; 3],
    base: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let Some(pairs) = per_axis.iter().try_fold(0usize, |a, &n| a.checked_add(n)) else {
        crate::invalid!("RoPE pairs per axis {per_axis:?} overflow");
    };
    let mut cos = Vec::with_capacity(positions.len() * pairs);
    let mut sin = Vec::with_capacity(positions.len() * pairs);
    for pos in positions {
        for (axis, &n) in per_axis.iter().enumerate() {
            for i in 0..n {
                let freq = base.powf(-((2 * i) as f64) / (2 * n) as f64);
                let angle = pos[axis] as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    let n = positions.len();
    Ok((
        Tensor::from_vec(cos, (n, pairs), device)?,
        Tensor::from_vec(sin, (n, pairs), device)?,
    ))
}

/// Frequencies per axis of [`sincos_3d`].
pub const POS_FREQS: usize = 16;

/// Fixed sin-cos features of 3D positions (the factorised embedding of
/// Latte and Open-Sora, before any learned projection): per axis t, h, w,
/// `cos(p f_i)` then `sin(p f_i)` for `f_i = 10000^(-i / POS_FREQS)`,
/// `i < POS_FREQS`. Computed in f64, rounded to f32 once.
///
/// Returns `(N, 6 * POS_FREQS)` for integer positions `[t, h, w]`.
pub fn sincos_3d(positions: &[[usize; 3]], device: &Device) -> Result<Tensor> {
    let freqs: Vec<f64> = (0..POS_FREQS)
        .map(|i| 10_000f64.powf(-(i as f64) / POS_FREQS as f64))
        .collect();
    let mut out = Vec::with_capacity(positions.len() * 6 * POS_FREQS);
    for pos in positions {
        for &p in pos {
            out.extend(freqs.iter().map(|f| (p as f64 * f).cos() as f32));
            out.extend(freqs.iter().map(|f| (p as f64 * f).sin() as f32));
        }
    }
    Ok(Tensor::from_vec(
        out,
        (positions.len(), 6 * POS_FREQS),
        device,
    )?)
}

/// Rotates interleaved pairs of `x` `(B, H, N, Dh)` by tables `(N, Dh / 2)`,
/// with gradients (candle-nn's fused `rope_i` has none; this is minisora's
/// fused op).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::ops::rope(x, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_pairs_turn_by_position_times_powers_of_the_base() {
        // head size 32 (the default model's): 16 pairs, 5 for t, 5 for h and
        // the remaining 6 for w; pair i of an axis with n pairs turns
        // p * base^(-i / n) at axis position p
        let positions = [[0, 0, 0], [1, 2, 3]];
        for base in [ROPE_BASE, 100.0] {
            let (cos, sin) = rope_3d(&positions, rope_thirds(32), base, &Device::Cpu).unwrap();
            let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
            assert_eq!(cos[1].len(), 16);
            assert!(cos[0].iter().all(|&c| c == 1.0) && sin[0].iter().all(|&s| s == 0.0));
            let mut j = 0;
            for (p, n) in [(1.0f64, 5), (2.0, 5), (3.0, 6)] {
                for i in 0..n {
                    let angle = p * base.powf(-(i as f64) / n as f64);
                    assert!((cos[1][j] as f64 - angle.cos()).abs() < 1e-6, "{base} {j}");
                    assert!((sin[1][j] as f64 - angle.sin()).abs() < 1e-6, "{base} {j}");
                    j += 1;
                }
            }
        }
    }

    #[test]
    fn rope_pairs_split_as_given_and_an_axis_without_pairs_is_not_encoded() {
        // the default model's head of 32 (16 pairs) split otherwise: pair i
        // of an axis with n pairs turns p * base^(-i / n), axes in t, h, w
        // order; uneven splits catch the counts of two axes swapped
        assert_eq!(rope_thirds(32), [5, 5, 6]);
        let at = [3, 2, 5];
        for split in [[0, 8, 8], [1, 7, 8], [2, 9, 5]] {
            let (cos, sin) = rope_3d(&[at], split, 100.0, &Device::Cpu).unwrap();
            let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
            assert_eq!(cos[0].len(), 16);
            let mut j = 0;
            for (p, n) in at.iter().zip(split) {
                for i in 0..n {
                    let angle = *p as f64 * 100f64.powf(-(i as f64) / n as f64);
                    assert!(
                        (cos[0][j] as f64 - angle.cos()).abs() < 1e-6,
                        "{split:?} {j}"
                    );
                    assert!(
                        (sin[0][j] as f64 - angle.sin()).abs() < 1e-6,
                        "{split:?} {j}"
                    );
                    j += 1;
                }
            }
        }
        // with no t pairs, a token's time position turns nothing
        let positions = [[0, 2, 3], [7, 2, 3]];
        let (cos, sin) = rope_3d(&positions, [0, 8, 8], 100.0, &Device::Cpu).unwrap();
        let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
        assert_eq!((&cos[0], &sin[0]), (&cos[1], &sin[1]));
        assert!(rope_3d(&positions, [usize::MAX, 1, 0], 100.0, &Device::Cpu).is_err());
    }
}
