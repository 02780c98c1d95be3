//! The GPU Liger model against the CPU engine (`LigerModel`) on tiny random models: loss and
//! LoRA gradients of a batch (f32 and bf16), a short training run, prefill + decoding steps
//! against the full forward, and the typed errors.

mod common;

use common::{gpu, rng, tiny_gpu_config, word_tokenizer};
use half::bf16;
use liger_core::config::{Architecture, ModelConfig};
use liger_core::convert::{linearize, LigerModel, LigerOptions, LoraOptions, LoraTarget};
use liger_core::generate::CausalLm;
use liger_core::liger::{MixerConfig, MixerKind};
use liger_core::model::{BaseModel, ModelFormat};
use liger_core::nn::loss::IGNORE;
use liger_core::testing::{max_rel_error, random_tokens, random_weights, tiny_config};
use liger_core::train::data::Sequence;
use liger_core::train::trainer::{TrainConfig, Trainable, Trainer};
use liger_core::ErrorCode;
use liger_cuda::{GemmInput, GpuBuffer, GpuContext, GpuLigerModel, GpuWeights};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A converted tiny model with adapters on q, k, v and o, their B matrices random (fresh ones
/// are zero, which would hide the A gradients).
fn model(arch: Architecture, mixer: MixerKind, softmax_layers: Vec<usize>, rng: &mut StdRng) -> LigerModel {
    let seed = rng.random();
    model_of(tiny_base(arch, seed), mixer, softmax_layers, rng)
}

/// The tiny random base model of `arch` whose weights `seed` draws.
fn tiny_base(arch: Architecture, seed: u64) -> BaseModel {
    let cfg = tiny_gpu_config(arch);
    let weights = random_weights(&cfg, seed);
    BaseModel::new(cfg, weights, word_tokenizer(), None, "tiny".into(), ModelFormat::Checkpoint)
}

/// [`model`] converted from the given base.
fn model_of(base: BaseModel, mixer: MixerKind, softmax_layers: Vec<usize>, rng: &mut StdRng) -> LigerModel {
    let mut options = LigerOptions { softmax_layers, ..Default::default() };
    options.attention.mixer = MixerConfig { gsa_slots: 16, ..MixerConfig::new(mixer) };
    options.attention.window_keys = 5;
    // The all-Liger GLA case runs with two attention sinks beside the window, the retention and
    // mamba2 cases with the normalised recurrent branch, the hybrids with learned branch weights
    // per head (random), the others as the paper.
    let plain = options.softmax_layers.is_empty();
    options.attention.sink_keys = if mixer == MixerKind::Gla && plain { 2 } else { 0 };
    options.attention.grm_norm = matches!(mixer, MixerKind::Retention | MixerKind::Mamba2);
    if !plain {
        let c = base.config.clone();
        options = options.with_learned_head_mix(c.num_layers, c.num_heads);
        for m in options.head_mix.iter_mut().flatten() {
            m.alpha.iter_mut().chain(&mut m.beta).for_each(|w| *w = rng.random_range(-1.0..1.5));
        }
    }
    let lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut m = linearize(base, options, lora).unwrap();
    for layer in &mut m.lora.layers {
        for t in LoraTarget::ALL {
            if let Some(a) = layer.get_mut(t) {
                a.b.iter_mut().for_each(|b| *b = rng.random_range(-0.2..0.2));
            }
        }
    }
    m
}

/// Two equally long sequences with a few ignored labels.
fn batch(vocab: usize, tokens: usize, rng: &mut StdRng) -> Vec<Sequence> {
    (0..2)
        .map(|_| {
            let inputs = random_tokens(tokens, vocab, rng.random());
            let mut labels = random_tokens(tokens, vocab, rng.random());
            labels[0] = IGNORE;
            labels[tokens / 2] = IGNORE;
            Sequence { inputs, labels }
        })
        .collect()
}

/// The GPU loss and LoRA gradients of a batch against the CPU's; returns (loss error, grad error).
fn compare_forward_backward<T: GemmInput>(ctx: GpuContext, cpu: LigerModel, data: &[Sequence]) -> (f64, f64) {
    let mut cpu_grads = cpu.new_lora_grads();
    let mut cpu_loss = 0.0;
    for s in data {
        cpu_loss += cpu.forward_backward(&s.inputs, &s.labels, 0.37, &mut cpu_grads).unwrap().loss_sum;
    }
    let gpu = GpuLigerModel::<T>::new(ctx, cpu).unwrap();
    // Both backward strategies: activations kept from the forward, and recomputed per layer.
    let kept = run_gpu(&gpu, data);
    gpu.set_recompute(true);
    let recomputed = run_gpu(&gpu, data);
    let same = max_rel_error(&recomputed.1, &kept.1.iter().map(|&g| g as f64).collect::<Vec<_>>());
    assert!(
        ((kept.0 - recomputed.0) / kept.0).abs() < 1e-6 && same < 1e-5,
        "kept and recomputed activations differ: {same:.2e}"
    );
    // And the middle ground: the last layer's activations kept, the others' recomputed.
    gpu.set_recompute(false);
    gpu.set_kept_layers(Some(1));
    let partly = run_gpu(&gpu, data);
    gpu.set_kept_layers(None);
    let same = max_rel_error(&partly.1, &kept.1.iter().map(|&g| g as f64).collect::<Vec<_>>());
    assert!(
        ((kept.0 - partly.0) / kept.0).abs() < 1e-6 && same < 1e-5,
        "kept and partly recomputed activations differ: {same:.2e}"
    );
    let (loss, got) = kept;
    let expected: Vec<f64> = cpu_grads.as_slices().concat().iter().map(|&g| g as f64).collect();
    assert!(got.iter().all(|g| g.is_finite()), "non-finite GPU gradients");
    ((loss - cpu_loss).abs() / cpu_loss, max_rel_error(&got, &expected))
}

/// The GPU loss and gradients of a batch (gradients added to a non-zero start, then taken off).
fn run_gpu<T: GemmInput>(gpu: &GpuLigerModel<T>, data: &[Sequence]) -> (f64, Vec<f32>) {
    let mut gpu_grads = gpu.new_grads();
    let inputs: Vec<&[u32]> = data.iter().map(|s| s.inputs.as_slice()).collect();
    let labels: Vec<&[u32]> = data.iter().map(|s| s.labels.as_slice()).collect();
    // Poison the gradients' starting values: they must be added to, not overwritten.
    gpu_grads.as_mut_slices().into_iter().for_each(|g| g.fill(0.25));
    let out = gpu.forward_backward_batch(&inputs, &labels, 0.37, &mut gpu_grads).unwrap();
    (out.loss_sum, gpu_grads.as_slices().concat().iter().map(|g| g - 0.25).collect())
}

const CASES: [(Architecture, MixerKind, &[usize]); 6] = [
    (Architecture::Llama, MixerKind::Gla, &[]),
    (Architecture::Llama, MixerKind::Retention, &[]),
    (Architecture::Llama, MixerKind::Gla, &[1]),
    (Architecture::Qwen3, MixerKind::Mamba2, &[]),
    (Architecture::Qwen2, MixerKind::Hgrn2, &[0]),
    (Architecture::Llama, MixerKind::Gsa, &[]),
];

#[test]
fn f32_loss_and_lora_gradients_match_the_cpu_engine() {
    let mut rng = rng("f32_loss_and_lora_gradients_match_the_cpu_engine");
    let mut failures = Vec::new();
    for (arch, mixer, softmax) in CASES {
        let cpu = model(arch, mixer, softmax.to_vec(), &mut rng);
        let data = batch(cpu.config().vocab_size, 37, &mut rng);
        let (loss_err, grad_err) = compare_forward_backward::<f32>(gpu(), cpu, &data);
        println!("f32 {arch:?} {mixer:?} softmax layers {softmax:?}: loss rel error {loss_err:.2e}, LoRA grad max rel error {grad_err:.2e}");
        if !(loss_err < 1e-4 && grad_err < 1e-4) {
            failures.push(format!("{arch:?} {mixer:?}: loss {loss_err:.2e}, grads {grad_err:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn bf16_loss_and_lora_gradients_are_close_to_the_cpu_engine() {
    let mut rng = rng("bf16_loss_and_lora_gradients_are_close_to_the_cpu_engine");
    for (arch, mixer, softmax) in CASES.into_iter().take(3) {
        let cpu = model(arch, mixer, softmax.to_vec(), &mut rng);
        let data = batch(cpu.config().vocab_size, 37, &mut rng);
        let (loss_err, grad_err) = compare_forward_backward::<bf16>(gpu(), cpu, &data);
        println!("bf16 {arch:?} {mixer:?} softmax layers {softmax:?}: loss rel error {loss_err:.2e}, LoRA grad max rel error {grad_err:.2e}");
        // A whole model in bf16 (inputs of every frozen product, the attention and the LM head in
        // bf16) against the f32 CPU engine: the per-op bf16 errors (each below 2e-2 in its own
        // test) compound over the layers. Measured over 40 runs with fresh inputs: LoRA gradient
        // errors 1.0e-2 to 2.0e-2, loss errors far smaller.
        assert!(loss_err < 2e-2 && grad_err < 3e-2, "{arch:?} {mixer:?}: loss {loss_err:.2e}, grads {grad_err:.2e}");
    }
}

#[test]
fn training_on_the_gpu_follows_the_cpu_loss_curve() {
    let mut rng = rng("training_on_the_gpu_follows_the_cpu_loss_curve");
    let seed: u64 = rng.random();
    let make = |rng: &mut StdRng| model(Architecture::Llama, MixerKind::Gla, vec![1], rng);
    let (mut cpu, gpu_host) = (make(&mut StdRng::clone(&rng)), make(&mut rng));
    let vocab = cpu.config().vocab_size;
    let data: Vec<Sequence> = (0..16)
        .map(|i| {
            // A learnable pattern: the next token is a fixed function of the current one.
            let inputs = random_tokens(24, vocab, seed + i);
            let labels = inputs.iter().map(|&t| (t * 7 + 3) % vocab as u32).collect();
            Sequence { inputs, labels }
        })
        .collect();
    let config =
        TrainConfig { steps: Some(200), seq_len: 24, micro_batch: 4, grad_accum: 2, seed, ..Default::default() };
    let sizes: Vec<usize> = cpu.lora_params().iter().map(|p| p.1.len()).collect();
    let mut gpu = GpuLigerModel::<f32>::new(gpu(), gpu_host).unwrap();
    let (mut cpu_trainer, mut gpu_trainer) =
        (Trainer::new(config.clone(), data.len(), &sizes).unwrap(), Trainer::new(config, data.len(), &sizes).unwrap());
    let (mut cpu_grads, mut gpu_grads) = (cpu.new_grads(), gpu.new_grads());
    let mut worst: f64 = 0.0;
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..200 {
        let a = cpu_trainer.step(&mut cpu, &mut cpu_grads, &data).unwrap().loss;
        let b = gpu_trainer.step(&mut gpu, &mut gpu_grads, &data).unwrap().loss;
        worst = worst.max(((a - b) / a).abs());
        if step == 0 {
            first = a;
        }
        last = a;
    }
    println!("200 steps: CPU loss {first:.4} -> {last:.4}; worst per-step relative difference GPU vs CPU {worst:.2e}");
    assert!(last < first * 0.9, "the loss did not go down: {first} -> {last}");
    assert!(worst < 1e-3, "the GPU loss curve left the CPU's: {worst:.2e}");
}

/// Logits row `i` of `all` (`T x vocab`).
fn row(all: &[f32], i: usize, vocab: usize) -> Vec<f64> {
    all[i * vocab..(i + 1) * vocab].iter().map(|&v| v as f64).collect()
}

/// `(1 - w) · CE + w · KL(teacher || student)` summed over the counted positions of `data`,
/// in f64 from the CPU engines' logits.
fn distillation_reference(student: &LigerModel, teacher: &BaseModel, data: &[Sequence], weight: f64) -> f64 {
    let vocab = student.config().vocab_size;
    let log_softmax = |z: &[f32]| -> Vec<f64> {
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        z.iter().map(|&v| v as f64 - lse).collect()
    };
    let mut total = 0.0;
    for s in data {
        let (zs, zt) = (student.all_logits(&s.inputs).unwrap(), teacher.all_logits(&s.inputs).unwrap());
        for (t, &label) in s.labels.iter().enumerate().filter(|(_, &l)| l != IGNORE) {
            let (ls, lt) = (log_softmax(&zs[t * vocab..(t + 1) * vocab]), log_softmax(&zt[t * vocab..(t + 1) * vocab]));
            let kl: f64 = lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum();
            total += (1.0 - weight) * -ls[label as usize] + weight * kl;
        }
    }
    total
}

#[test]
fn distillation_from_the_base_model_matches_the_cpu_reference() {
    let mut rng = rng("distillation_from_the_base_model_matches_the_cpu_reference");
    let seed: u64 = rng.random();
    let cfg = tiny_gpu_config(Architecture::Llama);
    let base = || {
        let w = random_weights(&cfg, seed);
        BaseModel::new(cfg.clone(), w, word_tokenizer(), None, "tiny".into(), ModelFormat::Checkpoint)
    };
    let mut options = LigerOptions::default();
    options.attention.window_keys = 5;
    let lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut cpu = linearize(base(), options, lora).unwrap();
    for layer in &mut cpu.lora.layers {
        for t in LoraTarget::ALL {
            if let Some(a) = layer.get_mut(t) {
                a.b.iter_mut().for_each(|b| *b = rng.random_range(-0.2..0.2));
            }
        }
    }
    let data = batch(cfg.vocab_size, 37, &mut rng);
    let weights = [0.5f32, 1.0];
    let want: Vec<f64> = weights.iter().map(|&w| distillation_reference(&cpu, &base(), &data, w as f64)).collect();
    let mut model = GpuLigerModel::<f32>::new(gpu(), cpu).unwrap();
    let (plain_loss, plain_grads) = run_gpu(&model, &data);
    // Weight 0 is cross-entropy alone.
    model.distill_from(base(), 0.0).unwrap();
    let (loss, grads) = run_gpu(&model, &data);
    let grad_err = max_rel_error(&grads, &plain_grads.iter().map(|&g| g as f64).collect::<Vec<_>>());
    assert!(
        ((loss - plain_loss) / plain_loss).abs() < 1e-9 && grad_err < 1e-6,
        "{loss} vs {plain_loss}, {grad_err:.2e}"
    );
    for (weight, want) in weights.into_iter().zip(want) {
        model.distill_from(base(), weight).unwrap();
        let (loss, grads) = run_gpu(&model, &data);
        let err = (loss - want).abs() / want.abs();
        println!("distillation weight {weight}: loss {loss} vs CPU reference {want} (relative error {err:.2e})");
        assert!(err < 1e-4, "weight {weight}: loss {loss} vs {want}");
        assert!(grads.iter().all(|g| g.is_finite()) && grads != plain_grads);
        // Validation stays plain cross-entropy.
        let inputs: Vec<&[u32]> = data.iter().map(|s| s.inputs.as_slice()).collect();
        let labels: Vec<&[u32]> = data.iter().map(|s| s.labels.as_slice()).collect();
        let validated = model.loss_batch(&inputs, &labels).unwrap().loss_sum;
        assert!(((validated - plain_loss) / plain_loss).abs() < 1e-6, "{validated} vs {plain_loss}");
    }
    // A model that computes what its teacher does (every layer softmax, adapters that add
    // nothing) has nothing to learn from it: KL and its gradient are zero.
    let same = linearize(
        base(),
        LigerOptions { softmax_layers: (0..cfg.num_layers).collect(), ..Default::default() },
        LoraOptions::default(),
    )
    .unwrap();
    let mut same = GpuLigerModel::<f32>::new(gpu(), same).unwrap();
    same.distill_from(base(), 1.0).unwrap();
    let (kl, grads) = run_gpu(&same, &data);
    assert!(kl.abs() < 1e-4, "KL of the base model with itself: {kl}");
    assert!(
        grads.iter().all(|g| g.abs() < 1e-5),
        "gradients of a zero KL: {:?}",
        grads.iter().fold(0.0f32, |m, g| m.max(g.abs()))
    );
    // Bad weights and a teacher of another shape are refused.
    assert_eq!(model.distill_from(base(), 1.5).unwrap_err().code, ErrorCode::InvalidArgument);
    let other = ModelConfig { num_layers: cfg.num_layers + 1, ..cfg.clone() };
    let w = random_weights(&other, 1);
    let other_base = BaseModel::new(other, w, word_tokenizer(), None, "other".into(), ModelFormat::Checkpoint);
    assert_eq!(model.distill_from(other_base, 0.5).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn attention_transfer_matches_the_cpu_engine() {
    let mut rng = rng("attention_transfer_matches_the_cpu_engine");
    let mut failures = Vec::new();
    for (arch, mixer, softmax) in CASES {
        let seed = rng.random();
        let cpu = model_of(tiny_base(arch, seed), mixer, softmax.to_vec(), &mut rng);
        let data = batch(cpu.config().vocab_size, 37, &mut rng);
        let mut cpu_grads = cpu.new_lora_grads();
        let mut want = 0.0;
        for s in &data {
            want += cpu.attention_transfer_backward(&s.inputs, &s.labels, 0.37, &mut cpu_grads).unwrap().loss_sum;
        }
        let mut gpu_model = GpuLigerModel::<f32>::new(gpu(), cpu).unwrap();
        let inputs: Vec<&[u32]> = data.iter().map(|s| s.inputs.as_slice()).collect();
        let labels: Vec<&[u32]> = data.iter().map(|s| s.labels.as_slice()).collect();
        let mut grads = gpu_model.new_grads();
        let refused = gpu_model.attention_transfer_batch(&inputs, &labels, 0.37, &mut grads).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidArgument, "no teacher yet: {}", refused.message);
        gpu_model.set_attention_teacher(Some(tiny_base(arch, seed))).unwrap();
        // Added to what the gradients hold.
        grads.as_mut_slices().into_iter().for_each(|g| g.fill(0.25));
        let out = gpu_model.attention_transfer_batch(&inputs, &labels, 0.37, &mut grads).unwrap();
        let got: Vec<f32> = grads.as_slices().concat().iter().map(|g| g - 0.25).collect();
        let expected: Vec<f64> = cpu_grads.as_slices().concat().iter().map(|&g| g as f64).collect();
        let (loss_err, grad_err) = ((out.loss_sum - want).abs() / want, max_rel_error(&got, &expected));
        println!("attention transfer f32 {arch:?} {mixer:?} softmax layers {softmax:?}: loss {:.4e}, rel error {loss_err:.2e}, LoRA grad max rel error {grad_err:.2e}", out.loss_sum);
        if !(loss_err < 1e-4 && grad_err < 1e-4) {
            failures.push(format!("{arch:?} {mixer:?}: loss {loss_err:.2e}, grads {grad_err:.2e}"));
        }
        // Ending the stage frees the teacher; the model trains on its own loss again.
        gpu_model.set_attention_teacher(None).unwrap();
        assert!(gpu_model.attention_transfer_batch(&inputs, &labels, 0.37, &mut grads).is_err());
        gpu_model.forward_backward_batch(&inputs, &labels, 0.37, &mut grads).unwrap();
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn prefill_then_decoding_steps_equal_the_full_forward() {
    let mut rng = rng("prefill_then_decoding_steps_equal_the_full_forward");
    let mut failures = Vec::new();
    for (arch, mixer, softmax) in CASES {
        let cpu = model(arch, mixer, softmax.to_vec(), &mut rng);
        let vocab = cpu.config().vocab_size;
        let (prompt_len, steps) = (11, 9);
        let seqs: Vec<Vec<u32>> = (0..2).map(|_| random_tokens(prompt_len + steps, vocab, rng.random())).collect();
        let full: Vec<Vec<f32>> = seqs.iter().map(|s| cpu.all_logits(s).unwrap()).collect();
        let gpu = GpuLigerModel::<f32>::new(gpu(), cpu).unwrap();
        // One sequence through CausalLm, both together as a batch.
        let mut single = gpu.new_state();
        let mut pair = gpu.new_batch_state(2);
        let mut worst: f64 = 0.0;
        for i in prompt_len..=prompt_len + steps - 1 {
            let (from, to) = if i == prompt_len { (0, prompt_len) } else { (i - 1, i) };
            let a = gpu.forward_last(&mut single, &seqs[0][from..to]).unwrap();
            let b = gpu.forward_last_batch(&mut pair, &[&seqs[0][from..to], &seqs[1][from..to]]).unwrap();
            for (got, expected) in [
                (&a[..], row(&full[0], to - 1, vocab)),
                (&b[..vocab], row(&full[0], to - 1, vocab)),
                (&b[vocab..], row(&full[1], to - 1, vocab)),
            ] {
                assert!(got.iter().all(|v| v.is_finite()));
                worst = worst.max(max_rel_error(got, &expected));
            }
        }
        println!("decode {arch:?} {mixer:?} softmax layers {softmax:?}: prefill {prompt_len} + {} steps vs full forward, max rel error {worst:.2e}", steps - 1);
        if worst >= 1e-4 {
            failures.push(format!("{arch:?} {mixer:?}: {worst:.2e}"));
        }
        assert_eq!(single.len(), prompt_len + steps - 1);
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Greedy generation through the generic loop (`liger_core::generate`), as the API runs it on a
/// GPU copy: in f32 the GPU picks the CPU engine's tokens, all 24 of them (the same arithmetic
/// up to summation order; a random tiny model has no near-ties at these margins). In bf16 the
/// logits differ by ~1e-2 relative, enough to flip a near-tie of a random model, so only the
/// first token is compared there and the run must still give 24 tokens.
#[test]
fn greedy_generation_on_the_gpu_picks_the_cpu_engines_tokens() {
    use liger_core::generate::{generate, GenerateOptions};
    use std::sync::atomic::AtomicBool;
    let seed: u64 = rand::random();
    println!("greedy_generation_on_the_gpu: seed {seed}");
    let build = || model(Architecture::Llama, MixerKind::Gla, vec![], &mut StdRng::seed_from_u64(seed));
    let prompt = random_tokens(11, build().config().vocab_size, seed);
    let options = GenerateOptions { max_tokens: 24, ignore_eos: true, ..Default::default() };
    let cancel = AtomicBool::new(false);
    let cpu = generate(&build(), &prompt, &options, &cancel, &mut |_, _| {}).unwrap();
    let f32_gpu = GpuLigerModel::<f32>::new(gpu(), build()).unwrap();
    let on_f32 = generate(&f32_gpu, &prompt, &options, &cancel, &mut |_, _| {}).unwrap();
    println!("cpu {:?}\nf32 {:?}", cpu.tokens, on_f32.tokens);
    assert_eq!(on_f32.tokens, cpu.tokens);
    let bf16_gpu = GpuLigerModel::<bf16>::new(gpu(), build()).unwrap();
    let on_bf16 = generate(&bf16_gpu, &prompt, &options, &cancel, &mut |_, _| {}).unwrap();
    let agree = on_bf16.tokens.iter().zip(&cpu.tokens).take_while(|(a, b)| a == b).count();
    println!("bf16 {:?}: agrees with the CPU on the first {agree} tokens", on_bf16.tokens);
    assert_eq!(on_bf16.tokens.len(), 24);
    assert!(agree >= 1, "bf16 GPU and CPU disagree on the first greedy token");
}

/// The GPU model as a host-sampling engine: only `forward_last`, so the generation loop copies
/// the vocabulary's logits back every step and samples them on the CPU (the trait's default).
struct SampledOnHost<'a>(&'a GpuLigerModel<f32>);

impl CausalLm for SampledOnHost<'_> {
    type State = liger_cuda::GpuLigerState<f32>;
    fn new_state(&self) -> Self::State {
        self.0.new_state()
    }
    fn forward_last(&self, state: &mut Self::State, tokens: &[u32]) -> liger_core::Result<Vec<f32>> {
        self.0.forward_last(state, tokens)
    }
    fn tokenizer(&self) -> &liger_core::tokenizer::Tokenizer {
        self.0.tokenizer()
    }
    fn eos_ids(&self) -> Vec<u32> {
        self.0.eos_ids()
    }
    fn max_tokens(&self) -> Option<usize> {
        self.0.max_tokens()
    }
}

/// Sampling on the GPU (`forward_sample`: only the token id comes back) picks exactly what the
/// CPU sampler picks from the same logits and the same seed, for greedy decoding and for
/// temperature, top-k and top-p together, through the whole generation loop; and a batch of
/// three sequences with given draws picks `sample_with_draw`'s tokens row by row.
#[test]
fn sampling_on_the_gpu_picks_the_host_samplers_tokens() {
    use liger_core::generate::{generate, GenerateOptions};
    use liger_core::sampling::{argmax, sample_with_draw, SamplingOptions};
    use std::sync::atomic::AtomicBool;
    let seed: u64 = rand::random();
    println!("sampling_on_the_gpu: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let gpu_model =
        GpuLigerModel::<f32>::new(gpu(), model(Architecture::Llama, MixerKind::Gla, vec![], &mut rng)).unwrap();
    let vocab = gpu_model.config().vocab_size;
    let prompt = random_tokens(9, vocab, seed);
    let cancel = AtomicBool::new(false);
    let greedy = SamplingOptions { temperature: 0.0, ..Default::default() };
    let sampled = SamplingOptions { temperature: 0.9, top_k: 40, top_p: 0.9, seed: seed ^ 7 };
    for sampling in [greedy.clone(), sampled.clone()] {
        let options =
            GenerateOptions { max_tokens: 32, ignore_eos: true, sampling: sampling.clone(), ..Default::default() };
        let on_device = generate(&gpu_model, &prompt, &options, &cancel, &mut |_, _| {}).unwrap();
        let on_host = generate(&SampledOnHost(&gpu_model), &prompt, &options, &cancel, &mut |_, _| {}).unwrap();
        println!("temperature {}: device {:?}\nhost {:?}", sampling.temperature, on_device.tokens, on_host.tokens);
        assert_eq!(on_device.tokens.len(), 32);
        assert_eq!(on_device.tokens, on_host.tokens);
    }

    // A batch: the same prompts into two states, one read back as logits, one sampled there.
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| random_tokens(7, vocab, seed + i)).collect();
    let rows: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let draws = [0.05f32, 0.5, 0.97];
    let (mut for_logits, mut for_tokens) = (gpu_model.new_batch_state(3), gpu_model.new_batch_state(3));
    let mut candidates = Vec::new();
    for step in 0..4 {
        let logits = gpu_model.forward_last_batch(&mut for_logits, &rows).unwrap();
        let options = if step % 2 == 0 { &sampled } else { &greedy };
        let picked = gpu_model.forward_sample_batch(&mut for_tokens, &rows, options, &draws).unwrap();
        let expected: Vec<u32> = logits
            .chunks_exact(vocab)
            .zip(draws)
            .map(|(row, u)| {
                if options.temperature == 0.0 {
                    argmax(row)
                } else {
                    sample_with_draw(options, row, u, &mut candidates)
                }
            })
            .collect();
        assert_eq!(picked, expected, "step {step}");
    }
    let err = gpu_model.forward_sample_batch(&mut for_tokens, &rows, &sampled, &draws[..2]).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

#[test]
fn unsupported_models_and_bad_batches_are_typed_errors() {
    let mut rng = rng("unsupported_models_and_bad_batches_are_typed_errors");
    let cfg = tiny_config(Architecture::Llama); // head size 8
    let base = BaseModel::new(
        cfg.clone(),
        random_weights(&cfg, 1),
        word_tokenizer(),
        None,
        "tiny".into(),
        ModelFormat::Checkpoint,
    );
    let small_heads = linearize(base, LigerOptions::default(), LoraOptions::default()).unwrap();
    let err = GpuLigerModel::<f32>::new(gpu(), small_heads).err().expect("head size 8 is not supported");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("head size"), "{}", err.message);
    // A mixer without GPU kernels is refused before its weights go up.
    let gdn = model(Architecture::Llama, MixerKind::Gdn, vec![], &mut rng);
    let err = GpuLigerModel::<f32>::new(gpu(), gdn).err().expect("gdn has no GPU kernels yet");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("gdn"), "{}", err.message);

    let gpu_model =
        GpuLigerModel::<f32>::new(gpu(), model(Architecture::Llama, MixerKind::Gla, vec![1], &mut rng)).unwrap();
    let mut grads = gpu_model.new_grads();
    let (a, b) = (vec![1u32; 8], vec![2u32; 9]);
    let err = gpu_model.forward_backward_batch(&[&a, &b], &[&a, &b], 1.0, &mut grads).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("pack the data"), "{}", err.message);
    let bad_label = vec![10_000u32; 8];
    assert_eq!(
        gpu_model.forward_backward_batch(&[&a], &[&bad_label], 1.0, &mut grads).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let long = vec![1u32; 300]; // the hybrid's context is 256
    assert_eq!(gpu_model.loss(&long, &long).unwrap_err().code, ErrorCode::ContextOverflow);
    let mut state = gpu_model.new_batch_state(2);
    assert_eq!(gpu_model.forward_last_batch(&mut state, &[&a]).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn out_of_memory_and_missing_gpus_are_typed_errors() {
    let ctx = gpu();
    // 300k x 300k bf16 embedding: 180 GB, more than any single GPU holds.
    let huge = ModelConfig { vocab_size: 300_000, hidden_size: 300_000, ..tiny_gpu_config(Architecture::Llama) };
    let err = GpuWeights::<bf16>::random(&ctx, &huge, 1).err().expect("the allocation cannot fit");
    assert_eq!(err.code, ErrorCode::OutOfMemory);
    assert!(err.message.contains("lower the batch size") && err.message.contains("CPU backend"), "{}", err.message);
    let err = GpuBuffer::<f32>::zeros(&ctx, 1 << 40).err().expect("4 TB cannot be allocated");
    assert_eq!(err.code, ErrorCode::OutOfMemory);
    let count = GpuContext::device_count().unwrap();
    let err = GpuContext::new(count + 3).err().expect("no such GPU");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("CPU backend"), "{}", err.message);
}

/// Running out of GPU memory in the middle of work (scoring, training, decoding) is a typed
/// error with advice, and the process stays usable: the model then scores as before and a
/// second model loads. All but a few MB of the GPU is taken first, so that the work itself
/// hits the limit.
#[test]
fn running_out_of_gpu_memory_mid_work_is_a_typed_error_and_the_process_stays_usable() {
    let mut rng = rng("running_out_of_gpu_memory_mid_work");
    let cpu = model(Architecture::Llama, MixerKind::Gla, vec![], &mut rng);
    let vocab = cpu.config().vocab_size;
    let gpu_model = GpuLigerModel::<f32>::new(gpu(), cpu).unwrap();
    let seqs: Vec<Vec<u32>> = (0..16).map(|_| random_tokens(4096, vocab, rng.random())).collect();
    let all: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let before = gpu_model.all_logits_batch(&all[..1]).unwrap();

    // Take the GPU's memory in pieces, largest first, until not even 4 MB is left (one buffer
    // of all the free memory can fail: the driver keeps some of it back).
    let hog_ctx = gpu();
    let mut hog = Vec::new();
    let mut piece = 1usize << 30;
    while piece >= 4 << 20 {
        match GpuBuffer::<f32>::zeros(&hog_ctx, piece / 4) {
            Ok(buffer) => hog.push(buffer),
            Err(err) => {
                assert_eq!(err.code, ErrorCode::OutOfMemory, "filling the GPU: {}", err.message);
                piece /= 2;
            }
        }
    }
    let is_oom = |what: &str, err: liger_core::Error| {
        assert_eq!(err.code, ErrorCode::OutOfMemory, "{what}: {}", err.message);
        assert!(
            err.message.contains("batch") || err.message.contains("shorter"),
            "{what}: no advice in {}",
            err.message
        );
    };
    is_oom("scoring", gpu_model.all_logits_batch(&all).unwrap_err());
    let mut grads = gpu_model.new_grads();
    is_oom("training", gpu_model.forward_backward_batch(&all, &all, 1.0, &mut grads).unwrap_err());
    let mut state = gpu_model.new_batch_state(all.len());
    is_oom("decoding", gpu_model.forward_last_batch(&mut state, &all).unwrap_err());
    drop(hog);

    let after = gpu_model.all_logits_batch(&all[..1]).unwrap();
    assert_eq!(after, before, "the model scores as before once memory is back");
    let driver_free = |ctx: &GpuContext| ctx.stream().context().mem_get_info().map(|m| m.0 >> 20).unwrap_or(0);
    println!(
        "after the work: {} MiB free for the driver, {} MiB available with the pool",
        driver_free(gpu_model.context()),
        liger_cuda::model::memory::available_memory(gpu_model.context()).unwrap() >> 20
    );
    let second =
        GpuLigerModel::<f32>::new(gpu(), model(Architecture::Llama, MixerKind::Gla, vec![], &mut rng)).unwrap();
    assert!(second.all_logits_batch(&all[..1]).unwrap()[0].iter().all(|x| x.is_finite()));
}

/// The linearize job on a tiny checkpoint: on the CPU engine, on the GPU in f32 (the same
/// loss per step) and through `run_linearize_on_gpu` (bf16, close).
#[test]
fn the_linearize_job_trains_on_the_gpu_like_on_the_cpu() {
    use liger_core::hf::SaveDtype;
    use liger_core::train::job::{run_linearize, run_linearize_on, LinearizeJob};
    use std::sync::atomic::AtomicBool;
    let mut rng = rng("the_linearize_job_trains_on_the_gpu_like_on_the_cpu");
    let tmp = std::env::temp_dir().join(format!("liger-gpu-job-{}", rng.random::<u64>()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = tiny_gpu_config(Architecture::Llama);
    let base = BaseModel::new(
        cfg.clone(),
        random_weights(&cfg, rng.random()),
        word_tokenizer(),
        None,
        "tiny".into(),
        ModelFormat::Checkpoint,
    );
    base.save_checkpoint(&tmp.join("base"), SaveDtype::F32).unwrap();
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"instruction": "w{} w5", "input": "", "output": "w7 w8 w{}"}}"#, 3 + i % 5, 10 + i))
        .collect();
    std::fs::write(tmp.join("data.jsonl"), lines.join("\n")).unwrap();
    let job_to = |out: &str| {
        let mut job = LinearizeJob::new(tmp.join("base"), Some(tmp.join("data.jsonl")), tmp.join(out));
        job.options = LigerOptions { softmax_layers: vec![1], ..Default::default() };
        job.train = TrainConfig {
            steps: Some(12),
            seq_len: 8,
            micro_batch: 2,
            grad_accum: 2,
            eval_every: 4,
            // An attention-transfer stage first, with the base loaded as its teacher on the GPU.
            attention_transfer_steps: 3,
            ..Default::default()
        };
        job.val_fraction = 0.2;
        job.sample_prompt = Some("w4 w5".into());
        job.sample_max_tokens = 4;
        job
    };
    let cancel = AtomicBool::new(false);
    let cpu = run_linearize(&job_to("cpu"), &cancel, &mut |_| {}).unwrap();
    let gpu_f32 =
        run_linearize_on(&job_to("gpu"), &cancel, &mut |_| {}, &mut |m| GpuLigerModel::<f32>::new(gpu(), m)).unwrap();
    let gpu_bf16 = liger_cuda::run_linearize_on_gpu(&job_to("gpu-bf16"), 0, &cancel, &mut |_| {}).unwrap();
    let worst = |other: &[f64], tol: f64, what: &str| {
        assert_eq!(other.len(), cpu.losses.len(), "{what}: steps");
        let w = cpu.losses.iter().zip(other).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
        println!(
            "linearize job, {what} vs CPU: {} steps, worst per-step loss relative difference {w:.2e}",
            other.len()
        );
        assert!(w < tol, "{what}: {w:.2e}");
    };
    let transfer = |r: &liger_core::train::job::LinearizeReport| r.attention_transfer.clone().unwrap().losses;
    let (cpu_at, gpu_at) = (transfer(&cpu), transfer(&gpu_f32));
    assert_eq!((cpu_at.len(), transfer(&gpu_bf16).len()), (3, 3));
    let w = cpu_at.iter().zip(&gpu_at).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
    println!("attention transfer stage, GPU f32 vs CPU: losses {gpu_at:?} vs {cpu_at:?}, worst {w:.2e}");
    assert!(w < 1e-4, "attention transfer stage: {w:.2e}");
    worst(&gpu_f32.losses, 1e-4, "GPU f32");
    worst(&gpu_bf16.losses, 2e-2, "GPU bf16");
    let (a, b) = (cpu.trained_eval.unwrap().loss, gpu_f32.trained_eval.unwrap().loss);
    assert!(((a - b) / a).abs() < 1e-4, "trained validation loss CPU {a} vs GPU {b}");
    assert_eq!(cpu.sample, gpu_f32.sample, "greedy samples differ");
    // Each run folder holds its final model in model/ (liger_core::checkpoint::run::FINAL_MODEL).
    let final_model = |run: &str| tmp.join(run).join(liger_core::checkpoint::run::FINAL_MODEL).join("config.json");
    assert!(final_model("gpu").is_file() && final_model("gpu-bf16").is_file());
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A surprise cache: the GPU's logits against the CPU engine's (f32), on sequences longer than
/// window + sinks + slots so that the cache fills and evicts; the loss and LoRA gradients
/// (the cache's choice held fixed on both) against the CPU engine's. Its decoding is tested in
/// gpu_decode.rs.
#[test]
fn a_surprise_cache_scores_and_trains_like_the_cpu_engine() {
    let mut rng = rng("a_surprise_cache_scores_and_trains_like_the_cpu_engine");
    let mut failures = Vec::new();
    for (mixer, sinks, slots, grm_norm) in
        [(MixerKind::Gla, 2, 3, false), (MixerKind::Retention, 0, 8, true), (MixerKind::Linear, 1, 1, false)]
    {
        // The same model twice: one to score on the GPU, one to train beside the CPU.
        let seed: u64 = rng.random();
        let make = || {
            let mut m = model(Architecture::Llama, mixer, vec![], &mut StdRng::seed_from_u64(seed));
            let attention = &mut m.options.attention;
            (attention.sink_keys, attention.surprise_keys, attention.grm_norm) = (sinks, slots, grm_norm);
            m
        };
        let cpu = make();
        let vocab = cpu.config().vocab_size;
        let seqs: Vec<Vec<u32>> = (0..2).map(|_| random_tokens(70, vocab, rng.random())).collect();
        let want: Vec<Vec<f32>> = seqs.iter().map(|s| cpu.all_logits(s).unwrap()).collect();
        let gpu_model = GpuLigerModel::<f32>::new(gpu(), make()).unwrap();
        let got = gpu_model.all_logits_batch(&[&seqs[0], &seqs[1]]).unwrap();
        let worst = (0..2)
            .map(|b| max_rel_error(&got[b], &want[b].iter().map(|&v| v as f64).collect::<Vec<_>>()))
            .fold(0.0, f64::max);
        drop(gpu_model);
        let data = batch(vocab, 70, &mut rng);
        let (loss_err, grad_err) = compare_forward_backward::<f32>(gpu(), cpu, &data);
        println!("surprise cache {mixer:?} sinks {sinks} slots {slots} norm {grm_norm}: logits max rel error {worst:.2e}, loss {loss_err:.2e}, LoRA grads {grad_err:.2e}");
        if !(worst < 1e-4 && loss_err < 1e-4 && grad_err < 1e-4) {
            failures.push(format!("{mixer:?}: logits {worst:.2e}, loss {loss_err:.2e}, grads {grad_err:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
