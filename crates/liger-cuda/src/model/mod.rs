//! The Liger model on the GPU: training (loss and LoRA gradients of a batch) and inference
//! (prefill and decoding steps), with the CPU engine (`liger_core::convert::LigerModel`) as
//! its oracle.
//!
//! [`GpuLigerModel`] owns a host [`LigerModel`] (configuration, options, tokenizer and the
//! LoRA parameters, which the trainer and AdamW update on the host exactly as on the CPU) and
//! the device copies of its weights: frozen matrices and the LM head in the storage type `T`
//! (f32 for exact comparisons with the CPU, bf16 for speed), norms and the adapters in f32.
//! The adapters are uploaded again before the next GPU call whenever the host copies may
//! have changed.

mod attention_transfer;
mod decode;
mod decode_step;
pub mod glue;
mod layer;
pub mod memory;
mod score;
mod train;
mod weights;

pub use decode::GpuLigerState;
pub use layer::Rows;
pub use score::{all_softmax, upload_for_scoring};
pub use weights::{shape_only_host, GpuLayer, GpuLora, GpuWeights};

use crate::context::GpuContext;
use crate::gemm::GemmInput;
use crate::ops::head_mix::GpuHeadMix;
use liger_core::config::ModelConfig;
use liger_core::convert::{LigerModel, LigerOptions, LoraGrads};
use liger_core::liger::HeadShape;
use liger_core::nn::loss::LossOutput;
use liger_core::train::trainer::Trainable;
use liger_core::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use weights::{refresh_lora, upload_lora, GpuLoraSet};

/// A Liger model whose forward, backward and decoding run on one GPU.
pub struct GpuLigerModel<T: GemmInput> {
    ctx: GpuContext,
    host: LigerModel,
    weights: GpuWeights<T>,
    lora: Mutex<GpuLoraSet>,
    /// Learned branch weights per layer (`None` for softmax layers; empty when the model
    /// mixes every head alike), uploaded again with the adapters.
    head_mix: Mutex<Vec<Option<GpuHeadMix>>>,
    /// Set when the host adapters may have changed since the last upload.
    lora_stale: AtomicBool,
    /// Counts the adapter uploads (a captured decoding step reads the adapters of one upload).
    lora_version: AtomicU64,
    /// Replay decoding steps from CUDA graphs (on by default).
    decode_graphs: AtomicBool,
    /// Always recompute activations in the backward pass (else only when memory is short).
    recompute: AtomicBool,
    /// Most layers whose activations the forward keeps for the backward pass.
    kept_layers_limit: AtomicUsize,
    shape: HeadShape,
    /// The teacher training distills from, if any ([`GpuLigerModel::distill_from`]).
    distillation: Option<Box<Distillation<T>>>,
    /// The base model attention transfer trains toward, while it runs
    /// ([`GpuLigerModel::set_attention_teacher`]).
    attention_teacher: Option<Box<GpuLigerModel<T>>>,
}

/// Every layer's learned branch weights on the device (empty when the model learns none).
fn upload_head_mix(ctx: &GpuContext, mix: &[Option<liger_core::liger::HeadMix>]) -> Result<Vec<Option<GpuHeadMix>>> {
    mix.iter().map(|m| m.as_ref().map(|m| GpuHeadMix::upload(ctx, m)).transpose()).collect()
}

/// A frozen teacher on the same GPU and the weight of its KL term in the training loss.
struct Distillation<T: GemmInput> {
    teacher: GpuLigerModel<T>,
    weight: f32,
}

impl<T: GemmInput> GpuLigerModel<T> {
    /// Uploads `model` to the GPU of `ctx` (frozen weights dequantised to `T`).
    pub fn new(ctx: GpuContext, model: LigerModel) -> Result<Self> {
        // Refused before the weights go up.
        crate::ops::mixer::check_gpu_attention(&model.options.attention)?;
        let weights = GpuWeights::upload(&ctx, model.config(), &model.base.weights)?;
        Self::with_weights(ctx, model, weights)
    }

