//! SIGTERM, SIGINT and SIGHUP end a run within seconds, between two chunks of a copy, leaving
//! at most a partial upload under its temporary name (resumed by the next run).

use crate::error::Error;
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Install the handlers. No SA_RESTART: a blocking socket call returns early, so the copy
/// loop sees the signal without waiting for the server.
pub fn install() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `record` only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

/// Err when a stop was asked for: callers return it at once.
pub fn check(during: &str) -> Result<(), Error> {
    match received() {
        None => Ok(()),
        Some(name) => Err(Error::copy(format!(
            "stopped by {name} during {during}: nothing incomplete has a final name; the next \
             run resumes the copy"
        ))),
    }
}

/// Sleep, but wake up for a stop request.
pub fn sleep(seconds: u64) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        check("the wait before a retry")?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
