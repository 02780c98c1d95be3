//! Every kernel compiles with NVRTC to PTX for the GPU machine (sm_90) and defines the entry
//! points the Rust side launches. Needs no GPU, only the NVRTC library: CI gets it from
//! `bash scripts/setup.sh`, and these tests fail (never skip) without it.

use liger_core::ErrorCode;
use liger_cuda::kernels::{self, KernelFile};
use liger_cuda::nvrtc::{cache_path, compile_ptx, ensure_nvrtc, load_or_compile, nvrtc_version, ptx_defines_entry};
use std::collections::HashSet;
use std::fs;

const H100: (i32, i32) = (9, 0);

fn require_nvrtc() {
    if let Err(e) = ensure_nvrtc() {
        panic!("{e}");
    }
}

#[test]
fn every_kernel_compiles_for_sm90_with_its_entry_points() {
    require_nvrtc();
    let (major, minor) = nvrtc_version().unwrap();
    assert!(major >= 13, "NVRTC {major}.{minor} is older than the CUDA 13 this crate targets");
    for file in kernels::ALL {
        let ptx = compile_ptx(file, H100).unwrap_or_else(|e| panic!("{e}"));
        assert!(ptx.contains(".target sm_90"), "{}.cu: PTX is not for sm_90", file.name);
        for entry in file.entry_points {
            assert!(ptx_defines_entry(&ptx, entry), "{}.cu: no entry point {entry} in the PTX", file.name);
        }
        let entries = ptx.lines().filter(|l| l.trim_start().starts_with(".visible .entry")).count();
        assert_eq!(entries, file.entry_points.len(), "{}.cu defines kernels that are not listed", file.name);
        println!("{}.cu: {} entry points, {} bytes of PTX", file.name, entries, ptx.len());
    }
}

#[test]
fn every_kernel_file_is_listed_and_entry_names_are_unique() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let mut on_disk: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".cu").map(str::to_string))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = kernels::ALL.iter().map(|f| f.name.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    let mut names = HashSet::new();
    for entry in kernels::ALL.iter().flat_map(|f| f.entry_points) {
        assert!(names.insert(*entry), "entry point {entry} is defined twice");
    }
}

#[test]
fn a_compile_error_names_the_file_and_carries_the_log() {
    require_nvrtc();
    let broken = KernelFile {
        name: "broken",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_value; }\n",
        entry_points: &["k"],
    };
    let err = compile_ptx(&broken, H100).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("broken.cu"), "{}", err.message);
    assert!(err.message.contains("undefined_value"), "{}", err.message);
}

#[test]
fn compiled_ptx_is_cached_by_key_and_bad_cache_files_are_replaced() {
    require_nvrtc();
    let dir = std::env::temp_dir().join(format!("liger-cuda-cache-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let file = &kernels::EMBEDDING;
    let first = load_or_compile(&dir, file, H100).unwrap();
    let path = cache_path(&dir, file, H100, nvrtc_version().unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), first);
    assert_eq!(load_or_compile(&dir, file, H100).unwrap(), first);
    // A cache file without the kernel's entry points is compiled again and replaced.
    fs::write(&path, "// truncated\n").unwrap();
    assert_eq!(load_or_compile(&dir, file, H100).unwrap(), first);
    assert_eq!(fs::read_to_string(&path).unwrap(), first);
    let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary files are left: {names:?}");
    fs::remove_dir_all(&dir).unwrap();
}
