//! Every dot-product kernel (portable and SIMD) against an f64 dot of the dequantized row,
//! and SIMD against portable, on random rows and vectors of several lengths.

use liger_core::quant::{dequantize, dot, DotKernel};
use liger_core::testing::random_quantized_row;
use liger_core::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALL_TYPES: [GgmlType; 13] = GgmlType::GGML_TYPES;

const KERNELS: [DotKernel; 3] = [DotKernel::Portable, DotKernel::Avx2, DotKernel::Simd128];

/// Row lengths to test: one block, a few blocks, the model's sizes; for the float types also
/// lengths that leave a tail after the 8- and 32-wide loops.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 7, 8, 33, 100, 576],
        32 => vec![32, 64, 96, 576, 1536],
        bs => vec![bs, 2 * bs, 3 * bs, 9 * bs],
    }
}

fn random_x(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The f64 dot of the dequantized row with `x`, and `sum |w_i x_i|` (the scale that f32
/// rounding errors are proportional to).
fn reference(ty: GgmlType, row: &[u8], x: &[f32]) -> (f64, f64) {
    let mut w = vec![0.0f32; x.len()];
    dequantize(ty, row, &mut w);
    let exact = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let scale = w.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
    (exact, scale)
}

#[test]
fn every_kernel_matches_f64_reference() {
    let available: Vec<DotKernel> = KERNELS.into_iter().filter(|k| k.is_available()).collect();
    eprintln!("kernels on this machine: {available:?}, fastest {:?}", DotKernel::best());
    for kernel in available {
        for (t, ty) in ALL_TYPES.into_iter().enumerate() {
            let f = kernel.dot_fn(ty).expect("an available kernel has a function for every type");
            let mut worst = 0.0f64;
            for (c, n) in lengths(ty).into_iter().enumerate() {
                for trial in 0..4u64 {
                    let seed = (t as u64 * 1000 + c as u64) * 10 + trial;
                    let row = random_quantized_row(ty, n, seed);
                    let x = random_x(n, seed ^ 0x5eed);
                    let (exact, scale) = reference(ty, &row, &x);
                    assert!(scale > 0.0, "{}: random row of {n} gave all zeros", ty.name());
                    let got = f(&row, &x) as f64;
                    worst = worst.max((got - exact).abs() / scale);
                }
            }
            eprintln!("{kernel:?} {:>5}: max error / sum|w x| = {worst:.2e}", ty.name());
            assert!(worst < 1e-5, "{kernel:?} {}: error {worst:e} relative to sum|w x|", ty.name());
        }
    }
}

#[test]
fn simd_kernels_agree_with_portable() {
    for kernel in [DotKernel::Avx2, DotKernel::Simd128].into_iter().filter(|k| k.is_available()) {
        for (t, ty) in ALL_TYPES.into_iter().enumerate() {
            let (simd, portable) = (kernel.dot_fn(ty).unwrap(), DotKernel::Portable.dot_fn(ty).unwrap());
            let mut worst = 0.0f64;
            for (c, n) in lengths(ty).into_iter().enumerate() {
                let seed = 77_000 + t as u64 * 100 + c as u64;
                let row = random_quantized_row(ty, n, seed);
                let x = random_x(n, seed + 1);
                let (_, scale) = reference(ty, &row, &x);
                worst = worst.max((simd(&row, &x) as f64 - portable(&row, &x) as f64).abs() / scale);
            }
            eprintln!("{kernel:?} vs Portable {:>5}: max difference / sum|w x| = {worst:.2e}", ty.name());
            assert!(worst < 1e-5, "{kernel:?} {}: differs from portable by {worst:e}", ty.name());
        }
    }
}

#[test]
fn best_kernel_is_the_detected_one() {
    let best = DotKernel::best();
    assert!(best.is_available());
    #[cfg(target_arch = "x86_64")]
    {
        let has_avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        assert_eq!(best == DotKernel::Avx2, has_avx2, "AVX2 present: {has_avx2}, chosen: {best:?}");
        assert!(!DotKernel::Simd128.is_available());
        assert!(DotKernel::Simd128.dot_fn(GgmlType::Q4_1).is_none());
    }
    // `dot` goes through the best kernel: same result bit for bit.
    let row = random_quantized_row(GgmlType::Q4_1, 576, 5);
    let x = random_x(576, 6);
    assert_eq!(dot(GgmlType::Q4_1, &row, &x), best.dot_fn(GgmlType::Q4_1).unwrap()(&row, &x));
}

/// The kernels read whole blocks of the shorter operand and never past either slice.
#[test]
fn kernels_stay_within_short_inputs() {
    for kernel in KERNELS.into_iter().filter(|k| k.is_available()) {
        for ty in ALL_TYPES {
            let n = 2 * ty.block_size().max(8);
            let row = random_quantized_row(ty, n, 9);
            let x = random_x(n, 10);
            let f = kernel.dot_fn(ty).unwrap();
            // x shorter than the row: only the first half of the values count.
            let half = n / 2;
            let row_half = &row[..ty.bytes_for(half).unwrap()];
            let (exact, scale) = reference(ty, row_half, &x[..half]);
            let got = f(&row, &x[..half]) as f64;
            assert!(
                (got - exact).abs() / scale < 1e-5,
                "{kernel:?} {}: short x gave {got}, expected {exact}",
                ty.name()
            );
            let got = f(row_half, &x) as f64;
            assert!(
                (got - exact).abs() / scale < 1e-5,
                "{kernel:?} {}: short row gave {got}, expected {exact}",
                ty.name()
            );
        }
    }
}
