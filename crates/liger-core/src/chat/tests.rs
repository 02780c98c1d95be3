use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::error::ErrorCode;

/// Meta's Llama 3 Instruct template.
const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", "You are terse."), ChatMessage::new("user", "  Hi there \n")]
}

#[test]
fn llama3_template() {
    let text = render_chat(LLAMA3_TEMPLATE, &conversation(), true, "<|begin_of_text|>", "<|end_of_text|>").unwrap();
    assert_eq!(
        text,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let text = render_chat(LLAMA3_TEMPLATE, &conversation()[1..], false, "<B>", "<E>").unwrap();
    assert_eq!(text, "<B><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>");
}

#[test]
fn chatml_fallback() {
    let messages = [ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")];
    let text = render_chat(CHATML_TEMPLATE, &messages, true, "", "").unwrap();
    assert_eq!(text, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(render_chat(CHATML_TEMPLATE, &[], false, "", "").unwrap(), "");
}

#[test]
fn blocks_are_trimmed_and_python_methods_work() {
    let template = "{% for m in messages %}\n    {% if m.role.startswith('us') %}\nU: {{ m.content.strip() }}|{{ m.content.split(',') | length }}\n    {% else %}\n{{ m['role'].upper() }}: {{ m.content }}\n    {% endif %}\n{% endfor %}\n{{ eos_token }}";
    let messages = [ChatMessage::new("user", "  a,b,c "), ChatMessage::new("assistant", "ok")];
    let text = render_chat(template, &messages, false, "", "</s>").unwrap();
    assert_eq!(text, "U: a,b,c|3\nASSISTANT: ok\n</s>");
}

#[test]
fn template_errors_are_invalid_arguments() {
    let raising = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok";
    let e = render_chat(raising, &conversation(), false, "", "").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("rejected") && e.message.contains("must start with a user message"), "{}", e.message);
    assert_eq!(render_chat(raising, &conversation()[1..], false, "", "").unwrap(), "ok");

    let e = render_chat("{% for m in messages %}{{ m.content }", &conversation(), false, "", "").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("does not parse"), "{}", e.message);

    let e = render_chat("{{ messages[0].content.no_such_method() }}", &conversation(), false, "", "").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("failed to render"), "{}", e.message);
}

/// Date of a day count, by walking one day at a time from 1970-01-01: slow but plainly right.
fn date_by_walking(days: i64) -> (i64, u32, u32) {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_len = |y: i64, m: u32| match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
    for _ in 0..days.abs() {
        if days > 0 {
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        } else if d > 1 {
            d -= 1;
        } else {
            m = if m == 1 { 12 } else { m - 1 };
            if m == 12 {
                y -= 1;
            }
            d = month_len(y, m);
        }
    }
    (y, m, d)
}

#[test]
fn calendar_conversion_matches_day_by_day_walk() {
    let mut rng = SmallRng::seed_from_u64(rand::random());
    for _ in 0..200 {
        let days = rng.random_range(-40_000..60_000);
        let date = civil_from_days(days);
        assert_eq!(date, date_by_walking(days), "day {days}");
        assert_eq!(days_from_civil(date.0, date.1, date.2), days);
    }
}

#[test]
fn strftime_formats_like_python() {
    // 2024-07-26 01:01:01 UTC, a Friday, day 208 of the year.
    let t = 1_721_952_000 + 3661;
    assert_eq!(
        strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %% %Q", t),
        "2024-07-26 01:01:01 Fri Friday Jul July 208 24 % %Q"
    );
    assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    let year: i64 = render_chat("{{ strftime_now('%Y') }}", &[], false, "", "").unwrap().parse().unwrap();
    assert!(year >= 2024, "year {year}");
}

#[test]
fn a_template_that_loops_without_end_runs_out_of_its_budget() {
    // Nested loops of 10^12 steps in all: without a budget this never returns.
    let endless = "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}{% endfor %}{% endfor %}{% endfor %}";
    let start = std::time::Instant::now();
    let err = render_chat(endless, &conversation(), true, "", "").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("budget"), "{}", err.message);
    println!("stopped after {:?}", start.elapsed());
}

#[test]
fn a_template_that_writes_without_end_is_stopped_at_its_text_bound() {
    let flood = "{% for a in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}";
    let err = render_chat(flood, &conversation(), true, "", "").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("bytes"), "{}", err.message);
    // A long conversation still renders: the budget grows with the messages.
    let long: Vec<ChatMessage> = (0..2000).map(|i| ChatMessage::new("user", "word ".repeat(i % 50))).collect();
    let text = render_chat(CHATML_TEMPLATE, &long, true, "", "").unwrap();
    assert!(text.len() > 200_000);
}

