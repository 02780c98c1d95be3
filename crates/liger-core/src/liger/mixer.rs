//! The public entry points of the gated recurrent mixers on one sequence: chunked forward
//! (training and prefill), single-step recurrent form (decoding) and chunked backward.
//! Layouts: `q` `[T, hq, D]`, `k`, `v` `[T, hkv, D]`, output `[T, hq, D]`, row-major.
//! One recurrent state per key-value head; the query heads of a group read it.

use super::config::{HeadShape, MixerConfig, MixerKind};
use super::feature::{key_features, key_features_backward_acc, softmax, softmax_backward_acc};
use super::gated_delta;
use super::gla::{self, GatedDims, GatedInputs};
use super::gsa;
use super::heads::{gather_heads, join_groups, scatter_heads, QkvGrads};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The default chunk length of the chunked forms.
pub const DEFAULT_CHUNK_SIZE: usize = 64;

/// The recurrent state of one sequence for one layer: fp32, one block per key-value head.
/// For every mixer but GSA (gdn included) a block is the `[D, D]` matrix S (row = key dim); for GSA it is
/// the key-slot memory `[M, D]` followed by the value-slot memory `[M, D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MixerState {
    pub kind: MixerKind,
    pub shape: HeadShape,
    pub data: Vec<f32>,
}

impl MixerState {
    /// The state before any token.
    pub fn zeros(cfg: &MixerConfig, shape: HeadShape) -> Self {
        let per_head = Self::per_head_len(cfg, shape);
        MixerState { kind: cfg.kind, shape, data: vec![0.0; per_head * shape.hkv] }
    }
    fn per_head_len(cfg: &MixerConfig, shape: HeadShape) -> usize {
        match cfg.kind {
            MixerKind::Gsa => 2 * shape.d * cfg.gsa_slots,
            _ => shape.d * shape.d,
        }
    }
    /// Values per key-value head.
    pub fn per_head(&self) -> usize {
        self.data.len() / self.shape.hkv
    }
    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
    pub(crate) fn check(&self, cfg: &MixerConfig, shape: HeadShape) -> Result<()> {
        if self.kind != cfg.kind || self.shape != shape || self.data.len() != Self::per_head_len(cfg, shape) * shape.hkv
        {
            return Err(Error::shape(format!(
                "the given state is for mixer {} with {:?} ({} values); this call needs mixer {} with {:?}",
                self.kind.name(),
                self.shape,
                self.data.len(),
                cfg.kind.name(),
                shape
            )));
        }
        Ok(())
    }
}

pub(crate) fn check_chunk(chunk: usize) -> Result<()> {
    if chunk == 0 {
        return Err(Error::invalid_argument("chunk size must be at least 1 (64 is the default)"));
    }
    Ok(())
}

/// Per key-value head: softmaxed queries of its group, key features, log-gates, values.
struct HeadFeatures {
    qf: Vec<f32>,
    kf: Vec<f32>,
    g: Vec<f32>,
    v: Vec<f32>,
}

fn head_features(
    cfg: &MixerConfig,
    shape: HeadShape,
    t: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kvh: usize,
) -> HeadFeatures {
    let (d, group) = (shape.d, shape.group());
    let qraw = gather_heads(q, t, shape.hq, d, kvh * group, group);
    let mut qf = vec![0.0; qraw.len()];
    qraw.chunks_exact(d).zip(qf.chunks_exact_mut(d)).for_each(|(x, y)| softmax(x, y));
    let kraw = gather_heads(k, t, shape.hkv, d, kvh, 1);
    let (mut kf, mut g) = (vec![0.0; t * d], vec![0.0; t * d]);
    for ((x, kfr), gr) in kraw.chunks_exact(d).zip(kf.chunks_exact_mut(d)).zip(g.chunks_exact_mut(d)) {
        key_features(cfg, x, kfr, gr);
    }
    HeadFeatures { qf, kf, g, v: gather_heads(v, t, shape.hkv, d, kvh, 1) }
}

/// Chunked forward over one sequence, continuing from `initial` (zeros when `None`).
/// Returns the output `[T, hq, D]` and the state after the last token, from which
/// [`recurrent_step`] or another `chunk_forward` can go on.
pub fn chunk_forward(
    cfg: &MixerConfig,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    initial: Option<&MixerState>,
    chunk: usize,
) -> Result<(Vec<f32>, MixerState)> {
    cfg.validate(shape.d)?;
    check_chunk(chunk)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    let mut state = match initial {
        Some(s) => {
            s.check(cfg, shape)?;
            s.clone()
        }
        None => MixerState::zeros(cfg, shape),
    };
    if cfg.kind == MixerKind::Gsa {
        let o = gsa::chunk_forward(cfg, shape, t, q, k, v, &mut state.data, chunk);
        return Ok((o, state));
    }
    if cfg.kind == MixerKind::Gdn {
        let o = gated_delta::chunk_forward(cfg, shape, t, q, k, v, &mut state.data, chunk);
        return Ok((o, state));
    }
    let (d, group) = (shape.d, shape.group());
    let per_head = state.per_head();
    let outs: Vec<Vec<f32>> = state
        .data
        .par_chunks_mut(per_head)
        .enumerate()
        .map(|(kvh, s)| {
            let f = head_features(cfg, shape, t, q, k, v, kvh);
            let x = GatedInputs { qf: &f.qf, kf: &f.kf, g: &f.g, v: &f.v };
            gla::chunk_forward(&x, GatedDims { group, t, k: d, v: d }, chunk, s)
        })
        .collect();
    let o = join_groups(&outs, t, shape);
    Ok((o, state))
}

