//! One decoding step (a token for every sequence of the batch) with its work buffers allocated
//! once per state, and replayed from a CUDA graph.
//!
//! A step is about fifteen launches per layer, each a few microseconds of GPU work: queued one
//! by one it is bound by the host's launch cost. So every buffer a step writes is allocated at
//! the first step and reused; token ids and positions are copied into fixed device buffers
//! before the step; and the step's launches are captured once into a CUDA graph, then replayed
//! with one launch per step. The graph reads the adapters' device buffers in place; it is
//! captured again when the adapters were uploaded anew (their scale is baked into it), and
//! dropped when the state is reset. Capture is skipped while launches synchronise
//! (LIGER_CUDA_SYNC) or the profiler is on; when it fails, the step runs its plain launches and
//! the reason is printed once.

use super::glue::grm_normalize;
use super::weights::GpuLora;
use super::GpuLigerModel;
use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::gemm::{gemm, gemm_scaled, GemmDims, GemmInput};
use crate::kernels::EMBEDDING;
use crate::launch::{as_int, block_per_row};
use crate::ops::attention::attention_decode;
use crate::ops::decode::{
    decode_gemv, decode_gemv_swiglu, decode_lora_up, decode_mix, decode_rope_append, gemv_fits, surprise_decode_step,
    window_entries_in_use, DecodeRope, LoraUp, GEMV_MAX_BATCH,
};
use crate::ops::head_mix::head_mix_to;
use crate::ops::mixer::{mixer_recurrent_step, mixer_step_keys_as_queries};
use crate::ops::rms_norm::{rms_norm_forward, rms_norm_forward_pair};
use crate::ops::swiglu::swiglu_forward_to;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, PushKernelArg};
use liger_core::convert::LoraTarget;
use liger_core::liger::Window;
use liger_core::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// What one layer keeps between calls for every sequence of the batch.
pub(super) enum LayerCache<T> {
    /// The recurrent state `[B, hkv, state]` (f32); with `grm_norm` or a surprise cache the
    /// recurrence over values of one as well (the normaliser, and the surprise score's); with
    /// SWA the window's roped keys and values `[B, hkv, sinks + window + slots, d]` (as `T`):
    /// the sinks, a ring buffer, then the surprise cache's slots (none without one), whose
    /// scores and those of the ring's tokens are `surprise` `[B, hkv, window + slots]` (see
    /// `ops::decode::SurpriseLayout`).
    Liger {
        state: GpuBuffer<f32>,
        norm_state: Option<GpuBuffer<f32>>,
        window: Option<(GpuBuffer<T>, GpuBuffer<T>)>,
        surprise: Option<GpuBuffer<f32>>,
    },
    /// Roped keys and values `[B, hkv, capacity, d]` (as `T`) of a softmax layer.
    Softmax { keys: GpuBuffer<T>, values: GpuBuffer<T> },
}

/// Every buffer a step writes besides the state, for `batch` sequences.
pub(super) struct StepBuffers<T> {
    batch: usize,
    ids: GpuBuffer<u32>,
    positions: GpuBuffer<u32>,
    window_len: GpuBuffer<u32>,
    full_len: GpuBuffer<u32>,
    /// With a surprise cache: the entries of each `[B, hkv]` row of a Liger layer's window
    /// caches that its attention reads (each head's cache holds its own count).
    head_len: GpuBuffer<u32>,
    /// The residual stream `[B, hidden]`.
    x: GpuBuffer<f32>,
    /// A normalised x, in f32 (LoRA reads it) and in T (the frozen weights' products read it).
    h: GpuBuffer<f32>,
    h_t: GpuBuffer<T>,
    /// 1/rms of each row of x (written by the norm, read by nobody in a step).
    h_rstd: GpuBuffer<f32>,
    q: GpuBuffer<f32>,
    k: GpuBuffer<f32>,
    v: GpuBuffer<f32>,
    /// q and k after the per-head norms, and their 1/rms (models with q/k norms).
    q_normed: GpuBuffer<f32>,
    k_normed: GpuBuffer<f32>,
    q_rstd: GpuBuffer<f32>,
    k_rstd: GpuBuffer<f32>,
    /// `x Aᵀ` of an adapter: `[B, largest rank]`.
    /// `x Aᵀ` of the q, k, v (or o) adapters.
    lora_u: [GpuBuffer<f32>; 3],
    q_roped: GpuBuffer<T>,
    o_mixer: GpuBuffer<f32>,
    /// With `grm_norm` or a surprise cache: values of one (the recurrence of the normaliser
    /// and of the surprise score reads them); with `grm_norm` the normaliser's output.
    ones: GpuBuffer<f32>,
    o_norm: GpuBuffer<f32>,
    /// With a surprise cache: the new token's key read out of the state over the values and
    /// over values of one, `[B, hkv, d]` (its surprise).
    key_readout: GpuBuffer<f32>,
    key_norm: GpuBuffer<f32>,
    o_attention: GpuBuffer<T>,
    o: GpuBuffer<f32>,
    o_t: GpuBuffer<T>,
    gate: GpuBuffer<f32>,
    up: GpuBuffer<f32>,
    act_t: GpuBuffer<T>,
    logits: GpuBuffer<f32>,
}

