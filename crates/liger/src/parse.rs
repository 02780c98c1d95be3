//! Option values as the bindings receive them (names, JavaScript numbers) turned into the
//! typed values the jobs take; a bad value is an INVALID_ARGUMENT error naming the known ones.

use liger_core::convert::LoraTarget;
use liger_core::hf::SaveDtype;
use liger_core::liger::{GsaScale, MixerKind};
use liger_core::train::data::PromptFormat;
use liger_core::train::layer_choice::LayerChoice;
use liger_core::train::trainer::Schedule;
use liger_core::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where a cosine schedule ends, as a fraction of the peak learning rate.
pub const COSINE_MIN_RATIO: f32 = 0.1;

/// A name as the type's serde form spells it (aliases included).
fn by_name<T: DeserializeOwned>(what: &str, name: &str, known: &str) -> Result<T> {
    serde_json::from_value(Value::String(name.to_string()))
        .map_err(|_| Error::invalid_argument(format!("unknown {what} {name:?}; known: {known}")))
}

/// "gla", "hgrn2", "gsa", "retention" (or "mlstm"), "mamba2", "rwkv6", "linear" or "gdn".
pub fn mixer(name: &str) -> Result<MixerKind> {
    let known: Vec<&str> = MixerKind::ALL.iter().map(|m| m.name()).collect();
    by_name("mixer", name, &known.join(", "))
}

/// "one" (the reference's unscaled slot read-out) or "inv_sqrt_head_dim" (1/sqrt(D)).
pub fn gsa_scale(name: &str) -> Result<GsaScale> {
    let known: Vec<&str> = GsaScale::ALL.iter().map(|s| s.name()).collect();
    by_name("gsa scale", name, &known.join(", "))
}

/// "q", "k", "v" or "o" (or "q_proj", ...).
pub fn lora_target(name: &str) -> Result<LoraTarget> {
    by_name("LoRA target", name, "q, k, v, o")
}

/// "constant", or "cosine": linear warmup over `warmup_steps`, then cosine decay.
pub fn schedule(name: &str, warmup_steps: u64) -> Result<Schedule> {
    match name {
        "constant" => Ok(Schedule::Constant),
        "cosine" => Ok(Schedule::WarmupCosine { warmup_steps, min_ratio: COSINE_MIN_RATIO }),
        other => Err(Error::invalid_argument(format!("unknown schedule {other:?}; known: constant, cosine"))),
    }
}

/// "alpaca" or "chat".
pub fn prompt_format(name: &str) -> Result<PromptFormat> {
    match name {
        "alpaca" => Ok(PromptFormat::Alpaca),
        "chat" => Ok(PromptFormat::Chat),
        other => Err(Error::invalid_argument(format!("unknown prompt format {other:?}; known: alpaca, chat"))),
    }
}

/// "f32", "f16" or "bf16".
pub fn dtype(name: &str) -> Result<SaveDtype> {
    match name {
        "f32" => Ok(SaveDtype::F32),
        "f16" => Ok(SaveDtype::F16),
        "bf16" => Ok(SaveDtype::BF16),
        other => Err(Error::invalid_argument(format!("unknown dtype {other:?}; known: f32, f16, bf16"))),
    }
}

/// "loss" (what converting each layer alone costs) or "retrieval" (how often the base model's
/// heads in each layer retrieve beyond the window).
pub fn layer_choice(name: &str) -> Result<LayerChoice> {
    by_name("layer choice", name, "loss, retrieval")
}

/// The name [`layer_choice`] reads back.
pub fn layer_choice_name(choice: LayerChoice) -> &'static str {
    match choice {
        LayerChoice::Loss => "loss",
        LayerChoice::Retrieval => "retrieval",
    }
}

/// The name [`lora_target`] reads back.
pub fn lora_target_name(target: LoraTarget) -> &'static str {
    match target {
        LoraTarget::Q => "q",
        LoraTarget::K => "k",
        LoraTarget::V => "v",
        LoraTarget::O => "o",
    }
}

