//! The linearize job end to end on a tiny random model over a byte-level tokenizer.

use crate::checkpoint::{load_liger_checkpoint, load_training_state};
use crate::convert::{LigerOptions, LoraOptions, LoraTarget};
use crate::error::ErrorCode;
use crate::hf::SaveDtype;
use crate::nn::loss::IGNORE;
use crate::nn::optim::AdamWConfig;
use crate::testing::random_tokens;
use crate::testing::TempDir;
use crate::train::data::{BadRows, PromptFormat};
use crate::train::fixtures::tiny_byte_model;
use crate::train::job::{base_model_loss, run_linearize, JobEvent, LinearizeJob, LinearizeReport};
use crate::train::trainer::{LongContextStage, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A small repeated Alpaca data set (so that a few steps can fit it), as JSON lines.
fn write_data(dir: &Path, bad_row: bool) -> PathBuf {
    let mut lines: Vec<String> = (0..24)
        .map(|i| {
            let (q, a) =
                [("Say hello.", "hello hello"), ("Count to three.", "one two three"), ("Name a colour.", "blue")]
                    [i % 3];
            serde_json::json!({"instruction": q, "input": "", "output": a}).to_string()
        })
        .collect();
    if bad_row {
        lines.insert(5, r#"{"instruction": 7}"#.into());
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// A job on a tiny model saved as a checkpoint directory in `tmp`.
/// Runs `job` to the end; its report and the stages it announced.
pub(super) fn run_with_stages(job: &LinearizeJob) -> (LinearizeReport, Vec<String>) {
    let mut stages = Vec::new();
    let report = run_linearize(job, &AtomicBool::new(false), &mut |e| {
        if let JobEvent::Stage(s) = e {
            stages.push(s)
        }
    })
    .unwrap();
    (report, stages)
}

pub(super) fn tiny_job(tmp: &Path, steps: u64) -> LinearizeJob {
    let model_dir = tmp.join("base");
    tiny_byte_model(17).save_checkpoint(&model_dir, SaveDtype::F32).unwrap();
    let mut job = LinearizeJob::new(model_dir, Some(write_data(tmp, false)), tmp.join("out"));
    job.options = LigerOptions { softmax_layers: vec![1], ..LigerOptions::default() };
    job.lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: 1 };
    job.train = TrainConfig {
        steps: Some(steps),
        seq_len: 64,
        micro_batch: 1,
        grad_accum: 2,
        optimizer: AdamWConfig { lr: 2e-2, ..AdamWConfig::default() },
        eval_every: 10,
        ..TrainConfig::default()
    };
    job.val_fraction = 0.15;
    job.sample_prompt = Some("Say hello.".into());
    job.sample_max_tokens = 8;
    job
}

#[test]
fn the_job_trains_saves_and_samples() {
    let tmp = TempDir::new("e2e");
    let job = tiny_job(&tmp.0, 30);
    let mut events = Vec::new();
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |e| events.push(e)).unwrap();
    let (base, untrained, trained) =
        (report.base_eval.unwrap(), report.untrained_eval.unwrap(), report.trained_eval.unwrap());
    let l = &report.losses;
    let (first, last) = (l[..5].iter().sum::<f64>() / 5.0, l[l.len() - 5..].iter().sum::<f64>() / 5.0);
    println!(
        "val ppl base {:.1}, liger untrained {:.1}, trained {:.1}; train loss first 5 steps {first:.3}, last 5 {last:.3}; {} train / {} val sequences; {:.0} tokens/s",
        base.ppl, untrained.ppl, trained.ppl, report.train_sequences, report.val_sequences, report.tokens_per_s
    );
    assert_eq!((report.steps_done, report.total_steps, report.cancelled), (30, 30, false));
    assert!(last < first - 0.3, "training did not lower the loss: {first} -> {last}");
    assert!(trained.loss < untrained.loss - 0.3, "validation loss {} -> {}", untrained.loss, trained.loss);
    assert!(report.train_records > 0 && report.val_records > 0 && report.val_sequences > 0);
    assert!(report.sample.is_some());

    // Events: stages, one progress per step, evaluations, the save, the sample.
    let progress = events.iter().filter(|e| matches!(e, JobEvent::Progress(_))).count();
    assert_eq!(progress, 30);
    let evals: Vec<&str> = events
        .iter()
        .filter_map(|e| if let JobEvent::Eval { name, .. } = e { Some(name.as_str()) } else { None })
        .collect();
    assert_eq!(evals, vec!["base", "liger (untrained)", "step 10", "step 20", "step 30", "liger (trained)"]);
    // The final model in the run folder (checkpoint::run): a run folder, with the model inside.
    assert!(events.contains(&JobEvent::Saved(job.out_dir.join("model"))));
    assert!(job.out_dir.join("liger-run.json").is_file());
    // Beside the model: report.json, every number of the page of charts (which the TypeScript
    // API draws): the training loss, the learning rate and the validation perplexity over the
    // steps, and the decoding memory per sequence. JSON writes a non-finite number as null.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job.out_dir.join("report.json")).unwrap()).unwrap();
    let series = |list: &serde_json::Value, key: Option<&str>| -> Vec<f64> {
        let items = list.as_array().unwrap().iter();
        items.map(|x| key.map_or(x, |k| &x[k]).as_f64().expect("every plotted number is finite")).collect()
    };
    for (chart, values, len) in [
        ("training loss", series(&json["losses"], None), 30),
        ("learning rate", series(&json["history"]["steps"], Some("lr")), 30),
        ("validation perplexity", series(&json["history"]["evals"], Some("ppl")), 3),
    ] {
        assert_eq!(values.len(), len, "{chart}");
    }
    assert!(json["memory"]["baseBytesPerToken"].as_u64().unwrap() > 0, "decoding memory per sequence");
    assert!(!job.out_dir.join("report.html").exists(), "the page is written by the TypeScript API");
    assert!(matches!(events.last(), Some(JobEvent::Sample(_))));

    // The saved model is the trained one, with its training state.
    let saved = load_liger_checkpoint(&job.out_dir).unwrap();
    let (state, _) = load_training_state(&job.out_dir, &saved).unwrap().unwrap();
    assert_eq!(state.step, 30);
    let tokens = random_tokens(20, saved.base.config.vocab_size, 3);
    let labels: Vec<u32> = tokens[1..].iter().copied().chain([IGNORE]).collect();
    let reloaded = saved.loss(&tokens, &labels).unwrap().loss_sum;
    assert!(reloaded.is_finite());

    // Resuming a finished run trains no further and keeps the numbers.
    let resumed =
        run_linearize(&LinearizeJob { resume: true, ..job.clone() }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(resumed.steps_done, 0);
    assert_eq!(resumed.losses, report.losses);
}

#[test]
fn the_base_model_loss_matches_its_logits_in_float64() {
    let base = tiny_byte_model(5);
    let tokens = random_tokens(300, base.config.vocab_size, 9);
    let labels: Vec<u32> =
        tokens[1..].iter().enumerate().map(|(i, &t)| if i % 7 == 0 { IGNORE } else { t }).chain([IGNORE]).collect();
    let logits = base.all_logits(&tokens).unwrap();
    let vocab = base.config.vocab_size;
    let (mut want, mut count) = (0.0f64, 0);
    for (row, &l) in logits.chunks(vocab).zip(&labels) {
        if l != IGNORE {
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            want += lse - row[l as usize] as f64;
            count += 1;
        }
    }
    let got = base_model_loss(&base, &tokens, &labels).unwrap();
    let err = (got.loss_sum - want).abs() / want.abs();
    println!("chunked base loss vs whole-sequence logits: rel error {err:.2e}");
    assert_eq!(got.count, count);
    assert!(err < 1e-5, "{} vs {want}", got.loss_sum);
    assert_eq!(base_model_loss(&base, &tokens, &labels[1..]).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn malformed_rows_fail_with_their_row_number_or_are_skipped() {
    let tmp = TempDir::new("rows");
    let mut job = tiny_job(&tmp.0, 2);
    job.data_path = Some(write_data(&tmp.0, true));
    job.sample_prompt = None;
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(err.message.contains("row 6"), "{}", err.message);
    assert!(!job.out_dir.exists());
    job.bad_rows = BadRows::Skip;
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((report.skipped_rows, report.steps_done), (1, 2));
}

#[test]
fn cancelling_stops_cleanly_and_writes_nothing_unless_asked() {
    let tmp = TempDir::new("cancel");
    let mut job = tiny_job(&tmp.0, 50);
    job.prompt_format = PromptFormat::Chat;
    let cancel = AtomicBool::new(false);
    let report = run_linearize(&job, &cancel, &mut |e| {
        if matches!(e, JobEvent::Progress(ref p) if p.step == 3) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!((report.cancelled, report.steps_done), (true, 3));
    assert!(report.trained_eval.is_none() && !job.out_dir.exists());

    job.train.save_on_cancel = true;
    cancel.store(false, Ordering::Relaxed);
    let report = run_linearize(&job, &cancel, &mut |e| {
        if matches!(e, JobEvent::Progress(ref p) if p.step == 2) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(report.cancelled);
    let saved = load_liger_checkpoint(&job.out_dir).unwrap();
    assert_eq!(load_training_state(&job.out_dir, &saved).unwrap().unwrap().0.step, 2);
}

#[test]
fn bad_job_settings_are_refused() {
    let tmp = TempDir::new("bad");
    let mut job = tiny_job(&tmp.0, 2);
    job.val_fraction = 1.0;
    assert_eq!(run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err().code, ErrorCode::InvalidArgument);
    job.val_fraction = 0.1;
    job.train.seq_len = 100_000;
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("lower seq_len"), "{}", err.message);
    job.train.seq_len = 64;
    for (micro_batch, grad_accum, seq_len, needle) in
        [(1_000_000, 1, 64, "micro_batch"), (1, 1 << 20, 64, "grad_accum"), (1, 1, 1 << 21, "seq_len")]
    {
        (job.train.micro_batch, job.train.grad_accum, job.train.seq_len) = (micro_batch, grad_accum, seq_len);
        let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        assert!(
            err.code == ErrorCode::InvalidArgument && err.message.contains(needle) && err.message.contains("limit"),
            "{}",
            err.message
        );
    }
    (job.train.micro_batch, job.train.grad_accum, job.train.seq_len) = (1, 2, 64);
    // Distillation: a weight outside [0, 1], and any weight on the CPU engine, before any work.
    for (weight, needle) in [(1.5, "[0, 1]"), (f32::NAN, "[0, 1]"), (0.5, "GPU")] {
        job.train.distill_weight = weight;
        let mut events = 0;
        let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| events += 1).unwrap_err();
        assert!(err.code == ErrorCode::InvalidArgument && err.message.contains(needle), "{}", err.message);
        assert_eq!(events, 0, "refused after work began");
    }
    assert!(!job.out_dir.exists());
    job.train.distill_weight = 0.0;
    job.model_path = tmp.0.join("missing.gguf");
    assert_eq!(run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err().code, ErrorCode::Io);
}

#[test]
fn softmax_layers_are_chosen_by_what_converting_each_costs() {
    let tmp = TempDir::new("auto");
    let mut job = tiny_job(&tmp.0, 2);
    job.options.softmax_layers = Vec::new();
    let layers = tiny_byte_model(17).config.num_layers;
    assert!(layers >= 2, "the tiny model needs layers to choose from");
    std::fs::write(
        tmp.0.join("select.txt"),
        "Say hello. hello hello. Count to three. one two three. Name a colour: blue. ".repeat(8),
    )
    .unwrap();
    job.select_data = Some(tmp.0.join("select.txt"));
    job.auto_softmax_layers = Some(1);
    job.sample_prompt = None;
    let (report, stages) = run_with_stages(&job);
    let costs = report.layer_costs.clone().expect("costs are reported");
    println!("conversion cost per layer: {costs:?}; softmax layers {:?}", report.softmax_layers);
    assert_eq!(costs.len(), layers);
    assert!(costs.iter().all(|c| c.is_finite()));
    // The one layer chosen is the costliest.
    let best = (0..layers).max_by(|&a, &b| costs[a].total_cmp(&costs[b])).unwrap();
    let expected = vec![best];
    assert_eq!(report.softmax_layers, expected);
    assert!(stages.iter().any(|s| s.contains("measuring the conversion of layer 1 of")), "{stages:?}");
    let saved = load_liger_checkpoint(&job.out_dir).unwrap();
    assert_eq!(saved.options.softmax_layers, expected);

    // A conversion that computes softmax attention exactly (the window spans the whole text
    // and carries all the weight) costs nothing in any layer.
    let exact = tmp.0.join("exact");
    std::fs::create_dir(&exact).unwrap();
    job.out_dir = exact.join("out");
    job.options.attention.window_keys = 4096;
    (job.options.attention.alpha, job.options.attention.beta) = (0.0, 1.0);
    job.train.steps = Some(1);
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    let costs = report.layer_costs.unwrap();
    assert!(costs.iter().all(|c| c.abs() < 1e-5), "{costs:?}");
}

#[test]
fn choosing_keeps_the_given_layers_and_adds_the_costliest() {
    use crate::train::layer_choice::choose_softmax_layers;
    let costs = [0.5, 2.0, -0.1, 3.0, 1.0];
    assert_eq!(choose_softmax_layers(&costs, &[], 2), vec![1, 3]);
    assert_eq!(choose_softmax_layers(&costs, &[3], 2), vec![1, 3, 4]);
    assert_eq!(choose_softmax_layers(&costs, &[0], 0), vec![0]);
    assert_eq!(choose_softmax_layers(&costs, &[], 9), vec![0, 1, 2, 3, 4]);
}

#[test]
fn an_output_folder_with_the_users_files_is_refused_before_any_work() {
    let tmp = TempDir::new("refuse");
    let mut job = tiny_job(&tmp.0, 2);
    std::fs::create_dir_all(&job.out_dir).unwrap();
    std::fs::write(job.out_dir.join("a.txt"), "keep").unwrap();
    let mut events = Vec::new();
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |e| events.push(e)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("a.txt"), "{}", err.message);
    assert!(events.is_empty(), "refused before loading anything: {events:?}");
    assert_eq!(std::fs::read_to_string(job.out_dir.join("a.txt")).unwrap(), "keep");
    // With overwrite the run is written beside the user's files, which stay.
    job.sample_prompt = None;
    job.overwrite = true;
    run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read_to_string(job.out_dir.join("a.txt")).unwrap(), "keep");
    assert!(load_liger_checkpoint(&job.out_dir).is_ok());

    // A run folder is not started again by accident: it takes --resume or --overwrite.
    job.out_dir = tmp.0.join("run");
    job.overwrite = false;
    run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(
        err.code == ErrorCode::InvalidArgument
            && err.message.contains("holds a liger run")
            && err.message.contains("--overwrite"),
        "{}",
        err.message
    );
    job.overwrite = true;
    run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(load_liger_checkpoint(&job.out_dir).is_ok());
}

#[test]
fn checkpoints_go_to_numbered_folders_the_newest_kept_and_resume_takes_the_latest() {
    let tmp = TempDir::new("layout");
    let mut job = tiny_job(&tmp.0, 7);
    (job.sample_prompt, job.train.eval_every, job.train.save_every, job.keep_checkpoints) = (None, 0, 2, Some(2));
    let cancel = AtomicBool::new(false);
    let report = run_linearize(&job, &cancel, &mut |e| {
        if matches!(e, JobEvent::Progress(ref p) if p.step == 6) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!((report.cancelled, report.steps_done), (true, 6));
    let names = |dir: &std::path::Path| {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    };
    // Saves at steps 2, 4 and 6; only the newest two are kept; no final model yet.
    assert_eq!(names(&job.out_dir), ["checkpoint-4", "checkpoint-6", "liger-run.json"]);
    let latest = load_liger_checkpoint(&job.out_dir).unwrap();
    assert_eq!(load_training_state(&job.out_dir, &latest).unwrap().unwrap().0.step, 6);

    // Resume continues from checkpoint-6 and finishes with the final model beside the checkpoints.
    job.resume = true;
    let resumed = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((resumed.steps_done, resumed.total_steps), (1, 7));
    assert_eq!(names(&job.out_dir), ["checkpoint-4", "checkpoint-6", "liger-run.json", "model", "report.json"]);
    let last = load_liger_checkpoint(&job.out_dir).unwrap();
    assert_eq!(load_training_state(&job.out_dir, &last).unwrap().unwrap().0.step, 7);

    // Starting the run again replaces its own checkpoints and model, and only those.
    std::fs::write(job.out_dir.join("notes.txt"), "mine").unwrap();
    (job.resume, job.overwrite, job.train.save_every) = (false, true, 0);
    run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(names(&job.out_dir), ["liger-run.json", "model", "notes.txt", "report.json"]);
    // A run folder that cannot be started again keeps its files: keep 0 is refused first.
    job.keep_checkpoints = Some(0);
    assert_eq!(run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(names(&job.out_dir), ["liger-run.json", "model", "notes.txt", "report.json"]);
}

#[test]
fn resuming_with_other_settings_is_refused_naming_each_difference() {
    let tmp = TempDir::new("resume-settings");
    let mut job = tiny_job(&tmp.0, 3);
    job.sample_prompt = None;
    run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    job.resume = true;
    let mut changed = job.clone();
    changed.train.optimizer.lr = 5e-3;
    changed.lora.rank = 2;
    changed.options.attention.window_keys = 9;
    let err = run_linearize(&changed, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    for needle in ["optimizer.lr", "lora.rank: saved 4, asked 2", "attention.window_keys", "another folder"] {
        assert!(err.message.contains(needle), "{needle}: {}", err.message);
    }
    // How often to validate and save may change; the same settings resume.
    job.train.eval_every = 1;
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((report.steps_done, report.total_steps, report.losses.len()), (0, 3, 3), "nothing left to train");
}

#[test]
fn validation_reads_its_own_text_when_given() {
    let tmp = TempDir::new("val-data");
    let mut job = tiny_job(&tmp.0, 2);
    job.sample_prompt = None;
    std::fs::write(tmp.0.join("valid.raw"), " = Heading = \n Count to three. one two three. ".repeat(10)).unwrap();
    job.val_data = Some(tmp.0.join("valid.raw"));
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((report.train_records, report.val_records), (24, 1), "every record trains; the text validates");
    assert!(report.val_sequences > 0 && report.trained_eval.is_some());
}

#[test]
fn a_run_that_diverges_stops_with_a_typed_error_and_keeps_its_last_good_checkpoint() {
    let tmp = TempDir::new("diverge");
    let mut job = tiny_job(&tmp.0, 6);
    job.sample_prompt = None;
    job.train.save_every = 1;
    job.train.eval_every = 0;
    // An absurd learning rate: the first update makes the adapters overflow, so a later
    // step's loss is not finite.
    job.train.optimizer.lr = 1e30;
    job.train.clip_grad_norm = 0.0;
    let mut saved = 0;
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |e| saved += matches!(e, JobEvent::Saved(_)) as usize)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NonFiniteLoss, "{}", err.message);
    assert!(saved >= 1, "a checkpoint was saved before the loss went bad");
    let model = load_liger_checkpoint(&job.out_dir).unwrap();
    let (state, _) = load_training_state(&job.out_dir, &model).unwrap().unwrap();
    assert!(
        state.losses.iter().all(|l| l.is_finite()),
        "the kept checkpoint is from before the failure: {:?}",
        state.losses
    );
    assert_eq!(state.step as usize, saved);
    assert!(model.lora_params().iter().all(|(_, v)| v.iter().all(|x| x.is_finite())), "the kept adapters are finite");
}

/// A run stopped halfway and resumed computes the same losses, bit for bit, as one that ran
/// straight through, also when the base model's weights are not f32 (here bf16, as a GGUF's
/// quantized types): the resumed run must train on the base's own tensors, not on the
/// checkpoint's f32 copy of them, whose products round differently.
#[test]
fn resuming_on_a_non_f32_base_is_bit_exact() {
    let tmp = TempDir::new("resume-bf16");
    let mut job = tiny_job(&tmp.0, 6);
    let model_dir = tmp.0.join("base-bf16");
    tiny_byte_model(17).save_checkpoint(&model_dir, SaveDtype::BF16).unwrap();
    job.model_path = model_dir;
    (job.sample_prompt, job.train.eval_every) = (None, 0);
    let straight = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();

    job.out_dir = tmp.0.join("halves");
    job.train.save_on_cancel = true;
    let cancel = AtomicBool::new(false);
    let first = run_linearize(&job, &cancel, &mut |e| {
        if matches!(e, JobEvent::Progress(ref p) if p.step == 3) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!((first.cancelled, first.steps_done), (true, 3));
    job.resume = true;
    let resumed = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(resumed.steps_done, 3);
    let bits = |l: &[f64]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    println!("straight {:?}\nresumed  {:?}", straight.losses, resumed.losses);
    assert_eq!(bits(&resumed.losses), bits(&straight.losses));
}

#[test]
fn a_surprise_cache_is_trained_with_or_added_after_training() {
    let tmp = TempDir::new("surprise");
    let mut job = tiny_job(&tmp.0, 6);
    (job.options.attention.window_keys, job.options.attention.sink_keys, job.options.attention.surprise_keys) =
        (8, 1, 4);
    job.sample_prompt = None;
    let with_cache = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(load_liger_checkpoint(&job.out_dir).unwrap().options.attention.surprise_keys, 4);
    // Resuming the finished run accepts its own settings.
    let resumed =
        run_linearize(&LinearizeJob { resume: true, ..job.clone() }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(resumed.steps_done, 0);

    // Added after training, with the repeat rule: the saved model carries both; resuming the
    // finished run accepts its own settings.
    let mut after = LinearizeJob { surprise_after_training: true, out_dir: tmp.0.join("after"), ..job.clone() };
    after.options.attention.surprise_repeat_tolerance = 0.05;
    let added = run_linearize(&after, &AtomicBool::new(false), &mut |_| {}).unwrap();
    let saved = load_liger_checkpoint(&after.out_dir).unwrap().options.attention;
    assert_eq!((saved.surprise_keys, saved.surprise_repeat_tolerance), (4, 0.05));
    let resumed =
        run_linearize(&LinearizeJob { resume: true, ..after.clone() }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(resumed.steps_done, 0);
    // Both save the same decoding state; only the first trained through the cache.
    assert_eq!(with_cache.state_bytes, added.state_bytes);
    let (a, b) = (&with_cache.losses, &added.losses);
    println!("train losses with the cache {a:?}, cache added after training {b:?}");
    assert!(a.iter().all(|x| x.is_finite()) && a != b);

    let no_keys = LinearizeJob { surprise_after_training: true, out_dir: tmp.0.join("none"), ..tiny_job(&tmp.0, 2) };
    let err = run_linearize(&no_keys, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("surprise_keys"), "{}", err.message);
}

#[test]
fn attention_transfer_runs_before_training_and_brings_the_attention_toward_softmax() {
    let tmp = TempDir::new("attention-transfer");
    let mut job = tiny_job(&tmp.0, 4);
    job.train.attention_transfer_steps = 12;
    // Steps over most of the data, so that their losses compare.
    job.train.grad_accum = 8;
    job.train.eval_every = 0;
    job.sample_prompt = None;
    let mut events = Vec::new();
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |e| events.push(e)).unwrap();
    let transfer = report.attention_transfer.expect("the run reports its attention-transfer stage");
    let l = &transfer.losses;
    println!("attention-transfer loss per step: {l:?}");
    assert_eq!((transfer.steps_done, l.len()), (12, 12));
    assert!(l.iter().all(|x| x.is_finite() && *x > 0.0));
    assert!(l[9..].iter().sum::<f64>() < 0.7 * l[..3].iter().sum::<f64>(), "the stage lowers its loss: {l:?}");
    // Then the language-model stage, with its own step count.
    assert_eq!((report.steps_done, report.total_steps, report.losses.len()), (4, 4, 4));
    let progress = events.iter().filter(|e| matches!(e, JobEvent::Progress(_))).count();
    assert_eq!(progress, 12 + 4);
    let stages: Vec<&String> =
        events.iter().filter_map(|e| if let JobEvent::Stage(s) = e { Some(s) } else { None }).collect();
    let at = stages.iter().position(|s| s.starts_with("attention transfer: 12 steps")).expect("a stage line");
    let training = stages.iter().position(|s| s.starts_with("training: 4 steps")).expect("a stage line");
    assert!(at < training);
    // A resumed run is past the stage and does not run it again.
    let resumed =
        run_linearize(&LinearizeJob { resume: true, ..job.clone() }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(resumed.attention_transfer.is_none());
}

#[test]
fn attention_transfer_of_a_model_without_liger_layers_is_refused_before_training() {
    let tmp = TempDir::new("attention-transfer-softmax");
    let mut job = tiny_job(&tmp.0, 2);
    job.options.softmax_layers = vec![0, 1];
    job.train.attention_transfer_steps = 3;
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("nothing to train"), "{}", err.message);
}

#[test]
fn a_long_context_stage_trains_on_longer_sequences_after_the_training() {
    let tmp = TempDir::new("long-context");
    let mut job = tiny_job(&tmp.0, 4);
    job.train.long_context = Some(LongContextStage { steps: 3, seq_len: 128 });
    job.train.eval_every = 0;
    job.sample_prompt = None;
    let mut events = Vec::new();
    let report = run_linearize(&job, &AtomicBool::new(false), &mut |e| events.push(e)).unwrap();
    let long = report.long_context.expect("the run reports its long-context stage");
    assert_eq!((long.steps_done, long.losses.len()), (3, 3));
    assert!(long.losses.iter().all(|l| l.is_finite() && *l > 0.0));
    assert_eq!((report.steps_done, report.losses.len()), (4, 4));
    // Progress of both; the stage's line after training's, with sequences of its length.
    let lengths: Vec<usize> = events
        .iter()
        .filter_map(|e| if let JobEvent::Progress(p) = e { Some(p.total_steps as usize) } else { None })
        .collect();
    assert_eq!(lengths, vec![4, 4, 4, 4, 3, 3, 3]);
    let stages: Vec<&String> =
        events.iter().filter_map(|e| if let JobEvent::Stage(s) = e { Some(s) } else { None }).collect();
    let training = stages.iter().position(|s| s.starts_with("training: 4 steps")).unwrap();
    let long_line =
        stages.iter().position(|s| s.starts_with("long context: 3 steps of 2 sequences of 128 tokens")).unwrap();
    assert!(training < long_line, "{stages:?}");
    // The saved model is the one after the stage; resuming the finished run does not repeat it.
    let resumed =
        run_linearize(&LinearizeJob { resume: true, ..job.clone() }, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(resumed.long_context.is_none());
    // A stage no longer than the training, or longer than the data holds, is refused before any work.
    for (seq_len, what) in [(64, "longer than the training"), (1 << 16, "less than one sequence")] {
        let dir = tmp.0.join(format!("bad-{seq_len}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bad = tiny_job(&dir, 2);
        bad.train.long_context = Some(LongContextStage { steps: 1, seq_len });
        let err = run_linearize(&bad, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains(what), "{}", err.message);
    }
}
