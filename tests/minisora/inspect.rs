//! `minisora inspect`: token counts for real files and prompts of many
//! shapes, the picture, and clear errors.

use std::path::Path;
use std::process::Command;

use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::video::{self, WriteOptions};
use serde_json::Value;

fn inspect(args: &[&str], cwd: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_minisora"))
        .arg("inspect")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn json(args: &[&str], cwd: &Path) -> Value {
    let (ok, text) = inspect(&[args, &["--json"]].concat(), cwd);
    assert!(ok, "{args:?}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn arr(v: &Value) -> [usize; 3] {
    let a: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    [a[0], a[1], a[2]]
}

/// The count the issue asks for: `ceil(ceil(T/ft)/pt) * ...`, by hand.
fn expected_tokens(input: [usize; 3], compress: [usize; 3], patch: [usize; 3]) -> usize {
    (0..3)
        .map(|a| input[a].div_ceil(compress[a]).div_ceil(patch[a]))
        .product()
}

#[test]
fn token_counts_follow_compression_and_patches_for_many_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // square, landscape, portrait, odd (padded), long, and custom factors
    type Case<'a> = (usize, usize, usize, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (16, 32, 32, None, None),
        (16, 32, 64, None, None),
        (8, 96, 40, Some("2,2,2"), None),
        (15, 33, 27, None, None),
        (32, 24, 24, Some("2,2,2"), Some("1,4,4")),
        (9, 20, 52, Some("1,1,1"), Some("3,2,2")),
    ];
    for &(t, h, w, patch, compress) in cases {
        let (t_s, h_s, w_s) = (t.to_string(), h.to_string(), w.to_string());
        let mut args = vec![
            "--prompt",
            "a blue square moving down",
            "--frames",
            &t_s,
            "--height",
            &h_s,
            "--width",
            &w_s,
        ];
        if let Some(p) = patch {
            args.extend(["--patch", p]);
        }
        if let Some(c) = compress {
            args.extend(["--compress", c]);
        }
        let v = json(&args, dir.path());
        let (input, latent, p, grid) = (
            arr(&v["input"]),
            arr(&v["latent"]),
            arr(&v["patch"]),
            arr(&v["grid"]),
        );
        let c = arr(&v["compress"]);
        assert_eq!(input, [t, h, w]);
        assert_eq!(
            latent,
            [t.div_ceil(c[0]), h.div_ceil(c[1]), w.div_ceil(c[2])]
        );
        assert_eq!(
            grid,
            [
                latent[0].div_ceil(p[0]),
                latent[1].div_ceil(p[1]),
                latent[2].div_ceil(p[2])
            ]
        );
        let tokens = v["tokens"].as_u64().unwrap() as usize;
        assert_eq!(tokens, expected_tokens(input, c, p), "{args:?}");
        assert_eq!(tokens, grid.iter().product::<usize>());
        let divisible = (0..3).all(|a| input[a] % (c[a] * p[a]) == 0);
        assert_eq!(
            v["padded_tokens"].as_u64().unwrap() == 0,
            divisible,
            "{args:?}"
        );
        assert!(v["model"]["step"]["total_flops"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_real_mp4_is_inspected_at_its_size_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let scene =
        Scene::parse("a red circle moving right and a small blue square moving up").unwrap();
    let frames = render(&scene, Canvas::new(16, 48, 64).unwrap(), 0)
        .unwrap()
        .frames;
    video::write(
        &dir.path().join("clip.mp4"),
        &frames.view(),
        &WriteOptions::default(),
    )
    .unwrap();
    let v = json(&["clip.mp4"], dir.path());
    assert_eq!(arr(&v["input"]), [16, 48, 64]);
    assert_eq!(
        v["tokens"].as_u64().unwrap() as usize,
        expected_tokens([16, 48, 64], [2, 4, 4], [8, 1, 1])
    );
    let (ok, table) = inspect(&["clip.mp4", "-o", "tokens.png"], dir.path());
    assert!(ok, "{table}");
    for needle in [
        "input",
        "latent 8 x 12 x 16",
        "grid 1 x 12 x 16",
        "192 video tokens",
        "parameters",
        "attention",
        "MLP",
    ] {
        assert!(table.contains(needle), "missing {needle:?} in\n{table}");
    }
    let img = image::open(dir.path().join("tokens.png")).unwrap();
    assert!(img.width() > 8 * 64 && img.height() > 2 * 48);
}

#[test]
fn bad_input_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.mp4"), b"not a video").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["junk.mp4"], "junk.mp4"),
        (&["missing.mp4"], "missing.mp4"),
        (
            &["--prompt", "a red circle growing", "--frames", "0"],
            "at least 1 frame",
        ),
        (
            &["--prompt", "a red circle growing", "--patch", "1,64,1"],
            "smaller than the patch size 64",
        ),
        (
            &["--prompt", "a red circle growing", "--patch", "1,2"],
            "three positive integers",
        ),
        (
            &["--prompt", "a red circle growing", "--compress", "0,1,1"],
            "at least 1",
        ),
        (
            &["--prompt", "a red circle growing", "--preset", "huge"],
            "unknown preset",
        ),
        (
            &[
                "--prompt",
                "a red circle growing",
                "--height",
                "30",
                "--no-pad",
            ],
            "height 30",
        ),
        (&["--prompt", "a red hexagon growing"], "\"hexagon\""),
        (&["--prompt", "a red circle growing", "--bogus"], "--bogus"),
        (&[], "INPUT"),
    ];
    for (args, needle) in cases {
        let (ok, text) = inspect(args, dir.path());
        assert!(!ok, "{args:?} succeeded: {text}");
        assert!(
            text.contains(needle) && !text.contains("panicked"),
            "{args:?}: {text}"
        );
    }
}
