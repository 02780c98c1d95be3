//! The kernel sources: one `.cu` file per op family, embedded in the binary, each with the
//! `extern "C"` entry points it must define.

/// Helpers prepended to every kernel file before compilation.
pub const COMMON_HEADER: &str = include_str!("../kernels/common.cuh");

/// One kernel source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelFile {
    /// File name without extension; also the name of its cached PTX.
    pub name: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

impl KernelFile {
    /// The full source NVRTC compiles: the shared header, then the file.
    pub fn full_source(&self) -> String {
        format!("#line 1 \"common.cuh\"\n{COMMON_HEADER}\n#line 1 \"{}.cu\"\n{}", self.name, self.source)
    }
}

macro_rules! kernel_file {
    ($name:literal, [$($entry:literal),* $(,)?]) => {
        KernelFile { name: $name, source: include_str!(concat!("../kernels/", $name, ".cu")), entry_points: &[$($entry),*] }
    };
}

pub const EMBEDDING: KernelFile = kernel_file!("embedding", ["embedding_gather_f32", "embedding_gather_bf16"]);
pub const RMS_NORM: KernelFile = kernel_file!(
    "rms_norm",
    [
        "rms_norm_forward_f32",
        "rms_norm_forward_bf16",
        "rms_norm_forward_pair_f32",
        "rms_norm_forward_pair_bf16",
        "rms_norm_backward_f32",
        "rms_norm_backward_add_f32",
        "rms_norm_backward_weight_f32"
    ]
);
pub const SWIGLU: KernelFile = kernel_file!(
    "swiglu",
    [
        "swiglu_forward_f32",
        "swiglu_forward_bf16",
        "swiglu_forward_to_bf16",
        "swiglu_backward_f32",
        "swiglu_backward_to_bf16"
    ]
);
pub const CROSS_ENTROPY: KernelFile = kernel_file!(
    "cross_entropy",
    [
        "cross_entropy_rows_f32",
        "cross_entropy_rows_bf16",
        "distillation_rows_f32",
        "distillation_rows_bf16",
        "score_rows_f32"
    ]
);
pub const ADAMW: KernelFile = kernel_file!("adamw", ["adamw_step_f32", "sum_squares_f32", "scale_f32"]);

pub const GLA_SCAN: KernelFile = kernel_file!(
    "gla_scan",
    [
        "mixer_features_f32",
        "mixer_features_bf16",
        "mixer_features_backward_f32",
        "mixer_features_backward_bf16",
        "mixer_to_f32_f32",
        "mixer_to_f32_bf16",
        "mixer_gate_grad_pieces_f32",
        "mixer_gate_grad_carry_f32",
        "mixer_scan_forward_f32_d64",
        "mixer_scan_forward_f32_d128",
        "mixer_scan_forward_bf16_d64",
        "mixer_scan_forward_bf16_d128",
        "mixer_scan_cols_forward_d64",
        "mixer_scan_cols_forward_d128",
        "mixer_scan_rows_reverse_d64",
        "mixer_scan_rows_reverse_d128",
        "mixer_scan_cols_reverse_d64",
        "mixer_scan_cols_reverse_d128",
        "mixer_scan_backward_d64",
        "mixer_scan_backward_d128",
        "mixer_step_f32_d64",
        "mixer_step_f32_d128",
        "mixer_step_bf16_d64",
        "mixer_step_bf16_d128",
        "mixer_segment_carry",
    ]
);

pub const GSA: KernelFile = kernel_file!(
    "gsa",
    [
        "gsa_inputs_f32",
        "gsa_inputs_bf16",
        "gsa_slot_softmax",
        "gsa_slot_softmax_backward",
        "gsa_backward_finish_f32",
        "gsa_backward_finish_bf16",
        "gsa_state_split",
        "gsa_state_join",
        "gsa_step_f32",
        "gsa_step_bf16",
    ]
);

pub const GLA_CHUNK: KernelFile = kernel_file!(
    "gla_chunk",
    [
        "mixer_chunk_states_d64",
        "mixer_chunk_states_d128",
        "mixer_chunk_output_d64",
        "mixer_chunk_output_d128",
        "mixer_chunk_states_reverse_d64",
        "mixer_chunk_states_reverse_d128",
        "mixer_chunk_dq_d64",
        "mixer_chunk_dq_d128",
        "mixer_chunk_dkv_d64",
        "mixer_chunk_dkv_d128",
        "mixer_chunk_output_f32_d64",
        "mixer_chunk_output_f32_d128",
    ]
);

