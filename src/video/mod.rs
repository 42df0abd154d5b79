//! Video I/O at the edge of the pipeline: `u8` frames `(T, H, W, 3)` to and
//! from files, and to and from the model's `(B, C, T, H, W)` tensors.
//!
//! The output format follows the path ([`Format::for_output`]): `.mp4` is
//! H.264 through FFmpeg, `.gif` an animated GIF, `.png` a contact sheet of
//! numbered frames, and a path ending in `/` (or an existing directory) a
//! folder of lossless `frame_0000.png`, ... . Every output is written to a
//! temporary name beside it and renamed into place, so a failure never leaves
//! a half-written file under the requested name. [`read`] takes anything
//! FFmpeg decodes, GIFs and PNG frame folders.

pub(crate) mod atomic;
#[cfg(feature = "ffmpeg")]
mod ffmpeg;
pub mod font;
mod gif;
mod png_dir;
mod sheet;
mod tensor;

use std::path::{Path, PathBuf};

use ndarray::{s, Array4, ArrayView4};

pub use sheet::contact_sheet;
pub use tensor::{frames_to_tensor, tensor_to_frames};

use crate::{invalid, Error, Result};

/// Frames at the I/O edge: `u8` RGB shaped `(T, H, W, 3)`.
pub type Frames = Array4<u8>;

/// What a path will be written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// H.264 (libx264, yuv420p) in an mp4 container, through FFmpeg.
    Mp4,
    /// Animated GIF, looping.
    Gif,
    /// One PNG: the frames tiled in a grid, each with its frame number.
    Sheet,
    /// A folder of lossless `frame_0000.png`, `frame_0001.png`, ...
    PngFrames,
}

impl Format {
    /// The format a path asks for: a trailing `/` or an existing directory
    /// means PNG frames, otherwise the extension decides.
    pub fn for_output(path: &Path) -> Result<Format> {
        let text = path.to_string_lossy();
        if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) || path.is_dir() {
            return Ok(Format::PngFrames);
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "mp4" => Ok(Format::Mp4),
            "gif" => Ok(Format::Gif),
            "png" => Ok(Format::Sheet),
            _ => invalid!(
                "cannot tell the output format of \"{text}\": use a name ending in .mp4 (H.264 video), \
                 .gif (animation), .png (contact sheet of all frames) or / (a folder of PNG frames)"
            ),
        }
    }
}

/// How to write a clip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriteOptions {
    /// Frames per second (mp4 and GIF).
    pub fps: f64,
    /// Nearest-neighbour upscale factor applied before writing (1 = none), so
    /// that a 32x32 clip is watchable.
    pub scale: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { fps: 8.0, scale: 1 }
    }
}

/// How to read a clip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Resize every frame to `(height, width)`; `None` keeps the stored size.
    pub size: Option<(usize, usize)>,
}

fn check_frames(frames: &ArrayView4<u8>) -> Result<()> {
    let (t, h, w, c) = frames.dim();
    if t == 0 || h == 0 || w == 0 || c != 3 {
        invalid!("frames must be (T, H, W, 3) with T, H, W >= 1, got ({t}, {h}, {w}, {c})");
    }
    Ok(())
}

/// Most pixels an upscaled clip may hold (about 800 MB of RGB).
const MAX_SCALED_PIXELS: usize = 1 << 28;

/// Checks that `frames` of shape `(T, H, W, _)` may be upscaled `k` times:
/// `k` from 1 to 64 and at most [`MAX_SCALED_PIXELS`] pixels in the result.
pub fn check_scale((t, h, w, _): (usize, usize, usize, usize), k: usize) -> Result<()> {
    if k == 0 || k > 64 {
        invalid!("scale must be an integer from 1 to 64, got {k}");
    }
    match t.checked_mul(h * k).and_then(|n| n.checked_mul(w * k)) {
        Some(n) if n <= MAX_SCALED_PIXELS => Ok(()),
        _ => invalid!(
            "{t} frames of {h}x{w} scaled {k} times would be too large (at most {MAX_SCALED_PIXELS} pixels in all): lower the scale"
        ),
    }
}

/// Nearest-neighbour upscale by an integer factor: `(T, H, W, 3) -> (T, kH, kW, 3)`.
pub fn upscale(frames: &ArrayView4<u8>, k: usize) -> Frames {
    let (t, h, w, c) = frames.dim();
    Array4::from_shape_fn((t, h * k, w * k, c), |(f, y, x, ch)| {
        frames[[f, y / k, x / k, ch]]
    })
}

