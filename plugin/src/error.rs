//! One error type for the library. Every message names the file, tensor or key it is about,
//! because a user holding a multi-gigabyte bundle needs to know *where* it went wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Input that is malformed, truncated, inconsistent or does not match what it is used with.
    /// The message already names the file and the tensor or key.
    #[error("{0}")]
    Invalid(String),
    /// A name asked for (an expert, a tensor) that the file does not have. The message names
    /// the file and the name, and lists the valid names where there are few.
    #[error("{0}")]
    NotFound(String),
    /// Well-formed input that this version does not handle (an architecture, a tensor type...).
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
}

/// `bail_invalid!("{}: tensor '{}' ...", file, name)` returns `Err(Error::Invalid(..))`.
#[macro_export]
macro_rules! bail_invalid {
    ($($arg:tt)*) => { return Err($crate::error::Error::Invalid(format!($($arg)*))) };
}

/// `bail_unsupported!(...)` returns `Err(Error::Unsupported(..))`.
#[macro_export]
macro_rules! bail_unsupported {
    ($($arg:tt)*) => { return Err($crate::error::Error::Unsupported(format!($($arg)*))) };
}
