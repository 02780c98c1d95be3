//! Building a `tokenizers::Tokenizer` from the vocabulary a GGUF file carries
//! (`tokenizer.ggml.*`), choosing the pre-tokenizer the way llama.cpp does.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, ErrorCode, Result};

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp defines them.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The tokenizer description a GGUF file carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BpeVocab {
    /// "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// The pre-tokenizer name (`tokenizer.ggml.pre`); `None` means "default".
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One of the `TOKEN_TYPE_*` values per token; empty means all normal.
    pub token_types: Vec<i32>,
    /// "left right" pairs, highest priority first (byte-level BPE only).
    pub merges: Vec<String>,
    /// Per-token scores (SentencePiece only; higher merges first).
    pub scores: Vec<f32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// Split regex of Llama 3 (`pre = llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split regex of Qwen2 (`pre = qwen2`): like Llama 3 but digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the rest of the library needs besides the `tokenizers` object.
pub(crate) struct BuiltVocab {
    pub tokenizer: tokenizers::Tokenizer,
    /// Token types after validation, one per id.
    pub token_types: Vec<i32>,
}

fn token_type(v: &BpeVocab, id: usize) -> i32 {
    v.token_types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL)
}

fn check_id(v: &BpeVocab, id: Option<u32>, what: &str) -> Result<()> {
    match id {
        Some(id) if id as usize >= v.tokens.len() => Err(Error::new(
            ErrorCode::InvalidFile,
            format!("the tokenizer's {what} id {id} is out of range (the vocabulary has {} tokens)", v.tokens.len()),
        )),
        _ => Ok(()),
    }
}

/// The pre-tokenizer llama.cpp uses for a byte-level BPE vocabulary with this `pre` name.
fn byte_level_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::internal(format!("split regex does not compile: {e}")))?;
        Ok(PreTokenizerWrapper::Split(split))
    };
    // The bool says whether words found whole in the vocabulary skip the merges.
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
        // These split every digit apart before the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => {
            (PreTokenizerWrapper::Sequence(PreSequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)])), true)
        }
        "qwen2" | "deepseek-r1-qwen" => {
            (PreTokenizerWrapper::Sequence(PreSequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)])), false)
        }
        other => {
            return Err(Error::new(
                ErrorCode::UnsupportedArchitecture,
                format!(
                    "the tokenizer pre-tokenizer '{other}' is not supported (supported: default, gpt2, \
                     smollm, starcoder, refact, command-r, codeshell, exaone, minerva, llama-bpe, qwen2)"
                ),
            ))
        }
    })
}

/// The token -> id map; when a string occurs twice the later id wins, as in llama.cpp.
fn vocab_map(v: &BpeVocab) -> Vocab {
    v.tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect()
}

/// Byte-level BPE ("gpt2" in GGUF).
fn build_byte_level(v: &BpeVocab) -> Result<tokenizers::Tokenizer> {
    let pre = v.pre.as_deref().unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = byte_level_pre_tokenizer(pre)?;
    let mut merges = Vec::with_capacity(v.merges.len());
    for (line, merge) in v.merges.iter().enumerate() {
        // Split at the first space after the first character, as llama.cpp does.
        let split = merge.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
        match split {
            Some(i) => merges.push((merge[..i].to_string(), merge[i + 1..].to_string())),
            None => {
                return Err(Error::new(
                    ErrorCode::InvalidFile,
                    format!("tokenizer merge #{line} ({merge:?}) is not two tokens separated by a space"),
                ))
            }
        }
    }
    let model =
        BPE::builder().vocab_and_merges(vocab_map(v), merges).ignore_merges(ignore_merges).build().map_err(|e| {
            Error::new(ErrorCode::InvalidFile, format!("the tokenizer's BPE tables are inconsistent: {e}"))
        })?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    Ok(tokenizer)
}

