//! The chunked tensor-core mixer (`TimeSegments::Chunked`, bf16, head sizes 64 and 128)
//! against the CPU twins on fresh random inputs: every mixer kind, GQA groups 1, 3 and 4,
//! sequences shorter than a chunk, one chunk, and ragged last chunks, forward from a random
//! initial state with its final state, and backward; strong decays stay finite; rwkv6, other
//! head sizes and f32 fall back to the scan, and are right there too.

mod common;

use common::mixer::{MixerProblem, OUTPUTS};
use common::*;
use half::bf16;
use liger_core::liger::{HeadShape, MixerKind};
use liger_cuda::ops::mixer::{mixer_uses_chunked, TimeSegments};
use liger_cuda::{GpuContext, GpuElement};

/// bf16 outputs, relative to the output's scale (as the other bf16 mixer tests).
const BF16_TOL: f64 = 2e-2;
/// The final state: f32 out, but built from bf16 products.
const STATE_TOL: f64 = 1e-2;
const FP32_TOL: f64 = 1e-4;

/// Checks the GPU under `segments` against the CPU twin; returns the largest error.
fn check_against_cpu<T: GpuElement>(
    ctx: &GpuContext,
    p: &MixerProblem,
    segments: TimeSegments,
    tol: f64,
    state_tol: f64,
) -> f64 {
    let label = p.label::<T>();
    let got = p.gpu::<T>(ctx, segments);
    let want = p.cpu();
    let mut worst = 0.0f64;
    for (i, name) in OUTPUTS.iter().enumerate() {
        let bound = if i == 1 { state_tol } else { tol };
        worst = worst.max(check_host(&format!("{label} {segments:?} {name}"), &got[i], &want[i], bound));
    }
    worst
}

/// Every head size, GQA group and sequence length of the brief for `kind`.
fn check_kind(kind: MixerKind) {
    let ctx = gpu();
    let mut rng = rng(&format!("chunked {}", kind.name()));
    let mut worst = 0.0f64;
    for d in [64, 128] {
        assert!(mixer_uses_chunked::<bf16>(kind, d, TimeSegments::Chunked));
        assert_eq!(
            mixer_uses_chunked::<bf16>(kind, d, TimeSegments::Auto),
            d == 64,
            "Auto takes the chunked form at d = 64 only"
        );
        for (hq, hkv) in [(2, 2), (3, 1), (8, 2)] {
            for tokens in [1, 37, 64, 100, 300] {
                let batch = if tokens == 300 { 1 } else { 2 };
                let p =
                    MixerProblem::new::<bf16>(&mut rng, kind, batch, tokens, HeadShape::new(hq, hkv, d).unwrap(), 2.0);
                worst = worst.max(check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Chunked, BF16_TOL, STATE_TOL));
            }
        }
    }
    println!("chunked {}: largest relative error {worst:.3e}", kind.name());
}

#[test]
fn chunked_gla_matches_cpu() {
    check_kind(MixerKind::Gla);
}

#[test]
fn chunked_hgrn2_matches_cpu() {
    check_kind(MixerKind::Hgrn2);
}

#[test]
fn chunked_retention_matches_cpu() {
    check_kind(MixerKind::Retention);
}

#[test]
fn chunked_mamba2_matches_cpu() {
    check_kind(MixerKind::Mamba2);
}

#[test]
fn rwkv6_keeps_the_scan_under_chunked_and_matches_cpu() {
    let ctx = gpu();
    let mut rng = rng("chunked rwkv6");
    for d in [64, 128] {
        assert!(!mixer_uses_chunked::<bf16>(MixerKind::Rwkv6, d, TimeSegments::Chunked));
        let p = MixerProblem::new::<bf16>(&mut rng, MixerKind::Rwkv6, 2, 100, HeadShape::new(8, 2, d).unwrap(), 2.0);
        check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Chunked, BF16_TOL, STATE_TOL);
    }
}

#[test]
fn chunked_linear_matches_cpu() {
    check_kind(MixerKind::Linear);
}

