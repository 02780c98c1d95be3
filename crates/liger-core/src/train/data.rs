//! Training data: instruction records (Alpaca) or plain text, rendered to tokens with the
//! prompt masked out of the loss, then packed into fixed-length sequences.

use crate::error::{Error, ErrorCode, Result};
use crate::nn::loss::IGNORE;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One training example before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// An instruction, an optional input and the response (the Alpaca format).
    Instruction { instruction: String, input: String, output: String },
    /// Plain text: every token counts in the loss.
    Text(String),
}

/// How an instruction record becomes a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// The Stanford Alpaca template (what the Liger paper trains with).
    Alpaca,
    /// The model's chat template: the instruction (and input) as the user's turn.
    Chat,
}

/// What to do with a row that is not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    Fail,
    Skip,
}

/// Records read from files, and how many rows were skipped as malformed.
#[derive(Debug, Default)]
pub struct Dataset {
    pub records: Vec<Record>,
    pub skipped: usize,
}

/// Reads `.json` (an array of records), `.jsonl` (one record per line) and plain-text
/// (`.txt`, `.raw`: the whole file is one text record) files, or every such file in a
/// directory (in natural order of their names, so `x_2` comes before `x_10`).
pub fn read_dataset(path: &Path, bad_rows: BadRows) -> Result<Dataset> {
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path.display(), e))?;
        for e in entries {
            let p = e.map_err(|e| Error::io(path.display(), e))?.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("json") | Some("jsonl")) || is_plain_text(&p) {
                files.push(p);
            }
        }
        files.sort_by_key(|p| natural_key(p));
        if files.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{}: no .json, .jsonl, .txt or .raw files in this directory",
                path.display()
            )));
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Dataset::default();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f.display(), e))?;
        if is_plain_text(f) {
            // A plain-text corpus (e.g. WikiText's .raw files): the whole file is one text.
            if !text.trim().is_empty() {
                out.records.push(Record::Text(text));
            }
        } else {
            parse_records(&text, f, bad_rows, &mut out)?;
        }
    }
    if out.records.is_empty() {
        return Err(Error::invalid_argument(format!("{}: no usable records", path.display())));
    }
    Ok(out)
}

fn is_plain_text(p: &Path) -> bool {
    matches!(p.extension().and_then(|x| x.to_str()), Some("txt") | Some("raw"))
}

fn natural_key(p: &Path) -> (String, u64) {
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let digits: String =
        stem.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
    (stem[..stem.len() - digits.len()].to_string(), digits.parse().unwrap_or(0))
}

/// Parses records from the text of one file (JSON array or JSON lines).
pub fn parse_records(text: &str, file: &Path, bad_rows: BadRows, out: &mut Dataset) -> Result<()> {
    let name = file.display();
    let trimmed = text.trim_start();
    let rows: Vec<(usize, std::result::Result<serde_json::Value, String>)> = if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| Error::new(ErrorCode::InvalidFile, format!("{name}: not a valid JSON array: {e}")))?;
        values.into_iter().enumerate().map(|(i, v)| (i + 1, Ok(v))).collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| e.to_string())))
            .collect()
    };
    for (row, value) in rows {
        match value.and_then(|v| record_from_json(&v)) {
            Ok(r) => out.records.push(r),
            Err(why) => match bad_rows {
                BadRows::Skip => out.skipped += 1,
                BadRows::Fail => {
                    return Err(Error::new(
                        ErrorCode::InvalidFile,
                        format!("{name}: row {row}: {why} (pass the option to skip malformed rows to ignore it)"),
                    ))
                }
            },
        }
    }
    Ok(())
}

fn record_from_json(v: &serde_json::Value) -> std::result::Result<Record, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let field = |k: &str| -> std::result::Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field \"{k}\" must be a string")),
        }
    };
    if let Some(instruction) = field("instruction")? {
        let output = field("output")?.ok_or("an instruction record needs an \"output\" field")?;
        return Ok(Record::Instruction { instruction, input: field("input")?.unwrap_or_default(), output });
    }
    if let Some(text) = field("text")? {
        return Ok(Record::Text(text));
    }
    Err("expected {instruction, input, output} or {text}".into())
}

/// The Stanford Alpaca prompt for an instruction and optional input.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// A tokenized example: `tokens`, and for each token whether it is trained on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub trained: Vec<bool>,
}

/// Tokenizes a record. `render_prompt` builds the prompt text of an instruction record;
/// `encode(text, at_start)` tokenizes (adding BOS when `at_start` and the model wants one).
/// The response and the appended `eos` are trained on; the prompt is not.
pub fn tokenize_record(
    record: &Record,
    render_prompt: &dyn Fn(&str, &str) -> Result<String>,
    encode: &dyn Fn(&str, bool) -> Result<Vec<u32>>,
    eos: u32,
) -> Result<Example> {
    let mut ex = Example::default();
    match record {
        Record::Instruction { instruction, input, output } => {
            let prompt = encode(&render_prompt(instruction, input)?, true)?;
            ex.trained.extend(std::iter::repeat_n(false, prompt.len()));
            ex.tokens.extend(prompt);
            let response = encode(output, false)?;
            ex.trained.extend(std::iter::repeat_n(true, response.len()));
            ex.tokens.extend(response);
        }
        Record::Text(text) => {
            let t = encode(text, true)?;
            ex.trained.extend(std::iter::repeat_n(true, t.len()));
            ex.tokens.extend(t);
        }
    }
    ex.tokens.push(eos);
    ex.trained.push(true);
    Ok(ex)
}

/// A packed training sequence: `inputs[i]` predicts `labels[i]` (`IGNORE` = not counted).
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub inputs: Vec<u32>,
    pub labels: Vec<u32>,
}

/// Concatenates examples and cuts the stream into sequences of `seq_len` inputs. A label is
/// the next token of the stream, counted only if that token is trained on. The tail that does
/// not fill a sequence is dropped. Sequences that would have no counted label are dropped.
pub fn pack(examples: &[Example], seq_len: usize) -> Vec<Sequence> {
    assert!(seq_len > 0);
    let tokens: Vec<u32> = examples.iter().flat_map(|e| e.tokens.iter().copied()).collect();
    let trained: Vec<bool> = examples.iter().flat_map(|e| e.trained.iter().copied()).collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start + seq_len < tokens.len() {
        let inputs = tokens[start..start + seq_len].to_vec();
        let labels: Vec<u32> =
            (start + 1..=start + seq_len).map(|j| if trained[j] { tokens[j] } else { IGNORE }).collect();
        if labels.iter().any(|&l| l != IGNORE) {
            out.push(Sequence { inputs, labels });
        }
        start += seq_len;
    }
    out
}

/// Splits records into (train, validation), holding out `fraction` of them chosen by `seed`.
pub fn split_validation(records: Vec<Record>, fraction: f64, seed: u64) -> Result<(Vec<Record>, Vec<Record>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::invalid_argument(format!("the validation fraction must be in [0, 1), got {fraction}")));
    }
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_val = (records.len() as f64 * fraction).round() as usize;
    let mut is_val = vec![false; records.len()];
    order[..n_val].iter().for_each(|&i| is_val[i] = true);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (r, v) in records.into_iter().zip(is_val) {
        if v {
            val.push(r)
        } else {
            train.push(r)
        }
    }
    Ok((train, val))
}

#[cfg(test)]
mod tests;