/// SentencePiece BPE ("llama" in GGUF): merges are derived from the scores. Two pieces
/// merge when their concatenation is in the vocabulary; higher-scored results merge first.
fn build_sentencepiece(v: &BpeVocab) -> Result<tokenizers::Tokenizer> {
    if v.scores.len() != v.tokens.len() {
        return Err(Error::new(
            ErrorCode::InvalidFile,
            format!(
                "the SentencePiece tokenizer has {} scores for {} tokens; each token needs a score",
                v.scores.len(),
                v.tokens.len()
            ),
        ));
    }
    let vocab = vocab_map(v);
    let mergeable = |id: usize| matches!(token_type(v, id), TOKEN_TYPE_NORMAL | TOKEN_TYPE_USER_DEFINED);
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, token) in v.tokens.iter().enumerate() {
        if !mergeable(id) || token.chars().count() < 2 {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = (&token[..split], &token[split..]);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if mergeable(l as usize) && mergeable(r as usize) {
                    ranked.push((v.scores[id], id as u32, l, r));
                }
            }
        }
    }
    // Highest score first; ties by id, so the order is deterministic.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    let merges =
        ranked.iter().map(|&(_, _, l, r)| (v.tokens[l as usize].clone(), v.tokens[r as usize].clone())).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = v.unk_id {
        builder = builder.unk_token(v.tokens[unk as usize].clone());
    }
    let model = builder.build().map_err(|e| {
        Error::new(ErrorCode::InvalidFile, format!("the tokenizer's SentencePiece tables are inconsistent: {e}"))
    })?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let replace = Replace::new(" ", "\u{2581}").map_err(|e| Error::internal(e.to_string()))?;
    tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
        NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())),
        NormalizerWrapper::Replace(replace),
    ]))));
    let un_replace = tokenizers::decoders::DecoderWrapper::Replace(
        Replace::new("\u{2581}", " ").map_err(|e| Error::internal(e.to_string()))?,
    );
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        un_replace,
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]))));
    Ok(tokenizer)
}

