//! Shapes World: coloured shapes that move, each clip rendered from a caption.
//!
//! This module implements the data contract `shared/SHAPES_WORLD.md` (v1)
//! exactly: the caption grammar ([`Scene`], parsed by [`Scene::parse`] and
//! drawn at random by [`Scene::sample`]) and the seeded renderer
//! ([`render`]). Because every clip comes from a known scene, a generated clip
//! can later be scored for prompt adherence exactly.

mod parse;
mod render;

pub use parse::{PromptError, PromptErrorKind};
pub use render::{draw, layout, render, Canvas, Clip, ObjectState, Track};

use std::fmt;

use crate::rng::Rng;

/// Version of the data contract this module implements.
pub const CONTRACT_VERSION: u32 = 1;

/// Declares a closed vocabulary: an enum, its words, and the lookups.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in the contract's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The caption words, in the same order as [`Self::ALL`].
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The caption text of this value.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// The value a caption word names, if any.
            pub fn from_word(word: &str) -> Option<Self> {
                match word { $($word => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
    };
}

vocabulary!(
    /// An explicit size word; with none, the radius is drawn from a range.
    Size { Small => "small", Large => "large" }
);
vocabulary!(
    /// The eight colours of the palette.
    Color {
        Red => "red", Green => "green", Blue => "blue", Yellow => "yellow",
        White => "white", Purple => "purple", Orange => "orange", Cyan => "cyan",
    }
);
vocabulary!(
    /// The three shapes.
    Shape { Circle => "circle", Square => "square", Triangle => "triangle" }
);
vocabulary!(
    /// What an object does over the clip (its caption text is one or two words).
    Motion {
        Left => "moving left", Right => "moving right", Up => "moving up",
        Down => "moving down", Still => "standing still", Grow => "growing",
        Shrink => "shrinking",
    }
);

impl Color {
    /// The exact RGB of this colour in rendered frames.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 190, 60],
            Color::Blue => [50, 90, 230],
            Color::Yellow => [235, 215, 40],
            Color::White => [240, 240, 240],
            Color::Purple => [150, 60, 200],
            Color::Orange => [245, 140, 30],
            Color::Cyan => [40, 210, 220],
        }
    }
}

impl Size {
    /// Half-extent as a fraction of `S = min(height, width)`.
    pub fn radius_fraction(self) -> f64 {
        match self {
            Size::Small => 0.10,
            Size::Large => 0.20,
        }
    }
}

/// Radius range, as a fraction of `S`, when a caption names no size.
pub const UNSIZED_RADIUS: (f64, f64) = (0.12, 0.17);
/// Range of the total travel of a moving object, as a fraction of `S`.
pub const TRAVEL: (f64, f64) = (0.35, 0.55);
/// Radius of a growing object at the first frame and of a shrinking one at the
/// last, as a multiple of its base radius `r0`; the other end is `2 - this`.
pub const GROW_FROM: f64 = 0.6;

/// One captioned object: `a [size] color shape motion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Object {
    pub size: Option<Size>,
    pub color: Color,
    pub shape: Shape,
    pub motion: Motion,
}

/// A whole caption: one or two objects, the second drawn over the first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scene {
    pub objects: Vec<Object>,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ")?;
        if let Some(size) = self.size {
            write!(f, "{size} ")?;
        }
        write!(f, "{} {} {}", self.color, self.shape, self.motion)
    }
}

impl fmt::Display for Scene {
    /// The canonical caption: lower case, single spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, object) in self.objects.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{object}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Scene {
    type Err = PromptError;

    fn from_str(prompt: &str) -> Result<Self, PromptError> {
        Scene::parse(prompt)
    }
}

impl Object {
    /// One object drawn uniformly over the grammar, with a colour not in `taken`.
    fn sample(rng: &mut Rng, taken: &[Color]) -> Object {
        let size = match rng.below(Size::ALL.len() + 1) {
            0 => None,
            k => Some(Size::ALL[k - 1]),
        };
        let free: Vec<Color> = Color::ALL
            .iter()
            .copied()
            .filter(|c| !taken.contains(c))
            .collect();
        Object {
            size,
            color: rng.choose(&free),
            shape: rng.choose(Shape::ALL),
            motion: rng.choose(Motion::ALL),
        }
    }
}

impl Scene {
    /// The canonical caption (same as `to_string()`).
    pub fn caption(&self) -> String {
        self.to_string()
    }

