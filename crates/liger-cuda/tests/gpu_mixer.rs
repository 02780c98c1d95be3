//! The gated recurrent mixers on the GPU against their CPU twins (`liger_core::liger`), per
//! sequence, on fresh random inputs: forward with a random initial state, final state,
//! backward, and decoding steps after a prefill against the forward of the whole sequence.
//! B=2, T=100 (not a multiple of the chunk), GQA 4/2 heads, d=64 and d=128; f32 and bf16; every
//! mixer kind, gsa with 64 and 16 slots.

mod common;

use common::*;
use half::bf16;
use liger_core::liger::{
    chunk_backward, chunk_forward, HeadShape, MixerConfig, MixerKind, MixerState, DEFAULT_CHUNK_SIZE,
};
use liger_core::ErrorCode;
use liger_cuda::ops::mixer::{
    mixer_chunk_backward, mixer_chunk_forward, mixer_recurrent_step, mixer_state_len, MixerDims,
};
use liger_cuda::{GpuContext, GpuElement};
use rand::rngs::StdRng;

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;
const BATCH: usize = 2;
const TOKENS: usize = 100;

/// One problem: raw inputs (already rounded to the element type), an initial state and d_o.
struct Problem {
    cfg: MixerConfig,
    dims: MixerDims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    initial: Vec<f32>,
}

fn round<T: GpuElement>(x: Vec<f32>) -> Vec<f32> {
    x.into_iter().map(|v| T::from_f32(v).to_f32()).collect()
}

impl Problem {
    fn new<T: GpuElement>(rng: &mut StdRng, cfg: MixerConfig, d: usize) -> Self {
        let shape = HeadShape::new(4, 2, d).unwrap();
        let dims = MixerDims { batch: BATCH, tokens: TOKENS, shape };
        let (nq, nkv) = (BATCH * TOKENS * shape.hq * d, BATCH * TOKENS * shape.hkv * d);
        Problem {
            cfg,
            dims,
            q: round::<T>(random(rng, nq, 2.0)),
            k: round::<T>(random(rng, nkv, 2.0)),
            v: round::<T>(random(rng, nkv, 1.0)),
            d_o: round::<T>(random(rng, nq, 1.0)),
            initial: random(rng, BATCH * mixer_state_len(&cfg, shape), 0.5),
        }
    }
    fn shape(&self) -> HeadShape {
        self.dims.shape
    }
    /// Sequence `b`'s part of a `[B, ...]` tensor.
    fn seq<'a>(&self, x: &'a [f32], b: usize) -> &'a [f32] {
        let per = x.len() / BATCH;
        &x[b * per..(b + 1) * per]
    }
    fn state(&self, b: usize) -> MixerState {
        let mut s = MixerState::zeros(&self.cfg, self.shape());
        s.data.copy_from_slice(self.seq(&self.initial, b));
        s
    }
    /// CPU forward of every sequence from the initial state: (o, final states).
    fn cpu_forward(&self, with_initial: bool) -> (Vec<f64>, Vec<f64>) {
        let (mut o, mut fin) = (Vec::new(), Vec::new());
        for b in 0..BATCH {
            let init = with_initial.then(|| self.state(b));
            let (ob, sb) = chunk_forward(
                &self.cfg,
                self.shape(),
                self.seq(&self.q, b),
                self.seq(&self.k, b),
                self.seq(&self.v, b),
                init.as_ref(),
                DEFAULT_CHUNK_SIZE,
            )
            .unwrap();
            o.extend(to_f64(&ob));
            fin.extend(to_f64(&sb.data));
        }
        (o, fin)
    }
}

