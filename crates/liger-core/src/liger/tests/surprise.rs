//! The surprise cache against a float64 composition written from its definition, prefill +
//! decoding against one forward, and what it keeps.

use super::liger_attention::{inv_freq, rope_f64};
use super::{rel_err, rng, to_f64, uniform};
use crate::error::ErrorCode;
use crate::liger::liger_attention::GRM_NORM_EPS;
use crate::liger::surprise::{surprise_attention_backward, surprise_kept, surprise_kept_with_repeats, RepeatRule};
use crate::liger::{
    liger_attention_backward, liger_attention_forward, naive, HeadShape, LigerAttentionConfig, LigerLayerState,
    MixerConfig, MixerKind, FULL_ATTENTION,
};

/// Liger attention with a surprise cache in f64: scores from the f64 mixer read out with the
/// keys as queries, the cache simulated token by token, then softmax over sinks + cache + window.
fn liger_surprise_f64(
    cfg: &LigerAttentionConfig,
    shape: HeadShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    freqs: &[f32],
) -> Vec<f64> {
    let (hq, hkv, d, group) = (shape.hq, shape.hkv, shape.d, shape.group());
    let t = q.len() / (hq * d);
    let ones = vec![1.0; v.len()];
    let (mut grm, _) = naive::mixer_forward(&cfg.mixer, shape, q, k, v, None);
    if cfg.grm_norm {
        let (den, _) = naive::mixer_forward(&cfg.mixer, shape, q, k, &ones, None);
        grm.iter_mut().zip(&den).for_each(|(x, d)| *x /= d + GRM_NORM_EPS as f64);
    }
    // Surprise [T, hkv].
    let kq: Vec<f64> = (0..t * hq)
        .flat_map(|r| {
            let (i, h) = (r / hq, r % hq);
            k[(i * hkv + h / group) * d..(i * hkv + h / group + 1) * d].to_vec()
        })
        .collect();
    let (n, _) = naive::mixer_forward(&cfg.mixer, shape, &kq, k, v, None);
    let (den, _) = naive::mixer_forward(&cfg.mixer, shape, &kq, k, &ones, None);
    let mut score = vec![0.0f64; t * hkv];
    for i in 0..t {
        for h in 0..hq {
            let kvh = h / group;
            let e: f64 = (0..d)
                .map(|x| {
                    (v[(i * hkv + kvh) * d + x] - n[(i * hq + h) * d + x] / (den[(i * hq + h) * d + x] + 1e-6)).powi(2)
                })
                .sum();
            score[i * hkv + kvh] += e / group as f64;
        }
    }
    let (qr, kr) = (rope_f64(q, hq, d, freqs), rope_f64(k, hkv, d, freqs));
    let (keys, sinks, slots) = (cfg.window_keys, cfg.sink_keys, cfg.surprise_keys);
    let mut o: Vec<f64> = grm.iter().map(|x| x * cfg.alpha as f64).collect();
    for kvh in 0..hkv {
        let mut cache: Vec<usize> = Vec::new();
        for i in 0..t {
            if i >= keys + sinks {
                let j = i - keys;
                let value = |c: usize| &v[(c * hkv + kvh) * d..(c * hkv + kvh + 1) * d];
                let tolerance = cfg.surprise_repeat_tolerance;
                let repeat = tolerance > 0.0
                    && cache.iter().any(|&c| {
                        let dist: f64 = value(j).iter().zip(value(c)).map(|(a, b)| (a - b) * (a - b)).sum();
                        dist <= tolerance * value(c).iter().map(|b| b * b).sum::<f64>()
                    });
                if repeat {
                } else if cache.len() < slots {
                    cache.push(j);
                } else {
                    let lowest = (0..slots).fold(0, |m, s| {
                        if score[cache[s] * hkv + kvh] < score[cache[m] * hkv + kvh] {
                            s
                        } else {
                            m
                        }
                    });
                    if score[j * hkv + kvh] > score[cache[lowest] * hkv + kvh] {
                        cache[lowest] = j;
                    }
                }
            }
            let seen: Vec<usize> = (0..sinks.min(i + 1))
                .chain(cache.iter().copied())
                .chain((i + 1).saturating_sub(keys).max(sinks)..=i)
                .collect();
            for h in kvh * group..(kvh + 1) * group {
                let qh = &qr[(i * hq + h) * d..(i * hq + h + 1) * d];
                let logits: Vec<f64> = seen
                    .iter()
                    .map(|&j| (0..d).map(|x| qh[x] * kr[(j * hkv + kvh) * d + x]).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for (&j, wj) in seen.iter().zip(&w) {
                    for x in 0..d {
                        o[(i * hq + h) * d + x] += cfg.beta as f64 * wj / z * v[(j * hkv + kvh) * d + x];
                    }
                }
            }
        }
    }
    o
}

/// Values `[T, hkv, D]` drawn from a pool of `pool` random vectors plus 1% noise: many tokens
/// repeat a value (well inside a repeat tolerance of 0.05), different pool vectors are far apart.
fn pooled_values(rng: &mut rand::rngs::SmallRng, tokens: usize, d: usize, pool: usize) -> Vec<f32> {
    let vectors = uniform(rng, pool * d, -1.0, 1.0);
    let noise = uniform(rng, tokens * d, -0.01, 0.01);
    (0..tokens)
        .flat_map(|_| {
            let p = rand::Rng::random_range(rng, 0..pool);
            vectors[p * d..(p + 1) * d].to_vec()
        })
        .zip(noise)
        .map(|(x, e)| x + e)
        .collect()
}

#[test]
fn surprise_cache_matches_f64_and_decoding_matches_prefill() {
    let mut rng = rng();
    let shape = HeadShape::new(4, 2, 16).unwrap();
    let freqs = inv_freq(16);
    let (row_q, row_kv) = (shape.hq * shape.d, shape.hkv * shape.d);
    for (kind, window, sinks, slots, grm_norm, repeats) in [
        (MixerKind::Gla, 8, 0, 4, false, 0.0),
        (MixerKind::Gla, 6, 3, 5, true, 0.0),
        (MixerKind::Retention, 10, 2, 1, false, 0.0),
        (MixerKind::Mamba2, 5, 1, 7, true, 0.0),
        (MixerKind::Linear, 65, 4, 16, false, 0.0),
        (MixerKind::Gla, 6, 2, 5, false, 0.05),
        (MixerKind::Hgrn2, 4, 1, 3, true, 0.05),
    ] {
        let cfg = LigerAttentionConfig {
            mixer: MixerConfig { kind, ..MixerConfig::default() },
            window_keys: window,
            sink_keys: sinks,
            surprise_keys: slots,
            surprise_repeat_tolerance: repeats,
            grm_norm,
            ..Default::default()
        };
        for (t, n) in [(1, 12), (40, 30), (90, 5)] {
            let total = t + n;
            let q = uniform(&mut rng, total * row_q, -2.0, 2.0);
            let k = uniform(&mut rng, total * row_kv, -2.0, 2.0);
            // With the repeat rule, values from a small pool, so that repeats happen.
            let v = if repeats > 0.0 {
                pooled_values(&mut rng, total * shape.hkv, shape.d, 6)
            } else {
                uniform(&mut rng, total * row_kv, -1.0, 1.0)
            };
            let want = liger_surprise_f64(&cfg, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), &freqs);
            let whole = liger_attention_forward(
                &cfg,
                None,
                shape,
                &q,
                &k,
                &v,
                &freqs,
                &mut LigerLayerState::new(&cfg, shape).unwrap(),
            )
            .unwrap();
            let e = rel_err(&whole, &want);
            let mut state = LigerLayerState::new(&cfg, shape).unwrap();
            let mut got = liger_attention_forward(
                &cfg,
                None,
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
                        None,
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
            println!("{} window {window}+{sinks} cache {slots} repeats {repeats} norm {grm_norm} T={t} N={n}: forward {e:.2e}, prefill+decode {ed:.2e}, state {} bytes", kind.name(), state.bytes());
            assert!(e < 1e-4 && ed < 1e-4);
            assert!(state.bytes() <= LigerLayerState::max_bytes(&cfg, shape));
        }
    }
}

#[test]
fn a_cache_as_large_as_the_sequence_is_full_attention() {
    let mut rng = rng();
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let freqs = inv_freq(8);
    let t = 60;
    let q = uniform(&mut rng, t * 16, -2.0, 2.0);
    let k = uniform(&mut rng, t * 8, -2.0, 2.0);
    let v = uniform(&mut rng, t * 8, -1.0, 1.0);
    let cached = LigerAttentionConfig { window_keys: 5, sink_keys: 2, surprise_keys: t, ..Default::default() };
    let full = LigerAttentionConfig { window_keys: FULL_ATTENTION, ..Default::default() };
    let got = liger_attention_forward(
        &cached,
        None,
        shape,
        &q,
        &k,
        &v,
        &freqs,
        &mut LigerLayerState::new(&cached, shape).unwrap(),
    )
    .unwrap();
    let want = super::liger_attention::liger_f64(&full, None, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), &freqs);
    let e = rel_err(&got, &want);
    println!("cache of {t} vs full attention: {e:.2e}");
    assert!(e < 1e-5);
}

