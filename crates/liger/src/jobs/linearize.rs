//! Linearize: convert a model to Liger attention, train its LoRA adapters, measure before and
//! after, and save the run, on the CPU or a GPU.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use liger_core::checkpoint::SaveOptions;
use liger_core::config::ModelConfig;
use liger_core::convert::{LigerOptions, LoraOptions, LoraTarget};
use liger_core::hf::SaveDtype;
use liger_core::liger::{GsaScale, LigerAttentionConfig, MixerKind};
use liger_core::model::read_model_config;
use liger_core::nn::optim::AdamWConfig;
use liger_core::train::data::{BadRows, PromptFormat};
use liger_core::train::job::{run_linearize, JobEvent, LinearizeJob, LinearizeReport};
use liger_core::train::layer_choice::LayerChoice;
use liger_core::train::trainer::{LongContextStage, Schedule, TrainConfig};
use liger_core::{Error, ErrorCode, Result};

use crate::{Device, LinearizeEvent};

/// The defaults of a linearize run that are not the conversion's or the adapters' (those are
/// `liger-core`'s: the paper's window, mix and LoRA): a short run that fits a CPU.
pub mod defaults {
    /// Optimizer steps.
    pub const STEPS: u64 = 30;
    /// Passes over the data when the length is given in epochs instead.
    pub const EPOCHS: f64 = 1.0;
    /// Tokens per training sequence (the paper trains 1024).
    pub const SEQ_LEN: usize = 256;
    pub const BATCH: usize = 1;
    pub const GRAD_ACCUM: usize = 1;
    /// Fraction of the records held out for validation, and most sequences scored.
    pub const VAL_FRACTION: f64 = 0.02;
    pub const MAX_VAL_SEQUENCES: usize = 16;
    /// The instruction the trained model answers at the end, and its longest answer.
    pub const SAMPLE_PROMPT: &str = "Give three tips for staying healthy.";
    pub const SAMPLE_MAX_TOKENS: usize = 48;
}

/// Every setting of a linearize run. [`LinearizeOptions::new`] fills in the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearizeOptions {
    /// A `.gguf` file or a checkpoint directory.
    pub model_path: PathBuf,
    /// Alpaca-style `.json`/`.jsonl` (or a folder of them); none: convert only.
    pub data_path: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub mixer: MixerKind,
    /// GSA only: slots per key-value head (must divide the head size) and the query scale of
    /// the slot read-out (the reference's 1 by default).
    pub gsa_slots: usize,
    pub gsa_scale: GsaScale,
    /// Keys each query of the sliding-window branch sees.
    pub window: usize,
    /// First tokens every query of the window branch also sees (attention sinks; 0 = none).
    pub sinks: usize,
    /// Normalise the recurrent branch by the same recurrence over values of one.
    pub grm_norm: bool,
    /// Tokens per key-value head that left the window and stay visible to it, chosen by
    /// surprise (0 = none); trained with, unless `surprise_after_training`.
    pub surprise_keys: usize,
    /// The surprise cache's repeat rule (see `liger_core::liger::surprise`; 0 = off).
    pub surprise_repeat_tolerance: f64,
    /// Train with the window alone and add the surprise cache to the saved model.
    pub surprise_after_training: bool,
    /// Learn the branch weights of each query head with the adapters, from `alpha` and `beta`.
    pub learn_head_mix: bool,
    /// Weights of the recurrent and sliding-window branches.
    pub alpha: f32,
    pub beta: f32,
    pub use_swa: bool,
    /// Layers that keep softmax attention.
    pub softmax_layers: Vec<usize>,
    /// Keep softmax attention in one layer of every n (wins over `softmax_layers` when set).
    pub softmax_every: Option<usize>,
    /// Also keep softmax attention in this many layers chosen by measurement.
    pub softmax_auto: Option<usize>,
    /// What that measurement is: the loss of converting each layer alone, or how often the
    /// base model's heads in each layer retrieve beyond the window.
    pub softmax_auto_by: LayerChoice,
    /// Text the automatic choice measures the layers on (default: the validation split).
    pub select_data: Option<PathBuf>,
    /// Validation text of its own instead of a split of the training data.
    pub val_data: Option<PathBuf>,
    pub lora_rank: usize,
    pub lora_alpha: f32,
    pub lora_targets: Vec<LoraTarget>,
    /// Optimizer steps; none: as many as `epochs` take.
    pub steps: Option<u64>,
    pub epochs: f64,
    pub seq_len: usize,
    pub batch: usize,
    pub grad_accum: usize,
    pub lr: f32,
    /// AdamW's decoupled weight decay on the adapters.
    pub weight_decay: f32,
    /// Weight of distillation from the base model in the loss (0: cross-entropy alone; GPU only).
    pub distill_weight: f32,
    /// Steps of attention transfer before the language-model training (0: none).
    pub attention_transfer_steps: u64,
    /// A stage on longer sequences after the training (a length curriculum), if any.
    pub long_context: Option<LongContextStage>,
    pub schedule: Schedule,
    /// Seeds the adapters' initialisation, the validation split and the data order.
    pub seed: u64,
    pub val_fraction: f64,
    pub max_val_sequences: usize,
    pub prompt_format: PromptFormat,
    pub bad_rows: BadRows,
    pub sample_prompt: Option<String>,
    pub sample_max_tokens: usize,
    pub dtype: SaveDtype,
    /// Fold the adapters into the saved weights.
    pub merged: bool,
    pub resume: bool,
    /// `out_dir` may hold other files (written beside, never deleted) or a run to start again.
    pub overwrite: bool,
    /// Keep only the newest this many `checkpoint-<step>` folders.
    pub keep_checkpoints: Option<usize>,
    /// Validate / save every this many steps (0: only at the end).
    pub eval_every: u64,
    pub save_every: u64,
    pub device: Device,
}

