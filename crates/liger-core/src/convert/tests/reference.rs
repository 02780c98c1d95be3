//! The converted model in float64, written token by token from the definitions on top of the
//! `liger::naive` mixers: the oracle of the forward and gradient tests. Slow on purpose.

use super::super::{LigerModel, LoraTarget};
use crate::liger::{naive, HeadShape};

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// One f64 matrix `[rows, cols]`.
struct Mat {
    w: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn of(t: &crate::QTensor) -> Mat {
        Mat { w: f64s(&t.to_f32()), rows: t.rows, cols: t.cols }
    }
    /// `W x` for one vector.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows).map(|r| (0..self.cols).map(|c| self.w[r * self.cols + c] * x[c]).sum()).collect()
    }
}

struct Layer {
    attn_norm: Vec<f64>,
    ffn_norm: Vec<f64>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    biases: Option<[Vec<f64>; 3]>,
    qk_norms: Option<[Vec<f64>; 2]>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// The frozen weights in f64, made once; the LoRA parameters are passed to each call.
pub struct RefModel<'a> {
    model: &'a LigerModel,
    layers: Vec<Layer>,
    embed: Mat,
    head: Mat,
    final_norm: Vec<f64>,
}

/// One adapter in f64: `scale * B (A x)`.
struct RefLora<'p> {
    a: &'p [f64],
    b: &'p [f64],
    rank: usize,
    scale: f64,
}

impl RefLora<'_> {
    fn add(&self, x: &[f64], y: &mut [f64]) {
        let n = x.len();
        let u: Vec<f64> = (0..self.rank).map(|r| (0..n).map(|c| self.a[r * n + c] * x[c]).sum()).collect();
        for (o, yo) in y.iter_mut().enumerate() {
            *yo += self.scale * (0..self.rank).map(|r| self.b[o * self.rank + r] * u[r]).sum::<f64>();
        }
    }
}

fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(g).map(|(a, b)| a * inv * b).collect()
}

/// RoPE (rotate_half) of `[T, heads, d]`, token r at position r.
fn rope(x: &[f64], heads: usize, d: usize, inv_freq: &[f32]) -> Vec<f64> {
    let mut out = x.to_vec();
    for (r, token) in out.chunks_exact_mut(heads * d).enumerate() {
        for head in token.chunks_exact_mut(d) {
            for i in 0..d / 2 {
                let angle = r as f64 * inv_freq[i] as f64;
                let (a, b) = (head[i], head[i + d / 2]);
                head[i] = a * angle.cos() - b * angle.sin();
                head[i + d / 2] = b * angle.cos() + a * angle.sin();
            }
        }
    }
    out
}

