//! Checkpoints: exact reload, merged adapters, PEFT files, refused directories, and resuming
//! a training run from disk bit for bit.

use super::*;
use crate::convert::{linearize, LigerOptions, LoraOptions};
use crate::testing::random_tokens;
use crate::testing::TempDir;
use crate::train::data::Sequence;
use crate::train::fixtures::{byte_config, tiny_byte_model};
use crate::train::trainer::{TrainConfig, TrainEvent, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};

/// A tiny Liger model with adapters on every projection, their B matrices random (non-zero),
/// and learned branch weights per head (random too).
fn model_with_adapters(seed: u64) -> LigerModel {
    let lora = LoraOptions { rank: 2, alpha: 4.0, targets: LoraTarget::ALL.to_vec(), seed };
    let c = byte_config();
    let options = LigerOptions { softmax_layers: vec![1], ..LigerOptions::default() }
        .with_learned_head_mix(c.num_layers, c.num_heads);
    let mut model = linearize(tiny_byte_model(seed), options, lora).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for p in model.trained_params_mut() {
        p.iter_mut().for_each(|x| *x = rng.random_range(-0.3..0.3));
    }
    model
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_checkpoint_reloads_with_bit_identical_logits() {
    let seed: u64 = rand::random();
    let tmp = TempDir::new("ckpt");
    let dir = tmp.0.join("model");
    let model = model_with_adapters(seed);
    save_liger_checkpoint(&dir, &model, &SaveOptions::default(), None).unwrap();
    // Saving again replaces the directory and leaves no temporary siblings behind.
    save_liger_checkpoint(&dir, &model, &SaveOptions::default(), None).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("model")]);

    let loaded = load_liger_checkpoint(&dir).unwrap();
    assert_eq!(loaded.options, model.options);
    let tokens = random_tokens(40, byte_config().vocab_size, seed);
    let (a, b) = (model.all_logits(&tokens).unwrap(), loaded.all_logits(&tokens).unwrap());
    assert_eq!(bits(&a), bits(&b), "seed {seed}: reloaded logits differ");

    // A surprise cache given at save time (a model trained without it) is what reloads.
    let cache = SurpriseCache { keys: 8, repeat_tolerance: 0.05 };
    let with_cache = tmp.0.join("with-cache");
    save_liger_checkpoint(
        &with_cache,
        &model,
        &SaveOptions { surprise_cache: Some(cache), ..Default::default() },
        None,
    )
    .unwrap();
    assert_eq!(load_liger_checkpoint(&with_cache).unwrap().options.attention.surprise_cache(), cache);

    let section = read_liger_section(&dir).unwrap().unwrap();
    assert_eq!(
        (section.version, section.merged, section.lora.rank, section.lora.alpha),
        (LIGER_FORMAT_VERSION, false, 2, 4.0)
    );
    let adapter: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(adapter["r"], 2);
    assert_eq!(adapter["target_modules"], json!(["q_proj", "k_proj", "v_proj", "o_proj"]));
    let file = SafetensorsFile::open(&dir.join(ADAPTER_WEIGHTS)).unwrap();
    let name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    assert_eq!(file.shape(name), Some(&[16usize, 2][..]));
    assert!(dir.join("tokenizer.json").is_file());
}

