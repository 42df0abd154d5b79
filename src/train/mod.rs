//! Training machinery shared by every trainable stage: AdamW with savable
//! state, the learning-rate schedule, seeded noise, the CSV log, and the
//! data source (Shapes World rendered on the fly, or a clip folder).
//!
//! Everything a step uses is a function of the run's seed and the step
//! number, so a run resumed from a checkpoint continues exactly where it
//! stopped.

pub mod dit;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod vae;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::clips::{self, shapes_world_item, ClipEntry};
use crate::data::shapes_world::{render, Canvas};
use crate::rng::Rng;
use crate::video::{self, frames_to_tensor, ReadOptions};
use crate::{invalid, Error, Result};

/// Stream ids at or above this are held out: training never draws them, so
/// evaluation clips are unseen.
pub const HELD_OUT: u64 = 1 << 63;

/// `n` values from `N(0, 1)` (Box-Muller over [`Rng`]): same seed, same noise.
pub fn gaussian(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = rng.uniform().max(f64::MIN_POSITIVE);
        let u2 = rng.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// A standard normal tensor of `shape` from `rng`.
pub fn randn(rng: &mut Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(gaussian(rng, n), shape, device)?)
}

/// Where training clips come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    /// Shapes World clips rendered on the fly; clip `i` of step `s` is stream
    /// `s * batch + i` of `seed`; `two_objects` is the share of two-object
    /// captions (`None`: the grammar's even draw).
    Shapes {
        canvas: Canvas,
        seed: u64,
        two_objects: Option<f64>,
    },
    /// A folder of captioned clips (see [`crate::data::clips`]), each resized
    /// to the canvas and cut to its frame count.
    Folder {
        canvas: Canvas,
        seed: u64,
        clips: Vec<ClipEntry>,
        dir: PathBuf,
    },
}

/// What `--data` says: `shapes`, or a folder. `two_objects` (the share of
/// two-object captions) applies to Shapes World only.
pub fn data_source(
    spec: &str,
    canvas: Canvas,
    seed: u64,
    two_objects: Option<f64>,
) -> Result<DataSource> {
    if spec == "shapes" {
        return Ok(DataSource::Shapes {
            canvas,
            seed,
            two_objects,
        });
    }
    if two_objects.is_some() {
        invalid!("a share of two-object captions applies to Shapes World (--data shapes), not to the clip folder \"{spec}\"");
    }
    let dir = PathBuf::from(spec);
    if !dir.is_dir() {
        invalid!("--data must be \"shapes\" or a folder of clips; \"{spec}\" is neither");
    }
    let clips = clips::list(&dir)?;
    if clips.is_empty() {
        invalid!(
            "{}: no captioned clips (each clip needs a NAME.txt caption beside it)",
            dir.display()
        );
    }
    Ok(DataSource::Folder {
        canvas,
        seed,
        clips,
        dir,
    })
}

impl DataSource {
    pub fn canvas(&self) -> Canvas {
        match self {
            DataSource::Shapes { canvas, .. } | DataSource::Folder { canvas, .. } => *canvas,
        }
    }

    /// The clips of one step, `(B, 3, T, H, W)` in `[-1, 1]`, with captions.
    pub fn batch(&self, step: u64, batch: usize, device: &Device) -> Result<(Tensor, Vec<String>)> {
        self.rows(step, batch, 0, batch, device)
    }

    /// Clips `start..start + len` of step `step`'s batch of `batch` (one
    /// shard of it), `(len, 3, T, H, W)`, with captions.
    pub fn rows(
        &self,
        step: u64,
        batch: usize,
        start: usize,
        len: usize,
        device: &Device,
    ) -> Result<(Tensor, Vec<String>)> {
        let mut clips = Vec::with_capacity(len);
        let mut captions = Vec::with_capacity(len);
        for i in start..start + len {
            let id = step * batch as u64 + i as u64;
            let (frames, caption) = self.clip(id)?;
            clips.push(frames_to_tensor(&frames.view(), device)?);
            captions.push(caption);
        }
        Ok((Tensor::cat(&clips, 0)?, captions))
    }

    /// Clip `id` as frames `(T, H, W, 3)` and its caption.
    pub fn clip(&self, id: u64) -> Result<(video::Frames, String)> {
        match self {
            DataSource::Shapes {
                canvas,
                seed,
                two_objects,
            } => {
                let (scene, render_seed) = shapes_world_item(*seed, id as usize, *two_objects);
                Ok((
                    render(&scene, *canvas, render_seed)?.frames,
                    scene.caption(),
                ))
            }
            DataSource::Folder {
                canvas,
                seed,
                clips,
                ..
            } => {
                let entry = &clips[Rng::derive(*seed, id).below(clips.len())];
                let frames = video::read(
                    &entry.video,
                    &ReadOptions {
                        size: Some((canvas.height, canvas.width)),
                    },
                )?;
                let t = frames.dim().0;
                if t < canvas.frames {
                    invalid!(
                        "{}: has {t} frames, training needs {}",
                        entry.video.display(),
                        canvas.frames
                    );
                }
                let frames = frames
                    .slice(ndarray::s![..canvas.frames, .., .., ..])
                    .to_owned();
                Ok((frames, entry.caption.clone()))
            }
        }
    }
}