    /// A model with device weights made elsewhere (e.g. [`GpuWeights::random`] for
    /// benchmarks); `model` supplies the configuration, options and adapters.
    pub fn with_weights(ctx: GpuContext, model: LigerModel, weights: GpuWeights<T>) -> Result<Self> {
        let c = model.config();
        check_supported(c)?;
        crate::ops::mixer::check_gpu_attention(&model.options.attention)?;
        let shape = HeadShape::new(c.num_heads, c.num_kv_heads, c.head_dim)?;
        let att = &model.options.attention;
        if att.use_swa && att.surprise_keys > 0 {
            crate::ops::attention::repeat_rule_shared_bytes(att.surprise_keys, shape.d, att.surprise_repeat_tolerance)?;
        }
        if weights.layers.len() != c.num_layers {
            return Err(Error::shape(format!(
                "the GPU weights have {} layers; the model has {}",
                weights.layers.len(),
                c.num_layers
            )));
        }
        model.options.validate(c)?;
        // A bf16 model's adapter products run in TF32: the bf16 products around them set its precision.
        let lora = upload_lora(&ctx, &model.lora, T::KERNEL_SUFFIX == "bf16")?;
        let head_mix = upload_head_mix(&ctx, &model.options.head_mix)?;
        Ok(GpuLigerModel {
            ctx,
            host: model,
            weights,
            lora: Mutex::new(lora),
            head_mix: Mutex::new(head_mix),
            lora_stale: AtomicBool::new(false),
            lora_version: AtomicU64::new(0),
            decode_graphs: AtomicBool::new(true),
            recompute: AtomicBool::new(false),
            kept_layers_limit: AtomicUsize::new(usize::MAX),
            shape,
            distillation: None,
            attention_teacher: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.host.config()
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The host model: configuration, options, tokenizer and the current adapters.
    pub fn host(&self) -> &LigerModel {
        &self.host
    }

    /// The host model, to change its adapters (they are uploaded again before the next GPU call).
    pub fn host_mut(&mut self) -> &mut LigerModel {
        self.lora_stale.store(true, Ordering::Release);
        &mut self.host
    }

    /// With `true`, the backward pass always runs each layer's forward again instead of keeping
    /// its activations from the forward pass (less memory, one more forward); with `false`
    /// (the default) it does so only when keeping them would take more than half the free memory.
    pub fn set_recompute(&self, always: bool) {
        self.recompute.store(always, Ordering::Relaxed);
    }

    /// Keep the activations of at most `limit` layers (the last ones) from the forward pass;
    /// the backward recomputes the others' (`None`: as many as fit in half the free memory,
    /// the default). A middle ground between memory and the time of one more forward.
    pub fn set_kept_layers(&self, limit: Option<usize>) {
        self.kept_layers_limit.store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// With `false`, decoding steps run their launches one by one instead of replaying a
    /// captured CUDA graph (the same results; for comparisons and debugging).
    pub fn set_decode_graphs(&self, on: bool) {
        self.decode_graphs.store(on, Ordering::Relaxed);
    }

    fn decode_graphs_enabled(&self) -> bool {
        self.decode_graphs.load(Ordering::Relaxed)
    }

    /// How many times the adapters were uploaded again.
    fn lora_version(&self) -> u64 {
        self.lora_version.load(Ordering::Acquire)
    }

    /// The host model with the trained adapters, e.g. to save a checkpoint.
    pub fn into_host(self) -> LigerModel {
        self.host
    }

    /// Uploads the adapters and learned branch weights when the host copies may have changed.
    fn sync_lora(&self) -> Result<()> {
        if self.lora_stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.upload_trained() {
                self.lora_stale.store(true, Ordering::Release);
                return Err(e);
            }
            self.lora_version.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Copies the host's adapters and learned branch weights into their device buffers.
    fn upload_trained(&self) -> Result<()> {
        refresh_lora(&mut *self.lora_guard()?, &self.host.lora)?;
        let mut mix = self.head_mix_guard()?;
        for (gpu, host) in mix.iter_mut().zip(&self.host.options.head_mix) {
            if let (Some(gpu), Some(host)) = (gpu, host) {
                gpu.refresh(host)?;
            }
        }
        Ok(())
    }

    fn lora_guard(&self) -> Result<MutexGuard<'_, GpuLoraSet>> {
        self.lora.lock().map_err(|_| Error::internal("the GPU adapter lock is poisoned"))
    }

    fn head_mix_guard(&self) -> Result<MutexGuard<'_, Vec<Option<GpuHeadMix>>>> {
        self.head_mix.lock().map_err(|_| Error::internal("the GPU branch weight lock is poisoned"))
    }

    /// Layer `layer`'s learned branch weights among `all` (from [`Self::head_mix_guard`]).
    fn layer_head_mix<'a>(&self, all: &'a [Option<GpuHeadMix>], layer: usize) -> Result<&'a GpuHeadMix> {
        all.get(layer)
            .and_then(|m| m.as_ref())
            .ok_or_else(|| Error::internal(format!("layer {layer} learns its branch weights but has none on the GPU")))
    }
}

/// What the GPU kernels cannot run, as a typed error saying to use the CPU backend.
fn check_supported(c: &ModelConfig) -> Result<()> {
    let cpu = "use the CPU backend for this model";
    if !c.head_dim.is_multiple_of(32) || c.head_dim > crate::ops::mixer::MAX_HEAD_DIM {
        return Err(Error::invalid_argument(format!(
            "the GPU kernels take head sizes that are multiples of 32 up to {}, this model's is {}: {cpu}",
            crate::ops::mixer::MAX_HEAD_DIM,
            c.head_dim
        )));
    }
    Ok(())
}

/// Runs `run` on a micro-batch as one GPU batch when its sequences are equally long, else on
/// each sequence alone, and sums the losses.
fn in_gpu_batches(
    inputs: &[&[u32]],
    labels: &[&[u32]],
    mut run: impl FnMut(&[&[u32]], &[&[u32]]) -> Result<LossOutput>,
) -> Result<LossOutput> {
    let same = inputs.iter().chain(labels).all(|s| s.len() == inputs.first().map_or(0, |f| f.len()));
    if same {
        return run(inputs, labels);
    }
    liger_core::train::trainer::sequence_by_sequence(inputs, labels, |i, l| run(&[i], &[l]))
}

/// The trainer updates the adapters on the host (AdamW, clipping, schedules and checkpoints
/// are the CPU engine's); each step's gradients come back from the GPU.
impl<T: GemmInput> Trainable for GpuLigerModel<T> {
    type Grads = LoraGrads;
    fn new_grads(&self) -> LoraGrads {
        self.host.new_lora_grads()
    }
    fn forward_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        self.forward_backward_batch(&[inputs], &[labels], grad_scale, grads)
    }
    fn forward_backward_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        in_gpu_batches(inputs, labels, |i, l| GpuLigerModel::forward_backward_batch(self, i, l, grad_scale, grads))
    }
    fn loss(&self, inputs: &[u32], labels: &[u32]) -> Result<LossOutput> {
        self.loss_batch(&[inputs], &[labels])
    }
    fn params(&self) -> Vec<(String, &[f32])> {
        self.host.trained_params()
    }
    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.lora_stale.store(true, Ordering::Release);
        self.host.trained_params_mut()
    }
    fn decays(&self) -> Vec<bool> {
        self.host.trained_param_decays()
    }
}

