//! The clip folder format: `minisora data` writes it, `clips::list` reads it.

use std::fs;

use minisora::data::clips::{self, ShapesWorldSet};
use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::video::{self, ReadOptions};

#[test]
fn written_sets_list_back_with_parseable_captions_and_matching_clips() {
    let dir = tempfile::tempdir().unwrap();
    let canvas = Canvas::new(4, 16, 16).unwrap();
    let set = ShapesWorldSet::new(11, canvas, "png", 8.0).unwrap();
    assert_eq!(set.write(dir.path(), 3, |_| ()).unwrap(), 3);
    let entries = clips::list(dir.path()).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["clip_000000", "clip_000001", "clip_000002"]
    );
    for (i, e) in entries.iter().enumerate() {
        let scene = Scene::parse(&e.caption).unwrap();
        let (want_scene, seed) = clips::shapes_world_item(11, i, None);
        assert_eq!(scene, want_scene);
        let frames = video::read(&e.video, &ReadOptions::default()).unwrap();
        assert_eq!(frames, render(&scene, canvas, seed).unwrap().frames);
    }
}

#[test]
fn rerun_resumes_and_extends_and_other_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let canvas = Canvas::new(2, 8, 8).unwrap();
    let set = ShapesWorldSet::new(1, canvas, "gif", 8.0).unwrap();
    assert_eq!(set.write(dir.path(), 2, |_| ()).unwrap(), 2);
    // an interrupted clip: its caption never got written
    fs::remove_file(dir.path().join("clip_000001.txt")).unwrap();
    assert_eq!(set.write(dir.path(), 4, |_| ()).unwrap(), 3);
    assert_eq!(clips::list(dir.path()).unwrap().len(), 4);
    let other = ShapesWorldSet::new(2, canvas, "gif", 8.0).unwrap();
    let err = other.write(dir.path(), 4, |_| ()).unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

#[test]
fn user_folders_pair_videos_with_captions_and_report_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let frames = render(
        &Scene::parse("a cyan circle growing").unwrap(),
        Canvas::new(3, 8, 8).unwrap(),
        0,
    )
    .unwrap()
    .frames;
    video::write(
        &dir.path().join("holiday.gif"),
        &frames.view(),
        &Default::default(),
    )
    .unwrap();
    fs::write(
        dir.path().join("holiday.txt"),
        "\n  a cyan circle growing  \nsecond line\n",
    )
    .unwrap();
    fs::write(dir.path().join("notes.md"), "not a clip").unwrap();
    let entries = clips::list(dir.path()).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].caption, "a cyan circle growing");
    assert!(entries[0].video.ends_with("holiday.gif"));

    fs::write(dir.path().join("orphan.txt"), "a red square growing").unwrap();
    let err = clips::list(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("no clip named \"orphan\""),
        "{err}"
    );
    fs::remove_file(dir.path().join("orphan.txt")).unwrap();
    fs::write(dir.path().join("holiday.txt"), "  \n").unwrap();
    assert!(clips::list(dir.path())
        .unwrap_err()
        .to_string()
        .contains("empty"));
}
