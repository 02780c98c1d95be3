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
use std::sync::Mutex;

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

/// A token that more of one head's queries than this put such a weight on is a place the head
/// rests (an early " the", a heading), not something it retrieves: a retrieval is specific
/// to the few queries that need the token.
pub const MAX_QUERIES_PER_RETRIEVED_TOKEN: u32 = 16;

/// The key that a query at `position` with attention `weights` (over keys `0..=position`)
/// retrieves from beyond the window, if any: the heaviest key at least `window` tokens back,
/// not one of the first `sinks` (which a Liger layer keeps anyway), when its weight is at
/// least [`RETRIEVAL_WEIGHT`].
pub fn far_retrieval(weights: &[f32], position: usize, window: usize, sinks: usize) -> Option<usize> {
    let end = (position + 1).saturating_sub(window).min(weights.len());
    let far = weights.get(sinks.min(end)..end)?;
    let (at, &w) = far.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    (w >= RETRIEVAL_WEIGHT).then_some(sinks + at)
}

/// Of one head's far retrievals in a sequence (the key each retrieving query took), how many
/// are retrievals: those of keys taken by at most [`MAX_QUERIES_PER_RETRIEVED_TOKEN`] queries.
pub fn specific_retrievals(keys: &[usize]) -> u64 {
    let mut per_key = std::collections::HashMap::<usize, u32>::new();
    keys.iter().for_each(|&k| *per_key.entry(k).or_default() += 1);
    per_key.values().filter(|&&n| n <= MAX_QUERIES_PER_RETRIEVED_TOKEN).map(|&n| u64::from(n)).sum()
}

/// Per layer, the fraction of (query head, query) pairs of the base model that retrieve one
/// token from beyond the window ([`far_retrieval`], [`specific_retrievals`]), over the queries
/// of `seqs` that have such tokens to reach (`window + sinks` or more tokens in). Layers whose
/// heads retrieve often are the ones whose conversion loses recall (a passkey, a name seen long
/// before); diffuse attention, which the recurrent state approximates, and tokens a head rests
/// on do not count. `on_sequence(i, n)` is called before sequence `i` of `n` (a full forward of
/// the base model).
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
    let mut hits = vec![0u64; layers];
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
        // The key each retrieving query took, per (layer, head).
        let taken: Vec<Mutex<Vec<usize>>> = (0..layers * heads).map(|_| Mutex::new(Vec::new())).collect();
        let observe = |layer: usize, position: usize, head: usize, weights: &[f32]| {
            if position < first {
                return;
            }
            if let Some(key) = far_retrieval(weights, position, window, sinks) {
                taken[layer * heads + head].lock().unwrap_or_else(|e| e.into_inner()).push(key);
            }
        };
        let mut cache = KvCache::new(layers);
        forward_observed(cfg, &base.weights, &inv_freq, &mut cache, tokens, Logits::Last, Some(&observe))?;
        for (at, keys) in taken.into_iter().enumerate() {
            hits[at / heads] += specific_retrievals(&keys.into_inner().unwrap_or_else(|e| e.into_inner()));
        }
    }
    if queries == 0 {
        return Err(Error::invalid_argument(format!(
            "the layer choice by retrieval needs text longer than the window and sinks ({} tokens): use longer sequences (--seq-len) or --select-data with long documents",
            window + sinks
        )));
    }
    Ok(hits.iter().map(|&h| h as f64 / (queries * heads as u64) as f64).collect())
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