    /// A caption drawn at random over the whole grammar: one or two objects
    /// with equal probability; each size option (none, small, large), colour,
    /// shape and motion uniform; two objects never share a colour.
    pub fn sample(rng: &mut Rng) -> Scene {
        Scene::sample_with_two(rng, 0.5)
    }

    /// A caption drawn as [`Scene::sample`] draws one, but with two objects
    /// with probability `two` (in `[0, 1]`) instead of one half: a training
    /// mix that shows the harder two-object scenes more often. One half
    /// draws the count as the grammar's sampler always has, so `0.5` gives
    /// the same captions as [`Scene::sample`], bit for bit.
    pub fn sample_with_two(rng: &mut Rng, two: f64) -> Scene {
        let count = if two == 0.5 {
            1 + rng.below(2)
        } else if rng.uniform() < two {
            2
        } else {
            1
        };
        let mut objects: Vec<Object> = Vec::with_capacity(count);
        for _ in 0..count {
            let taken: Vec<Color> = objects.iter().map(|o| o.color).collect();
            objects.push(Object::sample(rng, &taken));
        }
        Scene { objects }
    }

    /// The scenes whose captions a clip of this one is most easily taken
    /// for, each one mistake away: every object with each other shape, with
    /// each other size option (small, large or none named), and for two
    /// objects each object alone. Colour and motion are left out: a
    /// generated clip rarely gets them wrong. 4 rivals for one object, 10
    /// for two.
    pub fn rivals(&self) -> Vec<Scene> {
        let mut out = Vec::new();
        for k in 0..self.objects.len() {
            let o = self.objects[k];
            let with = |object: Object| {
                let mut scene = self.clone();
                scene.objects[k] = object;
                scene
            };
            for &shape in Shape::ALL.iter().filter(|&&s| s != o.shape) {
                out.push(with(Object { shape, ..o }));
            }
            let sizes = [None, Some(Size::Small), Some(Size::Large)];
            for size in sizes.into_iter().filter(|&s| s != o.size) {
                out.push(with(Object { size, ..o }));
            }
        }
        if self.objects.len() > 1 {
            out.extend(self.objects.iter().map(|&o| Scene { objects: vec![o] }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_captions_cover_the_grammar_and_reparse() {
        let mut rng = Rng::new(3);
        let mut counts = [0usize; 2];
        let mut motions = std::collections::HashSet::new();
        let mut sizes = std::collections::HashSet::new();
        for _ in 0..2000 {
            let scene = Scene::sample(&mut rng);
            counts[scene.objects.len() - 1] += 1;
            for o in &scene.objects {
                motions.insert(o.motion);
                sizes.insert(o.size);
            }
            if let [a, b] = scene.objects[..] {
                assert_ne!(a.color, b.color);
            }
            assert_eq!(Scene::parse(&scene.caption()).unwrap(), scene);
        }
        assert!(counts.iter().all(|&c| c > 900), "{counts:?}");
        assert_eq!(motions.len(), Motion::ALL.len());
        assert_eq!(sizes.len(), 3);
    }

    #[test]
    fn rivals_are_one_shape_size_or_object_away() {
        let one = Scene::parse("a small red circle moving left").unwrap();
        let captions: Vec<String> = one.rivals().iter().map(Scene::caption).collect();
        assert_eq!(
            captions,
            [
                "a small red square moving left",
                "a small red triangle moving left",
                "a red circle moving left",
                "a large red circle moving left",
            ]
        );
        let two = Scene::parse("a red circle moving left and a large blue square growing").unwrap();
        let rivals = two.rivals();
        assert_eq!(rivals.len(), 10);
        assert!(rivals
            .iter()
            .all(|r| *r != two && Scene::parse(&r.caption()).unwrap() == *r));
        assert_eq!(rivals[8].caption(), "a red circle moving left");
        assert_eq!(rivals[9].caption(), "a large blue square growing");
    }

    #[test]
    fn a_share_of_two_object_scenes_is_kept() {
        let twos = |share: f64| -> usize {
            let mut rng = Rng::new(8);
            (0..2000)
                .map(|_| Scene::sample_with_two(&mut rng, share))
                .inspect(|scene| {
                    if let [a, b] = scene.objects[..] {
                        assert_ne!(a.color, b.color);
                    }
                })
                .filter(|scene| scene.objects.len() == 2)
                .count()
        };
        assert_eq!(twos(0.0), 0);
        assert_eq!(twos(1.0), 2000);
        // 0.65 of 2000: standard deviation 21
        let mixed = twos(0.65);
        assert!((1230..=1370).contains(&mixed), "{mixed}");
    }
}
