//! The model's weights on the GPU: frozen base weights in the storage type `T` (dequantised
//! once at upload) and the LM head in `T` too, norms and biases in f32, LoRA adapters in f32.

use super::glue::fill_uniform;
use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::gemm::{gemm_scaled, gemm_tf32_scaled, GemmDims};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use liger_core::config::ModelConfig;
use liger_core::convert::{LoraSet, LoraTarget};
use liger_core::weights::ModelWeights;
use liger_core::{QTensor, Result};

/// One decoder layer's frozen weights. Matrices are `[out, in]` as stored in checkpoints.
pub struct GpuLayer<T> {
    pub attn_norm: GpuBuffer<f32>,
    pub wq: GpuBuffer<T>,
    pub wk: GpuBuffer<T>,
    pub wv: GpuBuffer<T>,
    pub wo: GpuBuffer<T>,
    pub bq: Option<GpuBuffer<f32>>,
    pub bk: Option<GpuBuffer<f32>>,
    pub bv: Option<GpuBuffer<f32>>,
    pub q_norm: Option<GpuBuffer<f32>>,
    pub k_norm: Option<GpuBuffer<f32>>,
    pub ffn_norm: GpuBuffer<f32>,
    pub w_gate: GpuBuffer<T>,
    pub w_up: GpuBuffer<T>,
    pub w_down: GpuBuffer<T>,
}

/// Every frozen weight, plus RoPE's inverse frequencies.
pub struct GpuWeights<T> {
    pub embed: GpuBuffer<T>,
    /// The LM head (`vocab x hidden`); `None` when the model ties it to the embedding, which
    /// then serves as the head (one copy on the device): see [`GpuWeights::head`].
    pub head: Option<GpuBuffer<T>>,
    pub final_norm: GpuBuffer<f32>,
    pub layers: Vec<GpuLayer<T>>,
    pub inv_freq: GpuBuffer<f32>,
}

fn upload_matrix<T: GpuElement>(ctx: &GpuContext, w: &QTensor) -> Result<GpuBuffer<T>> {
    let values: Vec<T> = w.to_f32().iter().map(|&x| T::from_f32(x)).collect();
    GpuBuffer::from_host(ctx, &values)
}

fn upload_opt(ctx: &GpuContext, v: &Option<Vec<f32>>) -> Result<Option<GpuBuffer<f32>>> {
    v.as_ref().map(|v| GpuBuffer::from_host(ctx, v)).transpose()
}

impl<T: GpuElement> GpuWeights<T> {
    /// The LM head: its own matrix, or the embedding when the model ties them.
    pub fn head(&self) -> &GpuBuffer<T> {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Uploads `weights`, dequantising every matrix to `T`.
    pub fn upload(ctx: &GpuContext, cfg: &ModelConfig, weights: &ModelWeights) -> Result<Self> {
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: GpuBuffer::from_host(ctx, &l.attn_norm)?,
                    wq: upload_matrix(ctx, &l.wq)?,
                    wk: upload_matrix(ctx, &l.wk)?,
                    wv: upload_matrix(ctx, &l.wv)?,
                    wo: upload_matrix(ctx, &l.wo)?,
                    bq: upload_opt(ctx, &l.bq)?,
                    bk: upload_opt(ctx, &l.bk)?,
                    bv: upload_opt(ctx, &l.bv)?,
                    q_norm: upload_opt(ctx, &l.q_norm)?,
                    k_norm: upload_opt(ctx, &l.k_norm)?,
                    ffn_norm: GpuBuffer::from_host(ctx, &l.ffn_norm)?,
                    w_gate: upload_matrix(ctx, &l.w_gate)?,
                    w_up: upload_matrix(ctx, &l.w_up)?,
                    w_down: upload_matrix(ctx, &l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuWeights {
            embed: upload_matrix(ctx, &weights.embed)?,
            head: weights.lm_head.as_ref().map(|w| upload_matrix(ctx, w)).transpose()?,
            final_norm: GpuBuffer::from_host(ctx, &weights.final_norm)?,
            layers,
            inv_freq: GpuBuffer::from_host(ctx, &cfg.rope_inv_freq())?,
        })
    }

    /// Random weights of `cfg`'s shapes made on the GPU (no host copy: for benchmarks of
    /// large shapes). Matrices uniform in ±1.7/sqrt(in), norms near 1, no biases or q/k norms.
    pub fn random(ctx: &GpuContext, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let mut next_seed = seed;
        let mut matrix = |rows: usize, cols: usize| -> Result<GpuBuffer<T>> {
            next_seed = next_seed.wrapping_add(0x9e37_79b9);
            let mut m = GpuBuffer::zeros(ctx, rows * cols)?;
            fill_uniform(ctx, &mut m, next_seed, 0.0, 1.7 / (cols as f32).sqrt())?;
            Ok(m)
        };
        let (h, q, kv, f, vocab) =
            (cfg.hidden_size, cfg.q_size(), cfg.kv_size(), cfg.intermediate_size, cfg.vocab_size);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            layers.push(GpuLayer {
                attn_norm: GpuBuffer::from_host(ctx, &vec![1.0f32; h])?,
                wq: matrix(q, h)?,
                wk: matrix(kv, h)?,
                wv: matrix(kv, h)?,
                wo: matrix(h, q)?,
                bq: None,
                bk: None,
                bv: None,
                q_norm: None,
                k_norm: None,
                ffn_norm: GpuBuffer::from_host(ctx, &vec![1.0f32; h])?,
                w_gate: matrix(f, h)?,
                w_up: matrix(f, h)?,
                w_down: matrix(h, f)?,
            });
        }
        let embed = matrix(vocab, h)?;
        let head = if cfg.tie_word_embeddings {
            None
        } else {
            let mut head = GpuBuffer::<T>::zeros(ctx, vocab * h)?;
            fill_uniform(ctx, &mut head, seed ^ 0x5eed, 0.0, 1.7 / (h as f32).sqrt())?;
            Some(head)
        };
        Ok(GpuWeights {
            embed,
            head,
            final_norm: GpuBuffer::from_host(ctx, &vec![1.0f32; h])?,
            layers,
            inv_freq: GpuBuffer::from_host(ctx, &cfg.rope_inv_freq())?,
        })
    }
}

