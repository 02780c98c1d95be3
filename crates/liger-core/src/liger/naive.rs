//! Float64 references, written step by step from the definitions with no tricks: the
//! oracles of the tests (and of the GPU kernels' tests). Quadratic or token-by-token;
//! slow on purpose. Layouts and state layout as in [`super::mixer`]; shapes are trusted.

use super::config::{HeadShape, MixerConfig, MixerKind};
use super::swa::Window;

fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Key features and decay `a` (not its log) of one key, straight from the table.
fn key_features_and_decay(cfg: &MixerConfig, k: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mean = k.iter().sum::<f64>() / k.len() as f64;
    let n = cfg.gate_normalizer as f64;
    match cfg.kind {
        MixerKind::Gla => (softmax(k), k.iter().map(|&x| sigmoid(x).powf(1.0 / n)).collect()),
        MixerKind::Hgrn2 => (k.iter().map(|&x| 1.0 - sigmoid(x)).collect(), k.iter().map(|&x| sigmoid(x)).collect()),
        MixerKind::Retention => (softmax(k), vec![sigmoid(mean); k.len()]),
        MixerKind::Mamba2 => (softmax(k), vec![(-(1.0 + mean.exp()).ln()).exp(); k.len()]),
        MixerKind::Rwkv6 => (softmax(k), k.iter().map(|&x| (-x.exp()).exp()).collect()),
        MixerKind::Linear => (softmax(k), vec![1.0; k.len()]),
        MixerKind::Gsa | MixerKind::Gdn => unreachable!("gsa and gdn have their own references"),
    }
}

/// Runs the mixer token by token from `initial` (zeros when `None`); returns the output
/// `[T, hq, D]` and the final state.
pub fn mixer_forward(
    cfg: &MixerConfig,
    shape: HeadShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    initial: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>) {
    let (d, group) = (shape.d, shape.group());
    let t = q.len() / (shape.hq * d);
    let m = cfg.gsa_slots;
    let per_head = if cfg.kind == MixerKind::Gsa { 2 * m * d } else { d * d };
    let mut state = initial.map(|s| s.to_vec()).unwrap_or_else(|| vec![0.0; per_head * shape.hkv]);
    let mut o = vec![0.0; q.len()];
    for r in 0..t {
        for kvh in 0..shape.hkv {
            let kt = &k[(r * shape.hkv + kvh) * d..(r * shape.hkv + kvh + 1) * d];
            let vt = &v[(r * shape.hkv + kvh) * d..(r * shape.hkv + kvh + 1) * d];
            let s = &mut state[kvh * per_head..(kvh + 1) * per_head];
            for h in kvh * group..(kvh + 1) * group {
                let qt = &q[(r * shape.hq + h) * d..(r * shape.hq + h + 1) * d];
                let ot = &mut o[(r * shape.hq + h) * d..(r * shape.hq + h + 1) * d];
                // The state update is the same for every head of the group; do it once.
                let update = h == kvh * group;
                if cfg.kind == MixerKind::Gsa {
                    gsa_token(cfg, s, qt, kt, vt, ot, update);
                } else if cfg.kind == MixerKind::Gdn {
                    gdn_token(cfg, s, qt, kt, vt, ot, update);
                } else {
                    gated_token(cfg, s, qt, kt, vt, ot, update);
                }
            }
        }
    }
    (o, state)
}

/// S = diag(a) S + kf^T v, then o = softmax(q) S.
fn gated_token(cfg: &MixerConfig, s: &mut [f64], q: &[f64], k: &[f64], v: &[f64], o: &mut [f64], update: bool) {
    let d = q.len();
    if update {
        let (kf, a) = key_features_and_decay(cfg, k);
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = a[i] * s[i * d + j] + kf[i] * v[j];
            }
        }
    }
    let qf = softmax(q);
    for j in 0..d {
        o[j] = (0..d).map(|i| qf[i] * s[i * d + j]).sum();
    }
}

