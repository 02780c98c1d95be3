//! Log-likelihood scoring, rolling perplexity and passkey against float64 references.

use super::{byte_tokenizer, temp_dir, tiny_base_model, DecayModel};
use crate::error::{ErrorCode, Result};
use crate::eval::loglik::{encode_pair, loglikelihood, score_tokens, LoglikRequest, TokenRequest};
use crate::eval::passkey::{make_passkey_prompt, passkey_by_generation, passkey_by_loglikelihood, PasskeyOptions};
use crate::eval::perplexity::{rolling_perplexity, rolling_windows, ScoredText};
use crate::eval::tasks::{run_task, score_multiple_choice, Task};
use crate::eval::{EvalOptions, ScoreModel};
use crate::generate::CausalLm;
use crate::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_text(rng: &mut StdRng, max_len: usize) -> String {
    const POOL: &[&str] = &["the", " the", "he", " a", "in", "er", " s", "x", "on", " ", ".", "\n", "é", "Q"];
    (0..rng.random_range(1..=max_len)).map(|_| POOL[rng.random_range(0..POOL.len())]).collect()
}

#[test]
fn encode_pair_moves_trailing_spaces_and_splits_at_the_context_length() {
    let tok = byte_tokenizer();
    let the = tok.encode(" the", false, false).unwrap();
    assert_eq!(the.len(), 1, "\" the\" is one merged token");
    let r = encode_pair(&tok, "Answer: ", "the", false).unwrap();
    assert_eq!(r.context, tok.encode("Answer:", false, false).unwrap());
    assert_eq!(r.continuation, the);
    let r = encode_pair(&tok, "", "on", false).unwrap();
    assert_eq!(r.context, vec![1]);
    assert_eq!(r.continuation, tok.encode("on", false, false).unwrap());
    let r = encode_pair(&tok, "Q", " the", true).unwrap();
    assert_eq!(r.context, vec![1, tok.encode("Q", false, false).unwrap()[0]]);
    let e = encode_pair(&tok, "Q", "", false).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    // The context is encoded alone (without its trailing spaces); the continuation is what
    // follows that many tokens in the encoding of the whole string.
    let mut rng = StdRng::seed_from_u64(rand::random());
    for _ in 0..200 {
        let (c, x) = (random_text(&mut rng, 12), random_text(&mut rng, 6));
        let Ok(r) = encode_pair(&tok, &c, &x, false) else { continue };
        let whole = tok.encode(&format!("{c}{x}"), false, true).unwrap();
        if !c.trim_end().is_empty() {
            assert_eq!(r.context, tok.encode(c.trim_end(), false, true).unwrap());
            assert_eq!(r.continuation, whole[r.context.len()..], "{c:?} + {x:?}");
        }
    }
}

#[test]
fn loglikelihood_matches_float64_reference_with_and_without_truncation() {
    let seed = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    for max_length in [None, Some(12)] {
        let model = DecayModel::new(seed ^ 1, max_length);
        let requests: Vec<LoglikRequest> =
            (0..40).map(|_| LoglikRequest::new(random_text(&mut rng, 10), random_text(&mut rng, 4))).collect();
        let opts = EvalOptions::default();
        let (results, stats) = loglikelihood(&model, &requests, &opts, None).unwrap();
        let (mut worst, mut truncated) = (0.0f64, 0);
        for (r, got) in requests.iter().zip(&results) {
            let t = encode_pair(&model.tokenizer, &r.context, &r.continuation, false).unwrap();
            let whole = [t.context.clone(), t.continuation.clone()].concat();
            let start = max_length.map_or(0, |m| whole.len().saturating_sub(m + 1));
            truncated += (start > 0) as usize;
            let (lp, greedy) = model.logprob_f64(&whole[start..whole.len() - 1], &t.continuation);
            worst = worst.max((got.logprob - lp).abs() / lp.abs().max(1.0));
            assert_eq!(got.is_greedy, greedy);
            assert_eq!(got.num_tokens, t.continuation.len());
        }
        println!("max_length {max_length:?}: max rel error of log-likelihoods {worst:.2e}, {truncated} truncated");
        assert!(worst < 1e-4, "max rel error {worst:.2e} (seed {seed})");
        assert_eq!(stats.truncated, truncated);
        assert_eq!(stats.requests, 40);
        assert!(max_length.is_none() || truncated > 0, "the test should exercise truncation");
    }
}

