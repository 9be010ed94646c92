//! The checks' own tests: each right answer passes, and each typical mistake is named.

use super::*;
use crate::approx::Mlp;
use crate::data::mnist;
use crate::grad::{clamp_pixels, input_gradient, normalize_l2, per_image_linf, project_l2, project_linf, Objective};
use crate::model::Classifier;
use candle_core::{Var, D};

use super::nb03::{reference_craft, reference_untargeted_l2};
use crate::attack::{bpda_pgd, pgd, targeted_descent, DescentConfig, PgdConfig};

/// Notebook 03's TODO 1 as a student writes it (the lab's `input_gradient` does the whole job, and
/// the check refuses a function that calls it).
fn reference_grad(model: &Classifier, x: &Tensor, target: u32) -> Result<Tensor> {
    let xv = Var::from_tensor(x)?;
    let loss = candle_nn::loss::cross_entropy(&model.forward(xv.as_tensor())?, &Tensor::new(&[target], x.device())?)?;
    Ok(loss.backward()?.get(xv.as_tensor()).cloned().expect("a gradient for the input"))
}

fn assert_fails_with(v: Verdict, cause: &str) {
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    assert!(v.message.contains(cause), "expected the cause `{cause}` in: {v}");
}

#[test]
fn train_step_check_passes_the_reference_and_names_typical_mistakes() {
    assert!(train_step(Mlp::reference_step).passed());
    let flipped = |mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64| mlp.reference_step(xs, ys, -lr);
    assert_fails_with(train_step(flipped), "sign is flipped");
    let forgot_set =
        |mlp: &Mlp, xs: &Tensor, ys: &Tensor, _lr: f64| -> Result<f32> { Ok(mlp.loss(xs, ys)?.to_scalar::<f32>()?) };
    assert_fails_with(train_step(forgot_set), "never written back");
    let doubled = |mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64| mlp.reference_step(xs, ys, 2.0 * lr);
    assert_fails_with(train_step(doubled), "times the right size");
}

#[test]
fn input_grad_check_passes_the_reference_and_names_typical_mistakes() {
    assert!(input_grad(reference_grad).passed());
    let flipped = |m: &Classifier, x: &Tensor, t: u32| Ok(reference_grad(m, x, t)?.neg()?);
    assert_fails_with(input_grad(flipped), "sign is flipped");
    let on_probabilities = |m: &Classifier, x: &Tensor, t: u32| -> Result<Tensor> {
        let xv = Var::from_tensor(x)?;
        let probs = candle_nn::ops::softmax(&m.forward(xv.as_tensor())?, D::Minus1)?;
        let loss = candle_nn::loss::cross_entropy(&probs, &Tensor::new(&[t], x.device())?)?;
        Ok(loss.backward()?.get(xv.as_tensor()).cloned().unwrap())
    };
    assert_fails_with(input_grad(on_probabilities), "probabilities instead of logits");
    let via_softmax_last_dim = |m: &Classifier, x: &Tensor, t: u32| -> Result<Tensor> {
        let xv = Var::from_tensor(x)?;
        let probs = candle_nn::ops::softmax_last_dim(&m.forward(xv.as_tensor())?)?;
        let loss = probs.narrow(1, t as usize, 1)?.log()?.neg()?.sum_all()?;
        Ok(loss.backward()?.get(xv.as_tensor()).cloned().unwrap())
    };
    assert_fails_with(input_grad(via_softmax_last_dim), "softmax_last_dim");
    let unfinished = |_: &Classifier, _: &Tensor, _: u32| -> Result<Tensor> { todo!("TODO 1") };
    let v = input_grad(unfinished);
    assert_eq!(v.outcome, Outcome::NotDone, "{v}");
    assert!(v.to_string().contains("todo!()"), "{v}");
}

