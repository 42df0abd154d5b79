//! The caption parser: prompt text -> [`Scene`], or an error that names the
//! offending word and lists what the grammar expected in its place.
//!
//! Case and runs of whitespace are normalised; anything else outside the v1
//! grammar of `shared/SHAPES_WORLD.md` is rejected, never guessed at.

use std::fmt;

use super::{Color, Motion, Object, Scene, Shape, Size};

/// What went wrong in a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptErrorKind {
    /// The prompt has no words.
    Empty,
    /// A word that Shapes World's vocabulary does not have.
    UnknownWord,
    /// A known word in a place where the grammar wants another.
    MisplacedWord,
    /// The prompt stops in the middle of an object.
    UnexpectedEnd,
    /// Two objects of one prompt with the same colour.
    RepeatedColor,
}

/// A prompt outside the grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptError {
    pub kind: PromptErrorKind,
    /// The prompt as given.
    pub prompt: String,
    /// 1-based index of the offending word, if there is one.
    pub position: Option<usize>,
    /// The offending word (normalised to lower case).
    pub word: Option<String>,
    /// What the grammar expected at that place, in words.
    pub expected: String,
}

impl std::error::Error for PromptError {}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.word.as_deref().unwrap_or("");
        let at = self.position.unwrap_or(0);
        match self.kind {
            PromptErrorKind::Empty => write!(f, "empty prompt: expected {}", self.expected),
            PromptErrorKind::UnknownWord => write!(
                f,
                "unknown word \"{word}\" (word {at} of \"{}\"): expected {}",
                self.prompt, self.expected
            ),
            PromptErrorKind::MisplacedWord => write!(
                f,
                "misplaced word \"{word}\" (word {at} of \"{}\"): expected {}",
                self.prompt, self.expected
            ),
            PromptErrorKind::UnexpectedEnd => write!(
                f,
                "prompt \"{}\" ends too early, after \"{word}\": expected {}",
                self.prompt, self.expected
            ),
            PromptErrorKind::RepeatedColor => write!(
                f,
                "both objects of \"{}\" are {word}: {}",
                self.prompt, self.expected
            ),
        }
    }
}

/// A place in the grammar, with the words that may fill it.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Article,
    SizeOrColor,
    Color,
    Shape,
    Motion,
    Direction,
    Still,
    AndOrEnd,
    End,
}

const MOTION_HEADS: &[&str] = &["moving", "standing", "growing", "shrinking"];
const DIRECTIONS: &[&str] = &["left", "right", "up", "down"];

impl Slot {
    fn expected(self) -> String {
        let list = |what: &str, words: &[&str]| format!("{what}: {}", words.join(", "));
        match self {
            Slot::Article => "\"a\" to start an object, as in \"a red circle moving right\"".into(),
            Slot::SizeOrColor => {
                let words: Vec<&str> = Size::WORDS.iter().chain(Color::WORDS).copied().collect();
                list("a size or a colour", &words)
            }
            Slot::Color => list("a colour", Color::WORDS),
            Slot::Shape => list("a shape", Shape::WORDS),
            Slot::Motion => list("a motion", Motion::WORDS),
            Slot::Direction => list("a direction after \"moving\"", DIRECTIONS),
            Slot::Still => "\"still\" after \"standing\"".into(),
            Slot::AndOrEnd => {
                "\"and\" followed by a second object, or the end of the prompt".into()
            }
            Slot::End => "the end of the prompt: a prompt has at most two objects".into(),
        }
    }
}

/// Whether `word` belongs to the grammar anywhere (so a wrong one is
/// "misplaced" rather than "unknown").
fn in_vocabulary(word: &str) -> bool {
    ["a", "and", "still"].contains(&word)
        || Size::WORDS.contains(&word)
        || Color::WORDS.contains(&word)
        || Shape::WORDS.contains(&word)
        || MOTION_HEADS.contains(&word)
        || DIRECTIONS.contains(&word)
}

