//! Each task's prompts from a few fixture rows, against hand-checked strings; bad files.

use super::{data_dir, temp_dir};
use crate::error::ErrorCode;
use crate::eval::formats::{self, hellaswag_preprocess, python_capitalize};
use crate::eval::loglik::LoglikRequest;
use crate::eval::tasks::{subset, Task};
use crate::eval::wikitext;
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn pairs(reqs: &[LoglikRequest]) -> Vec<(&str, &str)> {
    reqs.iter().map(|r| (r.context.as_str(), r.continuation.as_str())).collect()
}

#[test]
fn arc_prompts_with_letter_and_number_labels() {
    let dir = temp_dir("arc");
    let p = write(
        &dir,
        "arc.jsonl",
        concat!(
            r#"{"id":"a","question":{"stem":"Which is a gas?","choices":[{"text":"ice","label":"A"},{"text":"steam","label":"B"},{"text":"rock","label":"C"}]},"answerKey":"B"}"#,
            "\n\n",
            r#"{"id":"b","question":{"stem":"Pick four.","choices":[{"text":"one","label":"1"},{"text":"four","label":"4"}]},"answerKey":"4"}"#,
            "\n"
        ),
    );
    let docs = formats::arc(&p).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        pairs(&docs[0].requests),
        [
            ("Question: Which is a gas?\nAnswer:", " ice"),
            ("Question: Which is a gas?\nAnswer:", " steam"),
            ("Question: Which is a gas?\nAnswer:", " rock")
        ]
    );
    assert_eq!((docs[0].gold, docs[0].choice_lengths.clone()), (1, vec![3, 5, 4]));
    assert_eq!(pairs(&docs[1].requests)[1], ("Question: Pick four.\nAnswer:", " four"));
    assert_eq!(docs[1].gold, 1);
}

#[test]
fn arc_rows_of_the_shared_data_set() {
    let docs = formats::arc(&Task::ArcEasy.default_path(&data_dir())).unwrap();
    assert_eq!(docs.len(), 2376);
    assert_eq!(
        docs[0].requests[0],
        LoglikRequest::new(
            "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
            " Sunlight is the source of energy for nearly all ecosystems."
        )
    );
    assert_eq!(docs[0].gold, 0);
    assert_eq!(formats::arc(&Task::ArcChallenge.default_path(&data_dir())).unwrap().len(), 1172);
}

#[test]
fn piqa_prompts_and_labels() {
    let dir = temp_dir("piqa");
    let p = write(&dir, "valid.jsonl", "{\"goal\": \"Open a jar\", \"sol1\": \"Twist the lid.\", \"sol2\": \"Eat the lid.\"}\n{\"goal\": \"Dry hair\", \"sol1\": \"Use water\", \"sol2\": \"Use a towel\"}\n");
    write(&dir, "valid-labels.lst", "0\n1\n");
    let docs = formats::piqa(&p).unwrap();
    assert_eq!(
        pairs(&docs[0].requests),
        [("Question: Open a jar\nAnswer:", " Twist the lid."), ("Question: Open a jar\nAnswer:", " Eat the lid.")]
    );
    assert_eq!((docs[0].gold, docs[1].gold), (0, 1));
    write(&dir, "valid-labels.lst", "0\n");
    let e = formats::piqa(&p).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("valid-labels.lst") && e.message.contains("1 labels for the 2 rows"), "{e}");
}

#[test]
fn hellaswag_preprocessing_matches_lm_eval() {
    assert_eq!(hellaswag_preprocess("  Remove the [step] tags [title] Then go.  "), "Remove the tags. Then go.");
    assert_eq!(hellaswag_preprocess("a [x\ny] b"), "a [x\ny] b");
    assert_eq!(hellaswag_preprocess("a [unclosed"), "a [unclosed");
    assert_eq!(hellaswag_preprocess("x [a [b] c]"), "x c]");
    assert_eq!(hellaswag_preprocess("four    spaces"), "four  spaces");
    assert_eq!(python_capitalize("tHE dog"), "The dog");
    assert_eq!(python_capitalize(""), "");
}

