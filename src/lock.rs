//! One run at a time per host: an exclusive lock on a file in `state_dir`, released by the
//! kernel when the process ends however it ends. (/run/lock is root-only on CentOS 7.)

use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub struct RunLock {
    _file: File,
}

pub fn ensure_state_dir(state_dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(state_dir)
        .map_err(|err| {
            Error::config(format!(
                "cannot create state_dir {}: {err}; create it owned by the user the job runs as",
                state_dir.display()
            ))
        })
}

pub fn acquire(state_dir: &Path) -> Result<RunLock> {
    ensure_state_dir(state_dir)?;
    let path = state_dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&path)
        .map_err(|err| Error::config(format!("cannot open lock file {}: {err}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(Error::new(
                ExitCode::Locked,
                format!(
                    "another cvp-backup-copy run holds the lock {}{who}: not starting a second \
                     backup at the same time",
                    path.display()
                ),
            ));
        }
        Err(TryLockError::Error(err)) => {
            return Err(Error::config(format!(
                "cannot lock {}: {err}",
                path.display()
            )))
        }
    }
    // The pid is informational, for the message above.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = writeln!(file, "{}", std::process::id());
    Ok(RunLock { _file: file })
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