/// A captured step. CUDA graphs must not be used from two threads at once; this one is only
/// reached through `&mut GpuLigerState`, so never is.
struct StepGraph(CudaGraph);
// SAFETY: see above: every use of the graph goes through an exclusive borrow of its state.
unsafe impl Send for StepGraph {}
// SAFETY: as above; a shared borrow of the state never touches the graph.
unsafe impl Sync for StepGraph {}

/// The work buffers of a state's steps, and its captured graph.
pub(super) struct DecodePlan<T> {
    buffers: StepBuffers<T>,
    graph: Option<StepGraph>,
    /// The adapters' upload count the graph was captured with.
    graph_lora_version: u64,
    /// Steps run with plain launches (the first one loads the kernels before any capture).
    plain_steps: usize,
    /// Graphs captured so far.
    pub(super) captures: usize,
    capture_failed: bool,
}

impl<T> DecodePlan<T> {
    /// Forgets the captured graph (the state was reset).
    pub(super) fn drop_graph(&mut self) {
        self.graph = None;
    }

    pub(super) fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// The logits of the last step (`B x vocab`), on the GPU.
    pub(super) fn logits(&self) -> &GpuBuffer<f32> {
        &self.buffers.logits
    }
}

/// Set once a capture failure has been reported, so that it is reported only once.
static CAPTURE_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