/// One LoRA adapter on the GPU: `y += scale * (x Aᵀ) Bᵀ`, A `[rank, in]`, B `[out, rank]`.
pub struct GpuLora {
    pub a: GpuBuffer<f32>,
    pub b: GpuBuffer<f32>,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
    /// Multiply in TF32 (the adapters of a bf16 model, whose other products are bf16).
    pub tf32: bool,
}

impl GpuLora {
    /// One product of the adapter's forward or backward: f32, or TF32 when [`GpuLora::tf32`].
    pub fn gemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        ctx: &GpuContext,
        dims: GemmDims,
        a: &A,
        b: &B,
        c: &mut C,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_scaled(ctx, dims, a, b, c, 1.0, accumulate)
    }

    /// As [`GpuLora::gemm`], the product multiplied by `alpha` (the adapter's scale, folded
    /// into the product instead of a pass of its own).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_scaled<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        ctx: &GpuContext,
        dims: GemmDims,
        a: &A,
        b: &B,
        c: &mut C,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        if self.tf32 {
            gemm_tf32_scaled(ctx, dims, a, b, c, alpha, accumulate)
        } else {
            gemm_scaled(ctx, dims, a, b, c, alpha, accumulate)
        }
    }
}

/// Every layer's adapters, indexed by `LoraTarget` (q, k, v, o).
pub type GpuLoraSet = Vec<[Option<GpuLora>; 4]>;

/// Uploads every adapter of `lora`; `tf32`: their products run in TF32 (see [`GpuLora::tf32`]).
pub fn upload_lora(ctx: &GpuContext, lora: &LoraSet, tf32: bool) -> Result<GpuLoraSet> {
    lora.layers
        .iter()
        .map(|l| {
            let mut out: [Option<GpuLora>; 4] = Default::default();
            for target in LoraTarget::ALL {
                if let Some(a) = l.get(target) {
                    out[target as usize] = Some(GpuLora {
                        a: GpuBuffer::from_host(ctx, &a.a)?,
                        b: GpuBuffer::from_host(ctx, &a.b)?,
                        rank: a.rank,
                        in_features: a.in_features,
                        out_features: a.out_features,
                        scale: a.scale,
                        tf32,
                    });
                }
            }
            Ok(out)
        })
        .collect()
}

/// Copies the values of `lora` into adapters uploaded from it before (same shapes).
pub fn refresh_lora(gpu: &mut GpuLoraSet, lora: &LoraSet) -> Result<()> {
    for (g, l) in gpu.iter_mut().zip(&lora.layers) {
        for target in LoraTarget::ALL {
            if let (Some(g), Some(a)) = (&mut g[target as usize], l.get(target)) {
                g.a.copy_from_host(&a.a)?;
                g.b.copy_from_host(&a.b)?;
                g.scale = a.scale;
            }
        }
    }
    Ok(())
}

/// A host model of `cfg`'s shapes without host weights (empty placeholders) and with a
/// one-token tokenizer: the configuration, options and adapters of a GPU model whose weights
/// are made on the GPU ([`GpuWeights::random`]), so that large shapes need no host copy.
pub fn shape_only_host(
    cfg: &liger_core::config::ModelConfig,
    options: liger_core::convert::LigerOptions,
    lora: liger_core::convert::LoraOptions,
) -> Result<liger_core::convert::LigerModel> {
    use liger_core::model::{BaseModel, ModelFormat};
    use liger_core::tokenizer::Tokenizer;
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
    let tokenizer = Tokenizer::from_json(json.as_bytes(), "placeholder tokenizer")?;
    let weights = ModelWeights {
        embed: QTensor::from_f32(0, 0, Vec::new()),
        layers: Vec::new(),
        final_norm: Vec::new(),
        lm_head: None,
    };
    let base = BaseModel::new(
        cfg.clone(),
        weights,
        tokenizer,
        None,
        "random weights on the GPU".into(),
        ModelFormat::Checkpoint,
    );
    liger_core::convert::linearize(base, options, lora)
}
