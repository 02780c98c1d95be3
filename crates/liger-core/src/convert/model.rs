//! The converted model: the base model's weights (frozen, stored as loaded), Liger attention
//! in place of softmax attention (except in the hybrid's softmax layers), and LoRA adapters.
//!
//! One layer function serves prefill, decoding and training: it takes the layer's decoding
//! state (fresh for a whole-sequence forward) and can keep what the backward pass needs.

use super::options::{LigerOptions, LoraOptions, LoraTarget};
use super::state::{AttentionCache, LayerState, LigerState};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::generate::CausalLm;
use crate::liger::head_mix::mix_branches;
use crate::liger::{
    causal_attention_forward, liger_attention_branches, liger_attention_forward, HeadShape, LigerLayerState,
};
use crate::linalg::matmul_wt;
use crate::model::forward::{embed, lm_head, Logits};
use crate::model::ops::add_bias;
use crate::model::BaseModel;
use crate::nn::lora::{LoraAdapter, LoraSaved};
use crate::nn::rms_norm::{rms_norm, rms_norm_inplace};
use crate::nn::rope::apply_rope;
use crate::nn::swiglu::swiglu_inplace;
use crate::tensor::QTensor;
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights};

/// The adapters of one layer (`None` where the projection has none).
#[derive(Debug, Clone, Default)]
pub struct LayerLora {
    pub q: Option<LoraAdapter>,
    pub k: Option<LoraAdapter>,
    pub v: Option<LoraAdapter>,
    pub o: Option<LoraAdapter>,
}

impl LayerLora {
    pub fn get(&self, target: LoraTarget) -> Option<&LoraAdapter> {
        match target {
            LoraTarget::Q => self.q.as_ref(),
            LoraTarget::K => self.k.as_ref(),
            LoraTarget::V => self.v.as_ref(),
            LoraTarget::O => self.o.as_ref(),
        }
    }
    pub fn get_mut(&mut self, target: LoraTarget) -> Option<&mut LoraAdapter> {
        match target {
            LoraTarget::Q => self.q.as_mut(),
            LoraTarget::K => self.k.as_mut(),
            LoraTarget::V => self.v.as_mut(),
            LoraTarget::O => self.o.as_mut(),
        }
    }
}

/// Every layer's adapters.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    pub layers: Vec<LayerLora>,
}

/// A Llama-family model converted to Liger attention, with LoRA adapters.
pub struct LigerModel {
    pub base: BaseModel,
    pub options: LigerOptions,
    pub lora: LoraSet,
}

/// Converts `base`: no weight is added or changed; attention layers become Liger attention
/// (but those in `options.softmax_layers`), and fresh adapters (B = 0) are attached, so the
/// projections start out as the base model's.
pub fn linearize(base: BaseModel, options: LigerOptions, lora: LoraOptions) -> Result<LigerModel> {
    options.validate(&base.config)?;
    lora.validate()?;
    let c = &base.config;
    let (hidden, qs, kvs) = (c.hidden_size, c.q_size(), c.kv_size());
    // A rank above the smaller side of a projection adds nothing a full update would not,
    // and sizes the adapters from an option alone.
    let widest_useful = hidden.min(kvs);
    if lora.rank > widest_useful {
        return Err(Error::invalid_argument(format!(
            "lora rank {} is above {widest_useful}, the smaller side of this model's k/v projections; use a smaller rank (8 is the paper's)",
            lora.rank
        )));
    }
    let layers = (0..c.num_layers)
        .map(|layer| {
            let make = |target: LoraTarget, inp: usize, out: usize| {
                // A distinct, reproducible stream per adapter.
                let seed = lora.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((layer * 4 + target.index()) as u64 + 1);
                lora.has(target).then(|| LoraAdapter::new(inp, out, lora.rank, lora.alpha, seed))
            };
            LayerLora {
                q: make(LoraTarget::Q, hidden, qs),
                k: make(LoraTarget::K, hidden, kvs),
                v: make(LoraTarget::V, hidden, kvs),
                o: make(LoraTarget::O, qs, hidden),
            }
        })
        .collect();
    Ok(LigerModel { base, options, lora: LoraSet { layers } })
}

/// q, k, v of one layer (raw: no RoPE), with what the backward pass needs.
pub(crate) struct Projections {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// q and k before the per-head norms (models with q/k norms only).
    pub q_pre: Option<Vec<f32>>,
    pub k_pre: Option<Vec<f32>>,
    /// The LoRA forward's saved products of q, k, v.
    pub saved: [Option<LoraSaved>; 3],
}

