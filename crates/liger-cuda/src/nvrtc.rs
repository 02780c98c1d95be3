//! Kernels are compiled from CUDA C with NVRTC at first use, for the GPU at hand, and the PTX
//! is cached on disk under `$LIGER_CACHE_DIR/kernels`, keyed by a hash of the source, the
//! compiler options and the NVRTC version, so a changed kernel is never served stale.

use crate::kernels::KernelFile;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use liger_core::{Error, ErrorCode, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable naming the NVRTC library file to load (`.../libnvrtc.so.13`).
pub const NVRTC_LIB_ENV: &str = "LIGER_NVRTC_LIB";

/// Where `scripts/setup.sh` installs the NVRTC wheel's library, inside the cache folder.
const WHEEL_LIB: &str = "python/nvidia/cu13/lib/libnvrtc.so.13";

/// NVRTC's companion library, found next to it.
const BUILTINS_LIB: &str = "libnvrtc-builtins.so.13.0";

/// The cache folder: `$LIGER_CACHE_DIR`, else `~/.cache/liger`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIGER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("liger")
}

/// The folder of cached PTX files.
pub fn kernel_cache_dir() -> PathBuf {
    cache_dir().join("kernels")
}

/// Makes sure NVRTC can be loaded. It is looked for, in order, at `$LIGER_NVRTC_LIB`, on the
/// loader path (a CUDA toolkit), and in the cache folder where `scripts/setup.sh` puts it.
/// A library found by path is loaded once and kept, so that NVRTC's own lookup by name finds it.
pub fn ensure_nvrtc() -> Result<()> {
    static LOADED: OnceLock<Result<()>> = OnceLock::new();
    LOADED.get_or_init(find_nvrtc).clone()
}

fn find_nvrtc() -> Result<()> {
    let from_env = std::env::var_os(NVRTC_LIB_ENV).map(PathBuf::from);
    if let Some(path) = &from_env {
        return preload(path);
    }
    // SAFETY: loading NVRTC runs only its library initialisers.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let in_cache = cache_dir().join(WHEEL_LIB);
    if in_cache.is_file() {
        return preload(&in_cache);
    }
    Err(nvrtc_missing(&format!("not on the loader path, not at {}", in_cache.display())))
}

fn preload(path: &Path) -> Result<()> {
    // NVRTC opens its builtins library by name at each compile; load the copy beside it first
    // so that lookup finds it even when the folder is not on the loader path.
    let builtins = path.with_file_name(BUILTINS_LIB);
    for lib_path in [builtins.as_path(), path] {
        if lib_path == builtins && !builtins.is_file() {
            continue;
        }
        // SAFETY: as above; the library stays loaded for the life of the process.
        let lib = unsafe { libloading::Library::new(lib_path) }
            .map_err(|e| nvrtc_missing(&format!("{}: {e}", lib_path.display())))?;
        std::mem::forget(lib);
    }
    // NVRTC is then opened by its name (libnvrtc.so.13), which matches the loaded copy.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(nvrtc_missing(&format!("{} loaded but is not libnvrtc.so.13", path.display())))
    }
}

