//! The leaf layer: what any command or test may need and that knows nothing about the lab's
//! commands. Processes and the one supervisor of a child server (`child`), the one HTTP client
//! (`http`), what `/proc` says (`procfs`), random tokens and hashes (`hex`), a text file's last
//! lines (`text`), and `At`, which puts a path in front of an error.

pub mod child;
pub mod hex;
pub mod http;
pub mod process;
pub mod procfs;
pub mod text;

use std::fmt::Display;
use std::path::Path;

/// Errors of the command-line tool are plain sentences.
pub type CliResult<T> = Result<T, String>;

/// An error that names its file: `result.at(path)` is `path: error`.
pub trait At<T> {
    fn at(self, path: &Path) -> CliResult<T>;
}

impl<T, E: Display> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> CliResult<T> {
        self.map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_at_a_path_names_the_path_first() {
        let missing = std::fs::read_to_string("/no/such/file").at(Path::new("/no/such/file"));
        assert!(missing.unwrap_err().starts_with("/no/such/file: "));
    }
}
