//! Attention transfer: the loss and the adapters' gradients against the float64 model.

use super::reference::RefModel;
use super::{attention, rel_err, rng, tiny_model};
use crate::config::Architecture;
use crate::convert::{LigerModel, LoraTarget};
use crate::liger::MixerKind;
use crate::nn::loss::IGNORE;
use crate::testing::random_tokens;
use rand::rngs::SmallRng;
use rand::Rng;

/// Runs attention_transfer_backward on `t` random tokens and returns (loss rel err, gradient
/// rel err) against the f64 model's loss and its central differences.
fn check_attention_transfer(rng: &mut SmallRng, model: &LigerModel, t: usize) -> (f64, f64) {
    let vocab = model.config().vocab_size;
    let inputs = random_tokens(t, vocab, rng.random());
    let labels: Vec<u32> = (0..t).map(|i| if i < 2 || rng.random_range(0..4) == 0 { IGNORE } else { 1 }).collect();
    let grad_scale = 0.25f32;
    let mut grads = model.new_lora_grads();
    let out = model.attention_transfer_backward(&inputs, &labels, grad_scale, &mut grads).unwrap();
    assert_eq!(out.count, labels.iter().filter(|&&l| l != IGNORE).count());
    let reference = RefModel::new(model);
    let params = reference.params();
    let want = reference.attention_transfer_loss(&params, &inputs, &labels);
    assert!(want > 0.0, "the adapters make the Liger attention differ from the softmax attention");
    let loss_err = (out.loss_sum - want).abs() / want;

    // o_proj's adapter plays no part: its gradient stays zero.
    for (layer, g) in grads.layers.iter().enumerate() {
        if let Some(g) = &g[LoraTarget::O.index()] {
            assert!(g.a.iter().chain(&g.b).all(|&x| x == 0.0), "layer {layer}: o_proj's adapter got a gradient");
        }
    }
    let step = 1e-5;
    let mut perturbed = params.clone();
    let (mut got, mut wanted) = (Vec::new(), Vec::new());
    for (p, g) in grads.as_slices().iter().enumerate() {
        let picks: Vec<usize> = if g.len() <= 16 {
            (0..g.len()).collect()
        } else {
            (0..16).map(|_| rng.random_range(0..g.len())).collect()
        };
        for i in picks {
            got.push(g[i]);
            perturbed[p][i] = params[p][i] + step;
            let up = reference.attention_transfer_loss(&perturbed, &inputs, &labels);
            perturbed[p][i] = params[p][i] - step;
            let down = reference.attention_transfer_loss(&perturbed, &inputs, &labels);
            perturbed[p][i] = params[p][i];
            wanted.push(grad_scale as f64 * (up - down) / (2.0 * step));
        }
    }
    (loss_err, rel_err(&got, &wanted))
}

#[test]
fn attention_transfer_matches_the_f64_model_for_every_mixer() {
    let mut rng = rng();
    for kind in MixerKind::ALL {
        let model = tiny_model(&mut rng, attention(kind, 5), vec![], Architecture::Llama);
        let (loss_err, grad_err) = check_attention_transfer(&mut rng, &model, 18);
        println!("{}: loss rel err {loss_err:.2e}, gradient max rel err {grad_err:.2e}", kind.name());
        assert!(loss_err < 1e-5 && grad_err < 1e-3, "{}", kind.name());
    }
}

#[test]
fn attention_transfer_matches_the_f64_model_for_hybrids() {
    let mut rng = rng();
    let cases = [
        ("hybrid gla, llama", tiny_model(&mut rng, attention(MixerKind::Gla, 5), vec![1], Architecture::Llama)),
        (
            "hybrid gla, qwen3 q/k norms",
            tiny_model(&mut rng, attention(MixerKind::Gla, 3), vec![0], Architecture::Qwen3),
        ),
        ("qwen2 biases", tiny_model(&mut rng, attention(MixerKind::Hgrn2, 65), vec![], Architecture::Qwen2)),
    ];
    for (name, model) in &cases {
        let (loss_err, grad_err) = check_attention_transfer(&mut rng, model, 18);
        println!("{name}: loss rel err {loss_err:.2e}, gradient max rel err {grad_err:.2e}");
        assert!(loss_err < 1e-5 && grad_err < 1e-3, "{name}");
    }
}

#[test]
fn attention_transfer_of_an_all_softmax_model_is_refused() {
    let mut rng = rng();
    let model = tiny_model(&mut rng, attention(MixerKind::Gla, 5), vec![0, 1], Architecture::Llama);
    let mut grads = model.new_lora_grads();
    let err = model.attention_transfer_backward(&[1, 2, 3], &[2, 3, 4], 1.0, &mut grads).unwrap_err();
    assert_eq!(err.code, crate::ErrorCode::InvalidArgument);
    assert!(err.message.contains("nothing to train"), "{}", err.message);
}

#[test]
fn attention_transfer_steps_bring_the_liger_attention_toward_softmax() {
    // Gradient descent on the adapters lowers the loss: the gradient points the right way. Each
    // step halves its size until the loss goes down (a fixed step overshoots on some random
    // models, up to a non-finite loss); along a descent direction a small enough step always does.
    let mut rng = rng();
    let mut model = tiny_model(&mut rng, attention(MixerKind::Gla, 3), vec![], Architecture::Llama);
    let inputs = random_tokens(24, model.config().vocab_size, rng.random());
    let labels = vec![0u32; inputs.len()];
    let loss = |m: &LigerModel| {
        let mut g = m.new_lora_grads();
        let out = m.attention_transfer_backward(&inputs, &labels, 1.0 / 24.0, &mut g).ok()?;
        Some((out.loss_sum / 24.0, g))
    };
    let (first, _) = loss(&model).expect("the loss of the untrained adapters is finite");
    let mut current = first;
    for _ in 0..20 {
        let (_, g) = loss(&model).expect("finite");
        let grads: Vec<Vec<f32>> = g.as_slices().into_iter().map(|d| d.to_vec()).collect();
        let shift = |model: &mut LigerModel, by: f32| {
            for (p, d) in model.lora_params_mut().into_iter().zip(&grads) {
                p.iter_mut().zip(d).for_each(|(x, d)| *x -= by * d);
            }
        };
        let mut step = 0.5f32;
        loop {
            shift(&mut model, step);
            match loss(&model) {
                Some((l, _)) if l < current => {
                    current = l;
                    break;
                }
                _ if step > 1e-6 => {
                    shift(&mut model, -step);
                    step /= 2.0;
                }
                _ => panic!("no step along the negative gradient lowers the loss {current}"),
            }
        }
    }
    println!("attention-transfer loss {first:.4e} -> {current:.4e}");
    assert!(current < 0.9 * first, "20 descent steps should lower the loss: {first} -> {current}");
}
