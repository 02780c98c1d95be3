//! Inference on the GPU: a prefill over whole prompts with the chunked mixer and windowed
//! attention kernels, then decoding steps with the recurrent mixer step and the window's ring
//! buffer (and a growing key/value cache in the hybrid's softmax layers), for a batch of
//! sequences that advance together. Mixer states are f32; the window's keys and values (and
//! the softmax layers' caches) are kept in the storage type `T`. A step runs from work buffers
//! allocated once per state, replayed from a CUDA graph (`decode_step.rs`).
//! CPU twin: `CausalLm for LigerModel` with `LigerState`.
//!
//! Decode state per sequence (bytes), per Liger layer with SWA:
//! `4 * hkv * d * d` (the f32 mixer state of each key-value head) + `2 * window * hkv * d * size_of::<T>()`
//! (the window's keys and values); the reference keeps `4 * hq * d * d + 2 * window * hkv * d * 4`.
//! A surprise cache of C slots adds the recurrence over values of one (`4 * hkv * d * d`, already
//! there with `grm_norm`), `2 * C * hkv * d * size_of::<T>()` (the cached keys and values) and
//! `4 * (window + C) * hkv` (the surprise of the window's tokens and of the cached ones).
//! The prefill fills the cache from the full forward's choice (`surprise_select`); each step
//! scores its token from the states before it and offers the token leaving the window to the
//! cache (CPU twin: `SurpriseMemory`), so prefill + steps equals one forward.

use super::decode_step::{DecodePlan, LayerCache};
use super::glue::{grm_normalize, rope_forward_to, scaled, widen, RopeLayout};
use super::layer::{Qkv, Rows};
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::gemm::{gemm, GemmDims, GemmInput};
use crate::ops::attention::{
    attention_forward, cache_prefill, surprise_attention_forward, surprise_select, AttentionDims,
};
use crate::ops::decode::{surprise_cache_fill, SurpriseLayout};
use crate::ops::embedding::embedding_gather;
use crate::ops::head_mix::head_mix_to;
use crate::ops::mixer::{mixer_chunk_forward_in_segments, mixer_state_len, MixerDims};
use crate::ops::rms_norm::rms_norm_forward;
use crate::ops::sampling::sample_tokens;
use liger_core::convert::LigerOptions;
use liger_core::generate::CausalLm;
use liger_core::liger::{HeadShape, LigerAttentionConfig};
use liger_core::sampling::{Sampler, SamplingOptions};
use liger_core::tokenizer::Tokenizer;
use liger_core::{Error, Result};

/// The decoding state of a batch of sequences on the GPU, for a model storing its weights as
/// `T`. Its memory is allocated at the first forward call; it is constant in the sequence
/// length for a model without softmax layers.
pub struct GpuLigerState<T = f32> {
    batch: usize,
    position: usize,
    layers: Vec<LayerCache<T>>,
    /// The decoding steps' work buffers and graph, made at the first step.
    plan: Option<DecodePlan<T>>,
}

impl<T> GpuLigerState<T> {
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

    /// Starts the sequences again from nothing, keeping the memory (the next call is a prefill).
    pub fn reset(&mut self) {
        self.position = 0;
        if let Some(plan) = &mut self.plan {
            plan.drop_graph();
        }
    }

    /// Whether the next decoding step replays a captured CUDA graph.
    pub fn uses_graph(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.has_graph())
    }

    /// How many times the decoding step was captured into a CUDA graph (again after the
    /// adapters changed).
    pub fn graph_captures(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.captures)
    }

    /// Bytes of GPU memory the state keeps per sequence (the work buffers of a step aside).
    pub fn bytes_per_sequence(&self) -> usize
    where
        T: crate::buffer::GpuElement,
    {
        let t = std::mem::size_of::<T>();
        let total: usize = self
            .layers
            .iter()
            .map(|l| match l {
                LayerCache::Liger { state, norm_state, window, surprise } => {
                    4 * (state.len()
                        + norm_state.as_ref().map_or(0, |s| s.len())
                        + surprise.as_ref().map_or(0, |s| s.len()))
                        + window.as_ref().map_or(0, |(k, v)| t * (k.len() + v.len()))
                }
                LayerCache::Softmax { keys, values } => t * (keys.len() + values.len()),
            })
            .sum();
        total / self.batch.max(1)
    }
}

