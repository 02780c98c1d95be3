//! Token choice on the GPU against the CPU sampler (`liger_core::sampling`): the same token
//! for the same logits and the same uniform draw, over many rows, ties and top-k/top-p edges.

mod common;

use common::*;
use liger_core::sampling::{argmax, sample_with_draw, Sampler, SamplingOptions};
use liger_core::ErrorCode;
use liger_cuda::ops::sampling::sample_tokens;
use liger_cuda::GpuBuffer;
use rand::rngs::StdRng;
use rand::Rng;

const ROWS: usize = 32;

/// Rows of logits of three kinds: spread out, heavily tied (a few distinct values), and one
/// clear favourite with some tokens masked to -inf.
fn logit_rows(rng: &mut StdRng, vocab: usize) -> Vec<f32> {
    let mut all = Vec::with_capacity(ROWS * vocab);
    for r in 0..ROWS {
        let row: Vec<f32> = match r % 3 {
            0 => random(rng, vocab, 6.0),
            1 => (0..vocab).map(|_| (rng.random_range(-4.0f32..4.0) * 2.0).round() / 2.0).collect(),
            _ => {
                let mut row = random(rng, vocab, 2.0);
                row[rng.random_range(0..vocab)] = 9.0;
                for _ in 0..vocab / 10 {
                    row[rng.random_range(0..vocab)] = f32::NEG_INFINITY;
                }
                row
            }
        };
        all.extend(row);
    }
    all
}

/// Draws: the ends of [0, 1) and random values.
fn draws(rng: &mut StdRng) -> Vec<f32> {
    (0..ROWS)
        .map(|r| match r % 8 {
            0 => 0.0,
            1 => 1.0 - f32::EPSILON / 2.0,
            _ => rng.random::<f32>(),
        })
        .collect()
}

#[test]
fn sampled_tokens_equal_the_cpu_samplers_tokens() {
    let ctx = gpu();
    let mut rng = rng("sampling");
    let (mut picks, mut distinct) = (0usize, std::collections::HashSet::new());
    for vocab in [1000usize, 4097, 49152] {
        let logits = logit_rows(&mut rng, vocab);
        let logits_gpu = upload(&ctx, &logits);
        let temperatures: &[f32] = if vocab > 10_000 { &[0.7, 1.3] } else { &[0.5, 1.0, 1.7] };
        for &temperature in temperatures {
            for top_k in [0, 1, 5, 40, vocab, vocab + 10] {
                for top_p in [1.0f32, 0.9, 0.3, 1e-6] {
                    let options = SamplingOptions { temperature, top_k, top_p, seed: 0 };
                    let u = draws(&mut rng);
                    let mut tokens = GpuBuffer::from_host(&ctx, &[u32::MAX; ROWS]).unwrap();
                    sample_tokens(&ctx, &logits_gpu, vocab, &options, &upload(&ctx, &u), &mut tokens).unwrap();
                    let got = tokens.to_host().unwrap();
                    let mut scratch = Vec::new();
                    for r in 0..ROWS {
                        let want = sample_with_draw(&options, &logits[r * vocab..(r + 1) * vocab], u[r], &mut scratch);
                        assert_eq!(got[r], want, "vocab {vocab}, {options:?}, row {r}, draw {}", u[r]);
                        distinct.insert((vocab, want));
                    }
                    picks += ROWS;
                }
            }
        }
    }
    println!("{{\"test\":\"sampling\",\"picks\":{picks},\"mismatches\":0,\"distinct_tokens\":{}}}", distinct.len());
    assert!(distinct.len() > 100, "the cases should pick many different tokens");
}

#[test]
fn a_seeded_sampler_and_the_gpu_pick_the_same_sequence() {
    let ctx = gpu();
    let mut rng = rng("sampling sequence");
    let vocab = 49152;
    let options = SamplingOptions { temperature: 0.8, top_k: 50, top_p: 0.95, seed: rng.random() };
    let (mut cpu, mut source) = (Sampler::new(options.clone()).unwrap(), Sampler::new(options.clone()).unwrap());
    let mut tokens = GpuBuffer::from_host(&ctx, &[u32::MAX]).unwrap();
    for _ in 0..50 {
        let logits = random(&mut rng, vocab, 5.0);
        let u = [source.draw()];
        sample_tokens(&ctx, &upload(&ctx, &logits), vocab, &options, &upload(&ctx, &u), &mut tokens).unwrap();
        assert_eq!(tokens.to_host().unwrap()[0], cpu.sample(&logits));
    }
    println!("sampling: 50 steps of a seeded sampler reproduced");
}

#[test]
fn greedy_is_the_first_maximum() {
    let ctx = gpu();
    let mut rng = rng("greedy");
    for vocab in [1usize, 31, 1000, 49152, 128256] {
        let logits = logit_rows(&mut rng, vocab);
        let mut tokens = GpuBuffer::from_host(&ctx, &[u32::MAX; ROWS]).unwrap();
        let unused = upload(&ctx, &[0.5; ROWS]);
        sample_tokens(&ctx, &upload(&ctx, &logits), vocab, &SamplingOptions::default(), &unused, &mut tokens).unwrap();
        let got = tokens.to_host().unwrap();
        for r in 0..ROWS {
            assert_eq!(got[r], argmax(&logits[r * vocab..(r + 1) * vocab]), "vocab {vocab} row {r}");
        }
    }
    println!("greedy: argmax with ties matched for 5 vocabulary sizes x {ROWS} rows");
}

#[test]
fn bad_sampling_arguments_are_typed_errors() {
    let ctx = gpu();
    let logits = upload(&ctx, &[0.0; 20]);
    let mut tokens = GpuBuffer::from_host(&ctx, &[0u32; 2]).unwrap();
    let draws = upload(&ctx, &[0.5; 2]);
    let bad = SamplingOptions { temperature: -1.0, ..Default::default() };
    assert_eq!(
        sample_tokens(&ctx, &logits, 10, &bad, &draws, &mut tokens).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let err = sample_tokens(&ctx, &logits, 7, &SamplingOptions::default(), &draws, &mut tokens).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    let err = sample_tokens(
        &ctx,
        &logits,
        10,
        &SamplingOptions { temperature: 1.0, ..Default::default() },
        &upload(&ctx, &[0.5]),
        &mut tokens,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains("draws"), "{}", err.message);
}
