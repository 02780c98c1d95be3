//! One decoder layer on the GPU, over a batch of sequences of equal length: projections with
//! LoRA, Liger attention (or softmax attention in the hybrid's softmax layers), o_proj and the
//! SwiGLU MLP. Activations are f32 work buffers; they are cast to the storage type `T` where a
//! product with a frozen weight reads them. The softmax attention (sliding window or full)
//! runs in `T` too: in bf16 its kernels use tensor cores, and its tape is half the size. The
//! mixer kernels run on the f32 activations: bf16 inputs there cost more accuracy (on the
//! LoRA gradients) than they save; a bf16 model lets the mixer take bf16 chunk products
//! (`mixer_segments`), which keep f32 inputs and accumulation.
//! CPU twin: `LigerModel::layer_forward` (liger-core `convert/model.rs`).

use super::glue::{add_bias_rows, fill, grm_normalize, liger_mix_to, rope_forward_to, scaled, widen, RopeLayout};
use super::weights::{GpuLayer, GpuLora};
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::gemm::{gemm, GemmDims, GemmInput};
use crate::ops::attention::{
    attention_forward, keys_as_queries, surprise_attention_forward, surprise_scores, surprise_select, AttentionDims,
    SurpriseCache,
};
use crate::ops::head_mix::head_mix_to;
use crate::ops::mixer::{mixer_chunk_forward_in_segments, MixerDims, TimeSegments};
use crate::ops::rms_norm::{rms_norm_forward, rms_norm_forward_pair};
use crate::ops::swiglu::swiglu_forward_to;
use liger_core::convert::LoraTarget;
use liger_core::liger::Window;
use liger_core::Result;

/// A batch of `batch` sequences of `tokens` tokens each, laid out row after row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub batch: usize,
    pub tokens: usize,
}

impl Rows {
    pub fn n(&self) -> usize {
        self.batch * self.tokens
    }
}

/// `y = x Wᵀ` (or `y +=` when `accumulate`): x `[n, inp]`, W `[out, inp]`, y `[n, out]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear<T: GemmInput>(
    ctx: &GpuContext,
    x: &GpuBuffer<T>,
    w: &GpuBuffer<T>,
    n: usize,
    inp: usize,
    out: usize,
    y: &mut GpuBuffer<f32>,
    accumulate: bool,
) -> Result<()> {
    let dims = GemmDims { m: n, n: out, k: inp, a_transposed: false, b_transposed: true };
    gemm(ctx, dims, x.slice(), w.slice(), y.slice_mut(), accumulate)
}

/// `dx += dy W` (or `dx =` without `accumulate`): the input gradient of [`linear`]; dy `[n, out]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_input_grad<T: GemmInput>(
    ctx: &GpuContext,
    dy: &GpuBuffer<T>,
    w: &GpuBuffer<T>,
    n: usize,
    inp: usize,
    out: usize,
    dx: &mut GpuBuffer<f32>,
    accumulate: bool,
) -> Result<()> {
    let dims = GemmDims { m: n, n: inp, k: out, a_transposed: false, b_transposed: false };
    gemm(ctx, dims, dy.slice(), w.slice(), dx.slice_mut(), accumulate)
}

/// `y += scale · (x Aᵀ) Bᵀ`; returns `scale · x Aᵀ` (`n x rank`) for the backward pass.
pub(super) fn lora_forward(
    ctx: &GpuContext,
    a: &GpuLora,
    x: &GpuBuffer<f32>,
    n: usize,
    y: &mut GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    let mut us = GpuBuffer::zeros(ctx, n * a.rank)?;
    let down = GemmDims { m: n, n: a.rank, k: a.in_features, a_transposed: false, b_transposed: true };
    a.gemm_scaled(ctx, down, x.slice(), a.a.slice(), us.slice_mut(), a.scale, false)?;
    let up = GemmDims { m: n, n: a.out_features, k: a.rank, a_transposed: false, b_transposed: true };
    a.gemm(ctx, up, us.slice(), a.b.slice(), y.slice_mut(), true)?;
    Ok(us)
}

/// q, k, v of a layer (f32; raw: no RoPE), with what the backward pass needs.
pub(super) struct Qkv {
    pub q: GpuBuffer<f32>,
    pub k: GpuBuffer<f32>,
    pub v: GpuBuffer<f32>,
    /// q and k before the per-head norms (models with q/k norms only).
    pub q_pre: Option<GpuBuffer<f32>>,
    pub k_pre: Option<GpuBuffer<f32>>,
    /// `scale · h Aᵀ` of the q, k, v adapters.
    pub saved: [Option<GpuBuffer<f32>>; 3],
}

