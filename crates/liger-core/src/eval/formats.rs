//! Readers of each task's original file format, producing the prompts lm-evaluation-harness
//! builds from them. Every error names the file and the row.

use super::loglik::LoglikRequest;
use crate::error::{Error, Result};
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// One multiple-choice item: one request per choice, the gold index, and the character length
/// of each choice's text (lm-eval's `acc_norm` divides log-likelihoods by it).
#[derive(Clone, Debug, PartialEq)]
pub struct McDoc {
    pub requests: Vec<LoglikRequest>,
    pub choice_lengths: Vec<usize>,
    pub gold: usize,
}

impl McDoc {
    /// The common case: one context, continuations `" " + choice` (lm-eval's target delimiter).
    fn shared_context(context: String, choices: &[String], gold: usize) -> McDoc {
        McDoc {
            requests: choices.iter().map(|c| LoglikRequest::new(context.clone(), format!(" {c}"))).collect(),
            choice_lengths: choices.iter().map(|c| c.chars().count()).collect(),
            gold,
        }
    }
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    if path.extension().is_some_and(|e| e == "bz2") {
        let mut text = String::new();
        bzip2::read::BzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .map_err(|e| Error::invalid_file(path.display(), format!("not valid bzip2-compressed UTF-8 text: {e}")))?;
        return Ok(text);
    }
    String::from_utf8(bytes).map_err(|e| Error::invalid_file(path.display(), format!("not UTF-8 text: {e}")))
}

/// Parses a jsonl file: one JSON object per non-blank line, given with its 1-based row number.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::invalid_file(path.display(), format!("row {}: not valid JSON ({e})", i + 1)))?;
        rows.push((i + 1, value));
    }
    if rows.is_empty() {
        return Err(Error::invalid_file(path.display(), "no rows; expected one JSON object per line"));
    }
    Ok(rows)
}

fn row_error(path: &Path, row: usize, what: impl std::fmt::Display) -> Error {
    Error::invalid_file(path.display(), format!("row {row}: {what}"))
}

/// A string field of a JSON object (`a.b` walks into nested objects).
fn str_field<'a>(path: &Path, row: usize, value: &'a Value, field: &str) -> Result<&'a str> {
    let mut v = value;
    for part in field.split('.') {
        v = v.get(part).ok_or_else(|| row_error(path, row, format!("missing field \"{field}\"")))?;
    }
    v.as_str().ok_or_else(|| row_error(path, row, format!("field \"{field}\" is not a string")))
}

/// A label given as a number or a numeric string.
fn int_field(path: &Path, row: usize, value: &Value, field: &str) -> Result<usize> {
    let v = value.get(field).ok_or_else(|| row_error(path, row, format!("missing field \"{field}\"")))?;
    v.as_u64()
        .map(|n| n as usize)
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| row_error(path, row, format!("field \"{field}\" is not a non-negative integer")))
}

fn check_gold(path: &Path, row: usize, gold: usize, n: usize) -> Result<usize> {
    if gold >= n {
        return Err(row_error(path, row, format!("gold answer {gold} is out of range for {n} choices")));
    }
    Ok(gold)
}

/// ARC (AI2 jsonl): "Question: {stem}\nAnswer:" + " {choice}"; the gold is the index of
/// `answerKey` among the choice labels (A-E or 1-5).
pub fn arc(path: &Path) -> Result<Vec<McDoc>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(row, v)| {
            let stem = str_field(path, row, &v, "question.stem")?;
            let choices = v
                .pointer("/question/choices")
                .and_then(Value::as_array)
                .ok_or_else(|| row_error(path, row, "missing array \"question.choices\""))?;
            let mut labels = Vec::new();
            let mut texts = Vec::new();
            for c in choices {
                labels.push(str_field(path, row, c, "label")?.to_string());
                texts.push(str_field(path, row, c, "text")?.to_string());
            }
            let key = str_field(path, row, &v, "answerKey")?;
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                row_error(path, row, format!("answerKey {key:?} is not one of the labels {labels:?}"))
            })?;
            Ok(McDoc::shared_context(format!("Question: {stem}\nAnswer:"), &texts, gold))
        })
        .collect()
}

