//! The renderer against the data contract (shared/SHAPES_WORLD.md).

use minisora::data::shapes_world::{render, Canvas, Color, Motion, Scene, Shape, Size};
use minisora::rng::Rng;
use minisora::video::Frames;

fn scene(prompt: &str) -> Scene {
    Scene::parse(prompt).unwrap()
}

/// Pixels of frame `f` equal to `rgb`: (count, mean x, mean y) at pixel centres.
fn mask_stats(frames: &Frames, f: usize, rgb: [u8; 3]) -> (usize, f64, f64) {
    let (_, h, w, _) = frames.dim();
    let (mut n, mut sx, mut sy) = (0usize, 0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            if (0..3).all(|c| frames[[f, y, x, c]] == rgb[c]) {
                n += 1;
                sx += x as f64 + 0.5;
                sy += y as f64 + 0.5;
            }
        }
    }
    (n, sx / n.max(1) as f64, sy / n.max(1) as f64)
}

fn random_scenes(count: usize, seed: u64) -> Vec<Scene> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| Scene::sample(&mut rng)).collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let s = scene("a red circle moving right and a small blue square moving up");
    let a = render(&s, Canvas::DEFAULT, 7).unwrap().frames;
    let b = render(&s, Canvas::DEFAULT, 7).unwrap().frames;
    let c = render(&s, Canvas::DEFAULT, 8).unwrap().frames;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn golden_checksum_pins_the_renderer_across_machines() {
    // FNV-1a of the frames: any change to the geometry, the random stream or
    // the rasteriser changes it. Update only with a contract change.
    let s = scene("a red circle moving right and a small blue square moving up");
    let frames = render(&s, Canvas::new(16, 32, 48).unwrap(), 1)
        .unwrap()
        .frames;
    let hash = frames.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    assert_eq!(hash, GOLDEN, "renderer output changed: {hash:#x}");
}
const GOLDEN: u64 = 0x74e4_197b_bd25_fa69;

#[test]
fn every_pixel_is_background_or_an_exact_palette_colour() {
    let palette: Vec<[u8; 3]> = Color::ALL
        .iter()
        .map(|c| c.rgb())
        .chain([[0, 0, 0]])
        .collect();
    for (i, s) in random_scenes(60, 1).iter().enumerate() {
        let frames = render(
            s,
            Canvas::new(8, 24 + i % 9, 40 - i % 13).unwrap(),
            i as u64,
        )
        .unwrap()
        .frames;
        let allowed: Vec<[u8; 3]> = s
            .objects
            .iter()
            .map(|o| o.color.rgb())
            .chain([[0, 0, 0]])
            .collect();
        for px in frames.as_slice().unwrap().chunks_exact(3) {
            let px = [px[0], px[1], px[2]];
            assert!(
                palette.contains(&px) && allowed.contains(&px),
                "{px:?} in \"{s}\""
            );
        }
    }
}

#[test]
fn objects_stay_inside_the_canvas_in_every_frame() {
    let canvases = [
        (16, 32, 32),
        (12, 64, 40),
        (9, 40, 96),
        (1, 20, 20),
        (16, 17, 23),
    ];
    for (i, s) in random_scenes(300, 2).iter().enumerate() {
        let (t, h, w) = canvases[i % canvases.len()];
        let clip = render(s, Canvas::new(t, h, w).unwrap(), i as u64).unwrap();
        for track in &clip.tracks {
            for st in &track.states {
                let eps = 1e-9;
                assert!(
                    st.cx - st.r >= -eps && st.cx + st.r <= w as f64 + eps,
                    "x out in \"{s}\" {st:?}"
                );
                assert!(
                    st.cy - st.r >= -eps && st.cy + st.r <= h as f64 + eps,
                    "y out in \"{s}\" {st:?}"
                );
            }
        }
    }
}

#[test]
fn drawn_pixels_match_the_geometry_so_nothing_is_clipped() {
    // one object on a large canvas: pixel area and centroid equal the
    // analytic ones (a clipped or misplaced object would miss both)
    let canvas = Canvas::new(6, 128, 160).unwrap();
    for (i, s) in random_scenes(120, 3).iter().enumerate() {
        let s = Scene {
            objects: vec![s.objects[0]],
        };
        let clip = render(&s, canvas, i as u64).unwrap();
        let track = &clip.tracks[0];
        for (f, st) in track.states.iter().enumerate() {
            let (n, mx, my) = mask_stats(&clip.frames, f, track.object.color.rgb());
            let area = st.area(track.object.shape);
            assert!(
                (n as f64 - area).abs() <= 0.06 * area + 4.0,
                "\"{s}\" frame {f}: {n} pixels, area {area:.1}"
            );
            // a triangle's centroid sits a third of r below its box centre
            let cy = st.cy
                + if track.object.shape == Shape::Triangle {
                    st.r / 3.0
                } else {
                    0.0
                };
            assert!(
                (mx - st.cx).abs() < 0.6 && (my - cy).abs() < 0.6,
                "\"{s}\" frame {f}: centroid ({mx:.2}, {my:.2}) vs ({:.2}, {cy:.2})",
                st.cx
            );
        }
    }
}

