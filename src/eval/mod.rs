//! Prompt adherence on Shapes World: a detector written for the data
//! contract (`shared/SHAPES_WORLD.md`) that reads a clip's frames and says,
//! per object of the prompt, whether its colour is there and which shape,
//! size and motion it shows; and the evaluation that generates clips for
//! prompts and scores them.

mod detector;

use candle_core::Device;
use serde::Serialize;

pub use detector::{detect, ObjectScore};

use crate::data::shapes_world::Scene;
use crate::pipeline::{generate, SampleOptions};
use crate::rng::Rng;
use crate::train::dit::{DitMeta, TextToVideo};
use crate::train::vae::VaeCheckpoint;
use crate::train::HELD_OUT;
use crate::Result;

/// Per-attribute accuracy over objects and pass rates over prompts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AdherenceReport {
    pub prompts: usize,
    pub objects: usize,
    pub colour: f64,
    pub shape: f64,
    pub size: f64,
    pub motion: f64,
    /// Prompts with one object whose every attribute was detected.
    pub one_object_pass: Option<f64>,
    pub two_object_pass: Option<f64>,
}

/// `count` prompts drawn from the grammar with seeds training never uses.
pub fn held_out_prompts(count: usize) -> Vec<Scene> {
    (0..count)
        .map(|i| Scene::sample(&mut Rng::derive(HELD_OUT ^ 0xe7a1, i as u64)))
        .collect()
}

/// Generates a clip per prompt (seed = its index) and scores it; calls
/// `progress(done)` after each.
pub fn evaluate(
    model: &TextToVideo,
    meta: &DitMeta,
    vae: &VaeCheckpoint,
    prompts: &[Scene],
    options: &SampleOptions,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<AdherenceReport> {
    let mut sums = [0usize; 4];
    let (mut objects, mut pass) = (0usize, [[0usize; 2]; 2]);
    for (i, scene) in prompts.iter().enumerate() {
        let o = SampleOptions {
            seed: HELD_OUT + i as u64,
            ..options.clone()
        };
        let clip = generate(model, meta, vae, &scene.caption(), &o, device)?;
        let scores = detect(&clip.frames, scene);
        for s in &scores {
            for (k, ok) in [s.colour, s.shape, s.size, s.motion]
                .into_iter()
                .enumerate()
            {
                sums[k] += ok as usize;
            }
        }
        objects += scores.len();
        let kind = scene.objects.len() - 1;
        pass[kind][0] += 1;
        pass[kind][1] += scores.iter().all(ObjectScore::all) as usize;
        progress(i + 1);
    }
    let frac = |k: usize, n: usize| k as f64 / n.max(1) as f64;
    let rate = |[n, ok]: [usize; 2]| (n > 0).then(|| frac(ok, n));
    Ok(AdherenceReport {
        prompts: prompts.len(),
        objects,
        colour: frac(sums[0], objects),
        shape: frac(sums[1], objects),
        size: frac(sums[2], objects),
        motion: frac(sums[3], objects),
        one_object_pass: rate(pass[0]),
        two_object_pass: rate(pass[1]),
    })
}
