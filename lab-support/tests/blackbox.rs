//! Notebook 05: the black box and its score-only attacks, transfer, the quantization defense that
//! hides its gradient, BPDA, the checklist, and the checks of the notebook's TODOs.

use lab_support::blackbox::{simba, square_attack, transfer_rates, BlackBox, SimbaConfig, SquareConfig};
use lab_support::check::{self, Outcome, Verdict, BPDA_CHECK};
use lab_support::checklist::{checklist, output_changes, SAME_OUTPUT_TOLERANCE};
use lab_support::prelude::*;

fn plain() -> Classifier {
    Classifier::pretrained().expect("the shipped model loads")
}

fn digits(n: usize) -> Dataset {
    mnist::test().unwrap().take(n).unwrap()
}

fn assert_fails(v: &Verdict, needle: &str) {
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    assert!(v.message.contains(needle), "expected {needle:?} in: {v}");
}

#[test]
fn the_black_box_counts_every_image_and_keeps_to_its_budget() {
    let set = digits(30);
    let model = plain();
    let black_box = BlackBox::with_budget(&model, 50);
    let p = black_box.probabilities(&set.images).unwrap();
    assert_eq!(p.dims(), [30, 10]);
    assert_eq!(black_box.queries(), 30);
    let err = black_box.predict(&set.images).unwrap_err().to_string();
    assert!(err.contains("query budget"), "{err}");
    assert_eq!(black_box.queries(), 30, "a refused call costs nothing");
    assert_eq!(black_box.queries_left(), Some(20));
    let labelled = black_box.label(&set.images.narrow(0, 0, 20).unwrap()).unwrap();
    assert_eq!(black_box.queries(), 50);
    // The labels are the model's answers (digit #18, a 3, it reads as an 8), not the truth.
    let answers: Vec<u32> =
        model.predict(&set.images.narrow(0, 0, 20).unwrap()).unwrap().iter().map(|p| p.class as u32).collect();
    assert_eq!(labelled.label_vec().unwrap(), answers);
    assert_ne!(answers, set.take(20).unwrap().label_vec().unwrap());
}

#[test]
fn simba_fools_the_plain_model_within_eps_and_counts_its_queries() {
    let set = digits(40);
    let model = plain();
    let black_box = BlackBox::new(&model);
    let result =
        simba(&black_box, &set.images, &set.labels, &SimbaConfig { eps: 0.3, ..SimbaConfig::default() }).unwrap();
    // Measured on 100 digits: 83% at eps 0.3, a median of 322 queries.
    assert!(result.success_rate() >= 0.7, "{}", result.success_rate());
    assert_eq!(black_box.queries(), result.queries.iter().sum::<usize>());
    assert!(result.queries.iter().all(|&q| q <= 1569));
    check::within_budget(&set.images, &result.adversarial, 0.3).unwrap();
    // The attack's own verdict agrees with the model's.
    let again: Vec<bool> = model
        .predict(&result.adversarial)
        .unwrap()
        .iter()
        .zip(set.label_vec().unwrap())
        .map(|(p, y)| p.class != y as usize)
        .collect();
    assert_eq!(again, result.fooled);
    let curve = result.success_within(&[0, 100, 1569]);
    assert!(curve[0].1 == 0.0 && curve[1].1 <= curve[2].1 && (curve[2].1 - result.success_rate() as f64).abs() < 1e-6);
}

#[test]
fn square_attack_fools_the_plain_model_and_barely_the_robust_one() {
    let set = digits(50);
    let config = SquareConfig { eps: 0.3, max_queries: 500, ..SquareConfig::default() };
    let on_plain = square_attack(&BlackBox::new(&plain()), &set.images, &set.labels, &config).unwrap();
    // Measured on 100 digits: all fooled, a median of 32 queries.
    assert!(on_plain.success_rate() >= 0.95, "{}", on_plain.success_rate());
    check::within_budget(&set.images, &on_plain.adversarial, 0.3).unwrap();
    let on_robust =
        square_attack(&BlackBox::new(&Classifier::robust().unwrap()), &set.images, &set.labels, &config).unwrap();
    assert!(on_robust.success_rate() <= 0.25, "{}", on_robust.success_rate());
    // The trace's margin falls as the attack goes.
    assert!(on_robust.trace.last().unwrap().loss < on_robust.trace[0].loss);
}

