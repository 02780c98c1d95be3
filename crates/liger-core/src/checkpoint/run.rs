//! A training run's folder, laid out as the Hugging Face Trainer lays out its `output_dir`:
//!
//! ```text
//! run/
//!   liger-run.json      marks the folder as a liger run
//!   checkpoint-200/     each periodic save: model, adapters, training state
//!   checkpoint-400/
//!   model/              the final model (with its training state, so a finished run resumes)
//! ```
//!
//! Every checkpoint folder is written atomically (see [`super::save_liger_checkpoint`]).
//! Loading a run folder loads its final model, or its latest checkpoint while it has none.
//! A run never deletes what it did not write: a folder holding other files is refused unless
//! the user allows the run beside them (`overwrite`), and then only the run's own entries are
//! ever replaced or removed.

use crate::error::{Error, Result};
use crate::hf::fsutil::{check_output_dir, write_atomically};
use std::fs;
use std::path::{Path, PathBuf};

/// The file that marks a run folder.
pub const RUN_MARKER: &str = "liger-run.json";
/// The final model's folder inside a run folder.
pub const FINAL_MODEL: &str = "model";
const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// Whether `dir` is a run folder (holds the marker).
pub fn is_run_folder(dir: &Path) -> bool {
    dir.join(RUN_MARKER).is_file()
}

/// The run folder's checkpoints `(step, folder)`, oldest first: its `checkpoint-<step>` folders.
pub fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let step = name
            .strip_prefix(CHECKPOINT_PREFIX)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok());
        if let (Some(step), true) = (step, entry.path().is_dir()) {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The checkpoint folder a path stands for: a run folder's final model, else its latest
/// checkpoint; any other path as it is. A run folder with neither is an error.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() || !is_run_folder(path) {
        return Ok(path.to_path_buf());
    }
    let last = path.join(FINAL_MODEL);
    if last.is_dir() {
        return Ok(last);
    }
    match checkpoints(path)?.pop() {
        Some((_, latest)) => Ok(latest),
        None => Err(Error::invalid_file(
            path.display(),
            "a liger run folder without a model or checkpoint yet (the run saved nothing); run it again",
        )),
    }
}

/// The folder a resumed run continues from: the newest of the final model and the checkpoints
/// (by step; the final model is the last step's), `None` for a run folder with neither.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !is_run_folder(dir) {
        return Ok(None);
    }
    let last = dir.join(FINAL_MODEL);
    if last.is_dir() {
        return Ok(Some(last));
    }
    Ok(checkpoints(dir)?.pop().map(|(_, p)| p))
}

/// Checks, before any work, that a run may write into `dir`: a new or empty folder, a run
/// folder when resuming (or, with `overwrite`, when starting it again), or, with `overwrite`,
/// a folder holding other files (the run writes beside them). The folder must be writable.
/// Nothing is written.
pub fn check_run_folder(dir: &Path, overwrite: bool, resume: bool) -> Result<()> {
    let occupied = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return check_output_dir(dir),
        Err(_) if !dir.is_dir() => {
            return Err(Error::invalid_argument(format!(
                "{}: exists and is not a directory; choose another output folder",
                dir.display()
            )))
        }
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    if is_run_folder(dir) {
        if !resume && !overwrite {
            return Err(Error::invalid_argument(format!(
                "{}: holds a liger run; resume it (--resume), start it again (--overwrite: its checkpoints and model are replaced, nothing else), or choose another folder",
                dir.display()
            )));
        }
    } else if occupied && !overwrite {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir.display(), e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
        return Err(Error::invalid_argument(format!(
            "{}: the folder holds files this library did not write ({}{more}); nothing was changed. Choose a new or empty output folder, or pass --overwrite to write the run beside them (they are never deleted)",
            dir.display(),
            names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    // Writable: a probe folder inside, removed again.
    let probe = crate::hf::fsutil::temp_sibling(&dir.join("probe"), "probe")?;
    fs::create_dir(&probe).map_err(|e| {
        Error::io(
            dir.display(),
            std::io::Error::new(
                e.kind(),
                format!("cannot write into the output folder ({e}); choose a writable location"),
            ),
        )
    })?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

/// Makes `dir` a run folder (creating it), ready for the first save of a run. `fresh`: a run
/// that starts over removes the checkpoints and final model of the run there before (the
/// run's own entries only), so that a later resume never picks a stale one.
pub fn open_run_folder(dir: &Path, fresh: bool) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    if fresh && is_run_folder(dir) {
        let last = dir.join(FINAL_MODEL);
        let old: Vec<PathBuf> =
            checkpoints(dir)?.into_iter().map(|(_, p)| p).chain(last.is_dir().then_some(last)).collect();
        for folder in old {
            remove_checkpoint(&folder)?;
        }
    }
    if !is_run_folder(dir) {
        let marker = serde_json::json!({ "format": 1, "layout": "checkpoint-<step>/ for each save, model/ for the final model" });
        write_atomically(&dir.join(RUN_MARKER), |w| {
            w.write_all(format!("{marker:#}\n").as_bytes()).map_err(|e| Error::io(dir.display(), e))
        })?;
    }
    Ok(())
}

/// The folder of the checkpoint at `step`.
pub fn checkpoint_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{CHECKPOINT_PREFIX}{step}"))
}

/// Keeps the newest `keep` checkpoints of the run folder, removing older ones (never the final
/// model, and only folders this library wrote).
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let all = checkpoints(dir)?;
    for (_, folder) in &all[..all.len().saturating_sub(keep)] {
        remove_checkpoint(folder)?;
    }
    Ok(())
}

/// Removes a checkpoint folder this library wrote; one holding anything else is left alone
/// with an error that names it.
fn remove_checkpoint(folder: &Path) -> Result<()> {
    crate::hf::fsutil::check_replaceable_dir(folder)?;
    fs::remove_dir_all(folder).map_err(|e| Error::io(folder.display(), e))
}
