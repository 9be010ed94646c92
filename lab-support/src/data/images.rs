//! Images from outside the datasets: photos, drawings, PNGs a student saved. Each becomes a
//! `(1, 1, 28, 28)` tensor framed the way the digit model reads digits.

use super::{data_dir, integrity::verified_bytes};
use crate::error::{LabError, Result};
use crate::validate::{check_pixels, SIDE};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Largest image file `load_image` accepts; photos for this lab are a few hundred kB.
pub(super) const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;

/// Turns a PNG or JPEG into a `(1, 1, 28, 28)` tensor the digit model can read.
///
/// The image is made grey, cropped to its central square and shrunk to 28x28. Digit models see
/// light strokes on a dark background, so an image whose border is mostly light (a drawing on
/// white paper, a bright photo) is inverted. Use [`load_drawing`] for a hand-drawn digit.
pub fn load_image(path: impl AsRef<Path>) -> Result<Tensor> {
    crate::notebook::init();
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
    crate::notebook::init();
    photo_from(&data_dir(), name)
}

pub(super) fn photo_from(root: &Path, name: &str) -> Result<Tensor> {
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
    crate::notebook::init();
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
        return Err(LabError::BadImage {
            path: path.into(),
            reason: "it holds no visible stroke (it is blank)".into(),
        });
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop =
        image::GrayImage::from_fn(bw, bh, |x, y| image::Luma([(ink[((y0 + y) * w + x0 + x) as usize] * 255.0) as u8]));
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
        return Err(LabError::Shape {
            what: "the image to save".into(),
            expected: "784 pixels, such as [1, 1, 28, 28]".into(),
            got: image.dims().to_vec(),
        });
    }
    check_pixels(image, "the image to save")?;
    let bytes: Vec<u8> = pixels.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, bytes)
        .ok_or_else(|| LabError::Other("28x28 pixels make an image".into()))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| LabError::BadImage { path: path.into(), reason: format!("it could not be written ({e})") })
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
            reason: format!(
                "it is {}x{} pixels, not 28x28; `load_image` or `load_drawing` shrink and frame an image of any size",
                grey.width(),
                grey.height()
            ),
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
    let mut img =
        image::DynamicImage::from_decoder(decoder).map_err(|e| bad(format!("it is not a valid image ({e})")))?;
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
