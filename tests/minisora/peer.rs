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
    // base; the script exits 1 on a parity miss and 2 on any other failure
    for extra in [&[][..], &["--local-mix"], &["--rope-base", "100"]] {
        let out = Command::new(&python)
            .arg(repo.join("benches/peer/parity_and_speed.py"))
            .args(["--parity-only", "--preset", "tiny", "--preset", "default"])
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
        assert_eq!(cases.len(), 4, "{text}");
        for case in cases {
            let err = case["rel_error"].as_f64().unwrap();
            assert!(err < 1e-4, "{extra:?}: {case}");
        }
    }
}

#[test]
fn bench_export_carries_its_rope_base_to_the_config_and_the_output() {
    // what the peer checks itself against: without torch this still holds,
    // so a --rope-base the export dropped would not pass parity unseen
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
        (config["dit"]["rope_base"].as_f64().unwrap(), out)
    };
    let (base, plain) = export("plain", &[]);
    assert_eq!(base, 10_000.0);
    let (base, turned) = export("turned", &["--rope-base", "100"]);
    assert_eq!(base, 100.0);
    assert_eq!(plain.len(), turned.len());
    let moved = plain
        .iter()
        .zip(&turned)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-4, "the base did not reach the forward: {moved}");
}
