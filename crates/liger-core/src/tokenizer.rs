//! Text <-> token ids, with the same results as llama.cpp on the same GGUF file.
//!
//! The `tokenizers` crate does the splitting and merging; this module builds it from a GGUF
//! vocabulary or a `tokenizer.json`, and decodes token ids to raw bytes itself so that
//! streaming output can hold back incomplete UTF-8.

mod vocab;

use std::path::Path;
use std::sync::OnceLock;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::processors::PostProcessorWrapper;

use crate::error::{Error, ErrorCode, Result};
pub use vocab::{
    BpeVocab, TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_UNUSED,
    TOKEN_TYPE_USER_DEFINED,
};

/// How token strings map back to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoding {
    /// GPT-2 byte-level: each char of a token stands for one byte.
    ByteLevel,
    /// SentencePiece: U+2581 is a space, `<0xAB>` is a raw byte, the first leading space is
    /// dropped from the decoded text.
    SentencePiece,
    /// Anything else: each token is decoded on its own by the `tokenizers` decoder.
    Other,
}

/// A tokenizer: encodes text to token ids and decodes ids back to text.
#[derive(Clone)]
pub struct Tokenizer {
    /// Finds special tokens written in the text.
    parsing_special: tokenizers::Tokenizer,
    /// Treats special tokens written in the text as plain text.
    plain: tokenizers::Tokenizer,
    /// Token string per id ("" for ids the vocabulary leaves unused).
    tokens: Vec<String>,
    /// Per id: an added token (special or user-defined), stored as its literal text.
    added: Vec<bool>,
    /// Per id: a special (control) token.
    special: Vec<bool>,
    decoding: Decoding,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("decoding", &self.decoding)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tokenizers_error(what: &str, e: tokenizers::Error) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// GPT-2's byte <-> char table: printable bytes stand for themselves, the others are moved
/// to U+0100 and up so every byte has a visible char.
fn byte_level_chars() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut table = ['\0'; 256];
        let mut next_moved = 256u32;
        for b in 0..=255u8 {
            table[b as usize] = if printable(b) {
                b as char
            } else {
                let c = char::from_u32(next_moved).expect("U+0100..U+0143 are valid chars");
                next_moved += 1;
                c
            };
        }
        table
    })
}

/// The byte a byte-level char stands for.
fn byte_level_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 256 && byte_level_chars()[code as usize] == c {
        return Some(code as u8);
    }
    byte_level_chars().iter().position(|&t| t == c).map(|b| b as u8)
}