impl<T: GemmInput> GpuLigerModel<T> {
    /// The work buffers of a step for `batch` sequences.
    pub(super) fn new_decode_plan(&self, batch: usize) -> Result<DecodePlan<T>> {
        let ctx = &self.ctx;
        let c = self.config();
        let (hs, qs, kvs, f, vocab) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size, c.vocab_size);
        let lora = self.lora_guard()?;
        let rank = lora.iter().flatten().flatten().map(|a| a.rank).max().unwrap_or(1).max(1);
        drop(lora);
        let f32s = |n: usize| GpuBuffer::<f32>::zeros(ctx, batch * n);
        let ts = |n: usize| GpuBuffer::<T>::zeros(ctx, batch * n);
        let u32s = || GpuBuffer::<u32>::zeros(ctx, batch);
        let head_norms = c.qk_norm;
        let att = &self.host.options.attention;
        let (normalised, surprise) = (att.grm_norm, self.surprise_slots() > 0);
        let buffers = StepBuffers {
            batch,
            ids: u32s()?,
            positions: u32s()?,
            window_len: u32s()?,
            full_len: u32s()?,
            head_len: GpuBuffer::<u32>::zeros(ctx, if surprise { batch * c.num_kv_heads } else { 0 })?,
            x: f32s(hs)?,
            h: f32s(hs)?,
            h_t: ts(hs)?,
            h_rstd: f32s(1)?,
            q: f32s(qs)?,
            k: f32s(kvs)?,
            v: f32s(kvs)?,
            q_normed: f32s(if head_norms { qs } else { 0 })?,
            k_normed: f32s(if head_norms { kvs } else { 0 })?,
            q_rstd: f32s(if head_norms { c.num_heads } else { 0 })?,
            k_rstd: f32s(if head_norms { c.num_kv_heads } else { 0 })?,
            lora_u: [f32s(rank)?, f32s(rank)?, f32s(rank)?],
            q_roped: ts(qs)?,
            o_mixer: f32s(qs)?,
            ones: self.ones(if normalised || surprise { batch * kvs } else { 0 })?,
            o_norm: f32s(if normalised { qs } else { 0 })?,
            key_readout: f32s(if surprise { kvs } else { 0 })?,
            key_norm: f32s(if surprise { kvs } else { 0 })?,
            o_attention: ts(qs)?,
            o: f32s(qs)?,
            o_t: ts(qs)?,
            gate: f32s(f)?,
            up: f32s(f)?,
            act_t: ts(f)?,
            logits: f32s(vocab)?,
        };
        Ok(DecodePlan {
            buffers,
            graph: None,
            graph_lora_version: 0,
            plain_steps: 0,
            captures: 0,
            capture_failed: false,
        })
    }

    /// One token per sequence (`ids`, every sequence at position `position`) through the
    /// layers, advancing `layers`; leaves the logits (`B x vocab`) on the GPU, in
    /// [`DecodePlan::logits`].
    pub(super) fn decode_step(
        &self,
        layers: &mut [LayerCache<T>],
        plan: &mut DecodePlan<T>,
        ids: &[u32],
        position: usize,
    ) -> Result<()> {
        let c = self.config();
        let vocab = self.weights.embed.len() / c.hidden_size.max(1);
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid_argument(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let p = &mut plan.buffers;
        if ids.len() != p.batch {
            return Err(Error::internal(format!("a step of {} tokens for a plan of {} sequences", ids.len(), p.batch)));
        }
        let b = p.batch;
        let pos = u32::try_from(position).map_err(|_| {
            Error::invalid_argument(format!("position {position} is beyond what the GPU kernels index (2^32)"))
        })?;
        p.ids.copy_from_host(ids)?;
        p.positions.copy_from_host(&vec![pos; b])?;
        let att = &self.host.options.attention;
        // With a surprise cache the step kernel writes each row's length on the device.
        if att.use_swa && self.surprise_slots() == 0 {
            let in_use = window_entries_in_use(position + 1, att.window(), 0);
            p.window_len.copy_from_host(&vec![u32::try_from(in_use).unwrap_or(u32::MAX); b])?;
        }
        if !self.host.options.softmax_layers.is_empty() {
            p.full_len.copy_from_host(&vec![pos + 1; b])?;
        }
        let version = self.lora_version();
        if plan.graph.is_some() && (plan.graph_lora_version != version || !self.decode_graphs_enabled()) {
            plan.graph = None;
        }
        let want_graph =
            self.decode_graphs_enabled() && self.ctx.capture_allowed() && plan.plain_steps > 0 && !plan.capture_failed;
        if plan.graph.is_none() && want_graph {
            match self.capture_step(layers, &mut plan.buffers) {
                Ok(graph) => {
                    plan.graph = Some(StepGraph(graph));
                    plan.graph_lora_version = version;
                    plan.captures += 1;
                }
                Err(reason) => {
                    plan.capture_failed = true;
                    if !CAPTURE_FAILURE_REPORTED.swap(true, Ordering::Relaxed) {
                        eprintln!("liger: decoding steps run without a CUDA graph (capturing one failed: {reason})");
                    }
                }
            }
        }
        match &plan.graph {
            Some(graph) => {
                graph.0.launch().map_err(|e| crate::error::driver_error(e, "replaying the decoding step"))?
            }
            None => {
                self.record_step(layers, &mut plan.buffers)?;
                plan.plain_steps += 1;
            }
        }
        Ok(())
    }

    /// Captures the step's launches into a graph (nothing runs).
    fn capture_step(
        &self,
        layers: &mut [LayerCache<T>],
        p: &mut StepBuffers<T>,
    ) -> std::result::Result<CudaGraph, String> {
        let stream = self.ctx.stream();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| e.to_string())?;
        let recorded = self.record_step(layers, p);
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        match (recorded, ended) {
            (Ok(()), Ok(Some(graph))) => Ok(graph),
            (Ok(()), Ok(None)) => Err("the captured graph is empty".into()),
            (Err(e), _) => Err(e.message),
            (Ok(()), Err(e)) => Err(e.to_string()),
        }
    }

    /// Queues one step: embedding, every layer, the final norm and the LM head into `p.logits`.
    fn record_step(&self, layers: &mut [LayerCache<T>], p: &mut StepBuffers<T>) -> Result<()> {
        let ctx = &self.ctx;
        let c = self.config();
        let att = &self.host.options.attention;
        let (b, shape, eps) = (p.batch, self.shape, c.rms_norm_eps);
        let (hs, qs, kvs, f) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let lora = self.lora_guard()?;
        let head_mix = self.head_mix_guard()?;
        // A few sequences: warp-per-row products that read each weight once, in fewer launches.
        let small = b <= GEMV_MAX_BATCH && [hs, qs, f].iter().all(|&k| gemv_fits::<T>(k));
        let StepBuffers {
            ids,
            positions,
            window_len,
            full_len,
            head_len,
            x,
            h,
            h_t,
            h_rstd,
            q,
            k,
            v,
            q_normed,
            k_normed,
            q_rstd,
            k_rstd,
            lora_u,
            q_roped,
            o_mixer,
            ones,
            o_norm,
            key_readout,
            key_norm,
            o_attention,
            o,
            o_t,
            gate,
            up,
            act_t,
            logits,
            ..
        } = p;
        let surprise_at = self.surprise_layout(b);
        embed_ids(ctx, &self.weights.embed, hs, ids, x)?;
        for (layer, cache) in layers.iter_mut().enumerate() {
            let lw = &self.weights.layers[layer];
            let adapters = &lora[layer];
            rms_norm_forward_pair(ctx, x, &lw.attn_norm, eps, h, h_t, h_rstd)?;
            if small {
                decode_gemv(ctx, h_t, b, hs, &mut [(&lw.wq, &mut *q), (&lw.wk, &mut *k), (&lw.wv, &mut *v)], false)?;
            }
            if !small {
                for (w, y, out) in [(&lw.wq, &mut *q, qs), (&lw.wk, &mut *k, kvs), (&lw.wv, &mut *v, kvs)] {
                    gemm(
                        ctx,
                        GemmDims { m: b, n: out, k: hs, a_transposed: false, b_transposed: true },
                        h_t.slice(),
                        w.slice(),
                        y.slice_mut(),
                        false,
                    )?;
                }
            }
            let qkv_adapters = [LoraTarget::Q, LoraTarget::K, LoraTarget::V].map(|t| adapters[t as usize].as_ref());
            lora_add(ctx, &qkv_adapters, h, b, lora_u, &mut [&mut *q, &mut *k, &mut *v])?;
            for (bias, y) in [(&lw.bq, &mut *q), (&lw.bk, &mut *k), (&lw.bv, &mut *v)] {
                if let Some(bias) = bias {
                    super::glue::add_bias_rows(ctx, y, bias)?;
                }
            }
            let (q_in, k_in): (&GpuBuffer<f32>, &GpuBuffer<f32>) = match (c.qk_norm, &lw.q_norm, &lw.k_norm) {
                (true, Some(qn), Some(kn)) => {
                    rms_norm_forward(ctx, q, qn, eps, q_normed, q_rstd)?;
                    rms_norm_forward(ctx, k, kn, eps, k_normed, k_rstd)?;
                    (q_normed, k_normed)
                }
                _ => (q, k),
            };
            let rope = |window: Window, slots: usize| DecodeRope {
                inv_freq: &self.weights.inv_freq,
                positions,
                batch: b,
                shape,
                window,
                slots,
            };
            match cache {
                LayerCache::Liger { state, norm_state, window, surprise } => {
                    let mut slots = 0;
                    if let (Some(at), Some(scores), Some(ones_state), Some((wk, wv))) =
                        (&surprise_at, surprise.as_mut(), norm_state.as_mut(), window.as_mut())
                    {
                        // From the states before this token: its surprise; then the token leaving
                        // the window is offered to the cache before the new one takes its entry.
                        mixer_step_keys_as_queries(ctx, &att.mixer, b, shape, state, k_in, v, key_readout, false)?;
                        let advance = !att.grm_norm;
                        mixer_step_keys_as_queries(
                            ctx, &att.mixer, b, shape, ones_state, k_in, ones, key_norm, advance,
                        )?;
                        surprise_decode_step(ctx, at, positions, key_readout, key_norm, v, wk, wv, scores, head_len)?;
                        slots = at.slots;
                    }
                    let lengths = if slots > 0 { &*head_len } else { &*window_len };
                    mixer_recurrent_step(ctx, &att.mixer, b, shape, state, q_in, k_in, v, o_mixer)?;
                    if let (true, Some(norm_state)) = (att.grm_norm, norm_state.as_mut()) {
                        mixer_recurrent_step(ctx, &att.mixer, b, shape, norm_state, q_in, k_in, ones, o_norm)?;
                        grm_normalize(ctx, o_mixer, o_norm)?;
                    }
                    if let Some((wk, wv)) = window {
                        decode_rope_append(ctx, &rope(att.window(), slots), q_in, k_in, v, q_roped, wk, wv)?;
                        let entries = att.window().capacity().saturating_add(slots);
                        attention_decode(ctx, b, shape, entries, q_roped, wk, wv, lengths, o_attention)?;
                        match head_mix.get(layer).and_then(|m| m.as_ref()) {
                            Some(m) => head_mix_to(ctx, m, shape.d, o_mixer, Some(&*o_attention), o, Some(&mut *o_t))?,
                            None => {
                                decode_mix(ctx, Some((&*o_mixer, att.alpha)), Some((&*o_attention, att.beta)), o, o_t)?
                            }
                        }
                    } else {
                        match head_mix.get(layer).and_then(|m| m.as_ref()) {
                            Some(m) => head_mix_to::<T>(ctx, m, shape.d, o_mixer, None, o, Some(&mut *o_t))?,
                            None => decode_mix::<T>(ctx, Some((&*o_mixer, att.alpha)), None, o, o_t)?,
                        }
                    }
                }
                LayerCache::Softmax { keys, values } => {
                    let capacity = c.max_position_embeddings;
                    decode_rope_append(ctx, &rope(capacity.into(), 0), q_in, k_in, v, q_roped, keys, values)?;
                    attention_decode(ctx, b, shape, capacity, q_roped, keys, values, full_len, o_attention)?;
                    decode_mix(ctx, None, Some((&*o_attention, 1.0)), o, o_t)?;
                }
            }
            // x += o_proj(o), the adapter included.
            if small {
                decode_gemv(ctx, o_t, b, qs, &mut [(&lw.wo, &mut *x)], true)?;
            } else {
                gemm(
                    ctx,
                    GemmDims { m: b, n: hs, k: qs, a_transposed: false, b_transposed: true },
                    o_t.slice(),
                    lw.wo.slice(),
                    x.slice_mut(),
                    true,
                )?;
            }
            lora_add(ctx, &[adapters[LoraTarget::O as usize].as_ref()], o, b, lora_u, &mut [&mut *x])?;
            // x += down(silu(gate(h2)) * up(h2)), h2 = norm(x).
            rms_norm_forward_pair(ctx, x, &lw.ffn_norm, eps, h, h_t, h_rstd)?;
            if small {
                decode_gemv_swiglu(ctx, h_t, b, hs, &lw.w_gate, &lw.w_up, act_t)?;
                decode_gemv(ctx, act_t, b, f, &mut [(&lw.w_down, &mut *x)], true)?;
            } else {
                let to_f = GemmDims { m: b, n: f, k: hs, a_transposed: false, b_transposed: true };
                gemm(ctx, to_f, h_t.slice(), lw.w_gate.slice(), gate.slice_mut(), false)?;
                gemm(ctx, to_f, h_t.slice(), lw.w_up.slice(), up.slice_mut(), false)?;
                swiglu_forward_to(ctx, gate, up, act_t)?;
                gemm(
                    ctx,
                    GemmDims { m: b, n: hs, k: f, a_transposed: false, b_transposed: true },
                    act_t.slice(),
                    lw.w_down.slice(),
                    x.slice_mut(),
                    true,
                )?;
            }
        }
        rms_norm_forward_pair(ctx, x, &self.weights.final_norm, eps, h, h_t, h_rstd)?;
        self.head_logits(h, h_t, b, logits)
    }

    /// The LM head: `logits [B, vocab] = hf Wᵀ`, from the final normalised rows in f32 (`hf`)
    /// and in the storage type (`hf_t`, for a head stored as `T`).
    fn head_logits(
        &self,
        _hf: &GpuBuffer<f32>,
        hf_t: &GpuBuffer<T>,
        batch: usize,
        logits: &mut GpuBuffer<f32>,
    ) -> Result<()> {
        let c = self.config();
        let head = self.weights.head();
        if batch <= GEMV_MAX_BATCH && gemv_fits::<T>(c.hidden_size) {
            return decode_gemv(&self.ctx, hf_t, batch, c.hidden_size, &mut [(head, logits)], false);
        }
        let dims = GemmDims { m: batch, n: c.vocab_size, k: c.hidden_size, a_transposed: false, b_transposed: true };
        gemm(&self.ctx, dims, hf_t.slice(), head.slice(), logits.slice_mut(), false)
    }
}

