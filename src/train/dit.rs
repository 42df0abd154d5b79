//! Training the text encoder and the DiT together on the compression
//! network's latents with the rectified-flow objective, and their
//! checkpoints.
//!
//! A checkpoint directory is a whole text-to-video model: `config.json`,
//! `model.safetensors` (the EMA weights that generation uses),
//! `train.safetensors` and `optimizer.safetensors` (raw weights and AdamW
//! moments, for resuming), and `vae/`, a copy of the autoencoder it was
//! trained on.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::optim::{learning_rate, AdamW, AdamWConfig};
use super::parallel::{self, ShardLoss};
use super::vae::{self as vae_train, VaeCheckpoint};
use super::{
    fields_that_differ, randn, seeded_init, update_ema, CsvLog, RunConfig, Session, StepReport,
    TrainOutcome,
};
use crate::checkpoint::{self, read_json, read_tensors, write_json, write_tensors};
use crate::data::shapes_world::{Scene, CONTRACT_VERSION};
use crate::diffusion::{interpolate, logit_normal_mixed};
use crate::dit::{Dit, DitConfig};
use crate::rng::Rng;
use crate::text::{TextConfig, TextEncoder, Tokenizer};
use crate::{invalid, Error, Result};

/// `config.json` of a text-to-video checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DitMeta {
    /// Always `"dit"`.
    pub kind: String,
    pub contract: u32,
    pub dit: DitConfig,
    pub text: TextConfig,
    pub tokenizer: Tokenizer,
    pub run: RunConfig,
    pub step: u64,
    /// Probability that a training caption is replaced by the null caption,
    /// so the model also learns the unconditional velocity (for guidance).
    pub cfg_dropout: f64,
    /// The timestep shift training times were drawn with
    /// ([`crate::diffusion::logit_normal`]); sampling uses it too unless told
    /// otherwise. Models from before it existed were trained unshifted.
    #[serde(default = "unshifted")]
    pub time_shift: f64,
    /// The share of training times drawn without the shift
    /// ([`crate::diffusion::logit_normal_mixed`]); 0 for models from before it.
    #[serde(default)]
    pub time_mix: f64,
    /// Weight of the rival-caption ranking term ([`DitJob::contrast`]); 0
    /// (none) for models from before it.
    #[serde(default)]
    pub contrast: f64,
    /// Its margin, in mean squared velocity error ([`DitJob::contrast_margin`]).
    #[serde(default)]
    pub contrast_margin: f64,
    /// The model this one was fine-tuned from ([`DitJob::init`]), as given;
    /// `None` for a model trained from random weights.
    #[serde(default)]
    pub init: Option<String>,
    pub command: String,
    pub minisora_version: String,
}

/// The rival-caption ranking term ([`DitJob::contrast`]) applies to
/// training times from here to 1 only: the high noise where an object's
/// shape, size and presence are decided, and where candidates are scored
/// ([`crate::pipeline::score_times`]). Near the data the noisy latent shows
/// the clip whatever the caption says, so the best prediction under a rival
/// caption is nearly the caption's own, and a margin there would teach the
/// model to ignore what it sees.
pub const CONTRAST_FROM: f32 = 0.5;

fn unshifted() -> f64 {
    1.0
}

/// Captions encoded for the DiT ([`TextToVideo::encode`]).
pub struct Caption {
    pub context: Tensor,
    pub pooled: Tensor,
    pub keep: Tensor,
}

impl Caption {
    /// Captions `start..start + len` of these.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Caption> {
        Ok(Caption {
            context: self.context.narrow(0, start, len)?,
            pooled: self.pooled.narrow(0, start, len)?,
            keep: self.keep.narrow(0, start, len)?,
        })
    }
}

/// The text encoder and DiT with their variables.
pub struct TextToVideo {
    pub text: TextEncoder,
    pub dit: Dit,
    pub varmap: VarMap,
}

