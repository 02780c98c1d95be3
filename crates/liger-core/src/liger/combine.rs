//! Liger attention: `o = alpha * GRM(q, k, v) + beta * SWA(rope(q), rope(k), v)`.
//!
//! With `grm_norm`, the recurrent branch is normalised like attention: `GRM(q, k, v) /
//! (GRM(q, k, 1) + eps)`, the same recurrence over values of one giving `qf_t . z_t` with
//! `z_t = a_t z_{t-1} + kf_t`. The paper's GRM has no normaliser: its state sums the values
//! of every past token, so its output grows with the context until it drowns the window's
//! (an untrained conversion of SmolLM2-135M reaches a perplexity of 45,000 on 512-token
//! WikiText windows; normalised, 216). Normalised, the branch is a weighted mean of past
//! values, on the scale of the window's output at any length. Decoding keeps the second
//! recurrence's state beside the first.
//!
//! The functions take the raw projections and apply RoPE for the SWA branch themselves,
//! from the inverse frequencies (`ModelConfig::rope_inv_freq`) and the positions the layer
//! state tracks: the GRM branch must see un-rotated q and k, so the caller would otherwise
//! have to keep both. With `use_swa = false` only `alpha * GRM` remains (the ablation).

use super::config::{HeadShape, MixerConfig, MixerKind};
use super::mixer::{self, MixerState, QkvGrads, DEFAULT_CHUNK_SIZE};
use super::rope::apply_rope;
use super::swa::{self, SwaCache, Window, DEFAULT_WINDOW_KEYS};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Most attention-sink tokens a layer keeps (StreamingLLM and Lizard use 1 to 4).
pub const MAX_SINK_KEYS: usize = 1024;

/// Settings of Liger attention in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LigerAttentionConfig {
    pub mixer: MixerConfig,
    /// Keys each query of the SWA branch sees, itself included (65 = the reference's).
    pub window_keys: usize,
    /// The first tokens of the sequence, which every query of the SWA branch also sees
    /// (attention sinks; 0 = the paper's window). Decoding keeps them beside the window.
    pub sink_keys: usize,
    /// `false`: the gated recurrent branch only.
    pub use_swa: bool,
    /// Normalise the recurrent branch (see the module's doc; `false` = the paper's GRM).
    pub grm_norm: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Default for LigerAttentionConfig {
    fn default() -> Self {
        LigerAttentionConfig { mixer: MixerConfig::default(), window_keys: DEFAULT_WINDOW_KEYS, sink_keys: 0, use_swa: true, grm_norm: false, alpha: 0.5, beta: 0.5 }
    }
}

impl LigerAttentionConfig {
    /// The keys a query of the SWA branch sees.
    pub fn window(&self) -> Window {
        Window { keys: self.window_keys, sinks: self.sink_keys }
    }

    pub fn validate(&self, shape: HeadShape, inv_freq: &[f32]) -> Result<()> {
        self.mixer.validate(shape.d)?;
        if self.window_keys == 0 {
            return Err(Error::invalid_argument("window_keys must be at least 1 (65 is the reference's window)"));
        }
        if self.grm_norm && self.mixer.kind == MixerKind::Gsa {
            return Err(Error::invalid_argument("grm_norm does not apply to gsa: its slot read-out is already a softmax"));
        }
        if self.sink_keys > MAX_SINK_KEYS {
            return Err(Error::invalid_argument(format!("sink_keys must be at most {MAX_SINK_KEYS} (a few first tokens), got {}", self.sink_keys)));
        }
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(Error::invalid_argument(format!("alpha and beta must be finite, got {} and {}", self.alpha, self.beta)));
        }
        if !shape.d.is_multiple_of(2) || inv_freq.len() != shape.d / 2 {
            return Err(Error::shape(format!(
                "RoPE needs an even head size and head_size/2 inverse frequencies; got head size {} and {}",
                shape.d,
                inv_freq.len()
            )));
        }
        Ok(())
    }
}

/// What one sequence keeps for one Liger layer while decoding: one recurrent state per
/// key-value head and, with SWA, the ring buffer of the window's rotated keys and values.
#[derive(Debug, Clone, PartialEq)]
pub struct LigerLayerState {
    pub grm: MixerState,
    /// With `grm_norm`: the state of the same recurrence over values of one (the normaliser).
    pub grm_norm: Option<MixerState>,
    pub swa: Option<SwaCache>,
    /// Tokens consumed so far (the next token's RoPE position).
    pub position: usize,
}

