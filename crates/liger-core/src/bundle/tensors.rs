//! The model's weights as a flat list of named tensors (what a bundle stores) and back, and
//! the edge quantisation of each matrix.

use super::EdgeQuant;
use crate::error::{Error, Result};
use crate::quant::quantize;
use crate::tensor::{GgmlType, QTensor};
use crate::weights::{LayerWeights, ModelWeights};

/// One stored tensor: a weight matrix, or a vector (norm weights, biases) kept as f32.
pub(super) enum Named<'a> {
    Matrix(&'a QTensor),
    Vector(&'a [f32]),
}

/// Every tensor of `w` with its bundle name, in a fixed order.
pub(super) fn named_tensors(w: &ModelWeights) -> Vec<(String, Named<'_>)> {
    let mut out = vec![("embed".to_string(), Named::Matrix(&w.embed))];
    if let Some(h) = &w.lm_head {
        out.push(("lm_head".into(), Named::Matrix(h)));
    }
    out.push(("final_norm".into(), Named::Vector(&w.final_norm)));
    for (i, l) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("layers.{i}.{s}");
        for (name, t) in [
            ("wq", &l.wq),
            ("wk", &l.wk),
            ("wv", &l.wv),
            ("wo", &l.wo),
            ("w_gate", &l.w_gate),
            ("w_up", &l.w_up),
            ("w_down", &l.w_down),
        ] {
            out.push((n(name), Named::Matrix(t)));
        }
        out.push((n("attn_norm"), Named::Vector(&l.attn_norm)));
        out.push((n("ffn_norm"), Named::Vector(&l.ffn_norm)));
        for (name, v) in [("bq", &l.bq), ("bk", &l.bk), ("bv", &l.bv), ("q_norm", &l.q_norm), ("k_norm", &l.k_norm)] {
            if let Some(v) = v {
                out.push((n(name), Named::Vector(v)));
            }
        }
    }
    out
}

/// The storage type the matrix `name` of `cols` columns gets under `quant`. 4-bit blocks need
/// rows that are whole blocks of 32; other rows fall back to int8, as do the embeddings and
/// output head under `Q4_1`.
pub(super) fn edge_type(quant: EdgeQuant, name: &str, cols: usize) -> GgmlType {
    let whole_blocks = cols.is_multiple_of(32);
    match quant {
        EdgeQuant::F32 => GgmlType::F32,
        EdgeQuant::Int8 => GgmlType::I8Row,
        EdgeQuant::Q4 if whole_blocks => GgmlType::Q4_0,
        EdgeQuant::Q4_1 if whole_blocks && name != "embed" && name != "lm_head" => GgmlType::Q4_1,
        EdgeQuant::Q4 | EdgeQuant::Q4_1 => GgmlType::I8Row,
    }
}

/// The stored bytes of `t` as `ty`, quantized row by row from its f32 values.
pub(super) fn quantize_matrix(t: &QTensor, ty: GgmlType) -> Result<Vec<u8>> {
    let values = t.to_f32();
    let mut out = Vec::with_capacity(t.rows * ty.bytes_for(t.cols)?);
    for row in values.chunks_exact(t.cols.max(1)) {
        out.extend_from_slice(&quantize(ty, row)?);
    }
    Ok(out)
}

/// Looks tensors up by name while the weights are put back together.
pub(super) struct TensorSource<'a> {
    pub get: &'a dyn Fn(&str) -> Result<Option<QTensor>>,
}

impl TensorSource<'_> {
    fn matrix(&self, name: &str) -> Result<QTensor> {
        (self.get)(name)?.ok_or_else(|| missing(name))
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.optional_vector(name)?.ok_or_else(|| missing(name))
    }
    fn optional_vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok((self.get)(name)?.map(|t| t.to_f32().into_owned()))
    }
}

fn missing(name: &str) -> Error {
    Error::shape(format!("tensor \"{name}\" is missing from the bundle"))
}

/// The model's weights from the named tensors of a bundle (matrices keep their bytes in place).
pub(super) fn assemble_weights(src: &TensorSource, num_layers: usize) -> Result<ModelWeights> {
    let layers = (0..num_layers)
        .map(|i| {
            let n = |s: &str| format!("layers.{i}.{s}");
            Ok(LayerWeights {
                attn_norm: src.vector(&n("attn_norm"))?,
                wq: src.matrix(&n("wq"))?,
                wk: src.matrix(&n("wk"))?,
                wv: src.matrix(&n("wv"))?,
                wo: src.matrix(&n("wo"))?,
                bq: src.optional_vector(&n("bq"))?,
                bk: src.optional_vector(&n("bk"))?,
                bv: src.optional_vector(&n("bv"))?,
                q_norm: src.optional_vector(&n("q_norm"))?,
                k_norm: src.optional_vector(&n("k_norm"))?,
                ffn_norm: src.vector(&n("ffn_norm"))?,
                w_gate: src.matrix(&n("w_gate"))?,
                w_up: src.matrix(&n("w_up"))?,
                w_down: src.matrix(&n("w_down"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelWeights {
        embed: src.matrix("embed")?,
        layers,
        final_norm: src.vector("final_norm")?,
        lm_head: (src.get)("lm_head")?,
    })
}

/// Bytes of a vector stored as a `1 x n` f32 tensor.
pub(super) fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
