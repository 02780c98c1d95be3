use super::*;

/// Bytes as token ids: enough to check masking and packing exactly.
fn bytes(text: &str, _at_start: bool) -> Result<Vec<u32>> {
    Ok(text.bytes().map(u32::from).collect())
}

fn alpaca(i: &str, x: &str) -> Result<String> {
    Ok(alpaca_prompt(i, x))
}

#[test]
fn json_array_and_json_lines_are_read_with_row_numbers_in_errors() {
    let mut ds = Dataset::default();
    let arr = r#"[{"instruction": "a", "input": "", "output": "b"}, {"text": "plain"}]"#;
    parse_records(arr, Path::new("x.json"), BadRows::Fail, &mut ds).unwrap();
    assert_eq!(ds.records.len(), 2);
    assert_eq!(ds.records[1], Record::Text("plain".into()));
    let lines = "{\"instruction\": \"q\", \"output\": \"r\"}\n\n{\"bad\": 1}\n{\"text\": 5}\n";
    let err = parse_records(lines, Path::new("y.jsonl"), BadRows::Fail, &mut ds).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(err.message.contains("y.jsonl: row 3"), "{}", err.message);
    let mut ds = Dataset::default();
    parse_records(lines, Path::new("y.jsonl"), BadRows::Skip, &mut ds).unwrap();
    assert_eq!((ds.records.len(), ds.skipped), (1, 2));
    let err = parse_records("[1, 2", Path::new("z.json"), BadRows::Skip, &mut ds).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidFile);
}

#[test]
fn shards_are_read_in_natural_order() {
    let dir = std::env::temp_dir().join(format!("liger-data-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in [10, 2, 1] {
        std::fs::write(dir.join(format!("part_{i}.json")), format!(r#"[{{"text": "{i}"}}]"#)).unwrap();
    }
    let ds = read_dataset(&dir, BadRows::Fail).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ds.records, vec![Record::Text("1".into()), Record::Text("2".into()), Record::Text("10".into())]);
}

#[test]
fn the_alpaca_template_is_the_published_one() {
    assert_eq!(
        alpaca_prompt("Name a color.", ""),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
    );
    assert!(alpaca_prompt("Sum.", "1 2").contains("### Input:\n1 2\n\n### Response:\n"));
}

#[test]
fn prompt_is_masked_and_eos_is_trained() {
    let r = Record::Instruction { instruction: "i".into(), input: "".into(), output: "ok".into() };
    let ex = tokenize_record(&r, &alpaca, &bytes, 7).unwrap();
    let prompt_len = alpaca_prompt("i", "").len();
    assert_eq!(ex.tokens.len(), prompt_len + 3);
    assert!(ex.trained[..prompt_len].iter().all(|t| !t));
    assert!(ex.trained[prompt_len..].iter().all(|&t| t));
    assert_eq!(*ex.tokens.last().unwrap(), 7);
}

#[test]
fn packing_shifts_labels_and_masks_prompt_targets() {
    let a = Example { tokens: vec![10, 11, 12, 13], trained: vec![false, false, true, true] };
    let b = Example { tokens: vec![20, 21, 22], trained: vec![false, true, true] };
    let seqs = pack(&[a, b], 3);
    // stream 10 11 12 13 20 21 22; windows [10 11 12] -> [11 12 13], [13 20 21] -> [20 21 22]
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[0].inputs, vec![10, 11, 12]);
    assert_eq!(seqs[0].labels, vec![IGNORE, 12, 13]);
    assert_eq!(seqs[1].inputs, vec![13, 20, 21]);
    assert_eq!(seqs[1].labels, vec![IGNORE, 21, 22]);
}

#[test]
fn validation_split_is_seeded_and_disjoint() {
    let recs: Vec<Record> = (0..100).map(|i| Record::Text(i.to_string())).collect();
    let (t1, v1) = split_validation(recs.clone(), 0.1, 5).unwrap();
    let (t2, v2) = split_validation(recs.clone(), 0.1, 5).unwrap();
    assert_eq!((t1.len(), v1.len()), (90, 10));
    assert_eq!(v1, v2);
    assert_eq!(t1, t2);
    assert!(v1.iter().all(|r| !t1.contains(r)));
    assert_eq!(split_validation(recs, 1.5, 0).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn plain_text_files_are_one_text_record_each_beside_json_records() {
    let dir = std::env::temp_dir().join(format!("liger-data-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.raw"), " = Title = \n\n words and more words\n").unwrap();
    std::fs::write(dir.join("b.jsonl"), "{\"text\": \"one\"}\n{\"instruction\": \"i\", \"output\": \"o\"}\n").unwrap();
    std::fs::write(dir.join("c.txt"), "  \n").unwrap();
    std::fs::write(dir.join("ignored.md"), "not data").unwrap();
    let data = read_dataset(&dir, BadRows::Fail).unwrap();
    assert_eq!(data.records.len(), 3, "{:?}", data.records);
    assert_eq!(data.records[0], Record::Text(" = Title = \n\n words and more words\n".into()));
    assert_eq!(data.records[1], Record::Text("one".into()));
    let single = read_dataset(&dir.join("a.raw"), BadRows::Fail).unwrap();
    assert_eq!(single.records, vec![data.records[0].clone()]);
    std::fs::remove_dir_all(&dir).unwrap();
}