pub const ATTENTION: KernelFile = kernel_file!(
    "attention",
    [
        "attention_forward_f32",
        "attention_delta_f32",
        "attention_dq_f32",
        "attention_dkv_f32",
        "attention_decode_f32",
        "cache_write_f32",
        "attention_forward_bf16",
        "attention_delta_bf16",
        "attention_dq_bf16",
        "attention_dkv_bf16",
        "attention_decode_bf16",
        "cache_write_bf16",
        "attention_forward_mma_d64",
        "attention_forward_mma_d128",
        "attention_dkv_mma_d64",
        "attention_dq_mma_d64",
        "attention_dkv_mma_d128",
        "attention_dq_mma_d128",
        "surprise_attention_mma_d64",
        "surprise_attention_mma_d128",
        "surprise_dq_mma_d64",
        "surprise_dq_mma_d128",
        "surprise_dkv_mma_d64",
        "surprise_dkv_mma_d128",
        "keys_as_queries_f32",
        "surprise_scores_f32",
        "surprise_select",
        "surprise_attention_f32",
        "surprise_attention_bf16",
        "surprise_dq_f32",
        "surprise_dq_bf16",
        "surprise_dkv_f32",
        "surprise_dkv_bf16",
        "surprise_dkv_store_f32",
        "surprise_dkv_store_bf16",
    ]
);

pub const MODEL: KernelFile = kernel_file!(
    "model",
    [
        "scale_to_f32",
        "scale_to_bf16",
        "widen_f32",
        "widen_bf16",
        "liger_mix_to_f32",
        "liger_mix_to_bf16",
        "scale_pair_f32",
        "scale_pair_bf16",
        "scale_in_place_f32",
        "add_bias_rows_f32",
        "fill_f32",
        "grm_normalize_f32",
        "grm_normalize_backward_f32",
        "rope_forward_to_f32",
        "rope_forward_to_bf16",
        "rope_backward_add_f32",
        "rope_backward_add_bf16",
        "fill_uniform_f32",
        "fill_uniform_bf16",
    ]
);

pub const DECODE: KernelFile = kernel_file!(
    "decode",
    [
        "decode_rope_append_f32",
        "decode_rope_append_bf16",
        "decode_mix_f32",
        "decode_mix_bf16",
        "surprise_decode_step_f32",
        "surprise_decode_step_bf16",
        "surprise_cache_fill_f32",
        "surprise_cache_fill_bf16",
        "decode_gemv_f32_b1",
        "decode_gemv_f32_b4",
        "decode_gemv_bf16_b1",
        "decode_gemv_bf16_b4",
        "decode_gemv_swiglu_f32_b1",
        "decode_gemv_swiglu_f32_b4",
        "decode_gemv_swiglu_bf16_b1",
        "decode_gemv_swiglu_bf16_b4",
        "decode_lora_up",
    ]
);

pub const HEAD_MIX: KernelFile = kernel_file!(
    "head_mix",
    [
        "head_mix_to_f32",
        "head_mix_to_bf16",
        "head_mix_split_f32",
        "head_mix_split_bf16",
        "head_mix_grads_f32",
        "head_mix_grads_bf16",
    ]
);

pub const ATTENTION_TRANSFER: KernelFile = kernel_file!("attention_transfer", ["attention_transfer_rows_f32"]);

pub const SAMPLING: KernelFile = kernel_file!("sampling", ["argmax_rows_f32", "sample_rows_f32"]);

/// Every kernel file of the crate.
pub const ALL: &[KernelFile] = &[
    EMBEDDING,
    RMS_NORM,
    SWIGLU,
    CROSS_ENTROPY,
    ATTENTION_TRANSFER,
    ADAMW,
    GLA_SCAN,
    GSA,
    GLA_CHUNK,
    ATTENTION,
    SAMPLING,
    MODEL,
    DECODE,
    HEAD_MIX,
];
