//! Liger attention: `o = alpha * GRM(q, k, v) + beta * SWA(rope(q), rope(k), v)`, with one
//! `alpha` and `beta` for every head, or learned ones per head (see [`super::head_mix`]).
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
use super::head_mix::{mix_branches, split_branch_grads, HeadMix};
use super::heads::QkvGrads;
use super::mixer::{self, MixerState, DEFAULT_CHUNK_SIZE};
use super::surprise::{
    check_repeat_tolerance, surprise_attention_backward, surprise_kept_with_repeats, surprise_score_step,
    surprise_scores, RepeatRule, SurpriseMemory, MAX_SURPRISE_KEYS,
};
use super::swa::{self, SwaCache, Window, DEFAULT_WINDOW_KEYS};
use crate::error::{Error, Result};
use crate::nn::rope::apply_rope;
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
    /// Tokens per key-value head that left the window and stay visible to the SWA branch,
    /// chosen by surprise (see [`super::surprise`]; 0 = the paper's window).
    pub surprise_keys: usize,
    /// The surprise cache's repeat rule: a token whose value is within this relative squared
    /// distance of one the cache holds does not enter (see [`super::surprise`]; 0 = off).
    pub surprise_repeat_tolerance: f64,
    pub alpha: f32,
    pub beta: f32,
}

impl Default for LigerAttentionConfig {
    fn default() -> Self {
        LigerAttentionConfig {
            mixer: MixerConfig::default(),
            window_keys: DEFAULT_WINDOW_KEYS,
            sink_keys: 0,
            use_swa: true,
            grm_norm: false,
            surprise_keys: 0,
            surprise_repeat_tolerance: 0.0,
            alpha: 0.5,
            beta: 0.5,
        }
    }
}

/// A layer's surprise cache: its slots per key-value head (0 = none) and the repeat rule's
/// tolerance (0 = off). See [`super::surprise`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SurpriseCache {
    pub keys: usize,
    pub repeat_tolerance: f64,
}

impl LigerAttentionConfig {
    /// The surprise cache's settings.
    pub fn surprise_cache(&self) -> SurpriseCache {
        SurpriseCache { keys: self.surprise_keys, repeat_tolerance: self.surprise_repeat_tolerance }
    }

    /// These settings with another surprise cache (`SurpriseCache::default()`: none).
    pub fn set_surprise_cache(&mut self, cache: SurpriseCache) {
        (self.surprise_keys, self.surprise_repeat_tolerance) = (cache.keys, cache.repeat_tolerance);
    }

