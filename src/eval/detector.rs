//! The detector: pixels near an object's palette colour form its mask in
//! each frame; the mask's area, the share of its bounding box it fills, how
//! its mass splits between the box's upper and lower halves, and its
//! centroid path give shape, size and motion.

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
#[derive(Clone, Debug, PartialEq, Serialize)]
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

struct Mask {
    area: f64,
    cx: f64,
    cy: f64,
    /// Area over bounding-box area.
    fill: f64,
    /// Share of the area in the upper half of the bounding box (a row on
    /// the middle line counts half): 1/2 for a disc or a square, 1/4 for a
    /// triangle that points up.
    top: f64,
}

fn mask(frames: &Frames, f: usize, rgb: [u8; 3]) -> Option<Mask> {
    let (_, h, w, _) = frames.dim();
    let mut rows = vec![0usize; h];
    let (mut n, mut sx, mut sy) = (0usize, 0.0, 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for y in 0..h {
        for x in 0..w {
            if (0..3).all(|c| (frames[[f, y, x, c]] as i32 - rgb[c] as i32).abs() <= TOLERANCE) {
                n += 1;
                rows[y] += 1;
                sx += x as f64 + 0.5;
                sy += y as f64 + 0.5;
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    if n == 0 {
        return None;
    }
    // rows y0..=y1; twice the middle line is y0 + y1 + 1
    let upper: f64 = (y0..=y1)
        .map(|y| match (2 * y + 1).cmp(&(y0 + y1 + 1)) {
            std::cmp::Ordering::Less => rows[y] as f64,
            std::cmp::Ordering::Equal => rows[y] as f64 / 2.0,
            std::cmp::Ordering::Greater => 0.0,
        })
        .sum();
    Some(Mask {
        area: n as f64,
        cx: sx / n as f64,
        cy: sy / n as f64,
        fill: n as f64 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f64,
        top: upper / n as f64,
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

/// A triangle (pointing up) is bottom-heavy; of the two symmetric shapes a
/// square fills its box (1.0) and a disc does not (pi / 4). The cuts sit
/// between the shapes' values, leaving room for soft edges: bounding-box
/// fill alone calls a small or blurred triangle a disc.
fn classify_shape(m: &Mask) -> Shape {
    if m.top < 0.375 {
        Shape::Triangle
    } else if m.fill > 0.9 {
        Shape::Square
    } else {
        Shape::Circle
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
    let masks: Vec<Option<Mask>> = (0..t).map(|f| mask(frames, f, o.color.rgb())).collect();
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
    // shape from the fullest frame (least occluded)
    let best = masks
        .iter()
        .flatten()
        .max_by(|a, b| a.area.total_cmp(&b.area))
        .unwrap_or(first);
    let shape = classify_shape(best);
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
        shape: shape == o.shape,
        size,
        motion: detected == o.motion,
    }
}
