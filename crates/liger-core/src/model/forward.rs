//! The base (softmax-attention) decoder on the CPU: embeddings, RMSNorm, RoPE, grouped-query
//! attention with a KV cache, SwiGLU, LM head. f32 arithmetic over compactly stored weights.

use super::ops::{add_bias, softmax_inplace};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::linalg::matmul_wt;
use crate::nn::rms_norm::{rms_norm, rms_norm_inplace};
use crate::nn::rope::apply_rope;
use crate::nn::swiglu::swiglu_inplace;
use crate::weights::{LayerWeights, ModelWeights};
use rayon::prelude::*;

/// Keys and values of every layer for the tokens seen so far (`len x kv_size` each, post-RoPE).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { keys: vec![Vec::new(); num_layers], values: vec![Vec::new(); num_layers], len: 0 }
    }
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes held by the cache now.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
    }
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only after the last token: `vocab` values.
    Last,
    /// After every token: `T x vocab` values.
    All,
}

/// Sees each query's attention weights as the base model computes them:
/// `(layer, position, query head, weights over the keys 0..=position)`. Called from several
/// threads at once.
pub type AttentionObserver<'a> = dyn Fn(usize, usize, usize, &[f32]) + Sync + 'a;

/// One layer's view of [`AttentionObserver`]: `(query row of the call, query head, weights)`.
type RowObserver<'a> = dyn Fn(usize, usize, &[f32]) + Sync + 'a;

/// Runs `tokens` through the model after the `cache.len()` tokens already in `cache`,
/// appends their keys and values, and returns the requested logits.
pub fn forward(
    cfg: &ModelConfig,
    w: &ModelWeights,
    inv_freq: &[f32],
    cache: &mut KvCache,
    tokens: &[u32],
    want: Logits,
) -> Result<Vec<f32>> {
    forward_observed(cfg, w, inv_freq, cache, tokens, want, None)
}

/// [`forward`], showing every attention row to `observe` (what the layer choice by retrieval
/// measures).
pub fn forward_observed(
    cfg: &ModelConfig,
    w: &ModelWeights,
    inv_freq: &[f32],
    cache: &mut KvCache,
    tokens: &[u32],
    want: Logits,
    observe: Option<&AttentionObserver>,
) -> Result<Vec<f32>> {
    let t = tokens.len();
    if t == 0 {
        return Err(Error::invalid_argument("forward needs at least one token"));
    }
    let pos0 = cache.len;
    if pos0 + t > cfg.max_position_embeddings {
        return Err(Error::new(
            ErrorCode::ContextOverflow,
            format!(
                "{} tokens exceed the model's context of {} (already {pos0} in the cache); shorten the prompt or lower max tokens",
                pos0 + t,
                cfg.max_position_embeddings
            ),
        ));
    }
    let mut x = embed(cfg, w, tokens)?;
    for (layer, lw) in w.layers.iter().enumerate() {
        attention_block(cfg, lw, inv_freq, cache, layer, &mut x, t, pos0, observe);
        mlp_block(cfg, lw, &mut x, t);
    }
    cache.len += t;
    Ok(lm_head(cfg, w, &x, t, want))
}