#[test]
fn hellaswag_jsonl_query_capitalizes_ctx_b() {
    let dir = temp_dir("hs");
    let p = write(
        &dir,
        "hellaswag_val.jsonl",
        r#"{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "split": "val", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3}
{"activity_label": "Home and Garden", "ctx_a": "[header] How to dry a shirt [title] Hang it.", "ctx_b": "SHAKE it out", "endings": ["[step] Then wait.", "b", "c", "d"], "label": "0"}
"#,
    );
    let docs = formats::hellaswag_jsonl(&p).unwrap();
    assert_eq!(
        docs[0].requests[0],
        LoglikRequest::new(
            "Roof shingle removal: A man is sitting on a roof. He",
            " is using wrap to wrap a pair of skis."
        )
    );
    assert_eq!(docs[0].requests[3].continuation, " starts pulling up roofing on a roof.");
    assert_eq!(docs[0].gold, 3);
    // lm-eval strips before removing tags, so a leading "[step] " leaves a space behind.
    assert_eq!(
        docs[1].requests[0],
        LoglikRequest::new("Home and Garden: How to dry a shirt. Hang it. Shake it out", "  Then wait.")
    );
    assert_eq!(docs[1].choice_lengths[0], " Then wait.".len());
}

#[test]
fn hellaswag_text_format_and_the_shared_file() {
    let dir = temp_dir("hst");
    let p = write(&dir, "h.txt", "Cooking: a man stirs. he adds\n2\nsalt.\nwater [step] too.\npepper.\nnothing.\n");
    let docs = formats::hellaswag_text(&p).unwrap();
    assert_eq!(docs[0].requests[1], LoglikRequest::new("Cooking: a man stirs. he adds", " water too."));
    assert_eq!(docs[0].gold, 2);
    write(&dir, "bad.txt", "ctx\n7\na\nb\nc\nd\n");
    let e = formats::hellaswag_text(&dir.join("bad.txt")).unwrap_err();
    assert!(e.message.contains("bad.txt") && e.message.contains("out of range"), "{e}");
    let shared = formats::hellaswag_text(&Task::Hellaswag.default_path(&data_dir())).unwrap();
    assert_eq!(shared.len(), 10042);
    assert!(shared.iter().all(|d| d.requests.len() == 4 && d.gold < 4));
}

#[test]
fn winogrande_partial_scoring() {
    let dir = temp_dir("wg");
    let p = write(&dir, "dev.jsonl", "{\"sentence\": \"Sarah was a much better surgeon than Maria so _ always got the harder cases.\", \"option1\": \"Sarah\", \"option2\": \"Maria\", \"answer\": \"1\"}\n");
    let docs = formats::winogrande(&p).unwrap();
    assert_eq!(
        pairs(&docs[0].requests),
        [
            ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
            ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases.")
        ]
    );
    assert_eq!(docs[0].gold, 0);
    write(
        &dir,
        "bad.jsonl",
        "{\"sentence\": \"no blank\", \"option1\": \"a\", \"option2\": \"b\", \"answer\": \"1\"}\n",
    );
    let e = formats::winogrande(&dir.join("bad.jsonl")).unwrap_err();
    assert!(e.message.contains("bad.jsonl: row 1") && e.message.contains("blank"), "{e}");
}

