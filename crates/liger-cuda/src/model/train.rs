//! Loss and LoRA gradients of a batch on the GPU. As on the CPU, the forward keeps only each
//! layer's input and the backward runs each layer's forward again just before going back
//! through it (activation checkpointing). CPU twin: `LigerModel::forward_backward`
//! (liger-core `convert/backward.rs`).

use super::glue::{add_into, grm_normalize_backward, rope_backward_add, scale_pair, scaled, widen, RopeLayout};
use super::layer::{copy, linear_input_grad, LayerTape, Qkv, Rows, SoftmaxTape};
use super::weights::GpuLora;
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::gemm::{GemmDims, GemmInput};
use crate::ops::attention::{attention_backward, surprise_attention_backward, AttentionDims};
use crate::ops::cross_entropy::{
    cross_entropy, distillation_loss, rows_per_chunk, rows_per_distillation_chunk, GpuTeacher,
};
use crate::ops::embedding::embedding_gather;
use crate::ops::head_mix::{head_mix_grads, head_mix_split, GpuHeadMix};
use crate::ops::mixer::{mixer_chunk_backward_in_segments, MixerDims};
use crate::ops::rms_norm::{rms_norm_backward, rms_norm_backward_add};
use crate::ops::swiglu::swiglu_backward;
use liger_core::convert::{LoraGrads, LoraTarget};
use liger_core::nn::loss::LossOutput;
use liger_core::{Error, ErrorCode, Result};

/// Gradients of one adapter on the GPU.
pub(super) struct GpuLoraGrad {
    a: GpuBuffer<f32>,
    b: GpuBuffer<f32>,
}

/// Given `dy` (`n x out`) and the forward's `us = scale · x Aᵀ`: accumulates dA and dB, and
/// adds the adapter's part of the input gradient into `dx`.
#[allow(clippy::too_many_arguments)]
fn lora_backward(
    ctx: &GpuContext,
    a: &GpuLora,
    x: &GpuBuffer<f32>,
    us: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    n: usize,
    grad: &mut GpuLoraGrad,
    dx: &mut GpuBuffer<f32>,
) -> Result<()> {
    let (r, i, o) = (a.rank, a.in_features, a.out_features);
    // dB += dyᵀ us
    a.gemm(
        ctx,
        GemmDims { m: o, n: r, k: n, a_transposed: true, b_transposed: false },
        dy.slice(),
        us.slice(),
        grad.b.slice_mut(),
        true,
    )?;
    // du = scale · dy B
    let mut du = GpuBuffer::<f32>::zeros(ctx, n * r)?;
    a.gemm_scaled(
        ctx,
        GemmDims { m: n, n: r, k: o, a_transposed: false, b_transposed: false },
        dy.slice(),
        a.b.slice(),
        du.slice_mut(),
        a.scale,
        false,
    )?;
    // dA += duᵀ x ; dx += du A
    a.gemm(
        ctx,
        GemmDims { m: r, n: i, k: n, a_transposed: true, b_transposed: false },
        du.slice(),
        x.slice(),
        grad.a.slice_mut(),
        true,
    )?;
    a.gemm(
        ctx,
        GemmDims { m: n, n: i, k: r, a_transposed: false, b_transposed: false },
        du.slice(),
        a.a.slice(),
        dx.slice_mut(),
        true,
    )
}

/// `dx += d(rms_norm)/dx · dy`: the backward of `x -> norm(x)` added to the residual path's gradient.
fn norm_backward_add(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
) -> Result<()> {
    let mut rstd = GpuBuffer::zeros(ctx, x.len() / weight.len().max(1))?;
    rms_norm_backward_add(ctx, x, weight, eps, dy, dx, &mut rstd)
}

