//! `cargo lab bench`: lab-support's CNN steps timed side by side with PyTorch on the CPU.
//!
//! Both sides load the shipped weights and the same 100 test digits. The PyTorch side is
//! `lab-model/bench/torch_ref.py`, run in the project venv, where the `lab` tool installs torch
//! the first time (students never need it). Before timing, the bench checks that both sides compute
//! the same logits and input gradients, and stops if they do not: a fast wrong answer counts for
//! nothing. Then, for each case, it warms both sides up and alternates blocks of steps between
//! them, so that the machine's load drifts onto both alike, and compares medians.

use crate::CliResult;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use lab_support::data::{data_dir, mnist};
use lab_support::grad::{clamp_pixels, input_gradient, Objective};
use lab_support::model::{Classifier, WEIGHTS_FILE};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

const SCRIPT: &str = "lab-model/bench/torch_ref.py";
/// Digits both sides compute on.
const IMAGES: usize = 100;
/// Alternating rounds per case, after one warm-up round.
const ROUNDS: usize = 5;
/// Largest |lab - torch| of a logit, and of the input gradient relative to its largest entry.
const LOGIT_TOLERANCE: f32 = 1e-4;
const GRAD_TOLERANCE: f32 = 1e-3;

/// A timed case: its name, batch size and steps per block.
struct Case {
    name: &'static str,
    batch: usize,
    iters: usize,
}

const CASES: [Case; 6] = [
    Case { name: "input_grad_step", batch: 1, iters: 200 },
    Case { name: "input_grad_step", batch: 100, iters: 10 },
    Case { name: "forward", batch: 100, iters: 20 },
    Case { name: "train_step", batch: 64, iters: 10 },
    Case { name: "adv_train_step", batch: 64, iters: 4 },
    Case { name: "ibp_train_step", batch: 64, iters: 10 },
];

/// The certified training step both sides time: the clean cross-entropy and the cross-entropy of
/// the worst-case margins that interval bound propagation proves over the L-inf box of radius
/// 0.4, weighted half and half, then one Adam step; the recipe of `cargo lab train --certified`
/// once its ramp is over.
const IBP_EPS: f32 = 0.4;

/// The adversarial training step both sides time: L-inf PGD-7 at eps 0.3 (step 0.09, random
/// start, untargeted cross-entropy, gradients for the input only), then one Adam step on the
/// attacked batch; the recipe of `cargo lab train --adversarial`.
const ADV_EPS: f32 = 0.3;

