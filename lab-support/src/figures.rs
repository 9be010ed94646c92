//! The lab's own figures: the charts of [`crate::plot`] filled from a model's answers.
//!
//! `plot` draws numbers and images and knows no model; here a [`Classifier`] is asked about
//! images and its answers become captions, bars and curves. They are methods on the chart types
//! (`ImageGrid::predictions`, `BarChart::probabilities`), so a notebook finds them there.

use crate::error::{LabError, Result};
use crate::model::Classifier;
use crate::plot::{too_many_images, BarChart, Figure, ImageGrid, LinePlot, MAX_GRID_IMAGES};
use candle_core::{DType, Tensor};

impl BarChart {
    /// The model's class probabilities for one image `(1, 1, 28, 28)`, as a one-group chart.
    pub fn probabilities(model: &Classifier, image: &Tensor, title: impl Into<String>) -> Result<Self> {
        let probs = model.probabilities(image)?.get(0)?.to_vec1::<f32>()?;
        Ok(BarChart::new(title, model.class_names()).group("", &probs))
    }

    /// A figure of one probability chart per named image, `columns` to a row.
    pub fn probability_panels(
        model: &Classifier,
        images: &[(&str, Tensor)],
        columns: usize,
        title: &str,
    ) -> Result<Figure> {
        let mut figure = Figure::new(title, columns);
        for (name, image) in images {
            figure = figure.add(BarChart::probabilities(model, image, *name)?.with_size(340, 230));
        }
        Ok(figure)
    }
}

impl ImageGrid {
    /// The first images of a batch with the model's prediction and confidence as captions;
    /// predictions that disagree with `labels` (if given) are flagged in red.
    pub fn predictions(model: &Classifier, images: &Tensor, labels: Option<&Tensor>, columns: usize) -> Result<Self> {
        let n = images.dims().first().copied().unwrap_or(0);
        if n > MAX_GRID_IMAGES {
            return Err(too_many_images(n));
        }
        let preds = model.predict(images)?;
        let names = model.class_names();
        let labels = labels.map(|l| l.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()).transpose()?;
        if let Some(labels) = &labels {
            if labels.len() != preds.len() {
                return Err(LabError::invalid(
                    "labels",
                    format!("{} label(s)", labels.len()),
                    format!("one label per image ({})", preds.len()),
                ));
            }
            if let Some(bad) = labels.iter().find(|&&l| l as usize >= names.len()) {
                return Err(LabError::invalid("label", bad, format!("a class index in 0..={}", names.len() - 1)));
            }
        }
        let mut grid = ImageGrid::new("What the model sees", columns);
        for (i, p) in preds.iter().enumerate() {
            let image = images.get(i)?;
            let caption = format!("{} ({:.0}%)", names[p.class], p.confidence * 100.0);
            grid = match labels.as_ref().and_then(|l| l.get(i)) {
                Some(&l) if l as usize != p.class => {
                    grid.flagged(&image, format!("{caption} true {}", names[l as usize]))?
                }
                _ => grid.image(&image, caption)?,
            };
        }
        Ok(grid)
    }

    /// Named images, each captioned with its name and the model's answer and confidence.
    pub fn named_predictions(model: &Classifier, images: &[(&str, Tensor)], columns: usize) -> Result<Self> {
        let names = model.class_names();
        let mut grid = ImageGrid::new("What the model answers", columns);
        for (name, image) in images {
            let p = model.predict(image)?[0];
            grid = grid.image(image, format!("{name}: {} ({:.0}%)", names[p.class], p.confidence * 100.0))?;
        }
        Ok(grid)
    }

    /// One row per image: original, perturbation (scaled up), adversarial, each captioned with
    /// the model's prediction and confidence.
    pub fn attack(model: &Classifier, original: &Tensor, adversarial: &Tensor) -> Result<Self> {
        let before = model.predict(original)?;
        let after = model.predict(adversarial)?;
        let names = model.class_names();
        let mut grid = ImageGrid::new("original | perturbation (scaled) | adversarial", 3);
        for i in 0..before.len() {
            let (x, adv) = (original.get(i)?, adversarial.get(i)?);
            let delta = (&adv - &x)?;
            let linf = delta.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let (b, a) = (before[i], after[i]);
            grid = grid
                .image(&x, format!("{} ({:.0}%)", names[b.class], b.confidence * 100.0))?
                .perturbation(&delta, format!("max |delta| {linf:.3}"))?;
            let caption = format!("{} ({:.0}%)", names[a.class], a.confidence * 100.0);
            grid = if a.class != b.class { grid.flagged(&adv, caption)? } else { grid.image(&adv, caption)? };
        }
        Ok(grid)
    }
}

