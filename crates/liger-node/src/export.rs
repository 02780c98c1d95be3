//! `exportModel`: a Liger checkpoint written in another format, on a worker thread.

use std::path::PathBuf;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::run;

pub struct ExportTask {
    model: PathBuf,
    out: PathBuf,
    request: liger::ExportRequest,
}

impl Task for ExportTask {
    type Output = ();
    type JsValue = String;

    fn compute(&mut self) -> Result<()> {
        run(|| liger::export(&self.model, &self.out, &self.request))
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<String> {
        Ok(self.out.display().to_string())
    }
}

/// Export the Liger checkpoint `model` into the folder `out`; resolves to `out`.
#[napi(js_name = "exportModel")]
pub fn export_model_js(
    model: String,
    out: String,
    format: String,
    dtype: String,
    overwrite: bool,
) -> AsyncTask<ExportTask> {
    let request = liger::ExportRequest { format, dtype, overwrite };
    AsyncTask::new(ExportTask { model: PathBuf::from(model), out: PathBuf::from(out), request })
}
