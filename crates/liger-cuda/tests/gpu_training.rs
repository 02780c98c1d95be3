//! Training kernels against their CPU twins: chunked cross-entropy and distillation through
//! the LM head (loss and gradient), AdamW steps and global-norm clipping.

mod common;

use common::*;
use half::bf16;
use liger_core::nn::loss::{cross_entropy, distillation_loss, Teacher, IGNORE};
use liger_core::nn::optim::{clip_grad_norm, AdamWConfig, AdamWState};
use liger_core::ErrorCode;
use liger_cuda::ops::adamw::{self, GpuAdamW};
use liger_cuda::ops::cross_entropy as gpu_ce;
use liger_cuda::GpuBuffer;
use rand::Rng;

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;

#[test]
fn cross_entropy_loss_and_gradient_match_the_cpu_in_chunks() {
    let ctx = gpu();
    let mut rng = rng("cross_entropy");
    let (t, hidden, vocab) = (45, 64, 3001);
    let h = random(&mut rng, t * hidden, 1.0);
    let head = random(&mut rng, vocab * hidden, 0.5);
    let mut labels: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
    for i in [0, 1, 2, 17, 30] {
        labels[i] = IGNORE; // prompt tokens
    }
    let grad_scale = 1.0 / 40.0;
    let mut dh_cpu = vec![0.0; t * hidden];
    let cpu = cross_entropy(&h, &head, hidden, vocab, &labels, grad_scale, Some(&mut dh_cpu));
    let (hg, headg) = (upload(&ctx, &h), upload(&ctx, &head));
    // Chunks of 16 rows, so the last chunk is partial and one chunk holds ignored rows.
    for rows_per_chunk in [16, gpu_ce::rows_per_chunk::<f32>(vocab)] {
        let mut dh = poisoned(&ctx, t * hidden);
        let out =
            gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden, vocab, &labels, grad_scale, Some(&mut dh), rows_per_chunk)
                .unwrap();
        assert_eq!(out.count, cpu.count);
        let loss_err = (out.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum.abs();
        println!(
            "cross_entropy chunk {rows_per_chunk}: loss {} vs cpu {} (relative error {loss_err:.3e})",
            out.loss_sum, cpu.loss_sum
        );
        assert!(loss_err < FP32_TOL);
        check(&format!("cross_entropy dh (chunk {rows_per_chunk})"), &dh, &to_f64(&dh_cpu), FP32_TOL);
    }
    let out = gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden, vocab, &labels, grad_scale, None, 8).unwrap();
    assert!((out.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum.abs() < FP32_TOL);

    let mut bad = labels.clone();
    bad[5] = vocab as u32;
    let err = gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden, vocab, &bad, 1.0, None, 16).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let err = gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden + 1, vocab, &labels, 1.0, None, 16).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

/// `x` rounded to bf16, as f32 values (the CPU twin's inputs) and as bf16 (the GPU's).
fn round_bf16(x: &[f32]) -> (Vec<f32>, Vec<bf16>) {
    let stored: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    (stored.iter().map(|v| v.to_f32()).collect(), stored)
}

