//! Attention transfer (LoLCATs, arXiv 2410.10254; Lizard): a training stage before the
//! language-model loss in which each layer's Liger attention learns to give the output of the
//! base model's softmax attention on the same input.
//!
//! Every layer reads the base model's own residual stream (softmax attention everywhere, no
//! adapters), so the layers train independently and no gradient crosses a layer: the loss of
//! a counted position is the mean over the Liger layers of the mean squared difference
//! between the two attention outputs (before o_proj), and only the q, k, v adapters receive
//! gradients. Softmax layers of a hybrid give the stream and take no loss.

use super::backward::LoraGrads;
use super::model::{project_qkv, softmax_attention, LayerLora, LigerModel};
use super::state::AttentionCache;
use crate::error::{Error, Result};
use crate::liger::{liger_attention_backward, liger_attention_forward, LigerLayerState};
use crate::linalg::matmul_wt;
use crate::model::forward::embed;
use crate::nn::loss::{attention_transfer_rows, LossOutput, IGNORE};
use crate::nn::rms_norm::rms_norm;

impl LigerModel {
    /// How many layers run Liger attention: the layers attention transfer trains. A model
    /// with none is an error (nothing to transfer).
    pub fn attention_transfer_layers(&self) -> Result<usize> {
        let c = &self.base.config;
        match (0..c.num_layers).filter(|&l| !self.options.is_softmax_layer(l)).count() {
            0 => Err(Error::invalid_argument(
                "every layer keeps softmax attention, so attention transfer has nothing to train; leave it out or convert some layers",
            )),
            n => Ok(n),
        }
    }

    /// The attention-transfer loss of one sequence (summed over its counted positions, those
    /// whose label is not `IGNORE`), and `grads += grad_scale · d(loss_sum)/d(LoRA)`.
    pub fn attention_transfer_backward(
        &self,
        inputs: &[u32],
        labels: &[u32],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        self.check_labels(inputs, labels)?;
        self.check()?;
        self.check_grads(grads)?;
        let weight = 1.0 / self.attention_transfer_layers()? as f32;
        let c = &self.base.config;
        let (t, qs) = (inputs.len(), c.q_size());
        let shape = self.head_shape()?;
        let inv_freq = c.rope_inv_freq();
        let no_adapters = LayerLora::default();
        // Gathered apart and added at the end: a non-finite loss leaves `grads` untouched.
        let mut own = self.new_lora_grads();
        let mut loss_sum = 0.0f64;
        let mut x = embed(c, &self.base.weights, inputs)?;
        for layer in 0..c.num_layers {
            let lw = &self.base.weights.layers[layer];
            let mut h = vec![0.0f32; x.len()];
            rms_norm(&x, &lw.attn_norm, c.rms_norm_eps, &mut h);
            let base = project_qkv(c, lw, &no_adapters, &h, t);
            let target = softmax_attention(shape, &base, &inv_freq, &mut AttentionCache::default())?;
            if !self.options.is_softmax_layer(layer) {
                let att = &self.options.attention;
                let p = project_qkv(c, lw, &self.lora.layers[layer], &h, t);
                let mut state = LigerLayerState::new(att, shape)?;
                // Learned branch weights are used as they are: this stage trains the adapters.
                let mix = self.options.head_mix_of(layer);
                let o = liger_attention_forward(att, mix, shape, &p.q, &p.k, &p.v, &inv_freq, &mut state)?;
                let mut d_o = vec![0.0f32; t * qs];
                loss_sum += attention_transfer_rows(&o, &target, labels, qs, weight, grad_scale, &mut d_o);
                let qkv = liger_attention_backward(att, mix, shape, &p.q, &p.k, &p.v, &inv_freq, &d_o)?;
                // The input gradient stops here: the next layer reads the base's stream.
                let mut dh = vec![0.0f32; t * c.hidden_size];
                self.projections_backward(layer, &h, &p, qkv, t, &mut own.layers[layer], &mut dh);
            }
            // The base model's own layer moves the stream on.
            let mut y = vec![0.0f32; t * c.hidden_size];
            matmul_wt(&lw.wo, &target, t, &mut y);
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            self.mlp_forward(layer, &mut x, t);
        }
        if !loss_sum.is_finite() {
            return Err(Error::new(
                crate::error::ErrorCode::NonFiniteLoss,
                "the attention-transfer loss is not finite; lower the learning rate or check the data",
            ));
        }
        for (sum, part) in grads.as_mut_slices().into_iter().zip(own.as_slices()) {
            sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        Ok(LossOutput { loss_sum, count: labels.iter().filter(|&&l| l != IGNORE).count() })
    }
}
