//! Makes an edge bundle (one file: config, Liger options, tokenizer, weights) from a GGUF
//! base model (converted with the default Liger options) or a Liger checkpoint directory.
//! `cargo run --release -p liger-core --example make_bundle -- <model.gguf|checkpoint> <out.bundle> [f32|int8|q4|q4_1]`

use liger_core::bundle::{write_bundle, EdgeQuant};
use liger_core::checkpoint::load_liger_checkpoint;
use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::model::load_model;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(out)) = (args.first(), args.get(1)) else {
        return Err("usage: make_bundle <model.gguf|checkpoint-dir> <out.bundle> [f32|int8|q4|q4_1]".into());
    };
    let quant = EdgeQuant::parse(args.get(2).map_or("int8", String::as_str))?;
    let input = PathBuf::from(input);
    let model = if input.is_dir() {
        load_liger_checkpoint(&input)?
    } else {
        linearize(
            load_model(&input, &mut |_, _| {})?,
            LigerOptions::default(),
            LoraOptions { targets: Vec::new(), ..LoraOptions::default() },
        )?
    };
    write_bundle(&PathBuf::from(out), &model, quant)?;
    let bytes = std::fs::metadata(out)?.len();
    println!("{{\"out\":{out:?},\"quantization\":\"{}\",\"bytes\":{bytes}}}", quant.name());
    Ok(())
}