impl TextToVideo {
    pub fn new(dit: &DitConfig, text: &TextConfig, device: &Device) -> Result<Self> {
        if dit.context_dim != text.width || dit.context_len != text.max_len {
            invalid!(
                "the DiT reads {} text tokens of width {}, the text encoder makes {} of width {}",
                dit.context_len,
                dit.context_dim,
                text.max_len,
                text.width
            );
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        Ok(Self {
            text: TextEncoder::new(text, vb.pp("text"))?,
            dit: Dit::new(dit, vb.pp("dit"))?,
            varmap,
        })
    }

    /// The same model for inference, its weights in `dtype` (bf16 or f16 on
    /// a GPU; training stays in f32): the modules are built on plain
    /// tensors, so a forward records no backward graph (see
    /// [`checkpoint::inference_tensors`]).
    pub fn for_inference(&self, dtype: DType) -> Result<Self> {
        let (varmap, vb) = checkpoint::inference_builder(&self.varmap, dtype)?;
        Ok(Self {
            text: TextEncoder::new(&self.text.config, vb.pp("text"))?,
            dit: Dit::new(&self.dit.config, vb.pp("dit"))?,
            varmap,
        })
    }

    /// Velocity for latents `x_t` `(B, C, T', H', W')` at times `t` `(B,)`
    /// and captions `ids` `(B, L)`; `estimate`, the previous clean estimate
    /// of each clip (the shape of `x_t`), only for a self-conditioning DiT.
    pub fn velocity(
        &self,
        x_t: &Tensor,
        estimate: Option<&Tensor>,
        t: &Tensor,
        ids: &Tensor,
    ) -> Result<Tensor> {
        self.velocity_for(&self.encode(ids)?, x_t, estimate, t)
    }

    /// The captions `ids` `(B, L)` as the DiT reads them: context, pooled
    /// features and the word mask; encoded once for several velocities.
    pub fn encode(&self, ids: &Tensor) -> Result<Caption> {
        let keep = ids.ne(crate::text::PAD_ID)?.to_dtype(DType::F32)?;
        let (context, pooled) = self.text.forward(ids)?;
        Ok(Caption {
            context,
            pooled,
            keep,
        })
    }

    /// [`TextToVideo::velocity`] for captions already encoded.
    pub fn velocity_for(
        &self,
        caption: &Caption,
        x_t: &Tensor,
        estimate: Option<&Tensor>,
        t: &Tensor,
    ) -> Result<Tensor> {
        let Caption {
            context,
            pooled,
            keep,
        } = caption;
        self.dit
            .forward_with_estimate(x_t, estimate, t, context, pooled, keep)
    }
}

/// The Shapes World vocabulary: every word of the grammar, as the training
/// captions use them.
pub fn shapes_world_tokenizer(max_len: usize) -> Tokenizer {
    let mut rng = Rng::new(0);
    let captions: Vec<String> = (0..4000)
        .map(|_| Scene::sample(&mut rng).caption())
        .collect();
    Tokenizer::from_captions(captions.iter().map(String::as_str), max_len)
}

/// [`load`] for inference: every stage with its weights in `dtype`, built
/// to run forward only (no backward graph; see
/// [`TextToVideo::for_inference`]).
pub fn load_as(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(DitMeta, TextToVideo, VaeCheckpoint)> {
    let (meta, model, vae) = load(dir, device)?;
    Ok((meta, model.for_inference(dtype)?, vae.for_inference(dtype)?))
}

/// Loads a text-to-video checkpoint (EMA weights) with its autoencoder.
pub fn load(dir: &Path, device: &Device) -> Result<(DitMeta, TextToVideo, VaeCheckpoint)> {
    checkpoint::recover(dir)?;
    if !dir.is_dir() {
        invalid!("{}: no such checkpoint directory", dir.display());
    }
    let meta: DitMeta = checkpoint::read_config(dir, "dit", "a text-to-video model")?;
    if meta.contract != CONTRACT_VERSION {
        invalid!(
            "{}: trained on Shapes World v{}, this minisora implements v{CONTRACT_VERSION}",
            dir.display(),
            meta.contract
        );
    }
    meta.tokenizer
        .validate()
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    if meta.tokenizer.max_len != meta.text.max_len
        || meta.tokenizer.vocab_size() != meta.text.vocab_size
    {
        invalid!(
            "{}: the tokenizer ({} words, {} tokens a caption) does not match the text encoder ({} words, {} tokens)",
            dir.display(),
            meta.tokenizer.vocab_size(),
            meta.tokenizer.max_len,
            meta.text.vocab_size,
            meta.text.max_len
        );
    }
    let model = TextToVideo::new(&meta.dit, &meta.text, device)?;
    let weights = dir.join("model.safetensors");
    checkpoint::load_into(&model.varmap, &read_tensors(&weights, device)?, &weights)?;
    let vae = vae_train::load(&dir.join("vae"), device)?;
    Ok((meta, model, vae))
}

fn copy_vae(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(name), to.join(name)).map_err(|e| Error::io(from.join(name), e))?;
    }
    Ok(())
}

