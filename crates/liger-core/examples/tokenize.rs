//! Prints the token ids of texts, to compare with other implementations.
//!
//! Usage: `tokenize MODEL.gguf|tokenizer.json < texts.json > ids.json`, where texts.json
//! is a JSON array of strings. The output is `{"plain": [[ids]...], "special": [[ids]...]}`:
//! special tokens in the text are plain text in the first list and parsed in the second.

use std::io::Read;
use std::path::Path;

use liger_core::gguf::GgufFile;
use liger_core::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: tokenize MODEL.gguf|tokenizer.json < texts.json")?;
    let tokenizer = if path.ends_with(".json") {
        Tokenizer::from_file(Path::new(&path))?
    } else {
        Tokenizer::from_gguf(&GgufFile::open(Path::new(&path))?)?
    };
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let texts: Vec<String> = serde_json::from_str(&input)?;
    let encode_all = |parse_special| -> Result<Vec<Vec<u32>>, liger_core::Error> {
        texts.iter().map(|t| tokenizer.encode(t, false, parse_special)).collect()
    };
    let out = serde_json::json!({ "plain": encode_all(false)?, "special": encode_all(true)? });
    println!("{out}");
    Ok(())
}