#[test]
fn bad_settings_are_refused_with_what_to_do() {
    let set = digits(4);
    let black_box = BlackBox::new(&plain());
    let err = simba(&black_box, &set.images, &set.labels, &SimbaConfig { max_queries: 0, ..SimbaConfig::default() })
        .unwrap_err();
    assert!(matches!(err, LabError::InvalidArgument { name: "max_queries", .. }), "{err}");
    let err = square_attack(&black_box, &set.images, &set.labels.narrow(0, 0, 3).unwrap(), &SquareConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("one per image"), "{err}");
    let err = plain().with_defense(Defense::Quantize { levels: 1 }).unwrap_err();
    assert!(matches!(err, LabError::InvalidArgument { name: "levels", .. }), "{err}");
    assert_eq!(black_box.queries(), 0);
}

#[test]
fn quantization_hides_the_gradient_and_bpda_finds_it_again() {
    let set = digits(100);
    let defended = check::quantized_model().unwrap();
    let objective = Objective::untargeted(&set.labels).unwrap();
    // The gradient through the quantizer is exactly zero.
    let g = input_gradient(
        &defended,
        &set.images.narrow(0, 0, 5).unwrap(),
        &Objective::untargeted(&set.labels.narrow(0, 0, 5).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(g.grad.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let config = PgdConfig::linf(0.2);
    let naive = defended
        .accuracy_on(&pgd(&defended, &set.images, &objective, &config).unwrap().adversarial, &set.labels)
        .unwrap();
    let bpda = defended
        .accuracy_on(&bpda_pgd(&defended, &set.images, &objective, &config).unwrap().adversarial, &set.labels)
        .unwrap();
    // Measured on 200 digits: 99.5% under naive PGD-40, 0% under BPDA.
    assert!(naive >= 0.95, "naive PGD {naive}");
    assert!(bpda <= 0.05, "BPDA {bpda}");
    // Without a defense, BPDA is PGD.
    let model = plain();
    let a = pgd(&model, &set.images, &objective, &config).unwrap().adversarial;
    let b = bpda_pgd(&model, &set.images, &objective, &config).unwrap().adversarial;
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn transfer_rates_have_white_box_success_on_the_diagonal() {
    let set = digits(100);
    let (model, robust) = (plain(), Classifier::robust().unwrap());
    let t = transfer_rates(&[("plain", &model), ("robust", &robust)], &set, 0.3).unwrap();
    assert!(t.rates[0][0] >= 0.99, "{:?}", t.rates);
    // Measured on 200 digits: 3% of the plain model's adversarials fool the robust one.
    assert!(t.rates[0][1] <= 0.15, "{:?}", t.rates);
    assert!(t.table().to_string().contains("robust"));
}

// The checklist on two models, a test each: each runs on one core, side by side.
#[test]
fn the_checklist_flags_the_quantized_model() {
    let masked = checklist(&check::quantized_model().unwrap(), &digits(100), 0.2).unwrap();
    assert!(!masked.items[0].passed, "{masked:?}");
    assert!(!masked.items[2].passed, "{masked:?}");
    assert!(!masked.items[3].passed, "rounding leaves no gradient: {masked:?}");
    assert!(masked.items[5].passed, "rounding is not random: {masked:?}");
}

#[test]
fn the_checklist_passes_the_robust_model() {
    let robust = checklist(&Classifier::robust().unwrap(), &digits(100), 0.2).unwrap();
    assert!(robust.passed(), "{robust:?}");
    assert_eq!(robust.items.len(), 6);
}

#[test]
fn a_noise_defense_answers_at_random_and_the_checklist_says_so() {
    let set = digits(100);
    let noisy = Classifier::noise_trained(0.25).unwrap().with_defense(Defense::Noise { sigma: 0.25 }).unwrap();
    let (gap, first, second) = output_changes(&noisy, &set).unwrap();
    assert!(gap > SAME_OUTPUT_TOLERANCE, "two calls gave the same logits: {gap}");
    // A randomized model is not a broken one: most digits stay right under the noise it was trained with.
    assert!(first >= 90 && second >= 90, "{first} {second}");
    for model in [Classifier::robust().unwrap(), check::quantized_model().unwrap()] {
        let (gap, first, second) = output_changes(&model, &set).unwrap();
        assert!(gap <= SAME_OUTPUT_TOLERANCE && first == second, "{gap} {first} {second}");
    }
    // Gradients go through the noise: it randomizes, it does not mask.
    let objective = Objective::untargeted(&set.labels).unwrap();
    let g = input_gradient(&noisy, &set.images, &objective).unwrap();
    let zero = per_image_l2(&g.grad).unwrap().to_vec1::<f32>().unwrap().iter().filter(|&&n| n == 0.0).count();
    assert_eq!(zero, 0);
    for sigma in [0.0, -0.1, 1.5, f32::NAN] {
        let err = Classifier::pretrained().unwrap().with_defense(Defense::Noise { sigma }).unwrap_err().to_string();
        assert!(err.contains("sigma") && err.contains("at most 1"), "{err}");
    }
}

/// The lab's own SimBA on one digit, written as a student would.
fn simba_solution(black_box: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize) -> Result<Tensor> {
    let original = x.flatten_all()?.to_vec1::<f32>()?;
    let mut best = original.clone();
    let ask = |pixels: &[f32]| -> Result<Vec<f32>> {
        Ok(black_box
            .probabilities(&Tensor::from_vec(pixels.to_vec(), (1, 1, 28, 28), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let rest =
        |probs: &[f32]| -> f32 { probs.iter().enumerate().filter(|&(j, _)| j != label as usize).map(|(_, p)| p).sum() };
    let probs = ask(&best)?;
    let (mut rest_best, mut queries) = (rest(&probs), 1);
    let mut fooled = top1(&probs).class != label as usize;
    'pixels: for pixel in SeededRng::new(0).permutation(784) {
        let i = pixel as usize;
        for sign in [1.0f32, -1.0] {
            if fooled || queries >= max_queries {
                break 'pixels;
            }
            let mut candidate = best.clone();
            candidate[i] = (original[i] + sign * eps).clamp(0.0, 1.0);
            if candidate[i] == best[i] {
                continue;
            }
            let probs = ask(&candidate)?;
            queries += 1;
            if rest(&probs) > rest_best {
                rest_best = rest(&probs);
                fooled = top1(&probs).class != label as usize;
                best = candidate;
                continue 'pixels;
            }
        }
    }
    Ok(Tensor::from_vec(best, (1, 1, 28, 28), &Device::Cpu)?)
}

#[test]
fn simba_check_passes_a_solution_and_names_typical_mistakes() {
    let v = check::simba_attack(simba_solution);
    assert!(v.passed(), "{v}");
    let v = check::simba_attack(|_: &BlackBox, _: &Tensor, _: u32, _: f32, _: usize| -> Result<Tensor> { todo!() });
    assert_eq!(v.outcome, Outcome::NotDone, "{v}");
    // Returned unchanged.
    assert_fails(&check::simba_attack(|_: &BlackBox, x: &Tensor, _: u32, _: f32, _: usize| Ok(x.clone())), "unchanged");
    // Asks past the budget: never stops.
    let greedy = |b: &BlackBox, x: &Tensor, _: u32, _: f32, _: usize| -> Result<Tensor> {
        loop {
            b.probabilities(x)?;
        }
    };
    assert_fails(&check::simba_attack(greedy), "query budget");
    // Asks about a pixel pushed out of [0, 1].
    let unclamped = |b: &BlackBox, x: &Tensor, _: u32, eps: f32, _: usize| -> Result<Tensor> {
        let pushed = (x - eps as f64)?;
        b.probabilities(&pushed)?;
        Ok(pushed)
    };
    assert_fails(&check::simba_attack(unclamped), "clamp every candidate");
    // A budget of its own.
    assert_fails(
        &check::simba_attack(|b: &BlackBox, x: &Tensor, l: u32, _: f32, q: usize| simba_solution(b, x, l, 0.4, q)),
        "moved by 0.400",
    );
    // Flipped comparison: keeps pushes that raise the true class's probability.
    let flipped = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| -> Result<Tensor> {
        let original = x.flatten_all()?.to_vec1::<f32>()?;
        let mut best = original.clone();
        let ask = |p: &[f32]| -> Result<f32> {
            Ok(b.probabilities(&Tensor::from_vec(p.to_vec(), (1, 1, 28, 28), &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1::<f32>()?[label as usize])
        };
        let mut p_best = ask(&best)?;
        for pixel in SeededRng::new(0).permutation(784).into_iter().take(max_queries - 1) {
            let mut c = best.clone();
            c[pixel as usize] = (original[pixel as usize] + eps).clamp(0.0, 1.0);
            let p = ask(&c)?;
            if p > p_best {
                p_best = p;
                best = c;
            }
        }
        Ok(Tensor::from_vec(best, (1, 1, 28, 28), &Device::Cpu)?)
    };
    assert_fails(&check::simba_attack(flipped), "flipped");
    // The numerical trap: comparing p_true, which is exactly 1.0 on confident digits.
    let saturated = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| {
        p_true_simba(b, x, label, eps, max_queries, |p, best| p < best)
    };
    assert_fails(&check::simba_attack(saturated), "p_true");
    // The same trap as a new student wrote it (issue 26): one sign, pixels in order, a push kept
    // when p_true is lower. It fooled 9 of the first 10 test digits, which have no saturated one.
    let in_order = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| -> Result<Tensor> {
        let original = x.flatten_all()?.to_vec1::<f32>()?;
        let mut best = original.clone();
        let ask = |p: &[f32]| ask_pixels(b, p);
        let mut p_best = ask(&best)?[label as usize];
        for i in 0..(max_queries - 1).min(784) {
            let mut c = best.clone();
            c[i] = (original[i] + eps).clamp(0.0, 1.0);
            let probs = ask(&c)?;
            if probs[label as usize] < p_best {
                p_best = probs[label as usize];
                best = c;
                if top1(&probs).class != label as usize {
                    break;
                }
            }
        }
        Ok(Tensor::from_vec(best, (1, 1, 28, 28), &Device::Cpu)?)
    };
    assert_fails(&check::simba_attack(in_order), "comparing p_true itself");
    // And with `<=`, which keeps every push on a saturated digit, the bad ones too.
    let at_most = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| {
        p_true_simba(b, x, label, eps, max_queries, |p, best| p <= best)
    };
    assert_fails(&check::simba_attack(at_most), "not `p_true`");
}

/// The black box's probabilities for one digit given as 784 pixels.
fn ask_pixels(b: &BlackBox, pixels: &[f32]) -> Result<Vec<f32>> {
    Ok(b.probabilities(&Tensor::from_vec(pixels.to_vec(), (1, 1, 28, 28), &Device::Cpu)?)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// SimBA as a student who compares `p_true` itself writes it (the numerical trap): random pixel
/// order, +eps then -eps, and a push kept when `keep(p_true, best so far)`.
fn p_true_simba(
    b: &BlackBox,
    x: &Tensor,
    label: u32,
    eps: f32,
    max_queries: usize,
    keep: fn(f32, f32) -> bool,
) -> Result<Tensor> {
    let original = x.flatten_all()?.to_vec1::<f32>()?;
    let mut best = original.clone();
    let (mut p_best, mut queries) = (ask_pixels(b, &best)?[label as usize], 1);
    'pixels: for pixel in SeededRng::new(0).permutation(784) {
        for sign in [1.0f32, -1.0] {
            if queries >= max_queries {
                break 'pixels;
            }
            let mut c = best.clone();
            c[pixel as usize] = (original[pixel as usize] + sign * eps).clamp(0.0, 1.0);
            let probs = ask_pixels(b, &c)?;
            queries += 1;
            if keep(probs[label as usize], p_best) {
                p_best = probs[label as usize];
                best = c;
                if top1(&probs).class != label as usize {
                    break 'pixels;
                }
                continue 'pixels;
            }
        }
    }
    Ok(Tensor::from_vec(best, (1, 1, 28, 28), &Device::Cpu)?)
}

/// The lab's BPDA attack, written as a student would.
fn bpda_solution(defended: &Classifier, x: &Tensor, labels: &Tensor, eps: f32) -> Result<Tensor> {
    let (network, defense) = (defended.without_defense(), defended.defense().expect("a defended model"));
    let objective = Objective::untargeted(labels)?;
    let mut x_adv = x.clone();
    for _ in 0..40 {
        let grad = input_gradient(&network, &defense.apply(&x_adv)?, &objective)?.grad;
        x_adv = clamp_pixels(&project_linf(&(x_adv - (grad.sign()? * (eps / 10.0) as f64)?)?, x, eps)?)?;
    }
    Ok(x_adv)
}

#[test]
fn bpda_check_passes_bpda_and_fails_an_attack_through_the_quantizer() {
    let v = check::bpda_attack(bpda_solution);
    assert!(v.passed(), "{v}");
    assert!(v.message.contains(&format!("{:.0}%", 100.0 * BPDA_CHECK.bound)), "{v}");
    // The typical mistake: differentiating through the quantizer, whose gradient is zero.
    let through = |defended: &Classifier, x: &Tensor, labels: &Tensor, eps: f32| -> Result<Tensor> {
        let objective = Objective::untargeted(labels)?;
        let mut x_adv = x.clone();
        for _ in 0..40 {
            let grad = input_gradient(defended, &x_adv, &objective)?.grad;
            x_adv = clamp_pixels(&project_linf(&(x_adv - (grad.sign()? * (eps / 10.0) as f64)?)?, x, eps)?)?;
        }
        Ok(x_adv)
    };
    assert_fails(&check::bpda_attack(through), "differentiated through the quantizer");
    // BPDA's gradient, but each step taken from the quantized image: small steps round back.
    let from_quantized = |defended: &Classifier, x: &Tensor, labels: &Tensor, eps: f32| -> Result<Tensor> {
        let (network, defense) = (defended.without_defense(), defended.defense().expect("a defended model"));
        let objective = Objective::untargeted(labels)?;
        let mut x_adv = x.clone();
        for _ in 0..40 {
            let seen = defense.apply(&x_adv)?;
            let grad = input_gradient(&network, &seen, &objective)?.grad;
            x_adv = clamp_pixels(&project_linf(&(seen - (grad.sign()? * (eps / 10.0) as f64)?)?, x, eps)?)?;
        }
        Ok(x_adv)
    };
    assert_fails(&check::bpda_attack(from_quantized), "step from `x_adv` itself");
    // The lab's PGD, naive, from a random start: moved, but the network sees the same digits.
    let naive = |d: &Classifier, x: &Tensor, labels: &Tensor, eps: f32| -> Result<Tensor> {
        Ok(pgd(d, x, &Objective::untargeted(labels)?, &PgdConfig::linf(eps))?.adversarial)
    };
    let v = check::bpda_attack(naive);
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    // Over budget, and digit by digit (too many forward passes).
    assert_fails(
        &check::bpda_attack(|d: &Classifier, x: &Tensor, l: &Tensor, _: f32| bpda_solution(d, x, l, 0.3)),
        "outside",
    );
    let one_by_one = |d: &Classifier, x: &Tensor, labels: &Tensor, eps: f32| -> Result<Tensor> {
        let parts = (0..x.dim(0)?)
            .map(|i| bpda_solution(d, &x.narrow(0, i, 1)?, &labels.narrow(0, i, 1)?, eps))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    };
    assert_fails(&check::bpda_attack(one_by_one), "forward passes");
    let v = check::bpda_attack(|_: &Classifier, _: &Tensor, _: &Tensor, _: f32| -> Result<Tensor> { todo!() });
    assert_eq!(v.outcome, Outcome::NotDone, "{v}");
}

#[test]
fn a_substitute_trained_on_the_black_box_answers_learns_the_task() {
    let black_box = BlackBox::new(&plain());
    let own = black_box.label(&mnist::train().unwrap().slice(50_000, 2000).unwrap().images).unwrap();
    assert_eq!(black_box.queries(), 2000);
    let (_, report) = train_on(&own, &TrainConfig { epochs: 2, seed: 7, ..TrainConfig::default() }, false).unwrap();
    // Measured: 91% after 3 epochs on 2,000 answers.
    assert!(report.test_accuracy > 0.8, "{}", report.test_accuracy);
    let bad = Dataset { labels: own.labels.narrow(0, 0, 10).unwrap(), ..own.clone() };
    assert!(train_on(&bad, &TrainConfig::default(), false).unwrap_err().to_string().contains("labels"));
}

#[test]
fn a_todo_done_by_the_lab_attack_it_asks_for_is_a_fail_that_names_it() {
    let named = |v: Verdict, name: &str| {
        assert_eq!(v.outcome, Outcome::Fail, "{v}");
        assert!(v.message.contains("write it yourself") && v.message.contains(&format!("`{name}`")), "{v}");
    };
    let via_simba = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| -> Result<Tensor> {
        let labels = Tensor::new(&[label], x.device())?;
        Ok(simba(b, x, &labels, &SimbaConfig { eps, max_queries, seed: 0 })?.adversarial)
    };
    named(check::simba_attack(via_simba), "simba");
    let via_square = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, max_queries: usize| -> Result<Tensor> {
        let labels = Tensor::new(&[label], x.device())?;
        Ok(square_attack(b, x, &labels, &SquareConfig { eps, max_queries, ..SquareConfig::default() })?.adversarial)
    };
    named(check::simba_attack(via_square), "square_attack");
    // White-box PGD on the model behind the black box (a student can load it) is no score-only attack.
    let white_box = |b: &BlackBox, x: &Tensor, label: u32, eps: f32, _: usize| -> Result<Tensor> {
        let labels = Tensor::new(&[label], x.device())?;
        let adv =
            pgd(&Classifier::pretrained()?, x, &Objective::untargeted(&labels)?, &PgdConfig::linf(eps))?.adversarial;
        b.probabilities(&adv)?;
        Ok(adv)
    };
    let v = check::simba_attack(white_box);
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    assert!(v.message.contains("score-only") && v.message.contains("`pgd`"), "{v}");
    let via_bpda = |d: &Classifier, x: &Tensor, labels: &Tensor, eps: f32| -> Result<Tensor> {
        Ok(bpda_pgd(d, x, &Objective::untargeted(labels)?, &PgdConfig::linf(eps))?.adversarial)
    };
    named(check::bpda_attack(via_bpda), "bpda_pgd");
}