impl LigerLayerState {
    /// The state before the first token.
    pub fn new(cfg: &LigerAttentionConfig, shape: HeadShape) -> Result<Self> {
        let swa = if cfg.use_swa { Some(SwaCache::new(shape, cfg.window())?) } else { None };
        let grm_norm = cfg.grm_norm.then(|| MixerState::zeros(&cfg.mixer, shape));
        Ok(LigerLayerState { grm: MixerState::zeros(&cfg.mixer, shape), grm_norm, swa, position: 0 })
    }

    /// Memory held now, in bytes.
    pub fn bytes(&self) -> usize {
        self.grm.bytes() + self.grm_norm.as_ref().map_or(0, |s| s.bytes()) + self.swa.as_ref().map_or(0, |c| c.bytes())
    }

    /// Memory held once the window is full: constant in the sequence length.
    pub fn max_bytes(cfg: &LigerAttentionConfig, shape: HeadShape) -> usize {
        let grm = MixerState::zeros(&cfg.mixer, shape).bytes() * if cfg.grm_norm { 2 } else { 1 };
        let window = if cfg.use_swa { 2 * cfg.window().capacity() * shape.hkv * shape.d * 4 } else { 0 };
        grm + window
    }

    fn check(&self, cfg: &LigerAttentionConfig, shape: HeadShape) -> Result<()> {
        self.grm.check(&cfg.mixer, shape)?;
        match &self.grm_norm {
            Some(s) if cfg.grm_norm => s.check(&cfg.mixer, shape)?,
            None if !cfg.grm_norm => {}
            _ => return Err(Error::shape("the layer state was made for another grm_norm setting; make it with LigerLayerState::new")),
        }
        match &self.swa {
            Some(c) if cfg.use_swa && c.shape == shape && c.window == cfg.window() => Ok(()),
            None if !cfg.use_swa => Ok(()),
            _ => Err(Error::shape("the layer state was made for another window setting or head shape; make it with LigerLayerState::new")),
        }
    }

    /// One decoding step from the raw `q_t` `[hq, D]`, `k_t`, `v_t` `[hkv, D]`; writes `o_t`.
    pub fn step(&mut self, cfg: &LigerAttentionConfig, q_t: &[f32], k_t: &[f32], v_t: &[f32], inv_freq: &[f32], o_t: &mut [f32]) -> Result<()> {
        let shape = self.grm.shape;
        cfg.validate(shape, inv_freq)?;
        self.check(cfg, shape)?;
        mixer::recurrent_step(&cfg.mixer, &mut self.grm, q_t, k_t, v_t, o_t)?;
        if let Some(norm_state) = &mut self.grm_norm {
            let mut den = vec![0.0; o_t.len()];
            mixer::recurrent_step(&cfg.mixer, norm_state, q_t, k_t, &vec![1.0; v_t.len()], &mut den)?;
            grm_normalize(o_t, &den);
        }
        o_t.iter_mut().for_each(|o| *o *= cfg.alpha);
        if let Some(cache) = &mut self.swa {
            let (mut qr, mut kr) = (q_t.to_vec(), k_t.to_vec());
            apply_rope(&mut qr, shape.hq, shape.d, inv_freq, self.position, false);
            apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, self.position, false);
            let mut o_swa = vec![0.0; o_t.len()];
            cache.step(&qr, &kr, v_t, &mut o_swa)?;
            o_t.iter_mut().zip(&o_swa).for_each(|(o, s)| *o += cfg.beta * s);
        }
        self.position += 1;
        Ok(())
    }
}

/// Liger attention over T tokens that follow what `state` has seen (a fresh state for
/// training or a prompt); advances `state`. Returns `[T, hq, D]`.
#[allow(clippy::too_many_arguments)]
pub fn liger_attention_forward(
    cfg: &LigerAttentionConfig,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    state: &mut LigerLayerState,
) -> Result<Vec<f32>> {
    cfg.validate(shape, inv_freq)?;
    state.check(cfg, shape)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    let (mut o, grm) = mixer::chunk_forward(&cfg.mixer, shape, q, k, v, Some(&state.grm), DEFAULT_CHUNK_SIZE)?;
    if let Some(norm_state) = &mut state.grm_norm {
        let (den, next) = mixer::chunk_forward(&cfg.mixer, shape, q, k, &vec![1.0; v.len()], Some(norm_state), DEFAULT_CHUNK_SIZE)?;
        grm_normalize(&mut o, &den);
        *norm_state = next;
    }
    o.iter_mut().for_each(|x| *x *= cfg.alpha);
    if let Some(cache) = &mut state.swa {
        let (mut qr, mut kr) = (q.to_vec(), k.to_vec());
        apply_rope(&mut qr, shape.hq, shape.d, inv_freq, state.position, false);
        apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, state.position, false);
        let o_swa = cache.attend(&qr, &kr, v)?;
        o.iter_mut().zip(&o_swa).for_each(|(x, s)| *x += cfg.beta * s);
    }
    state.grm = grm;
    state.position += t;
    Ok(o)
}

