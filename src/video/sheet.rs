//! Contact sheets: every frame of a clip tiled in one PNG, numbered, so a
//! whole clip can be seen at a glance (and shown in a README or an issue).

use image::{Rgb, RgbImage};
use ndarray::ArrayView4;

use super::font::{draw_text, text_width, GLYPH_H};

/// Background between tiles: dark grey, so black frame backgrounds stand out.
const GUTTER: [u8; 3] = [48, 48, 48];
const LABEL: [u8; 3] = [220, 220, 220];
/// At most this many frames per row.
const MAX_COLUMNS: usize = 8;

/// Tiles `(T, H, W, 3)` frames left to right, top to bottom, at most eight to
/// a row, each under a label with its frame number.
pub fn contact_sheet(frames: &ArrayView4<u8>) -> RgbImage {
    let (t, h, w, _) = frames.dim();
    let cols = t.clamp(1, MAX_COLUMNS);
    let rows = t.div_ceil(cols);
    // label glyphs grow with the tile so they stay readable next to it
    let glyph = (w as u32 / 48).max(1);
    let pad = glyph.max(2);
    let label_h = GLYPH_H * glyph + 2 * pad;
    let (w, h) = (w as u32, h as u32);
    let sheet_w = cols as u32 * (w + pad) + pad;
    let sheet_h = rows as u32 * (h + label_h) + pad;
    let mut img = RgbImage::from_pixel(sheet_w, sheet_h, Rgb(GUTTER));
    for f in 0..t {
        let (col, row) = ((f % cols) as u32, (f / cols) as u32);
        let x0 = pad + col * (w + pad);
        let y0 = row * (h + label_h) + label_h;
        let label = f.to_string();
        let lx = x0 + w.saturating_sub(text_width(&label, glyph)) / 2;
        draw_text(&mut img, lx, y0 - label_h + pad, &label, glyph, LABEL);
        for y in 0..h {
            for x in 0..w {
                let p = |c| frames[[f, y as usize, x as usize, c]];
                img.put_pixel(x0 + x, y0 + y, Rgb([p(0), p(1), p(2)]));
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn sheet_holds_every_frame_in_a_grid() {
        let mut frames = Array4::<u8>::zeros((10, 4, 6, 3));
        for f in 0..10 {
            frames[[f, 0, 0, 0]] = f as u8 * 20 + 1;
        }
        let sheet = contact_sheet(&frames.view());
        // 8 columns, 2 rows; pad 2, label 5 + 4
        assert_eq!(sheet.dimensions(), (8 * (6 + 2) + 2, 2 * (4 + 9) + 2));
        for f in 0..10u32 {
            let (x0, y0) = (2 + (f % 8) * 8, (f / 8) * 13 + 9);
            assert_eq!(sheet.get_pixel(x0, y0)[0], f as u8 * 20 + 1);
        }
    }
}