impl LinearizeOptions {
    /// A run of `model_path` on `data_path` into `out_dir` with every other setting at its default.
    pub fn new(model_path: PathBuf, data_path: Option<PathBuf>, out_dir: PathBuf) -> Self {
        let attention = LigerAttentionConfig::default();
        let lora = LoraOptions::default();
        let optimizer = AdamWConfig::default();
        LinearizeOptions {
            model_path,
            data_path,
            out_dir,
            mixer: attention.mixer.kind,
            gsa_slots: attention.mixer.gsa_slots,
            gsa_scale: attention.mixer.gsa_scale,
            window: attention.window_keys,
            sinks: attention.sink_keys,
            grm_norm: attention.grm_norm,
            surprise_keys: attention.surprise_keys,
            surprise_repeat_tolerance: attention.surprise_repeat_tolerance,
            surprise_after_training: false,
            learn_head_mix: false,
            alpha: attention.alpha,
            beta: attention.beta,
            use_swa: attention.use_swa,
            softmax_layers: Vec::new(),
            softmax_every: None,
            softmax_auto: None,
            softmax_auto_by: LayerChoice::Loss,
            select_data: None,
            val_data: None,
            lora_rank: lora.rank,
            lora_alpha: lora.alpha,
            lora_targets: lora.targets,
            steps: Some(defaults::STEPS),
            epochs: defaults::EPOCHS,
            seq_len: defaults::SEQ_LEN,
            batch: defaults::BATCH,
            grad_accum: defaults::GRAD_ACCUM,
            lr: optimizer.lr,
            weight_decay: optimizer.weight_decay,
            distill_weight: 0.0,
            attention_transfer_steps: 0,
            long_context: None,
            schedule: Schedule::Constant,
            seed: 0,
            val_fraction: defaults::VAL_FRACTION,
            max_val_sequences: defaults::MAX_VAL_SEQUENCES,
            prompt_format: PromptFormat::Alpaca,
            bad_rows: BadRows::Fail,
            sample_prompt: Some(defaults::SAMPLE_PROMPT.to_string()),
            sample_max_tokens: defaults::SAMPLE_MAX_TOKENS,
            dtype: SaveDtype::F32,
            merged: false,
            resume: false,
            overwrite: false,
            keep_checkpoints: None,
            eval_every: 0,
            save_every: 0,
            device: Device::Cpu,
        }
    }

    /// The conversion: which layers keep softmax attention and how the others mix.
    fn conversion(&self, config: &ModelConfig) -> Result<LigerOptions> {
        let mut options = match self.softmax_every {
            Some(n) => LigerOptions::with_softmax_every(n, config.num_layers)?,
            None => LigerOptions { softmax_layers: self.softmax_layers.clone(), ..Default::default() },
        };
        let attention = &mut options.attention;
        attention.mixer.kind = self.mixer;
        attention.mixer.gsa_slots = self.gsa_slots;
        attention.mixer.gsa_scale = self.gsa_scale;
        attention.window_keys = self.window;
        attention.sink_keys = self.sinks;
        attention.grm_norm = self.grm_norm;
        attention.surprise_keys = self.surprise_keys;
        attention.surprise_repeat_tolerance = self.surprise_repeat_tolerance;
        attention.use_swa = self.use_swa;
        (attention.alpha, attention.beta) = (self.alpha, self.beta);
        options.validate(config)?;
        Ok(options)
    }

