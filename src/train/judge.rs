//! Training the judge ([`crate::judge`]) on an autoencoder's latents of
//! Shapes World, and its checkpoints.
//!
//! Each training example is a scene `S` with its render `R(S)`, a scene `S'`
//! one mistake away rendered with the same seed (so the two clips differ by
//! the mistake alone) and a caption one mistake away. The judge sees three
//! pairs: `(R(S), S)` should match, `(R(S), caption')` and `(R(S'), S)`
//! should not (logistic loss on each; the positive weighs as much as both
//! negatives together). The second pair teaches it to read a caption, the
//! third to rank clips for one caption, which is what choosing among
//! candidates asks.
//!
//! A checkpoint directory holds `config.json`, `model.safetensors` (the
//! moving average of the weights, what reranking uses) and, for resuming,
//! `train.safetensors` and `optimizer.safetensors`. The judge reads the
//! latents of one autoencoder: the checkpoint names it by a fingerprint of
//! its weights, and a model refuses a judge trained on another.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::{learning_rate, AdamW, AdamWConfig};
use super::parallel::{self, ShardLoss};
use super::vae::{self as vae_train, VaeCheckpoint};
use super::{
    fields_that_differ, seeded_init, update_ema, CsvLog, RunConfig, Session, StepReport,
    TrainOutcome, HELD_OUT,
};
use crate::checkpoint::{self, read_json, read_tensors, write_json, write_tensors};
use crate::data::clips::shapes_world_item;
use crate::data::shapes_world::{render, Canvas, Scene, CONTRACT_VERSION};
use crate::judge::{JudgeConfig, JudgeModel};
use crate::rng::Rng;
use crate::text::Tokenizer;
use crate::video::frames_to_tensor;
use crate::{invalid, Error, Result};

/// `config.json` of a judge checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JudgeMeta {
    /// Always `"judge"`.
    pub kind: String,
    pub contract: u32,
    pub judge: JudgeConfig,
    pub tokenizer: Tokenizer,
    pub run: RunConfig,
    pub step: u64,
    /// [`fingerprint`] of the autoencoder weights whose latents it read.
    pub vae_fingerprint: String,
    /// On held-out examples at the end of the run ([`held_out_accuracy`]):
    /// the share ranking a clip above its confusion's render, and above a
    /// confused caption.
    #[serde(default)]
    pub held_out: Option<[f64; 2]>,
    pub command: String,
    pub minisora_version: String,
}

/// A judge ready to score: its settings and its weights for inference.
pub struct JudgeCheckpoint {
    pub meta: JudgeMeta,
    pub model: JudgeModel,
}

impl JudgeCheckpoint {
    /// Scores each latent of `z` `(B, C, T', H', W')` against `caption`: the
    /// judge's logit, higher is a better match.
    pub fn scores(&self, z: &Tensor, caption: &str) -> Result<Vec<f64>> {
        let b = z.dim(0)?;
        let tok = &self.meta.tokenizer;
        let ids =
            Tensor::from_vec(tok.encode(caption)?, (1, tok.max_len), z.device())?.repeat((b, 1))?;
        let s: Vec<f32> = self.model.judge.forward(z, &ids)?.to_vec1()?;
        Ok(s.into_iter().map(f64::from).collect())
    }
}

