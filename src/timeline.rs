//! When a copy's or a fetch's bytes moved, for the one line that tells where a run's time
//! went: connected, first data byte, the data phase's rate, last data byte. On a long link
//! the set-up before the first byte and the tail after the last cost as much as a slow data
//! phase; syslog keeps the line, and `make bench` prints it per run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
/// Nanoseconds after START plus one (0: not yet).
static CONNECTED: AtomicU64 = AtomicU64::new(0);
static FIRST_BYTE: AtomicU64 = AtomicU64::new(0);
static LAST_BYTE: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The process's start: the time line's zero. Called first thing in `main`.
pub fn start() {
    START.get_or_init(Instant::now);
}

fn now() -> u64 {
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// The first connection is ready (authenticated): only the first call counts.
pub fn connected() {
    let _ = CONNECTED.compare_exchange(0, now(), Ordering::Relaxed, Ordering::Relaxed);
}

/// `bytes` of a file's data went out or came in.
pub fn moved(bytes: u64) {
    let at = now();
    let _ = FIRST_BYTE.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
    LAST_BYTE.fetch_max(at, Ordering::Relaxed);
    BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// The moments so far, in seconds after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub connected: Option<f64>,
    pub first_byte: Option<f64>,
    pub last_byte: Option<f64>,
    pub bytes: u64,
    pub now: f64,
}

pub fn moments() -> Moments {
    let seconds = |at: &AtomicU64| match at.load(Ordering::Relaxed) {
        0 => None,
        at => Some((at - 1) as f64 / 1e9),
    };
    Moments {
        connected: seconds(&CONNECTED),
        first_byte: seconds(&FIRST_BYTE),
        last_byte: seconds(&LAST_BYTE),
        bytes: BYTES.load(Ordering::Relaxed),
        now: (now() - 1) as f64 / 1e9,
    }
}

impl Moments {
    /// "time line: connected 0.90 s, first data byte 3.05 s, 2147 MB in 21.90 s (98.0 MB/s),
    /// last data byte 24.95 s, now 26.01 s"; None when no data moved.
    pub fn line(&self) -> Option<String> {
        let (first, last) = (self.first_byte?, self.last_byte?);
        let connected = self.connected.map_or("not connected".to_string(), |at| {
            format!("connected {at:.2} s")
        });
        let phase = last - first;
        let rate = if phase > 0.0 {
            format!("{:.1} MB/s", self.bytes as f64 / 1e6 / phase)
        } else {
            "at once".to_string()
        };
        Some(format!(
            "time line: {connected}, first data byte {first:.2} s, {} MB in {phase:.2} s \
             ({rate}), last data byte {last:.2} s, now {:.2} s",
            self.bytes / 1_000_000,
            self.now
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_each_moment_and_the_data_phase_s_rate() {
        let moments = Moments {
            connected: Some(0.9),
            first_byte: Some(3.05),
            last_byte: Some(25.05),
            bytes: 2_200_000_000,
            now: 26.0,
        };
        assert_eq!(
            moments.line().as_deref(),
            Some(
                "time line: connected 0.90 s, first data byte 3.05 s, 2200 MB in 22.00 s \
                 (100.0 MB/s), last data byte 25.05 s, now 26.00 s"
            )
        );
        let nothing = Moments {
            first_byte: None,
            last_byte: None,
            bytes: 0,
            ..moments
        };
        assert_eq!(nothing.line(), None, "no data moved: no line");
    }
}