#[test]
fn a_merged_checkpoint_folds_the_adapters_into_the_weights() {
    let seed: u64 = rand::random();
    let tmp = TempDir::new("merged");
    let model = model_with_adapters(seed);
    save_liger_checkpoint(&tmp.0, &model, &SaveOptions { merged: true, ..SaveOptions::default() }, None).unwrap();
    assert!(!tmp.0.join(ADAPTER_WEIGHTS).exists() && !tmp.0.join(ADAPTER_CONFIG).exists());
    let loaded = load_liger_checkpoint(&tmp.0).unwrap();
    assert!(loaded.lora_params().is_empty());
    let tokens = random_tokens(32, byte_config().vocab_size, seed);
    let want: Vec<f64> = model.all_logits(&tokens).unwrap().iter().map(|&x| x as f64).collect();
    let err = crate::testing::max_rel_error(&loaded.all_logits(&tokens).unwrap(), &want);
    println!("merged vs adapters: max rel error {err:.2e}");
    assert!(err < 1e-4, "seed {seed}: {err}");

    let sizes: Vec<usize> = model.lora_params().iter().map(|p| p.1.len()).collect();
    let t = Trainer::new(TrainConfig { steps: Some(1), ..TrainConfig::default() }, 1, &sizes).unwrap();
    let snapshot = TrainingSnapshot { state: &t.state, optimizer: &t.optimizer };
    let err =
        save_liger_checkpoint(&tmp.0, &model, &SaveOptions { merged: true, ..SaveOptions::default() }, Some(snapshot))
            .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

/// The error of loading `dir` (a test failure if it loads).
fn load_error(dir: &std::path::Path) -> Error {
    match load_liger_checkpoint(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn plain_newer_and_damaged_directories_are_refused_with_advice() {
    let tmp = TempDir::new("refused");
    let model = model_with_adapters(3);
    save_liger_checkpoint(&tmp.0, &model, &SaveOptions::default(), None).unwrap();
    let config_path = tmp.0.join("config.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let write_config = |v: &Value| std::fs::write(&config_path, v.to_string()).unwrap();

    let mut newer = original.clone();
    newer["liger"]["version"] = json!(LIGER_FORMAT_VERSION + 1);
    write_config(&newer);
    let err = load_error(&tmp.0);
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(err.message.contains("newer liger") && err.message.contains("upgrade"), "{}", err.message);

    let mut plain = original.clone();
    plain.as_object_mut().unwrap().remove("liger");
    write_config(&plain);
    let err = load_error(&tmp.0);
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(
        err.message.contains("plain Hugging Face checkpoint") && err.message.contains("base model"),
        "{}",
        err.message
    );

    let mut bad_options = original.clone();
    bad_options["liger"]["options"]["softmaxLayers"] = json!("all");
    write_config(&bad_options);
    assert_eq!(load_error(&tmp.0).code, ErrorCode::InvalidFile);

    // Damaged learned branch weights: too few heads, weights on a softmax layer, a string.
    type Edit = fn(&mut Value);
    let mix_edits: [(&str, Edit); 3] = [
        ("3 alpha", |v| v["liger"]["options"]["headMix"][0]["alpha"] = json!([0.5, 0.5, 0.5])),
        ("keeps softmax attention", |v| {
            v["liger"]["options"]["headMix"][1] = v["liger"]["options"]["headMix"][0].clone()
        }),
        ("", |v| v["liger"]["options"]["headMix"][0]["beta"][0] = json!("x")),
    ];
    for (says, edit) in mix_edits {
        let mut damaged = original.clone();
        edit(&mut damaged);
        write_config(&damaged);
        let err = load_error(&tmp.0);
        assert!(err.code == ErrorCode::InvalidFile && err.message.contains(says), "{}", err.message);
    }

    write_config(&original);
    let mut lora_bigger = original.clone();
    lora_bigger["liger"]["lora"]["rank"] = json!(3);
    write_config(&lora_bigger);
    let err = load_error(&tmp.0);
    assert!(err.code == ErrorCode::InvalidFile && err.message.contains("shape"), "{}", err.message);

    write_config(&original);
    std::fs::remove_file(tmp.0.join(ADAPTER_WEIGHTS)).unwrap();
    let err = load_error(&tmp.0);
    assert!(
        err.code == ErrorCode::InvalidFile && err.message.contains("adapter_model.safetensors is missing"),
        "{}",
        err.message
    );

    let err = load_error(&tmp.0.join("nope"));
    assert_eq!(err.code, ErrorCode::Io);
}

/// Sequences of a repeated byte pattern, so that a few steps already change the adapters.
fn sequences(n: usize, len: usize, seed: u64) -> Vec<Sequence> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let start: u32 = rng.random_range(2..200);
            let stream: Vec<u32> = (0..=len as u32).map(|i| 2 + (start + 5 * i) % 250).collect();
            Sequence { inputs: stream[..len].to_vec(), labels: stream[1..].to_vec() }
        })
        .collect()
}

#[test]
fn training_resumed_from_a_checkpoint_matches_training_straight_bit_for_bit() {
    let (steps, seed) = (4u64, 21u64);
    let data = sequences(5, 16, seed);
    let cfg = TrainConfig {
        steps: Some(steps),
        seq_len: 16,
        micro_batch: 1,
        grad_accum: 2,
        seed: 9,
        ..TrainConfig::default()
    };
    // With learned branch weights: they train, save and resume with the adapters.
    let fresh = || {
        let lora = LoraOptions { rank: 2, alpha: 4.0, seed, ..LoraOptions::default() };
        let c = byte_config();
        let options = LigerOptions::default().with_learned_head_mix(c.num_layers, c.num_heads);
        linearize(tiny_byte_model(seed), options, lora).unwrap()
    };
    let sizes = |m: &LigerModel| -> Vec<usize> { m.trained_params().iter().map(|p| p.1.len()).collect() };
    let never = AtomicBool::new(false);

    let mut straight = fresh();
    let mut t = Trainer::new(cfg.clone(), data.len(), &sizes(&straight)).unwrap();
    t.run(&mut straight, &data, &[], &never, &mut |_, _, _| Ok(())).unwrap();

    // Half the steps, saved from the `Save` event that cancelling with save_on_cancel gives.
    let tmp = TempDir::new("resume");
    let mut first = fresh();
    let mut t1 = Trainer::new(TrainConfig { save_on_cancel: true, ..cfg.clone() }, data.len(), &sizes(&first)).unwrap();
    let stop = AtomicBool::new(false);
    let mut on_event = |e: TrainEvent, m: &LigerModel, t: &Trainer| {
        stop.store(t.state.step == steps / 2, Ordering::Relaxed);
        if let TrainEvent::Save { .. } = e {
            save_liger_checkpoint(
                &tmp.0,
                m,
                &SaveOptions::default(),
                Some(TrainingSnapshot { state: &t.state, optimizer: &t.optimizer }),
            )?;
        }
        Ok(())
    };
    assert!(t1.run(&mut first, &data, &[], &stop, &mut on_event).unwrap().cancelled);

    let mut second = load_liger_checkpoint(&tmp.0).unwrap();
    let (state, optimizer) = load_training_state(&tmp.0, &second).unwrap().expect("the checkpoint has training state");
    assert_eq!(state.step, steps / 2);
    let mut t2 = Trainer::resume(state, optimizer, data.len(), &sizes(&second)).unwrap();
    t2.run(&mut second, &data, &[], &never, &mut |_, _, _| Ok(())).unwrap();

    let loss_bits = |t: &Trainer| t.state.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    println!("losses straight {:?}", t.state.losses);
    assert_eq!(loss_bits(&t2), loss_bits(&t));
    for ((name, a), (_, b)) in second.trained_params().iter().zip(straight.trained_params()) {
        assert_eq!(bits(a), bits(b), "{name} differs after resuming");
    }
    assert!(
        straight.lora_params().iter().any(|p| p.0.contains("lora_B") && p.1.iter().any(|&x| x != 0.0)),
        "training did not move B"
    );
    assert!(
        straight.options.head_mix.iter().flatten().any(|m| m.alpha.iter().chain(&m.beta).any(|&w| w != 0.5)),
        "training did not move the branch weights"
    );

    // A checkpoint without training state says so; a missing optimizer file is an error.
    let plain = TempDir::new("plain");
    save_liger_checkpoint(&plain.0, &second, &SaveOptions::default(), None).unwrap();
    assert!(load_training_state(&plain.0, &second).unwrap().is_none());
    std::fs::remove_file(tmp.0.join("optimizer.safetensors")).unwrap();
    assert_eq!(load_training_state(&tmp.0, &second).unwrap_err().code, ErrorCode::InvalidFile);
}

/// The tiny byte-level model with its projections and MLP stored as Q4_1 (sizes that are whole
/// blocks of 32), as the default GGUF model stores them.
fn tiny_q4_1_model(seed: u64) -> crate::model::BaseModel {
    use crate::quant::quantize;
    use crate::tensor::{ByteView, GgmlType, QTensor};
    let cfg = crate::config::ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        ..byte_config()
    };
    let mut weights = crate::testing::random_weights(&cfg, seed);
    let q4_1 = |t: &QTensor| {
        QTensor::new(GgmlType::Q4_1, t.rows, t.cols, ByteView::from_vec(quantize(GgmlType::Q4_1, &t.to_f32()).unwrap()))
            .unwrap()
    };
    for l in &mut weights.layers {
        for t in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down] {
            *t = q4_1(t);
        }
    }
    crate::model::BaseModel::new(
        cfg,
        weights,
        crate::train::fixtures::byte_tokenizer(),
        None,
        "tiny-q4_1".into(),
        crate::model::ModelFormat::Gguf,
    )
}

