//! What a linearize run leaves beside its checkpoints: `report.json`, every number of the
//! [`LinearizeReport`] (the losses, the steps and validations over training, the decoding
//! memory). The page of charts, `report.html`, is drawn from it by the TypeScript API
//! (ts/src/report/html.ts), which writes it into the run folder after the run.

use super::job::LinearizeReport;
use crate::error::Result;
use crate::eval::report::write_json;
use serde::Serialize;
use std::path::Path;

/// One training step as it was reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
}

/// A validation during training.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEval {
    pub step: u64,
    pub loss: f64,
    pub ppl: f64,
}

/// The steps this run trained (not those of a run it resumed) and its validations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingHistory {
    pub steps: Vec<StepRecord>,
    pub evals: Vec<StepEval>,
}

/// Writes `report.json` into the run folder.
pub fn write_run_report(dir: &Path, report: &LinearizeReport) -> Result<()> {
    write_json(&dir.join("report.json"), report)
}
