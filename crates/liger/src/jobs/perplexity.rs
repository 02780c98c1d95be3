//! Rolling perplexity of one text or text file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use liger_core::eval::perplexity::{rolling_perplexity, ScoredText};
use liger_core::eval::PerplexityResult;
use liger_core::{Error, Result};

use super::{throttled_progress, Cancellable, OnEvalEvent};
use crate::Model;

/// The text to score.
#[derive(Clone, Debug, PartialEq)]
pub enum TextSource {
    Text(String),
    File(PathBuf),
}

impl TextSource {
    /// Exactly one of a text and a file.
    pub fn from_parts(text: Option<String>, file: Option<PathBuf>) -> Result<TextSource> {
        match (text, file) {
            (Some(text), None) => Ok(TextSource::Text(text)),
            (None, Some(file)) => Ok(TextSource::File(file)),
            _ => Err(Error::invalid_argument("give either a text or a file to score, not both")),
        }
    }

    fn read(&self) -> Result<String> {
        match self {
            TextSource::Text(text) => Ok(text.clone()),
            TextSource::File(file) => std::fs::read_to_string(file).map_err(|e| Error::io(file.display(), e)),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerplexityOptions {
    /// Tokens predicted per window. None: the base model's context, so that a base model and
    /// its Liger version are scored on the same windows and their numbers compare.
    pub window: Option<usize>,
}

/// The rolling perplexity of `source` under `model`, on the CPU.
pub fn perplexity(
    model: &Model,
    source: &TextSource,
    options: &PerplexityOptions,
    cancel: &AtomicBool,
    on_event: OnEvalEvent,
) -> Result<PerplexityResult> {
    let text = source.read()?;
    let window = options.window.unwrap_or(model.base().config.max_position_embeddings);
    let scorer = Cancellable { model: model.scorer(), cancel };
    let progress = throttled_progress(on_event, "perplexity");
    rolling_perplexity(&scorer, &[ScoredText::plain(text)], window, Some(&progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    #[test]
    fn exactly_one_source() {
        assert_eq!(TextSource::from_parts(Some("a".into()), None).unwrap(), TextSource::Text("a".into()));
        assert_eq!(TextSource::from_parts(None, Some("f".into())).unwrap(), TextSource::File("f".into()));
        for (text, file) in [(None, None), (Some("a".to_string()), Some(PathBuf::from("f")))] {
            let err = TextSource::from_parts(text, file).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert_eq!(err.message, "give either a text or a file to score, not both");
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let source = TextSource::File("no/such/file.txt".into());
        assert_eq!(source.read().unwrap_err().code, ErrorCode::Io);
        assert_eq!(PerplexityOptions::default().window, None);
    }
}