/// Settings of a DiT run beyond the shared [`RunConfig`].
#[derive(Clone, Debug)]
pub struct DitJob<'a> {
    pub dit: DitConfig,
    pub text: TextConfig,
    pub run: RunConfig,
    /// The autoencoder checkpoint to train on (copied into the checkpoint).
    pub vae_dir: &'a Path,
    pub cfg_dropout: f64,
    /// Timestep shift of the training times (1: plain logit-normal).
    pub time_shift: f64,
    /// Share of the training times drawn unshifted (0: all shifted).
    pub time_mix: f64,
    /// Weight of a ranking term that teaches the model to tell a clip's
    /// caption from the captions it is most easily taken for (0: none).
    /// For each clip whose caption is of the Shapes World grammar and not
    /// dropped, and whose training time is at least [`CONTRAST_FROM`], one
    /// rival caption ([`crate::pipeline::rival_captions`]: an object with
    /// another shape or size, or one of two objects alone) is drawn, and
    /// the model predicts the same noisy latent under it too;
    /// the term is `relu(margin - (err_rival - err_caption))`, each error
    /// the clip's mean squared velocity error, averaged over the batch. It
    /// costs a second forward and backward of every clip it applies to.
    pub contrast: f64,
    /// The margin of that term, in mean squared velocity error.
    pub contrast_margin: f64,
    /// Fine-tune this text-to-video checkpoint instead of starting from
    /// random weights: its architecture, vocabulary and autoencoder must be
    /// the job's, its weights (the moving average) start both the trained
    /// and the averaged weights, and the optimiser starts afresh.
    pub init: Option<&'a Path>,
}

/// The rival-caption ranking term of one shard ([`DitJob::contrast`]):
/// `sum over rows of relu(margin - (err_rival - err_caption)) / B`, where
/// `rows` are the clips the term applies to, `rival_ids` their rival
/// captions `(rows, L)` flattened, `v` the velocities predicted under the
/// clips' own captions, and `B` the shard's clip count. Returns the term
/// and the summed gap of those clips.
///
/// Only those clips go through the second forward and backward. The term is
/// what the same sum over every clip of the shard, the others masked to
/// zero, comes to, bit for bit: a clip's prediction depends on its own
/// inputs only, and a masked clip hands every sum a zero gradient.
fn rival_rank(
    model: &TextToVideo,
    (x_t, estimate, t, target): (&Tensor, Option<&Tensor>, &Tensor, &Tensor),
    (v, rows, rival_ids): (&Tensor, &[u32], Vec<u32>),
    max_len: usize,
    margin: f64,
) -> Result<(Tensor, f64)> {
    let len = x_t.dim(0)?;
    if rows.is_empty() {
        return Ok((Tensor::zeros((), DType::F32, x_t.device())?, 0.0));
    }
    let device = x_t.device();
    let idx = Tensor::from_slice(rows, rows.len(), device)?;
    let pick = |x: &Tensor| x.index_select(&idx, 0);
    let estimate = estimate.map(pick).transpose()?;
    let rival_ids = Tensor::from_vec(rival_ids, (rows.len(), max_len), device)?;
    let rival = model.encode(&rival_ids)?;
    let v_rival = model.velocity_for(&rival, &pick(x_t)?, estimate.as_ref(), &pick(t)?)?;
    let per_clip = |v: &Tensor, target: &Tensor| (v - target)?.sqr()?.flatten_from(1)?.mean(1);
    let gap =
        (per_clip(&v_rival, &pick(target)?)? - per_clip(v, target)?.index_select(&idx, 0)?)?;
    let rank = (gap.affine(-1.0, margin)?.relu()?.sum_all()? / len as f64)?;
    let gap_sum = gap.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((rank, gap_sum))
}