/// PIQA: `valid.jsonl` {goal, sol1, sol2} with the labels (0/1, one per line) in the
/// `<stem>-labels.lst` file next to it. "Question: {goal}\nAnswer:" + " {sol}".
pub fn piqa(path: &Path) -> Result<Vec<McDoc>> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let labels_path = path.with_file_name(format!("{stem}-labels.lst"));
    let labels_text = read_text(&labels_path)?;
    let labels: Vec<&str> = labels_text.lines().filter(|l| !l.trim().is_empty()).collect();
    let rows = read_jsonl(path)?;
    if labels.len() != rows.len() {
        return Err(Error::invalid_file(
            labels_path.display(),
            format!(
                "{} labels for the {} rows of {}; the two files must match",
                labels.len(),
                rows.len(),
                path.display()
            ),
        ));
    }
    rows.into_iter()
        .zip(labels)
        .enumerate()
        .map(|(i, ((row, v), label))| {
            let gold: usize = label
                .trim()
                .parse()
                .map_err(|_| row_error(&labels_path, i + 1, format!("label {label:?} is not 0 or 1")))?;
            let gold = check_gold(&labels_path, i + 1, gold, 2)?;
            let goal = str_field(path, row, &v, "goal")?;
            let sols = [str_field(path, row, &v, "sol1")?.to_string(), str_field(path, row, &v, "sol2")?.to_string()];
            Ok(McDoc::shared_context(format!("Question: {goal}\nAnswer:"), &sols, gold))
        })
        .collect()
}

/// lm-eval's HellaSwag text cleanup: strip, " [title]" -> ". ", drop every "[...]" tag (not
/// across lines), then replace double spaces once.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn python_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// HellaSwag, the original jsonl (activity_label, ctx_a, ctx_b, endings, label):
/// query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
/// choices " " + preprocess(ending).
pub fn hellaswag_jsonl(path: &Path) -> Result<Vec<McDoc>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(row, v)| {
            let label = str_field(path, row, &v, "activity_label")?;
            let ctx_a = str_field(path, row, &v, "ctx_a")?;
            let ctx_b = str_field(path, row, &v, "ctx_b")?;
            let endings = v
                .get("endings")
                .and_then(Value::as_array)
                .ok_or_else(|| row_error(path, row, "missing array \"endings\""))?
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(hellaswag_preprocess)
                        .ok_or_else(|| row_error(path, row, "an ending is not a string"))
                })
                .collect::<Result<Vec<_>>>()?;
            let gold = check_gold(path, row, int_field(path, row, &v, "label")?, endings.len())?;
            let query = hellaswag_preprocess(&format!("{label}: {ctx_a} {}", python_capitalize(ctx_b)));
            Ok(McDoc::shared_context(query, &endings, gold))
        })
        .collect()
}

/// HellaSwag in the 6-lines-per-item text format (context, gold index, four endings), plain
/// or `.bz2`. Its contexts were built from the raw `ctx`, so the capitalization of `ctx_b`
/// differs from lm-eval's; the preprocessing is applied again to drop any remaining tags.
pub fn hellaswag_text(path: &Path) -> Result<Vec<McDoc>> {
    let text = read_text(path)?;
    let lines: Vec<&str> = text.lines().collect();
    let n_lines = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |p| p + 1);
    if n_lines == 0 || !n_lines.is_multiple_of(6) {
        return Err(Error::invalid_file(path.display(), format!("{n_lines} lines; expected 6 lines per item")));
    }
    lines[..n_lines]
        .chunks(6)
        .enumerate()
        .map(|(i, item)| {
            let row = i * 6 + 2;
            let gold: usize = item[1].trim().parse().map_err(|_| {
                Error::invalid_file(path.display(), format!("line {row}: gold label {:?} is not 0-3", item[1]))
            })?;
            let gold = check_gold(path, row, gold, 4).map_err(|e| e.context(format!("item {}", i + 1)))?;
            let endings: Vec<String> = item[2..].iter().map(|e| hellaswag_preprocess(e)).collect();
            Ok(McDoc::shared_context(hellaswag_preprocess(item[0]), &endings, gold))
        })
        .collect()
}

