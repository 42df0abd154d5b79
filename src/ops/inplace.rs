//! The optimiser's element-wise updates done in place, one pass each: a
//! moving average `a <- a * keep + b * (1 - keep)` (Adam's moments, the
//! weights' EMA) and Adam's parameter update.
//!
//! Written with candle's generic ops, an AdamW step is about a dozen passes
//! over every parameter, each allocating a new tensor (m, v, their bias
//! corrections, the square root, the quotient, the scaled update, the new
//! weights), and the EMA three more: on the default model's 5.5 M
//! parameters about 37 ms of a 280 ms training step on the 2-core machine,
//! with one core mostly idle. Here the same arithmetic runs as three
//! in-place passes, cut into blocks for candle's CPU thread pool.
//!
//! Each value is computed as the generic ops compute it, rounding for
//! rounding (`x * c` with `c` rounded to f32 once, a division by a constant
//! as a product with its reciprocal, as candle's `affine` does), so the
//! results are the reference's bits but for the sign of a zero. On other
//! devices or dtypes, and with `MINISORA_REFERENCE_OPS`, the callers take
//! their generic-op path.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor};

use super::gather::contiguous_f32;
use super::vmath::par_blocks;
use crate::Result;

/// Whether the in-place CPU path applies: every tensor on the CPU, in f32,
/// contiguous.
pub fn inplace_ok(ts: &[&Tensor]) -> bool {
    !super::reference_only()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// Calls `f(block, sources)` over blocks of the destination on candle's
/// CPU thread pool, each block with the sources' values at the same places:
/// the whole of an element-wise in-place op but its arithmetic.
fn zip_in_place<const N: usize>(
    op: &str,
    (dst, dl): (&mut CpuStorage, &Layout),
    srcs: [(&CpuStorage, &Layout); N],
    f: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) -> candle_core::Result<()> {
    let CpuStorage::F32(data) = dst else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let Some((start, end)) = dl.contiguous_offsets() else {
        candle_core::bail!("{op}: the destination must be contiguous")
    };
    let dst = &mut data[start..end];
    let mut slices = [&[][..]; N];
    for (slot, (s, l)) in slices.iter_mut().zip(srcs) {
        *slot = contiguous_f32(s, l, op)?;
        if slot.len() != dst.len() {
            candle_core::bail!(
                "{op}: {} values to update, a source of {}",
                dst.len(),
                slot.len()
            )
        }
    }
    par_blocks(dst, 1, |offset, block| {
        let end = offset + block.len();
        f(block, slices.map(|s| &s[offset..end]))
    });
    Ok(())
}

/// `a <- a * keep + f(b) * (1 - keep)`, `f(b)` = `b` or `b * b`.
struct Average {
    keep: f32,
    take: f32,
    square: bool,
}

impl InplaceOp2 for Average {
    fn name(&self) -> &'static str {
        "moving-average"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (keep, take, square) = (self.keep, self.take, self.square);
        zip_in_place(self.name(), (s1, l1), [(s2, l2)], |block, [b]| {
            if square {
                for (a, &b) in block.iter_mut().zip(b) {
                    *a = *a * keep + (b * b) * take;
                }
            } else {
                for (a, &b) in block.iter_mut().zip(b) {
                    *a = *a * keep + b * take;
                }
            }
        })
    }
}

/// `a <- a * keep + b * (1 - keep)` in place (an exponential moving
/// average); with `square`, of `b * b`. `a` and `b` CPU f32 contiguous
/// tensors of the same size ([`inplace_ok`]); `a` must not share storage
/// with another tensor that should keep its values.
pub fn average_into(a: &Tensor, b: &Tensor, keep: f64, square: bool) -> Result<()> {
    Ok(a.inplace_op2(
        b,
        &Average {
            keep: keep as f32,
            take: (1.0 - keep) as f32,
            square,
        },
    )?)
}

/// Adam's update of the weights from updated moments.
pub struct AdamUpdate {
    /// `1 / (1 - beta1^t)` and `1 / (1 - beta2^t)`.
    pub inv_bias1: f64,
    pub inv_bias2: f64,
    pub eps: f64,
    pub lr: f64,
    /// `1 - lr * weight_decay`, or `None` without weight decay.
    pub decay: Option<f64>,
}

