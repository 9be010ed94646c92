//! The lab's data: MNIST, the Fashion-MNIST test set, photos, and your own images.
//!
//! Datasets come as [`Dataset`]: `images` is an f32 tensor of shape `(N, 1, 28, 28)` with pixels
//! in `[0, 1]` (white strokes on black, as MNIST stores them), `labels` is a u32 tensor of shape
//! `(N,)`. Every shipped file is checked against `data/SHA256SUMS` the first time a process reads
//! it, so a corrupted download or an edited file is reported instead of silently training or
//! attacking on garbage.
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

use crate::error::{LabError, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Side length of every image the lab's models read.
pub const SIDE: usize = 28;

/// Names of the ten MNIST classes.
pub const DIGIT_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Names of the ten Fashion-MNIST classes.
pub const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot",
];

/// Largest image file `load_image` accepts; photos for this lab are a few hundred kB.
const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;

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
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(set) = slot.as_ref() {
        return Ok(set.clone());
    }
    let set = load()?;
    *slot = Some(set.clone());
    Ok(set)
}

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
        return Err(LabError::BadFile { path: root.join(&label_file), reason: format!("label {l} is not a class index") });
    }
    let n = image_dims[0];
    let images = Tensor::from_vec(pixels, (n, 1, SIDE, SIDE), &Device::Cpu)?.to_dtype(DType::F32)?;
    let images = (images / 255.0)?;
    let labels = Tensor::from_vec(labels.into_iter().map(u32::from).collect::<Vec<_>>(), n, &Device::Cpu)?;
    Ok(Dataset { images, labels, class_names })
}

/// Reads a gzipped IDX file of unsigned bytes, checking its hash and its header.
fn read_idx(root: &Path, rel: &str, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
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
    let expected: usize = dims.iter().product();
    if body.len() != expected {
        return Err(bad(format!("holds {} bytes of data, its header promises {expected}", body.len())));
    }
    Ok((dims, body.to_vec()))
}

/// Files already checked in this process (by absolute path).
static VERIFIED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Reads `root/rel` and checks it against the SHA-256 listed for `rel` in `root/SHA256SUMS`.
///
/// The hash is computed once per process and file; later reads skip it.
pub fn verified_bytes(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = root.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| LabError::MissingFile { path: path.clone(), reason: e.to_string() })?;
    let key = path.canonicalize().unwrap_or_else(|_| path.clone());
    let mut seen = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(HashSet::new).contains(&key) {
        return Ok(bytes);
    }
    let expected = expected_hash(root, rel)?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(LabError::HashMismatch { path, expected, actual });
    }
    seen.get_or_insert_with(HashSet::new).insert(key);
    Ok(bytes)
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_hash(root: &Path, rel: &str) -> Result<String> {
    let sums_path = root.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .map_err(|e| LabError::MissingFile { path: sums_path.clone(), reason: e.to_string() })?;
    sums.lines()
        .filter_map(|line| line.split_once("  "))
        .find(|(_, name)| name.trim() == rel)
        .map(|(hash, _)| hash.trim().to_string())
        .ok_or_else(|| LabError::BadFile { path: sums_path, reason: format!("it lists no hash for `{rel}`") })
}