    fn training(&self) -> Result<TrainConfig> {
        let mut train = TrainConfig {
            steps: self.steps,
            epochs: self.epochs,
            seq_len: self.seq_len,
            micro_batch: self.batch,
            grad_accum: self.grad_accum,
            schedule: self.schedule.clone(),
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every,
            distill_weight: self.distill_weight,
            attention_transfer_steps: self.attention_transfer_steps,
            long_context: self.long_context,
            ..Default::default()
        };
        train.optimizer.lr = self.lr;
        train.optimizer.weight_decay = self.weight_decay;
        train.validate()?;
        Ok(train)
    }

    /// The core job, every option checked against the model's `config`.
    pub fn to_job(&self, config: &ModelConfig) -> Result<LinearizeJob> {
        let options = self.conversion(config)?;
        let lora = LoraOptions {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
            seed: self.seed,
        };
        lora.validate()?;
        let train = self.training()?;
        if let Some(n) = self.softmax_auto {
            let free = config.num_layers - options.softmax_layers.len();
            if n > free {
                return Err(Error::invalid_argument(format!(
                    "softmax_auto: {n} layers asked, but only {free} of the model's {} layers are converted",
                    config.num_layers
                )));
            }
        }
        let mut job = LinearizeJob::new(self.model_path.clone(), self.data_path.clone(), self.out_dir.clone());
        job.options = options;
        job.lora = lora;
        job.train = train;
        job.prompt_format = self.prompt_format;
        job.bad_rows = self.bad_rows;
        job.val_fraction = self.val_fraction;
        job.max_val_sequences = self.max_val_sequences;
        job.sample_prompt = self.sample_prompt.clone();
        job.sample_max_tokens = self.sample_max_tokens;
        job.save = SaveOptions { dtype: self.dtype, merged: self.merged, surprise_cache: None };
        job.resume = self.resume;
        job.overwrite = self.overwrite;
        job.keep_checkpoints = self.keep_checkpoints;
        job.auto_softmax_layers = self.softmax_auto;
        job.auto_softmax_by = self.softmax_auto_by;
        job.select_data = self.select_data.clone();
        job.val_data = self.val_data.clone();
        job.surprise_after_training = self.surprise_after_training;
        job.learn_head_mix = self.learn_head_mix;
        Ok(job)
    }
}

/// Runs the whole job on `options.device`. The options are checked against the model's config
/// before anything is loaded; the job then loads the model once. Cancelling is an ABORTED
/// error (no final checkpoint is written).
pub fn linearize(
    options: &LinearizeOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(LinearizeEvent),
) -> Result<LinearizeReport> {
    let job = options.to_job(&read_model_config(&options.model_path)?)?;
    let mut on_job_event = |event: JobEvent| on_event(event.into());
    let report = match options.device {
        Device::Cpu => run_linearize(&job, cancel, &mut on_job_event)?,
        Device::Cuda(index) => run_on_gpu(&job, index, cancel, &mut on_job_event)?,
    };
    if report.cancelled {
        return Err(Error::new(
            ErrorCode::Aborted,
            format!(
                "linearize was aborted after {} of {} training steps; no final checkpoint was written",
                report.steps_done, report.total_steps
            ),
        ));
    }
    Ok(report)
}

