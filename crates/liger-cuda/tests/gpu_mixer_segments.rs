//! The GPU mixer with its scans cut into time segments (`TimeSegments`) against the CPU twins,
//! on fresh random inputs: forward from a random initial state with its final state, and
//! backward, for every mixer kind (gsa included), uneven segment lengths, tiny sequences, side-by-side and
//! one-launch-each backward scans, and the automatic plan; and the segmented and sequential
//! (one segment) forms against each other.

mod common;

use common::*;
use half::bf16;
use liger_core::liger::{chunk_backward, chunk_forward, HeadShape, MixerConfig, MixerKind, MixerState, DEFAULT_CHUNK_SIZE};
use liger_core::testing::max_rel_error;
use liger_core::ErrorCode;
use liger_cuda::ops::mixer::{mixer_chunk_backward_in_segments, mixer_chunk_forward_in_segments, mixer_segment_plan, mixer_state_len, MixerDims, TimeSegments};
use liger_cuda::{GpuContext, GpuElement};
use rand::rngs::StdRng;

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;
/// The segmented and sequential GPU scans differ only by float rounding.
const AGREE_TOL: f64 = 1e-5;

/// One problem's raw inputs (rounded to the element type), initial state and output gradient.
struct Problem {
    cfg: MixerConfig,
    dims: MixerDims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    initial: Vec<f32>,
}

/// The GPU's results: o, final state, dq, dk, dv.
struct Outputs {
    o: Vec<f32>,
    fin: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn round<T: GpuElement>(x: Vec<f32>) -> Vec<f32> {
    x.into_iter().map(|v| T::from_f32(v).to_f32()).collect()
}

impl Problem {
    fn new<T: GpuElement>(rng: &mut StdRng, kind: MixerKind, batch: usize, tokens: usize, shape: HeadShape) -> Self {
        let cfg = MixerConfig::new(kind);
        let (nq, nkv) = (batch * tokens * shape.hq * shape.d, batch * tokens * shape.hkv * shape.d);
        Problem {
            cfg,
            dims: MixerDims { batch, tokens, shape },
            q: round::<T>(random(rng, nq, 2.0)),
            k: round::<T>(random(rng, nkv, 2.0)),
            v: round::<T>(random(rng, nkv, 1.0)),
            d_o: round::<T>(random(rng, nq, 1.0)),
            initial: random(rng, batch * mixer_state_len(&cfg, shape), 0.5),
        }
    }

    /// Sequence `b`'s part of a `[B, ...]` tensor.
    fn seq<'a>(&self, x: &'a [f32], b: usize) -> &'a [f32] {
        let per = x.len() / self.dims.batch;
        &x[b * per..(b + 1) * per]
    }

    /// CPU forward from the initial state and backward from a zero state: (o, final, dq, dk, dv).
    fn cpu(&self) -> [Vec<f64>; 5] {
        let mut r: [Vec<f64>; 5] = Default::default();
        let shape = self.dims.shape;
        for b in 0..self.dims.batch {
            let mut init = MixerState::zeros(&self.cfg, shape);
            init.data.copy_from_slice(self.seq(&self.initial, b));
            let (q, k, v) = (self.seq(&self.q, b), self.seq(&self.k, b), self.seq(&self.v, b));
            let (o, fin) = chunk_forward(&self.cfg, shape, q, k, v, Some(&init), DEFAULT_CHUNK_SIZE).unwrap();
            let g = chunk_backward(&self.cfg, shape, q, k, v, self.seq(&self.d_o, b), DEFAULT_CHUNK_SIZE).unwrap();
            for (out, x) in r.iter_mut().zip([&o, &fin.data, &g.dq, &g.dk, &g.dv]) {
                out.extend(to_f64(x));
            }
        }
        r
    }

    fn gpu<T: GpuElement>(&self, ctx: &GpuContext, segments: TimeSegments) -> Outputs {
        let (q, k, v) = (up::<T>(ctx, &self.q), up::<T>(ctx, &self.k), up::<T>(ctx, &self.v));
        let mut o = poison::<T>(ctx, self.q.len());
        let mut fin = poisoned(ctx, self.initial.len());
        mixer_chunk_forward_in_segments(ctx, &self.cfg, self.dims, &q, &k, &v, &mut o, Some(&upload(ctx, &self.initial)), Some(&mut fin), segments).unwrap();
        let (mut dq, mut dk, mut dv) = (poison::<T>(ctx, self.q.len()), poison::<T>(ctx, self.k.len()), poison::<T>(ctx, self.v.len()));
        mixer_chunk_backward_in_segments(ctx, &self.cfg, self.dims, &q, &k, &v, &up::<T>(ctx, &self.d_o), &mut dq, &mut dk, &mut dv, segments).unwrap();
        Outputs { o: host(&o), fin: fin.to_host().unwrap(), dq: host(&dq), dk: host(&dk), dv: host(&dv) }
    }
}

/// Checks the GPU's results under `segments` against the CPU twin; returns them.
fn check_against_cpu<T: GpuElement>(ctx: &GpuContext, p: &Problem, segments: TimeSegments, tol: f64) -> Outputs {
    let label = format!("{} B={} T={} d={} {} {segments:?}", p.cfg.kind.name(), p.dims.batch, p.dims.tokens, p.dims.shape.d, T::KERNEL_SUFFIX);
    let got = p.gpu::<T>(ctx, segments);
    let [o, fin, dq, dk, dv] = p.cpu();
    check_host(&format!("{label} forward o"), &got.o, &o, tol);
    check_host(&format!("{label} final state"), &got.fin, &fin, FP32_TOL.max(tol / 10.0));
    check_host(&format!("{label} dq"), &got.dq, &dq, tol);
    check_host(&format!("{label} dk"), &got.dk, &dk, tol);
    check_host(&format!("{label} dv"), &got.dv, &dv, tol);
    got
}