impl<T: GemmInput> GpuLigerModel<T> {
    /// An empty state for `batch` sequences.
    pub fn new_batch_state(&self, batch: usize) -> GpuLigerState<T> {
        GpuLigerState { batch, position: 0, layers: Vec::new(), plan: None }
    }

    /// Bytes of GPU memory a decoding state keeps per sequence, at its largest (softmax layers
    /// at the context limit): what [`GpuLigerState::bytes_per_sequence`] reports once allocated.
    pub fn state_bytes_per_sequence(&self) -> usize {
        self.state_bytes_per_sequence_with(&self.host.options)
    }

    /// [`GpuLigerModel::state_bytes_per_sequence`] of this model run with other options (the
    /// linearize report's size of a surprise cache added after training).
    pub fn state_bytes_per_sequence_with(&self, options: &LigerOptions) -> usize {
        let (c, shape) = (self.config(), self.shape);
        let att = &options.attention;
        let t = std::mem::size_of::<T>();
        (0..c.num_layers)
            .map(|layer| {
                if options.is_softmax_layer(layer) {
                    2 * t * shape.hkv * c.max_position_embeddings * shape.d
                } else {
                    let window = if att.use_swa { 2 * t * shape.hkv * window_row_entries(att) * shape.d } else { 0 };
                    let scores = surprise_layout(att, shape, 1).map_or(0, |at| 4 * at.scores_len());
                    4 * mixer_state_len(&att.mixer, shape) * if att.keeps_ones_state() { 2 } else { 1 }
                        + window
                        + scores
                }
            })
            .sum()
    }

    fn allocate_caches(&self, state: &mut GpuLigerState<T>) -> Result<()> {
        let c = self.config();
        let (b, shape) = (state.batch, self.shape);
        let att = &self.host.options.attention;
        let surprise = self.surprise_layout(b);
        for layer in 0..c.num_layers {
            let cache = if self.host.options.is_softmax_layer(layer) {
                let len = b * shape.hkv * c.max_position_embeddings * shape.d;
                LayerCache::Softmax {
                    keys: GpuBuffer::zeros(&self.ctx, len)?,
                    values: GpuBuffer::zeros(&self.ctx, len)?,
                }
            } else {
                let window = if att.use_swa {
                    let len = b * shape.hkv * self.window_row_entries() * shape.d;
                    Some((GpuBuffer::zeros(&self.ctx, len)?, GpuBuffer::zeros(&self.ctx, len)?))
                } else {
                    None
                };
                let scores = surprise.map(|at| GpuBuffer::zeros(&self.ctx, at.scores_len())).transpose()?;
                let state_len = b * mixer_state_len(&att.mixer, shape);
                let norm_state =
                    if att.keeps_ones_state() { Some(GpuBuffer::zeros(&self.ctx, state_len)?) } else { None };
                LayerCache::Liger {
                    state: GpuBuffer::zeros(&self.ctx, state_len)?,
                    norm_state,
                    window,
                    surprise: scores,
                }
            };
            state.layers.push(cache);
        }
        Ok(())
    }

    /// Appends `tokens[b]` to sequence b of `state` (every sequence the same number of
    /// tokens) and returns the logits after the last one of each (`B x vocab`).
    pub fn forward_last_batch(&self, state: &mut GpuLigerState<T>, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        self.forward_batch(state, tokens, |logits| logits.to_host())
    }