/// An append-only CSV log that a resumed run first cuts back to its
/// checkpoint, so every step appears once.
pub struct CsvLog {
    path: PathBuf,
}

impl CsvLog {
    /// Opens `path` with `header`; keeps rows with step `<= keep_until` (the
    /// step of the checkpoint resumed from), or starts afresh if `None`.
    pub fn open(path: &Path, header: &str, keep_until: Option<u64>) -> Result<Self> {
        let mut text = format!("{header}\n");
        if let (Some(last), Ok(old)) = (keep_until, fs::read_to_string(path)) {
            for line in old.lines().skip(1) {
                let step = line.split(',').next().and_then(|s| s.parse::<u64>().ok());
                if step.is_some_and(|s| s <= last) {
                    text += line;
                    text += "\n";
                }
            }
        }
        fs::write(path, text).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, row: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{row}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Settings of a training run that must stay the same across resumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Total optimizer steps.
    pub steps: u64,
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup: u64,
    /// Final learning rate as a fraction of the peak.
    pub lr_floor: f64,
    pub seed: u64,
    /// `shapes` or the clip folder trained on.
    pub data: String,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Equal parts each batch is cut into, their passes run side by side
    /// (one thread per core; see [`parallel`]). It changes results only by
    /// rounding; runs from before it existed used one.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Decay of the exponential moving average of the weights that the
    /// checkpoint's `model.safetensors` holds (0: the weights themselves).
    #[serde(default)]
    pub ema_decay: f64,
    /// Share of two-object captions in Shapes World training data (`None`:
    /// one half, drawn as the grammar's sampler draws it; runs from before it
    /// existed used that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_objects: Option<f64>,
}

fn one_shard() -> usize {
    1
}

impl RunConfig {
    pub fn canvas(&self) -> Result<Canvas> {
        Canvas::new(self.frames, self.height, self.width)
    }

    /// Checks the batch against the shards.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.steps == 0 {
            invalid!("steps and batch must be at least 1");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            invalid!("the EMA decay must be in [0, 1), got {}", self.ema_decay);
        }
        if let Some(two) = self.two_objects {
            if !(0.0..=1.0).contains(&two) {
                invalid!("the share of two-object captions must be in [0, 1], got {two}");
            }
        }
        if self.shards == 0 || self.batch % self.shards != 0 {
            invalid!(
                "the batch ({}) must be a positive multiple of the shards ({})",
                self.batch,
                self.shards
            );
        }
        Ok(())
    }
}

/// How a training run ended.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub step: u64,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

/// How this invocation of a run behaves (not part of the run's settings).
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Continue the checkpoint in the run folder.
    pub resume: bool,
    /// Stop after this step (with a checkpoint).
    pub stop_at: Option<u64>,
    /// The command line, recorded in the checkpoint.
    pub command: String,
}

/// One step's figures, for the progress bar and the log.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub total: u64,
    pub lr: f64,
    pub loss: f64,
    /// Named extra figures (`mse`, `kl`, ...).
    pub extra: Vec<(&'static str, f64)>,
    pub clips_per_s: f64,
}

/// The top-level fields whose values differ between two settings of the
/// same type, by their serialised names (what a refused resume names).
pub(crate) fn fields_that_differ<T: serde::Serialize>(a: &T, b: &T) -> Vec<String> {
    let (a, b) = (serde_json::to_value(a), serde_json::to_value(b));
    match (a, b) {
        (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) => a
            .keys()
            .chain(b.keys().filter(|k| !a.contains_key(*k)))
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect(),
        (a, b) if a.as_ref().ok() == b.as_ref().ok() => Vec::new(),
        _ => vec!["(all)".to_string()],
    }
}

/// EMA of the weights: `ema <- decay ema + (1 - decay) w`; a missing entry
/// starts as a copy of `w`.
pub(crate) fn update_ema(
    ema: &mut std::collections::HashMap<String, Tensor>,
    varmap: &candle_nn::VarMap,
    decay: f64,
) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    for (name, var) in vars.iter() {
        let w = var.as_tensor();
        // a copy: the optimizer writes new values into the variable's own storage
        let next = match ema.get(name) {
            // in place: every average is a copy of its own (below, or read
            // from a checkpoint), so nothing else sees it change
            Some(e) if decay > 0.0 && crate::ops::inplace_ok(&[e, w]) => {
                crate::ops::average_into(e, w, decay, false)?;
                continue;
            }
            Some(e) if decay > 0.0 => ((e * decay)? + (w.detach() * (1.0 - decay))?)?,
            _ => w.copy()?.detach(),
        };
        ema.insert(name.clone(), next);
    }
    Ok(())
}

