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

use crate::error::{LabError, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
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
    crate::kernel::init();
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
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some(expected) = expected else {
        return Err(bad(format!("its header's dimensions {dims:?} multiply to more than any file can hold")));
    };
    if body.len() != expected {
        return Err(bad(format!("holds {} bytes of data, its header promises {expected}", body.len())));
    }
    Ok((dims, body.to_vec()))
}

/// Reads `root/rel` and checks it against the SHA-256 listed for `rel` in `root/SHA256SUMS`.
///
/// Every read is checked, not only the first one of a process: a file changed while a notebook
/// runs is caught at its next load. It is cheap: hashing the shipped weights takes about 2 ms,
/// and the datasets are read once per process and kept in memory.
pub fn verified_bytes(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = root.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| LabError::MissingFile { path: path.clone(), reason: e.to_string() })?;
    let expected = expected_hash(root, rel)?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(LabError::HashMismatch { path, expected, actual });
    }
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
    crate::kernel::init();
    let path = path.as_ref();
    to_digit_frame(&decode_grey(path, &read_image_file(path)?)?)
}

/// The central square of a grey image, shrunk to 28x28, light on dark.
fn to_digit_frame(grey: &image::GrayImage) -> Result<Tensor> {
    let (w, h) = grey.dimensions();
    let side = w.min(h);
    let square = image::imageops::crop_imm(grey, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let small = image::imageops::resize(&square, SIDE as u32, SIDE as u32, image::imageops::FilterType::Triangle);
    let mut pixels: Vec<f32> = small.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    if border_mean(&pixels) > 0.5 {
        pixels.iter_mut().for_each(|p| *p = 1.0 - *p);
    }
    Ok(Tensor::from_vec(pixels, (1, 1, SIDE, SIDE), &Device::Cpu)?)
}

/// The photos that ship in `data/photos/`.
pub const PHOTOS: [&str; 5] = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg"];

/// One of the shipped photos ([`PHOTOS`]: `chelsea.png` is a cat) as a `(1, 1, 28, 28)` tensor,
/// through [`load_image`]. Takes the bare file name; the photo is hash-checked like every shipped
/// file.
pub fn photo(name: &str) -> Result<Tensor> {
    crate::kernel::init();
    photo_from(&data_dir(), name)
}

fn photo_from(root: &Path, name: &str) -> Result<Tensor> {
    if !PHOTOS.contains(&name) {
        return Err(LabError::Other(format!(
            "there is no shipped photo `{name}`: `photo` takes one of {} (chelsea.png is a cat). For an \
             image of your own, use `load_image(\"path/to/it.png\")?`, with a path relative to the notebook",
            PHOTOS.join(", ")
        )));
    }
    let path = root.join("photos").join(name);
    let bytes = verified_bytes(root, &format!("photos/{name}"))?;
    to_digit_frame(&decode_grey(&path, &bytes)?)
}

/// Turns a drawing of a digit into a `(1, 1, 28, 28)` tensor framed the way MNIST frames digits.
///
/// MNIST digits are light on dark, scaled to fit a 20x20 box and centred by their centre of mass
/// in the 28x28 frame. This does the same to your drawing, so the model sees it as it saw its
/// training data. Dark ink on white paper and light ink on black both work.
pub fn load_drawing(path: impl AsRef<Path>) -> Result<Tensor> {
    crate::kernel::init();
    let path = path.as_ref();
    let grey = decode_grey(path, &read_image_file(path)?)?;
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

/// Saves one image of 784 pixels in `[0, 1]` (such as `(1, 1, 28, 28)`) as a 28x28 8-bit grey PNG,
/// the way any image file stores it: each pixel rounded to the nearest of 256 grey levels, so it
/// may move by up to 1/510 from what the model saw.
pub fn save_digit_png(image: &Tensor, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let pixels = image.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if pixels.len() != SIDE * SIDE {
        return Err(LabError::Shape { what: "the image to save".into(), expected: "784 pixels, such as [1, 1, 28, 28]".into(), got: image.dims().to_vec() });
    }
    check_pixels(image, "the image to save")?;
    let bytes: Vec<u8> = pixels.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, bytes).ok_or_else(|| LabError::Other("28x28 pixels make an image".into()))?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| LabError::BadImage { path: path.into(), reason: format!("it could not be written ({e})") })
}