/// Forward with initial and final state, backward, and prefill + decoding steps.
fn check_mixer<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, cfg: MixerConfig, d: usize, tol: f64) {
    let p = Problem::new::<T>(rng, cfg, d);
    let label = format!("{} d={d} {}", cfg.kind.name(), T::KERNEL_SUFFIX);
    let (q, k, v) = (up::<T>(ctx, &p.q), up::<T>(ctx, &p.k), up::<T>(ctx, &p.v));

    // Forward from a random initial state.
    let (o_ref, fin_ref) = p.cpu_forward(true);
    let mut o = poison::<T>(ctx, p.q.len());
    let mut fin = poisoned(ctx, p.initial.len());
    mixer_chunk_forward(ctx, &p.cfg, p.dims, &q, &k, &v, &mut o, Some(&upload(ctx, &p.initial)), Some(&mut fin))
        .unwrap();
    check_host(&format!("{label} forward o"), &host(&o), &o_ref, tol);
    check(&format!("{label} final state"), &fin, &fin_ref, FP32_TOL.max(tol / 10.0));

    // Backward from a zero initial state.
    let (mut dq_ref, mut dk_ref, mut dv_ref) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..BATCH {
        let g = chunk_backward(
            &p.cfg,
            p.shape(),
            p.seq(&p.q, b),
            p.seq(&p.k, b),
            p.seq(&p.v, b),
            p.seq(&p.d_o, b),
            DEFAULT_CHUNK_SIZE,
        )
        .unwrap();
        dq_ref.extend(to_f64(&g.dq));
        dk_ref.extend(to_f64(&g.dk));
        dv_ref.extend(to_f64(&g.dv));
    }
    let (mut dq, mut dk, mut dv) =
        (poison::<T>(ctx, p.q.len()), poison::<T>(ctx, p.k.len()), poison::<T>(ctx, p.v.len()));
    mixer_chunk_backward(ctx, &p.cfg, p.dims, &q, &k, &v, &up::<T>(ctx, &p.d_o), &mut dq, &mut dk, &mut dv).unwrap();
    check_host(&format!("{label} backward dq"), &host(&dq), &dq_ref, tol);
    check_host(&format!("{label} backward dk"), &host(&dk), &dk_ref, tol);
    check_host(&format!("{label} backward dv"), &host(&dv), &dv_ref, tol);

    // Prefill the first 37 tokens (no initial state), then one decoding step per token.
    let (o_whole, fin_whole) = p.cpu_forward(false);
    let prefill = 37;
    let shape = p.shape();
    let (qs, kvs) = (shape.hq * d, shape.hkv * d);
    let take = |x: &[f32], per: usize, r: std::ops::Range<usize>| -> Vec<f32> {
        (0..BATCH).flat_map(|b| x[(b * TOKENS + r.start) * per..(b * TOKENS + r.end) * per].to_vec()).collect()
    };
    let pre_dims = MixerDims { tokens: prefill, ..p.dims };
    let mut state = poisoned(ctx, p.initial.len());
    let mut o_pre = poison::<T>(ctx, BATCH * prefill * qs);
    let (qp, kp, vp) = (take(&p.q, qs, 0..prefill), take(&p.k, kvs, 0..prefill), take(&p.v, kvs, 0..prefill));
    mixer_chunk_forward(
        ctx,
        &p.cfg,
        pre_dims,
        &up::<T>(ctx, &qp),
        &up::<T>(ctx, &kp),
        &up::<T>(ctx, &vp),
        &mut o_pre,
        None,
        Some(&mut state),
    )
    .unwrap();
    let mut o_all = vec![f32::NAN; BATCH * TOKENS * qs];
    let pre_host = host(&o_pre);
    for b in 0..BATCH {
        o_all[b * TOKENS * qs..(b * TOKENS + prefill) * qs]
            .copy_from_slice(&pre_host[b * prefill * qs..(b + 1) * prefill * qs]);
    }
    for t in prefill..TOKENS {
        let (qt, kt, vt) = (take(&p.q, qs, t..t + 1), take(&p.k, kvs, t..t + 1), take(&p.v, kvs, t..t + 1));
        let mut ot = poison::<T>(ctx, BATCH * qs);
        mixer_recurrent_step(
            ctx,
            &p.cfg,
            BATCH,
            shape,
            &mut state,
            &up::<T>(ctx, &qt),
            &up::<T>(ctx, &kt),
            &up::<T>(ctx, &vt),
            &mut ot,
        )
        .unwrap();
        let ot = host(&ot);
        for b in 0..BATCH {
            o_all[(b * TOKENS + t) * qs..(b * TOKENS + t + 1) * qs].copy_from_slice(&ot[b * qs..(b + 1) * qs]);
        }
    }
    check_host(&format!("{label} prefill + steps o"), &o_all, &o_whole, tol);
    check(&format!("{label} steps final state"), &state, &fin_whole, FP32_TOL.max(tol / 10.0));
}

