//! `Classifier`, the lab's digit CNN, and what you can ask of it.
//!
//! The network, for a batch `x` of shape `(N, 1, 28, 28)`:
//!
//! ```text
//! conv 3x3, 1 -> 32, relu, maxpool 2     (N, 32, 13, 13)
//! conv 3x3, 32 -> 64, relu, maxpool 2    (N, 64, 5, 5)
//! flatten, linear 1600 -> 128, relu
//! linear 128 -> 10                       logits (N, 10)
//! ```
//!
//! [`Classifier::pretrained`] loads the shipped, frozen weights: its tensors are plain tensors, not
//! `Var`s, so a backward pass through it yields gradients for the input only. Logits and
//! probabilities are different things: the losses in [`crate::grad`] take logits.
//!
//! ```
//! use lab_support::prelude::*;
//! let model = Classifier::pretrained()?;
//! let test = mnist::test()?.take(100)?;
//! let p = model.predict(&test.images)?;
//! assert_eq!(p.len(), 100);
//! assert!(model.accuracy(&test)? > 0.95);
//! # Ok::<(), LabError>(())
//! ```

use crate::data::{data_dir, verified_bytes, Dataset, DIGIT_NAMES};
use crate::rng::SeededRng;
use crate::validate::check_batch;
pub mod kernels;

use crate::error::{LabError, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where the shipped weights live, relative to the data folder.
pub const WEIGHTS_FILE: &str = "models/lab-cnn.safetensors";
/// Where the adversarially trained weights live (`cargo lab train --adversarial`).
pub const ROBUST_WEIGHTS_FILE: &str = "models/lab-cnn-robust.safetensors";
/// Where the weights trained for certificates live (`cargo lab train --certified`).
pub const CERTIFIED_WEIGHTS_FILE: &str = "models/lab-cnn-certified.safetensors";
/// The certified models by the budget they were trained for (`cargo lab train --certified --eps E`):
/// one model does not serve both budgets well (see `docs/models.md`).
pub const CERTIFIED_WEIGHTS_FILES: [(f32, &str); 2] =
    [(0.3, CERTIFIED_WEIGHTS_FILE), (0.1, "models/lab-cnn-certified-0.1.safetensors")];
/// The base models of randomized smoothing, trained on noisy digits (`cargo lab train --noise S`):
/// the noise's standard deviation and the file.
pub const NOISE_WEIGHTS_FILES: [(f32, &str); 2] =
    [(0.25, "models/lab-cnn-noise-0.25.safetensors"), (0.5, "models/lab-cnn-noise-0.5.safetensors")];

/// Every parameter of the network with its shape, in PyTorch's naming.
pub const PARAMETERS: [(&str, &[usize]); 8] = [
    ("conv1.weight", &[32, 1, 3, 3]),
    ("conv1.bias", &[32]),
    ("conv2.weight", &[64, 32, 3, 3]),
    ("conv2.bias", &[64]),
    ("fc1.weight", &[128, 1600]),
    ("fc1.bias", &[128]),
    ("fc2.weight", &[10, 128]),
    ("fc2.bias", &[10]),
];

/// A layer of the network: input, weight, bias to output.
type Layer = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// The lab CNN. Cheap to clone: tensors are shared.
#[derive(Clone, Debug)]
pub struct Classifier {
    params: HashMap<String, Tensor>,
    class_names: &'static [&'static str],
    /// Counts forward passes when set (see [`Classifier::counting_calls`]); shared by clones.
    calls: Option<CallCounter>,
    /// A preprocessing step every input goes through first (see [`Classifier::with_defense`]).
    defense: Option<Defense>,
}

/// One prediction: the class the model picks and its probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Index of the most probable class.
    pub class: usize,
    /// Its softmax probability, in `[0, 1]`.
    pub confidence: f32,
}

/// How many forward passes a [`Classifier::counting_calls`] copy (and its clones) has made.
#[derive(Clone, Debug, Default)]
pub struct CallCounter(Arc<AtomicUsize>);

impl CallCounter {
    /// The forward passes so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Classifier {
    /// The shipped digit model, frozen, from `data/models/lab-cnn.safetensors` (hash-checked).
    pub fn pretrained() -> Result<Self> {
        Self::load_from(&data_dir(), WEIGHTS_FILE)
    }

    /// The shipped robust model: the same network, adversarially trained against L-inf PGD at
    /// eps 0.3 (see `docs/models.md`), frozen and hash-checked.
    pub fn robust() -> Result<Self> {
        Self::load_from(&data_dir(), ROBUST_WEIGHTS_FILE)
    }

