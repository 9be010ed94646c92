//! Adversarial training, the shipped robust model, and the stronger evaluation that judges it.

use lab_support::attack::{epsilon_sweep, pgd, Norm, PgdConfig};
use lab_support::check::{self, check_trainable, Outcome, Verdict};
use lab_support::data::mnist;
use lab_support::evaluation::{worst_case_sweep, Evaluation};
use lab_support::grad::{AttackLoss, Objective};
use lab_support::model::Classifier;
use lab_support::prelude::*;
use lab_support::train::{train, AdversarialTraining, TrainConfig};

fn plain() -> Classifier {
    Classifier::pretrained().expect("the shipped model loads")
}

fn robust() -> Classifier {
    Classifier::robust().expect("the shipped robust model loads")
}

#[test]
fn margin_loss_is_the_gap_between_the_class_and_the_best_other_logit() {
    let logits = Tensor::new(&[[1.0f32, 5.0, 2.0], [0.5, 0.0, 3.0]], &Device::Cpu).unwrap();
    let away = Objective::Untargeted(vec![1, 0]).margin_loss(&logits).unwrap().to_scalar::<f32>().unwrap();
    // (5 - 2) + (0.5 - 3)
    assert!((away - 0.5).abs() < 1e-5, "{away}");
    let toward = Objective::Targeted(vec![0, 2]).margin_loss(&logits).unwrap().to_scalar::<f32>().unwrap();
    // (5 - 1) + (0.5 - 3)
    assert!((toward - 1.5).abs() < 1e-5, "{toward}");
}

#[test]
fn pgd_with_the_margin_loss_fools_the_plain_model() {
    let model = plain();
    let set = mnist::test().unwrap().take(100).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    let config = PgdConfig { loss: AttackLoss::Margin, ..PgdConfig::linf(0.2) };
    let result = pgd(&model, &set.images, &objective, &config).unwrap();
    assert!(result.success_rate(&model, &objective).unwrap() >= 0.9);
    // The trace's loss is the margin: negative once the model is fooled.
    assert!(result.trace.last().unwrap().loss < 0.0, "{:?}", result.trace.last());
}

#[test]
fn restarts_only_ever_add_successes_and_need_a_random_start() {
    let model = plain();
    let set = mnist::test().unwrap().take(200).unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    // A short attack, where the start matters (measured: 31 of 200 digits fooled by one run, 38
    // by four).
    let once = PgdConfig { steps: 2, step_size: 0.06, ..PgdConfig::linf(0.12) };
    let four_starts = PgdConfig { restarts: 4, ..once };
    let a = pgd(&model, &set.images, &objective, &once).unwrap().successes(&model, &objective).unwrap();
    let result = pgd(&model, &set.images, &objective, &four_starts).unwrap();
    let b = result.successes(&model, &objective).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| !x || *y), "a digit fooled by the first run was lost by the restarts");
    assert!(
        b.iter().filter(|&&s| s).count() > a.iter().filter(|&&s| s).count(),
        "restarts found nothing more at eps 0.12"
    );
    let moved =
        (&result.adversarial - &set.images).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved <= 0.12 + 1e-6, "restarts broke the budget: {moved}");
    let err = pgd(&model, &set.images, &objective, &PgdConfig { random_start: None, ..four_starts }).unwrap_err();
    assert!(matches!(err, LabError::InvalidArgument { name: "restarts", .. }), "{err}");
    assert!(err.to_string().contains("random_start"), "the fix is named: {err}");
    let err = pgd(&model, &set.images, &objective, &PgdConfig { restarts: 0, ..once }).unwrap_err();
    assert!(matches!(err, LabError::InvalidArgument { name: "restarts", .. }), "{err}");
}

#[test]
fn the_worst_case_is_at_least_as_strong_as_one_pgd_run() {
    let model = plain();
    let set = mnist::test().unwrap().take(300).unwrap();
    let eps = [0.0, 0.06];
    let weak = epsilon_sweep(&model, &set, Norm::Linf, &eps, 10).unwrap();
    let strong = worst_case_sweep(&model, &set, Norm::Linf, &eps, &Evaluation::pgd(10, 2)).unwrap();
    assert_eq!(weak[0].accuracy, strong[0].accuracy, "clean accuracy differs");
    assert!(
        strong[1].accuracy < weak[1].accuracy,
        "worst case {} is not below one run {}",
        strong[1].accuracy,
        weak[1].accuracy
    );
    let err = worst_case_sweep(&model, &set, Norm::Linf, &eps, &Evaluation { attacks: vec![] }).unwrap_err();
    assert!(err.to_string().contains("at least one attack"), "{err}");
}

