//! The fast conv blocks against plain candle: same logits, same input gradients, same weight
//! gradients, in f32 and f64, for batch sizes that do and do not fill the kernels' image groups.

use candle_core::{DType, Device, Tensor, Var};
use lab_support::data::mnist;
use lab_support::grad::Objective;
use lab_support::model::Classifier;
use lab_support::rng::SeededRng;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Digits plus some noise, so that no pooling window is an exact tie of zeros everywhere.
fn batch(n: usize, dtype: DType) -> Tensor {
    let digits = mnist::test().unwrap().take(n).unwrap().images;
    let noise = SeededRng::new(n as u64).uniform_tensor(digits.dims(), 0.0, 0.05).unwrap();
    ((digits * 0.95).unwrap() + noise).unwrap().to_dtype(dtype).unwrap()
}

/// The plain path breaks pooling ties with offsets of 1e-6 (f32) or 1e-13 (f64), so in f32 a window
/// whose two largest entries lie within 3e-6 may pool differently: logits are compared in both
/// types, gradients in f64, where that is vanishingly rare.
#[test]
fn fast_forward_and_input_gradient_match_plain_candle() {
    for dtype in [DType::F32, DType::F64] {
        let model = Classifier::pretrained().unwrap().to_dtype(dtype).unwrap();
        for n in [1, 3, 8, 17] {
            let x = batch(n, dtype);
            let objective = Objective::Targeted((0..n as u32).map(|i| (i * 3 + 1) % 10).collect());
            let mut out = Vec::new();
            for fast in [true, false] {
                let v = Var::from_tensor(&x).unwrap();
                let logits =
                    if fast { model.forward(v.as_tensor()) } else { model.forward_reference(v.as_tensor()) }.unwrap();
                let grads = objective.loss(&logits).unwrap().backward().unwrap();
                out.push((logits, grads.get(v.as_tensor()).expect("a gradient for the input").clone()));
            }
            let dl = max_abs_diff(&out[0].0, &out[1].0) / max_abs(&out[1].0);
            assert!(
                dl < if dtype == DType::F32 { 1e-5 } else { 1e-11 },
                "{dtype:?} batch {n}: logits differ by {dl:e} (relative)"
            );
            if dtype == DType::F64 {
                let dg = max_abs_diff(&out[0].1, &out[1].1) / max_abs(&out[1].1);
                assert!(dg < 1e-10, "batch {n}: input gradients differ by {dg:e} (relative)");
            }
        }
    }
}

#[test]
fn fast_weight_gradients_match_plain_candle_and_skip_a_constant_input() {
    let (model, vars) = Classifier::trainable(Classifier::pretrained().unwrap().parameters()).unwrap();
    let x = batch(19, DType::F32);
    let labels = mnist::test().unwrap().take(19).unwrap().labels;
    let fast = candle_nn::loss::cross_entropy(&model.forward(&x).unwrap(), &labels).unwrap().backward().unwrap();
    let slow =
        candle_nn::loss::cross_entropy(&model.forward_reference(&x).unwrap(), &labels).unwrap().backward().unwrap();
    for (name, v) in &vars {
        let (f, s) = (fast.get(v.as_tensor()).unwrap(), slow.get(v.as_tensor()).unwrap());
        let d = max_abs_diff(f, s) / max_abs(s);
        assert!(d < 1e-4, "gradient of {name} differs by {d:e} (relative)");
    }
    assert!(fast.get(&x).is_none(), "a constant training batch should get no gradient");
}

#[test]
fn frozen_weights_get_no_gradient_and_training_runs_are_repeatable() {
    let model = Classifier::pretrained().unwrap();
    let x = Var::from_tensor(&batch(20, DType::F32)).unwrap();
    let loss = Objective::targeted(3, 20).unwrap().loss(&model.forward(x.as_tensor()).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    for (name, t) in model.parameters() {
        if name.starts_with("conv") {
            assert!(grads.get(t).is_none(), "frozen {name} got a gradient");
        }
    }
    // Weight gradients are summed in a fixed order: two runs agree bit for bit.
    let w = Var::from_tensor(&model.parameters()["conv2.weight"]).unwrap();
    let mut params = model.parameters().clone();
    params.insert("conv2.weight".into(), w.as_tensor().clone());
    let trainable = Classifier::from_tensors(params).unwrap();
    let labels = mnist::test().unwrap().take(20).unwrap().labels;
    let run = || {
        let loss =
            candle_nn::loss::cross_entropy(&trainable.forward(&x.as_tensor().detach()).unwrap(), &labels).unwrap();
        loss.backward().unwrap().get(w.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn conv_block_rejects_shapes_that_do_not_fit() {
    let x = Tensor::zeros((1, 2, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let err = lab_support::model::kernels::conv_relu_pool(&x, &w, &b).unwrap_err().to_string();
    assert!(err.contains("do not fit"), "{err}");
    let err = lab_support::model::kernels::conv_relu_pool(
        &x.to_dtype(DType::F16).unwrap(),
        &w.narrow(1, 0, 2).unwrap().to_dtype(DType::F16).unwrap(),
        &b.to_dtype(DType::F16).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("f32 or f64"), "{err}");
}
