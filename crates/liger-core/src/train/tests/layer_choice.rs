//! The layer choice by retrieval: the per-row test and the job that keeps the layers whose
//! heads retrieve most.

use crate::error::ErrorCode;
use crate::testing::TempDir;
use crate::train::job::run_linearize;
use crate::train::layer_choice::{
    far_retrieval, specific_retrievals, LayerChoice, MAX_QUERIES_PER_RETRIEVED_TOKEN, RETRIEVAL_WEIGHT,
};
use std::sync::atomic::AtomicBool;

#[test]
fn a_retrieval_is_one_heavy_weight_beyond_the_window_and_the_sinks() {
    // Position 9, window 4: keys 0..=5 are beyond it (9 - 5 = 4 back); key 6 is inside.
    let mut row = vec![0.0f32; 10];
    row[6] = 0.9;
    assert_eq!(far_retrieval(&row, 9, 4, 0), None, "a key inside the window is not a retrieval");
    row[5] = RETRIEVAL_WEIGHT;
    assert_eq!(far_retrieval(&row, 9, 4, 0), Some(5), "the newest key beyond the window counts");
    assert_eq!(far_retrieval(&row, 9, 4, 5), Some(5), "sinks before it do not hide it");
    assert_eq!(far_retrieval(&row, 9, 4, 6), None, "a sink is not a retrieval");
    row[2] = 0.5;
    assert_eq!(far_retrieval(&row, 9, 4, 0), Some(2), "the heaviest far key is the one taken");
    // Weight spread thinly over many far keys is not a retrieval, whatever its sum.
    assert_eq!(far_retrieval(&[0.1f32; 10], 9, 4, 0), None);
    // Nothing lies beyond a window longer than the text read so far.
    assert_eq!(far_retrieval(&[1.0], 0, 4, 0), None);
    assert_eq!(far_retrieval(&row, 9, 64, 0), None);
}

#[test]
fn a_token_many_queries_take_is_a_resting_place_not_a_retrieval() {
    let many = MAX_QUERIES_PER_RETRIEVED_TOKEN as usize;
    // Key 3 taken by as many queries as allowed, key 7 by one more than that, key 9 once.
    let mut keys = vec![3; many];
    keys.extend(std::iter::repeat_n(7, many + 1));
    keys.push(9);
    assert_eq!(specific_retrievals(&keys), many as u64 + 1);
    assert_eq!(specific_retrievals(&[]), 0);
}

#[test]
fn softmax_layers_are_chosen_by_where_the_base_model_retrieves() {
    let tmp = TempDir::new("auto-retrieval");
    let mut job = super::job::tiny_job(&tmp.0, 2);
    job.options.softmax_layers = Vec::new();
    job.options.attention.window_keys = 8;
    job.auto_softmax_layers = Some(1);
    job.auto_softmax_by = LayerChoice::Retrieval;
    job.sample_prompt = None;
    let (report, stages) = super::job::run_with_stages(&job);
    let rates = report.layer_retrieval.clone().expect("the rates are reported");
    println!("retrieval rate per layer: {rates:?}; softmax layers {:?}", report.softmax_layers);
    assert!(report.layer_costs.is_none(), "no conversion is measured");
    assert!(rates.len() >= 2 && rates.iter().all(|r| (0.0..=1.0).contains(r)), "{rates:?}");
    let best = (0..rates.len()).rev().max_by(|&a, &b| rates[a].total_cmp(&rates[b])).unwrap();
    assert_eq!(report.softmax_layers, vec![best]);
    assert!(stages.iter().any(|s| s.contains("retrieves beyond the 8-key window")), "{stages:?}");

    // Text no longer than the window has nothing beyond it to measure.
    job.out_dir = tmp.0.join("short");
    job.options.attention.window_keys = 4096;
    let err = run_linearize(&job, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("longer than the window"), "{}", err.message);
}
