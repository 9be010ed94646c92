//! The commands of `cargo lab`, one file each; `main.rs` parses the command line and calls them.
//!
//! - `setup`: `cargo lab up` (the venv, the kernel, its build seed) and what installs things;
//! - `server`: JupyterLab for `cargo lab up`; `hub`: JupyterHub for `cargo lab hub`; `isolation`:
//!   a Unix user, a home and reachable runtime copies for each student of a hub run as root;
//! - `course`: `cargo lab course` (nbgrader); `grade`: `cargo lab grade`; `student`: `cargo lab student`;
//! - `launcher`: `lab kernel`, what Jupyter starts for the `rust` kernel; `analyzer`: what the
//!   kernel's rust-analyzer reads, and how its memory is given back; `rust_src`: the trimmed copy
//!   of the standard library's sources it reads;
//! - `model`: `cargo lab train`, `eval` and `bench`, forwarded to the lab-model crate.

pub mod analyzer;
pub mod course;
pub mod grade;
pub mod hub;
pub mod isolation;
pub mod launcher;
pub mod model;
pub mod rust_src;
pub mod server;
pub mod setup;
pub mod student;