fn check_kind(kind: MixerKind) {
    let ctx = gpu();
    let mut rng = rng(kind.name());
    for d in [64, 128] {
        check_mixer::<f32>(&ctx, &mut rng, MixerConfig::new(kind), d, FP32_TOL);
        check_mixer::<bf16>(&ctx, &mut rng, MixerConfig::new(kind), d, BF16_TOL);
    }
}

#[test]
fn gla_matches_cpu() {
    check_kind(MixerKind::Gla);
}

#[test]
fn hgrn2_matches_cpu() {
    check_kind(MixerKind::Hgrn2);
}

#[test]
fn retention_matches_cpu() {
    check_kind(MixerKind::Retention);
}

#[test]
fn mamba2_matches_cpu() {
    check_kind(MixerKind::Mamba2);
}

#[test]
fn rwkv6_matches_cpu() {
    check_kind(MixerKind::Rwkv6);
}

#[test]
fn linear_matches_cpu() {
    check_kind(MixerKind::Linear);
}

#[test]
fn gsa_matches_cpu() {
    // 64 slots: no padding at d = 64, half the slot dims padded at d = 128.
    check_kind(MixerKind::Gsa);
    // 16 slots of 4 key dims each (most of the slot dims padded).
    let ctx = gpu();
    let mut rng = rng("gsa 16 slots");
    let cfg = MixerConfig { gsa_slots: 16, ..MixerConfig::new(MixerKind::Gsa) };
    check_mixer::<f32>(&ctx, &mut rng, cfg, 64, FP32_TOL);
    check_mixer::<bf16>(&ctx, &mut rng, cfg, 64, BF16_TOL);
}

#[test]
fn odd_head_size_and_wide_group_match_cpu() {
    // d = 80 (rows and columns partly masked), 8 query heads per key-value head, T = 5.
    let ctx = gpu();
    let mut rng = rng("odd shapes");
    let shape = HeadShape::new(8, 1, 80).unwrap();
    let cfg = MixerConfig::default();
    let dims = MixerDims { batch: 1, tokens: 5, shape };
    let (q, k, v) = (random(&mut rng, 5 * 8 * 80, 2.0), random(&mut rng, 5 * 80, 2.0), random(&mut rng, 5 * 80, 1.0));
    let (o_ref, _) = chunk_forward(&cfg, shape, &q, &k, &v, None, DEFAULT_CHUNK_SIZE).unwrap();
    let mut o = poisoned(&ctx, q.len());
    mixer_chunk_forward(&ctx, &cfg, dims, &upload(&ctx, &q), &upload(&ctx, &k), &upload(&ctx, &v), &mut o, None, None)
        .unwrap();
    check("gla d=80 group 8 forward", &o, &to_f64(&o_ref), FP32_TOL);
    let d_o = random(&mut rng, q.len(), 1.0);
    let g = chunk_backward(&cfg, shape, &q, &k, &v, &d_o, DEFAULT_CHUNK_SIZE).unwrap();
    let (mut dq, mut dk, mut dv) = (poisoned(&ctx, q.len()), poisoned(&ctx, k.len()), poisoned(&ctx, v.len()));
    mixer_chunk_backward(
        &ctx,
        &cfg,
        dims,
        &upload(&ctx, &q),
        &upload(&ctx, &k),
        &upload(&ctx, &v),
        &upload(&ctx, &d_o),
        &mut dq,
        &mut dk,
        &mut dv,
    )
    .unwrap();
    check("gla d=80 group 8 dq", &dq, &to_f64(&g.dq), FP32_TOL);
    check("gla d=80 group 8 dk", &dk, &to_f64(&g.dk), FP32_TOL);
    check("gla d=80 group 8 dv", &dv, &to_f64(&g.dv), FP32_TOL);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ctx = gpu();
    let shape = HeadShape::new(4, 2, 64).unwrap();
    let dims = MixerDims { batch: 2, tokens: 3, shape };
    let (nq, nkv) = (2 * 3 * 4 * 64, 2 * 3 * 2 * 64);
    let cfg = MixerConfig::default();
    let (q, k, v) = (poisoned(&ctx, nq), poisoned(&ctx, nkv), poisoned(&ctx, nkv));
    let mut o = poisoned(&ctx, nq);
    let short_k = poisoned(&ctx, nkv - 1);
    let err = mixer_chunk_forward(&ctx, &cfg, dims, &q, &short_k, &v, &mut o, None, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains('k'), "{}", err.message);
    let err = mixer_chunk_forward(&ctx, &cfg, dims, &q, &k, &v, &mut o, Some(&poisoned(&ctx, 5)), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains("initial state"), "{}", err.message);
    let gsa = MixerConfig::new(MixerKind::Gsa);
    let err = mixer_chunk_forward(&ctx, &gsa, dims, &q, &k, &v, &mut o, Some(&poisoned(&ctx, 2 * 2 * 64 * 64)), None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "a gsa state is two slot memories per kv head");
    let bad_slots = MixerConfig { gsa_slots: 48, ..gsa };
    let err = mixer_chunk_forward(&ctx, &bad_slots, dims, &q, &k, &v, &mut o, None, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("gsa_slots"), "{}", err.message);
    let mut state = poisoned(&ctx, 7);
    let err = mixer_recurrent_step(
        &ctx,
        &cfg,
        2,
        shape,
        &mut state,
        &poisoned(&ctx, 512),
        &poisoned(&ctx, 256),
        &poisoned(&ctx, 256),
        &mut poisoned(&ctx, 512),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    let (mut dq, mut dk, mut dv) = (poisoned(&ctx, nq), poisoned(&ctx, nkv), poisoned(&ctx, nkv));
    let err =
        mixer_chunk_backward(&ctx, &cfg, dims, &q, &k, &v, &poisoned(&ctx, 3), &mut dq, &mut dk, &mut dv).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains("d_o"), "{}", err.message);
}

