//! Prompt adherence on Shapes World: a detector written for the data
//! contract (`shared/SHAPES_WORLD.md`) that reads a clip's frames and says,
//! per object of the prompt, whether its colour is there and which shape,
//! size and motion it shows; and the evaluation that generates clips for
//! prompts and scores them.

pub mod compare;
mod detector;

use std::collections::BTreeMap;

use candle_core::Device;
use serde::Serialize;

pub use detector::{detect, ObjectScore};

use crate::data::shapes_world::{render, Canvas, Scene, Shape};
use crate::pipeline::{encode, generate_from, Init, SampleOptions};
use crate::rng::Rng;
use crate::train::dit::{DitMeta, TextToVideo};
use crate::train::vae::VaeCheckpoint;
use crate::train::HELD_OUT;
use crate::video::Frames;
use crate::Result;

/// Per-attribute accuracy over objects and pass rates over prompts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AdherenceReport {
    pub prompts: usize,
    pub objects: usize,
    pub colour: f64,
    pub shape: f64,
    /// Shape accuracy over the objects of each shape the prompts ask for
    /// (discs are the detector's fallback, so a blurred shape reads as one).
    pub shape_by_kind: BTreeMap<&'static str, f64>,
    pub size: f64,
    pub motion: f64,
    /// Prompts (of either kind) whose every object passed.
    pub pass_rate: f64,
    /// Prompts with one object whose every attribute was detected.
    pub one_object_pass: Option<f64>,
    pub two_object_pass: Option<f64>,
}

/// A prompt of an evaluation and the index its clip's seed comes from
/// ([`seed_of`]): its place in the full held-out draw, or its line in a
/// prompt file.
#[derive(Clone, Debug)]
pub struct EvalPrompt {
    pub index: usize,
    pub scene: Scene,
}

impl EvalPrompt {
    /// Prompts numbered by their place in `scenes` (a prompt file's lines).
    pub fn numbered(scenes: Vec<Scene>) -> Vec<EvalPrompt> {
        scenes
            .into_iter()
            .enumerate()
            .map(|(index, scene)| EvalPrompt { index, scene })
            .collect()
    }

    /// The seed of this prompt's clip: training never draws it.
    pub fn seed(&self) -> u64 {
        seed_of(self.index)
    }
}

/// Prompts drawn from the grammar with seeds training never uses, in draw
/// order: those of ranks `skip + 1` to `skip + per_kind` among the prompts
/// with one object, and the same among those with two. Each keeps the
/// index (and so the seed) it has in `held_out(0, skip + per_kind)`, so
/// the prompts an evaluation of the first `skip` of each kind has not
/// seen are scored exactly as that longer evaluation scores them.
pub fn held_out(skip: usize, per_kind: usize) -> Vec<EvalPrompt> {
    let total = skip.saturating_add(per_kind);
    let mut out = Vec::with_capacity(2 * per_kind.min(1 << 16));
    let mut have = [0usize; 2];
    let mut index = 0;
    for i in 0u64.. {
        if have.iter().all(|&n| n >= total) {
            break;
        }
        let scene = Scene::sample(&mut Rng::derive(HELD_OUT ^ 0xe7a1, i));
        let kind = scene.objects.len() - 1;
        if have[kind] < total {
            if have[kind] >= skip {
                out.push(EvalPrompt { index, scene });
            }
            have[kind] += 1;
            index += 1;
        }
    }
    out
}

/// The seed of the `i`th held-out prompt's clip in [`evaluate`] (of its
/// noise, and of its render with `renoise`): training never draws it.
pub fn seed_of(i: usize) -> u64 {
    HELD_OUT + i as u64
}