/// What the backward of the softmax branch reads, in the storage type `T`: its roped q and
/// k, v, its output, the log-sum-exp (f32), and the surprise cache's choice when it has one.
pub(super) struct SoftmaxTape<T> {
    pub q_roped: GpuBuffer<T>,
    pub k_roped: GpuBuffer<T>,
    pub v: GpuBuffer<T>,
    pub o: GpuBuffer<T>,
    pub lse: GpuBuffer<f32>,
    pub surprise: Option<SurpriseCache>,
}

/// The attention's output (f32), its copy in `T` when made on the way, and the softmax
/// branch's tape.
pub(super) type AttentionOutput<T> = (GpuBuffer<f32>, Option<GpuBuffer<T>>, Option<SoftmaxTape<T>>);

/// Everything one layer's backward pass reads.
pub(super) struct LayerTape<T> {
    pub h: GpuBuffer<f32>,
    /// q, k, v: also the mixer's inputs.
    pub qkv: Qkv,
    pub softmax: Option<SoftmaxTape<T>>,
    /// The attention's output, input of o_proj.
    pub o: GpuBuffer<f32>,
    pub saved_o: Option<GpuBuffer<f32>>,
    pub x_mid: GpuBuffer<f32>,
    pub gate: GpuBuffer<f32>,
    pub up: GpuBuffer<f32>,
}

impl<T: GemmInput> GpuLigerModel<T> {
    fn layer_weights(&self, layer: usize) -> &GpuLayer<T> {
        &self.weights.layers[layer]
    }

    /// How the mixer runs over whole sequences: a bf16 model accepts the chunked form's bf16
    /// products on its f32 activations; an f32 model keeps f32 products.
    pub(super) fn mixer_segments(&self) -> TimeSegments {
        if T::KERNEL_SUFFIX == "bf16" {
            TimeSegments::AutoBf16Products
        } else {
            TimeSegments::Auto
        }
    }

    /// `x` normalised by `weight` (f32), and its copy in `T` for products with frozen weights.
    pub(super) fn norm(&self, x: &GpuBuffer<f32>, weight: &GpuBuffer<f32>) -> Result<(GpuBuffer<f32>, GpuBuffer<T>)> {
        let ctx = &self.ctx;
        let rows = x.len() / weight.len().max(1);
        let mut h = GpuBuffer::zeros(ctx, x.len())?;
        let mut h_t = GpuBuffer::zeros(ctx, x.len())?;
        let mut rstd = GpuBuffer::zeros(ctx, rows)?;
        rms_norm_forward_pair(ctx, x, weight, self.config().rms_norm_eps, &mut h, &mut h_t, &mut rstd)?;
        Ok((h, h_t))
    }

