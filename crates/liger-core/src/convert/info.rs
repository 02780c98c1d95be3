//! The model's facts as the bindings hand them to JavaScript (the TypeScript `ModelInfo`):
//! one builder, so that the Node addon and the wasm engine report the same shape.

use super::model::LigerModel;
use crate::error::{Error, Result};
use crate::model::BaseModel;
use serde_json::{json, Value};

impl LigerModel {
    /// The `liger` entry of the model info: its mixer (with GSA's slots and query scale, null
    /// for the others), window, softmax layers, adapters and decoding memory per sequence.
    pub fn liger_info(&self) -> Value {
        let attention = &self.options.attention;
        let mixer = &attention.mixer;
        let gsa = mixer.kind == crate::liger::MixerKind::Gsa;
        json!({
            "mixer": mixer.kind.name(),
            "gsaSlots": gsa.then_some(mixer.gsa_slots),
            "gsaScale": gsa.then_some(mixer.gsa_scale.name()),
            "windowKeys": attention.window_keys,
            "sinkKeys": attention.sink_keys,
            "grmNorm": attention.grm_norm,
            "surpriseKeys": attention.surprise_keys,
            "surpriseRepeatTolerance": attention.surprise_repeat_tolerance,
            "useSwa": attention.use_swa,
            "alpha": attention.alpha,
            "beta": attention.beta,
            "softmaxLayers": self.options.softmax_layers,
            "loraParams": self.lora_params().iter().map(|(_, p)| p.len()).sum::<usize>(),
            "learnedHeadMix": !self.options.head_mix.is_empty(),
            "stateBytesPerSequence": self.state_bytes(),
        })
    }
}

/// The base model's facts plus a `liger` entry: null for a base model (`liger` None), else
/// [`LigerModel::liger_info`] (`base` is then its base).
pub fn model_info_json(base: &BaseModel, liger: Option<&LigerModel>) -> Result<Value> {
    let mut info = serde_json::to_value(base.info()).map_err(|e| Error::internal(format!("model info: {e}")))?;
    if let Value::Object(map) = &mut info {
        map.insert("liger".into(), liger.map_or(Value::Null, LigerModel::liger_info));
    }
    Ok(info)
}