#[cfg(feature = "cuda")]
fn run_on_gpu(
    job: &LinearizeJob,
    index: usize,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<LinearizeReport> {
    // Refused before the GPU is opened or the model loaded.
    liger_cuda::ops::mixer::check_gpu_attention(&job.options.attention)?;
    liger_cuda::run_linearize_on_gpu(job, index, cancel, on_event)
}

#[cfg(not(feature = "cuda"))]
fn run_on_gpu(
    _job: &LinearizeJob,
    _index: usize,
    _cancel: &AtomicBool,
    _on_event: &mut dyn FnMut(JobEvent),
) -> Result<LinearizeReport> {
    Err(crate::device::no_cuda_engine())
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::testing::tiny_config;
    use liger_core::Architecture;

    fn options() -> LinearizeOptions {
        LinearizeOptions::new("model.gguf".into(), Some("data".into()), "out".into())
    }

    /// Two layers of heads wide enough for every mixer (gsa pools the key over 64 slots).
    fn config() -> ModelConfig {
        ModelConfig { head_dim: 64, hidden_size: 6 * 64, ..tiny_config(Architecture::Llama) }
    }

    fn invalid(o: LinearizeOptions) -> String {
        let err = o.to_job(&config()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
        err.message
    }

    #[test]
    fn defaults_are_the_papers_conversion_and_a_short_cpu_run() {
        let o = options();
        assert_eq!((o.mixer, o.window, o.sinks, o.alpha, o.beta, o.use_swa), (MixerKind::Gla, 65, 0, 0.5, 0.5, true));
        assert_eq!((o.grm_norm, o.surprise_keys, o.surprise_after_training), (false, 0, false));
        assert_eq!((o.lora_rank, o.lora_alpha), (8, 8.0));
        assert_eq!(o.lora_targets, [LoraTarget::Q, LoraTarget::K, LoraTarget::V]);
        assert_eq!((o.steps, o.epochs, o.seq_len, o.batch, o.grad_accum), (Some(30), 1.0, 256, 1, 1));
        assert_eq!((o.lr, o.weight_decay, o.schedule.clone(), o.seed), (1e-3, 0.0, Schedule::Constant, 0));
        assert_eq!((o.val_fraction, o.max_val_sequences), (0.02, 16));
        assert_eq!(o.sample_prompt.as_deref(), Some("Give three tips for staying healthy."));
        assert_eq!(o.sample_max_tokens, 48);
        assert_eq!(
            (o.prompt_format, o.bad_rows, o.dtype, o.merged),
            (PromptFormat::Alpaca, BadRows::Fail, SaveDtype::F32, false)
        );
        assert_eq!((o.resume, o.overwrite, o.keep_checkpoints, o.eval_every, o.save_every), (false, false, None, 0, 0));
        assert_eq!(o.device, Device::Cpu);
    }

    #[test]
    fn the_job_carries_every_option() {
        let o = LinearizeOptions {
            mixer: MixerKind::Hgrn2,
            window: 33,
            softmax_layers: vec![1],
            softmax_auto: Some(1),
            lora_rank: 4,
            lora_targets: vec![LoraTarget::Q, LoraTarget::O],
            steps: None,
            epochs: 2.0,
            seed: 7,
            sample_max_tokens: 5,
            dtype: SaveDtype::BF16,
            keep_checkpoints: Some(2),
            ..options()
        };
        let job = o.to_job(&config()).unwrap();
        assert_eq!((job.options.attention.mixer.kind, job.options.attention.window_keys), (MixerKind::Hgrn2, 33));
        assert_eq!(job.options.softmax_layers, [1]);
        assert_eq!(job.auto_softmax_layers, Some(1));
        assert_eq!((job.lora.rank, job.lora.seed, job.lora.targets.len()), (4, 7, 2));
        assert_eq!((job.train.steps, job.train.epochs, job.train.seed, job.train.seq_len), (None, 2.0, 7, 256));
        assert_eq!((job.sample_max_tokens, job.save.dtype, job.keep_checkpoints), (5, SaveDtype::BF16, Some(2)));
        assert_eq!(job.data_path, Some(PathBuf::from("data")));
    }

    #[test]
    fn softmax_every_keeps_one_layer_in_n() {
        let o = LinearizeOptions { softmax_every: Some(2), softmax_layers: vec![0], ..options() };
        assert_eq!(o.to_job(&config()).unwrap().options.softmax_layers, [1]);
        assert!(invalid(LinearizeOptions { softmax_every: Some(0), ..options() }).contains("softmax_every"));
    }

    #[test]
    fn bad_options_are_invalid_argument_naming_the_option() {
        assert!(invalid(LinearizeOptions { window: 0, ..options() }).contains("window"));
        assert!(invalid(LinearizeOptions { softmax_layers: vec![99], ..options() }).contains("layer 99 does not exist"));
        assert!(invalid(LinearizeOptions { lora_rank: 0, ..options() }).contains("lora rank"));
        assert!(invalid(LinearizeOptions { batch: 1_000_000, ..options() }).contains("micro_batch"));
        assert!(invalid(LinearizeOptions { lr: 0.0, ..options() }).contains("learning rate"));
        let grm = invalid(LinearizeOptions { mixer: MixerKind::Gsa, grm_norm: true, ..options() });
        assert!(grm.contains("grm_norm") && grm.contains("gsa"), "{grm}");
        // The tiny model has 2 layers, one of them kept as softmax.
        let auto = invalid(LinearizeOptions { softmax_layers: vec![0], softmax_auto: Some(2), ..options() });
        assert_eq!(auto, "softmax_auto: 2 layers asked, but only 1 of the model's 2 layers are converted");
    }

    #[test]
    fn a_missing_model_fails_before_any_work() {
        let o = LinearizeOptions::new("no/such/model.gguf".into(), None, "never".into());
        let mut events = Vec::new();
        let err = linearize(&o, &AtomicBool::new(false), &mut |e| events.push(e)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Io);
        assert!(events.is_empty());
        assert!(!std::path::Path::new("never").exists());
    }
}
