//! The default model end to end on the CPU: load, generate, chat, and the GGUF -> checkpoint
//! directory -> load round trip with identical logits.

use liger_core::chat::ChatMessage;
use liger_core::generate::{generate, CausalLm, FinishReason, GenerateOptions};
use liger_core::hf::SaveDtype;
use liger_core::model::{load_model, BaseModel, ModelFormat};
use liger_core::sampling::SamplingOptions;
use liger_core::testing::default_model_path;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

fn model() -> &'static BaseModel {
    static MODEL: OnceLock<BaseModel> = OnceLock::new();
    MODEL.get_or_init(|| load_model(&default_model_path(), &mut |_, _| {}).expect("load the default model"))
}

fn greedy(m: &BaseModel, prompt: &str, n: usize) -> (String, FinishReason) {
    let ids = m.encode(prompt, None, true).unwrap();
    let opts = GenerateOptions { max_tokens: n, ..Default::default() };
    let r = generate(m, &ids, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    (r.text, r.finish_reason)
}

#[test]
fn info_describes_the_default_model() {
    let info = model().info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(
        (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads, info.head_dim),
        (30, 576, 9, 3, 64)
    );
    assert_eq!(info.vocab_size, 49152);
    assert!(info.tie_word_embeddings);
    // 134.5M parameters in SmolLM2-135M (tied embeddings counted once).
    assert!((134_000_000..135_000_000).contains(&info.num_params), "{}", info.num_params);
    assert_eq!(info.tensor_types.get("Q4_1"), Some(&210));
    assert_eq!(info.tensor_types.get("Q8_0"), Some(&1));
    assert_eq!(info.kv_cache_bytes_per_token, 2 * 30 * 192 * 4);
}

#[test]
fn greedy_chat_answer_is_sensible_and_deterministic() {
    let m = model();
    let prompt = m.apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let (a, reason) = greedy(m, &prompt, 12);
    let (b, _) = greedy(m, &prompt, 12);
    assert_eq!(a, b, "greedy decoding must be deterministic");
    assert!(a.contains("Paris"), "answer: {a:?}");
    assert!(matches!(reason, FinishReason::Length | FinishReason::Eos));
}

#[test]
fn chat_generation_stops_at_end_of_turn() {
    let m = model();
    let prompt = m.apply_chat_template(&[ChatMessage::new("user", "Say hello.")], true).unwrap();
    let (_, reason) = greedy(m, &prompt, 200);
    assert_eq!(reason, FinishReason::Eos, "<|im_end|> should end the turn");
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_strings_cut() {
    let m = model();
    let ids = m.encode("Once upon a time", None, false).unwrap();
    let run = |seed: u64, stop: Vec<String>| {
        let opts = GenerateOptions {
            max_tokens: 24,
            sampling: SamplingOptions { temperature: 0.8, top_k: 40, top_p: 0.95, seed },
            stop,
            ignore_eos: true,
        };
        generate(m, &ids, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap()
    };
    let a = run(7, vec![]);
    assert_eq!(a.text, run(7, vec![]).text);
    assert_eq!(a.tokens.len(), 24);
    // Stop at a word the unconstrained run produced: the text ends right before it.
    let word = a.text.split_whitespace().nth(3).expect("some words").to_string();
    let cut = run(7, vec![word.clone()]);
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    assert_eq!(cut.text, a.text[..a.text.find(&word).unwrap()]);
}

#[test]
fn cancellation_stops_generation() {
    let m = model();
    let ids = m.encode("Hello", None, false).unwrap();
    let opts = GenerateOptions { max_tokens: 50, ignore_eos: true, ..Default::default() };
    let r = generate(m, &ids, &opts, &AtomicBool::new(true), &mut |_, _| {}).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Aborted);
    assert!(r.tokens.is_empty());
    assert_eq!(r.prompt_tokens, ids.len());
    // Cancelled before it starts (a request that waited for a busy GPU): the prompt never runs.
    let counted = CountingForwards::new(m);
    let r = generate(&counted, &ids, &opts, &AtomicBool::new(true), &mut |_, _| {}).unwrap();
    assert_eq!((r.finish_reason, counted.calls.get() + counted.samples.get()), (FinishReason::Aborted, 0));
    let r = generate(&counted, &ids, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    assert_eq!(r.tokens.len(), 50);
    assert!(counted.samples.get() > 0);
}

/// A model that counts its forward calls: those that return the logits, and those that pick
/// the next token itself (as an engine sampling on its own device does).
struct CountingForwards<'m, M> {
    inner: &'m M,
    calls: std::cell::Cell<usize>,
    samples: std::cell::Cell<usize>,
}

impl<'m, M> CountingForwards<'m, M> {
    fn new(inner: &'m M) -> Self {
        CountingForwards { inner, calls: std::cell::Cell::new(0), samples: std::cell::Cell::new(0) }
    }
}

impl<M: CausalLm> CausalLm for CountingForwards<'_, M> {
    type State = M::State;
    fn new_state(&self) -> M::State {
        self.inner.new_state()
    }
    fn forward_last(&self, state: &mut M::State, tokens: &[u32]) -> liger_core::Result<Vec<f32>> {
        self.calls.set(self.calls.get() + 1);
        self.inner.forward_last(state, tokens)
    }
    fn forward_sample(
        &self,
        state: &mut M::State,
        tokens: &[u32],
        sampler: &mut liger_core::sampling::Sampler,
    ) -> liger_core::Result<u32> {
        self.samples.set(self.samples.get() + 1);
        let logits = self.inner.forward_last(state, tokens)?;
        Ok(sampler.sample(&logits))
    }
    fn tokenizer(&self) -> &liger_core::tokenizer::Tokenizer {
        self.inner.tokenizer()
    }
    fn eos_ids(&self) -> Vec<u32> {
        self.inner.eos_ids()
    }
    fn max_tokens(&self) -> Option<usize> {
        self.inner.max_tokens()
    }
}

/// An engine that samples on its own device: the loop asks it for the next token once per
/// step (`forward_sample`) and emits exactly what it picks, the same tokens as a host-sampled
/// run with the same seed; a prefill fed in chunks picks the same ones.
#[test]
fn the_loop_takes_each_token_from_the_engines_own_sampler() {
    use liger_core::generate::Generator;
    let m = model();
    let ids = m.encode("Once upon a time, in a small village by the sea,", None, true).unwrap();
    let sampling = SamplingOptions { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 11 };
    let opts = GenerateOptions { max_tokens: 12, sampling, ignore_eos: true, ..Default::default() };
    let plain = generate(m, &ids, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    let engine = CountingForwards::new(m);
    let own = generate(&engine, &ids, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    assert_eq!(own.tokens, plain.tokens);
    // One pick after the prompt, then one after each emitted token but the last; the logits
    // are never asked for.
    assert_eq!((engine.calls.get(), engine.samples.get()), (0, 12));
    for chunk in [1, 4, ids.len() - 1, ids.len(), 64] {
        let mut g = Generator::with_prefill_chunk(m, &ids, &opts, chunk).unwrap();
        while g.step().unwrap().is_some() {}
        assert_eq!(g.result().tokens, plain.tokens, "prefill in chunks of {chunk}");
    }
}

#[test]
fn gguf_to_checkpoint_directory_gives_identical_logits() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("liger-ckpt-{}", std::process::id()));
    m.save_checkpoint(&dir, SaveDtype::F32).unwrap();
    let back = load_model(&dir, &mut |_, _| {}).unwrap();
    assert_eq!(back.format, ModelFormat::Checkpoint);
    assert_eq!(back.config.num_layers, m.config.num_layers);
    let text = "The quick brown fox jumps over the lazy dog. 12345 <|im_start|>user";
    let ids = m.encode(text, None, true).unwrap();
    assert_eq!(back.encode(text, None, true).unwrap(), ids, "tokenizer differs after the round trip");
    assert_eq!(back.chat_template, m.chat_template);
    let (a, b) = (m.all_logits(&ids).unwrap(), back.all_logits(&ids).unwrap());
    // F32 holds the dequantized values exactly and the arithmetic is the same, up to the
    // order of floating-point sums in the two matrix-product paths (quantized vs f32).
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(diff / scale < 1e-5, "max logit difference {diff} (scale {scale})");
    let top = |l: &[f32]| l.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    let v = m.config.vocab_size;
    for t in 0..ids.len() {
        assert_eq!(top(&a[t * v..(t + 1) * v]), top(&b[t * v..(t + 1) * v]));
    }
}

#[test]
fn bad_paths_and_prompts_are_typed_errors() {
    use liger_core::ErrorCode;
    let err = load_model(std::path::Path::new("/nonexistent/model.gguf"), &mut |_, _| {}).err().unwrap();
    assert_eq!(err.code, ErrorCode::Io);
    let m = model();
    let long = vec![1u32; m.config.max_position_embeddings];
    let err = generate(m, &long, &GenerateOptions::default(), &AtomicBool::new(false), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::ContextOverflow);
    let err = generate(m, &[], &GenerateOptions::default(), &AtomicBool::new(false), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}
