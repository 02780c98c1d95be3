//! Loss and gradients of the converted model w.r.t. its LoRA parameters.
//!
//! Memory: the forward pass keeps only each layer's input (`T x hidden` per layer); the
//! backward pass runs each layer's forward again, keeping its activations, just before going
//! back through it (activation checkpointing: one extra forward for `layers x` less memory).
//! Frozen weights stay as stored: products with them dequantize panels of rows on the fly.
//! The LM head is dequantized to f32 for the loss during the call (`vocab x hidden x 4`
//! bytes; no copy when it is already f32).

use super::model::{LayerTape, LigerModel, LoraSet, Projections};
use super::options::LoraTarget;
use crate::error::{Error, ErrorCode, Result};
use crate::liger::head_mix::head_mix_grads;
use crate::liger::{causal_attention_backward, liger_attention_backward, HeadMix, HeadShape, QkvGrads};
use crate::linalg::{matmul, MatRef};
use crate::model::forward::embed;
use crate::nn::lora::LoraGrad;
use crate::nn::loss::{cross_entropy, LossOutput, IGNORE};
use crate::nn::rms_norm::{rms_norm, rms_norm_backward};
use crate::nn::rope::apply_rope;
use crate::nn::swiglu::swiglu_backward;
use crate::tensor::{GgmlType, QTensor};
use rayon::prelude::*;

/// Gradients of every trained parameter: the adapters, laid out like [`super::LoraSet`], and
/// the learned branch weights, laid out like `LigerOptions::head_mix` (empty when the model
/// learns none).
#[derive(Debug, Clone, Default)]
pub struct LoraGrads {
    /// Per layer, indexed by `LoraTarget` (q, k, v, o).
    pub layers: Vec<[Option<LoraGrad>; 4]>,
    pub head_mix: Vec<Option<HeadMix>>,
}

impl LoraGrads {
    /// The gradients in the order of [`LigerModel::trained_params`].
    pub fn as_slices(&self) -> Vec<&[f32]> {
        let adapters = self.layers.iter().flatten().flatten().flat_map(|g| [g.a.as_slice(), g.b.as_slice()]);
        let mix = self.head_mix.iter().flatten().flat_map(|m| [m.alpha.as_slice(), m.beta.as_slice()]);
        adapters.chain(mix).collect()
    }
    pub fn as_mut_slices(&mut self) -> Vec<&mut [f32]> {
        let adapters =
            self.layers.iter_mut().flatten().flatten().flat_map(|g| [g.a.as_mut_slice(), g.b.as_mut_slice()]);
        let mix = self.head_mix.iter_mut().flatten().flat_map(|m| [m.alpha.as_mut_slice(), m.beta.as_mut_slice()]);
        adapters.chain(mix).collect()
    }
    pub fn zero(&mut self) {
        self.as_mut_slices().into_iter().for_each(|s| s.fill(0.0));
    }
}

/// Backward of RoPE + full causal attention from position 0, w.r.t. the raw q, k, v.
fn softmax_attention_backward(
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
) -> Result<crate::liger::QkvGrads> {
    let (mut qr, mut kr) = (q.to_vec(), k.to_vec());
    apply_rope(&mut qr, shape.hq, shape.d, inv_freq, 0, false);
    apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, 0, false);
    let mut g = causal_attention_backward(shape, &qr, &kr, v, d_o)?;
    apply_rope(&mut g.dq, shape.hq, shape.d, inv_freq, 0, true);
    apply_rope(&mut g.dk, shape.hkv, shape.d, inv_freq, 0, true);
    Ok(g)
}

/// `dx += dy W` for `W` `[out, in]` as stored (the backward of `y = x Wᵀ`); `dy` is `t x out`.
pub(crate) fn add_dy_w(w: &QTensor, dy: &[f32], t: usize, dx: &mut [f32]) {
    if w.ty == GgmlType::F32 {
        let wf = w.to_f32();
        return matmul(MatRef::new(dy, t, w.rows), MatRef::new(&wf, w.rows, w.cols), dx, true);
    }
    const PANEL: usize = 256;
    let mut panel = vec![0.0f32; PANEL * w.cols];
    for r0 in (0..w.rows).step_by(PANEL) {
        let rows = PANEL.min(w.rows - r0);
        panel[..rows * w.cols].par_chunks_mut(w.cols).enumerate().for_each(|(r, out)| w.dequantize_row(r0 + r, out));
        // Columns r0..r0+rows of dy, as a strided view.
        let dy_cols = MatRef { data: &dy[r0..], rows: t, cols: rows, row_stride: w.rows, col_stride: 1 };
        matmul(dy_cols, MatRef::new(&panel[..rows * w.cols], rows, w.cols), dx, true);
    }
}

