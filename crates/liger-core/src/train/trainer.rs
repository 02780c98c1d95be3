//! The training loop: seeded data order, gradient accumulation, global-norm clipping, AdamW,
//! learning-rate schedule, progress, validation, cancellation, and resumable state.
//!
//! The loop is written against [`Trainable`], so that any model with trainable parameters
//! (the Liger model's LoRA adapters, or a small model in tests) trains the same way.

use super::data::Sequence;
use crate::convert::{LigerModel, LoraGrads};
use crate::error::{Error, ErrorCode, Result};
use crate::nn::loss::{LossOutput, IGNORE};
use crate::nn::optim::{clip_grad_norm, AdamWConfig, AdamWState, LrSchedule};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Gradient buffers, one slice per trainable tensor, in the order of [`Trainable::params`].
pub trait GradBuffers {
    fn as_slices(&self) -> Vec<&[f32]>;
    fn as_mut_slices(&mut self) -> Vec<&mut [f32]>;
    fn zero(&mut self);
}

/// A model the trainer can train.
pub trait Trainable {
    type Grads: GradBuffers;
    /// Zeroed gradient buffers for every trainable tensor.
    fn new_grads(&self) -> Self::Grads;
    /// Loss of one sequence, and `d(loss_sum · grad_scale)/d params` **added** into `grads`.
    fn forward_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut Self::Grads,
    ) -> Result<LossOutput>;
    /// Summed loss of a micro-batch of sequences, and its gradients added into `grads`, as
    /// [`Trainable::forward_backward`] on each sequence. Engines that run a micro-batch as one
    /// batch (the GPU model) override this.
    fn forward_backward_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut Self::Grads,
    ) -> Result<LossOutput> {
        sequence_by_sequence(inputs, labels, |i, l| self.forward_backward(i, l, grad_scale, grads))
    }
    /// Loss of one sequence, without gradients.
    fn loss(&self, inputs: &[u32], labels: &[u32]) -> Result<LossOutput>;
    /// The trainable tensors with their names.
    fn params(&self) -> Vec<(String, &[f32])>;
    /// The same tensors, in the same order, for the optimiser to update.
    fn params_mut(&mut self) -> Vec<&mut [f32]>;
    /// Whether AdamW's weight decay applies to each of the same tensors (default: to every one).
    fn decays(&self) -> Vec<bool> {
        vec![true; self.params().len()]
    }
}

/// `loss` of each sequence of a micro-batch in turn, summed.
pub fn sequence_by_sequence(
    inputs: &[&[u32]],
    labels: &[&[u32]],
    mut loss: impl FnMut(&[u32], &[u32]) -> Result<LossOutput>,
) -> Result<LossOutput> {
    let mut total = LossOutput { loss_sum: 0.0, count: 0 };
    for (i, l) in inputs.iter().zip(labels) {
        let out = loss(i, l)?;
        total.loss_sum += out.loss_sum;
        total.count += out.count;
    }
    Ok(total)
}

/// How the learning rate changes over training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear warmup over `warmup_steps`, then cosine decay to `min_ratio · lr` at the last step.
    WarmupCosine {
        warmup_steps: u64,
        min_ratio: f32,
    },
}

/// What one training run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Optimizer steps to take; when absent, `epochs` passes over the data decide.
    pub steps: Option<u64>,
    pub epochs: f64,
    /// Tokens per training sequence (the paper: 1024; CPU runs use less).
    pub seq_len: usize,
    /// Sequences per forward/backward batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step: a step sees `micro_batch · grad_accum` sequences.
    pub grad_accum: usize,
    pub optimizer: AdamWConfig,
    /// Largest global gradient norm; 0 turns clipping off.
    pub clip_grad_norm: f32,
    pub schedule: Schedule,
    /// Seeds the data order.
    pub seed: u64,
    /// Validate every this many steps (0: only where the caller asks).
    pub eval_every: u64,
    /// Ask the caller to save every this many steps (0: never during the run).
    pub save_every: u64,
    /// On cancellation, ask the caller to save before returning.
    pub save_on_cancel: bool,
    /// Weight of distillation from the base model in the training loss:
    /// `(1 - w) · CE + w · KL(p_base || p_model)` per token (0: cross-entropy alone). Engines
    /// that cannot run the teacher refuse a non-zero weight (see `EngineModel::distill_from`).
    pub distill_weight: f32,
    /// Optimizer steps of attention transfer before the language-model loss (0: none): each
    /// Liger layer's attention trained toward the base model's softmax attention on the same
    /// input (`convert/attention_transfer.rs`). Counted apart from `steps` and `epochs`.
    pub attention_transfer_steps: u64,
    /// A stage at longer sequences after the training (a length curriculum), if any.
    pub long_context: Option<LongContextStage>,
}

