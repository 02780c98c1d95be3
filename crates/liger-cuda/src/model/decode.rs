//! Inference on the GPU: a prefill over whole prompts with the chunked mixer and windowed
//! attention kernels, then decoding steps with the recurrent mixer step and the window's ring
//! buffer (and a growing key/value cache in the hybrid's softmax layers), for a batch of
//! sequences that advance together. States and caches are f32. CPU twin: `CausalLm for LigerModel` with `LigerState`.

use super::glue::{rope_forward_to, scaled, widen, RopeLayout};
use super::layer::Rows;
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::gemm::{gemm, GemmDims, GemmInput};
use crate::ops::attention::{attention_decode, attention_forward, cache_append, cache_prefill, AttentionDims};
use crate::ops::embedding::embedding_gather;
use crate::ops::mixer::{mixer_chunk_forward, mixer_recurrent_step, mixer_state_len, MixerDims};
use crate::ops::rms_norm::rms_norm_forward;
use liger_core::generate::CausalLm;
use liger_core::tokenizer::Tokenizer;
use liger_core::{Error, ErrorCode, Result};

/// What one layer keeps between calls for every sequence of the batch.
enum LayerCache {
    /// The recurrent state `[B, hkv, state]` (f32) and, with SWA, the window's roped keys and
    /// values `[B, hkv, window, d]` as a ring buffer.
    Liger { state: GpuBuffer<f32>, window: Option<(GpuBuffer<f32>, GpuBuffer<f32>)> },
    /// Roped keys and values `[B, hkv, capacity, d]` of a softmax layer.
    Softmax { keys: GpuBuffer<f32>, values: GpuBuffer<f32> },
}

/// The decoding state of a batch of sequences on the GPU. Its memory is allocated at the
/// first forward call; it is constant in the sequence length for a model without softmax layers.
pub struct GpuLigerState {
    batch: usize,
    position: usize,
    layers: Vec<LayerCache>,
}

impl GpuLigerState {
    /// Tokens consumed so far by each sequence.
    pub fn len(&self) -> usize {
        self.position
    }
    pub fn is_empty(&self) -> bool {
        self.position == 0
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
}

impl<T: GemmInput> GpuLigerModel<T> {
    /// An empty state for `batch` sequences.
    pub fn new_batch_state(&self, batch: usize) -> GpuLigerState {
        GpuLigerState { batch, position: 0, layers: Vec::new() }
    }

    fn allocate_caches(&self, state: &mut GpuLigerState) -> Result<()> {
        let c = self.config();
        let (b, shape) = (state.batch, self.shape);
        let att = &self.host.options.attention;
        for layer in 0..c.num_layers {
            let cache = if self.host.options.is_softmax_layer(layer) {
                let len = b * shape.hkv * c.max_position_embeddings * shape.d;
                LayerCache::Softmax { keys: GpuBuffer::zeros(&self.ctx, len)?, values: GpuBuffer::zeros(&self.ctx, len)? }
            } else {
                let window = if att.use_swa {
                    let len = b * shape.hkv * att.window_keys * shape.d;
                    Some((GpuBuffer::zeros(&self.ctx, len)?, GpuBuffer::zeros(&self.ctx, len)?))
                } else {
                    None
                };
                LayerCache::Liger { state: GpuBuffer::zeros(&self.ctx, b * mixer_state_len(&att.mixer, shape))?, window }
            };
            state.layers.push(cache);
        }
        Ok(())
    }

    /// Appends `tokens[b]` to sequence b of `state` (every sequence the same number of
    /// tokens) and returns the logits after the last one of each (`B x vocab`).
    pub fn forward_last_batch(&self, state: &mut GpuLigerState, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let t = tokens.first().map_or(0, |s| s.len());
        if tokens.len() != state.batch || t == 0 || tokens.iter().any(|s| s.len() != t) {
            return Err(Error::invalid_argument(format!(
                "the state holds {} sequences: give each the same, non-zero number of new tokens (got {} sequences)",
                state.batch,
                tokens.len()
            )));
        }
        if let Some(limit) = self.max_tokens() {
            if state.position + t > limit {
                return Err(Error::new(
                    ErrorCode::ContextOverflow,
                    format!(
                        "{} tokens exceed the context of {limit} of the hybrid model's softmax layers (already {} in the state); shorten the input",
                        state.position + t,
                        state.position
                    ),
                ));
            }
        }
        self.sync_lora()?;
        if state.layers.is_empty() {
            self.allocate_caches(state)?;
        }
        if state.position == 0 {
            return self.prefill(state, tokens);
        }
        let mut logits = Vec::new();
        for i in 0..t {
            let column: Vec<&[u32]> = tokens.iter().map(|s| &s[i..i + 1]).collect();
            logits = self.step(state, &column)?;
        }
        Ok(logits)
    }