/// Rows of the embedding table for `tokens` (`T x hidden`).
pub fn embed(cfg: &ModelConfig, w: &ModelWeights, tokens: &[u32]) -> Result<Vec<f32>> {
    let h = cfg.hidden_size;
    let mut x = vec![0.0f32; tokens.len() * h];
    for (row, &id) in x.chunks_exact_mut(h).zip(tokens) {
        if id as usize >= cfg.vocab_size {
            return Err(Error::invalid_argument(format!(
                "token id {id} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        w.embed.dequantize_row(id as usize, row);
    }
    Ok(x)
}

/// The q, k, v projections of normalised input `h` (`T x hidden`): biases, per-head q/k norms.
/// RoPE is not applied here.
pub fn qkv_projections(cfg: &ModelConfig, lw: &LayerWeights, h: &[f32], t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qs, kvs) = (cfg.q_size(), cfg.kv_size());
    let mut q = vec![0.0f32; t * qs];
    let mut k = vec![0.0f32; t * kvs];
    let mut v = vec![0.0f32; t * kvs];
    matmul_wt(&lw.wq, h, t, &mut q);
    matmul_wt(&lw.wk, h, t, &mut k);
    matmul_wt(&lw.wv, h, t, &mut v);
    if let (Some(bq), Some(bk), Some(bv)) = (&lw.bq, &lw.bk, &lw.bv) {
        add_bias(&mut q, bq);
        add_bias(&mut k, bk);
        add_bias(&mut v, bv);
    }
    if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
        // Per-head norms: the weight has head_dim values, so each head is one row.
        rms_norm_inplace(&mut q, qn, cfg.rms_norm_eps);
        rms_norm_inplace(&mut k, kn, cfg.rms_norm_eps);
    }
    (q, k, v)
}

fn attention_block(
    cfg: &ModelConfig,
    lw: &LayerWeights,
    inv_freq: &[f32],
    cache: &mut KvCache,
    layer: usize,
    x: &mut [f32],
    t: usize,
    pos0: usize,
    observe: Option<&AttentionObserver>,
) {
    let (hs, hd) = (cfg.hidden_size, cfg.head_dim);
    let mut h = vec![0.0f32; t * hs];
    rms_norm(x, &lw.attn_norm, cfg.rms_norm_eps, &mut h);
    let (mut q, mut k, v) = qkv_projections(cfg, lw, &h, t);
    apply_rope(&mut q, cfg.num_heads, hd, inv_freq, pos0, false);
    apply_rope(&mut k, cfg.num_kv_heads, hd, inv_freq, pos0, false);
    cache.keys[layer].extend_from_slice(&k);
    cache.values[layer].extend_from_slice(&v);
    let mut o = vec![0.0f32; t * cfg.q_size()];
    let seen = observe.map(|f| move |ti: usize, head: usize, p: &[f32]| f(layer, pos0 + ti, head, p));
    let seen = seen.as_ref().map(|f| f as &RowObserver);
    causal_attention(
        &q,
        &cache.keys[layer],
        &cache.values[layer],
        pos0,
        cfg.num_heads,
        cfg.num_kv_heads,
        hd,
        &mut o,
        seen,
    );
    let mut y = vec![0.0f32; t * hs];
    matmul_wt(&lw.wo, &o, t, &mut y);
    x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
}

/// Softmax attention of the new queries (`t` = rows of `q`) against all `pos0 + t` keys, causally,
/// showing each query's weights to `observe(query row, head, weights)` when given.
/// `q`: `t x (hq*d)`; `keys`, `values`: `(pos0+t) x (hkv*d)`; `out`: `t x (hq*d)`.
#[allow(clippy::too_many_arguments)]
fn causal_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    out: &mut [f32],
    observe: Option<&RowObserver>,
) {
    let group = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let kv_row = hkv * d;
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let (ti, head) = (i / hq, i % hq);
        let kvh = head / group;
        let qv = &q[i * d..(i + 1) * d];
        let n = pos0 + ti + 1;
        scores.clear();
        scores.extend((0..n).map(|j| {
            let kj = &keys[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
            qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
        }));
        softmax_inplace(scores);
        if let Some(f) = observe {
            f(ti, head, scores);
        }
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let vj = &values[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
            o.iter_mut().zip(vj).for_each(|(a, b)| *a += p * b);
        }
    });
}

/// The SwiGLU feed-forward block with its pre-norm and residual.
pub fn mlp_block(cfg: &ModelConfig, lw: &LayerWeights, x: &mut [f32], t: usize) {
    let (hs, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut h = vec![0.0f32; t * hs];
    rms_norm(x, &lw.ffn_norm, cfg.rms_norm_eps, &mut h);
    let mut gate = vec![0.0f32; t * f];
    let mut up = vec![0.0f32; t * f];
    matmul_wt(&lw.w_gate, &h, t, &mut gate);
    matmul_wt(&lw.w_up, &h, t, &mut up);
    swiglu_inplace(&mut gate, &up);
    let mut y = vec![0.0f32; t * hs];
    matmul_wt(&lw.w_down, &gate, t, &mut y);
    x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
}

/// Final norm and LM head over the last row or every row of `x`.
pub fn lm_head(cfg: &ModelConfig, w: &ModelWeights, x: &[f32], t: usize, want: Logits) -> Vec<f32> {
    let hs = cfg.hidden_size;
    let rows = match want {
        Logits::Last => &x[(t - 1) * hs..],
        Logits::All => x,
    };
    let n = rows.len() / hs;
    let mut h = vec![0.0f32; rows.len()];
    rms_norm(rows, &w.final_norm, cfg.rms_norm_eps, &mut h);
    let mut logits = vec![0.0f32; n * cfg.vocab_size];
    matmul_wt(w.lm_head(), &h, n, &mut logits);
    logits
}