#[test]
fn mmlu_five_shot_prompt() {
    let dir = temp_dir("mmlu");
    let dev: String =
        (1..=5).map(|i| format!("Dev q{i}?,a{i},b{i},c{i},d{i},{}\n", ["A", "B", "C", "D", "A"][i - 1])).collect();
    write(&dir, "data/dev/high_school_physics_dev.csv", &dev);
    write(
        &dir,
        "data/test/high_school_physics_test.csv",
        "\"What is 1,5 \"\"m\"\"?\nExplain. \",one,two,\"three, four\",five,C\n",
    );
    let q = formats::mmlu_csv(&dir.join("data/test/high_school_physics_test.csv")).unwrap();
    assert_eq!(q[0].question, "What is 1,5 \"m\"?\nExplain. ");
    let dev = formats::mmlu_csv(&dir.join("data/dev/high_school_physics_dev.csv")).unwrap();
    let doc = formats::mmlu_doc("high_school_physics", &dev, &q[0]);
    let mut expected =
        String::from("The following are multiple choice questions (with answers) about high school physics.\n\n");
    for i in 1..=5 {
        expected +=
            &format!("Dev q{i}?\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\nAnswer: {}\n\n", ["A", "B", "C", "D", "A"][i - 1]);
    }
    expected += "What is 1,5 \"m\"?\nExplain.\nA. one\nB. two\nC. three, four\nD. five\nAnswer:";
    assert_eq!(doc.requests[0].context, expected);
    assert_eq!(doc.requests.iter().map(|r| r.continuation.as_str()).collect::<Vec<_>>(), [" A", " B", " C", " D"]);
    assert_eq!(doc.gold, 2);
    write(&dir, "bad.csv", "q,a,b,c,d,E\n");
    let e = formats::mmlu_csv(&dir.join("bad.csv")).unwrap_err();
    assert!(e.message.contains("bad.csv: row 1") && e.message.contains("\"E\""), "{e}");
    write(&dir, "open.csv", "\"never closed,a\n");
    assert_eq!(formats::mmlu_csv(&dir.join("open.csv")).unwrap_err().code, ErrorCode::InvalidFile);
}

#[test]
fn lambada_context_and_target() {
    let dir = temp_dir("lambada");
    let p = write(&dir, "l.jsonl", "{\"text\": \"He said\\n\\n\\\"I care about  signs\"}\n{\"text\": \"single\"}\n");
    let reqs = formats::lambada(&p).unwrap();
    assert_eq!(reqs[0], LoglikRequest::new("He said\n\n\"I care about ", " signs"));
    assert_eq!(reqs[1], LoglikRequest::new("", " single"));
    let shared = formats::lambada(&Task::LambadaOpenai.default_path(&data_dir())).unwrap();
    assert_eq!(shared.len(), 5153);
    assert!(shared[0].context.ends_with("I don't care about") && shared[0].continuation == " signs");
}

#[test]
fn bad_files_name_the_file_and_row() {
    let dir = temp_dir("bad");
    let e = formats::arc(&dir.join("missing.jsonl")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Io);
    assert!(e.message.contains("missing.jsonl"));
    write(&dir, "broken.jsonl", "{\"question\": {\"stem\": \"q\", \"choices\": []}, \"answerKey\": \"A\"}\n");
    let e = formats::arc(&dir.join("broken.jsonl")).unwrap_err();
    assert!(e.message.contains("broken.jsonl: row 1") && e.message.contains("answerKey"), "{e}");
    write(&dir, "broken2.jsonl", "{\"text\": \"a b\"}\n{not json\n");
    let e = formats::lambada(&dir.join("broken2.jsonl")).unwrap_err();
    assert!(e.message.contains("broken2.jsonl: row 2") && e.message.contains("JSON"), "{e}");
    write(&dir, "nofield.jsonl", "{\"txt\": \"a b\"}\n");
    assert!(formats::lambada(&dir.join("nofield.jsonl")).unwrap_err().message.contains("missing field \"text\""));
    write(&dir, "empty.jsonl", "\n");
    assert!(formats::lambada(&dir.join("empty.jsonl")).unwrap_err().message.contains("no rows"));
    write(&dir, "fake.txt.bz2", "not bzip2");
    assert_eq!(formats::hellaswag_text(&dir.join("fake.txt.bz2")).unwrap_err().code, ErrorCode::InvalidFile);
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let e = Task::from_name("hellaswagg").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    for name in crate::eval::TASK_NAMES {
        assert!(e.message.contains(name), "{e}");
        assert_eq!(Task::from_name(name).unwrap().name(), name);
    }
}

#[test]
fn limit_draws_a_fixed_subset_in_file_order() {
    let items: Vec<usize> = (0..100).collect();
    let a = subset(items.clone(), Some(10), 7);
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a, subset(items.clone(), Some(10), 7));
    assert_ne!(a, subset(items.clone(), Some(10), 8));
    assert_eq!(subset(items.clone(), Some(1000), 7), items);
    assert_eq!(subset(items.clone(), None, 7), items);
}

