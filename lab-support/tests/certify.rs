//! Interval bound propagation on the real CNN: the bounds hold for every point tried, and no attack
//! breaks a certified digit.

use lab_support::attack::{pgd, Norm, PgdConfig};
use lab_support::certify::{certify, logit_bounds, margin_bounds, Bounds};
use lab_support::data::mnist;
use lab_support::evaluation::{evaluate, Evaluation};
use lab_support::grad::Objective;
use lab_support::model::Classifier;
use lab_support::prelude::*;
use lab_support::rng::SeededRng;

/// On 20 digits at eps 0.05 (f64): the logits of the clean digit, of 200 random points and 100
/// random corners of each box, and of PGD's adversarial images all lie inside the logit bounds,
/// and every margin `z_y - z_j` they reach is at least its lower bound. The margin bounds are
/// also at least as tight as subtracting two logit intervals.
#[test]
fn bounds_hold_for_random_points_corners_and_pgd_on_the_real_cnn() {
    let model = Classifier::robust().unwrap().to_dtype(DType::F64).unwrap();
    let set = mnist::test().unwrap().take(20).unwrap();
    let x = set.images.to_dtype(DType::F64).unwrap();
    let eps = 0.05;
    let logits = logit_bounds(&model, &x, eps).unwrap();
    let margins = margin_bounds(&model, &x, &set.labels, eps).unwrap();
    let boxes = Bounds::linf_box(&x, eps).unwrap();
    let mut rng = SeededRng::new(5);
    let mut tried = vec![x.clone()];
    for k in 0..300 {
        let u = rng.uniform_tensor(&[20, 1, 28, 28], 0.0, 1.0).unwrap().to_dtype(DType::F64).unwrap();
        let u = if k >= 200 { u.ge(0.5).unwrap().to_dtype(DType::F64).unwrap() } else { u };
        let width = (&boxes.hi - &boxes.lo).unwrap();
        tried.push((&boxes.lo + (u * width).unwrap()).unwrap());
    }
    let objective = Objective::untargeted(&set.labels).unwrap();
    // The attacks compute in f32: their result, rounded back into the f64 box.
    let attacked = pgd(&Classifier::robust().unwrap(), &set.images, &objective, &PgdConfig::linf(eps)).unwrap();
    let attacked = attacked.adversarial.to_dtype(DType::F64).unwrap();
    tried.push(attacked.maximum(&boxes.lo).unwrap().minimum(&boxes.hi).unwrap());
    let labels: Vec<u32> = set.labels.to_vec1().unwrap();
    let lower: Vec<Vec<f64>> = margins.to_vec2().unwrap();
    for point in &tried {
        assert!(boxes.contains(point, 1e-12).unwrap(), "a tried point is outside its box");
        let z = model.forward(point).unwrap();
        assert!(logits.contains(&z, 1e-9).unwrap(), "a point's logits left the logit bounds");
        let z: Vec<Vec<f64>> = z.to_vec2().unwrap();
        for (i, row) in z.iter().enumerate() {
            let y = labels[i] as usize;
            for j in 0..10 {
                assert!(
                    row[y] - row[j] >= lower[i][j] - 1e-9,
                    "digit {i}: margin to {j} is {} below its bound {}",
                    row[y] - row[j],
                    lower[i][j]
                );
            }
        }
    }
    let (lo, hi): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (logits.lo.to_vec2().unwrap(), logits.hi.to_vec2().unwrap());
    for i in 0..20 {
        let y = labels[i] as usize;
        for j in 0..10 {
            assert!(lower[i][j] >= lo[i][y] - hi[i][j] - 1e-9, "digit {i}, class {j}: margins looser than logits");
        }
    }
}

/// The certified model's certificates, tested by the lab's strongest evaluation (APGD-CE, APGD-DLR
/// toward all 9 wrong classes, Square Attack with 5,000 queries): on the digits among the first 100
/// that IBP certifies at eps 0.1 and 0.3, no attack finds anything, and at least 80 (0.1) and 60
/// (0.3) are certified. The robust (PGD-trained) model, as robust in practice, certifies far fewer.
#[test]
fn no_attack_breaks_a_certified_digit() {
    let model = Classifier::certified().unwrap();
    let set = mnist::test().unwrap().take(100).unwrap();
    for (eps, least) in [(0.1, 80), (0.3, 60)] {
        let proved = certify(&model, &set.images, &set.labels, eps).unwrap();
        let idx: Vec<u32> = (0..100).filter(|&i| proved[i as usize]).collect();
        assert!(idx.len() >= least, "only {} of 100 certified at eps {eps}", idx.len());
        let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
        let certified = Dataset {
            images: set.images.index_select(&idx, 0).unwrap(),
            labels: set.labels.index_select(&idx, 0).unwrap(),
            class_names: set.class_names,
        };
        let point = evaluate(&model, &certified, Norm::Linf, &[eps], &Evaluation::strongest()).unwrap().remove(0);
        assert_eq!(point.clean_errors, 0, "a certified digit is misread clean at eps {eps}");
        assert_eq!(point.accuracy, 1.0, "an attack broke a certified digit at eps {eps}: {:?}", point.broken_by);
        let robust = Classifier::robust().unwrap();
        let theirs = certify(&robust, &set.images, &set.labels, eps).unwrap().iter().filter(|&&p| p).count();
        assert!(theirs < idx.dim(0).unwrap() / 2, "the PGD-trained model certifies {theirs} at eps {eps}");
    }
}