/// One decoding step: `q_t` `[hq, D]`, `k_t`, `v_t` `[hkv, D]`; writes `o_t` `[hq, D]` and
/// advances `state`.
pub fn recurrent_step(
    cfg: &MixerConfig,
    state: &mut MixerState,
    q_t: &[f32],
    k_t: &[f32],
    v_t: &[f32],
    o_t: &mut [f32],
) -> Result<()> {
    let shape = state.shape;
    cfg.validate(shape.d)?;
    state.check(cfg, shape)?;
    if shape.tokens(q_t.len(), k_t.len(), v_t.len())? != 1 || o_t.len() != q_t.len() {
        return Err(Error::shape(format!(
            "a recurrent step takes one token: q_t and o_t need {} values, k_t and v_t {}",
            shape.hq * shape.d,
            shape.hkv * shape.d
        )));
    }
    if cfg.kind == MixerKind::Gsa {
        gsa::recurrent_step(cfg, shape, &mut state.data, q_t, k_t, v_t, o_t);
        return Ok(());
    }
    if cfg.kind == MixerKind::Gdn {
        gated_delta::recurrent_step(cfg, shape, &mut state.data, q_t, k_t, v_t, o_t);
        return Ok(());
    }
    let (d, group) = (shape.d, shape.group());
    let per_head = state.per_head();
    let (mut kf, mut g) = (vec![0.0; d], vec![0.0; d]);
    let mut qf = vec![0.0; group * d];
    for (kvh, s) in state.data.chunks_exact_mut(per_head).enumerate() {
        let qh = &q_t[kvh * group * d..(kvh + 1) * group * d];
        qh.chunks_exact(d).zip(qf.chunks_exact_mut(d)).for_each(|(x, y)| softmax(x, y));
        key_features(cfg, &k_t[kvh * d..(kvh + 1) * d], &mut kf, &mut g);
        let oh = &mut o_t[kvh * group * d..(kvh + 1) * group * d];
        gla::recurrent_step(s, &qf, &kf, &g, &v_t[kvh * d..(kvh + 1) * d], oh, d, d);
    }
    Ok(())
}

/// Gradients of `sum(d_o * chunk_forward(q, k, v))` w.r.t. q, k, v, from a zero initial
/// state. The gate comes from k, so `dk` includes the gate path and the feature maps (for gdn
/// the L2 norms and both gates).
pub fn chunk_backward(
    cfg: &MixerConfig,
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    chunk: usize,
) -> Result<QkvGrads> {
    cfg.validate(shape.d)?;
    check_chunk(chunk)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    if d_o.len() != q.len() {
        return Err(Error::shape(format!("d_o has {} values; it must match the output's {}", d_o.len(), q.len())));
    }
    if cfg.kind == MixerKind::Gsa {
        return Ok(gsa::chunk_backward(cfg, shape, t, q, k, v, d_o, chunk));
    }
    if cfg.kind == MixerKind::Gdn {
        return Ok(gated_delta::chunk_backward(cfg, shape, t, q, k, v, d_o, chunk));
    }
    let (d, group) = (shape.d, shape.group());
    let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let f = head_features(cfg, shape, t, q, k, v, kvh);
            let x = GatedInputs { qf: &f.qf, kf: &f.kf, g: &f.g, v: &f.v };
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            let gr = gla::chunk_backward(&x, &doh, GatedDims { group, t, k: d, v: d }, chunk);
            let mut dq = vec![0.0; group * t * d];
            for ((y, dy), dx) in f.qf.chunks_exact(d).zip(gr.dqf.chunks_exact(d)).zip(dq.chunks_exact_mut(d)) {
                softmax_backward_acc(y, dy, dx);
            }
            let kraw = gather_heads(k, t, shape.hkv, d, kvh, 1);
            let mut dk = vec![0.0; t * d];
            for r in 0..t {
                let row = r * d..(r + 1) * d;
                key_features_backward_acc(
                    cfg,
                    &kraw[row.clone()],
                    &f.kf[row.clone()],
                    &gr.dkf[row.clone()],
                    &gr.dg[row.clone()],
                    &mut dk[row],
                );
            }
            (dq, dk, gr.dv)
        })
        .collect();
    let mut grads = QkvGrads { dq: vec![0.0; q.len()], dk: vec![0.0; k.len()], dv: vec![0.0; v.len()] };
    for (kvh, (dq, dk, dv)) in per_head.iter().enumerate() {
        scatter_heads(dq, t, shape.hq, d, kvh * group, &mut grads.dq);
        scatter_heads(dk, t, shape.hkv, d, kvh, &mut grads.dk);
        scatter_heads(dv, t, shape.hkv, d, kvh, &mut grads.dv);
    }
    Ok(grads)
}
