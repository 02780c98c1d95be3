//! Single-thread speed of `quant::dot` per storage type, in G values/s.
//! `cargo run --release -p liger-core --example bench_dot -- [cols] [hot_kib] [cold_mib]`
//!
//! "hot": a matrix of about `hot_kib` KiB (fits in L2), swept until 0.3 s have passed;
//! "cold": one sweep over about `cold_mib` MiB (larger than any cache: memory bound).
//! Prints one JSON line per type.

use liger_core::quant::dot;
use liger_core::testing::random_quantized_row;
use liger_core::GgmlType;
use std::hint::black_box;
use std::time::Instant;

const TYPES: [GgmlType; 13] = GgmlType::GGML_TYPES;

/// Values per second of one sweep of `dot` over all rows, taken `sweeps` times.
fn sweep(ty: GgmlType, data: &[u8], x: &[f32], sweeps: usize) -> f64 {
    let row_bytes = ty.bytes_for(x.len()).unwrap();
    let rows = data.len() / row_bytes;
    let t = Instant::now();
    let mut sink = 0.0f32;
    for _ in 0..sweeps {
        for r in 0..rows {
            sink += dot(ty, &data[r * row_bytes..(r + 1) * row_bytes], black_box(x));
        }
    }
    black_box(sink);
    (sweeps * rows * x.len()) as f64 / t.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let cols: usize = args.get(1).map_or(Ok(2304), |s| s.parse())?;
    let hot_kib: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let cold_mib: usize = args.get(3).map_or(Ok(96), |s| s.parse())?;
    let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    for ty in TYPES {
        let row_bytes = ty.bytes_for(cols)?;
        let hot_rows = (hot_kib * 1024 / row_bytes).max(1);
        let hot = random_quantized_row(ty, hot_rows * cols, 1);
        // Calibrate the number of sweeps to about 0.3 s.
        let once = sweep(ty, &hot, &x, 1);
        let sweeps = ((0.3 * once) / (hot_rows * cols) as f64).ceil().max(1.0) as usize;
        let mut hot_runs: Vec<f64> = (0..3).map(|_| sweep(ty, &hot, &x, sweeps)).collect();
        hot_runs.sort_by(f64::total_cmp);
        let cold_rows = (cold_mib << 20) / row_bytes;
        let cold: Vec<u8> = hot.iter().copied().cycle().take(cold_rows * row_bytes).collect();
        let mut cold_runs: Vec<f64> = (0..3).map(|_| sweep(ty, &cold, &x, 1)).collect();
        cold_runs.sort_by(f64::total_cmp);
        let gbs = cold_runs[1] * row_bytes as f64 / cols as f64 / 1e9;
        println!(
            "{{\"type\":\"{}\",\"cols\":{cols},\"hot_gvals_s\":{:.2},\"cold_gvals_s\":{:.2},\"cold_gbytes_s\":{gbs:.1}}}",
            ty.name(),
            hot_runs[1] / 1e9,
            cold_runs[1] / 1e9
        );
    }
    Ok(())
}
