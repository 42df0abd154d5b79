//! The `minisora` binary end to end: what a user types, what they get.

use std::path::Path;
use std::process::{Command, Output};

fn minisora(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minisora"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn render_writes_each_format() {
    let dir = tempfile::tempdir().unwrap();
    for out in ["clip.mp4", "clip.gif", "sheet.png", "frames/"] {
        let o = minisora(
            &[
                "render",
                "a red circle moving right",
                "--seed",
                "2",
                "--frames",
                "8",
                "-o",
                out,
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{out}: {}", text(&o));
        assert!(text(&o).contains("a red circle moving right"));
        assert!(dir.path().join(out).exists());
    }
    let o = minisora(
        &[
            "render", "--random", "--seed", "5", "--scale", "1", "-o", "r.gif",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let frames = minisora::video::read(&dir.path().join("r.gif"), &Default::default()).unwrap();
    assert_eq!(frames.dim(), (16, 32, 32, 3));
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["render", "a red hexagon moving left", "-o", "x.mp4"],
            "\"hexagon\"",
        ),
        (&["render", "a red circle growing", "-o", "x.avi"], ".mp4"),
        (
            &[
                "render",
                "a red circle growing",
                "--frames",
                "0",
                "-o",
                "x.gif",
            ],
            "at least 1 frame",
        ),
        (
            &["render", "a red circle growing", "-o", "missing/x.gif"],
            "does not exist",
        ),
        (
            &[
                "render",
                "a red circle growing",
                "--fps",
                "0",
                "-o",
                "x.gif",
            ],
            "fps",
        ),
        (&["render", "-o", "x.gif"], "PROMPT"),
        (
            &[
                "render",
                "a red circle growing",
                "--colour",
                "red",
                "-o",
                "x.gif",
            ],
            "--colour",
        ),
        (&["data", "--count", "0", "-o", "set"], "--count"),
        (
            &["data", "--count", "2", "--format", "avi", "-o", "set"],
            "avi",
        ),
    ];
    for (args, needle) in cases {
        let o = minisora(args, dir.path());
        assert!(!o.status.success(), "{args:?} succeeded");
        let t = text(&o);
        assert!(t.contains(needle), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
    assert!(!dir.path().join("x.gif").exists() && !dir.path().join("x.mp4").exists());
}

#[test]
fn data_writes_a_set_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "data", "--count", "3", "--seed", "4", "--frames", "4", "--height", "16", "--width", "24",
        "-o", "set",
    ];
    let o = minisora(&args, dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let set = dir.path().join("set");
    assert!(set.join("dataset.json").exists() && set.join("clip_000002/frame_0003.png").exists());
    let caption = std::fs::read_to_string(set.join("clip_000001.txt")).unwrap();
    assert!(minisora::data::shapes_world::Scene::parse(&caption).is_ok());
    let o = minisora(&args, dir.path());
    assert!(
        text(&o).contains("0 written now, 3 already there"),
        "{}",
        text(&o)
    );
}

#[test]
fn help_explains_the_grammar_and_the_data_layout() {
    let dir = tempfile::tempdir().unwrap();
    let top = text(&minisora(&["--help"], dir.path()));
    assert!(top.contains("render") && top.contains("data") && top.contains("COLOUR"));
    let render = text(&minisora(&["render", "--help"], dir.path()));
    assert!(
        render.contains("--seed")
            && render.contains("contact sheet")
            && render.contains("Examples")
    );
    let data = text(&minisora(&["data", "--help"], dir.path()));
    assert!(data.contains("clip_000000.txt") && data.contains("dataset.json"));
}