    /// Whether a layer state keeps the recurrence over values of one (the normaliser of
    /// `grm_norm`, which the surprise score reads too).
    pub fn keeps_ones_state(&self) -> bool {
        self.grm_norm || (self.use_swa && self.surprise_keys > 0)
    }

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
            return Err(Error::invalid_argument(
                "grm_norm does not apply to gsa: its slot read-out is already a softmax",
            ));
        }
        if self.surprise_keys > 0 && self.mixer.kind == MixerKind::Gsa {
            return Err(Error::invalid_argument("surprise_keys does not apply to gsa: its slot read-out cannot score how well a key's value is recalled"));
        }
        // The delta rule's read-out of values of one can be zero or negative (it erases, and
        // its features are L2-normalised, not positive): no normaliser, no recall score.
        if self.grm_norm && self.mixer.kind == MixerKind::Gdn {
            return Err(Error::invalid_argument(
                "grm_norm does not apply to gdn: its read-out of values of one is not a positive normaliser",
            ));
        }
        if self.surprise_keys > 0 && self.mixer.kind == MixerKind::Gdn {
            return Err(Error::invalid_argument(
                "surprise_keys does not apply to gdn: its read-out of values of one cannot normalise a recall score",
            ));
        }
        if self.surprise_keys > 0 && !self.use_swa {
            return Err(Error::invalid_argument(
                "surprise_keys needs the sliding-window branch (use_swa): the cached tokens are attended there",
            ));
        }
        if self.surprise_keys > MAX_SURPRISE_KEYS {
            return Err(Error::invalid_argument(format!(
                "surprise_keys must be at most {MAX_SURPRISE_KEYS}, got {}",
                self.surprise_keys
            )));
        }
        check_repeat_tolerance(self.surprise_repeat_tolerance)?;
        if self.surprise_repeat_tolerance > 0.0 && self.surprise_keys == 0 {
            return Err(Error::invalid_argument(
                "surprise_repeat_tolerance is a rule of the surprise cache: set surprise_keys too",
            ));
        }
        if self.sink_keys > MAX_SINK_KEYS {
            return Err(Error::invalid_argument(format!(
                "sink_keys must be at most {MAX_SINK_KEYS} (a few first tokens), got {}",
                self.sink_keys
            )));
        }
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(Error::invalid_argument(format!(
                "alpha and beta must be finite, got {} and {}",
                self.alpha, self.beta
            )));
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
/// key-value head and, with SWA, the ring buffer of the window's rotated keys and values (with
/// a surprise cache: the window, the sinks and the cache, as a [`SurpriseMemory`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LigerLayerState {
    pub grm: MixerState,
    /// With `grm_norm` or a surprise cache: the state of the same recurrence over values of one
    /// (the normaliser, and the surprise score's).
    pub grm_norm: Option<MixerState>,
    pub swa: Option<SwaCache>,
    pub surprise: Option<SurpriseMemory>,
    /// Tokens consumed so far (the next token's RoPE position).
    pub position: usize,
}

impl LigerLayerState {
    /// The state before the first token.
    pub fn new(cfg: &LigerAttentionConfig, shape: HeadShape) -> Result<Self> {
        let surprise = if cfg.use_swa && cfg.surprise_keys > 0 {
            Some(
                SurpriseMemory::new(shape, cfg.window(), cfg.surprise_keys)?
                    .with_repeat_tolerance(cfg.surprise_repeat_tolerance)?,
            )
        } else {
            None
        };
        let swa = if cfg.use_swa && surprise.is_none() { Some(SwaCache::new(shape, cfg.window())?) } else { None };
        let grm_norm = cfg.keeps_ones_state().then(|| MixerState::zeros(&cfg.mixer, shape));
        Ok(LigerLayerState { grm: MixerState::zeros(&cfg.mixer, shape), grm_norm, swa, surprise, position: 0 })
    }

    /// Memory held now, in bytes.
    pub fn bytes(&self) -> usize {
        self.grm.bytes()
            + self.grm_norm.as_ref().map_or(0, |s| s.bytes())
            + self.swa.as_ref().map_or(0, |c| c.bytes())
            + self.surprise.as_ref().map_or(0, |m| m.bytes())
    }

    /// Memory held once the window is full: constant in the sequence length.
    pub fn max_bytes(cfg: &LigerAttentionConfig, shape: HeadShape) -> usize {
        let grm = MixerState::zeros(&cfg.mixer, shape).bytes() * if cfg.keeps_ones_state() { 2 } else { 1 };
        let window = match (cfg.use_swa, cfg.surprise_keys) {
            (false, _) => 0,
            (true, 0) => 2 * cfg.window().capacity() * shape.hkv * shape.d * 4,
            (true, slots) => SurpriseMemory::max_bytes(shape, cfg.window(), slots),
        };
        grm + window
    }