#[test]
fn the_cache_keeps_the_token_the_state_recalls_worst() {
    // One distinct token among copies of one key/value pair: the state recalls the copies well
    // and the odd one badly, so a one-slot cache holds it long after it left the window, and a
    // query that matches its key reads its value back.
    let shape = HeadShape::new(1, 1, 8).unwrap();
    let freqs = vec![0.0; 4]; // no rotation: the match is by content alone
    let (t, odd) = (200, 20);
    let mut k = Vec::new();
    let mut v = Vec::new();
    for i in 0..t {
        let (key, val) = if i == odd {
            ([0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        } else {
            ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        };
        k.extend_from_slice(&key);
        v.extend_from_slice(&val);
    }
    let mut q = k.clone();
    q[(t - 1) * 8..].copy_from_slice(&[0.0, 0.0, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0]);
    let mixer = MixerConfig { kind: MixerKind::Linear, ..MixerConfig::default() };
    for (slots, recalled) in [(0, false), (1, true)] {
        let cfg = LigerAttentionConfig {
            mixer,
            window_keys: 8,
            surprise_keys: slots,
            alpha: 0.0,
            beta: 1.0,
            ..Default::default()
        };
        let o = liger_attention_forward(
            &cfg,
            None,
            shape,
            &q,
            &k,
            &v,
            &freqs,
            &mut LigerLayerState::new(&cfg, shape).unwrap(),
        )
        .unwrap();
        let last = &o[(t - 1) * 8..];
        println!("cache {slots}: last output {last:?}");
        assert_eq!(last[7] > 0.9, recalled);
    }
}

#[test]
fn the_repeat_rule_keeps_room_for_what_appears_once() {
    // A pattern of three values that repeats, each copy scoring higher than one odd token: the
    // copies fill a four-slot cache and keep the odd token out; with the repeat rule the cache
    // holds one copy of each pattern value and the odd token.
    let (hkv, d, t, odd) = (1, 4, 60, 30);
    let pattern = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
    let mut values = Vec::new();
    let mut scores = Vec::new();
    for i in 0..t {
        if i == odd {
            values.extend_from_slice(&[0.0, 0.0, 0.0, 1.0]);
            scores.push(5.0);
        } else {
            values.extend_from_slice(&pattern[i % 3]);
            scores.push(9.0 - (i % 3) as f32 + i as f32 * 1e-3);
        }
    }
    let window = crate::liger::Window { keys: 4, sinks: 0 };
    let kept_at_end = |kept: Vec<i32>| -> Vec<i32> { kept[(t - 1) * 4..].to_vec() };
    let plain = kept_at_end(surprise_kept(hkv, window, 4, &scores));
    assert!(!plain.contains(&(odd as i32)), "{plain:?}");
    let rule = RepeatRule { values: &values, d, tolerance: 0.05 };
    let distinct = kept_at_end(surprise_kept_with_repeats(hkv, window, 4, &scores, Some(rule)));
    assert!(distinct.contains(&(odd as i32)), "{distinct:?}");
    let mut held: Vec<usize> = distinct.iter().map(|&j| if j as usize == odd { 3 } else { j as usize % 3 }).collect();
    held.sort();
    assert_eq!(held, vec![0, 1, 2, 3], "one copy of each value: {distinct:?}");
    // A tolerance of 0 is the plain rule.
    let off = RepeatRule { tolerance: 0.0, ..rule };
    assert_eq!(kept_at_end(surprise_kept_with_repeats(hkv, window, 4, &scores, Some(off))), plain);
}

#[test]
fn surprise_cache_bad_settings_give_typed_errors() {
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let freqs = inv_freq(8);
    let cfg = LigerAttentionConfig { surprise_keys: 4, ..Default::default() };
    let gsa = LigerAttentionConfig {
        mixer: MixerConfig { kind: MixerKind::Gsa, gsa_slots: 4, ..MixerConfig::default() },
        ..cfg
    };
    assert!(gsa.validate(shape, &freqs).unwrap_err().message.contains("gsa"));
    let no_window = LigerAttentionConfig { use_swa: false, ..cfg };
    assert_eq!(no_window.validate(shape, &freqs).unwrap_err().code, ErrorCode::InvalidArgument);
    let huge = LigerAttentionConfig { surprise_keys: 1 << 20, ..cfg };
    assert_eq!(huge.validate(shape, &freqs).unwrap_err().code, ErrorCode::InvalidArgument);
    for tolerance in [-0.1, 0.7, f64::NAN, f64::INFINITY] {
        let bad = LigerAttentionConfig { surprise_repeat_tolerance: tolerance, ..cfg };
        let err = bad.validate(shape, &freqs).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{tolerance}");
        assert!(err.message.contains("surprise_repeat_tolerance"), "{}", err.message);
    }
    let no_cache = LigerAttentionConfig { surprise_repeat_tolerance: 0.05, ..Default::default() };
    assert!(no_cache.validate(shape, &freqs).unwrap_err().message.contains("set surprise_keys"));
    let (q, kv) = (vec![0.1; 32], vec![0.2; 16]);
    let err = surprise_attention_backward(shape, cfg.window(), 4, &q, &kv, &kv, &[-1; 7], &q).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
    // A state made for the plain window does not run a layer with a cache.
    let plain = LigerAttentionConfig::default();
    let err = liger_attention_forward(
        &cfg,
        None,
        shape,
        &q,
        &kv,
        &kv,
        &freqs,
        &mut LigerLayerState::new(&plain, shape).unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{err}");
}

#[test]
fn surprise_cache_backward_matches_numeric_gradients() {
    // The cache's choice is piecewise constant in q, k, v: central differences of the f64
    // composition see the gradient of the attention over what it kept, as the backward does.
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 8).unwrap();
    let freqs = inv_freq(8);
    let t = 40;
    for (kind, sink_keys, grm_norm, slots, repeats) in [
        (MixerKind::Gla, 0, false, 3, 0.0),
        (MixerKind::Gla, 2, true, 4, 0.0),
        (MixerKind::Hgrn2, 1, false, 1, 0.0),
        (MixerKind::Gla, 1, false, 4, 0.05),
    ] {
        let cfg = LigerAttentionConfig {
            mixer: MixerConfig { kind, ..MixerConfig::default() },
            window_keys: 6,
            sink_keys,
            grm_norm,
            surprise_keys: slots,
            surprise_repeat_tolerance: repeats,
            ..Default::default()
        };
        let q = uniform(&mut rng, t * 24, -2.0, 2.0);
        let k = uniform(&mut rng, t * 8, -2.0, 2.0);
        let v = if repeats > 0.0 { pooled_values(&mut rng, t, 8, 4) } else { uniform(&mut rng, t * 8, -1.0, 1.0) };
        let d_o = uniform(&mut rng, t * 24, -1.0, 1.0);
        let (q64, k64, v64, do64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&d_o));
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            liger_surprise_f64(&cfg, shape, q, k, v, &freqs).iter().zip(&do64).map(|(a, b)| a * b).sum::<f64>()
        };
        let want = [
            super::numeric_grad(&q64, 1e-6, |x| loss(x, &k64, &v64)),
            super::numeric_grad(&k64, 1e-6, |x| loss(&q64, x, &v64)),
            super::numeric_grad(&v64, 1e-6, |x| loss(&q64, &k64, x)),
        ];
        let g = liger_attention_backward(&cfg, None, shape, &q, &k, &v, &freqs, &d_o).unwrap();
        let (eq, ek, ev) = (rel_err(&g.dq, &want[0]), rel_err(&g.dk, &want[1]), rel_err(&g.dv, &want[2]));
        println!("surprise {} sinks {sink_keys} grm_norm {grm_norm} slots {slots} repeats {repeats} backward rel err: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}", kind.name());
        assert!(eq < 1e-3 && ek < 1e-3 && ev < 1e-3);
    }
}
