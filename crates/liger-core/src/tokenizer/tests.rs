//! Tests on small hand-made vocabularies (the real model's tokenizer is tested in
//! `tests/tokenizer_gguf.rs`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const SPECIALS: [&str; 2] = ["<|endoftext|>", "<|im_start|>"];
const USER_DEFINED: &str = "<tool>";
/// Merges of the byte-level test vocabulary, highest priority first.
const MERGES: [&str; 8] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "1 2"];

/// A byte-level vocabulary: 2 control tokens, 1 user-defined token, the 256 byte chars,
/// then one token per merge.
fn byte_level_vocab(pre: &str) -> BpeVocab {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.push(USER_DEFINED.into());
    tokens.extend(byte_level_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    token_types[0] = TOKEN_TYPE_CONTROL;
    token_types[1] = TOKEN_TYPE_CONTROL;
    token_types[2] = TOKEN_TYPE_USER_DEFINED;
    BpeVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        merges: MERGES.iter().map(|m| m.to_string()).collect(),
        bos_id: Some(1),
        eos_id: Some(0),
        ..Default::default()
    }
}

/// Id of a single byte in the byte-level test vocabulary.
fn byte_id(b: u8) -> u32 {
    3 + b as u32
}

fn merged_id(token: &str) -> u32 {
    3 + 256 + MERGES.iter().position(|m| m.replace(' ', "") == token).expect("a merged token") as u32
}

fn bytes_ids(text: &str) -> Vec<u32> {
    text.bytes().map(byte_id).collect()
}

/// Random text mixing ASCII, accents, CJK, emoji, combining marks and whitespace.
fn random_text(rng: &mut SmallRng, max_chars: usize) -> String {
    const POOL: &[&str] = &[
        "a",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        " ",
        "  ",
        "\n",
        "\t",
        "1",
        "2",
        "9",
        "é",
        "ß",
        "中",
        "文",
        "😀",
        "👍🏽",
        "\u{200d}",
        "\u{301}",
        "ا",
        "'s",
        "<|im_start|>",
        "<|endoftext|>",
        "<tool>",
        "!",
    ];
    let n = rng.random_range(0..=max_chars);
    (0..n).map(|_| POOL[rng.random_range(0..POOL.len())]).collect()
}

#[test]
fn byte_level_merges_and_pretokenization() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("default")).unwrap();
    assert_eq!(tok.vocab_size(), 3 + 256 + MERGES.len());
    assert_eq!(tok.encode("hello", false, false).unwrap(), vec![merged_id("hello")]);
    // " world": "Ġw"+"or" merge to "Ġwor"; "l", "d" stay bytes.
    assert_eq!(
        tok.encode("hello world", false, false).unwrap(),
        vec![merged_id("hello"), merged_id("Ġwor"), byte_id(b'l'), byte_id(b'd')]
    );
    // The GPT-2 regex keeps "12" together, so the "1 2" merge applies.
    assert_eq!(tok.encode("12", false, false).unwrap(), vec![merged_id("12")]);
    // Words never merge across a pre-token boundary: "hel" + "lo" split by a space.
    assert_eq!(
        tok.encode("hel lo", false, false).unwrap(),
        vec![merged_id("he"), byte_id(b'l'), byte_id(b' '), byte_id(b'l'), byte_id(b'o')]
    );
    assert_eq!(tok.encode("", false, false).unwrap(), Vec::<u32>::new());
    assert_eq!(tok.encode("", true, false).unwrap(), vec![1]);
    assert_eq!(tok.encode("hello", true, false).unwrap(), vec![1, merged_id("hello")]);
}

#[test]
fn smollm_pre_tokenizer_splits_digits() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("smollm")).unwrap();
    assert_eq!(tok.encode("12", false, false).unwrap(), vec![byte_id(b'1'), byte_id(b'2')]);
    assert_eq!(tok.encode("a12 hello", false, false).unwrap(), [bytes_ids("a12 "), vec![merged_id("hello")]].concat());
}

#[test]
fn llama3_and_qwen2_pre_tokenizers_build() {
    for pre in ["llama-bpe", "qwen2", "starcoder", "gpt2"] {
        let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab(pre)).unwrap();
        assert_eq!(tok.encode("hello", false, false).unwrap(), vec![merged_id("hello")], "pre {pre}");
    }
    // Llama 3 keeps up to 3 digits in one pre-token, so "12" still merges; Qwen2 splits them.
    let llama3 = Tokenizer::from_bpe_vocab(&byte_level_vocab("llama-bpe")).unwrap();
    assert_eq!(llama3.encode("12", false, false).unwrap(), vec![merged_id("12")]);
    let qwen2 = Tokenizer::from_bpe_vocab(&byte_level_vocab("qwen2")).unwrap();
    assert_eq!(qwen2.encode("12", false, false).unwrap(), bytes_ids("12"));
}

