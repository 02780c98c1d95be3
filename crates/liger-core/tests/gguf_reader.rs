//! The GGUF reader and writer: round trips, and every kind of broken file giving a typed error.

use liger_core::gguf::{GgufFile, GgufValue, GgufWriter};
use liger_core::{ErrorCode, GgmlType};

/// A hand-assembled GGUF header, for files the writer would refuse to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_metadata: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_metadata);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor directory entry.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        let start = self.0.len().next_multiple_of(32);
        self.0.resize(start + n, 0x11);
        self
    }
}

fn parse_err(bytes: Vec<u8>) -> liger_core::Error {
    match GgufFile::from_bytes(bytes, "test.gguf") {
        Ok(_) => panic!("a broken file was accepted"),
        Err(e) => e,
    }
}

fn assert_invalid(bytes: Vec<u8>, needle: &str) {
    let e = parse_err(bytes);
    assert_eq!(e.code, ErrorCode::InvalidFile, "{e}");
    assert!(e.message.contains(needle), "message `{}` should mention `{needle}`", e.message);
    assert!(e.message.starts_with("test.gguf: "), "message `{}` should name the file", e.message);
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("a.u8", GgufValue::U8(200));
    w.add_metadata("a.i8", GgufValue::I8(-5));
    w.add_metadata("a.u16", GgufValue::U16(60000));
    w.add_metadata("a.i16", GgufValue::I16(-30000));
    w.add_metadata("a.u32", GgufValue::U32(4_000_000_000));
    w.add_metadata("a.i32", GgufValue::I32(-7));
    w.add_metadata("a.u64", GgufValue::U64(1 << 40));
    w.add_metadata("a.i64", GgufValue::I64(-(1 << 40)));
    w.add_metadata("a.f32", GgufValue::F32(1e-5));
    w.add_metadata("a.f64", GgufValue::F64(0.25));
    w.add_metadata("a.bool", GgufValue::Bool(true));
    let words = ["hello", "", "wörld"].iter().map(|s| GgufValue::String(s.to_string())).collect();
    w.add_metadata("a.strings", GgufValue::Array(words));
    w.add_metadata("a.ints", GgufValue::Array(vec![GgufValue::I32(-1), GgufValue::I32(2), GgufValue::I32(3)]));
    let nested = GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)]), GgufValue::Array(vec![])]);
    w.add_metadata("a.nested", nested);
    w.add_f32("norm.weight", &[5], &[1.0, -2.0, 3.5, 0.125, 9.0]).unwrap();
    // A 3 x 32 Q8_0 matrix: per row, an f16 scale of 0.5 and quants -16..16.
    let mut q8 = Vec::new();
    for r in 0..3 {
        q8.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        q8.extend((0..32).map(|i| (i as i8 - 16 + r as i8) as u8));
    }
    w.add_tensor("mat.weight", &[32, 3], GgmlType::Q8_0, q8).unwrap();
    w
}

#[test]
fn round_trip_metadata_and_tensors() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes, "sample").unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("a.u8").unwrap(), 200);
    assert_eq!(f.get_u64("a.u16").unwrap(), 60000);
    assert_eq!(f.get_u64("a.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u64("a.u64").unwrap(), 1 << 40);
    assert_eq!(f.get("a.i8"), Some(&GgufValue::I8(-5)));
    assert_eq!(f.get("a.i16"), Some(&GgufValue::I16(-30000)));
    assert_eq!(f.get("a.i64"), Some(&GgufValue::I64(-(1 << 40))));
    assert_eq!(f.get_f32("a.f32").unwrap(), 1e-5);
    assert_eq!(f.get_f32("a.f64").unwrap(), 0.25);
    assert!(f.get_bool("a.bool").unwrap());
    assert_eq!(f.get_str_array("a.strings").unwrap(), vec!["hello", "", "wörld"]);
    assert_eq!(f.get_i64_array("a.ints").unwrap(), vec![-1, 2, 3]);
    assert_eq!(
        f.get("a.nested"),
        Some(&GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)]), GgufValue::Array(vec![])]))
    );

    assert_eq!(f.tensor_f32("norm.weight").unwrap(), vec![1.0, -2.0, 3.5, 0.125, 9.0]);
    let norm = f.tensor("norm.weight").unwrap();
    assert_eq!((norm.rows, norm.cols, norm.ty), (1, 5, GgmlType::F32));
    let m = f.tensor("mat.weight").unwrap();
    assert_eq!((m.rows, m.cols, m.ty), (3, 32, GgmlType::Q8_0));
    let values = f.tensor_f32("mat.weight").unwrap();
    for r in 0..3 {
        for i in 0..32 {
            assert_eq!(values[r * 32 + i], 0.5 * (i as f32 - 16.0 + r as f32));
        }
    }
}

#[test]
fn accessor_errors_name_the_key() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes().unwrap(), "sample").unwrap();
    let e = f.get_u64("llama.block_count").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("`llama.block_count` is missing"), "{e}");
    for e in [
        f.get_u64("a.i8").unwrap_err(),  // negative
        f.get_u64("a.f32").unwrap_err(), // not an integer
        f.get_str("a.u8").unwrap_err(),
        f.get_f32("a.u32").unwrap_err(),
        f.get_bool("a.u8").unwrap_err(),
        f.get_str_array("a.ints").unwrap_err(),
        f.get_i64_array("a.strings").unwrap_err(),
        f.get_i64_array("a.u8").unwrap_err(),
    ] {
        assert_eq!(e.code, ErrorCode::InvalidFile);
        assert!(e.message.contains("metadata key `a."), "{e}");
    }
    let e = f.tensor("missing.weight").unwrap_err();
    assert!(e.message.contains("`missing.weight` is missing"), "{e}");
}