impl<'a> RefModel<'a> {
    pub fn new(model: &'a LigerModel) -> Self {
        let w = &model.base.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| Layer {
                attn_norm: f64s(&l.attn_norm),
                ffn_norm: f64s(&l.ffn_norm),
                wq: Mat::of(&l.wq),
                wk: Mat::of(&l.wk),
                wv: Mat::of(&l.wv),
                wo: Mat::of(&l.wo),
                biases: l.bq.as_ref().map(|bq| [f64s(bq), f64s(l.bk.as_ref().unwrap()), f64s(l.bv.as_ref().unwrap())]),
                qk_norms: l.q_norm.as_ref().map(|qn| [f64s(qn), f64s(l.k_norm.as_ref().unwrap())]),
                gate: Mat::of(&l.w_gate),
                up: Mat::of(&l.w_up),
                down: Mat::of(&l.w_down),
            })
            .collect();
        RefModel {
            model,
            layers,
            embed: Mat::of(&w.embed),
            head: Mat::of(w.lm_head()),
            final_norm: f64s(&w.final_norm),
        }
    }

    /// The model's trained parameters in f64, in `trained_params` order (the adapters, then
    /// the learned branch weights).
    pub fn params(&self) -> Vec<Vec<f64>> {
        self.model.trained_params().iter().map(|(_, p)| f64s(p)).collect()
    }

    /// Layer `layer`'s learned branch weights (alpha, beta) within `params`, if it has them.
    fn head_mix<'p>(&self, params: &'p [Vec<f64>], layer: usize) -> Option<(&'p [f64], &'p [f64])> {
        let m = self.model;
        m.options.head_mix_of(layer)?;
        let before = m.options.head_mix[..layer].iter().flatten().count();
        let at = m.lora_params().len() + 2 * before;
        Some((&params[at], &params[at + 1]))
    }

    /// Logits `[T, vocab]` after each token, with LoRA parameters `params`.
    pub fn logits(&self, params: &[Vec<f64>], tokens: &[u32]) -> Vec<f64> {
        let c = &self.model.base.config;
        let xs = self.residual_stream(params, tokens, None);
        xs.iter().flat_map(|x| self.head.apply(&rms_norm(x, &self.final_norm, c.rms_norm_eps as f64))).collect()
    }

    /// The attention-transfer loss (see `convert/attention_transfer.rs`): on the base model's
    /// stream, per counted position, the mean over the Liger layers of the mean squared
    /// difference between each layer's Liger attention output and the base's softmax output.
    pub fn attention_transfer_loss(&self, params: &[Vec<f64>], tokens: &[u32], labels: &[u32]) -> f64 {
        let mut loss = 0.0;
        self.residual_stream(params, tokens, Some((labels, &mut loss)));
        loss
    }

    /// The residual stream after the last layer, with LoRA parameters `params`. With
    /// `transfer`, the stream is the base model's (softmax everywhere, no adapters) and each
    /// Liger layer's attention-transfer loss on the counted labels is added to the `f64`.
    fn residual_stream(
        &self,
        params: &[Vec<f64>],
        tokens: &[u32],
        mut transfer: Option<(&[u32], &mut f64)>,
    ) -> Vec<Vec<f64>> {
        let m = self.model;
        let c = &m.base.config;
        let eps = c.rms_norm_eps as f64;
        let (hs, hd) = (c.hidden_size, c.head_dim);
        let shape = HeadShape::new(c.num_heads, c.num_kv_heads, hd).unwrap();
        let liger_layers = (0..c.num_layers).filter(|&l| !m.options.is_softmax_layer(l)).count() as f64;
        let mut xs: Vec<Vec<f64>> =
            tokens.iter().map(|&id| self.embed.w[id as usize * hs..(id as usize + 1) * hs].to_vec()).collect();
        let mut next_param = params.iter();
        for (li, l) in self.layers.iter().enumerate() {
            // This layer's adapters, taking their parameters in lora_params order.
            let mut adapters: [Option<RefLora>; 4] = [None, None, None, None];
            for target in LoraTarget::ALL {
                if let Some(a) = m.lora.layers[li].get(target) {
                    let (pa, pb) = (next_param.next().unwrap(), next_param.next().unwrap());
                    adapters[target as usize] = Some(RefLora { a: pa, b: pb, rank: a.rank, scale: a.scale as f64 });
                }
            }
            let hs_in: Vec<Vec<f64>> = xs.iter().map(|x| rms_norm(x, &l.attn_norm, eps)).collect();
            let softmax = m.options.is_softmax_layer(li);
            let mix = self.head_mix(params, li);
            let o = match transfer.as_mut() {
                None => self.attention(l, &adapters, softmax, mix, &hs_in),
                Some((labels, loss)) => {
                    let base = self.attention(l, &[None, None, None, None], true, None, &hs_in);
                    if !softmax {
                        let o = self.attention(l, &adapters, false, mix, &hs_in);
                        let width = shape.hq * hd;
                        for (r, &label) in labels.iter().enumerate() {
                            if label == crate::nn::loss::IGNORE {
                                continue;
                            }
                            let span = r * width..(r + 1) * width;
                            let sq: f64 = o[span.clone()].iter().zip(&base[span]).map(|(a, b)| (a - b) * (a - b)).sum();
                            **loss += sq / width as f64 / liger_layers;
                        }
                    }
                    adapters = [None, None, None, None];
                    base
                }
            };
            for (r, x) in xs.iter_mut().enumerate() {
                let mut y = l.wo.apply(&o[r * shape.hq * hd..(r + 1) * shape.hq * hd]);
                if let Some(a) = &adapters[3] {
                    a.add(&o[r * shape.hq * hd..(r + 1) * shape.hq * hd], &mut y);
                }
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                let h2 = rms_norm(x, &l.ffn_norm, eps);
                let (g, u) = (l.gate.apply(&h2), l.up.apply(&h2));
                let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                x.iter_mut().zip(&l.down.apply(&act)).for_each(|(a, b)| *a += b);
            }
        }
        xs
    }

    /// One layer's attention output `[T, hq * d]` (before o_proj) from its normalised inputs:
    /// softmax attention, or the model's Liger attention, with these q, k, v adapters.
    fn attention(
        &self,
        l: &Layer,
        adapters: &[Option<RefLora>; 4],
        softmax: bool,
        mix: Option<(&[f64], &[f64])>,
        hs_in: &[Vec<f64>],
    ) -> Vec<f64> {
        let m = self.model;
        let c = &m.base.config;
        let eps = c.rms_norm_eps as f64;
        let hd = c.head_dim;
        let shape = HeadShape::new(c.num_heads, c.num_kv_heads, hd).unwrap();
        let inv_freq = c.rope_inv_freq();
        let att = &m.options.attention;
        let proj = |w: &Mat, lora: &Option<RefLora>, bias: Option<&Vec<f64>>, x: &[f64]| {
            let mut y = w.apply(x);
            if let Some(a) = lora {
                a.add(x, &mut y);
            }
            if let Some(b) = bias {
                y.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
            }
            y
        };
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for h in hs_in {
            let b = l.biases.as_ref();
            let mut qr = proj(&l.wq, &adapters[0], b.map(|b| &b[0]), h);
            let mut kr = proj(&l.wk, &adapters[1], b.map(|b| &b[1]), h);
            if let Some([qn, kn]) = &l.qk_norms {
                qr = qr.chunks(hd).flat_map(|x| rms_norm(x, qn, eps)).collect();
                kr = kr.chunks(hd).flat_map(|x| rms_norm(x, kn, eps)).collect();
            }
            q.extend(qr);
            k.extend(kr);
            v.extend(proj(&l.wv, &adapters[2], b.map(|b| &b[2]), h));
        }
        let (qr, kr) = (rope(&q, shape.hq, hd, &inv_freq), rope(&k, shape.hkv, hd, &inv_freq));
        if softmax {
            return naive::attention_forward(shape, usize::MAX, &qr, &kr, &v);
        }
        let (grm, _) = naive::mixer_forward(&att.mixer, shape, &q, &k, &v, None);
        // Element i of `[T, hq, D]` belongs to query head (i / D) % hq.
        let head = |i: usize| (i / hd) % shape.hq;
        let alpha = |i: usize| mix.map_or(att.alpha as f64, |(a, _)| a[head(i)]);
        let beta = |i: usize| mix.map_or(att.beta as f64, |(_, b)| b[head(i)]);
        let mut o: Vec<f64> = grm.iter().enumerate().map(|(i, x)| x * alpha(i)).collect();
        if att.use_swa {
            let swa = naive::attention_forward(shape, att.window(), &qr, &kr, &v);
            o.iter_mut().enumerate().zip(&swa).for_each(|((i, a), b)| *a += beta(i) * b);
        }
        o
    }

    /// Summed cross-entropy of `labels` (`IGNORE` positions skipped).
    pub fn loss(&self, params: &[Vec<f64>], tokens: &[u32], labels: &[u32]) -> f64 {
        let vocab = self.model.base.config.vocab_size;
        let logits = self.logits(params, tokens);
        let mut loss = 0.0;
        for (row, &label) in logits.chunks_exact(vocab).zip(labels) {
            if label == crate::nn::loss::IGNORE {
                continue;
            }
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - row[label as usize];
        }
        loss
    }
}
