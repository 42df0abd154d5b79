//! Text to video end to end on tiny models: the DiT loop learns a caption,
//! resumes exactly, and the pipeline samples what it learned.

use std::path::Path;

use candle_core::{Device, Tensor};
use minisora::data::clips::ShapesWorldSet;
use minisora::data::shapes_world::Canvas;
use minisora::dit::DitConfig;
use minisora::patch::PatchSize;
use minisora::pipeline::{
    candidate_seed, encode, generate, generate_from, prompt_scores, rival_captions, Init,
    SampleOptions,
};
use minisora::text::TextConfig;
use minisora::train::dit::{self, DitJob};
use minisora::train::{vae as vae_train, RunConfig, Session};
use minisora::vae::VaeConfig;
use minisora::video::frames_to_tensor;

fn run(steps: u64, data: &Path, batch: usize, lr: f64) -> RunConfig {
    RunConfig {
        steps,
        batch,
        lr,
        warmup: 5,
        lr_floor: 0.1,
        seed: 2,
        data: data.to_string_lossy().into_owned(),
        frames: 4,
        height: 16,
        width: 16,
        checkpoint_every: 1000,
        shards: 1,
        ema_decay: 0.9,
        two_objects: None,
    }
}

fn session(resume: bool, stop_at: Option<u64>) -> Session {
    Session {
        resume,
        stop_at,
        command: "test".into(),
    }
}

/// A one-clip folder and a (barely trained) autoencoder for it.
fn setup(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = root.join("clip");
    ShapesWorldSet::new(3, Canvas::new(4, 16, 16).unwrap(), "gif", 8.0)
        .unwrap()
        .write(&data, 1, |_| ())
        .unwrap();
    let vae_out = root.join("vae");
    vae_train::train(
        &vae_out,
        &VaeConfig::tiny(),
        &run(2, &data, 1, 1e-3),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    (data, vae_out.join("checkpoint"))
}

fn job<'a>(vae_dir: &'a Path, run: RunConfig) -> DitJob<'a> {
    DitJob {
        dit: DitConfig {
            latent_channels: 4,
            patch: PatchSize::new(1, 2, 2).unwrap(),
            hidden: 32,
            depth: 2,
            heads: 2,
            mlp_ratio: 4,
            context_dim: 16,
            context_len: 16,
            freq_dim: 32,
            pos_embed: true,
            local_mix: true,
            rope_base: minisora::nn::ROPE_BASE,
            rope_pairs: None,
            joint_text: false,
            self_cond: false,
        },
        text: TextConfig {
            vocab_size: 0,
            max_len: 16,
            width: 16,
            depth: 1,
            heads: 2,
        },
        run,
        vae_dir,
        cfg_dropout: 0.1,
        time_shift: 1.0,
        time_mix: 0.0,
        contrast: 0.0,
        contrast_margin: 0.0,
        init: None,
    }
}

/// The error of a training run that must be refused.
fn refusal(out: &Path, job: &DitJob, resume: bool) -> String {
    match dit::train(out, job, &session(resume, None), &Device::Cpu, |_| ()) {
        Ok(_) => panic!("{} was not refused", out.display()),
        Err(e) => e.to_string(),
    }
}

fn mean_sq(x: &Tensor) -> f32 {
    x.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap()
}