    /// As [`GpuLigerModel::forward_last_batch`], then the next token of each sequence picked on
    /// the GPU (`kernels/sampling.cu`): the largest logit when `options.temperature` is 0, else
    /// the token `liger_core::sampling::sample_with_draw` picks with the uniform number
    /// `draws[b]` (take it from `Sampler::draw` to follow a seeded CPU sampler). Only the `B`
    /// token ids come back to the host, not the vocabulary's logits.
    pub fn forward_sample_batch(
        &self,
        state: &mut GpuLigerState<T>,
        tokens: &[&[u32]],
        options: &SamplingOptions,
        draws: &[f32],
    ) -> Result<Vec<u32>> {
        if draws.len() != tokens.len() {
            return Err(Error::invalid_argument(format!(
                "one sampling draw per sequence: got {} draws for {} sequences",
                draws.len(),
                tokens.len()
            )));
        }
        options.validate()?;
        let vocab = self.config().vocab_size;
        self.forward_batch(state, tokens, |logits| {
            let draws = GpuBuffer::from_host(&self.ctx, draws)?;
            let mut picked = GpuBuffer::<u32>::zeros(&self.ctx, draws.len())?;
            sample_tokens(&self.ctx, logits, vocab, options, &draws, &mut picked)?;
            picked.to_host()
        })
    }

    /// Runs `tokens` (the same number for each sequence of the state) and hands the logits
    /// after each sequence's last token (`B x vocab`, on the GPU) to `read`.
    fn forward_batch<R>(
        &self,
        state: &mut GpuLigerState<T>,
        tokens: &[&[u32]],
        read: impl FnOnce(&GpuBuffer<f32>) -> Result<R>,
    ) -> Result<R> {
        let t = tokens.first().map_or(0, |s| s.len());
        if tokens.len() != state.batch || t == 0 || tokens.iter().any(|s| s.len() != t) {
            return Err(Error::invalid_argument(format!(
                "the state holds {} sequences: give each the same, non-zero number of new tokens (got {} sequences)",
                state.batch,
                tokens.len()
            )));
        }
        self.host.check_context(state.position, t)?;
        self.sync_lora()?;
        if state.layers.is_empty() {
            self.allocate_caches(state)?;
        }
        if state.position == 0 {
            return read(&self.prefill(state, tokens)?);
        }
        if state.plan.is_none() {
            state.plan = Some(self.new_decode_plan(state.batch)?);
        }
        let plan = state.plan.as_mut().ok_or_else(|| liger_core::Error::internal("the decoding plan is missing"))?;
        for i in 0..t {
            let column: Vec<u32> = tokens.iter().map(|s| s[i]).collect();
            self.decode_step(&mut state.layers, plan, &column, state.position)?;
            state.position += 1;
        }
        read(plan.logits())
    }

    /// The embeddings of `tokens` (`[B*T, hidden]`).
    fn embed_rows(&self, tokens: &[&[u32]]) -> Result<GpuBuffer<f32>> {
        let hs = self.config().hidden_size;
        let ids: Vec<u32> = tokens.iter().flat_map(|s| s.iter().copied()).collect();
        let mut x = GpuBuffer::zeros(&self.ctx, ids.len() * hs)?;
        embedding_gather(&self.ctx, &self.weights.embed, hs, &ids, &mut x)?;
        Ok(x)
    }