/// Generates a clip per prompt (seed: [`EvalPrompt::seed`]) and scores it, on
/// `threads` threads (each prompt's clip depends only on its index, so the
/// report does not depend on the thread count); calls `scored(i, clip,
/// scores)`, `i` the prompt's place in `prompts`, on this thread as each prompt's clip is scored, in the order
/// they finish (for progress, or to keep the clips); an error from it stops
/// the evaluation.
///
/// With `renoise: Some(s)`, each clip starts instead from the prompt's own
/// Shapes World render (same seed) as an [`Init`] of strength `s`: only the
/// last `s` share of the steps runs, so a diagnostic of the noise levels at
/// which the model loses an attribute it was given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &TextToVideo,
    meta: &DitMeta,
    vae: &VaeCheckpoint,
    prompts: &[EvalPrompt],
    options: &SampleOptions,
    renoise: Option<f64>,
    device: &Device,
    threads: usize,
    scored: impl FnMut(usize, &Frames, &[ObjectScore]) -> Result<()>,
) -> Result<AdherenceReport> {
    let make = |i: usize| -> Result<Frames> {
        let seed = prompts[i].seed();
        let o = SampleOptions {
            seed,
            ..options.clone()
        };
        let init = match renoise {
            Some(strength) => {
                let clip = render(&prompts[i].scene, options.canvas, seed)?;
                Some(Init {
                    latent: encode(vae, &clip.frames, device)?,
                    strength,
                })
            }
            None => None,
        };
        let caption = prompts[i].scene.caption();
        Ok(generate_from(model, meta, vae, &caption, &o, init.as_ref(), device)?.frames)
    };
    score_clips(prompts, threads, make, scored)
}

/// The detector's ceiling on these prompts: [`evaluate`] with each prompt's
/// own Shapes World render (seed: [`EvalPrompt::seed`]) in place of a
/// generated clip; no model.
pub fn evaluate_renders(
    prompts: &[EvalPrompt],
    canvas: Canvas,
    threads: usize,
    scored: impl FnMut(usize, &Frames, &[ObjectScore]) -> Result<()>,
) -> Result<AdherenceReport> {
    let make = |i: usize| Ok(render(&prompts[i].scene, canvas, prompts[i].seed())?.frames);
    score_clips(prompts, threads, make, scored)
}