#[test]
fn descent_step_check_passes_the_reference_and_names_typical_mistakes() {
    assert!(descent_step(|x: &Tensor, g: &Tensor, s: f64| clamp_pixels(&(x - (g * s)?)?)).passed());
    assert_fails_with(descent_step(|x: &Tensor, g: &Tensor, s: f64| Ok((x - (g * s)?)?)), "not clamped");
    assert_fails_with(descent_step(|x: &Tensor, g: &Tensor, s: f64| clamp_pixels(&(x + (g * s)?)?)), "sign is flipped");
    assert_fails_with(descent_step(|x: &Tensor, g: &Tensor, s: f64| clamp_pixels(&(x - (g.sign()? * s)?)?)), "FGSM");
}

#[test]
fn craft_check_passes_the_reference_and_catches_a_broken_budget() {
    assert!(craft(reference_craft).passed());
    let no_projection =
        |m: &Classifier, x: &Tensor, t: u32, _eps: f32, steps: usize, s: f64| reference_craft(m, x, t, 10.0, steps, s);
    assert_fails_with(craft(no_projection), "eps was broken");
    let uphill =
        |m: &Classifier, x: &Tensor, t: u32, eps: f32, steps: usize, s: f64| reference_craft(m, x, t, eps, steps, -s);
    assert_fails_with(craft(uphill), "wrong way");
}

/// The student's loop of notebook 03 (plain gradient steps, projected), as `solve` would call it.
fn loop_solution(steps: usize, step_size: f64) -> impl Fn(&Classifier, &Challenge) -> Result<Tensor> {
    move |m: &Classifier, c: &Challenge| {
        Ok(reference_craft(m, &c.original, c.target, c.eps, steps, step_size)?
            .pop()
            .unwrap_or_else(|| c.original.clone()))
    }
}

#[test]
fn the_challenge_needs_thought_but_is_solvable_within_its_rules() {
    let model = Classifier::pretrained().unwrap();
    let c = Challenge::new().unwrap();
    // Ten steps of a larger size get there, within eps and within the budget.
    let v = challenge(loop_solution(10, 2.0));
    assert!(v.passed(), "{v}");
    let adv = loop_solution(10, 2.0)(&model, &c).unwrap();
    let moved = per_image_linf(&(&adv - &c.original).unwrap()).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(moved <= c.eps + 1e-6);
    // The settings a student tries first fail: "Watch it work"'s 100 steps of 0.1 break the
    // budget, and 10 steps of 0.1 fall short.
    assert_fails_with(challenge(loop_solution(100, 0.1)), "fewer, larger steps");
    assert_fails_with(challenge(loop_solution(10, 0.1)), "larger step sizes");
    // Not by luck: one FGSM step at the same eps does not get there.
    let objective = Objective::targeted(c.target, 1).unwrap();
    let one_step = crate::attack::fgsm(&model, &c.original, &objective, c.eps).unwrap().adversarial;
    assert!(!judge_challenge(&model, &c, &one_step).passed());
    // And doing nothing fails.
    assert_fails_with(challenge(|_: &Classifier, c: &Challenge| Ok(c.original.clone())), "not there yet");
}

#[test]
fn messages_are_plain_text_and_say_what_came_back() {
    let flipped = descent_step(|x: &Tensor, g: &Tensor, s: f64| clamp_pixels(&(x + (g * s)?)?));
    assert!(flipped.message.contains("brighter") && !flipped.message.contains("values in"), "{flipped}");
    let sign = |mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64| mlp.reference_step(xs, ys, -lr);
    // Markdown emphasis (`*with*`) shows as literal stars in a plain message; a product
    // (`lr * g`) has spaces around its star.
    let emphasis = |m: &str| {
        m.char_indices().any(|(i, c)| {
            c == '*' && (m[..i].ends_with(char::is_alphanumeric) || m[i + 1..].starts_with(char::is_alphanumeric))
        })
    };
    assert!(emphasis("moving *with* the gradient") && !emphasis("w - lr * g"));
    for v in [flipped, train_step(sign), challenge(loop_solution(10, 2.0))] {
        assert!(!emphasis(&v.message), "markdown in a plain message: {v}");
        assert!(!v.message.contains(" a 8"), "{v}");
    }
}

