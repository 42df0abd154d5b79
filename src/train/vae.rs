//! Training the compression network, and its checkpoints.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::optim::{learning_rate, AdamW, AdamWConfig};
use super::parallel::{self, ShardLoss};
use super::{
    randn, seeded_init, update_ema, CsvLog, DataSource, RunConfig, Session, StepReport,
    TrainOutcome, HELD_OUT,
};
use crate::checkpoint::{self, read_tensors, write_json, write_tensors};
use crate::data::shapes_world::CONTRACT_VERSION;
use crate::rng::Rng;
use crate::vae::{Vae, VaeConfig};
use crate::{invalid, Error, Result};

/// `config.json` of an autoencoder checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeMeta {
    /// Always `"vae"`.
    pub kind: String,
    /// Shapes World contract version of the training data.
    pub contract: u32,
    pub vae: VaeConfig,
    pub run: RunConfig,
    /// Optimizer steps taken.
    pub step: u64,
    /// Multiply latents by this to give them unit variance (measured on
    /// training-distribution clips when the checkpoint was written).
    pub scale_factor: f64,
    /// Mean of the latents it was measured on.
    pub latent_mean: f64,
    /// The command that trained it.
    pub command: String,
    pub minisora_version: String,
}

/// A loaded autoencoder with its variables and metadata.
pub struct VaeCheckpoint {
    pub meta: VaeMeta,
    pub vae: Vae,
    pub varmap: VarMap,
}

