//! safetensors files: writing and reading back, agreement with the `safetensors` crate, and
//! truncated or corrupt files (an error naming the file, never a panic).

use liger_core::hf::{read_safetensors_f32, safetensors_to_bytes, write_safetensors, SafetensorsFile, SaveDtype};
use liger_core::ErrorCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("liger-st-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rng() -> SmallRng {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    SmallRng::seed_from_u64(seed)
}

/// Random values spread over several orders of magnitude, both signs, never zero.
fn random_values(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mag = 10f32.powf(rng.random_range(-3.0..2.0));
            if rng.random_bool(0.5) {
                mag
            } else {
                -mag
            }
        })
        .collect()
}

#[test]
fn f32_round_trip_is_exact_and_the_crate_agrees() {
    let mut rng = rng();
    let dir = TempDir::new("f32");
    let a = random_values(&mut rng, 6 * 7);
    let b = random_values(&mut rng, 5);
    let c = random_values(&mut rng, 2 * 3 * 4);
    let path = dir.path("t.safetensors");
    let meta = HashMap::from([("purpose".to_string(), "test".to_string())]);
    write_safetensors(
        &path,
        &[
            ("a.weight".into(), vec![6, 7], SaveDtype::F32, &a),
            ("b".into(), vec![5], SaveDtype::F16, &b),
            ("c".into(), vec![2, 3, 4], SaveDtype::F32, &c),
        ],
        Some(meta),
    )
    .unwrap();

    let read: HashMap<String, (Vec<usize>, Vec<f32>)> =
        read_safetensors_f32(&path).unwrap().into_iter().map(|(n, s, v)| (n, (s, v))).collect();
    assert_eq!(read.len(), 3);
    assert_eq!(read["a.weight"], (vec![6, 7], a.clone()));
    assert_eq!(read["c"], (vec![2, 3, 4], c.clone()));
    assert_eq!(read["b"].0, vec![5]);

    // The reference reader accepts the file and sees the same bytes.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("a.weight").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    assert_eq!(view.shape(), &[6, 7]);
    let from_crate: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(from_crate, a);
    assert_eq!(st.tensor("b").unwrap().dtype(), safetensors::Dtype::F16);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["purpose"], "test");
    assert_eq!(meta["format"], "pt", "transformers needs format=pt");
    // Data starts 8-byte aligned so every tensor is aligned in a memory map.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!((8 + header_len) % 8, 0);
}

#[test]
fn reads_files_written_by_the_crate() {
    let mut rng = rng();
    let values = random_values(&mut rng, 3 * 4);
    let bytes: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3, 4], &bytes).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    let st = SafetensorsFile::from_bytes(file, "crate.safetensors").unwrap();
    let m = st.matrix("w").unwrap();
    assert_eq!((m.ty, m.rows, m.cols), (liger_core::GgmlType::BF16, 3, 4));
    let expected: Vec<f32> = values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
    assert_eq!(m.to_f32().to_vec(), expected);
    // Views, not copies: the same bytes each time.
    assert_eq!(st.matrix("w").unwrap().data.as_slice().as_ptr(), m.data.as_slice().as_ptr());
}

