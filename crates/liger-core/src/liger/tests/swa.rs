//! Sliding-window and full causal attention against the float64 reference, and the
//! decoding cache against one forward.

use super::{rel_err, rng, to_f64, uniform};
use crate::error::ErrorCode;
use crate::liger::{naive, swa_forward, HeadShape, SwaCache, Window};

/// Windows with and without attention sinks, small enough to be crossed by the test lengths.
fn windows() -> Vec<Window> {
    let w = |keys, sinks| Window { keys, sinks };
    vec![w(1, 0), w(4, 0), w(65, 0), Window::FULL, w(1, 1), w(4, 2), w(5, 64), w(65, 4), w(3, 70)]
}

#[test]
fn blocked_attention_matches_the_f64_reference() {
    let mut rng = rng();
    let mut worst = 0.0f64;
    for (hq, hkv, d) in [(3, 1, 16), (2, 2, 64)] {
        let shape = HeadShape::new(hq, hkv, d).unwrap();
        for window in windows() {
            for t in [1, 4, 63, 65, 66, 200] {
                let q = uniform(&mut rng, t * hq * d, -1.0, 1.0);
                let k = uniform(&mut rng, t * hkv * d, -1.0, 1.0);
                let v = uniform(&mut rng, t * hkv * d, -1.0, 1.0);
                let want = naive::attention_forward(shape, window, &to_f64(&q), &to_f64(&k), &to_f64(&v));
                let got = swa_forward(shape, window, &q, &k, &v, None).unwrap();
                let e = rel_err(&got, &want);
                assert!(e < 1e-4, "{window:?} T={t} {hq}:{hkv} d={d}: rel err {e:.2e}");
                worst = worst.max(e);
            }
        }
    }
    println!("swa/full attention max rel err {worst:.2e}");
}

#[test]
fn prefill_then_steps_equals_one_forward() {
    let mut rng = rng();
    let shape = HeadShape::new(3, 1, 16).unwrap();
    let row_q = shape.hq * shape.d;
    let row_kv = shape.hkv * shape.d;
    let mut worst = 0.0f64;
    for window in windows() {
        for t in [0, 1, 3, 4, 5, 64, 65, 66, 100] {
            let n = 20;
            let q = uniform(&mut rng, (t + n) * row_q, -1.0, 1.0);
            let k = uniform(&mut rng, (t + n) * row_kv, -1.0, 1.0);
            let v = uniform(&mut rng, (t + n) * row_kv, -1.0, 1.0);
            let whole = swa_forward(shape, window, &q, &k, &v, None).unwrap();
            // Prefill T tokens, then N single steps through the ring buffer.
            let mut got =
                swa_forward(shape, window, &q[..t * row_q], &k[..t * row_kv], &v[..t * row_kv], None).unwrap();
            let mut cache = SwaCache::new(shape, window).unwrap();
            cache.extend(&k[..t * row_kv], &v[..t * row_kv]).unwrap();
            let mut o = vec![0.0; row_q];
            for r in t..t + n {
                cache
                    .step(
                        &q[r * row_q..(r + 1) * row_q],
                        &k[r * row_kv..(r + 1) * row_kv],
                        &v[r * row_kv..(r + 1) * row_kv],
                        &mut o,
                    )
                    .unwrap();
                got.extend_from_slice(&o);
            }
            assert_eq!(cache.len(), (t + n).min(window.capacity()));
            let e = rel_err(&got, &to_f64(&whole));
            assert!(e < 1e-5, "{window:?} T={t}: rel err {e:.2e}");
            worst = worst.max(e);
            // The same as a second prefill: the last N tokens after what the cache holds.
            let mut cache = SwaCache::new(shape, window).unwrap();
            cache.extend(&k[..t * row_kv], &v[..t * row_kv]).unwrap();
            let tail = cache.attend(&q[t * row_q..], &k[t * row_kv..], &v[t * row_kv..]).unwrap();
            let e = rel_err(&tail, &to_f64(&whole[t * row_q..]));
            assert!(e < 1e-5, "second prefill: {window:?} T={t}: rel err {e:.2e}");
            worst = worst.max(e);
            // And with the whole history as the prefix of swa_forward.
            let tail = swa_forward(
                shape,
                window,
                &q[t * row_q..],
                &k[t * row_kv..],
                &v[t * row_kv..],
                Some((&k[..t * row_kv], &v[..t * row_kv])),
            )
            .unwrap();
            let e = rel_err(&tail, &to_f64(&whole[t * row_q..]));
            assert!(e < 1e-5, "prefix: {window:?} T={t}: rel err {e:.2e}");
        }
    }
    println!("swa prefill + steps vs one forward max rel err {worst:.2e}");
}

#[test]
fn cache_memory_stops_growing_at_the_window() {
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let mut cache = SwaCache::new(shape, 4).unwrap();
    let (q, kv) = (vec![0.1; 16], vec![0.2; 8]);
    let mut o = vec![0.0; 16];
    let mut sizes = Vec::new();
    for _ in 0..10 {
        cache.step(&q, &kv, &kv, &mut o).unwrap();
        sizes.push(cache.bytes());
    }
    assert_eq!(sizes[3], 2 * 4 * 8 * 4);
    assert!(sizes[3..].iter().all(|&s| s == sizes[3]), "{sizes:?}");
    // Two sinks beside the window: two more tokens, then no growth.
    let mut cache = SwaCache::new(shape, Window { keys: 4, sinks: 2 }).unwrap();
    let sizes: Vec<usize> = (0..12)
        .map(|_| {
            cache.step(&q, &kv, &kv, &mut o).unwrap();
            cache.bytes()
        })
        .collect();
    assert_eq!(sizes[5], 2 * 6 * 8 * 4);
    assert!(sizes[5..].iter().all(|&s| s == sizes[5]), "{sizes:?}");
}

#[test]
fn attention_bad_inputs_give_typed_errors() {
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let (q, kv) = (vec![0.1; 32], vec![0.2; 16]);
    assert_eq!(swa_forward(shape, 0, &q, &kv, &kv, None).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(swa_forward(shape, 4, &q, &kv[..8], &kv, None).unwrap_err().code, ErrorCode::ShapeMismatch);
    assert_eq!(
        swa_forward(shape, 4, &q, &kv, &kv, Some((&kv[..5], &kv[..5]))).unwrap_err().code,
        ErrorCode::ShapeMismatch
    );
    assert_eq!(crate::liger::swa_backward(shape, 4, &q, &kv, &kv, &q[..8]).unwrap_err().code, ErrorCode::ShapeMismatch);
    assert_eq!(SwaCache::new(shape, 0).unwrap_err().code, ErrorCode::InvalidArgument);
    let mut cache = SwaCache::new(shape, 4).unwrap();
    let mut o = vec![0.0; 16];
    assert_eq!(cache.step(&q, &kv, &kv, &mut o).unwrap_err().code, ErrorCode::ShapeMismatch);
    assert_eq!(cache.extend(&kv, &kv[..3]).unwrap_err().code, ErrorCode::ShapeMismatch);
}
