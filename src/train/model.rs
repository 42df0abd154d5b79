//! One run for a whole text-to-video model: the compression network first,
//! then the text encoder and DiT on its latents, then (unless left out) a
//! short fine-tune of both with the rival-caption ranking term
//! ([`DitJob::contrast`]).
//!
//! The run folder holds the stages' run folders, `vae/`, `dit/` and
//! `contrast/`, the first as [`super::vae::train`] lays it out and the
//! others as [`super::dit::train`] does; the finished model is
//! `contrast/checkpoint/`, or `dit/checkpoint/` without that stage (each
//! carries a copy of the autoencoder). A resumed run continues whichever
//! stage was interrupted and skips a stage that has finished.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::dit::{self, DitJob};
use super::{vae, RunConfig, Session, StepReport};
use crate::dit::DitConfig;
use crate::text::TextConfig;
use crate::vae::VaeConfig;
use crate::{invalid, Error, Result};

/// Everything a whole-model run trains, and how.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    pub vae: VaeConfig,
    pub vae_run: RunConfig,
    pub dit: DitConfig,
    pub text: TextConfig,
    pub dit_run: RunConfig,
    pub cfg_dropout: f64,
    pub time_shift: f64,
    pub time_mix: f64,
    /// The rival-contrast fine-tune; `None` leaves the DiT stage's model
    /// as the finished one.
    pub contrast: Option<ContrastStage>,
}

/// The last stage: the DiT stage's model fine-tuned with the rival-caption
/// ranking term (a fresh optimiser and schedule, the DiT stage's data).
#[derive(Clone, Debug)]
pub struct ContrastStage {
    pub run: RunConfig,
    /// [`DitJob::contrast`]
    pub weight: f64,
    /// [`DitJob::contrast_margin`]
    pub margin: f64,
}

/// The stage a progress report belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Vae,
    Dit,
    Contrast,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Vae => "autoencoder",
            Stage::Dit => "text encoder + DiT",
            Stage::Contrast => "rival contrast",
        }
    }
}

/// How a whole-model run ended.
#[derive(Clone, Debug)]
pub struct ModelOutcome {
    /// The finished model: `OUT/contrast/checkpoint`, or
    /// `OUT/dit/checkpoint` without that stage.
    pub checkpoint: PathBuf,
    /// Seconds each stage ran in this invocation (0 for a skipped stage).
    pub vae_seconds: f64,
    pub dit_seconds: f64,
    pub contrast_seconds: f64,
}

/// Where stage `stage` of the run in `out` lives.
pub fn stage_dir(out: &Path, stage: Stage) -> PathBuf {
    out.join(match stage {
        Stage::Vae => "vae",
        Stage::Dit => "dit",
        Stage::Contrast => "contrast",
    })
}

/// Trains the model in `out`. With `session.resume`, each stage continues
/// its own checkpoint if it has one (and one that has finished is only
/// checked); without it, `out` must not hold a run yet. `on_start` is told
/// when a stage begins, with the step it starts from; `on_step` gets every
/// step's report.
pub fn train(
    out: &Path,
    plan: &ModelPlan,
    session: &Session,
    device: &Device,
    mut on_start: impl FnMut(Stage, u64),
    mut on_step: impl FnMut(Stage, &StepReport),
) -> Result<ModelOutcome> {
    if session.stop_at.is_some() {
        invalid!("a whole-model run cannot stop at a step; train the stages one by one for that");
    }
    // a bad setting is refused before any folder is made or stage begins
    plan.vae.validate()?;
    plan.vae_run.validate()?;
    plan.dit_run.validate()?;
    plan.dit.validate()?;
    if let Some(stage) = &plan.contrast {
        stage.run.validate()?;
        dit::validate_contrast(stage.weight, stage.margin)?;
        if stage.weight == 0.0 {
            invalid!("the rival-contrast stage needs a weight above 0 (--contrast); to leave the stage out, give --contrast-steps 0");
        }
    }
    let (vae_dir, dit_dir) = (stage_dir(out, Stage::Vae), stage_dir(out, Stage::Dit));
    let contrast_dir = stage_dir(out, Stage::Contrast);
    if !session.resume && (vae_dir.exists() || dit_dir.exists() || contrast_dir.exists()) {
        invalid!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let stage_session = |dir: &Path| Session {
        resume: dir.join("checkpoint").exists(),
        stop_at: None,
        command: session.command.clone(),
    };
    let started_at = |dir: &Path| -> u64 {
        crate::checkpoint::read_json::<serde_json::Value>(&dir.join("checkpoint/config.json"))
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
            .unwrap_or(0)
    };

    on_start(Stage::Vae, started_at(&vae_dir));
    let vae_out = vae::train(
        &vae_dir,
        &plan.vae,
        &plan.vae_run,
        &stage_session(&vae_dir),
        device,
        |r| on_step(Stage::Vae, r),
    )?;

    on_start(Stage::Dit, started_at(&dit_dir));
    let job = DitJob {
        dit: plan.dit.clone(),
        text: plan.text.clone(),
        run: plan.dit_run.clone(),
        vae_dir: &vae_out.checkpoint,
        cfg_dropout: plan.cfg_dropout,
        time_shift: plan.time_shift,
        time_mix: plan.time_mix,
        contrast: 0.0,
        contrast_margin: 0.0,
        init: None,
    };
    let dit_out = dit::train(&dit_dir, &job, &stage_session(&dit_dir), device, |r| {
        on_step(Stage::Dit, r)
    })?;
    let Some(stage) = &plan.contrast else {
        return Ok(ModelOutcome {
            checkpoint: dit_out.checkpoint,
            vae_seconds: vae_out.seconds,
            dit_seconds: dit_out.seconds,
            contrast_seconds: 0.0,
        });
    };
    on_start(Stage::Contrast, started_at(&contrast_dir));
    let tune = DitJob {
        run: stage.run.clone(),
        contrast: stage.weight,
        contrast_margin: stage.margin,
        init: Some(&dit_out.checkpoint),
        ..job
    };
    let tuned = dit::train(
        &contrast_dir,
        &tune,
        &stage_session(&contrast_dir),
        device,
        |r| on_step(Stage::Contrast, r),
    )?;
    Ok(ModelOutcome {
        checkpoint: tuned.checkpoint,
        vae_seconds: vae_out.seconds,
        dit_seconds: dit_out.seconds,
        contrast_seconds: tuned.seconds,
    })
}