/// Turns a GGUF vocabulary into a `tokenizers` tokenizer with the same behaviour as llama.cpp.
pub(crate) fn build(v: &BpeVocab) -> Result<BuiltVocab> {
    if v.tokens.is_empty() {
        return Err(Error::new(ErrorCode::MissingTokenizer, "the tokenizer vocabulary is empty"));
    }
    if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
        return Err(Error::new(
            ErrorCode::InvalidFile,
            format!("the tokenizer has {} token types for {} tokens", v.token_types.len(), v.tokens.len()),
        ));
    }
    for (id, what) in [(v.bos_id, "BOS"), (v.eos_id, "EOS"), (v.unk_id, "unknown-token"), (v.pad_id, "padding")] {
        check_id(v, id, what)?;
    }
    if v.add_bos && v.bos_id.is_none() {
        return Err(Error::new(ErrorCode::InvalidFile, "the tokenizer asks for a BOS token but names none"));
    }
    let mut tokenizer = match v.model.as_str() {
        "gpt2" => build_byte_level(v)?,
        "llama" => build_sentencepiece(v)?,
        other => {
            return Err(Error::new(
                ErrorCode::UnsupportedArchitecture,
                format!(
                    "tokenizer model '{other}' is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
                ),
            ))
        }
    };
    let token_types: Vec<i32> = (0..v.tokens.len()).map(|id| token_type(v, id)).collect();
    // Control tokens are special (matched in text only on request); user-defined tokens are
    // always matched whole, like llama.cpp does.
    let added: Vec<AddedToken> = token_types
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, &t)| AddedToken::from(v.tokens[id].clone(), t == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    tokenizer.add_tokens(&added);
    if v.add_bos || v.add_eos {
        // So that a tokenizer.json written from this adds BOS/EOS in transformers too.
        let mut template = String::new();
        let mut specials = Vec::new();
        if let (true, Some(bos)) = (v.add_bos, v.bos_id) {
            template.push_str(&v.tokens[bos as usize]);
            template.push(' ');
            specials.push((v.tokens[bos as usize].clone(), bos));
        }
        template.push_str("$A");
        if let (true, Some(eos)) = (v.add_eos, v.eos_id) {
            template.push(' ');
            template.push_str(&v.tokens[eos as usize]);
            specials.push((v.tokens[eos as usize].clone(), eos));
        }
        let processor = TemplateProcessing::builder()
            .try_single(template.as_str())
            .map_err(|e| Error::internal(format!("BOS/EOS template: {e}")))?
            .special_tokens(specials)
            .build()
            .map_err(|e| Error::internal(format!("BOS/EOS template: {e}")))?;
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(BuiltVocab { tokenizer, token_types })
}

/// Reads the `tokenizer.ggml.*` keys of a GGUF file.
pub(crate) fn read_gguf_vocab(file: &crate::gguf::GgufFile) -> Result<BpeVocab> {
    use crate::gguf::GgufValue;
    let missing = |what: &str| {
        Error::new(
            ErrorCode::MissingTokenizer,
            format!("{}: the file has no tokenizer ({what} is missing); load a tokenizer.json instead", file.name()),
        )
    };
    if file.get("tokenizer.ggml.tokens").is_none() {
        return Err(missing("tokenizer.ggml.tokens"));
    }
    let model = match file.get("tokenizer.ggml.model") {
        Some(_) => file.get_str("tokenizer.ggml.model")?.to_string(),
        None => return Err(missing("tokenizer.ggml.model")),
    };
    if model == "none" || model == "no_vocab" {
        return Err(missing("the vocabulary"));
    }
    let opt_id = |key: &str| -> Result<Option<u32>> {
        if file.get(key).is_none() {
            return Ok(None);
        }
        let id = file.get_u64(key)?;
        u32::try_from(id)
            .map(Some)
            .map_err(|_| Error::invalid_file(file.name(), format!("metadata key `{key}` = {id} is not a token id")))
    };
    let opt_bool = |key: &str, default: bool| -> Result<bool> {
        if file.get(key).is_none() {
            Ok(default)
        } else {
            file.get_bool(key)
        }
    };
    let tokens: Vec<String> = file.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(_) => file
            .get_i64_array("tokenizer.ggml.token_type")?
            .into_iter()
            .map(|t| {
                i32::try_from(t)
                    .map_err(|_| Error::invalid_file(file.name(), format!("token type {t} is out of range")))
            })
            .collect::<Result<_>>()?,
    };
    let merges = match file.get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(_) => file.get_str_array("tokenizer.ggml.merges")?.into_iter().map(String::from).collect(),
    };
    let scores = match file.get("tokenizer.ggml.scores") {
        None => Vec::new(),
        Some(GgufValue::Array(values)) => values
            .iter()
            .map(|v| match v {
                GgufValue::F32(s) => Ok(*s),
                GgufValue::F64(s) => Ok(*s as f32),
                other => Err(Error::invalid_file(
                    file.name(),
                    format!("metadata key `tokenizer.ggml.scores` should hold floats, found {}", other.type_name()),
                )),
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(Error::invalid_file(
                file.name(),
                format!("metadata key `tokenizer.ggml.scores` should be an array, found {}", other.type_name()),
            ))
        }
    };
    let pre = match file.get("tokenizer.ggml.pre") {
        None => None,
        Some(_) => Some(file.get_str("tokenizer.ggml.pre")?.to_string()),
    };
    // llama.cpp's defaults when the file does not say: SentencePiece and Llama 3 start with BOS.
    let bos_by_default = model == "llama" || matches!(pre.as_deref(), Some("llama-bpe" | "llama3" | "llama-v3"));
    let bos_id = opt_id("tokenizer.ggml.bos_token_id")?;
    let v = BpeVocab {
        pre,
        tokens,
        token_types,
        merges,
        scores,
        bos_id,
        eos_id: opt_id("tokenizer.ggml.eos_token_id")?,
        unk_id: opt_id("tokenizer.ggml.unknown_token_id")?,
        pad_id: opt_id("tokenizer.ggml.padding_token_id")?,
        add_bos: opt_bool("tokenizer.ggml.add_bos_token", bos_by_default && bos_id.is_some())?,
        add_eos: opt_bool("tokenizer.ggml.add_eos_token", false)?,
        model,
    };
    Ok(v)
}
