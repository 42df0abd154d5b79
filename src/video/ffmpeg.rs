//! FFmpeg through ffmpeg-next: the H.264 mp4 writer and the reader for
//! anything FFmpeg decodes.
//!
//! FFmpeg 5.1's encoders hand back packets with duration 0, and the mp4 muxer
//! then drops the last frame (see `shared/STACK_NOTES.md`); every packet gets
//! a duration of one frame before its timestamps are rescaled.

use std::path::Path;
use std::sync::Once;

use ffmpeg_next as ff;
use ndarray::{Array4, ArrayView4};

use super::Frames;
use crate::{Error, Result};

/// libx264 constant-rate factor: 18 is visually lossless for this content.
const CRF: &str = "18";

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // ffmpeg::init only registers devices on FFmpeg >= 4; it cannot fail
        // in a way we could act on, and errors resurface on open.
        let _ = ff::init();
        // Our errors carry the message; FFmpeg's own log would repeat it.
        ff::log::set_level(ff::log::Level::Quiet);
    });
}

fn err(path: &Path, what: &str, e: ff::Error) -> Error {
    Error::video(path, format!("{what}: {e}"))
}

/// Pads `(T, H, W, 3)` to even height and width by repeating the last row and
/// column: yuv420p stores colour at half resolution and needs even sizes.
fn pad_even(frames: &ArrayView4<u8>) -> Option<Frames> {
    let (t, h, w, c) = frames.dim();
    let (h2, w2) = (h + h % 2, w + w % 2);
    ((h2, w2) != (h, w)).then(|| {
        Array4::from_shape_fn((t, h2, w2, c), |(f, y, x, ch)| {
            frames[[f, y.min(h - 1), x.min(w - 1), ch]]
        })
    })
}

/// ffmpeg-next hands paths to FFmpeg as UTF-8 C strings and panics on any
/// other: refuse them here, with the path, instead.
fn utf8_path(path: &Path) -> Result<()> {
    match path.to_str() {
        Some(s) if !s.contains('\0') => Ok(()),
        _ => Err(Error::video(
            path,
            "FFmpeg is given paths as UTF-8 text and this one is not: rename the file or its folder",
        )),
    }
}

/// Encodes `(T, H, W, 3)` as H.264 yuv420p in mp4 at `fps`. Odd sizes are
/// padded to even by repeating the last row or column.
pub(super) fn write_mp4(path: &Path, frames: &ArrayView4<u8>, fps: f64) -> Result<()> {
    init();
    let padded = pad_even(frames);
    let frames = padded.as_ref().map(|p| p.view()).unwrap_or(frames.view());
    let (t, h, w, _) = frames.dim();
    let codec = ff::encoder::find_by_name("libx264")
        .or_else(|| ff::encoder::find(ff::codec::Id::H264))
        .ok_or_else(|| {
            Error::video(
                path,
                "this FFmpeg has no H.264 encoder (install libavcodec with libx264)",
            )
        })?;
    utf8_path(path)?;
    let mut octx = ff::format::output_as(path, "mp4")
        .map_err(|e| err(path, "cannot create the mp4 file", e))?;
    let global_header = octx
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let rate = ff::Rational::from(fps);
    let time_base = rate.invert();

    let mut enc = ff::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| err(path, "cannot make an H.264 encoder", e))?;
    enc.set_width(w as u32);
    enc.set_height(h as u32);
    enc.set_format(ff::format::Pixel::YUV420P);
    enc.set_time_base(time_base);
    enc.set_frame_rate(Some(rate));
    if global_header {
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = ff::Dictionary::new();
    opts.set("crf", CRF);
    opts.set("preset", "medium");
    let mut encoder = enc
        .open_with(opts)
        .map_err(|e| err(path, "cannot open the H.264 encoder", e))?;
    {
        let mut ost = octx
            .add_stream(codec)
            .map_err(|e| err(path, "cannot add a video stream", e))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(time_base);
        ost.set_avg_frame_rate(rate);
    }
    octx.write_header()
        .map_err(|e| err(path, "cannot write the mp4 header", e))?;
    let ost_time_base = octx.stream(0).map(|s| s.time_base()).unwrap_or(time_base);

    let mut scaler = ff::software::scaling::Context::get(
        ff::format::Pixel::RGB24,
        w as u32,
        h as u32,
        ff::format::Pixel::YUV420P,
        w as u32,
        h as u32,
        ff::software::scaling::Flags::BILINEAR,
    )
    .map_err(|e| err(path, "cannot convert RGB to YUV", e))?;

    let drain =
        |encoder: &mut ff::encoder::Video, octx: &mut ff::format::context::Output| -> Result<()> {
            let mut packet = ff::Packet::empty();
            while encoder.receive_packet(&mut packet).is_ok() {
                packet.set_stream(0);
                if packet.duration() == 0 {
                    packet.set_duration(1);
                }
                packet.rescale_ts(time_base, ost_time_base);
                packet
                    .write_interleaved(octx)
                    .map_err(|e| err(path, "cannot write a packet", e))?;
            }
            Ok(())
        };

    let mut rgb = ff::frame::Video::new(ff::format::Pixel::RGB24, w as u32, h as u32);
    for f in 0..t {
        let stride = rgb.stride(0);
        let data = rgb.data_mut(0);
        for y in 0..h {
            let row = &mut data[y * stride..y * stride + w * 3];
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                for c in 0..3 {
                    px[c] = frames[[f, y, x, c]];
                }
            }
        }
        let mut yuv = ff::frame::Video::empty();
        scaler
            .run(&rgb, &mut yuv)
            .map_err(|e| err(path, "cannot convert RGB to YUV", e))?;
        yuv.set_pts(Some(f as i64));
        encoder
            .send_frame(&yuv)
            .map_err(|e| err(path, "cannot encode a frame", e))?;
        drain(&mut encoder, &mut octx)?;
    }
    encoder
        .send_eof()
        .map_err(|e| err(path, "cannot flush the encoder", e))?;
    drain(&mut encoder, &mut octx)?;
    octx.write_trailer()
        .map_err(|e| err(path, "cannot finish the mp4 file", e))?;
    Ok(())
}

