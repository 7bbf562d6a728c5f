//! Bytes, rate and ETA of a copy or fetch for a person at a terminal; nothing under cron
//! (syslog gets one summary line per file instead).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// `bytes` of a file's data moved (sent, or received): its bar, and the run's time line.
pub fn moved(bar: &ProgressBar, bytes: u64) {
    bar.inc(bytes);
    crate::timeline::moved(bytes);
}

/// A bar on stderr when stderr is a terminal, else a hidden one that costs nothing.
/// Clones share one bar, so parallel streams add to the same count.
pub fn bar(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} [{wide_bar}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar
}