/// Makes the clip of each prompt with `make(i)` on `threads` threads,
/// scores it and tallies the scores; `scored` as in [`evaluate`].
fn score_clips(
    prompts: &[EvalPrompt],
    threads: usize,
    make: impl Fn(usize) -> Result<Frames> + Sync,
    mut scored: impl FnMut(usize, &Frames, &[ObjectScore]) -> Result<()>,
) -> Result<AdherenceReport> {
    let score = |i: usize| -> Result<(Frames, Vec<ObjectScore>)> {
        let frames = make(i)?;
        let scores = detect(&frames, &prompts[i].scene);
        Ok((frames, scores))
    };
    let threads = threads.clamp(1, prompts.len().max(1));
    type Scored = (usize, Result<(Frames, Vec<ObjectScore>)>);
    let (tx, rx) = std::sync::mpsc::channel::<Scored>();
    let mut results: Vec<Option<Vec<ObjectScore>>> = vec![None; prompts.len()];
    std::thread::scope(|s| -> Result<()> {
        for j in 0..threads {
            let (tx, score) = (tx.clone(), &score);
            s.spawn(move || {
                for i in (j..prompts.len()).step_by(threads) {
                    let r = score(i);
                    let failed = r.is_err();
                    if tx.send((i, r)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // owned here, so that an early error drops it and the others stop
        let rx = rx;
        for (i, r) in rx.iter() {
            let (frames, scores) = r?;
            scored(i, &frames, &scores)?;
            results[i] = Some(scores);
        }
        Ok(())
    })?;
    let mut tally = AttributeTally::default();
    for (prompt, scores) in prompts.iter().zip(results) {
        let scores =
            scores.ok_or_else(|| crate::Error::Invalid("a prompt was not scored".into()))?;
        tally.add(&prompt.scene, &scores);
    }
    Ok(tally.report())
}

/// Running totals of detector scores: per attribute over objects, and
/// passes over prompts of one and of two objects.
#[derive(Clone, Debug, Default)]
pub struct AttributeTally {
    /// colour, shape, size, motion: objects with the attribute right
    right: [usize; 4],
    objects: usize,
    /// per kind (one object, two): `[prompts, passing]`
    pass: [[usize; 2]; 2],
    /// per shape asked for, in `Shape::ALL` order: `[objects, shape right]`
    by_shape: [[usize; 2]; 3],
}

impl AttributeTally {
    /// Adds the scores of one clip made for `scene` (one per object).
    pub fn add(&mut self, scene: &Scene, scores: &[ObjectScore]) {
        for s in scores {
            for (k, ok) in [s.colour, s.shape, s.size, s.motion]
                .into_iter()
                .enumerate()
            {
                self.right[k] += ok as usize;
            }
        }
        for (object, s) in scene.objects.iter().zip(scores) {
            let tally = &mut self.by_shape[object.shape as usize];
            tally[0] += 1;
            tally[1] += s.shape as usize;
        }
        self.objects += scores.len();
        let kind = (scene.objects.len() - 1).min(1);
        self.pass[kind][0] += 1;
        self.pass[kind][1] += scores.iter().all(ObjectScore::all) as usize;
    }

    pub fn report(&self) -> AdherenceReport {
        let frac = |k: usize, n: usize| k as f64 / n.max(1) as f64;
        let rate = |[n, ok]: [usize; 2]| (n > 0).then(|| frac(ok, n));
        let prompts = self.pass[0][0] + self.pass[1][0];
        AdherenceReport {
            prompts,
            objects: self.objects,
            colour: frac(self.right[0], self.objects),
            shape: frac(self.right[1], self.objects),
            shape_by_kind: Shape::ALL
                .iter()
                .zip(self.by_shape)
                .filter(|(_, [n, _])| *n > 0)
                .map(|(shape, [n, ok])| (shape.word(), frac(ok, n)))
                .collect(),
            size: frac(self.right[2], self.objects),
            motion: frac(self.right[3], self.objects),
            pass_rate: frac(self.pass[0][1] + self.pass[1][1], prompts),
            one_object_pass: rate(self.pass[0]),
            two_object_pass: rate(self.pass[1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(colour: bool, shape: bool, size: bool, motion: bool) -> ObjectScore {
        ObjectScore {
            colour,
            shape,
            size,
            motion,
        }
    }

    /// Per attribute over objects, passes per kind of prompt, and shape per
    /// shape asked for, on hand-made scores.
    #[test]
    fn tally_counts_attributes_passes_and_shapes_by_hand() {
        let scene = |p: &str| Scene::parse(p).unwrap();
        let mut tally = AttributeTally::default();
        tally.add(
            &scene("a red square growing"),
            &[score(true, true, true, true)],
        );
        tally.add(
            &scene("a blue square moving up"),
            &[score(true, false, true, true)],
        );
        tally.add(
            &scene("a red circle growing and a green square standing still"),
            &[
                score(true, true, false, true),
                score(false, true, true, true),
            ],
        );
        let r = tally.report();
        assert_eq!((r.prompts, r.objects), (3, 4));
        assert_eq!(
            (r.colour, r.shape, r.size, r.motion),
            (0.75, 0.75, 0.75, 1.0)
        );
        assert_eq!(r.one_object_pass, Some(0.5));
        assert_eq!(r.two_object_pass, Some(0.0));
        assert_eq!(r.pass_rate, 1.0 / 3.0);
        // squares: 2 of 3 right; the one circle right; no triangle asked for
        let by_kind: Vec<_> = r.shape_by_kind.into_iter().collect();
        assert_eq!(by_kind, [("circle", 1.0), ("square", 2.0 / 3.0)]);
    }

    /// `held_out(skip, n)` is the tail of `held_out(0, skip + n)`: per kind,
    /// its prompts after the first `skip`, with the same indices (seeds).
    #[test]
    fn skipped_held_out_prompts_keep_their_indices_in_the_longer_draw() {
        let kind = |p: &EvalPrompt| p.scene.objects.len();
        let full = held_out(0, 7);
        let tail = held_out(4, 3);
        let mut rank = [0usize; 3];
        let expected: Vec<_> = full
            .iter()
            .filter(|p| {
                rank[kind(p)] += 1;
                rank[kind(p)] > 4
            })
            .collect();
        assert_eq!(tail.len(), 6);
        assert_eq!(expected.len(), 6);
        for (a, b) in tail.iter().zip(expected) {
            assert_eq!((a.index, a.scene.caption()), (b.index, b.scene.caption()));
        }
        assert_eq!(tail.iter().filter(|p| kind(p) == 2).count(), 3);
        let indices = |v: &[EvalPrompt]| v.iter().map(|p| p.index).collect::<Vec<_>>();
        assert_eq!(indices(&full), (0..14).collect::<Vec<_>>());
    }
}