/// Training on longer sequences after the main training: `steps` optimizer steps on the same
/// data packed `seq_len` tokens long, each micro-batch holding about as many tokens as the
/// training's (fewer, longer sequences). Counted apart from `steps` and `epochs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongContextStage {
    pub steps: u64,
    pub seq_len: usize,
}

/// Largest settings [`TrainConfig::validate`] accepts.
pub const MAX_MICRO_BATCH: usize = 1024;
pub const MAX_GRAD_ACCUM: usize = 1 << 16;
pub const MAX_SEQ_LEN: usize = 1 << 20;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: None,
            epochs: 2.0,
            seq_len: 1024,
            micro_batch: 1,
            grad_accum: 8,
            optimizer: AdamWConfig::default(),
            clip_grad_norm: 1.0,
            schedule: Schedule::Constant,
            seed: 0,
            eval_every: 0,
            save_every: 0,
            save_on_cancel: false,
            distill_weight: 0.0,
            attention_transfer_steps: 0,
            long_context: None,
        }
    }
}

impl TrainConfig {
    /// Sequences per optimizer step.
    pub fn sequences_per_step(&self) -> usize {
        self.micro_batch * self.grad_accum
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid_argument(msg));
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return bad(format!(
                "micro_batch and grad_accum must be at least 1, got {} and {}",
                self.micro_batch, self.grad_accum
            ));
        }
        if self.seq_len < 2 {
            return bad(format!("seq_len must be at least 2 tokens, got {}", self.seq_len));
        }
        // Upper bounds far past any useful run, so that a typo fails at once instead of
        // allocating or computing for minutes.
        for (name, value, limit, advice) in [
            ("micro_batch", self.micro_batch, MAX_MICRO_BATCH, "use grad_accum for larger batches"),
            ("grad_accum", self.grad_accum, MAX_GRAD_ACCUM, "8 gives the paper's batch of 8"),
            ("seq_len", self.seq_len, MAX_SEQ_LEN, "the paper trains on 1024"),
        ] {
            if value > limit {
                return bad(format!("{name} is {value}, above the limit of {limit}; {advice}"));
            }
        }
        if self.steps == Some(0) {
            return bad("steps must be at least 1 (or leave it out to train for `epochs`)".into());
        }
        if self.steps.is_none() && !(self.epochs.is_finite() && self.epochs > 0.0) {
            return bad(format!("epochs must be a positive number, got {}", self.epochs));
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!("the learning rate must be positive, got {}", o.lr));
        }
        let betas_ok = (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2);
        // Written so that NaN fails too.
        let eps_ok = o.eps.is_finite() && o.eps > 0.0;
        let decay_ok = o.weight_decay.is_finite() && o.weight_decay >= 0.0;
        if !(betas_ok && eps_ok && decay_ok) {
            return bad("AdamW needs 0 <= beta1, beta2 < 1, eps > 0 and weight_decay >= 0".into());
        }
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return bad(format!("clip_grad_norm must be >= 0 (0 turns clipping off), got {}", self.clip_grad_norm));
        }
        if let Schedule::WarmupCosine { min_ratio, .. } = self.schedule {
            if !(0.0..=1.0).contains(&min_ratio) {
                return bad(format!("the schedule's min_ratio must be in [0, 1], got {min_ratio}"));
            }
        }
        if let Some(stage) = self.long_context {
            if stage.steps == 0 || stage.seq_len <= self.seq_len || stage.seq_len > MAX_SEQ_LEN {
                return bad(format!(
                    "the long-context stage needs at least one step and sequences longer than the training's {} tokens (at most {MAX_SEQ_LEN}); got {} steps of {} tokens",
                    self.seq_len, stage.steps, stage.seq_len
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.distill_weight) {
            return bad(format!(
                "the distillation weight must be in [0, 1] (0: cross-entropy alone, 1: distillation alone), got {}",
                self.distill_weight
            ));
        }
        Ok(())
    }

    /// Optimizer steps of the run over `num_sequences` training sequences.
    pub fn total_steps(&self, num_sequences: usize) -> Result<u64> {
        if num_sequences == 0 {
            return Err(Error::invalid_argument(
                "there are no training sequences: the data holds less than one sequence of seq_len tokens; lower seq_len or add data",
            ));
        }
        Ok(match self.steps {
            Some(s) => s,
            None => ((self.epochs * num_sequences as f64) / self.sequences_per_step() as f64).floor().max(1.0) as u64,
        })
    }

    fn lr_schedule(&self, total_steps: u64) -> LrSchedule {
        match self.schedule {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::WarmupCosine { warmup_steps, min_ratio } => {
                LrSchedule::Cosine { warmup_steps, total_steps, min_ratio }
            }
        }
    }
}

/// Where a run stands: everything besides the model and the optimizer moments that a resumed
/// run needs to continue exactly as if it had not stopped. Saved as `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub total_steps: u64,
    /// Completed passes over the data.
    pub epoch: u64,
    /// Position in the current epoch's shuffled order.
    pub position_in_epoch: u64,
    /// Training sequences the data order was drawn over (a resumed run must match).
    pub num_sequences: usize,
    /// The data order of epoch `e` is a shuffle seeded by `(seed, e)`: the seed is the whole
    /// random state.
    pub seed: u64,
    pub tokens_seen: u64,
    /// Mean loss of each step so far.
    pub losses: Vec<f64>,
    pub config: TrainConfig,
}

