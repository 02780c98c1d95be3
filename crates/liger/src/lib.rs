//! liger: the jobs a user runs (linearize, evaluate, perplexity, log-likelihoods), with their
//! options, defaults and validation, on a chosen [`Device`], reporting typed events.
//!
//! The bindings (`liger-node`) only convert values to and from these types and run the jobs
//! off the JavaScript thread; the math is `liger-core`'s (CPU) and `liger-cuda`'s (GPU, with
//! the `cuda` feature). Errors are `liger-core`'s, typed by [`ErrorCode`].
//!
//! | what | options | result | events |
//! |---|---|---|---|
//! | [`linearize()`] | [`LinearizeOptions`] | `LinearizeReport` | [`LinearizeEvent`] |
//! | [`evaluate()`] | [`EvaluateOptions`] | `EvalReport` | [`EvalEvent`] |
//! | [`perplexity()`] | [`TextSource`], [`PerplexityOptions`] | `PerplexityResult` | [`EvalEvent`] (progress) |
//! | [`loglikelihood()`] | `LoglikRequest`s, [`LoglikelihoodOptions`] | [`LoglikelihoodResult`] | [`EvalEvent`] (progress) |

pub mod device;
pub mod events;
pub mod export;
pub mod jobs;
pub mod model;
pub mod parse;

pub use device::{gpu_info, Device, GpuInfo};
pub use events::{EvalEvent, LinearizeEvent};
pub use export::{export, ExportRequest, EXPORT_FORMATS};
pub use jobs::eval::{evaluate, EvaluateOptions, PasskeyTest};
pub use jobs::linearize::{linearize, LinearizeOptions};
pub use jobs::loglik::{loglikelihood, LoglikelihoodOptions, LoglikelihoodResult, LoglikelihoodScore};
pub use jobs::perplexity::{perplexity, PerplexityOptions, TextSource};
pub use model::Model;

pub use liger_core::{Error, ErrorCode, Result};