#[test]
fn open_maps_a_written_file() {
    let dir = std::env::temp_dir().join(format!("liger-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    sample_writer().write(&path).unwrap();
    assert!(!dir.join("sample.gguf.tmp").exists());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensor_f32("norm.weight").unwrap()[2], 3.5);
    let e = GgufFile::open(&dir.join("absent.gguf")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Io);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn custom_alignment_round_trips() {
    let mut w = sample_writer();
    w.set_alignment(64).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap(), "aligned").unwrap();
    assert_eq!(f.alignment, 64);
    assert!(f.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f.tensor_f32("norm.weight").unwrap()[4], 9.0);
    assert_eq!(w.set_alignment(48).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_writer().to_bytes().unwrap();
    for len in 0..bytes.len() {
        let e = parse_err(bytes[..len].to_vec());
        assert_eq!(e.code, ErrorCode::InvalidFile, "prefix of {len} bytes: {e}");
    }
}

#[test]
fn bad_magic_and_versions() {
    assert_invalid(b"GGML\x03\0\0\0".to_vec(), "not a GGUF file");
    assert_invalid(Vec::new(), "not a GGUF file");
    assert_invalid(Raw::header(1, 0, 0).0, "unsupported GGUF version 1");
    assert_invalid(Raw::header(4, 0, 0).0, "unsupported GGUF version 4");
    assert_invalid(Raw::header(3u32.swap_bytes(), 0, 0).0, "big-endian");
    // Both supported versions parse.
    for v in [2, 3] {
        let f = GgufFile::from_bytes(Raw::header(v, 0, 0).0, "empty").unwrap();
        assert_eq!(f.version, v);
        assert!(f.tensors.is_empty() && f.metadata.is_empty());
    }
}

#[test]
fn absurd_counts_and_lengths() {
    assert_invalid(Raw::header(3, u64::MAX, 0).0, "tensor count");
    assert_invalid(Raw::header(3, 0, 1 << 40).0, "metadata entry count");
    // A key whose length exceeds the file.
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 50).u64(0).u64(0);
    assert_invalid(r.0, "length of key");
    // A string value longer than the rest of the file.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(1000);
    r.0.extend_from_slice(b"short");
    assert_invalid(r.0, "string value of `k`");
    // An array count larger than the bytes left (u32 elements need 4 bytes each).
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(9).u32(4).u64(3);
    r.u32(1).u32(2);
    assert_invalid(r.0, "element count of array `arr`");
    // Unknown value types, bad bools, arrays nested absurdly deep.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u64(0);
    assert_invalid(r.0, "unknown value type 13");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(7);
    r.0.push(2);
    assert_invalid(r.0, "bool byte is 2");
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..20 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    assert_invalid(r.0, "nested");
    // Invalid UTF-8 in a string.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(2);
    r.0.extend_from_slice(&[0xff, 0xfe]);
    assert_invalid(r.0, "UTF-8");
}

#[test]
fn duplicate_keys_and_bad_alignment() {
    let mut r = Raw::header(3, 0, 2);
    r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    assert_invalid(r.0, "`k` appears twice");
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(4).u32(24);
    assert_invalid(r.0, "power of two");
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(4).u32(0);
    assert_invalid(r.0, "power of two");
}

#[test]
fn broken_tensor_directories() {
    // Data past the end: 8 f32 values need 32 bytes, only 16 are there.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, 0).data(16);
    assert_invalid(r.0, "past the end");
    // The offset itself past the end.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 1 << 20).data(16);
    assert_invalid(r.0, "past the end");
    // Offset + size overflows.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, u64::MAX - 31).data(16);
    assert_invalid(r.0, "");
    // Dimensions whose product overflows.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 40, 1 << 40], 0, 0).data(16);
    assert_invalid(r.0, "too large");
    // Misaligned offset.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[2], 0, 4).data(64);
    assert_invalid(r.0, "not a multiple of the alignment 32");
    // Duplicate names.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32).data(64);
    assert_invalid(r.0, "`t` appears twice");
    // Too many dimensions, and none.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1, 1, 1, 1, 1], 0, 0).data(16);
    assert_invalid(r.0, "5 dimensions");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[], 0, 0).data(16);
    assert_invalid(r.0, "0 dimensions");
    // A row that is not a whole number of blocks.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[33, 1], 8, 0).data(64);
    assert_invalid(r.0, "multiple of 32");
    // Missing data section entirely.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 0);
    assert_invalid(r.0, "");
}

#[test]
fn unknown_tensor_type_is_unsupported() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.0.attn_q.weight", &[32, 1], 99, 0).data(64);
    let e = parse_err(r.0);
    assert_eq!(e.code, ErrorCode::UnsupportedTensorType, "{e}");
    assert!(e.message.contains("blk.0.attn_q.weight") && e.message.contains("99"), "{e}");
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    assert_eq!(w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 33]).unwrap_err().code, ErrorCode::ShapeMismatch);
    assert_eq!(w.add_tensor("t", &[], GgmlType::F32, vec![]).unwrap_err().code, ErrorCode::InvalidArgument);
    w.add_f32("t", &[1], &[1.0]).unwrap();
    assert_eq!(w.add_f32("t", &[1], &[1.0]).unwrap_err().code, ErrorCode::InvalidArgument);
    w.add_metadata("mixed", GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]));
    assert_eq!(w.to_bytes().unwrap_err().code, ErrorCode::InvalidArgument);
}