/// What the progress callback receives after every step (camelCase for JavaScript).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainProgress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    /// Seconds since this run (not the resumed one) started.
    pub elapsed_s: f64,
    pub eta_s: f64,
}

/// Mean loss over the counted tokens of some sequences, and its perplexity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub ppl: f64,
    pub tokens: usize,
}

/// What happens during [`Trainer::run`]; the caller answers `Save` by saving.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Progress(TrainProgress),
    Eval { step: u64, result: EvalResult },
    Save { step: u64 },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainOutcome {
    pub steps_done: u64,
    pub cancelled: bool,
    pub last_loss: Option<f64>,
}

/// Loss statistics of one optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f32,
    pub lr: f32,
    pub tokens: usize,
}

/// The loss of one sequence (inputs, labels), as a model computes it.
pub type SequenceLoss<'a> = dyn FnMut(&[u32], &[u32]) -> Result<LossOutput> + 'a;

/// Validation: mean loss over every counted token of `sequences`, through `loss`.
pub fn evaluate(sequences: &[Sequence], loss: &mut SequenceLoss) -> Result<EvalResult> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for s in sequences {
        let out = loss(&s.inputs, &s.labels)?;
        sum += out.loss_sum;
        count += out.count;
    }
    if count == 0 {
        return Err(Error::invalid_argument(
            "no validation tokens: the validation split is empty; raise the validation fraction or add data",
        ));
    }
    let mean = sum / count as f64;
    Ok(EvalResult { loss: mean, ppl: mean.exp(), tokens: count })
}

