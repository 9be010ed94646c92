//! MNIST's IDX files: a big-endian header of dimensions, then one byte per pixel or label.

use super::integrity::verified_bytes;
use super::Dataset;
use crate::error::{LabError, Result};
use crate::validate::SIDE;
use candle_core::{DType, Device, Tensor};
use std::io::Read;
use std::path::Path;

/// Loads `<prefix>-images-idx3-ubyte.gz` and `<prefix>-labels-idx1-ubyte.gz` from `root`.
pub fn load_idx_pair(root: &Path, prefix: &str, class_names: &'static [&'static str]) -> Result<Dataset> {
    let image_file = format!("{prefix}-images-idx3-ubyte.gz");
    let label_file = format!("{prefix}-labels-idx1-ubyte.gz");
    let (image_dims, pixels) = read_idx(root, &image_file, 0x0803)?;
    let (label_dims, labels) = read_idx(root, &label_file, 0x0801)?;
    let bad = |reason: String| LabError::BadFile { path: root.join(&image_file), reason };
    if image_dims.len() != 3 || image_dims[1] != SIDE || image_dims[2] != SIDE {
        return Err(bad(format!("image dimensions {image_dims:?}, expected [N, 28, 28]")));
    }
    if label_dims != [image_dims[0]] {
        return Err(bad(format!("{} images but label dimensions {label_dims:?}", image_dims[0])));
    }
    if let Some(l) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
        return Err(LabError::BadFile {
            path: root.join(&label_file),
            reason: format!("label {l} is not a class index"),
        });
    }
    let n = image_dims[0];
    let images = Tensor::from_vec(pixels, (n, 1, SIDE, SIDE), &Device::Cpu)?.to_dtype(DType::F32)?;
    let images = (images / 255.0)?;
    let labels = Tensor::from_vec(labels.into_iter().map(u32::from).collect::<Vec<_>>(), n, &Device::Cpu)?;
    Ok(Dataset { images, labels, class_names })
}

/// Reads a gzipped IDX file of unsigned bytes, checking its hash and its header.
pub(super) fn read_idx(root: &Path, rel: &str, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let path = root.join(rel);
    let gz = verified_bytes(root, rel)?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .map_err(|e| LabError::BadFile { path: path.clone(), reason: format!("gzip: {e}") })?;
    let bad = |reason: String| LabError::BadFile { path: path.clone(), reason };
    let word = |i: usize| -> Result<usize> {
        raw.get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad("header is truncated".into()))
    };
    if word(0)? != magic as usize {
        return Err(bad(format!("magic number {:#x}, expected {magic:#x}", word(0)?)));
    }
    let rank = magic as usize & 0xff;
    let dims: Vec<usize> = (1..=rank).map(word).collect::<Result<_>>()?;
    let body = &raw[4 * (rank + 1)..];
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some(expected) = expected else {
        return Err(bad(format!("its header's dimensions {dims:?} multiply to more than any file can hold")));
    };
    if body.len() != expected {
        return Err(bad(format!("holds {} bytes of data, its header promises {expected}", body.len())));
    }
    Ok((dims, body.to_vec()))
}
