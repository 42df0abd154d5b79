//! Neighbourhood gather (im2col, channels last): for each position of
//! `(N, H, W, D)`, the `kh x kw` neighbours' channels side by side, zero
//! outside. A `kh x kw` convolution is then one matrix multiply, and its
//! backward (col2im) a scatter-add; both are written as plain loops over
//! contiguous rows instead of candle's pad/narrow/cat, which copy element by
//! element through strided indices (measured: most of a VAE training step).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::{invalid, Result};

struct Gather {
    kh: usize,
    kw: usize,
}

struct Scatter {
    kh: usize,
    kw: usize,
}

/// Calls `f(at, slot, from)` for every position `at` of `(N, H, W)`
/// (flattened) and every `slot` `ky * kw + kx` of the `kh x kw` window
/// centred on it, in that order (`at` major): `from` is the neighbour's
/// position, `None` where the slot falls outside the grid.
fn for_each_slot(
    [n, h, w]: [usize; 3],
    kh: usize,
    kw: usize,
    mut f: impl FnMut(usize, usize, Option<usize>),
) {
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                let at = (b * h + y) * w + x;
                for ky in 0..kh {
                    let sy = (y + ky).checked_sub(kh / 2).filter(|&v| v < h);
                    for kx in 0..kw {
                        let sx = (x + kx).checked_sub(kw / 2).filter(|&v| v < w);
                        let from = sy.zip(sx).map(|(sy, sx)| (b * h + sy) * w + sx);
                        f(at, ky * kw + kx, from);
                    }
                }
            }
        }
    }
}

fn dims4(shape: &Shape) -> candle_core::Result<(usize, usize, usize, usize)> {
    shape.dims4()
}

pub(super) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "gather-neighbours"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (n, h, w, d) = dims4(l.shape())?;
        let (kh, kw) = (self.kh, self.kw);
        let k = kh * kw;
        // every slot written once, in order: its neighbour's channels, or
        // zeros outside the grid. Zero-filling the whole output first was
        // more than half of the op's perf samples in the autoencoder's
        // training (the op 5.4% of all, 3.2% the memset; now 3.2% and 0.25%)
        let mut out = Vec::with_capacity(n * h * w * k * d);
        for_each_slot([n, h, w], kh, kw, |at, slot, from| {
            debug_assert_eq!(out.len(), (at * k + slot) * d);
            match from {
                Some(from) => out.extend_from_slice(&x[from * d..from * d + d]),
                None => out.resize(out.len() + d, 0.0),
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, k * d))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let scatter = Scatter {
            kh: self.kh,
            kw: self.kw,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&scatter)?))
    }
}

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "scatter-neighbours"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let (n, h, w, kd) = dims4(l.shape())?;
        let (kh, kw) = (self.kh, self.kw);
        let k = kh * kw;
        let d = kd / k;
        let mut out = vec![0f32; n * h * w * d];
        for_each_slot([n, h, w], kh, kw, |at, slot, from| {
            let Some(from) = from else { return };
            let o = (at * k + slot) * d;
            for (acc, v) in out[from * d..from * d + d].iter_mut().zip(&g[o..o + d]) {
                *acc += v;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, d))))
    }
}

fn check(x: &Tensor, kh: usize, kw: usize) -> Result<()> {
    if x.rank() != 4 {
        invalid!("gather_neighbours wants (N, H, W, D), got {:?}", x.dims());
    }
    if kh % 2 == 0 || kw % 2 == 0 {
        invalid!("gather_neighbours needs odd kernel sizes, got {kh}x{kw}");
    }
    Ok(())
}

/// `(N, H, W, D) -> (N, H, W, kh * kw * D)`: position `(y, x)` holds the
/// channels of `(y + ky - kh/2, x + kx - kw/2)` at slot `ky * kw + kx`, zeros
/// outside. Differentiable (its backward is the matching scatter-add).
/// f32 on CPU; other devices and dtypes use the reference.
pub fn gather_neighbours(x: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    check(x, kh, kw)?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return gather_neighbours_reference(x, kh, kw);
    }
    Ok(x.contiguous()?.apply_op1(Gather { kh, kw })?)
}

/// The same gather from candle's generic ops (pad, narrow, cat): the
/// reference the fused op is tested against, and the path on GPUs.
pub fn gather_neighbours_reference(x: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    check(x, kh, kw)?;
    let (_, h, w, _) = x.dims4()?;
    let p = x
        .pad_with_zeros(1, kh / 2, kh / 2)?
        .pad_with_zeros(2, kw / 2, kw / 2)?;
    let mut parts = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            parts.push(p.narrow(1, ky, h)?.narrow(2, kx, w)?);
        }
    }
    Ok(Tensor::cat(&parts, 3)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        crate::train::randn(&mut rng, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn forward_and_backward_match_the_reference() {
        for (i, &(n, h, w, d, kh, kw)) in [
            (2, 5, 4, 3, 3, 3),
            (1, 1, 1, 2, 3, 3),
            (3, 4, 6, 5, 3, 1),
            (2, 7, 3, 4, 1, 3),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&random(&[n, h, w, d], i as u64)).unwrap();
            let probe = random(&[n, h, w, kh * kw * d], 100 + i as u64);
            let fused = gather_neighbours(x.as_tensor(), kh, kw).unwrap();
            let reference = gather_neighbours_reference(x.as_tensor(), kh, kw).unwrap();
            assert_eq!(max_diff(&fused, &reference), 0.0, "forward {i}");
            let g1 = (fused * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (reference * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            assert!(max_diff(a, b) < 1e-5, "backward {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(gather_neighbours(&random(&[2, 3, 4], 0), 3, 3).is_err());
        assert!(gather_neighbours(&random(&[1, 2, 3, 4], 0), 2, 3).is_err());
    }
}
