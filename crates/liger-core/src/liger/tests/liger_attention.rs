//! Liger attention (GRM + SWA) against a float64 composition, and prefill + decoding
//! against one forward.

use super::{rel_err, rng, to_f64, uniform};
use crate::error::ErrorCode;
use crate::liger::liger_attention::GRM_NORM_EPS;
use crate::liger::{
    liger_attention_forward, naive, HeadMix, HeadShape, LigerAttentionConfig, LigerLayerState, MixerConfig, MixerKind,
};
use crate::nn::rope::apply_rope;

pub(super) fn inv_freq(d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect()
}

/// RoPE in f64 from the definition (rotate_half pairs i, i + D/2).
pub(super) fn rope_f64(x: &[f64], heads: usize, d: usize, inv_freq: &[f32]) -> Vec<f64> {
    let mut out = x.to_vec();
    for (r, token) in out.chunks_exact_mut(heads * d).enumerate() {
        for head in token.chunks_exact_mut(d) {
            for i in 0..d / 2 {
                let angle = r as f64 * inv_freq[i] as f64;
                let (a, b) = (head[i], head[i + d / 2]);
                head[i] = a * angle.cos() - b * angle.sin();
                head[i + d / 2] = b * angle.cos() + a * angle.sin();
            }
        }
    }
    out
}

/// `alpha * GRM + beta * SWA(rope)` in f64 (alpha and beta per head with `mix`).
pub(super) fn liger_f64(
    cfg: &LigerAttentionConfig,
    mix: Option<&HeadMix>,
    shape: HeadShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    inv_freq: &[f32],
) -> Vec<f64> {
    let (mut grm, _) = naive::mixer_forward(&cfg.mixer, shape, q, k, v, None);
    if cfg.grm_norm {
        let (den, _) = naive::mixer_forward(&cfg.mixer, shape, q, k, &vec![1.0; v.len()], None);
        grm.iter_mut().zip(&den).for_each(|(x, d)| *x /= d + GRM_NORM_EPS as f64);
    }
    // Query head of element i of `[T, hq, D]`, and its weights.
    let head = |i: usize| (i / shape.d) % shape.hq;
    let alpha = |i: usize| mix.map_or(cfg.alpha, |m| m.alpha[head(i)]) as f64;
    let beta = |i: usize| mix.map_or(cfg.beta, |m| m.beta[head(i)]) as f64;
    let mut o: Vec<f64> = grm.iter().enumerate().map(|(i, x)| x * alpha(i)).collect();
    if cfg.use_swa {
        let (qr, kr) = (rope_f64(q, shape.hq, shape.d, inv_freq), rope_f64(k, shape.hkv, shape.d, inv_freq));
        let swa = naive::attention_forward(shape, cfg.window(), &qr, &kr, v);
        o.iter_mut().enumerate().zip(&swa).for_each(|((i, a), b)| *a += beta(i) * b);
    }
    o
}

#[test]
fn rope_matches_f64_and_inverts() {
    let mut rng = rng();
    let (heads, d, t) = (3, 16, 300);
    let freqs = inv_freq(d);
    let x = uniform(&mut rng, t * heads * d, -1.0, 1.0);
    let mut y = x.clone();
    apply_rope(&mut y, heads, d, &freqs, 0, false);
    let e = rel_err(&y, &rope_f64(&to_f64(&x), heads, d, &freqs));
    apply_rope(&mut y, heads, d, &freqs, 0, true);
    let back = rel_err(&y, &to_f64(&x));
    println!("rope max rel err {e:.2e}, inverse round trip {back:.2e}");
    assert!(e < 1e-5 && back < 1e-5);
}

