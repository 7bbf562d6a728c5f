//! Decide what to copy from facts gathered about each file (pure), so that `--dry-run` and a
//! real run take the same decisions.

use crate::names::BackupName;
use crate::retention::Decision;
use std::fmt::Write as _;

/// What we know about one file of the selection on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub name: BackupName,
    pub local_size: u64,
    pub remote_size: Option<u64>,
    /// Digest read from the remote `NAME.sha256`, if present and well-formed.
    pub remote_digest: Option<String>,
    /// Local sha256, computed only when the remote side could already match.
    pub local_digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDecision {
    Upload {
        name: BackupName,
        size: u64,
        why: &'static str,
    },
    AlreadyThere {
        name: BackupName,
        size: u64,
        digest: String,
    },
}

/// Does the remote side need the local digest to decide? (Saves hashing GBs for nothing.)
pub fn needs_local_digest(facts: &FileFacts) -> bool {
    facts.remote_size == Some(facts.local_size) && facts.remote_digest.is_some()
}

pub fn decide(facts: &FileFacts) -> CopyDecision {
    let upload = |why| CopyDecision::Upload {
        name: facts.name,
        size: facts.local_size,
        why,
    };
    match facts.remote_size {
        None => upload("not on the remote"),
        Some(size) if size != facts.local_size => upload("remote size differs"),
        Some(_) => match (&facts.remote_digest, &facts.local_digest) {
            (None, _) => upload("remote checksum file missing or malformed"),
            (Some(remote), Some(local)) if remote == local => CopyDecision::AlreadyThere {
                name: facts.name,
                size: facts.local_size,
                digest: local.clone(),
            },
            _ => upload("remote checksum differs"),
        },
    }
}

/// The whole plan, as `--dry-run` prints it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub backup: Option<String>,
    pub copies: Vec<CopyDecision>,
    pub destination: String,
    pub local_retention: Option<Decision>,
    pub remote_retention: Option<Decision>,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Plan (dry run: nothing is changed)");
        match &self.backup {
            Some(command) => {
                let _ = writeln!(out, "  backup: would run {command}");
                let _ = writeln!(
                    out,
                    "  (the copy and pruning below are planned from the files present now)"
                );
            }
            None => {
                let _ = writeln!(out, "  backup: skipped (--no-backup)");
            }
        }
        let _ = writeln!(out, "  copy to {}:", self.destination);
        if self.copies.is_empty() {
            let _ = writeln!(out, "    nothing to copy: no data backup found locally");
        }
        for copy in &self.copies {
            let _ = match copy {
                CopyDecision::Upload { name, size, why } => {
                    writeln!(out, "    upload  {name} ({size} bytes): {why}")
                }
                CopyDecision::AlreadyThere { name, size, .. } => {
                    writeln!(out, "    keep    {name} ({size} bytes): already on the remote, checksum matches")
                }
            };
        }
        render_retention(&mut out, "local", self.local_retention.as_ref());
        render_retention(&mut out, "remote", self.remote_retention.as_ref());
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }
}

fn render_retention(out: &mut String, side: &str, decision: Option<&Decision>) {
    let Some(decision) = decision else {
        let _ = writeln!(out, "  {side} pruning: none (remote_limit = 0)");
        return;
    };
    let _ = writeln!(out, "  {side} pruning:");
    for (name, reason) in &decision.keep {
        let _ = writeln!(out, "    keep    {name}: {reason}");
    }
    for name in &decision.remove {
        let _ = writeln!(out, "    delete  {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(remote_size: Option<u64>, remote: Option<&str>, local: Option<&str>) -> FileFacts {
        FileFacts {
            name: BackupName::parse("cvp.20240101020010.tgz").unwrap(),
            local_size: 100,
            remote_size,
            remote_digest: remote.map(str::to_string),
            local_digest: local.map(str::to_string),
        }
    }

    #[test]
    fn decision_table() {
        let table = [
            (facts(None, None, None), Some("not on the remote")),
            (
                facts(Some(99), Some("aa"), None),
                Some("remote size differs"),
            ),
            (
                facts(Some(100), None, None),
                Some("remote checksum file missing or malformed"),
            ),
            (
                facts(Some(100), Some("aa"), Some("bb")),
                Some("remote checksum differs"),
            ),
            (facts(Some(100), Some("aa"), Some("aa")), None),
        ];
        for (facts, expected_upload) in table {
            match (decide(&facts), expected_upload) {
                (CopyDecision::Upload { why, .. }, Some(expected)) => assert_eq!(why, expected),
                (CopyDecision::AlreadyThere { .. }, None) => {}
                (other, expected) => panic!("{facts:?}: got {other:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn local_digest_is_only_needed_when_the_remote_could_match() {
        assert!(!needs_local_digest(&facts(None, None, None)));
        assert!(!needs_local_digest(&facts(Some(99), Some("aa"), None)));
        assert!(!needs_local_digest(&facts(Some(100), None, None)));
        assert!(needs_local_digest(&facts(Some(100), Some("aa"), None)));
    }

    #[test]
    fn render_lists_every_action() {
        let name = BackupName::parse("cvp.20240101020010.tgz").unwrap();
        let plan = Plan {
            backup: Some("/cvpi/bin/cvpi backup cvp".into()),
            copies: vec![CopyDecision::Upload {
                name,
                size: 7,
                why: "not on the remote",
            }],
            destination: "backup@host:/srv".into(),
            local_retention: Some(Decision {
                keep: vec![],
                remove: vec![name],
            }),
            remote_retention: None,
            notes: vec![],
        };
        let text = plan.render();
        assert!(
            text.contains("would run /cvpi/bin/cvpi backup cvp"),
            "{text}"
        );
        assert!(text.contains("upload  cvp.20240101020010.tgz (7 bytes): not on the remote"));
        assert!(text.contains("delete  cvp.20240101020010.tgz"));
        assert!(text.contains("remote pruning: none"));
    }
}