/// A Liger layer's two branch outputs before their mix (`[T, hq, D]` each; `swa` without the
/// window branch is `None`).
pub(crate) struct Branches {
    pub grm: Vec<f32>,
    pub swa: Option<Vec<f32>>,
}

/// Everything one layer's backward pass reads, kept by [`LigerModel::layer_forward`].
pub(crate) struct LayerTape {
    /// The attention block's normalised input.
    pub h: Vec<f32>,
    pub proj: Projections,
    /// The mixer's output, input of o_proj.
    pub o: Vec<f32>,
    /// The two branches before their mix, when the layer learns its branch weights.
    pub branches: Option<Branches>,
    pub saved_o: Option<LoraSaved>,
    /// The MLP block's input (the residual stream after attention).
    pub x_mid: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
}

/// `W x (+ LoRA) (+ bias)` for `t` rows.
pub(crate) fn project(
    w: &crate::QTensor,
    adapter: Option<&LoraAdapter>,
    bias: Option<&Vec<f32>>,
    h: &[f32],
    t: usize,
) -> (Vec<f32>, Option<LoraSaved>) {
    let mut y = vec![0.0f32; t * w.rows];
    matmul_wt(w, h, t, &mut y);
    let saved = adapter.map(|a| a.forward_add(h, t, &mut y));
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    (y, saved)
}

pub(crate) fn project_qkv(cfg: &ModelConfig, lw: &LayerWeights, lora: &LayerLora, h: &[f32], t: usize) -> Projections {
    let (mut q, sq) = project(&lw.wq, lora.q.as_ref(), lw.bq.as_ref(), h, t);
    let (mut k, sk) = project(&lw.wk, lora.k.as_ref(), lw.bk.as_ref(), h, t);
    let (v, sv) = project(&lw.wv, lora.v.as_ref(), lw.bv.as_ref(), h, t);
    let (mut q_pre, mut k_pre) = (None, None);
    if let (true, Some(qn), Some(kn)) = (cfg.qk_norm, &lw.q_norm, &lw.k_norm) {
        q_pre = Some(q.clone());
        k_pre = Some(k.clone());
        rms_norm_inplace(&mut q, qn, cfg.rms_norm_eps);
        rms_norm_inplace(&mut k, kn, cfg.rms_norm_eps);
    }
    Projections { q, k, v, q_pre, k_pre, saved: [sq, sk, sv] }
}

impl LigerModel {
    pub fn config(&self) -> &ModelConfig {
        &self.base.config
    }

    pub(crate) fn head_shape(&self) -> Result<HeadShape> {
        let c = &self.base.config;
        HeadShape::new(c.num_heads, c.num_kv_heads, c.head_dim)
    }

    fn is_softmax(&self) -> Vec<bool> {
        (0..self.base.config.num_layers).map(|l| self.options.is_softmax_layer(l)).collect()
    }