/// Re-draws every randomly initialised variable from `seed`: weights
/// (rank >= 2) from `N(0, 1 / fan_in)` (LeCun normal), biases zero. candle's
/// CPU initialisers draw from an unseeded thread RNG; this makes a run's
/// starting point a function of its seed. Constant-initialised variables
/// (the zeros of adaLN-Zero and residual outputs, the ones of norm gains)
/// keep their value.
pub fn seeded_init(varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &vars[name];
        let t = var.as_tensor();
        let flat = t.flatten_all()?.to_dtype(candle_core::DType::F32)?;
        let (lo, hi) = (
            flat.min_all()?.to_scalar::<f32>()?,
            flat.max_all()?.to_scalar::<f32>()?,
        );
        // constants (zeros of adaLN-Zero and residual outputs, ones of norm
        // gains) were chosen on purpose; only random draws are redone (a
        // single random value, such as the bias of a one-output head, looks
        // constant too: a single value counts as chosen only at 0 or 1)
        if lo == hi && (flat.elem_count() > 1 || lo == 0.0 || lo == 1.0) {
            continue;
        }
        let dims = t.dims().to_vec();
        let value = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let mut rng = Rng::derive(seed, i as u64);
            (randn(&mut rng, &dims, t.device())? * (1.0 / (fan_in as f64).sqrt()))?
        } else {
            t.zeros_like()?
        };
        var.set(&value.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes_world::Scene;

    #[test]
    fn gaussian_noise_has_unit_moments_and_repeats() {
        let a = gaussian(&mut Rng::new(4), 20_001);
        assert_eq!(a, gaussian(&mut Rng::new(4), 20_001));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }

    #[test]
    fn shapes_data_keeps_its_two_object_share_and_folders_refuse_one() {
        let canvas = Canvas::new(4, 16, 16).unwrap();
        let captions = |two: Option<f64>| -> Vec<String> {
            let data = data_source("shapes", canvas, 3, two).unwrap();
            let (clips, captions) = data.rows(2, 12, 0, 12, &Device::Cpu).unwrap();
            assert_eq!(clips.dims(), &[12, 3, 4, 16, 16]);
            captions
        };
        assert!(captions(Some(1.0)).iter().all(|c| c.contains(" and ")));
        assert!(captions(Some(0.0)).iter().all(|c| !c.contains(" and ")));
        // no share, or one half: the grammar's own draw, as runs before the
        // option drew it
        let even: Vec<String> = (0..12)
            .map(|i| Scene::sample(&mut Rng::derive(3, 2 * 12 + i)).caption())
            .collect();
        assert_eq!(captions(None), even);
        assert_eq!(captions(Some(0.5)), even);
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_string_lossy();
        let err = data_source(&spec, canvas, 0, Some(0.5)).unwrap_err();
        assert!(err.to_string().contains("Shapes World"), "{err}");
        let run = RunConfig {
            steps: 1,
            batch: 2,
            lr: 1e-3,
            warmup: 0,
            lr_floor: 0.1,
            seed: 0,
            data: "shapes".into(),
            frames: 4,
            height: 16,
            width: 16,
            checkpoint_every: 1,
            shards: 1,
            ema_decay: 0.0,
            two_objects: Some(1.5),
        };
        let err = run.validate().unwrap_err();
        assert!(err.to_string().contains("two-object"), "{err}");
    }

    #[test]
    fn seeded_init_redraws_a_single_random_value_and_keeps_chosen_constants() {
        let values = || -> Vec<Vec<f32>> {
            let varmap = candle_nn::VarMap::new();
            let vb =
                candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
            // a one-output head: its bias is a single value candle draws at random
            let head = candle_nn::linear(4, 1, vb.pp("head")).unwrap();
            let zeros = vb
                .get_with_hints(3, "zeros", candle_nn::Init::Const(0.0))
                .unwrap();
            let ones = vb
                .get_with_hints(3, "ones", candle_nn::Init::Const(1.0))
                .unwrap();
            seeded_init(&varmap, 5).unwrap();
            [
                head.weight().flatten_all().unwrap(),
                head.bias().unwrap().clone(),
                zeros,
                ones,
            ]
            .iter()
            .map(|t| t.to_vec1::<f32>().unwrap())
            .collect()
        };
        let (a, b) = (values(), values());
        assert_eq!(a, b, "the same seed, the same start");
        assert_eq!(a[1], [0.0], "a bias starts at zero");
        assert_eq!(a[2], [0.0; 3]);
        assert_eq!(a[3], [1.0; 3]);
    }

    #[test]
    fn the_log_is_cut_back_to_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv");
        let mut log = CsvLog::open(&path, "step,loss", None).unwrap();
        for s in 1..=5 {
            log.append(&format!("{s},0.5")).unwrap();
        }
        let mut log = CsvLog::open(&path, "step,loss", Some(3)).unwrap();
        log.append("4,0.25").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "step,loss\n1,0.5\n2,0.5\n3,0.5\n4,0.25\n"
        );
    }
}
