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
        pct(shape) >= 95.0 && pct(size) >= 95.0,
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
