//! A 3x5 pixel font for digits, enough to number frames and tokens in the
//! pictures minisora writes without pulling in a font rasteriser.

use image::{Rgb, RgbImage};

/// Rows of each digit, top to bottom; bit 2 is the left column.
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// Glyph width and height in font pixels; glyphs advance by `GLYPH_W + 1`.
pub const GLYPH_W: u32 = 3;
pub const GLYPH_H: u32 = 5;

/// Width in image pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * (GLYPH_W + 1)).saturating_sub(1) * scale
}

/// Draws the digits of `text` with their top-left corner at `(x, y)`, each
/// font pixel a `scale` x `scale` square, by calling `put(px, py)` for every
/// pixel to colour; other characters leave a gap.
pub fn draw_text_with(x: u32, y: u32, text: &str, scale: u32, mut put: impl FnMut(u32, u32)) {
    for (i, ch) in text.chars().enumerate() {
        let Some(d) = ch.to_digit(10) else { continue };
        let gx = x + i as u32 * (GLYPH_W + 1) * scale;
        for (row, bits) in DIGITS[d as usize].iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(gx + col * scale + dx, y + row as u32 * scale + dy);
                    }
                }
            }
        }
    }
}

/// [`draw_text_with`] into an image in one colour; pixels outside it are skipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
    let (w, h) = img.dimensions();
    draw_text_with(x, y, text, scale, |px, py| {
        if px < w && py < h {
            img.put_pixel(px, py, Rgb(color));
        }
    });
}
