//! The GGML storage types: their numbers in GGUF files, names, and block sizes.

use crate::error::{Error, ErrorCode, Result};

/// Storage types, numbered as in GGML/GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// int8 with one f32 scale per row (this library's own edge format, not a GGML type;
    /// see `quant::int8_row`). A row of `n` values takes `n + 4` bytes.
    I8Row,
}

impl GgmlType {
    /// Every GGML/GGUF storage type the library reads, in the enum's order.
    pub const GGML_TYPES: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The GGML types and the library's own edge type.
    pub const ALL: [GgmlType; 14] = {
        let mut all = [GgmlType::I8Row; 14];
        let mut i = 0;
        while i < 13 {
            all[i] = Self::GGML_TYPES[i];
            i += 1;
        }
        all
    };

    /// The GGUF type id, or an `UnsupportedTensorType` error naming the id.
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => {
                return Err(Error::new(
                    ErrorCode::UnsupportedTensorType,
                    format!(
                        "tensor type id {other} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); re-quantize the model to one of these"
                    ),
                ))
            }
        })
    }
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            // Outside GGML's numbering: GGUF readers (this one included) reject it.
            GgmlType::I8Row => 1000,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::I8Row => "I8_ROW",
        }
    }
    /// Number of values in one block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::I8Row => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }
    /// Bytes in one block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            // Per value; each row adds its 4-byte scale (see `bytes_for`).
            GgmlType::I8Row => 1,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }
    /// Bytes needed for `n` values (for `I8Row`: one row of `n`), or an error when `n` is not
    /// a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        if self == GgmlType::I8Row {
            return n
                .checked_add(4)
                .ok_or_else(|| Error::new(ErrorCode::InvalidFile, format!("tensor of {n} values is too large")));
        }
        if !n.is_multiple_of(self.block_size()) {
            return Err(Error::shape(format!(
                "{} values cannot be stored as {}: rows must be a multiple of {}",
                n,
                self.name(),
                self.block_size()
            )));
        }
        (n / self.block_size())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| Error::new(ErrorCode::InvalidFile, format!("tensor of {n} values is too large")))
    }
}