/// The vocabulary a run trains with: the data's own, or for a fine-tune the
/// initial model's, which must then cover every training caption.
fn run_tokenizer(
    data: &super::DataSource,
    init: Option<&DitMeta>,
    max_len: usize,
) -> Result<Tokenizer> {
    let Some(init) = init else {
        return Ok(match data {
            super::DataSource::Shapes { .. } => shapes_world_tokenizer(max_len),
            super::DataSource::Folder { clips, .. } => {
                Tokenizer::from_captions(clips.iter().map(|c| c.caption.as_str()), max_len)
            }
        });
    };
    match data {
        super::DataSource::Shapes { .. } => {
            if init.tokenizer != shapes_world_tokenizer(max_len) {
                invalid!("the model to fine-tune was trained on other captions than Shapes World's; its vocabulary does not cover them");
            }
        }
        super::DataSource::Folder { clips, .. } => {
            for clip in clips {
                init.tokenizer.encode(&clip.caption).map_err(|e| {
                    Error::Invalid(format!(
                        "clip \"{}\": the model to fine-tune cannot read its caption: {e}",
                        clip.name
                    ))
                })?;
            }
        }
    }
    Ok(init.tokenizer.clone())
}

/// Checks that `init` can be fine-tuned as `job`, returning its settings.
fn init_meta(init: &Path, job: &DitJob) -> Result<DitMeta> {
    checkpoint::recover(init)?;
    let meta: DitMeta = checkpoint::read_config(init, "dit", "a text-to-video model")
        .map_err(|e| Error::Invalid(format!("the model to fine-tune: {e}")))?;
    meta.tokenizer
        .validate()
        .map_err(|e| Error::Invalid(format!("the model to fine-tune: {e}")))?;
    if meta.dit != job.dit {
        invalid!(
            "{}: its DiT ({:?}) is not the one asked for ({:?}); a fine-tune keeps the architecture",
            init.display(),
            meta.dit,
            job.dit
        );
    }
    // the same autoencoder: the same weights and the same latent normalisation
    let vae_of = |dir: &Path| -> Result<(vae_train::VaeMeta, Vec<u8>)> {
        let weights = dir.join("model.safetensors");
        Ok((
            checkpoint::read_config(dir, "vae", "an autoencoder")?,
            std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?,
        ))
    };
    let ((mine, my_weights), (theirs, their_weights)) =
        (vae_of(&init.join("vae"))?, vae_of(job.vae_dir)?);
    if my_weights != their_weights
        || mine.vae != theirs.vae
        || mine.scale_factor != theirs.scale_factor
        || mine.latent_mean != theirs.latent_mean
    {
        invalid!(
            "{} was trained on another autoencoder than {}: fine-tune it on its own ({})",
            init.display(),
            job.vae_dir.display(),
            init.join("vae").display()
        );
    }
    Ok(meta)
}

/// Refuses a rival-contrast weight or margin that is not a number of at
/// least 0 ([`DitJob::contrast`]).
pub fn validate_contrast(weight: f64, margin: f64) -> Result<()> {
    for (what, v) in [("--contrast", weight), ("--contrast-margin", margin)] {
        if !(v.is_finite() && v >= 0.0) {
            invalid!("{what} must be a number of at least 0, got {v}");
        }
    }
    Ok(())
}

