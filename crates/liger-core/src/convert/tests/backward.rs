//! LoRA gradients of the whole model against central differences of the f64 model.

use super::reference::RefModel;
use super::{attention, rel_err, rng, tiny_model};
use crate::config::Architecture;
use crate::convert::backward::add_dy_w;
use crate::convert::LigerModel;
use crate::liger::MixerKind;
use crate::nn::loss::IGNORE;
use crate::tensor::{ByteView, GgmlType, QTensor};
use crate::testing::random_tokens;
use rand::rngs::SmallRng;
use rand::Rng;

/// Runs forward_backward and compares the loss and every LoRA gradient with the f64 model.
/// Returns (loss rel err, gradient rel err).
fn check_gradients(rng: &mut SmallRng, model: &LigerModel, t: usize) -> (f64, f64) {
    let vocab = model.config().vocab_size;
    let inputs = random_tokens(t, vocab, rng.random());
    // Next-token labels, a few of them masked like prompt tokens.
    let labels: Vec<u32> = (0..t)
        .map(|i| if i < 3 || rng.random_range(0..5) == 0 { IGNORE } else { rng.random_range(0..vocab as u32) })
        .collect();
    let grad_scale = 0.5f32;
    let mut grads = model.new_lora_grads();
    let out = model.forward_backward(&inputs, &labels, grad_scale, &mut grads).unwrap();
    let reference = RefModel::new(model);
    let params = reference.params();
    let want_loss = reference.loss(&params, &inputs, &labels);
    let loss_err = (out.loss_sum - want_loss).abs() / want_loss.abs();
    assert_eq!(out.count, labels.iter().filter(|&&l| l != IGNORE).count());
    let eval = model.loss(&inputs, &labels).unwrap();
    assert_eq!(eval.loss_sum.to_bits(), out.loss_sum.to_bits(), "loss() and forward_backward() agree");

    let step = 1e-5;
    let mut perturbed = params.clone();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    // Every adapter's A and B, at up to 24 random entries each (the f64 model is slow).
    for (p, g) in grads.as_slices().iter().enumerate() {
        let picks: Vec<usize> = if g.len() <= 24 {
            (0..g.len()).collect()
        } else {
            (0..24).map(|_| rng.random_range(0..g.len())).collect()
        };
        for i in picks {
            got.push(g[i]);
            perturbed[p][i] = params[p][i] + step;
            let up = reference.loss(&perturbed, &inputs, &labels);
            perturbed[p][i] = params[p][i] - step;
            let down = reference.loss(&perturbed, &inputs, &labels);
            perturbed[p][i] = params[p][i];
            want.push(grad_scale as f64 * (up - down) / (2.0 * step));
        }
    }
    (loss_err, rel_err(&got, &want))
}

#[test]
fn lora_gradients_match_finite_differences_for_every_mixer() {
    let mut rng = rng();
    for kind in MixerKind::ALL {
        let model = tiny_model(&mut rng, attention(kind, 5), vec![], Architecture::Llama);
        let (loss_err, grad_err) = check_gradients(&mut rng, &model, 20);
        println!("{}: loss rel err {loss_err:.2e}, LoRA gradient max rel err {grad_err:.2e}", kind.name());
        assert!(loss_err < 1e-5 && grad_err < 1e-3, "{}", kind.name());
    }
}

#[test]
fn lora_gradients_match_finite_differences_for_hybrids() {
    let mut rng = rng();
    let cases = [
        ("hybrid gla, llama", tiny_model(&mut rng, attention(MixerKind::Gla, 5), vec![1], Architecture::Llama)),
        (
            "hybrid hgrn2, qwen2 biases",
            tiny_model(&mut rng, attention(MixerKind::Hgrn2, 65), vec![0], Architecture::Qwen2),
        ),
        (
            "hybrid gsa, qwen3 q/k norms",
            tiny_model(&mut rng, attention(MixerKind::Gsa, 3), vec![0], Architecture::Qwen3),
        ),
    ];
    for (name, model) in &cases {
        let (loss_err, grad_err) = check_gradients(&mut rng, model, 20);
        println!("{name}: loss rel err {loss_err:.2e}, LoRA gradient max rel err {grad_err:.2e}");
        assert!(loss_err < 1e-5 && grad_err < 1e-3, "{name}");
    }
}

/// Learned branch weights per head train with the adapters: their gradients, and the
/// adapters', against the f64 model, in a hybrid (the softmax layer has no weights).
#[test]
fn learned_head_mix_gradients_match_finite_differences() {
    let mut rng = rng();
    let mut model = tiny_model(&mut rng, attention(MixerKind::Gla, 5), vec![1], Architecture::Llama);
    let (layers, heads) = (model.config().num_layers, model.config().num_heads);
    model.options = model.options.clone().with_learned_head_mix(layers, heads);
    // Away from the uniform start, so that each head's weights matter on their own.
    for m in model.options.head_mix.iter_mut().flatten() {
        m.alpha.iter_mut().for_each(|a| *a = rng.random_range(-1.0..1.0));
        m.beta.iter_mut().for_each(|b| *b = rng.random_range(0.0..2.0));
    }
    let grads = model.new_lora_grads();
    assert_eq!(grads.head_mix.iter().flatten().count(), layers - 1, "weights in every Liger layer only");
    assert_eq!(model.trained_params().len(), model.lora_params().len() + 2 * (layers - 1));
    // Weight decay pulls the adapters toward the base model; it leaves the branch weights alone.
    let decays = model.trained_param_decays();
    assert_eq!(decays.len(), model.trained_params().len());
    assert!(decays.iter().zip(model.trained_params()).all(|(&d, (name, _))| d != name.contains(".head_mix.")));
    let (loss_err, grad_err) = check_gradients(&mut rng, &model, 20);
    println!("gla hybrid with learned head mix: loss rel err {loss_err:.2e}, gradient max rel err {grad_err:.2e}");
    assert!(loss_err < 1e-5 && grad_err < 1e-3);
}

