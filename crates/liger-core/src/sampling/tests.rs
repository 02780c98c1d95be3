use super::*;

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect()
}

#[test]
fn greedy_picks_the_maximum() {
    let logits = random_logits(1000, rand::random());
    let best = logits.iter().cloned().fold(f32::MIN, f32::max);
    let mut s = Sampler::new(SamplingOptions::default()).unwrap();
    assert_eq!(logits[s.sample(&logits) as usize], best);
}

#[test]
fn same_seed_same_tokens() {
    let logits = random_logits(500, rand::random());
    let opts = SamplingOptions { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 1234 };
    let mut a = Sampler::new(opts.clone()).unwrap();
    let mut b = Sampler::new(opts).unwrap();
    let xa: Vec<u32> = (0..50).map(|_| a.sample(&logits)).collect();
    let xb: Vec<u32> = (0..50).map(|_| b.sample(&logits)).collect();
    assert_eq!(xa, xb);
    assert!(xa.iter().collect::<std::collections::HashSet<_>>().len() > 1, "temperature sampling should vary");
}

#[test]
fn top_k_restricts_to_the_k_best() {
    let logits = random_logits(300, rand::random());
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let allowed: std::collections::HashSet<u32> = order[..5].iter().map(|&i| i as u32).collect();
    let mut s = Sampler::new(SamplingOptions { temperature: 5.0, top_k: 5, top_p: 1.0, seed: rand::random() }).unwrap();
    for _ in 0..500 {
        assert!(allowed.contains(&s.sample(&logits)));
    }
}

#[test]
fn top_p_keeps_the_nucleus_and_frequencies_match() {
    // Three tokens with probabilities 0.5, 0.3, 0.2 (temperature 1): top_p 0.75 keeps two.
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let mut s =
        Sampler::new(SamplingOptions { temperature: 1.0, top_k: 0, top_p: 0.75, seed: rand::random() }).unwrap();
    let n = 20000;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        counts[s.sample(&logits) as usize] += 1;
    }
    assert_eq!(counts[2], 0, "token outside the nucleus was sampled");
    let p0 = counts[0] as f64 / n as f64;
    assert!((p0 - 0.625).abs() < 0.02, "renormalised probability 0.5/0.8 expected, got {p0}");
}

#[test]
fn exp_nonpositive_is_close_to_exp() {
    let mut worst = 0.0f64;
    for i in 0..200_000 {
        let x = -(i as f32) * 87.0 / 200_000.0;
        let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 3e-7, "max relative error {worst:e}");
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert_eq!(exp_nonpositive(-100.0), 0.0);
    assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
}

#[test]
fn sample_is_sample_with_draw_of_the_next_draw() {
    let logits = random_logits(400, rand::random());
    let opts = SamplingOptions { temperature: 0.8, top_k: 50, top_p: 0.9, seed: rand::random() };
    let mut a = Sampler::new(opts.clone()).unwrap();
    let mut b = Sampler::new(opts.clone()).unwrap();
    let mut scratch = Vec::new();
    for _ in 0..200 {
        let u = b.draw();
        assert!((0.0..1.0).contains(&u));
        assert_eq!(a.sample(&logits), sample_with_draw(&opts, &logits, u, &mut scratch));
    }
}

#[test]
fn bad_options_are_rejected() {
    for o in [
        SamplingOptions { temperature: -1.0, ..Default::default() },
        SamplingOptions { temperature: f32::NAN, ..Default::default() },
        SamplingOptions { top_p: 0.0, ..Default::default() },
        SamplingOptions { top_p: 1.5, ..Default::default() },
    ] {
        assert_eq!(Sampler::new(o).err().unwrap().code, crate::ErrorCode::InvalidArgument);
    }
}
