//! One run at a time per host: an exclusive `flock` on the `state_dir` folder itself,
//! released by the kernel when the process ends however it ends. Locking the folder, not a
//! file in it, means no lock file exists that a root run could leave behind unreadable for
//! the cvp cron job, or that anyone could plant a symlink at. (/run/lock is root-only on
//! CentOS 7.) Who holds it (pid and command) is written beside it in `lock.pid`, for the
//! message only: the lock is the folder's, so removing or planting that file changes nothing.

use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::safe_fs::{Dir, Mode};
use crate::state;
use std::fs::{File, TryLockError};
use std::path::Path;

pub struct RunLock {
    _folder: File,
    /// The state folder, opened safely once for the run's history and record.
    pub dir: Dir,
}

const HOLDER: &str = "lock.pid";

/// What takes the lock: a run (the nightly job, or by hand) or a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Run,
    Fetch,
    Verify,
}

impl Holder {
    fn word(self) -> &'static str {
        match self {
            Holder::Run => "run",
            Holder::Fetch => "fetch",
            Holder::Verify => "verify",
        }
    }
}

/// `lock.pid`'s text ("PID COMMAND") as "run (pid 812)"; the word is ours only when it is one.
fn describe_holder(text: &str) -> String {
    let mut words = text.split_whitespace();
    let pid = words
        .next()
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()));
    let what = match words.next() {
        Some("run") => "run",
        Some("fetch") => "fetch",
        Some("verify") => "verify",
        _ => "run, fetch or verify",
    };
    match pid {
        Some(pid) => format!("{what} (pid {pid})"),
        None => what.to_string(),
    }
}

/// Open (creating it if needed) the state folder, with an error that says what to do.
pub fn ensure_state_dir(state_dir: &Path) -> Result<Dir> {
    state::open_dir(state_dir).map_err(|err| {
        Error::config(format!(
            "cannot create or open state_dir {}: {err}; create it owned by the user the job \
             runs as",
            state_dir.display()
        ))
    })
}

pub fn acquire(state_dir: &Path, me: Holder) -> Result<RunLock> {
    let dir = ensure_state_dir(state_dir)?;
    let folder = dir
        .lock_handle()
        .map_err(|err| Error::config(format!("cannot lock {}: {err}", dir.path().display())))?;
    match folder.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = dir
                .read(HOLDER, 64)
                .ok()
                .flatten()
                .map(|b| describe_holder(&String::from_utf8_lossy(&b)))
                .unwrap_or_else(|| describe_holder(""));
            let why = match me {
                Holder::Run => "not starting a second backup at the same time",
                Holder::Fetch => {
                    "a fetch waits until it ends (a run prunes the folder a fetch writes to); \
                     try again then"
                }
                Holder::Verify => {
                    "a verification waits until it ends (a run may prune the sets it reads); \
                     try again then"
                }
            };
            return Err(Error::new(
                ExitCode::Locked,
                format!(
                    "another cvp-backup-copy {holder} holds the lock on {}: {why}",
                    dir.path().display()
                ),
            ));
        }
        Err(TryLockError::Error(err)) => {
            return Err(Error::config(format!(
                "cannot lock {}: {err}",
                dir.path().display()
            )))
        }
    }
    // Informational: a failure to write it does not matter.
    let _ = dir.replace(
        HOLDER,
        format!("{} {}\n", std::process::id(), me.word()).as_bytes(),
        Mode::Force(0o644),
    );
    Ok(RunLock {
        _folder: folder,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = acquire(&state, Holder::Run).expect("first lock");
        let err = acquire(&state, Holder::Run)
            .err()
            .expect("second lock refused");
        assert_eq!(err.code, ExitCode::Locked);
        assert!(
            err.message.contains(&format!(
                "another cvp-backup-copy run (pid {}) holds the lock",
                std::process::id()
            )),
            "{}",
            err.message
        );
        assert!(err
            .message
            .ends_with("not starting a second backup at the same time"));
        let err = acquire(&state, Holder::Fetch).err().expect("fetch refused");
        assert!(
            err.message.contains("a fetch waits until it ends"),
            "{}",
            err.message
        );
        drop(first);
        let fetch = acquire(&state, Holder::Fetch).expect("free again");
        let err = acquire(&state, Holder::Run).err().expect("run refused");
        assert!(
            err.message.contains("another cvp-backup-copy fetch (pid"),
            "{}",
            err.message
        );
        drop(fetch);
    }

    #[test]
    fn the_holder_file_is_only_a_hint() {
        assert_eq!(describe_holder("812 run\n"), "run (pid 812)");
        assert_eq!(describe_holder("812 fetch"), "fetch (pid 812)");
        assert_eq!(describe_holder("812\n"), "run, fetch or verify (pid 812)");
        assert_eq!(describe_holder("; rm -rf / fetch"), "run, fetch or verify");
        assert_eq!(describe_holder(""), "run, fetch or verify");
    }
}