#[test]
fn special_tokens_are_parsed_only_on_request() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("default")).unwrap();
    let text = "<|im_start|>hello";
    assert_eq!(tok.encode(text, false, true).unwrap(), vec![1, merged_id("hello")]);
    let plain = tok.encode(text, false, false).unwrap();
    assert!(!plain.contains(&1), "special token parsed although parse_special is off: {plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), text);
    // User-defined tokens are always matched whole.
    assert_eq!(tok.encode("<tool>", false, false).unwrap(), vec![2]);
    assert!(tok.is_special(0) && tok.is_special(1));
    assert!(!tok.is_special(2) && !tok.is_special(byte_id(b'a')) && !tok.is_special(100_000));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("hello"), Some(merged_id("hello")));
    assert_eq!(tok.token_id("no such token"), None);
}

#[test]
fn decode_skips_special_tokens_on_request() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("default")).unwrap();
    let ids = [1, merged_id("hello"), 2, 0];
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>hello<tool><|endoftext|>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello<tool>");
    assert_eq!(tok.token_bytes(byte_id(0xE4)).unwrap(), vec![0xE4]);
    assert_eq!(tok.token_bytes(merged_id("Ġwor")).unwrap(), b" wor".to_vec());
}

#[test]
fn encode_decode_round_trips_on_random_text() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("smollm")).unwrap();
    let mut rng = SmallRng::seed_from_u64(rand::random());
    for _ in 0..500 {
        let text = random_text(&mut rng, 40);
        for parse_special in [false, true] {
            let ids = tok.encode(&text, false, parse_special).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "ids {ids:?}");
        }
    }
}

#[test]
fn text_stream_holds_back_incomplete_utf8() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("default")).unwrap();
    let emoji = "😀"; // 4 bytes, 4 byte tokens
    let mut stream = TextStream::new(&tok);
    let ids = bytes_ids(emoji);
    for &id in &ids[..3] {
        assert_eq!(stream.push(id).unwrap(), "");
    }
    assert_eq!(stream.push(ids[3]).unwrap(), emoji);
    // An unfinished sequence comes out as U+FFFD at the end; an invalid byte at once.
    assert_eq!(stream.push(ids[0]).unwrap(), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
    assert_eq!(stream.push(byte_id(0xFF)).unwrap(), "\u{FFFD}");
    assert_eq!(stream.push(1).unwrap(), "", "special tokens produce no text");
    assert_eq!(stream.push(100_000).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn text_stream_pieces_add_up_to_decode() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("smollm")).unwrap();
    let mut rng = SmallRng::seed_from_u64(rand::random());
    for _ in 0..300 {
        let text = random_text(&mut rng, 30);
        let ids = tok.encode(&text, false, true).unwrap();
        let mut stream = TextStream::new(&tok);
        let mut streamed = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "piece {piece:?} of valid text has a replacement char");
            streamed.push_str(&piece);
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, tok.decode(&ids, true).unwrap());
    }
}

#[test]
fn json_round_trip_keeps_behaviour() {
    let mut vocab = byte_level_vocab("smollm");
    vocab.add_bos = true;
    let tok = Tokenizer::from_bpe_vocab(&vocab).unwrap();
    let json = tok.to_json().unwrap();
    let back = Tokenizer::from_json(json.as_bytes(), "round trip").unwrap();
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(back.bos_id(), Some(1));
    assert!(back.add_bos_default());
    assert_eq!(back.eos_id(), Some(0));
    assert!(back.is_special(0) && !back.is_special(2));
    let mut rng = SmallRng::seed_from_u64(rand::random());
    for _ in 0..200 {
        let text = random_text(&mut rng, 30);
        for parse_special in [false, true] {
            let ids = tok.encode(&text, false, parse_special).unwrap();
            assert_eq!(back.encode(&text, false, parse_special).unwrap(), ids, "text {text:?}");
            assert_eq!(back.decode(&ids, true).unwrap(), tok.decode(&ids, true).unwrap());
        }
    }
}

