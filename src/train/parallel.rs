//! Data-parallel gradients on the CPU.
//!
//! On this project's 2-core machine candle runs its element-wise ops on one
//! thread and only its matrix multiplies on both, so a training step keeps
//! one core idle most of the time. Two single-threaded processes training
//! the default autoencoder side by side measured 12.8 clips/s each, against
//! 14.7 clips/s for one process using both cores. [`sharded_grads`] gets
//! that back inside one run: the batch is cut into equal shards, the
//! shards' forward and backward passes run side by side, and their
//! gradients are averaged in a fixed order.
//!
//! The result depends on the number of shards only through floating-point
//! rounding (the mean of equal shards' mean losses is the batch's mean
//! loss), and not at all on how many threads run them, so a run stays
//! bit-for-bit reproducible on any machine.
//!
//! The shards run as tasks of candle's own CPU pool (one thread per core),
//! not on plain threads of their own: the matrix multiplies and
//! element-wise ops inside a shard's pass then split their work on that
//! same pool, so a thread that finishes its shard early takes over part of
//! the other's remaining products instead of waiting. On this project's
//! 2-core machine the two vCPUs ran at different speeds (a `perf record`
//! of the default DiT's training showed the shard on one core taking 30%
//! longer, step after step, and 11% of the machine idle); plain threads
//! with single-threaded matmuls then wait for the slower core at every
//! step. How a product is split over threads does not change its values
//! (gemm splits rows and columns, never the inner sum), so the weights are
//! the same either way. Plain threads with multithreaded matmuls
//! (`RAYON_NUM_THREADS=2` before this change) made four busy threads on
//! two cores and halved the rate. Against plain threads, the same losses
//! at every step and about 3% more DiT steps/s, 1.94-1.96 cores busy
//! instead of 1.82-1.87 (samples/model/history.md, "A second clean timing").

use std::thread;

use rayon::prelude::*;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{invalid, Result};

/// What one shard's pass gives back: its mean loss (a scalar tensor with
/// its graph, to differentiate) and any figures it measured (already
/// numbers, averaged over shards by [`sharded_grads`]).
pub struct ShardLoss {
    pub loss: Tensor,
    pub figures: Vec<f64>,
}

/// The averaged outcome of one step over all shards.
pub struct ShardedStep {
    /// Gradients of the mean loss for every variable that has one.
    pub grads: GradStore,
    /// Mean of the shards' losses.
    pub loss: f64,
    /// Mean of each figure over the shards.
    pub figures: Vec<f64>,
}

/// The shards a run uses unless told otherwise: 2 for an even batch, else 1.
/// A fixed rule rather than the machine's core count, so that the same
/// command gives the same weights on any machine.
pub fn default_shards(batch: usize) -> usize {
    if batch % 2 == 0 {
        2
    } else {
        1
    }
}

/// One shard's gradients, loss and figures.
type ShardOutcome = (GradStore, f64, Vec<f64>);

/// Threads worth using for `shards` shards here: one per core, at most one
/// per shard.
pub fn worker_threads(shards: usize) -> usize {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    shards.clamp(1, cores.max(1))
}

/// Runs `pass(shard)` for `shard` in `0..shards` on up to `threads` threads,
/// differentiates each shard's loss, and averages the gradients of `vars`
/// in shard order. Each shard should cover an equal part of the batch so
/// that the average is the gradient of the batch's mean loss.
pub fn sharded_grads<F>(shards: usize, threads: usize, vars: &[Var], pass: F) -> Result<ShardedStep>
where
    F: Fn(usize) -> Result<ShardLoss> + Sync,
{
    if shards == 0 {
        invalid!("a step needs at least one shard");
    }
    let run_one = |shard: usize| -> Result<ShardOutcome> {
        let out = pass(shard)?;
        let value = out.loss.to_scalar::<f32>()? as f64;
        Ok((out.loss.backward()?, value, out.figures))
    };
    // with more than one thread, each shard is a task of candle's pool (of
    // the pool's size, not `threads`'); rayon keeps the shards' order
    let outs: Vec<ShardOutcome> = if threads.clamp(1, shards) == 1 {
        (0..shards).map(run_one).collect::<Result<_>>()?
    } else {
        candle_core::utils::with_threadpool(|| {
            (0..shards)
                .into_par_iter()
                .map(run_one)
                .collect::<Result<_>>()
        })?
    };
    let n = shards as f64;
    let loss = outs.iter().map(|o| o.1).sum::<f64>() / n;
    let mut figures = vec![0.0; outs[0].2.len()];
    for o in &outs {
        for (f, v) in figures.iter_mut().zip(&o.2) {
            *f += v / n;
        }
    }
    let mut grads_iter = outs.into_iter().map(|o| o.0);
    let mut grads = grads_iter.next().expect("at least one shard");
    if shards > 1 {
        let rest: Vec<GradStore> = grads_iter.collect();
        for var in vars {
            let t = var.as_tensor();
            let Some(first) = grads.get(t) else { continue };
            let mut sum = first.clone();
            for g in &rest {
                if let Some(other) = g.get(t) {
                    sum = (sum + other)?;
                }
            }
            grads.insert(t, (sum / n)?);
        }
    }
    Ok(ShardedStep {
        grads,
        loss,
        figures,
    })
}

/// The rows `shard` of `shards` covers in a batch of `batch`: `(start, len)`.
/// `batch` must be a multiple of `shards`.
pub fn shard_rows(batch: usize, shards: usize, shard: usize) -> (usize, usize) {
    let len = batch / shards;
    (shard * len, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sharded_gradient_is_the_batch_gradient() {
        let dev = Device::Cpu;
        let w = Var::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let xs = Tensor::new(
            &[
                [1.0f32, 2.0, 3.0],
                [0.5, -1.0, 4.0],
                [2.0, 0.0, -1.0],
                [1.5, 1.0, 1.0],
            ],
            &dev,
        )
        .unwrap();
        let loss_of = |rows: &Tensor| -> Tensor {
            rows.broadcast_mul(w.as_tensor())
                .unwrap()
                .sum(1)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
        };
        let whole = loss_of(&xs).backward().unwrap();
        let expected: Vec<f32> = whole.get(w.as_tensor()).unwrap().to_vec1().unwrap();
        for threads in [1, 2] {
            let step = sharded_grads(2, threads, std::slice::from_ref(&w), |s| {
                let (start, len) = shard_rows(4, 2, s);
                let loss = loss_of(&xs.narrow(0, start, len)?);
                Ok(ShardLoss {
                    figures: vec![s as f64],
                    loss,
                })
            })
            .unwrap();
            let got: Vec<f32> = step.grads.get(w.as_tensor()).unwrap().to_vec1().unwrap();
            for (a, b) in got.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{got:?} vs {expected:?}");
            }
            let full = loss_of(&xs).to_scalar::<f32>().unwrap() as f64;
            assert!((step.loss - full).abs() < 1e-5);
            assert_eq!(step.figures, vec![0.5]);
        }
    }

    #[test]
    fn a_failing_shard_fails_the_step() {
        let w = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let r = sharded_grads(2, 2, std::slice::from_ref(&w), |s| {
            if s == 1 {
                invalid!("shard one broke");
            }
            Ok(ShardLoss {
                loss: w.as_tensor().sum_all()?,
                figures: vec![],
            })
        });
        assert!(r.err().unwrap().to_string().contains("shard one broke"));
    }
}
