//! Perplexity on a fixed WikiText-2 slice (the first `tokens` tokens of wiki.test.raw, in
//! windows of `window`) as f32, int8 and 4-bit bundles, with the bundle sizes: of the Liger
//! model (default options), and of the same bundle with every layer kept as softmax
//! attention (the base model's function) as the reference for what quantisation costs.
//! `cargo run --release -p liger-core --example bundle_ppl -- [model.gguf] [tokens] [window] [wiki.test.raw]`

use liger_core::bundle::{bundle_bytes, load_bundle, EdgeQuant};
use liger_core::convert::{linearize, LigerModel, LigerOptions, LoraOptions};
use liger_core::model::load_model;
use std::sync::Arc;

/// exp(mean negative log-likelihood) of every token after the first of each window.
fn perplexity(model: &LigerModel, tokens: &[u32], window: usize) -> liger_core::Result<f64> {
    let vocab = model.config().vocab_size;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for w in tokens.chunks(window).filter(|w| w.len() > 1) {
        let logits = model.all_logits(w)?;
        for (t, &next) in w.iter().enumerate().skip(1) {
            let row = &logits[(t - 1) * vocab..t * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[next as usize] as f64;
            count += 1;
        }
    }
    Ok((nll / count as f64).exp())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(liger_core::testing::default_model_path);
    let n: usize = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    let window: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let data = args.get(3).cloned().unwrap_or_else(|| {
        let dir = std::env::var("LIGER_DATA_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").into());
        format!("{dir}/wikitext2_raw/wiki.test.raw")
    });
    let text = std::fs::read_to_string(&data)?;
    let base = load_model(&path, &mut |_, _| {})?;
    let mut tokens = base.encode(&text[..text.len().min(40 * n)], Some(false), false)?;
    tokens.truncate(n);
    let layers = base.config.num_layers;
    let no_adapters = LoraOptions { targets: Vec::new(), ..LoraOptions::default() };
    let mut model = linearize(base, LigerOptions::default(), no_adapters)?;
    for attention in ["liger", "softmax"] {
        if attention == "softmax" {
            model.options.softmax_layers = (0..layers).collect();
        }
        for quant in [EdgeQuant::F32, EdgeQuant::Int8, EdgeQuant::Q4, EdgeQuant::Q4_1] {
            let bytes = bundle_bytes(&model, quant)?;
            let size = bytes.len();
            let loaded = load_bundle(Arc::new(bytes))?;
            let ppl = perplexity(&loaded, &tokens, window)?;
            println!(
                "{{\"attention\":\"{attention}\",\"quantization\":\"{}\",\"bundle_bytes\":{size},\"tokens\":{},\"window\":{window},\"ppl\":{ppl:.3}}}",
                quant.name(),
                tokens.len()
            );
        }
    }
    Ok(())
}