#[test]
fn a_student_tensor_of_another_type_gets_a_verdict_not_a_check_error() {
    let f64_step = |x: &Tensor, g: &Tensor, s: f64| Ok(clamp_pixels(&(x - (g * s)?)?)?.to_dtype(DType::F64)?);
    let v = descent_step(f64_step);
    assert_fails_with(v.clone(), "to_dtype(DType::F32)");
    assert!(!v.message.contains("could not run"), "{v}");
    let f64_grad = |m: &Classifier, x: &Tensor, t: u32| Ok(reference_grad(m, x, t)?.to_dtype(DType::F64)?);
    assert_fails_with(input_grad(f64_grad), "to_dtype");
}

#[test]
fn within_budget_refuses_an_image_that_broke_eps() {
    let (x, _) = mnist::test().unwrap().get(0).unwrap();
    let far = reference_craft(&Classifier::pretrained().unwrap(), &x, 3, 10.0, 5, 1.0).unwrap().pop().unwrap();
    let msg = within_budget(&x, &far, 0.1).unwrap_err().to_string();
    assert!(msg.contains("eps = 0.1") && msg.contains("project_linf"), "{msg}");
    within_budget(&x, &x, 0.1).unwrap();
}

#[test]
fn untargeted_l2_check_passes_the_reference_and_names_typical_mistakes() {
    assert!(untargeted_l2(reference_untargeted_l2).passed(), "{}", untargeted_l2(reference_untargeted_l2));
    let objective = |x: &Tensor, label: u32| Objective::targeted(label, x.dim(0).unwrap()).unwrap();
    let descend = |m: &Classifier, x: &Tensor, l: u32, eps: f32, steps: usize, s: f64| {
        reference_untargeted_l2(m, x, l, eps, steps, -s)
    };
    assert_fails_with(untargeted_l2(descend), "up the loss");
    let linf = |m: &Classifier, x: &Tensor, l: u32, eps: f32, steps: usize, s: f64| -> Result<Tensor> {
        let mut adv = x.clone();
        for _ in 0..steps {
            let g = input_gradient(m, &adv, &objective(x, l))?.grad;
            adv = clamp_pixels(&project_linf(&(&adv + (normalize_l2(&g)? * s)?)?, x, eps)?)?;
        }
        Ok(adv)
    };
    assert_fails_with(untargeted_l2(linf), "project_l2");
    let raw = |m: &Classifier, x: &Tensor, l: u32, eps: f32, steps: usize, s: f64| -> Result<Tensor> {
        let mut adv = x.clone();
        for _ in 0..steps {
            let g = input_gradient(m, &adv, &objective(x, l))?.grad;
            adv = clamp_pixels(&project_l2(&(&adv + (g * s)?)?, x, eps)?)?;
        }
        Ok(adv)
    };
    assert_fails_with(untargeted_l2(raw), "normalize_l2");
    let unclamped = |m: &Classifier, x: &Tensor, l: u32, eps: f32, steps: usize, s: f64| -> Result<Tensor> {
        let mut adv = x.clone();
        for _ in 0..steps {
            let g = input_gradient(m, &clamp_pixels(&adv)?, &objective(x, l))?.grad;
            adv = project_l2(&(&adv + (normalize_l2(&g)? * s)?)?, x, eps)?;
        }
        Ok(adv)
    };
    assert_fails_with(untargeted_l2(unclamped), "not clamped");
}

