//! The judge on tiny models: a run resumes exactly, a finished judge is
//! written into its model and refused by a model of another autoencoder,
//! and generation keeps the candidate the judge rates highest.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use minisora::judge::JudgeConfig;
use minisora::patch::PatchSize;
use minisora::train::judge::{self, JudgeJob};
use minisora::train::{vae as vae_train, RunConfig, Session};
use minisora::vae::VaeConfig;

pub fn run(steps: u64, seed: u64) -> RunConfig {
    RunConfig {
        steps,
        batch: 4,
        lr: 2e-3,
        warmup: 1,
        lr_floor: 0.1,
        seed,
        data: "shapes".into(),
        frames: 4,
        height: 16,
        width: 16,
        checkpoint_every: 1000,
        shards: 2,
        ema_decay: 0.9,
        two_objects: Some(0.5),
    }
}

fn session(resume: bool, stop_at: Option<u64>) -> Session {
    Session {
        resume,
        stop_at,
        command: "test".into(),
    }
}

/// A barely trained tiny autoencoder (seed `seed`) in `dir`; returns its
/// checkpoint.
pub fn tiny_vae(dir: &Path, seed: u64) -> PathBuf {
    vae_train::train(
        dir,
        &VaeConfig::tiny(),
        &run(2, seed),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    dir.join("checkpoint")
}

/// A judge job for the tiny autoencoder.
pub fn job(vae_dir: &Path, run: RunConfig) -> JudgeJob<'_> {
    JudgeJob {
        judge: JudgeConfig {
            latent_channels: VaeConfig::tiny().latent_channels,
            patch: PatchSize::new(1, 2, 2).unwrap(),
            width: 16,
            depth: 1,
            heads: 2,
            vocab_size: 0,
            max_len: 16,
        },
        run,
        vae_dir,
    }
}

/// A model folder holding only an autoencoder: what a judge checks.
fn model_with(vae: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("vae")).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(vae.join(name), dir.join("vae").join(name)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn a_judge_run_resumes_exactly_and_goes_only_into_a_model_of_its_autoencoder() {
    let root = tempfile::tempdir().unwrap();
    let vae = tiny_vae(&root.path().join("vae"), 1);
    let straight = root.path().join("straight");
    let out = judge::train(
        &straight,
        &job(&vae, run(4, 3)),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap();
    assert_eq!(out.step, 4);
    let resumed = root.path().join("resumed");
    for (resume, stop_at) in [(false, Some(2)), (true, None)] {
        judge::train(
            &resumed,
            &job(&vae, run(4, 3)),
            &session(resume, stop_at),
            &Device::Cpu,
            |_| (),
        )
        .unwrap();
    }
    for name in [
        "model.safetensors",
        "train.safetensors",
        "optimizer.safetensors",
    ] {
        let read = |dir: &Path| std::fs::read(dir.join("checkpoint").join(name)).unwrap();
        assert!(
            read(&straight) == read(&resumed),
            "{name} differs after a resume"
        );
    }
    let log = std::fs::read_to_string(resumed.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");

    // other settings are refused, by name
    let other = RunConfig {
        lr: 1e-3,
        ..run(6, 3)
    };
    let err = judge::train(
        &resumed,
        &job(&vae, other),
        &session(true, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lr"), "{err}");
    // a clip folder is refused: a judge's mistakes come from the grammar
    let folder = RunConfig {
        data: root.path().to_string_lossy().into_owned(),
        ..run(4, 3)
    };
    let err = judge::train(
        &root.path().join("folder"),
        &job(&vae, folder),
        &session(false, None),
        &Device::Cpu,
        |_| (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Shapes World"), "{err}");

    // the finished judge scored itself on held-out examples
    let ckpt = straight.join("checkpoint");
    let meta = judge::install(&ckpt, &model_with(&vae, &root.path().join("model"))).unwrap();
    let [clip, caption] = meta.held_out.unwrap();
    assert!((0.0..=1.0).contains(&clip) && (0.0..=1.0).contains(&caption));
    let model = root.path().join("model");
    let j = judge::load_beside(&model, &Device::Cpu, DType::F32)
        .unwrap()
        .expect("installed");
    assert!(!model.join("judge/train.safetensors").exists());
    // it rates any latent of its autoencoder's shape against a caption
    let z = Tensor::randn(0f32, 1.0, (3, 4, 2, 4, 4), &Device::Cpu).unwrap();
    let scores = j.scores(&z, "a red circle moving left").unwrap();
    assert_eq!(scores.len(), 3);
    assert!(scores.iter().all(|s| s.is_finite()));
    assert!(scores[0] != scores[1], "{scores:?}");
    let other = j.scores(&z, "a large blue square growing").unwrap();
    assert!(other[0] != scores[0], "the caption changes nothing");
    let err = j.scores(&z, "a red dragon").err().unwrap().to_string();
    assert!(err.contains("dragon"), "{err}");
    // no judge: none
    let bare = model_with(&vae, &root.path().join("bare"));
    assert!(judge::load_beside(&bare, &Device::Cpu, DType::F32)
        .unwrap()
        .is_none());

    // a model of another autoencoder refuses it, both ways
    let vae2 = tiny_vae(&root.path().join("vae2"), 2);
    let model2 = model_with(&vae2, &root.path().join("model2"));
    let err = judge::install(&ckpt, &model2).unwrap_err().to_string();
    assert!(err.contains("another autoencoder"), "{err}");
    std::fs::remove_dir_all(model2.join("vae")).unwrap();
    model_with(&vae2, &model2);
    let copy = model2.join("judge");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join("judge").join(name), copy.join(name)).unwrap();
    }
    let err = judge::load_beside(&model2, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another autoencoder"), "{err}");
}
