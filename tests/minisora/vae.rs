//! The compression network: shapes, learning, gradients, checkpoints, resume.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::train::optim::{AdamW, AdamWConfig};
use minisora::train::{self, vae as vae_train, RunConfig, Session};
use minisora::vae::{Vae, VaeConfig};
use minisora::video::frames_to_tensor;

fn build(config: &VaeConfig, seed: u64) -> (Vae, VarMap) {
    let varmap = VarMap::new();
    let vae = Vae::new(
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    train::seeded_init(&varmap, seed).unwrap();
    (vae, varmap)
}

fn clip(t: usize, h: usize, w: usize) -> Tensor {
    let scene = Scene::parse("a red circle moving right and a small blue square growing").unwrap();
    let frames = render(&scene, Canvas::new(t, h, w).unwrap(), 1)
        .unwrap()
        .frames;
    frames_to_tensor(&frames.view(), &Device::Cpu).unwrap()
}

fn vars(varmap: &VarMap) -> HashMap<String, Vec<f32>> {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn encode_and_decode_shapes_for_many_sizes_and_factors() {
    // with and without the full-resolution refinement
    for (ft, fs, pixel_channels) in [(1, 4, 0), (2, 4, 4), (4, 4, 4), (2, 8, 0), (2, 8, 5)] {
        let config = VaeConfig {
            ft,
            fs,
            pixel_channels,
            pixel_width: 8,
            ..VaeConfig::tiny()
        };
        let (vae, _) = build(&config, 0);
        for (t, h, w) in [(4, 16, 16), (8, 16, 32), (4, 32, 8)] {
            if h % fs != 0 || w % fs != 0 || t % ft != 0 {
                continue;
            }
            let x = clip(t, h, w);
            let post = vae.encode(&x).unwrap();
            assert_eq!(post.mean.dims(), &[1, 4, t / ft, h / fs, w / fs]);
            assert_eq!(vae.decode(&post.mean).unwrap().dims(), x.dims());
        }
    }
    let (vae, _) = build(&VaeConfig::tiny(), 0);
    let err = vae.encode(&clip(4, 18, 16)).err().unwrap().to_string();
    assert!(
        err.contains("height 18") && err.contains("factor 4"),
        "{err}"
    );
    let err = vae.encode(&clip(5, 16, 16)).err().unwrap().to_string();
    assert!(err.contains("frames 5"), "{err}");
    assert!(VaeConfig {
        fs: 3,
        ..VaeConfig::tiny()
    }
    .validate()
    .is_err());
}

#[test]
fn a_tiny_autoencoder_overfits_one_clip_and_every_parameter_learns() {
    // without and with the full-resolution refinement
    for pixel_channels in [0, 4] {
        overfit(&VaeConfig {
            pixel_channels,
            pixel_width: 8,
            ..VaeConfig::tiny()
        });
    }
}

fn overfit(config: &VaeConfig) {
    let (vae, varmap) = build(config, 1);
    let x = clip(4, 16, 16);
    let eps = Tensor::zeros((1, 4, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let all: HashMap<_, _> = varmap.data().lock().unwrap().clone();
    let mut opt = AdamW::new(all.clone(), AdamWConfig::default()).unwrap();
    let (loss, _, _) = vae.loss(&x, &eps).unwrap();
    // residual branches end in zero-initialised layers (a fresh block is the
    // identity), so what lies before them learns from the second step on
    opt.step(&loss.backward().unwrap(), 3e-3).unwrap();
    let (loss, _, _) = vae.loss(&x, &eps).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in &all {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
    let first: f32 = loss.to_scalar().unwrap();
    let mut last = first;
    for _ in 0..150 {
        let (loss, _, _) = vae.loss(&x, &eps).unwrap();
        last = loss.to_scalar().unwrap();
        opt.step(&loss.backward().unwrap(), 3e-3).unwrap();
    }
    assert!(last < first / 10.0, "loss {first} -> {last}");
}

fn session(resume: bool, stop_at: Option<u64>) -> Session {
    Session {
        resume,
        stop_at,
        command: "test".into(),
    }
}

fn run(steps: u64, data: &str) -> RunConfig {
    RunConfig {
        steps,
        batch: 2,
        lr: 3e-3,
        warmup: 2,
        lr_floor: 0.1,
        seed: 5,
        data: data.into(),
        frames: 4,
        height: 16,
        width: 16,
        checkpoint_every: 100,
        shards: 2,
        ema_decay: 0.5,
        two_objects: None,
    }
}

#[test]
fn resuming_halfway_ends_at_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let config = VaeConfig::tiny();
    vae_train::train(
        &a,
        &config,
        &run(6, "shapes"),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    vae_train::train(
        &b,
        &config,
        &run(6, "shapes"),
        &session(false, Some(3)),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let half = vae_train::load(&b.join("checkpoint"), &Device::Cpu).unwrap();
    assert_eq!(half.meta.step, 3);
    vae_train::train(
        &b,
        &config,
        &run(6, "shapes"),
        &session(true, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let (wa, wb) = (
        vae_train::load(&a.join("checkpoint"), &Device::Cpu).unwrap(),
        vae_train::load(&b.join("checkpoint"), &Device::Cpu).unwrap(),
    );
    assert_eq!(wb.meta.step, 6);
    assert_eq!(
        vars(&wa.varmap),
        vars(&wb.varmap),
        "weights differ after resume"
    );
    // the log holds each step once
    let log = std::fs::read_to_string(b.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 7, "{log}");
    // the same figures, step for step (the last column is a timing)
    let figures = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(
        figures(&std::fs::read_to_string(a.join("log.csv")).unwrap()),
        figures(&log)
    );
    // resuming with other settings, or starting over an existing run, is refused
    let other = RunConfig {
        lr: 1e-2,
        ..run(6, "shapes")
    };
    let err = vae_train::train(
        &b,
        &config,
        &other,
        &session(true, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
    let err = vae_train::train(
        &b,
        &config,
        &run(6, "shapes"),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn shards_change_results_only_by_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let config = VaeConfig::tiny();
    let losses = |shards: usize| -> Vec<f64> {
        let out = dir.path().join(format!("s{shards}"));
        let r = RunConfig {
            shards,
            ..run(4, "shapes")
        };
        vae_train::train(
            &out,
            &config,
            &r,
            &session(false, None),
            &Device::Cpu,
            |_| (),
        )
        .unwrap();
        std::fs::read_to_string(out.join("log.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect()
    };
    let (one, two) = (losses(1), losses(2));
    assert_eq!(one.len(), 4);
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{one:?} vs {two:?}");
    }
    // the batch must split evenly
    let odd = RunConfig {
        batch: 3,
        ..run(4, "shapes")
    };
    let err = vae_train::train(
        &dir.path().join("odd"),
        &config,
        &odd,
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap_err();
    assert!(err.to_string().contains("multiple of the shards"), "{err}");
}

#[test]
fn checkpoints_reload_exactly_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    vae_train::train(
        &out,
        &VaeConfig::tiny(),
        &run(1, "shapes"),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    let ckpt = out.join("checkpoint");
    let a = vae_train::load(&ckpt, &Device::Cpu).unwrap();
    let b = vae_train::load(&ckpt, &Device::Cpu).unwrap();
    let x = clip(4, 16, 16);
    let (ra, rb) = (
        a.vae.reconstruct(&x).unwrap(),
        b.vae.reconstruct(&x).unwrap(),
    );
    let diff: f32 = (ra - rb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
    assert!(a.meta.scale_factor.is_finite() && a.meta.scale_factor > 0.0);

    // a mismatched configuration
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    meta["vae"]["width"] = serde_json::json!(24);
    let bad = dir.path().join("mismatch");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), meta.to_string()).unwrap();
    std::fs::copy(
        ckpt.join("model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    let err = vae_train::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shape") || err.contains("configuration"),
        "{err}"
    );
    // a truncated weights file
    let bytes = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        bad.join("config.json"),
        std::fs::read(ckpt.join("config.json")).unwrap(),
    )
    .unwrap();
    let err = vae_train::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    // no checkpoint at all, or garbage config
    assert!(vae_train::load(&dir.path().join("nothing"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("no such checkpoint"));
    std::fs::write(bad.join("config.json"), "{").unwrap();
    assert!(vae_train::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("config.json"));
}

#[test]
fn training_reads_a_clip_folder_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    let set =
        minisora::data::clips::ShapesWorldSet::new(0, Canvas::new(4, 16, 16).unwrap(), "gif", 8.0)
            .unwrap();
    set.write(&data, 3, |_| ()).unwrap();
    let out = dir.path().join("run");
    let r = vae_train::train(
        &out,
        &VaeConfig::tiny(),
        &run(2, &data.to_string_lossy()),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    );
    assert_eq!(r.unwrap().step, 2);
    let err = vae_train::train(
        &dir.path().join("r2"),
        &VaeConfig::tiny(),
        &run(2, "nowhere"),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    );
    assert!(err.unwrap_err().to_string().contains("\"nowhere\""));
}
