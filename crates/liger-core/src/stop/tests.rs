use super::*;

fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut m = StopMatcher::new(&stops);
    let mut out = String::new();
    for p in pieces {
        match m.push(p) {
            StopStatus::Continue(t) => out.push_str(&t),
            StopStatus::Stopped(t) => {
                out.push_str(&t);
                return (out, true);
            }
        }
    }
    out.push_str(&m.finish());
    (out, false)
}

#[test]
fn stop_split_across_pieces_is_found_and_not_shown() {
    assert_eq!(run(&["\nUser:"], &["Hello", " there\n", "Us", "er: hi"]), ("Hello there".to_string(), true));
}

#[test]
fn false_starts_are_released() {
    assert_eq!(run(&["END"], &["The E", "ND"]), ("The ".to_string(), true));
    assert_eq!(run(&["END"], &["The E", "nd of it"]), ("The End of it".to_string(), false));
}

#[test]
fn earliest_of_several_stops_wins_and_unicode_is_safe() {
    assert_eq!(run(&["ω!", "b"], &["aé", "ωω", "!b"]), ("aéω".to_string(), true));
    assert_eq!(run(&[], &["x", "y"]), ("xy".to_string(), false));
}

#[test]
fn held_text_is_never_emitted_early() {
    let stops = vec!["abc".to_string()];
    let mut m = StopMatcher::new(&stops);
    assert_eq!(m.push("xa"), StopStatus::Continue("x".into()));
    assert_eq!(m.push("b"), StopStatus::Continue(String::new()));
    assert_eq!(m.push("d"), StopStatus::Continue("abd".into()));
}