/// A fingerprint of a file's bytes (64-bit FNV-1a, in hex): enough to tell
/// one autoencoder's weights from another's, not a cryptographic hash.
pub fn fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// Loads a judge checkpoint for inference in `dtype`; with `vae_dir`, checks
/// that it was trained on that autoencoder's latents.
pub fn load(
    dir: &Path,
    vae_dir: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<JudgeCheckpoint> {
    checkpoint::recover(dir)?;
    if !dir.is_dir() {
        invalid!("{}: no such judge directory", dir.display());
    }
    let meta: JudgeMeta = checkpoint::read_config(dir, "judge", "a judge")?;
    meta.tokenizer
        .validate()
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    if let Some(vae_dir) = vae_dir {
        if fingerprint(&vae_dir.join("model.safetensors"))? != meta.vae_fingerprint {
            invalid!(
                "{}: the judge was trained on another autoencoder's latents than {}'s",
                dir.display(),
                vae_dir.display()
            );
        }
    }
    let model = JudgeModel::new(&meta.judge, device)?;
    let weights = dir.join("model.safetensors");
    checkpoint::load_into(&model.varmap, &read_tensors(&weights, device)?, &weights)?;
    let model = model.for_inference(dtype)?;
    Ok(JudgeCheckpoint { meta, model })
}

/// The judge of a text-to-video checkpoint `dir` (its `judge/` folder,
/// checked against its `vae/`), if it has one.
pub fn load_beside(dir: &Path, device: &Device, dtype: DType) -> Result<Option<JudgeCheckpoint>> {
    let judge = dir.join("judge");
    checkpoint::recover(&judge)?;
    if !judge.is_dir() {
        return Ok(None);
    }
    load(&judge, Some(&dir.join("vae")), device, dtype).map(Some)
}

/// Writes a finished judge run's checkpoint `ckpt_dir` into the
/// text-to-video model `model` as `model/judge/` (settings and averaged
/// weights only), replacing any judge there; returns its settings.
pub fn install(ckpt_dir: &Path, model: &Path) -> Result<JudgeMeta> {
    let meta: JudgeMeta = checkpoint::read_config(ckpt_dir, "judge", "a judge")?;
    if fingerprint(&model.join("vae/model.safetensors"))? != meta.vae_fingerprint {
        invalid!(
            "{}: the judge was trained on another autoencoder than {}'s",
            ckpt_dir.display(),
            model.display()
        );
    }
    checkpoint::write_dir(&model.join("judge"), |tmp| {
        for name in ["config.json", "model.safetensors"] {
            std::fs::copy(ckpt_dir.join(name), tmp.join(name))
                .map_err(|e| Error::io(ckpt_dir.join(name), e))?;
        }
        Ok(())
    })?;
    Ok(meta)
}

/// Example `id` of a run of `seed`: the scene, a scene one mistake away
/// (its clip is the negative clip), a caption one mistake away (inside the
/// grammar), and the render seed both clips use.
pub fn example(seed: u64, id: u64, two_objects: Option<f64>) -> (Scene, Scene, Scene, u64) {
    let (scene, render_seed) = shapes_world_item(seed, id as usize, two_objects);
    let mut rng = Rng::derive(seed ^ 0x1ad6_e5c0, id);
    let clip = scene.confusion(&mut rng);
    let caption = loop {
        let s = scene.confusion(&mut rng);
        if s.objects.len() <= 2 {
            break s;
        }
    };
    (scene, clip, caption, render_seed)
}

/// The three pairs of examples `ids`: latents `(3n, ...)` (each clip, each
/// clip again, each confusion's clip) and captions `(3n, L)` (each caption,
/// each confused caption, each caption again).
fn pairs(
    vae: &VaeCheckpoint,
    tokenizer: &Tokenizer,
    canvas: Canvas,
    run: &RunConfig,
    ids: impl Iterator<Item = u64>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut clips, mut confused) = (Vec::new(), Vec::new());
    let (mut own, mut wrong) = (Vec::new(), Vec::new());
    for id in ids {
        let (scene, clip, caption, render_seed) = example(run.seed, id, run.two_objects);
        for (s, out) in [(&scene, &mut clips), (&clip, &mut confused)] {
            out.push(frames_to_tensor(
                &render(s, canvas, render_seed)?.frames.view(),
                device,
            )?);
        }
        own.extend(tokenizer.encode(&scene.caption())?);
        wrong.extend(tokenizer.encode(&caption.caption())?);
    }
    let n = clips.len();
    let frames = Tensor::cat(&[clips, confused].concat(), 0)?;
    let z = encode(vae, &frames)?;
    let (z, z_wrong) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?);
    let l = tokenizer.max_len;
    let own = Tensor::from_vec(own, (n, l), device)?;
    let wrong = Tensor::from_vec(wrong, (n, l), device)?;
    Ok((
        Tensor::cat(&[&z, &z, &z_wrong], 0)?,
        Tensor::cat(&[&own, &wrong, &own], 0)?,
    ))
}

/// Normalised latents (the DiT's) of frames `(B, 3, T, H, W)`.
fn encode(vae: &VaeCheckpoint, frames: &Tensor) -> Result<Tensor> {
    let (scale, shift) = (vae.meta.scale_factor, vae.meta.latent_mean);
    Ok(vae
        .vae
        .encode(&frames.to_dtype(vae.dtype()?)?)?
        .mean
        .detach()
        .to_dtype(DType::F32)?
        .affine(scale, -shift * scale)?)
}

/// `log(1 + e^x)`, stable for large `|x|`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?)
}

