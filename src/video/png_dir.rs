//! Folders of lossless PNG frames: `frame_0000.png`, `frame_0001.png`, ...
//! The format of `minisora data`'s clips, and a way to hand frames to any
//! other tool without a codec in between.

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::{s, Array4, ArrayView4};

use super::{atomic, Frames};
use crate::{Error, Result};

/// The name of frame `f` in a frame folder.
pub fn frame_name(f: usize) -> String {
    format!("frame_{f:04}.png")
}

/// The frame index of a `frame_NNNN.png` name.
fn frame_index(name: &str) -> Option<usize> {
    name.strip_prefix("frame_")?
        .strip_suffix(".png")?
        .parse()
        .ok()
}

fn write_frames(dir: &Path, frames: &ArrayView4<u8>) -> Result<()> {
    let (t, h, w, _) = frames.dim();
    for f in 0..t {
        let frame = frames.slice(s![f, .., .., ..]);
        let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let p = |c| frame[[y as usize, x as usize, c]];
            image::Rgb([p(0), p(1), p(2)])
        });
        let path = dir.join(frame_name(f));
        img.save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| Error::video(&path, format!("cannot write PNG: {e}")))?;
    }
    Ok(())
}

/// Writes frames into a folder. A new folder is filled under a temporary name
/// and renamed into place; into an existing folder each frame is moved in
/// once all are written, and older `frame_NNNN.png` beyond the new count are
/// removed so the folder holds exactly this clip.
pub(super) fn write(dir: &Path, frames: &ArrayView4<u8>) -> Result<()> {
    let dir = PathBuf::from(dir.to_string_lossy().trim_end_matches('/'));
    let tmp = atomic::temp_path(&dir)?;
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_frames(&tmp, frames).and_then(|()| {
        if !dir.exists() {
            return fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e));
        }
        let t = frames.dim().0;
        for f in 0..t {
            let name = frame_name(f);
            fs::rename(tmp.join(&name), dir.join(&name))
                .map_err(|e| Error::io(dir.join(&name), e))?;
        }
        for entry in fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if frame_index(&name).is_some_and(|i| i >= t) {
                fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(())
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Reads the `frame_NNNN.png` files of a folder in frame order. Every frame
/// must have the first one's size; frame numbers must run 0, 1, 2, ...
pub(super) fn read(dir: &Path, size: Option<(usize, usize)>) -> Result<Frames> {
    let mut indexed: Vec<(usize, PathBuf)> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter_map(|e| frame_index(&e.file_name().to_string_lossy()).map(|i| (i, e.path())))
        .collect();
    if indexed.is_empty() {
        return Err(Error::video(dir, "the folder has no frame_NNNN.png files"));
    }
    indexed.sort();
    if let Some((k, (i, _))) = indexed.iter().enumerate().find(|(k, (i, _))| k != i) {
        return Err(Error::video(
            dir,
            format!(
                "frames are not numbered 0, 1, 2, ...: expected {}, found {i}",
                frame_name(k)
            ),
        ));
    }
    let mut out: Option<Frames> = None;
    for (f, path) in &indexed {
        let img = image::open(path)
            .map_err(|e| Error::video(path, format!("not a readable PNG: {e}")))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let frames = out.get_or_insert_with(|| Array4::zeros((indexed.len(), h, w, 3)));
        let (_, fh, fw, _) = frames.dim();
        if (fh, fw) != (h, w) {
            return Err(Error::video(
                path,
                format!("frame is {w}x{h}, but frame 0 is {fw}x{fh}"),
            ));
        }
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                frames[[*f, y as usize, x as usize, c]] = px[c];
            }
        }
    }
    // `indexed` is not empty, so `out` was filled
    let frames = out.ok_or_else(|| Error::video(dir, "the folder has no frames"))?;
    Ok(match size {
        Some((h, w)) => super::resize(frames, h, w),
        None => frames,
    })
}
