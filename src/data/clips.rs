//! Folders of captioned clips: the format `minisora data` writes and training
//! reads (`--data DIR`).
//!
//! ```text
//! DIR/
//!   dataset.json            optional: how a Shapes World set was made (see [`ShapesWorldSet`])
//!   clip_000000/            a clip: a folder of frame_0000.png, frame_0001.png, ...
//!   clip_000000.txt         its caption: one line of text
//!   holiday.mp4             or any video file FFmpeg reads, or a GIF ...
//!   holiday.txt             ... with a caption file of the same name
//! ```
//! A clip is any file or folder `NAME[.ext]` that has a caption `NAME.txt`
//! beside it; files without a caption are not clips. A caption is the first
//! non-empty line of its file, trimmed.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shapes_world::{self, Canvas, Scene, CONTRACT_VERSION};
use crate::rng::Rng;
use crate::video::{self, atomic, WriteOptions};
use crate::{invalid, Error, Result};

/// One captioned clip of a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClipEntry {
    /// The caption file's name without `.txt`.
    pub name: String,
    /// The clip: a video file or a folder of PNG frames.
    pub video: PathBuf,
    pub caption: String,
}

/// Reads the caption of `path` (first non-empty line, trimmed).
fn read_caption(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Ok(line.to_string()),
        None => Err(Error::Invalid(format!(
            "{}: the caption file is empty",
            path.display()
        ))),
    }
}

/// Lists the captioned clips of `dir`, sorted by name. A caption with no clip
/// beside it, or with more than one candidate, is an error naming it.
pub fn list(dir: &Path) -> Result<Vec<ClipEntry>> {
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let mut others: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name.starts_with('.') {
            continue; // temporaries of interrupted writes, editor files
        }
        match file_name.strip_suffix(".txt") {
            Some(stem) if path.is_file() => names.push((stem.to_string(), path)),
            _ => others.push(path),
        }
    }
    names.sort();
    let mut clips = Vec::with_capacity(names.len());
    for (name, caption_path) in names {
        let candidates: Vec<&PathBuf> = others
            .iter()
            .filter(|p| {
                let file_name = p
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                (p.is_dir() && file_name == name.as_str()) || (p.is_file() && stem == name.as_str())
            })
            .collect();
        let video = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => invalid!(
                "{}: no clip named \"{name}\" (a video file or frame folder) beside this caption",
                caption_path.display()
            ),
            many => invalid!(
                "{}: several clips could be \"{name}\": {many:?}",
                caption_path.display()
            ),
        };
        clips.push(ClipEntry {
            name,
            video,
            caption: read_caption(&caption_path)?,
        });
    }
    Ok(clips)
}

/// How a Shapes World data set was made: stored as `dataset.json`, so that a
/// rerun with the same settings resumes and a rerun with others is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShapesWorldSet {
    /// Data-contract version (`shared/SHAPES_WORLD.md`).
    pub contract: u32,
    pub seed: u64,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// `png` (frame folders), `mp4` or `gif`.
    pub format: String,
    pub fps: f64,
}

/// The clip name of item `i`.
pub fn clip_name(i: usize) -> String {
    format!("clip_{i:06}")
}

/// Caption and render seed of item `i` of a set seeded with `seed`: item `i`
/// has its own stream, so sets of different counts agree on shared items.
/// `two_objects` is the share of two-object captions; `None` and `Some(0.5)`
/// both draw as [`Scene::sample`] does, so that a run made before the share
/// existed can be made again with it.
pub fn shapes_world_item(seed: u64, i: usize, two_objects: Option<f64>) -> (Scene, u64) {
    let mut rng = Rng::derive(seed, i as u64);
    let scene = Scene::sample_with_two(&mut rng, two_objects.unwrap_or(0.5));
    (scene, rng.next_u64())
}

impl ShapesWorldSet {
    pub fn new(seed: u64, canvas: Canvas, format: &str, fps: f64) -> Result<Self> {
        if !["png", "mp4", "gif"].contains(&format) {
            invalid!("unknown clip format \"{format}\": expected png, mp4 or gif");
        }
        Ok(Self {
            contract: CONTRACT_VERSION,
            seed,
            frames: canvas.frames,
            height: canvas.height,
            width: canvas.width,
            format: format.to_string(),
            fps,
        })
    }

    fn video_path(&self, dir: &Path, i: usize) -> PathBuf {
        match self.format.as_str() {
            "png" => dir.join(format!("{}/", clip_name(i))),
            ext => dir.join(format!("{}.{ext}", clip_name(i))),
        }
    }

    /// Writes clips `0..count` into `dir`, skipping those already complete (a
    /// clip is complete once its caption exists: it is written after the
    /// clip), so an interrupted run resumes. Calls `progress(done)` after each
    /// clip. Returns how many clips were written now.
    pub fn write(
        &self,
        dir: &Path,
        count: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<usize> {
        let canvas = Canvas::new(self.frames, self.height, self.width)?;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let meta_path = dir.join("dataset.json");
        if meta_path.exists() {
            let text = fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            let old: ShapesWorldSet = serde_json::from_str(&text).map_err(|e| {
                Error::Invalid(format!(
                    "{}: not a minisora dataset.json: {e}",
                    meta_path.display()
                ))
            })?;
            if &old != self {
                invalid!(
                    "{} already holds a data set made with other settings ({}); use a new folder",
                    dir.display(),
                    serde_json::to_string(&old).unwrap_or_default()
                );
            }
        } else {
            let text =
                serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
            fs::write(&meta_path, text + "\n").map_err(|e| Error::io(&meta_path, e))?;
        }
        let options = WriteOptions {
            fps: self.fps,
            scale: 1,
        };
        let mut written = 0;
        for i in 0..count {
            let caption_path = dir.join(format!("{}.txt", clip_name(i)));
            let video_path = self.video_path(dir, i);
            if !(caption_path.exists() && video_path.exists()) {
                let (scene, render_seed) = shapes_world_item(self.seed, i, None);
                let clip = shapes_world::render(&scene, canvas, render_seed)?;
                video::write(&video_path, &clip.frames.view(), &options)?;
                let caption = scene.caption() + "\n";
                atomic::write_file(&caption_path, |tmp| {
                    fs::write(tmp, &caption).map_err(|e| Error::io(tmp, e))
                })?;
                written += 1;
            }
            progress(i + 1);
        }
        Ok(written)
    }
}
