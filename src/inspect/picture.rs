//! The inspector's picture: the clip's frames with the patch grid drawn over
//! them, every token (a tubelet spanning several frames) in its own hue, and
//! below them the token sequence as a strip in order.

use image::{imageops, Rgb, RgbImage};
use ndarray::{Array4, ArrayView4};

use super::Inspection;
use crate::video::contact_sheet;
use crate::video::font::{draw_text, draw_text_with, text_width, GLYPH_H};

/// Opacity of a token's hue over the frame.
const TINT: f32 = 0.35;
const GRID_LINE: [u8; 3] = [255, 255, 255];
const BACKGROUND: [u8; 3] = [48, 48, 48];
const LABEL: [u8; 3] = [220, 220, 220];

/// The hue of token `i` as RGB: consecutive tokens step around the colour
/// wheel by the golden ratio, so neighbours never look alike.
pub fn token_hue(i: usize) -> [u8; 3] {
    let h = (i as f64 * 0.618_033_988_749_895).fract() * 6.0;
    let (s, v) = (0.85, 1.0);
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|u| ((u + m) * 255.0).round() as u8)
}

/// Token index of input pixel `(f, y, x)` under `ins`.
fn token_at(ins: &Inspection, f: usize, y: usize, x: usize) -> usize {
    let [_, gh, gw] = ins.grid;
    let [ft, fh, fw] = ins.footprint;
    ((f / ft) * gh + y / fh) * gw + x / fw
}

/// The picture for `frames` `(T, H, W, 3)` inspected as `ins`, each input
/// pixel drawn `scale` x `scale`.
pub fn token_picture(frames: &ArrayView4<u8>, ins: &Inspection, scale: usize) -> RgbImage {
    let (t, h, w, _) = frames.dim();
    let k = scale.max(1);
    let [_, fh, fw] = ins.footprint;
    // frames tinted by their token, with lines where tokens meet
    let mut tinted = Array4::<u8>::zeros((t, h * k, w * k, 3));
    for f in 0..t {
        for y in 0..h * k {
            for x in 0..w * k {
                let (sy, sx) = (y / k, x / k);
                let on_line = (y % (fh * k) == 0 && sy > 0) || (x % (fw * k) == 0 && sx > 0);
                let hue = token_hue(token_at(ins, f, sy, sx));
                for c in 0..3 {
                    tinted[[f, y, x, c]] = if on_line {
                        GRID_LINE[c]
                    } else {
                        let v = frames[[f, sy, sx, c]] as f32 * (1.0 - TINT) + hue[c] as f32 * TINT;
                        v.round() as u8
                    };
                }
            }
        }
        // number the tokens in the first frame of each tubelet, where they fit
        if f % ins.footprint[0] == 0 {
            let glyph = ((fw * k) as u32 / 24).max(1);
            for gy in 0..ins.grid[1] {
                for gx in 0..ins.grid[2] {
                    let label = token_at(ins, f, gy * fh, gx * fw).to_string();
                    let (cell_w, cell_h) = ((fw * k) as u32, (fh * k) as u32);
                    if text_width(&label, glyph) + 4 > cell_w || GLYPH_H * glyph + 4 > cell_h {
                        continue;
                    }
                    let (x0, y0) = ((gx * fw * k) as u32 + 2, (gy * fh * k) as u32 + 2);
                    draw_text_with(x0, y0, &label, glyph, |px, py| {
                        let (px, py) = (px as usize, py as usize);
                        if px < w * k && py < h * k {
                            for c in 0..3 {
                                tinted[[f, py, px, c]] = 255;
                            }
                        }
                    });
                }
            }
        }
    }
    let sheet = contact_sheet(&tinted.view());
    let strip = token_strip(ins, sheet.width());
    let mut out = RgbImage::from_pixel(
        sheet.width(),
        sheet.height() + strip.height(),
        Rgb(BACKGROUND),
    );
    imageops::replace(&mut out, &sheet, 0, 0);
    imageops::replace(&mut out, &strip, 0, sheet.height() as i64);
    out
}

/// The token sequence in order: one square per token in its hue, numbered
/// where the number fits; each time step of the grid starts a new row,
/// labelled with the index of its first token.
fn token_strip(ins: &Inspection, width: u32) -> RgbImage {
    let [gt, gh, gw] = ins.grid;
    let per_t = gh * gw;
    let glyph = 2;
    let label_w = text_width(&ins.tokens.to_string(), glyph) + 8;
    // one time step per row when it fits, squares of 12 to 48 pixels
    let cell = ((width.saturating_sub(label_w + 4)) / per_t as u32).clamp(12, 48);
    let per_row = ((width.saturating_sub(label_w + 4) / cell).max(1)) as usize;
    let rows_per_t = per_t.div_ceil(per_row);
    let height = 8 + (gt * rows_per_t) as u32 * cell + 4;
    let mut img = RgbImage::from_pixel(width, height, Rgb(BACKGROUND));
    for tt in 0..gt {
        let y_t = 8 + (tt * rows_per_t) as u32 * cell;
        draw_text(
            &mut img,
            4,
            y_t + 1,
            &(tt * per_t).to_string(),
            glyph,
            LABEL,
        );
        for j in 0..per_t {
            let i = tt * per_t + j;
            let (x0, y0) = (
                label_w + (j % per_row) as u32 * cell,
                y_t + (j / per_row) as u32 * cell,
            );
            for y in y0..(y0 + cell - 2).min(height) {
                for x in x0..(x0 + cell - 2).min(width) {
                    img.put_pixel(x, y, Rgb(token_hue(i)));
                }
            }
            let label = i.to_string();
            let g = (cell / 16).max(1);
            if text_width(&label, g) + 4 <= cell - 2 {
                draw_text(&mut img, x0 + 2, y0 + 2, &label, g, [255, 255, 255]);
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_tokens_get_distinct_hues() {
        for i in 0..200 {
            let (a, b) = (token_hue(i), token_hue(i + 1));
            let d: i32 = (0..3).map(|c| (a[c] as i32 - b[c] as i32).abs()).sum();
            assert!(d > 60, "{i}: {a:?} vs {b:?}");
        }
    }
}