#[test]
fn liger_attention_matches_f64_and_decoding_matches_prefill() {
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 16).unwrap();
    let freqs = inv_freq(16);
    let (row_q, row_kv) = (shape.hq * shape.d, shape.hkv * shape.d);
    for (kind, window, sink_keys, use_swa, grm_norm) in [
        (MixerKind::Gla, 65, 0, true, false),
        (MixerKind::Gla, 4, 0, true, false),
        (MixerKind::Gla, 5, 3, true, false),
        (MixerKind::Gla, 5, 3, true, true),
        (MixerKind::Gsa, 8, 2, true, false),
        (MixerKind::Rwkv6, 65, 0, false, false),
        (MixerKind::Hgrn2, 65, 0, false, true),
    ] {
        let cfg = LigerAttentionConfig {
            mixer: MixerConfig { kind, gsa_slots: 4, ..MixerConfig::default() },
            window_keys: window,
            sink_keys,
            grm_norm,
            use_swa,
            ..Default::default()
        };
        // Learned weights per head, some negative, some off.
        let learned = HeadMix { alpha: vec![0.0, 0.7, -0.4], beta: vec![1.0, 0.3, 1.6] };
        for ((t, n), mix) in
            [(1, 10), (50, 30), (70, 5), (130, 3)].into_iter().zip([None, Some(&learned)].into_iter().cycle())
        {
            let total = t + n;
            let q = uniform(&mut rng, total * row_q, -2.0, 2.0);
            let k = uniform(&mut rng, total * row_kv, -2.0, 2.0);
            let v = uniform(&mut rng, total * row_kv, -1.0, 1.0);
            let want = liger_f64(&cfg, mix, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), &freqs);
            let mut fresh = LigerLayerState::new(&cfg, shape).unwrap();
            let whole = liger_attention_forward(&cfg, mix, shape, &q, &k, &v, &freqs, &mut fresh).unwrap();
            let e = rel_err(&whole, &want);
            // Prefill T tokens, then N single steps.
            let mut state = LigerLayerState::new(&cfg, shape).unwrap();
            let mut got = liger_attention_forward(
                &cfg,
                mix,
                shape,
                &q[..t * row_q],
                &k[..t * row_kv],
                &v[..t * row_kv],
                &freqs,
                &mut state,
            )
            .unwrap();
            let mut o = vec![0.0; row_q];
            for r in t..total {
                state
                    .step(
                        &cfg,
                        mix,
                        &q[r * row_q..(r + 1) * row_q],
                        &k[r * row_kv..(r + 1) * row_kv],
                        &v[r * row_kv..(r + 1) * row_kv],
                        &freqs,
                        &mut o,
                    )
                    .unwrap();
                got.extend_from_slice(&o);
            }
            let ed = rel_err(&got, &want);
            println!(
                "{} window {window}+{sink_keys} swa {use_swa} norm {grm_norm} learned mix {} T={t} N={n}: forward err {e:.2e}, prefill+decode err {ed:.2e}, state {} bytes",
                kind.name(),
                mix.is_some(),
                state.bytes()
            );
            assert!(e < 1e-4 && ed < 1e-4);
            assert_eq!(state.position, total);
            assert!(state.bytes() <= LigerLayerState::max_bytes(&cfg, shape));
        }
    }
}

#[test]
fn liger_bad_inputs_give_typed_errors() {
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let cfg = LigerAttentionConfig::default();
    let mut state = LigerLayerState::new(&cfg, shape).unwrap();
    let (q, kv) = (vec![0.1; 16], vec![0.2; 8]);
    let err = liger_attention_forward(&cfg, None, shape, &q, &kv, &kv, &inv_freq(6), &mut state).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let grm_only = LigerAttentionConfig { use_swa: false, ..cfg };
    let err = liger_attention_forward(&grm_only, None, shape, &q, &kv, &kv, &inv_freq(8), &mut state).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let bad = LigerAttentionConfig { window_keys: 0, ..cfg };
    assert_eq!(LigerLayerState::new(&bad, shape).unwrap_err().code, ErrorCode::InvalidArgument);
    // A state made without the normaliser's recurrence does not run a normalised layer.
    let normalised = LigerAttentionConfig { grm_norm: true, ..cfg };
    let err = liger_attention_forward(&normalised, None, shape, &q, &kv, &kv, &inv_freq(8), &mut state).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    let gsa = LigerAttentionConfig {
        grm_norm: true,
        mixer: MixerConfig { kind: MixerKind::Gsa, gsa_slots: 4, ..MixerConfig::default() },
        ..cfg
    };
    assert!(gsa.validate(shape, &inv_freq(8)).unwrap_err().message.contains("gsa"));
    let sinks = LigerAttentionConfig { sink_keys: 100_000, ..cfg };
    assert_eq!(sinks.validate(shape, &inv_freq(8)).unwrap_err().code, ErrorCode::InvalidArgument);
}
