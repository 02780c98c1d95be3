//! Long-context recall: a 5-digit passkey hidden in filler text at a given depth, asked for at
//! the end. Scored by greedy generation (does the output contain the key?) on any `CausalLm`,
//! or by log-likelihood (is the key what greedy decoding would produce?) on a `ScoreModel`.

use super::loglik::{loglikelihood, LoglikRequest};
use super::{EvalOptions, ScoreModel};
use crate::error::{Error, ErrorCode, Result};
use crate::generate::{generate, CausalLm, GenerateOptions};
use crate::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicBool;

const INTRO: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.";
const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = " What is the pass key? The pass key is";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasskeyOptions {
    /// Prompt lengths in tokens (each prompt is at most this long).
    pub lengths: Vec<usize>,
    /// Where the passkey sits, as a fraction of the filler (0.1 = near the start).
    pub depths: Vec<f64>,
    /// Prompts (different keys and, for a corpus, different filler) per length x depth.
    pub trials: usize,
    pub seed: u64,
    /// Filler drawn from this text's sentences instead of the repeated standard filler.
    #[serde(skip)]
    pub corpus: Option<String>,
}

impl Default for PasskeyOptions {
    fn default() -> Self {
        PasskeyOptions {
            lengths: vec![1024, 2048, 4096, 8192],
            depths: vec![0.1, 0.3, 0.5, 0.7, 0.9],
            trials: 2,
            seed: 1234,
            corpus: None,
        }
    }
}