/// The PyTorch process.
pub(crate) struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Torch {
    pub(crate) fn start(python: &Path) -> CliResult<Self> {
        let mut child = Command::new(python)
            .arg(crate::repo_root().join(SCRIPT))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {SCRIPT} with {}: {e}", python.display()))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        Ok(Torch {
            stdin: stdin.ok_or("no stdin for the PyTorch process")?,
            stdout: BufReader::new(stdout.ok_or("no stdout for the PyTorch process")?),
            child,
        })
    }

    pub(crate) fn ask(&mut self, command: Value) -> CliResult<Value> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("the PyTorch process stopped listening: {e}"))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("no answer from the PyTorch process: {e}"))?;
        let answer: Value = serde_json::from_str(&line)
            .map_err(|_| format!("the PyTorch process answered {line:?} to {command}; its error is above"))?;
        match answer.get("error") {
            Some(e) => Err(format!("PyTorch failed on {command}: {e}")),
            None => Ok(answer),
        }
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared inputs: 100 test digits, a target class for each (label + 1) and the labels.
fn write_inputs(path: &Path) -> CliResult<(Tensor, Vec<u32>, Tensor)> {
    let set = mnist::test().and_then(|s| s.take(IMAGES)).map_err(|e| e.to_string())?;
    let labels = set.labels.to_dtype(DType::U32).and_then(|l| l.to_vec1::<u32>()).map_err(|e| e.to_string())?;
    let targets: Vec<u32> = labels.iter().map(|l| (l + 1) % 10).collect();
    let as_i64 = |v: &[u32]| Tensor::new(v.iter().map(|&c| c as i64).collect::<Vec<_>>(), &Device::Cpu);
    let tensors: HashMap<String, Tensor> = [
        ("images".to_string(), set.images.clone()),
        ("targets".to_string(), as_i64(&targets).map_err(|e| e.to_string())?),
        ("labels".to_string(), as_i64(&labels).map_err(|e| e.to_string())?),
    ]
    .into();
    candle_core::safetensors::save(&tensors, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((set.images, targets, set.labels))
}

/// Compares lab-support's logits and input gradients with PyTorch's on the same digits.
fn check_agreement(
    torch: &mut Torch,
    model: &Classifier,
    images: &Tensor,
    targets: &[u32],
    dir: &Path,
) -> CliResult<String> {
    let out = dir.join("torch-check.safetensors");
    torch.ask(json!({"cmd": "check", "out": out}))?;
    let theirs = candle_core::safetensors::load(&out, &Device::Cpu).map_err(|e| format!("{}: {e}", out.display()))?;
    let ours = input_gradient(model, images, &Objective::Targeted(targets.to_vec())).map_err(|e| e.to_string())?;
    let max_abs = |t: &Tensor| -> CliResult<f32> {
        t.abs().and_then(|a| a.flatten_all()?.max(0)?.to_scalar::<f32>()).map_err(|e| e.to_string())
    };
    let diff = |a: &Tensor, b: &Tensor| -> CliResult<f32> { max_abs(&(a - b).map_err(|e| e.to_string())?) };
    let logit_diff = diff(&ours.logits, &theirs["logits"])?;
    let grad_diff = diff(&ours.grad, &theirs["grad"])? / max_abs(&theirs["grad"])?;
    let summary = format!(
        "agreement with PyTorch on {IMAGES} digits: logits within {logit_diff:.1e} (tolerance {LOGIT_TOLERANCE:.0e}), \
         input gradients within {grad_diff:.1e} of their largest entry (tolerance {GRAD_TOLERANCE:.0e})"
    );
    if !(logit_diff <= LOGIT_TOLERANCE && grad_diff <= GRAD_TOLERANCE) {
        return Err(format!("lab-support and PyTorch disagree; {summary}. A fast wrong answer counts for nothing: fix the kernels first"));
    }
    Ok(summary)
}

/// lab-support's side of one case: per-step times in ms.
fn time_lab(
    case: &Case,
    model: &Classifier,
    images: &Tensor,
    targets: &[u32],
    labels: &Tensor,
) -> lab_support::Result<Vec<f64>> {
    let x0 = images.narrow(0, 0, case.batch)?;
    let mut times = Vec::with_capacity(case.iters);
    let mut timed = |mut step: Box<dyn FnMut() -> lab_support::Result<()> + '_>| -> lab_support::Result<()> {
        step()?;
        for _ in 0..case.iters {
            let start = Instant::now();
            step()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    };
    match case.name {
        "input_grad_step" => {
            let objective = Objective::Targeted(targets[..case.batch].to_vec());
            let mut x = x0.clone();
            timed(Box::new(move || {
                let g = input_gradient(model, &x, &objective)?;
                x = clamp_pixels(&(&x - (g.grad.sign()? * 0.01)?)?)?;
                Ok(())
            }))?;
        }
        "forward" => timed(Box::new(|| model.logits(&x0).map(drop)))?,
        "train_step" => {
            let (trained, vars) = Classifier::trainable(model.parameters())?;
            let mut opt = AdamW::new(
                vars.iter().map(|(_, v)| v.clone()).collect(),
                ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
            )?;
            let y = labels.narrow(0, 0, case.batch)?;
            timed(Box::new(move || {
                let loss = candle_nn::loss::cross_entropy(&trained.forward(&x0)?, &y)?;
                opt.backward_step(&loss)?;
                loss.to_scalar::<f32>()?;
                Ok(())
            }))?;
        }
        "adv_train_step" => {
            use lab_support::train::{attack_batch, AdversarialTraining};
            let (trained, vars) = Classifier::trainable(model.parameters())?;
            let mut opt = AdamW::new(
                vars.iter().map(|(_, v)| v.clone()).collect(),
                ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
            )?;
            let y = labels.narrow(0, 0, case.batch)?;
            let recipe = AdversarialTraining { eps: ADV_EPS, ..AdversarialTraining::shipped() };
            let mut seed = 0;
            timed(Box::new(move || {
                seed += 1;
                let x_adv = attack_batch(&trained.frozen(), &x0, &y, &recipe, ADV_EPS, seed)?;
                let loss = candle_nn::loss::cross_entropy(&trained.forward(&x_adv)?, &y)?;
                opt.backward_step(&loss)?;
                loss.to_scalar::<f32>()?;
                Ok(())
            }))?;
        }
        "ibp_train_step" => {
            let (trained, vars) = Classifier::trainable(model.parameters())?;
            let mut opt = AdamW::new(
                vars.iter().map(|(_, v)| v.clone()).collect(),
                ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
            )?;
            let (x, y) = (x0.clone(), labels.narrow(0, 0, case.batch)?);
            timed(Box::new(move || {
                let clean = candle_nn::loss::cross_entropy(&trained.forward(&x)?, &y)?;
                let worst = lab_support::certify::worst_case_loss(&trained, &x, &y, IBP_EPS)?;
                let loss = ((clean * 0.5)? + (worst * 0.5)?)?;
                opt.backward_step(&loss)?;
                loss.to_scalar::<f32>()?;
                Ok(())
            }))?;
        }
        other => unreachable!("no lab side for case {other}"),
    }
    Ok(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The robustness curve of all 10,000 test digits under PGD-40, timed: one call, lab-support only.
fn sweep(model: &Classifier) -> CliResult<()> {
    use lab_support::attack::{epsilon_sweep, Norm};
    let test = mnist::test().map_err(|e| e.to_string())?;
    let eps = [0.0, 0.1, 0.2, 0.3];
    eprintln!("PGD-40 L-inf sweep over {} test digits at eps {eps:?} ...", test.len());
    let start = Instant::now();
    let curve = epsilon_sweep(model, &test, Norm::Linf, &eps, 40).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let points: Vec<Value> = curve
        .iter()
        .map(|p| json!({"eps": round3(p.eps as f64), "accuracy": (p.accuracy as f64 * 1e4).round() / 1e4}))
        .collect();
    println!(
        "{}",
        json!({"case": "pgd40_linf_sweep", "images": test.len(), "lab_s": round3(seconds), "curve": points})
    );
    Ok(())
}

pub fn bench(python: &Path, with_sweep: bool) -> CliResult<()> {
    let dir = crate::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let inputs = dir.join("inputs.safetensors");
    let (images, targets, labels) = write_inputs(&inputs)?;
    let model = Classifier::pretrained().map_err(|e| e.to_string())?;
    let mut torch = Torch::start(python)?;
    let info = torch.ask(json!({"cmd": "load", "weights": data_dir().join(WEIGHTS_FILE), "inputs": inputs}))?;
    eprintln!(
        "lab-support on candle 0.11.1 ({} threads) against PyTorch {} ({} threads), {} cores",
        rayon::current_num_threads(),
        info["torch"].as_str().unwrap_or("?"),
        info["threads"],
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    eprintln!("{}", check_agreement(&mut torch, &model, &images, &targets, &dir)?);

    let mut rows = Vec::new();
    for case in &CASES {
        let (mut lab, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let l = time_lab(case, &model, &images, &targets, &labels)
                .map_err(|e| format!("{} (lab side): {e}", case.name))?;
            let answer =
                torch.ask(json!({"cmd": "time", "case": case.name, "batch": case.batch, "iters": case.iters}))?;
            let t: Vec<f64> =
                answer["ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            if round > 0 {
                lab.extend(l);
                theirs.extend(t);
            }
        }
        let (lab_ms, torch_ms) = (median(lab), median(theirs));
        let row = json!({"case": case.name, "batch": case.batch, "lab_ms": round3(lab_ms), "torch_ms": round3(torch_ms), "ratio": round3(torch_ms / lab_ms)});
        println!("{row}");
        rows.push((case, lab_ms, torch_ms));
    }
    println!("\n| case | batch | lab-support ms | PyTorch ms | ratio (torch/lab) |\n| --- | --- | --- | --- | --- |");
    for (case, lab_ms, torch_ms) in rows {
        println!("| {} | {} | {lab_ms:.2} | {torch_ms:.2} | {:.2} |", case.name, case.batch, torch_ms / lab_ms);
    }
    drop(torch);
    if with_sweep {
        sweep(&model)?;
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
