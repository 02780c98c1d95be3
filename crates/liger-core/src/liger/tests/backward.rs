//! Backward passes against central differences of the float64 references
//! (h = 1e-6 in f64, so the numeric gradient is good to ~1e-9 relative).

use super::liger_attention::{inv_freq, liger_f64};
use super::{dot, numeric_grad, rel_err, rng, to_f64, uniform};
use crate::liger::{
    chunk_backward, liger_attention_backward, naive, swa_backward, HeadShape, LigerAttentionConfig, MixerConfig,
    MixerKind, QkvGrads, Window, FULL_ATTENTION,
};

const H: f64 = 1e-6;

/// Numeric gradients of `sum(d_o * f(q, k, v))` w.r.t. q, k and v.
fn numeric_qkv(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_o: &[f64],
    f: impl Fn(&[f64], &[f64], &[f64]) -> Vec<f64>,
) -> [Vec<f64>; 3] {
    [
        numeric_grad(q, H, |x| dot(&f(x, k, v), d_o)),
        numeric_grad(k, H, |x| dot(&f(q, x, v), d_o)),
        numeric_grad(v, H, |x| dot(&f(q, k, x), d_o)),
    ]
}

/// `max |got - want| / max |want|` in f64.
fn rel_err_f64(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn worst_err(g: &QkvGrads, want: &[Vec<f64>; 3]) -> [f64; 3] {
    [rel_err(&g.dq, &want[0]), rel_err(&g.dk, &want[1]), rel_err(&g.dv, &want[2])]
}

#[test]
fn mixer_backward_matches_numeric_gradients() {
    let mut rng = rng();
    for kind in MixerKind::ALL {
        let (mut worst, mut worst_f64) = (0.0f64, 0.0f64);
        for (hq, hkv, d, t) in [(3, 1, 8, 37), (2, 2, 4, 20)] {
            let shape = HeadShape::new(hq, hkv, d).unwrap();
            let cfg = MixerConfig { kind, gsa_slots: 2, ..MixerConfig::default() };
            let q = uniform(&mut rng, t * hq * d, -2.0, 2.0);
            let k = uniform(&mut rng, t * hkv * d, -2.0, 2.0);
            let v = uniform(&mut rng, t * hkv * d, -1.0, 1.0);
            let d_o = uniform(&mut rng, t * hq * d, -1.0, 1.0);
            let (q64, k64, v64, do64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&d_o));
            let numeric =
                numeric_qkv(&q64, &k64, &v64, &do64, |q, k, v| naive::mixer_forward(&cfg, shape, q, k, v, None).0);
            // The f64 reference backward against the numeric gradient, then the f32
            // chunked backward against the f64 one (GSA: against the numeric gradient).
            let want = if matches!(kind, MixerKind::Gsa | MixerKind::Gdn) {
                numeric
            } else {
                let exact = naive::mixer_backward(&cfg, shape, &q64, &k64, &v64, &do64);
                let e = (0..3).map(|i| rel_err_f64(&exact[i], &numeric[i])).fold(0.0, f64::max);
                assert!(e < 1e-5, "{} f64 backward vs finite differences: rel err {e:.2e}", kind.name());
                worst_f64 = worst_f64.max(e);
                exact
            };
            for chunk in [64, 16, 5] {
                let g = chunk_backward(&cfg, shape, &q, &k, &v, &d_o, chunk).unwrap();
                let [eq, ek, ev] = worst_err(&g, &want);
                assert!(
                    eq < 1e-3 && ek < 1e-3 && ev < 1e-3,
                    "{} {hq}:{hkv} d={d} T={t} chunk={chunk}: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}",
                    kind.name()
                );
                worst = worst.max(eq).max(ek).max(ev);
            }
        }
        let f64_check = if matches!(kind, MixerKind::Gsa | MixerKind::Gdn) {
            "n/a (reference is the numeric gradient)".to_string()
        } else {
            format!("{worst_f64:.2e}")
        };
        println!(
            "{:<9} backward max rel err: f32 chunked {worst:.2e}, f64 reference vs finite differences {f64_check}",
            kind.name()
        );
    }
}

#[test]
fn attention_backward_matches_numeric_gradients() {
    let mut rng = rng();
    let mut worst = 0.0f64;
    for (hq, hkv, d, t) in [(3, 1, 8, 70), (2, 2, 4, 9)] {
        let shape = HeadShape::new(hq, hkv, d).unwrap();
        let sinks = |keys, sinks| Window { keys, sinks };
        for window in
            [Window::from(1), 4.into(), 65.into(), FULL_ATTENTION.into(), sinks(4, 2), sinks(1, 3), sinks(5, 66)]
        {
            let q = uniform(&mut rng, t * hq * d, -2.0, 2.0);
            let k = uniform(&mut rng, t * hkv * d, -2.0, 2.0);
            let v = uniform(&mut rng, t * hkv * d, -1.0, 1.0);
            let d_o = uniform(&mut rng, t * hq * d, -1.0, 1.0);
            let want = numeric_qkv(&to_f64(&q), &to_f64(&k), &to_f64(&v), &to_f64(&d_o), |q, k, v| {
                naive::attention_forward(shape, window, q, k, v)
            });
            let g = swa_backward(shape, window, &q, &k, &v, &d_o).unwrap();
            let ev = rel_err(&g.dv, &want[2]);
            let (eq, ek) = if window == Window::from(1) {
                // A query that sees only its own key gets weight 1 whatever q and k are:
                // dq and dk are exactly zero.
                let max_abs = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                (max_abs(&g.dq), max_abs(&g.dk))
            } else {
                (rel_err(&g.dq, &want[0]), rel_err(&g.dk, &want[1]))
            };
            assert!(eq < 1e-3 && ek < 1e-3 && ev < 1e-3, "{window:?} T={t}: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}");
            worst = worst.max(eq).max(ek).max(ev);
        }
    }
    println!("swa/full attention backward max rel err {worst:.2e}");
}

#[test]
fn liger_attention_backward_matches_numeric_gradients() {
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 8).unwrap();
    let freqs = inv_freq(8);
    let t = 40;
    for (kind, use_swa, sink_keys, grm_norm) in [
        (MixerKind::Gla, true, 0, false),
        (MixerKind::Gla, true, 3, false),
        (MixerKind::Gla, true, 3, true),
        (MixerKind::Gsa, true, 0, false),
        (MixerKind::Hgrn2, false, 0, true),
    ] {
        let cfg = LigerAttentionConfig {
            mixer: MixerConfig { kind, gsa_slots: 2, ..MixerConfig::default() },
            window_keys: 6,
            sink_keys,
            grm_norm,
            use_swa,
            ..Default::default()
        };
        let q = uniform(&mut rng, t * 24, -2.0, 2.0);
        let k = uniform(&mut rng, t * 8, -2.0, 2.0);
        let v = uniform(&mut rng, t * 8, -1.0, 1.0);
        let d_o = uniform(&mut rng, t * 24, -1.0, 1.0);
        let want = numeric_qkv(&to_f64(&q), &to_f64(&k), &to_f64(&v), &to_f64(&d_o), |q, k, v| {
            liger_f64(&cfg, shape, q, k, v, &freqs)
        });
        let g = liger_attention_backward(&cfg, shape, &q, &k, &v, &freqs, &d_o).unwrap();
        let [eq, ek, ev] = worst_err(&g, &want);
        println!("liger {} swa {use_swa} sinks {sink_keys} grm_norm {grm_norm} backward rel err: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}", kind.name());
        assert!(eq < 1e-3 && ek < 1e-3 && ev < 1e-3);
    }
}
