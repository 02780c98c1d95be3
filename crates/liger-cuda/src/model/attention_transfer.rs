//! Attention transfer on the GPU: each Liger layer's attention trained toward the base
//! model's softmax attention on the base's own residual stream (the method and its loss:
//! liger-core `convert/attention_transfer.rs`, the CPU twin of this file).
//!
//! The base model runs beside the model on the same stream as a frozen teacher. Layer by
//! layer, both attentions read the teacher's normalised stream; the model's q, k, v adapters
//! get the gradient of the squared difference, which stops at the projections, and the
//! teacher's layer moves the stream on. Nothing is kept across layers.

use super::layer::Rows;
use super::train::add_to_host;
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::gemm::GemmInput;
use crate::ops::attention_transfer::attention_transfer_rows;
use crate::ops::embedding::embedding_gather;
use liger_core::convert::LoraGrads;
use liger_core::model::BaseModel;
use liger_core::nn::loss::{LossOutput, IGNORE};
use liger_core::{Error, ErrorCode, Result};

impl<T: GemmInput> GpuLigerModel<T> {
    /// Uploads `base` as the teacher of attention transfer (`Some`), or frees it (`None`).
    pub fn set_attention_teacher(&mut self, base: Option<BaseModel>) -> Result<()> {
        self.attention_teacher = None;
        let Some(base) = base else { return Ok(()) };
        let c = self.config();
        let b = &base.config;
        if (b.vocab_size, b.hidden_size, b.num_layers, b.q_size(), b.kv_size())
            != (c.vocab_size, c.hidden_size, c.num_layers, c.q_size(), c.kv_size())
        {
            return Err(Error::invalid_argument(
                "the attention teacher is not the base of this model (its shapes differ); use the model that was converted",
            ));
        }
        self.host.attention_transfer_layers()?;
        let teacher = GpuLigerModel::from_base(self.ctx.on_same_stream(), base)?;
        self.attention_teacher = Some(Box::new(teacher));
        Ok(())
    }

    /// The attention-transfer loss of a batch of equally long sequences (summed over their
    /// counted positions), and `grads += grad_scale · d(loss_sum)/d(LoRA)`. A non-finite loss
    /// is an error and leaves `grads` untouched.
    pub fn attention_transfer_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        let teacher = self.attention_teacher.as_deref().ok_or_else(|| {
            Error::invalid_argument(
                "attention transfer needs the base model as its teacher: call set_attention_teacher first",
            )
        })?;
        let rows = self.check_batch(inputs, labels)?;
        self.host.check_grads(grads)?;
        let weight = 1.0 / self.host.attention_transfer_layers()? as f32;
        self.sync_lora()?;
        let ctx = &self.ctx;
        let c = self.config();
        let n = rows.n();
        let flat: Vec<u32> = labels.iter().flat_map(|s| s.iter().copied()).collect();
        let labels_gpu = GpuBuffer::from_host(ctx, &flat)?;
        let start = GpuBuffer::<u32>::zeros(ctx, rows.batch)?;
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.iter().copied()).collect();
        let mut x = GpuBuffer::<f32>::zeros(ctx, n * c.hidden_size)?;
        embedding_gather(ctx, &teacher.weights.embed, c.hidden_size, &ids, &mut x)?;
        let mut row_loss = GpuBuffer::<f32>::zeros(ctx, n)?;
        let mut device_grads = self.zero_device_grads()?;
        for (layer, layer_grads) in device_grads.iter_mut().enumerate() {
            let (h, h_t) = teacher.norm(&x, &teacher.weights.layers[layer].attn_norm)?;
            let base_qkv = teacher.project_qkv(layer, &h, &h_t, n)?;
            let (target, target_t, _) = teacher.attention_fresh(layer, &base_qkv, rows, &start)?;
            drop(base_qkv);
            if !self.host.options.is_softmax_layer(layer) {
                self.transfer_layer(
                    layer,
                    &h,
                    &h_t,
                    &target,
                    &labels_gpu,
                    rows,
                    &start,
                    weight,
                    grad_scale,
                    &mut row_loss,
                    layer_grads,
                )?;
            }
            drop(h_t);
            teacher.o_proj_from(layer, &target, target_t, n, &mut x)?;
            teacher.mlp(layer, &mut x, n)?;
        }
        let loss_sum: f64 = row_loss.to_host()?.iter().map(|&l| l as f64).sum();
        if !loss_sum.is_finite() {
            return Err(Error::new(
                ErrorCode::NonFiniteLoss,
                "the attention-transfer loss is not finite; lower the learning rate or check the data",
            ));
        }
        add_to_host(&device_grads, grads)?;
        Ok(LossOutput { loss_sum, count: flat.iter().filter(|&&l| l != IGNORE).count() })
    }

    /// One Liger layer's part: its attention on the teacher's normalised stream `h`, the loss
    /// against `target` added into `row_loss`, and its q, k, v adapters' gradients.
    #[allow(clippy::too_many_arguments)]
    fn transfer_layer(
        &self,
        layer: usize,
        h: &GpuBuffer<f32>,
        h_t: &GpuBuffer<T>,
        target: &GpuBuffer<f32>,
        labels: &GpuBuffer<u32>,
        rows: Rows,
        start: &GpuBuffer<u32>,
        weight: f32,
        grad_scale: f32,
        row_loss: &mut GpuBuffer<f32>,
        grads: &mut [Option<super::train::GpuLoraGrad>; 4],
    ) -> Result<()> {
        let ctx = &self.ctx;
        let c = self.config();
        let n = rows.n();
        let qkv = self.project_qkv(layer, h, h_t, n)?;
        let (o, _, softmax) = self.attention_fresh(layer, &qkv, rows, start)?;
        let mut d_o = GpuBuffer::<f32>::zeros(ctx, o.len())?;
        attention_transfer_rows(ctx, &o, target, labels, c.q_size(), weight, grad_scale, &mut d_o, row_loss)?;
        drop(o);
        // Learned branch weights are used as they are: this stage trains the adapters.
        let d_qkv = self.attention_backward(layer, &qkv, softmax.as_ref(), rows, start, &d_o, None)?;
        drop(d_o);
        // The input gradient stops here: the next layer reads the teacher's stream.
        let mut dh = GpuBuffer::<f32>::zeros(ctx, n * c.hidden_size)?;
        self.projections_backward(layer, h, &qkv, d_qkv, n, grads, &mut dh)
    }
}
