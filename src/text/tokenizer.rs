//! Word-level tokenizer. Captions are lower-cased and split on whitespace;
//! every word maps to an id of the vocabulary built from the training
//! captions. A word outside it is an error that names the word and lists the
//! known ones: a model cannot follow a word it never saw, and guessing would
//! hide that.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{invalid, Result};

/// Id of padding after the last word.
pub const PAD_ID: u32 = 0;
/// Id of the "no caption" token: the unconditional input of classifier-free
/// guidance.
pub const NULL_ID: u32 = 1;
const SPECIAL: [&str; 2] = ["<pad>", "<null>"];

/// A vocabulary: `<pad>`, `<null>`, then the caption words in sorted order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokenizer {
    pub words: Vec<String>,
    /// Tokens per caption; shorter ones are padded, longer ones refused.
    pub max_len: usize,
}

impl Tokenizer {
    /// The vocabulary of `captions`.
    pub fn from_captions<'a>(captions: impl IntoIterator<Item = &'a str>, max_len: usize) -> Self {
        let words: BTreeSet<String> = captions
            .into_iter()
            .flat_map(|c| c.split_whitespace().map(str::to_lowercase))
            .collect();
        Self {
            words: SPECIAL.iter().map(|s| s.to_string()).chain(words).collect(),
            max_len,
        }
    }

    /// Checks a vocabulary read from a file: the special tokens first, at
    /// least one word, and room for at least one token per caption.
    pub fn validate(&self) -> Result<()> {
        if self.words.len() <= SPECIAL.len() || self.words[..SPECIAL.len()] != SPECIAL {
            invalid!(
                "the tokenizer's vocabulary must start with {} and hold at least one word",
                SPECIAL.join(", ")
            );
        }
        if self.max_len == 0 {
            invalid!("the tokenizer must read at least 1 token per caption");
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.words.len()
    }

    /// Token ids of `caption`, padded with [`PAD_ID`] to `max_len`.
    pub fn encode(&self, caption: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(self.max_len);
        for word in caption.split_whitespace().map(str::to_lowercase) {
            let Some(i) = self
                .words
                .iter()
                .skip(SPECIAL.len())
                .position(|w| *w == word)
            else {
                invalid!(
                    "the word \"{word}\" is not in this model's vocabulary; it knows: {}",
                    self.words[SPECIAL.len()..].join(", ")
                );
            };
            ids.push((i + SPECIAL.len()) as u32);
        }
        if ids.is_empty() {
            invalid!("empty prompt: describe a clip, e.g. \"a red circle moving right\"");
        }
        if ids.len() > self.max_len {
            invalid!(
                "the prompt has {} words; this model reads at most {}",
                ids.len(),
                self.max_len
            );
        }
        ids.resize(self.max_len, PAD_ID);
        Ok(ids)
    }

    /// The unconditional input: [`NULL_ID`] then padding.
    pub fn null(&self) -> Vec<u32> {
        let mut ids = vec![PAD_ID; self.max_len];
        ids[0] = NULL_ID;
        ids
    }

    /// Words of `ids`, without padding.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| i != PAD_ID)
            .filter_map(|&i| self.words.get(i as usize).map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_words_and_names_unknown_ones() {
        let t = Tokenizer::from_captions(["a red circle growing", "a blue square moving left"], 8);
        assert_eq!(t.vocab_size(), 2 + 8);
        let ids = t.encode("A  RED square growing").unwrap();
        assert_eq!(ids.len(), 8);
        assert_eq!(t.decode(&ids), "a red square growing");
        assert_eq!(&ids[4..], &[PAD_ID; 4]);
        let err = t.encode("a green circle growing").unwrap_err().to_string();
        assert!(
            err.contains("\"green\"") && err.contains("blue, circle"),
            "{err}"
        );
        assert!(t.encode("  ").unwrap_err().to_string().contains("empty"));
        assert!(t
            .encode("a a a a a a a a a")
            .unwrap_err()
            .to_string()
            .contains("at most 8"));
        assert_eq!(t.null()[0], NULL_ID);
    }

    #[test]
    fn a_damaged_vocabulary_is_refused() {
        let good = Tokenizer::from_captions(["a red circle"], 4);
        good.validate().unwrap();
        let empty = Tokenizer::from_captions([""], 4);
        let no_specials = Tokenizer {
            words: vec!["a".into(), "red".into(), "circle".into()],
            max_len: 4,
        };
        let no_room = Tokenizer {
            max_len: 0,
            ..good.clone()
        };
        for bad in [empty, no_specials, no_room] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