struct AdamApply {
    inv_bias1: f32,
    inv_bias2: f32,
    eps: f32,
    lr: f32,
    decay: Option<f32>,
}

impl InplaceOp3 for AdamApply {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let Self {
            inv_bias1,
            inv_bias2,
            eps,
            lr,
            decay,
        } = *self;
        let srcs = [(s2, l2), (s3, l3)];
        zip_in_place(self.name(), (s1, l1), srcs, |block, [m, v]| {
            for ((w, &m), &v) in block.iter_mut().zip(m).zip(v) {
                let update = (m * inv_bias1) / ((v * inv_bias2).sqrt() + eps);
                let w0 = match decay {
                    Some(d) => *w * d,
                    None => *w,
                };
                *w = w0 - update * lr;
            }
        })
    }
}

/// `theta <- theta * decay - lr * (m * inv_bias1) / (sqrt(v * inv_bias2) +
/// eps)` in place. All CPU f32 contiguous tensors of one size
/// ([`inplace_ok`]).
pub fn adam_update(theta: &Tensor, m: &Tensor, v: &Tensor, u: &AdamUpdate) -> Result<()> {
    Ok(theta.inplace_op3(
        m,
        v,
        &AdamApply {
            inv_bias1: u.inv_bias1 as f32,
            inv_bias2: u.inv_bias2 as f32,
            eps: u.eps as f32,
            lr: u.lr as f32,
            decay: u.decay.map(|d| d as f32),
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.range(-2.0, 2.0) as f32).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<f32> {
        t.to_vec1::<f32>().unwrap()
    }

    /// The in-place average equals candle's `a * keep + b * (1 - keep)`,
    /// value for value, on a size that spans several of the pool's blocks
    /// and a small one.
    #[test]
    fn average_matches_the_generic_ops() {
        for n in [37, 100_003] {
            for square in [false, true] {
                let (a, b) = (values(n, 1), values(n, 2));
                let keep = 0.999;
                let b2 = if square { b.sqr().unwrap() } else { b.clone() };
                let want = ((&a * keep).unwrap() + (b2 * (1.0 - keep)).unwrap()).unwrap();
                let a = a.copy().unwrap();
                average_into(&a, &b, keep, square).unwrap();
                assert_eq!(bits(&a), bits(&want), "n {n}, square {square}");
            }
        }
    }

    #[test]
    fn adam_update_matches_the_generic_ops() {
        let n = 70_001;
        let (theta, m) = (values(n, 3), values(n, 4));
        let v = values(n, 5).sqr().unwrap();
        for decay in [None, Some(1.0 - 1e-3 * 0.1)] {
            let u = AdamUpdate {
                inv_bias1: 1.0 / (1.0 - 0.9f64.powi(3)),
                inv_bias2: 1.0 / (1.0 - 0.99f64.powi(3)),
                eps: 1e-8,
                lr: 1e-3,
                decay,
            };
            let update = ((&m * u.inv_bias1).unwrap()
                / ((&v * u.inv_bias2).unwrap().sqrt().unwrap() + u.eps).unwrap())
            .unwrap();
            let base = match decay {
                Some(d) => (&theta * d).unwrap(),
                None => theta.clone(),
            };
            let want = (base - (update * u.lr).unwrap()).unwrap();
            let got = theta.copy().unwrap();
            adam_update(&got, &m, &v, &u).unwrap();
            assert_eq!(bits(&got), bits(&want), "decay {decay:?}");
        }
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        let a = values(10, 1);
        assert!(average_into(&a, &values(11, 2), 0.5, false).is_err());
        assert!(adam_update(
            &a,
            &values(10, 2),
            &values(9, 3),
            &AdamUpdate {
                inv_bias1: 1.0,
                inv_bias2: 1.0,
                eps: 1e-8,
                lr: 1e-3,
                decay: None,
            }
        )
        .is_err());
    }
}
