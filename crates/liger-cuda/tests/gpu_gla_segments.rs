//! The GPU mixer with its scans cut into time segments (`TimeSegments`) against the CPU twins,
//! on fresh random inputs: forward from a random initial state with its final state, and
//! backward, for every mixer kind (gsa included), uneven segment lengths, tiny sequences, side-by-side and
//! one-launch-each backward scans, and the automatic plan; and the segmented and sequential
//! (one segment) forms against each other.

mod common;

use common::mixer::{MixerProblem, OUTPUTS};
use common::*;
use half::bf16;
use liger_core::liger::{HeadShape, MixerKind};
use liger_core::testing::max_rel_error;
use liger_core::ErrorCode;
use liger_cuda::ops::mixer::{
    mixer_chunk_backward_in_segments, mixer_chunk_forward_in_segments, mixer_segment_plan, TimeSegments,
};
use liger_cuda::{GpuContext, GpuElement};

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;
/// The segmented and sequential GPU scans differ only by float rounding.
const AGREE_TOL: f64 = 1e-5;

/// Checks the GPU's results under `segments` against the CPU twin; returns them.
fn check_against_cpu<T: GpuElement>(
    ctx: &GpuContext,
    p: &MixerProblem,
    segments: TimeSegments,
    tol: f64,
) -> [Vec<f32>; 5] {
    let label = format!("{} {segments:?}", p.label::<T>());
    let got = p.gpu::<T>(ctx, segments);
    for (i, (name, want)) in OUTPUTS.iter().zip(p.cpu()).enumerate() {
        // The final state is f32 in every case.
        let bound = if i == 1 { FP32_TOL.max(tol / 10.0) } else { tol };
        check_host(&format!("{label} {name}"), &got[i], &want, bound);
    }
    got
}

/// The results under `segments` and under one segment (the sequential scan) agree.
fn check_agreement(label: &str, a: &[Vec<f32>; 5], b: &[Vec<f32>; 5]) {
    for ((name, x), y) in OUTPUTS.iter().zip(a).zip(b) {
        let err = max_rel_error(x, &to_f64(y));
        println!("{label} {name}: segmented vs sequential max relative error {err:.3e}");
        assert!(err < AGREE_TOL, "{label} {name}: segmented and sequential scans differ by {err:.3e}");
    }
}

fn check_kind(kind: MixerKind) {
    let ctx = gpu();
    let mut rng = rng(&format!("segments {}", kind.name()));
    // T = 100 in 7 segments of 15 tokens (the last 10): segments end inside scan tiles.
    let p = MixerProblem::new::<f32>(&mut rng, kind, 2, 100, HeadShape::new(4, 2, 64).unwrap(), 2.0);
    let segmented = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(7), FP32_TOL);
    let sequential = p.gpu::<f32>(&ctx, TimeSegments::Fixed(1));
    check_agreement(&format!("{} d=64 f32", kind.name()), &segmented, &sequential);
    // bf16 with head size 128 in 3 segments of 34 tokens (the last 32).
    let p = MixerProblem::new::<bf16>(&mut rng, kind, 2, 100, HeadShape::new(4, 2, 128).unwrap(), 2.0);
    check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Fixed(3), BF16_TOL);
}

#[test]
fn gla_in_segments_matches_cpu() {
    check_kind(MixerKind::Gla);
}

#[test]
fn hgrn2_in_segments_matches_cpu() {
    check_kind(MixerKind::Hgrn2);
}

#[test]
fn retention_in_segments_matches_cpu() {
    check_kind(MixerKind::Retention);
}

#[test]
fn mamba2_in_segments_matches_cpu() {
    check_kind(MixerKind::Mamba2);
}

#[test]
fn rwkv6_in_segments_matches_cpu() {
    check_kind(MixerKind::Rwkv6);
}

#[test]
fn linear_in_segments_matches_cpu() {
    check_kind(MixerKind::Linear);
}

