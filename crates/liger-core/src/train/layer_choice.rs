//! Which layers keep softmax attention when the job chooses them (`auto_softmax_layers`):
//! by the loss that converting each layer alone costs ([`LayerChoice::Loss`]), or by how often
//! the base model's heads in each layer retrieve one token from beyond the window
//! ([`LayerChoice::Retrieval`]). Either way the layers of largest measure are kept.

use super::data::Sequence;
use super::job::{EngineModel, JobEvent, LinearizeJob};
use super::trainer::evaluate;
use crate::convert::{linearize, LigerModel, LigerOptions, LoraOptions};
use crate::error::{Error, Result};
use crate::model::forward::{forward_observed, KvCache, Logits};
use crate::model::{load_model, BaseModel};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the automatic choice of softmax layers measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerChoice {
    /// The loss increase of converting the layer alone, untrained ([`layer_conversion_costs`]).
    #[default]
    Loss,
    /// How often the base model's heads in the layer retrieve beyond the window
    /// ([`layer_retrieval_rates`]).
    Retrieval,
}

/// An attention weight at least this large on one token is a retrieval of that token (rather
/// than attention spread over many).
pub const RETRIEVAL_WEIGHT: f32 = 0.2;

/// Whether a query at `position` with attention `weights` (over keys `0..=position`) retrieves
/// one token from beyond the window: a single weight of at least [`RETRIEVAL_WEIGHT`] on a
/// key at least `window` tokens back that is not one of the first `sinks` (the tokens heads
/// rest on, which a Liger layer keeps anyway).
pub fn retrieves_beyond_window(weights: &[f32], position: usize, window: usize, sinks: usize) -> bool {
    let end = (position + 1).saturating_sub(window).min(weights.len());
    weights.get(sinks.min(end)..end).is_some_and(|far| far.iter().any(|&w| w >= RETRIEVAL_WEIGHT))
}

/// Per layer, the fraction of (query head, query) pairs of the base model that retrieve one
/// token from beyond the window ([`retrieves_beyond_window`]), over the queries of `seqs` that
/// have such tokens to reach (`window + sinks` or more tokens in). Layers whose heads retrieve
/// often are the ones whose conversion loses recall (a passkey, a name seen long before);
/// diffuse attention, which the recurrent state approximates, does not count.
/// `on_sequence(i, n)` is called before sequence `i` of `n` (a full forward of the base model).
pub fn layer_retrieval_rates(
    base: &BaseModel,
    seqs: &[Sequence],
    window: usize,
    sinks: usize,
    on_sequence: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let cfg = &base.config;
    let (layers, heads) = (cfg.num_layers, cfg.num_heads);
    if window == 0 {
        return Err(Error::invalid_argument("the layer choice by retrieval needs a window of at least one key"));
    }
    let hits: Vec<AtomicU64> = (0..layers).map(|_| AtomicU64::new(0)).collect();
    let mut queries = 0u64;
    let inv_freq = cfg.rope_inv_freq();
    for (i, seq) in seqs.iter().enumerate() {
        on_sequence(i, seqs.len());
        let tokens = &seq.inputs[..seq.inputs.len().min(cfg.max_position_embeddings)];
        let first = window + sinks;
        if tokens.len() <= first {
            continue;
        }
        queries += (tokens.len() - first) as u64;
        let observe = |layer: usize, position: usize, _head: usize, weights: &[f32]| {
            if position >= first && retrieves_beyond_window(weights, position, window, sinks) {
                hits[layer].fetch_add(1, Ordering::Relaxed);
            }
        };
        let mut cache = KvCache::new(layers);
        forward_observed(cfg, &base.weights, &inv_freq, &mut cache, tokens, Logits::Last, Some(&observe))?;
    }
    if queries == 0 {
        return Err(Error::invalid_argument(format!(
            "the layer choice by retrieval needs text longer than the window and sinks ({} tokens): use longer sequences (--seq-len) or --select-data with long documents",
            window + sinks
        )));
    }
    Ok(hits.iter().map(|h| h.load(Ordering::Relaxed) as f64 / (queries * heads as u64) as f64).collect())
}

/// The loss increase (nats per token) of converting each layer alone, untrained and without
/// adapters, over the base model, on `seqs`, each model evaluated on the job's engine. The
/// base weights are read again for each layer (a converted model owns its weights).
pub(super) fn layer_conversion_costs<M: EngineModel>(
    job: &LinearizeJob,
    layers: usize,
    seqs: &[Sequence],
    on_event: &mut dyn FnMut(JobEvent),
    to_engine: &mut dyn FnMut(LigerModel) -> Result<M>,
) -> Result<Vec<f64>> {
    if seqs.is_empty() {
        return Err(Error::invalid_argument(
            "choosing softmax layers needs text to measure on: give training data or selection data",
        ));
    }
    let no_adapters = LoraOptions { targets: Vec::new(), ..job.lora.clone() };
    // The base model as the engine runs it (every layer softmax), so that each difference
    // compares like with like (the GPU engine computes in bf16).
    let all_softmax = LigerOptions { softmax_layers: (0..layers).collect(), ..job.options.clone() };
    let reference =
        to_engine(linearize(load_model(&job.model_path, &mut |_, _| {})?, all_softmax, no_adapters.clone())?)?;
    let base_loss = evaluate(seqs, &mut |i, l| reference.loss(i, l))?.loss;
    drop(reference);
    let mut costs = Vec::with_capacity(layers);
    for layer in 0..layers {
        on_event(JobEvent::Stage(format!("measuring the conversion of layer {} of {layers}", layer + 1)));
        let options =
            LigerOptions { softmax_layers: (0..layers).filter(|&l| l != layer).collect(), ..job.options.clone() };
        let fresh = load_model(&job.model_path, &mut |_, _| {})?;
        let model = to_engine(linearize(fresh, options, no_adapters.clone())?)?;
        let loss = evaluate(seqs, &mut |i, l| model.loss(i, l))?.loss;
        costs.push(loss - base_loss);
    }
    Ok(costs)
}

/// `fixed` plus the `n` other layers of largest cost, in layer order.
pub fn choose_softmax_layers(costs: &[f64], fixed: &[usize], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).filter(|l| !fixed.contains(l)).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]));
    let mut chosen: Vec<usize> = fixed.iter().copied().chain(order.into_iter().take(n)).collect();
    chosen.sort_unstable();
    chosen
}