    /// The shipped certified model: the same network, trained with interval bound propagation so
    /// that its robustness can be proved (see [`crate::certify`] and `docs/models.md`), frozen and
    /// hash-checked.
    pub fn certified() -> Result<Self> {
        Self::load_from(&data_dir(), CERTIFIED_WEIGHTS_FILE)
    }

    /// The shipped certified model trained for the L-inf budget `eps`: 0.3 ([`Self::certified`])
    /// or 0.1, which keeps more of the clean accuracy and proves less at 0.3.
    pub fn certified_for(eps: f32) -> Result<Self> {
        match CERTIFIED_WEIGHTS_FILES.iter().find(|(e, _)| *e == eps) {
            Some((_, file)) => Self::load_from(&data_dir(), file),
            None => Err(LabError::invalid("eps", eps, "0.3 or 0.1: the budgets the lab ships a certified model for")),
        }
    }

    /// The shipped base model for randomized smoothing at noise `sigma` (0.25 or 0.5): the same
    /// network, trained on digits with Gaussian noise of that standard deviation added.
    pub fn noise_trained(sigma: f32) -> Result<Self> {
        match NOISE_WEIGHTS_FILES.iter().find(|(s, _)| *s == sigma) {
            Some((_, file)) => Self::load_from(&data_dir(), file),
            None => Err(LabError::invalid("sigma", sigma, "0.25 or 0.5: the noise levels the lab ships a model for")),
        }
    }