/// Gradients of `sum(d_o * liger_attention_forward(q, k, v))` from a fresh state, w.r.t. the
/// raw q, k, v (the SWA branch's gradients are rotated back through RoPE).
pub fn liger_attention_backward(
    cfg: &LigerAttentionConfig,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
) -> Result<QkvGrads> {
    cfg.validate(shape, inv_freq)?;
    let d_grm: Vec<f32> = d_o.iter().map(|x| x * cfg.alpha).collect();
    let mut grads = if cfg.grm_norm {
        // o = n / (den + eps): the two recurrences' gradients, from the recomputed forward.
        let ones = vec![1.0; v.len()];
        let (mut o, _) = mixer::chunk_forward(&cfg.mixer, shape, q, k, v, None, DEFAULT_CHUNK_SIZE)?;
        let (den, _) = mixer::chunk_forward(&cfg.mixer, shape, q, k, &ones, None, DEFAULT_CHUNK_SIZE)?;
        grm_normalize(&mut o, &den);
        let (d_n, d_den) = grm_normalize_backward(&d_grm, &den, &o);
        let mut g = mixer::chunk_backward(&cfg.mixer, shape, q, k, v, &d_n, DEFAULT_CHUNK_SIZE)?;
        let g_den = mixer::chunk_backward(&cfg.mixer, shape, q, k, &ones, &d_den, DEFAULT_CHUNK_SIZE)?;
        g.dq.iter_mut().zip(&g_den.dq).for_each(|(a, b)| *a += b);
        g.dk.iter_mut().zip(&g_den.dk).for_each(|(a, b)| *a += b);
        g
    } else {
        mixer::chunk_backward(&cfg.mixer, shape, q, k, v, &d_grm, DEFAULT_CHUNK_SIZE)?
    };
    if cfg.use_swa {
        let (mut qr, mut kr) = (q.to_vec(), k.to_vec());
        apply_rope(&mut qr, shape.hq, shape.d, inv_freq, 0, false);
        apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, 0, false);
        let d_swa: Vec<f32> = d_o.iter().map(|x| x * cfg.beta).collect();
        let mut g = swa::swa_backward(shape, cfg.window(), &qr, &kr, v, &d_swa)?;
        apply_rope(&mut g.dq, shape.hq, shape.d, inv_freq, 0, true);
        apply_rope(&mut g.dk, shape.hkv, shape.d, inv_freq, 0, true);
        grads.dq.iter_mut().zip(&g.dq).for_each(|(a, b)| *a += b);
        grads.dk.iter_mut().zip(&g.dk).for_each(|(a, b)| *a += b);
        grads.dv.iter_mut().zip(&g.dv).for_each(|(a, b)| *a += b);
    }
    Ok(grads)
}

/// Keeps the normaliser away from zero (it is at least `qf_t . kf_t > 0`, tiny only for extreme
/// feature maps).
pub const GRM_NORM_EPS: f32 = 1e-6;

/// `o = n / (den + eps)`, in place on `n` (GPU twin: `grm_normalize` in kernels/model.cu).
pub fn grm_normalize(n: &mut [f32], den: &[f32]) {
    n.iter_mut().zip(den).for_each(|(x, d)| *x /= d + GRM_NORM_EPS);
}

/// Gradients of `sum(d_o * o)` for `o = n / (den + eps)`, given the normalised `o`: returns
/// `(d_n, d_den)` with `d_n = d_o / (den + eps)` and `d_den = -d_n * o`.
pub fn grm_normalize_backward(d_o: &[f32], den: &[f32], o: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d_n: Vec<f32> = d_o.iter().zip(den).map(|(g, d)| g / (d + GRM_NORM_EPS)).collect();
    let d_den = d_n.iter().zip(o).map(|(g, x)| -g * x).collect();
    (d_n, d_den)
}
