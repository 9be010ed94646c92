//! The shipped model and the reference attacks, on real test digits.

use lab_support::attack::{fgsm, pgd, targeted_descent, DescentConfig, Norm, PgdConfig};
use lab_support::data::mnist;
use lab_support::grad::{per_image_l2, per_image_linf, Objective};
use lab_support::model::Classifier;
use lab_support::prelude::*;

fn model() -> Classifier {
    Classifier::pretrained().expect("the shipped model loads")
}

#[test]
fn shipped_model_reaches_99_percent_on_the_test_set() {
    let acc = model().accuracy(&mnist::test().unwrap()).unwrap();
    assert!(acc >= 0.990, "test accuracy {acc}");
}

#[test]
fn pgd_linf_at_0_3_fools_the_model_on_95_percent_of_500_digits() {
    let model = model();
    let set = mnist::test().unwrap().take(500).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let result = pgd(&model, &set.images, &objective, &PgdConfig::linf(0.3)).unwrap();
    let rate = result.success_rate(&model, &objective).unwrap();
    assert!(rate >= 0.95, "only {rate} misclassified");
    let delta = (&result.adversarial - &set.images).unwrap();
    let linf = per_image_linf(&delta).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(linf <= 0.3 + 1e-6, "perturbation {linf} breaks eps");
    let (lo, hi) = (
        result.adversarial.min_all().unwrap().to_scalar::<f32>().unwrap(),
        result.adversarial.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(lo >= 0.0 && hi <= 1.0, "pixels outside [0,1]: {lo}..{hi}");
    // The trace starts at the (random) start and ends at the result, 41 lines for 40 steps.
    assert_eq!(result.trace.len(), 41);
    assert!(result.trace.last().unwrap().class_prob < result.trace[0].class_prob);
}

#[test]
fn targeted_pgd_reaches_its_target_on_most_digits() {
    let model = model();
    let set = mnist::test().unwrap().take(100).unwrap();
    let targets: Vec<u32> = set.label_vec().unwrap().iter().map(|l| (l + 1) % 10).collect();
    let objective = Objective::Targeted(targets);
    let config = PgdConfig { steps: 60, ..PgdConfig::linf(0.3) };
    let result = pgd(&model, &set.images, &objective, &config).unwrap();
    let rate = result.success_rate(&model, &objective).unwrap();
    assert!(rate >= 0.8, "only {rate} reached their target");
}

#[test]
fn pgd_l2_stays_inside_its_ball() {
    let model = model();
    let set = mnist::test().unwrap().take(50).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let result = pgd(&model, &set.images, &objective, &PgdConfig::l2(3.0)).unwrap();
    let norms = per_image_l2(&(&result.adversarial - &set.images).unwrap()).unwrap().to_vec1::<f32>().unwrap();
    assert!(norms.iter().all(|&n| n <= 3.0 + 1e-3), "{norms:?}");
    let rate = result.success_rate(&model, &objective).unwrap();
    assert!(rate >= 0.5, "L2 PGD at 3.0 fooled only {rate}");
    assert_eq!(PgdConfig::l2(3.0).norm, Norm::L2);
}

#[test]
fn fgsm_is_weaker_than_pgd_at_the_same_budget() {
    let model = model();
    let set = mnist::test().unwrap().take(200).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let one_step = fgsm(&model, &set.images, &objective, 0.1).unwrap().success_rate(&model, &objective).unwrap();
    let many =
        pgd(&model, &set.images, &objective, &PgdConfig::linf(0.1)).unwrap().success_rate(&model, &objective).unwrap();
    assert!(many > one_step, "PGD {many} should beat FGSM {one_step}");
}

#[test]
fn the_seeds_targeted_descent_turns_a_digit_into_the_target() {
    let model = model();
    let (x, label) = mnist::test().unwrap().get(0).unwrap();
    let target = (label + 3) % 10;
    let result =
        targeted_descent(&model, &x, target, &DescentConfig { step_size: 0.05, steps: 200, eps: None }).unwrap();
    let p = model.predict(&result.adversarial).unwrap()[0];
    assert_eq!(p.class, target as usize, "predicted {p:?}");
    let losses: Vec<f32> = result.trace.iter().map(|t| t.loss).collect();
    assert!(losses.last().unwrap() < &losses[0]);
}

#[test]
fn epsilon_sweep_gives_a_falling_robustness_curve() {
    let model = model();
    let set = mnist::test().unwrap().slice(1000, 600).unwrap();
    let curve = epsilon_sweep(&model, &set, Norm::Linf, &[0.0, 0.05, 0.15, 0.3], 10).unwrap();
    let acc: Vec<f32> = curve.iter().map(|p| p.accuracy).collect();
    assert_eq!(acc[0], model.accuracy(&set).unwrap(), "at eps 0 the curve starts at the clean accuracy");
    assert!(acc.windows(2).all(|w| w[1] <= w[0]), "accuracy should fall as eps grows: {acc:?}");
    assert!(acc[3] < 0.2, "PGD at 0.3 should leave little accuracy: {acc:?}");
    assert_invalid(epsilon_sweep(&model, &set, Norm::Linf, &[-0.1], 10), "eps");
    assert!(epsilon_sweep(&model, &set, Norm::L2, &[1.0], 0).is_err());
}

#[test]
fn attacks_reject_bad_budgets_and_targets() {
    let model = model();
    let (x, label) = mnist::test().unwrap().get(0).unwrap();
    let objective = Objective::Untargeted(vec![label]);
    assert_invalid(pgd(&model, &x, &objective, &PgdConfig::linf(-0.1)), "eps");
    assert_invalid(fgsm(&model, &x, &objective, f32::INFINITY), "eps");
    assert_invalid(targeted_descent(&model, &x, 10, &DescentConfig::default()), "class");
    let zero_step = DescentConfig { step_size: 0.0, ..DescentConfig::default() };
    assert_invalid(targeted_descent(&model, &x, 1, &zero_step), "step_size");
    assert_invalid(pgd(&model, &x, &Objective::Targeted(vec![12]), &PgdConfig::linf(0.1)), "class");
}

#[test]
fn weights_file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("lab-weights-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::copy(lab_support::data::data_dir().join("SHA256SUMS"), dir.join("SHA256SUMS")).unwrap();
    let missing = Classifier::load_from(&dir, "models/lab-cnn.safetensors").unwrap_err().to_string();
    assert!(missing.contains("lab-cnn.safetensors") && missing.contains("git checkout"), "{missing}");
    std::fs::write(dir.join("models/lab-cnn.safetensors"), b"not weights").unwrap();
    let corrupt = Classifier::load_from(&dir, "models/lab-cnn.safetensors").unwrap_err();
    assert!(matches!(corrupt, LabError::HashMismatch { .. }), "{corrupt}");
}

#[test]
fn bad_attack_arguments_are_errors_not_aborts() {
    let model = model();
    let set = mnist::test().unwrap().take(4).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    // An allocation of 2^40 trace lines would abort the kernel.
    let huge = PgdConfig { steps: 1 << 40, ..PgdConfig::linf(0.1) };
    let msg = assert_invalid(pgd(&model, &set.images, &objective, &huge), "steps");
    assert!(msg.contains("100000"), "the limit is named: {msg}");
    let long = DescentConfig { steps: usize::MAX, ..DescentConfig::default() };
    assert_invalid(targeted_descent(&model, &set.images, 3, &long), "steps");
    // A budget of 0 leaves the images as they are, whatever the step size.
    for result in [
        pgd(&model, &set.images, &objective, &PgdConfig::linf(0.0)).unwrap(),
        fgsm(&model, &set.images, &objective, 0.0).unwrap(),
    ] {
        assert_eq!(
            per_image_linf(&(&result.adversarial - &set.images).unwrap())
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
    // Pixels in 0..255 are refused, with how to scale them.
    let scaled = (&set.images * 255.0).unwrap();
    let msg = pgd(&model, &scaled, &objective, &PgdConfig::linf(0.1)).unwrap_err().to_string();
    assert!(msg.contains("/ 255.0"), "{msg}");
    assert!(model.predict(&scaled).unwrap_err().to_string().contains("[0, 1]"));
}

#[test]
fn success_rate_checks_its_objective() {
    let model = model();
    let set = mnist::test().unwrap().take(4).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let result = fgsm(&model, &set.images, &objective, 0.1).unwrap();
    let short = Objective::Untargeted(vec![1, 2]);
    assert!(result.success_rate(&model, &short).unwrap_err().to_string().contains("one class per image"));
    let out_of_range = Objective::Targeted(vec![42; 4]);
    assert!(result.success_rate(&model, &out_of_range).unwrap_err().to_string().contains("0..=9"));
}

#[test]
fn the_forward_pass_checks_shape_and_type_first() {
    let model = model();
    let tiny = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    for result in [model.forward_reference(&tiny), model.forward(&tiny)] {
        assert!(result.unwrap_err().to_string().contains("[N, 1, 28, 28]"));
    }
    let (x, _) = mnist::test().unwrap().get(0).unwrap();
    let msg = model.forward(&x.to_dtype(DType::F64).unwrap()).unwrap_err().to_string();
    assert!(msg.contains("F64") && msg.contains("to_dtype(DType::F32)"), "{msg}");
    let msg = model.logits(&(x * 255.0).unwrap().to_dtype(DType::U8).unwrap()).unwrap_err().to_string();
    assert!(msg.contains("/ 255.0"), "{msg}");
}

/// Asserts that `result` is the error for argument `name`, and returns its message.
fn assert_invalid<T: std::fmt::Debug>(result: lab_support::Result<T>, name: &str) -> String {
    match result {
        Err(e @ LabError::InvalidArgument { name: got, .. }) if got == name => e.to_string(),
        other => panic!("expected an InvalidArgument error for `{name}`, got {other:?}"),
    }
}

#[test]
fn apgd_finds_adversarial_digits_that_fixed_step_pgd_misses_on_the_robust_model() {
    let robust = Classifier::robust().unwrap();
    let set = mnist::test().unwrap().take(200).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let steps = 20;
    let fixed = PgdConfig { steps, step_size: 2.5 * 0.3 / steps as f32, ..PgdConfig::linf(0.3) };
    let by_pgd = pgd(&robust, &set.images, &objective, &fixed).unwrap().successes(&robust, &objective).unwrap();
    let by_apgd = apgd(&robust, &set.images, &objective, &ApgdConfig { steps, ..ApgdConfig::linf(0.3) })
        .unwrap()
        .successes(&robust, &objective)
        .unwrap();
    let count = |v: &[bool]| v.iter().filter(|&&f| f).count();
    let only_apgd = by_pgd.iter().zip(&by_apgd).filter(|(&p, &a)| a && !p).count();
    assert!(
        count(&by_apgd) > count(&by_pgd) && only_apgd >= 1,
        "APGD fooled {} digits, PGD {} (APGD alone: {only_apgd})",
        count(&by_apgd),
        count(&by_pgd)
    );
}

#[test]
fn apgd_stays_in_its_budget_and_is_the_same_run_for_a_seed() {
    let model = model();
    let set = mnist::test().unwrap().take(30).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    for (config, norm_of) in [
        (
            ApgdConfig { steps: 15, ..ApgdConfig::linf(0.1) },
            per_image_linf as fn(&Tensor) -> lab_support::Result<Tensor>,
        ),
        (ApgdConfig { steps: 15, ..ApgdConfig::l2(1.5) }, per_image_l2),
        (
            ApgdConfig { steps: 15, loss: ApgdLoss::TargetedDlr { rank: 2 }, restarts: 2, ..ApgdConfig::linf(0.1) },
            per_image_linf,
        ),
    ] {
        let a = apgd(&model, &set.images, &objective, &config).unwrap();
        let b = apgd(&model, &set.images, &objective, &config).unwrap();
        let same =
            (&a.adversarial - &b.adversarial).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same, 0.0, "{config:?}: two runs with one seed differ");
        let moved =
            norm_of(&(&a.adversarial - &set.images).unwrap()).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(moved <= config.eps + 1e-5, "{config:?}: moved {moved}");
        let (lo, hi) = (
            a.adversarial.min_all().unwrap().to_scalar::<f32>().unwrap(),
            a.adversarial.max_all().unwrap().to_scalar::<f32>().unwrap(),
        );
        assert!(lo >= 0.0 && hi <= 1.0, "{config:?}: pixels outside [0, 1]: {lo}..{hi}");
        assert!(a.success_rate(&model, &objective).unwrap() > 0.0, "{config:?} fooled nothing");
        let other = apgd(&model, &set.images, &objective, &ApgdConfig { random_start: Some(9), ..config }).unwrap();
        let diff = (&a.adversarial - &other.adversarial).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.0, "{config:?}: another seed gave the same images");
    }
    let targeted = Objective::targeted(3, set.len()).unwrap();
    let toward = apgd(&model, &set.images, &targeted, &ApgdConfig { steps: 30, ..ApgdConfig::linf(0.3) }).unwrap();
    assert!(toward.success_rate(&model, &targeted).unwrap() >= 0.8, "targeted APGD reached 3 too rarely");
}

#[test]
fn apgd_rejects_what_it_cannot_do() {
    let model = model();
    let set = mnist::test().unwrap().take(3).unwrap();
    let labels = Objective::untargeted(&set.labels).unwrap();
    let dlr = |rank| ApgdConfig { loss: ApgdLoss::TargetedDlr { rank }, ..ApgdConfig::linf(0.1) };
    let err = apgd(&model, &set.images, &Objective::targeted(3, 3).unwrap(), &dlr(1)).unwrap_err();
    assert!(err.to_string().contains("untargeted objective"), "{err}");
    assert_invalid(apgd(&model, &set.images, &labels, &dlr(0)), "rank");
    assert_invalid(apgd(&model, &set.images, &labels, &dlr(10)), "rank");
    let err =
        apgd(&model, &set.images, &labels, &ApgdConfig { restarts: 3, random_start: None, ..ApgdConfig::linf(0.1) });
    assert!(assert_invalid(err, "restarts").contains("random_start"));
    assert_invalid(apgd(&model, &set.images, &labels, &ApgdConfig::linf(-0.1)), "eps");
}
