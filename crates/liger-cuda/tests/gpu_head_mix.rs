//! Learned branch weights per head: the mix, the gradient split and the weights' gradients
//! against their CPU twins in `liger_core::liger::head_mix`, with and without the window
//! branch, its output stored as f32 and as bf16; outputs poisoned before each launch.

mod common;

use common::mixer::round;
use common::*;
use liger_core::liger::head_mix::{head_mix_grads, mix_branches, split_branch_grads};
use liger_core::liger::{HeadMix, HeadShape, LigerAttentionConfig};
use liger_core::ErrorCode;
use liger_cuda::buffer::GpuElement;
use liger_cuda::ops::head_mix::{self as gpu, GpuHeadMix};
use liger_cuda::GpuContext;
use rand::rngs::StdRng;

fn check_type<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, rows: usize, use_swa: bool) {
    let shape = HeadShape::new(9, 3, 64).unwrap();
    let n = rows * shape.hq * shape.d;
    let cfg = LigerAttentionConfig { use_swa, ..Default::default() };
    let mix = HeadMix { alpha: random(rng, shape.hq, 1.0), beta: random(rng, shape.hq, 1.5) };
    let device_mix = GpuHeadMix::upload(ctx, &mix).unwrap();
    let g = random(rng, n, 2.0);
    // The window branch as stored in T: its rounded values are the twin's input.
    let a = round::<T>(random(rng, n, 2.0));
    let d_o = random(rng, n, 1.0);
    let label = format!("{} rows={rows} swa={use_swa}", T::KERNEL_SUFFIX);
    // A copy in T may round the other way at a tie of its last bit.
    let copy_tol = if T::KERNEL_SUFFIX == "bf16" { 1e-2 } else { 1e-6 };
    let (a_dev, g_dev, d_o_dev) = (up::<T>(ctx, &a), upload(ctx, &g), upload(ctx, &d_o));
    let a_opt = use_swa.then_some(&a_dev);

    // The mix, f32 and its copy in T.
    let mut want = g.clone();
    mix_branches(&cfg, Some(&mix), shape, &mut want, use_swa.then_some(&a[..]));
    let (mut o, mut o_t) = (poisoned(ctx, n), poison::<T>(ctx, n));
    gpu::head_mix_to(ctx, &device_mix, shape.d, &g_dev, a_opt, &mut o, Some(&mut o_t)).unwrap();
    check(&format!("head_mix_to {label}"), &o, &to_f64(&want), 1e-6);
    check_host(&format!("head_mix_to copy {label}"), &host(&o_t), &to_f64(&round::<T>(want.clone())), copy_tol);
    let mut o_alone = poisoned(ctx, n);
    gpu::head_mix_to(ctx, &device_mix, shape.d, &g_dev, a_opt, &mut o_alone, None).unwrap();
    check(&format!("head_mix_to without copy {label}"), &o_alone, &to_f64(&want), 1e-6);

    // The split of the output gradient.
    let (want_g, want_a) = split_branch_grads(&cfg, Some(&mix), shape, &d_o);
    let mut d_g = poisoned(ctx, n);
    let mut d_a = use_swa.then(|| poison::<T>(ctx, n));
    gpu::head_mix_split(ctx, &device_mix, shape.d, &d_o_dev, &mut d_g, d_a.as_mut()).unwrap();
    check(&format!("head_mix_split recurrent {label}"), &d_g, &to_f64(&want_g), 1e-6);
    if let Some(d_a) = &d_a {
        check_host(&format!("head_mix_split window {label}"), &host(d_a), &to_f64(&round::<T>(want_a)), copy_tol);
    }

    // The weights' gradients, added to what the buffers hold.
    let start = HeadMix { alpha: random(rng, shape.hq, 1.0), beta: random(rng, shape.hq, 1.0) };
    let mut want_grad = start.clone();
    head_mix_grads(shape, &d_o, &g, use_swa.then_some(&a[..]), &mut want_grad);
    let mut grad = GpuHeadMix::upload(ctx, &start).unwrap();
    gpu::head_mix_grads(ctx, shape.d, &d_o_dev, &g_dev, a_opt, &mut grad).unwrap();
    let got = grad.to_host().unwrap();
    // Sums of rows * d products in f32 on the GPU against the twin's f64 row sums.
    let tol = 1e-4;
    check_host(&format!("head_mix_grads alpha {label}"), &got.alpha, &to_f64(&want_grad.alpha), tol);
    check_host(&format!("head_mix_grads beta {label}"), &got.beta, &to_f64(&want_grad.beta), tol);
}

#[test]
fn head_mix_kernels_match_the_cpu() {
    let ctx = gpu();
    let mut rng = rng("head_mix");
    for rows in [1usize, 3, 257, 4096] {
        for use_swa in [true, false] {
            check_type::<f32>(&ctx, &mut rng, rows, use_swa);
            check_type::<half::bf16>(&ctx, &mut rng, rows, use_swa);
        }
    }
    // Shapes that disagree are typed errors.
    let mix = GpuHeadMix::zeros(&ctx, 3).unwrap();
    let err =
        gpu::head_mix_to::<f32>(&ctx, &mix, 8, &poisoned(&ctx, 25), None, &mut poisoned(&ctx, 25), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    let err =
        gpu::head_mix_split::<f32>(&ctx, &mix, 8, &poisoned(&ctx, 24), &mut poisoned(&ctx, 23), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
}