    /// The embeddings of `tokens` (`[B*T, hidden]`).
    fn embed_rows(&self, tokens: &[&[u32]]) -> Result<GpuBuffer<f32>> {
        let hs = self.config().hidden_size;
        let ids: Vec<u32> = tokens.iter().flat_map(|s| s.iter().copied()).collect();
        let mut x = GpuBuffer::zeros(&self.ctx, ids.len() * hs)?;
        embedding_gather(&self.ctx, &self.weights.embed, hs, &ids, &mut x)?;
        Ok(x)
    }

    /// Whole prompts into a fresh state: the chunked forms, then the caches filled.
    fn prefill(&self, state: &mut GpuLigerState, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let rows = Rows { batch: state.batch, tokens: tokens[0].len() };
        let (n, shape) = (rows.n(), self.shape);
        let att = &self.host.options.attention;
        let start = GpuBuffer::<u32>::zeros(ctx, rows.batch)?;
        let mut x = self.embed_rows(tokens)?;
        for (layer, cache) in state.layers.iter_mut().enumerate() {
            let (h, h_t) = self.norm(&x, &self.weights.layers[layer].attn_norm)?;
            let qkv = self.project_qkv(layer, &h, &h_t, n)?;
            drop((h, h_t));
            let (q, k, v) = (&qkv.q, &qkv.k, &qkv.v);
            let mut o = GpuBuffer::<f32>::zeros(ctx, n * c.q_size())?;
            let rope = |heads: usize| RopeLayout { inv_freq: &self.weights.inv_freq, start: &start, tokens: rows.tokens, heads, head_dim: shape.d };
            let (mut q_roped, mut k_roped) = (GpuBuffer::<f32>::zeros(ctx, q.len())?, GpuBuffer::<f32>::zeros(ctx, k.len())?);
            rope_forward_to(ctx, &rope(shape.hq), &qkv.q, &mut q_roped)?;
            rope_forward_to(ctx, &rope(shape.hkv), &qkv.k, &mut k_roped)?;
            let mut o_att = GpuBuffer::<f32>::zeros(ctx, q.len())?;
            let mut lse = GpuBuffer::<f32>::zeros(ctx, rows.batch * shape.hq * rows.tokens)?;
            let dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape };
            match cache {
                LayerCache::Liger { state: mixer_state, window } => {
                    let mut o_grm = GpuBuffer::<f32>::zeros(ctx, q.len())?;
                    let mdims = MixerDims { batch: rows.batch, tokens: rows.tokens, shape };
                    mixer_chunk_forward(ctx, &att.mixer, mdims, q, k, v, &mut o_grm, None, Some(mixer_state))?;
                    widen(ctx, &o_grm, &mut o, att.alpha, false)?;
                    if let Some((wk, wv)) = window {
                        attention_forward(ctx, dims, Some(att.window_keys), &q_roped, &k_roped, v, &mut o_att, &mut lse)?;
                        widen(ctx, &o_att, &mut o, att.beta, true)?;
                        cache_prefill(ctx, rows.batch, rows.tokens, shape, att.window_keys, &k_roped, v, &start, wk, wv)?;
                    }
                }
                LayerCache::Softmax { keys, values } => {
                    attention_forward(ctx, dims, None, &q_roped, &k_roped, v, &mut o_att, &mut lse)?;
                    widen(ctx, &o_att, &mut o, 1.0, false)?;
                    cache_prefill(ctx, rows.batch, rows.tokens, shape, c.max_position_embeddings, &k_roped, v, &start, keys, values)?;
                }
            }
            self.o_proj(layer, &o, n, &mut x)?;
            self.mlp(layer, &mut x, n)?;
        }
        state.position += rows.tokens;
        self.last_logits(&x, rows)
    }

