//! What a resumed run needs besides the model: `trainer_state.json` (step, data position,
//! seed, config, loss history) and `optimizer.safetensors` (AdamW's moments, f32, exact).

use super::{trained_shapes, write_json, LIGER_FORMAT_VERSION};
use crate::convert::LigerModel;
use crate::error::{Error, Result};
use crate::hf::{write_safetensors, SafetensorsFile, SaveDtype};
use crate::nn::optim::AdamWState;
use crate::train::trainer::TrainerState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The training state saved with a checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct TrainingSnapshot<'a> {
    pub state: &'a TrainerState,
    pub optimizer: &'a AdamWState,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// AdamW's step count (its bias corrections depend on it).
    optimizer_step: u64,
    #[serde(flatten)]
    state: TrainerState,
}

pub(super) fn write(dir: &Path, model: &LigerModel, t: &TrainingSnapshot) -> Result<()> {
    let params = model.trained_params();
    if t.optimizer.m.len() != params.len() || t.optimizer.m.iter().zip(&params).any(|(m, p)| m.len() != p.1.len()) {
        return Err(Error::shape("the optimizer state does not match the model's trained parameters"));
    }
    let shapes = trained_shapes(model);
    let mut tensors: Vec<(String, Vec<usize>, SaveDtype, &[f32])> = Vec::new();
    for (kind, moments) in [("m", &t.optimizer.m), ("v", &t.optimizer.v)] {
        for (((name, _), shape), values) in params.iter().zip(&shapes).zip(moments) {
            tensors.push((format!("{kind}.{name}"), shape.clone(), SaveDtype::F32, values));
        }
    }
    write_safetensors(&dir.join(OPTIMIZER_FILE), &tensors, None)?;
    let file = StateFile { version: LIGER_FORMAT_VERSION, optimizer_step: t.optimizer.step, state: t.state.clone() };
    write_json(&dir.join(STATE_FILE), &file)
}

/// The training state saved in `dir` for `model`, or `None` when the checkpoint has none.
pub fn load_training_state(dir: &Path, model: &LigerModel) -> Result<Option<(TrainerState, AdamWState)>> {
    let dir = &super::run::resolve_checkpoint(dir)?;
    let state_path = dir.join(STATE_FILE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let shown = state_path.display().to_string();
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&shown, e))?;
    let file: StateFile = serde_json::from_str(&text)
        .map_err(|e| Error::invalid_file(&shown, format!("not a valid trainer state: {e}")))?;
    if file.version > LIGER_FORMAT_VERSION {
        return Err(Error::invalid_file(
            &shown,
            format!("made by a newer liger (format {}); upgrade liger to resume this run", file.version),
        ));
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    if !opt_path.is_file() {
        return Err(Error::invalid_file(
            dir.display(),
            "trainer_state.json is present but optimizer.safetensors is missing; the checkpoint cannot resume training",
        ));
    }
    let opt = SafetensorsFile::open(&opt_path)?;
    let mut moments: HashMap<&str, Vec<Vec<f32>>> = HashMap::new();
    let params = model.trained_params();
    for kind in ["m", "v"] {
        let mut list = Vec::with_capacity(params.len());
        for (name, values) in &params {
            let key = format!("{kind}.{name}");
            if !opt.contains(&key) {
                return Err(Error::invalid_file(
                    opt_path.display(),
                    format!("tensor \"{key}\" is missing; the optimizer state does not belong to these adapters"),
                ));
            }
            let (_, m) = opt.tensor_f32(&key)?;
            if m.len() != values.len() {
                return Err(Error::invalid_file(
                    opt_path.display(),
                    format!("tensor \"{key}\" has {} values, the adapter {}", m.len(), values.len()),
                ));
            }
            list.push(m);
        }
        moments.insert(kind, list);
    }
    let optimizer = AdamWState {
        step: file.optimizer_step,
        m: moments.remove("m").unwrap_or_default(),
        v: moments.remove("v").unwrap_or_default(),
    };
    Ok(Some((file.state, optimizer)))
}