/// Loads a 28x28 grey image as it is stored, pixel for pixel, as a `(1, 1, 28, 28)` tensor: the
/// way back from [`save_digit_png`]. (For a photo or a drawing of another size, use
/// [`load_image`] or [`load_drawing`], which frame it first.)
pub fn load_digit_png(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let grey = decode_grey(path, &read_image_file(path)?)?;
    if grey.dimensions() != (SIDE as u32, SIDE as u32) {
        return Err(LabError::BadImage {
            path: path.into(),
            reason: format!("it is {}x{} pixels, not 28x28; `load_image` or `load_drawing` shrink and frame an image of any size", grey.width(), grey.height()),
        });
    }
    let pixels: Vec<f32> = grey.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    Ok(Tensor::from_vec(pixels, (1, 1, SIDE, SIDE), &Device::Cpu)?)
}

/// Reads an image file, refusing folders, empty files and files too large for this lab.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
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
    std::fs::read(path).map_err(|e| bad(format!("it cannot be read ({e})")))
}

/// Decodes an image to grey, the way a person looking at it would see it:
///
/// - turned upright by its EXIF orientation (a phone stores a portrait photo sideways and says so
///   in EXIF; ignored, a photographed 6 reads as a 9);
/// - transparent parts filled with a background that contrasts with the ink (a drawing app's dark
///   strokes on a transparent canvas would otherwise sit on black, since transparent pixels
///   usually store black, and vanish).
fn decode_grey(path: &Path, bytes: &[u8]) -> Result<image::GrayImage> {
    use image::ImageDecoder;
    let bad = |reason: String| LabError::BadImage { path: path.into(), reason };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
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
    let mut decoder = reader.into_decoder().map_err(|e| bad(format!("it is not a valid image ({e})")))?;
    // A broken EXIF block is no reason to refuse the picture itself.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(format!("it is not a valid image ({e})")))?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("it has no pixels".into()));
    }
    if !img.color().has_alpha() {
        return Ok(img.to_luma8());
    }
    let la = img.to_luma_alpha8();
    // The ink is what is opaque: put it on white if it is dark, on black if it is light.
    let (mut ink, mut weight) = (0f64, 0f64);
    for p in la.pixels() {
        let a = p.0[1] as f64 / 255.0;
        (ink, weight) = (ink + a * p.0[0] as f64, weight + a);
    }
    let background = if weight > 0.0 && ink / weight > 127.5 { 0.0 } else { 255.0 };
    Ok(image::GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [v, a] = la.get_pixel(x, y).0;
        let a = a as f32 / 255.0;
        image::Luma([(a * v as f32 + (1.0 - a) * background).round() as u8])
    }))
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

/// Largest distance outside `[0, 1]` a pixel may have and still count as inside: the rounding of
/// `original + (x - original)` after a projection.
const PIXEL_SLACK: f32 = 1e-5;

/// Checks that `images` is an `(N, 1, 28, 28)` batch of pixels the model can read: floats, finite,
/// in `[0, 1]`. `what` names it in the error.
pub fn check_batch(images: &Tensor, what: &str) -> Result<()> {
    let dims = images.dims();
    if dims.len() != 4 || dims[1] != 1 || dims[2] != SIDE || dims[3] != SIDE || dims[0] == 0 {
        return Err(LabError::Shape { what: what.into(), expected: "[N, 1, 28, 28] with N >= 1".into(), got: dims.to_vec() });
    }
    check_float(images, what)?;
    check_pixels(images, what)
}

/// Checks that `t` holds floats (f32 or f64), saying how to convert anything else.
pub fn check_float(t: &Tensor, what: &str) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        DType::U8 => Err(LabError::DType {
            what: what.into(),
            got: t.dtype(),
            fix: "pixels 0..255 in bytes become the model's [0, 1] with `(x.to_dtype(DType::F32)? / 255.0)?`".into(),
        }),
        other => Err(LabError::DType { what: what.into(), got: other, fix: "convert it with `x.to_dtype(DType::F32)?`".into() }),
    }
}

/// Checks that every value of `t` is finite and in `[0, 1]`.
pub fn check_pixels(t: &Tensor, what: &str) -> Result<()> {
    let values = finite_values(t, what)?;
    let (min, max) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if min < -PIXEL_SLACK || max > 1.0 + PIXEL_SLACK {
        return Err(LabError::PixelRange { what: what.into(), min, max });
    }
    Ok(())
}