impl VaeCheckpoint {
    /// The same autoencoder for inference, its weights in `dtype` (bf16 or
    /// f16 on a GPU; training stays in f32), built on plain tensors so that
    /// a forward records no backward graph (see
    /// [`checkpoint::inference_tensors`]).
    pub fn for_inference(&self, dtype: DType) -> Result<VaeCheckpoint> {
        let (varmap, vb) = checkpoint::inference_builder(&self.varmap, dtype)?;
        Ok(VaeCheckpoint {
            meta: self.meta.clone(),
            vae: Vae::new(&self.meta.vae, vb)?,
            varmap,
        })
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> Result<DType> {
        Ok(checkpoint::varmap_dtype_device(&self.varmap)?.0)
    }
}

fn build(config: &VaeConfig, device: &Device) -> Result<(Vae, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let vae = Vae::new(config, vb)?;
    Ok((vae, varmap))
}

/// Reads an autoencoder checkpoint directory's `config.json` (kind and
/// contract checked), without its weights.
pub fn read_meta(dir: &Path) -> Result<VaeMeta> {
    checkpoint::recover(dir)?;
    if !dir.is_dir() {
        invalid!("{}: no such checkpoint directory", dir.display());
    }
    let meta: VaeMeta = checkpoint::read_config(dir, "vae", "an autoencoder")?;
    if meta.contract != CONTRACT_VERSION {
        invalid!(
            "{}: trained on Shapes World v{}, this minisora implements v{CONTRACT_VERSION}",
            dir.display(),
            meta.contract
        );
    }
    Ok(meta)
}

/// Loads an autoencoder checkpoint directory (`config.json` +
/// `model.safetensors`), checking kind, contract and every weight.
pub fn load(dir: &Path, device: &Device) -> Result<VaeCheckpoint> {
    let meta = read_meta(dir)?;
    let (vae, varmap) = build(&meta.vae, device)?;
    let weights = dir.join("model.safetensors");
    checkpoint::load_into(&varmap, &read_tensors(&weights, device)?, &weights)?;
    Ok(VaeCheckpoint { meta, vae, varmap })
}

/// Writes a checkpoint atomically: `weights` (what the model is used with:
/// the moving average of the weights) as `model.safetensors`; with
/// `training`, the raw weights and the optimizer state too, for resuming.
pub fn save(
    dir: &Path,
    meta: &VaeMeta,
    weights: &HashMap<String, Tensor>,
    training: Option<(&VarMap, &AdamW)>,
) -> Result<()> {
    let raw = training
        .map(|(varmap, _)| checkpoint::named_tensors(varmap))
        .transpose()?;
    checkpoint::write_dir(dir, |tmp| {
        write_json(&tmp.join("config.json"), meta)?;
        write_tensors(&tmp.join("model.safetensors"), weights)?;
        if let (Some(raw), Some((_, opt))) = (&raw, training) {
            write_tensors(&tmp.join("train.safetensors"), raw)?;
            write_tensors(&tmp.join("optimizer.safetensors"), &opt.state()?)?;
        }
        Ok(())
    })
}

/// Measures the latent statistics on `count` training-distribution clips:
/// returns `(mean, std)` of the posterior means.
pub fn latent_stats(
    vae: &Vae,
    data: &DataSource,
    count: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let mut values: Vec<f32> = Vec::new();
    let batch = 8;
    for k in 0..count.div_ceil(batch) {
        // a block of stream ids of its own, past any run's training ids
        let (x, _) = data.batch((HELD_OUT >> 1) / batch as u64 + k as u64, batch, device)?;
        values.extend(vae.encode(&x)?.mean.flatten_all()?.to_vec1::<f32>()?);
    }
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    Ok((mean, var.sqrt().max(1e-8)))
}

/// Trains (or, with `resume`, continues) an autoencoder in `out`:
/// `out/checkpoint/` holds the latest checkpoint, `out/log.csv` the losses.
/// Stops after step `stop_at` if given (with a checkpoint), or at
/// `run.steps`. A NaN or infinite loss stops the run with an error and
/// leaves the last checkpoint as it was.
pub fn train(
    out: &Path,
    config: &VaeConfig,
    run: &RunConfig,
    session: &Session,
    device: &Device,
    mut on_step: impl FnMut(&StepReport),
) -> Result<TrainOutcome> {
    let Session {
        resume,
        stop_at,
        command,
    } = session;
    let (resume, stop_at) = (*resume, *stop_at);
    config.validate()?;
    let canvas = run.canvas()?;
    config.latent_size([canvas.frames, canvas.height, canvas.width])?;
    run.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    checkpoint::recover(&ckpt_dir)?;
    let data = super::data_source(&run.data, canvas, run.seed, run.two_objects)?;
    let (vae, varmap, mut opt, start, mut ema) = if resume {
        let ckpt =
            load(&ckpt_dir, device).map_err(|e| Error::Invalid(format!("cannot resume: {e}")))?;
        if ckpt.meta.vae != *config {
            invalid!(
                "cannot resume: {} was trained with another autoencoder configuration \
                 (differing: {})",
                ckpt_dir.display(),
                super::fields_that_differ(&ckpt.meta.vae, config).join(", ")
            );
        }
        let same_run = RunConfig {
            steps: run.steps,
            ..ckpt.meta.run.clone()
        };
        if same_run != *run {
            invalid!(
                "cannot resume: {} was trained with other settings (differing: {}; it was \
                 started with {}); only --steps may change",
                ckpt_dir.display(),
                super::fields_that_differ(&same_run, run).join(", "),
                serde_json::to_string(&ckpt.meta.run).unwrap_or_default()
            );
        }
        let ema = read_tensors(&ckpt_dir.join("model.safetensors"), device)?;
        // the raw weights (checkpoints from before the moving average kept
        // only model.safetensors, which then are the raw weights)
        let raw = ckpt_dir.join("train.safetensors");
        if raw.exists() {
            checkpoint::load_into(&ckpt.varmap, &read_tensors(&raw, device)?, &raw)?;
        }
        let mut opt = AdamW::new(
            ckpt.varmap
                .data()
                .lock()
                .map_err(|_| Error::Invalid("poisoned".into()))?
                .clone(),
            AdamWConfig::default(),
        )?;
        opt.load_state(
            &read_tensors(&ckpt_dir.join("optimizer.safetensors"), device)?,
            ckpt.meta.step,
        )?;
        (ckpt.vae, ckpt.varmap, opt, ckpt.meta.step, ema)
    } else {
        if ckpt_dir.exists() {
            invalid!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", ckpt_dir.display());
        }
        let (vae, varmap) = build(config, device)?;
        seeded_init(&varmap, run.seed)?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| Error::Invalid("poisoned".into()))?
            .clone();
        let mut ema = HashMap::new();
        update_ema(&mut ema, &varmap, 0.0)?;
        (
            vae,
            varmap,
            AdamW::new(vars, AdamWConfig::default())?,
            0,
            ema,
        )
    };
    let mut log = CsvLog::open(
        &out.join("log.csv"),
        "step,lr,loss,mse,kl,psnr,clips_per_s",
        resume.then_some(start),
    )?;
    let end = stop_at.unwrap_or(run.steps).min(run.steps);
    let started = Instant::now();
    let meta = |step: u64, stats: (f64, f64)| VaeMeta {
        kind: "vae".into(),
        contract: CONTRACT_VERSION,
        vae: config.clone(),
        run: run.clone(),
        step,
        scale_factor: 1.0 / stats.1,
        latent_mean: stats.0,
        command: command.to_string(),
        minisora_version: env!("CARGO_PKG_VERSION").into(),
    };
    let checkpoint_now = |step: u64, opt: &AdamW, ema: &HashMap<String, Tensor>| -> Result<()> {
        // the latent statistics of the model as it will be used: the average
        let (averaged, averaged_vars) = build(config, device)?;
        checkpoint::load_into(&averaged_vars, ema, &ckpt_dir)?;
        let stats = latent_stats(&averaged, &data, 32, device)?;
        save(&ckpt_dir, &meta(step, stats), ema, Some((&varmap, opt)))
    };
    let vars: Vec<Var> = varmap.all_vars();
    let threads = parallel::worker_threads(run.shards);
    let latent_shape = {
        let [lt, lh, lw] = config.latent_size([canvas.frames, canvas.height, canvas.width])?;
        [run.batch, config.latent_channels, lt, lh, lw]
    };
    for step in start..end {
        let t0 = Instant::now();
        let eps = randn(
            &mut Rng::derive(run.seed ^ 0x0005_eed0_fe95, step),
            &latent_shape,
            device,
        )?;
        let out = parallel::sharded_grads(run.shards, threads, &vars, |shard| {
            let (first, len) = parallel::shard_rows(run.batch, run.shards, shard);
            let (x, _) = data.rows(step, run.batch, first, len, device)?;
            let (loss, mse, kl) = vae.loss(&x, &eps.narrow(0, first, len)?)?;
            Ok(ShardLoss {
                loss,
                figures: vec![
                    mse.to_scalar::<f32>()? as f64,
                    kl.to_scalar::<f32>()? as f64,
                ],
            })
        })?;
        let (loss_v, mse_v, kl_v) = (out.loss, out.figures[0], out.figures[1]);
        if !loss_v.is_finite() {
            invalid!(
                "the loss became {loss_v} at step {}: stopping; the last checkpoint ({}) is kept. Try a lower --lr.",
                step + 1,
                ckpt_dir.display()
            );
        }
        let lr = learning_rate(step, run.steps, run.warmup, run.lr, run.lr_floor);
        opt.step(&out.grads, lr)?;
        update_ema(&mut ema, &varmap, run.ema_decay)?;
        // frames live in [-1, 1]: an error of 2 is the full 8-bit range
        let psnr = 10.0 * (4.0 / mse_v.max(1e-12)).log10();
        let cps = run.batch as f64 / t0.elapsed().as_secs_f64();
        log.append(&format!(
            "{},{lr:.6e},{loss_v:.6},{mse_v:.6},{kl_v:.6},{psnr:.3},{cps:.2}",
            step + 1
        ))?;
        on_step(&StepReport {
            step: step + 1,
            total: run.steps,
            lr,
            loss: loss_v,
            extra: vec![("psnr", psnr), ("kl", kl_v)],
            clips_per_s: cps,
        });
        if (step + 1) % run.checkpoint_every == 0 && step + 1 < end {
            checkpoint_now(step + 1, &opt, &ema)?;
        }
    }
    if end > start || !resume {
        checkpoint_now(end, &opt, &ema)?;
    }
    Ok(TrainOutcome {
        step: end,
        checkpoint: ckpt_dir,
        seconds: started.elapsed().as_secs_f64(),
    })
}
