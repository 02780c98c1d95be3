//! A coarse time profile of GPU work, for finding where a step's time goes (no profiler
//! runs on every machine). While it is on, every kernel launch and GEMM is followed by a
//! stream synchronisation and the wall-clock time since the previous one is charged to that
//! operation's name. Host work between operations (allocations, copies) is charged to the
//! next operation; synchronising removes the overlap of host and GPU, so the total is
//! larger than the step's real time: read the shares, not the sum.

use std::collections::HashMap;
use std::time::Instant;

/// Time charged to one operation name.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileEntry {
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// The totals so far, and when the last operation finished.
pub(crate) struct Profile {
    last: Instant,
    totals: HashMap<String, (u64, f64)>,
}

impl Profile {
    pub(crate) fn new() -> Self {
        Profile { last: Instant::now(), totals: HashMap::new() }
    }

    /// Charges the time since the previous mark to `name`.
    pub(crate) fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let spent = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let entry = self.totals.entry(name.to_string()).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += spent;
    }

    /// Restarts the clock without charging anyone (e.g. at the start of a measured region).
    pub(crate) fn restart(&mut self) {
        self.last = Instant::now();
    }

    /// The entries, most time first.
    pub(crate) fn entries(&self) -> Vec<ProfileEntry> {
        let mut out: Vec<ProfileEntry> = self
            .totals
            .iter()
            .map(|(name, &(calls, seconds))| ProfileEntry { name: name.clone(), calls, seconds })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out
    }
}

/// The entries as a table: name, calls, milliseconds and share of the total.
pub fn format_profile(entries: &[ProfileEntry]) -> String {
    let total: f64 = entries.iter().map(|e| e.seconds).sum();
    let mut out = format!("{:<48} {:>7} {:>10} {:>6}\n", "operation", "calls", "ms", "share");
    for e in entries {
        let share = if total > 0.0 { 100.0 * e.seconds / total } else { 0.0 };
        out += &format!("{:<48} {:>7} {:>10.2} {:>5.1}%\n", e.name, e.calls, e.seconds * 1e3, share);
    }
    out + &format!("{:<48} {:>7} {:>10.2}\n", "total (synchronised)", "", total * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_time_to_names_and_sorts_by_time() {
        let mut p = Profile::new();
        std::thread::sleep(std::time::Duration::from_millis(5));
        p.mark("slow");
        p.restart();
        p.mark("fast");
        p.mark("fast");
        let entries = p.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "slow");
        assert!(entries[0].seconds >= 0.005, "{:?}", entries[0]);
        assert_eq!(entries[1].calls, 2);
        assert!(entries[1].seconds < entries[0].seconds);
        let table = format_profile(&entries);
        assert!(table.contains("slow") && table.contains("total"), "{table}");
    }
}
