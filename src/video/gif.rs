//! Animated GIFs through the `image` crate. Clips with at most 256 colours
//! (every Shapes World clip) are stored with an exact palette, so they come
//! back bit for bit; others are quantised.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{AnimationDecoder, Delay, Frame, RgbaImage};
use ndarray::{Array4, ArrayView4};

use super::Frames;
use crate::{Error, Result};

pub(super) fn write(path: &Path, frames: &ArrayView4<u8>, fps: f64) -> Result<()> {
    let (t, h, w, _) = frames.dim();
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let gif_err = |e: image::ImageError| Error::video(path, format!("cannot write GIF: {e}"));
    let mut encoder = GifEncoder::new_with_speed(BufWriter::new(file), 10);
    encoder.set_repeat(Repeat::Infinite).map_err(gif_err)?;
    // GIF delays are in hundredths of a second; the ratio keeps the rounding
    // to the format rather than to us.
    let delay = Delay::from_numer_denom_ms(100_000, (fps * 100.0).round().max(1.0) as u32);
    for f in 0..t {
        let img = RgbaImage::from_fn(w as u32, h as u32, |x, y| {
            let p = |c| frames[[f, y as usize, x as usize, c]];
            image::Rgba([p(0), p(1), p(2), 255])
        });
        encoder
            .encode_frame(Frame::from_parts(img, 0, 0, delay))
            .map_err(gif_err)?;
    }
    Ok(())
}

pub(super) fn read(path: &Path, size: Option<(usize, usize)>) -> Result<Frames> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: image::ImageError| Error::video(path, format!("not a readable GIF: {e}"));
    let decoded = GifDecoder::new(BufReader::new(file))
        .map_err(bad)?
        .into_frames()
        .collect_frames()
        .map_err(bad)?;
    let Some(first) = decoded.first() else {
        return Err(Error::video(path, "the GIF has no frames"));
    };
    let (w, h) = first.buffer().dimensions();
    let mut out = Array4::<u8>::zeros((decoded.len(), h as usize, w as usize, 3));
    for (f, frame) in decoded.iter().enumerate() {
        for (x, y, px) in frame.buffer().enumerate_pixels() {
            // composite transparent pixels over black, the world's background
            let a = px[3] as u32;
            for c in 0..3 {
                out[[f, y as usize, x as usize, c]] = ((px[c] as u32 * a + 127) / 255) as u8;
            }
        }
    }
    Ok(match size {
        Some((h, w)) => super::resize(out, h, w),
        None => out,
    })
}