#[test]
fn requests_with_the_same_input_share_one_forward() {
    let model = DecayModel::new(rand::random(), None);
    let ctx = "Question: he\nAnswer:";
    let requests: Vec<LoglikRequest> =
        [" a", " s", " t", " the on"].iter().map(|c| LoglikRequest::new(ctx, *c)).collect();
    let (shared, stats) = loglikelihood(&model, &requests, &EvalOptions::default(), None).unwrap();
    assert_eq!(stats.forwards, 2, "three single-token answers share the context's forward");
    for (r, s) in requests.iter().zip(&shared) {
        let (alone, _) = loglikelihood(&model, std::slice::from_ref(r), &EvalOptions::default(), None).unwrap();
        assert_eq!(alone[0], *s);
    }
}

#[test]
fn overlong_continuation_is_a_context_overflow() {
    let model = DecayModel::new(3, Some(4));
    let req = TokenRequest { context: vec![5], continuation: vec![6, 7, 8, 9, 10] };
    let e = score_tokens(&model, &[req], Some(4), None).unwrap_err();
    assert_eq!(e.code, ErrorCode::ContextOverflow);
}

#[test]
fn rolling_windows_hand_checked_and_a_partition() {
    let tokens: Vec<u32> = (10..20).collect();
    let w = rolling_windows(&tokens, 1, 4).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = w.into_iter().map(|r| (r.context, r.continuation)).collect();
    assert_eq!(
        pairs,
        [(vec![1], vec![10, 11, 12, 13]), (vec![13], vec![14, 15, 16, 17]), (vec![15, 16, 17], vec![18, 19])]
    );
    let mut rng = StdRng::seed_from_u64(rand::random());
    for _ in 0..200 {
        let n = rng.random_range(0..60);
        let window = rng.random_range(1..20);
        let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(2..100)).collect();
        let w = rolling_windows(&tokens, 1, window).unwrap();
        let predicted: Vec<u32> = w.iter().flat_map(|r| r.continuation.clone()).collect();
        assert_eq!(predicted, tokens);
        for r in &w {
            assert!(r.context.len() + r.continuation.len() <= window + 1);
            assert!(!r.context.is_empty());
        }
    }
    assert_eq!(rolling_windows(&tokens, 1, 0).unwrap_err().code, ErrorCode::InvalidArgument);
}

/// Sum of -log p over `tokens` read after the prefix token in one pass, in float64.
fn direct_nll(model: &dyn ScoreModel, prefix: u32, tokens: &[u32]) -> f64 {
    let input: Vec<u32> = std::iter::once(prefix).chain(tokens[..tokens.len() - 1].iter().copied()).collect();
    let logits = model.all_logits(&input).unwrap();
    let v = model.vocab_size();
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let row = &logits[i * v..(i + 1) * v];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() - row[t as usize] as f64
        })
        .sum()
}

#[test]
fn windowed_nll_equals_the_direct_computation_when_the_text_fits() {
    let model = tiny_base_model(rand::random());
    let text = "the hen sat on the rail. in the sun, a heron stood; then the tern flew on.";
    let doc = ScoredText::plain(text);
    let tokens = model.tokenizer.encode(text, false, true).unwrap();
    let ppl = rolling_perplexity(&model, &[doc], 200, None).unwrap();
    let direct = direct_nll(&model, 1, &tokens);
    let rel = (ppl.nll - direct).abs() / direct;
    println!("windowed {:.6} vs direct {direct:.6}: rel error {rel:.2e}", ppl.nll);
    assert!(rel < 1e-5, "rel error {rel:.2e}");
    assert_eq!((ppl.windows, ppl.tokens, ppl.words, ppl.bytes), (1, tokens.len(), 17, text.len()));
    assert!((ppl.token_perplexity.ln() * tokens.len() as f64 - ppl.nll).abs() < 1e-9 * ppl.nll);
    assert!((ppl.word_perplexity.ln() * 17.0 - ppl.nll).abs() < 1e-9 * ppl.nll);
    assert!((ppl.bits_per_byte * text.len() as f64 * std::f64::consts::LN_2 - ppl.nll).abs() < 1e-9 * ppl.nll);
}