fn max_abs(x: &Tensor) -> f32 {
    x.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

#[test]
fn a_tiny_model_learns_one_caption_and_generates_it() {
    let root = tempfile::tempdir().unwrap();
    let (data, vae_dir) = setup(root.path());
    let out = root.path().join("dit");
    let mut losses = vec![];
    dit::train(
        &out,
        &job(&vae_dir, run(250, &data, 4, 3e-3)),
        &session(false, None),
        &Device::Cpu,
        |r| losses.push(r.loss),
    )
    .unwrap();
    let early: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let late: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(late < early / 3.0, "loss {early} -> {late}");

    let (meta, model, vae) = dit::load(&out.join("checkpoint"), &Device::Cpu).unwrap();
    let caption = std::fs::read_to_string(data.join("clip_000000.txt")).unwrap();
    let frames = minisora::video::read(&data.join("clip_000000.gif"), &Default::default()).unwrap();
    let x = frames_to_tensor(&frames.view(), &Device::Cpu).unwrap();
    let (scale, shift) = (vae.meta.scale_factor, vae.meta.latent_mean);
    let z0 = vae
        .vae
        .encode(&x)
        .unwrap()
        .mean
        .affine(scale, -shift * scale)
        .unwrap();
    let options = SampleOptions {
        seed: 9,
        steps: 20,
        sampler: "euler".into(),
        cfg: 1.0,
        cfg_interval: [0.0, 1.0],
        shift: None,
        canvas: Canvas::new(4, 16, 16).unwrap(),
        candidates: 1,
        rivals: false,
    };
    let g = generate(&model, &meta, &vae, caption.trim(), &options, &Device::Cpu).unwrap();
    let err = mean_sq(&(&g.latent - &z0).unwrap());
    let var = mean_sq(&z0);
    assert!(
        err < 0.2 * var,
        "generated latent is off by {err} (clip latent power {var})"
    );
    assert_eq!(g.frames.dim(), (4, 16, 16, 3));
    assert_eq!(g.predictions.len(), 20);

    // same seed, same clip, bit for bit; guidance and other samplers run
    let again = generate(&model, &meta, &vae, caption.trim(), &options, &Device::Cpu).unwrap();
    assert_eq!(again.frames, g.frames);

    // editing a clip (SDEdit): `encode` is the latent written out above;
    // strength 1 ignores the clip (the plain sample, bit for bit); a small
    // strength runs its share of the steps from the clip and stays near it
    let z = encode(&vae, &frames, &Device::Cpu).unwrap();
    assert_eq!(max_abs(&(&z - &z0).unwrap()), 0.0);
    let from = |strength: f64, latent: &Tensor| {
        let init = Init {
            latent: latent.clone(),
            strength,
        };
        let caption = caption.trim();
        generate_from(
            &model,
            &meta,
            &vae,
            caption,
            &options,
            Some(&init),
            &Device::Cpu,
        )
    };
    assert_eq!(from(1.0, &z).unwrap().frames, g.frames);
    let near = from(0.1, &z).unwrap();
    assert_eq!(near.predictions.len(), 2, "the last 10% of 20 steps");
    let err_near = mean_sq(&(&near.latent - &z0).unwrap());
    assert!(
        err_near < 0.05 * var,
        "edited from t = 0.1, the latent is off by {err_near} (clip latent power {var})"
    );
    for bad in [0.0, 1.5, f64::NAN] {
        let err = from(bad, &z).err().unwrap().to_string();
        assert!(err.contains("strength"), "{err}");
    }
    let err = from(0.5, &z.narrow(4, 0, 2).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("same frames, height and width"), "{err}");
    // guidance changes the clip, and a guidance interval no step falls in
    // (the sampler never evaluates t = 0) is the conditional prediction
    // alone, bit for bit; an interval out of order is refused
    let guided = |cfg_interval: [f64; 2]| {
        let o = SampleOptions {
            cfg: 3.0,
            cfg_interval,
            ..options.clone()
        };
        generate(&model, &meta, &vae, caption.trim(), &o, &Device::Cpu)
    };
    let everywhere = guided([0.0, 1.0]).unwrap();
    assert!(max_abs(&(&everywhere.latent - &g.latent).unwrap()) > 1e-3);
    assert_eq!(guided([0.0, 0.0]).unwrap().frames, g.frames);
    let part = guided([0.5, 1.0]).unwrap();
    assert!(max_abs(&(&part.latent - &everywhere.latent).unwrap()) > 0.0);
    assert!(max_abs(&(&part.latent - &g.latent).unwrap()) > 0.0);
    for bad in [[0.8, 0.2], [-0.1, 1.0], [0.0, 1.5], [f64::NAN, 1.0]] {
        let err = guided(bad).err().unwrap().to_string();
        assert!(err.contains("--cfg-interval"), "{bad:?}: {err}");
    }
    for sampler in ["heun", "dpm++2m"] {
        let o = SampleOptions {
            sampler: sampler.into(),
            cfg: 3.0,
            steps: 4,
            ..options.clone()
        };
        assert_eq!(
            generate(&model, &meta, &vae, caption.trim(), &o, &Device::Cpu)
                .unwrap()
                .frames
                .dim()
                .0,
            4
        );
    }
    // unknown words and sizes the model cannot take are clear errors
    let err = generate(
        &model,
        &meta,
        &vae,
        "a mauve circle growing",
        &options,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("\"mauve\""), "{err}");
    let bad = SampleOptions {
        canvas: Canvas::new(4, 18, 16).unwrap(),
        ..options.clone()
    };
    assert!(
        generate(&model, &meta, &vae, caption.trim(), &bad, &Device::Cpu)
            .err()
            .unwrap()
            .to_string()
            .contains("height 18")
    );
    // 20 rows compress to 5 latent rows: not whole 2-row patches, said in pixels
    let bad = SampleOptions {
        canvas: Canvas::new(4, 20, 16).unwrap(),
        ..options.clone()
    };
    let err = generate(&model, &meta, &vae, caption.trim(), &bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("--height 20") && err.contains("multiple of 8"),
        "{err}"
    );
}

/// Candidates: the model's own diffusion-classifier score prefers the clip
/// of the caption it is given, and a clip of several candidates keeps the
/// best scored, which is that candidate's own clip.
#[test]
fn the_model_scores_a_captions_own_clip_highest_and_keeps_the_best_candidate() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("clips");
    ShapesWorldSet::new(5, Canvas::new(4, 16, 16).unwrap(), "gif", 8.0)
        .unwrap()
        .write(&data, 2, |_| ())
        .unwrap();
    let (_, vae_dir) = setup(root.path());
    let out = root.path().join("dit");
    dit::train(
        &out,
        &job(&vae_dir, run(250, &data, 4, 3e-3)),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let (meta, model, vae) = dit::load(&out.join("checkpoint"), &Device::Cpu).unwrap();
    let clip = |i: usize| {
        let caption = std::fs::read_to_string(data.join(format!("clip_{i:06}.txt"))).unwrap();
        let path = data.join(format!("clip_{i:06}.gif"));
        let frames = minisora::video::read(&path, &Default::default()).unwrap();
        (
            caption.trim().to_string(),
            encode(&vae, &frames, &Device::Cpu).unwrap(),
        )
    };
    let (captions, latents): (Vec<_>, Vec<_>) = (0..2).map(clip).unzip();
    assert_ne!(captions[0], captions[1]);
    let x0 = Tensor::cat(&latents, 0).unwrap();
    let tok = &meta.tokenizer;
    let ids = |v: Vec<u32>| Tensor::from_vec(v, (1, tok.max_len), &Device::Cpu).unwrap();
    let uncond = ids(tok.null());
    for (i, caption) in captions.iter().enumerate() {
        let cond = ids(tok.encode(caption).unwrap());
        let scores = prompt_scores(&model, &cond, &uncond, &x0, 3).unwrap();
        assert!(
            scores[i] > scores[1 - i],
            "\"{caption}\" scores its own clip {} and the other {}",
            scores[i],
            scores[1 - i]
        );
        // the same latent twice gets the same draws, so the same score
        let twice = Tensor::cat(&[&latents[i], &latents[i]], 0).unwrap();
        let same = prompt_scores(&model, &cond, &uncond, &twice, 3).unwrap();
        assert!((same[0] - same[1]).abs() < 1e-6, "{same:?}");
        assert!((same[0] - scores[i]).abs() < 1e-4, "{same:?} {scores:?}");
    }

    let options = SampleOptions {
        seed: 4,
        steps: 6,
        sampler: "dpm++2m".into(),
        cfg: 3.0,
        cfg_interval: [0.0, 1.0],
        shift: None,
        canvas: Canvas::new(4, 16, 16).unwrap(),
        candidates: 3,
        rivals: false,
    };
    let g = generate(&model, &meta, &vae, &captions[0], &options, &Device::Cpu).unwrap();
    assert_eq!(g.scores.len(), 3);
    let best = (0..3).fold(0, |b, i| if g.scores[i] > g.scores[b] { i } else { b });
    assert_eq!(g.chosen, best);
    assert_eq!(g.predictions.len(), 6);
    assert_eq!(g.predictions[5].dims(), g.latent.dims());
    // the kept clip is its candidate's own: sampled alone from that
    // candidate's seed, it comes out the same (up to the rounding of a
    // bigger batch)
    let alone = SampleOptions {
        seed: candidate_seed(options.seed, g.chosen),
        candidates: 1,
        rivals: false,
        ..options.clone()
    };
    let single = generate(&model, &meta, &vae, &captions[0], &alone, &Device::Cpu).unwrap();
    assert!(single.scores.is_empty() && single.chosen == 0);
    let diff = max_abs(&(&single.latent - &g.latent).unwrap());
    assert!(
        diff < 1e-4,
        "kept candidate differs from its own sample by {diff}"
    );
    // against rival captions: the mean over them, so a rival given twice
    // changes nothing, and a caption's own clip still scores highest
    // against the other caption
    for (i, caption) in captions.iter().enumerate() {
        let cond = ids(tok.encode(caption).unwrap());
        let other = ids(tok.encode(&captions[1 - i]).unwrap());
        let once = prompt_scores(&model, &cond, &uncond, &x0, 3).unwrap();
        let twice = Tensor::cat(&[&uncond, &uncond], 0).unwrap();
        let twice = prompt_scores(&model, &cond, &twice, &x0, 3).unwrap();
        assert!((once[0] - twice[0]).abs() < 1e-6 && (once[1] - twice[1]).abs() < 1e-6);
        let against = Tensor::cat(&[&uncond, &other], 0).unwrap();
        let rivals = prompt_scores(&model, &cond, &against, &x0, 3).unwrap();
        assert!(rivals[i] > rivals[1 - i], "{rivals:?}");
    }
    // several forwards (2 latents x 16 draws: 4 captions a forward) give
    // the mean of what each caption gives alone
    let cond = ids(tok.encode(&captions[0]).unwrap());
    let other = ids(tok.encode(&captions[1]).unwrap());
    let alone = |c: &Tensor| prompt_scores(&model, &cond, c, &x0, 3).unwrap();
    let (u, o) = (alone(&uncond), alone(&other));
    let five = Tensor::cat(&[&uncond, &other, &uncond, &other, &other], 0).unwrap();
    let mixed = prompt_scores(&model, &cond, &five, &x0, 3).unwrap();
    for i in 0..2 {
        let expected = (2.0 * u[i] + 3.0 * o[i]) / 5.0;
        assert!((mixed[i] - expected).abs() < 1e-5, "{mixed:?} {u:?} {o:?}");
    }
    let none = Tensor::zeros((0, tok.max_len), candle_core::DType::U32, &Device::Cpu).unwrap();
    let err = prompt_scores(&model, &cond, &none, &x0, 3)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("at least one caption"), "{err}");
    // generating with rivals: those the model can read are weighed
    let rivalled = SampleOptions {
        rivals: true,
        ..options.clone()
    };
    let r = generate(&model, &meta, &vae, &captions[0], &rivalled, &Device::Cpu).unwrap();
    let readable = rival_captions(&captions[0])
        .iter()
        .filter(|c| tok.encode(c).is_ok())
        .count();
    assert_eq!((r.rivals, g.rivals), (readable, 0));
    assert_eq!(r.scores.len(), 3);
    let best = (0..3).fold(0, |b, i| if r.scores[i] > r.scores[b] { i } else { b });
    assert_eq!(r.chosen, best);
    if readable > 0 {
        assert_ne!(r.scores, g.scores);
    }
    // candidate 0 is the plain sampler's clip
    assert_eq!(candidate_seed(options.seed, 0), options.seed);
    let none = SampleOptions {
        candidates: 0,
        rivals: false,
        ..options.clone()
    };
    let err = generate(&model, &meta, &vae, &captions[0], &none, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--candidates"), "{err}");
}

#[test]
fn the_rival_contrast_term_is_weighted_margined_and_logged() {
    let root = tempfile::tempdir().unwrap();
    let (data, vae_dir) = setup(root.path());
    // Shapes World on the fly: the grammar's whole vocabulary, so that
    // every rival caption can be read
    let contrasted = |contrast: f64| DitJob {
        contrast,
        contrast_margin: 10.0,
        ..job(&vae_dir, run(3, Path::new("shapes"), 2, 1e-3))
    };
    let train = |name: &str, contrast: f64| {
        let out = root.path().join(name);
        dit::train(
            &out,
            &contrasted(contrast),
            &session(false, None),
            &Device::Cpu,
            |_| (),
        )
        .unwrap();
        std::fs::read_to_string(out.join("log.csv")).unwrap()
    };
    let rows = |log: &str| -> Vec<Vec<f64>> {
        log.lines()
            .skip(1)
            .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let (plain, ranked) = (train("plain", 0.0), train("ranked", 5.0));
    assert!(plain.starts_with("step,lr,loss,clips_per_s\n"), "{plain}");
    assert!(
        ranked.starts_with("step,lr,loss,clips_per_s,rank,rival_gap\n"),
        "{ranked}"
    );
    let (plain, ranked) = (rows(&plain), rows(&ranked));
    assert_eq!((plain.len(), ranked.len()), (3, 3));
    assert!(ranked
        .iter()
        .all(|r| r.len() == 6 && r[4] >= 0.0 && r[5].is_finite()));
    // a fresh DiT predicts zeros (adaLN-Zero) under every caption: at the
    // first step each clip with a rival has a gap of 0, so the term is the
    // margin times the share of such clips (of 2: 0, 5 or 10), and the loss
    // is the plain run's (the same clips, times and noise) plus 5 times it
    let (first, base) = (&ranked[0], &plain[0]);
    assert_eq!(first[5], 0.0);
    assert!(
        [0.0, 5.0, 10.0].iter().any(|v| (first[4] - v).abs() < 1e-4),
        "{first:?}"
    );
    assert!(
        (first[2] - (base[2] + 5.0 * first[4])).abs() < 1e-3 * first[2].max(1.0),
        "{first:?} against {base:?}"
    );
    // and some step of the three has a clip the term applies to
    assert!(ranked.iter().any(|r| r[4] > 0.0), "{ranked:?}");
    let ranked = root.path().join("ranked");
    let meta: dit::DitMeta =
        minisora::checkpoint::read_json(&ranked.join("checkpoint/config.json")).unwrap();
    assert_eq!((meta.contrast, meta.contrast_margin), (5.0, 10.0));
    // the term is part of the run: resuming with another weight is refused
    let refused = refusal(&ranked, &contrasted(1.0), true);
    assert!(refused.contains("the rival-caption contrast"), "{refused}");
    // captions outside the grammar have no rivals: refused before training
    let own = root.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::copy(data.join("clip_000000.gif"), own.join("dog.gif")).unwrap();
    std::fs::write(own.join("dog.txt"), "a dog runs across the lawn\n").unwrap();
    let job = DitJob {
        contrast: 1.0,
        ..job(&vae_dir, run(2, &own, 2, 1e-3))
    };
    let refused = refusal(&root.path().join("dog"), &job, false);
    assert!(refused.contains("no caption of the 1 in"), "{refused}");
}

#[test]
fn dit_training_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let (data, vae_dir) = setup(root.path());
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    dit::train(
        &a,
        &job(&vae_dir, run(4, &data, 2, 1e-3)),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    dit::train(
        &b,
        &job(&vae_dir, run(4, &data, 2, 1e-3)),
        &session(false, Some(2)),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    dit::train(
        &b,
        &job(&vae_dir, run(4, &data, 2, 1e-3)),
        &session(true, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let read = |p: &Path| std::fs::read(p.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b), "EMA weights differ after resume");
    let raw = |p: &Path| std::fs::read(p.join("checkpoint/train.safetensors")).unwrap();
    assert_eq!(raw(&a), raw(&b));
    // the timestep shift is part of the run: resuming with another is refused
    let shifted = dit::DitJob {
        time_shift: 3.0,
        ..job(&vae_dir, run(6, &data, 2, 1e-3))
    };
    let refused = refusal(&b, &shifted, true);
    assert!(
        refused.contains("other settings (differing: the time shift)"),
        "{refused}"
    );
    assert!(dit::load(&root.path().join("none"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("no such checkpoint"));
    assert!(dit::load(&vae_dir, &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("not a text-to-video model"));
}

#[test]
fn fine_tuning_starts_from_the_model_and_keeps_its_settings() {
    let root = tempfile::tempdir().unwrap();
    let (data, vae_dir) = setup(root.path());
    let base = root.path().join("base");
    dit::train(
        &base,
        &job(&vae_dir, run(3, &data, 2, 1e-3)),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let init = base.join("checkpoint");
    let tuned = |out: &str, stop_at: Option<u64>, job: &DitJob| {
        dit::train(
            &root.path().join(out),
            job,
            &session(false, stop_at),
            &Device::Cpu,
            |_| (),
        )
    };
    let fine = DitJob {
        init: Some(&init),
        ..job(&vae_dir, run(2, &data, 2, 1e-3))
    };
    let tensors = |p: &Path| dit::load(p, &Device::Cpu).unwrap().1.varmap;
    let differ = |a: &candle_nn::VarMap, b: &candle_nn::VarMap| -> f32 {
        let a = a.data().lock().unwrap();
        let b = b.data().lock().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .map(|(name, v)| max_abs(&(v.as_tensor() - b[name].as_tensor()).unwrap()))
            .fold(0.0, f32::max)
    };
    // stopped before its first step: the model it starts from, unchanged
    let start = tuned("start", Some(0), &fine).unwrap();
    assert_eq!(differ(&tensors(&init), &tensors(&start.checkpoint)), 0.0);
    // the trained weights start from the averaged ones too
    let read = |p: &Path, file: &str| {
        minisora::checkpoint::read_tensors(&p.join(file), &Device::Cpu).unwrap()
    };
    let started = read(&start.checkpoint, "train.safetensors");
    for (name, v) in read(&init, "model.safetensors") {
        assert_eq!(max_abs(&(v - &started[&name]).unwrap()), 0.0, "{name}");
    }
    let meta: dit::DitMeta =
        minisora::checkpoint::read_json(&start.checkpoint.join("config.json")).unwrap();
    assert_eq!(meta.init.as_deref(), Some(init.to_str().unwrap()));
    // two steps move it, and it still loads and samples as a whole model
    let done = tuned("done", None, &fine).unwrap();
    assert!(differ(&tensors(&init), &tensors(&done.checkpoint)) > 0.0);
    // resuming without the same --init is another run
    let refused = refusal(
        &root.path().join("start"),
        &job(&vae_dir, run(2, &data, 2, 1e-3)),
        true,
    );
    assert!(refused.contains("other settings"), "{refused}");

    // another architecture, another autoencoder and unknown caption words are refused
    let mut wider = fine.clone();
    wider.dit.hidden = 48;
    let err = tuned("wider", None, &wider).err().unwrap().to_string();
    assert!(err.contains("keeps the architecture"), "{err}");
    let other_vae = root.path().join("other_vae");
    std::fs::create_dir_all(&other_vae).unwrap();
    std::fs::copy(
        vae_dir.join("model.safetensors"),
        other_vae.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        minisora::checkpoint::read_json(&vae_dir.join("config.json")).unwrap();
    config["latent_mean"] = serde_json::json!(0.25);
    minisora::checkpoint::write_json(&other_vae.join("config.json"), &config).unwrap();
    let err = tuned(
        "other_vae",
        None,
        &DitJob {
            vae_dir: &other_vae,
            ..fine.clone()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("another autoencoder"), "{err}");
    let other_data = root.path().join("other_clip");
    ShapesWorldSet::new(11, Canvas::new(4, 16, 16).unwrap(), "gif", 8.0)
        .unwrap()
        .write(&other_data, 1, |_| ())
        .unwrap();
    let err = tuned(
        "other_data",
        None,
        &DitJob {
            init: Some(&init),
            ..job(&vae_dir, run(2, &other_data, 2, 1e-3))
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("cannot read its caption"), "{err}");
}

/// A DiT with joint text attention trains, resumes exactly, records the
/// choice in its checkpoint, and generates with guidance.
#[test]
fn a_joint_attention_model_trains_resumes_and_generates() {
    let _ = trains_resumes_and_generates(|dit| {
        dit.joint_text = true;
        dit.local_mix = false;
    });
}

/// So does a self-conditioning DiT, whose training feeds its estimate back
/// on some steps; and its sampler hands each step the last estimate: with
/// that estimate's embedding zeroed, the same seed makes another clip.
#[test]
fn a_self_conditioning_model_trains_resumes_and_generates() {
    let (model, generate_again, first) = trains_resumes_and_generates(|dit| dit.self_cond = true);
    let embed = model.varmap.data().lock().unwrap()["dit.estimate_embed.weight"].clone();
    let learned = embed.as_tensor().abs().unwrap().max_all().unwrap();
    assert!(
        learned.to_scalar::<f32>().unwrap() > 0.0,
        "the embedding never trained"
    );
    embed.set(&embed.as_tensor().zeros_like().unwrap()).unwrap();
    let second = generate_again(&model);
    assert_ne!(values(&first), values(&second));
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Trains a tiny model of `variant`'s architecture for 4 steps, once
/// straight and once stopped at 2 and resumed, which must give the same
/// weights; checks the checkpoint records the architecture and generates
/// with guidance. Returns the model, a way to generate the same clip again,
/// and the clip's latent.
#[allow(clippy::type_complexity)]
fn trains_resumes_and_generates(
    variant: impl Fn(&mut DitConfig),
) -> (
    dit::TextToVideo,
    Box<dyn Fn(&dit::TextToVideo) -> Tensor>,
    Tensor,
) {
    let root = tempfile::tempdir().unwrap();
    let (data, vae_dir) = setup(root.path());
    let config_of = |steps| {
        let mut j = job(&vae_dir, run(steps, &data, 2, 1e-3));
        variant(&mut j.dit);
        j
    };
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let config = config_of(4);
    dit::train(&a, &config, &session(false, None), &Device::Cpu, |_| ()).unwrap();
    dit::train(&b, &config, &session(false, Some(2)), &Device::Cpu, |_| ()).unwrap();
    dit::train(&b, &config, &session(true, None), &Device::Cpu, |_| ()).unwrap();
    let read = |p: &Path| std::fs::read(p.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b), "EMA weights differ after resume");

    let (meta, model, vae) = dit::load(&a.join("checkpoint"), &Device::Cpu).unwrap();
    assert_eq!(
        meta.dit, config.dit,
        "the checkpoint records the architecture"
    );
    let caption = std::fs::read_to_string(data.join("clip_000000.txt")).unwrap();
    let options = SampleOptions {
        seed: 1,
        steps: 3,
        sampler: "dpm++2m".into(),
        cfg: 3.0,
        cfg_interval: [0.0, 1.0],
        shift: None,
        canvas: Canvas::new(4, 16, 16).unwrap(),
        candidates: 1,
        rivals: false,
    };
    let g = generate(&model, &meta, &vae, caption.trim(), &options, &Device::Cpu).unwrap();
    assert_eq!(g.frames.dim(), (4, 16, 16, 3));
    assert_eq!(g.predictions.len(), 3);
    assert!(values(&g.latent).iter().all(|v| v.is_finite()));
    let again = move |model: &dit::TextToVideo| {
        generate(model, &meta, &vae, caption.trim(), &options, &Device::Cpu)
            .unwrap()
            .latent
    };
    (model, Box::new(again), g.latent)
}
