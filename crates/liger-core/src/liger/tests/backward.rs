//! Backward passes against central differences of the float64 references
//! (h = 1e-6 in f64, so the numeric gradient is good to ~1e-9 relative).

use super::liger_attention::{inv_freq, liger_f64};
use super::{dot, numeric_grad, rel_err, rng, to_f64, uniform};
use crate::liger::head_mix::head_mix_grads;
use crate::liger::{
    chunk_backward, liger_attention_backward, liger_attention_branches, naive, swa_backward, HeadMix, HeadShape,
    LigerAttentionConfig, LigerLayerState, MixerConfig, MixerKind, QkvGrads, Window, FULL_ATTENTION,
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
    let learned = HeadMix { alpha: vec![0.0, 0.7, -0.4], beta: vec![1.0, 0.3, 1.6] };
    for (kind, use_swa, sink_keys, grm_norm, mix) in [
        (MixerKind::Gla, true, 0, false, None),
        (MixerKind::Gla, true, 3, false, None),
        (MixerKind::Gla, true, 3, true, None),
        (MixerKind::Gla, true, 3, true, Some(&learned)),
        (MixerKind::Gsa, true, 0, false, None),
        (MixerKind::Hgrn2, false, 0, true, None),
        (MixerKind::Hgrn2, false, 0, true, Some(&learned)),
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
            liger_f64(&cfg, mix, shape, q, k, v, &freqs)
        });
        let g = liger_attention_backward(&cfg, mix, shape, &q, &k, &v, &freqs, &d_o).unwrap();
        let [eq, ek, ev] = worst_err(&g, &want);
        println!("liger {} swa {use_swa} sinks {sink_keys} grm_norm {grm_norm} learned mix {} backward rel err: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}", kind.name(), mix.is_some());
        assert!(eq < 1e-3 && ek < 1e-3 && ev < 1e-3);
    }
}

/// The learned branch weights' gradients (from the branches before the mix) against central
/// differences of the f64 composition in each weight.
#[test]
fn head_mix_gradients_match_numeric_gradients() {
    let mut rng = rng();
    let shape = HeadShape::new(4, 2, 8).unwrap();
    let freqs = inv_freq(8);
    let t = 30;
    for (use_swa, grm_norm) in [(true, false), (true, true), (false, true)] {
        let cfg = LigerAttentionConfig { window_keys: 5, sink_keys: 2, use_swa, grm_norm, ..Default::default() };
        let mix =
            HeadMix { alpha: uniform(&mut rng, shape.hq, -1.0, 1.0), beta: uniform(&mut rng, shape.hq, 0.0, 2.0) };
        let q = uniform(&mut rng, t * shape.hq * 8, -2.0, 2.0);
        let k = uniform(&mut rng, t * shape.hkv * 8, -2.0, 2.0);
        let v = uniform(&mut rng, t * shape.hkv * 8, -1.0, 1.0);
        let d_o = uniform(&mut rng, t * shape.hq * 8, -1.0, 1.0);
        let mut state = LigerLayerState::new(&cfg, shape).unwrap();
        let (grm, swa) = liger_attention_branches(&cfg, shape, &q, &k, &v, &freqs, &mut state).unwrap();
        let mut got = HeadMix::zeros(shape.hq);
        head_mix_grads(shape, &d_o, &grm, swa.as_deref(), &mut got);
        let (qd, kd, vd, dd) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&d_o));
        let objective = |m: &HeadMix| -> f64 {
            liger_f64(&cfg, Some(m), shape, &qd, &kd, &vd, &freqs).iter().zip(&dd).map(|(o, g)| o * g).sum()
        };
        let step = 1e-2f32;
        let (mut got_all, mut want_all) = (Vec::new(), Vec::new());
        for h in 0..shape.hq {
            for which in [0, 1] {
                if which == 1 && !use_swa {
                    assert_eq!(got.beta[h], 0.0, "no window branch: beta takes no gradient");
                    continue;
                }
                let (mut up, mut down) = (mix.clone(), mix.clone());
                let (w_up, w_down) = if which == 0 {
                    (&mut up.alpha[h], &mut down.alpha[h])
                } else {
                    (&mut up.beta[h], &mut down.beta[h])
                };
                *w_up += step;
                *w_down -= step;
                let width = *w_up as f64 - *w_down as f64;
                want_all.push((objective(&up) - objective(&down)) / width);
                got_all.push(if which == 0 { got.alpha[h] } else { got.beta[h] });
            }
        }
        let e = rel_err(&got_all, &want_all);
        println!("head mix gradients, swa {use_swa} grm_norm {grm_norm}: max rel err {e:.2e}");
        assert!(e < 1e-4);
    }
}
