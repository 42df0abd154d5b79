//! The detector: pixels near an object's palette colour form its mask in
//! each frame. The mask's area and centroid path give size and motion; the
//! largest connected blob of it gives shape, by two moments that use every
//! pixel of the blob rather than its extreme ones: how its mass skews
//! between top and bottom (a triangle points up) and its four-fold angular
//! harmonic (a square's corners sit on the diagonals, a disc has none).

use serde::Serialize;

use crate::data::shapes_world::{
    Motion, Object, Scene, Shape, Size, GROW_FROM, TRAVEL, UNSIZED_RADIUS,
};
use crate::video::Frames;

/// A pixel belongs to a colour when every channel is within this of it
/// (generated clips are not exact; palette colours are at least 50 apart
/// on some channel).
const TOLERANCE: i32 = 45;

/// What the detector found for one object of a prompt.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ObjectScore {
    pub colour: bool,
    pub shape: bool,
    pub size: bool,
    pub motion: bool,
}

impl ObjectScore {
    pub fn all(&self) -> bool {
        self.colour && self.shape && self.size && self.motion
    }
}

/// Where a colour is in one frame: `h * w` flags, row by row.
fn colour_pixels(frames: &Frames, f: usize, rgb: [u8; 3]) -> Vec<bool> {
    let (_, h, w, _) = frames.dim();
    (0..h * w)
        .map(|i| {
            (0..3).all(|c| (frames[[f, i / w, i % w, c]] as i32 - rgb[c] as i32).abs() <= TOLERANCE)
        })
        .collect()
}

/// The whole mask of a colour in a frame: what size and motion read.
struct Mask {
    area: f64,
    cx: f64,
    cy: f64,
}

fn mask(on: &[bool], w: usize) -> Option<Mask> {
    let (mut n, mut sx, mut sy) = (0usize, 0.0, 0.0);
    for (i, _) in on.iter().enumerate().filter(|(_, &p)| p) {
        n += 1;
        sx += (i % w) as f64 + 0.5;
        sy += (i / w) as f64 + 0.5;
    }
    (n > 0).then(|| Mask {
        area: n as f64,
        cx: sx / n as f64,
        cy: sy / n as f64,
    })
}

/// The shape moments of a frame's largest blob.
struct Blob {
    area: usize,
    /// `sum(x^4 - 6 x^2 y^2 + y^4) / n^3` about the centroid (the real part
    /// of `(x + iy)^4`, scaled to be size-free): 0 for a disc, -1/60 for an
    /// axis-aligned square.
    harmonic4: f64,
    /// Skewness of the rows (`y` grows downwards): 0 for a disc or a square,
    /// `-2 sqrt(2) / 5` for a triangle that points up.
    skew: f64,
}

/// The largest 8-connected blob of `on` (`h x w`): specks of the colour
/// elsewhere in the frame, which generated clips have, are not part of
/// the shape.
fn largest_blob(on: &[bool], h: usize, w: usize) -> Option<Blob> {
    let mut seen = vec![false; on.len()];
    let (mut best, mut blob, mut stack) = (Vec::new(), Vec::new(), Vec::new());
    for start in 0..on.len() {
        if !on[start] || seen[start] {
            continue;
        }
        blob.clear();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            blob.push(i);
            let (y, x) = (i / w, i % w);
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = yy * w + xx;
                    if on[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if blob.len() > best.len() {
            std::mem::swap(&mut best, &mut blob);
        }
    }
    if best.is_empty() {
        return None;
    }
    let n = best.len() as f64;
    let at = |i: &usize| ((i % w) as f64, (i / w) as f64);
    let (mx, my) = best
        .iter()
        .map(at)
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut h4, mut m2, mut m3) = (0.0, 0.0, 0.0);
    for (x, y) in best.iter().map(at) {
        let (dx, dy) = (x - mx, y - my);
        h4 += dx.powi(4) - 6.0 * dx * dx * dy * dy + dy.powi(4);
        m2 += dy * dy / n;
        m3 += dy.powi(3) / n;
    }
    Some(Blob {
        area: best.len(),
        harmonic4: h4 / (n * n * n),
        skew: if m2 > 0.0 { m3 / m2.powf(1.5) } else { 0.0 },
    })
}

/// Halfway between a disc's or a square's row skewness (0) and that of a
/// triangle pointing up (`-2 sqrt(2) / 5`).
const TRIANGLE_SKEW: f64 = -std::f64::consts::SQRT_2 / 5.0;
/// Halfway between a disc's four-fold harmonic (0) and a square's (-1/60).
const SQUARE_HARMONIC: f64 = -1.0 / 120.0;
/// Frames whose blob has at least this share of the largest blob's area
/// vote on the shape (an object the other one hides, or one that is
/// shrinking, is read where it is most whole).
const VOTING_AREA: f64 = 0.7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A shape from the blobs of the frames the object is seen in: the
/// medians of the two moments over the frames where it is most whole, each
/// cut halfway between the ideal shapes' values. Moments over every pixel
/// hold up where a bounding box does not: a square with ragged edges, or a
/// stray pixel beside it, fills far less of its box but keeps its corners'
/// mass on the diagonals. A blob that is neither bottom-heavy nor
/// cornered reads as a disc.
fn classify_shape(blobs: &[Blob]) -> Option<Shape> {
    let largest = blobs.iter().map(|b| b.area).max()?;
    let voting: Vec<&Blob> = blobs
        .iter()
        .filter(|b| b.area as f64 >= VOTING_AREA * largest as f64)
        .collect();
    let skew = median(voting.iter().map(|b| b.skew).collect());
    let harmonic4 = median(voting.iter().map(|b| b.harmonic4).collect());
    Some(if skew < TRIANGLE_SKEW {
        Shape::Triangle
    } else if harmonic4 < SQUARE_HARMONIC {
        Shape::Square
    } else {
        Shape::Circle
    })
}

