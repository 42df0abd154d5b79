//! Fused transformer ops with hand-written backward passes: LayerNorm with
//! adaLN modulation, softmax over the last axis, tanh-GELU, SiLU, and
//! rotary position embedding; the element-wise loops are `vmath`'s
//! (vectorised, and cut into blocks for candle's CPU thread pool).
//!
//! Built from candle's generic ops, each of these is a chain of element-wise
//! passes over the whole tensor (LayerNorm + modulation: 9 forward, about 20
//! backward; GELU's backward alone: 12), each allocating its output. Here
//! each is one pass forward and one backward. On the CPU these run in f32
//! only; other CPU dtypes take the reference path, which tests compare these
//! with. With the `cuda` feature, LayerNorm + modulation and RoPE also run
//! as kernels of `kernels/` on a GPU (f32, bf16, f16; their backward passes
//! there are generic ops). Set `MINISORA_REFERENCE_OPS` in the environment
//! to take the reference path everywhere (to compare whole runs).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use super::gather::contiguous_f32;
use super::vmath;
use crate::{invalid, Result};

/// Whether the CPU implementations apply: every input on the CPU in f32.
fn fused_ok(ts: &[&Tensor]) -> bool {
    !super::reference_only()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether inputs are 16-bit floats on the CPU. Reductions (LayerNorm's
/// mean and variance, softmax's sum) then run in f32 and round once, as
/// the GPU kernels do, rather than summing in bf16.
fn cpu_half(ts: &[&Tensor]) -> bool {
    !super::reference_only()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && matches!(t.dtype(), DType::BF16 | DType::F16))
}

fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

// ---------------------------------------------------------------------------
// LayerNorm (no affine) followed by adaLN modulation

/// `layer_norm(x) * (1 + scale) + shift` over the last axis, the LayerNorm
/// without learned parameters (DiT's blocks take theirs from adaLN).
///
/// # Shapes
/// `x`: `(B, N, D)`; `shift`, `scale`: `(B, S, D)` with `S` 1 (one per clip)
/// or `N` (one per token) -> `(B, N, D)`
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let (sb, s, sd) = shift.dims3()?;
    if (sb, sd) != (b, d) || !(s == 1 || s == n) || shift.dims() != scale.dims() {
        invalid!(
            "norm_modulate: x {:?} with shift {:?} and scale {:?}: want (B, 1 or N, D)",
            x.dims(),
            shift.dims(),
            scale.dims()
        );
    }
    if cpu_half(&[x, shift, scale]) {
        let y = norm_modulate(&f32(x)?, &f32(shift)?, &f32(scale)?, eps)?;
        return Ok(y.to_dtype(x.dtype())?);
    }
    if !fused_ok(&[x, shift, scale]) && !super::cuda::kernels_for(&[x, shift, scale]) {
        return norm_modulate_reference(x, shift, scale, eps);
    }
    Ok(x.contiguous()?.apply_op3(
        &shift.contiguous()?,
        &scale.contiguous()?,
        NormModulate { eps: eps as f32 },
    )?)
}

/// The same from candle's generic ops.
pub fn norm_modulate_reference(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)?)
}

struct NormModulate {
    eps: f32,
}

/// Mean and `1 / sqrt(var + eps)` of a row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `(B, N, D)` and the modulation rows `S`: calls `f(row, modulation_row)`
/// with flat row indices.
fn for_rows(b: usize, n: usize, s: usize, mut f: impl FnMut(usize, usize)) {
    for bi in 0..b {
        for ni in 0..n {
            f(bi * n + ni, bi * s + if s == 1 { 0 } else { ni });
        }
    }
}