#[test]
fn gsa_in_segments_matches_cpu() {
    // Both slot passes, and the backward's six scans, cut over time.
    check_kind(MixerKind::Gsa);
}

#[test]
fn tiny_sequences_and_odd_heads_in_segments_match_cpu() {
    let ctx = gpu();
    let mut rng = rng("segments tiny");
    // T = 5 in segments of 2, 2 and 1 tokens; d = 80, 8 query heads per kv head.
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Gla, 1, 5, HeadShape::new(8, 1, 80).unwrap(), 2.0);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(4), FP32_TOL);
    // One token per segment, and more segments asked for than tokens (one per token).
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Rwkv6, 3, 6, HeadShape::new(2, 2, 32).unwrap(), 2.0);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(6), FP32_TOL);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(50), FP32_TOL);
    // A single token cannot be cut.
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Mamba2, 2, 1, HeadShape::new(4, 2, 64).unwrap(), 2.0);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(3), FP32_TOL);
}

#[test]
fn large_grids_in_segments_match_cpu() {
    // 32 sequences x 2 kv heads x 4 column blocks = 256 CTAs per scan: with 3 segments the
    // backward's scans fill the GPU one launch at a time.
    let ctx = gpu();
    let mut rng = rng("segments full grid");
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Gla, 32, 24, HeadShape::new(4, 2, 128).unwrap(), 2.0);
    let segmented = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(3), FP32_TOL);
    check_agreement("gla full grid", &segmented, &p.gpu::<f32>(&ctx, TimeSegments::Fixed(1)));
}

#[test]
fn the_automatic_plan_matches_cpu_and_the_sequential_scan() {
    // One sequence, one kv head: 2 CTAs per scan, so the plan cuts 300 tokens into segments
    // (ending on tile boundaries, the last one shorter).
    let ctx = gpu();
    let mut rng = rng("segments auto");
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Gla, 1, 300, HeadShape::new(3, 1, 64).unwrap(), 2.0);
    let plan = mixer_segment_plan::<f32>(&ctx, &p.cfg, p.dims).unwrap();
    println!("automatic plan for B=1 T=300 3/1 d=64: {plan:?}");
    assert!(plan.forward_segments > 1 && plan.backward_segments > 1, "{plan:?}");
    let auto = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Auto, FP32_TOL);
    check_agreement("gla auto", &auto, &p.gpu::<f32>(&ctx, TimeSegments::Fixed(1)));
    let p = MixerProblem::new::<bf16>(&mut rng, MixerKind::Hgrn2, 2, 257, HeadShape::new(2, 1, 128).unwrap(), 2.0);
    check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Auto, BF16_TOL);
}

#[test]
fn zero_segments_is_a_typed_error() {
    let ctx = gpu();
    let mut rng = rng("segments zero");
    let p = MixerProblem::new::<f32>(&mut rng, MixerKind::Gla, 1, 8, HeadShape::new(2, 1, 64).unwrap(), 2.0);
    let (q, k, v) = (upload(&ctx, &p.q), upload(&ctx, &p.k), upload(&ctx, &p.v));
    let mut o = poisoned(&ctx, p.q.len());
    let err =
        mixer_chunk_forward_in_segments(&ctx, &p.cfg, p.dims, &q, &k, &v, &mut o, None, None, TimeSegments::Fixed(0))
            .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("at least one time segment"), "{}", err.message);
    let (mut dq, mut dk, mut dv) = (poisoned(&ctx, p.q.len()), poisoned(&ctx, p.k.len()), poisoned(&ctx, p.v.len()));
    let err = mixer_chunk_backward_in_segments(
        &ctx,
        &p.cfg,
        p.dims,
        &q,
        &k,
        &v,
        &upload(&ctx, &p.d_o),
        &mut dq,
        &mut dk,
        &mut dv,
        TimeSegments::Fixed(0),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}