#[test]
fn bad_vocabularies_give_clear_errors() {
    let err = |v: &BpeVocab| Tokenizer::from_bpe_vocab(v).unwrap_err();

    let e = err(&BpeVocab { model: "gpt2".into(), ..Default::default() });
    assert_eq!(e.code, ErrorCode::MissingTokenizer);

    let e = err(&byte_level_vocab("no-such-pre"));
    assert_eq!(e.code, ErrorCode::UnsupportedArchitecture);
    assert!(e.message.contains("no-such-pre"), "{}", e.message);

    let e = err(&BpeVocab { model: "wordpiece".into(), ..byte_level_vocab("default") });
    assert_eq!(e.code, ErrorCode::UnsupportedArchitecture);

    let mut v = byte_level_vocab("default");
    v.merges.push("nospace".into());
    let e = err(&v);
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("nospace"), "{}", e.message);

    let mut v = byte_level_vocab("default");
    v.merges.push("zz qq".into());
    assert_eq!(err(&v).code, ErrorCode::InvalidFile);

    let mut v = byte_level_vocab("default");
    v.token_types.pop();
    assert_eq!(err(&v).code, ErrorCode::InvalidFile);

    let mut v = byte_level_vocab("default");
    v.eos_id = Some(v.tokens.len() as u32);
    let e = err(&v);
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("EOS"), "{}", e.message);

    let e = Tokenizer::from_json(b"{\"not\": \"a tokenizer\"}", "broken.json").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("broken.json"), "{}", e.message);
    let e = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Io);
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let tok = Tokenizer::from_bpe_vocab(&byte_level_vocab("default")).unwrap();
    let n = tok.vocab_size() as u32;
    for skip in [false, true] {
        let e = tok.decode(&[5, n], skip).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains(&n.to_string()), "{}", e.message);
    }
    assert_eq!(tok.token_bytes(n).unwrap_err().code, ErrorCode::InvalidArgument);
    let mut v = byte_level_vocab("default");
    v.bos_id = None;
    let no_bos = Tokenizer::from_bpe_vocab(&v).unwrap();
    assert_eq!(no_bos.encode("a", true, false).unwrap_err().code, ErrorCode::InvalidArgument);
}

/// A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces with scores.
fn sentencepiece_vocab() -> BpeVocab {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("▁h", -3.0),
        ("ll", -4.0),
        ("▁he", -5.0),
        ("▁hell", -6.0),
        ("▁hello", -7.0),
        ("lo", -8.0),
    ];
    for (piece, score) in pieces {
        tokens.push(piece.into());
        token_types.push(TOKEN_TYPE_NORMAL);
        scores.push(score);
    }
    BpeVocab {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens,
        token_types,
        scores,
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: true,
        ..Default::default()
    }
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let v = sentencepiece_vocab();
    let tok = Tokenizer::from_bpe_vocab(&v).unwrap();
    let id = |s: &str| v.tokens.iter().position(|t| t == s).unwrap() as u32;
    assert!(tok.add_bos_default());
    // "▁hello": ▁h (score -3) first, then ll (-4), ▁he (-5), ▁hell (-6), ▁hello (-7).
    assert_eq!(tok.encode("hello", false, false).unwrap(), vec![id("▁hello")]);
    // "hollo": ▁h, ll, then "lo" cannot form since the l's are taken, "o" stays.
    assert_eq!(tok.encode("hollo", true, false).unwrap(), vec![1, id("▁h"), id("o"), id("ll"), id("o")]);
    // "é" is not in the vocabulary: its UTF-8 bytes are used.
    assert_eq!(tok.encode("hé", false, false).unwrap(), vec![id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    let ids = tok.encode("hello hé", true, false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello hé");
    let mut stream = TextStream::new(&tok);
    let mut streamed: String = ids.iter().map(|&i| stream.push(i).unwrap()).collect();
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, "hello hé");
    let mut bad = sentencepiece_vocab();
    bad.scores.pop();
    assert_eq!(Tokenizer::from_bpe_vocab(&bad).unwrap_err().code, ErrorCode::InvalidFile);
}

/// Found by fuzzing: a decoder (or normalizer) section nested past the JSON parser's depth
/// limit made the tokenizers crate panic inside its own parser. It is a typed error now.
#[test]
fn a_deeply_nested_section_is_an_error_not_a_panic() {
    let vocab = byte_level_vocab("smollm");
    let json = Tokenizer::from_bpe_vocab(&vocab).unwrap().to_json().unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for section in ["decoder", "normalizer", "pre_tokenizer"] {
        let mut nested = serde_json::json!(1);
        for _ in 0..200 {
            nested = serde_json::json!([nested]);
        }
        let mut bad = value.clone();
        bad[section] = nested;
        let text = serde_json::to_string(&bad).unwrap();
        let err = Tokenizer::from_json(text.as_bytes(), "nested.json").expect_err("refused");
        assert_eq!(err.code, crate::ErrorCode::InvalidFile, "{section}: {}", err.message);
    }
    value["decoder"] = serde_json::json!(null);
    assert!(Tokenizer::from_json(serde_json::to_string(&value).unwrap().as_bytes(), "ok.json").is_ok());
}