impl<T: GemmInput> GpuLigerModel<T> {
    /// Checks a batch: `inputs` and `labels` hold `batch` sequences of equal length.
    pub(super) fn check_batch(&self, inputs: &[&[u32]], labels: &[&[u32]]) -> Result<Rows> {
        let tokens = inputs.first().map_or(0, |s| s.len());
        if inputs.is_empty() || tokens == 0 || inputs.len() != labels.len() {
            return Err(Error::invalid_argument(format!(
                "a GPU batch needs at least one non-empty sequence and one label sequence per input; got {} inputs and {} label sequences",
                inputs.len(),
                labels.len()
            )));
        }
        if let Some((i, bad)) =
            inputs.iter().zip(labels).enumerate().find(|(_, (x, l))| x.len() != tokens || l.len() != tokens)
        {
            return Err(Error::invalid_argument(format!(
                "sequence {i} of the batch has {} inputs and {} labels; every sequence of a GPU batch must have {tokens} of each (pack the data to one length)",
                bad.0.len(),
                bad.1.len()
            )));
        }
        if let Some(limit) = liger_core::generate::CausalLm::max_tokens(&self.host) {
            if tokens > limit {
                return Err(Error::new(
                    ErrorCode::ContextOverflow,
                    format!("sequences of {tokens} tokens exceed the context of {limit} of the hybrid model's softmax layers; shorten them"),
                ));
            }
        }
        Ok(Rows { batch: inputs.len(), tokens })
    }