    /// One token for every sequence of the batch, through the recurrent forms.
    fn step(&self, state: &mut GpuLigerState, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let (b, shape) = (state.batch, self.shape);
        let att = &self.host.options.attention;
        let pos = state.position;
        let positions = GpuBuffer::<u32>::from_host(ctx, &vec![pos as u32; b])?;
        let window_len = GpuBuffer::<u32>::from_host(ctx, &vec![(pos + 1).min(att.window_keys) as u32; b])?;
        let full_len = GpuBuffer::<u32>::from_host(ctx, &vec![(pos + 1) as u32; b])?;
        let mut x = self.embed_rows(tokens)?;
        for (layer, cache) in state.layers.iter_mut().enumerate() {
            let (h, h_t) = self.norm(&x, &self.weights.layers[layer].attn_norm)?;
            let qkv = self.project_qkv(layer, &h, &h_t, b)?;
            drop((h, h_t));
            let (q, k, v) = (&qkv.q, &qkv.k, &qkv.v);
            let mut o = GpuBuffer::<f32>::zeros(ctx, b * c.q_size())?;
            let rope = |heads: usize| RopeLayout { inv_freq: &self.weights.inv_freq, start: &positions, tokens: 1, heads, head_dim: shape.d };
            let (mut q_roped, mut k_roped) = (GpuBuffer::<f32>::zeros(ctx, q.len())?, GpuBuffer::<f32>::zeros(ctx, k.len())?);
            rope_forward_to(ctx, &rope(shape.hq), &qkv.q, &mut q_roped)?;
            rope_forward_to(ctx, &rope(shape.hkv), &qkv.k, &mut k_roped)?;
            let mut o_att = GpuBuffer::<f32>::zeros(ctx, q.len())?;
            match cache {
                LayerCache::Liger { state: mixer_state, window } => {
                    let mut o_grm = GpuBuffer::<f32>::zeros(ctx, q.len())?;
                    mixer_recurrent_step(ctx, &att.mixer, b, shape, mixer_state, q, k, v, &mut o_grm)?;
                    widen(ctx, &o_grm, &mut o, att.alpha, false)?;
                    if let Some((wk, wv)) = window {
                        cache_append(ctx, b, shape, att.window_keys, &k_roped, v, &positions, wk, wv)?;
                        attention_decode(ctx, b, shape, att.window_keys, &q_roped, wk, wv, &window_len, &mut o_att)?;
                        widen(ctx, &o_att, &mut o, att.beta, true)?;
                    }
                }
                LayerCache::Softmax { keys, values } => {
                    let cap = c.max_position_embeddings;
                    cache_append(ctx, b, shape, cap, &k_roped, v, &positions, keys, values)?;
                    attention_decode(ctx, b, shape, cap, &q_roped, keys, values, &full_len, &mut o_att)?;
                    widen(ctx, &o_att, &mut o, 1.0, false)?;
                }
            }
            self.o_proj(layer, &o, b, &mut x)?;
            self.mlp(layer, &mut x, b)?;
        }
        state.position += 1;
        self.last_logits(&x, Rows { batch: b, tokens: 1 })
    }

    /// The logits after the last token of each sequence (`B x vocab`), through the final norm
    /// and the LM head.
    fn last_logits(&self, x: &GpuBuffer<f32>, rows: Rows) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let (hs, vocab) = (c.hidden_size, c.vocab_size);
        let mut hf = GpuBuffer::<f32>::zeros(ctx, x.len())?;
        let mut rstd = GpuBuffer::<f32>::zeros(ctx, rows.n())?;
        rms_norm_forward(ctx, x, &self.weights.final_norm, c.rms_norm_eps, &mut hf, &mut rstd)?;
        let hf_t = scaled::<T>(ctx, &hf, 1.0)?;
        let mut logits = GpuBuffer::<f32>::zeros(ctx, rows.batch * vocab)?;
        let dims = GemmDims { m: 1, n: vocab, k: hs, a_transposed: false, b_transposed: true };
        for b in 0..rows.batch {
            let last = b * rows.tokens + rows.tokens - 1;
            gemm(ctx, dims, &hf_t.view(last * hs..(last + 1) * hs), self.weights.head().slice(), &mut logits.view_mut(b * vocab..(b + 1) * vocab), false)?;
        }
        logits.to_host()
    }
}

impl<T: GemmInput> CausalLm for GpuLigerModel<T> {
    type State = GpuLigerState;
    fn new_state(&self) -> GpuLigerState {
        self.new_batch_state(1)
    }
    fn forward_last(&self, state: &mut GpuLigerState, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_last_batch(state, &[tokens])
    }
    fn tokenizer(&self) -> &Tokenizer {
        self.host.base.tokenizer()
    }
    fn eos_ids(&self) -> Vec<u32> {
        self.host.base.eos_ids()
    }
    /// Unbounded with Liger layers only; the base context when softmax layers remain.
    fn max_tokens(&self) -> Option<usize> {
        self.host.max_tokens()
    }
}
