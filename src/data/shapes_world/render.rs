//! The seeded renderer: [`Scene`] + [`Canvas`] + seed -> frames.
//!
//! Geometry is computed first ([`layout`], one [`Track`] per object, exact to
//! the contract) and then rasterised with hard edges at pixel centres, so every
//! pixel is either the black background or exactly one palette colour. Only
//! integer-seeded draws and IEEE `+ - * /` are used, so the same seed gives the
//! same bytes on every machine.

use ndarray::Array4;

use super::{Motion, Object, Scene, Shape, GROW_FROM, TRAVEL, UNSIZED_RADIUS};
use crate::rng::Rng;
use crate::video::Frames;
use crate::{invalid, Result};

/// Frame count and pixel size of a clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canvas {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

/// Upper bound on `frames * height * width` (a 3 GiB clip), so that a typo in
/// a size is an error rather than an allocation failure.
const MAX_PIXELS: usize = 1 << 30;

impl Canvas {
    /// The project's default clip: 16 frames of 32x32, small enough for the
    /// default model to train on two CPU cores.
    pub const DEFAULT: Canvas = Canvas {
        frames: 16,
        height: 32,
        width: 32,
    };

    /// A validated canvas: every dimension at least 1, the whole clip at most
    /// 2^30 pixels.
    pub fn new(frames: usize, height: usize, width: usize) -> Result<Canvas> {
        if frames == 0 || height == 0 || width == 0 {
            invalid!("a clip needs at least 1 frame of at least 1x1 pixels, got {frames} frames of {height}x{width}");
        }
        match frames.checked_mul(height).and_then(|n| n.checked_mul(width)) {
            Some(n) if n <= MAX_PIXELS => Ok(Canvas {
                frames,
                height,
                width,
            }),
            _ => invalid!("{frames} frames of {height}x{width} is too large (at most {MAX_PIXELS} pixels in all)"),
        }
    }

    /// `S = min(height, width)`: the contract's unit of length.
    pub fn side(&self) -> f64 {
        self.height.min(self.width) as f64
    }

    /// Position of frame `f` in the clip, 0 at the first frame and 1 at the last.
    pub fn progress(&self, f: usize) -> f64 {
        if self.frames <= 1 {
            0.0
        } else {
            f as f64 / (self.frames - 1) as f64
        }
    }
}

/// Where an object is in one frame, in pixels (the canvas spans
/// `[0, width] x [0, height]`, `y` pointing down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectState {
    pub cx: f64,
    pub cy: f64,
    /// Half-extent: the radius of a circle, half the side of a square, half
    /// the base (and half the height) of a triangle.
    pub r: f64,
}

impl ObjectState {
    /// Whether the point `(x, y)` is inside `shape` drawn at this state.
    pub fn contains(&self, shape: Shape, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        match shape {
            Shape::Circle => dx * dx + dy * dy <= self.r * self.r,
            Shape::Square => dx.abs() <= self.r && dy.abs() <= self.r,
            // apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
            Shape::Triangle => {
                let below_apex = dy + self.r;
                dy <= self.r && below_apex >= 0.0 && dx.abs() <= below_apex / 2.0
            }
        }
    }

    /// Exact area of `shape` at this state.
    pub fn area(&self, shape: Shape) -> f64 {
        let r2 = self.r * self.r;
        match shape {
            Shape::Circle => std::f64::consts::PI * r2,
            Shape::Square => 4.0 * r2,
            Shape::Triangle => 2.0 * r2,
        }
    }
}

/// One object's geometry over the whole clip.
#[derive(Clone, Debug, PartialEq)]
pub struct Track {
    pub object: Object,
    /// Base radius `r0` in pixels.
    pub r0: f64,
    /// Total distance travelled in pixels (0 unless moving).
    pub travel: f64,
    /// One state per frame.
    pub states: Vec<ObjectState>,
}

/// A rendered clip with the geometry it was drawn from.
#[derive(Clone, Debug)]
pub struct Clip {
    /// `(T, H, W, 3)`.
    pub frames: Frames,
    pub tracks: Vec<Track>,
}

fn track(object: Object, canvas: Canvas, rng: &mut Rng) -> Track {
    let s = canvas.side();
    let (w, h) = (canvas.width as f64, canvas.height as f64);
    let r0 = match object.size {
        Some(size) => size.radius_fraction() * s,
        None => rng.range(UNSIZED_RADIUS.0, UNSIZED_RADIUS.1) * s,
    };
    let (dx, dy) = match object.motion {
        Motion::Left => (-1.0, 0.0),
        Motion::Right => (1.0, 0.0),
        Motion::Up => (0.0, -1.0),
        Motion::Down => (0.0, 1.0),
        Motion::Still | Motion::Grow | Motion::Shrink => (0.0, 0.0),
    };
    let travel = if dx != 0.0 || dy != 0.0 {
        rng.range(TRAVEL.0, TRAVEL.1) * s
    } else {
        0.0
    };
    let (r_first, r_last) = match object.motion {
        Motion::Grow => (GROW_FROM * r0, (2.0 - GROW_FROM) * r0),
        Motion::Shrink => ((2.0 - GROW_FROM) * r0, GROW_FROM * r0),
        _ => (r0, r0),
    };
    let r_max = r_first.max(r_last);
    // Start so that the whole path, at its largest, stays inside the canvas:
    // the start lies in [r_max, side - r_max - travel] along the motion (mirrored
    // for negative directions).
    let start = |extent: f64, d: f64, rng: &mut Rng| {
        let lo = r_max + if d < 0.0 { travel } else { 0.0 };
        let hi = extent - r_max - if d > 0.0 { travel } else { 0.0 };
        rng.range(lo, hi.max(lo))
    };
    let cx0 = start(w, dx, rng);
    let cy0 = start(h, dy, rng);
    let states = (0..canvas.frames)
        .map(|f| {
            let p = canvas.progress(f);
            ObjectState {
                cx: cx0 + dx * travel * p,
                cy: cy0 + dy * travel * p,
                r: r_first + (r_last - r_first) * p,
            }
        })
        .collect();
    Track {
        object,
        r0,
        travel,
        states,
    }
}

