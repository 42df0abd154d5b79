//! AdamW with decoupled weight decay (Loshchilov and Hutter, "Decoupled
//! Weight Decay Regularization", 2019), with its state in the open so that a
//! checkpoint can hold it and a resumed run continues exactly.
//!
//! candle-nn's `AdamW` keeps its moments private, so it cannot be resumed.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{invalid, ops, Result};

/// AdamW's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    /// 0.99 rather than 0.999: small batches make the second moment noisy,
    /// and a shorter memory adapts faster (as in nanoGPT).
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named variables (the names of a `VarMap`, so the state can be
/// saved beside the weights).
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far (bias correction uses it).
    pub step: u64,
    vars: BTreeMap<String, Var>,
    /// First and second moments per variable.
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(vars: HashMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let vars: BTreeMap<String, Var> = vars.into_iter().collect();
        let moments = vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), (v.zeros_like()?, v.zeros_like()?))))
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            step: 0,
            vars,
            moments,
        })
    }

    /// One update with learning rate `lr` from the gradients in `grads`.
    /// Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (name, var) in &self.vars {
            let (Some(g), Some((m, v))) = (grads.get(var.as_tensor()), self.moments.get_mut(name))
            else {
                continue;
            };
            let theta = var.as_tensor();
            if ops::inplace_ok(&[theta, g, m, v]) {
                // the same arithmetic in three in-place passes (ops::inplace)
                ops::average_into(m, g, c.beta1, false)?;
                ops::average_into(v, g, c.beta2, true)?;
                let update = ops::AdamUpdate {
                    inv_bias1: 1.0 / bias1,
                    inv_bias2: 1.0 / bias2,
                    eps: c.eps,
                    lr,
                    decay: (c.weight_decay > 0.0).then_some(1.0 - lr * c.weight_decay),
                };
                ops::adam_update(theta, m, v, &update)?;
                continue;
            }
            // (1) m_t = b1 m + (1 - b1) g ;  v_t = b2 v + (1 - b2) g^2
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // (2) theta -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta)
            let m_hat = (&*m / bias1)?;
            let v_hat = (&*v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = if c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint:
    /// copies, since later steps update the moments in place.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, (m, v)) in &self.moments {
            out.insert(format!("m.{name}"), m.copy()?);
            out.insert(format!("v.{name}"), v.copy()?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Self::state`] and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (name, (m, v)) in self.moments.iter_mut() {
            let (Some(sm), Some(sv)) = (
                state.get(&format!("m.{name}")),
                state.get(&format!("v.{name}")),
            ) else {
                invalid!("the optimizer state has no moments for \"{name}\"");
            };
            if sm.dims() != m.dims() || sv.dims() != v.dims() {
                invalid!(
                    "optimizer moments of \"{name}\" have shape {:?}, the model has {:?}",
                    sm.dims(),
                    m.dims()
                );
            }
            // copies: the moments are updated in place, the state is the caller's
            *m = sm.to_device(m.device())?.copy()?;
            *v = sv.to_device(v.device())?.copy()?;
        }
        self.step = step;
        Ok(())
    }
}

/// Learning rate at `step`: linear warm-up over `warmup` steps to `peak`,
/// then cosine decay to `peak * floor` at `total`.
pub fn learning_rate(step: u64, total: u64, warmup: u64, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_minimises_a_quadratic_and_matches_a_hand_step() {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            HashMap::from([("x".to_string(), x.clone())]),
            AdamWConfig::default(),
        )
        .unwrap();
        // first step of Adam moves every coordinate by lr (m_hat / sqrt(v_hat) = sign(g))
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        let after: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(
            (after[0] - 2.9).abs() < 1e-6 && (after[1] + 1.9).abs() < 1e-6,
            "{after:?}"
        );
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.05).unwrap();
        }
        let end: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(end.iter().all(|v| v.abs() < 0.05), "{end:?}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        assert!((learning_rate(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!(learning_rate(50, 100, 10, 1.0, 0.1) < 1.0);
        assert!((learning_rate(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }
}