/// Turns a PNG or JPEG into a `(1, 1, 28, 28)` tensor the digit model can read.
///
/// The image is made grey, cropped to its central square and shrunk to 28x28. Digit models see
/// light strokes on a dark background, so an image whose border is mostly light (a drawing on
/// white paper, a bright photo) is inverted. Use [`load_drawing`] for a hand-drawn digit.
pub fn load_image(path: impl AsRef<Path>) -> Result<Tensor> {
    let grey = decode_grey(path.as_ref())?;
    let (w, h) = grey.dimensions();
    let side = w.min(h);
    let square = image::imageops::crop_imm(&grey, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let small = image::imageops::resize(&square, SIDE as u32, SIDE as u32, image::imageops::FilterType::Triangle);
    let mut pixels: Vec<f32> = small.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    if border_mean(&pixels) > 0.5 {
        pixels.iter_mut().for_each(|p| *p = 1.0 - *p);
    }
    Ok(Tensor::from_vec(pixels, (1, 1, SIDE, SIDE), &Device::Cpu)?)
}

/// One of the shipped photos (`chelsea.png`, `astronaut.png`, `coffee.png`, `camera.png`,
/// `rocket.jpg`) as a `(1, 1, 28, 28)` tensor, through [`load_image`].
pub fn photo(name: &str) -> Result<Tensor> {
    load_image(data_dir().join("photos").join(name))
}

/// Turns a drawing of a digit into a `(1, 1, 28, 28)` tensor framed the way MNIST frames digits.
///
/// MNIST digits are light on dark, scaled to fit a 20x20 box and centred by their centre of mass
/// in the 28x28 frame. This does the same to your drawing, so the model sees it as it saw its
/// training data. Dark ink on white paper and light ink on black both work.
pub fn load_drawing(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let grey = decode_grey(path)?;
    let (w, h) = grey.dimensions();
    let mut ink: Vec<f32> = grey.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    // Decide the background from the border, then make ink bright.
    let border: Vec<f32> = (0..w as usize)
        .flat_map(|x| [ink[x], ink[(h as usize - 1) * w as usize + x]])
        .chain((0..h as usize).flat_map(|y| [ink[y * w as usize], ink[y * w as usize + w as usize - 1]]))
        .collect();
    if border.iter().sum::<f32>() / border.len() as f32 > 0.5 {
        ink.iter_mut().for_each(|p| *p = 1.0 - *p);
    }
    let on = |x: u32, y: u32| ink[(y * w + x) as usize] > 0.2;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if on(x, y) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    if x0 > x1 {
        return Err(LabError::BadImage { path: path.into(), reason: "it holds no visible stroke (it is blank)".into() });
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop = image::GrayImage::from_fn(bw, bh, |x, y| image::Luma([(ink[((y0 + y) * w + x0 + x) as usize] * 255.0) as u8]));
    let scale = 20.0 / bw.max(bh) as f32;
    let (nw, nh) = (((bw as f32 * scale).round() as u32).max(1), ((bh as f32 * scale).round() as u32).max(1));
    let digit = image::imageops::resize(&crop, nw, nh, image::imageops::FilterType::Triangle);
    // Centre of mass of the scaled digit, placed at the frame's centre.
    let (mut mass, mut cx, mut cy) = (0f32, 0f32, 0f32);
    for (x, y, p) in digit.enumerate_pixels() {
        let v = p.0[0] as f32;
        (mass, cx, cy) = (mass + v, cx + v * x as f32, cy + v * y as f32);
    }
    let (cx, cy) = (cx / mass.max(1e-6), cy / mass.max(1e-6));
    // The frame's centre is 13.5 in pixel coordinates (pixel i covers i..i+1 around i + 0.5).
    let (ox, oy) = ((13.5 - cx).round() as i64, (13.5 - cy).round() as i64);
    let mut frame = vec![0f32; SIDE * SIDE];
    for (x, y, p) in digit.enumerate_pixels() {
        let (fx, fy) = (x as i64 + ox, y as i64 + oy);
        if (0..SIDE as i64).contains(&fx) && (0..SIDE as i64).contains(&fy) {
            frame[fy as usize * SIDE + fx as usize] = p.0[0] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(frame, (1, 1, SIDE, SIDE), &Device::Cpu)?)
}

fn decode_grey(path: &Path) -> Result<image::GrayImage> {
    let bad = |reason: String| LabError::BadImage { path: path.into(), reason };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("it cannot be read ({e})")))?;
    if meta.is_dir() {
        return Err(bad("it is a folder, not a file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("the file is empty".into()));
    }
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(bad(format!(
            "the file is {} MB, more than the {} MB this lab accepts; shrink it first",
            meta.len() / 1_000_000,
            MAX_IMAGE_BYTES / 1_000_000
        )));
    }
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| bad(format!("it cannot be opened ({e})")))?
        .with_guessed_format()
        .map_err(|e| bad(format!("it cannot be read ({e})")))?;
    if reader.format().is_none() {
        return Err(bad("it is not a valid image (its contents are no known image format)".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(8192);
    limits.max_image_height = Some(8192);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(format!("it is not a valid image ({e})")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("it has no pixels".into()));
    }
    Ok(img.to_luma8())
}

fn border_mean(pixels: &[f32]) -> f32 {
    let mut sum = 0.0;
    let mut n = 0.0;
    for y in 0..SIDE {
        for x in 0..SIDE {
            if x == 0 || y == 0 || x == SIDE - 1 || y == SIDE - 1 {
                sum += pixels[y * SIDE + x];
                n += 1.0;
            }
        }
    }
    sum / n
}

/// Checks that `images` is a finite `(N, 1, 28, 28)` batch; `what` names it in the error.
pub fn check_batch(images: &Tensor, what: &str) -> Result<()> {
    let dims = images.dims();
    if dims.len() != 4 || dims[1] != 1 || dims[2] != SIDE || dims[3] != SIDE || dims[0] == 0 {
        return Err(LabError::Shape { what: what.into(), expected: "[N, 1, 28, 28] with N >= 1".into(), got: dims.to_vec() });
    }
    check_finite(images, what)
}

/// Checks that every value of `t` is finite.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(LabError::NotFinite { what: what.into(), count });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch folder under the system temp dir.
    pub(crate) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lab-support-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn mnist_test_set_has_the_published_counts() {
        let test = mnist::test().unwrap();
        assert_eq!(test.images.dims(), &[10_000, 1, 28, 28]);
        let mut counts = [0usize; 10];
        test.label_vec().unwrap().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
        let max = test.images.max_all().unwrap().to_scalar::<f32>().unwrap();
        let min = test.images.min_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!((min, max), (0.0, 1.0));
        let fashion = fashion_mnist::test().unwrap();
        assert_eq!(fashion.len(), 10_000);
        assert_eq!(fashion.class_names[9], "Ankle boot");
    }

    #[test]
    fn rejects_corrupted_data_file_naming_both_hashes() {
        let dir = scratch("corrupt");
        std::fs::create_dir_all(dir.join("mnist")).unwrap();
        std::fs::copy(data_dir().join("SHA256SUMS"), dir.join("SHA256SUMS")).unwrap();
        let mut bytes = std::fs::read(data_dir().join("mnist/t10k-labels-idx1-ubyte.gz")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(dir.join("mnist/t10k-labels-idx1-ubyte.gz"), &bytes).unwrap();
        let err = verified_bytes(&dir, "mnist/t10k-labels-idx1-ubyte.gz").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LabError::HashMismatch { .. }), "{msg}");
        assert!(msg.contains("t10k-labels-idx1-ubyte.gz"), "{msg}");
        assert!(msg.contains("b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b"), "expected hash missing: {msg}");
        assert!(msg.contains(&sha256_hex(&bytes)), "actual hash missing: {msg}");
        assert!(msg.contains("git checkout"), "no fix given: {msg}");
    }

    #[test]
    fn rejects_missing_data_file_with_a_fix() {
        let dir = scratch("missing");
        std::fs::copy(data_dir().join("SHA256SUMS"), dir.join("SHA256SUMS")).unwrap();
        let err = load_idx_pair(&dir, "mnist/t10k", &DIGIT_NAMES).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LabError::MissingFile { .. }), "{msg}");
        assert!(msg.contains("t10k-images-idx3-ubyte.gz") && msg.contains("git checkout"), "{msg}");
    }

    #[test]
    fn loads_photos_as_digit_sized_images() {
        for photo in ["chelsea.png", "astronaut.png", "coffee.png", "camera.png", "rocket.jpg"] {
            let t = load_image(data_dir().join("photos").join(photo)).unwrap();
            assert_eq!(t.dims(), &[1, 1, 28, 28], "{photo}");
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|p| (0.0..=1.0).contains(p)), "{photo}");
            assert!(v.iter().any(|&p| p > 0.2), "{photo} came out black");
        }
    }

    #[test]
    fn a_drawing_is_framed_like_mnist() {
        // Dark ink on white paper, off-centre, in a 100x60 canvas: a thick vertical bar.
        let dir = scratch("drawing");
        let img = image::GrayImage::from_fn(100, 60, |x, y| image::Luma([if (10..18).contains(&x) && (5..50).contains(&y) { 0 } else { 255 }]));
        img.save(dir.join("one.png")).unwrap();
        let t = load_drawing(dir.join("one.png")).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows: Vec<usize> = (0..28).filter(|r| v[r * 28..r * 28 + 28].iter().any(|&p| p > 0.5)).collect();
        // 20 pixels tall, centred: rows 4..=23.
        assert_eq!((rows[0], *rows.last().unwrap()), (4, 23));
        assert!(v[14 * 28 + 14] > 0.5, "the stroke should pass through the centre");
        let blank = image::GrayImage::from_pixel(30, 30, image::Luma([255]));
        blank.save(dir.join("blank.png")).unwrap();
        assert!(load_drawing(dir.join("blank.png")).unwrap_err().to_string().contains("blank"));
    }

    #[test]
    fn rejects_files_that_are_not_images() {
        let dir = scratch("notimage");
        std::fs::write(dir.join("empty.png"), b"").unwrap();
        std::fs::write(dir.join("notes.png"), b"these are my notes, not a picture").unwrap();
        std::fs::write(dir.join("notes.txt"), b"these are my notes, not a picture").unwrap();
        let huge = std::fs::File::create(dir.join("huge.png")).unwrap();
        huge.set_len(MAX_IMAGE_BYTES + 1).unwrap();
        let cases = [
            ("empty.png", "empty"),
            ("notes.png", "not a valid image"),
            ("notes.txt", "not a valid image"),
            ("huge.png", "shrink it"),
            ("missing.png", "cannot be read"),
        ];
        for (file, expected) in cases {
            let msg = load_image(dir.join(file)).unwrap_err().to_string();
            assert!(msg.contains(expected) && msg.contains(file), "{file}: {msg}");
        }
        assert!(load_image(&dir).unwrap_err().to_string().contains("folder"));
    }

    #[test]
    fn check_batch_names_the_problem() {
        let bad = Tensor::zeros((3, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let msg = check_batch(&bad, "the batch").unwrap_err().to_string();
        assert!(msg.contains("[3, 28, 28]") && msg.contains("[N, 1, 28, 28]"), "{msg}");
        let nan = (Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap() / 0.0).unwrap();
        assert!(check_batch(&nan, "x").unwrap_err().to_string().contains("784 NaN"));
    }
}