    fn check(&self, cfg: &LigerAttentionConfig, shape: HeadShape) -> Result<()> {
        self.grm.check(&cfg.mixer, shape)?;
        match &self.grm_norm {
            Some(s) if cfg.keeps_ones_state() => s.check(&cfg.mixer, shape)?,
            None if !cfg.keeps_ones_state() => {}
            _ => return Err(Error::shape("the layer state was made for another grm_norm or surprise_keys setting; make it with LigerLayerState::new")),
        }
        let window_ok = match (&self.swa, &self.surprise) {
            (Some(c), None) => cfg.use_swa && cfg.surprise_keys == 0 && c.shape == shape && c.window == cfg.window(),
            (None, Some(m)) => {
                cfg.use_swa
                    && m.slots == cfg.surprise_keys
                    && m.repeat_tolerance == cfg.surprise_repeat_tolerance
                    && m.shape == shape
                    && m.window == cfg.window()
            }
            (None, None) => !cfg.use_swa,
            (Some(_), Some(_)) => false,
        };
        if window_ok {
            Ok(())
        } else {
            Err(Error::shape(
                "the layer state was made for another window setting or head shape; make it with LigerLayerState::new",
            ))
        }
    }

    /// One decoding step from the raw `q_t` `[hq, D]`, `k_t`, `v_t` `[hkv, D]`; writes `o_t`.
    /// `mix`: learned branch weights per head (else the configuration's).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        cfg: &LigerAttentionConfig,
        mix: Option<&HeadMix>,
        q_t: &[f32],
        k_t: &[f32],
        v_t: &[f32],
        inv_freq: &[f32],
        o_t: &mut [f32],
    ) -> Result<()> {
        let shape = self.grm.shape;
        cfg.validate(shape, inv_freq)?;
        self.check(cfg, shape)?;
        check_mix(mix, shape)?;
        let (scores, next_ones) = match (&self.surprise, &self.grm_norm) {
            (Some(_), Some(ones)) => {
                let (scores, next) = surprise_score_step(&cfg.mixer, shape, k_t, v_t, &self.grm, ones)?;
                (Some(scores), Some(next))
            }
            _ => (None, None),
        };
        mixer::recurrent_step(&cfg.mixer, &mut self.grm, q_t, k_t, v_t, o_t)?;
        if let Some(norm_state) = &mut self.grm_norm {
            if cfg.grm_norm {
                let mut den = vec![0.0; o_t.len()];
                mixer::recurrent_step(&cfg.mixer, norm_state, q_t, k_t, &vec![1.0; v_t.len()], &mut den)?;
                grm_normalize(o_t, &den);
            } else if let Some(next) = next_ones {
                // Kept only for the surprise score, which advanced it already.
                *norm_state = next;
            }
        }
        let mut o_swa = None;
        if cfg.use_swa {
            let (mut qr, mut kr) = (q_t.to_vec(), k_t.to_vec());
            apply_rope(&mut qr, shape.hq, shape.d, inv_freq, self.position, false);
            apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, self.position, false);
            o_swa = Some(match (&mut self.swa, &mut self.surprise, &scores) {
                (Some(cache), _, _) => {
                    let mut o_swa = vec![0.0; o_t.len()];
                    cache.step(&qr, &kr, v_t, &mut o_swa)?;
                    o_swa
                }
                (None, Some(memory), Some(scores)) => memory.attend(&qr, &kr, v_t, scores)?,
                _ => unreachable!("check() holds a window memory for every SWA layer"),
            });
        }
        mix_branches(cfg, mix, shape, o_t, o_swa.as_deref());
        self.position += 1;
        Ok(())
    }
}

/// Liger attention over T tokens that follow what `state` has seen (a fresh state for
/// training or a prompt); advances `state`. `mix`: learned branch weights per head (else the
/// configuration's). Returns `[T, hq, D]`.
#[allow(clippy::too_many_arguments)]
pub fn liger_attention_forward(
    cfg: &LigerAttentionConfig,
    mix: Option<&HeadMix>,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    state: &mut LigerLayerState,
) -> Result<Vec<f32>> {
    check_mix(mix, shape)?;
    let (mut o, swa) = liger_attention_branches(cfg, shape, q, k, v, inv_freq, state)?;
    mix_branches(cfg, mix, shape, &mut o, swa.as_deref());
    Ok(o)
}