#[test]
fn strong_decays_stay_finite() {
    // rwkv6's log-gate is -exp(k): with k up to 6 a step's decay is as small as exp(-403),
    // which underflows to 0 in f32. rwkv6 itself keeps the scan (see the test above); mamba2's
    // scalar gate -softplus(mean k) makes strong decays the chunked form does run.
    let ctx = gpu();
    let mut rng = rng("chunked strong decays");
    for d in [64, 128] {
        let p = MixerProblem::new::<bf16>(&mut rng, MixerKind::Rwkv6, 2, 150, HeadShape::new(4, 1, d).unwrap(), 6.0);
        let got = p.gpu::<bf16>(&ctx, TimeSegments::Chunked);
        for (name, x) in OUTPUTS.iter().zip(&got) {
            assert!(x.iter().all(|v| v.is_finite()), "rwkv6 {name}: not finite under strong decays (d = {d})");
        }
        check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Chunked, BF16_TOL, STATE_TOL);
        assert!(mixer_uses_chunked::<bf16>(MixerKind::Mamba2, d, TimeSegments::Chunked));
        let p = MixerProblem::new::<bf16>(&mut rng, MixerKind::Mamba2, 2, 150, HeadShape::new(4, 1, d).unwrap(), 6.0);
        let got = p.gpu::<bf16>(&ctx, TimeSegments::Chunked);
        for (name, x) in OUTPUTS.iter().zip(&got) {
            assert!(x.iter().all(|v| v.is_finite()), "{name}: not finite under strong decays (d = {d})");
        }
        check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Chunked, BF16_TOL, STATE_TOL);
    }
}

#[test]
fn f32_inputs_take_bf16_chunk_products_only_when_asked() {
    // A bf16 model's mixer runs on f32 activations with AutoBf16Products: chunked at d = 64,
    // f32 in and out, within the bf16 bound; plain Auto keeps f32 inputs on the exact scan.
    let ctx = gpu();
    let mut rng = rng("chunked f32 inputs");
    assert!(!mixer_uses_chunked::<f32>(MixerKind::Gla, 64, TimeSegments::Auto));
    assert!(mixer_uses_chunked::<f32>(MixerKind::Gla, 64, TimeSegments::AutoBf16Products));
    assert!(
        !mixer_uses_chunked::<f32>(MixerKind::Gla, 128, TimeSegments::AutoBf16Products),
        "d = 128 was measured slower"
    );
    for (kind, d, segments) in
        [(MixerKind::Gla, 64, TimeSegments::AutoBf16Products), (MixerKind::Hgrn2, 128, TimeSegments::Chunked)]
    {
        assert!(mixer_uses_chunked::<f32>(kind, d, segments));
        let p = MixerProblem::new::<f32>(&mut rng, kind, 2, 100, HeadShape::new(6, 2, d).unwrap(), 2.0);
        check_against_cpu::<f32>(&ctx, &p, segments, BF16_TOL, STATE_TOL);
    }
}

#[test]
fn other_head_sizes_and_f32_take_the_scan_and_are_right() {
    let ctx = gpu();
    let mut rng = rng("chunked fallback");
    for d in [32, 80] {
        assert!(
            !mixer_uses_chunked::<bf16>(MixerKind::Gla, d, TimeSegments::Chunked),
            "d = {d} has no chunked kernels"
        );
        let p = MixerProblem::new::<bf16>(&mut rng, MixerKind::Gla, 2, 100, HeadShape::new(4, 2, d).unwrap(), 2.0);
        check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Chunked, BF16_TOL, BF16_TOL / 10.0);
    }
    // f32 under Auto keeps the exact scan, at the f32 bound.
    assert!(!mixer_uses_chunked::<f32>(MixerKind::Mamba2, 64, TimeSegments::Auto));
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Mamba2, 2, 100, HeadShape::new(3, 1, 64).unwrap(), 2.0);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Auto, FP32_TOL, FP32_TOL);
    // Fixed segments and Scan ask for the scan.
    assert!(
        !mixer_uses_chunked::<bf16>(MixerKind::Gla, 64, TimeSegments::Fixed(1))
            && !mixer_uses_chunked::<bf16>(MixerKind::Gla, 128, TimeSegments::Scan)
    );
}
