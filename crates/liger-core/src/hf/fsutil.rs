//! Writing files and directories so that readers never see them half-written: write under a
//! temporary sibling name, then rename into place (a rename within a directory is atomic).

use crate::error::{Error, Result};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A name next to `path` that no other writer uses: `.<name>.<tag>-<pid>-<counter>`.
pub(crate) fn temp_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("{}: not a file or directory name", path.display())))?;
    let unique = format!(
        ".{}.{tag}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Ok(path.with_file_name(unique))
}

/// Writes a file through `write`, atomically. On error the temporary file is removed and an
/// existing file at `path` is left untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let temp = temp_sibling(path, "tmp")?;
    let result = (|| {
        let file = fs::File::create(&temp).map_err(|e| Error::io(temp.display(), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| Error::io(temp.display(), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(temp.display(), e))?;
        fs::rename(&temp, path).map_err(|e| Error::io(path.display(), e))
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

/// Builds a directory through `fill` (given an empty temporary sibling directory), then puts
/// it at `dir`. An existing `dir` is moved aside only after `fill` succeeded, and deleted
/// once the new directory is in place; if anything fails, `dir` is as it was.
pub(crate) fn build_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid_argument(format!("{}: exists and is not a directory", dir.display())));
    }
    let temp = temp_sibling(dir, "tmp")?;
    fs::create_dir_all(&temp).map_err(|e| Error::io(temp.display(), e))?;
    if let Err(e) = fill(&temp) {
        let _ = fs::remove_dir_all(&temp);
        return Err(e);
    }
    if !dir.exists() {
        return fs::rename(&temp, dir).map_err(|e| {
            let _ = fs::remove_dir_all(&temp);
            Error::io(dir.display(), e)
        });
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
    // Files still memory-mapped from the old directory stay readable after removal.
    let _ = fs::remove_dir_all(&old);
    Ok(())
}
