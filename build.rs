//! Compiles `kernels/*.cu` to PTX with nvcc, only with the `cuda` feature.
//!
//! Without the feature this does nothing (CI and CPU builds never need
//! nvcc). With it, each `kernels/NAME.cu` becomes `$OUT_DIR/NAME.ptx`, which
//! `src/ops/cuda.rs` embeds with `include_str!`; the GPU machine then needs
//! only the driver. Settings, read from the environment:
//! - `CUDA_COMPUTE_CAP`: the target architecture, e.g. `90` for H100/H200
//!   (default 90). PTX for `sm_XX` runs on that architecture and later ones.
//! - `CUDA_ROOT` or `CUDA_HOME`: where `bin/nvcc` is; otherwise `nvcc` on `PATH`.
//! - `NVCC_FLAGS`: extra flags, separated by spaces.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(message) = build_kernels() {
        // a build script reports by panicking; the message is the whole report
        panic!("\n\nminisora: building the CUDA kernels failed:\n{message}\n");
    }
}

fn build_kernels() -> Result<(), String> {
    for var in [
        "CUDA_COMPUTE_CAP",
        "CUDA_ROOT",
        "CUDA_HOME",
        "NVCC_FLAGS",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "CUDA_COMPUTE_CAP must look like 90 or 80, got \"{cap}\""
        ));
    }
    let nvcc = find_nvcc();
    let extra: Vec<String> = std::env::var("NVCC_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map_err(|e| format!("kernels/: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for entry in std::fs::read_dir("kernels").map_err(|e| format!("kernels/: {e}"))? {
        let path = entry.map_err(|e| format!("kernels/: {e}"))?.path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for src in &sources {
        compile(&nvcc, src, &out_dir, &cap, &extra)?;
    }
    Ok(())
}

/// `$CUDA_ROOT/bin/nvcc`, `$CUDA_HOME/bin/nvcc`, or `nvcc` from `PATH`.
fn find_nvcc() -> PathBuf {
    for var in ["CUDA_ROOT", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let nvcc = Path::new(&root).join("bin").join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn compile(
    nvcc: &Path,
    src: &Path,
    out_dir: &Path,
    cap: &str,
    extra: &[String],
) -> Result<(), String> {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: not a UTF-8 file name", src.display()))?;
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let output = Command::new(nvcc)
        .arg("--ptx")
        .arg("-O3")
        .arg(format!("-arch=sm_{cap}"))
        .arg("-std=c++17")
        .arg("-Ikernels")
        .args(extra)
        .arg("-o")
        .arg(&ptx)
        .arg(src)
        .output()
        .map_err(|e| {
            format!(
                "could not run {}: {e}\n\
                 The cuda feature needs nvcc: set CUDA_ROOT (or CUDA_HOME) to a CUDA toolkit, \
                 or put nvcc on PATH. On a machine without CUDA, shared/gpu/setup-cuda13-pip.sh \
                 installs nvcc 13.0 from PyPI (see the README, \"Running on a GPU\").",
                nvcc.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "{} failed on {} ({}):\n{}{}",
            nvcc.display(),
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