/// The loss of logits `(3n,)` ordered as [`pairs`] makes them, with the two
/// shares of examples ranked right (clip over confused clip, caption over
/// confused caption).
fn loss_and_accuracy(s: &Tensor) -> Result<(Tensor, [f64; 2])> {
    let n = s.dim(0)? / 3;
    let (pos, wrong_caption, wrong_clip) = (
        s.narrow(0, 0, n)?,
        s.narrow(0, n, n)?,
        s.narrow(0, 2 * n, n)?,
    );
    let loss = ((softplus(&pos.neg()?)?.mean_all()?
        + (softplus(&wrong_caption)?.mean_all()? * 0.5)?)?
        + (softplus(&wrong_clip)?.mean_all()? * 0.5)?)?;
    let share = |other: &Tensor| -> Result<f64> {
        Ok(pos
            .gt(other)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()? as f64)
    };
    Ok((loss, [share(&wrong_clip)?, share(&wrong_caption)?]))
}

/// On `count` held-out examples (ids training never draws): the share where
/// the judge rates the clip above its confusion's render for the caption,
/// and the clip's caption above the confused caption.
pub fn held_out_accuracy(
    judge: &JudgeCheckpoint,
    vae: &VaeCheckpoint,
    canvas: Canvas,
    count: usize,
    device: &Device,
) -> Result<[f64; 2]> {
    let mut right = [0.0; 2];
    let chunk = 32;
    for start in (0..count).step_by(chunk) {
        let len = chunk.min(count - start);
        let ids = (start..start + len).map(|i| HELD_OUT + i as u64);
        let (z, captions) = pairs(
            vae,
            &judge.meta.tokenizer,
            canvas,
            &judge.meta.run,
            ids,
            device,
        )?;
        let s = judge.model.judge.forward(&z, &captions)?;
        let (_, acc) = loss_and_accuracy(&s)?;
        for k in 0..2 {
            right[k] += acc[k] * len as f64;
        }
    }
    Ok(right.map(|r| r / count.max(1) as f64))
}

/// Settings of a judge run beyond the shared [`RunConfig`].
#[derive(Clone, Debug)]
pub struct JudgeJob<'a> {
    /// Its vocabulary and caption length are set from the Shapes World
    /// tokenizer of `judge.max_len` tokens.
    pub judge: JudgeConfig,
    pub run: RunConfig,
    /// The autoencoder whose latents it reads.
    pub vae_dir: &'a Path,
}

/// Held-out examples scored at the end of a run.
pub const HELD_OUT_EXAMPLES: usize = 256;