/// The name [`prompt_format`] reads back.
pub fn prompt_format_name(format: PromptFormat) -> &'static str {
    match format {
        PromptFormat::Alpaca => "alpaca",
        PromptFormat::Chat => "chat",
    }
}

/// The name [`dtype`] reads back.
pub fn dtype_name(dtype: SaveDtype) -> &'static str {
    match dtype {
        SaveDtype::F32 => "f32",
        SaveDtype::F16 => "f16",
        SaveDtype::BF16 => "bf16",
    }
}

/// A JavaScript number that must be a non-negative integer (seeds, counts).
pub fn whole_number(name: &str, value: f64) -> Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9_007_199_254_740_992.0 {
        Ok(value as u64)
    } else {
        Err(Error::invalid_argument(format!("{name} must be an integer in [0, 2^53), got {value}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    #[test]
    fn names_parse_to_their_values() {
        assert_eq!(mixer("gla").unwrap(), MixerKind::Gla);
        assert_eq!(mixer("mlstm").unwrap(), MixerKind::Retention);
        assert_eq!(lora_target("o").unwrap(), LoraTarget::O);
        assert_eq!(lora_target("k_proj").unwrap(), LoraTarget::K);
        assert_eq!(schedule("constant", 5).unwrap(), Schedule::Constant);
        assert_eq!(schedule("cosine", 5).unwrap(), Schedule::WarmupCosine { warmup_steps: 5, min_ratio: 0.1 });
        assert_eq!(prompt_format("chat").unwrap(), PromptFormat::Chat);
        assert_eq!(dtype("bf16").unwrap(), SaveDtype::BF16);
        assert_eq!(layer_choice("retrieval").unwrap(), LayerChoice::Retrieval);
    }

    #[test]
    fn names_read_back_to_their_values() {
        for t in [LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O] {
            assert_eq!(lora_target(lora_target_name(t)).unwrap(), t);
        }
        for f in [PromptFormat::Alpaca, PromptFormat::Chat] {
            assert_eq!(prompt_format(prompt_format_name(f)).unwrap(), f);
        }
        for d in [SaveDtype::F32, SaveDtype::F16, SaveDtype::BF16] {
            assert_eq!(dtype(dtype_name(d)).unwrap(), d);
        }
        for c in [LayerChoice::Loss, LayerChoice::Retrieval] {
            assert_eq!(layer_choice(layer_choice_name(c)).unwrap(), c);
        }
        for g in GsaScale::ALL {
            assert_eq!(gsa_scale(g.name()).unwrap(), g);
        }
        assert!(message(gsa_scale("half")).contains("one, inv_sqrt_head_dim"));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        assert_eq!(
            message(mixer("transformer")),
            "unknown mixer \"transformer\"; known: gla, hgrn2, gsa, retention, mamba2, rwkv6, linear, gdn"
        );
        assert_eq!(message(lora_target("x")), "unknown LoRA target \"x\"; known: q, k, v, o");
        assert_eq!(message(schedule("linear", 0)), "unknown schedule \"linear\"; known: constant, cosine");
        assert_eq!(message(prompt_format("raw")), "unknown prompt format \"raw\"; known: alpaca, chat");
        assert_eq!(message(dtype("f64")), "unknown dtype \"f64\"; known: f32, f16, bf16");
        assert_eq!(message(layer_choice("kl")), "unknown layer choice \"kl\"; known: loss, retrieval");
    }

    #[test]
    fn whole_numbers_are_safe_non_negative_integers() {
        assert_eq!(whole_number("seed", 0.0).unwrap(), 0);
        assert_eq!(whole_number("seed", 9_007_199_254_740_991.0).unwrap(), 9_007_199_254_740_991);
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 9_007_199_254_740_992.0] {
            assert_eq!(message(whole_number("seed", bad)), format!("seed must be an integer in [0, 2^53), got {bad}"));
        }
    }
}