#[test]
fn bf16_cross_entropy_matches_the_cpu_on_rounded_inputs() {
    let ctx = gpu();
    let mut rng = rng("cross_entropy_bf16");
    let (t, hidden, vocab) = (150, 64, 5003);
    let (h, h_stored) = round_bf16(&random(&mut rng, t * hidden, 1.0));
    let (head, head_stored) = round_bf16(&random(&mut rng, vocab * hidden, 0.5));
    let mut labels: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
    for i in [0, 3, 64, 149] {
        labels[i] = IGNORE;
    }
    let grad_scale = 1.0 / 146.0;
    let mut dh_cpu = vec![0.0; t * hidden];
    let cpu = cross_entropy(&h, &head, hidden, vocab, &labels, grad_scale, Some(&mut dh_cpu));
    let hg = GpuBuffer::from_host(&ctx, &h_stored).unwrap();
    let headg = GpuBuffer::from_host(&ctx, &head_stored).unwrap();
    // 64 rows per chunk: a partial last chunk; and the default chunk (all rows at once).
    for rows_per_chunk in [64, gpu_ce::rows_per_chunk::<bf16>(vocab)] {
        let mut dh = poisoned(&ctx, t * hidden);
        let out =
            gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden, vocab, &labels, grad_scale, Some(&mut dh), rows_per_chunk)
                .unwrap();
        assert_eq!(out.count, cpu.count);
        let loss_err = (out.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum.abs();
        println!(
            "bf16 cross_entropy chunk {rows_per_chunk}: loss {} vs cpu {} (relative error {loss_err:.3e})",
            out.loss_sum, cpu.loss_sum
        );
        // The logits are f32 products of the rounded inputs: the loss is f32-exact.
        assert!(loss_err < FP32_TOL);
        // The gradient chunk is stored as bf16 before dh = grad x head.
        check(&format!("bf16 cross_entropy dh (chunk {rows_per_chunk})"), &dh, &to_f64(&dh_cpu), BF16_TOL);
    }
    let err = gpu_ce::cross_entropy(&ctx, &hg, &headg, hidden, vocab + 1, &labels, 1.0, None, 16).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn distillation_loss_and_gradient_match_the_cpu_in_chunks() {
    let ctx = gpu();
    let mut rng = rng("distillation");
    let (t, hidden, vocab) = (45, 64, 3001);
    let h = random(&mut rng, t * hidden, 1.0);
    let teacher_h = random(&mut rng, t * hidden, 1.0);
    let head = random(&mut rng, vocab * hidden, 0.5);
    let mut labels: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
    for i in [0, 1, 17, 30] {
        labels[i] = IGNORE;
    }
    let grad_scale = 1.0 / 41.0;
    let (hg, tg, headg) = (upload(&ctx, &h), upload(&ctx, &teacher_h), upload(&ctx, &head));
    for weight in [0.0f32, 0.3, 1.0] {
        let mut dh_cpu = vec![0.0; t * hidden];
        let teacher = Teacher { h: &teacher_h, weight };
        let cpu = distillation_loss(&h, teacher, &head, hidden, vocab, &labels, grad_scale, Some(&mut dh_cpu));
        for rows_per_chunk in [16, gpu_ce::rows_per_distillation_chunk::<f32>(vocab)] {
            let mut dh = poisoned(&ctx, t * hidden);
            let teacher = gpu_ce::GpuTeacher { h: &tg, weight };
            let out = gpu_ce::distillation_loss(
                &ctx,
                &hg,
                teacher,
                &headg,
                hidden,
                vocab,
                &labels,
                grad_scale,
                Some(&mut dh),
                rows_per_chunk,
            )
            .unwrap();
            assert_eq!(out.count, cpu.count);
            let loss_err = (out.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum.abs();
            println!(
                "distillation weight {weight} chunk {rows_per_chunk}: loss {} vs cpu {} (relative error {loss_err:.3e})",
                out.loss_sum, cpu.loss_sum
            );
            assert!(loss_err < FP32_TOL);
            check(
                &format!("distillation dh (weight {weight}, chunk {rows_per_chunk})"),
                &dh,
                &to_f64(&dh_cpu),
                FP32_TOL,
            );
        }
    }
    let bad = gpu_ce::GpuTeacher { h: &tg, weight: 1.5 };
    let err = gpu_ce::distillation_loss(&ctx, &hg, bad, &headg, hidden, vocab, &labels, 1.0, None, 16).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let short = upload(&ctx, &teacher_h[..hidden]);
    let bad = gpu_ce::GpuTeacher { h: &short, weight: 0.5 };
    let err = gpu_ce::distillation_loss(&ctx, &hg, bad, &headg, hidden, vocab, &labels, 1.0, None, 16).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn adamw_steps_match_the_cpu_optimizer() {
    let ctx = gpu();
    let mut rng = rng("adamw");
    let sizes = [1000usize, 8 * 576, 3];
    let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut params_cpu: Vec<Vec<f32>> = sizes.iter().map(|&n| random(&mut rng, n, 1.0)).collect();
    let mut params_gpu: Vec<GpuBuffer<f32>> = params_cpu.iter().map(|p| upload(&ctx, p)).collect();
    let mut state_cpu = AdamWState::new(&sizes);
    let mut state_gpu = GpuAdamW::new(&ctx, &sizes).unwrap();
    for step in 0..5 {
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| random(&mut rng, n, 0.1)).collect();
        let grads_gpu: Vec<GpuBuffer<f32>> = grads.iter().map(|g| upload(&ctx, g)).collect();
        let lr = cfg.lr * (1.0 - 0.1 * step as f32);
        let mut p_refs: Vec<&mut [f32]> = params_cpu.iter_mut().map(|p| p.as_mut_slice()).collect();
        state_cpu.update(&cfg, lr, &mut p_refs, &grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>());
        let mut p_gpu: Vec<&mut GpuBuffer<f32>> = params_gpu.iter_mut().collect();
        state_gpu.update(&ctx, &cfg, lr, &mut p_gpu, &grads_gpu.iter().collect::<Vec<_>>()).unwrap();
    }
    assert_eq!(state_gpu.step, state_cpu.step);
    for (i, (p_gpu, p_cpu)) in params_gpu.iter().zip(&params_cpu).enumerate() {
        check(&format!("adamw param {i}"), p_gpu, &to_f64(p_cpu), FP32_TOL);
        let (m, v) = state_gpu.moments(i).unwrap();
        check(&format!("adamw m {i}"), m, &to_f64(&state_cpu.m[i]), FP32_TOL);
        check(&format!("adamw v {i}"), v, &to_f64(&state_cpu.v[i]), FP32_TOL);
    }
    let mut wrong = vec![&mut params_gpu[0]];
    let err = state_gpu.update(&ctx, &cfg, 1e-3, &mut wrong, &[]).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}

#[test]
fn gradient_clipping_matches_the_cpu() {
    let ctx = gpu();
    let mut rng = rng("clip");
    let mut grads: Vec<Vec<f32>> = [70_000usize, 333].iter().map(|&n| random(&mut rng, n, 1.0)).collect();
    let mut gpu_grads: Vec<GpuBuffer<f32>> = grads.iter().map(|g| upload(&ctx, g)).collect();
    let norm_cpu = clip_grad_norm(&mut grads.iter_mut().map(|g| g.as_mut_slice()).collect::<Vec<_>>(), 1.0).unwrap();
    let norm_gpu = adamw::clip_grad_norm(&ctx, &mut gpu_grads.iter_mut().collect::<Vec<_>>(), 1.0).unwrap();
    let err = ((norm_gpu - norm_cpu) / norm_cpu).abs() as f64;
    println!("grad norm {norm_gpu} vs cpu {norm_cpu} (relative error {err:.3e})");
    assert!(err < FP32_TOL);
    for (g_gpu, g_cpu) in gpu_grads.iter().zip(&grads) {
        check("clipped gradient", g_gpu, &to_f64(g_cpu), FP32_TOL);
    }
    let mut bad = [upload(&ctx, &[1.0, f32::INFINITY])];
    let err = adamw::clip_grad_norm(&ctx, &mut bad.iter_mut().collect::<Vec<_>>(), 1.0).unwrap_err();
    assert_eq!(err.code, ErrorCode::NonFiniteLoss);
}

/// With freed memory kept in the pool, the memory a training step may plan with counts what the
/// pool holds unused, not only what the driver reports free (else a model that follows a large
/// job would recompute every layer for no reason).
#[test]
fn pooled_unused_memory_counts_as_available() {
    use liger_cuda::model::memory::{available_memory, keep_freed_memory_pooled};
    let ctx = gpu();
    keep_freed_memory_pooled(&ctx).unwrap();
    let bytes = 1usize << 30;
    let block = GpuBuffer::<f32>::zeros(&ctx, bytes / 4).unwrap();
    ctx.synchronize().unwrap();
    let while_held = available_memory(&ctx).unwrap();
    drop(block);
    ctx.synchronize().unwrap();
    let (driver_free, _) = ctx.stream().context().mem_get_info().unwrap();
    let after = available_memory(&ctx).unwrap();
    println!("available while held {while_held}, after the free {after}, driver free {driver_free}");
    assert!(
        after >= driver_free as u64 + bytes as u64 * 99 / 100,
        "the freed GiB kept in the pool is not counted: {after} vs driver {driver_free}"
    );
    assert!(
        after >= while_held + bytes as u64 * 99 / 100,
        "freeing a GiB did not make a GiB available: {while_held} -> {after}"
    );
}