/// Gated slot attention: both slot memories `[M, D]` decay by a and take w = 1 - a.
fn gsa_token(cfg: &MixerConfig, s: &mut [f64], q: &[f64], k: &[f64], v: &[f64], o: &mut [f64], update: bool) {
    let (d, m) = (q.len(), cfg.gsa_slots);
    let (kslots, vslots) = s.split_at_mut(m * d);
    if update {
        let per_slot = d / m;
        for i in 0..m {
            let pool = k[i * per_slot..(i + 1) * per_slot].iter().sum::<f64>() / per_slot as f64;
            let a = sigmoid(pool).powf(1.0 / cfg.gate_normalizer as f64);
            for j in 0..d {
                kslots[i * d + j] = a * kslots[i * d + j] + (1.0 - a) * k[j];
                vslots[i * d + j] = a * vslots[i * d + j] + (1.0 - a) * v[j];
            }
        }
    }
    let scale = cfg.gsa_scale.factor(d) as f64;
    let scores: Vec<f64> = (0..m).map(|i| scale * (0..d).map(|j| kslots[i * d + j] * q[j]).sum::<f64>()).collect();
    let p = softmax(&scores);
    for j in 0..d {
        o[j] = (0..m).map(|i| p[i] * vslots[i * d + j]).sum();
    }
}

fn l2_normalize(x: &[f64]) -> Vec<f64> {
    let norm = (x.iter().map(|v| v * v).sum::<f64>() + 1e-6).sqrt();
    x.iter().map(|v| v / norm).collect()
}

/// The gated delta rule on the `[D, D]` state (row = key dim), straight from the definition:
/// S = a (I - b kn kn^T) S + b kn v^T, then o = S^T qn, with a and b from the two halves of k.
fn gdn_token(cfg: &MixerConfig, s: &mut [f64], q: &[f64], k: &[f64], v: &[f64], o: &mut [f64], update: bool) {
    let d = q.len();
    if update {
        let kn = l2_normalize(k);
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let a = sigmoid(mean(&k[..d / 2])).powf(1.0 / cfg.gate_normalizer as f64);
        let b = sigmoid(mean(&k[d / 2..]));
        // (I - b kn kn^T) S
        let erased: Vec<f64> = (0..d * d)
            .map(|n| {
                let (i, j) = (n / d, n % d);
                s[n] - b * kn[i] * (0..d).map(|l| kn[l] * s[l * d + j]).sum::<f64>()
            })
            .collect();
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = a * erased[i * d + j] + b * kn[i] * v[j];
            }
        }
    }
    let qn = l2_normalize(q);
    for j in 0..d {
        o[j] = (0..d).map(|i| qn[i] * s[i * d + j]).sum();
    }
}

/// Causal softmax attention where query i sees key j when `window.sees(i, j)`: the last
/// `window.keys` keys and the first `window.sinks` (`usize::MAX` keys: full causal attention).
/// Scale 1/sqrt(D).
pub fn attention_forward(shape: HeadShape, window: impl Into<Window>, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let window = window.into();
    let (d, group) = (shape.d, shape.group());
    let t = q.len() / (shape.hq * d);
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = vec![0.0; q.len()];
    for i in 0..t {
        let seen: Vec<usize> = (0..=i).filter(|&j| window.sees(i, j)).collect();
        for h in 0..shape.hq {
            let kvh = h / group;
            let qi = &q[(i * shape.hq + h) * d..(i * shape.hq + h + 1) * d];
            let scores: Vec<f64> = seen
                .iter()
                .map(|&j| scale * (0..d).map(|x| qi[x] * k[(j * shape.hkv + kvh) * d + x]).sum::<f64>())
                .collect();
            let p = softmax(&scores);
            for (n, &j) in seen.iter().enumerate() {
                for x in 0..d {
                    o[(i * shape.hq + h) * d + x] += p[n] * v[(j * shape.hkv + kvh) * d + x];
                }
            }
        }
    }
    o
}