/// The results under `segments` and under one segment (the sequential scan) agree.
fn check_agreement(label: &str, a: &Outputs, b: &Outputs) {
    for (name, x, y) in [("o", &a.o, &b.o), ("final", &a.fin, &b.fin), ("dq", &a.dq, &b.dq), ("dk", &a.dk, &b.dk), ("dv", &a.dv, &b.dv)] {
        let err = max_rel_error(x, &to_f64(y));
        println!("{label} {name}: segmented vs sequential max relative error {err:.3e}");
        assert!(err < AGREE_TOL, "{label} {name}: segmented and sequential scans differ by {err:.3e}");
    }
}

fn check_kind(kind: MixerKind) {
    let ctx = gpu();
    let mut rng = rng(&format!("segments {}", kind.name()));
    // T = 100 in 7 segments of 15 tokens (the last 10): segments end inside scan tiles.
    let p = Problem::new::<f32>(&mut rng, kind, 2, 100, HeadShape::new(4, 2, 64).unwrap());
    let segmented = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(7), FP32_TOL);
    let sequential = p.gpu::<f32>(&ctx, TimeSegments::Fixed(1));
    check_agreement(&format!("{} d=64 f32", kind.name()), &segmented, &sequential);
    // bf16 with head size 128 in 3 segments of 34 tokens (the last 32).
    let p = Problem::new::<bf16>(&mut rng, kind, 2, 100, HeadShape::new(4, 2, 128).unwrap());
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
    let p = Problem::new::<f32>(&mut rng, MixerKind::Gla, 1, 5, HeadShape::new(8, 1, 80).unwrap());
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(4), FP32_TOL);
    // One token per segment, and more segments asked for than tokens (one per token).
    let p = Problem::new::<f32>(&mut rng, MixerKind::Rwkv6, 3, 6, HeadShape::new(2, 2, 32).unwrap());
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(6), FP32_TOL);
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(50), FP32_TOL);
    // A single token cannot be cut.
    let p = Problem::new::<f32>(&mut rng, MixerKind::Mamba2, 2, 1, HeadShape::new(4, 2, 64).unwrap());
    check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(3), FP32_TOL);
}

#[test]
fn large_grids_in_segments_match_cpu() {
    // 32 sequences x 2 kv heads x 4 column blocks = 256 CTAs per scan: with 3 segments the
    // backward's scans fill the GPU one launch at a time.
    let ctx = gpu();
    let mut rng = rng("segments full grid");
    let p = Problem::new::<f32>(&mut rng, MixerKind::Gla, 32, 24, HeadShape::new(4, 2, 128).unwrap());
    let segmented = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Fixed(3), FP32_TOL);
    check_agreement("gla full grid", &segmented, &p.gpu::<f32>(&ctx, TimeSegments::Fixed(1)));
}

#[test]
fn the_automatic_plan_matches_cpu_and_the_sequential_scan() {
    // One sequence, one kv head: 2 CTAs per scan, so the plan cuts 300 tokens into segments
    // (ending on tile boundaries, the last one shorter).
    let ctx = gpu();
    let mut rng = rng("segments auto");
    let p = Problem::new::<f32>(&mut rng, MixerKind::Gla, 1, 300, HeadShape::new(3, 1, 64).unwrap());
    let plan = mixer_segment_plan::<f32>(&ctx, &p.cfg, p.dims).unwrap();
    println!("automatic plan for B=1 T=300 3/1 d=64: {plan:?}");
    assert!(plan.forward_segments > 1 && plan.backward_segments > 1, "{plan:?}");
    let auto = check_against_cpu::<f32>(&ctx, &p, TimeSegments::Auto, FP32_TOL);
    check_agreement("gla auto", &auto, &p.gpu::<f32>(&ctx, TimeSegments::Fixed(1)));
    let p = Problem::new::<bf16>(&mut rng, MixerKind::Hgrn2, 2, 257, HeadShape::new(2, 1, 128).unwrap());
    check_against_cpu::<bf16>(&ctx, &p, TimeSegments::Auto, BF16_TOL);
}

#[test]
fn zero_segments_is_a_typed_error() {
    let ctx = gpu();
    let mut rng = rng("segments zero");
    let p = Problem::new::<f32>(&mut rng, MixerKind::Gla, 1, 8, HeadShape::new(2, 1, 64).unwrap());
    let (q, k, v) = (upload(&ctx, &p.q), upload(&ctx, &p.k), upload(&ctx, &p.v));
    let mut o = poisoned(&ctx, p.q.len());
    let err = mixer_chunk_forward_in_segments(&ctx, &p.cfg, p.dims, &q, &k, &v, &mut o, None, None, TimeSegments::Fixed(0)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("at least one time segment"), "{}", err.message);
    let (mut dq, mut dk, mut dv) = (poisoned(&ctx, p.q.len()), poisoned(&ctx, p.k.len()), poisoned(&ctx, p.v.len()));
    let err = mixer_chunk_backward_in_segments(&ctx, &p.cfg, p.dims, &q, &k, &v, &upload(&ctx, &p.d_o), &mut dq, &mut dk, &mut dv, TimeSegments::Fixed(0)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}