#[test]
fn lora_gradients_across_chunk_boundaries() {
    // 70 tokens: the chunked mixer and blocked attention cross their 64-token boundaries.
    let mut rng = rng();
    let mut model = tiny_model(&mut rng, attention(MixerKind::Gla, 65), vec![], Architecture::Llama);
    // Adapters on q and o only, to keep the finite differences few.
    for l in &mut model.lora.layers {
        l.k = None;
        l.v = None;
    }
    let (loss_err, grad_err) = check_gradients(&mut rng, &model, 70);
    println!("gla, 70 tokens, q and o adapters: loss rel err {loss_err:.2e}, gradient max rel err {grad_err:.2e}");
    assert!(loss_err < 1e-5 && grad_err < 1e-3);
}

#[test]
fn backward_through_quantized_weights_matches_f64() {
    let mut rng = rng();
    let (rows, cols, t) = (300, 64, 5);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1] {
        let w = if ty == GgmlType::F32 {
            QTensor::from_f32(rows, cols, values.clone())
        } else {
            QTensor::new(ty, rows, cols, ByteView::from_vec(crate::quant::quantize(ty, &values).unwrap())).unwrap()
        };
        let wf = w.to_f32();
        let dy: Vec<f32> = (0..t * rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dx0: Vec<f32> = (0..t * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut dx = dx0.clone();
        add_dy_w(&w, &dy, t, &mut dx);
        let want: Vec<f64> = (0..t * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                dx0[i] as f64 + (0..rows).map(|o| dy[r * rows + o] as f64 * wf[o * cols + c] as f64).sum::<f64>()
            })
            .collect();
        let e = rel_err(&dx, &want);
        println!("dx += dy W with {} weights: max rel err {e:.2e}", ty.name());
        assert!(e < 1e-5);
    }
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let mut rng = rng();
    let model = tiny_model(&mut rng, attention(MixerKind::Rwkv6, 4), vec![0], Architecture::Llama);
    let vocab = model.config().vocab_size;
    let (inputs, labels) = (random_tokens(12, vocab, rng.random()), random_tokens(12, vocab, rng.random()));
    let mut once = model.new_lora_grads();
    model.forward_backward(&inputs, &labels, 1.0, &mut once).unwrap();
    let mut twice = model.new_lora_grads();
    model.forward_backward(&inputs, &labels, 0.5, &mut twice).unwrap();
    model.forward_backward(&inputs, &labels, 1.5, &mut twice).unwrap();
    let names = model.lora_params();
    assert_eq!(names.len(), once.as_slices().len());
    assert_eq!(names[0].0, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    for ((name, p), (a, b)) in names.iter().zip(once.as_slices().iter().zip(twice.as_slices())) {
        assert_eq!(p.len(), a.len(), "{name}");
        let want: Vec<f64> = a.iter().map(|&x| 2.0 * x as f64).collect();
        // grad_scale enters at the loss, so the two runs round differently all the way back;
        // with rwkv6's steep gates, cancellation lifts that to ~2e-5 of the largest entry.
        let e = rel_err(b, &want);
        assert!(e < 1e-4, "{name}: {e:e}");
    }
    twice.zero();
    assert!(twice.as_slices().iter().all(|s| s.iter().all(|&x| x == 0.0)));
}

#[test]
fn forward_backward_is_deterministic() {
    // Bit-exact resumption of training relies on this.
    let mut rng = rng();
    for kind in [MixerKind::Gla, MixerKind::Rwkv6] {
        let model = tiny_model(&mut rng, attention(kind, 4), vec![0], Architecture::Llama);
        let vocab = model.config().vocab_size;
        let (inputs, labels) = (random_tokens(70, vocab, rng.random()), random_tokens(70, vocab, rng.random()));
        let mut a = model.new_lora_grads();
        let mut b = model.new_lora_grads();
        let la = model.forward_backward(&inputs, &labels, 1.0, &mut a).unwrap();
        let lb = model.forward_backward(&inputs, &labels, 1.0, &mut b).unwrap();
        assert_eq!(la.loss_sum.to_bits(), lb.loss_sum.to_bits(), "{kind:?}: loss differs between runs");
        for (x, y) in a.as_slices().iter().zip(b.as_slices()) {
            assert!(
                x.iter().zip(y.iter()).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{kind:?}: gradients differ between runs"
            );
        }
    }
}