/// Gradients of `sum(d_o * mixer_forward(q, k, v))` from a zero state, by backpropagation
/// through the token-by-token recurrence (all states kept). Every mixer but GSA and gdn (whose
/// reference gradients are taken by finite differences). Returns `[dq, dk, dv]`.
pub fn mixer_backward(
    cfg: &MixerConfig,
    shape: HeadShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_o: &[f64],
) -> [Vec<f64>; 3] {
    assert!(
        !matches!(cfg.kind, MixerKind::Gsa | MixerKind::Gdn),
        "the gsa and gdn references have no analytic backward"
    );
    let (d, group, hkv) = (shape.d, shape.group(), shape.hkv);
    let t = q.len() / (shape.hq * d);
    let kv = |r: usize, h: usize| (r * hkv + h) * d..(r * hkv + h + 1) * d;
    let qh = |r: usize, h: usize| (r * shape.hq + h) * d..(r * shape.hq + h + 1) * d;
    // Forward, keeping the state after every token: states[r] is S after token r - 1.
    let mut states = vec![vec![0.0; hkv * d * d]];
    for r in 0..t {
        let mut s = states[r].clone();
        for h in 0..hkv {
            let (kf, a) = key_features_and_decay(cfg, &k[kv(r, h)]);
            let vt = &v[kv(r, h)];
            for i in 0..d {
                for j in 0..d {
                    let x = &mut s[(h * d + i) * d + j];
                    *x = a[i] * *x + kf[i] * vt[j];
                }
            }
        }
        states.push(s);
    }
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let mut ds = vec![0.0; hkv * d * d]; // gradient w.r.t. the state after token r
    for r in (0..t).rev() {
        for h in 0..hkv {
            let s_after = &states[r + 1][h * d * d..(h + 1) * d * d];
            let s_before = &states[r][h * d * d..(h + 1) * d * d];
            let dsh = &mut ds[h * d * d..(h + 1) * d * d];
            // o = softmax(q) S for each query head of the group.
            for qhead in h * group..(h + 1) * group {
                let qf = softmax(&q[qh(r, qhead)]);
                let dot_o = &d_o[qh(r, qhead)];
                let dqf: Vec<f64> = (0..d).map(|i| (0..d).map(|j| s_after[i * d + j] * dot_o[j]).sum()).collect();
                let inner: f64 = qf.iter().zip(&dqf).map(|(a, b)| a * b).sum();
                for i in 0..d {
                    dq[qh(r, qhead).start + i] = qf[i] * (dqf[i] - inner);
                    for j in 0..d {
                        dsh[i * d + j] += qf[i] * dot_o[j];
                    }
                }
            }
            // S_after = diag(a) S_before + kf^T v.
            let kt = &k[kv(r, h)];
            let vt = &v[kv(r, h)];
            let (kf, a) = key_features_and_decay(cfg, kt);
            let mut dkf = vec![0.0; d];
            let mut da = vec![0.0; d];
            for i in 0..d {
                for j in 0..d {
                    dkf[i] += dsh[i * d + j] * vt[j];
                    dv[kv(r, h).start + j] += kf[i] * dsh[i * d + j];
                    da[i] += dsh[i * d + j] * s_before[i * d + j];
                    dsh[i * d + j] *= a[i];
                }
            }
            let dkh = &mut dk[kv(r, h)];
            key_features_backward(cfg, kt, &kf, &a, &dkf, &da, dkh);
        }
    }
    [dq, dk, dv]
}

/// Sets `dk` from the gradients of the key features and of the decay `a` (not its log).
fn key_features_backward(cfg: &MixerConfig, k: &[f64], kf: &[f64], a: &[f64], dkf: &[f64], da: &[f64], dk: &mut [f64]) {
    let n = k.len() as f64;
    let mean = k.iter().sum::<f64>() / n;
    let softmax_part = |dk: &mut [f64]| {
        let inner: f64 = kf.iter().zip(dkf).map(|(x, y)| x * y).sum();
        dk.iter_mut().zip(kf.iter().zip(dkf)).for_each(|(g, (y, dy))| *g = y * (dy - inner));
    };
    match cfg.kind {
        MixerKind::Gla => {
            softmax_part(dk);
            // a = sigmoid(k)^(1/n): da/dk = a (1 - sigmoid(k)) / n
            for i in 0..k.len() {
                dk[i] += da[i] * a[i] * (1.0 - sigmoid(k[i])) / cfg.gate_normalizer as f64;
            }
        }
        MixerKind::Hgrn2 => {
            for i in 0..k.len() {
                let s = sigmoid(k[i]);
                dk[i] = (da[i] - dkf[i]) * s * (1.0 - s);
            }
        }
        MixerKind::Retention | MixerKind::Mamba2 => {
            softmax_part(dk);
            let s = sigmoid(mean);
            // retention: a = sigmoid(mean); mamba2: a = 1 / (1 + exp(mean)) = sigmoid(-mean).
            let slope = if cfg.kind == MixerKind::Retention { s * (1.0 - s) } else { -s * (1.0 - s) };
            let per_dim = da.iter().sum::<f64>() * slope / n;
            dk.iter_mut().for_each(|g| *g += per_dim);
        }
        MixerKind::Rwkv6 => {
            softmax_part(dk);
            for i in 0..k.len() {
                dk[i] -= da[i] * k[i].exp() * a[i];
            }
        }
        MixerKind::Linear => softmax_part(dk),
        MixerKind::Gsa | MixerKind::Gdn => unreachable!("checked by the caller"),
    }
}