impl CustomOp3 for NormModulate {
    fn name(&self) -> &'static str {
        "norm-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let shift = contiguous_f32(s2, l2, self.name())?;
        let scale = contiguous_f32(s3, l3, self.name())?;
        let (_, n, d) = l1.shape().dims3()?;
        let s = l2.shape().dims3()?.1;
        let mut out = vec![0f32; x.len()];
        if d == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        vmath::par_blocks(&mut out, d, |offset, block| {
            for (k, o) in block.chunks_exact_mut(d).enumerate() {
                let r = offset / d + k;
                let m = (r / n) * s + if s == 1 { 0 } else { r % n };
                let row = &x[r * d..(r + 1) * d];
                let (mean, rstd) = row_stats(row, self.eps);
                let (sh, sc) = (&shift[m * d..(m + 1) * d], &scale[m * d..(m + 1) * d]);
                for (j, oj) in o.iter_mut().enumerate() {
                    *oj = (row[j] - mean) * rstd * (1.0 + sc[j]) + sh[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::norm_modulate_fwd(self.eps, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, n, _) = x.dims3()?;
        let s = shift.dim(1)?;
        if !x.device().is_cpu() {
            let (dx, dshift, dscale) = norm_modulate_backward_generic(x, scale, grad, s, self.eps)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            return Ok((Some(dx), Some(dshift), Some(dscale)));
        }
        // one pass writes (B, N + 2S, D): dx, then dshift, then dscale
        let packed = x.apply_op3_no_bwd(
            scale,
            &grad.contiguous()?,
            &NormModulateBackward { eps: self.eps },
        )?;
        Ok((
            Some(packed.narrow(1, 0, n)?),
            Some(packed.narrow(1, n, s)?),
            Some(packed.narrow(1, n + s, s)?),
        ))
    }
}

/// The backward pass of [`norm_modulate`] from generic ops, in f32, for
/// devices without the one-pass CPU kernel: `(dx, dshift, dscale)`.
fn norm_modulate_backward_generic(
    x: &Tensor,
    scale: &Tensor,
    grad: &Tensor,
    s: usize,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dtype = x.dtype();
    let f = |t: &Tensor| t.detach().to_dtype(DType::F32);
    let (x, scale, g) = (f(x)?, f(scale)?, f(grad)?);
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
        .sqrt()?
        .recip()?; // (B, N, 1)
    let xhat = centred.broadcast_mul(&rstd)?;
    let gs = g.broadcast_mul(&(scale + 1.0)?)?; // dL/dxhat
    let mean_g = gs.mean_keepdim(D::Minus1)?;
    let mean_gx = (&gs * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = gs
        .broadcast_sub(&mean_g)?
        .sub(&xhat.broadcast_mul(&mean_gx)?)?
        .broadcast_mul(&rstd)?;
    let gx = (&g * &xhat)?;
    // one modulation row per clip: its gradient sums over the clip's tokens
    let (dshift, dscale) = if s == 1 {
        (g.sum_keepdim(1)?, gx.sum_keepdim(1)?)
    } else {
        (g, gx)
    };
    Ok((
        dx.to_dtype(dtype)?,
        dshift.to_dtype(dtype)?,
        dscale.to_dtype(dtype)?,
    ))
}

struct NormModulateBackward {
    eps: f32,
}

impl CustomOp3 for NormModulateBackward {
    fn name(&self) -> &'static str {
        "norm-modulate-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let scale = contiguous_f32(s2, l2, self.name())?;
        let dy = contiguous_f32(s3, l3, self.name())?;
        let (b, n, d) = l1.shape().dims3()?;
        let s = l2.shape().dims3()?.1;
        let rows = n + 2 * s;
        let mut out = vec![0f32; b * rows * d];
        let mut xhat = vec![0f32; d];
        let mut g = vec![0f32; d];
        for_rows(b, n, s, |r, m| {
            let (bi, ni) = (r / n, r % n);
            let mi = m % s; // modulation row within its clip
            let row = &x[r * d..(r + 1) * d];
            let dyr = &dy[r * d..(r + 1) * d];
            let sc = &scale[m * d..(m + 1) * d];
            let (mean, rstd) = row_stats(row, self.eps);
            let (mut mean_g, mut mean_gx) = (0f32, 0f32);
            for j in 0..d {
                xhat[j] = (row[j] - mean) * rstd;
                g[j] = dyr[j] * (1.0 + sc[j]);
                mean_g += g[j];
                mean_gx += g[j] * xhat[j];
            }
            mean_g /= d as f32;
            mean_gx /= d as f32;
            let base = bi * rows * d;
            let dx = &mut out[base + ni * d..base + (ni + 1) * d];
            for j in 0..d {
                dx[j] = rstd * (g[j] - mean_g - xhat[j] * mean_gx);
            }
            let dshift = base + (n + mi) * d;
            for j in 0..d {
                out[dshift + j] += dyr[j];
            }
            let dscale = base + (n + s + mi) * d;
            for j in 0..d {
                out[dscale + j] += dyr[j] * xhat[j];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, rows, d))))
    }
}

// ---------------------------------------------------------------------------
// softmax over the last axis

/// Softmax over the last axis, with a backward pass (candle-nn's fused
/// `softmax_last_dim` has none).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if cpu_half(&[x]) {
        return Ok(softmax_last(&f32(x)?)?.to_dtype(x.dtype())?);
    }
    if !fused_ok(&[x]) {
        return softmax_last_reference(x);
    }
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

/// The same from candle's generic ops.
pub fn softmax_last_reference(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

struct Softmax;
struct SoftmaxBackward;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let d = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        vmath::par_blocks(&mut out, d, |offset, block| {
            vmath::softmax_rows(&x[offset..offset + block.len()], block, d)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-backward"
    }

    /// `dx = y * (dy - sum(dy * y))` per row.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let d = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        vmath::par_blocks(&mut out, d, |offset, block| {
            let range = offset..offset + block.len();
            for ((yr, gr), o) in y[range.clone()]
                .chunks_exact(d)
                .zip(dy[range].chunks_exact(d))
                .zip(block.chunks_exact_mut(d))
            {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for j in 0..d {
                    o[j] = yr[j] * (gr[j] - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------
// element-wise activations: GELU (tanh approximation) and SiLU

/// GELU with the tanh approximation (candle's `gelu`, DiT's MLP), with a
/// one-pass backward. `0.5 (1 + tanh(u)) = sigmoid(2u)`: one exp instead of
/// glibc's `tanhf` (an `expm1f` inside; measured 20% of a DiT training
/// step), and that exp vectorised (`vmath`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return gelu_reference(x);
    }
    Ok(x.contiguous()?.apply_op1(GELU)?)
}

/// candle's own `gelu` (its backward is a dozen generic ops).
pub fn gelu_reference(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
}

/// SiLU `x * sigmoid(x)` (the compression network's activation), with a
/// one-pass backward; candle's `silu` calls libm's `expf` per value and
/// its backward is several generic ops.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return silu_reference(x);
    }
    Ok(x.contiguous()?.apply_op1(SILU)?)
}

/// candle's own `silu`.
pub fn silu_reference(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

/// An element-wise activation as a custom op: `forward(x, y)` and
/// `backward(x, dy, dx)` are `vmath` loops, run over blocks on the pool.
struct Activation {
    name: &'static str,
    backward_name: &'static str,
    forward: fn(&[f32], &mut [f32]),
    backward: fn(&[f32], &[f32], &mut [f32]),
}

const GELU: Activation = Activation {
    name: "gelu-tanh",
    backward_name: "gelu-tanh-backward",
    forward: vmath::gelu,
    backward: vmath::gelu_backward,
};

const SILU: Activation = Activation {
    name: "silu",
    backward_name: "silu-backward",
    forward: vmath::silu,
    backward: vmath::silu_backward,
};

/// The gradient of an [`Activation`] with respect to its input.
struct ActivationBackward {
    name: &'static str,
    backward: fn(&[f32], &[f32], &mut [f32]),
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name)?;
        let mut out = vec![0f32; x.len()];
        vmath::par_blocks(&mut out, 1, |offset, block| {
            (self.forward)(&x[offset..offset + block.len()], block)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ActivationBackward {
                name: self.backward_name,
                backward: self.backward,
            },
        )?))
    }
}

impl CustomOp2 for ActivationBackward {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        vmath::par_blocks(&mut out, 1, |offset, block| {
            let range = offset..offset + block.len();
            (self.backward)(&x[range.clone()], &dy[range], block)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------
// rotary position embedding, interleaved pairs

/// Rotates the interleaved pairs `(x[2i], x[2i+1])` of `x` `(B, H, N, Dh)`
/// by the angles whose cosines and sines are `cos`, `sin` `(N, Dh / 2)`
/// (candle-nn's `rope_i` layout; its fused version has no backward and its
/// `rope_i_slow` is eight strided generic ops). The tables get no gradient.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, n, dh) = x.dims4()?;
    if dh % 2 != 0 || cos.dims() != [n, dh / 2] || sin.dims() != [n, dh / 2] {
        invalid!(
            "rope: x {:?} wants cos and sin of shape [{n}, {}], got {:?} and {:?}",
            x.dims(),
            dh / 2,
            cos.dims(),
            sin.dims()
        );
    }
    let gpu = super::cuda::kernels_for(&[x]);
    if !fused_ok(&[x, cos, sin]) && !gpu {
        return rope_reference(x, cos, sin);
    }
    // the GPU kernel reads the tables in f32 whatever x is
    let table = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
    Ok(x.contiguous()?
        .apply_op3(&table(cos)?, &table(sin)?, Rope { inverse: false })?)
}

/// candle-nn's `rope_i_slow`, built from generic ops (the tables rounded to
/// `x`'s dtype, which it requires).
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope_i_slow(
        &x.contiguous()?,
        &cos.to_dtype(x.dtype())?,
        &sin.to_dtype(x.dtype())?,
    )?)
}

/// The rotation, or (`inverse`) its transpose, which is its backward pass.
struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-interleaved"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let cos = contiguous_f32(s2, l2, self.name())?;
        let sin = contiguous_f32(s3, l3, self.name())?;
        let (_, _, n, dh) = l1.shape().dims4()?;
        let half = dh / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        for (r, (xr, o)) in x.chunks_exact(dh).zip(out.chunks_exact_mut(dh)).enumerate() {
            let pos = r % n;
            let (c, sn) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for i in 0..half {
                let (a, b) = (xr[2 * i], xr[2 * i + 1]);
                let s = sign * sn[i];
                o[2 * i] = a * c[i] - b * s;
                o[2 * i + 1] = a * s + b * c[i];
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rope_fwd(self.inverse, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check, random};
    use candle_core::Device;

    #[test]
    fn norm_modulate_matches_the_reference() {
        // per-clip and per-token modulation, and a row of width 1
        // (the last two big enough to be cut into blocks for the thread pool)
        for (i, &(b, n, s, d)) in [
            (2, 5, 1, 8),
            (3, 4, 4, 6),
            (1, 3, 1, 1),
            (2, 7, 7, 33),
            (2, 300, 1, 64),
            (2, 300, 300, 64),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let inputs = [
                (random(&[b, n, d], seed, 2.0) + 0.5).unwrap(),
                random(&[b, s, d], seed + 1, 0.5),
                random(&[b, s, d], seed + 2, 0.5),
            ];
            check(
                &inputs,
                |t| norm_modulate(&t[0], &t[1], &t[2], 1e-6).unwrap(),
                |t| norm_modulate_reference(&t[0], &t[1], &t[2], 1e-6).unwrap(),
                // width 1 normalises to 0 / sqrt(eps): the x gradient is
                // rounding noise in both, so compare it loosely there
                if d == 1 { 1.0 } else { 2e-4 },
                &format!("norm_modulate {b}x{n}x{d}, S={s}"),
            );
        }
        let x = random(&[2, 3, 4], 0, 1.0);
        let bad = random(&[2, 2, 4], 1, 1.0);
        assert!(norm_modulate(&x, &bad, &bad, 1e-6).is_err());
    }

    #[test]
    fn the_generic_norm_modulate_backward_matches_the_cpu_one() {
        // the GPU's backward pass (generic ops) against the one-pass CPU one
        for (i, &(b, n, s, d)) in [(2, 5, 1, 8), (3, 4, 4, 6)].iter().enumerate() {
            let seed = 40 + 10 * i as u64;
            let x = candle_core::Var::from_tensor(&random(&[b, n, d], seed, 2.0)).unwrap();
            let shift = candle_core::Var::from_tensor(&random(&[b, s, d], seed + 1, 0.5)).unwrap();
            let scale = candle_core::Var::from_tensor(&random(&[b, s, d], seed + 2, 0.5)).unwrap();
            let grad = random(&[b, n, d], seed + 3, 1.0);
            let y =
                norm_modulate(x.as_tensor(), shift.as_tensor(), scale.as_tensor(), 1e-6).unwrap();
            let grads = (&y * &grad).unwrap().sum_all().unwrap().backward().unwrap();
            let (dx, dshift, dscale) =
                norm_modulate_backward_generic(x.as_tensor(), scale.as_tensor(), &grad, s, 1e-6)
                    .unwrap();
            for (name, var, generic) in [
                ("x", &x, dx),
                ("shift", &shift, dshift),
                ("scale", &scale, dscale),
            ] {
                let cpu = grads.get(var.as_tensor()).unwrap();
                let diff = crate::ops::test_util::rel_diff(&generic, cpu);
                assert!(diff < 1e-4, "d{name} (S = {s}) differs by {diff}");
            }
        }
    }

    #[test]
    fn ops_take_bf16_on_the_cpu() {
        // 16-bit inputs run in f32 and round once; RoPE's f32 tables are
        // rounded to x's dtype on the reference path
        let x = random(&[2, 5, 16], 60, 1.0);
        let (shift, scale) = (random(&[2, 1, 16], 61, 0.3), random(&[2, 1, 16], 62, 0.3));
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let want = norm_modulate(&x, &shift, &scale, 1e-6).unwrap();
        let got = norm_modulate(&bf(&x), &bf(&shift), &bf(&scale), 1e-6).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let diff = crate::ops::test_util::rel_diff(&got, &want);
        assert!(diff < 1e-2, "norm_modulate bf16: {diff}");

        let angles = random(&[5, 4], 63, 2.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let x = random(&[1, 2, 5, 8], 64, 1.0);
        let want = rope(&x, &cos, &sin).unwrap();
        let got = rope(&bf(&x), &cos, &sin).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let diff = crate::ops::test_util::rel_diff(&got, &want);
        assert!(diff < 1e-2, "rope bf16: {diff}");

        let x = random(&[3, 7], 65, 3.0);
        let want = softmax_last(&x).unwrap();
        let got = softmax_last(&bf(&x)).unwrap();
        let diff = crate::ops::test_util::rel_diff(&got, &want);
        assert!(diff < 1e-2, "softmax bf16: {diff}");
    }

    #[test]
    fn softmax_matches_the_reference_with_masked_entries() {
        // small, and big enough to be cut into blocks for the thread pool
        for shape in [[2, 3, 5, 7], [2, 6, 50, 130]] {
            let m = shape[3];
            let x = random(&shape, 3, 3.0);
            // a large negative bias, as attention masks use
            let mask = Tensor::from_vec(
                (0..m)
                    .map(|j| if j == m - 1 { -1e9f32 } else { 0.0 })
                    .collect::<Vec<_>>(),
                m,
                &Device::Cpu,
            )
            .unwrap();
            let x = x.broadcast_add(&mask).unwrap();
            check(
                &[x],
                |t| softmax_last(&t[0]).unwrap(),
                |t| softmax_last_reference(&t[0]).unwrap(),
                1e-5,
                "softmax",
            );
        }
    }

    #[test]
    fn rope_matches_candles_slow_path() {
        let (n, dh) = (5, 6);
        let angles = random(&[n, dh / 2], 7, 2.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let x = random(&[2, 3, n, dh], 8, 1.0);
        // the tables are constants: only x is checked for a gradient
        let vars = [x];
        check(
            &vars,
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| rope_reference(&t[0], &cos, &sin).unwrap(),
            1e-5,
            "rope",
        );
        assert!(rope(
            &random(&[1, 1, n, dh], 9, 1.0),
            &cos.narrow(0, 0, 4).unwrap(),
            &sin
        )
        .is_err());
    }

    #[test]
    fn gelu_matches_candles() {
        // small, and big enough to be cut into blocks for the thread pool
        for shape in [&[4, 9, 13][..], &[3, 100, 130]] {
            check(
                &[random(shape, 4, 3.0)],
                |t| gelu(&t[0]).unwrap(),
                |t| gelu_reference(&t[0]).unwrap(),
                1e-4,
                "gelu",
            );
        }
    }

    #[test]
    fn silu_matches_candles() {
        for shape in [&[4, 9, 13][..], &[3, 100, 130]] {
            check(
                &[random(shape, 5, 4.0)],
                |t| silu(&t[0]).unwrap(),
                |t| silu_reference(&t[0]).unwrap(),
                1e-4,
                "silu",
            );
        }
    }
}
