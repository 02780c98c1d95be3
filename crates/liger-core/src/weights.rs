//! The base model's weights, in the layout of Hugging Face Llama checkpoints:
//! matrices are `[out, in]`, q/k rows in Hugging Face order (RoPE rotates the two halves
//! of each head, "rotate_half"). The GGUF loader undoes llama.cpp's q/k row permutation.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::QTensor;

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: QTensor,
    pub wk: QTensor,
    pub wv: QTensor,
    pub wo: QTensor,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QTensor,
    pub w_up: QTensor,
    pub w_down: QTensor,
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// `[vocab, hidden]`.
    pub embed: QTensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<QTensor>,
}

impl ModelWeights {
    pub fn lm_head(&self) -> &QTensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        let mut n = self.embed.numel() + self.final_norm.len() + self.lm_head.as_ref().map_or(0, |t| t.numel());
        for l in &self.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|t| t.numel()).sum::<usize>();
            n += [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm]
                .iter()
                .map(|b| b.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
        }
        n
    }

    /// Bytes the weights occupy as stored.
    pub fn num_bytes(&self) -> usize {
        let t = |t: &QTensor| t.data.len();
        let v = |v: &Vec<f32>| v.len() * 4;
        let o = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, |v| v.len() * 4);
        let mut n = t(&self.embed) + v(&self.final_norm) + self.lm_head.as_ref().map_or(0, t);
        for l in &self.layers {
            n += v(&l.attn_norm) + v(&l.ffn_norm);
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|x| t(x)).sum::<usize>();
            n += o(&l.bq) + o(&l.bk) + o(&l.bv) + o(&l.q_norm) + o(&l.k_norm);
        }
        n
    }

    /// Checks that every weight is a finite number (as llama.cpp's `--check-tensors`): a NaN
    /// or infinity in a file would otherwise give garbage output without any error. Every
    /// tensor is decoded once, rows in parallel.
    pub fn check_finite(&self) -> Result<()> {
        use rayon::prelude::*;
        let bad = |name: &str, row: Option<usize>| {
            let at = row.map_or(String::new(), |r| format!(" (row {r})"));
            Err(Error::invalid_file(
                name,
                format!("holds NaN or infinite values{at}: the model file is corrupt; download it again"),
            ))
        };
        let matrix = |name: &str, t: &QTensor| -> Result<()> {
            let row = (0..t.rows).into_par_iter().find_any(|&r| {
                let mut buf = vec![0.0f32; t.cols];
                t.dequantize_row(r, &mut buf);
                buf.iter().any(|v| !v.is_finite())
            });
            match row {
                Some(r) => bad(name, Some(r)),
                None => Ok(()),
            }
        };
        let vector = |name: &str, v: &[f32]| if v.iter().all(|x| x.is_finite()) { Ok(()) } else { bad(name, None) };
        matrix("embed", &self.embed)?;
        vector("final_norm", &self.final_norm)?;
        if let Some(h) = &self.lm_head {
            matrix("lm_head", h)?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("layer {i} {s}");
            vector(&n("attn_norm"), &l.attn_norm)?;
            vector(&n("ffn_norm"), &l.ffn_norm)?;
            for (name, t) in [
                ("q_proj", &l.wq),
                ("k_proj", &l.wk),
                ("v_proj", &l.wv),
                ("o_proj", &l.wo),
                ("gate_proj", &l.w_gate),
                ("up_proj", &l.w_up),
                ("down_proj", &l.w_down),
            ] {
                matrix(&n(name), t)?;
            }
            for (name, v) in [
                ("q_proj.bias", &l.bq),
                ("k_proj.bias", &l.bk),
                ("v_proj.bias", &l.bv),
                ("q_norm", &l.q_norm),
                ("k_norm", &l.k_norm),
            ] {
                if let Some(v) = v {
                    vector(&n(name), v)?;
                }
            }
        }
        Ok(())
    }

    /// Whether both hold the same values, bit for bit, whatever their storage types (a
    /// quantized matrix and its exact f32 decoding are the same). Rows decode in parallel.
    pub fn same_values(&self, other: &ModelWeights) -> bool {
        use rayon::prelude::*;
        let matrix = |a: &QTensor, b: &QTensor| {
            (a.rows, a.cols) == (b.rows, b.cols)
                && (0..a.rows).into_par_iter().all(|r| {
                    let (mut x, mut y) = (vec![0.0f32; a.cols], vec![0.0f32; a.cols]);
                    a.dequantize_row(r, &mut x);
                    b.dequantize_row(r, &mut y);
                    x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits())
                })
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let vector = |a: &[f32], b: &[f32]| bits(a) == bits(b);
        let optional = |a: &Option<Vec<f32>>, b: &Option<Vec<f32>>| match (a, b) {
            (Some(a), Some(b)) => vector(a, b),
            (None, None) => true,
            _ => false,
        };
        self.layers.len() == other.layers.len()
            && matrix(&self.embed, &other.embed)
            && matrix(self.lm_head(), other.lm_head())
            && vector(&self.final_norm, &other.final_norm)
            && self.layers.iter().zip(&other.layers).all(|(a, b)| {
                vector(&a.attn_norm, &b.attn_norm)
                    && vector(&a.ffn_norm, &b.ffn_norm)
                    && [
                        (&a.wq, &b.wq),
                        (&a.wk, &b.wk),
                        (&a.wv, &b.wv),
                        (&a.wo, &b.wo),
                        (&a.w_gate, &b.w_gate),
                        (&a.w_up, &b.w_up),
                        (&a.w_down, &b.w_down),
                    ]
                    .into_iter()
                    .all(|(x, y)| matrix(x, y))
                    && [(&a.bq, &b.bq), (&a.bk, &b.bk), (&a.bv, &b.bv), (&a.q_norm, &b.q_norm), (&a.k_norm, &b.k_norm)]
                        .into_iter()
                        .all(|(x, y)| optional(x, y))
            })
    }

    /// Checks every shape against the config; loaders call this so that a mismatched file
    /// fails at load time with the tensor's name, not later inside a matrix product.
    pub fn validate(&self, c: &ModelConfig) -> Result<()> {
        fn mat(name: &str, t: &QTensor, rows: usize, cols: usize) -> Result<()> {
            if t.rows != rows || t.cols != cols {
                return Err(Error::shape(format!("{name}: expected [{rows}, {cols}], found [{}, {}]", t.rows, t.cols)));
            }
            Ok(())
        }
        fn vec(name: &str, v: &[f32], n: usize) -> Result<()> {
            if v.len() != n {
                return Err(Error::shape(format!("{name}: expected {n} values, found {}", v.len())));
            }
            Ok(())
        }
        fn opt(name: &str, v: &Option<Vec<f32>>, n: usize, required: bool) -> Result<()> {
            match (v, required) {
                (Some(v), true) => vec(name, v, n),
                (None, true) => Err(Error::shape(format!("{name}: missing"))),
                (Some(_), false) => Err(Error::shape(format!("{name}: present but the config does not use it"))),
                (None, false) => Ok(()),
            }
        }
        if self.layers.len() != c.num_layers {
            return Err(Error::shape(format!("expected {} layers, found {}", c.num_layers, self.layers.len())));
        }
        mat("embed", &self.embed, c.vocab_size, c.hidden_size)?;
        vec("final_norm", &self.final_norm, c.hidden_size)?;
        if let Some(h) = &self.lm_head {
            mat("lm_head", h, c.vocab_size, c.hidden_size)?;
        }
        let (h, q, kv, f, hd) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size, c.head_dim);
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("layer {i} {s}");
            vec(&n("attn_norm"), &l.attn_norm, h)?;
            vec(&n("ffn_norm"), &l.ffn_norm, h)?;
            mat(&n("q_proj"), &l.wq, q, h)?;
            mat(&n("k_proj"), &l.wk, kv, h)?;
            mat(&n("v_proj"), &l.wv, kv, h)?;
            mat(&n("o_proj"), &l.wo, h, q)?;
            mat(&n("gate_proj"), &l.w_gate, f, h)?;
            mat(&n("up_proj"), &l.w_up, f, h)?;
            mat(&n("down_proj"), &l.w_down, h, f)?;
            opt(&n("q_proj.bias"), &l.bq, q, c.attention_bias)?;
            opt(&n("k_proj.bias"), &l.bk, kv, c.attention_bias)?;
            opt(&n("v_proj.bias"), &l.bv, kv, c.attention_bias)?;
            opt(&n("q_norm"), &l.q_norm, hd, c.qk_norm)?;
            opt(&n("k_norm"), &l.k_norm, hd, c.qk_norm)?;
        }
        Ok(())
    }
}