    /// Loads weights from `root/rel`, checked against `root/SHA256SUMS`.
    pub fn load_from(root: &Path, rel: &str) -> Result<Self> {
        crate::notebook::init();
        let bytes = verified_bytes(root, rel)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| LabError::BadFile { path: root.join(rel), reason: LabError::Candle(e).message() })?;
        Self::from_tensors(tensors)
    }

    /// Builds the network from named tensors (see [`PARAMETERS`]); every shape is checked.
    ///
    /// Pass `Var`s' tensors to train the network, plain tensors to freeze it.
    pub fn from_tensors(mut tensors: HashMap<String, Tensor>) -> Result<Self> {
        let mut params = HashMap::new();
        for (name, shape) in PARAMETERS {
            let t = tensors.remove(name).ok_or_else(|| {
                LabError::Other(format!(
                    "the weights have no tensor `{name}`; they are not the lab CNN's. Restore data/models/ \
                 with `git checkout -- data/models` or regenerate it with `cargo lab train`"
                ))
            })?;
            if t.dims() != shape {
                return Err(LabError::Shape {
                    what: format!("weight `{name}`"),
                    expected: format!("{shape:?}"),
                    got: t.dims().to_vec(),
                });
            }
            params.insert(name.to_string(), t.to_dtype(DType::F32)?);
        }
        Ok(Classifier { params, class_names: &DIGIT_NAMES, calls: None, defense: None })
    }

    /// The same network, counting its forward passes (each gradient step of an attack makes one):
    /// for a challenge with a budget of model calls.
    pub fn counting_calls(&self) -> (Self, CallCounter) {
        let counter = CallCounter::default();
        (Classifier { calls: Some(counter.clone()), ..self.clone() }, counter)
    }

    /// The network with every parameter a `Var`, ready to train, and those `Var`s sorted by name
    /// (a fixed order for an optimiser's state).
    pub fn trainable(tensors: &HashMap<String, Tensor>) -> Result<(Self, Vec<(String, Var)>)> {
        let mut vars =
            tensors.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<Vec<_>>>()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let model = Self::from_tensors(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())?;
        Ok((model, vars))
    }

    /// The same network with its weights cut off from autograd, sharing their storage: an attack
    /// through it computes gradients for the input only, while the optimiser keeps updating the
    /// weights in place. The inner attack of adversarial training runs on it.
    pub fn frozen(&self) -> Self {
        let params = self.params.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
        Classifier { params, class_names: self.class_names, calls: self.calls.clone(), defense: self.defense }
    }

    /// The same network computing in `dtype` (`DType::F64` for precise gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let params = self.params.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?))).collect::<Result<_>>()?;
        Ok(Classifier { params, class_names: self.class_names, calls: self.calls.clone(), defense: self.defense })
    }

    /// The same weights behind a preprocessing `defense`: every input (for predictions, accuracy,
    /// attacks) goes through it first. See [`Defense`] for what that does to gradients.
    pub fn with_defense(&self, defense: Defense) -> Result<Self> {
        defense.validate()?;
        Ok(Classifier { defense: Some(defense), ..self.clone() })
    }

    /// The preprocessing defense in front of the network, if any.
    pub fn defense(&self) -> Option<Defense> {
        self.defense
    }

    /// The network alone, without its defense (the same weights): what BPDA differentiates.
    pub fn without_defense(&self) -> Self {
        Classifier { defense: None, ..self.clone() }
    }

    /// The network's parameters by name.
    pub fn parameters(&self) -> &HashMap<String, Tensor> {
        &self.params
    }

    /// Saves the weights as safetensors (the weights only: a [`Defense`] in front is not saved).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        candle_core::safetensors::save(&self.params, path.as_ref())?;
        Ok(())
    }

    /// What each output index means.
    pub fn class_names(&self) -> &'static [&'static str] {
        self.class_names
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    fn p(&self, name: &str) -> &Tensor {
        &self.params[name]
    }

    /// The forward pass: logits `(N, 10)` for a batch `(N, 1, 28, 28)`. It checks the batch's shape
    /// and element type, not its pixel values: inner loops that already checked them call it
    /// directly, and [`Classifier::logits`] checks them too.
    ///
    /// On the CPU the layers run as [`kernels::conv_relu_pool`] and [`kernels::linear`],
    /// whose backward passes compute only the gradients that are needed; elsewhere, as
    /// [`Self::forward_reference`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
            return self.forward_reference(x);
        }
        self.forward_with(x, &|x, w, b| Ok(kernels::conv_relu_pool(x, w, b)?), &|x, w, b| Ok(kernels::linear(x, w, b)?))
    }

    /// The same network on plain candle ops (`conv2d`, relu, [`max_pool_2x2`], `matmul`): slower, and the
    /// yardstick the fast path is tested against.
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(
            x,
            &|x, w, b| {
                max_pool_2x2(&x.conv2d(w, 0, 1, 1, 1)?.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?.relu()?)
            },
            &|x, w, b| Ok(x.matmul(&w.t()?)?.broadcast_add(b)?),
        )
    }

    fn forward_with(&self, x: &Tensor, conv_block: &Layer, linear_layer: &Layer) -> Result<Tensor> {
        self.check_input(x)?;
        if let Some(calls) = &self.calls {
            calls.0.fetch_add(1, Ordering::Relaxed);
        }
        let x = match &self.defense {
            Some(defense) => defense.apply_unchecked(x)?,
            None => fresh_id(x)?,
        };
        let p = |name: String| fresh_id(self.p(&name));
        let conv =
            |x: &Tensor, layer: &str| conv_block(x, &p(format!("{layer}.weight"))?, &p(format!("{layer}.bias"))?);
        let linear =
            |x: &Tensor, layer: &str| linear_layer(x, &p(format!("{layer}.weight"))?, &p(format!("{layer}.bias"))?);
        let h = conv(&conv(&x, "conv1")?, "conv2")?.flatten_from(1)?;
        linear(&linear(&h, "fc1")?.relu()?, "fc2")
    }

    /// The checks every forward pass makes, costing no pass over the pixels: the shape, and a
    /// dtype the weights can multiply (candle's own error, "dtype mismatch in conv2d", does not
    /// say what to do).
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4
            || dims[1] != 1
            || dims[2] != crate::data::SIDE
            || dims[3] != crate::data::SIDE
            || dims[0] == 0
        {
            return Err(LabError::Shape {
                what: "the model's input".into(),
                expected: "[N, 1, 28, 28] with N >= 1".into(),
                got: dims.to_vec(),
            });
        }
        crate::validate::check_float(x, "the model's input")?;
        let want = self.p("fc2.bias").dtype();
        if x.dtype() != want {
            return Err(LabError::DType {
                what: "the model's input".into(),
                got: x.dtype(),
                fix: format!("convert it with `x.to_dtype(DType::{want:?})?` (or make the model compute in its type with `model.to_dtype(DType::{:?})?`)", x.dtype()),
            });
        }
        Ok(())
    }

    /// Logits `(N, 10)` for a batch `(N, 1, 28, 28)`; checks the shape and that pixels are finite
    /// and in `[0, 1]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        check_batch(images, "the image batch")?;
        self.forward(images)
    }

    /// Class probabilities `(N, 10)`: the softmax of the logits. Each row sums to 1.
    ///
    /// For gradients, use the losses in [`crate::grad`], which work on logits: candle's
    /// `softmax_last_dim` has no backward pass.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&self.logits(images)?, D::Minus1)?)
    }

    /// The most probable class of each image and its probability (in batches of 1,000, so any
    /// number of images fits in memory).
    pub fn predict(&self, images: &Tensor) -> Result<Vec<Prediction>> {
        check_batch(images, "the image batch")?;
        let mut out = Vec::with_capacity(images.dim(0)?);
        for start in (0..images.dim(0)?).step_by(1000) {
            let part = images.narrow(0, start, 1000.min(images.dim(0)? - start))?;
            let logits = self.forward(&part)?;
            let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            out.extend(probs.iter().map(|row| top1(row)));
        }
        Ok(out)
    }

    /// The fraction of `set` the model classifies correctly, in batches of 1,000.
    pub fn accuracy(&self, set: &Dataset) -> Result<f32> {
        if set.is_empty() {
            return Err(LabError::invalid("set", "an empty dataset", "at least one example"));
        }
        let mut correct = 0usize;
        for start in (0..set.len()).step_by(1000) {
            let part = set.slice(start, 1000)?;
            let pred = self.logits(&part.images)?.argmax(D::Minus1)?;
            correct += pred.eq(&part.labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
        }
        Ok(correct as f32 / set.len() as f32)
    }

    /// The fraction of `images` classified as `labels` says: the accuracy on a set after an attack
    /// replaced its digits.
    pub fn accuracy_on(&self, images: &Tensor, labels: &Tensor) -> Result<f32> {
        check_batch(images, "the image batch")?;
        let labels = labels.flatten_all()?.to_dtype(DType::U32)?;
        if labels.dim(0)? != images.dim(0)? {
            return Err(LabError::invalid(
                "labels",
                format!("{} label(s)", labels.dim(0)?),
                format!("one per image: the batch holds {}", images.dim(0)?),
            ));
        }
        self.accuracy(&Dataset { images: images.clone(), labels, class_names: self.class_names })
    }
}