/// Checks that every value of `t` is finite.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    finite_values(t, what).map(|_| ())
}

/// The values of `t` as f32, if all of them are finite.
fn finite_values(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(LabError::NotFinite { what: what.into(), count });
    }
    Ok(values)
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

    /// A scratch data folder holding `files` (relative path, bytes) and their SHA256SUMS.
    fn data_folder(name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        let dir = scratch(name);
        let mut sums = String::new();
        for (rel, bytes) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            sums += &format!("{}  {rel}\n", sha256_hex(bytes));
        }
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
        dir
    }

    #[test]
    fn a_file_changed_after_its_first_load_is_caught_at_the_next() {
        let weights = std::fs::read(data_dir().join(crate::model::WEIGHTS_FILE)).unwrap();
        let dir = data_folder("reload", &[(crate::model::WEIGHTS_FILE, weights.clone())]);
        crate::model::Classifier::load_from(&dir, crate::model::WEIGHTS_FILE).unwrap();
        let mut corrupted = weights;
        let mid = corrupted.len() / 2;
        corrupted[mid] ^= 0x40;
        std::fs::write(dir.join(crate::model::WEIGHTS_FILE), &corrupted).unwrap();
        let err = crate::model::Classifier::load_from(&dir, crate::model::WEIGHTS_FILE).unwrap_err();
        assert!(matches!(err, LabError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("cargo lab train"), "the weights can be retrained: {err}");
    }

    #[test]
    fn photos_are_hash_checked_and_unknown_names_list_the_photos() {
        let cat = std::fs::read(data_dir().join("photos/chelsea.png")).unwrap();
        let dir = data_folder("photos", &[("photos/chelsea.png", cat.clone())]);
        photo_from(&dir, "chelsea.png").unwrap();
        let mut corrupted = cat;
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0xff;
        std::fs::write(dir.join("photos/chelsea.png"), &corrupted).unwrap();
        let err = photo_from(&dir, "chelsea.png").unwrap_err();
        assert!(matches!(err, LabError::HashMismatch { .. }), "{err}");
        // Only the weights are the lab's own product: a photo can only be restored.
        assert!(!err.to_string().contains("cargo lab train"), "{err}");
        let msg = photo("cat.png").unwrap_err().to_string();
        for name in PHOTOS {
            assert!(msg.contains(name), "`{name}` missing from: {msg}");
        }
        assert!(!msg.contains("data/photos/"), "photo takes a bare name: {msg}");
    }

    #[test]
    fn the_dataset_hash_error_does_not_suggest_retraining() {
        let dir = data_folder("mnist-hash", &[("mnist/t10k-labels-idx1-ubyte.gz", b"not the labels".to_vec())]);
        std::fs::write(dir.join("mnist/t10k-labels-idx1-ubyte.gz"), b"still not the labels").unwrap();
        let msg = verified_bytes(&dir, "mnist/t10k-labels-idx1-ubyte.gz").unwrap_err().to_string();
        assert!(msg.contains("git checkout") && !msg.contains("cargo lab train"), "{msg}");
    }

    #[test]
    fn an_idx_header_whose_dimensions_overflow_is_an_error() {
        let mut raw = vec![0, 0, 8, 3];
        for _ in 0..3 {
            raw.extend_from_slice(&0x8000_0000u32.to_be_bytes());
        }
        raw.extend_from_slice(&[0; 16]);
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap();
        }
        let dir = data_folder("idx-overflow", &[("x-images-idx3-ubyte.gz", gz)]);
        let err = read_idx(&dir, "x-images-idx3-ubyte.gz", 0x0803).unwrap_err().to_string();
        assert!(err.contains("multiply"), "{err}");
    }

    /// Saves an RGBA drawing: a vertical bar of `ink` on a fully transparent canvas whose hidden
    /// colour is black, as drawing apps save it.
    fn transparent_drawing(path: &Path, ink: [u8; 3]) {
        let img = image::RgbaImage::from_fn(60, 60, |x, y| {
            if (26..34).contains(&x) && (8..52).contains(&y) { image::Rgba([ink[0], ink[1], ink[2], 255]) } else { image::Rgba([0, 0, 0, 0]) }
        });
        img.save(path).unwrap();
    }

    #[test]
    fn a_drawing_on_a_transparent_background_keeps_its_ink() {
        let dir = scratch("transparent");
        for (name, ink) in [("dark.png", [10, 10, 10]), ("light.png", [250, 250, 250])] {
            transparent_drawing(&dir.join(name), ink);
            for (how, t) in [("load_drawing", load_drawing(dir.join(name)).unwrap()), ("load_image", load_image(dir.join(name)).unwrap())] {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // Light strokes on a dark background, as the model reads digits.
                assert!(v[14 * 28 + 14] > 0.8, "{how}({name}): the stroke is gone ({})", v[14 * 28 + 14]);
                assert!(v[14 * 28 + 2] < 0.2, "{how}({name}): the background is not dark ({})", v[14 * 28 + 2]);
            }
        }
        // Grey with alpha (LA) too.
        let la = image::GrayAlphaImage::from_fn(40, 40, |x, _| if (18..22).contains(&x) { image::LumaA([0, 255]) } else { image::LumaA([0, 0]) });
        la.save(dir.join("la.png")).unwrap();
        let v = load_drawing(dir.join("la.png")).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[14 * 28 + 14] > 0.8, "LA drawing came out blank");
    }

    /// A JPEG whose EXIF block says "rotate 90 degrees clockwise to view" (orientation 6), as a
    /// phone writes a portrait photo.
    fn jpeg_with_orientation(pixels: &image::GrayImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageLuma8(pixels.clone()).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        // TIFF header (little endian), one IFD entry: tag 0x0112 (orientation), SHORT, count 1.
        let mut tiff = b"II*\0".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn a_photo_is_turned_upright_by_its_exif_orientation() {
        let dir = scratch("exif");
        // A bright block in the top-left corner of the stored pixels.
        let stored = image::GrayImage::from_fn(56, 56, |x, y| image::Luma([if x < 20 && y < 20 { 255 } else { 0 }]));
        std::fs::write(dir.join("plain.jpg"), jpeg_with_orientation(&stored, 1)).unwrap();
        std::fs::write(dir.join("rotated.jpg"), jpeg_with_orientation(&stored, 6)).unwrap();
        let at = |file: &str, x: usize, y: usize| load_image(dir.join(file)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[y * 28 + x];
        assert!(at("plain.jpg", 3, 3) > 0.8 && at("plain.jpg", 24, 3) < 0.2);
        // Turned 90 degrees clockwise, the top-left corner goes to the top right.
        assert!(at("rotated.jpg", 24, 3) > 0.8, "EXIF orientation ignored");
        assert!(at("rotated.jpg", 3, 3) < 0.2, "EXIF orientation ignored");
    }

    #[test]
    fn pixels_outside_0_1_and_byte_images_say_how_to_scale() {
        let (x, _) = mnist::test().unwrap().get(0).unwrap();
        let scaled = (x.clone() * 255.0).unwrap();
        let msg = check_batch(&scaled, "the image batch").unwrap_err().to_string();
        assert!(msg.contains("[0, 1]") && msg.contains("/ 255.0") && msg.contains("255"), "{msg}");
        let bytes = scaled.to_dtype(DType::U8).unwrap();
        let msg = check_batch(&bytes, "the image batch").unwrap_err().to_string();
        assert!(msg.contains("U8") && msg.contains("to_dtype(DType::F32)? / 255.0"), "{msg}");
        // Pixels a rounding error outside still count as inside.
        check_batch(&(x + 1e-6).unwrap(), "x").unwrap();
    }

    #[test]
    fn a_saved_digit_comes_back_rounded_to_256_grey_levels() {
        let dir = scratch("roundtrip");
        let (x, _) = mnist::test().unwrap().get(0).unwrap();
        let nudged = ((x.clone() * 0.9).unwrap() + 0.0517).unwrap();
        save_digit_png(&nudged, dir.join("d.png")).unwrap();
        let back = load_digit_png(dir.join("d.png")).unwrap();
        let diff = (&back - &nudged).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 0.5 / 255.0 + 1e-6 && diff > 0.0, "rounding error {diff}");
        assert!(save_digit_png(&(x * 255.0).unwrap(), dir.join("e.png")).unwrap_err().to_string().contains("/ 255.0"));
        image::GrayImage::new(30, 20).save(dir.join("big.png")).unwrap();
        assert!(load_digit_png(dir.join("big.png")).unwrap_err().to_string().contains("load_image"));
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
