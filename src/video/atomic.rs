//! Write-to-temporary-then-rename, so a failed or interrupted write never
//! leaves a half-written file under the name the user asked for.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A temporary path beside `path` (same folder, so the rename is atomic),
/// keeping the extension. Fails if the folder does not exist.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Err(Error::Invalid(format!(
            "output path \"{}\" has no file name",
            path.display()
        )));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the folder \"{}\" does not exist", parent.display()),
            ),
        ));
    }
    let name = Path::new(name);
    let stem = name
        .file_stem()
        .unwrap_or(name.as_os_str())
        .to_string_lossy();
    let ext = name
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    Ok(parent.join(format!(".{stem}.minisora-tmp-{}{ext}", std::process::id())))
}

/// Runs `write` on a temporary path and renames the result to `path`; on
/// failure the temporary is removed and `path` is left as it was.
pub(crate) fn write_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path)?;
    let result = write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        fs::write(&path, b"old").unwrap();
        let err = write_file(&path, |tmp| {
            fs::write(tmp, b"half").unwrap();
            Err(Error::Invalid("encoder failed".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn successful_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_file(&path, |tmp| {
            fs::write(tmp, b"new").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_folder_is_an_error() {
        let err = temp_path(Path::new("/no/such/folder/out.mp4")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
