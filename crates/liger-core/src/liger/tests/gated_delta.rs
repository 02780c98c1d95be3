//! The gated delta rule (gdn): chunked and recurrent forms against the float64 reference,
//! gradients against float64 finite differences, decoding after a prefill, and a converted
//! model that trains on the CPU.

use super::{dot, numeric_grad, rel_err, rng, to_f64, uniform};
use crate::checkpoint::{load_liger_checkpoint, save_liger_checkpoint, SaveOptions};
use crate::convert::{linearize, LigerOptions, LoraOptions, LoraTarget};
use crate::error::ErrorCode;
use crate::liger::{
    chunk_backward, chunk_forward, naive, recurrent_step, HeadShape, LigerAttentionConfig, MixerConfig, MixerKind,
    MixerState, DEFAULT_CHUNK_SIZE,
};
use crate::testing::TempDir;
use crate::train::data::Sequence;
use crate::train::fixtures::tiny_byte_model;
use crate::train::trainer::{evaluate, TrainConfig, Trainable, Trainer};
use rand::rngs::SmallRng;
use rand::Rng;

fn gdn() -> MixerConfig {
    MixerConfig::new(MixerKind::Gdn)
}

/// Raw projections. Each half of every key is shifted by its own offset in [-spread, spread]
/// so that the pooled gates cover strong and weak decays and writes, not only values near
/// sigmoid(0).
fn inputs(rng: &mut SmallRng, shape: HeadShape, t: usize, spread: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = shape.d;
    let q = uniform(rng, t * shape.hq * d, -2.0, 2.0);
    let mut k = uniform(rng, t * shape.hkv * d, -2.0, 2.0);
    for half in k.chunks_exact_mut(d / 2) {
        let shift = rng.random_range(-spread..=spread);
        half.iter_mut().for_each(|x| *x += shift);
    }
    let v = uniform(rng, t * shape.hkv * d, -1.0, 1.0);
    (q, k, v)
}

/// Runs `recurrent_step` token by token from `state`; returns the outputs.
fn steps(cfg: &MixerConfig, state: &mut MixerState, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let shape = state.shape;
    let (qs, kvs) = (shape.hq * shape.d, shape.hkv * shape.d);
    let mut o = vec![0.0; q.len()];
    for r in 0..q.len() / qs {
        let (qr, kr) = (r * qs..(r + 1) * qs, r * kvs..(r + 1) * kvs);
        recurrent_step(cfg, state, &q[qr.clone()], &k[kr.clone()], &v[kr], &mut o[qr]).unwrap();
    }
    o
}

#[test]
fn gdn_chunked_recurrent_and_f64_reference_agree() {
    let mut rng = rng();
    let cfg = gdn();
    let mut worst = (0.0f64, 0.0f64);
    for (hq, hkv, d) in [(3, 1, 16), (2, 2, 64), (4, 2, 8)] {
        let shape = HeadShape::new(hq, hkv, d).unwrap();
        for t in [1, 63, 64, 65, 150] {
            for spread in [0.0, 6.0] {
                let (q, k, v) = inputs(&mut rng, shape, t, spread);
                let (want, want_state) = naive::mixer_forward(&cfg, shape, &to_f64(&q), &to_f64(&k), &to_f64(&v), None);
                for chunk in [DEFAULT_CHUNK_SIZE, 16, 5, 1] {
                    let (o, state) = chunk_forward(&cfg, shape, &q, &k, &v, None, chunk).unwrap();
                    let (e, es) = (rel_err(&o, &want), rel_err(&state.data, &want_state));
                    assert!(
                        e < 1e-4 && es < 1e-4,
                        "d={d} {hq}:{hkv} T={t} spread={spread} chunk={chunk}: output {e:.2e}, state {es:.2e}"
                    );
                    worst.0 = worst.0.max(e.max(es));
                }
                let mut state = MixerState::zeros(&cfg, shape);
                let o = steps(&cfg, &mut state, &q, &k, &v);
                let (e, es) = (rel_err(&o, &want), rel_err(&state.data, &want_state));
                assert!(e < 1e-4 && es < 1e-4, "recurrent d={d} {hq}:{hkv} T={t}: output {e:.2e}, state {es:.2e}");
                worst.1 = worst.1.max(e.max(es));
            }
        }
    }
    println!("gdn max rel err vs f64: chunked {:.2e}, recurrent {:.2e}", worst.0, worst.1);
}

