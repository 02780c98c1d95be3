//! Launch shapes shared by the kernels, and checks that sizes fit the kernels' int arguments.
//! Kept apart from any GPU call so the arithmetic is tested everywhere.

use cudarc::driver::LaunchConfig;
use liger_core::{Error, Result};

/// Threads per block of elementwise kernels and of warp-per-row kernels.
pub const BLOCK: u32 = 256;

/// Most blocks an elementwise (grid-stride) kernel is launched with; each thread then loops.
pub const MAX_ELEMENTWISE_BLOCKS: u32 = 1 << 16;

/// Largest grid.x the hardware takes.
const MAX_GRID_X: usize = i32::MAX as usize;

/// A grid-stride launch over `n` elements.
pub fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_ELEMENTWISE_BLOCKS as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row of `cols` values: up to 1024 threads, a whole number of warps.
pub fn block_per_row(rows: usize, cols: usize) -> Result<LaunchConfig> {
    if rows > MAX_GRID_X {
        return Err(Error::invalid_argument(format!(
            "{rows} rows are more than one launch takes ({MAX_GRID_X}); split the work"
        )));
    }
    let threads = cols.next_multiple_of(32).clamp(32, 1024) as u32;
    Ok(LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// One warp per row: `BLOCK / 32` rows per block.
pub fn warp_per_row(rows: usize) -> LaunchConfig {
    let rows_per_block = (BLOCK / 32) as usize;
    let blocks = rows.div_ceil(rows_per_block).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// `value` as a kernel's `int` argument, or an error naming it.
pub fn as_int(name: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        Error::invalid_argument(format!("{name} = {value} is too large for one GPU launch (at most {})", i32::MAX))
    })
}

/// Splits `len` values into rows of `cols`, or says why it cannot.
pub fn rows_of(what: &str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(Error::shape(format!("{what}: {len} values are not a whole number of rows of {cols}")));
    }
    Ok(len / cols)
}

/// Checks that a buffer has the expected number of values.
pub fn expect_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::shape(format!("{what} has {len} values, expected {expected}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    #[test]
    fn elementwise_covers_every_element() {
        for n in [0usize, 1, 255, 256, 257, 1 << 20, 3 << 30] {
            let cfg = elementwise(n);
            assert_eq!(cfg.block_dim, (BLOCK, 1, 1));
            assert!(cfg.grid_dim.0 >= 1 && cfg.grid_dim.0 <= MAX_ELEMENTWISE_BLOCKS);
            // A grid-stride loop covers n as long as there is at least one thread.
            let threads = cfg.grid_dim.0 as usize * BLOCK as usize;
            if n <= MAX_ELEMENTWISE_BLOCKS as usize * BLOCK as usize {
                assert!(threads >= n && threads < n + BLOCK as usize || n == 0, "n={n} threads={threads}");
            } else {
                assert_eq!(cfg.grid_dim.0, MAX_ELEMENTWISE_BLOCKS);
            }
        }
    }

    #[test]
    fn block_per_row_uses_whole_warps() {
        let cfg = block_per_row(7, 576).unwrap();
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (7, 576));
        assert_eq!(block_per_row(3, 5).unwrap().block_dim.0, 32);
        assert_eq!(block_per_row(3, 49152).unwrap().block_dim.0, 1024);
        assert_eq!(block_per_row(3, 100).unwrap().block_dim.0, 128);
        assert_eq!(block_per_row(1 << 32, 8).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn warp_per_row_has_a_warp_for_each_row() {
        for rows in [1usize, 7, 8, 9, 1000] {
            let cfg = warp_per_row(rows);
            assert!(cfg.grid_dim.0 as usize * (BLOCK as usize / 32) >= rows);
            assert!((cfg.grid_dim.0 as usize - 1) * (BLOCK as usize / 32) < rows);
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(as_int("cols", 576).unwrap(), 576);
        let err = as_int("vocab", 1 << 31).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("vocab"));
        assert_eq!(rows_of("x", 12, 4).unwrap(), 3);
        assert_eq!(rows_of("x", 13, 4).unwrap_err().code, ErrorCode::ShapeMismatch);
        assert_eq!(rows_of("x", 0, 0).unwrap_err().code, ErrorCode::ShapeMismatch);
        assert!(expect_len("w", 4, 4).is_ok());
        assert_eq!(expect_len("w", 3, 4).unwrap_err().code, ErrorCode::ShapeMismatch);
    }
}
