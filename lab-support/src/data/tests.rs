//! The data module's tests: datasets, hashes, IDX headers and image files.

use super::idx::read_idx;
use super::images::{photo_from, MAX_IMAGE_BYTES};
use super::*;
use crate::validate::check_batch;
use candle_core::DType;
use std::path::{Path, PathBuf};

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
    assert!(
        msg.contains("b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b"),
        "expected hash missing: {msg}"
    );
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
    let img = image::GrayImage::from_fn(100, 60, |x, y| {
        image::Luma([if (10..18).contains(&x) && (5..50).contains(&y) { 0 } else { 255 }])
    });
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
pub(crate) fn data_folder(name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
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
        if (26..34).contains(&x) && (8..52).contains(&y) {
            image::Rgba([ink[0], ink[1], ink[2], 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    img.save(path).unwrap();
}

#[test]
fn a_drawing_on_a_transparent_background_keeps_its_ink() {
    let dir = scratch("transparent");
    for (name, ink) in [("dark.png", [10, 10, 10]), ("light.png", [250, 250, 250])] {
        transparent_drawing(&dir.join(name), ink);
        for (how, t) in [
            ("load_drawing", load_drawing(dir.join(name)).unwrap()),
            ("load_image", load_image(dir.join(name)).unwrap()),
        ] {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Light strokes on a dark background, as the model reads digits.
            assert!(v[14 * 28 + 14] > 0.8, "{how}({name}): the stroke is gone ({})", v[14 * 28 + 14]);
            assert!(v[14 * 28 + 2] < 0.2, "{how}({name}): the background is not dark ({})", v[14 * 28 + 2]);
        }
    }
    // Grey with alpha (LA) too.
    let la = image::GrayAlphaImage::from_fn(40, 40, |x, _| {
        if (18..22).contains(&x) {
            image::LumaA([0, 255])
        } else {
            image::LumaA([0, 0])
        }
    });
    la.save(dir.join("la.png")).unwrap();
    let v = load_drawing(dir.join("la.png")).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v[14 * 28 + 14] > 0.8, "LA drawing came out blank");
}

/// A JPEG whose EXIF block says "rotate 90 degrees clockwise to view" (orientation 6), as a
/// phone writes a portrait photo.
fn jpeg_with_orientation(pixels: &image::GrayImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageLuma8(pixels.clone())
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
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
    let at = |file: &str, x: usize, y: usize| {
        load_image(dir.join(file)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[y * 28 + x]
    };
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