    /// The residual stream after the last layer for a batch from position 0; keeps each
    /// layer's input and, with `tapes`, the activations of the last `tapes.1` layers for the
    /// backward pass.
    pub(super) fn forward_rows(
        &self,
        inputs: &[&[u32]],
        rows: Rows,
        start: &GpuBuffer<u32>,
        mut layer_inputs: Option<&mut Vec<GpuBuffer<f32>>>,
        mut tapes: Option<(&mut Vec<LayerTape<T>>, usize)>,
    ) -> Result<GpuBuffer<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.iter().copied()).collect();
        let mut x = GpuBuffer::<f32>::zeros(ctx, rows.n() * c.hidden_size)?;
        embedding_gather(ctx, &self.weights.embed, c.hidden_size, &ids, &mut x)?;
        for layer in 0..c.num_layers {
            if let Some(kept) = layer_inputs.as_deref_mut() {
                kept.push(copy(ctx, &x)?);
            }
            let keep = tapes.as_ref().is_some_and(|(_, kept)| layer + kept >= c.num_layers);
            let tape = self.layer_forward_fresh(layer, &mut x, rows, start, keep)?;
            if let (Some((tapes, _)), Some(tape)) = (tapes.as_mut(), tape) {
                tapes.push(tape);
            }
        }
        Ok(x)
    }

    /// The final norm of `x` and the cross-entropy through the LM head (`dx` receives the
    /// gradient w.r.t. `x` of `grad_scale · loss_sum` when given). With `teacher_h` (the
    /// teacher's normalised final states, see [`GpuLigerModel::distill_from`]) the loss is the
    /// distillation loss instead.
    fn loss_of(
        &self,
        x: &GpuBuffer<f32>,
        teacher_h: Option<&GpuBuffer<T>>,
        labels: &[u32],
        grad_scale: f32,
        dx: Option<&mut GpuBuffer<f32>>,
    ) -> Result<LossOutput> {
        let ctx = &self.ctx;
        let c = self.config();
        let (_, hf) = self.norm(x, &self.weights.final_norm)?;
        let (head, hs, vocab) = (self.weights.head(), c.hidden_size, c.vocab_size);
        let mut dh = match dx {
            Some(_) => Some(GpuBuffer::zeros(ctx, x.len())?),
            None => None,
        };
        let out = match (teacher_h, &self.distillation) {
            (Some(th), Some(d)) => {
                let teacher = GpuTeacher { h: th, weight: d.weight };
                let chunk = rows_per_distillation_chunk::<T>(vocab);
                distillation_loss(ctx, &hf, teacher, head, hs, vocab, labels, grad_scale, dh.as_mut(), chunk)?
            }
            _ => cross_entropy(ctx, &hf, head, hs, vocab, labels, grad_scale, dh.as_mut(), rows_per_chunk::<T>(vocab))?,
        };
        drop(hf);
        if let (Some(dx), Some(dh)) = (dx, dh) {
            let mut rstd = GpuBuffer::zeros(ctx, labels.len())?;
            rms_norm_backward(ctx, x, &self.weights.final_norm, c.rms_norm_eps, &dh, dx, &mut rstd)?;
        }
        Ok(out)
    }

    /// The teacher's final hidden states after its final norm for a batch, when this model
    /// distills from one.
    fn teacher_states(&self, inputs: &[&[u32]], rows: Rows) -> Result<Option<GpuBuffer<T>>> {
        let Some(d) = &self.distillation else { return Ok(None) };
        let teacher = &d.teacher;
        let start = GpuBuffer::<u32>::zeros(&teacher.ctx, rows.batch)?;
        let x = teacher.forward_rows(inputs, rows, &start, None, None)?;
        let (_, h) = teacher.norm(&x, &teacher.weights.final_norm)?;
        Ok(Some(h))
    }

    /// Trains toward `base`'s next-token distributions from now on: each training step's
    /// loss becomes `(1 - weight) · CE + weight · KL(p_base || p_model)` per counted token, the
    /// base model (every layer softmax, no adapters) run forward in the same step on this GPU.
    /// Validation losses stay plain cross-entropy. A `weight` of 0 turns distillation off.
    pub fn distill_from(&mut self, base: liger_core::model::BaseModel, weight: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(Error::invalid_argument(format!("the distillation weight must be in [0, 1], got {weight}")));
        }
        if weight == 0.0 {
            self.distillation = None;
            return Ok(());
        }
        let c = self.config();
        let b = &base.config;
        if (b.vocab_size, b.hidden_size, b.num_layers) != (c.vocab_size, c.hidden_size, c.num_layers) {
            return Err(Error::invalid_argument(format!(
                "the teacher (vocabulary {}, hidden size {}, {} layers) is not the base of this model (vocabulary {}, hidden size {}, {} layers); distill from the model that was converted",
                b.vocab_size, b.hidden_size, b.num_layers, c.vocab_size, c.hidden_size, c.num_layers
            )));
        }
        let teacher = GpuLigerModel::from_base(self.ctx.on_same_stream(), base)?;
        self.distillation = Some(Box::new(super::Distillation { teacher, weight }));
        Ok(())
    }

    /// Summed cross-entropy of a batch of equally long sequences, without gradients.
    pub fn loss_batch(&self, inputs: &[&[u32]], labels: &[&[u32]]) -> Result<LossOutput> {
        let rows = self.check_batch(inputs, labels)?;
        self.sync_lora()?;
        let start = GpuBuffer::<u32>::zeros(&self.ctx, rows.batch)?;
        let x = self.forward_rows(inputs, rows, &start, None, None)?;
        let flat: Vec<u32> = labels.iter().flat_map(|s| s.iter().copied()).collect();
        self.loss_of(&x, None, &flat, 0.0, None)
    }

    /// The loss of a batch of equally long sequences (summed over the batch), and
    /// `grads += grad_scale · d(loss_sum)/d(LoRA)`. A non-finite loss is an error and leaves
    /// `grads` untouched.
    pub fn forward_backward_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        let rows = self.check_batch(inputs, labels)?;
        self.host.check_grads(grads)?;
        self.sync_lora()?;
        let ctx = &self.ctx;
        let c = self.config();
        // The teacher's forward first: only its final states stay while the model's runs.
        let teacher_h = self.teacher_states(inputs, rows)?;
        let start = GpuBuffer::<u32>::zeros(ctx, rows.batch)?;
        let mut layer_inputs = Vec::with_capacity(c.num_layers);
        // Keep the activations of as many layers as fit comfortably (the last ones); the
        // backward pass runs the others' forward again just before going back through them.
        let kept = self.layers_to_keep(rows);
        let mut tapes = Vec::with_capacity(kept);
        let x = self.forward_rows(inputs, rows, &start, Some(&mut layer_inputs), Some((&mut tapes, kept)))?;
        let flat: Vec<u32> = labels.iter().flat_map(|s| s.iter().copied()).collect();
        let mut dx = GpuBuffer::<f32>::zeros(ctx, x.len())?;
        let out = self.loss_of(&x, teacher_h.as_ref(), &flat, grad_scale, Some(&mut dx))?;
        drop((x, teacher_h));
        if !out.loss_sum.is_finite() {
            return Err(Error::new(
                ErrorCode::NonFiniteLoss,
                "the loss is not finite; lower the learning rate or check the data",
            ));
        }
        let mut device_grads = self.zero_device_grads()?;
        let mut mix_grads = self.zero_head_mix_grads()?;
        for layer in (0..c.num_layers).rev() {
            let x_in = layer_inputs.pop().ok_or_else(|| Error::internal("a layer input is missing"))?;
            let tape = match (layer + kept >= c.num_layers).then(|| tapes.pop()).flatten() {
                Some(tape) => tape,
                None => {
                    let mut x_out = copy(ctx, &x_in)?;
                    self.layer_forward_fresh(layer, &mut x_out, rows, &start, true)?
                        .ok_or_else(|| Error::internal("the layer kept no activations"))?
                }
            };
            let mix_grad = mix_grads.get_mut(layer).and_then(|m| m.as_mut());
            dx = self.layer_backward(layer, &tape, &x_in, rows, &start, dx, &mut device_grads[layer], mix_grad)?;
        }
        add_to_host(&device_grads, grads)?;
        for (host, device) in grads.head_mix.iter_mut().zip(&mix_grads) {
            if let (Some(host), Some(device)) = (host, device) {
                let got = device.to_host()?;
                host.alpha.iter_mut().zip(got.alpha).for_each(|(h, d)| *h += d);
                host.beta.iter_mut().zip(got.beta).for_each(|(h, d)| *h += d);
            }
        }
        Ok(out)
    }

    /// How many layers keep their activations from the forward pass (the last ones; the
    /// backward recomputes the others): none when asked to recompute all
    /// ([`GpuLigerModel::set_recompute`]), at most [`GpuLigerModel::set_kept_layers`]'s limit,
    /// and no more than fit in half the available device memory (free, plus pooled but unused).
    fn layers_to_keep(&self, rows: Rows) -> usize {
        use std::sync::atomic::Ordering;
        if self.recompute.load(Ordering::Relaxed) {
            return 0;
        }
        let limit = self.kept_layers_limit.load(Ordering::Relaxed);
        let c = self.config();
        let (qs, kvs, hs, f) = (c.q_size(), c.kv_size(), c.hidden_size, c.intermediate_size);
        // f32: h, x_mid, q, k, v, o, gate, up, LoRA products; in T: the softmax branch's
        // roped q and k, v and its output; i32: the surprise cache's choice.
        let surprise = self.host.options.attention.surprise_keys;
        let cache = if surprise > 0 { kvs / c.head_dim * (surprise + 1) * 4 } else { 0 };
        let per_row =
            (2 * hs + 3 * qs + 3 * kvs + 2 * f + 64) * 4 + (2 * qs + 2 * kvs) * std::mem::size_of::<T>() + cache;
        let per_layer = (rows.n() * per_row).max(1) as u64;
        let fit = match super::memory::available_memory(&self.ctx) {
            Ok(free) => (free / 2 / per_layer).min(c.num_layers as u64) as usize,
            Err(_) => 0,
        };
        fit.min(limit)
    }

    pub(super) fn zero_device_grads(&self) -> Result<Vec<[Option<GpuLoraGrad>; 4]>> {
        let lora = self.lora_guard()?;
        lora.iter()
            .map(|l| {
                let mut out: [Option<GpuLoraGrad>; 4] = Default::default();
                for (slot, a) in out.iter_mut().zip(l.iter()) {
                    if let Some(a) = a {
                        *slot = Some(GpuLoraGrad {
                            a: GpuBuffer::zeros(&self.ctx, a.a.len())?,
                            b: GpuBuffer::zeros(&self.ctx, a.b.len())?,
                        });
                    }
                }
                Ok(out)
            })
            .collect()
    }

    /// Zero gradients of the learned branch weights, per layer (empty when there are none).
    fn zero_head_mix_grads(&self) -> Result<Vec<Option<GpuHeadMix>>> {
        let heads = self.shape.hq;
        self.host
            .options
            .head_mix
            .iter()
            .map(|m| m.as_ref().map(|_| GpuHeadMix::zeros(&self.ctx, heads)).transpose())
            .collect()
    }

    /// Back through one layer: from the gradient w.r.t. its output (taken over and reused)
    /// to the one w.r.t. its input, accumulating the adapters' gradients.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        layer: usize,
        tape: &LayerTape<T>,
        x_in: &GpuBuffer<f32>,
        rows: Rows,
        start: &GpuBuffer<u32>,
        dx_out: GpuBuffer<f32>,
        grads: &mut [Option<GpuLoraGrad>; 4],
        mix_grad: Option<&mut GpuHeadMix>,
    ) -> Result<GpuBuffer<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let lw = &self.weights.layers[layer];
        let (n, hs, f, qs, eps) = (rows.n(), c.hidden_size, c.intermediate_size, c.q_size(), c.rms_norm_eps);

        // MLP: x_out = x_mid + down(silu(gate) * up), gate and up of h2 = norm(x_mid).
        let dx_out_t = scaled::<T>(ctx, &dx_out, 1.0)?;
        let mut d_act = GpuBuffer::<f32>::zeros(ctx, n * f)?;
        linear_input_grad(ctx, &dx_out_t, &lw.w_down, n, f, hs, &mut d_act, false)?;
        drop(dx_out_t);
        let mut d_gate = GpuBuffer::<T>::zeros(ctx, n * f)?;
        let mut d_up = GpuBuffer::<T>::zeros(ctx, n * f)?;
        swiglu_backward(ctx, &tape.gate, &tape.up, &d_act, &mut d_gate, &mut d_up)?;
        drop(d_act);
        let mut dh2 = GpuBuffer::<f32>::zeros(ctx, n * hs)?;
        linear_input_grad(ctx, &d_gate, &lw.w_gate, n, hs, f, &mut dh2, false)?;
        linear_input_grad(ctx, &d_up, &lw.w_up, n, hs, f, &mut dh2, true)?;
        drop((d_gate, d_up));
        let mut dx_mid = dx_out;
        norm_backward_add(ctx, &tape.x_mid, &lw.ffn_norm, eps, &dh2, &mut dx_mid)?;

        // Attention: x_mid = x_in + o_proj(o).
        let lora = self.lora_guard()?;
        let mut d_o = GpuBuffer::<f32>::zeros(ctx, n * qs)?;
        linear_input_grad(ctx, &scaled::<T>(ctx, &dx_mid, 1.0)?, &lw.wo, n, qs, hs, &mut d_o, false)?;
        if let (Some(a), Some(g), Some(us)) =
            (&lora[layer][LoraTarget::O as usize], &mut grads[LoraTarget::O as usize], &tape.saved_o)
        {
            lora_backward(ctx, a, &tape.o, us, &dx_mid, n, g, &mut d_o)?;
        }
        drop(lora);
        let d_qkv = self.attention_backward(layer, &tape.qkv, tape.softmax.as_ref(), rows, start, &d_o, mix_grad)?;
        drop(d_o);
        let mut dh = GpuBuffer::<f32>::zeros(ctx, n * hs)?;
        self.projections_backward(layer, &tape.h, &tape.qkv, d_qkv, n, grads, &mut dh)?;
        let mut dx_in = dx_mid;
        norm_backward_add(ctx, x_in, &lw.attn_norm, eps, &dh, &mut dx_in)?;
        Ok(dx_in)
    }

    /// Back from the gradients w.r.t. a layer's q, k, v (after its q/k norms) through the
    /// norms and the projections of `h`: accumulates the q, k, v adapters' gradients into
    /// `grads` (the layer's) and adds the input gradient into `dh`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn projections_backward(
        &self,
        layer: usize,
        h: &GpuBuffer<f32>,
        qkv: &Qkv,
        (mut dq, mut dk, dv): (GpuBuffer<f32>, GpuBuffer<f32>, GpuBuffer<f32>),
        n: usize,
        grads: &mut [Option<GpuLoraGrad>; 4],
        dh: &mut GpuBuffer<f32>,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let c = self.config();
        let lw = &self.weights.layers[layer];
        let (hs, qs, kvs, eps) = (c.hidden_size, c.q_size(), c.kv_size(), c.rms_norm_eps);
        if let (Some(q_pre), Some(k_pre), Some(qn), Some(kn)) = (&qkv.q_pre, &qkv.k_pre, &lw.q_norm, &lw.k_norm) {
            let head_norm_backward =
                |x: &GpuBuffer<f32>, w: &GpuBuffer<f32>, dy: &GpuBuffer<f32>| -> Result<GpuBuffer<f32>> {
                    let mut dx = GpuBuffer::zeros(ctx, x.len())?;
                    let mut rstd = GpuBuffer::zeros(ctx, x.len() / c.head_dim)?;
                    rms_norm_backward(ctx, x, w, eps, dy, &mut dx, &mut rstd)?;
                    Ok(dx)
                };
            dq = head_norm_backward(q_pre, qn, &dq)?;
            dk = head_norm_backward(k_pre, kn, &dk)?;
        }
        let lora = self.lora_guard()?;
        let parts =
            [(LoraTarget::Q, &lw.wq, &dq, qs), (LoraTarget::K, &lw.wk, &dk, kvs), (LoraTarget::V, &lw.wv, &dv, kvs)];
        for (target, w, dy, out) in parts {
            linear_input_grad(ctx, &scaled::<T>(ctx, dy, 1.0)?, w, n, hs, out, dh, true)?;
            let i = target as usize;
            if let (Some(a), Some(g), Some(us)) = (&lora[layer][i], &mut grads[i], &qkv.saved[i]) {
                lora_backward(ctx, a, h, us, dy, n, g, dh)?;
            }
        }
        Ok(())
    }

    /// Gradients (f32) w.r.t. the raw q, k, v of the layer's attention given `d_o`, from the
    /// forward's q, k, v and its softmax branch's tape; with `mix_grad`, the layer's learned
    /// branch weights' gradients are added there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        layer: usize,
        qkv: &Qkv,
        softmax: Option<&SoftmaxTape<T>>,
        rows: Rows,
        start: &GpuBuffer<u32>,
        d_o: &GpuBuffer<f32>,
        mix_grad: Option<&mut GpuHeadMix>,
    ) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>, GpuBuffer<f32>)> {
        let ctx = &self.ctx;
        let shape = self.shape;
        let att = &self.host.options.attention;
        let softmax_layer = self.host.options.is_softmax_layer(layer);
        let (q, k, v) = (&qkv.q, &qkv.k, &qkv.v);
        let (q_len, kv_len) = (q.len(), k.len());
        let mut dq = GpuBuffer::<f32>::zeros(ctx, q_len)?;
        let mut dk = GpuBuffer::<f32>::zeros(ctx, kv_len)?;
        let mut dv = GpuBuffer::<f32>::zeros(ctx, kv_len)?;
        let (window, weight) = if softmax_layer { (None, 1.0) } else { (Some(att.window()), att.beta) };
        // The window branch's share of d_o, in T; made with the mixer's share where both run.
        let mut d_att = None;
        let learned_mix = self.host.options.head_mix_of(layer).is_some();
        if !softmax_layer {
            let d_grm = if learned_mix {
                let mix = self.head_mix_guard()?;
                let mix = self.layer_head_mix(&mix, layer)?;
                if let Some(grad) = mix_grad {
                    // The weights' gradients read the branches before the mix: the recurrent
                    // one again, the window's from the tape.
                    let (g, _) = self.grm_fresh(qkv, rows)?;
                    head_mix_grads(ctx, shape.d, d_o, &g, softmax.map(|s| &s.o), grad)?;
                }
                let mut d_grm = GpuBuffer::<f32>::zeros(ctx, d_o.len())?;
                let mut d_t = match softmax {
                    Some(_) => Some(GpuBuffer::<T>::zeros(ctx, d_o.len())?),
                    None => None,
                };
                head_mix_split(ctx, mix, shape.d, d_o, &mut d_grm, d_t.as_mut())?;
                d_att = d_t;
                d_grm
            } else if softmax.is_some() {
                let (mut d_grm, mut d_t) =
                    (GpuBuffer::<f32>::zeros(ctx, d_o.len())?, GpuBuffer::<T>::zeros(ctx, d_o.len())?);
                scale_pair(ctx, d_o, att.alpha, weight, &mut d_grm, &mut d_t)?;
                d_att = Some(d_t);
                d_grm
            } else {
                scaled::<f32>(ctx, d_o, att.alpha)?
            };
            let dims = MixerDims { batch: rows.batch, tokens: rows.tokens, shape };
            let segments = self.mixer_segments();
            if att.grm_norm {
                // o = n / (den + eps), recomputed: n's gradient, then den's (through the same
                // recurrence over values of one, which adds to dq and dk only).
                let (o_grm, den) = self.grm_fresh(qkv, rows)?;
                let den = den.ok_or_else(|| Error::internal("a normalised layer came back without its normaliser"))?;
                let (d_n, d_den) = grm_normalize_backward(ctx, &d_grm, &den, &o_grm)?;
                drop((o_grm, den, d_grm));
                mixer_chunk_backward_in_segments(
                    ctx, &att.mixer, dims, q, k, v, &d_n, &mut dq, &mut dk, &mut dv, segments,
                )?;
                let (mut dq_den, mut dk_den, mut dv_den) = (
                    GpuBuffer::<f32>::zeros(ctx, q_len)?,
                    GpuBuffer::<f32>::zeros(ctx, kv_len)?,
                    GpuBuffer::<f32>::zeros(ctx, kv_len)?,
                );
                let ones = self.ones(kv_len)?;
                mixer_chunk_backward_in_segments(
                    ctx,
                    &att.mixer,
                    dims,
                    q,
                    k,
                    &ones,
                    &d_den,
                    &mut dq_den,
                    &mut dk_den,
                    &mut dv_den,
                    segments,
                )?;
                add_into(ctx, &dq_den, &mut dq)?;
                add_into(ctx, &dk_den, &mut dk)?;
            } else {
                mixer_chunk_backward_in_segments(
                    ctx, &att.mixer, dims, q, k, v, &d_grm, &mut dq, &mut dk, &mut dv, segments,
                )?;
            }
        }
        if let Some(s) = softmax {
            let d_att = match d_att {
                Some(d) => d,
                None => scaled::<T>(ctx, d_o, weight)?,
            };
            let (mut gq, mut gk, mut gv) = (
                GpuBuffer::<T>::zeros(ctx, q_len)?,
                GpuBuffer::<T>::zeros(ctx, kv_len)?,
                GpuBuffer::<T>::zeros(ctx, kv_len)?,
            );
            let dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape };
            match (&s.surprise, window) {
                (Some(cache), Some(window)) => surprise_attention_backward(
                    ctx, dims, window, cache, &s.q_roped, &s.k_roped, &s.v, &s.o, &s.lse, &d_att, &mut gq, &mut gk,
                    &mut gv,
                )?,
                _ => attention_backward(
                    ctx, dims, window, &s.q_roped, &s.k_roped, &s.v, &s.o, &s.lse, &d_att, &mut gq, &mut gk, &mut gv,
                )?,
            }
            let rope = |heads: usize| RopeLayout {
                inv_freq: &self.weights.inv_freq,
                start,
                tokens: rows.tokens,
                heads,
                head_dim: shape.d,
            };
            rope_backward_add(ctx, &rope(shape.hq), &gq, &mut dq, 1.0)?;
            rope_backward_add(ctx, &rope(shape.hkv), &gk, &mut dk, 1.0)?;
            widen(ctx, &gv, &mut dv, 1.0, true)?;
        }
        Ok((dq, dk, dv))
    }
}

/// Adds the gradients gathered on the GPU into the caller's host gradients.
pub(super) fn add_to_host(device_grads: &[[Option<GpuLoraGrad>; 4]], grads: &mut LoraGrads) -> Result<()> {
    for (layer, per_target) in device_grads.iter().enumerate() {
        for (t, g) in per_target.iter().enumerate() {
            if let (Some(g), Some(host)) = (g, &mut grads.layers[layer][t]) {
                host.a.iter_mut().zip(g.a.to_host()?).for_each(|(h, d)| *h += d);
                host.b.iter_mut().zip(g.b.to_host()?).for_each(|(h, d)| *h += d);
            }
        }
    }
    Ok(())
}