#[test]
fn backward_with_a_grid_that_fills_the_gpu_matches_cpu() {
    // 32 sequences x 2 kv heads x 4 column blocks = 256 CTAs per scan: the backward launches
    // its three scans one by one (the other tests' small grids run them side by side).
    let ctx = gpu();
    let mut rng = rng("full grid");
    let (batch, tokens, d) = (32, 24, 128);
    let shape = HeadShape::new(4, 2, d).unwrap();
    let cfg = MixerConfig::default();
    let dims = MixerDims { batch, tokens, shape };
    let (nq, nkv) = (batch * tokens * 4 * d, batch * tokens * 2 * d);
    let (q, k, v, d_o) =
        (random(&mut rng, nq, 2.0), random(&mut rng, nkv, 2.0), random(&mut rng, nkv, 1.0), random(&mut rng, nq, 1.0));
    let (mut dq_ref, mut dk_ref, mut dv_ref) = (Vec::new(), Vec::new(), Vec::new());
    let (qs, kvs) = (nq / batch, nkv / batch);
    for b in 0..batch {
        let seq = |x: &[f32], per: usize| x[b * per..(b + 1) * per].to_vec();
        let g =
            chunk_backward(&cfg, shape, &seq(&q, qs), &seq(&k, kvs), &seq(&v, kvs), &seq(&d_o, qs), DEFAULT_CHUNK_SIZE)
                .unwrap();
        dq_ref.extend(to_f64(&g.dq));
        dk_ref.extend(to_f64(&g.dk));
        dv_ref.extend(to_f64(&g.dv));
    }
    let (mut dq, mut dk, mut dv) = (poisoned(&ctx, nq), poisoned(&ctx, nkv), poisoned(&ctx, nkv));
    mixer_chunk_backward(
        &ctx,
        &cfg,
        dims,
        &upload(&ctx, &q),
        &upload(&ctx, &k),
        &upload(&ctx, &v),
        &upload(&ctx, &d_o),
        &mut dq,
        &mut dk,
        &mut dv,
    )
    .unwrap();
    check("gla full grid dq", &dq, &dq_ref, FP32_TOL);
    check("gla full grid dk", &dk, &dk_ref, FP32_TOL);
    check("gla full grid dv", &dv, &dv_ref, FP32_TOL);
}
