//! Export of a model to other formats: `hf`, the reference implementation's `liger_gla`
//! directory (adapters merged), which its `transformers` modeling code loads as is; and
//! `bundle`, the edge engine's one-file format (wasm, CPU), from a Liger checkpoint or a base
//! model converted with the default Liger options.

use std::path::Path;

use liger_core::bundle::{write_bundle, EdgeQuant};
use liger_core::checkpoint::{export_reference_hf, load_liger_checkpoint, read_liger_section, ExportOptions};
use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::hf::SaveDtype;
use liger_core::model::load_model;
use liger_core::{Error, Result};

/// The formats `export` writes.
pub const EXPORT_FORMATS: [&str; 2] = ["hf", "bundle"];

/// What to export and how.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// "hf": the reference's `liger_gla` Hugging Face directory; "bundle": an edge bundle file.
    pub format: String,
    /// hf: "f32" (exact, the default), "bf16" or "f16"; bundle: "int8" (the default), "q4"
    /// or "f32". Empty: the format's default.
    pub dtype: String,
    /// Replace an output that an earlier export wrote.
    pub overwrite: bool,
}

fn parse_dtype(name: &str) -> Result<SaveDtype> {
    match name {
        "f32" | "" => Ok(SaveDtype::F32),
        "bf16" => Ok(SaveDtype::BF16),
        "f16" => Ok(SaveDtype::F16),
        other => Err(Error::invalid_argument(format!("dtype must be one of f32, bf16, f16; got \"{other}\""))),
    }
}

/// Exports the model at `model` into `out` (a folder for hf, a file for bundle).
pub fn export(model: &Path, out: &Path, request: &ExportRequest) -> Result<()> {
    match request.format.as_str() {
        "hf" => export_hf(model, out, request),
        "bundle" => export_bundle(model, out, request),
        other => Err(Error::invalid_argument(format!(
            "format must be one of {}; got \"{other}\"",
            EXPORT_FORMATS.join(", ")
        ))),
    }
}

fn export_hf(model: &Path, out: &Path, request: &ExportRequest) -> Result<()> {
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

/// An edge bundle of a Liger checkpoint, or of a base model (a .gguf file or a Hugging Face
/// directory) converted with the default Liger options and no adapters. Written atomically;
/// an existing file is replaced only with `overwrite`, and a folder never.
fn export_bundle(model: &Path, out: &Path, request: &ExportRequest) -> Result<()> {
    let quant = match request.dtype.as_str() {
        "" | "int8" => EdgeQuant::Int8,
        "q4" => EdgeQuant::Q4,
        "q4_1" => EdgeQuant::Q4_1,
        "f32" => EdgeQuant::F32,
        other => {
            return Err(Error::invalid_argument(format!(
                "dtype of a bundle must be one of int8, q4, f32, q4_1; got \"{other}\""
            )))
        }
    };
    if out.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{} is a folder; a bundle is one file: give a file path such as model.bundle",
            out.display()
        )));
    }
    if out.exists() && !request.overwrite {
        return Err(Error::invalid_argument(format!("{} exists; pass overwrite to replace it", out.display())));
    }
    let liger = if model.is_dir() && read_liger_section(model)?.is_some() {
        load_liger_checkpoint(model)?
    } else {
        let base = load_model(model, &mut |_, _| {})?;
        linearize(base, LigerOptions::default(), LoraOptions { targets: Vec::new(), ..LoraOptions::default() })?
    };
    write_bundle(out, &liger, quant)
}
