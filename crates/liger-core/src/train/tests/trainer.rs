//! The training loop on a small bigram model whose loss and gradient are easy to write in
//! float64: step semantics, data order, resume, non-finite losses, cancellation, events.

use crate::error::{ErrorCode, Result};
use crate::nn::loss::{LossOutput, IGNORE};
use crate::nn::optim::AdamWState;
use crate::train::data::Sequence;
use crate::train::trainer::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;
use std::sync::atomic::AtomicBool;

/// `logits(x) = W[x] + b`: a bigram table and a bias over a vocabulary of `V`.
struct Bigram {
    vocab: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    /// Calls to `forward_backward` after which the loss is NaN (to test the guard).
    nan_after: Option<usize>,
    calls: Cell<usize>,
}

struct BigramGrads(Vec<Vec<f32>>);

impl GradBuffers for BigramGrads {
    fn as_slices(&self) -> Vec<&[f32]> {
        self.0.iter().map(|g| g.as_slice()).collect()
    }
    fn as_mut_slices(&mut self) -> Vec<&mut [f32]> {
        self.0.iter_mut().map(|g| g.as_mut_slice()).collect()
    }
    fn zero(&mut self) {
        self.0.iter_mut().for_each(|g| g.fill(0.0));
    }
}

impl Bigram {
    fn new(vocab: usize, seed: u64) -> Self {
        let mut r = StdRng::seed_from_u64(seed);
        let w = (0..vocab * vocab).map(|_| r.random_range(-1.0..1.0)).collect();
        let b = (0..vocab).map(|_| r.random_range(-0.5..0.5)).collect();
        Bigram { vocab, w, b, nan_after: None, calls: Cell::new(0) }
    }

    #[allow(clippy::needless_range_loop)] // j indexes the row, the table and the bias alike
    fn run(&self, inputs: &[u32], labels: &[u32], grad: Option<(f32, &mut BigramGrads)>) -> LossOutput {
        let v = self.vocab;
        let mut out = LossOutput { loss_sum: 0.0, count: 0 };
        let mut grad = grad;
        for (&x, &y) in inputs.iter().zip(labels) {
            if y == IGNORE {
                continue;
            }
            let row: Vec<f32> = (0..v).map(|j| self.w[x as usize * v + j] + self.b[j]).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
            let lse = max as f64 + sum.ln();
            out.loss_sum += lse - row[y as usize] as f64;
            out.count += 1;
            if let Some((scale, g)) = grad.as_mut() {
                for j in 0..v {
                    let d = (((row[j] as f64 - lse).exp() - (j == y as usize) as u8 as f64) * *scale as f64) as f32;
                    g.0[0][x as usize * v + j] += d;
                    g.0[1][j] += d;
                }
            }
        }
        out
    }
}

impl Trainable for Bigram {
    type Grads = BigramGrads;
    fn new_grads(&self) -> BigramGrads {
        BigramGrads(vec![vec![0.0; self.w.len()], vec![0.0; self.b.len()]])
    }
    fn forward_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut BigramGrads,
    ) -> Result<LossOutput> {
        self.calls.set(self.calls.get() + 1);
        let mut out = self.run(inputs, labels, Some((grad_scale, grads)));
        if self.nan_after.is_some_and(|n| self.calls.get() > n) {
            out.loss_sum = f64::NAN;
        }
        Ok(out)
    }
    fn loss(&self, inputs: &[u32], labels: &[u32]) -> Result<LossOutput> {
        Ok(self.run(inputs, labels, None))
    }
    fn params(&self) -> Vec<(String, &[f32])> {
        vec![("w".into(), &self.w), ("b".into(), &self.b)]
    }
    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        vec![&mut self.w, &mut self.b]
    }
}