    /// Checks the options and that the adapters fit the model (all may have been edited).
    pub(crate) fn check(&self) -> Result<()> {
        let c = &self.base.config;
        self.options.validate(c)?;
        if self.lora.layers.len() != c.num_layers {
            return Err(Error::shape(format!(
                "the LoRA set has {} layers; the model has {}",
                self.lora.layers.len(),
                c.num_layers
            )));
        }
        for (i, l) in self.lora.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                let (inp, out) = match target {
                    LoraTarget::Q => (c.hidden_size, c.q_size()),
                    LoraTarget::K | LoraTarget::V => (c.hidden_size, c.kv_size()),
                    LoraTarget::O => (c.q_size(), c.hidden_size),
                };
                if let Some(a) = l.get(target) {
                    if a.in_features != inp
                        || a.out_features != out
                        || a.a.len() != a.rank * inp
                        || a.b.len() != out * a.rank
                    {
                        return Err(Error::shape(format!(
                            "layer {i} {}: the adapter is {}x{} of rank {}; the projection needs {inp} in, {out} out",
                            target.module_name(),
                            a.in_features,
                            a.out_features,
                            a.rank
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs layer `layer` on `x` (`t x hidden`, updated in place) after what `state` holds.
    /// With `keep`, returns what the backward pass needs.
    pub(crate) fn layer_forward(
        &self,
        layer: usize,
        x: &mut [f32],
        t: usize,
        state: &mut LayerState,
        inv_freq: &[f32],
        keep: bool,
    ) -> Result<Option<LayerTape>> {
        let c = &self.base.config;
        let lw = &self.base.weights.layers[layer];
        let lora = &self.lora.layers[layer];
        let shape = self.head_shape()?;
        let mut h = vec![0.0f32; x.len()];
        rms_norm(x, &lw.attn_norm, c.rms_norm_eps, &mut h);
        let proj = project_qkv(c, lw, lora, &h, t);
        let (att, mix) = (&self.options.attention, self.options.head_mix_of(layer));
        let mut branches = None;
        let o = match state {
            LayerState::Liger(s) if t == 1 => {
                // Decoding: the recurrent form.
                let mut o = vec![0.0f32; c.q_size()];
                s.step(att, mix, &proj.q, &proj.k, &proj.v, inv_freq, &mut o)?;
                o
            }
            LayerState::Liger(s) if keep && mix.is_some() => {
                // Training learned weights: their gradients read the branches before the mix.
                let (mut o, swa) = liger_attention_branches(att, shape, &proj.q, &proj.k, &proj.v, inv_freq, s)?;
                let grm = o.clone();
                mix_branches(att, mix, shape, &mut o, swa.as_deref());
                branches = Some(Branches { grm, swa });
                o
            }
            LayerState::Liger(s) => liger_attention_forward(att, mix, shape, &proj.q, &proj.k, &proj.v, inv_freq, s)?,
            LayerState::Softmax(cache) => softmax_attention(shape, &proj, inv_freq, cache)?,
        };
        let (y, saved_o) = project(&lw.wo, lora.o.as_ref(), None, &o, t);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        let x_mid = if keep { x.to_vec() } else { Vec::new() };
        let (gate, up) = self.mlp_forward(layer, x, t);
        Ok(keep.then_some(LayerTape { h, proj, o, branches, saved_o, x_mid, gate, up }))
    }

    /// The layer's SwiGLU MLP block, `x += down(silu(gate(h2)) * up(h2))` with `h2 = norm(x)`;
    /// returns the pre-activations gate and up for the backward pass.
    pub(crate) fn mlp_forward(&self, layer: usize, x: &mut [f32], t: usize) -> (Vec<f32>, Vec<f32>) {
        let c = &self.base.config;
        let lw = &self.base.weights.layers[layer];
        let (hs, f) = (c.hidden_size, c.intermediate_size);
        let mut h2 = vec![0.0f32; t * hs];
        rms_norm(x, &lw.ffn_norm, c.rms_norm_eps, &mut h2);
        let (mut gate, mut up) = (vec![0.0f32; t * f], vec![0.0f32; t * f]);
        matmul_wt(&lw.w_gate, &h2, t, &mut gate);
        matmul_wt(&lw.w_up, &h2, t, &mut up);
        let mut act = gate.clone();
        swiglu_inplace(&mut act, &up);
        let mut y = vec![0.0f32; t * hs];
        matmul_wt(&lw.w_down, &act, t, &mut y);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        (gate, up)
    }

    /// A fresh layer state for a whole-sequence forward.
    pub(crate) fn fresh_layer_state(&self, layer: usize) -> Result<LayerState> {
        Ok(if self.options.is_softmax_layer(layer) {
            LayerState::Softmax(AttentionCache::default())
        } else {
            LayerState::Liger(LigerLayerState::new(&self.options.attention, self.head_shape()?)?)
        })
    }

    /// CONTEXT_OVERFLOW when `t` more tokens after `position` would pass the context of the
    /// hybrid's softmax layers (none without them). The CPU and GPU decoders both check here.
    pub fn check_context(&self, position: usize, t: usize) -> Result<()> {
        match self.max_tokens() {
            Some(limit) if position + t > limit => Err(Error::new(
                ErrorCode::ContextOverflow,
                format!(
                    "{} tokens exceed the context of {limit} of the hybrid model's softmax layers (already {position} in the state); shorten the input",
                    position + t
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The residual stream after the last layer (`t x hidden`), continuing `state`.
    pub(crate) fn hidden_states(&self, tokens: &[u32], state: &mut LigerState) -> Result<Vec<f32>> {
        self.check()?;
        let c = &self.base.config;
        let t = tokens.len();
        if t == 0 {
            return Err(Error::invalid_argument("forward needs at least one token"));
        }
        self.check_context(state.position, t)?;
        state.prepare(&self.options.attention, self.head_shape()?, &self.is_softmax())?;
        let inv_freq = c.rope_inv_freq();
        let mut x = embed(c, &self.base.weights, tokens)?;
        for (layer, st) in state.layers.iter_mut().enumerate() {
            self.layer_forward(layer, &mut x, t, st, &inv_freq, false)?;
        }
        state.position += t;
        Ok(x)
    }

    /// Logits after every token (`T x vocab`): the parallel (chunked) form.
    pub fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let x = self.hidden_states(tokens, &mut LigerState::default())?;
        Ok(lm_head(&self.base.config, &self.base.weights, &x, tokens.len(), Logits::All))
    }

    /// Logits after the last token (`vocab`).
    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let x = self.hidden_states(tokens, &mut LigerState::default())?;
        Ok(lm_head(&self.base.config, &self.base.weights, &x, tokens.len(), Logits::Last))
    }

    /// The base weights with every adapter folded into its projection (`W + scale · B A`, f32):
    /// what a merged checkpoint and an edge bundle store.
    pub fn merged_weights(&self) -> ModelWeights {
        let mut w = self.base.weights.clone();
        for (lw, lora) in w.layers.iter_mut().zip(&self.lora.layers) {
            for (target, t) in [
                (LoraTarget::Q, &mut lw.wq),
                (LoraTarget::K, &mut lw.wk),
                (LoraTarget::V, &mut lw.wv),
                (LoraTarget::O, &mut lw.wo),
            ] {
                if let Some(a) = lora.get(target) {
                    *t = QTensor::from_f32(t.rows, t.cols, a.merged(&t.to_f32()));
                }
            }
        }
        w
    }

    /// Decoding memory of one sequence in bytes, at its largest: constant for a model with
    /// Liger layers only; with softmax layers, what their caches hold at the context limit.
    pub fn state_bytes(&self) -> usize {
        self.state_bytes_with(&self.options)
    }

    /// [`LigerModel::state_bytes`] of this model run with other options (e.g. the surprise
    /// cache it was trained without).
    pub fn state_bytes_with(&self, options: &LigerOptions) -> usize {
        let c = &self.base.config;
        let Ok(shape) = self.head_shape() else { return 0 };
        let liger = LigerLayerState::max_bytes(&options.attention, shape);
        let softmax = 2 * c.kv_size() * 4 * c.max_position_embeddings;
        (0..c.num_layers).map(|l| if options.is_softmax_layer(l) { softmax } else { liger }).sum()
    }
}

/// Full causal attention with RoPE over the cache and the new tokens; appends to the cache.
pub(crate) fn softmax_attention(
    shape: HeadShape,
    p: &Projections,
    inv_freq: &[f32],
    cache: &mut AttentionCache,
) -> Result<Vec<f32>> {
    let pos = cache.keys.len() / (shape.hkv * shape.d);
    let (mut q, mut k) = (p.q.clone(), p.k.clone());
    apply_rope(&mut q, shape.hq, shape.d, inv_freq, pos, false);
    apply_rope(&mut k, shape.hkv, shape.d, inv_freq, pos, false);
    let o = causal_attention_forward(shape, &q, &k, &p.v, Some((&cache.keys, &cache.values)))?;
    cache.keys.extend_from_slice(&k);
    cache.values.extend_from_slice(&p.v);
    Ok(o)
}

impl CausalLm for LigerModel {
    type State = LigerState;
    fn new_state(&self) -> LigerState {
        LigerState::default()
    }
    fn forward_last(&self, state: &mut LigerState, tokens: &[u32]) -> Result<Vec<f32>> {
        let x = self.hidden_states(tokens, state)?;
        Ok(lm_head(&self.base.config, &self.base.weights, &x, tokens.len(), Logits::Last))
    }
    fn tokenizer(&self) -> &Tokenizer {
        self.base.tokenizer()
    }
    fn eos_ids(&self) -> Vec<u32> {
        self.base.eos_ids()
    }
    /// Unbounded with Liger layers only; the base context when softmax layers remain.
    fn max_tokens(&self) -> Option<usize> {
        (!self.options.softmax_layers.is_empty()).then_some(self.base.config.max_position_embeddings)
    }
}