/// The optimizer state and the position in the data of one training run.
#[derive(Debug)]
pub struct Trainer {
    pub state: TrainerState,
    pub optimizer: AdamWState,
    /// The shuffled order of the current epoch.
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl Trainer {
    /// A fresh run over `num_sequences` training sequences for a model with `params`.
    pub fn new(config: TrainConfig, num_sequences: usize, param_sizes: &[usize]) -> Result<Self> {
        config.validate()?;
        let total_steps = config.total_steps(num_sequences)?;
        let state = TrainerState {
            step: 0,
            total_steps,
            epoch: 0,
            position_in_epoch: 0,
            num_sequences,
            seed: config.seed,
            tokens_seen: 0,
            losses: Vec::new(),
            config,
        };
        Ok(Trainer { state, optimizer: AdamWState::new(param_sizes), order: Vec::new(), order_epoch: None })
    }

    /// Continues a saved run. The data must be the same (same number of sequences) and the
    /// optimizer moments must match the model's trainable tensors.
    pub fn resume(
        state: TrainerState,
        optimizer: AdamWState,
        num_sequences: usize,
        param_sizes: &[usize],
    ) -> Result<Self> {
        state.config.validate()?;
        if state.num_sequences != num_sequences {
            return Err(Error::invalid_argument(format!(
                "the run being resumed trained on {} sequences but the data now gives {num_sequences}; resume with the same data, seq_len and validation split",
                state.num_sequences
            )));
        }
        let sizes: Vec<usize> = optimizer.m.iter().map(Vec::len).collect();
        if sizes != param_sizes || optimizer.v.iter().map(Vec::len).ne(param_sizes.iter().copied()) {
            return Err(Error::shape("the saved optimizer state does not match the model's trainable tensors (a different LoRA rank or targets?)"));
        }
        Ok(Trainer { state, optimizer, order: Vec::new(), order_epoch: None })
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// Index of the next training sequence, moving through seeded per-epoch shuffles.
    pub(super) fn next_sequence(&mut self) -> usize {
        let n = self.state.num_sequences;
        if self.state.position_in_epoch as usize >= n {
            self.state.epoch += 1;
            self.state.position_in_epoch = 0;
        }
        if self.order_epoch != Some(self.state.epoch) {
            self.order = (0..n).collect();
            let seed = self.state.seed ^ self.state.epoch.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.order.shuffle(&mut StdRng::seed_from_u64(seed));
            self.order_epoch = Some(self.state.epoch);
        }
        let i = self.order[self.state.position_in_epoch as usize];
        self.state.position_in_epoch += 1;
        i
    }

    /// Learning rate of the next step.
    pub fn current_lr(&self) -> f32 {
        let c = &self.state.config;
        c.lr_schedule(self.state.total_steps).lr_at(c.optimizer.lr, self.state.step)
    }

    /// One optimizer step over the next `micro_batch · grad_accum` sequences of `data`. The
    /// loss is the mean over the counted tokens of the whole step. A non-finite loss or
    /// gradient leaves the model and this trainer untouched and returns `NonFiniteLoss`.
    pub fn step<M: Trainable>(&mut self, model: &mut M, grads: &mut M::Grads, data: &[Sequence]) -> Result<StepStats> {
        if data.len() != self.state.num_sequences {
            return Err(Error::invalid_argument(format!(
                "the trainer was set up for {} sequences but got {}",
                self.state.num_sequences,
                data.len()
            )));
        }
        let saved_position = (self.state.epoch, self.state.position_in_epoch);
        let picked: Vec<usize> = (0..self.state.config.sequences_per_step()).map(|_| self.next_sequence()).collect();
        let result = self.step_on(model, grads, data, &picked);
        if result.is_err() {
            (self.state.epoch, self.state.position_in_epoch) = saved_position;
        }
        result
    }

    fn step_on<M: Trainable>(
        &mut self,
        model: &mut M,
        grads: &mut M::Grads,
        data: &[Sequence],
        picked: &[usize],
    ) -> Result<StepStats> {
        let step = self.state.step + 1;
        let count: usize = picked.iter().map(|&i| data[i].labels.iter().filter(|&&l| l != IGNORE).count()).sum();
        if count == 0 {
            return Err(Error::invalid_argument(format!("step {step}: its sequences have no counted labels")));
        }
        grads.zero();
        let scale = 1.0 / count as f32;
        let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
        // One micro-batch at a time, so an engine can run it as one batch.
        for micro in picked.chunks(self.state.config.micro_batch.max(1)) {
            let inputs: Vec<&[u32]> = micro.iter().map(|&i| data[i].inputs.as_slice()).collect();
            let labels: Vec<&[u32]> = micro.iter().map(|&i| data[i].labels.as_slice()).collect();
            let out = model.forward_backward_batch(&inputs, &labels, scale, grads).map_err(|e| match e.code {
                ErrorCode::NonFiniteLoss => non_finite(step, "the loss"),
                _ => e,
            })?;
            loss_sum += out.loss_sum;
            tokens += inputs.iter().map(|s| s.len()).sum::<usize>();
        }
        let loss = loss_sum / count as f64;
        if !loss.is_finite() {
            return Err(non_finite(step, "the loss"));
        }
        let grad_norm = clip_grad_norm(&mut grads.as_mut_slices(), self.state.config.clip_grad_norm)
            .map_err(|_| non_finite(step, "the gradient"))?;
        let lr = self.current_lr();
        let grad_slices = grads.as_slices();
        let decays = model.decays();
        self.optimizer.update_masked(&self.state.config.optimizer, lr, &mut model.params_mut(), &grad_slices, &decays);
        self.state.step = step;
        self.state.tokens_seen += tokens as u64;
        self.state.losses.push(loss);
        Ok(StepStats { loss, grad_norm, lr, tokens })
    }

    /// Trains until the last step or until `cancel` is set (checked between steps). Reports
    /// through `on_event`, which also gets the model and trainer so it can save on `Save`.
    pub fn run<M: Trainable>(
        &mut self,
        model: &mut M,
        train: &[Sequence],
        val: &[Sequence],
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(TrainEvent, &M, &Trainer) -> Result<()>,
    ) -> Result<TrainOutcome> {
        let start = Instant::now();
        let first_step = self.state.step;
        let mut grads = model.new_grads();
        let mut outcome = TrainOutcome { steps_done: 0, cancelled: false, last_loss: None };
        let mut tokens = 0usize;
        while !self.is_done() {
            if cancel.load(Ordering::Relaxed) {
                outcome.cancelled = true;
                if self.state.config.save_on_cancel && self.state.step > first_step {
                    on_event(TrainEvent::Save { step: self.state.step }, model, self)?;
                }
                return Ok(outcome);
            }
            let stats = self.step(model, &mut grads, train)?;
            outcome.steps_done += 1;
            outcome.last_loss = Some(stats.loss);
            tokens += stats.tokens;
            let elapsed_s = start.elapsed().as_secs_f64();
            let step = self.state.step;
            let per_step = elapsed_s / (step - first_step) as f64;
            let progress = TrainProgress {
                step,
                total_steps: self.state.total_steps,
                loss: stats.loss,
                lr: stats.lr,
                grad_norm: stats.grad_norm,
                tokens_per_s: tokens as f64 / elapsed_s.max(1e-9),
                elapsed_s,
                eta_s: per_step * (self.state.total_steps - step) as f64,
            };
            on_event(TrainEvent::Progress(progress), model, self)?;
            let every = |n: u64| n > 0 && step.is_multiple_of(n);
            if every(self.state.config.eval_every) && !val.is_empty() {
                let result = evaluate(val, &mut |i, l| model.loss(i, l))?;
                on_event(TrainEvent::Eval { step, result }, model, self)?;
            }
            if every(self.state.config.save_every) {
                on_event(TrainEvent::Save { step }, model, self)?;
            }
        }
        Ok(outcome)
    }
}

fn non_finite(step: u64, what: &str) -> Error {
    Error::new(
        ErrorCode::NonFiniteLoss,
        format!(
            "step {step}: {what} is not finite (NaN or infinity); the update was not applied and the last saved checkpoint is kept. Lower the learning rate, keep gradient clipping on, or check the data"
        ),
    )
}

impl GradBuffers for LoraGrads {
    fn as_slices(&self) -> Vec<&[f32]> {
        LoraGrads::as_slices(self)
    }
    fn as_mut_slices(&mut self) -> Vec<&mut [f32]> {
        LoraGrads::as_mut_slices(self)
    }
    fn zero(&mut self) {
        LoraGrads::zero(self)
    }
}

/// The Liger model trains its LoRA adapters (and learned branch weights); the base weights stay frozen.
impl Trainable for LigerModel {
    type Grads = LoraGrads;
    fn new_grads(&self) -> LoraGrads {
        self.new_lora_grads()
    }
    fn forward_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        LigerModel::forward_backward(self, inputs, labels, grad_scale, grads)
    }
    fn loss(&self, inputs: &[u32], labels: &[u32]) -> Result<LossOutput> {
        LigerModel::loss(self, inputs, labels)
    }
    fn params(&self) -> Vec<(String, &[f32])> {
        self.trained_params()
    }
    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.trained_params_mut()
    }
    fn decays(&self) -> Vec<bool> {
        self.trained_param_decays()
    }
}