/// Sequences of a repeated pattern (learnable), with some labels masked.
fn pattern_data(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Sequence> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let start = r.random_range(0..vocab as u32);
            let stream: Vec<u32> = (0..=len as u32).map(|i| (start + 3 * i) % vocab as u32).collect();
            let labels = (1..=len).map(|i| if r.random_bool(0.2) { IGNORE } else { stream[i] }).collect();
            Sequence { inputs: stream[..len].to_vec(), labels }
        })
        .collect()
}

fn sizes(m: &Bigram) -> Vec<usize> {
    m.params().iter().map(|p| p.1.len()).collect()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig { steps: Some(steps), seq_len: 12, micro_batch: 2, grad_accum: 2, seed: 7, ..TrainConfig::default() }
}

fn no_events(_: TrainEvent, _: &Bigram, _: &Trainer) -> Result<()> {
    Ok(())
}

#[test]
fn a_step_averages_loss_and_gradient_over_every_counted_token_of_the_step() {
    let seed: u64 = rand::random();
    let (vocab, len) = (11, 12);
    let data = pattern_data(4, len, vocab, seed);
    let mut model = Bigram::new(vocab, seed);
    // Reference in float64: mean loss over all counted tokens of the 4 sequences, and the
    // norm of its gradient.
    let (v, w, b) = (vocab, model.w.clone(), model.b.clone());
    let (mut loss, mut count) = (0.0f64, 0usize);
    let mut gw = vec![0.0f64; v * v];
    let mut gb = vec![0.0f64; v];
    for s in &data {
        for (&x, &y) in s.inputs.iter().zip(&s.labels) {
            if y == IGNORE {
                continue;
            }
            let row: Vec<f64> = (0..v).map(|j| w[x as usize * v + j] as f64 + b[j] as f64).collect();
            let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
            loss += lse - row[y as usize];
            count += 1;
            for j in 0..v {
                let d = (row[j] - lse).exp() - (j == y as usize) as u8 as f64;
                gw[x as usize * v + j] += d;
                gb[j] += d;
            }
        }
    }
    let loss = loss / count as f64;
    let norm = (gw.iter().chain(&gb).map(|g| g * g).sum::<f64>()).sqrt() / count as f64;

    let cfg = TrainConfig { clip_grad_norm: 1e-3, ..config(1) };
    let mut trainer = Trainer::new(cfg, data.len(), &sizes(&model)).unwrap();
    let mut grads = model.new_grads();
    let stats = trainer.step(&mut model, &mut grads, &data).unwrap();
    let loss_err = (stats.loss - loss).abs() / loss;
    let norm_err = (stats.grad_norm as f64 - norm).abs() / norm;
    println!("step loss rel error {loss_err:.2e}, grad norm rel error {norm_err:.2e}");
    assert!(
        loss_err < 1e-6 && norm_err < 1e-4,
        "seed {seed}: loss {} vs {loss}, norm {} vs {norm}",
        stats.loss,
        stats.grad_norm
    );
    // Clipped to 1e-3: the gradient the optimizer saw has that norm.
    let clipped: f64 = grads.as_slices().iter().flat_map(|g| g.iter()).map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
    assert!((clipped - 1e-3).abs() < 1e-6, "clipped norm {clipped}");
    assert_eq!((trainer.state.step, stats.tokens), (1, 4 * len));
}

#[test]
fn every_sequence_is_seen_once_per_epoch_in_a_seeded_order() {
    let n = 10;
    let data: Vec<Sequence> = (0..n as u32).map(|i| Sequence { inputs: vec![i, i], labels: vec![i, i] }).collect();
    let order = |seed: u64| -> Vec<u32> {
        let cfg = TrainConfig { steps: Some(10), micro_batch: 1, grad_accum: 2, seed, ..TrainConfig::default() };
        let mut t = Trainer::new(cfg, n, &[0]).unwrap();
        (0..20).map(|_| data[t.next_sequence()].inputs[0]).collect()
    };
    let a = order(1);
    for epoch in a.chunks(n) {
        let mut e = epoch.to_vec();
        e.sort();
        assert_eq!(e, (0..n as u32).collect::<Vec<_>>());
    }
    assert_ne!(a[..n], a[n..], "each epoch gets its own shuffle");
    assert_eq!(a, order(1));
    assert_ne!(a, order(2));
}