/// Trains (or resumes) text encoder and DiT in `out` (`out/checkpoint/`,
/// `out/log.csv`), as [`super::vae::train`] does for the autoencoder.
pub fn train(
    out: &Path,
    job: &DitJob,
    session: &Session,
    device: &Device,
    mut on_step: impl FnMut(&StepReport),
) -> Result<TrainOutcome> {
    let run = &job.run;
    run.validate()?;
    job.dit.validate()?;
    if !(job.time_shift.is_finite() && job.time_shift > 0.0) {
        invalid!(
            "the time shift must be a positive number, got {}",
            job.time_shift
        );
    }
    if !(0.0..=1.0).contains(&job.time_mix) {
        invalid!(
            "the unshifted share of training times must be in [0, 1], got {}",
            job.time_mix
        );
    }
    validate_contrast(job.contrast, job.contrast_margin)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    checkpoint::recover(&ckpt_dir)?;
    // forward only: its latents need no backward graph
    let vae = vae_train::load(job.vae_dir, device)
        .and_then(|v| v.for_inference(DType::F32))
        .map_err(|e| Error::Invalid(format!("the autoencoder: {e}")))?;
    let canvas = run.canvas()?;
    let [lt, lh, lw] = vae
        .meta
        .vae
        .latent_size([canvas.frames, canvas.height, canvas.width])?;
    if vae.meta.vae.latent_channels != job.dit.latent_channels {
        invalid!(
            "the autoencoder makes {} latent channels, the DiT takes {}",
            vae.meta.vae.latent_channels,
            job.dit.latent_channels
        );
    }
    let data = super::data_source(&run.data, canvas, run.seed, run.two_objects)?;
    let init = job.init.map(|dir| init_meta(dir, job)).transpose()?;
    let tokenizer = run_tokenizer(&data, init.as_ref(), job.text.max_len)?;
    tokenizer.validate()?;
    if let (true, super::DataSource::Folder { clips, .. }) = (job.contrast > 0.0, &data) {
        // a rival is of the grammar and in the vocabulary, or it is masked out
        let has_rival = |caption: &str| {
            crate::pipeline::rival_captions(caption)
                .iter()
                .any(|r| tokenizer.encode(r).is_ok())
        };
        if !clips.iter().any(|c| has_rival(&c.caption)) {
            invalid!(
                "--contrast weighs each caption against rival captions of the Shapes World grammar in the model's vocabulary, and no caption of the {} in {} has one: the term would add nothing",
                clips.len(),
                run.data
            );
        }
    }
    let text_cfg = TextConfig {
        vocab_size: tokenizer.vocab_size(),
        ..job.text.clone()
    };
    let model = TextToVideo::new(&job.dit, &text_cfg, device)?;
    let vars = model
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("poisoned".into()))?
        .clone();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut ema: HashMap<String, Tensor> = HashMap::new();
    let init_name = job.init.map(|d| d.display().to_string());
    let start = if session.resume {
        let meta: DitMeta = read_json(&ckpt_dir.join("config.json"))
            .map_err(|e| Error::Invalid(format!("cannot resume: {e}")))?;
        let same_run = RunConfig {
            steps: run.steps,
            ..meta.run.clone()
        };
        let differ: Vec<String> = [
            ("the DiT's", fields_that_differ(&meta.dit, &job.dit)),
            (
                "the caption encoder's",
                fields_that_differ(&meta.text, &text_cfg),
            ),
            ("the run's", fields_that_differ(&same_run, run)),
        ]
        .into_iter()
        .filter(|(_, fields)| !fields.is_empty())
        .map(|(whose, fields)| format!("{whose} {}", fields.join(", ")))
        .chain(
            [
                (meta.time_shift != job.time_shift, "the time shift"),
                (meta.time_mix != job.time_mix, "the time mix"),
                (
                    meta.contrast != job.contrast || meta.contrast_margin != job.contrast_margin,
                    "the rival-caption contrast",
                ),
                (meta.init != init_name, "the initial model"),
            ]
            .into_iter()
            .filter(|(differs, _)| *differs)
            .map(|(_, what)| what.to_string()),
        )
        .collect();
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
        match job.init {
            Some(dir) => {
                if init.as_ref().is_some_and(|m| m.text != text_cfg) {
                    invalid!(
                        "{}: its text encoder is not the one asked for",
                        dir.display()
                    );
                }
                let weights = dir.join("model.safetensors");
                checkpoint::load_into(&model.varmap, &read_tensors(&weights, device)?, &weights)?;
            }
            None => seeded_init(&model.varmap, run.seed)?,
        }
        update_ema(&mut ema, &model.varmap, 0.0)?;
        0
    };
    let contrast = job.contrast > 0.0;
    let mut log = CsvLog::open(
        &out.join("log.csv"),
        if contrast {
            // the ranking term, and the mean of err_rival - err_caption
            "step,lr,loss,clips_per_s,rank,rival_gap"
        } else {
            "step,lr,loss,clips_per_s"
        },
        session.resume.then_some(start),
    )?;
    let meta = |step: u64| DitMeta {
        kind: "dit".into(),
        contract: CONTRACT_VERSION,
        dit: job.dit.clone(),
        text: text_cfg.clone(),
        tokenizer: tokenizer.clone(),
        run: run.clone(),
        step,
        cfg_dropout: job.cfg_dropout,
        time_shift: job.time_shift,
        time_mix: job.time_mix,
        contrast: job.contrast,
        contrast_margin: job.contrast_margin,
        init: init_name.clone(),
        command: session.command.clone(),
        minisora_version: env!("CARGO_PKG_VERSION").into(),
    };
    let save = |step: u64, opt: &AdamW, ema: &HashMap<String, Tensor>| -> Result<()> {
        let raw = checkpoint::named_tensors(&model.varmap)?;
        checkpoint::write_dir(&ckpt_dir, |tmp| {
            write_json(&tmp.join("config.json"), &meta(step))?;
            write_tensors(&tmp.join("model.safetensors"), ema)?;
            write_tensors(&tmp.join("train.safetensors"), &raw)?;
            write_tensors(&tmp.join("optimizer.safetensors"), &opt.state()?)?;
            copy_vae(job.vae_dir, &tmp.join("vae"))
        })
    };
    let (scale, shift) = (vae.meta.scale_factor, vae.meta.latent_mean);
    let end = session.stop_at.unwrap_or(run.steps).min(run.steps);
    let started = Instant::now();
    let all_vars = model.varmap.all_vars();
    let threads = parallel::worker_threads(run.shards);
    for step in start..end {
        let t0 = Instant::now();
        // every random draw of the step is made here for the whole batch, in
        // one order, so that shards only change rounding
        let mut rng = Rng::derive(run.seed ^ 0xd17_u64, step);
        let dropped: Vec<bool> = (0..run.batch)
            .map(|_| rng.uniform() < job.cfg_dropout)
            .collect();
        // which times go unshifted: drawn only for a mixture, so that runs
        // without one draw what they always drew
        let unshifted: Vec<bool> = (0..run.batch)
            .map(|_| job.time_mix > 0.0 && rng.uniform() < job.time_mix)
            .collect();
        // self-conditioning on half the steps, drawn only for such a model
        let self_condition = job.dit.self_cond && rng.uniform() < 0.5;
        let t = Tensor::from_vec(
            logit_normal_mixed(&mut rng, &unshifted, 0.0, 1.0, job.time_shift),
            run.batch,
            device,
        )?;
        let eps = randn(
            &mut rng,
            &[run.batch, job.dit.latent_channels, lt, lh, lw],
            device,
        )?;
        let out = parallel::sharded_grads(run.shards, threads, &all_vars, |shard| {
            let (first, len) = parallel::shard_rows(run.batch, run.shards, shard);
            let (frames, captions) = data.rows(step, run.batch, first, len, device)?;
            // latents with unit variance: (mean - shift) * scale, no gradient into the VAE
            let z0 = vae
                .vae
                .encode(&frames)?
                .mean
                .detach()
                .affine(scale, -shift * scale)?;
            let mut words = Vec::with_capacity(len * tokenizer.max_len);
            for (caption, &drop) in captions.iter().zip(&dropped[first..first + len]) {
                words.extend(if drop {
                    tokenizer.null()
                } else {
                    tokenizer.encode(caption)?
                });
            }
            let ids = Tensor::from_slice(&words, (len, tokenizer.max_len), device)?;
            let t = t.narrow(0, first, len)?;
            let (x_t, target) = interpolate(&z0, &eps.narrow(0, first, len)?, &t)?;
            // the captions once, for both passes of a self-conditioned step
            let caption = model.encode(&ids)?;
            let estimate = if self_condition {
                // the model's own clean estimate, x_t - t v, as a sampler's
                // previous step would hand it over: no gradient through it
                let v = model.velocity_for(&caption, &x_t, None, &t)?.detach();
                let t = t.reshape((len, 1, 1, 1, 1))?;
                Some((&x_t - v.broadcast_mul(&t)?)?.detach())
            } else {
                None
            };
            let v = model.velocity_for(&caption, &x_t, estimate.as_ref(), &t)?;
            let loss = (&v - &target)?.sqr()?.mean_all()?;
            if !contrast {
                return Ok(ShardLoss {
                    loss,
                    figures: vec![],
                });
            }
            // each clip also under one rival caption; a clip without one (its
            // caption dropped or not of the grammar, or its time under
            // CONTRAST_FROM) is left out of the term
            let times = t.to_vec1::<f32>()?;
            let mut rival_ids = Vec::with_capacity(len * tokenizer.max_len);
            let mut rows = Vec::with_capacity(len);
            for (j, caption) in captions.iter().enumerate() {
                let id = step * run.batch as u64 + (first + j) as u64;
                let rivals = if dropped[first + j] || times[j] < CONTRAST_FROM {
                    Vec::new()
                } else {
                    crate::pipeline::rival_captions(caption)
                };
                let pick = (!rivals.is_empty())
                    .then(|| &rivals[Rng::derive(run.seed ^ 0xc0ffee, id).below(rivals.len())]);
                if let Some(Ok(rival)) = pick.map(|r| tokenizer.encode(r)) {
                    rival_ids.extend(rival);
                    rows.push(j as u32);
                }
            }
            let (rank, gap_sum) = rival_rank(
                &model,
                (&x_t, estimate.as_ref(), &t, &target),
                (&v, &rows, rival_ids),
                tokenizer.max_len,
                job.contrast_margin,
            )?;
            // per clip of the shard, so that the mean over shards is the
            // batch's whatever its split: the term, the summed gap of the
            // clips it applies to, and their share
            let figures = vec![
                rank.to_scalar::<f32>()? as f64,
                gap_sum / len as f64,
                rows.len() as f64 / len as f64,
            ];
            Ok(ShardLoss {
                loss: (loss + (rank * job.contrast)?)?,
                figures,
            })
        })?;
        let loss_v = out.loss;
        let figures = match out.figures[..] {
            // the term, and the mean gap of the clips it applies to
            [rank, gap_sum, used] => format!(",{rank:.6},{:.6}", gap_sum / used.max(1e-12)),
            _ => String::new(),
        };
        if !loss_v.is_finite() {
            invalid!("the loss became {loss_v} at step {}: stopping; the last checkpoint ({}) is kept. Try a lower --lr.", step + 1, ckpt_dir.display());
        }
        let lr = learning_rate(step, run.steps, run.warmup, run.lr, run.lr_floor);
        opt.step(&out.grads, lr)?;
        update_ema(&mut ema, &model.varmap, run.ema_decay)?;
        let cps = run.batch as f64 / t0.elapsed().as_secs_f64();
        log.append(&format!(
            "{},{lr:.6e},{loss_v:.6},{cps:.2}{figures}",
            step + 1
        ))?;
        on_step(&StepReport {
            step: step + 1,
            total: run.steps,
            lr,
            loss: loss_v,
            extra: vec![],
            clips_per_s: cps,
        });
        if (step + 1) % run.checkpoint_every == 0 && step + 1 < end {
            save(step + 1, &opt, &ema)?;
        }
    }
    if end > start || !session.resume {
        save(end, &opt, &ema)?;
    }
    Ok(TrainOutcome {
        step: end,
        checkpoint: ckpt_dir,
        seconds: started.elapsed().as_secs_f64(),
    })
}
