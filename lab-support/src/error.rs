//! The lab's one error type.
//!
//! Every message says what went wrong, names the file, shape or value involved, and says what to
//! do about it. Notebooks use `?` on everything in this crate, so a bad input shows up as one
//! readable line in the cell output instead of a panic that loses the kernel's state.

use std::fmt;
use std::path::PathBuf;

/// Shorthand for `std::result::Result<T, LabError>`.
pub type Result<T> = std::result::Result<T, LabError>;

/// Everything that can go wrong in lab-support.
#[derive(Debug)]
pub enum LabError {
    /// A shipped data or weights file is missing or unreadable.
    MissingFile { path: PathBuf, reason: String },
    /// A shipped file exists but its contents are not what was shipped.
    HashMismatch { path: PathBuf, expected: String, actual: String },
    /// A file is readable but its contents are malformed (truncated IDX, bad safetensors, ...).
    BadFile { path: PathBuf, reason: String },
    /// A user's image could not be turned into a digit-sized tensor.
    BadImage { path: PathBuf, reason: String },
    /// A tensor has the wrong shape for what it is used for.
    Shape { what: String, expected: String, got: Vec<usize> },
    /// A tensor holds NaN or infinite values.
    NotFinite { what: String, count: usize },
    /// Pixels outside `[0, 1]`, the range the model was trained on.
    PixelRange { what: String, min: f32, max: f32 },
    /// A tensor of a type the model cannot read (bytes, integers, or another float width).
    DType { what: String, got: candle_core::DType, fix: String },
    /// An argument is out of its allowed range.
    InvalidArgument { name: &'static str, value: String, allowed: String },
    /// Any other I/O failure (creating a plot file, running a tool).
    Io { path: PathBuf, source: std::io::Error },
    /// An error from candle itself.
    Candle(candle_core::Error),
    /// Anything else, with its own explanation.
    Other(String),
}

impl fmt::Display for LabError {
    /// The message, and in a notebook the first time, a note on what evcxr does after an error:
    /// the cell's new variables are gone (see [`crate::notebook::lost_variables_note`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_message(f)?;
        if let Some(note) = crate::notebook::lost_variables_note() {
            f.write_str(note)?;
        }
        Ok(())
    }
}

impl LabError {
    /// What went wrong and what to do, without the notebook note of `Display`: for messages that
    /// go inside other text (a check's verdict, a figure that could not be drawn).
    pub fn message(&self) -> String {
        struct Message<'a>(&'a LabError);
        impl fmt::Display for Message<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_message(f)
            }
        }
        Message(self).to_string()
    }

    fn write_message(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LabError::*;
        match self {
            MissingFile { path, reason } => write!(
                f,
                "cannot read `{}`: {reason}. It ships with the lab: restore it with \
                 `git checkout -- data/` from the repository root (or set LAB_DATA_DIR to a \
                 folder that holds the lab's data/)",
                path.display()
            ),
            HashMismatch { path, expected, actual } => {
                write!(
                    f,
                    "`{}` is corrupted or was changed: its SHA-256 is {actual}, expected {expected} \
                     (from data/SHA256SUMS). Restore it with `git checkout -- {}` from the repository root",
                    path.display(),
                    path.display()
                )?;
                // Only the weights are made by the lab itself; a dataset or a photo can only be restored.
                if path.extension().is_some_and(|e| e == "safetensors") {
                    f.write_str("; if you retrained the model on purpose, `cargo lab train` updates the sum")?;
                }
                Ok(())
            }
            BadFile { path, reason } => write!(
                f,
                "`{}` is not a valid lab file: {reason}. Restore it with `git checkout -- data/`",
                path.display()
            ),
            BadImage { path, reason } => write!(
                f,
                "cannot use `{}` as an image: {reason}. Give the path of a PNG or JPEG file, \
                 relative to the notebook's folder (for example \"my_digit.png\")",
                path.display()
            ),
            Shape { what, expected, got } => write!(
                f,
                "{what} has shape {got:?}, expected {expected}. A single image of shape \
                 [1, 28, 28] needs `.unsqueeze(0)?` to become a batch of one"
            ),
            NotFinite { what, count } => write!(
                f,
                "{what} contains {count} NaN or infinite value(s). Pixels must be finite numbers \
                 in [0, 1]: check for a division by zero or a step size that blew up, and clamp \
                 with `clamp_pixels`"
            ),
            PixelRange { what, min, max } => write!(
                f,
                "{what} has pixels from {min} to {max}, but the model reads pixels in [0, 1] (0 black, \
                 1 white), as it was trained. An image in 0..255 needs `(x / 255.0)?`; after your own \
                 arithmetic on pixels, keep them valid with `clamp_pixels(&x)?`"
            ),
            DType { what, got, fix } => {
                write!(f, "{what} holds {got:?} values, which the model cannot read as they are: {fix}")
            }
            InvalidArgument { name, value, allowed } => {
                write!(f, "`{name}` = {value} is not allowed: {allowed}")
            }
            Io { path, source } => write!(f, "I/O error on `{}`: {source}", path.display()),
            Candle(e) => write!(f, "tensor error: {}", without_backtrace(e)),
            Other(msg) => f.write_str(msg),
        }
    }
}

/// A candle error's text without the backtrace candle captures when backtraces are on: in a
/// notebook that is a dozen frames of evcxr's generated code.
fn without_backtrace(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        other => other.to_string(),
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LabError::Io { source, .. } => Some(source),
            LabError::Candle(e) => Some(e),
            _ => None,
        }
    }
}

impl From<candle_core::Error> for LabError {
    fn from(e: candle_core::Error) -> Self {
        LabError::Candle(e)
    }
}

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(name: &'static str, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        LabError::InvalidArgument { name, value: value.to_string(), allowed: allowed.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candle_error_shows_no_backtrace() {
        let inner = candle_core::Error::Msg("shape mismatch in matmul".into());
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(LabError::Candle(e).to_string(), "tensor error: shape mismatch in matmul");
    }
}