/// The linearize job evaluates, trains and samples on the GPU; checkpoints read the host model.
impl<T: GemmInput> liger_core::train::job::EngineModel for GpuLigerModel<T> {
    fn host_model(&self) -> &LigerModel {
        &self.host
    }
    fn state_bytes_with(&self, options: &LigerOptions) -> usize {
        self.state_bytes_per_sequence_with(options)
    }
    fn attention_transfer_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        in_gpu_batches(inputs, labels, |i, l| GpuLigerModel::attention_transfer_batch(self, i, l, grad_scale, grads))
    }
    const ATTENTION_TEACHER_NEEDS_BASE: bool = true;
    fn set_attention_teacher(&mut self, base: Option<liger_core::model::BaseModel>) -> Result<()> {
        GpuLigerModel::set_attention_teacher(self, base)
    }
    const DISTILLS: bool = true;
    fn distill_from(&mut self, base: liger_core::model::BaseModel, weight: f32) -> Result<()> {
        GpuLigerModel::distill_from(self, base, weight)
    }
}

/// Opens GPU `index` for the CLI and the bindings: a machine without a usable GPU (no driver,
/// no GPU, a driver too old, no such index) is a `DeviceUnavailable` error that says to use
/// the CPU backend.
pub fn open_gpu(index: usize) -> Result<GpuContext> {
    GpuContext::new(index).map_err(|e| match e.code {
        liger_core::ErrorCode::InvalidArgument => Error::new(liger_core::ErrorCode::DeviceUnavailable, e.message),
        _ => e,
    })
}

/// The linearize job of `liger_core` on GPU `index`: the converted model is uploaded with
/// frozen weights in bf16 and trained there.
pub fn run_linearize_on_gpu(
    job: &liger_core::train::job::LinearizeJob,
    index: usize,
    cancel: &std::sync::atomic::AtomicBool,
    on_event: &mut dyn FnMut(liger_core::train::job::JobEvent),
) -> Result<liger_core::train::job::LinearizeReport> {
    let gpu = open_gpu(index)?;
    memory::keep_freed_memory_pooled(&gpu)?;
    let mut ctx = Some(gpu);
    liger_core::train::job::run_linearize_on(job, cancel, on_event, &mut |model| {
        // The job uploads one model to train; choosing softmax layers by measurement uploads
        // one per layer before it, each with a context of its own.
        let ctx = match ctx.take() {
            Some(ctx) => ctx,
            None => {
                let gpu = open_gpu(index)?;
                memory::keep_freed_memory_pooled(&gpu)?;
                gpu
            }
        };
        GpuLigerModel::<half::bf16>::new(ctx, model)
    })
}
