//! Writing files and directories so that readers never see them half-written: write under a
//! temporary sibling name, then rename into place (a rename within a directory is atomic).

use crate::error::{Error, Result};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A name next to `path` that no other writer uses: `.<name>.<tag>-<pid>-<counter>-<random>`.
pub(crate) fn temp_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("{}: not a file or directory name", path.display())))?;
    // The random part keeps the name unpredictable, so nobody can plant a link there first.
    let unique = format!(
        ".{}.{tag}-{}-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u64>()
    );
    Ok(path.with_file_name(unique))
}

/// Writes a file through `write`, atomically. On error the temporary file is removed and an
/// existing file at `path` is left untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let temp = temp_sibling(path, "tmp")?;
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::io(temp.display(), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| Error::io(temp.display(), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(temp.display(), e))?;
        fs::rename(&temp, path).map_err(|e| Error::io(path.display(), e))?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes `bytes` to `path` (inside a directory that is itself being built, so no rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path.display(), e))
}

/// The file in every directory [`build_dir_atomically`] builds that names the entries it
/// wrote: the proof that a later build may replace the directory without deleting anything
/// the user put there.
pub(crate) const MANIFEST: &str = ".liger-files";

/// File names this library wrote into checkpoint directories before it kept a manifest
/// (so such directories can still be replaced by a new save).
fn is_legacy_checkpoint_file(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_state.json",
    ];
    EXACT.contains(&name)
        || name == "optimizer.safetensors"
        || (name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-"))
}

/// Checks that `dir` may be replaced by a directory this library builds: it does not exist,
/// is empty, or holds only entries this library wrote there (listed in its manifest, or, for
/// a directory saved before manifests, only checkpoint files by name). Anything else is an
/// `InvalidArgument` error naming what would be lost: a user's folder is never deleted.
pub fn check_replaceable_dir(dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    if !meta.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{}: exists and is not a directory; choose another output folder",
            dir.display()
        )));
    }
    let listed: Option<Vec<String>> = match fs::read_to_string(dir.join(MANIFEST)) {
        Ok(text) => Some(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(dir.join(MANIFEST).display(), e)),
    };
    let mut foreign = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let ours = is_file
            && (name == MANIFEST
                || match &listed {
                    Some(names) => names.contains(&name),
                    None => is_legacy_checkpoint_file(&name),
                });
        if !ours {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
    let more = if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() };
    Err(Error::invalid_argument(format!(
        "{}: the folder holds files this library did not write ({}{more}); nothing was changed. \
         Choose a new or empty output folder, or one that holds a checkpoint saved by this library",
        dir.display(),
        shown.join(", ")
    )))
}

/// Checks before long work that a directory can later be built at `dir`: it may be replaced
/// ([`check_replaceable_dir`]) and its parent folder exists and takes new entries.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    check_replaceable_dir(dir)?;
    let probe = temp_sibling(dir, "probe")?;
    fs::create_dir(&probe).map_err(|e| {
        Error::io(
            dir.display(),
            std::io::Error::new(
                e.kind(),
                format!("cannot create the output folder here ({e}); choose a writable location"),
            ),
        )
    })?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

/// Removes temporary siblings of `dir` (`.<name>.tmp-<pid>-…`, `.<name>.old-<pid>-…`) that a
/// process which is no longer running left behind, e.g. when it was killed during a save.
fn remove_stale_temps(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let Ok(entries) = fs::read_dir(parent) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = entry_name.strip_prefix(&prefix) else { continue };
        let Some(rest) = rest.strip_prefix("tmp-").or_else(|| rest.strip_prefix("old-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !process_is_running(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a process with this id runs on this machine (unknown platforms: assume it does,
/// so nothing is removed).
fn process_is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Builds a directory through `fill` (given an empty temporary sibling directory, created
/// exclusively under an unpredictable name), records what it wrote in a manifest, syncs it,
/// then puts it at `dir`. An existing `dir` is replaced only when [`check_replaceable_dir`]
/// allows it, and then only the entries this library wrote are removed. If anything fails,
/// `dir` is as it was.
pub(crate) fn build_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_replaceable_dir(dir)?;
    remove_stale_temps(dir);
    let temp = temp_sibling(dir, "tmp")?;
    fs::create_dir(&temp).map_err(|e| Error::io(temp.display(), e))?;
    let filled = fill(&temp).and_then(|()| seal_dir(&temp));
    if let Err(e) = filled {
        let _ = fs::remove_dir_all(&temp);
        return Err(e);
    }
    // Checked again: the folder may have changed while the new one was being written.
    if let Err(e) = check_replaceable_dir(dir) {
        let _ = fs::remove_dir_all(&temp);
        return Err(e);
    }
    if !dir.exists() {
        fs::rename(&temp, dir).map_err(|e| {
            let _ = fs::remove_dir_all(&temp);
            Error::io(dir.display(), e)
        })?;
        sync_parent(dir);
        return Ok(());
    }
    // Two renames: there is no portable atomic swap of directories. In between, `dir` is
    // briefly absent, never partial.
    let old = temp_sibling(dir, "old")?;
    if let Err(e) = fs::rename(dir, &old) {
        let _ = fs::remove_dir_all(&temp);
        return Err(Error::io(dir.display(), e));
    }
    if let Err(e) = fs::rename(&temp, dir) {
        let _ = fs::rename(&old, dir);
        let _ = fs::remove_dir_all(&temp);
        return Err(Error::io(dir.display(), e));
    }
    sync_parent(dir);
    // Only files were in the old folder (checked above). Files still memory-mapped from it
    // stay readable after removal.
    if let Ok(entries) = fs::read_dir(&old) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    let _ = fs::remove_dir(&old);
    Ok(())
}

/// Writes the manifest of what `dir` holds, then syncs every file and the folder itself.
fn seal_dir(dir: &Path) -> Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let name = entry.map_err(|e| Error::io(dir.display(), e))?.file_name().to_string_lossy().into_owned();
        if name != MANIFEST {
            names.push(name);
        }
    }
    names.sort();
    let mut text = names.join("\n");
    text.push('\n');
    fs::write(dir.join(MANIFEST), text).map_err(|e| Error::io(dir.join(MANIFEST).display(), e))?;
    for name in names.iter().map(String::as_str).chain([MANIFEST]) {
        let path = dir.join(name);
        if path.is_file() {
            let file = fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
            file.sync_all().map_err(|e| Error::io(path.display(), e))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Syncs a folder's entries to disk (where the platform allows opening a folder).
fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn sync_parent(path: &Path) {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests;
