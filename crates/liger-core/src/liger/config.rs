//! Which token mixer a Liger layer uses, and its few settings.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The gated recurrent mixers of the Liger method (paper Table 1).
///
/// Every mixer except `Gsa` and `Gdn` is one gated linear recurrence per key-value head,
/// `S_t = diag(a_t) S_{t-1} + kf_t^T v_t`, `o_t = qf_t S_t`; they differ in the feature maps
/// `qf`, `kf` and in how the decay `a_t` is built from the key projection `k_t`:
///
/// | kind | qf | kf | log a_t |
/// |---|---|---|---|
/// | `Gla` | softmax(q) | softmax(k) | logsigmoid(k) / normalizer, per key dim |
/// | `Hgrn2` | softmax(q) | 1 - sigmoid(k) | logsigmoid(k), per key dim |
/// | `Retention` | softmax(q) | softmax(k) | logsigmoid(mean(k)), one per head |
/// | `Mamba2` | softmax(q) | softmax(k) | -softplus(mean(k)), one per head |
/// | `Rwkv6` | softmax(q) | softmax(k) | -exp(k), per key dim |
/// | `Linear` | softmax(q) | softmax(k) | 0 (no decay) |
///
/// `Gsa` (gated slot attention) keeps two slot memories of `gsa_slots` rows per key-value head;
/// see [`crate::liger::gsa`]. `Gdn` (the gated delta rule) keeps the same `[D, D]` state as the
/// gated mixers but updates it with a delta rule over L2-normalised keys; see
/// [`crate::liger::gated_delta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixerKind {
    Gla,
    Hgrn2,
    Gsa,
    /// Also known as mLSTM-style scalar gating: one sigmoid gate per head.
    #[serde(alias = "mlstm")]
    Retention,
    Mamba2,
    Rwkv6,
    /// No decay at all: the ablation of the paper.
    Linear,
    /// The gated delta rule (Gated DeltaNet), gates pooled from the key.
    Gdn,
}

impl MixerKind {
    pub const ALL: [MixerKind; 8] = [
        MixerKind::Gla,
        MixerKind::Hgrn2,
        MixerKind::Gsa,
        MixerKind::Retention,
        MixerKind::Mamba2,
        MixerKind::Rwkv6,
        MixerKind::Linear,
        MixerKind::Gdn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MixerKind::Gla => "gla",
            MixerKind::Hgrn2 => "hgrn2",
            MixerKind::Gsa => "gsa",
            MixerKind::Retention => "retention",
            MixerKind::Mamba2 => "mamba2",
            MixerKind::Rwkv6 => "rwkv6",
            MixerKind::Linear => "linear",
            MixerKind::Gdn => "gdn",
        }
    }
}

/// The reference divides the GLA log-gate by 16, keeping the decay close to 1.
pub const DEFAULT_GATE_NORMALIZER: f32 = 16.0;
/// Slots of gated slot attention (as in the GSA paper).
pub const DEFAULT_GSA_SLOTS: usize = 64;

/// How gated slot attention scales its queries before the slot softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GsaScale {
    /// Unscaled, as the reference code runs it (`chunk_gsa(..., scale=1)`): the default.
    One,
    /// By 1/sqrt(D), like softmax attention: this library's form before it followed the
    /// reference, and what checkpoints saved without the setting ran with.
    InvSqrtHeadDim,
}

impl GsaScale {
    pub const ALL: [GsaScale; 2] = [GsaScale::One, GsaScale::InvSqrtHeadDim];

    pub fn name(self) -> &'static str {
        match self {
            GsaScale::One => "one",
            GsaScale::InvSqrtHeadDim => "inv_sqrt_head_dim",
        }
    }

    /// The factor on the queries for head size `d`.
    pub fn factor(self, d: usize) -> f32 {
        match self {
            GsaScale::One => 1.0,
            GsaScale::InvSqrtHeadDim => 1.0 / (d as f32).sqrt(),
        }
    }

    /// What a saved configuration without the setting means (written before it existed).
    fn saved_before_the_setting() -> Self {
        GsaScale::InvSqrtHeadDim
    }
}

/// A mixer and its settings. `gate_normalizer` divides the log-gate of `Gla` and `Gsa` (the
/// mixers the paper normalises) and of `Gdn`; `gsa_slots` and `gsa_scale` are used by `Gsa` only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MixerConfig {
    pub kind: MixerKind,
    pub gate_normalizer: f32,
    pub gsa_slots: usize,
    #[serde(default = "GsaScale::saved_before_the_setting")]
    pub gsa_scale: GsaScale,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            kind: MixerKind::Gla,
            gate_normalizer: DEFAULT_GATE_NORMALIZER,
            gsa_slots: DEFAULT_GSA_SLOTS,
            gsa_scale: GsaScale::One,
        }
    }
}

impl MixerConfig {
    pub fn new(kind: MixerKind) -> Self {
        MixerConfig { kind, ..Default::default() }
    }

    /// Checks the settings against a head size.
    pub fn validate(&self, head_dim: usize) -> Result<()> {
        if !(self.gate_normalizer.is_finite() && self.gate_normalizer > 0.0) {
            return Err(Error::invalid_argument(format!(
                "mixer gate_normalizer must be a positive number, got {}",
                self.gate_normalizer
            )));
        }
        if self.kind == MixerKind::Gsa && (self.gsa_slots == 0 || !head_dim.is_multiple_of(self.gsa_slots)) {
            return Err(Error::invalid_argument(format!(
                "gsa_slots must divide the head size {head_dim} (the gate pools the key over equal groups), got {}",
                self.gsa_slots
            )));
        }
        if self.kind == MixerKind::Gdn && (head_dim < 2 || !head_dim.is_multiple_of(2)) {
            return Err(Error::invalid_argument(format!(
                "the gdn mixer needs an even head size (its two gates pool the two halves of the key), got {head_dim}"
            )));
        }
        Ok(())
    }
}

/// Sizes of one sequence's heads: `q` is `[T, hq, d]`, `k` and `v` are `[T, hkv, d]`,
/// row-major. Query head `h` reads key-value head `h / (hq / hkv)` (grouped-query attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

impl HeadShape {
    pub fn new(hq: usize, hkv: usize, d: usize) -> Result<Self> {
        if hq == 0 || hkv == 0 || d == 0 {
            return Err(Error::invalid_argument(format!(
                "head counts and head size must be positive, got hq={hq} hkv={hkv} d={d}"
            )));
        }
        if !hq.is_multiple_of(hkv) {
            return Err(Error::invalid_argument(format!(
                "{hq} query heads are not a multiple of {hkv} key-value heads"
            )));
        }
        Ok(HeadShape { hq, hkv, d })
    }
    /// Query heads per key-value head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }
    /// Checks `q`, `k`, `v` (and optionally more `[T, hq, d]` slices) and returns T.
    pub fn tokens(&self, q: usize, k: usize, v: usize) -> Result<usize> {
        let (qs, kvs) = (self.hq * self.d, self.hkv * self.d);
        if !q.is_multiple_of(qs) {
            return Err(Error::shape(format!("q has {q} values, not a multiple of hq*d = {qs}")));
        }
        let t = q / qs;
        if k != t * kvs || v != t * kvs {
            return Err(Error::shape(format!(
                "q holds {t} tokens of {} heads x {}, so k and v need {} values each; got k={k}, v={v}",
                self.hq,
                self.d,
                t * kvs
            )));
        }
        Ok(t)
    }
}
