//! Checkpoint directories: `config.json` (every hyper-parameter, the data
//! contract, the command that made it), `*.safetensors` weights and a
//! `card.md`. Written whole to a temporary directory and swapped into place,
//! so a crash mid-save never leaves a half-written checkpoint; loading checks
//! everything and says what is wrong.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{invalid, Error, Result};

fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let Some(name) = dir.file_name() else {
        invalid!("checkpoint path \"{}\" has no name", dir.display());
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{}.minisora-{tag}", name.to_string_lossy())))
}

/// Writes a checkpoint directory atomically: `fill` writes the files into a
/// fresh temporary directory, which then replaces `dir`.
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp")?;
    let old = sibling(dir, "old")?;
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Brings back a checkpoint whose save was interrupted between its two
/// renames (the previous version is then still whole under a hidden name).
pub fn recover(dir: &Path) -> Result<()> {
    let old = sibling(dir, "old")?;
    if !dir.exists() && old.is_dir() {
        fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Reads JSON, with the file named in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a valid minisora file: {e}",
            path.display()
        ))
    })
}

/// Reads `DIR/config.json` as `T` after checking that its `kind` is
/// `kind`, so a checkpoint of another stage gets a message that says so.
pub fn read_config<T: DeserializeOwned>(dir: &Path, kind: &str, what: &str) -> Result<T> {
    let path = dir.join("config.json");
    let value: serde_json::Value = read_json(&path)?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(k) if k == kind => {}
        Some(k) => invalid!(
            "{}: is a \"{k}\" checkpoint, not {what} ({kind})",
            dir.display()
        ),
        None => invalid!(
            "{}: has no \"kind\": not a minisora checkpoint",
            path.display()
        ),
    }
    serde_json::from_value(value).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Saves named tensors as safetensors.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| Error::Invalid(format!("{}: cannot save: {e}", path.display())))
}

/// Loads named tensors, failing clearly on a missing, truncated or foreign file.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        invalid!(
            "{}: missing (is this a minisora checkpoint directory?)",
            path.display()
        );
    }
    candle_core::safetensors::load(path, device).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a readable safetensors file (truncated or corrupt?): {e}",
            path.display()
        ))
    })
}

/// Copies `saved` into the variables of `varmap`, checking that the names
/// and shapes match exactly.
pub fn load_into(
    varmap: &candle_nn::VarMap,
    saved: &HashMap<String, Tensor>,
    what: &Path,
) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    for (name, var) in vars.iter() {
        let Some(t) = saved.get(name) else {
            invalid!(
                "{}: has no weight \"{name}\": it was made by a different model configuration",
                what.display()
            );
        };
        if t.dims() != var.dims() {
            invalid!(
                "{}: weight \"{name}\" has shape {:?}, the configuration wants {:?}",
                what.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    if let Some(extra) = saved.keys().find(|k| !vars.contains_key(*k)) {
        invalid!("{}: has a weight \"{extra}\" this configuration does not: a different model configuration", what.display());
    }
    Ok(())
}

/// A copy of `varmap` with every variable converted to `dtype`.
pub fn varmap_as(
    varmap: &candle_nn::VarMap,
    dtype: candle_core::DType,
) -> Result<candle_nn::VarMap> {
    let out = candle_nn::VarMap::new();
    {
        let mut data = out
            .data()
            .lock()
            .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
        for (name, t) in named_tensors(varmap)? {
            data.insert(name, candle_core::Var::from_tensor(&t.to_dtype(dtype)?)?);
        }
    }
    Ok(out)
}

/// The dtype and device of `varmap`'s variables (f32 on the CPU when empty).
pub fn varmap_dtype_device(
    varmap: &candle_nn::VarMap,
) -> Result<(candle_core::DType, candle_core::Device)> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    Ok(data
        .values()
        .next()
        .map(|v| (v.dtype(), v.device().clone()))
        .unwrap_or((candle_core::DType::F32, candle_core::Device::Cpu)))
}

/// What a model for inference is built from: a copy of `varmap` in `dtype`
/// (so its dtype can still be read) and a builder over that copy's
/// variables as plain tensors (see [`inference_tensors`]).
pub fn inference_builder(
    varmap: &candle_nn::VarMap,
    dtype: candle_core::DType,
) -> Result<(candle_nn::VarMap, candle_nn::VarBuilder<'static>)> {
    let (_, device) = varmap_dtype_device(varmap)?;
    let copy = varmap_as(varmap, dtype)?;
    let vb = candle_nn::VarBuilder::from_tensors(inference_tensors(&copy, dtype)?, dtype, &device);
    Ok((copy, vb))
}

/// `varmap`'s variables as plain tensors in `dtype`, for a model that only
/// runs forward: build it with `VarBuilder::from_tensors`. An op on a
/// variable records its inputs for the backward pass, so a forward through
/// a model built on the variables themselves keeps every intermediate
/// alive until its output is dropped: measured on an H200, 97 GiB for one
/// XL step at 16k tokens (and an out-of-memory error at 32k) instead of the
/// few GiB of the activations live at once.
pub fn inference_tensors(
    varmap: &candle_nn::VarMap,
    dtype: candle_core::DType,
) -> Result<HashMap<String, Tensor>> {
    named_tensors(varmap)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?.detach())))
        .collect()
}

/// All variables of `varmap` by name, for saving.
pub fn named_tensors(varmap: &candle_nn::VarMap) -> Result<HashMap<String, Tensor>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    Ok(vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_save_keeps_the_previous_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir(&dir, |d| {
            fs::write(d.join("a"), "1").map_err(|e| Error::io(d, e))
        })
        .unwrap();
        let err = write_dir(&dir, |d| {
            fs::write(d.join("a"), "2").unwrap();
            Err(Error::Invalid("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        write_dir(&dir, |d| {
            fs::write(d.join("a"), "3").map_err(|e| Error::io(d, e))
        })
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "no temporaries left"
        );
    }

    #[test]
    fn an_interrupted_swap_is_recovered() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir(&dir, |d| {
            fs::write(d.join("a"), "1").map_err(|e| Error::io(d, e))
        })
        .unwrap();
        fs::rename(&dir, sibling(&dir, "old").unwrap()).unwrap();
        recover(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    }
}