#[test]
fn multi_window_nll_matches_float64_reference() {
    let model = DecayModel::new(rand::random(), None);
    let text = "the other heron in the sun. ".repeat(6);
    let tokens = model.tokenizer.encode(&text, false, true).unwrap();
    let window = 16;
    let ppl = rolling_perplexity(&model, &[ScoredText::plain(text.clone())], window, None).unwrap();
    let reference: f64 = rolling_windows(&tokens, 1, window)
        .unwrap()
        .iter()
        .map(|r| {
            let whole = [r.context.clone(), r.continuation.clone()].concat();
            -model.logprob_f64(&whole[..whole.len() - 1], &r.continuation).0
        })
        .sum();
    let rel = (ppl.nll - reference).abs() / reference;
    println!("{} windows of {window}: rel error {rel:.2e}", ppl.windows);
    assert!(ppl.windows > 3);
    assert!(rel < 1e-5, "rel error {rel:.2e}");
    assert!(ppl.nll < direct_nll(&model, 1, &tokens) * 10.0);
}

#[test]
fn run_task_scores_a_fixture_and_applies_the_limit() {
    let dir = temp_dir("run");
    let rows: String = (0..12)
        .map(|i| {
            format!(
                "{{\"question\":{{\"stem\":\"the heron {i}?\",\"choices\":[{{\"text\":\"in the sun\",\"label\":\"A\"}},{{\"text\":\"on\",\"label\":\"B\"}},{{\"text\":\"a tern\",\"label\":\"C\"}}]}},\"answerKey\":\"{}\"}}\n",
                ["A", "B", "C"][i % 3]
            )
        })
        .collect();
    let path = dir.join("arc.jsonl");
    std::fs::write(&path, rows).unwrap();
    let model = tiny_base_model(rand::random());
    let opts = EvalOptions { limit: Some(5), ..Default::default() };
    let result = run_task(&model, Task::ArcChallenge, &path, &opts, None).unwrap();
    assert_eq!((result.n, result.primary_metric.as_str()), (5, "acc_norm"));
    let docs = crate::eval::tasks::subset(crate::eval::formats::arc(&path).unwrap(), Some(5), opts.seed);
    let (acc, acc_norm, _) = score_multiple_choice(&model, &docs, &opts, None).unwrap();
    assert_eq!(result.metrics["acc"], acc.iter().sum::<f64>() / 5.0);
    assert_eq!(result.metrics["acc_norm"], acc_norm.iter().sum::<f64>() / 5.0);
    assert!(result.stats.tokens_processed > 0 && result.tokens_per_second > 0.0);
    let e = run_task(&model, Task::Piqa, &dir.join("nothing.jsonl"), &opts, None).unwrap_err();
    assert!(e.message.contains("nothing.jsonl"), "{e}");
}

#[test]
fn wikitext_task_reports_lm_eval_metrics() {
    let dir = temp_dir("wiki");
    let path = dir.join("wiki.test.raw");
    std::fs::write(&path, " \n = Heron = \n \n The heron @-@ like bird sat on the rail . \n \n = = Sun = = \n \n In the sun , the tern flew . \n").unwrap();
    let model = tiny_base_model(rand::random());
    let opts = EvalOptions { perplexity_window: Some(8), ..Default::default() };
    let r = run_task(&model, Task::Wikitext, &path, &opts, None).unwrap();
    let m = &r.metrics;
    assert_eq!((r.n, r.higher_is_better), (1, false));
    assert!(m["word_perplexity"] > 1.0 && m["byte_perplexity"] > 1.0 && m["window"] == 8.0);
    assert!((m["byte_perplexity"].log2() - m["bits_per_byte"]).abs() < 1e-9);
}

/// Reads the passkey from the prompt and answers it: accuracy must be 1. With `wrong`, it
/// answers 00000: accuracy must be 0.
struct Oracle {
    tokenizer: Tokenizer,
    wrong: bool,
}