/// Writes `frames` `(T, H, W, 3)` to `path` in the format its name asks for
/// (see [`Format::for_output`]), atomically.
pub fn write(path: &Path, frames: &ArrayView4<u8>, options: &WriteOptions) -> Result<()> {
    check_frames(frames)?;
    if !(options.fps.is_finite() && options.fps > 0.0 && options.fps <= 1000.0) {
        invalid!("fps must be in (0, 1000], got {}", options.fps);
    }
    check_scale(frames.dim(), options.scale)?;
    let format = Format::for_output(path)?;
    let scaled;
    let frames = if options.scale > 1 {
        scaled = upscale(frames, options.scale);
        scaled.view()
    } else {
        frames.view()
    };
    match format {
        Format::Mp4 => write_mp4(path, &frames, options.fps),
        Format::Gif => atomic::write_file(path, |tmp| gif::write(tmp, &frames, options.fps)),
        Format::Sheet => write_png(path, &contact_sheet(&frames)),
        Format::PngFrames => png_dir::write(path, &frames),
    }
}

#[cfg(feature = "ffmpeg")]
fn write_mp4(path: &Path, frames: &ArrayView4<u8>, fps: f64) -> Result<()> {
    atomic::write_file(path, |tmp| ffmpeg::write_mp4(tmp, frames, fps))
}

#[cfg(not(feature = "ffmpeg"))]
fn write_mp4(path: &Path, _: &ArrayView4<u8>, _: f64) -> Result<()> {
    Err(Error::video(path, "this minisora was built without the `ffmpeg` feature: write .gif, .png or a folder instead"))
}

/// Writes one picture as PNG, atomically.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    atomic::write_file(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::video(path, format!("cannot write PNG: {e}")))
    })
}

/// Reads a clip: a folder of PNG frames, a GIF, or any file FFmpeg decodes.
/// Returns `(T, H, W, 3)`, resized if `options.size` says so.
pub fn read(path: &Path, options: &ReadOptions) -> Result<Frames> {
    if let Some((h, w)) = options.size {
        if h == 0 || w == 0 {
            invalid!("cannot resize frames to {h}x{w}");
        }
    }
    if path.is_dir() {
        return png_dir::read(path, options.size);
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::video(path, "the file is empty"));
    }
    let is_gif = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
    if is_gif {
        gif::read(path, options.size)
    } else {
        read_ffmpeg(path, options.size)
    }
}

#[cfg(feature = "ffmpeg")]
fn read_ffmpeg(path: &Path, size: Option<(usize, usize)>) -> Result<Frames> {
    ffmpeg::read(path, size)
}

#[cfg(not(feature = "ffmpeg"))]
fn read_ffmpeg(path: &Path, _: Option<(usize, usize)>) -> Result<Frames> {
    Err(Error::video(path, "this minisora was built without the `ffmpeg` feature: only GIFs and PNG folders can be read"))
}

/// Resizes RGB frames with a triangle (bilinear) filter; a no-op when the
/// size already matches.
pub fn resize(frames: Frames, height: usize, width: usize) -> Frames {
    let (t, h, w, _) = frames.dim();
    if (h, w) == (height, width) {
        return frames;
    }
    let mut out = Array4::<u8>::zeros((t, height, width, 3));
    for f in 0..t {
        let frame = frames.slice(s![f, .., .., ..]);
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let p = |c| frame[[y as usize, x as usize, c]];
            image::Rgb([p(0), p(1), p(2)])
        });
        let img = image::imageops::resize(
            &img,
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        );
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                out[[f, y as usize, x as usize, c]] = px[c];
            }
        }
    }
    out
}

/// A short human description of what was written, for the CLI.
pub fn describe(path: &Path, frames: &ArrayView4<u8>, options: &WriteOptions) -> String {
    let (t, h, w, _) = frames.dim();
    let k = options.scale;
    let what = match Format::for_output(path) {
        Ok(Format::Mp4) => format!("mp4, {} fps", options.fps),
        Ok(Format::Gif) => format!("gif, {} fps", options.fps),
        Ok(Format::Sheet) => "png contact sheet".to_string(),
        Ok(Format::PngFrames) => "png frames".to_string(),
        Err(_) => "?".to_string(),
    };
    format!(
        "{}: {t} frames of {}x{} ({what})",
        PathBuf::from(path).display(),
        w * k,
        h * k
    )
}