/// One generated prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyPrompt {
    pub text: String,
    pub tokens: Vec<u32>,
    pub key: String,
    pub depth: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasskeyCell {
    pub length: usize,
    pub depth: f64,
    pub trials: usize,
    pub correct: usize,
    pub accuracy: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasskeyReport {
    /// "generation" or "loglikelihood".
    pub method: String,
    pub cells: Vec<PasskeyCell>,
    pub accuracy: f64,
}

/// The filler sentences: the standard filler, or the corpus's sentences from a seeded start.
fn filler_units(corpus: Option<&str>, rng: &mut StdRng) -> Result<Vec<String>> {
    let Some(corpus) = corpus else { return Ok(vec![FILLER.to_string()]) };
    let sentences: Vec<String> = corpus
        .split_inclusive(". ")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect();
    if sentences.is_empty() {
        return Err(Error::invalid_argument("the passkey filler corpus holds no text"));
    }
    let start = rng.random_range(0..sentences.len());
    Ok(sentences[start..].iter().chain(&sentences[..start]).cloned().collect())
}

fn assemble(units: &[String], count: usize, at: usize, needle: &str) -> String {
    let mut text = INTRO.to_string();
    for i in 0..count {
        if i == at {
            text.push_str(needle);
        }
        text.push(' ');
        text.push_str(&units[i % units.len()]);
    }
    if at >= count {
        text.push_str(needle);
    }
    text.push_str(QUESTION);
    text
}

/// Builds a prompt of at most `length` tokens (as close to it as whole filler sentences allow)
/// with `key` placed after `depth` of the filler.
pub fn make_passkey_prompt(
    tok: &Tokenizer,
    length: usize,
    depth: f64,
    key: &str,
    units: &[String],
) -> Result<PasskeyPrompt> {
    if !(0.0..=1.0).contains(&depth) {
        return Err(Error::invalid_argument(format!("passkey depth must be in [0, 1], got {depth}")));
    }
    let needle = format!(" The pass key is {key}. Remember it. {key} is the pass key.");
    let encode = |count: usize| -> Result<(String, Vec<u32>)> {
        let text = assemble(units, count, (depth * count as f64).round() as usize, &needle);
        let tokens = tok.encode(&text, tok.add_bos_default(), false)?;
        Ok((text, tokens))
    };
    let (_, bare) = encode(0)?;
    if bare.len() > length {
        return Err(Error::invalid_argument(format!(
            "a passkey prompt needs at least {} tokens without filler; ask for a length above {length}",
            bare.len()
        )));
    }
    // Grow by an estimate from the tokens per filler sentence, then step back until it fits.
    let per_unit = (encode(8)?.1.len() - bare.len()).div_ceil(8).max(1);
    let mut count = (length - bare.len()) / per_unit;
    let mut built = encode(count)?;
    while built.1.len() > length && count > 0 {
        count -= ((built.1.len() - length) / per_unit).max(1).min(count);
        built = encode(count)?;
    }
    while count > 0 {
        let next = encode(count + 1)?;
        if next.1.len() > length {
            break;
        }
        count += 1;
        built = next;
    }
    Ok(PasskeyPrompt { text: built.0, tokens: built.1, key: key.to_string(), depth })
}

/// Every prompt of a run, grouped by (length, depth), in the options' order.
fn all_prompts(tok: &Tokenizer, opts: &PasskeyOptions) -> Result<Vec<(usize, f64, Vec<PasskeyPrompt>)>> {
    if opts.lengths.is_empty() || opts.depths.is_empty() || opts.trials == 0 {
        return Err(Error::invalid_argument("passkey needs at least one length, one depth and one trial"));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut out = Vec::new();
    for &length in &opts.lengths {
        for &depth in &opts.depths {
            let mut prompts = Vec::new();
            for _ in 0..opts.trials {
                let key = rng.random_range(10000..100000u32).to_string();
                let units = filler_units(opts.corpus.as_deref(), &mut rng)?;
                prompts.push(make_passkey_prompt(tok, length, depth, &key, &units)?);
            }
            out.push((length, depth, prompts));
        }
    }
    Ok(out)
}

fn report(method: &str, cells: Vec<PasskeyCell>) -> PasskeyReport {
    let trials: usize = cells.iter().map(|c| c.trials).sum();
    let correct: usize = cells.iter().map(|c| c.correct).sum();
    PasskeyReport { method: method.into(), cells, accuracy: correct as f64 / trials.max(1) as f64 }
}

fn cell(length: usize, depth: f64, results: &[bool]) -> PasskeyCell {
    let correct = results.iter().filter(|&&r| r).count();
    PasskeyCell { length, depth, trials: results.len(), correct, accuracy: correct as f64 / results.len() as f64 }
}

/// Scores each prompt by greedy generation of up to 8 tokens: correct when the output
/// contains the key.
pub fn passkey_by_generation<M: CausalLm>(model: &M, opts: &PasskeyOptions) -> Result<PasskeyReport> {
    let gen_opts = GenerateOptions { max_tokens: 8, ignore_eos: false, ..Default::default() };
    let cancel = AtomicBool::new(false);
    let mut cells = Vec::new();
    for (length, depth, prompts) in all_prompts(model.tokenizer(), opts)? {
        let mut results = Vec::new();
        for p in &prompts {
            if model.max_tokens().is_some_and(|m| p.tokens.len() >= m) {
                return Err(Error::new(
                    ErrorCode::ContextOverflow,
                    format!("a passkey prompt of {length} tokens does not fit the model's context; drop that length"),
                ));
            }
            let out = generate(model, &p.tokens, &gen_opts, &cancel, &mut |_, _| {})?;
            results.push(out.text.contains(&p.key));
        }
        cells.push(cell(length, depth, &results));
    }
    Ok(report("generation", cells))
}

/// Scores each prompt by the log-likelihood of " {key}": correct when greedy decoding would
/// produce every token of it.
pub fn passkey_by_loglikelihood(
    model: &dyn ScoreModel,
    opts: &PasskeyOptions,
    eval: &EvalOptions,
) -> Result<PasskeyReport> {
    let grid = all_prompts(model.tokenizer(), opts)?;
    let requests: Vec<LoglikRequest> = grid
        .iter()
        .flat_map(|(_, _, ps)| ps.iter().map(|p| LoglikRequest::new(p.text.clone(), format!(" {}", p.key))))
        .collect();
    let (results, _) = loglikelihood(model, &requests, eval, None)?;
    let mut at = 0;
    let cells = grid
        .iter()
        .map(|(length, depth, ps)| {
            let greedy: Vec<bool> = results[at..at + ps.len()].iter().map(|r| r.is_greedy).collect();
            at += ps.len();
            cell(*length, *depth, &greedy)
        })
        .collect();
    Ok(report("loglikelihood", cells))
}
