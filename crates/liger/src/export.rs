//! Export of a Liger checkpoint to other formats: `hf`, the reference implementation's
//! `liger_gla` directory (adapters merged), which its `transformers` modeling code loads as is.

use std::path::Path;

use liger_core::checkpoint::{export_reference_hf, load_liger_checkpoint, read_liger_section, ExportOptions};
use liger_core::hf::SaveDtype;
use liger_core::{Error, Result};

/// The formats `export` writes.
pub const EXPORT_FORMATS: [&str; 1] = ["hf"];

/// What to export and how.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// "hf": the reference's `liger_gla` Hugging Face directory.
    pub format: String,
    /// "f32" (exact), "bf16" or "f16".
    pub dtype: String,
    /// Replace a non-empty output folder that an earlier export wrote.
    pub overwrite: bool,
}

fn parse_dtype(name: &str) -> Result<SaveDtype> {
    match name {
        "f32" => Ok(SaveDtype::F32),
        "bf16" => Ok(SaveDtype::BF16),
        "f16" => Ok(SaveDtype::F16),
        other => Err(Error::invalid_argument(format!("dtype must be one of f32, bf16, f16; got \"{other}\""))),
    }
}

/// Exports the Liger checkpoint at `model` into the folder `out`.
pub fn export(model: &Path, out: &Path, request: &ExportRequest) -> Result<()> {
    if request.format != "hf" {
        return Err(Error::invalid_argument(format!(
            "format must be one of {}; got \"{}\"",
            EXPORT_FORMATS.join(", "),
            request.format
        )));
    }
    let opts = ExportOptions { dtype: parse_dtype(&request.dtype)?, overwrite: request.overwrite };
    if model.is_file() {
        return Err(Error::invalid_argument(format!(
            "{}: a model file, not a Liger checkpoint directory; linearize the model first",
            model.display()
        )));
    }
    if model.is_dir() && read_liger_section(model)?.is_none() {
        return Err(Error::invalid_argument(format!(
            "{}: not a Liger checkpoint (config.json has no \"liger\" section); linearize the model first",
            model.display()
        )));
    }
    let liger = load_liger_checkpoint(model)?;
    export_reference_hf(out, &liger, &opts)
}
