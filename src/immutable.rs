//! Whether an intruder holding this node's credentials could destroy the copies on a
//! destination: a test file (the canary) is written as a copy would be, then every
//! destructive request the kind allows is sent against it, and the server's answers decide.
//! What the INI says counts for nothing here; only what the server refused.

use crate::config::{DestinationKind, ServerConfig};
use crate::error::Result;
use crate::names::Stamp;
use crate::remote::{Attempt, Remote};

/// Canaries start with this: never a CVP name, so no rule of the night or of `prune-dir`
/// mistakes one for a backup; `prune-dir` removes those older than a day.
pub const CANARY_PREFIX: &str = ".cvp-backup-copy-canary.";

#[derive(Debug, Clone)]
pub struct Verdict {
    pub immutable: bool,
    /// One line for `check` and the log: what was tried, what the server did, the fix.
    pub detail: String,
}

/// Write a canary and try to destroy it with the node's own credentials.
pub fn probe(remote: &mut dyn Remote, server: &ServerConfig, now: Stamp) -> Result<Verdict> {
    // A unique tail: on an immutable server the canaries of earlier nights stay.
    let name = crate::names::fresh_partial(&format!("{CANARY_PREFIX}{now}"));
    let text = format!(
        "A test file of cvp-backup-copy: the node tried to destroy it, to learn whether an \
         intruder on the node could destroy the copies here. Safe to delete.\nwritten = {now}\n"
    );
    remote.put_whole(&name, text.as_bytes(), false)?;
    let attempts = remote.try_to_destroy(&name)?;
    Ok(judge(server, &name, &attempts))
}

/// The verdict from the server's answers (pure).
pub fn judge(server: &ServerConfig, canary: &str, attempts: &[Attempt]) -> Verdict {
    let allowed: Vec<&str> = attempts
        .iter()
        .filter(|a| a.allowed)
        .map(|a| a.what.as_str())
        .collect();
    if allowed.is_empty() && !attempts.is_empty() {
        let refused: Vec<String> = attempts
            .iter()
            .map(|a| format!("{} ({})", a.what, crate::error::printable(&a.said)))
            .collect();
        return Verdict {
            immutable: true,
            detail: format!(
                "the server refused the node's credentials to destroy a test file: {}; the test \
                 file {canary} stays{}",
                refused.join(", "),
                match server.kind {
                    DestinationKind::Sftp =>
                        " (prune-dir on the server removes it once older than its --min-age)",
                    DestinationKind::S3(_) => " until its retention ends",
                }
            ),
        };
    }
    let fix = match server.kind {
        DestinationKind::Sftp => {
            "set append_only = yes and give the server's account the sftp-server deny list \
             (README: Append-only SFTP)"
        }
        DestinationKind::S3(_) => {
            "use a bucket with Object Lock and a default retention in COMPLIANCE mode (README: \
             A stolen node)"
        }
    };
    Verdict {
        immutable: false,
        detail: format!(
            "with this node's credentials a test file there could be: {}; an intruder with \
             root on this node could destroy every copy on it: {fix}",
            if allowed.is_empty() {
                "(nothing was tried)".to_string()
            } else {
                allowed.join(", ")
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s3: bool) -> ServerConfig {
        let ini = if s3 {
            "[Server_Settings]\nuser=AK\nserver=https://s3.example.net\ndestination=s3://bkt/cvp\n\
             password=t\nkeyFile=/k\nknown_hosts=/kh\n[Backup_Settings]\n"
        } else {
            "[Server_Settings]\nuser=u\nserver=h\ndestination=/d\npassword=t\nkeyFile=/k\n\
             known_hosts=/kh\n[Backup_Settings]\n"
        };
        crate::config::Config::parse(ini, std::path::Path::new("/etc/b.ini"))
            .expect("config")
            .server
    }

    #[test]
    fn immutable_only_when_every_request_was_refused() {
        let refused = |what| Attempt::new(what, false, "Permission denied".into());
        let done = |what| Attempt::new(what, true, "done".into());
        let cases: Vec<(bool, Vec<Attempt>, bool, &str)> = vec![
            (
                false,
                vec![refused("overwrite it"), refused("remove it")],
                true,
                "refused",
            ),
            (
                false,
                vec![refused("overwrite it"), done("remove it")],
                false,
                "remove it",
            ),
            (
                false,
                vec![done("overwrite it"), refused("remove it")],
                false,
                "append_only = yes",
            ),
            (true, vec![done("delete its version")], false, "Object Lock"),
            (
                true,
                vec![refused("delete its version")],
                true,
                "until its retention ends",
            ),
            (false, vec![], false, "nothing was tried"),
        ];
        for (s3, attempts, immutable, said) in cases {
            let verdict = judge(&server(s3), ".cvp-backup-copy-canary.x", &attempts);
            assert_eq!(verdict.immutable, immutable, "{attempts:?}");
            assert!(verdict.detail.contains(said), "{}", verdict.detail);
        }
    }
}