/// `<0xAB>` -> 0xAB (SentencePiece byte-fallback tokens).
fn sentencepiece_byte(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn decoding_of(decoder: Option<&DecoderWrapper>) -> Decoding {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => Decoding::ByteLevel,
        Some(DecoderWrapper::Sequence(seq)) => {
            let parts = seq.get_decoders();
            let has_byte_fallback = parts.iter().any(|d| matches!(d, DecoderWrapper::ByteFallback(_)));
            let has_replace = parts.iter().any(|d| matches!(d, DecoderWrapper::Replace(_)));
            if has_byte_fallback && has_replace {
                Decoding::SentencePiece
            } else if parts.iter().any(|d| matches!(d, DecoderWrapper::ByteLevel(_))) {
                Decoding::ByteLevel
            } else {
                Decoding::Other
            }
        }
        _ => Decoding::Other,
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_bpe_vocab(v: &BpeVocab) -> Result<Self> {
        let built = vocab::build(v)?;
        let decoding = decoding_of(built.tokenizer.get_decoder());
        let added =
            built.token_types.iter().map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED).collect();
        let special = built.token_types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        Ok(Self::assemble(built.tokenizer, v.tokens.clone(), added, special, decoding, v.bos_id, v.eos_id, v.add_bos))
    }

    /// Reads the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Self> {
        let v = vocab::read_gguf_vocab(file)?;
        Self::from_bpe_vocab(&v).map_err(|e| e.context(file.name()))
    }

    /// Parses a Hugging Face `tokenizer.json`; `source` names it in error messages.
    pub fn from_json(json: &[u8], source: &str) -> Result<Self> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::invalid_file(source, format!("not a tokenizer.json this library can read: {e}"))
        };
        // Parsed to a JSON value first: the tokenizers crate panics (instead of returning an
        // error) when its streaming parser hits the nesting limit inside some sections; from
        // an already parsed value it has no such limit and reports every malformed section.
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| unreadable(&e))?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(value).map_err(|e| unreadable(&e))?;
        let vocab = inner.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if size == 0 {
            return Err(Error::new(
                ErrorCode::MissingTokenizer,
                format!("{source}: the tokenizer vocabulary is empty"),
            ));
        }
        let mut tokens = vec![String::new(); size];
        for (token, id) in vocab {
            tokens[id as usize] = token;
        }
        let mut added = vec![false; size];
        let mut special = vec![false; size];
        for (id, token) in inner.get_added_tokens_decoder() {
            added[id as usize] = true;
            special[id as usize] = token.special;
        }
        let decoding = decoding_of(inner.get_decoder());
        let (bos_id, add_bos) = bos_from_post_processor(&inner);
        let bos_id = bos_id.or_else(|| first_known(&inner, &["<|begin_of_text|>", "<s>", "<|startoftext|>"]));
        let eos_id = first_known(&inner, &["<|end_of_text|>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"]);
        Ok(Self::assemble(inner, tokens, added, special, decoding, bos_id, eos_id, add_bos))
    }

    /// Reads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        parsing_special: tokenizers::Tokenizer,
        tokens: Vec<String>,
        added: Vec<bool>,
        special: Vec<bool>,
        decoding: Decoding,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        add_bos: bool,
    ) -> Self {
        let mut plain = parsing_special.clone();
        plain.set_encode_special_tokens(true);
        Tokenizer { parsing_special, plain, tokens, added, special, decoding, bos_id, eos_id, add_bos }
    }

    /// Replaces the BOS/EOS ids (a model's config may name them when tokenizer.json does not).
    pub fn with_special_ids(mut self, bos_id: Option<u32>, eos_id: Option<u32>, add_bos: bool) -> Result<Self> {
        for (id, what) in [(bos_id, "BOS"), (eos_id, "EOS")] {
            if let Some(id) = id {
                self.check_id(id).map_err(|e| e.context(what))?;
            }
        }
        if add_bos && bos_id.is_none() {
            return Err(Error::invalid_argument("add_bos needs a BOS id"));
        }
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self.add_bos = add_bos;
        Ok(self)
    }

    /// A `tokenizer.json` that Hugging Face `tokenizers`/`transformers` can load.
    pub fn to_json(&self) -> Result<String> {
        self.parsing_special.to_string(false).map_err(|e| tokenizers_error("writing tokenizer.json", e))
    }

    /// Text -> token ids. `add_bos` puts the BOS token first; `parse_special` lets special
    /// tokens written in the text (like `<|im_start|>`) become their ids instead of plain text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos {
            match self.bos_id {
                Some(bos) => ids.push(bos),
                None => {
                    return Err(Error::invalid_argument("this tokenizer has no BOS token; encode with add_bos = false"))
                }
            }
        }
        if text.is_empty() {
            return Ok(ids);
        }
        let inner = if parse_special { &self.parsing_special } else { &self.plain };
        let encoding = inner.encode_fast(text, false).map_err(|e| tokenizers_error("encoding text", e))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Token ids -> text. Bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if self.decoding == Decoding::Other {
            for &id in ids {
                self.check_id(id)?;
            }
            return self.parsing_special.decode(ids, skip_special).map_err(|e| tokenizers_error("decoding", e));
        }
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_special(id) {
                self.check_id(id)?;
                continue;
            }
            bytes.extend(self.token_bytes(id)?);
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if self.decoding == Decoding::SentencePiece && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.tokens.len() {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!(
                "token id {id} is out of range: the vocabulary has {} tokens",
                self.tokens.len()
            )))
        }
    }

    /// The raw bytes one token stands for (special tokens give their text).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        self.check_id(id)?;
        let token = &self.tokens[id as usize];
        if self.added[id as usize] {
            return Ok(token.as_bytes().to_vec());
        }
        Ok(match self.decoding {
            Decoding::ByteLevel => {
                // A token with a char outside the table is taken literally, as `tokenizers` does.
                let bytes: Option<Vec<u8>> = token.chars().map(byte_level_byte).collect();
                bytes.unwrap_or_else(|| token.as_bytes().to_vec())
            }
            Decoding::SentencePiece => match sentencepiece_byte(token) {
                Some(b) => vec![b],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
            Decoding::Other => {
                self.parsing_special.decode(&[id], false).map_err(|e| tokenizers_error("decoding", e))?.into_bytes()
            }
        })
    }

    /// Number of token ids (the largest id plus one).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether prompts for this model start with BOS by default.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// The id of a token given by its vocabulary string (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.parsing_special.token_to_id(token)
    }

    /// Whether an id is a special (control) token; false for ids out of range.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// The BOS id a `TemplateProcessing` post-processor puts first, if any.
fn bos_from_post_processor(inner: &tokenizers::Tokenizer) -> (Option<u32>, bool) {
    if !matches!(inner.get_post_processor(), Some(PostProcessorWrapper::Template(_))) {
        return (None, false);
    }
    // Encode a one-letter text with the post-processor on and see what comes first.
    let Ok(encoding) = inner.encode_fast("a", true) else {
        return (None, false);
    };
    let first = encoding.get_ids().first().copied();
    let is_special = encoding.get_special_tokens_mask().first() == Some(&1);
    match first {
        Some(id) if is_special => (Some(id), true),
        _ => (None, false),
    }
}

fn first_known(inner: &tokenizers::Tokenizer, names: &[&str]) -> Option<u32> {
    names.iter().find_map(|name| inner.token_to_id(name))
}

/// Turns a stream of token ids into text pieces, holding back incomplete UTF-8.
/// Special tokens produce no text.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    /// SentencePiece drops the space before the first word.
    at_start: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream { tok, pending: Vec::new(), at_start: true }
    }

    /// Adds one token; returns the text that is complete so far (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if self.tok.is_special(id) {
            return Ok(String::new());
        }
        let mut bytes = self.tok.token_bytes(id)?;
        if self.at_start && self.tok.decoding == Decoding::SentencePiece && bytes.first() == Some(&b' ') {
            bytes.remove(0);
        }
        if !bytes.is_empty() {
            self.at_start = false;
        }
        self.pending.extend(bytes);
        Ok(self.take_complete())
    }

    /// Everything still held back (an incomplete UTF-8 sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Removes and returns the longest prefix of `pending` that is complete text; invalid
    /// bytes become U+FFFD, an unfinished sequence at the end stays.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[start..valid]).expect("checked valid"));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid + bad;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests;
