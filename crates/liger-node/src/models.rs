//! The two kinds of model JavaScript can hold: a base (softmax attention) model, or a Liger
//! model loaded from a checkpoint directory. Everything the addon asks of a model goes
//! through here, so the rest of the addon does not care which one it has.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use liger_core::checkpoint::{load_liger_checkpoint, read_liger_section};
use liger_core::convert::{model_info_json, LigerModel};
use liger_core::eval::ScoreModel;
use liger_core::generate::{generate, GenerateOptions, GenerateResult};
use liger_core::model::{load_model, BaseModel};
use liger_core::Result;
use serde_json::Value;

pub enum AnyModel {
    Base(BaseModel),
    Liger(LigerModel),
}

impl AnyModel {
    /// A directory whose config.json has a "liger" section is a Liger checkpoint; anything
    /// else (a .gguf file, a plain Hugging Face directory) is a base model.
    pub fn load(path: &Path, progress: &mut dyn FnMut(&str, f64)) -> Result<AnyModel> {
        if path.is_dir() && read_liger_section(path)?.is_some() {
            progress("loading Liger checkpoint", 0.0);
            let model = load_liger_checkpoint(path)?;
            progress("ready", 1.0);
            return Ok(AnyModel::Liger(model));
        }
        load_model(path, progress).map(AnyModel::Base)
    }

    /// The base model: its tokenizer, chat template and (for a Liger model) unchanged weights.
    pub fn base(&self) -> &BaseModel {
        match self {
            AnyModel::Base(m) => m,
            AnyModel::Liger(m) => &m.base,
        }
    }

    /// A copy of this model on GPU `index` to score with (frozen weights in bf16; a base model
    /// runs with every layer softmax). No usable GPU is DEVICE_UNAVAILABLE.
    pub fn upload_for_scoring(&self, index: usize) -> Result<Box<dyn ScoreModel + Send>> {
        let b = self.base();
        let base = BaseModel::new(
            b.config.clone(),
            b.weights.clone(),
            b.tokenizer.clone(),
            b.chat_template.clone(),
            b.name.clone(),
            b.format,
        );
        let host = match self {
            AnyModel::Base(_) => liger_cuda::model::all_softmax(base)?,
            AnyModel::Liger(m) => LigerModel { base, options: m.options.clone(), lora: m.lora.clone() },
        };
        let gpu = liger_cuda::model::upload_for_scoring(index, host)?;
        Ok(Box::new(gpu))
    }

    pub fn scorer(&self) -> &dyn ScoreModel {
        match self {
            AnyModel::Base(m) => m,
            AnyModel::Liger(m) => m,
        }
    }

    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self {
            AnyModel::Base(m) => m.last_logits(tokens),
            AnyModel::Liger(m) => m.last_logits(tokens),
        }
    }

    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<GenerateResult> {
        match self {
            AnyModel::Base(m) => generate(m, prompt, options, cancel, on_token),
            AnyModel::Liger(m) => generate(m, prompt, options, cancel, on_token),
        }
    }

    /// The base model's facts plus a `liger` entry: null for a base model; for a Liger model
    /// its mixer, window, softmax layers, adapters and decoding memory per sequence.
    pub fn info(&self) -> Result<Value> {
        let liger = match self {
            AnyModel::Base(_) => None,
            AnyModel::Liger(m) => Some(m),
        };
        model_info_json(self.base(), liger)
    }
}