#[test]
fn a_todo_done_by_the_lab_function_it_asks_for_is_a_fail_that_names_it() {
    let named = |v: Verdict, name: &str| {
        assert_eq!(v.outcome, Outcome::Fail, "{v}");
        assert!(v.message.contains("write it yourself") && v.message.contains(&format!("`{name}`")), "{v}");
        assert_eq!(v.contents()[1].1, "0", "a grade cell scores it 0: {v}");
    };
    named(
        input_grad(|m: &Classifier, x: &Tensor, t: u32| Ok(input_gradient(m, x, &Objective::targeted(t, 1)?)?.grad)),
        "input_gradient",
    );
    let via_descent = |m: &Classifier, x: &Tensor, t: u32, eps: f32, steps: usize, s: f64| -> Result<Vec<Tensor>> {
        let config = DescentConfig { step_size: s as f32, steps, eps: Some(eps) };
        Ok(vec![targeted_descent(m, x, t, &config)?.adversarial; steps])
    };
    named(craft(via_descent), "targeted_descent");
    let via_pgd = |m: &Classifier, x: &Tensor, label: u32, eps: f32, steps: usize, s: f64| -> Result<Tensor> {
        let config = PgdConfig { steps, step_size: s as f32, ..PgdConfig::l2(eps) };
        Ok(pgd(m, x, &Objective::untargeted(&Tensor::new(&[label], x.device())?)?, &config)?.adversarial)
    };
    named(untargeted_l2(via_pgd), "pgd");
    // `bpda_pgd` on a model without a defense is plain `pgd`.
    let via_bpda = |m: &Classifier, x: &Tensor, label: u32, eps: f32, steps: usize, s: f64| -> Result<Tensor> {
        let config = PgdConfig { steps, step_size: s as f32, ..PgdConfig::l2(eps) };
        Ok(bpda_pgd(m, x, &Objective::untargeted(&Tensor::new(&[label], x.device())?)?, &config)?.adversarial)
    };
    named(untargeted_l2(via_bpda), "bpda_pgd");
    // The challenge with the lab's loop instead of the student's.
    let solve = |m: &Classifier, c: &Challenge| -> Result<Tensor> {
        let config = DescentConfig { step_size: 2.0, steps: 9, eps: Some(c.eps) };
        Ok(targeted_descent(m, &c.original, c.target, &config)?.adversarial)
    };
    named(challenge(solve), "targeted_descent");
    // Notebook 01: `Mlp::train` with one epoch and an unwritten step trains with the lab's step.
    let via_train = |mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64| -> Result<f32> {
        Ok(mlp.train(xs, ys, 1, lr, |_: &Mlp, _: &Tensor, _: &Tensor, _: f64| -> Result<f32> { todo!() })?[0])
    };
    named(train_step(via_train), "Mlp::train");
    // A function that only composes the lab's parts passes: the reference crafting loop calls
    // `input_gradient`, which TODO 3 may use.
    assert!(craft(reference_craft).passed());
}

#[test]
fn only_a_pass_is_full_marks_in_the_text_an_autograder_reads() {
    let pass = Verdict::pass("TODO 1 (x)", "fine");
    let [(html_mime, html), (plain_mime, plain), (json_mime, json)] = pass.contents();
    assert_eq!((html_mime, plain_mime, json_mime), ("text/html", "text/plain", VERDICT_MIME));
    assert_eq!(json, r#"{"outcome": "pass", "todo": "TODO 1 (x)", "message": "fine"}"#);
    assert!(html.contains("PASS") && plain.starts_with("PASS ·"), "{html} / {plain}");
    assert!(plain.parse::<f64>().is_err(), "nbgrader reads a non-number as full marks");
    let fail = Verdict::fail("TODO 1 (x)", "a", "b", "c");
    let not_done = Verdict { todo: "TODO 1 (x)", outcome: Outcome::NotDone, message: "later".into() };
    for v in [fail, not_done] {
        let [(_, html), (_, plain), (_, json)] = v.contents();
        assert!(json.starts_with(r#"{"outcome": "#) && !json.contains(r#""pass""#), "{json}");
        assert_eq!(plain, "0", "{v}");
        assert!(html.contains(&v.headline()[..4]), "the student still sees the verdict: {html}");
    }
}

#[test]
fn a_verdicts_own_part_is_json_whatever_its_message_holds() {
    assert_eq!(json_string("a \"b\" \\ c\nd"), r#""a \"b\" \\ c\u000ad""#);
    let v = Verdict::fail("TODO 1 (x)", "\"quoted\"", "a\\b", "line\nbreak");
    let [_, _, (_, json)] = v.contents();
    assert!(json.contains(r#"expected \"quoted\", got a\\b. Likely cause: line\u000abreak"#), "{json}");
}
