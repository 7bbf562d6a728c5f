//! One error type for the whole tool: a message an operator can act on, and the exit code it
//! maps to. Context is added where the failure is understood, not where it surfaces.

use crate::exit_codes::ExitCode;
use std::fmt;

#[derive(Debug)]
pub struct Error {
    pub code: ExitCode,
    pub message: String,
    /// A connection or transfer error that another attempt may not meet.
    pub transient: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            transient: false,
        }
    }
    /// A copy error worth retrying: the connection broke, timed out or was reset.
    pub fn transient(message: impl Into<String>) -> Self {
        Error {
            transient: true,
            ..Self::copy(message)
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Config, message)
    }
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Connect, message)
    }
    pub fn copy(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Copy, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
