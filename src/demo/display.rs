//! The demo's live table: each instance's version, weight, status, count and
//! rate, redrawn in place on a terminal and printed once per step in a log.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::instances::Instance;
use crate::router::RoutingTable;

/// Prints the live table.
pub(super) struct Display {
    terminal: bool,
    drawn_lines: usize,
}

impl Display {
    /// A display on stdout: redrawn in place when it is a terminal.
    pub(super) fn new() -> Self {
        Self {
            terminal: std::io::stdout().is_terminal(),
            drawn_lines: 0,
        }
    }

    /// Shows `text`: redrawn over the last one on a terminal; in a log, only
    /// once the step is done.
    pub(super) fn show(&mut self, text: &str, step_done: bool) {
        if self.terminal {
            let mut out = std::io::stdout().lock();
            if self.drawn_lines > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn_lines);
            }
            for line in text.lines() {
                let _ = writeln!(out, "\x1b[2K{line}");
            }
            let _ = out.flush();
            self.drawn_lines = if step_done { 0 } else { text.lines().count() };
        } else if step_done {
            println!("{text}");
        }
    }
}

/// Updates each instance's rate from its count, at most every half second.
pub(super) fn update_rates(instances: &mut [Instance]) {
    let now = Instant::now();
    for instance in instances {
        let count = instance.received.load(Ordering::Relaxed);
        let elapsed = now.duration_since(instance.last.1).as_secs_f64();
        if elapsed >= 0.5 {
            instance.rate = (count - instance.last.0) as f64 / elapsed;
            instance.last = (count, now);
        }
    }
}

/// The table under `title`: one line per instance of `service`, as `table`
/// routes it, and the totals.
pub(super) fn render(
    title: &str,
    service: &str,
    instances: &[Instance],
    table: &RoutingTable,
    sent: u64,
    delivered: u64,
) -> String {
    let mut text = format!("{title}\n");
    text.push_str(&format!(
        "  {:<14} {:>7} {:>6}  {:<10} {:>9} {:>8}\n",
        "INSTANCE", "VERSION", "WEIGHT", "STATUS", "RECEIVED", "MSG/S"
    ));
    for instance in instances {
        let record = table
            .catalog
            .instances
            .iter()
            .find(|r| r.service == service && r.id == instance.id);
        let status = match (instance.gone, record) {
            (true, _) => "left",
            (false, Some(record)) => record.status.as_str(),
            (false, None) => "joining",
        };
        let weight = record.map_or(instance.weight, |r| r.weight);
        text.push_str(&format!(
            "  {:<14} {:>7} {:>6}  {:<10} {:>9} {:>8.0}\n",
            instance.id,
            instance.version,
            weight,
            status,
            instance.received.load(Ordering::Relaxed),
            instance.rate
        ));
    }
    text.push_str(&format!("  sent {sent}  delivered {delivered}\n"));
    text
}
