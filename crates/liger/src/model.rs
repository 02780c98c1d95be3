//! The two kinds of model a user can hold: a base (softmax attention) model, or a Liger model
//! loaded from a checkpoint directory, each optionally with a copy on a GPU that generates.
//! Everything the jobs and the bindings ask of a model goes through here, so that they do not
//! care which one they have or where it runs.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use liger_core::checkpoint::{load_liger_checkpoint, read_liger_section};
use liger_core::convert::{model_info_json, LigerModel};
use liger_core::eval::ScoreModel;
use liger_core::generate::{generate, CausalLm, GenerateOptions, GenerateResult};
use liger_core::model::{load_model, BaseModel};
use liger_core::{Error, Result};
use serde_json::Value;

use crate::Device;

pub struct Model {
    weights: Weights,
    /// Where generation runs; `Some` holds the GPU copy (see [`Model::load_on`]).
    gpu: Option<DeviceCopy>,
    device: Device,
}

enum Weights {
    Base(BaseModel),
    Liger(LigerModel),
}

/// Generation on an engine other than the CPU's, whatever its model type.
trait Generate {
    fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<GenerateResult>;
}

impl<M: CausalLm> Generate for M {
    fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<GenerateResult> {
        generate(self, prompt, options, cancel, on_token)
    }
}

/// A model's copy on a GPU. One generation runs on it at a time: its decoding state and CUDA
/// graphs belong to one sequence.
type DeviceCopy = Mutex<Box<dyn Generate + Send>>;

impl Model {
    /// A directory whose config.json has a "liger" section is a Liger checkpoint; anything
    /// else (a .gguf file, a plain Hugging Face directory) is a base model.
    pub fn load(path: &Path, progress: &mut dyn FnMut(&str, f64)) -> Result<Model> {
        let weights = if path.is_dir() && read_liger_section(path)?.is_some() {
            progress("loading Liger checkpoint", 0.0);
            let model = load_liger_checkpoint(path)?;
            progress("ready", 1.0);
            Weights::Liger(model)
        } else {
            Weights::Base(load_model(path, progress)?)
        };
        Ok(Model { weights, gpu: None, device: Device::Cpu })
    }

    /// [`Model::load`], then on a GPU a copy of the model that generates there (frozen weights
    /// in bf16; a base model runs every layer as softmax attention). Tokenizing, chat
    /// templates and `last_logits` stay on the CPU. No usable GPU is DEVICE_UNAVAILABLE.
    pub fn load_on(path: &Path, device: Device, progress: &mut dyn FnMut(&str, f64)) -> Result<Model> {
        let mut model = Model::load(path, progress)?;
        if let Device::Cuda(index) = device {
            progress("uploading to the GPU", 0.0);
            model.gpu = Some(Mutex::new(model.gpu_copy_for_generation(index)?));
            model.device = device;
            progress("ready", 1.0);
        }
        Ok(model)
    }

    /// Where [`Model::generate`] runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The base model: its tokenizer, chat template and (for a Liger model) unchanged weights.
    pub fn base(&self) -> &BaseModel {
        match &self.weights {
            Weights::Base(m) => m,
            Weights::Liger(m) => &m.base,
        }
    }

    /// The model scoring runs on, on the CPU.
    pub fn scorer(&self) -> &dyn ScoreModel {
        match &self.weights {
            Weights::Base(m) => m,
            Weights::Liger(m) => m,
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
        Ok(Box::new(self.gpu_copy(index)?))
    }

    #[cfg(feature = "cuda")]
    fn gpu_copy_for_generation(&self, index: usize) -> Result<Box<dyn Generate + Send>> {
        Ok(Box::new(self.gpu_copy(index)?))
    }

    /// The model uploaded to GPU `index` (a base model as every layer softmax).
    #[cfg(feature = "cuda")]
    fn gpu_copy(&self, index: usize) -> Result<liger_cuda::GpuLigerModel<half::bf16>> {
        let b = self.base();
        let base = BaseModel::new(
            b.config.clone(),
            b.weights.clone(),
            b.tokenizer.clone(),
            b.chat_template.clone(),
            b.name.clone(),
            b.format,
        );
        let host = match &self.weights {
            Weights::Base(_) => liger_cuda::model::all_softmax(base)?,
            Weights::Liger(m) => LigerModel { base, options: m.options.clone(), lora: m.lora.clone() },
        };
        liger_cuda::model::upload_for_scoring(index, host)
    }

    #[cfg(not(feature = "cuda"))]
    fn upload_to_gpu(&self, _index: usize) -> Result<Box<dyn ScoreModel + Send>> {
        Err(crate::device::no_cuda_engine())
    }

    #[cfg(not(feature = "cuda"))]
    fn gpu_copy_for_generation(&self, _index: usize) -> Result<Box<dyn Generate + Send>> {
        Err(crate::device::no_cuda_engine())
    }

    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        match &self.weights {
            Weights::Base(m) => m.last_logits(tokens),
            Weights::Liger(m) => m.last_logits(tokens),
        }
    }

    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &str),
    ) -> Result<GenerateResult> {
        if let Some(gpu) = &self.gpu {
            let gpu = gpu.lock().map_err(|_| Error::internal("the GPU copy's lock is poisoned"))?;
            return gpu.generate(prompt, options, cancel, on_token);
        }
        match &self.weights {
            Weights::Base(m) => generate(m, prompt, options, cancel, on_token),
            Weights::Liger(m) => generate(m, prompt, options, cancel, on_token),
        }
    }

    /// The base model's facts plus a `liger` entry: null for a base model; for a Liger model
    /// its mixer, window, softmax layers, adapters and decoding memory per sequence.
    pub fn info(&self) -> Result<Value> {
        let liger = match &self.weights {
            Weights::Base(_) => None,
            Weights::Liger(m) => Some(m),
        };
        let mut info = model_info_json(self.base(), liger)?;
        if let Value::Object(fields) = &mut info {
            fields.insert("device".into(), Value::String(self.device.to_string()));
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::testing::default_model_path;
    #[cfg(not(feature = "cuda"))]
    use liger_core::ErrorCode;

    #[test]
    fn a_model_says_where_it_generates_and_a_missing_gpu_is_device_unavailable() {
        let path = default_model_path();
        if !path.exists() {
            eprintln!("skipped: the default model is not at {}", path.display());
            return;
        }
        let model = Model::load_on(&path, Device::Cpu, &mut |_, _| {}).unwrap();
        assert_eq!(model.device(), Device::Cpu);
        assert_eq!(model.info().unwrap()["device"], "cpu");
        #[cfg(not(feature = "cuda"))]
        {
            let err = Model::load_on(&path, Device::Cuda(0), &mut |_, _| {}).err().unwrap();
            assert_eq!(err.code, ErrorCode::DeviceUnavailable, "{}", err.message);
        }
    }
}