/// Decodes the best video stream of any file FFmpeg reads into RGB frames
/// `(T, H, W, 3)`, optionally resized to `(height, width)`.
pub(super) fn read(path: &Path, size: Option<(usize, usize)>) -> Result<Frames> {
    init();
    utf8_path(path)?;
    let mut ictx =
        ff::format::input(path).map_err(|e| err(path, "not a video FFmpeg can read", e))?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| Error::video(path, "the file has no video stream"))?;
    let index = stream.index();
    let mut decoder = ff::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| err(path, "cannot decode its video stream", e))?;
    let (src_w, src_h) = (decoder.width(), decoder.height());
    if src_w == 0 || src_h == 0 {
        return Err(Error::video(path, "the video stream has no frame size"));
    }
    let (out_h, out_w) = size.unwrap_or((src_h as usize, src_w as usize));
    let mut scaler: Option<ff::software::scaling::Context> = None;
    let mut pixels: Vec<u8> = Vec::new();
    let mut count = 0usize;

    let mut receive = |decoder: &mut ff::decoder::Video| -> Result<()> {
        let mut decoded = ff::frame::Video::empty();
        while decoder.receive_frame(&mut decoded).is_ok() {
            let (fw, fh, fmt) = (decoded.width(), decoded.height(), decoded.format());
            if fw != src_w || fh != src_h {
                return Err(Error::video(
                    path,
                    format!("frame size changes mid-stream ({src_w}x{src_h} to {fw}x{fh})"),
                ));
            }
            let sws = match scaler.as_mut() {
                Some(s) => s,
                None => scaler.insert(
                    ff::software::scaling::Context::get(
                        fmt,
                        fw,
                        fh,
                        ff::format::Pixel::RGB24,
                        out_w as u32,
                        out_h as u32,
                        ff::software::scaling::Flags::AREA,
                    )
                    .map_err(|e| err(path, "cannot convert its pixels to RGB", e))?,
                ),
            };
            let mut rgb = ff::frame::Video::empty();
            sws.run(&decoded, &mut rgb)
                .map_err(|e| err(path, "cannot convert a frame to RGB", e))?;
            let stride = rgb.stride(0);
            let data = rgb.data(0);
            for y in 0..out_h {
                pixels.extend_from_slice(&data[y * stride..y * stride + out_w * 3]);
            }
            count += 1;
        }
        Ok(())
    };

    for (n, packet) in ictx
        .packets()
        .filter(|(s, _)| s.index() == index)
        .map(|(_, p)| p)
        .enumerate()
    {
        decoder
            .send_packet(&packet)
            .map_err(|e| err(path, &format!("cannot decode video packet {n}"), e))?;
        receive(&mut decoder)?;
    }
    decoder
        .send_eof()
        .map_err(|e| err(path, "cannot flush the decoder", e))?;
    receive(&mut decoder)?;
    if count == 0 {
        return Err(Error::video(path, "no frame could be decoded"));
    }
    Array4::from_shape_vec((count, out_h, out_w, 3), pixels)
        .map_err(|e| Error::video(path, e.to_string()))
}
