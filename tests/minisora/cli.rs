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

/// Runs minisora in `cwd` and checks that it fails with a message holding
/// `needle`, and without a panic.
fn assert_refused(args: &[&str], needle: &str, cwd: &Path) {
    let o = minisora(args, cwd);
    assert!(
        !o.status.success() && text(&o).contains(needle) && !text(&o).contains("panicked"),
        "{args:?}: {}",
        text(&o)
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `eval --renders` needs no model: it scores each prompt's own render,
/// which the detector reads right (colour and motion on every render of
/// these prompts); a checkpoint beside it is refused.
#[test]
fn eval_renders_scores_the_prompts_own_renders_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let o = minisora(&["eval", "--renders", "--count", "5", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["prompts"], 10);
    assert_eq!(report["objects"], 15);
    assert_eq!(report["colour"], 1.0);
    assert_eq!(report["motion"], 1.0);
    let o = minisora(&["eval", "--renders", "--checkpoint", "m"], dir.path());
    assert!(!o.status.success() && text(&o).contains("--checkpoint"));
}

/// `eval --compare` pairs two saved evaluations prompt by prompt: the same
/// renders twice agree on every prompt; evaluations of other prompts are
/// refused.
#[test]
fn eval_compare_pairs_two_saved_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    for (count, out) in [("3", "a"), ("3", "b"), ("2", "c")] {
        let o = minisora(
            &["eval", "--renders", "--count", count, "--save", out],
            dir.path(),
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = minisora(&["eval", "--compare", "a", "b", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let kinds: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (kind, objects) in kinds.as_array().unwrap().iter().zip([1, 2]) {
        assert_eq!(kind["objects"], objects);
        assert_eq!(kind["prompts"], 3);
        assert_eq!(kind["pass_a"], kind["pass_b"]);
        assert_eq!((&kind["only_a"], &kind["only_b"]), (&0.into(), &0.into()));
        assert_eq!(kind["p_value"], 1.0);
    }
    assert_refused(
        &["eval", "--compare", "a", "c"],
        "6 and 4 prompts",
        dir.path(),
    );
    assert_refused(
        &["eval", "--compare", "a", "nowhere"],
        "nowhere",
        dir.path(),
    );
}

/// `eval --skip N` scores exactly what a longer evaluation scores past
/// rank N of each kind: the same prompts, seeds, clip names and verdicts.
#[test]
fn eval_skip_scores_the_tail_of_a_longer_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["--count", "5", "--skip", "0"],
        ["--count", "2", "--skip", "3"],
    ] {
        let out = format!("skip{}", args[3]);
        let mut argv = vec!["eval", "--renders", "--save", out.as_str()];
        argv.extend(args);
        let o = minisora(&argv, dir.path());
        assert!(o.status.success(), "{}", text(&o));
    }
    let lines = |d: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(d).join("scores.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (full, tail) = (lines("skip0"), lines("skip3"));
    let mut rank = std::collections::HashMap::new();
    let expected: Vec<_> = full
        .iter()
        .filter(|l| {
            let r = rank
                .entry(l["objects"].as_array().unwrap().len())
                .or_insert(0);
            *r += 1;
            *r > 3
        })
        .collect();
    assert_eq!((full.len(), tail.len(), expected.len()), (10, 4, 4));
    for (t, e) in tail.iter().zip(expected) {
        assert_eq!(t, e);
        let clip = t["clip"].as_str().unwrap();
        assert!(dir.path().join("skip3").join(clip).is_file(), "{clip}");
    }
    assert_refused(
        &["eval", "--renders", "--skip", "1", "--prompts", "p.txt"],
        "--prompts",
        dir.path(),
    );
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

#[test]
fn train_vae_then_roundtrip_and_eval_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = [
        "train",
        "vae",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch",
        "2",
        "--frames",
        "4",
        "--height",
        "16",
        "--width",
        "16",
        "--out",
        "run",
        "--stop-at",
        "2",
    ];
    let o = minisora(&train, d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("step 2 of 3"), "{}", text(&o));
    let o = minisora(&[&train[..train.len() - 2], &["--resume"]].concat(), d);
    assert!(
        o.status.success() && text(&o).contains("step 3 of 3"),
        "{}",
        text(&o)
    );
    let o = minisora(&train[..train.len() - 2], d);
    assert!(
        !o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );

    let o = minisora(
        &[
            "render",
            "a green square moving left",
            "--frames",
            "4",
            "--height",
            "16",
            "--width",
            "24",
            "--scale",
            "1",
            "-o",
            "in.gif",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = minisora(
        &[
            "vae",
            "roundtrip",
            "in.gif",
            "--checkpoint",
            "run/checkpoint",
            "--side-by-side",
            "-o",
            "out.gif",
        ],
        d,
    );
    assert!(
        o.status.success() && text(&o).contains("PSNR"),
        "{}",
        text(&o)
    );
    let out = minisora::video::read(&d.join("out.gif"), &Default::default()).unwrap();
    assert_eq!(
        out.dim(),
        (4, 16, 48, 3),
        "input and reconstruction side by side"
    );
    let o = minisora(
        &[
            "render",
            "a green square moving left",
            "--frames",
            "4",
            "--height",
            "18",
            "--width",
            "16",
            "--scale",
            "1",
            "-o",
            "odd.gif",
        ],
        d,
    );
    assert!(o.status.success());
    let o = minisora(
        &[
            "vae",
            "roundtrip",
            "odd.gif",
            "--checkpoint",
            "run/checkpoint",
            "-o",
            "x.gif",
        ],
        d,
    );
    assert!(
        !o.status.success() && text(&o).contains("height 18"),
        "{}",
        text(&o)
    );

    let o = minisora(
        &[
            "vae",
            "eval",
            "--checkpoint",
            "run/checkpoint",
            "--count",
            "3",
            "--json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clips"], 3);
    assert!(v["psnr"].as_f64().unwrap() > 0.0 && v["object_colour_error"].as_f64().is_some());
    let o = minisora(
        &[
            "data", "--count", "2", "--frames", "4", "--height", "16", "--width", "16", "-o", "set",
        ],
        d,
    );
    assert!(o.status.success());
    let o = minisora(
        &[
            "vae",
            "eval",
            "--checkpoint",
            "run/checkpoint",
            "--data",
            "set",
        ],
        d,
    );
    assert!(
        o.status.success() && text(&o).contains("clips        2"),
        "{}",
        text(&o)
    );
    // through noisier latents: a figure per noise level, and a bad level refused
    let noisy = [
        "vae",
        "eval",
        "--checkpoint",
        "run/checkpoint",
        "--count",
        "2",
    ];
    let o = minisora(
        &[&noisy[..], &["--latent-noise", "0.5", "--json"]].concat(),
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clips"], 2);
    assert_eq!(v["latent_noise"], 0.5);
    assert_refused(
        &[&noisy[..], &["--latent-noise", "nan"]].concat(),
        "--latent-noise",
        d,
    );
    let o = minisora(&["vae", "eval", "--checkpoint", "nowhere"], d);
    assert!(
        !o.status.success() && text(&o).contains("nowhere"),
        "{}",
        text(&o)
    );
}

#[test]
fn train_dit_then_generate_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = ["--frames", "4", "--height", "16", "--width", "16"];
    // 3 latent channels where the tiny preset's DiT has 4: train dit takes
    // the autoencoder's
    let o = minisora(
        &[
            &[
                "train",
                "vae",
                "--preset",
                "tiny",
                "--latent-channels",
                "3",
                "--steps",
                "1",
                "--batch",
                "1",
                "--out",
                "vae",
            ][..],
            &size,
        ]
        .concat(),
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let train = [
        &[
            "train",
            "dit",
            "--vae",
            "vae/checkpoint",
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--batch",
            "2",
            "--rope-base",
            "100",
            "--text-depth",
            "0",
            "--rope-pairs",
            "0,4,4",
            "--out",
            "dit",
        ][..],
        &size,
    ]
    .concat();
    let o = minisora(&train, d);
    assert!(
        o.status.success() && text(&o).contains("step 2 of 2"),
        "{}",
        text(&o)
    );
    // Shapes World data: the shipped model's share of two-object captions,
    // unless asked otherwise; a run from before the option (none recorded)
    // resumes with the grammar's even draw it began with
    let config_path = d.join("dit/checkpoint/config.json");
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap()
    };
    assert_eq!(read()["run"]["two_objects"], 0.65);
    let mut older = read();
    older["run"].as_object_mut().unwrap().remove("two_objects");
    std::fs::write(&config_path, older.to_string()).unwrap();
    assert_eq!(read()["dit"]["rope_base"], 100.0);
    assert_eq!(read()["dit"]["rope_pairs"], serde_json::json!([0, 4, 4]));
    assert_eq!(read()["text"]["depth"], 0);
    // resuming, the architecture flags left out keep the run's own; one
    // given with another value is refused by name
    let mut more: Vec<&str> = train
        .chunks(2)
        .filter(|pair| !["--rope-base", "--text-depth", "--rope-pairs"].contains(&pair[0]))
        .flatten()
        .copied()
        .collect();
    let steps = more.iter().position(|&a| a == "--steps").unwrap() + 1;
    more[steps] = "3";
    more.push("--resume");
    let o = minisora(&[&more[..], &["--rope-base", "50"]].concat(), d);
    assert!(
        !o.status.success() && text(&o).contains("differing: the DiT's rope_base"),
        "{}",
        text(&o)
    );
    let o = minisora(&[&more[..], &["--rope-pairs", "8,0,0"]].concat(), d);
    assert!(
        !o.status.success() && text(&o).contains("differing: the DiT's rope_pairs"),
        "{}",
        text(&o)
    );
    let o = minisora(&more, d);
    assert!(
        o.status.success() && text(&o).contains("step 3 of 3"),
        "{}",
        text(&o)
    );
    assert!(read()["run"].get("two_objects").is_none());
    assert_eq!(read()["dit"]["rope_base"], 100.0);
    assert_eq!(read()["dit"]["rope_pairs"], serde_json::json!([0, 4, 4]));
    assert_eq!(read()["text"]["depth"], 0);
    let gen = [
        &[
            "generate",
            "a red circle growing",
            "--checkpoint",
            "dit/checkpoint",
            "--steps",
            "3",
            "--show-steps",
            "-o",
            "g.gif",
        ][..],
        &size,
    ]
    .concat();
    let o = minisora(&gen, d);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        minisora::video::read(&d.join("g.gif"), &Default::default())
            .unwrap()
            .dim()
            .0,
        4
    );
    assert!(d.join("g.steps.png").exists());
    // several candidates: the kept one is named, with every score
    let mut picked: Vec<&str> = gen
        .iter()
        .map(|&a| if a == "g.gif" { "k.gif" } else { a })
        .collect();
    picked.extend(["--candidates", "3"]);
    let o = minisora(&picked, d);
    assert!(
        o.status.success()
            && text(&o).contains("-> k.gif")
            && text(&o).contains(" of 3, rated against the empty caption; scores "),
        "{}",
        text(&o)
    );
    assert!(d.join("k.steps.png").exists());
    // against rival captions too: the same candidates, scored otherwise
    let scores = |out: &str| out.split("scores ").nth(1).map(str::to_string);
    let empty_only = scores(&text(&o)).unwrap();
    picked.extend(["--rank-by", "rivals"]);
    let o = minisora(&picked, d);
    assert!(
        o.status.success()
            && text(&o)
                .contains(" of 3, rated against the empty caption and 4 rival captions; scores "),
        "{}",
        text(&o)
    );
    assert_ne!(scores(&text(&o)).unwrap(), empty_only);
    // fine-tuning the trained model: one more step from its weights, with
    // its own autoencoder when no --vae is given
    let tune = [
        &[
            "train",
            "dit",
            "--init",
            "dit/checkpoint",
            "--steps",
            "1",
            "--batch",
            "2",
            "--out",
            "tuned",
        ][..],
        &size,
    ]
    .concat();
    let o = minisora(&tune, d);
    assert!(
        o.status.success() && text(&o).contains("step 1 of 1"),
        "{}",
        text(&o)
    );
    let tuned: minisora::train::dit::DitMeta =
        minisora::checkpoint::read_json(&d.join("tuned/checkpoint/config.json")).unwrap();
    assert_eq!(tuned.init.as_deref(), Some("dit/checkpoint"));
    assert_eq!(tuned.dit.latent_channels, 3);
    // editing a clip: g.gif redrawn to another prompt from half way
    let edit = [
        &[
            "generate",
            "a blue square moving up",
            "--checkpoint",
            "dit/checkpoint",
            "--steps",
            "4",
            "--init",
            "g.gif",
            "--strength",
            "0.5",
            "-o",
            "e.gif",
        ][..],
        &size,
    ]
    .concat();
    let o = minisora(&edit, d);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        minisora::video::read(&d.join("e.gif"), &Default::default())
            .unwrap()
            .dim()
            .0,
        4
    );
    // eval of one prompt of each kind, with these options
    let eval = |options: &[&str]| {
        let common = ["eval", "--checkpoint", "dit/checkpoint", "--count", "1"];
        minisora(&[&common[..], options, &size].concat(), d)
    };
    // the renoise diagnostic of eval runs its share of the steps
    let o = eval(&["--steps", "4", "--renoise", "0.5"]);
    assert!(
        o.status.success() && text(&o).contains("the last 2 steps"),
        "{}",
        text(&o)
    );
    // eval --save keeps each scored clip and a line of verdicts per prompt
    // that add up to the report
    let o = eval(&["--steps", "2", "--save", "kept", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("kept/scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let mut objects: Vec<usize> = lines
        .iter()
        .map(|l| l["objects"].as_array().unwrap().len())
        .collect();
    objects.sort();
    assert_eq!(objects, [1, 2]);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert!(d.join("kept").join(line["clip"].as_str().unwrap()).exists());
        let all = line["objects"].as_array().unwrap().iter().all(|o| {
            ["colour", "shape", "size", "motion"]
                .iter()
                .all(|a| o[a].as_bool().unwrap())
        });
        assert_eq!(line["pass"].as_bool().unwrap(), all);
    }
    let passed = lines.iter().filter(|l| l["pass"] == true).count();
    assert_eq!(report["pass_rate"].as_f64().unwrap(), passed as f64 / 2.0);
    std::fs::write(
        d.join("prompts.txt"),
        "a red circle growing\n# a comment\n\na blue square moving up\n",
    )
    .unwrap();
    let many = [
        &[
            "generate",
            "--prompts",
            "prompts.txt",
            "--checkpoint",
            "dit/checkpoint",
            "--steps",
            "2",
            "--format",
            "gif",
            "-o",
            "many",
        ][..],
        &size,
    ]
    .concat();
    let o = minisora(&many, d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("many/000.gif").exists() && d.join("many/001.gif").exists());
    // a checkpoint whose vocabulary was damaged, an eval with nothing to
    // score and an inspect picture too large to hold are clear errors too
    let broken = d.join("broken");
    std::fs::create_dir_all(broken.join("vae")).unwrap();
    for name in [
        "model.safetensors",
        "vae/config.json",
        "vae/model.safetensors",
    ] {
        std::fs::copy(d.join("dit/checkpoint").join(name), broken.join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("dit/checkpoint/config.json")).unwrap())
            .unwrap();
    config["tokenizer"]["words"] = serde_json::json!([]);
    std::fs::write(broken.join("config.json"), config.to_string()).unwrap();
    std::fs::write(d.join("none.txt"), "# nothing here\n\n").unwrap();
    let picture = ["inspect", "--prompt", "a red circle growing", "-o", "i.png"];
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "generate",
                "a mauve circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "-o",
                "x.gif",
            ],
            "\"mauve\"",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "vae/checkpoint",
                "-o",
                "x.gif",
            ],
            "not a text-to-video model",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "nowhere",
                "-o",
                "x.gif",
            ],
            "nowhere",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--sampler",
                "ddim",
                "-o",
                "x.gif",
            ],
            "ddim",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--height",
                "18",
                "-o",
                "x.gif",
            ],
            "height 18",
        ),
        (
            &[
                "generate",
                "",
                "--checkpoint",
                "dit/checkpoint",
                "-o",
                "x.gif",
            ],
            "empty",
        ),
        (
            &[
                "generate",
                "a red circle",
                "--checkpoint",
                "broken",
                "-o",
                "x.gif",
            ],
            "vocabulary",
        ),
        (
            &[
                "eval",
                "--checkpoint",
                "dit/checkpoint",
                "--prompts",
                "none.txt",
            ],
            "holds no prompts",
        ),
        (
            &["eval", "--checkpoint", "dit/checkpoint", "--count", "0"],
            "--count",
        ),
        (
            &["eval", "--checkpoint", "dit/checkpoint", "--renoise", "0"],
            "--renoise",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--init",
                "g.gif",
                "--strength",
                "2",
                "-o",
                "x.gif",
            ],
            "--strength",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--init",
                "missing.gif",
                "-o",
                "x.gif",
            ],
            "missing.gif",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--strength",
                "0.5",
                "-o",
                "x.gif",
            ],
            "--init",
        ),
        (
            &["train", "dit", "--init", "nothing_here", "--out", "ft"],
            "no such checkpoint directory",
        ),
        (
            &["train", "dit", "--init", "dit/checkpoint", "--hidden", "64"],
            "cannot be used with",
        ),
        (&["train", "dit", "--out", "ft"], "--vae"),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--cfg-interval",
                "0.5",
                "-o",
                "x.gif",
            ],
            "expected two numbers FROM,TO",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--cfg-interval",
                "0.9,0.1",
                "-o",
                "x.gif",
            ],
            "0 <= FROM <= TO <= 1",
        ),
        (
            &[
                "generate",
                "a red circle growing",
                "--checkpoint",
                "dit/checkpoint",
                "--candidates",
                "0",
                "-o",
                "x.gif",
            ],
            "--candidates must be at least 1",
        ),
        (
            &[
                "train",
                "model",
                "--preset",
                "tiny",
                "--latent-channels",
                "0",
                "--out",
                "lc",
            ],
            "latent channels",
        ),
        (&[&picture[..], &["--scale", "0"]].concat(), "scale"),
        (
            &[
                &picture[..],
                &["--scale", "64", "--height", "128", "--width", "128"],
            ]
            .concat(),
            "too large",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(args, needle, d);
    }

    // the preset's patch, width, depth and heads can be overridden; the
    // checkpoint records them, and generate builds the model from it. RoPE
    // pairs that fit the preset's heads of 16 values are refused for heads
    // of 8, before any folder is made
    let custom = [
        &train[..train.len() - size.len() - 1],
        &[
            "custom", "--patch", "2,2,2", "--hidden", "24", "--heads", "3",
        ],
        &["--depth", "2"],
        &size,
    ]
    .concat();
    assert_refused(&custom, "must add up to the 4 rotation pairs", d);
    assert!(!d.join("custom").exists());
    let at = custom.iter().position(|&a| a == "--rope-pairs").unwrap();
    let custom = [&custom[..at], &custom[at + 2..]].concat();
    let o = minisora(&custom, d);
    assert!(o.status.success(), "{}", text(&o));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("custom/checkpoint/config.json")).unwrap())
            .unwrap();
    let dit = &config["dit"];
    assert_eq!(
        (
            &dit["hidden"],
            &dit["depth"],
            &dit["heads"],
            &dit["patch"]["t"]
        ),
        (&24.into(), &2.into(), &3.into(), &2.into()),
        "{dit}"
    );
    let o = minisora(
        &[
            "generate",
            "a red circle",
            "--checkpoint",
            "custom/checkpoint",
            "--steps",
            "1",
            "-o",
            "c.png",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    // a width the heads do not divide is refused with the reason
    let bad = [
        &train[..train.len() - size.len() - 1],
        &["bad", "--hidden", "25"],
        &size,
    ]
    .concat();
    assert_refused(&bad, "heads", d);
    let zero_heads = [
        &train[..train.len() - size.len() - 1],
        &["bad", "--heads", "0"],
        &size,
    ]
    .concat();
    assert_refused(&zero_heads, "heads", d);
}

#[test]
fn train_model_trains_both_stages_and_resumes_by_skipping_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = [
        "train",
        "model",
        "--preset",
        "tiny",
        "--vae-steps",
        "2",
        "--vae-batch",
        "2",
        "--dit-steps",
        "2",
        "--dit-batch",
        "2",
        "--dit-two-objects",
        "1",
        "--dit-rope-base",
        "100",
        "--dit-text-depth",
        "3",
        "--dit-rope-pairs",
        "2,2,4",
        "--contrast-steps",
        "2",
        "--out",
        "m",
    ];
    let o = minisora(&train, d);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // the DiT stage's share of two-object captions is recorded with its run;
    // the autoencoder's data keeps the grammar's even draw
    let config = |stage: &str| -> serde_json::Value {
        let path = d.join(format!("m/{stage}/checkpoint/config.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(config("dit")["run"]["two_objects"], 1.0);
    assert!(config("vae")["run"].get("two_objects").is_none());
    // and so are its architecture's RoPE base and caption encoder depth
    assert_eq!(config("dit")["dit"]["rope_base"], 100.0);
    assert_eq!(config("dit")["text"]["depth"], 3);
    assert_eq!(
        config("dit")["dit"]["rope_pairs"],
        serde_json::json!([2, 2, 4])
    );
    assert!(
        out.contains("autoencoder: step 0 of 2") && out.contains("text encoder + DiT: step 0 of 2"),
        "{out}"
    );
    assert!(d.join("m/vae/checkpoint/model.safetensors").exists());
    assert!(d.join("m/dit/checkpoint/vae/model.safetensors").exists());
    // the last stage fine-tunes the DiT stage's model with the rival
    // contrast, on the same data, and is the finished model
    assert!(out.contains("rival contrast: step 0 of 2"), "{out}");
    assert!(out.contains("model: m/contrast/checkpoint"), "{out}");
    let tuned = config("contrast");
    assert_eq!(tuned["contrast"], 1.0);
    assert_eq!(tuned["contrast_margin"], 0.1);
    assert_eq!(tuned["run"]["two_objects"], 1.0);
    assert_eq!(tuned["run"]["ema_decay"], 0.995);
    assert_eq!(tuned["init"], "m/dit/checkpoint");
    assert_eq!(config("dit")["contrast"], 0.0);
    // again without --resume: refused; with it: both stages are done already
    let o = minisora(&train, d);
    assert!(
        !o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );
    // (the DiT flags left out: a resumed stage keeps its own)
    let resume: Vec<&str> = train
        .chunks(2)
        .filter(|pair| {
            ![
                "--dit-two-objects",
                "--dit-rope-base",
                "--dit-text-depth",
                "--dit-rope-pairs",
            ]
            .contains(&pair[0])
        })
        .flatten()
        .chain(&["--resume"])
        .copied()
        .collect();
    let o = minisora(&resume, d);
    let out = text(&o);
    assert!(
        o.status.success()
            && out.contains("autoencoder: step 2 of 2")
            && out.contains("DiT: step 2 of 2")
            && out.contains("rival contrast: step 2 of 2"),
        "{out}"
    );
    // the finished model generates
    let o = minisora(
        &[
            "generate",
            "a red circle growing",
            "--checkpoint",
            "m/contrast/checkpoint",
            "--steps",
            "2",
            "--frames",
            "4",
            "--height",
            "16",
            "--width",
            "16",
            "-o",
            "g.gif",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    // a share outside [0, 1], a RoPE base whose frequencies do not spread,
    // or RoPE pairs that do not fill a head is refused before any stage
    // begins
    for (flag, value, reason) in [
        ("--dit-two-objects", "1.5", "two-object"),
        ("--dit-rope-base", "1", "RoPE base"),
        (
            "--dit-rope-pairs",
            "0,4,5",
            "must add up to the 16 rotation pairs",
        ),
    ] {
        let o = minisora(&["train", "model", flag, value, "--out", "bad"], d);
        assert!(
            !o.status.success() && text(&o).contains(reason) && !d.join("bad").exists(),
            "{}",
            text(&o)
        );
    }
    // the benchmark presets are refused with a reason
    let o = minisora(&["train", "model", "--preset", "XL", "--out", "x"], d);
    assert!(
        !o.status.success() && text(&o).contains("benchmarks"),
        "{}",
        text(&o)
    );
}

#[test]
fn bench_times_a_tiny_step_and_its_json_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let o = minisora(
        &[
            "bench", "--preset", "tiny", "--tokens", "8", "--tokens", "16", "--repeat", "1",
            "--warmup", "0", "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["matmul_peak_gflops"].as_f64().unwrap() > 0.0);
    let cases = v["cases"].as_array().unwrap();
    // two token counts, each without and with guidance batching
    assert_eq!(cases.len(), 4);
    for (case, (tokens, guidance)) in
        cases
            .iter()
            .zip([(8, false), (8, true), (16, false), (16, true)])
    {
        assert_eq!(case["tokens"], tokens);
        assert_eq!(case["guidance"], guidance);
        assert_eq!(case["forward_batch"], if guidance { 2 } else { 1 });
        for field in [
            "preset",
            "device",
            "dtype",
            "grid",
            "repeat",
            "median_ms",
            "p90_ms",
            "tokens_per_s",
            "cost",
            "achieved_gflops",
            "matmul_peak_gflops",
            "peak_fraction",
            "peak_memory_bytes",
        ] {
            assert!(case.get(field).is_some(), "{field} missing: {case}");
        }
        for field in [
            "attention_flops",
            "attention_proj_flops",
            "mlp_flops",
            "total_flops",
        ] {
            assert!(case["cost"][field].as_u64().unwrap() > 0, "{field}");
        }
        assert!(case["median_ms"].as_f64().unwrap() > 0.0);
        // the binary counts heap bytes: a step holds some at its peak
        assert!(case["peak_memory_bytes"].as_u64().unwrap() > 0, "{case}");
    }
    let o = minisora(&["bench", "--preset", "tiny", "--dtype", "f64"], dir.path());
    assert!(
        !o.status.success() && text(&o).contains("--dtype"),
        "{}",
        text(&o)
    );
}

/// `minisora ... | head` ends quietly when the reader stops reading: killed
/// by SIGPIPE, as other command-line tools are, not a panic with a backtrace.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minisora"))
        .args([
            "bench", "--preset", "tiny", "--tokens", "8", "--repeat", "1",
        ])
        .args(["--warmup", "0", "--json"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the reader goes away before the JSON (written after the timing) comes
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_shipped_model_loads_and_generates() {
    // no --checkpoint: samples/model, found from any working directory
    let dir = tempfile::tempdir().unwrap();
    let o = minisora(
        &[
            "generate",
            "a red circle moving right",
            "--steps",
            "2",
            "-o",
            "g.gif",
        ],
        dir.path(),
    );
    // says what it wrote, also when the output is not a terminal
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("-> g.gif: 16 frames"),
        "{}",
        text(&o)
    );
    let frames = minisora::video::read(&dir.path().join("g.gif"), &Default::default()).unwrap();
    assert_eq!(frames.dim().0, 16);
    // its vocabulary is Shapes World's: other words are refused by name
    let o = minisora(
        &["generate", "a red dog moving right", "-o", "x.gif"],
        dir.path(),
    );
    assert!(
        !o.status.success() && text(&o).contains("\"dog\""),
        "{}",
        text(&o)
    );
}

#[test]
fn bench_steps_scores_every_sampler_and_step_count_and_draws_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let o = minisora(
        &[
            "bench",
            "steps",
            "--samplers",
            "euler,heun",
            "--steps",
            "1,2",
            "--count",
            "1",
            "--plot",
            "steps.png",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let points: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let points = points.as_array().unwrap();
    let pairs: Vec<(String, u64, u64)> = points
        .iter()
        .map(|p| {
            (
                p["sampler"].as_str().unwrap().to_string(),
                p["steps"].as_u64().unwrap(),
                p["model_calls"].as_u64().unwrap(),
            )
        })
        .collect();
    // Heun calls the model twice a step, except on its last step to t = 0
    let expected = [
        ("euler", 1, 1),
        ("euler", 2, 2),
        ("heun", 1, 1),
        ("heun", 2, 3),
    ];
    assert_eq!(
        pairs,
        expected.map(|(s, n, c)| (s.to_string(), n, c)).to_vec()
    );
    for p in points {
        assert!(p["seconds_per_clip"].as_f64().unwrap() > 0.0);
        let a = &p["adherence"];
        assert_eq!(a["prompts"], 2);
        let pass = a["pass_rate"].as_f64().unwrap();
        let (one, two) = (
            a["one_object_pass"].as_f64().unwrap(),
            a["two_object_pass"].as_f64().unwrap(),
        );
        assert_eq!(pass, (one + two) / 2.0);
    }
    let plot = image::open(dir.path().join("steps.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (960, 600));
    // bad step lists and samplers are named
    for (args, needle) in [
        (["--steps", "2,x"], "\"x\""),
        (["--steps", "0"], "\"0\""),
        (["--samplers", "ddim"], "ddim"),
    ] {
        let mut all = vec!["bench", "steps", "--count", "1"];
        all.extend(args);
        let o = minisora(&all, dir.path());
        assert!(
            !o.status.success() && text(&o).contains(needle),
            "{}",
            text(&o)
        );
    }
}