/// Every adapter's A and B, mutable, in the order of [`LigerModel::lora_params`].
fn adapter_params_mut(lora: &mut LoraSet) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for l in &mut lora.layers {
        for a in [&mut l.q, &mut l.k, &mut l.v, &mut l.o].into_iter().flatten() {
            out.push(a.a.as_mut_slice());
            out.push(a.b.as_mut_slice());
        }
    }
    out
}

impl LigerModel {
    /// Names and values of every LoRA parameter, in a stable order: by layer, then q, k, v,
    /// o, then A before B. Names follow PEFT (`...layers.3.self_attn.q_proj.lora_A.weight`).
    pub fn lora_params(&self) -> Vec<(String, &[f32])> {
        let mut out = Vec::new();
        for (i, l) in self.lora.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(a) = l.get(target) {
                    let name = format!("base_model.model.model.layers.{i}.self_attn.{}", target.module_name());
                    out.push((format!("{name}.lora_A.weight"), a.a.as_slice()));
                    out.push((format!("{name}.lora_B.weight"), a.b.as_slice()));
                }
            }
        }
        out
    }

    /// The same parameters, mutable, in the same order.
    pub fn lora_params_mut(&mut self) -> Vec<&mut [f32]> {
        adapter_params_mut(&mut self.lora)
    }

    /// Every trained parameter: the adapters ([`LigerModel::lora_params`]), then the learned
    /// branch weights of each Liger layer, alpha before beta (`...layers.3.self_attn.head_mix.alpha`).
    pub fn trained_params(&self) -> Vec<(String, &[f32])> {
        let mut out = self.lora_params();
        for (i, m) in self.options.head_mix.iter().enumerate() {
            if let Some(m) = m {
                let name = format!("base_model.model.model.layers.{i}.self_attn.head_mix");
                out.push((format!("{name}.alpha"), m.alpha.as_slice()));
                out.push((format!("{name}.beta"), m.beta.as_slice()));
            }
        }
        out
    }

    /// Whether weight decay applies to each of [`LigerModel::trained_params`]: to the adapters,
    /// not to the branch weights (decay would pull them toward zero, turning the branches off,
    /// where it pulls an adapter toward the base model).
    pub fn trained_param_decays(&self) -> Vec<bool> {
        // Counted, not named: the trainer asks at every step.
        let adapters: usize =
            self.lora.layers.iter().map(|l| LoraTarget::ALL.iter().filter(|&&t| l.get(t).is_some()).count()).sum();
        let mixes = self.options.head_mix.iter().flatten().count();
        let mut out = vec![true; 2 * adapters];
        out.extend(std::iter::repeat_n(false, 2 * mixes));
        out
    }

    /// The same parameters, mutable, in the same order.
    pub fn trained_params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out = adapter_params_mut(&mut self.lora);
        for m in self.options.head_mix.iter_mut().flatten() {
            out.push(m.alpha.as_mut_slice());
            out.push(m.beta.as_mut_slice());
        }
        out
    }

    /// Zero gradients shaped like the trained parameters.
    pub fn new_lora_grads(&self) -> LoraGrads {
        let layers =
            self.lora.layers.iter().map(|l| LoraTarget::ALL.map(|t| l.get(t).map(|a| a.zero_grad()))).collect();
        let head_mix =
            self.options.head_mix.iter().map(|m| m.as_ref().map(|m| HeadMix::zeros(m.alpha.len()))).collect();
        LoraGrads { layers, head_mix }
    }

    pub(crate) fn check_labels(&self, inputs: &[u32], labels: &[u32]) -> Result<()> {
        if inputs.is_empty() || inputs.len() != labels.len() {
            return Err(Error::invalid_argument(format!(
                "inputs and labels must be equally long and not empty; got {} and {}",
                inputs.len(),
                labels.len()
            )));
        }
        let vocab = self.base.config.vocab_size;
        if let Some(&bad) = labels.iter().find(|&&l| l != IGNORE && l as usize >= vocab) {
            return Err(Error::invalid_argument(format!(
                "label {bad} is outside the vocabulary of {vocab} (use IGNORE for positions that do not count)"
            )));
        }
        Ok(())
    }

    /// The final norm of `x`, and the LM head as f32.
    fn loss_of(&self, x: &[f32], labels: &[u32], grad_scale: f32, dh: Option<&mut [f32]>) -> (Vec<f32>, LossOutput) {
        let c = &self.base.config;
        let mut hf = vec![0.0f32; x.len()];
        rms_norm(x, &self.base.weights.final_norm, c.rms_norm_eps, &mut hf);
        let head = self.base.weights.lm_head().to_f32();
        let out = cross_entropy(&hf, &head, c.hidden_size, c.vocab_size, labels, grad_scale, dh);
        (hf, out)
    }

    /// Summed cross-entropy of `labels` (next tokens; `IGNORE` where not counted) after
    /// `inputs`, without gradients.
    pub fn loss(&self, inputs: &[u32], labels: &[u32]) -> Result<LossOutput> {
        self.check_labels(inputs, labels)?;
        let x = self.hidden_states(inputs, &mut Default::default())?;
        Ok(self.loss_of(&x, labels, 0.0, None).1)
    }

    /// The loss as [`LigerModel::loss`], and `grads += grad_scale * d(loss_sum)/d(LoRA)`.
    /// A non-finite loss is an error and leaves `grads` untouched.
    pub fn forward_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        self.check_labels(inputs, labels)?;
        self.check()?;
        self.check_grads(grads)?;
        let c = &self.base.config;
        let t = inputs.len();
        let inv_freq = c.rope_inv_freq();
        // Forward, keeping each layer's input.
        let mut x = embed(c, &self.base.weights, inputs)?;
        let mut layer_inputs = Vec::with_capacity(c.num_layers);
        for layer in 0..c.num_layers {
            layer_inputs.push(x.clone());
            let mut state = self.fresh_layer_state(layer)?;
            self.layer_forward(layer, &mut x, t, &mut state, &inv_freq, false)?;
        }
        let mut dh = vec![0.0f32; x.len()];
        let out = self.loss_of(&x, labels, grad_scale, Some(&mut dh)).1;
        if !out.loss_sum.is_finite() {
            return Err(Error::new(
                ErrorCode::NonFiniteLoss,
                "the loss is not finite; lower the learning rate or check the data",
            ));
        }
        // Through the final norm, then back through the layers.
        let mut dx = vec![0.0f32; x.len()];
        rms_norm_backward(&x, &self.base.weights.final_norm, c.rms_norm_eps, &dh, &mut dx, None);
        for layer in (0..c.num_layers).rev() {
            let x_in = layer_inputs.pop().ok_or_else(|| Error::internal("a layer input is missing"))?;
            let mut x_out = x_in.clone();
            let mut state = self.fresh_layer_state(layer)?;
            let tape = self
                .layer_forward(layer, &mut x_out, t, &mut state, &inv_freq, true)?
                .ok_or_else(|| Error::internal("the layer kept no activations"))?;
            dx = self.layer_backward(layer, &tape, &x_in, t, &inv_freq, &dx, grads)?;
        }
        Ok(out)
    }

    /// Back through one layer: from the gradient w.r.t. its output to the one w.r.t. its
    /// input, accumulating the adapters' gradients.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        layer: usize,
        tape: &LayerTape,
        x_in: &[f32],
        t: usize,
        inv_freq: &[f32],
        dx_out: &[f32],
        grads: &mut LoraGrads,
    ) -> Result<Vec<f32>> {
        let c = &self.base.config;
        let (lw, lora) = (&self.base.weights.layers[layer], &self.lora.layers[layer]);
        let mix_grad = grads.head_mix.get_mut(layer).and_then(|m| m.as_mut());
        let grads = &mut grads.layers[layer];
        let (hs, f, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps);
        // MLP: x_out = x_mid + down(silu(gate) * up), gate and up of h2 = norm(x_mid).
        let mut d_act = vec![0.0f32; t * f];
        add_dy_w(&lw.w_down, dx_out, t, &mut d_act);
        let (mut d_gate, mut d_up) = (vec![0.0f32; t * f], vec![0.0f32; t * f]);
        swiglu_backward(&tape.gate, &tape.up, &d_act, &mut d_gate, &mut d_up);
        let mut dh2 = vec![0.0f32; t * hs];
        add_dy_w(&lw.w_gate, &d_gate, t, &mut dh2);
        add_dy_w(&lw.w_up, &d_up, t, &mut dh2);
        let mut dx_mid = dx_out.to_vec();
        rms_norm_backward(&tape.x_mid, &lw.ffn_norm, eps, &dh2, &mut dx_mid, None);

        // Attention: x_mid = x_in + o_proj(o).
        let mut d_o = vec![0.0f32; t * c.q_size()];
        add_dy_w(&lw.wo, &dx_mid, t, &mut d_o);
        if let (Some(a), Some(g), Some(s)) = (&lora.o, &mut grads[LoraTarget::O.index()], &tape.saved_o) {
            a.backward(&tape.o, s, &dx_mid, t, g, &mut d_o);
        }
        let p = &tape.proj;
        let shape = self.head_shape()?;
        let mix = self.options.head_mix_of(layer);
        let qkv = if self.options.is_softmax_layer(layer) {
            softmax_attention_backward(shape, &p.q, &p.k, &p.v, inv_freq, &d_o)?
        } else {
            if let (Some(g), Some(b)) = (mix_grad, &tape.branches) {
                head_mix_grads(shape, &d_o, &b.grm, b.swa.as_deref(), g);
            }
            liger_attention_backward(&self.options.attention, mix, shape, &p.q, &p.k, &p.v, inv_freq, &d_o)?
        };
        let mut dh = vec![0.0f32; t * hs];
        self.projections_backward(layer, &tape.h, p, qkv, t, grads, &mut dh);
        let mut dx_in = dx_mid;
        rms_norm_backward(x_in, &lw.attn_norm, eps, &dh, &mut dx_in, None);
        Ok(dx_in)
    }

    /// Back from the gradients w.r.t. a layer's q, k, v (after its q/k norms) through the
    /// norms and the projections of `h`: accumulates the q, k, v adapters' gradients into
    /// `grads` (the layer's) and adds the input gradient into `dh`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn projections_backward(
        &self,
        layer: usize,
        h: &[f32],
        p: &Projections,
        mut qkv: QkvGrads,
        t: usize,
        grads: &mut [Option<LoraGrad>; 4],
        dh: &mut [f32],
    ) {
        let c = &self.base.config;
        let (lw, lora) = (&self.base.weights.layers[layer], &self.lora.layers[layer]);
        if let (Some(q_pre), Some(k_pre), Some(qn), Some(kn)) = (&p.q_pre, &p.k_pre, &lw.q_norm, &lw.k_norm) {
            let mut dq = vec![0.0f32; q_pre.len()];
            rms_norm_backward(q_pre, qn, c.rms_norm_eps, &qkv.dq, &mut dq, None);
            let mut dk = vec![0.0f32; k_pre.len()];
            rms_norm_backward(k_pre, kn, c.rms_norm_eps, &qkv.dk, &mut dk, None);
            qkv.dq = dq;
            qkv.dk = dk;
        }
        let parts =
            [(LoraTarget::Q, &lw.wq, &qkv.dq), (LoraTarget::K, &lw.wk, &qkv.dk), (LoraTarget::V, &lw.wv, &qkv.dv)];
        for (target, w, dy) in parts {
            add_dy_w(w, dy, t, dh);
            if let (Some(a), Some(g), Some(s)) =
                (lora.get(target), &mut grads[target.index()], &p.saved[target.index()])
            {
                a.backward(h, s, dy, t, g, dh);
            }
        }
    }

    /// SHAPE_MISMATCH unless `grads` fit the adapters (made by `new_lora_grads`); the GPU
    /// model checks its gradients here too.
    pub fn check_grads(&self, grads: &LoraGrads) -> Result<()> {
        let fits = grads.layers.len() == self.lora.layers.len()
            && grads.layers.iter().zip(&self.lora.layers).all(|(g, l)| {
                LoraTarget::ALL.iter().all(|&t| match (&g[t.index()], l.get(t)) {
                    (Some(g), Some(a)) => g.a.len() == a.a.len() && g.b.len() == a.b.len(),
                    (None, None) => true,
                    _ => false,
                })
            })
            && grads.head_mix.len() == self.options.head_mix.len()
            && grads.head_mix.iter().zip(&self.options.head_mix).all(|(g, m)| match (g, m) {
                (Some(g), Some(m)) => g.alpha.len() == m.alpha.len() && g.beta.len() == m.beta.len(),
                (None, None) => true,
                _ => false,
            });
        if !fits {
            return Err(Error::shape(
                "the gradients do not fit this model's adapters or branch weights; make them with new_lora_grads()",
            ));
        }
        Ok(())
    }
}
