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
}

/// The ways [`Scene::confusion`] changes a scene.
const CONFUSIONS: usize = 7;

impl Scene {
    /// A scene one mistake away from this one, of the kinds a generator
    /// makes: one object's shape, size, colour or motion changed, an
    /// attribute swapped between two objects, one of two objects left out,
    /// or an extra copy of an object (so possibly three objects: such a
    /// scene renders, but its caption is outside the grammar). Never equal
    /// to `self`. Objects keep their index, so a render of the confusion
    /// with the original's seed places the unchanged objects where the
    /// original has them: the two clips differ by the mistake alone.
    pub fn confusion(&self, rng: &mut Rng) -> Scene {
        loop {
            let mut scene = self.clone();
            let k = rng.below(scene.objects.len());
            let two = scene.objects.len() == 2;
            match rng.below(CONFUSIONS) {
                0 => scene.objects[k].shape = rng.choose(Shape::ALL),
                1 => {
                    scene.objects[k].size = match scene.objects[k].size {
                        Some(Size::Small) => Some(Size::Large),
                        Some(Size::Large) => Some(Size::Small),
                        None => Some(rng.choose(Size::ALL)),
                    }
                }
                2 => {
                    let taken: Vec<Color> = scene.objects.iter().map(|o| o.color).collect();
                    let free: Vec<Color> = Color::ALL
                        .iter()
                        .copied()
                        .filter(|c| !taken.contains(c))
                        .collect();
                    scene.objects[k].color = rng.choose(&free);
                }
                3 => scene.objects[k].motion = rng.choose(Motion::ALL),
                4 if two => {
                    let (a, b) = (scene.objects[0], scene.objects[1]);
                    let (a, b) = match rng.below(3) {
                        0 => (
                            Object {
                                shape: b.shape,
                                ..a
                            },
                            Object {
                                shape: a.shape,
                                ..b
                            },
                        ),
                        1 => (Object { size: b.size, ..a }, Object { size: a.size, ..b }),
                        _ => (
                            Object {
                                motion: b.motion,
                                ..a
                            },
                            Object {
                                motion: a.motion,
                                ..b
                            },
                        ),
                    };
                    scene.objects = vec![a, b];
                }
                5 if two => {
                    scene.objects.remove(k);
                }
                6 => scene.objects.push(scene.objects[k]),
                _ => continue,
            }
            if scene != *self {
                return scene;
            }
        }
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
    fn a_confusion_is_one_mistake_away_and_every_kind_occurs() {
        let mut rng = Rng::new(11);
        let (mut fewer, mut more, mut swapped) = (0, 0, 0);
        for _ in 0..3000 {
            let scene = Scene::sample(&mut rng);
            let other = scene.confusion(&mut rng);
            assert_ne!(other, scene);
            let (n, m) = (scene.objects.len(), other.objects.len());
            match m.cmp(&n) {
                std::cmp::Ordering::Less => {
                    fewer += 1;
                    assert!(scene.objects.contains(&other.objects[0]));
                }
                std::cmp::Ordering::Greater => {
                    more += 1;
                    assert_eq!(other.objects[..n], scene.objects[..]);
                    assert!(scene.objects.contains(&other.objects[n]));
                }
                std::cmp::Ordering::Equal => {
                    // one object changed, or two swapped one attribute
                    let changed = (0..n).filter(|&i| other.objects[i] != scene.objects[i]);
                    if changed.count() == 2 {
                        swapped += 1;
                        assert_eq!(other.objects[0].color, scene.objects[0].color);
                    }
                    if let [a, b] = other.objects[..] {
                        assert_ne!(a.color, b.color);
                    }
                }
            }
        }
        assert!(
            fewer > 100 && more > 200 && swapped > 50,
            "{fewer} {more} {swapped}"
        );
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
