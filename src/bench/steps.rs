//! `minisora bench steps`: what fewer denoising steps cost in prompt
//! adherence. For every sampler and step count, the clips of one fixed set
//! of held-out prompts are generated and scored exactly as `minisora eval`
//! does ([`crate::eval::evaluate`]), and the run's wall time is divided by
//! its clips: quality against time, one curve per sampler.

use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::diffusion::sampler;
use crate::eval::{evaluate, AdherenceReport, EvalPrompt};
use crate::pipeline::SampleOptions;
use crate::train::dit::{DitMeta, TextToVideo};
use crate::train::vae::VaeCheckpoint;
use crate::{invalid, Result};

/// One sampler at one step count.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub sampler: String,
    pub steps: usize,
    /// DiT calls per clip (a guided call runs both predictions as one batch).
    pub model_calls: usize,
    /// Wall time of the point's evaluation over its clips: generation,
    /// decoding and scoring, with one clip in flight per thread.
    pub seconds_per_clip: f64,
    pub adherence: AdherenceReport,
}

/// Runs every `(sampler, steps)` pair of `samplers` x `steps` on `prompts`
/// with the rest of `base` (seed ignored: each prompt's seed is fixed by
/// its index, as in `minisora eval`); `threads` clips at a time. Calls
/// `progress(point, clips done)` as clips finish.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    model: &TextToVideo,
    meta: &DitMeta,
    vae: &VaeCheckpoint,
    prompts: &[EvalPrompt],
    samplers: &[String],
    steps: &[usize],
    base: &SampleOptions,
    device: &Device,
    threads: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<SweepPoint>> {
    if prompts.is_empty() || samplers.is_empty() || steps.is_empty() {
        invalid!("bench steps needs at least one prompt, one sampler and one step count");
    }
    if let Some(&s) = steps.iter().find(|&&s| s == 0) {
        invalid!("step counts must be at least 1, got {s}");
    }
    let solvers = samplers
        .iter()
        .map(|name| sampler(name))
        .collect::<Result<Vec<_>>>()?;
    let mut points = Vec::with_capacity(samplers.len() * steps.len());
    for (name, solver) in samplers.iter().zip(&solvers) {
        for &n in steps {
            let options = SampleOptions {
                sampler: name.clone(),
                steps: n,
                ..base.clone()
            };
            let index = points.len();
            let started = Instant::now();
            let adherence = evaluate(
                model,
                meta,
                vae,
                prompts,
                &options,
                None,
                device,
                threads,
                {
                    let mut done = 0;
                    let progress = &mut progress;
                    move |_, _, _| {
                        done += 1;
                        progress(index, done);
                        Ok(())
                    }
                },
            )?;
            let seconds = started.elapsed().as_secs_f64();
            points.push(SweepPoint {
                sampler: name.clone(),
                steps: n,
                model_calls: solver.evaluations(n),
                seconds_per_clip: seconds / prompts.len() as f64,
                adherence,
            });
        }
    }
    Ok(points)
}

/// Parses `"2,4,8"` into step counts.
pub fn parse_steps(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => invalid!("--steps takes positive whole numbers separated by commas, got \"{s}\""),
        })
        .collect()
}
