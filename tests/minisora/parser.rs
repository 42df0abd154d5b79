//! The caption parser: every form of the grammar in, everything else out with
//! a message that names the problem; never a panic.

use minisora::data::shapes_world::{Color, Motion, Object, PromptErrorKind, Scene, Shape, Size};
use proptest::prelude::*;

fn all_objects() -> Vec<Object> {
    let sizes = [None, Some(Size::Small), Some(Size::Large)];
    let mut out = Vec::new();
    for size in sizes {
        for &color in Color::ALL {
            for &shape in Shape::ALL {
                for &motion in Motion::ALL {
                    out.push(Object {
                        size,
                        color,
                        shape,
                        motion,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn every_one_object_form_parses_to_its_scene() {
    let objects = all_objects();
    assert_eq!(objects.len(), 3 * 8 * 3 * 7);
    for o in objects {
        let s = Scene { objects: vec![o] };
        assert_eq!(Scene::parse(&s.caption()).unwrap(), s, "{s}");
    }
}

#[test]
fn two_object_forms_parse_for_every_pair_of_distinct_colours() {
    let objects = all_objects();
    let mut n = 0;
    // a stride through all pairs keeps this fast while touching every word
    for (i, a) in objects.iter().enumerate().step_by(7) {
        for b in objects.iter().skip(i % 11).step_by(13) {
            if a.color == b.color {
                continue;
            }
            let s = Scene {
                objects: vec![*a, *b],
            };
            assert_eq!(Scene::parse(&s.caption()).unwrap(), s);
            n += 1;
        }
    }
    assert!(n > 1000);
}

#[test]
fn examples_of_the_contract_parse() {
    let s =
        Scene::parse("a small blue square standing still and a large yellow triangle moving up")
            .unwrap();
    assert_eq!(s.objects.len(), 2);
    assert_eq!(
        s.objects[0],
        Object {
            size: Some(Size::Small),
            color: Color::Blue,
            shape: Shape::Square,
            motion: Motion::Still
        }
    );
    assert_eq!(s.objects[1].motion, Motion::Up);
    assert_eq!(
        Scene::parse("a red circle moving right").unwrap().caption(),
        "a red circle moving right"
    );
}

#[test]
fn case_and_spacing_are_normalised() {
    let s = Scene::parse("  A   RED Circle\tmoving \n RIGHT  AND a Small bLue square Moving up ")
        .unwrap();
    assert_eq!(
        s.caption(),
        "a red circle moving right and a small blue square moving up"
    );
}

/// (prompt, kind, words the message must contain)
const BAD: &[(&str, PromptErrorKind, &[&str])] = &[
    ("", PromptErrorKind::Empty, &["empty", "\"a\""]),
    ("   \t ", PromptErrorKind::Empty, &["empty"]),
    (
        "a red hexagon moving left",
        PromptErrorKind::UnknownWord,
        &["\"hexagon\"", "word 3", "circle, square, triangle"],
    ),
    (
        "a reed circle moving left",
        PromptErrorKind::UnknownWord,
        &["\"reed\"", "small, large, red"],
    ),
    (
        "red circle moving right",
        PromptErrorKind::MisplacedWord,
        &["\"red\"", "word 1", "\"a\""],
    ),
    (
        "the red circle moving right",
        PromptErrorKind::UnknownWord,
        &["\"the\"", "\"a\""],
    ),
    (
        "a circle red moving right",
        PromptErrorKind::MisplacedWord,
        &["\"circle\"", "a size or a colour"],
    ),
    (
        "a small large red circle growing",
        PromptErrorKind::MisplacedWord,
        &["\"large\"", "a colour: red"],
    ),
    (
        "a red circle",
        PromptErrorKind::UnexpectedEnd,
        &["ends too early", "\"circle\"", "moving left"],
    ),
    (
        "a red circle moving",
        PromptErrorKind::UnexpectedEnd,
        &["\"moving\"", "left, right, up, down"],
    ),
    (
        "a red circle moving sideways",
        PromptErrorKind::UnknownWord,
        &["\"sideways\"", "left, right, up, down"],
    ),
    (
        "a red circle standing",
        PromptErrorKind::UnexpectedEnd,
        &["\"still\""],
    ),
    (
        "a red circle standing up",
        PromptErrorKind::MisplacedWord,
        &["\"up\"", "\"still\""],
    ),
    (
        "a red circle moving right.",
        PromptErrorKind::UnknownWord,
        &["\"right.\""],
    ),
    (
        "a red circle growing fast",
        PromptErrorKind::UnknownWord,
        &["\"fast\"", "\"and\""],
    ),
    (
        "a red circle growing and",
        PromptErrorKind::UnexpectedEnd,
        &["\"and\"", "\"a\""],
    ),
    (
        "a red circle growing and a red square growing",
        PromptErrorKind::RepeatedColor,
        &["red", "different colours"],
    ),
    (
        "a red circle growing and a small red square growing",
        PromptErrorKind::RepeatedColor,
        &["red", "different colours"],
    ),
    (
        "a red circle growing and a blue square growing and a green circle shrinking",
        PromptErrorKind::MisplacedWord,
        &["\"and\"", "word 10", "at most two objects"],
    ),
    (
        "a red circle growing a blue square growing",
        PromptErrorKind::MisplacedWord,
        &["\"a\"", "\"and\""],
    ),
    (
        "a red circle growing and blue square moving up",
        PromptErrorKind::MisplacedWord,
        &["\"blue\"", "\"a\""],
    ),
    (
        "a red círculo moving left",
        PromptErrorKind::UnknownWord,
        &["\"círculo\""],
    ),
];

#[test]
fn bad_prompts_are_rejected_with_a_message_naming_the_problem() {
    for (prompt, kind, needles) in BAD {
        let err = Scene::parse(prompt).expect_err(prompt);
        assert_eq!(&err.kind, kind, "{prompt}: {err}");
        let msg = err.to_string();
        for needle in *needles {
            assert!(
                msg.contains(needle),
                "message for {prompt:?} lacks {needle:?}: {msg}"
            );
        }
    }
    let kinds: std::collections::HashSet<String> =
        BAD.iter().map(|(p, ..)| p.to_string()).collect();
    assert!(kinds.len() >= 10);
}

const WORDS: &[&str] = &[
    "a",
    "and",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "purple",
    "orange",
    "cyan",
    "circle",
    "square",
    "triangle",
    "moving",
    "left",
    "right",
    "up",
    "down",
    "standing",
    "still",
    "growing",
    "shrinking",
    "RED",
    "x",
    "",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_any_string(s in "\\PC{0,80}") {
        let _ = Scene::parse(&s);
    }

    #[test]
    fn word_salad_parses_or_names_a_word(idx in proptest::collection::vec(0..WORDS.len(), 0..16)) {
        let prompt = idx.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" ");
        match Scene::parse(&prompt) {
            // anything accepted is canonical after normalisation
            Ok(scene) => prop_assert_eq!(scene.caption(), prompt.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("expected") || msg.contains("different colours"), "{}", msg);
                if let Some(w) = &e.word { let quoted = format!("\"{}\"", w); prop_assert!(msg.contains(&quoted), "{}", msg); }
            }
        }
    }
}
