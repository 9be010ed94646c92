//! Checks on what a user hands the lab: batches of pixels, budgets, classes, step counts.
//!
//! Every public function of lab-support that takes a tensor or a number from a notebook runs one
//! of these first, so a wrong shape, a byte image or a negative budget comes back as a
//! [`LabError`] that names the argument and the fix, never as a panic deep inside candle.
//!
//! ```
//! use lab_support::validate::{check_batch, check_eps};
//! use lab_support::candle_core::{Device, Tensor};
//! let batch = Tensor::zeros((2, 1, 28, 28), lab_support::candle_core::DType::F32, &Device::Cpu)?;
//! check_batch(&batch, "the batch")?;
//! assert!(check_eps(-0.1).is_err());
//! # Ok::<(), lab_support::LabError>(())
//! ```

use crate::error::{LabError, Result};
use candle_core::{DType, Tensor};

/// Side length of every image the lab's models read.
pub const SIDE: usize = 28;

/// Largest distance outside `[0, 1]` a pixel may have and still count as inside: the rounding of
/// `original + (x - original)` after a projection.
const PIXEL_SLACK: f32 = 1e-5;

/// Checks that `images` is an `(N, 1, 28, 28)` batch of pixels the model can read: floats, finite,
/// in `[0, 1]`. `what` names it in the error.
pub fn check_batch(images: &Tensor, what: &str) -> Result<()> {
    let dims = images.dims();
    if dims.len() != 4 || dims[1] != 1 || dims[2] != SIDE || dims[3] != SIDE || dims[0] == 0 {
        return Err(LabError::Shape {
            what: what.into(),
            expected: "[N, 1, 28, 28] with N >= 1".into(),
            got: dims.to_vec(),
        });
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
        other => Err(LabError::DType {
            what: what.into(),
            got: other,
            fix: "convert it with `x.to_dtype(DType::F32)?`".into(),
        }),
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

/// Checks that `class` is one of the ten digit classes.
pub fn check_class(class: u32) -> Result<()> {
    if class >= 10 {
        return Err(LabError::invalid("class", class, "a class index in 0..=9"));
    }
    Ok(())
}

/// Checks that a perturbation budget is a finite number >= 0.
pub fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(LabError::invalid("eps", eps, "a finite number >= 0 (how far each image may move)"));
    }
    Ok(())
}

pub(crate) fn same_shape(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(LabError::Shape {
            what: "the perturbed batch".into(),
            expected: format!("{:?}, the shape of the original batch", b.dims()),
            got: a.dims().to_vec(),
        });
    }
    Ok(())
}

/// The most steps one attack call runs: 100,000 steps on one digit take about half a minute.
pub const MAX_STEPS: usize = 100_000;

/// Checks a number of steps against [`MAX_STEPS`].
pub fn check_steps(steps: usize) -> Result<()> {
    if steps > MAX_STEPS {
        return Err(LabError::invalid(
            "steps",
            steps,
            format!("at most {MAX_STEPS} in one call (that already takes about half a minute per digit); run fewer, or call the attack again on its result"),
        ));
    }
    Ok(())
}

pub(crate) fn check_finite_positive(name: &'static str, value: f32) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(LabError::invalid(name, value, "a finite number > 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn check_batch_names_the_problem() {
        let bad = Tensor::zeros((3, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let msg = check_batch(&bad, "the batch").unwrap_err().to_string();
        assert!(msg.contains("[3, 28, 28]") && msg.contains("[N, 1, 28, 28]"), "{msg}");
        let nan = (Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap() / 0.0).unwrap();
        assert!(check_batch(&nan, "x").unwrap_err().to_string().contains("784 NaN"));
    }
}
