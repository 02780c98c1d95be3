//! The two kinds of model a user can hold: a base (softmax attention) model, or a Liger model
//! loaded from a checkpoint directory. Everything the jobs and the bindings ask of a model goes
//! through here, so that they do not care which one they have.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use liger_core::checkpoint::{load_liger_checkpoint, read_liger_section};
use liger_core::convert::{model_info_json, LigerModel};
use liger_core::eval::ScoreModel;
use liger_core::generate::{generate, GenerateOptions, GenerateResult};
use liger_core::model::{load_model, BaseModel};
use liger_core::Result;
use serde_json::Value;

use crate::Device;

pub enum Model {
    Base(BaseModel),
    Liger(LigerModel),
}

impl Model {
    /// A directory whose config.json has a "liger" section is a Liger checkpoint; anything
    /// else (a .gguf file, a plain Hugging Face directory) is a base model.
    pub fn load(path: &Path, progress: &mut dyn FnMut(&str, f64)) -> Result<Model> {
        if path.is_dir() && read_liger_section(path)?.is_some() {
            progress("loading Liger checkpoint", 0.0);
            let model = load_liger_checkpoint(path)?;
            progress("ready", 1.0);
            return Ok(Model::Liger(model));
        }
        load_model(path, progress).map(Model::Base)
    }

    /// The base model: its tokenizer, chat template and (for a Liger model) unchanged weights.
    pub fn base(&self) -> &BaseModel {
        match self {
            Model::Base(m) => m,
            Model::Liger(m) => &m.base,
        }
    }

    /// The model scoring runs on, on the CPU.
    pub fn scorer(&self) -> &dyn ScoreModel {
        match self {
            Model::Base(m) => m,
            Model::Liger(m) => m,
        }
    }

    /// A copy of this model to score with on `device`: `None` for the CPU (score with
    /// [`Model::scorer`]); on a GPU, frozen weights in bf16, and a base model runs with every
    /// layer softmax. No usable GPU is DEVICE_UNAVAILABLE.
    pub fn upload_for_scoring(&self, device: Device) -> Result<Option<Box<dyn ScoreModel + Send>>> {
        match device {
            Device::Cpu => Ok(None),
            Device::Cuda(index) => self.upload_to_gpu(index).map(Some),
        }
    }

    #[cfg(feature = "cuda")]
    fn upload_to_gpu(&self, index: usize) -> Result<Box<dyn ScoreModel + Send>> {
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
            Model::Base(_) => liger_cuda::model::all_softmax(base)?,
            Model::Liger(m) => LigerModel { base, options: m.options.clone(), lora: m.lora.clone() },
        };
        Ok(Box::new(liger_cuda::model::upload_for_scoring(index, host)?))
    }

    #[cfg(not(feature = "cuda"))]
    fn upload_to_gpu(&self, _index: usize) -> Result<Box<dyn ScoreModel + Send>> {
        Err(crate::device::no_cuda_engine())
    }

    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self {
            Model::Base(m) => m.last_logits(tokens),
            Model::Liger(m) => m.last_logits(tokens),
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
            Model::Base(m) => generate(m, prompt, options, cancel, on_token),
            Model::Liger(m) => generate(m, prompt, options, cancel, on_token),
        }
    }

    /// The base model's facts plus a `liger` entry: null for a base model; for a Liger model
    /// its mixer, window, softmax layers, adapters and decoding memory per sequence.
    pub fn info(&self) -> Result<Value> {
        let liger = match self {
            Model::Base(_) => None,
            Model::Liger(m) => Some(m),
        };
        model_info_json(self.base(), liger)
    }
}