#[test]
fn in_memory_writer_matches_the_file_writer() {
    let mut rng = rng();
    let dir = TempDir::new("mem");
    let w = random_values(&mut rng, 8 * 4);
    let n = random_values(&mut rng, 8);
    let tensors =
        [("w".to_string(), vec![8, 4], SaveDtype::BF16, &w[..]), ("n".to_string(), vec![8], SaveDtype::F32, &n[..])];
    let bytes = safetensors_to_bytes(&tensors, None).unwrap();
    let path = dir.path("same.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let st = SafetensorsFile::from_bytes(bytes, "mem").unwrap();
    assert_eq!(st.vector_f32("n").unwrap(), n);
    assert_eq!(st.matrix("w").unwrap().ty, liger_core::GgmlType::BF16);
    assert_eq!(st.metadata()["format"], "pt");
}

/// Relative error of round-to-nearest in a float type with `mantissa_bits` stored bits,
/// checked against a float64 reference for normal-range values.
fn check_precision(dtype: SaveDtype, mantissa_bits: i32) {
    let mut rng = rng();
    let dir = TempDir::new("prec");
    let values = random_values(&mut rng, 4096);
    let path = dir.path("p.safetensors");
    write_safetensors(&path, &[("x".into(), vec![64, 64], dtype, &values)], None).unwrap();
    let back = &read_safetensors_f32(&path).unwrap()[0].2;
    let bound = 2f64.powi(-(mantissa_bits + 1));
    let mut max_rel = 0.0f64;
    for (v, b) in values.iter().zip(back) {
        max_rel = max_rel.max((*v as f64 - *b as f64).abs() / (*v as f64).abs());
    }
    println!("{dtype:?}: max relative error {max_rel:.3e} (bound {bound:.3e})");
    assert!(max_rel <= bound, "{dtype:?}: {max_rel} > {bound}");
    assert!(max_rel > 0.0, "{dtype:?} should round some values");
}

#[test]
fn f16_round_trip_within_half_precision() {
    check_precision(SaveDtype::F16, 10);
}

#[test]
fn bf16_round_trip_within_bfloat16_precision() {
    check_precision(SaveDtype::BF16, 7);
}

#[test]
fn f16_overflow_is_an_error_and_the_old_file_survives() {
    let dir = TempDir::new("ovf");
    let path = dir.path("x.safetensors");
    write_safetensors(&path, &[("ok".into(), vec![2], SaveDtype::F32, &[1.5, -2.5])], None).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = write_safetensors(&path, &[("big".into(), vec![2], SaveDtype::F16, &[1.0, 70000.0])], None).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("big") && err.message.contains("F16"), "{err}");
    let err = write_safetensors(&path, &[("bad".into(), vec![3], SaveDtype::F32, &[1.0, 2.0])], None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let err = write_safetensors(
        &path,
        &[("d".into(), vec![1], SaveDtype::F32, &[1.0]), ("d".into(), vec![1], SaveDtype::F32, &[2.0])],
        None,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "a failed write leaves the old file");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

/// A safetensors file from a header text and data bytes.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn expect_invalid(bytes: Vec<u8>, needle: &str) {
    match SafetensorsFile::from_bytes(bytes, "broken.safetensors") {
        Ok(_) => panic!("expected an error mentioning {needle:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidFile, "{e}");
            assert!(e.message.contains("broken.safetensors"), "names the file: {e}");
            assert!(e.message.contains(needle), "{:?} should mention {needle:?}", e.message);
        }
    }
}

#[test]
fn corrupt_files_are_invalid_file_errors() {
    let good_header = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let good = raw(good_header, &[0u8; 16]);
    assert!(SafetensorsFile::from_bytes(good.clone(), "good").is_ok());

    expect_invalid(vec![], "fewer than the 8-byte");
    expect_invalid(vec![1, 2, 3], "fewer than the 8-byte");
    // Header length past the end of the file, and absurdly large.
    let mut long = good.clone();
    long[..8].copy_from_slice(&1000u64.to_le_bytes());
    expect_invalid(long, "truncated");
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_invalid(huge, "header claims");
    // Truncated data: offsets past the end.
    expect_invalid(good[..good.len() - 1].to_vec(), "truncated");
    expect_invalid(raw("{\"w\": {", &[]), "JSON");
    expect_invalid(raw("[1, 2]", &[]), "JSON object");
    let mut bad_utf8 = raw(good_header, &[0u8; 16]);
    bad_utf8[10] = 0xff;
    expect_invalid(bad_utf8, "not a valid safetensors");
    expect_invalid(raw(r#"{"w":{"dtype":"F32","shape":[2,2]}}"#, &[0u8; 16]), "data_offsets");
    // Offsets that do not match shape x dtype, gaps, overlaps, data not fully covered.
    expect_invalid(
        raw(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, &[0u8; 16]),
        "not a valid safetensors",
    );
    expect_invalid(
        raw(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &[0u8; 12],
        ),
        "not a valid safetensors",
    );
    expect_invalid(
        raw(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0u8; 12],
        ),
        "not a valid safetensors",
    );
    expect_invalid(raw(good_header, &[0u8; 20]), "not a valid safetensors");
    expect_invalid(
        raw(r#"{"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#, &[0u8; 4]),
        "not a valid safetensors",
    );
    // A shape whose element count overflows.
    let big = usize::MAX / 2;
    expect_invalid(
        raw(&format!(r#"{{"w":{{"dtype":"F32","shape":[{big},{big}],"data_offsets":[0,4]}}}}"#), &[0u8; 4]),
        "not a valid safetensors",
    );
    // Offsets adding up to nearly usize::MAX: without our own bounds check the crate's
    // `offset + header length` arithmetic overflows.
    let step = usize::MAX / 8;
    let entries: Vec<String> = (0..8)
        .map(|i| {
            format!(r#""t{i}":{{"dtype":"U8","shape":[{step}],"data_offsets":[{},{}]}}"#, i * step, (i + 1) * step)
        })
        .collect();
    expect_invalid(raw(&format!("{{{}}}", entries.join(",")), &[0u8; 8]), "truncated");
}

#[test]
fn wrong_tensor_kinds_are_typed_errors() {
    let header = r#"{"ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let st = SafetensorsFile::from_bytes(raw(header, &[0u8; 16]), "mixed.safetensors").unwrap();
    let e = st.matrix("ids").unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedTensorType);
    assert!(e.message.contains("ids") && e.message.contains("I32") && e.message.contains("mixed.safetensors"), "{e}");
    let e = st.matrix("v").unwrap_err();
    assert_eq!(e.code, ErrorCode::ShapeMismatch);
    assert!(e.message.contains("\"v\"") && e.message.contains("2-D"), "{e}");
    let e = st.matrix("nope").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("nope") && e.message.contains("mixed.safetensors"), "{e}");
    assert_eq!(st.vector_f32("v").unwrap(), vec![0.0, 0.0]);

    let dir = TempDir::new("i32");
    let path = dir.path("ids.safetensors");
    std::fs::write(&path, raw(header, &[0u8; 16])).unwrap();
    assert_eq!(read_safetensors_f32(&path).unwrap_err().code, ErrorCode::UnsupportedTensorType);
    let e = read_safetensors_f32(Path::new("/nonexistent/x.safetensors")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Io);
}

/// Random truncations and byte changes of a valid file: every one is either read or
/// refused with an error; none panics.
#[test]
fn mutated_files_never_panic() {
    let mut rng = rng();
    let dir = TempDir::new("fuzz");
    let path = dir.path("f.safetensors");
    let a = random_values(&mut rng, 12);
    let b = random_values(&mut rng, 3);
    write_safetensors(
        &path,
        &[("a".into(), vec![3, 4], SaveDtype::BF16, &a), ("b".into(), vec![3], SaveDtype::F32, &b)],
        None,
    )
    .unwrap();
    let good = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = good.clone();
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..good.len())),
            1 => {
                // Change header bytes, mostly digits, where offsets and shapes live.
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..header_end);
                    bytes[i] = if rng.random_bool(0.7) { b'0' + rng.random_range(0..10) } else { rng.random() };
                }
            }
            _ => bytes.splice(8..8, std::iter::repeat_n(b' ', rng.random_range(1..9))).for_each(drop),
        }
        match SafetensorsFile::from_bytes(bytes, "m") {
            Ok(st) => {
                for name in st.names().to_vec() {
                    let _ = st.matrix(&name);
                    let _ = st.tensor_f32(&name);
                }
                ok += 1;
            }
            Err(e) => {
                assert!(matches!(e.code, ErrorCode::InvalidFile), "{e}");
                refused += 1;
            }
        }
    }
    println!("mutations: {ok} read, {refused} refused");
    assert!(refused > 0);
}
