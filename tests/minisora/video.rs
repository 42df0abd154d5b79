//! Video I/O: round trips through every format, errors instead of panics on
//! bad input, and nothing left behind by a failed write.

use std::fs;
use std::path::Path;

use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::video::{self, Format, Frames, ReadOptions, WriteOptions};

/// The bound the mp4 round trip must stay under, in 8-bit levels, averaged
/// over every pixel and channel: H.264 at CRF 18 with yuv420p colour (half
/// resolution chroma smears the hard edges of Shapes World a little).
const MP4_MAE_BOUND: f64 = 3.0;

fn clip(frames: usize, h: usize, w: usize) -> Frames {
    let s = Scene::parse("a red circle moving right and a small blue square moving up").unwrap();
    render(&s, Canvas::new(frames, h, w).unwrap(), 3)
        .unwrap()
        .frames
}

fn mae(a: &Frames, b: &Frames) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn opts(fps: f64, scale: usize) -> WriteOptions {
    WriteOptions { fps, scale }
}

#[test]
fn mp4_round_trip_keeps_frame_count_and_stays_under_the_error_bound() {
    let dir = tempfile::tempdir().unwrap();
    for (t, h, w, scale) in [(16, 32, 32, 4), (16, 64, 64, 1), (17, 32, 48, 2)] {
        let frames = clip(t, h, w);
        let path = dir.path().join(format!("c{t}_{h}_{w}.mp4"));
        video::write(&path, &frames.view(), &opts(8.0, scale)).unwrap();
        let back = video::read(&path, &ReadOptions::default()).unwrap();
        assert_eq!(back.dim(), (t, h * scale, w * scale, 3), "{path:?}");
        let small = video::read(&path, &ReadOptions { size: Some((h, w)) }).unwrap();
        assert_eq!(small.dim().0, t);
        let up = video::upscale(&frames.view(), scale);
        let err = mae(&up, &back);
        eprintln!("mp4 {t}x{h}x{w} scale {scale}: mean abs error {err:.3}");
        assert!(err < MP4_MAE_BOUND, "{path:?}: mean abs error {err:.3}");
    }
    assert_eq!(names(dir.path()).len(), 3, "no temporaries left");
}

#[test]
fn mp4_keeps_the_last_frame_at_other_frame_rates() {
    let dir = tempfile::tempdir().unwrap();
    let frames = clip(5, 16, 16);
    for fps in [1.0, 24.0, 29.97] {
        let path = dir.path().join(format!("f{fps}.mp4"));
        video::write(&path, &frames.view(), &opts(fps, 1)).unwrap();
        assert_eq!(
            video::read(&path, &ReadOptions::default()).unwrap().dim().0,
            5,
            "fps {fps}"
        );
    }
}

#[test]
fn odd_sizes_are_padded_to_even_for_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let frames = clip(4, 15, 21);
    let path = dir.path().join("odd.mp4");
    video::write(&path, &frames.view(), &opts(8.0, 1)).unwrap();
    assert_eq!(
        video::read(&path, &ReadOptions::default()).unwrap().dim(),
        (4, 16, 22, 3)
    );
}

#[test]
fn gif_and_png_frames_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let frames = clip(16, 32, 40);
    let gif = dir.path().join("c.gif");
    video::write(&gif, &frames.view(), &opts(8.0, 1)).unwrap();
    assert_eq!(video::read(&gif, &ReadOptions::default()).unwrap(), frames);
    let gif2 = dir.path().join("c2.gif");
    video::write(&gif2, &frames.view(), &opts(12.5, 3)).unwrap();
    assert_eq!(
        video::read(&gif2, &ReadOptions::default()).unwrap(),
        video::upscale(&frames.view(), 3)
    );
    assert_eq!(
        video::read(
            &gif2,
            &ReadOptions {
                size: Some((32, 40))
            }
        )
        .unwrap()
        .dim(),
        (16, 32, 40, 3)
    );

    let folder = dir.path().join("frames/");
    video::write(&folder, &frames.view(), &opts(8.0, 1)).unwrap();
    assert_eq!(names(&folder).len(), 16);
    assert_eq!(names(&folder)[0], "frame_0000.png");
    assert_eq!(
        video::read(&folder, &ReadOptions::default()).unwrap(),
        frames
    );
}

#[test]
fn writing_into_an_existing_folder_replaces_the_clip() {
    let dir = tempfile::tempdir().unwrap();
    video::write(
        &dir.path().join("frames/"),
        &clip(6, 8, 8).view(),
        &opts(8.0, 1),
    )
    .unwrap();
    let folder = dir.path().join("frames");
    fs::write(folder.join("keep.txt"), "user file").unwrap();
    // an existing directory means PNG frames even without a trailing slash
    assert_eq!(Format::for_output(&folder).unwrap(), Format::PngFrames);
    let shorter = clip(3, 8, 8);
    video::write(&folder, &shorter.view(), &opts(8.0, 1)).unwrap();
    assert_eq!(
        names(&folder),
        [
            "frame_0000.png",
            "frame_0001.png",
            "frame_0002.png",
            "keep.txt"
        ]
    );
    assert_eq!(
        video::read(&folder, &ReadOptions::default()).unwrap(),
        shorter
    );
    assert_eq!(names(dir.path()), ["frames"], "no temporaries left");
}

