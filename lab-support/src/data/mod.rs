//! The lab's data: MNIST, the Fashion-MNIST test set, photos, and your own images.
//!
//! Datasets come as [`Dataset`]: `images` is an f32 tensor of shape `(N, 1, 28, 28)` with pixels
//! in `[0, 1]` (white strokes on black, as MNIST stores them), `labels` is a u32 tensor of shape
//! `(N,)`. Every shipped file (datasets, photos, weights) is checked against `data/SHA256SUMS` each
//! time it is read, so a corrupted download or an edited file is reported instead of silently
//! training or attacking on garbage.
//!
//! [`load_image`] turns any PNG or JPEG (a photo, a drawing) into a `(1, 1, 28, 28)` tensor that
//! the digit model can read.
//!
//! ```
//! use lab_support::data::{mnist, load_image, data_dir};
//! let test = mnist::test()?;
//! assert_eq!(test.images.dims(), &[10_000, 1, 28, 28]);
//! let cat = load_image(data_dir().join("photos/chelsea.png"))?;
//! assert_eq!(cat.dims(), &[1, 1, 28, 28]);
//! # Ok::<(), lab_support::LabError>(())
//! ```

mod idx;
mod images;
mod integrity;
#[cfg(test)]
pub(crate) mod tests;

pub use crate::validate::SIDE;
pub use idx::load_idx_pair;
pub use images::{load_digit_png, load_drawing, load_image, photo, save_digit_png, PHOTOS};
pub use integrity::{sha256_hex, verified_bytes};

use crate::error::{LabError, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Names of the ten MNIST classes.
pub const DIGIT_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Names of the ten Fashion-MNIST classes.
pub const FASHION_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The folder that holds the lab's data: `$LAB_DATA_DIR` if set, else `data/` in the repository.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("LAB_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("data"),
    }
}

/// A labelled set of 28x28 grey images.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `(N, 1, 28, 28)` f32 pixels in `[0, 1]`.
    pub images: Tensor,
    /// `(N,)` u32 class indices.
    pub labels: Tensor,
    /// What each class index means.
    pub class_names: &'static [&'static str],
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    /// True when the set holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` examples (all of them if `n` is larger than the set).
    pub fn take(&self, n: usize) -> Result<Dataset> {
        self.slice(0, n)
    }

    /// Examples `start .. start + n`, clipped to the set.
    pub fn slice(&self, start: usize, n: usize) -> Result<Dataset> {
        let len = self.len();
        if start > len {
            return Err(LabError::invalid("start", start, format!("at most {len}, the size of the set")));
        }
        let n = n.min(len - start);
        Ok(Dataset {
            images: self.images.narrow(0, start, n)?,
            labels: self.labels.narrow(0, start, n)?,
            class_names: self.class_names,
        })
    }

    /// Example `i` as a batch of one, `(1, 1, 28, 28)`, with its label.
    pub fn get(&self, i: usize) -> Result<(Tensor, u32)> {
        if i >= self.len() {
            return Err(LabError::invalid("index", i, format!("below {}, the size of the set", self.len())));
        }
        let image = self.images.narrow(0, i, 1)?;
        let label = self.labels.get(i)?.to_scalar::<u32>()?;
        Ok((image, label))
    }

    /// The labels as a plain vector.
    pub fn label_vec(&self) -> Result<Vec<u32>> {
        Ok(self.labels.to_vec1::<u32>()?)
    }
}

/// MNIST handwritten digits (60,000 training and 10,000 test images).
pub mod mnist {
    use super::*;

    /// The 60,000 training digits.
    pub fn train() -> Result<Dataset> {
        cached(&TRAIN, || load_idx_pair(&data_dir(), "mnist/train", &DIGIT_NAMES))
    }

    /// The 10,000 test digits.
    pub fn test() -> Result<Dataset> {
        cached(&TEST, || load_idx_pair(&data_dir(), "mnist/t10k", &DIGIT_NAMES))
    }

    static TRAIN: Mutex<Option<Dataset>> = Mutex::new(None);
    static TEST: Mutex<Option<Dataset>> = Mutex::new(None);
}

/// The Fashion-MNIST test set: 10,000 clothing images, a world the digit model never saw.
pub mod fashion_mnist {
    use super::*;

    /// The 10,000 test images, labelled with [`FASHION_NAMES`].
    pub fn test() -> Result<Dataset> {
        cached(&TEST, || load_idx_pair(&data_dir(), "fashion-mnist/t10k", &FASHION_NAMES))
    }

    static TEST: Mutex<Option<Dataset>> = Mutex::new(None);
}

fn cached(slot: &Mutex<Option<Dataset>>, load: impl FnOnce() -> Result<Dataset>) -> Result<Dataset> {
    crate::notebook::init();
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(set) = slot.as_ref() {
        return Ok(set.clone());
    }
    let set = load()?;
    *slot = Some(set.clone());
    Ok(set)
}