/// Resuming a quantized model from its checkpoint is bit-exact when the run resumes on the base
/// model's own Q4_1 weights (`load_liger_checkpoint_on`); the checkpoint's f32 copy of them
/// holds the same values but its products round differently.
#[test]
fn resuming_a_q4_1_model_on_its_own_weights_matches_training_straight_bit_for_bit() {
    let (steps, seed) = (4u64, 23u64);
    let data = sequences(5, 16, seed);
    let cfg = TrainConfig {
        steps: Some(steps),
        seq_len: 16,
        micro_batch: 1,
        grad_accum: 2,
        seed: 9,
        save_on_cancel: true,
        ..TrainConfig::default()
    };
    let lora = LoraOptions { rank: 2, alpha: 4.0, seed, ..LoraOptions::default() };
    let fresh = || linearize(tiny_q4_1_model(seed), LigerOptions::default(), lora.clone()).unwrap();
    let sizes = |m: &LigerModel| -> Vec<usize> { m.lora_params().iter().map(|p| p.1.len()).collect() };
    let never = AtomicBool::new(false);
    let mut straight = fresh();
    let mut t = Trainer::new(cfg.clone(), data.len(), &sizes(&straight)).unwrap();
    t.run(&mut straight, &data, &[], &never, &mut |_, _, _| Ok(())).unwrap();

    let tmp = TempDir::new("resume-q4_1");
    let mut first = fresh();
    let mut t1 = Trainer::new(cfg.clone(), data.len(), &sizes(&first)).unwrap();
    let stop = AtomicBool::new(false);
    let mut on_event = |e: TrainEvent, m: &LigerModel, t: &Trainer| {
        stop.store(t.state.step == steps / 2, Ordering::Relaxed);
        if let TrainEvent::Save { .. } = e {
            save_liger_checkpoint(
                &tmp.0,
                m,
                &SaveOptions::default(),
                Some(TrainingSnapshot { state: &t.state, optimizer: &t.optimizer }),
            )?;
        }
        Ok(())
    };
    assert!(t1.run(&mut first, &data, &[], &stop, &mut on_event).unwrap().cancelled);

    let resume = |mut model: LigerModel| -> Vec<u64> {
        let (state, optimizer) =
            load_training_state(&tmp.0, &model).unwrap().expect("the checkpoint has training state");
        let mut t2 = Trainer::resume(state, optimizer, data.len(), &sizes(&model)).unwrap();
        t2.run(&mut model, &data, &[], &never, &mut |_, _, _| Ok(())).unwrap();
        t2.state.losses.iter().map(|l| l.to_bits()).collect()
    };
    let want: Vec<u64> = t.state.losses.iter().map(|l| l.to_bits()).collect();
    let (on_base, used_base) = load_liger_checkpoint_on(&tmp.0, tiny_q4_1_model(seed)).unwrap();
    assert!(used_base, "the base's weights are the checkpoint's values");
    assert_eq!(resume(on_base), want);
    // Another base model is not taken for the checkpoint's.
    let (_, used_other) = load_liger_checkpoint_on(&tmp.0, tiny_q4_1_model(seed + 1)).unwrap();
    assert!(!used_other);
    // The checkpoint's own f32 weights: the same values, other rounding (what resuming did before).
    let on_f32 = resume(load_liger_checkpoint(&tmp.0).unwrap());
    println!("losses straight {:?}; resumed on the f32 copy, bits equal: {}", t.state.losses, on_f32 == want);
}
