//! The prompt-adherence detector against clips rendered from known scenes.

use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::eval::detect;
use minisora::rng::Rng;

#[test]
fn rendered_clips_pass_their_own_prompts() {
    let mut rng = Rng::new(11);
    let (mut objects, mut colour, mut shape, mut size, mut motion) = (0, 0, 0, 0, 0);
    for i in 0..300 {
        let scene = Scene::sample(&mut rng);
        let frames = render(&scene, Canvas::DEFAULT, i).unwrap().frames;
        for s in detect(&frames, &scene) {
            objects += 1;
            colour += s.colour as usize;
            shape += s.shape as usize;
            size += s.size as usize;
            motion += s.motion as usize;
        }
    }
    let pct = |k: usize| 100.0 * k as f64 / objects as f64;
    eprintln!(
        "colour {:.1}% shape {:.1}% size {:.1}% motion {:.1}% of {objects}",
        pct(colour),
        pct(shape),
        pct(size),
        pct(motion)
    );
    assert!(
        pct(colour) >= 99.0 && pct(motion) >= 97.0,
        "colour {} motion {}",
        pct(colour),
        pct(motion)
    );
    assert!(
        pct(shape) >= 97.0 && pct(size) >= 95.0,
        "shape {} size {}",
        pct(shape),
        pct(size)
    );
}

#[test]
fn clips_of_other_prompts_fail() {
    let scene = Scene::parse("a large red circle moving right").unwrap();
    let frames = render(&scene, Canvas::DEFAULT, 1).unwrap().frames;
    let wrong = |p: &str| detect(&frames, &Scene::parse(p).unwrap())[0].clone();
    assert!(detect(&frames, &scene)[0].all());
    assert!(!wrong("a large blue circle moving right").colour);
    assert!(!wrong("a large red square moving right").shape);
    assert!(!wrong("a small red circle moving right").size);
    assert!(!wrong("a large red circle moving left").motion);
    assert!(!wrong("a large red circle growing").motion);
}

/// `0.7 x + 0.3 (1 2 1)/4 x (1 2 1)/4`: edges about as soft as an
/// autoencoder's (a stronger blur makes the smallest triangles, 6 pixels
/// tall, into blobs).
fn soften(frames: &minisora::video::Frames) -> minisora::video::Frames {
    let (t, h, w, _) = frames.dim();
    let mut out = frames.clone();
    let tap = [0.25, 0.5, 0.25];
    for f in 0..t {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut blur = 0.0;
                    for (dy, wy) in tap.iter().enumerate() {
                        for (dx, wx) in tap.iter().enumerate() {
                            let (yy, xx) = (y + dy, x + dx);
                            if (1..=h).contains(&yy) && (1..=w).contains(&xx) {
                                blur += wy * wx * frames[[f, yy - 1, xx - 1, c]] as f64;
                            }
                        }
                    }
                    let v = 0.7 * frames[[f, y, x, c]] as f64 + 0.3 * blur;
                    out[[f, y, x, c]] = v.round() as u8;
                }
            }
        }
    }
    out
}

/// Soft edges shift a shape's bounding-box fill (a small triangle's toward a
/// disc's); the shape read stays right for every shape and size.
#[test]
fn soft_edged_shapes_keep_their_shape() {
    for shape in ["circle", "square", "triangle"] {
        for size in ["small ", "", "large "] {
            let scene = Scene::parse(&format!("a {size}red {shape} standing still")).unwrap();
            for seed in 0..20 {
                let frames = render(&scene, Canvas::DEFAULT, seed).unwrap().frames;
                let score = detect(&soften(&frames), &scene)[0].clone();
                assert!(
                    score.colour && score.shape,
                    "{scene} (seed {seed}): {score:?}"
                );
            }
        }
    }
}

/// Generated clips' shapes have ragged edges and stray specks of their
/// colour: knocks out each pixel on the shape's edge with probability
/// `drop` and paints one speck in the canvas corner farthest from it.
fn ragged(
    frames: &minisora::video::Frames,
    rgb: [u8; 3],
    drop: f64,
    seed: u64,
) -> minisora::video::Frames {
    let (t, h, w, _) = frames.dim();
    let mut rng = Rng::new(seed);
    let mut out = frames.clone();
    let is = |f: usize, y: usize, x: usize| (0..3).all(|c| frames[[f, y, x, c]] == rgb[c]);
    for f in 0..t {
        let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for y in 0..h {
            for x in 0..w {
                if !is(f, y, x) {
                    continue;
                }
                (n, sx, sy) = (n + 1.0, sx + x as f64, sy + y as f64);
                let edge = y == 0
                    || x == 0
                    || y + 1 == h
                    || x + 1 == w
                    || !is(f, y - 1, x)
                    || !is(f, y + 1, x)
                    || !is(f, y, x - 1)
                    || !is(f, y, x + 1);
                if edge && rng.uniform() < drop {
                    for c in 0..3 {
                        out[[f, y, x, c]] = 0;
                    }
                }
            }
        }
        let far = |c: f64, len: usize| if c / n < len as f64 / 2.0 { len - 1 } else { 0 };
        let (y, x) = (far(sy, h), far(sx, w));
        for c in 0..3 {
            out[[f, y, x, c]] = rgb[c];
        }
    }
    out
}

/// A fifth of the edge pixels gone and a speck in a far corner: a shape's
/// bounding box then holds the speck and the square no longer fills it,
/// but the shape read by the blob's moments stays right for every shape
/// and size.
#[test]
fn ragged_shapes_with_a_stray_speck_keep_their_shape() {
    for shape in ["circle", "square", "triangle"] {
        for size in ["small ", "", "large "] {
            for motion in ["standing still", "moving right", "growing"] {
                let scene = Scene::parse(&format!("a {size}red {shape} {motion}")).unwrap();
                let rgb = scene.objects[0].color.rgb();
                for seed in 0..10 {
                    let frames = render(&scene, Canvas::DEFAULT, seed).unwrap().frames;
                    let score = detect(&ragged(&frames, rgb, 0.2, seed), &scene)[0].clone();
                    assert!(
                        score.colour && score.shape,
                        "{scene} (seed {seed}): {score:?}"
                    );
                }
            }
        }
    }
}
