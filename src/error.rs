//! One error type for the whole tool: a message an operator can act on, and the exit code it
//! maps to. Context is added where the failure is understood, not where it surfaces.

use crate::exit_codes::ExitCode;
use std::fmt;

#[derive(Debug, Clone)]
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
    /// The tool's own error a writer carried through `std::io::Error` (an S3 object written
    /// on flush), with its code; None for a plain I/O error.
    pub fn inside(err: &std::io::Error) -> Option<Error> {
        let inner = err.get_ref()?.downcast_ref::<Error>()?;
        Some(Error {
            code: inner.code,
            message: inner.message.clone(),
            transient: inner.transient,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A word (a path, a user name) as a shell would need it in a command we print for the
/// operator to paste: values come from an INI another account may write.
pub fn shell_word(word: impl AsRef<std::ffi::OsStr>) -> String {
    let text = word.as_ref().to_string_lossy();
    shlex::try_quote(&text)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| "'<a name with a NUL byte>'".into())
}

/// Text from a file or a server, made safe to print on a terminal: control characters (an
/// escape sequence could hide or fake what the operator reads) are shown escaped.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_commands_quote_their_words_and_text_loses_its_escapes() {
        assert_eq!(
            shell_word("/etc/cvp-backup-copy/keys/backup.key"),
            "/etc/cvp-backup-copy/keys/backup.key"
        );
        assert_eq!(
            shell_word("/x;chmod 4755 $(which bash)"),
            "'/x;chmod 4755 $(which bash)'"
        );
        assert_eq!(shell_word("a'b"), "\"a'b\"");
        assert_eq!(printable("ok\u{1b}[2Jfake"), "ok\\u{1b}[2Jfake");
        assert_eq!(printable("plain"), "plain");
    }
}