/// Area of `shape` with half-extent 1.
fn unit_area(shape: Shape) -> f64 {
    match shape {
        Shape::Circle => std::f64::consts::PI,
        Shape::Square => 4.0,
        Shape::Triangle => 2.0,
    }
}

/// Scores every object of `scene` in `frames` `(T, H, W, 3)`.
pub fn detect(frames: &Frames, scene: &Scene) -> Vec<ObjectScore> {
    let (t, h, w, _) = frames.dim();
    let side = h.min(w) as f64;
    scene
        .objects
        .iter()
        .map(|o| score(frames, o, t, side))
        .collect()
}

fn score(frames: &Frames, o: &Object, t: usize, side: f64) -> ObjectScore {
    let (_, h, w, _) = frames.dim();
    let (masks, blobs): (Vec<Option<Mask>>, Vec<Option<Blob>>) = (0..t)
        .map(|f| {
            let on = colour_pixels(frames, f, o.color.rgb());
            (mask(&on, w), largest_blob(&on, h, w))
        })
        .unzip();
    let seen = masks.iter().filter(|m| m.is_some()).count();
    let colour = seen * 4 >= t * 3; // present in at least 3 frames of 4
    let none = ObjectScore {
        colour,
        shape: false,
        size: false,
        motion: false,
    };
    let (Some(first), Some(last)) = (masks.iter().flatten().next(), masks.iter().flatten().last())
    else {
        return none;
    };
    let shape = classify_shape(&blobs.into_iter().flatten().collect::<Vec<_>>());
    // the fullest frame (least occluded)
    let best = masks
        .iter()
        .flatten()
        .max_by(|a, b| a.area.total_cmp(&b.area))
        .unwrap_or(first);
    // size: a growing or shrinking object is at r0 in the middle of the
    // clip; any other keeps its size, so read it where it is least hidden
    // (the second object of a prompt is drawn over the first)
    let sized = match o.motion {
        Motion::Grow | Motion::Shrink => masks[t / 2].as_ref().unwrap_or(best),
        _ => best,
    };
    let r = (sized.area / unit_area(o.shape)).sqrt() / side;
    let size = match o.size {
        Some(Size::Small) => r < (0.10 + UNSIZED_RADIUS.0) / 2.0,
        Some(Size::Large) => r > (0.20 + UNSIZED_RADIUS.1) / 2.0,
        None => ((0.10 + UNSIZED_RADIUS.0) / 2.0..=(0.20 + UNSIZED_RADIUS.1) / 2.0).contains(&r),
    };
    let (dx, dy) = ((last.cx - first.cx) / side, (last.cy - first.cy) / side);
    let growth = last.area / first.area;
    // growing multiplies the area by (1.4 / 0.6)^2 = 5.4 over the clip;
    // cut at 1.4 / 0.6 = 2.3, about halfway on a log scale
    let grow_cut = (2.0 - GROW_FROM) / GROW_FROM;
    let moved = dx.hypot(dy) > TRAVEL.0 / 2.0;
    let detected = if growth > grow_cut {
        Motion::Grow
    } else if growth < 1.0 / grow_cut {
        Motion::Shrink
    } else if !moved {
        Motion::Still
    } else if dx.abs() > dy.abs() {
        if dx > 0.0 {
            Motion::Right
        } else {
            Motion::Left
        }
    } else if dy > 0.0 {
        Motion::Down
    } else {
        Motion::Up
    };
    ObjectScore {
        colour,
        shape: shape == Some(o.shape),
        size,
        motion: detected == o.motion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 64;

    fn blob_of(inside: impl Fn(f64, f64) -> bool) -> Blob {
        let on: Vec<bool> = (0..N * N)
            .map(|i| inside((i % N) as f64 + 0.5 - 32.0, (i / N) as f64 + 0.5 - 32.0))
            .collect();
        largest_blob(&on, N, N).unwrap()
    }

    /// On large, finely rasterised shapes the moments come out at the ideal
    /// values the cuts sit between (within an eighth of the distance to the
    /// square cut).
    #[test]
    fn moments_of_ideal_shapes_match_their_closed_forms() {
        let square = blob_of(|x, y| x.abs() < 20.0 && y.abs() < 20.0);
        assert!(
            (square.harmonic4 + 1.0 / 60.0).abs() < 1e-3,
            "{}",
            square.harmonic4
        );
        assert!(square.skew.abs() < 1e-9);
        let disc = blob_of(|x, y| x.hypot(y) < 20.0);
        assert!(disc.harmonic4.abs() < 1e-3, "{}", disc.harmonic4);
        assert!(disc.skew.abs() < 1e-2);
        // apex at y = -20, base 40 wide at y = 20
        let triangle = blob_of(|x, y| y.abs() < 20.0 && x.abs() < (y + 20.0) / 2.0);
        let ideal = -2.0 * 2f64.sqrt() / 5.0;
        assert!((triangle.skew - ideal).abs() < 0.02, "{}", triangle.skew);
    }

    /// A speck away from the shape is a blob of its own and is ignored; a
    /// pixel touching it diagonally joins it.
    #[test]
    fn the_largest_blob_is_eight_connected_and_ignores_specks() {
        let mut on = vec![false; N * N];
        for y in 10..20 {
            for x in 10..20 {
                on[y * N + x] = true;
            }
        }
        on[60 * N + 60] = true;
        assert_eq!(largest_blob(&on, N, N).unwrap().area, 100);
        on[20 * N + 20] = true;
        assert_eq!(largest_blob(&on, N, N).unwrap().area, 101);
        assert!(largest_blob(&vec![false; N * N], N, N).is_none());
    }
}