#[test]
fn adversarial_training_is_seeded_and_watches_robust_accuracy() {
    let adversarial =
        Some(AdversarialTraining { eps: 0.1, steps: 2, ramp_epochs: 0.5, ..AdversarialTraining::shipped() });
    let config =
        TrainConfig { epochs: 1, batch_size: 32, limit: Some(320), seed: 5, adversarial, ..TrainConfig::default() };
    let (a, report) = train(&config, false).unwrap();
    let (b, _) = train(&config, false).unwrap();
    for (name, ta) in a.parameters() {
        let diff = (ta - &b.parameters()[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name} differs between two adversarial runs with the same seed");
    }
    assert_eq!(report.steps, 10);
    assert!(!report.history.is_empty() && report.history.iter().all(|v| v.robust.is_some()));
    // The budget ramps up over the first half epoch, then stays.
    assert!(report.history[0].eps < 0.1 && report.history.last().unwrap().eps == 0.1, "{:?}", report.history);
    let bad =
        TrainConfig { adversarial: Some(AdversarialTraining { steps: 0, ..AdversarialTraining::shipped() }), ..config };
    assert!(train(&bad, false).unwrap_err().to_string().contains("at least 1 step"));
}

/// A hand-written adversarial step: 7 signed steps of 0.3 eps along `direction` times the
/// gradient of the untargeted objective (-1 descends it, as it should), projected or not, then
/// one weight step on the result.
fn sign_steps(
    m: &Classifier,
    opt: &mut candle_nn::AdamW,
    x: &Tensor,
    y: &Tensor,
    eps: f32,
    direction: f64,
    project: bool,
) -> Result<Tensor> {
    let objective = Objective::untargeted(y)?;
    let mut x_adv = x.clone();
    for _ in 0..7 {
        let g = input_gradient(&m.frozen(), &x_adv, &objective)?;
        let stepped = (&x_adv + (g.grad.sign()? * (direction * 0.3 * eps as f64))?)?;
        x_adv = clamp_pixels(&if project { project_linf(&stepped, x, eps)? } else { stepped })?;
    }
    opt.backward_step(&loss::cross_entropy(&m.forward(&x_adv)?, y)?)?;
    Ok(x_adv)
}

fn assert_fails_with(v: Verdict, cause: &str) {
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    assert!(v.message.contains(cause), "expected `{cause}` in: {v}");
}

/// Notebook 04's adversarial training step, written as a student writes it (the library keeps its
/// own reference private: a notebook must not reach it).
fn reference_adversarial_step(
    model: &Classifier,
    opt: &mut candle_nn::AdamW,
    x: &Tensor,
    y: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let config = PgdConfig { steps: 7, step_size: 0.3 * eps, ..PgdConfig::linf(eps) };
    let x_adv = pgd(&model.frozen(), x, &Objective::untargeted(y)?, &config)?.adversarial;
    opt.backward_step(&loss::cross_entropy(&model.forward(&x_adv)?, y)?)?;
    Ok(x_adv)
}

#[test]
fn adversarial_step_check_passes_the_reference_and_names_typical_mistakes() {
    let v = check::adversarial_step(reference_adversarial_step);
    assert!(v.passed(), "{v}");
    // Stepping on the clean batch, after attacking it.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            let (_, _, mut spare) = check_trainable(m.parameters())?;
            let x_adv = reference_adversarial_step(&m.frozen(), &mut spare, x, y, eps)?;
            opt.backward_step(&loss::cross_entropy(&m.forward(x)?, y)?)?;
            Ok(x_adv)
        }),
        "stepped on the clean batch",
    );
    // No attack at all.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, _eps: f32| {
            opt.backward_step(&loss::cross_entropy(&m.forward(x)?, y)?)?;
            Ok(x.clone())
        }),
        "must attack",
    );
    // Attacking, stepping on the attacked batch, and returning the clean one.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            reference_adversarial_step(m, opt, x, y, eps)?;
            Ok(x.clone())
        }),
        "you returned `x` itself",
    );
    // Gradient ascent on the weights.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            let config = PgdConfig { steps: 7, step_size: 0.3 * eps, ..PgdConfig::linf(eps) };
            let x_adv = pgd(&m.frozen(), x, &Objective::untargeted(y)?, &config)?.adversarial;
            opt.backward_step(&loss::cross_entropy(&m.forward(&x_adv)?, y)?.neg()?)?;
            Ok(x_adv)
        }),
        "climbed the loss",
    );
    // Probabilities fed to the loss.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            let config = PgdConfig { steps: 7, step_size: 0.3 * eps, ..PgdConfig::linf(eps) };
            let x_adv = pgd(&m.frozen(), x, &Objective::untargeted(y)?, &config)?.adversarial;
            let probs = candle_nn::ops::softmax(&m.forward(&x_adv)?, D::Minus1)?;
            opt.backward_step(&loss::cross_entropy(&probs, y)?)?;
            Ok(x_adv)
        }),
        "fed probabilities",
    );
    // Forgetting to project: steps that add up past eps.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            sign_steps(m, opt, x, y, eps, -1.0, false)
        }),
        "not projected",
    );
    // Climbing instead of descending the untargeted objective.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            sign_steps(m, opt, x, y, eps, 1.0, true)
        }),
        "climbs the objective",
    );
    // Attacking but never stepping the weights.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, _opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            let (_, _, mut spare) = check_trainable(m.parameters())?;
            reference_adversarial_step(&m.frozen(), &mut spare, x, y, eps)
        }),
        "did not move",
    );
    // A budget written into the function: the check runs at eps 0.25.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, _eps: f32| {
            reference_adversarial_step(m, opt, x, y, 0.3)
        }),
        "a budget of its own",
    );
    // The loss computed through the frozen view: no weight gets a gradient.
    assert_fails_with(
        check::adversarial_step(|m: &Classifier, opt: &mut candle_nn::AdamW, x: &Tensor, y: &Tensor, eps: f32| {
            let f = m.frozen();
            let (_, _, mut spare) = check_trainable(m.parameters())?;
            let x_adv = reference_adversarial_step(&f, &mut spare, x, y, eps)?;
            opt.backward_step(&loss::cross_entropy(&f.forward(&x_adv)?, y)?)?;
            Ok(x_adv)
        }),
        "not `model.frozen()`",
    );
    let todo = check::adversarial_step(
        |_: &Classifier, _: &mut candle_nn::AdamW, _: &Tensor, _: &Tensor, _: f32| -> Result<Tensor> {
            todo!("attack, then step")
        },
    );
    assert_eq!(todo.outcome, Outcome::NotDone, "{todo}");
}

