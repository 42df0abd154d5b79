//! The PyTorch peer (`benches/peer/`) agrees with minisora's DiT. Runs when
//! a Python with torch and safetensors is at hand (`benches/peer/.venv`,
//! made by `benches/peer/run.sh`, or the system's `python3`); otherwise it
//! says it was skipped and passes, since CI does not install PyTorch's 3 GB.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python_with_torch(repo: &Path) -> Option<PathBuf> {
    let venv = repo.join("benches/peer/.venv/bin/python");
    [venv, PathBuf::from("python3")].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import torch, safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_pytorch_peer_reproduces_a_denoising_step() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(python) = python_with_torch(repo) else {
        eprintln!(
            "skipped: no Python with torch and safetensors (benches/peer/run.sh installs them)"
        );
        return;
    };
    // two presets' shapes, the default's tokens (8x1x1 latent cells) and the
    // tiny one's; then both again with the local mix, and with another RoPE
    // base; then the default (head size 32) with its RoPE pairs given to h
    // and w; the script exits 1 on a parity miss and 2 on any other failure
    let both = ["--preset", "tiny", "--preset", "default"];
    for (presets, extra) in [
        (&both[..], &[][..]),
        (&both, &["--local-mix"]),
        (&both, &["--rope-base", "100"]),
        (&both[2..], &["--rope-pairs", "0,8,8"]),
    ] {
        let out = Command::new(&python)
            .arg(repo.join("benches/peer/parity_and_speed.py"))
            .arg("--parity-only")
            .args(presets)
            .args(["--tokens", "8", "--tokens", "64", "--batch", "2", "--json"])
            .args(extra)
            .arg("--minisora")
            .arg(env!("CARGO_BIN_EXE_minisora"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{extra:?}: {text}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cases = report["cases"].as_array().expect("a cases array");
        // a case for each preset (two words of flags each) at each of the
        // two token counts
        let presets_given = presets.len() / 2;
        assert_eq!(cases.len(), presets_given * 2, "{text}");
        for case in cases {
            let err = case["rel_error"].as_f64().unwrap();
            assert!(err < 1e-4, "{extra:?}: {case}");
        }
    }
}

#[test]
fn bench_export_carries_its_rope_base_and_pairs_to_the_config_and_the_output() {
    // what the peer checks itself against: without torch this still holds,
    // so a --rope-base or --rope-pairs the export dropped would not pass
    // parity unseen
    let dir = tempfile::tempdir().unwrap();
    let export = |out: &str, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_minisora"))
            .args(["bench", "export", "--preset", "tiny", "--tokens", "8"])
            .args(["--batch", "2", "--out", out])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("config.json")).unwrap(),
        )
        .unwrap();
        let tensors = minisora::checkpoint::read_tensors(
            &dir.path().join(out).join("output.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let out = tensors["out"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (config["dit"].clone(), out)
    };
    let moved = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    let (config, plain) = export("plain", &[]);
    assert_eq!(config["rope_base"], 10_000.0);
    // left unset, the pairs are not written: older builds read the config
    assert!(config.get("rope_pairs").is_none(), "{config}");
    let (config, turned) = export("turned", &["--rope-base", "100"]);
    assert_eq!(config["rope_base"], 100.0);
    let m = moved(&plain, &turned);
    assert!(m > 1e-4, "the base did not reach the forward: {m}");
    // the tiny preset's head has 8 pairs (a third each: 2, 2, 4)
    let (config, split) = export("split", &["--rope-pairs", "0,4,4"]);
    assert_eq!(config["rope_pairs"], serde_json::json!([0, 4, 4]));
    let m = moved(&plain, &split);
    assert!(m > 1e-4, "the pairs did not reach the forward: {m}");
    // pairs that do not fill the head, or are not three numbers, are refused
    for (pairs, needle) in [
        ("0,4,5", "must add up to the 8 rotation pairs"),
        ("0,8", "expected three whole numbers T,H,W"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_minisora"))
            .args(["bench", "export", "--preset", "tiny", "--tokens", "8"])
            .args(["--rope-pairs", pairs, "--out", "refused"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && text.contains(needle),
            "{pairs}: {text}"
        );
        assert!(!dir.path().join("refused").exists());
    }
}
