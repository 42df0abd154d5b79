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