/// Trains (or resumes) a judge in `out` (`out/checkpoint/`, `out/log.csv`).
pub fn train(
    out: &Path,
    job: &JudgeJob,
    session: &Session,
    device: &Device,
    mut on_step: impl FnMut(&StepReport),
) -> Result<TrainOutcome> {
    let run = &job.run;
    run.validate()?;
    if run.data != "shapes" {
        invalid!(
            "the judge trains on Shapes World only (--data shapes): its wrong examples are drawn from the grammar, got --data {}",
            run.data
        );
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    checkpoint::recover(&ckpt_dir)?;
    let vae = vae_train::load(job.vae_dir, device)
        .and_then(|v| v.for_inference(DType::F32))
        .map_err(|e| Error::Invalid(format!("the autoencoder: {e}")))?;
    let vae_fingerprint = fingerprint(&job.vae_dir.join("model.safetensors"))?;
    let canvas = run.canvas()?;
    if vae.meta.vae.latent_channels != job.judge.latent_channels {
        invalid!(
            "the autoencoder makes {} latent channels, the judge reads {}",
            vae.meta.vae.latent_channels,
            job.judge.latent_channels
        );
    }
    let tokenizer = super::dit::shapes_world_tokenizer(job.judge.max_len);
    tokenizer.validate()?;
    let config = JudgeConfig {
        vocab_size: tokenizer.vocab_size(),
        ..job.judge.clone()
    };
    let model = JudgeModel::new(&config, device)?;
    let vars = model
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("poisoned".into()))?
        .clone();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut ema: HashMap<String, Tensor> = HashMap::new();
    let start = if session.resume {
        let meta: JudgeMeta = read_json(&ckpt_dir.join("config.json"))
            .map_err(|e| Error::Invalid(format!("cannot resume: {e}")))?;
        let same_run = RunConfig {
            steps: run.steps,
            ..meta.run.clone()
        };
        let mut differ = fields_that_differ(&meta.judge, &config);
        differ.extend(fields_that_differ(&same_run, run));
        if meta.vae_fingerprint != vae_fingerprint {
            differ.push("the autoencoder".into());
        }
        if !differ.is_empty() {
            invalid!(
                "cannot resume: {} was trained with other settings (differing: {}); give the \
                 settings it was started with: only --steps may change",
                ckpt_dir.display(),
                differ.join(", ")
            );
        }
        let raw = ckpt_dir.join("train.safetensors");
        checkpoint::load_into(&model.varmap, &read_tensors(&raw, device)?, &raw)?;
        ema = read_tensors(&ckpt_dir.join("model.safetensors"), device)?;
        opt.load_state(
            &read_tensors(&ckpt_dir.join("optimizer.safetensors"), device)?,
            meta.step,
        )?;
        meta.step
    } else {
        if ckpt_dir.exists() {
            invalid!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", ckpt_dir.display());
        }
        seeded_init(&model.varmap, run.seed)?;
        update_ema(&mut ema, &model.varmap, 0.0)?;
        0
    };
    let mut log = CsvLog::open(
        &out.join("log.csv"),
        "step,lr,loss,clip_rank,caption_rank,clips_per_s",
        session.resume.then_some(start),
    )?;
    let meta = |step: u64, held_out: Option<[f64; 2]>| JudgeMeta {
        kind: "judge".into(),
        contract: CONTRACT_VERSION,
        judge: config.clone(),
        tokenizer: tokenizer.clone(),
        run: run.clone(),
        step,
        vae_fingerprint: vae_fingerprint.clone(),
        held_out,
        command: session.command.clone(),
        minisora_version: env!("CARGO_PKG_VERSION").into(),
    };
    let save = |step: u64,
                opt: &AdamW,
                ema: &HashMap<String, Tensor>,
                held_out: Option<[f64; 2]>|
     -> Result<()> {
        let raw = checkpoint::named_tensors(&model.varmap)?;
        checkpoint::write_dir(&ckpt_dir, |tmp| {
            write_json(&tmp.join("config.json"), &meta(step, held_out))?;
            write_tensors(&tmp.join("model.safetensors"), ema)?;
            write_tensors(&tmp.join("train.safetensors"), &raw)?;
            write_tensors(&tmp.join("optimizer.safetensors"), &opt.state()?)
        })
    };
    let end = session.stop_at.unwrap_or(run.steps).min(run.steps);
    let started = Instant::now();
    let all_vars = model.varmap.all_vars();
    let threads = parallel::worker_threads(run.shards);
    for step in start..end {
        let t0 = Instant::now();
        let out = parallel::sharded_grads(run.shards, threads, &all_vars, |shard| {
            let (first, len) = parallel::shard_rows(run.batch, run.shards, shard);
            let ids = (first..first + len).map(|i| step * run.batch as u64 + i as u64);
            let (z, captions) = pairs(&vae, &tokenizer, canvas, run, ids, device)?;
            let (loss, acc) = loss_and_accuracy(&model.judge.forward(&z, &captions)?)?;
            Ok(ShardLoss {
                loss,
                figures: acc.to_vec(),
            })
        })?;
        let loss_v = out.loss;
        if !loss_v.is_finite() {
            invalid!("the loss became {loss_v} at step {}: stopping; the last checkpoint ({}) is kept. Try a lower --lr.", step + 1, ckpt_dir.display());
        }
        let lr = learning_rate(step, run.steps, run.warmup, run.lr, run.lr_floor);
        opt.step(&out.grads, lr)?;
        update_ema(&mut ema, &model.varmap, run.ema_decay)?;
        let cps = run.batch as f64 / t0.elapsed().as_secs_f64();
        let (clip_rank, caption_rank) = (out.figures[0], out.figures[1]);
        log.append(&format!(
            "{},{lr:.6e},{loss_v:.6},{clip_rank:.4},{caption_rank:.4},{cps:.2}",
            step + 1
        ))?;
        on_step(&StepReport {
            step: step + 1,
            total: run.steps,
            lr,
            loss: loss_v,
            extra: vec![("clip_rank", clip_rank), ("caption_rank", caption_rank)],
            clips_per_s: cps,
        });
        if (step + 1) % run.checkpoint_every == 0 && step + 1 < end {
            save(step + 1, &opt, &ema, None)?;
        }
    }
    if end > start || !session.resume {
        save(end, &opt, &ema, None)?;
        // the finished weights scored on examples training never drew
        if end == run.steps {
            let judge = load(&ckpt_dir, None, device, DType::F32)?;
            let acc = held_out_accuracy(&judge, &vae, canvas, HELD_OUT_EXAMPLES, device)?;
            save(end, &opt, &ema, Some(acc))?;
        }
    }
    Ok(TrainOutcome {
        step: end,
        checkpoint: ckpt_dir,
        seconds: started.elapsed().as_secs_f64(),
    })
}