fn nvrtc_missing(detail: &str) -> Error {
    Error::invalid_argument(format!(
        "the CUDA runtime compiler NVRTC (libnvrtc.so.13) could not be loaded ({detail}): install the CUDA 13 toolkit, \
         or run `bash scripts/setup.sh` (it installs the nvidia-cuda-nvrtc wheel), or set {NVRTC_LIB_ENV} to the library's path"
    ))
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().map_err(|e| Error::internal(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// The compiler options for a GPU of compute capability `arch` (e.g. (9, 0)). No fast math:
/// the kernels must agree with their CPU twins to fp32 precision.
pub fn compile_options(arch: (i32, i32)) -> Vec<String> {
    vec![format!("--gpu-architecture=sm_{}{}", arch.0, arch.1), "-std=c++17".to_string()]
}

/// The cache key of a kernel file compiled for `arch` by NVRTC `nvrtc`: 16 hex digits.
pub fn cache_key(file: &KernelFile, arch: (i32, i32), nvrtc: (i32, i32)) -> String {
    let mut hash = Sha256::new();
    hash.update(file.full_source().as_bytes());
    for option in compile_options(arch) {
        hash.update([0u8]);
        hash.update(option.as_bytes());
    }
    hash.update(format!("\0nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The cached PTX file of `file` for `arch`.
pub fn cache_path(dir: &Path, file: &KernelFile, arch: (i32, i32), nvrtc: (i32, i32)) -> PathBuf {
    dir.join(format!("{}-sm_{}{}-{}.ptx", file.name, arch.0, arch.1, cache_key(file, arch, nvrtc)))
}

/// Compiles one kernel file to PTX for `arch`.
pub fn compile_ptx(file: &KernelFile, arch: (i32, i32)) -> Result<String> {
    ensure_nvrtc()?;
    let opts = CompileOptions {
        options: compile_options(arch),
        name: Some(format!("{}.cu", file.name)),
        ..Default::default()
    };
    match compile_ptx_with_opts(file.full_source(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(Error::internal(format!(
            "kernel {}.cu does not compile for sm_{}{}:\n{}",
            file.name,
            arch.0,
            arch.1,
            log.to_string_lossy()
        ))),
        Err(e) => Err(Error::internal(format!("NVRTC failed on {}.cu: {e:?}", file.name))),
    }
}

/// The PTX of `file` for `arch`: from the cache folder `dir` when there, else compiled and
/// stored there. A cache that cannot be written is not an error: the PTX is still returned.
pub fn load_or_compile(dir: &Path, file: &KernelFile, arch: (i32, i32)) -> Result<String> {
    let path = cache_path(dir, file, arch, nvrtc_version()?);
    if let Ok(ptx) = fs::read_to_string(&path) {
        if is_complete_ptx(&ptx, file) {
            return Ok(ptx);
        }
    }
    let ptx = compile_ptx(file, arch)?;
    let _ = fs::create_dir_all(dir)
        .map_err(|e| Error::io(dir.display(), e))
        .and_then(|_| write_atomically(&path, ptx.as_bytes()));
    Ok(ptx)
}

/// Whether `ptx` defines every entry point of `file` (a cached file that does not is recompiled).
pub fn is_complete_ptx(ptx: &str, file: &KernelFile) -> bool {
    file.entry_points.iter().all(|name| ptx_defines_entry(ptx, name))
}

/// Whether `ptx` defines the kernel `name` (`.visible .entry name(`).
pub fn ptx_defines_entry(ptx: &str, name: &str) -> bool {
    ptx.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with(".visible .entry")
            && line.split_whitespace().nth(2).is_some_and(|word| word.trim_end_matches('(') == name)
    })
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp =
        path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = fs::write(&temp, bytes).and_then(|_| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;

    #[test]
    fn cache_key_depends_on_source_arch_and_compiler() {
        let base = cache_key(&kernels::RMS_NORM, (9, 0), (13, 0));
        assert_eq!(base.len(), 16);
        assert_eq!(base, cache_key(&kernels::RMS_NORM, (9, 0), (13, 0)), "the key is deterministic");
        assert_ne!(base, cache_key(&kernels::RMS_NORM, (8, 0), (13, 0)));
        assert_ne!(base, cache_key(&kernels::RMS_NORM, (9, 0), (13, 1)));
        assert_ne!(base, cache_key(&kernels::EMBEDDING, (9, 0), (13, 0)));
        let edited = KernelFile { source: "// edited\n", ..kernels::RMS_NORM };
        assert_ne!(base, cache_key(&edited, (9, 0), (13, 0)));
        let path = cache_path(Path::new("/c"), &kernels::RMS_NORM, (9, 0), (13, 0));
        assert_eq!(path, PathBuf::from(format!("/c/rms_norm-sm_90-{base}.ptx")));
    }

    #[test]
    fn options_target_the_device_architecture() {
        assert_eq!(compile_options((9, 0)), ["--gpu-architecture=sm_90", "-std=c++17"]);
        assert_eq!(compile_options((8, 6))[0], "--gpu-architecture=sm_86");
    }

    #[test]
    fn entry_points_are_found_in_ptx_text() {
        let ptx =
            "//\n.visible .entry embedding_gather_f32(\n\t.param .u64 a\n)\n.visible .entry embedding_gather_bf16(\n";
        assert!(ptx_defines_entry(ptx, "embedding_gather_f32"));
        assert!(ptx_defines_entry(ptx, "embedding_gather_bf16"));
        assert!(!ptx_defines_entry(ptx, "embedding_gather"));
        assert!(is_complete_ptx(ptx, &kernels::EMBEDDING));
        assert!(!is_complete_ptx(".visible .entry embedding_gather_f32(\n", &kernels::EMBEDDING));
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("liger-cuda-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.ptx");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("k.ptx")]);
        let err = write_atomically(&dir.join("missing").join("k.ptx"), b"x").unwrap_err();
        assert_eq!(err.code, ErrorCode::Io);
        fs::remove_dir_all(&dir).unwrap();
    }
}