/// A preprocessing defense: a step in front of the network that every input passes through.
///
/// [`Defense::Quantize`] rounds each pixel to one of `levels` grey values (`levels: 2` is a black
/// and white image). Small changes to a pixel mostly round back to where they were, so it looks
/// like it should absorb a perturbation. Its derivative, though, is zero almost everywhere (a
/// staircase is flat between its steps), so the input gradient through it is exactly zero:
/// gradient attacks see nothing to follow and fail. That is gradient masking, not robustness
/// (Athalye, Carlini and Wagner 2018); BPDA, which differentiates the network at the quantized
/// input and treats the quantizer as the identity on the way back, gets the attack moving again.
///
/// [`Defense::Noise`] adds fresh Gaussian noise to every input at every call: a randomized
/// defense. The same image can get two answers, so one attack run, or one accuracy, is one draw of
/// a random number. An evaluation must say so and attack the expectation over the noise (EOT:
/// average the gradient over draws); the checklist flags a model whose output changes between two
/// calls. The noise comes from one seeded generator per process, so a notebook run again gives the
/// same numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Defense {
    /// Round every pixel to the nearest of `levels` evenly spaced grey values in `[0, 1]`.
    Quantize { levels: u32 },
    /// Add Gaussian noise of standard deviation `sigma` to every pixel (not clamped: as the
    /// noise-trained models saw it in training, `Classifier::noise_trained`), drawn anew at every
    /// call. Gradients go through it unchanged.
    Noise { sigma: f32 },
}

/// The seed of the generator [`Defense::Noise`] draws from.
const DEFENSE_NOISE_SEED: u64 = 0x006e_6f69_7365; // "noise"
/// That generator, one per process.
static DEFENSE_NOISE: std::sync::Mutex<Option<SeededRng>> = std::sync::Mutex::new(None);

/// Gaussian noise of `sigma` in the shape, type and device of `like`, from [`DEFENSE_NOISE`].
fn defense_noise(like: &Tensor, sigma: f32) -> Result<Tensor> {
    let mut rng = DEFENSE_NOISE.lock().unwrap_or_else(|e| e.into_inner());
    let noise = rng.get_or_insert_with(|| SeededRng::new(DEFENSE_NOISE_SEED)).normal_tensor(like.dims(), sigma)?;
    Ok(noise.to_dtype(like.dtype())?.to_device(like.device())?)
}

