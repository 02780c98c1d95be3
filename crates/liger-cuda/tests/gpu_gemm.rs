//! cuBLAS products in the row-major convention against `liger_core::linalg::matmul`.

mod common;

use common::*;
use half::bf16;
use liger_core::linalg::{matmul, MatRef};
use liger_core::ErrorCode;
use liger_cuda::{gemm, GemmDims, GpuBuffer};

fn reference(a: &[f32], b: &[f32], d: GemmDims, c0: Option<&[f32]>) -> Vec<f64> {
    let a_ref = if d.a_transposed { MatRef::new(a, d.k, d.m).t() } else { MatRef::new(a, d.m, d.k) };
    let b_ref = if d.b_transposed { MatRef::new(b, d.n, d.k).t() } else { MatRef::new(b, d.k, d.n) };
    let mut c = c0.map(|c| c.to_vec()).unwrap_or_else(|| vec![0.0; d.m * d.n]);
    matmul(a_ref, b_ref, &mut c, c0.is_some());
    to_f64(&c)
}

#[test]
fn f32_products_in_every_transpose() {
    let ctx = gpu();
    let mut rng = rng("gemm_f32");
    let (m, n, k) = (67, 129, 576);
    for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
        let d = GemmDims { m, n, k, a_transposed: a_t, b_transposed: b_t };
        let (a, b) = (random(&mut rng, m * k, 1.0), random(&mut rng, k * n, 1.0));
        let mut c = poisoned(&ctx, m * n);
        gemm(&ctx, d, upload(&ctx, &a).slice(), upload(&ctx, &b).slice(), c.slice_mut(), false).unwrap();
        check(&format!("gemm f32 a_t={a_t} b_t={b_t}"), &c, &reference(&a, &b, d, None), 1e-4);
    }
    // Accumulate into existing values.
    let d = GemmDims { m, n, k, a_transposed: false, b_transposed: true };
    let (a, b, c0) = (random(&mut rng, m * k, 1.0), random(&mut rng, k * n, 1.0), random(&mut rng, m * n, 5.0));
    let mut c = upload(&ctx, &c0);
    gemm(&ctx, d, upload(&ctx, &a).slice(), upload(&ctx, &b).slice(), c.slice_mut(), true).unwrap();
    check("gemm f32 accumulate", &c, &reference(&a, &b, d, Some(&c0)), 1e-4);

    let err = gemm(&ctx, d, upload(&ctx, &a[1..]).slice(), upload(&ctx, &b).slice(), c.slice_mut(), false).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn bf16_products_accumulate_in_fp32() {
    let ctx = gpu();
    let mut rng = rng("gemm_bf16");
    let (m, n, k) = (64, 1536, 576);
    let d = GemmDims { m, n, k, a_transposed: false, b_transposed: true };
    let a16: Vec<bf16> = random(&mut rng, m * k, 1.0).iter().map(|&v| bf16::from_f32(v)).collect();
    let b16: Vec<bf16> = random(&mut rng, k * n, 1.0).iter().map(|&v| bf16::from_f32(v)).collect();
    // The reference multiplies the same (bf16-rounded) values in f32.
    let (a, b): (Vec<f32>, Vec<f32>) =
        (a16.iter().map(|v| v.to_f32()).collect(), b16.iter().map(|v| v.to_f32()).collect());
    let mut c = poisoned(&ctx, m * n);
    let (ag, bg) = (GpuBuffer::from_host(&ctx, &a16).unwrap(), GpuBuffer::from_host(&ctx, &b16).unwrap());
    gemm(&ctx, d, ag.slice(), bg.slice(), c.slice_mut(), false).unwrap();
    check("gemm bf16 -> f32", &c, &reference(&a, &b, d, None), 1e-3);
}

#[test]
fn tf32_products_of_lora_shapes_are_close_to_f32() {
    let ctx = gpu();
    let mut rng = rng("gemm_tf32");
    // The adapters' shapes: a rank-8 down projection, its weight gradient (a long reduction
    // over tokens), and the up projection accumulated into an output.
    let shapes = [(1000, 8, 576, false, true), (8, 576, 1000, true, false), (1000, 576, 8, false, false)];
    for (m, n, k, a_t, b_t) in shapes {
        let d = GemmDims { m, n, k, a_transposed: a_t, b_transposed: b_t };
        let (a, b, c0) = (random(&mut rng, m * k, 1.0), random(&mut rng, k * n, 1.0), random(&mut rng, m * n, 5.0));
        let mut c = poisoned(&ctx, m * n);
        liger_cuda::gemm::gemm_tf32(&ctx, d, upload(&ctx, &a).slice(), upload(&ctx, &b).slice(), c.slice_mut(), false)
            .unwrap();
        // TF32 keeps 10 mantissa bits of each input (relative rounding up to 2^-11).
        check(&format!("gemm tf32 {m}x{n}x{k}"), &c, &reference(&a, &b, d, None), 5e-3);
        let mut c = upload(&ctx, &c0);
        liger_cuda::gemm::gemm_tf32(&ctx, d, upload(&ctx, &a).slice(), upload(&ctx, &b).slice(), c.slice_mut(), true)
            .unwrap();
        check(&format!("gemm tf32 {m}x{n}x{k} accumulate"), &c, &reference(&a, &b, d, Some(&c0)), 5e-3);
    }
    let d = GemmDims { m: 4, n: 4, k: 4, a_transposed: false, b_transposed: false };
    let err = liger_cuda::gemm::gemm_tf32(
        &ctx,
        d,
        upload(&ctx, &[1.0; 15]).slice(),
        upload(&ctx, &[1.0; 16]).slice(),
        poisoned(&ctx, 16).slice_mut(),
        false,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}
