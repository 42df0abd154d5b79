//! The library's error type: every message carries the values that caused it.

use std::path::PathBuf;

use crate::data::shapes_world::PromptError;

/// Everything that can go wrong in minisora's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A prompt that is not in Shapes World's grammar.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// A file or directory could not be read or written. The message holds
    /// the I/O error's own (it is not also chained as a source, so that an
    /// error report prints it once).
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A video could not be decoded or encoded.
    #[error("{}: {message}", path.display())]
    Video { path: PathBuf, message: String },
    /// An argument outside what the function accepts.
    #[error("{0}")]
    Invalid(String),
    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with minisora's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A video error about `path`.
    pub fn video(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Video {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `bail!`-style early return with an [`Error::Invalid`].
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