#[test]
fn gdn_prefill_then_steps_equals_one_forward() {
    let mut rng = rng();
    let cfg = gdn();
    let shape = HeadShape::new(4, 2, 16).unwrap();
    let (qs, kvs) = (shape.hq * shape.d, shape.hkv * shape.d);
    let total = 100;
    let (q, k, v) = inputs(&mut rng, shape, total, 3.0);
    let (whole, whole_state) = chunk_forward(&cfg, shape, &q, &k, &v, None, DEFAULT_CHUNK_SIZE).unwrap();
    let mut worst = 0.0f64;
    for prefill in [1, 37, 64, 70, 99] {
        let (first, mut state) =
            chunk_forward(&cfg, shape, &q[..prefill * qs], &k[..prefill * kvs], &v[..prefill * kvs], None, 64).unwrap();
        let rest = steps(&cfg, &mut state, &q[prefill * qs..], &k[prefill * kvs..], &v[prefill * kvs..]);
        let joined: Vec<f32> = first.into_iter().chain(rest).collect();
        let e = rel_err(&joined, &to_f64(&whole)).max(rel_err(&state.data, &to_f64(&whole_state.data)));
        assert!(e < 1e-5, "prefill {prefill} + {} steps: rel err {e:.2e}", total - prefill);
        // A chunked prefill that continues from a passed state gives the same.
        let split = prefill * qs;
        let (_, head) =
            chunk_forward(&cfg, shape, &q[..split], &k[..prefill * kvs], &v[..prefill * kvs], None, 16).unwrap();
        let (tail, end) =
            chunk_forward(&cfg, shape, &q[split..], &k[prefill * kvs..], &v[prefill * kvs..], Some(&head), 16).unwrap();
        let e2 = rel_err(&tail, &to_f64(&whole[split..])).max(rel_err(&end.data, &to_f64(&whole_state.data)));
        assert!(e2 < 1e-5, "chunked continuation after {prefill}: rel err {e2:.2e}");
        worst = worst.max(e).max(e2);
    }
    println!("gdn prefill + steps vs one forward: max rel err {worst:.2e}");
}

#[test]
fn gdn_backward_matches_f64_finite_differences() {
    const H: f64 = 1e-6;
    let mut rng = rng();
    let cfg = gdn();
    let mut worst = 0.0f64;
    for (hq, hkv, d, t, spread) in [(3, 1, 8, 37, 3.0), (2, 2, 4, 20, 0.0), (1, 1, 6, 70, 5.0)] {
        let shape = HeadShape::new(hq, hkv, d).unwrap();
        let (q, k, v) = inputs(&mut rng, shape, t, spread);
        let d_o = uniform(&mut rng, t * hq * d, -1.0, 1.0);
        let (q64, k64, v64, do64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&d_o));
        let f = |q: &[f64], k: &[f64], v: &[f64]| dot(&naive::mixer_forward(&cfg, shape, q, k, v, None).0, &do64);
        let want = [
            numeric_grad(&q64, H, |x| f(x, &k64, &v64)),
            numeric_grad(&k64, H, |x| f(&q64, x, &v64)),
            numeric_grad(&v64, H, |x| f(&q64, &k64, x)),
        ];
        for chunk in [DEFAULT_CHUNK_SIZE, 16, 5] {
            let g = chunk_backward(&cfg, shape, &q, &k, &v, &d_o, chunk).unwrap();
            let (eq, ek, ev) = (rel_err(&g.dq, &want[0]), rel_err(&g.dk, &want[1]), rel_err(&g.dv, &want[2]));
            assert!(
                eq < 1e-3 && ek < 1e-3 && ev < 1e-3,
                "{hq}:{hkv} d={d} T={t} chunk={chunk}: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}"
            );
            worst = worst.max(eq).max(ek).max(ev);
        }
    }
    println!("gdn backward vs f64 finite differences: max rel err {worst:.2e}");
}

#[test]
fn gdn_gates_come_from_the_key_halves() {
    // One token from a zero state: S = b kn v^T, so o = b (qn . kn) v. With q = k the
    // read-out is b v: the write strength is exactly sigmoid(mean of the key's second half).
    let shape = HeadShape::new(1, 1, 4).unwrap();
    let k = [0.3f32, -0.1, 1.5, 0.5];
    let v = [1.0f32, -2.0, 0.5, 3.0];
    let (o, _) = chunk_forward(&gdn(), shape, &k, &k, &v, None, 64).unwrap();
    let b = 1.0 / (1.0 + (-1.0f64).exp());
    let norm2: f64 = k.iter().map(|&x| (x as f64).powi(2)).sum();
    let want: Vec<f64> = v.iter().map(|&x| b * norm2 / (norm2 + 1e-6) * x as f64).collect();
    let e = rel_err(&o, &want);
    assert!(e < 1e-6, "one-token read-out: rel err {e:.2e}");
    // A second token with a zero key and value (b = 1/2) erases nothing and writes nothing:
    // the state only decays, by a = sigmoid(mean of the first half of that key)^(1/16).
    let mut state = MixerState::zeros(&gdn(), shape);
    let mut out = [0.0f32; 4];
    recurrent_step(&gdn(), &mut state, &k, &k, &v, &mut out).unwrap();
    let before = state.data.clone();
    recurrent_step(&gdn(), &mut state, &k, &[0.0; 4], &[0.0; 4], &mut out).unwrap();
    let a = 0.5f64.powf(1.0 / 16.0);
    let decayed: Vec<f64> = before.iter().map(|&s| a * s as f64).collect();
    assert!(rel_err(&state.data, &decayed) < 1e-6);
}

