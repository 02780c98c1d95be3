//! Chat templates: turning a list of messages into the prompt text a chat model expects.
//!
//! Models ship a Jinja template (`tokenizer.chat_template` in GGUF, `chat_template` in
//! `tokenizer_config.json`). It is rendered with minijinja set up like Hugging Face
//! transformers: `trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now` and the
//! Python string/dict methods templates use (`.strip()`, `.startswith()`, `.items()`, ...).

use minijinja::value::Value;
use minijinja::{context, Environment, ErrorKind, State};
use serde::Serialize;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant" (templates may know others, like "tool").
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// ChatML, used when a model comes without a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The chat template stored in a GGUF file, or ChatML when it has none.
pub fn gguf_chat_template(file: &crate::gguf::GgufFile) -> Result<String> {
    const KEY: &str = "tokenizer.chat_template";
    match file.get(KEY) {
        None => Ok(CHATML_TEMPLATE.to_string()),
        Some(_) => Ok(file.get_str(KEY)?.to_string()),
    }
}

/// Renders `messages` with a chat template. `add_generation_prompt` appends the header of
/// the assistant's turn; `bos` and `eos` are the texts of the model's BOS/EOS tokens, which
/// some templates write (`bos_token`, `eos_token`).
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = template_environment()?;
    // Templates come from downloaded model files: untrusted. A budget of work (steps, and every
    // byte a string or list operation builds) ends one that loops for ever or doubles a string
    // until memory runs out; a bound on the text ends one that writes without end.
    let content_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let fuel = TEMPLATE_FUEL_BASE
        + TEMPLATE_FUEL_PER_MESSAGE * messages.len() as u64
        + TEMPLATE_FUEL_PER_CONTENT_BYTE * content_bytes as u64;
    env.set_fuel(Some(fuel));
    let compiled = env
        .template_from_str(template)
        .map_err(|e| Error::invalid_argument(format!("the chat template does not parse: {}", describe(&e))))?;
    let limit = MAX_RENDERED_BYTES + content_bytes;
    let mut out = BoundedText { text: Vec::new(), limit };
    compiled
        .render_captured_to(
            context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            },
            &mut out,
        )
        .map_err(|e| {
            let raised = e.detail().and_then(|d| d.strip_prefix(RAISED));
            if e.kind() == ErrorKind::OutOfFuel {
                Error::invalid_argument(format!(
                    "the chat template did not finish within its budget of {fuel} steps (a loop without end, or text \
                     that doubles?); use a template without it (e.g. the model's original one)"
                ))
            } else if e.kind() == ErrorKind::WriteFailure {
                Error::invalid_argument(format!(
                    "the chat template wrote more than {limit} bytes for these messages; use a template that does not repeat text without end"
                ))
            } else if let (ErrorKind::InvalidOperation, Some(message)) = (e.kind(), raised) {
                Error::invalid_argument(format!(
                    "the chat template rejected the messages: {message}"
                ))
            } else {
                Error::invalid_argument(format!(
                    "the chat template failed to render: {}",
                    describe(&e)
                ))
            }
        })?;
    String::from_utf8(out.text).map_err(|_| Error::invalid_argument("the chat template wrote text that is not UTF-8"))
}

/// Work a rendering may do, in minijinja's fuel: one per instruction, and one per 64 bytes of
/// strings and lists that operators and filters build. A base for the template's own work (at
/// most 64 MB built), plus a share per message and per byte of the messages' text, which a
/// template may copy a few times over. Real templates take a few hundred per message.
const TEMPLATE_FUEL_BASE: u64 = 1_000_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 20_000;
const TEMPLATE_FUEL_PER_CONTENT_BYTE: u64 = 1;
/// Text a template may write beyond the messages' own.
const MAX_RENDERED_BYTES: usize = 1 << 20;

/// The rendered text, refusing to grow past `limit` bytes.
struct BoundedText {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("the rendered text is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prefix by which errors from the template's own `raise_exception` are recognised.
const RAISED: &str = "raise_exception: ";

/// A minijinja error's kind, detail and place, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(line) = e.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

fn template_environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    env.set_syntax(syntax.map_err(|e| Error::internal(format!("chat template syntax: {e}")))?);
    // Methods and our functions pay for the text of their arguments (and receiver) before
    // turning them into strings: see `text_budget`.
    env.set_unknown_method_callback(|state, value, method, args| {
        text_budget::pay_for_text(state, std::slice::from_ref(value))?;
        text_budget::pay_for_text(state, args)?;
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
    env.add_function(
        "raise_exception",
        |state: &State, message: Value| -> std::result::Result<String, minijinja::Error> {
            text_budget::pay_for_text(state, std::slice::from_ref(&message))?;
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
        },
    );
    env.add_function("strftime_now", |state: &State, format: Value| -> std::result::Result<String, minijinja::Error> {
        text_budget::pay_for_text(state, std::slice::from_ref(&format))?;
        Ok(strftime(&format.to_string(), now_unix_seconds()))
    });
    text_budget::install(&mut env);
    Ok(env)
}

/// The current time as seconds since 1970 (UTC).
#[cfg(not(target_arch = "wasm32"))]
fn now_unix_seconds() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// wasm32 has no clock without a host binding: templates get 26 Jul 2024, the date
/// Llama 3.1's template uses when none is given.
#[cfg(target_arch = "wasm32")]
fn now_unix_seconds() -> i64 {
    1_721_952_000
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (proleptic Gregorian).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count in 400-year eras starting on 0000-03-01, so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Python's `strftime` for the common directives (%Y %y %m %d %H %M %S %b %B %a %A %j %%),
/// in UTC; other directives are kept as written.
pub(crate) fn strftime(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{:02}", seconds_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", seconds_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", seconds_of_day % 60)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 of a date (the inverse of `civil_from_days`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 } as i64;
    let day_of_year = (153 * month_from_march + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

mod text_budget;

#[cfg(test)]
mod tests;