    /// Whole prompts into a fresh state: the chunked forms, then the caches filled. Returns
    /// the logits after each prompt's last token (`B x vocab`).
    fn prefill(&self, state: &mut GpuLigerState<T>, tokens: &[&[u32]]) -> Result<GpuBuffer<f32>> {
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
            let rope = |heads: usize| RopeLayout {
                inv_freq: &self.weights.inv_freq,
                start: &start,
                tokens: rows.tokens,
                heads,
                head_dim: shape.d,
            };
            let (mut q_roped, mut k_roped) =
                (GpuBuffer::<f32>::zeros(ctx, q.len())?, GpuBuffer::<f32>::zeros(ctx, k.len())?);
            rope_forward_to(ctx, &rope(shape.hq), &qkv.q, &mut q_roped)?;
            rope_forward_to(ctx, &rope(shape.hkv), &qkv.k, &mut k_roped)?;
            let mut o_att = GpuBuffer::<f32>::zeros(ctx, q.len())?;
            let mut lse = GpuBuffer::<f32>::zeros(ctx, rows.batch * shape.hq * rows.tokens)?;
            let dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape };
            match cache {
                LayerCache::Liger { state: mixer_state, norm_state, window, surprise } => {
                    let mut o_grm = GpuBuffer::<f32>::zeros(ctx, q.len())?;
                    let mdims = MixerDims { batch: rows.batch, tokens: rows.tokens, shape };
                    mixer_chunk_forward_in_segments(
                        ctx,
                        &att.mixer,
                        mdims,
                        q,
                        k,
                        v,
                        &mut o_grm,
                        None,
                        Some(mixer_state),
                        self.mixer_segments(),
                    )?;
                    if let (true, Some(norm_state)) = (att.grm_norm, norm_state.as_mut()) {
                        let (ones, mut den) = (self.ones(v.len())?, GpuBuffer::<f32>::zeros(ctx, q.len())?);
                        mixer_chunk_forward_in_segments(
                            ctx,
                            &att.mixer,
                            mdims,
                            q,
                            k,
                            &ones,
                            &mut den,
                            None,
                            Some(norm_state),
                            self.mixer_segments(),
                        )?;
                        grm_normalize(ctx, &mut o_grm, &den)?;
                    }
                    let head_mix = self.head_mix_guard()?;
                    let learned_mix = head_mix.get(layer).and_then(|m| m.as_ref());
                    let has_window = window.is_some();
                    if learned_mix.is_none() {
                        widen(ctx, &o_grm, &mut o, att.alpha, false)?;
                    }
                    if let Some((wk, wv)) = window {
                        match surprise {
                            Some(scores) => {
                                // Without grm_norm the recurrence over values of one serves the
                                // score alone, and advances in the score's pass.
                                let ones_state = if att.grm_norm { None } else { norm_state.as_mut() };
                                let roped = (&q_roped, &k_roped);
                                let cache = (wk, wv, scores);
                                self.prefill_surprise_window(
                                    &qkv, rows, roped, ones_state, cache, &mut o_att, &mut lse,
                                )?;
                            }
                            None => {
                                let window = Some(att.window());
                                attention_forward(ctx, dims, window, &q_roped, &k_roped, v, &mut o_att, &mut lse)?;
                                let (k_t, v_t) = (scaled::<T>(ctx, &k_roped, 1.0)?, scaled::<T>(ctx, v, 1.0)?);
                                let window = att.window();
                                cache_prefill(ctx, rows.batch, rows.tokens, shape, window, &k_t, &v_t, &start, wk, wv)?;
                            }
                        }
                        if learned_mix.is_none() {
                            widen(ctx, &o_att, &mut o, att.beta, true)?;
                        }
                    }
                    if let Some(m) = learned_mix {
                        head_mix_to::<f32>(ctx, m, shape.d, &o_grm, has_window.then_some(&o_att), &mut o, None)?;
                    }
                }
                LayerCache::Softmax { keys, values } => {
                    attention_forward(ctx, dims, None, &q_roped, &k_roped, v, &mut o_att, &mut lse)?;
                    widen(ctx, &o_att, &mut o, 1.0, false)?;
                    let (k_t, v_t) = (scaled::<T>(ctx, &k_roped, 1.0)?, scaled::<T>(ctx, v, 1.0)?);
                    cache_prefill(
                        ctx,
                        rows.batch,
                        rows.tokens,
                        shape,
                        c.max_position_embeddings.into(),
                        &k_t,
                        &v_t,
                        &start,
                        keys,
                        values,
                    )?;
                }
            }
            self.o_proj(layer, &o, n, &mut x)?;
            self.mlp(layer, &mut x, n)?;
        }
        state.position += rows.tokens;
        self.last_logits(&x, rows)
    }

    /// Slots of the surprise cache in each Liger layer's window (0 without one).
    pub(super) fn surprise_slots(&self) -> usize {
        surprise_slots(&self.host.options.attention)
    }

    /// Entries of each (sequence, key-value head) row of a Liger layer's window caches: the
    /// sinks, the window's ring, then the surprise cache's slots.
    pub(super) fn window_row_entries(&self) -> usize {
        window_row_entries(&self.host.options.attention)
    }

    /// How the Liger layers' window caches of `batch` sequences keep the surprise cache (None
    /// without one).
    pub(super) fn surprise_layout(&self, batch: usize) -> Option<SurpriseLayout> {
        surprise_layout(&self.host.options.attention, self.shape, batch)
    }

    /// The window branch of a prefill with a surprise cache: the attention over the sinks, the
    /// cache and the window of the full forward (into `o_att`, `lse`), then the caches
    /// (`keys`, `values`, `scores`) filled as the steps would have left them. `ones_state`: the
    /// recurrence over values of one, when the score alone keeps it.
    #[allow(clippy::too_many_arguments)]
    fn prefill_surprise_window(
        &self,
        qkv: &Qkv,
        rows: Rows,
        (q_roped, k_roped): (&GpuBuffer<f32>, &GpuBuffer<f32>),
        ones_state: Option<&mut GpuBuffer<f32>>,
        (keys, values, scores): (&mut GpuBuffer<T>, &mut GpuBuffer<T>, &mut GpuBuffer<f32>),
        o_att: &mut GpuBuffer<f32>,
        lse: &mut GpuBuffer<f32>,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let at = self
            .surprise_layout(rows.batch)
            .ok_or_else(|| Error::internal("a surprise cache was allocated for a model without one"))?;
        let token_scores = self.surprise_scores_fresh(qkv, rows, ones_state)?;
        let dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape: self.shape };
        let choice = surprise_select(ctx, dims, at.window, at.slots, at.repeat_tolerance, &token_scores, &qkv.v)?;
        surprise_attention_forward(ctx, dims, at.window, &choice, q_roped, k_roped, &qkv.v, o_att, lse)?;
        let (k_t, v_t) = (scaled::<T>(ctx, k_roped, 1.0)?, scaled::<T>(ctx, &qkv.v, 1.0)?);
        surprise_cache_fill(ctx, &at, rows.tokens, &k_t, &v_t, &token_scores, &choice.kept, keys, values, scores)
    }

    /// The logits after the last token of each sequence (`B x vocab`), through the final norm
    /// and the LM head.
    fn last_logits(&self, x: &GpuBuffer<f32>, rows: Rows) -> Result<GpuBuffer<f32>> {
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
            gemm(
                ctx,
                dims,
                &hf_t.view(last * hs..(last + 1) * hs),
                self.weights.head().slice(),
                &mut logits.view_mut(b * vocab..(b + 1) * vocab),
                false,
            )?;
        }
        Ok(logits)
    }
}

