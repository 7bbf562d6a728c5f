//! One run at a time per host: an exclusive `flock` on the `state_dir` folder itself,
//! released by the kernel when the process ends however it ends. Locking the folder, not a
//! file in it, means no lock file exists that a root run could leave behind unreadable for
//! the cvp cron job, or that anyone could plant a symlink at. (/run/lock is root-only on
//! CentOS 7.) Who holds it is written beside it, for the message only.

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

pub fn acquire(state_dir: &Path) -> Result<RunLock> {
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
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(Error::new(
                ExitCode::Locked,
                format!(
                    "another cvp-backup-copy run holds the lock on {}{holder}: not starting a \
                     second backup at the same time",
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
        format!("{}\n", std::process::id()).as_bytes(),
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
        let first = acquire(&state).expect("first lock");
        let err = acquire(&state).err().expect("second lock refused");
        assert_eq!(err.code, ExitCode::Locked);
        assert!(
            err.message.contains(&format!("pid {}", std::process::id())),
            "{}",
            err.message
        );
        drop(first);
        assert!(acquire(&state).is_ok());
    }
}
