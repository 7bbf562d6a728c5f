//! The process exit codes, part of the tool's interface: cron wrappers and monitoring read them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ExitCode {
    #[default]
    Success = 0,
    BackupFailed = 1,
    Usage = 2,
    Config = 3,
    Connect = 4,
    Copy = 5,
    Locked = 6,
    /// `status` only: no run recorded, or the last one is older than `--max-age`.
    Stale = 7,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<ExitCode> {
        use ExitCode::*;
        [
            Success,
            BackupFailed,
            Usage,
            Config,
            Connect,
            Copy,
            Locked,
            Stale,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// Which of two outcomes a run reports. A remote that is not up to date (4, 5) matters
    /// more to the operator than a failed CVP backup (1): the restore set on the backup server
    /// is what they rely on when the node dies.
    pub fn most_severe(self, other: ExitCode) -> ExitCode {
        fn rank(code: ExitCode) -> u8 {
            match code {
                ExitCode::Success => 0,
                ExitCode::BackupFailed => 1,
                ExitCode::Stale => 2,
                ExitCode::Usage => 2,
                ExitCode::Locked => 3,
                ExitCode::Config => 4,
                ExitCode::Connect => 5,
                ExitCode::Copy => 6,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Shown by `--help`; the README carries the same table.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  all done
  1  the CVP backup command failed, or was not started for lack of free space in backup_dir
     (the previous restore set is still brought up to date)
  2  usage error
  3  configuration error (INI, key file, password that does not decrypt, bad limit)
  4  server unreachable, authentication failed or host key refused (nothing written)
  5  copy incomplete or verification failed
  6  another run holds the lock, or a CVP backup is already running
  7  status: no run recorded, or the last one is older than --max-age";

/// `check --help`: only the codes `check` itself returns (a run's would mislead).
pub const CHECK_EXIT_CODES_HELP: &str =
    "Exit codes (the worst failed line's, as a run would meet it; warnings do not count):
  0  every check passed
  1  too little free space in backup_dir: tonight's backup would not start
  2  usage error
  3  configuration error (INI, key file, password, backup command, state_dir)
  4  server unreachable, authentication failed or host key refused
  5  destination missing, not writable, or claimed by another node";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        let table = [
            (ExitCode::Success, 0),
            (ExitCode::BackupFailed, 1),
            (ExitCode::Usage, 2),
            (ExitCode::Config, 3),
            (ExitCode::Connect, 4),
            (ExitCode::Copy, 5),
            (ExitCode::Locked, 6),
            (ExitCode::Stale, 7),
        ];
        for (code, number) in table {
            assert_eq!(code.code(), number);
            assert_eq!(ExitCode::from_code(number), Some(code));
            assert!(EXIT_CODES_HELP.contains(&format!("  {number}  ")));
        }
    }

    #[test]
    fn copy_failures_outrank_a_failed_backup() {
        assert_eq!(
            ExitCode::BackupFailed.most_severe(ExitCode::Copy),
            ExitCode::Copy
        );
        assert_eq!(
            ExitCode::Connect.most_severe(ExitCode::BackupFailed),
            ExitCode::Connect
        );
        assert_eq!(
            ExitCode::Success.most_severe(ExitCode::BackupFailed),
            ExitCode::BackupFailed
        );
        assert_eq!(
            ExitCode::Copy.most_severe(ExitCode::Success),
            ExitCode::Copy
        );
    }
}