#[test]
fn wikitext_documents_and_detokenizer() {
    let raw = " \n = Alpha = \n \n Alpha is a letter @-@ like thing , with ( brackets ) . \n \n = = Use = = \n \n It 's \" quoted \" . \n = Beta = \n \n Beta 's 1 @,@ 000 . \n";
    let docs = wikitext::documents(raw);
    assert_eq!(docs.len(), 2);
    assert!(docs[0].starts_with(" = Alpha = ") && docs[0].contains("= = Use = ="));
    assert!(docs[1].starts_with(" = Beta = "));
    assert_eq!(wikitext::detokenize(" = = Use = = \n It 's \" quoted \" . x"), " == Use ==\nIt's \"quoted\". x");
    assert_eq!(wikitext::detokenize("a @-@ b , c ( d ) [ e ] 1 @.@ 5 N 's"), "a-b, c (d) [e] 1.5 1's");
    assert_eq!(wikitext::count_words(" a  b\nc "), 5);
    assert_eq!(wikitext::count_words("a b"), 2);
    let shared = formats::read_text(&Task::Wikitext.default_path(&data_dir())).unwrap();
    assert_eq!(wikitext::documents(&shared).len(), 62);
}

#[test]
fn hellaswag_rows_of_the_shared_file_hand_checked() {
    let docs = formats::hellaswag_text(&Task::Hellaswag.default_path(&data_dir())).unwrap();
    let (first, second, tagged) = (&docs[0], &docs[1], &docs[3505]);
    assert_eq!(first.requests[0].context, "Roof shingle removal: A man is sitting on a roof. he");
    assert_eq!(
        first.requests.iter().map(|r| r.continuation.as_str()).collect::<Vec<_>>(),
        [
            " is using wrap to wrap a pair of skis.",
            " is ripping level tiles off.",
            " is holding a rubik's cube.",
            " starts pulling up roofing on a roof."
        ]
    );
    assert_eq!((first.gold, first.choice_lengths.clone()), (3, vec![37, 27, 26, 36]));
    assert_eq!(
        second.requests[3],
        LoglikRequest::new(
            "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. the lady",
            " stands and lifts the weight over her head."
        )
    );
    assert_eq!(second.gold, 3);
    // A wikiHow item: the [link] tag is dropped and the double space it leaves closes up.
    assert!(
        tagged.requests[0].context.contains("Visit a site like to find loads of creative activities"),
        "{}",
        tagged.requests[0].context
    );
    assert!(tagged.requests[0].context.starts_with("Family Life: How to entertain a toddler. Ask the toddler"));
    assert_eq!(tagged.requests[1].continuation, " Try some arts and crafts like washable paints, little foamies, crayons, and paper.. Watch the toddler's favorite movie, even if it's barney, and even if he or she has seen it 20 times before.");
    assert_eq!(tagged.gold, 1);
}

#[test]
fn arc_challenge_and_lambada_rows_of_the_shared_files_hand_checked() {
    let arc_c = formats::arc(&Task::ArcChallenge.default_path(&data_dir())).unwrap();
    let context = "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:";
    assert_eq!(
        pairs(&arc_c[0].requests),
        [
            (context, " Planetary density will decrease."),
            (context, " Planetary years will become longer."),
            (context, " Planetary days will become shorter."),
            (context, " Planetary gravity will become stronger.")
        ]
    );
    assert_eq!((arc_c[0].gold, arc_c[0].choice_lengths.clone()), (2, vec![32, 35, 35, 39]));
    let arc_e = formats::arc(&Task::ArcEasy.default_path(&data_dir())).unwrap();
    assert_eq!(
        arc_e[1].requests[1],
        LoglikRequest::new("Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory system?\nAnswer:", " breathing mask")
    );
    assert_eq!(arc_e[1].gold, 1);
    let lambada = formats::lambada(&Task::LambadaOpenai.default_path(&data_dir())).unwrap();
    assert_eq!(lambada[2].continuation, " insurance");
    assert!(
        lambada[2].context.ends_with("she wailed. \"What do you mean you don't have any"),
        "{:?}",
        lambada[2].context
    );
    assert!(lambada[2].context.starts_with("\"Only one source I know of"));
    assert!(lambada[2].context.contains("dryly.\n\n\"What can I say?\""));
}
