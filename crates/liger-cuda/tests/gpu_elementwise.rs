//! Per-token kernels against their CPU twins in liger-core (or a float64 reference where the
//! twin is private), on fresh random inputs, outputs poisoned before each launch.

mod common;

use common::*;
use half::bf16;
use liger_core::nn::loss::attention_transfer_rows;
use liger_core::nn::rms_norm::{rms_norm, rms_norm_backward};
use liger_core::nn::swiglu::{swiglu_backward, swiglu_inplace};
use liger_core::ErrorCode;
use liger_cuda::ops::{embedding, rms_norm as gpu_norm, swiglu as gpu_swiglu};
use liger_cuda::GpuBuffer;

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn from_bf16(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

#[test]
fn embedding_gather_f32_and_bf16() {
    let ctx = gpu();
    let mut rng = rng("embedding");
    let (vocab, hidden, tokens) = (1000, 576, 37);
    let table = random(&mut rng, vocab * hidden, 1.0);
    let ids = liger_core::testing::random_tokens(tokens, vocab, rand::random());
    let expected: Vec<f64> = ids
        .iter()
        .flat_map(|&id| table[id as usize * hidden..(id as usize + 1) * hidden].iter().map(|&v| v as f64))
        .collect();
    let mut out = poisoned(&ctx, tokens * hidden);
    embedding::embedding_gather(&ctx, &upload(&ctx, &table), hidden, &ids, &mut out).unwrap();
    check("embedding f32", &out, &expected, 1e-7);

    let table_bf16 = to_bf16(&table);
    let expected_bf16: Vec<f64> = ids
        .iter()
        .flat_map(|&id| table_bf16[id as usize * hidden..(id as usize + 1) * hidden].iter().map(|v| v.to_f64()))
        .collect();
    let mut out = poisoned(&ctx, tokens * hidden);
    embedding::embedding_gather(&ctx, &GpuBuffer::from_host(&ctx, &table_bf16).unwrap(), hidden, &ids, &mut out)
        .unwrap();
    check("embedding bf16", &out, &expected_bf16, 1e-7);

    let err = embedding::embedding_gather(
        &ctx,
        &upload(&ctx, &table),
        hidden,
        &[3, vocab as u32],
        &mut poisoned(&ctx, 2 * hidden),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("outside the vocabulary"), "{}", err.message);
}

#[test]
fn rms_norm_forward_backward_and_weight_gradient() {
    let ctx = gpu();
    let mut rng = rng("rms_norm");
    let (rows, cols, eps) = (29, 576, 1e-5f32);
    let x = random(&mut rng, rows * cols, 2.0);
    let w: Vec<f32> = random(&mut rng, cols, 0.3).iter().map(|v| 1.0 + v).collect();
    let dy = random(&mut rng, rows * cols, 1.0);
    let mut y_cpu = vec![0.0; rows * cols];
    rms_norm(&x, &w, eps, &mut y_cpu);
    let (xg, wg, dyg) = (upload(&ctx, &x), upload(&ctx, &w), upload(&ctx, &dy));

    let (mut y, mut rstd) = (poisoned(&ctx, rows * cols), poisoned(&ctx, rows));
    gpu_norm::rms_norm_forward(&ctx, &xg, &wg, eps, &mut y, &mut rstd).unwrap();
    check("rms_norm forward f32", &y, &to_f64(&y_cpu), FP32_TOL);
    let rstd_ref: Vec<f64> = x
        .chunks(cols)
        .map(|r| 1.0 / (r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64 + eps as f64).sqrt())
        .collect();
    check("rms_norm rstd", &rstd, &rstd_ref, FP32_TOL);

    let (mut dx_cpu, mut dw_cpu) = (vec![0.0; rows * cols], vec![0.0; cols]);
    rms_norm_backward(&x, &w, eps, &dy, &mut dx_cpu, Some(&mut dw_cpu));
    let (mut dx, mut rstd) = (poisoned(&ctx, rows * cols), poisoned(&ctx, rows));
    gpu_norm::rms_norm_backward(&ctx, &xg, &wg, eps, &dyg, &mut dx, &mut rstd).unwrap();
    check("rms_norm backward dx", &dx, &to_f64(&dx_cpu), FP32_TOL);
    let mut dw = poisoned(&ctx, cols);
    gpu_norm::rms_norm_backward_weight(&ctx, &xg, &dyg, &rstd, &mut dw).unwrap();
    check("rms_norm backward dw", &dw, &to_f64(&dw_cpu), FP32_TOL);

    // bf16 storage: the reference normalises the bf16-rounded input.
    let x16 = to_bf16(&x);
    let mut y_ref = vec![0.0; rows * cols];
    rms_norm(&from_bf16(&x16), &w, eps, &mut y_ref);
    let mut y16 = GpuBuffer::filled(&ctx, rows * cols, bf16::NAN).unwrap();
    let mut rstd = poisoned(&ctx, rows);
    gpu_norm::rms_norm_forward(&ctx, &GpuBuffer::from_host(&ctx, &x16).unwrap(), &wg, eps, &mut y16, &mut rstd)
        .unwrap();
    check_host("rms_norm forward bf16", &from_bf16(&y16.to_host().unwrap()), &to_f64(&y_ref), BF16_TOL);

    let err = gpu_norm::rms_norm_forward(
        &ctx,
        &upload(&ctx, &x[..cols + 1]),
        &wg,
        eps,
        &mut poisoned(&ctx, cols + 1),
        &mut poisoned(&ctx, 1),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn swiglu_forward_and_backward() {
    let ctx = gpu();
    let mut rng = rng("swiglu");
    let n = 13 * 1536 + 7;
    let (g, u, da) = (random(&mut rng, n, 6.0), random(&mut rng, n, 2.0), random(&mut rng, n, 1.0));
    let mut a_cpu = g.clone();
    swiglu_inplace(&mut a_cpu, &u);
    let mut a = poisoned(&ctx, n);
    gpu_swiglu::swiglu_forward(&ctx, &upload(&ctx, &g), &upload(&ctx, &u), &mut a).unwrap();
    check("swiglu forward f32", &a, &to_f64(&a_cpu), FP32_TOL);

    let (mut dg_cpu, mut du_cpu) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&g, &u, &da, &mut dg_cpu, &mut du_cpu);
    let (mut dg, mut du) = (poisoned(&ctx, n), poisoned(&ctx, n));
    gpu_swiglu::swiglu_backward(&ctx, &upload(&ctx, &g), &upload(&ctx, &u), &upload(&ctx, &da), &mut dg, &mut du)
        .unwrap();
    check("swiglu backward dgate", &dg, &to_f64(&dg_cpu), FP32_TOL);
    check("swiglu backward dup", &du, &to_f64(&du_cpu), FP32_TOL);

    let (g16, u16) = (to_bf16(&g), to_bf16(&u));
    let mut a_ref = from_bf16(&g16);
    swiglu_inplace(&mut a_ref, &from_bf16(&u16));
    let mut a16 = GpuBuffer::filled(&ctx, n, bf16::NAN).unwrap();
    gpu_swiglu::swiglu_forward(
        &ctx,
        &GpuBuffer::from_host(&ctx, &g16).unwrap(),
        &GpuBuffer::from_host(&ctx, &u16).unwrap(),
        &mut a16,
    )
    .unwrap();
    check_host("swiglu forward bf16", &from_bf16(&a16.to_host().unwrap()), &to_f64(&a_ref), BF16_TOL);
}

/// A bf16 buffer of `n` NaNs, so that unwritten elements show.
fn poisoned_bf16(ctx: &liger_cuda::GpuContext, n: usize) -> GpuBuffer<bf16> {
    GpuBuffer::filled(ctx, n, bf16::NAN).unwrap()
}

/// The training forms with two outputs or mixed types: the norm writing f32 and its bf16
/// copy at once, the norm backward added to a residual gradient, SwiGLU from f32 to bf16.
#[test]
fn fused_norm_and_swiglu_forms_match_the_cpu() {
    let ctx = gpu();
    let mut rng = rng("fused_norm_and_swiglu");
    let (rows, cols, eps) = (37, 576, 1e-5f32);
    let x = random(&mut rng, rows * cols, 2.0);
    let w: Vec<f32> = random(&mut rng, cols, 0.3).iter().map(|v| 1.0 + v).collect();
    let (xg, wg) = (upload(&ctx, &x), upload(&ctx, &w));
    let mut y_cpu = vec![0.0; rows * cols];
    rms_norm(&x, &w, eps, &mut y_cpu);
    let y_ref = to_f64(&y_cpu);
    let (mut y, mut y_t, mut rstd) = (poisoned(&ctx, rows * cols), poisoned(&ctx, rows * cols), poisoned(&ctx, rows));
    gpu_norm::rms_norm_forward_pair(&ctx, &xg, &wg, eps, &mut y, &mut y_t, &mut rstd).unwrap();
    check("rms_norm pair f32: y", &y, &y_ref, FP32_TOL);
    check("rms_norm pair f32: copy", &y_t, &y_ref, FP32_TOL);
    let (mut y, mut y16, mut rstd) =
        (poisoned(&ctx, rows * cols), poisoned_bf16(&ctx, rows * cols), poisoned(&ctx, rows));
    gpu_norm::rms_norm_forward_pair(&ctx, &xg, &wg, eps, &mut y, &mut y16, &mut rstd).unwrap();
    check("rms_norm pair bf16: y", &y, &y_ref, FP32_TOL);
    check_host("rms_norm pair bf16: copy", &from_bf16(&y16.to_host().unwrap()), &y_ref, BF16_TOL);
    let err = gpu_norm::rms_norm_forward_pair(&ctx, &xg, &wg, eps, &mut y, &mut poisoned_bf16(&ctx, cols), &mut rstd)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);

    // Backward added to a residual gradient r: dx = r + d(norm)/dx.
    let (dy, r) = (random(&mut rng, rows * cols, 1.0), random(&mut rng, rows * cols, 1.0));
    let mut dx_cpu = vec![0.0; rows * cols];
    rms_norm_backward(&x, &w, eps, &dy, &mut dx_cpu, None);
    let expected: Vec<f64> = dx_cpu.iter().zip(&r).map(|(&d, &r)| d as f64 + r as f64).collect();
    let (mut dx, mut rstd) = (upload(&ctx, &r), poisoned(&ctx, rows));
    gpu_norm::rms_norm_backward_add(&ctx, &xg, &wg, eps, &upload(&ctx, &dy), &mut dx, &mut rstd).unwrap();
    check("rms_norm backward added to a residual", &dx, &expected, FP32_TOL);
    let rstd_ref: Vec<f64> = x
        .chunks(cols)
        .map(|r| 1.0 / (r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64 + eps as f64).sqrt())
        .collect();
    check("rms_norm backward add: rstd", &rstd, &rstd_ref, FP32_TOL);

    // SwiGLU: f32 inputs, bf16 outputs.
    let n = 11 * 1536 + 5;
    let (g, u, da) = (random(&mut rng, n, 6.0), random(&mut rng, n, 2.0), random(&mut rng, n, 1.0));
    let (gg, ug) = (upload(&ctx, &g), upload(&ctx, &u));
    let mut a_cpu = g.clone();
    swiglu_inplace(&mut a_cpu, &u);
    let mut a16 = poisoned_bf16(&ctx, n);
    gpu_swiglu::swiglu_forward_to(&ctx, &gg, &ug, &mut a16).unwrap();
    check_host("swiglu forward f32 -> bf16", &from_bf16(&a16.to_host().unwrap()), &to_f64(&a_cpu), BF16_TOL);
    let mut a = poisoned(&ctx, n);
    gpu_swiglu::swiglu_forward_to(&ctx, &gg, &ug, &mut a).unwrap();
    check("swiglu forward f32 -> f32", &a, &to_f64(&a_cpu), FP32_TOL);
    let (mut dg_cpu, mut du_cpu) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&g, &u, &da, &mut dg_cpu, &mut du_cpu);
    let (mut dg, mut du) = (poisoned_bf16(&ctx, n), poisoned_bf16(&ctx, n));
    gpu_swiglu::swiglu_backward(&ctx, &gg, &ug, &upload(&ctx, &da), &mut dg, &mut du).unwrap();
    check_host("swiglu backward dgate bf16", &from_bf16(&dg.to_host().unwrap()), &to_f64(&dg_cpu), BF16_TOL);
    check_host("swiglu backward dup bf16", &from_bf16(&du.to_host().unwrap()), &to_f64(&du_cpu), BF16_TOL);
    let err = gpu_swiglu::swiglu_forward_to(&ctx, &gg, &ug, &mut poisoned_bf16(&ctx, n - 1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn device_info_is_read() {
    let ctx = gpu();
    let info = ctx.info();
    println!("{info:?}");
    assert!(!info.name.is_empty());
    assert!(info.compute_capability.0 >= 7);
    assert!(info.total_memory > 0 && info.free_memory <= info.total_memory);
    assert!(info.driver_version >= 13000);
    let count = liger_cuda::GpuContext::device_count().unwrap();
    let err = liger_cuda::GpuContext::new(count).err().expect("an index past the last GPU is an error");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("does not exist"), "{}", err.message);
    // A request far beyond any GPU's memory is a typed out-of-memory error with advice.
    let err = GpuBuffer::<f32>::zeros(&ctx, 1 << 48).err().expect("a 1 PB allocation fails");
    assert_eq!(err.code, ErrorCode::OutOfMemory);
    assert!(err.message.contains("lower the batch size"), "{}", err.message);
}

/// The training glue, four values per thread with a tail: the cast to T, the two Liger
/// branches mixed (f32 and its T copy at once), the gradient split between the branches;
/// against float64, on lengths that are not a multiple of four.
#[test]
fn glue_casts_mix_and_gradient_split_match_float64() {
    use liger_cuda::model::glue::{liger_mix_to, scale_pair, scale_to};
    let ctx = gpu();
    let mut rng = rng("glue_mix_and_split");
    for n in [1usize, 7, 4 * 1024 + 3, 3 * 65536 + 2] {
        let x = random(&mut rng, n, 3.0);
        let xg = upload(&ctx, &x);
        let (s, t) = (0.37f32, -1.25f32);
        let scaled_ref = |k: f32| -> Vec<f64> { x.iter().map(|&v| k as f64 * v as f64).collect() };

        let mut y16 = poisoned_bf16(&ctx, n);
        scale_to(&ctx, &xg, &mut y16, s).unwrap();
        check_host(&format!("scale_to bf16 n={n}"), &from_bf16(&y16.to_host().unwrap()), &scaled_ref(s), BF16_TOL);
        let mut y = poisoned(&ctx, n);
        scale_to(&ctx, &xg, &mut y, s).unwrap();
        check(&format!("scale_to f32 n={n}"), &y, &scaled_ref(s), FP32_TOL);

        // The mix: g f32, a stored as T (its rounded values are the reference's input).
        let g = random(&mut rng, n, 2.0);
        let a16 = to_bf16(&random(&mut rng, n, 2.0));
        let (alpha, beta) = (0.5f32, 0.75f32);
        let mix_ref: Vec<f64> =
            g.iter().zip(&a16).map(|(&g, a)| alpha as f64 * g as f64 + beta as f64 * a.to_f32() as f64).collect();
        let (mut o, mut o16) = (poisoned(&ctx, n), poisoned_bf16(&ctx, n));
        liger_mix_to(
            &ctx,
            &upload(&ctx, &g),
            &GpuBuffer::from_host(&ctx, &a16).unwrap(),
            alpha,
            beta,
            &mut o,
            &mut o16,
        )
        .unwrap();
        check(&format!("liger_mix_to f32 n={n}"), &o, &mix_ref, FP32_TOL);
        check_host(&format!("liger_mix_to bf16 copy n={n}"), &from_bf16(&o16.to_host().unwrap()), &mix_ref, BF16_TOL);
        let a32 = from_bf16(&a16);
        let (mut o, mut o_copy) = (poisoned(&ctx, n), poisoned(&ctx, n));
        liger_mix_to(&ctx, &upload(&ctx, &g), &upload(&ctx, &a32), alpha, beta, &mut o, &mut o_copy).unwrap();
        check(&format!("liger_mix_to f32/f32 n={n}"), &o, &mix_ref, FP32_TOL);
        check(&format!("liger_mix_to f32 copy n={n}"), &o_copy, &mix_ref, FP32_TOL);

        // The split of a gradient.
        let (mut y, mut z16) = (poisoned(&ctx, n), poisoned_bf16(&ctx, n));
        scale_pair(&ctx, &xg, s, t, &mut y, &mut z16).unwrap();
        check(&format!("scale_pair f32 n={n}"), &y, &scaled_ref(s), FP32_TOL);
        check_host(&format!("scale_pair bf16 n={n}"), &from_bf16(&z16.to_host().unwrap()), &scaled_ref(t), BF16_TOL);
        let (mut y, mut z) = (poisoned(&ctx, n), poisoned(&ctx, n));
        scale_pair(&ctx, &xg, s, t, &mut y, &mut z).unwrap();
        check(&format!("scale_pair f32/f32 n={n}"), &z, &scaled_ref(t), FP32_TOL);
    }
    // Sizes that disagree are typed errors.
    let err = liger_mix_to(
        &ctx,
        &poisoned(&ctx, 8),
        &poisoned_bf16(&ctx, 7),
        1.0,
        1.0,
        &mut poisoned(&ctx, 8),
        &mut poisoned_bf16(&ctx, 8),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    let err = scale_pair(&ctx, &poisoned(&ctx, 8), 1.0, 1.0, &mut poisoned(&ctx, 8), &mut poisoned_bf16(&ctx, 9))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn attention_transfer_rows_match_the_cpu() {
    let ctx = gpu();
    let mut rng = rng("attention_transfer_rows");
    let (rows, width) = (37, 576);
    let (o, target) = (random(&mut rng, rows * width, 2.0), random(&mut rng, rows * width, 2.0));
    // Every fifth row does not count.
    let labels: Vec<u32> =
        (0..rows as u32).map(|r| if r % 5 == 0 { liger_core::nn::loss::IGNORE } else { r }).collect();
    let (weight, grad_scale) = (1.0 / 3.0, 0.37);
    let mut d_cpu = vec![0.0f32; rows * width];
    let sum_cpu = attention_transfer_rows(&o, &target, &labels, width, weight, grad_scale, &mut d_cpu);
    let mut d_o = poisoned(&ctx, rows * width);
    // The row losses add to what the buffer holds (the layers before).
    let mut row_loss = GpuBuffer::filled(&ctx, rows, 0.5f32).unwrap();
    liger_cuda::ops::attention_transfer::attention_transfer_rows(
        &ctx,
        &upload(&ctx, &o),
        &upload(&ctx, &target),
        &GpuBuffer::from_host(&ctx, &labels).unwrap(),
        width,
        weight,
        grad_scale,
        &mut d_o,
        &mut row_loss,
    )
    .unwrap();
    check("attention transfer d_o", &d_o, &to_f64(&d_cpu), FP32_TOL);
    let losses = row_loss.to_host().unwrap();
    let sum_gpu: f64 = losses.iter().map(|&l| l as f64 - 0.5).sum();
    assert!((sum_gpu - sum_cpu).abs() / sum_cpu < 1e-5, "loss {sum_gpu} vs CPU {sum_cpu}");
    assert!(labels.iter().zip(&losses).all(|(&l, &x)| l != liger_core::nn::loss::IGNORE || x == 0.5));
    // Mismatched sizes are typed errors, not faults.
    let err = liger_cuda::ops::attention_transfer::attention_transfer_rows(
        &ctx,
        &upload(&ctx, &o[..width]),
        &upload(&ctx, &target),
        &GpuBuffer::from_host(&ctx, &labels).unwrap(),
        width,
        weight,
        grad_scale,
        &mut d_o,
        &mut row_loss,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}
