//! Feature maps and gates of the mixers, per token and head, with their backward.
//! Every mixer but GSA maps a raw key `k` (one head, D values) to key features `kf` and
//! log-gates `g` (see the table on [`MixerKind`]); queries always go through a softmax.

use super::config::{MixerConfig, MixerKind};

/// `log(sigmoid(x))`, stable for large |x|.
pub(crate) fn log_sigmoid(x: f32) -> f32 {
    -softplus(-x)
}

/// `log(1 + exp(x))`, stable for large |x|.
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Softmax of one row, max-subtracted.
pub(crate) fn softmax(x: &[f32], out: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (o, &xi) in out.iter_mut().zip(x) {
        *o = (xi - max).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Given `y = softmax(x)` and `dy`, adds `y * (dy - y.dy)` to `dx`.
pub(crate) fn softmax_backward_acc(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    for ((dxi, &yi), &dyi) in dx.iter_mut().zip(y).zip(dy) {
        *dxi += yi * (dyi - dot);
    }
}

/// Key features and log-gates of one key (one head, D values).
pub(crate) fn key_features(cfg: &MixerConfig, k: &[f32], kf: &mut [f32], g: &mut [f32]) {
    let mean = || k.iter().sum::<f32>() / k.len() as f32;
    match cfg.kind {
        MixerKind::Gla => {
            softmax(k, kf);
            let inv = 1.0 / cfg.gate_normalizer;
            g.iter_mut().zip(k).for_each(|(gi, &x)| *gi = log_sigmoid(x) * inv);
        }
        MixerKind::Hgrn2 => {
            for ((kfi, gi), &x) in kf.iter_mut().zip(g.iter_mut()).zip(k) {
                *kfi = sigmoid(-x); // 1 - a with a = sigmoid(x)
                *gi = log_sigmoid(x);
            }
        }
        MixerKind::Retention => {
            softmax(k, kf);
            g.fill(log_sigmoid(mean()));
        }
        MixerKind::Mamba2 => {
            softmax(k, kf);
            g.fill(-softplus(mean()));
        }
        MixerKind::Rwkv6 => {
            softmax(k, kf);
            g.iter_mut().zip(k).for_each(|(gi, &x)| *gi = -x.exp());
        }
        MixerKind::Linear => {
            softmax(k, kf);
            g.fill(0.0);
        }
        MixerKind::Gsa | MixerKind::Gdn => unreachable!("gsa and gdn have their own feature paths"),
    }
}

/// Adds to `dk` the gradient of one key through [`key_features`], given `dkf` and `dg`.
/// `kf` is the forward's key features of this key.
pub(crate) fn key_features_backward_acc(
    cfg: &MixerConfig,
    k: &[f32],
    kf: &[f32],
    dkf: &[f32],
    dg: &[f32],
    dk: &mut [f32],
) {
    let n = k.len() as f32;
    let mean = k.iter().sum::<f32>() / n;
    match cfg.kind {
        MixerKind::Gla => {
            softmax_backward_acc(kf, dkf, dk);
            let inv = 1.0 / cfg.gate_normalizer;
            // d logsigmoid(x) / dx = sigmoid(-x)
            for ((dki, &x), &dgi) in dk.iter_mut().zip(k).zip(dg) {
                *dki += dgi * sigmoid(-x) * inv;
            }
        }
        MixerKind::Hgrn2 => {
            for (((dki, &x), &dkfi), &dgi) in dk.iter_mut().zip(k).zip(dkf).zip(dg) {
                let (s, sn) = (sigmoid(x), sigmoid(-x));
                *dki += -dkfi * s * sn + dgi * sn;
            }
        }
        MixerKind::Retention | MixerKind::Mamba2 => {
            softmax_backward_acc(kf, dkf, dk);
            // One gate from the mean of k: every key dim gets (sum of dg) * gate'(mean) / D.
            let slope = if cfg.kind == MixerKind::Retention { sigmoid(-mean) } else { -sigmoid(mean) };
            let per_dim = dg.iter().sum::<f32>() * slope / n;
            dk.iter_mut().for_each(|d| *d += per_dim);
        }
        MixerKind::Rwkv6 => {
            softmax_backward_acc(kf, dkf, dk);
            for ((dki, &x), &dgi) in dk.iter_mut().zip(k).zip(dg) {
                *dki -= dgi * x.exp();
            }
        }
        MixerKind::Linear => softmax_backward_acc(kf, dkf, dk),
        MixerKind::Gsa | MixerKind::Gdn => unreachable!("gsa and gdn have their own feature paths"),
    }
}