/// WinoGrande (dev.jsonl {sentence, option1, option2, answer}), lm-eval's partial scoring:
/// context = sentence before "_" + option, continuation = " " + the rest after "_", stripped.
pub fn winogrande(path: &Path) -> Result<Vec<McDoc>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(row, v)| {
            let sentence = str_field(path, row, &v, "sentence")?;
            let blank = sentence.find('_').ok_or_else(|| row_error(path, row, "the sentence has no \"_\" blank"))?;
            let options = [str_field(path, row, &v, "option1")?, str_field(path, row, &v, "option2")?];
            let answer = str_field(path, row, &v, "answer")?;
            let gold = match answer.trim() {
                "1" => 0,
                "2" => 1,
                other => return Err(row_error(path, row, format!("answer {other:?} is not \"1\" or \"2\""))),
            };
            let target = format!(" {}", sentence[blank + 1..].trim());
            Ok(McDoc {
                requests: options
                    .iter()
                    .map(|o| LoglikRequest::new(format!("{}{o}", &sentence[..blank]), target.clone()))
                    .collect(),
                choice_lengths: vec![target.chars().count() - 1; 2],
                gold,
            })
        })
        .collect()
}

/// LAMBADA (OpenAI jsonl {"text"}): context = text before the last space, target = " " + last word.
pub fn lambada(path: &Path) -> Result<Vec<LoglikRequest>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(row, v)| {
            let text = str_field(path, row, &v, "text")?;
            // Like Python's `text.split(' ')`: with no space the whole text is the target.
            Ok(match text.rfind(' ') {
                Some(cut) => LoglikRequest::new(&text[..cut], format!(" {}", &text[cut + 1..])),
                None => LoglikRequest::new("", format!(" {text}")),
            })
        })
        .collect()
}

/// Parses CSV (RFC 4180: quoted fields may hold commas, quotes as "" and newlines).
pub fn parse_csv(text: &str, path: &Path) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let (mut in_quotes, mut line) = (false, 1usize);
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (true, c) => {
                line += (c == '\n') as usize;
                field.push(c);
            }
            (false, '"') if field.is_empty() => in_quotes = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    if in_quotes {
        return Err(Error::invalid_file(path.display(), format!("line {line}: a quoted field is never closed")));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// One MMLU question: question, four options, answer letter.
#[derive(Clone, Debug, PartialEq)]
pub struct MmluQuestion {
    pub question: String,
    pub options: [String; 4],
    pub answer: usize,
}

/// Reads `<subject>_<split>.csv` (no header; question, A, B, C, D, answer letter).
pub fn mmlu_csv(path: &Path) -> Result<Vec<MmluQuestion>> {
    let rows = parse_csv(&read_text(path)?, path)?;
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.len() != 6 {
                return Err(row_error(
                    path,
                    i + 1,
                    format!("{} fields; expected question, A, B, C, D, answer", r.len()),
                ));
            }
            let answer = ["A", "B", "C", "D"]
                .iter()
                .position(|l| *l == r[5].trim())
                .ok_or_else(|| row_error(path, i + 1, format!("answer {:?} is not A, B, C or D", r[5])))?;
            Ok(MmluQuestion {
                question: r[0].clone(),
                options: [r[1].clone(), r[2].clone(), r[3].clone(), r[4].clone()],
                answer,
            })
        })
        .collect()
}

/// lm-eval's MMLU question text (`question.strip()`, options, "Answer:").
fn mmlu_question_text(q: &MmluQuestion) -> String {
    let o = &q.options;
    format!("{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:", q.question.trim(), o[0], o[1], o[2], o[3])
}

/// The 5-shot MMLU prompt: description, the first five dev questions with their answers
/// (separated by blank lines), then the question; choices " A".." D".
pub fn mmlu_doc(subject: &str, dev: &[MmluQuestion], q: &MmluQuestion) -> McDoc {
    let mut context =
        format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "));
    for ex in dev.iter().take(5) {
        context.push_str(&mmlu_question_text(ex));
        context.push(' ');
        context.push_str(["A", "B", "C", "D"][ex.answer]);
        context.push_str("\n\n");
    }
    context.push_str(&mmlu_question_text(q));
    let letters: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
    McDoc::shared_context(context, &letters, q.answer)
}