impl Defense {
    fn validate(&self) -> Result<()> {
        match *self {
            Defense::Quantize { levels } if !(2..=256).contains(&levels) => {
                Err(LabError::invalid("levels", levels, "between 2 (black and white) and 256 (8-bit images)"))
            }
            Defense::Quantize { .. } => Ok(()),
            Defense::Noise { sigma } if !(sigma.is_finite() && sigma > 0.0 && sigma <= 1.0) => {
                Err(LabError::invalid("sigma", sigma, "a noise level above 0 and at most 1 (pixels are in [0, 1])"))
            }
            Defense::Noise { .. } => Ok(()),
        }
    }

    /// The preprocessed batch, as the network sees it. After [`Defense::Quantize`] it carries no
    /// gradient (nothing flows back through a rounding step); after [`Defense::Noise`] it does, and
    /// each call draws new noise.
    pub fn apply(&self, images: &Tensor) -> Result<Tensor> {
        self.validate()?;
        check_batch(images, "the image batch")?;
        self.apply_unchecked(images)
    }

    fn apply_unchecked(&self, images: &Tensor) -> Result<Tensor> {
        match *self {
            Defense::Quantize { levels } => {
                let top = (levels - 1) as f64;
                Ok(images.detach().affine(top, 0.0)?.round()?.affine(1.0 / top, 0.0)?)
            }
            Defense::Noise { sigma } => Ok((images + defense_noise(images, sigma)?)?),
        }
    }
}

/// The same tensor under a new id, unless it takes part in autograd (a `Var` or the result of
/// one), which keeps its identity.
///
/// Why: candle's backward pass keys gradients by tensor id, and ids come from one counter per copy
/// of candle. When evcxr linked each notebook cell with its own copy of candle, every cell
/// numbered its tensors from 1 again, so a tensor kept from an earlier cell (the model's weights,
/// a loaded digit) could share its id with one made in the current cell, and the backward pass
/// mixed them up ("shape mismatch in add" at best, a wrong gradient at worst). Cells now share
/// one candle through lab-support's dylib (measured: ids go on from one cell to the next), and
/// this stays as the guard for any build that links a copy per cell again. It costs nothing: the
/// storage is shared.
pub(crate) fn fresh_id(t: &Tensor) -> Result<Tensor> {
    if t.is_variable() || t.track_op() {
        return Ok(t.clone());
    }
    Ok(t.reshape(t.shape())?)
}

/// 2x2 max pooling with stride 2, dropping an odd last row or column (as PyTorch does).
///
/// Not candle's `max_pool2d`: its backward pass upsamples the gradient to the input's size, which
/// misplaces it when that size is odd (11x11 after conv2 here), and scales it by the fraction of
/// maxima in the window instead of dividing by their count. A reshape and two max-reductions give
/// the right gradient: all of it to the window's maximum.
///
/// Ties need care: a clean digit is mostly exact zeros, so whole windows hold equal values, and
/// candle's max-reduction passes the full gradient to *every* tied entry, counting it up to four
/// times. Offsets of -1e-6 per position (-1e-13 in f64) make the first maximum win, as in PyTorch,
/// at a cost of at most 3e-6 (3e-13) in any activation.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let even = if h % 2 == 0 && w % 2 == 0 {
        x.clone()
    } else {
        x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?.contiguous()?
    };
    let tie = if x.dtype() == DType::F64 { 1e-13 } else { 1e-6 };
    let ties = Tensor::new(&[0.0, -tie, -2.0 * tie, -3.0 * tie], x.device())?
        .to_dtype(x.dtype())?
        .reshape((1, 1, 1, 2, 1, 2))?;
    Ok(even.reshape((n, c, h2, 2, w2, 2))?.broadcast_add(&ties)?.max(5)?.max(3)?)
}

/// The index and value of the largest entry of `row`.
pub fn top1(row: &[f32]) -> Prediction {
    let (class, confidence) =
        row.iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
    Prediction { class, confidence }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_after_its_first_load_is_caught_at_the_next() {
        let weights = std::fs::read(data_dir().join(WEIGHTS_FILE)).unwrap();
        let dir = crate::data::tests::data_folder("reload", &[(WEIGHTS_FILE, weights.clone())]);
        Classifier::load_from(&dir, WEIGHTS_FILE).unwrap();
        let mut corrupted = weights;
        let mid = corrupted.len() / 2;
        corrupted[mid] ^= 0x40;
        std::fs::write(dir.join(WEIGHTS_FILE), &corrupted).unwrap();
        let err = Classifier::load_from(&dir, WEIGHTS_FILE).unwrap_err();
        assert!(matches!(err, LabError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("cargo lab train"), "the weights can be retrained: {err}");
    }
}
