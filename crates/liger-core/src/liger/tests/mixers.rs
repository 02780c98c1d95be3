//! Chunked and recurrent forms of every mixer against the float64 reference.

use super::{rel_err, rng, to_f64, uniform};
use crate::error::ErrorCode;
use crate::liger::{
    chunk_backward, chunk_forward, naive, recurrent_step, GsaScale, HeadShape, MixerConfig, MixerKind, MixerState,
    DEFAULT_CHUNK_SIZE,
};

const TOKENS: [usize; 5] = [1, 63, 64, 65, 200];
const HEADS: [(usize, usize); 2] = [(3, 1), (2, 2)];
const HEAD_SIZES: [usize; 2] = [16, 64];

fn config(kind: MixerKind, d: usize) -> MixerConfig {
    MixerConfig { kind, gsa_slots: d / 4, ..MixerConfig::default() }
}

/// Raw projections in a range that gives the gates a real spread of decays.
fn inputs(rng: &mut rand::rngs::SmallRng, shape: HeadShape, t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (q, kv) = (t * shape.hq * shape.d, t * shape.hkv * shape.d);
    (uniform(rng, q, -3.0, 3.0), uniform(rng, kv, -3.0, 3.0), uniform(rng, kv, -1.0, 1.0))
}

#[test]
fn chunk_and_recurrent_forms_match_the_f64_reference() {
    let mut rng = rng();
    for kind in MixerKind::ALL {
        let mut worst = (0.0f64, 0.0f64);
        for &d in &HEAD_SIZES {
            for &(hq, hkv) in &HEADS {
                let shape = HeadShape::new(hq, hkv, d).unwrap();
                let cfg = config(kind, d);
                for &t in &TOKENS {
                    let (q, k, v) = inputs(&mut rng, shape, t);
                    let (want, want_state) =
                        naive::mixer_forward(&cfg, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), None);
                    for chunk in [DEFAULT_CHUNK_SIZE, 16, 5] {
                        let (o, state) = chunk_forward(&cfg, shape, &q, &k, &v, None, chunk).unwrap();
                        let (e, es) = (rel_err(&o, &want), rel_err(&state.data, &want_state));
                        assert!(
                            e < 1e-4 && es < 1e-4,
                            "{} d={d} {hq}:{hkv} T={t} chunk={chunk}: output err {e:.2e}, state err {es:.2e}",
                            kind.name()
                        );
                        worst.0 = worst.0.max(e.max(es));
                    }
                    let mut state = MixerState::zeros(&cfg, shape);
                    let (qs, kvs) = (hq * d, hkv * d);
                    let mut o = vec![0.0; q.len()];
                    for r in 0..t {
                        recurrent_step(
                            &cfg,
                            &mut state,
                            &q[r * qs..(r + 1) * qs],
                            &k[r * kvs..(r + 1) * kvs],
                            &v[r * kvs..(r + 1) * kvs],
                            &mut o[r * qs..(r + 1) * qs],
                        )
                        .unwrap();
                    }
                    let (e, es) = (rel_err(&o, &want), rel_err(&state.data, &want_state));
                    assert!(
                        e < 1e-4 && es < 1e-4,
                        "{} recurrent d={d} {hq}:{hkv} T={t}: output err {e:.2e}, state err {es:.2e}",
                        kind.name()
                    );
                    worst.1 = worst.1.max(e.max(es));
                }
            }
        }
        println!("{:<9} max rel err: chunk {:.2e}, recurrent {:.2e}", kind.name(), worst.0, worst.1);
    }
}

#[test]
fn chunked_prefill_continues_from_a_passed_state() {
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 16).unwrap();
    for kind in MixerKind::ALL {
        let cfg = config(kind, 16);
        let t = 150;
        let (q, k, v) = inputs(&mut rng, shape, t);
        let (whole, whole_state) = chunk_forward(&cfg, shape, &q, &k, &v, None, 64).unwrap();
        let mut worst = 0.0f64;
        for split in [1, 37, 64, 100, 149] {
            let (qs, kvs) = (split * shape.hq * shape.d, split * shape.hkv * shape.d);
            let (first, state) = chunk_forward(&cfg, shape, &q[..qs], &k[..kvs], &v[..kvs], None, 64).unwrap();
            let (second, end) = chunk_forward(&cfg, shape, &q[qs..], &k[kvs..], &v[kvs..], Some(&state), 64).unwrap();
            let joined: Vec<f32> = first.into_iter().chain(second).collect();
            let e = rel_err(&joined, &to_f64(&whole)).max(rel_err(&end.data, &to_f64(&whole_state.data)));
            assert!(e < 1e-5, "{} split at {split}: rel err {e:.2e}", kind.name());
            worst = worst.max(e);
        }
        println!("{:<9} split vs whole max rel err {worst:.2e}", kind.name());
    }
}

