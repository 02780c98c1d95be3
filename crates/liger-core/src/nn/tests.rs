//! Each backward pass against central finite differences of a float64 forward.

use super::lora::LoraAdapter;
use super::loss::{cross_entropy, distillation_loss, Teacher, IGNORE};
use super::optim::{clip_grad_norm, AdamWConfig, AdamWState, LrSchedule};
use super::rms_norm::rms_norm_backward;
use super::rope::apply_rope;
use super::swiglu::swiglu_backward;
use crate::testing::max_rel_error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rng() -> (StdRng, u64) {
    let seed: u64 = rand::random();
    (StdRng::seed_from_u64(seed), seed)
}

fn randv(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central differences of `f` at `x` in float64.
fn fd_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * x[i].abs().max(1.0);
            xp[i] = x[i] + h;
            let up = f(&xp);
            xp[i] = x[i] - h;
            let down = f(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn check(name: &str, got: &[f32], want: &[f64], seed: u64) {
    let err = max_rel_error(got, want);
    println!("{name}: max rel error {err:.2e}");
    assert!(err < 1e-4, "{name}: max rel error {err} (seed {seed})");
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let (mut r, seed) = rng();
    let (rows, n, eps) = (3, 24, 1e-5f32);
    let x = randv(&mut r, rows * n, 2.0);
    let g: Vec<f32> = (0..n).map(|_| 1.0 + r.random_range(-0.5..0.5)).collect();
    let dy = randv(&mut r, rows * n, 1.0);
    let (g64, dy64) = (to64(&g), to64(&dy));
    let loss = |x: &[f64], g: &[f64]| -> f64 {
        x.chunks(n)
            .zip(dy64.chunks(n))
            .map(|(xr, dyr)| {
                let inv = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps as f64).sqrt();
                (0..n).map(|i| dyr[i] * xr[i] * inv * g[i]).sum::<f64>()
            })
            .sum()
    };
    let mut dx = vec![0.0f32; rows * n];
    let mut dg = vec![0.0f32; n];
    rms_norm_backward(&x, &g, eps, &dy, &mut dx, Some(&mut dg));
    check("rms_norm dx", &dx, &fd_grad(&|x| loss(x, &g64), &to64(&x)), seed);
    let x64 = to64(&x);
    check("rms_norm dg", &dg, &fd_grad(&|g| loss(&x64, g), &g64), seed);
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (mut r, seed) = rng();
    let n = 50;
    let (g, u, da) = (randv(&mut r, n, 4.0), randv(&mut r, n, 2.0), randv(&mut r, n, 1.0));
    let da64 = to64(&da);
    let loss = |g: &[f64], u: &[f64]| -> f64 { (0..n).map(|i| da64[i] * g[i] / (1.0 + (-g[i]).exp()) * u[i]).sum() };
    let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
    swiglu_backward(&g, &u, &da, &mut dg, &mut du);
    let (g64, u64_) = (to64(&g), to64(&u));
    check("swiglu dg", &dg, &fd_grad(&|g| loss(g, &u64_), &g64), seed);
    check("swiglu du", &du, &fd_grad(&|u| loss(&g64, u), &u64_), seed);
}

/// RoPE's backward is the rotation by the opposite angle (`inverse`).
#[test]
fn rope_backward_matches_finite_differences() {
    let (mut r, seed) = rng();
    let (t, heads, hd, pos0) = (5, 3, 8, 11);
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
    let x = randv(&mut r, t * heads * hd, 1.0);
    let dy = randv(&mut r, t * heads * hd, 1.0);
    let dy64 = to64(&dy);
    let loss = |x: &[f64]| -> f64 {
        let mut y = x.to_vec();
        for (ti, row) in y.chunks_mut(heads * hd).enumerate() {
            for h in 0..heads {
                for j in 0..hd / 2 {
                    let a = (pos0 + ti) as f64 * inv_freq[j] as f64;
                    let (p, q) = (x[ti * heads * hd + h * hd + j], x[ti * heads * hd + h * hd + j + hd / 2]);
                    row[h * hd + j] = p * a.cos() - q * a.sin();
                    row[h * hd + j + hd / 2] = q * a.cos() + p * a.sin();
                }
            }
        }
        y.iter().zip(&dy64).map(|(a, b)| a * b).sum()
    };
    let mut dx = dy.clone();
    apply_rope(&mut dx, heads, hd, &inv_freq, pos0, true);
    check("rope dx", &dx, &fd_grad(&loss, &to64(&x)), seed);
}

#[test]
fn lora_backward_matches_finite_differences() {
    let (mut r, seed) = rng();
    let (t, inp, out, rank) = (6, 20, 12, 4);
    let mut lora = LoraAdapter::new(inp, out, rank, 8.0, seed);
    lora.b = randv(&mut r, out * rank, 0.5); // non-zero so every path is exercised
    let x = randv(&mut r, t * inp, 1.0);
    let dy = randv(&mut r, t * out, 1.0);
    let mut y = vec![0.0f32; t * out];
    let saved = lora.forward_add(&x, t, &mut y);
    let mut grad = lora.zero_grad();
    let mut dx = vec![0.0f32; t * inp];
    lora.backward(&x, &saved, &dy, t, &mut grad, &mut dx);
    let dy64 = to64(&dy);
    let scale = lora.scale as f64;
    let loss = |x: &[f64], a: &[f64], b: &[f64]| -> f64 {
        let mut l = 0.0;
        for ti in 0..t {
            let u: Vec<f64> = (0..rank).map(|k| (0..inp).map(|i| x[ti * inp + i] * a[k * inp + i]).sum()).collect();
            for o in 0..out {
                l += dy64[ti * out + o] * scale * (0..rank).map(|k| u[k] * b[o * rank + k]).sum::<f64>();
            }
        }
        l
    };
    let (x64, a64, b64) = (to64(&x), to64(&lora.a), to64(&lora.b));
    // The forward itself, against the float64 formula.
    let y_want: Vec<f64> = (0..t * out)
        .map(|idx| {
            let (ti, o) = (idx / out, idx % out);
            (0..rank)
                .map(|k| {
                    scale * b64[o * rank + k] * (0..inp).map(|i| x64[ti * inp + i] * a64[k * inp + i]).sum::<f64>()
                })
                .sum()
        })
        .collect();
    check("lora y", &y, &y_want, seed);
    check("lora dA", &grad.a, &fd_grad(&|a| loss(&x64, a, &b64), &a64), seed);
    check("lora dB", &grad.b, &fd_grad(&|b| loss(&x64, &a64, b), &b64), seed);
    check("lora dx", &dx, &fd_grad(&|x| loss(x, &a64, &b64), &x64), seed);
    // Merging gives the same function.
    let w = randv(&mut r, out * inp, 1.0);
    let merged = lora.merged(&w);
    let direct: Vec<f64> = (0..out * inp)
        .map(|idx| {
            let (o, i) = (idx / inp, idx % inp);
            w[idx] as f64 + scale * (0..rank).map(|k| b64[o * rank + k] * a64[k * inp + i]).sum::<f64>()
        })
        .collect();
    check("lora merged", &merged, &direct, seed);
}

#[test]
fn chunked_cross_entropy_matches_finite_differences() {
    let (mut r, seed) = rng();
    let (t, hidden, vocab) = (37, 16, 50); // several row chunks, last one partial
    let h = randv(&mut r, t * hidden, 1.0);
    let head = randv(&mut r, vocab * hidden, 1.0);
    let labels: Vec<u32> = (0..t).map(|i| if i % 5 == 0 { IGNORE } else { r.random_range(0..vocab as u32) }).collect();
    let counted = labels.iter().filter(|&&l| l != IGNORE).count();
    let head64 = to64(&head);
    let loss = |h: &[f64]| -> f64 {
        let mut l = 0.0;
        for (ti, &lab) in labels.iter().enumerate() {
            if lab == IGNORE {
                continue;
            }
            let logits: Vec<f64> =
                (0..vocab).map(|v| (0..hidden).map(|k| h[ti * hidden + k] * head64[v * hidden + k]).sum()).collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            l += lse - logits[lab as usize];
        }
        l / counted as f64
    };
    let mut dh = vec![0.0f32; t * hidden];
    let out = cross_entropy(&h, &head, hidden, vocab, &labels, 1.0 / counted as f32, Some(&mut dh));
    assert_eq!(out.count, counted);
    let h64 = to64(&h);
    let want = loss(&h64);
    let got = out.loss_sum / counted as f64;
    assert!((got - want).abs() / want.abs() < 1e-6, "loss {got} vs {want} (seed {seed})");
    check("cross_entropy dh", &dh, &fd_grad(&loss, &h64), seed);
}

#[test]
fn distillation_loss_matches_a_float64_reference_and_finite_differences() {
    let (mut r, seed) = rng();
    let (t, hidden, vocab) = (37, 16, 50); // several row chunks, last one partial
    let h = randv(&mut r, t * hidden, 1.0);
    let teacher_h = randv(&mut r, t * hidden, 1.0);
    let head = randv(&mut r, vocab * hidden, 1.0);
    let labels: Vec<u32> = (0..t).map(|i| if i % 5 == 0 { IGNORE } else { r.random_range(0..vocab as u32) }).collect();
    let counted = labels.iter().filter(|&&l| l != IGNORE).count();
    let (head64, teacher64) = (to64(&head), to64(&teacher_h));
    let log_softmax = |x: &[f64], ti: usize| -> Vec<f64> {
        let z: Vec<f64> =
            (0..vocab).map(|v| (0..hidden).map(|k| x[ti * hidden + k] * head64[v * hidden + k]).sum()).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        z.iter().map(|x| x - lse).collect()
    };
    for weight in [0.0f32, 0.5, 1.0] {
        let w = weight as f64;
        let loss = |x: &[f64]| -> f64 {
            let mut l = 0.0;
            for (ti, &lab) in labels.iter().enumerate().filter(|(_, &lab)| lab != IGNORE) {
                let (log_ps, log_pt) = (log_softmax(x, ti), log_softmax(&teacher64, ti));
                let kl: f64 = log_pt.iter().zip(&log_ps).map(|(t, s)| t.exp() * (t - s)).sum();
                l += (1.0 - w) * -log_ps[lab as usize] + w * kl;
            }
            l / counted as f64
        };
        let mut dh = vec![0.0f32; t * hidden];
        let teacher = Teacher { h: &teacher_h, weight };
        let out = distillation_loss(&h, teacher, &head, hidden, vocab, &labels, 1.0 / counted as f32, Some(&mut dh));
        assert_eq!(out.count, counted);
        let want = loss(&to64(&h));
        let got = out.loss_sum / counted as f64;
        assert!((got - want).abs() / want.abs() < 1e-6, "weight {weight}: loss {got} vs {want} (seed {seed})");
        check(&format!("distillation dh (weight {weight})"), &dh, &fd_grad(&loss, &to64(&h)), seed);
        if weight == 0.0 {
            // No teacher weight is plain cross-entropy, to the bit.
            let mut dh_ce = vec![0.0f32; t * hidden];
            let ce = cross_entropy(&h, &head, hidden, vocab, &labels, 1.0 / counted as f32, Some(&mut dh_ce));
            assert_eq!((ce.loss_sum, dh_ce), (out.loss_sum, dh));
        }
    }
    // A teacher equal to the student costs nothing beyond the cross-entropy.
    let teacher = Teacher { h: &h, weight: 1.0 };
    let same = distillation_loss(&h, teacher, &head, hidden, vocab, &labels, 1.0, None);
    assert!(same.loss_sum.abs() < 1e-9, "KL of a distribution with itself: {}", same.loss_sum);
}

#[test]
fn adamw_matches_the_published_update_rule() {
    let (mut r, seed) = rng();
    let n = 10;
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut p = randv(&mut r, n, 1.0);
    let mut p64 = to64(&p);
    let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut state = AdamWState::new(&[n]);
    for step in 1..=5 {
        let g = randv(&mut r, n, 1.0);
        state.update(&cfg, cfg.lr, &mut [&mut p], &[&g]);
        let (b1, b2, lr, wd, eps) =
            (cfg.beta1 as f64, cfg.beta2 as f64, cfg.lr as f64, cfg.weight_decay as f64, cfg.eps as f64);
        for i in 0..n {
            let gi = g[i] as f64;
            p64[i] *= 1.0 - lr * wd;
            m64[i] = b1 * m64[i] + (1.0 - b1) * gi;
            v64[i] = b2 * v64[i] + (1.0 - b2) * gi * gi;
            let mh = m64[i] / (1.0 - b1.powi(step));
            let vh = v64[i] / (1.0 - b2.powi(step));
            p64[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
    check("adamw params", &p, &p64, seed);
}

/// A tensor left out of the weight decay takes the update of a decay of zero; the others decay.
#[test]
fn adamw_leaves_masked_tensors_out_of_the_weight_decay() {
    let (mut r, _) = rng();
    let n = 8;
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
    let no_decay = AdamWConfig { weight_decay: 0.0, ..cfg };
    let (start_a, start_b) = (randv(&mut r, n, 1.0), randv(&mut r, n, 1.0));
    let (mut a, mut b) = (start_a.clone(), start_b.clone());
    let (mut a_plain, mut b_free) = (start_a.clone(), start_b.clone());
    let mut masked = AdamWState::new(&[n, n]);
    let (mut plain, mut free) = (AdamWState::new(&[n]), AdamWState::new(&[n]));
    for _ in 0..3 {
        let (ga, gb) = (randv(&mut r, n, 1.0), randv(&mut r, n, 1.0));
        masked.update_masked(&cfg, cfg.lr, &mut [&mut a, &mut b], &[&ga, &gb], &[true, false]);
        plain.update(&cfg, cfg.lr, &mut [&mut a_plain], &[&ga]);
        free.update(&no_decay, cfg.lr, &mut [&mut b_free], &[&gb]);
    }
    assert_eq!((a, b), (a_plain, b_free));
}

#[test]
fn clipping_and_schedules() {
    let mut a = vec![3.0f32, 0.0];
    let mut b = vec![4.0f32];
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let after = (a[0] * a[0] + b[0] * b[0]).sqrt();
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
    let mut bad = vec![f32::NAN];
    assert_eq!(clip_grad_norm(&mut [&mut bad], 1.0).unwrap_err().code, crate::ErrorCode::NonFiniteLoss);

    let s = LrSchedule::Cosine { warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
    assert!((s.lr_at(1.0, 0) - 0.1).abs() < 1e-6);
    assert!((s.lr_at(1.0, 9) - 1.0).abs() < 1e-6);
    assert!((s.lr_at(1.0, 60) - 0.55).abs() < 1e-5, "half way: {}", s.lr_at(1.0, 60));
    assert!((s.lr_at(1.0, 110) - 0.1).abs() < 1e-6);
    assert_eq!(LrSchedule::Constant.lr_at(0.5, 1000), 0.5);
}