#[test]
fn epochs_decide_the_number_of_steps() {
    let cfg = TrainConfig { steps: None, epochs: 2.0, micro_batch: 2, grad_accum: 4, ..TrainConfig::default() };
    assert_eq!(cfg.total_steps(100).unwrap(), 25);
    assert_eq!(cfg.total_steps(3).unwrap(), 1);
    assert_eq!(cfg.total_steps(0).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn training_lowers_the_loss() {
    let (vocab, len) = (13, 16);
    let data = pattern_data(24, len, vocab, 3);
    let mut model = Bigram::new(vocab, 4);
    let cfg = TrainConfig { optimizer: crate::nn::optim::AdamWConfig { lr: 5e-2, ..Default::default() }, ..config(30) };
    let before = evaluate(&data, &mut |i, l| model.loss(i, l)).unwrap();
    let mut trainer = Trainer::new(cfg, data.len(), &sizes(&model)).unwrap();
    let outcome = trainer.run(&mut model, &data, &[], &AtomicBool::new(false), &mut no_events).unwrap();
    let after = evaluate(&data, &mut |i, l| model.loss(i, l)).unwrap();
    println!("loss {:.3} -> {:.3} (ppl {:.2} -> {:.2})", before.loss, after.loss, before.ppl, after.ppl);
    assert_eq!((outcome.steps_done, outcome.cancelled), (30, false));
    assert!(after.loss < 0.5 * before.loss);
    let l = &trainer.state.losses;
    assert!(l[l.len() - 5..].iter().sum::<f64>() < l[..5].iter().sum::<f64>());
}

#[test]
fn stopping_halfway_and_resuming_is_bit_identical_to_training_straight() {
    let (vocab, len, steps) = (9, 10, 8);
    let data = pattern_data(7, len, vocab, 11);
    let cfg = TrainConfig { schedule: Schedule::WarmupCosine { warmup_steps: 2, min_ratio: 0.1 }, ..config(steps) };
    let cancel = AtomicBool::new(false);

    let mut straight = Bigram::new(vocab, 5);
    let mut t = Trainer::new(cfg.clone(), data.len(), &sizes(&straight)).unwrap();
    t.run(&mut straight, &data, &[], &cancel, &mut no_events).unwrap();

    // Stop after half the steps (as a cancelled run does).
    let mut first = Bigram::new(vocab, 5);
    let mut t1 = Trainer::new(cfg.clone(), data.len(), &sizes(&first)).unwrap();
    let stop = AtomicBool::new(false);
    let mut stop_halfway = |_: TrainEvent, _: &Bigram, t: &Trainer| {
        stop.store(t.state.step == steps / 2, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    assert!(t1.run(&mut first, &data, &[], &stop, &mut stop_halfway).unwrap().cancelled);
    // What a checkpoint keeps: the state as JSON, the moments, the parameters.
    let state: TrainerState = serde_json::from_str(&serde_json::to_string(&t1.state).unwrap()).unwrap();
    assert_eq!(state.step, steps / 2);
    let opt = AdamWState { step: t1.optimizer.step, m: t1.optimizer.m.clone(), v: t1.optimizer.v.clone() };
    let mut second = Bigram::new(vocab, 99);
    second.w.copy_from_slice(&first.w);
    second.b.copy_from_slice(&first.b);
    let mut t2 = Trainer::resume(state, opt, data.len(), &sizes(&second)).unwrap();
    t2.run(&mut second, &data, &[], &cancel, &mut no_events).unwrap();

    assert_eq!(
        t2.state.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        t.state.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    assert!(second.w.iter().zip(&straight.w).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(second.b.iter().zip(&straight.b).all(|(a, b)| a.to_bits() == b.to_bits()));

    let err = Trainer::resume(t2.state.clone(), AdamWState::new(&sizes(&second)), data.len() + 1, &sizes(&second))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let err = Trainer::resume(t2.state.clone(), AdamWState::new(&[3]), data.len(), &sizes(&second)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn a_non_finite_loss_stops_training_without_applying_the_update() {
    let data = pattern_data(8, 8, 7, 1);
    let mut model = Bigram::new(7, 2);
    model.nan_after = Some(4 * 2 + 1); // NaN within the third step (4 sequences a step)
    let mut trainer = Trainer::new(config(5), data.len(), &sizes(&model)).unwrap();
    let mut saved_w = Vec::new();
    let mut on_event = |e: TrainEvent, m: &Bigram, _: &Trainer| {
        if matches!(e, TrainEvent::Progress(_)) {
            saved_w = m.w.clone();
        }
        Ok(())
    };
    let err = trainer.run(&mut model, &data, &[], &AtomicBool::new(false), &mut on_event).unwrap_err();
    assert_eq!(err.code, ErrorCode::NonFiniteLoss);
    assert!(err.message.contains("step 3") && err.message.contains("learning rate"), "{}", err.message);
    assert_eq!(trainer.state.step, 2);
    assert_eq!(trainer.optimizer.step, 2);
    assert_eq!(model.w, saved_w, "the failed step changed the weights");
}

#[test]
fn cancelling_returns_cleanly_and_saves_only_when_asked() {
    let data = pattern_data(8, 8, 7, 1);
    for save_on_cancel in [false, true] {
        let cancel = AtomicBool::new(false);
        let mut model = Bigram::new(7, 2);
        let cfg = TrainConfig { save_on_cancel, eval_every: 2, save_every: 0, ..config(10) };
        let mut trainer = Trainer::new(cfg, data.len(), &sizes(&model)).unwrap();
        let mut events = Vec::new();
        let mut on_event = |e: TrainEvent, _: &Bigram, t: &Trainer| {
            if t.state.step == 3 {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            events.push(e);
            Ok(())
        };
        let outcome = trainer.run(&mut model, &data, &data[..2], &cancel, &mut on_event).unwrap();
        assert_eq!((outcome.steps_done, outcome.cancelled), (3, true));
        let saves = events.iter().filter(|e| matches!(e, TrainEvent::Save { step: 3 })).count();
        assert_eq!(saves, save_on_cancel as usize);
        let evals: Vec<u64> = events
            .iter()
            .filter_map(|e| if let TrainEvent::Eval { step, .. } = e { Some(*step) } else { None })
            .collect();
        assert_eq!(evals, vec![2]);
        let TrainEvent::Progress(p) = &events[0] else { panic!("first event {:?}", events[0]) };
        assert_eq!((p.step, p.total_steps), (1, 10));
        assert!(p.tokens_per_s > 0.0 && p.eta_s >= 0.0 && p.loss.is_finite());
    }
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let bad = [
        TrainConfig { micro_batch: 0, ..TrainConfig::default() },
        TrainConfig { steps: Some(0), ..TrainConfig::default() },
        TrainConfig { epochs: f64::NAN, ..TrainConfig::default() },
        TrainConfig { seq_len: 1, ..TrainConfig::default() },
        TrainConfig { clip_grad_norm: -1.0, ..TrainConfig::default() },
        TrainConfig {
            optimizer: crate::nn::optim::AdamWConfig { lr: 0.0, ..Default::default() },
            ..TrainConfig::default()
        },
        TrainConfig { schedule: Schedule::WarmupCosine { warmup_steps: 1, min_ratio: 2.0 }, ..TrainConfig::default() },
    ];
    for cfg in bad {
        let err = Trainer::new(cfg, 10, &[1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    }
    let empty = evaluate(&[], &mut |_, _| Ok(LossOutput { loss_sum: 1.0, count: 1 })).unwrap_err();
    assert_eq!(empty.code, ErrorCode::InvalidArgument);
}