struct Parser<'a> {
    prompt: &'a str,
    words: Vec<String>,
    next: usize,
}

impl Parser<'_> {
    fn error(&self, kind: PromptErrorKind, at: usize, slot: Slot) -> PromptError {
        PromptError {
            kind,
            prompt: self.prompt.to_string(),
            position: Some(at + 1),
            word: self.words.get(at).cloned(),
            expected: slot.expected(),
        }
    }

    /// The next word, parsed by `accept` for `slot`.
    fn take<T>(
        &mut self,
        slot: Slot,
        accept: impl Fn(&str) -> Option<T>,
    ) -> Result<T, PromptError> {
        let at = self.next;
        let Some(word) = self.words.get(at) else {
            return Err(self.error(PromptErrorKind::UnexpectedEnd, at - 1, slot));
        };
        match accept(word) {
            Some(value) => {
                self.next += 1;
                Ok(value)
            }
            None if in_vocabulary(word) => {
                Err(self.error(PromptErrorKind::MisplacedWord, at, slot))
            }
            None => Err(self.error(PromptErrorKind::UnknownWord, at, slot)),
        }
    }

    fn object(&mut self) -> Result<Object, PromptError> {
        self.take(Slot::Article, |w| (w == "a").then_some(()))?;
        enum Head {
            Size(Size),
            Color(Color),
        }
        let head = self.take(Slot::SizeOrColor, |w| {
            Size::from_word(w)
                .map(Head::Size)
                .or(Color::from_word(w).map(Head::Color))
        })?;
        let (size, color) = match head {
            Head::Color(c) => (None, c),
            Head::Size(s) => (Some(s), self.take(Slot::Color, Color::from_word)?),
        };
        let shape = self.take(Slot::Shape, Shape::from_word)?;
        let head = self.take(Slot::Motion, |w| MOTION_HEADS.iter().position(|&h| h == w))?;
        let motion = match MOTION_HEADS[head] {
            "moving" => self.take(Slot::Direction, |w| {
                Motion::from_word(&format!("moving {w}"))
            })?,
            "standing" => self.take(Slot::Still, |w| (w == "still").then_some(Motion::Still))?,
            "growing" => Motion::Grow,
            _ => Motion::Shrink,
        };
        Ok(Object {
            size,
            color,
            shape,
            motion,
        })
    }
}

impl Scene {
    /// Parses a prompt of the Shapes World grammar.
    ///
    /// Case and whitespace are normalised (`"A  Red CIRCLE moving right"` is
    /// accepted); every other deviation is an error naming the word and what
    /// was expected there.
    pub fn parse(prompt: &str) -> Result<Scene, PromptError> {
        let words: Vec<String> = prompt.split_whitespace().map(str::to_lowercase).collect();
        if words.is_empty() {
            return Err(PromptError {
                kind: PromptErrorKind::Empty,
                prompt: prompt.to_string(),
                position: None,
                word: None,
                expected: Slot::Article.expected(),
            });
        }
        let mut parser = Parser {
            prompt,
            words,
            next: 0,
        };
        let first = parser.object()?;
        let mut objects = vec![first];
        if parser.next < parser.words.len() {
            parser.take(Slot::AndOrEnd, |w| (w == "and").then_some(()))?;
            let second_at = parser.next;
            let second = parser.object()?;
            if second.color == first.color {
                let color_at = second_at + if second.size.is_some() { 2 } else { 1 };
                let mut err = parser.error(PromptErrorKind::RepeatedColor, color_at, Slot::End);
                err.expected = "the two objects of a prompt must have different colours".into();
                return Err(err);
            }
            objects.push(second);
            if parser.next < parser.words.len() {
                let at = parser.next;
                let kind = if in_vocabulary(&parser.words[at]) {
                    PromptErrorKind::MisplacedWord
                } else {
                    PromptErrorKind::UnknownWord
                };
                return Err(parser.error(kind, at, Slot::End));
            }
        }
        Ok(Scene { objects })
    }
}
