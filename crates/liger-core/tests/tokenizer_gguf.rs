//! The default model's tokenizer, read from its GGUF file, against token ids that llama.cpp
//! produced for the same texts; and GGUF tokenizer metadata that is missing or wrong.

use std::path::PathBuf;
use std::sync::OnceLock;

use liger_core::gguf::{GgufFile, GgufValue, GgufWriter};
use liger_core::tokenizer::{TextStream, Tokenizer};
use liger_core::ErrorCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn model_path() -> PathBuf {
    let path = match std::env::var_os("LIGER_MODEL_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/liger/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        path.is_file(),
        "the default model is needed for this test: {} does not exist; set LIGER_MODEL_GGUF to a copy of \
         SmolLM2-135M-Instruct.Q4_1.gguf",
        path.display()
    );
    path
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let file = GgufFile::open(&model_path()).expect("the default model opens");
        Tokenizer::from_gguf(&file).expect("the default model's tokenizer loads")
    })
}

type ReferencePair = (&'static str, &'static [u32], Option<&'static [u32]>);

/// (text, ids without parsing special tokens, ids with parsing when they differ), as
/// llama.cpp tokenizes them with the default model (no BOS added).
const LLAMA_CPP_IDS: &[ReferencePair] = &[
    ("", &[], None),
    (" ", &[216], None),
    ("  ", &[256], None),
    ("\n", &[198], None),
    ("\t", &[197], None),
    ("\r\n", &[2738], None),
    (" \n ", &[3717, 216], None),
    ("a", &[81], None),
    (" a", &[253], None),
    ("a ", &[81, 216], None),
    (" a ", &[253, 216], None),
    ("  a  ", &[216, 253, 256], None),
    ("Hello", &[19556], None),
    (" Hello", &[38699], None),
    ("Hello world", &[19556, 905], None),
    ("Hello  world", &[19556, 216, 905], None),
    ("Hello\tworld", &[19556, 197, 6693], None),
    ("Hello\n\nworld", &[19556, 198, 198, 6693], None),
    ("1", &[33], None),
    ("12", &[33, 34], None),
    ("123", &[33, 34, 35], None),
    ("1234567890", &[33, 34, 35, 36, 37, 38, 39, 40, 41, 32], None),
    (" 2024", &[216, 34, 32, 34, 36], None),
    ("3.14159", &[35, 30, 33, 36, 33, 37, 41], None),
    ("I'm", &[57, 5248], None),
    ("i'M", &[89, 23, 61], None),
    ("'s'", &[506, 23], None),
    ("don't", &[12420, 982], None),
    ("<|im_start|>", &[44, 108, 306, 79, 3738, 108, 46], Some::<&[u32]>(&[1])),
    (" <|im_start|> ", &[2067, 108, 306, 79, 3738, 108, 46, 216], Some::<&[u32]>(&[216, 1, 216])),
    ("<|im_start|>user\nHi<|im_end|>\n", &[44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46, 198], Some::<&[u32]>(&[1, 4093, 198, 26843, 2, 198])),
    ("<|im_start|><|im_end|>", &[44, 108, 306, 79, 3738, 108, 21198, 108, 306, 79, 486, 108, 46], Some::<&[u32]>(&[1, 2])),
    ("<|endoftext|>x", &[44, 108, 486, 1714, 2692, 108, 46, 104], Some::<&[u32]>(&[0, 104])),
    ("x<|endoftext|>", &[104, 44, 108, 486, 1714, 2692, 108, 46], Some::<&[u32]>(&[104, 0])),
    ("<|im_start", &[44, 108, 306, 79, 3738], None),
    ("😀", &[10813, 242, 218], None),
    ("👨\u{200d}👩\u{200d}👧\u{200d}👦", &[10813, 235, 118, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117, 321, 231, 10813, 235, 116], None),
    ("e\u{301}", &[85, 151, 219], None),
    ("中文", &[28589, 29184], None),
    ("\u{200d}", &[321, 231], None),
    ("\u{feff}", &[186, 136, 140], None),
    ("\u{a0}a", &[15442, 81], None),
    ("a\u{a0}", &[81, 15442], None),
    ("\u{3000}", &[12109, 218], None),
    ("    def f():\n        return 1\n", &[333, 753, 275, 3734, 448, 1003, 216, 33, 198], None),
    ("\t\tx", &[197, 197, 104], None),
    ("x\t\t", &[104, 1656], None),
    ("!!!", &[29646], None),
    ("...", &[2026], None),
    ("?!", &[17593], None),
    ("--", &[423], None),
    ("'''", &[11193], None),
    ("\"\"\"", &[3327], None),
    ("http://example.com/a?b=1&c=2", &[5031, 1742, 7434, 30, 824, 31, 81, 47, 82, 45, 33, 22, 83, 45, 34], None),
    ("user@example.com", &[4093, 48, 7434, 30, 824], None),
    ("C++", &[51, 11444], None),
    ("C#", &[51, 19], None),
    ("a\u{0}b", &[81, 190, 82], None),
    ("\t       jumps\r\n\r\n\n\n\n", &[197, 5013, 27003, 7209, 22342], None),
    ("Café 'll O'Brien Ångström for HTTP is café «", &[51, 1939, 2756, 637, 764, 492, 23, 37487, 5549, 223, 863, 1321, 45682, 327, 17108, 314, 37366, 23708], None),
    (" \n<|im_start<gh_stars><repo_name>Self-attention GPU the over lazy café straße  Is JSON token e-mail.", &[216, 198, 44, 108, 306, 79, 3738, 44, 460, 79, 9888, 21198, 22139, 79, 1245, 46, 21471, 29, 26256, 29593, 260, 690, 23790, 37366, 4040, 34878, 85, 216, 1431, 20110, 9624, 297, 29, 8925, 30], Some::<&[u32]>(&[216, 198, 44, 108, 306, 79, 3738, 7, 3, 21471, 29, 26256, 29593, 260, 690, 23790, 37366, 4040, 34878, 85, 216, 1431, 20110, 9624, 297, 29, 8925, 30])),
    ("import numpy as np\narr = np.zeros((13, 27), dtype=np.float32)\nprint(arr.shape)  # (rows, cols)", &[2017, 6772, 347, 2333, 198, 2110, 446, 2333, 30, 10836, 5134, 33, 35, 28, 216, 34, 39, 643, 10392, 45, 4413, 30, 6205, 35, 34, 25, 198, 3272, 24, 2110, 30, 4847, 25, 216, 907, 365, 5612, 28, 34222, 25], None),
    ("\u{a0}  🎉JSON ...! With Zürich Ångström HTTP lazy state-of-the-art the !?|><|begin_of_text|>", &[15442, 216, 15107, 232, 227, 27936, 4563, 17, 1929, 1777, 7170, 5130, 5549, 223, 863, 1321, 45682, 17108, 23790, 1215, 29, 1714, 29, 1195, 29, 434, 260, 5728, 44817, 21198, 108, 21083, 79, 1714, 79, 2692, 108, 46], None),
    ("attentionstraßel'hommecan't", &[26256, 13931, 34878, 299, 23, 88, 1864, 1159, 276, 982], None),
    ("'drecurrentcan'trock'n'rolly'alllazy", &[6737, 257, 7378, 4055, 982, 12701, 23, 94, 23, 1193, 318, 23, 449, 38046], None),
    ("McDonald of with quick was!\nDog:", &[16294, 20214, 282, 351, 2365, 436, 17, 198, 44378, 42], None),
    ("function fooBar2(a, b) {\n  const sum = a + b; // add\n  return sum > 90 ? \"big\" : 'small';\n}\n", &[6607, 29856, 14550, 34, 24, 81, 28, 278, 25, 1662, 3805, 1261, 2028, 446, 253, 1232, 278, 43, 13241, 803, 3805, 1003, 2028, 2986, 216, 41, 32, 9148, 476, 17214, 18, 1577, 637, 16497, 36651, 198, 109, 198], None),
    ("iPhone \nstate-of-the-art \t\nSmolLM   ", &[89, 17739, 216, 198, 3595, 29, 1714, 29, 1195, 29, 434, 216, 197, 198, 9207, 308, 34519, 333], None),
    ("im_end|>", &[306, 79, 486, 108, 46], None),
    ("Over résumé etc. language?\n\nQuick state-of-the-art dog it's GPU naïve with Zürich to Zürich café Hello model lazy CPU.\u{b}", &[7110, 412, 2756, 5422, 2756, 2686, 30, 1789, 47, 198, 198, 36453, 1215, 29, 1714, 29, 1195, 29, 434, 2767, 357, 506, 29593, 15486, 46494, 351, 1777, 7170, 5130, 288, 1777, 7170, 5130, 37366, 38699, 1743, 23790, 17756, 30, 199], None),
    ("'ll the she'd\r", &[3060, 260, 1041, 6737, 201], None),
    ("they've  e-mail\u{c}", &[11518, 3543, 216, 297, 29, 8925, 200], None),
    ("$8346.77 and Ångström68", &[20, 40, 35, 36, 38, 30, 39, 39, 284, 5549, 223, 863, 1321, 45682, 38, 40], None),
    ("\u{b}  \nWorldrecurrent\n", &[199, 256, 198, 11265, 257, 7378, 198], None),
    ("Ç\nⅫ\n🤖\nÇ", &[142, 225, 198, 173, 223, 121, 198, 10813, 114, 240, 198, 142, 225], None),
    ("\u{2009} 🦀 🎉 \u{feff} \u{200d} \u{feff} 🤖 \u{200c}", &[321, 227, 15107, 116, 218, 15107, 232, 227, 216, 186, 136, 140, 459, 231, 216, 186, 136, 140, 15107, 114, 240, 459, 230], None),
    ("<|im_end|><|begin_of_text|><gh_stars>|>\u{1b}[0m", &[44, 108, 306, 79, 486, 108, 21198, 108, 21083, 79, 1714, 79, 2692, 108, 21198, 460, 79, 9888, 46, 108, 46, 212, 75, 32, 93], Some::<&[u32]>(&[2, 44, 108, 21083, 79, 1714, 79, 2692, 108, 46, 7, 108, 46, 212, 75, 32, 93])),
    ("Attention l'homme with to dog over an:  Café café naïve Liger was straße naïve naïve résumé of Hello Dr. e-mail?", &[41319, 303, 23, 28477, 1558, 351, 288, 2767, 690, 354, 42, 216, 48031, 2756, 37366, 15486, 46494, 450, 9957, 436, 4040, 34878, 85, 15486, 46494, 15486, 46494, 412, 2756, 5422, 2756, 282, 38699, 2503, 30, 297, 29, 8925, 47], None),
    ("Ελληνικά\u{200d}\u{200c}ñøשלום עולם۴\u{0}", &[153, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 321, 231, 321, 230, 10214, 21817, 38229, 31838, 23970, 162, 247, 12960, 112, 23970, 31838, 162, 247, 166, 129, 190], None),
    ("    Ångström  's  state-of-the-art  IT'S", &[333, 5549, 223, 863, 1321, 45682, 216, 637, 99, 216, 1215, 29, 1714, 29, 1195, 29, 434, 216, 9627, 23, 67], None),
    (" forlanguageinDr.\r \n", &[327, 14120, 254, 6502, 30, 201, 3717], None),
    ("don’tand", &[12420, 417, 100, 397], None),
    ("\n\n\nv8.13.0, 883,729,240, v9.9.91, v1.10.71", &[1116, 198, 102, 40, 30, 33, 35, 30, 32, 28, 216, 40, 40, 35, 28, 39, 34, 41, 28, 34, 36, 32, 28, 386, 41, 30, 41, 30, 41, 33, 28, 386, 33, 30, 33, 32, 30, 39, 33], None),
    ("iPhone  fox  we'll", &[89, 17739, 216, 16438, 216, 392, 3060], None),
    ("ø  ³  ł  ø  \u{200f}  Ελληνικά  𝟙𝟚𝟛  🎉", &[21817, 256, 39050, 216, 18811, 220, 216, 5549, 133, 216, 459, 233, 216, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 256, 23159, 249, 243, 23159, 249, 244, 23159, 249, 245, 216, 15107, 232, 227], None),
    ("α+β=γa\u{300}\u{301}\u{302}∫\u{feff}\u{200b}", &[8998, 27, 22235, 45, 23098, 81, 151, 218, 151, 219, 151, 220, 22052, 121, 186, 136, 140, 321, 229], None),
    ("\u{c}\t\n\n\n", &[200, 197, 16506], None),
    ("'m'lldoge-mailthat \t ", &[5248, 3060, 4326, 361, 29, 8925, 5907, 216, 197, 216], None),
];

fn check_reference_pairs(tok: &Tokenizer) {
    let mut mismatches = Vec::new();
    for &(text, plain, special) in LLAMA_CPP_IDS {
        let ours_plain = tok.encode(text, false, false).unwrap();
        let ours_special = tok.encode(text, false, true).unwrap();
        if ours_plain != plain {
            mismatches.push(format!("{text:?} plain: ours {ours_plain:?}, llama.cpp {plain:?}"));
        }
        if ours_special != special.unwrap_or(plain) {
            mismatches.push(format!("{text:?} special: ours {ours_special:?}, llama.cpp {special:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn agrees_with_llama_cpp_on_reference_texts() {
    check_reference_pairs(tokenizer());
}

#[test]
fn default_model_tokenizer_metadata() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(!tok.add_bos_default());
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert!((0..17).all(|id| tok.is_special(id)));
    assert!(!tok.is_special(17));
    assert_eq!(tok.encode("Hi", true, false).unwrap()[0], 1);
    assert_eq!(tok.decode(&[1, 19556, 2], false).unwrap(), "<|im_start|>Hello<|im_end|>");
    assert_eq!(tok.decode(&[1, 19556, 2], true).unwrap(), "Hello");
    let e = tok.decode(&[49152], false).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
}

/// Random strings of characters drawn from several scripts, emoji and whitespace.
fn random_text(rng: &mut SmallRng) -> String {
    const RANGES: &[(u32, u32)] = &[
        (0x20, 0x7e),
        (0x09, 0x0d),
        (0xc0, 0x17f),
        (0x4e00, 0x4fff),
        (0x1f300, 0x1f64f),
        (0x0600, 0x06ff),
        (0x300, 0x36f),
    ];
    let n = rng.random_range(0..60);
    (0..n)
        .filter_map(|_| {
            let (lo, hi) = RANGES[rng.random_range(0..RANGES.len())];
            char::from_u32(rng.random_range(lo..=hi))
        })
        .collect()
}

#[test]
fn decode_and_stream_invert_encode_on_random_text() {
    let tok = tokenizer();
    let mut rng = SmallRng::seed_from_u64(rand::random());
    for _ in 0..300 {
        let text = random_text(&mut rng);
        let ids = tok.encode(&text, false, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let mut stream = TextStream::new(tok);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, text);
    }
}

#[test]
fn tokenizer_json_written_from_gguf_tokenizes_the_same() {
    let json = tokenizer().to_json().unwrap();
    let back = Tokenizer::from_json(json.as_bytes(), "written tokenizer.json").unwrap();
    assert_eq!(back.vocab_size(), 49152);
    // tokenizer.json does not name BOS/EOS: the EOS guess is <|endoftext|>, and the caller
    // sets the ids the model's config gives.
    assert_eq!(back.eos_id(), back.token_id("<|endoftext|>"));
    let back = back.with_special_ids(Some(1), Some(2), false).unwrap();
    assert_eq!((back.bos_id(), back.eos_id()), (Some(1), Some(2)));
    assert_eq!(back.clone().with_special_ids(Some(49152), None, false).unwrap_err().code, ErrorCode::InvalidArgument);
    check_reference_pairs(&back);
}

fn gguf_with(metadata: Vec<(&str, GgufValue)>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    for (key, value) in metadata {
        w.add_metadata(key, value);
    }
    GgufFile::from_bytes(w.to_bytes().unwrap(), "test.gguf").unwrap()
}

fn strings(items: &[&str]) -> GgufValue {
    GgufValue::Array(items.iter().map(|s| GgufValue::String(s.to_string())).collect())
}

#[test]
fn gguf_tokenizer_metadata_errors() {
    let e = Tokenizer::from_gguf(&gguf_with(vec![])).unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingTokenizer);
    assert!(e.message.contains("tokenizer.ggml.tokens") && e.message.contains("test.gguf"), "{}", e.message);

    let tokens = strings(&["a", "b", "ab"]);
    let e = Tokenizer::from_gguf(&gguf_with(vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", GgufValue::String("mystery".into())),
        ("tokenizer.ggml.tokens", tokens.clone()),
    ]))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedArchitecture);
    assert!(e.message.contains("mystery"), "{}", e.message);

    let e = Tokenizer::from_gguf(&gguf_with(vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(vec![GgufValue::U32(1)])),
    ]))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);

    let e = Tokenizer::from_gguf(&gguf_with(vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", tokens.clone()),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(7)),
    ]))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("BOS") && e.message.contains("test.gguf"), "{}", e.message);

    // A tiny valid vocabulary works, merges included.
    let tok = Tokenizer::from_gguf(&gguf_with(vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ]))
    .unwrap();
    assert_eq!(tok.encode("abba", false, false).unwrap(), vec![2, 1, 0]);
}

#[test]
fn default_model_chat_template() {
    use liger_core::chat::{gguf_chat_template, render_chat, ChatMessage, CHATML_TEMPLATE};
    let file = GgufFile::open(&model_path()).unwrap();
    let template = gguf_chat_template(&file).unwrap();
    let user = ChatMessage::new("user", "Hi");
    let text = render_chat(&template, std::slice::from_ref(&user), true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // With its own system message the template adds no default one.
    let messages = [ChatMessage::new("system", "Be brief."), user, ChatMessage::new("assistant", "Hello!")];
    let text = render_chat(&template, &messages, false, "", "").unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    // The markers become single special tokens when the prompt is encoded.
    let ids = tokenizer().encode(&text, false, true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 3);
    // A file without a template falls back to ChatML.
    assert_eq!(gguf_chat_template(&gguf_with(vec![])).unwrap(), CHATML_TEMPLATE);
}