#[test]
fn contact_sheet_is_one_png_with_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sheet.png");
    video::write(&path, &clip(16, 32, 32).view(), &opts(8.0, 2)).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // 8 columns of 64-pixel tiles with 2-pixel gutters; 2 rows under labels
    assert_eq!(img.width(), 8 * 66 + 2);
    assert!(img.height() > 2 * 64);
}

#[test]
fn the_format_follows_the_name_and_unknown_ones_are_refused() {
    assert_eq!(Format::for_output(Path::new("a.MP4")).unwrap(), Format::Mp4);
    assert_eq!(Format::for_output(Path::new("a.gif")).unwrap(), Format::Gif);
    assert_eq!(
        Format::for_output(Path::new("a.png")).unwrap(),
        Format::Sheet
    );
    assert_eq!(
        Format::for_output(Path::new("new_folder/")).unwrap(),
        Format::PngFrames
    );
    let err = Format::for_output(Path::new("clip.avi"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip.avi") && err.contains(".mp4"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames = clip(8, 32, 32);
    video::write(&d.join("good.mp4"), &frames.view(), &opts(8.0, 1)).unwrap();
    video::write(&d.join("good.gif"), &frames.view(), &opts(8.0, 1)).unwrap();
    let mp4 = fs::read(d.join("good.mp4")).unwrap();
    let gif = fs::read(d.join("good.gif")).unwrap();
    fs::write(d.join("empty.mp4"), b"").unwrap();
    fs::write(d.join("truncated.mp4"), &mp4[..mp4.len() / 2]).unwrap();
    fs::write(d.join("header_only.mp4"), &mp4[..40]).unwrap();
    fs::write(
        d.join("text.mp4"),
        b"this is not a video at all, just some words\n".repeat(50),
    )
    .unwrap();
    fs::write(d.join("notes.txt"), b"hello").unwrap();
    fs::write(d.join("truncated.gif"), &gif[..gif.len() / 3]).unwrap();
    fs::write(d.join("noise.gif"), [7u8; 300]).unwrap();
    fs::create_dir(d.join("no_frames")).unwrap();
    fs::create_dir(d.join("gap")).unwrap();
    fs::copy(d.join("good.gif"), d.join("gap/frame_0001.png")).unwrap();
    let cases = [
        ("missing.mp4", "No such file"),
        ("empty.mp4", "empty"),
        ("truncated.mp4", ""),
        ("header_only.mp4", ""),
        ("text.mp4", ""),
        ("notes.txt", ""),
        ("truncated.gif", ""),
        ("noise.gif", "GIF"),
        ("no_frames", "frame_NNNN.png"),
        ("gap", "frame_0000.png"),
    ];
    for (name, needle) in cases {
        let err = video::read(&d.join(name), &ReadOptions::default())
            .expect_err(name)
            .to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    assert!(video::read(&d.join("good.mp4"), &ReadOptions { size: Some((0, 4)) }).is_err());
}

/// FFmpeg takes paths as UTF-8 text (ffmpeg-next panics on any other): a
/// file or folder named in another encoding is an error naming the problem.
#[cfg(unix)]
#[test]
fn paths_ffmpeg_cannot_take_are_errors_not_panics() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join(OsStr::from_bytes(b"caf\xe9"));
    fs::create_dir(&latin1).unwrap();
    let frames = clip(8, 32, 32);
    video::write(&dir.path().join("good.mp4"), &frames.view(), &opts(8.0, 1)).unwrap();
    fs::copy(dir.path().join("good.mp4"), latin1.join("clip.mp4")).unwrap();
    let err = video::read(&latin1.join("clip.mp4"), &ReadOptions::default())
        .expect_err("a Latin-1 folder")
        .to_string();
    assert!(err.contains("UTF-8"), "{err}");
    let err = video::write(&latin1.join("out.mp4"), &frames.view(), &opts(8.0, 1))
        .expect_err("a Latin-1 folder")
        .to_string();
    assert!(err.contains("UTF-8"), "{err}");
    // scales outside 1..=64, or too large a result, are refused before any work
    for scale in [0, 65] {
        assert!(
            video::write(&dir.path().join("s.gif"), &frames.view(), &opts(8.0, scale)).is_err()
        );
    }
    let err = video::check_scale((16, 1024, 1024, 3), 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
    video::check_scale((16, 32, 32, 3), 8).unwrap();
}

#[test]
fn unwritable_outputs_are_errors_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("a_file"), b"x").unwrap();
    let frames = clip(4, 16, 16);
    for name in [
        "missing/out.mp4",
        "missing/out.gif",
        "a_file/out.mp4",
        "a_file/out.png",
        "missing/frames/",
    ] {
        let err = video::write(&d.join(name), &frames.view(), &opts(8.0, 1)).expect_err(name);
        assert!(!err.to_string().is_empty());
    }
    // invalid settings fail before anything is created
    assert!(video::write(&d.join("bad.mp4"), &frames.view(), &opts(0.0, 1)).is_err());
    assert!(video::write(&d.join("bad.gif"), &frames.view(), &opts(8.0, 0)).is_err());
    let empty = Frames::zeros((0, 16, 16, 3));
    assert!(video::write(&d.join("empty.mp4"), &empty.view(), &opts(8.0, 1)).is_err());
    assert_eq!(names(d), ["a_file"]);
}
