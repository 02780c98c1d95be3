//! Tests of the evaluation module: a small byte-level tokenizer, a mock model with a float64
//! twin, a tiny random base model, and fixture rows for every task format.

mod formats;
mod reports;
mod scoring;

use super::ScoreModel;
use crate::config::Architecture;
use crate::error::Result;
use crate::model::{BaseModel, ModelFormat};
use crate::testing::{random_weights, tiny_config};
use crate::tokenizer::{BpeVocab, Tokenizer, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

const MERGES: [&str; 8] = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ s", "o n"];

/// GPT-2's byte -> char table (printable bytes stand for themselves).
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer: 2 control tokens (EOS 0, BOS 1), 256 bytes, 8 merges.
pub fn byte_tokenizer() -> Tokenizer {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    token_types[0] = TOKEN_TYPE_CONTROL;
    token_types[1] = TOKEN_TYPE_CONTROL;
    let v = BpeVocab {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges: MERGES.iter().map(|m| m.to_string()).collect(),
        bos_id: Some(1),
        eos_id: Some(0),
        ..Default::default()
    };
    Tokenizer::from_bpe_vocab(&v).unwrap()
}

/// A model whose state is an exponentially decaying sum of token embeddings: logits depend on
/// every earlier token, so truncation and window placement change them. Has a float64 twin.
pub struct DecayModel {
    pub tokenizer: Tokenizer,
    pub vocab: usize,
    pub dim: usize,
    pub embed: Vec<f64>,
    pub unembed: Vec<f64>,
    pub max_length: Option<usize>,
}

impl DecayModel {
    pub fn new(seed: u64, max_length: Option<usize>) -> Self {
        let tokenizer = byte_tokenizer();
        let (vocab, dim) = (tokenizer.vocab_size(), 8);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rand = |n: usize| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>();
        let embed = rand(vocab * dim);
        let unembed = rand(dim * vocab);
        DecayModel { tokenizer, vocab, dim, embed, unembed, max_length }
    }

    /// Logits in float64 (the reference).
    pub fn logits_f64(&self, tokens: &[u32]) -> Vec<f64> {
        let mut h = vec![0.0; self.dim];
        let mut out = Vec::with_capacity(tokens.len() * self.vocab);
        for &t in tokens {
            for (d, hd) in h.iter_mut().enumerate() {
                *hd = 0.6 * *hd + self.embed[t as usize * self.dim + d];
            }
            for v in 0..self.vocab {
                out.push(3.0 * (0..self.dim).map(|d| h[d] * self.unembed[d * self.vocab + v]).sum::<f64>());
            }
        }
        out
    }

    /// log p(tokens[i]) given tokens[..i] for i in `range`, in float64, from `tokens[0]` on.
    pub fn logprob_f64(&self, input: &[u32], targets: &[u32]) -> (f64, bool) {
        let logits = self.logits_f64(input);
        let first = input.len() - targets.len();
        let mut total = 0.0;
        let mut greedy = true;
        for (j, &t) in targets.iter().enumerate() {
            let row = &logits[(first + j) * self.vocab..(first + j + 1) * self.vocab];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += row[t as usize] - lse;
            greedy &= row[t as usize] == max;
        }
        (total, greedy)
    }
}

impl ScoreModel for DecayModel {
    fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (embed, unembed): (Vec<f32>, Vec<f32>) =
            (self.embed.iter().map(|&v| v as f32).collect(), self.unembed.iter().map(|&v| v as f32).collect());
        let mut h = vec![0.0f32; self.dim];
        let mut out = Vec::with_capacity(tokens.len() * self.vocab);
        for &t in tokens {
            for (d, hd) in h.iter_mut().enumerate() {
                *hd = 0.6 * *hd + embed[t as usize * self.dim + d];
            }
            for v in 0..self.vocab {
                out.push(3.0 * (0..self.dim).map(|d| h[d] * unembed[d * self.vocab + v]).sum::<f32>());
            }
        }
        Ok(out)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn max_length(&self) -> Option<usize> {
        self.max_length
    }
}

/// A tiny random Llama with the byte-level tokenizer.
pub fn tiny_base_model(seed: u64) -> BaseModel {
    let tokenizer = byte_tokenizer();
    let mut cfg = tiny_config(Architecture::Llama);
    cfg.vocab_size = tokenizer.vocab_size();
    let weights = random_weights(&cfg, seed);
    BaseModel::new(cfg, weights, tokenizer, None, "tiny".into(), ModelFormat::Gguf)
}

/// A temporary folder for fixture files, removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh temporary folder for fixture files.
pub fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("liger-eval-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// The shared data folder: `$LIGER_DATA_DIR`, else `<repo>/../shared/data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("LIGER_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}