/// Loss and target-class probability for each step of a crafting history (the images after each
/// step), side by side; step 0 is the original.
pub fn crafting_progress(model: &Classifier, original: &Tensor, history: &[Tensor], target: u32) -> Result<Figure> {
    crate::validate::check_class(target)?;
    let mut images = vec![original.clone()];
    images.extend(history.iter().cloned());
    let batch = Tensor::cat(&images, 0)?;
    let logits = model.logits(&batch)?;
    let log_p = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?
        .narrow(1, target as usize, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let loss: Vec<(f64, f64)> = log_p.iter().enumerate().map(|(i, &l)| (i as f64, -l as f64)).collect();
    let prob: Vec<(f64, f64)> = log_p.iter().enumerate().map(|(i, &l)| (i as f64, l.exp() as f64)).collect();
    Ok(Figure::new(format!("Gradient descent on the input, toward class {target}"), 3)
        .add(LinePlot::new("loss E = -log p(target)").labels("step", "loss").line("loss", loss).with_size(480, 340))
        .add(
            LinePlot::new(format!("p({target})"))
                .labels("step", "probability")
                .y_range(0.0, 1.0)
                .line(format!("p({target})"), prob)
                .with_size(480, 340),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mnist;
    use crate::plot::{Chart, MAX_GRID_IMAGES};

    #[test]
    fn image_grid_renders_a_png_of_the_right_size() {
        let model = Classifier::pretrained().unwrap();
        let set = mnist::test().unwrap().take(8).unwrap();
        let grid = ImageGrid::predictions(&model, &set.images, Some(&set.labels), 4).unwrap();
        let png = grid.to_png().unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.width(), 4 * 150 + 8);
        // The digits are there: some pixels are white, some black.
        assert!(img.pixels().any(|p| p.0 == [0, 0, 0]) && img.pixels().any(|p| p.0 == [255, 255, 255]));
        let wrong =
            ImageGrid::new("", 2).image(&Tensor::zeros((3, 3), DType::F32, &candle_core::Device::Cpu).unwrap(), "x");
        assert!(wrong.unwrap_err().to_string().contains("784"));
    }

    #[test]
    fn bad_figure_input_is_an_error_not_a_panic() {
        let model = Classifier::pretrained().unwrap();
        let set = mnist::test().unwrap().take(4).unwrap();
        let twelve = Tensor::new(&[1u32, 12, 3, 4], &candle_core::Device::Cpu).unwrap();
        let msg = ImageGrid::predictions(&model, &set.images, Some(&twelve), 4).unwrap_err().to_string();
        assert!(msg.contains("12") && msg.contains("0..=9"), "{msg}");
        let all = mnist::test().unwrap();
        let msg = ImageGrid::predictions(&model, &all.images, None, 100).unwrap_err().to_string();
        assert!(msg.contains("take(32)"), "{msg}");
        // The biggest grid allowed, at the biggest scale, stays a clean error (no overflow).
        let (x, _) = all.get(0).unwrap();
        let mut big = ImageGrid::new("big", 1).with_scale(16);
        for _ in 0..MAX_GRID_IMAGES {
            big = big.image(&x, "").unwrap();
        }
        assert!(big.clone().image(&x, "").unwrap_err().to_string().contains("at most 400"));
        assert!(big.to_png().unwrap_err().to_string().contains("8192"));
        for (lo, hi) in [(f64::NAN, f64::NAN), (1.0, 0.0), (0.0, f64::INFINITY)] {
            let msg = LinePlot::new("t").line("a", [(0.0, 1.0)]).y_range(lo, hi).to_svg().unwrap_err().to_string();
            assert!(msg.contains("y_range"), "{msg}");
        }
    }
}