impl<T: GemmInput> CausalLm for GpuLigerModel<T> {
    type State = GpuLigerState<T>;
    fn new_state(&self) -> GpuLigerState<T> {
        self.new_batch_state(1)
    }
    fn forward_last(&self, state: &mut GpuLigerState<T>, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_last_batch(state, &[tokens])
    }
    /// Samples on the GPU: one token id comes back per step instead of the vocabulary's logits.
    fn forward_sample(&self, state: &mut GpuLigerState<T>, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        let draw = if sampler.options().temperature == 0.0 { 0.0 } else { sampler.draw() };
        let picked = self.forward_sample_batch(state, &[tokens], sampler.options(), &[draw])?;
        picked.first().copied().ok_or_else(|| Error::internal("the GPU sampler returned no token"))
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

/// Slots of the surprise cache in each Liger layer's window under `att` (0 without one).
fn surprise_slots(att: &LigerAttentionConfig) -> usize {
    if att.use_swa {
        att.surprise_keys
    } else {
        0
    }
}

/// Entries of each (sequence, key-value head) row of a Liger layer's window caches under `att`:
/// the sinks, the window's ring, then the surprise cache's slots.
fn window_row_entries(att: &LigerAttentionConfig) -> usize {
    att.window().capacity().saturating_add(surprise_slots(att))
}

/// How the Liger layers' window caches of `batch` sequences keep the surprise cache under `att`
/// (None without one).
fn surprise_layout(att: &LigerAttentionConfig, shape: HeadShape, batch: usize) -> Option<SurpriseLayout> {
    let slots = surprise_slots(att);
    let (window, repeat_tolerance) = (att.window(), att.surprise_repeat_tolerance);
    (slots > 0).then_some(SurpriseLayout { batch, shape, window, slots, repeat_tolerance })
}