/// `y_a += scale_a · (x A_aᵀ) B_aᵀ` for the adapters present (up to three, all reading `x`,
/// `[n, in]`), `x A_aᵀ` kept in `us[a]`. For a few sequences the down projections are one
/// warp-per-row product and the up projections one launch (two graph nodes in all); else
/// two cuBLAS products per adapter.
fn lora_add(
    ctx: &GpuContext,
    adapters: &[Option<&GpuLora>],
    x: &GpuBuffer<f32>,
    n: usize,
    us: &mut [GpuBuffer<f32>; 3],
    ys: &mut [&mut GpuBuffer<f32>],
) -> Result<()> {
    let mut present: Vec<(&GpuLora, &mut GpuBuffer<f32>, &mut GpuBuffer<f32>)> = adapters
        .iter()
        .zip(us.iter_mut())
        .zip(ys.iter_mut())
        .filter_map(|((a, u), y)| a.map(|a| (a, u, &mut **y)))
        .collect();
    let Some(in_features) = present.first().map(|p| p.0.in_features) else {
        return Ok(());
    };
    let fused =
        n <= GEMV_MAX_BATCH && gemv_fits::<f32>(in_features) && present.iter().all(|(a, u, _)| u.len() == n * a.rank);
    if fused {
        let mut downs: Vec<(&GpuBuffer<f32>, &mut GpuBuffer<f32>)> =
            present.iter_mut().map(|(a, u, _)| (&a.a, &mut **u)).collect();
        decode_gemv::<f32>(ctx, x, n, in_features, &mut downs, false)?;
        drop(downs);
        let mut ups: Vec<LoraUp> =
            present.iter_mut().map(|(a, u, y)| LoraUp { u, b: &a.b, rank: a.rank, scale: a.scale, y }).collect();
        return decode_lora_up(ctx, n, &mut ups);
    }
    for (a, u, y) in present {
        let len = n * a.rank;
        let down = GemmDims { m: n, n: a.rank, k: a.in_features, a_transposed: false, b_transposed: true };
        gemm(ctx, down, x.slice(), a.a.slice(), &mut u.view_mut(0..len), false)?;
        let up = GemmDims { m: n, n: a.out_features, k: a.rank, a_transposed: false, b_transposed: true };
        gemm_scaled(ctx, up, &u.view(0..len), a.b.slice(), y.slice_mut(), a.scale, true)?;
    }
    Ok(())
}

/// `out[t] = table[ids[t]]` as f32, the ids already on the GPU (the caller checked them
/// against the vocabulary before uploading them).
fn embed_ids<T: GpuElement>(
    ctx: &GpuContext,
    table: &GpuBuffer<T>,
    hidden: usize,
    ids: &GpuBuffer<u32>,
    out: &mut GpuBuffer<f32>,
) -> Result<()> {
    crate::launch::expect_len("embedding output", out.len(), ids.len() * hidden)?;
    let name = if T::KERNEL_SUFFIX == "bf16" { "embedding_gather_bf16" } else { "embedding_gather_f32" };
    let f = ctx.function(&EMBEDDING, name)?;
    let hidden_arg = as_int("hidden", hidden)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(table.slice()).arg(ids.slice()).arg(out.slice_mut()).arg(&hidden_arg);
    // SAFETY: the ids are below the table's rows (checked before upload); out holds ids.len() rows.
    ctx.check_launch(unsafe { launch.launch(block_per_row(ids.len(), hidden)?) }, name)
}
