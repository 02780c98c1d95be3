//! Stop strings in streamed text: text that could still turn into a stop string is held
//! back until it is clear either way, so the caller never shows text it must later retract.

pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    pending: String,
}

/// What to do with a piece of streamed text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopStatus {
    /// Release this text and go on.
    Continue(String),
    /// A stop string was found: release this text (everything before the stop) and stop.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> StopStatus {
        self.pending.push_str(piece);
        // The earliest complete stop string wins.
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopStatus::Stopped(before);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let release = self.pending.len() - hold;
        let out = self.pending[..release].to_string();
        self.pending.drain(..release);
        StopStatus::Continue(out)
    }

    /// The text still held back, released at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests;