/// The two branches of [`liger_attention_forward`] before their mix: the recurrent branch's
/// output (normalised with `grm_norm`) and, with `use_swa`, the window attention's, each
/// `[T, hq, D]`; advances `state`.
pub fn liger_attention_branches(
    cfg: &LigerAttentionConfig,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    state: &mut LigerLayerState,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    cfg.validate(shape, inv_freq)?;
    state.check(cfg, shape)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    let (scores, next_ones) = match (&state.surprise, &state.grm_norm) {
        (Some(_), Some(ones)) => {
            let (scores, next) = surprise_scores(&cfg.mixer, shape, k, v, &state.grm, ones)?;
            (Some(scores), Some(next))
        }
        _ => (None, None),
    };
    let (mut o, grm) = mixer::chunk_forward(&cfg.mixer, shape, q, k, v, Some(&state.grm), DEFAULT_CHUNK_SIZE)?;
    if let Some(norm_state) = &mut state.grm_norm {
        if cfg.grm_norm {
            let (den, next) = mixer::chunk_forward(
                &cfg.mixer,
                shape,
                q,
                k,
                &vec![1.0; v.len()],
                Some(norm_state),
                DEFAULT_CHUNK_SIZE,
            )?;
            grm_normalize(&mut o, &den);
            *norm_state = next;
        } else if let Some(next) = next_ones {
            // Kept only for the surprise score, which advanced it already.
            *norm_state = next;
        }
    }
    let mut o_swa = None;
    if cfg.use_swa {
        let (mut qr, mut kr) = (q.to_vec(), k.to_vec());
        apply_rope(&mut qr, shape.hq, shape.d, inv_freq, state.position, false);
        apply_rope(&mut kr, shape.hkv, shape.d, inv_freq, state.position, false);
        o_swa = Some(match (&mut state.swa, &mut state.surprise, &scores) {
            (Some(cache), _, _) => cache.attend(&qr, &kr, v)?,
            (None, Some(memory), Some(scores)) => memory.attend(&qr, &kr, v, scores)?,
            _ => unreachable!("check() holds a window memory for every SWA layer"),
        });
    }
    state.grm = grm;
    state.position += t;
    Ok((o, o_swa))
}

/// Checks learned branch weights against the heads.
fn check_mix(mix: Option<&HeadMix>, shape: HeadShape) -> Result<()> {
    mix.map_or(Ok(()), |m| m.validate(shape.hq))
}

/// Gradients of `sum(d_o * liger_attention_forward(q, k, v))` from a fresh state, w.r.t. the
/// raw q, k, v (the SWA branch's gradients are rotated back through RoPE). The learned
/// weights' own gradients are [`super::head_mix::head_mix_grads`]'.
#[allow(clippy::too_many_arguments)]
pub fn liger_attention_backward(
    cfg: &LigerAttentionConfig,
    mix: Option<&HeadMix>,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
) -> Result<QkvGrads> {
    cfg.validate(shape, inv_freq)?;
    check_mix(mix, shape)?;
    let (d_grm, d_swa) = split_branch_grads(cfg, mix, shape, d_o);
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
        let mut g = if cfg.surprise_keys > 0 {
            // The cache's choice is held fixed: the attention over what it kept is differentiated.
            let fresh = MixerState::zeros(&cfg.mixer, shape);
            let (scores, _) = surprise_scores(&cfg.mixer, shape, k, v, &fresh, &fresh)?;
            let rule = RepeatRule { values: v, d: shape.d, tolerance: cfg.surprise_repeat_tolerance };
            let kept = surprise_kept_with_repeats(shape.hkv, cfg.window(), cfg.surprise_keys, &scores, Some(rule));
            surprise_attention_backward(shape, cfg.window(), cfg.surprise_keys, &qr, &kr, v, &kept, &d_swa)?
        } else {
            swa::swa_backward(shape, cfg.window(), &qr, &kr, v, &d_swa)?
        };
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