#[test]
fn strong_decays_stay_finite_and_exact() {
    // rwkv6's log-gate is -exp(k): with k up to 6 a single step decays by exp(-400).
    let mut rng = rng();
    let shape = HeadShape::new(2, 1, 16).unwrap();
    for kind in [MixerKind::Rwkv6, MixerKind::Gla, MixerKind::Hgrn2, MixerKind::Mamba2] {
        let cfg = config(kind, 16);
        let t = 130;
        let q = uniform(&mut rng, t * 32, -3.0, 3.0);
        let k = uniform(&mut rng, t * 16, -8.0, 6.0);
        let v = uniform(&mut rng, t * 16, -1.0, 1.0);
        let (want, _) = naive::mixer_forward(&cfg, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), None);
        let (o, _) = chunk_forward(&cfg, shape, &q, &k, &v, None, 64).unwrap();
        let e = rel_err(&o, &want);
        println!("{:<9} wide gates max rel err {e:.2e}", kind.name());
        assert!(e < 1e-4, "{}: rel err {e:.2e}", kind.name());
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let cfg = MixerConfig::new(MixerKind::Gla);
    let (q, k, v) = (vec![0.5; 2 * 16], vec![0.5; 2 * 8], vec![0.5; 2 * 8]);
    let err = chunk_forward(&cfg, shape, &q[..15], &k, &v, None, 64).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let err = chunk_forward(&cfg, shape, &q, &k[..8], &v, None, 64).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let err = chunk_forward(&cfg, shape, &q, &k, &v, None, 0).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    let bad_norm = MixerConfig { gate_normalizer: 0.0, ..cfg };
    assert_eq!(chunk_forward(&bad_norm, shape, &q, &k, &v, None, 64).unwrap_err().code, ErrorCode::InvalidArgument);
    let gsa = MixerConfig { kind: MixerKind::Gsa, gsa_slots: 3, ..cfg };
    let err = chunk_forward(&gsa, shape, &q, &k, &v, None, 64).unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("gsa_slots"), "{err}");
    // A state made for another mixer or shape.
    let other = MixerState::zeros(&MixerConfig::new(MixerKind::Gla), HeadShape::new(2, 2, 8).unwrap());
    assert_eq!(chunk_forward(&cfg, shape, &q, &k, &v, Some(&other), 64).unwrap_err().code, ErrorCode::ShapeMismatch);
    let mut state = MixerState::zeros(&cfg, shape);
    let mut o = vec![0.0; 16];
    let err = recurrent_step(&cfg, &mut state, &q, &k, &v, &mut o).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "two tokens into one step: {err}");
    let err = chunk_backward(&cfg, shape, &q, &k, &v, &q[..8], 64).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "d_o of the wrong size: {err}");
    assert_eq!(chunk_backward(&gsa, shape, &q, &k, &v, &q, 64).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(HeadShape::new(3, 2, 8).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(HeadShape::new(0, 1, 8).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn config_round_trips_through_json() {
    let cfg = MixerConfig { kind: MixerKind::Rwkv6, gate_normalizer: 8.0, gsa_slots: 16, gsa_scale: GsaScale::One };
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<MixerConfig>(&json).unwrap(), cfg);
    let parsed: MixerConfig = serde_json::from_str(r#"{"kind":"mlstm"}"#).unwrap();
    assert_eq!(parsed.kind, MixerKind::Retention);
    assert_eq!(parsed.gate_normalizer, 16.0);
    assert!(serde_json::from_str::<MixerConfig>(r#"{"kind":"lstm"}"#).is_err());
    // GSA follows the reference (unscaled queries) unless told otherwise; a configuration saved
    // before the setting existed keeps the 1/sqrt(D) it ran with.
    assert_eq!(MixerConfig::default().gsa_scale, GsaScale::One);
    let saved: MixerConfig = serde_json::from_str(r#"{"kind":"gsa","gate_normalizer":16.0,"gsa_slots":64}"#).unwrap();
    assert_eq!(saved.gsa_scale, GsaScale::InvSqrtHeadDim);
    let cfg = MixerConfig { gsa_scale: GsaScale::InvSqrtHeadDim, ..MixerConfig::new(MixerKind::Gsa) };
    assert_eq!(serde_json::from_str::<MixerConfig>(&serde_json::to_string(&cfg).unwrap()).unwrap(), cfg);
}

#[test]
fn gsa_runs_with_either_query_scale() {
    // The chunked and recurrent forms follow the f64 reference with each scale, and the two differ.
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 64).unwrap();
    let t = 70;
    let (q, k, v) = inputs(&mut rng, shape, t);
    let mut outputs = Vec::new();
    for scale in GsaScale::ALL {
        let cfg = MixerConfig { gsa_scale: scale, ..config(MixerKind::Gsa, 64) };
        let (want, _) = naive::mixer_forward(&cfg, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), None);
        let (o, _) = chunk_forward(&cfg, shape, &q, &k, &v, None, 16).unwrap();
        let mut state = MixerState::zeros(&cfg, shape);
        let (qs, kvs) = (shape.hq * shape.d, shape.hkv * shape.d);
        let mut stepped = vec![0.0; q.len()];
        for r in 0..t {
            let (qr, kr, vr) = (&q[r * qs..(r + 1) * qs], &k[r * kvs..(r + 1) * kvs], &v[r * kvs..(r + 1) * kvs]);
            recurrent_step(&cfg, &mut state, qr, kr, vr, &mut stepped[r * qs..(r + 1) * qs]).unwrap();
        }
        let (e, es) = (rel_err(&o, &want), rel_err(&stepped, &want));
        println!("gsa scale {}: chunk err {e:.2e}, recurrent err {es:.2e}", scale.name());
        assert!(e < 1e-4 && es < 1e-4, "{}: {e:.2e} {es:.2e}", scale.name());
        outputs.push(o);
    }
    let differ = outputs[0].iter().zip(&outputs[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(differ > 1e-3, "the two scales give the same output");
}