#[test]
fn a_template_that_doubles_text_runs_out_of_its_budget_before_memory() {
    // 40 doublings would build a terabyte: each form must stop within the budget, quickly.
    // A `set` inside a loop is local to its turn (Jinja's scoping), so a namespace carries the
    // text from one turn to the next.
    let doubling = [
        "ns.s ~ ns.s",
        "ns.s + ns.s",
        "[ns.s, ns.s]|join",
        "ns.s * 2",
        "'%s%s'|format(ns.s, ns.s)",
        "ns.s|replace('a', ns.s)",
        "ns.s ~ ns.s|upper",
    ]
    .map(|grow| format!("{{% set ns = namespace(s='ab') %}}{{% for i in range(40) %}}{{% set ns.s = {grow} %}}{{% endfor %}}{{{{ ns.s|length }}}}"));
    // Lists that double: see the test below.
    for template in &doubling {
        let start = std::time::Instant::now();
        let err = render_chat(template, &conversation(), true, "", "").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{template}");
        assert!(err.message.contains("budget"), "{template}: {}", err.message);
        assert!(start.elapsed().as_secs() < 10, "{template}: {:?}", start.elapsed());
    }
    // A conversation of several megabytes still renders with a template that copies it.
    let big: Vec<ChatMessage> = (0..4).map(|_| ChatMessage::new("user", "word ".repeat(1_000_000))).collect();
    let text = render_chat(LLAMA3_TEMPLATE, &big, true, "", "").unwrap();
    assert!(text.len() > 20_000_000);
}

#[test]
fn a_template_that_doubles_a_list_pays_for_its_text_before_memory() {
    // 30 doublings make a lazy list of 2^30 items for free; every use that writes it out,
    // walks it or compares it must stop within the budget, quickly.
    let uses = [
        "{{ ns.s }}",
        "{{ ns.s|string|length }}",
        "{{ ns.s|tojson|length }}",
        "{{ ns.s|pprint|length }}",
        "{{ ns.s|lower|length }}",
        "{{ ns.s|trim|length }}",
        "{{ ns.s|escape|length }}",
        "{{ ns.s|safe|length }}",
        "{{ ns.s|join|length }}",
        "{{ [ns.s]|join|length }}",
        "{{ ''.join(ns.s)|length }}",
        "{{ '%s'|format(ns.s)|length }}",
        "{{ ns.s is eq(ns.s[:]) }}",
        "{{ raise_exception(ns.s) }}",
        "{{ debug(ns.s)|length }}",
        "{{ ns.s|list|length }}",
        "{{ ns.s|sort|length }}",
        "{{ ns.s|unique|list|length }}",
        "{{ ns.s|reverse|list|length }}",
        "{{ ns.s|last }}",
        "{{ ns.s|map('upper')|list|length }}",
        "{{ 'zz' in ns.s }}",
        "{% for x in ns.s %}{% endfor %}",
    ]
    .map(|use_| format!("{{% set ns = namespace(s=['ab']) %}}{{% for i in range(30) %}}{{% set ns.s = ns.s + ns.s %}}{{% endfor %}}{use_}"));
    // `*` repeats lazily up to 10^8 items: a list of long strings.
    let repeated = [
        "{{ ([messages[0].content * 1000] * 100000000)|string|length }}",
        "{{ {'k': [messages] * 100000000}|tojson|length }}",
    ];
    // Not covered, as minijinja does them inside its engine without a filter, test or method
    // to wrap: a list summed into a chain of more than 32 `+` (`ns.s + ns.s` 33 times) is
    // copied into one list at the 33rd without charge; `ns.s ~ ''` writes the list out, and
    // `ns.s[-1]` walks it, without charge.
    for template in uses.iter().map(String::as_str).chain(repeated) {
        let start = std::time::Instant::now();
        let err = render_chat(template, &conversation(), true, "", "").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{template}");
        assert!(err.message.contains("budget"), "{template}: {}", err.message);
        assert!(start.elapsed().as_secs() < 10, "{template}: {:?}", start.elapsed());
    }
    // Lists of a real size still write out, compare and join as before.
    let template = "{{ messages|tojson }}|{{ messages|map(attribute='role')|join(',') }}|{{ messages is eq(messages) }}|{{ messages[0] }}|{{ 'You'.startswith('Y') }}";
    let text = render_chat(template, &conversation(), false, "", "").unwrap();
    assert_eq!(
        text,
        "[{\"role\": \"system\", \"content\": \"You are terse.\"}, {\"role\": \"user\", \"content\": \"  Hi there \\n\"}]\
         |system,user|True|{'role': 'system', 'content': 'You are terse.'}|True"
    );
}