#[test]
fn sizes_and_travel_follow_the_contract() {
    let canvas = Canvas::new(16, 48, 80).unwrap();
    let side = 48.0;
    for (i, s) in random_scenes(400, 4).iter().enumerate() {
        let clip = render(s, canvas, i as u64).unwrap();
        for track in &clip.tracks {
            let o = track.object;
            match o.size {
                Some(Size::Small) => assert_eq!(track.r0, 0.10 * side),
                Some(Size::Large) => assert_eq!(track.r0, 0.20 * side),
                None => assert!(
                    (0.12 * side..=0.17 * side).contains(&track.r0),
                    "{}",
                    track.r0
                ),
            }
            let (first, last) = (track.states[0], track.states[15]);
            let moved = ((last.cx - first.cx).powi(2) + (last.cy - first.cy).powi(2)).sqrt();
            let (dx, dy) = (last.cx - first.cx, last.cy - first.cy);
            match o.motion {
                Motion::Left | Motion::Right | Motion::Up | Motion::Down => {
                    assert!(
                        (0.35 * side - 1e-9..=0.55 * side + 1e-9).contains(&moved),
                        "travel {moved}"
                    );
                    assert!((moved - track.travel).abs() < 1e-9);
                    let ok = match o.motion {
                        Motion::Left => dx < 0.0 && dy == 0.0,
                        Motion::Right => dx > 0.0 && dy == 0.0,
                        Motion::Up => dy < 0.0 && dx == 0.0,
                        _ => dy > 0.0 && dx == 0.0,
                    };
                    assert!(ok, "\"{}\" moved by ({dx}, {dy})", s);
                    // constant speed: equal steps between frames
                    let step = |f: usize| {
                        let (a, b) = (track.states[f], track.states[f + 1]);
                        ((b.cx - a.cx).powi(2) + (b.cy - a.cy).powi(2)).sqrt()
                    };
                    assert!((0..15).all(|f| (step(f) - moved / 15.0).abs() < 1e-9));
                }
                _ => assert_eq!(moved, 0.0),
            }
        }
    }
}

#[test]
fn growing_and_shrinking_change_the_area_as_the_contract_says() {
    let canvas = Canvas::new(16, 96, 96).unwrap();
    for shape in Shape::ALL {
        for (motion, word) in [(Motion::Grow, "growing"), (Motion::Shrink, "shrinking")] {
            let s = scene(&format!("a yellow {shape} {word}"));
            let clip = render(&s, canvas, 5).unwrap();
            let track = &clip.tracks[0];
            let r0 = track.r0;
            let (first, last) = (track.states[0], track.states[15]);
            let (want_first, want_last) = if motion == Motion::Grow {
                (0.6, 1.4)
            } else {
                (1.4, 0.6)
            };
            assert!(
                (first.r - want_first * r0).abs() < 1e-9 && (last.r - want_last * r0).abs() < 1e-9
            );
            assert_eq!(
                (first.cx, first.cy),
                (last.cx, last.cy),
                "centre must stay fixed"
            );
            let areas: Vec<usize> = (0..16)
                .map(|f| mask_stats(&clip.frames, f, Color::Yellow.rgb()).0)
                .collect();
            // nested shapes about a fixed centre: pixel area is monotone
            let monotone = areas.windows(2).all(|w| {
                if motion == Motion::Grow {
                    w[0] <= w[1]
                } else {
                    w[0] >= w[1]
                }
            });
            assert!(monotone, "{s}: {areas:?}");
            let ratio = areas[15] as f64 / areas[0] as f64;
            let expected = (want_last / want_first) * (want_last / want_first);
            assert!(
                (ratio / expected - 1.0).abs() < 0.15,
                "{s}: area ratio {ratio:.2}, contract {expected:.2}"
            );
        }
    }
}

#[test]
fn standing_still_is_the_same_every_frame() {
    let s = scene("a large white triangle standing still");
    let frames = render(&s, Canvas::DEFAULT, 9).unwrap().frames;
    for f in 1..16 {
        assert_eq!(
            frames.index_axis(ndarray::Axis(0), f),
            frames.index_axis(ndarray::Axis(0), 0)
        );
    }
}

#[test]
fn two_object_prompts_draw_both_colours_in_every_frame() {
    let mut checked = 0;
    for (i, s) in random_scenes(400, 6).iter().enumerate() {
        if s.objects.len() != 2 {
            continue;
        }
        let frames = render(s, Canvas::DEFAULT, i as u64).unwrap().frames;
        for f in 0..16 {
            for o in &s.objects {
                assert!(
                    mask_stats(&frames, f, o.color.rgb()).0 > 0,
                    "\"{s}\" seed {i}: no {} in frame {f}",
                    o.color
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 150);
}

#[test]
fn the_second_object_is_drawn_over_the_first() {
    // same place and size by construction: both large and still, the second
    // a square that contains any circle of the same radius and centre
    let canvas = Canvas::new(2, 10, 10).unwrap();
    let s = scene("a large red circle standing still and a large green square standing still");
    let clip = render(&s, canvas, 0).unwrap();
    let (a, b) = (clip.tracks[0].states[0], clip.tracks[1].states[0]);
    // on a 10x10 canvas a large object (r = 2) may sit anywhere; wherever they
    // overlap, green wins
    for y in 0..10 {
        for x in 0..10 {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            if a.contains(Shape::Circle, px, py) && b.contains(Shape::Square, px, py) {
                assert_eq!(clip.frames[[0, y, x, 1]], 190);
            }
        }
    }
}

#[test]
fn zero_or_huge_canvases_are_errors() {
    assert!(Canvas::new(0, 32, 32).is_err());
    assert!(Canvas::new(16, 0, 32).is_err());
    let err = Canvas::new(100_000, 4096, 4096).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
}