#[test]
fn the_shipped_robust_model_is_accurate_and_holds_at_eps_0_3() {
    let model = robust();
    let test = mnist::test().unwrap();
    let clean = model.accuracy(&test).unwrap();
    assert!(clean >= 0.985, "clean accuracy {clean}");
    // A quick guard (data/models/README.md's numbers come from `cargo lab eval`, the strongest
    // evaluation on all 10,000 digits): PGD-20 with both losses on 300 digits.
    let set = test.take(300).unwrap();
    let evaluation = Evaluation::pgd(20, 1);
    let curve = worst_case_sweep(&model, &set, Norm::Linf, &[0.3], &evaluation).unwrap();
    assert!(curve[0].accuracy >= 0.8, "robust accuracy at 0.3: {}", curve[0].accuracy);
    let plain_curve = worst_case_sweep(&plain(), &set, Norm::Linf, &[0.3], &evaluation).unwrap();
    assert!(plain_curve[0].accuracy < 0.05, "the plain model holds {} at 0.3?", plain_curve[0].accuracy);
}

#[test]
fn the_ensemble_counts_every_digit_once_and_is_no_weaker_than_its_first_attack() {
    use lab_support::evaluation::{evaluate, robustness_table, Attack};
    let model = robust();
    let set = mnist::test().unwrap().take(100).unwrap();
    let light = evaluate(&model, &set, Norm::Linf, &[0.0, 0.3], &Evaluation::light()).unwrap();
    let first_alone = Evaluation { attacks: vec![Evaluation::light().attacks[0]] };
    let alone = evaluate(&model, &set, Norm::Linf, &[0.3], &first_alone).unwrap();
    assert!(light[0].broken_by.is_empty() && light[1].broken_by.len() == 3, "{light:?}");
    for p in &light {
        let broken: usize = p.broken_by.iter().map(|(_, n)| n).sum();
        let robust = (p.accuracy * set.len() as f32).round() as usize;
        assert_eq!(robust + p.clean_errors + broken, set.len(), "a digit counted twice or lost: {p:?}");
    }
    assert_eq!(light[1].broken_by[0], alone[0].broken_by[0], "the first attack sees the same digits alone");
    assert!(light[1].accuracy <= alone[0].accuracy && light[1].accuracy < light[0].accuracy, "{light:?} {alone:?}");
    let table = format!("{:?}", robustness_table(&light));
    assert!(table.contains("broken by Square Attack (1000 queries)"), "{table}");
    // Square Attack is L-inf only: under L2 it is left out, not run at the wrong norm.
    let l2 = evaluate(&model, &set.take(20).unwrap(), Norm::L2, &[1.0], &Evaluation::light()).unwrap();
    assert!(l2[0].broken_by.iter().all(|(name, _)| !name.contains("Square")), "{l2:?}");
    let err = evaluate(
        &model,
        &set,
        Norm::Linf,
        &[0.3],
        &Evaluation { attacks: vec![Attack::ApgdDlr { steps: 10, targets: 10 }] },
    )
    .unwrap_err();
    assert!(err.to_string().contains("nine wrong classes"), "{err}");
}