    /// `h Wᵀ` (+ LoRA) (+ bias) for one of q, k, v, o.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        layer: usize,
        target: LoraTarget,
        w: &GpuBuffer<T>,
        bias: Option<&GpuBuffer<f32>>,
        h: &GpuBuffer<f32>,
        h_t: &GpuBuffer<T>,
        n: usize,
        inp: usize,
        out: usize,
    ) -> Result<(GpuBuffer<f32>, Option<GpuBuffer<f32>>)> {
        let ctx = &self.ctx;
        let mut y = GpuBuffer::zeros(ctx, n * out)?;
        linear(ctx, h_t, w, n, inp, out, &mut y, false)?;
        let lora = self.lora_guard()?;
        let saved = match &lora[layer][target as usize] {
            Some(a) => Some(lora_forward(ctx, a, h, n, &mut y)?),
            None => None,
        };
        if let Some(b) = bias {
            add_bias_rows(ctx, &mut y, b)?;
        }
        Ok((y, saved))
    }

    /// q, k, v of `layer` from the normalised input `h` (and its copy `h_t`).
    pub(super) fn project_qkv(&self, layer: usize, h: &GpuBuffer<f32>, h_t: &GpuBuffer<T>, n: usize) -> Result<Qkv> {
        let c = self.config();
        let lw = self.layer_weights(layer);
        let (hs, qs, kvs) = (c.hidden_size, c.q_size(), c.kv_size());
        let (mut q, sq) = self.project(layer, LoraTarget::Q, &lw.wq, lw.bq.as_ref(), h, h_t, n, hs, qs)?;
        let (mut k, sk) = self.project(layer, LoraTarget::K, &lw.wk, lw.bk.as_ref(), h, h_t, n, hs, kvs)?;
        let (v, sv) = self.project(layer, LoraTarget::V, &lw.wv, lw.bv.as_ref(), h, h_t, n, hs, kvs)?;
        let (mut q_pre, mut k_pre) = (None, None);
        if let (true, Some(qn), Some(kn)) = (c.qk_norm, &lw.q_norm, &lw.k_norm) {
            let ctx = &self.ctx;
            let head_norm = |x: &GpuBuffer<f32>, w: &GpuBuffer<f32>| -> Result<GpuBuffer<f32>> {
                let mut y = GpuBuffer::zeros(ctx, x.len())?;
                let mut rstd = GpuBuffer::zeros(ctx, x.len() / c.head_dim)?;
                rms_norm_forward(ctx, x, w, c.rms_norm_eps, &mut y, &mut rstd)?;
                Ok(y)
            };
            let (qn_out, kn_out) = (head_norm(&q, qn)?, head_norm(&k, kn)?);
            q_pre = Some(std::mem::replace(&mut q, qn_out));
            k_pre = Some(std::mem::replace(&mut k, kn_out));
        }
        Ok(Qkv { q, k, v, q_pre, k_pre, saved: [sq, sk, sv] })
    }

    /// Attention of `layer` over whole sequences from position 0 (training and first
    /// prefill): returns its output (f32, `[n, q_size]`), the output's copy in `T` where the
    /// mix of the two branches made it on the way, and what the backward pass reads.
    pub(super) fn attention_fresh(
        &self,
        layer: usize,
        qkv: &Qkv,
        rows: Rows,
        start: &GpuBuffer<u32>,
    ) -> Result<AttentionOutput<T>> {
        let ctx = &self.ctx;
        let c = self.config();
        let shape = self.shape;
        let n = rows.n();
        let (q, k, v) = (&qkv.q, &qkv.k, &qkv.v);
        let att = &self.host.options.attention;
        let softmax_layer = self.host.options.is_softmax_layer(layer);
        let mut o = GpuBuffer::<f32>::zeros(ctx, n * c.q_size())?;
        let mut o_grm = None;
        let learned_mix = self.host.options.head_mix_of(layer).is_some();
        if !softmax_layer {
            let (g, _) = self.grm_fresh(qkv, rows)?;
            if att.use_swa {
                // Mixed with the window attention's output below, in one pass.
                o_grm = Some(g);
            } else if learned_mix {
                let mix = self.head_mix_guard()?;
                head_mix_to::<T>(ctx, self.layer_head_mix(&mix, layer)?, shape.d, &g, None, &mut o, None)?;
            } else {
                widen(ctx, &g, &mut o, att.alpha, false)?;
            }
        }
        let (mut o_t, mut softmax) = (None, None);
        if softmax_layer || att.use_swa {
            let (window, weight) = if softmax_layer { (None, 1.0) } else { (Some(att.window()), att.beta) };
            let rope = |heads: usize| RopeLayout {
                inv_freq: &self.weights.inv_freq,
                start,
                tokens: rows.tokens,
                heads,
                head_dim: shape.d,
            };
            let mut q_roped = GpuBuffer::<T>::zeros(ctx, q.len())?;
            let mut k_roped = GpuBuffer::<T>::zeros(ctx, k.len())?;
            rope_forward_to(ctx, &rope(shape.hq), &qkv.q, &mut q_roped)?;
            rope_forward_to(ctx, &rope(shape.hkv), &qkv.k, &mut k_roped)?;
            let v_t = scaled::<T>(ctx, v, 1.0)?;
            let mut o_att = GpuBuffer::<T>::zeros(ctx, q.len())?;
            let mut lse = GpuBuffer::<f32>::zeros(ctx, rows.batch * shape.hq * rows.tokens)?;
            let dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape };
            let mut surprise = None;
            match window {
                Some(window) if att.surprise_keys > 0 => {
                    let cache = self.surprise_cache(qkv, rows, window)?;
                    surprise_attention_forward(
                        ctx, dims, window, &cache, &q_roped, &k_roped, &v_t, &mut o_att, &mut lse,
                    )?;
                    surprise = Some(cache);
                }
                _ => attention_forward(ctx, dims, window, &q_roped, &k_roped, &v_t, &mut o_att, &mut lse)?,
            }
            match &o_grm {
                Some(g) => {
                    let mut mixed_t = GpuBuffer::<T>::zeros(ctx, o.len())?;
                    if learned_mix {
                        let mix = self.head_mix_guard()?;
                        let mix = self.layer_head_mix(&mix, layer)?;
                        head_mix_to(ctx, mix, shape.d, g, Some(&o_att), &mut o, Some(&mut mixed_t))?;
                    } else {
                        liger_mix_to(ctx, g, &o_att, att.alpha, weight, &mut o, &mut mixed_t)?;
                    }
                    o_t = Some(mixed_t);
                }
                None => widen(ctx, &o_att, &mut o, weight, false)?,
            }
            softmax = Some(SoftmaxTape { q_roped, k_roped, v: v_t, o: o_att, lse, surprise });
        }
        Ok((o, o_t, softmax))
    }

    /// `x += o_proj(o)` (the products accumulate straight into `x`); returns the o adapter's
    /// saved product.
    /// The recurrent branch over whole sequences from a fresh state: `mixer(q, k, v)`, and with
    /// `grm_norm` that divided by `mixer(q, k, 1) + eps`, whose value is returned beside it.
    pub(super) fn grm_fresh(&self, qkv: &Qkv, rows: Rows) -> Result<(GpuBuffer<f32>, Option<GpuBuffer<f32>>)> {
        let ctx = &self.ctx;
        let att = &self.host.options.attention;
        let dims = MixerDims { batch: rows.batch, tokens: rows.tokens, shape: self.shape };
        let mut g = GpuBuffer::<f32>::zeros(ctx, qkv.q.len())?;
        mixer_chunk_forward_in_segments(
            ctx,
            &att.mixer,
            dims,
            &qkv.q,
            &qkv.k,
            &qkv.v,
            &mut g,
            None,
            None,
            self.mixer_segments(),
        )?;
        if !att.grm_norm {
            return Ok((g, None));
        }
        let ones = self.ones(qkv.v.len())?;
        let mut den = GpuBuffer::<f32>::zeros(ctx, qkv.q.len())?;
        mixer_chunk_forward_in_segments(
            ctx,
            &att.mixer,
            dims,
            &qkv.q,
            &qkv.k,
            &ones,
            &mut den,
            None,
            None,
            self.mixer_segments(),
        )?;
        grm_normalize(ctx, &mut g, &den)?;
        Ok((g, Some(den)))
    }

    /// The surprise cache's contents before each query (see `ops::attention::surprise_select`):
    /// every token scored by the recurrent branch read out with its own key.
    fn surprise_cache(&self, qkv: &Qkv, rows: Rows, window: Window) -> Result<SurpriseCache> {
        let scores = self.surprise_scores_fresh(qkv, rows, None)?;
        let attention_dims = AttentionDims { batch: rows.batch, tokens: rows.tokens, shape: self.shape };
        let att = &self.host.options.attention;
        let (slots, repeats) = (att.surprise_keys, att.surprise_repeat_tolerance);
        surprise_select(&self.ctx, attention_dims, window, slots, repeats, &scores, &qkv.v)
    }

    /// The surprise of every token, `[B*T, hkv]`, over whole sequences from a fresh state: the
    /// recurrent branch read out with each token's own key. With `ones_state`, the recurrence
    /// over values of one leaves its final state there (decoding keeps it for the next scores).
    pub(super) fn surprise_scores_fresh(
        &self,
        qkv: &Qkv,
        rows: Rows,
        ones_state: Option<&mut GpuBuffer<f32>>,
    ) -> Result<GpuBuffer<f32>> {
        let ctx = &self.ctx;
        let att = &self.host.options.attention;
        let dims = MixerDims { batch: rows.batch, tokens: rows.tokens, shape: self.shape };
        let kq = keys_as_queries(ctx, self.shape, &qkv.k)?;
        let (mut n, mut den) = (GpuBuffer::<f32>::zeros(ctx, kq.len())?, GpuBuffer::<f32>::zeros(ctx, kq.len())?);
        mixer_chunk_forward_in_segments(
            ctx,
            &att.mixer,
            dims,
            &kq,
            &qkv.k,
            &qkv.v,
            &mut n,
            None,
            None,
            self.mixer_segments(),
        )?;
        let ones = self.ones(qkv.v.len())?;
        mixer_chunk_forward_in_segments(
            ctx,
            &att.mixer,
            dims,
            &kq,
            &qkv.k,
            &ones,
            &mut den,
            None,
            ones_state,
            self.mixer_segments(),
        )?;
        surprise_scores(ctx, self.shape, &n, &den, &qkv.v)
    }

    /// A buffer of `len` ones: the values of the normaliser's recurrence.
    pub(super) fn ones(&self, len: usize) -> Result<GpuBuffer<f32>> {
        let mut x = GpuBuffer::<f32>::zeros(&self.ctx, len)?;
        fill(&self.ctx, &mut x, 1.0)?;
        Ok(x)
    }

    pub(super) fn o_proj(
        &self,
        layer: usize,
        o: &GpuBuffer<f32>,
        n: usize,
        x: &mut GpuBuffer<f32>,
    ) -> Result<Option<GpuBuffer<f32>>> {
        self.o_proj_from(layer, o, None, n, x)
    }

    /// [`Self::o_proj`] given, where it was made on the way, o's copy `o_t` in `T`.
    pub(super) fn o_proj_from(
        &self,
        layer: usize,
        o: &GpuBuffer<f32>,
        o_t: Option<GpuBuffer<T>>,
        n: usize,
        x: &mut GpuBuffer<f32>,
    ) -> Result<Option<GpuBuffer<f32>>> {
        let c = self.config();
        let o_t = match o_t {
            Some(o_t) => o_t,
            None => scaled::<T>(&self.ctx, o, 1.0)?,
        };
        linear(&self.ctx, &o_t, &self.layer_weights(layer).wo, n, c.q_size(), c.hidden_size, x, true)?;
        drop(o_t);
        let lora = self.lora_guard()?;
        lora[layer][LoraTarget::O as usize].as_ref().map(|a| lora_forward(&self.ctx, a, o, n, x)).transpose()
    }

    /// `x += down(silu(gate(h2)) * up(h2))` with `h2 = norm(x)`; returns gate and up.
    pub(super) fn mlp(
        &self,
        layer: usize,
        x: &mut GpuBuffer<f32>,
        n: usize,
    ) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
        let ctx = &self.ctx;
        let c = self.config();
        let lw = self.layer_weights(layer);
        let (hs, f) = (c.hidden_size, c.intermediate_size);
        let (_, h2_t) = self.norm(x, &lw.ffn_norm)?;
        let mut gate = GpuBuffer::zeros(ctx, n * f)?;
        let mut up = GpuBuffer::zeros(ctx, n * f)?;
        linear(ctx, &h2_t, &lw.w_gate, n, hs, f, &mut gate, false)?;
        linear(ctx, &h2_t, &lw.w_up, n, hs, f, &mut up, false)?;
        let mut act_t = GpuBuffer::<T>::zeros(ctx, n * f)?;
        swiglu_forward_to(ctx, &gate, &up, &mut act_t)?;
        linear(ctx, &act_t, &lw.w_down, n, f, hs, x, true)?;
        Ok((gate, up))
    }

    /// Runs `layer` on `x` (`[n, hidden]`, updated in place) over whole sequences from
    /// position 0; with `keep`, returns what the backward pass needs.
    pub(super) fn layer_forward_fresh(
        &self,
        layer: usize,
        x: &mut GpuBuffer<f32>,
        rows: Rows,
        start: &GpuBuffer<u32>,
        keep: bool,
    ) -> Result<Option<LayerTape<T>>> {
        let n = rows.n();
        let (h, h_t) = self.norm(x, &self.layer_weights(layer).attn_norm)?;
        let qkv = self.project_qkv(layer, &h, &h_t, n)?;
        drop(h_t);
        let (o, o_t, softmax) = self.attention_fresh(layer, &qkv, rows, start)?;
        let saved_o = self.o_proj_from(layer, &o, o_t, n, x)?;
        let x_mid = if keep { Some(copy(&self.ctx, x)?) } else { None };
        let (gate, up) = self.mlp(layer, x, n)?;
        Ok(x_mid.map(|x_mid| LayerTape { h, qkv, softmax, o, saved_o, x_mid, gate, up }))
    }
}

/// A copy of `x` on the GPU.
pub(super) fn copy(ctx: &GpuContext, x: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    scaled::<f32>(ctx, x, 1.0)
}