#[test]
fn gdn_settings_are_checked() {
    let odd = HeadShape::new(1, 1, 5).unwrap();
    let err = chunk_forward(&gdn(), odd, &[0.5; 5], &[0.5; 5], &[0.5; 5], None, 64).unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("even head size"), "{err}");
    let shape = HeadShape::new(2, 1, 8).unwrap();
    let inv_freq = vec![1.0f32; 4];
    for (grm_norm, surprise_keys) in [(true, 0), (false, 4)] {
        let cfg = LigerAttentionConfig { mixer: gdn(), grm_norm, surprise_keys, ..LigerAttentionConfig::default() };
        let err = cfg.validate(shape, &inv_freq).unwrap_err();
        assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("gdn"), "{err}");
    }
    let plain = LigerAttentionConfig { mixer: gdn(), ..LigerAttentionConfig::default() };
    plain.validate(shape, &inv_freq).unwrap();
    assert_eq!(serde_json::to_string(&MixerKind::Gdn).unwrap(), "\"gdn\"");
    assert_eq!(serde_json::from_str::<MixerKind>("\"gdn\"").unwrap(), MixerKind::Gdn);
}

#[test]
fn a_gdn_model_trains_on_the_cpu() {
    let mut rng = rng();
    let base = tiny_byte_model(rng.random());
    let vocab = base.config.vocab_size as u32;
    let attention = LigerAttentionConfig { mixer: gdn(), window_keys: 5, ..LigerAttentionConfig::default() };
    let lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut model =
        linearize(base, LigerOptions { attention, softmax_layers: vec![], head_mix: Vec::new() }, lora).unwrap();
    assert_eq!(model.options.attention.mixer.kind, MixerKind::Gdn);
    // A learnable stream: every sequence counts up by 3 from a random start.
    let len = 24;
    let data: Vec<Sequence> = (0..8)
        .map(|_| {
            let start = rng.random_range(0..vocab);
            let stream: Vec<u32> = (0..=len).map(|i| (start + 3 * i) % vocab).collect();
            Sequence { inputs: stream[..len as usize].to_vec(), labels: stream[1..].to_vec() }
        })
        .collect();
    let train = TrainConfig {
        steps: Some(8),
        seq_len: len as usize,
        micro_batch: 2,
        grad_accum: 1,
        seed: 3,
        optimizer: crate::nn::optim::AdamWConfig { lr: 1e-2, ..Default::default() },
        ..TrainConfig::default()
    };
    let sizes: Vec<usize> = model.params().iter().map(|p| p.1.len()).collect();
    let before = evaluate(&data, &mut |i, l| model.loss(i, l)).unwrap();
    let mut trainer = Trainer::new(train, data.len(), &sizes).unwrap();
    let mut grads = model.new_grads();
    let mut losses = Vec::new();
    while !trainer.is_done() {
        let stats = trainer.step(&mut model, &mut grads, &data).unwrap();
        assert!(stats.loss.is_finite() && stats.grad_norm > 0.0, "{stats:?}");
        losses.push(stats.loss);
    }
    let after = evaluate(&data, &mut |i, l| model.loss(i, l)).unwrap();
    println!("gdn model: loss {:.3} -> {:.3}, steps {losses:.3?}", before.loss, after.loss);
    assert_eq!(losses.len(), 8);
    assert!(after.loss < before.loss - 0.1, "loss {:.3} -> {:.3}", before.loss, after.loss);

    // The checkpoint records the mixer by name and reloads to the same function.
    let tmp = TempDir::new("gdn-ckpt");
    let dir = tmp.0.join("model");
    save_liger_checkpoint(&dir, &model, &SaveOptions::default(), None).unwrap();
    let section = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(section.contains("\"gdn\""), "the saved config names the mixer: {section}");
    let loaded = load_liger_checkpoint(&dir).unwrap();
    assert_eq!(loaded.options, model.options);
    let tokens = &data[0].inputs;
    assert_eq!(loaded.all_logits(tokens).unwrap(), model.all_logits(tokens).unwrap());
}