impl CausalLm for Oracle {
    type State = (Vec<u32>, usize);
    fn new_state(&self) -> Self::State {
        (Vec::new(), 0)
    }
    fn forward_last(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Vec<f32>> {
        if state.0.is_empty() {
            let text = self.tokenizer.decode(tokens, false).unwrap();
            let at = text.find("The pass key is ").unwrap() + "The pass key is ".len();
            let key = if self.wrong { "00000" } else { &text[at..at + 5] };
            state.0 = self.tokenizer.encode(&format!(" {key}."), false, false).unwrap();
            state.0.push(0);
        }
        let mut logits = vec![0.0; self.tokenizer.vocab_size()];
        logits[state.0[state.1.min(state.0.len() - 1)] as usize] = 1.0;
        state.1 += 1;
        Ok(logits)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn eos_ids(&self) -> Vec<u32> {
        vec![0]
    }
    fn max_tokens(&self) -> Option<usize> {
        None
    }
}

#[test]
fn passkey_prompts_fit_their_length_and_are_scored() {
    let tok = byte_tokenizer();
    let units = vec!["The grass is green. The sky is blue.".to_string()];
    for (length, depth) in [(2000, 0.1), (3000, 0.5), (4000, 0.9)] {
        let p = make_passkey_prompt(&tok, length, depth, "12345", &units).unwrap();
        let per_unit = tok.encode(&format!(" {}", units[0]), false, false).unwrap().len();
        assert!(p.tokens.len() <= length && p.tokens.len() + per_unit + 2 > length, "{} for {length}", p.tokens.len());
        let at = p.text.find("The pass key is 12345").unwrap() as f64 / p.text.len() as f64;
        assert!((at - depth).abs() < 0.1, "needle at {at:.2} for depth {depth}");
        assert!(p.text.ends_with("What is the pass key? The pass key is"));
    }
    assert_eq!(make_passkey_prompt(&tok, 20, 0.5, "12345", &units).unwrap_err().code, ErrorCode::InvalidArgument);

    let opts = PasskeyOptions {
        lengths: vec![600, 900],
        depths: vec![0.2, 0.8],
        trials: 2,
        seed: rand::random(),
        corpus: None,
    };
    let right = passkey_by_generation(&Oracle { tokenizer: tok.clone(), wrong: false }, &opts).unwrap();
    assert_eq!((right.cells.len(), right.accuracy), (4, 1.0));
    let wrong = passkey_by_generation(&Oracle { tokenizer: tok.clone(), wrong: true }, &opts).unwrap();
    assert_eq!(wrong.accuracy, 0.0);
    let corpus = PasskeyOptions {
        corpus: Some("A tern flew. The heron sat on the rail. In the sun it slept. ".repeat(3)),
        ..opts.clone()
    };
    assert_eq!(passkey_by_generation(&Oracle { tokenizer: tok.clone(), wrong: false }, &corpus).unwrap().accuracy, 1.0);

    let model = DecayModel::new(rand::random(), None);
    let ll = passkey_by_loglikelihood(&model, &opts, &EvalOptions::default()).unwrap();
    assert_eq!(ll.method, "loglikelihood");
    assert!(ll.cells.iter().all(|c| c.trials == 2 && c.correct <= 2));
}

#[test]
fn inputs_over_max_length_are_cut_and_counted_in_a_warning() {
    let dir = temp_dir("cut");
    let path = dir.join("lambada.jsonl");
    let long = "the heron stood in the water and the tern flew over the sea on the wind";
    std::fs::write(&path, format!("{{\"text\": \"{long}\"}}\n{{\"text\": \"a tern\"}}\n")).unwrap();
    let model = tiny_base_model(rand::random());
    let opts = EvalOptions { max_length: Some(8), ..Default::default() };
    let result = run_task(&model, Task::LambadaOpenai, &path, &opts, None).unwrap();
    assert_eq!(result.stats.truncated, 1);
    assert_eq!(result.warnings, ["1 of 2 requests were longer than max_length and were cut from the left"]);
    // Without a limit below the inputs' length nothing is cut and nothing is said.
    let result = run_task(&model, Task::LambadaOpenai, &path, &EvalOptions::default(), None).unwrap();
    assert_eq!((result.stats.truncated, result.warnings.len()), (0, 0));
}