/// A scene is placed again (every object, each from its own stream) while a
/// later object hides more than half of an earlier one in some frame, so that
/// a clip shows what its caption says; after this many tries the last
/// placement stands.
const PLACEMENT_TRIES: usize = 64;
const MIN_VISIBLE: f64 = 0.5;

/// The smallest fraction, over frames, of `below`'s pixels that `above` leaves
/// visible (1 when `below` covers no pixel centre).
fn visible_fraction(below: &Track, above: &Track, canvas: Canvas) -> f64 {
    let mut worst: f64 = 1.0;
    for (b, a) in below.states.iter().zip(&above.states) {
        let (mut total, mut seen) = (0usize, 0usize);
        let x0 = (b.cx - b.r).floor().max(0.0) as usize;
        let y0 = (b.cy - b.r).floor().max(0.0) as usize;
        let x1 = ((b.cx + b.r).ceil().max(0.0) as usize).min(canvas.width);
        let y1 = ((b.cy + b.r).ceil().max(0.0) as usize).min(canvas.height);
        for y in y0..y1 {
            for x in x0..x1 {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                if b.contains(below.object.shape, px, py) {
                    total += 1;
                    seen += usize::from(!a.contains(above.object.shape, px, py));
                }
            }
        }
        if total > 0 {
            worst = worst.min(seen as f64 / total as f64);
        }
    }
    worst
}

/// The geometry of `scene` on `canvas` for `seed`: one [`Track`] per object,
/// object `k` drawn from its own stream. Placements where a later object
/// hides most of an earlier one are drawn again.
pub fn layout(scene: &Scene, canvas: Canvas, seed: u64) -> Vec<Track> {
    let mut rngs: Vec<Rng> = (0..scene.objects.len())
        .map(|k| Rng::derive(seed, k as u64))
        .collect();
    let mut place = || -> Vec<Track> {
        scene
            .objects
            .iter()
            .zip(rngs.iter_mut())
            .map(|(&object, rng)| track(object, canvas, rng))
            .collect()
    };
    let visible = |tracks: &[Track]| {
        tracks.iter().enumerate().all(|(k, above)| {
            tracks[..k]
                .iter()
                .all(|below| visible_fraction(below, above, canvas) >= MIN_VISIBLE)
        })
    };
    let mut tracks = place();
    for _ in 1..PLACEMENT_TRIES {
        if visible(&tracks) {
            break;
        }
        tracks = place();
    }
    tracks
}

/// Rasterises tracks: hard edges sampled at pixel centres, later tracks over
/// earlier ones, black background. Returns `(T, H, W, 3)`.
pub fn draw(tracks: &[Track], canvas: Canvas) -> Frames {
    let mut frames = Array4::<u8>::zeros((canvas.frames, canvas.height, canvas.width, 3));
    for track in tracks {
        let rgb = track.object.color.rgb();
        for (f, state) in track.states.iter().enumerate() {
            // only the pixels of the bounding box can be inside
            let clamp = |v: f64, n: usize| v.max(0.0).min(n as f64) as usize;
            let (x0, x1) = (
                clamp((state.cx - state.r).floor(), canvas.width),
                clamp((state.cx + state.r).ceil(), canvas.width),
            );
            let (y0, y1) = (
                clamp((state.cy - state.r).floor(), canvas.height),
                clamp((state.cy + state.r).ceil(), canvas.height),
            );
            for y in y0..y1 {
                for x in x0..x1 {
                    if state.contains(track.object.shape, x as f64 + 0.5, y as f64 + 0.5) {
                        for (c, &v) in rgb.iter().enumerate() {
                            frames[[f, y, x, c]] = v;
                        }
                    }
                }
            }
        }
    }
    frames
}

/// Renders `scene` on `canvas`; `seed` decides positions, travel distances and
/// unspecified sizes, nothing else.
pub fn render(scene: &Scene, canvas: Canvas, seed: u64) -> Result<Clip> {
    let canvas = Canvas::new(canvas.frames, canvas.height, canvas.width)?;
    let tracks = layout(scene, canvas, seed);
    Ok(Clip {
        frames: draw(&tracks, canvas),
        tracks,
    })
}
