//! Decide what to copy from facts gathered about each file (pure), so that `--dry-run` and a
//! real run take the same decisions.

use crate::names::{BackupName, RemoteFile};
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
    /// `NAME.age` on the remote.
    pub sealed_copy: Option<SealedCopy>,
    /// This run uploads encrypted (`encrypt_to`).
    pub encrypt: bool,
}

/// An encrypted copy on the remote, and what this node recorded when it sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCopy {
    pub size: u64,
    /// The digest in its checksum file, if present and well-formed.
    pub digest: Option<String>,
    /// The size and sha256 this node sent as NAME.age, encrypted to the recipients the run
    /// encrypts to, from a local file of the size it has now (`state::SealedUpload`).
    pub sent: Option<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDecision {
    Upload {
        /// NAME, or NAME.age when the run encrypts.
        file: RemoteFile,
        size: u64,
        why: &'static str,
    },
    AlreadyThere {
        file: RemoteFile,
        size: u64,
        /// The sha256 of what the server holds (of the ciphertext, for NAME.age).
        digest: String,
    },
}

/// Does the remote side need the local digest to decide? (Saves hashing GBs for nothing.)
pub fn needs_local_digest(facts: &FileFacts) -> bool {
    facts.remote_size == Some(facts.local_size) && facts.remote_digest.is_some()
}

/// A copy on the remote counts when it is the kind the run makes and verified: a plain one
/// (encrypt_to off) by the local file's sha256; an encrypted one (encrypt_to on), which
/// nothing on the node can decrypt to compare, when it is what this node sent to these same
/// recipients (its checksum file and size those recorded then). Else the file goes again, as
/// the run makes them: a set is all encrypted or all plain, and `fetch` of an encrypted set
/// can refuse any plain member as a possible substitute.
pub fn decide(facts: &FileFacts) -> CopyDecision {
    let upload = |why| CopyDecision::Upload {
        file: RemoteFile::new(facts.name, facts.encrypt),
        size: facts.local_size,
        why,
    };
    let plain = match facts.remote_size {
        None => Err("not on the remote"),
        Some(_) if facts.encrypt => Err("only a plain copy is there, and encrypt_to is on"),
        Some(size) if size != facts.local_size => Err("remote size differs"),
        Some(_) => match (&facts.remote_digest, &facts.local_digest) {
            (None, _) => Err("remote checksum file missing or malformed"),
            (Some(remote), Some(local)) if remote == local => Ok(local.clone()),
            _ => Err("remote checksum differs"),
        },
    };
    let why = match (plain, &facts.sealed_copy) {
        (Ok(digest), _) => {
            return CopyDecision::AlreadyThere {
                file: RemoteFile::plain(facts.name),
                size: facts.local_size,
                digest,
            }
        }
        (Err(why), None) => why,
        (Err(_), Some(_)) if !facts.encrypt => {
            "only an encrypted copy is there, and encrypt_to is off"
        }
        (Err(_), Some(SealedCopy { sent: None, .. })) => {
            "the encrypted copy is not one this node sent to these recipients"
        }
        (Err(_), Some(SealedCopy { digest: None, .. })) => {
            "remote checksum file missing or malformed"
        }
        (Err(_), Some(copy)) => match (&copy.digest, &copy.sent) {
            (Some(digest), Some((size, sent))) if *size == copy.size && digest == sent => {
                return CopyDecision::AlreadyThere {
                    file: RemoteFile::new(facts.name, true),
                    size: facts.local_size,
                    digest: digest.clone(),
                }
            }
            _ => "the encrypted copy is not what this node sent",
        },
    };
    upload(why)
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
    /// The other destinations' parts (`[Destination NAME]`): copies, remote pruning, notes.
    pub others: Vec<(String, Plan)>,
    /// The worst thing met while planning (a destination that cannot be reached).
    pub code: crate::exit_codes::ExitCode,
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
        let several = !self.others.is_empty();
        let heading = if several {
            format!("destination main: copy to {}", self.destination)
        } else {
            format!("copy to {}", self.destination)
        };
        self.render_copies(&mut out, &heading);
        render_retention(&mut out, "local", self.local_retention.as_ref());
        render_retention(&mut out, "remote", self.remote_retention.as_ref());
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        for (name, other) in &self.others {
            other.render_copies(
                &mut out,
                &format!("destination {name}: copy to {}", other.destination),
            );
            render_retention(&mut out, "remote", other.remote_retention.as_ref());
            for note in &other.notes {
                let _ = writeln!(out, "  note: {note}");
            }
        }
        out
    }

    fn render_copies(&self, out: &mut String, heading: &str) {
        let _ = writeln!(out, "  {heading}:");
        if self.copies.is_empty() {
            let _ = writeln!(out, "    nothing to copy: no data backup found locally");
        }
        for copy in &self.copies {
            let _ = match copy {
                CopyDecision::Upload { file, size, why } => {
                    writeln!(out, "    upload  {file} ({size} bytes): {why}")
                }
                CopyDecision::AlreadyThere { file, size, .. } if file.sealed => {
                    writeln!(out, "    keep    {file} ({size} bytes): already on the remote, encrypted, with its checksum file")
                }
                CopyDecision::AlreadyThere { file, size, .. } => {
                    writeln!(out, "    keep    {file} ({size} bytes): already on the remote, checksum matches")
                }
            };
        }
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
            sealed_copy: None,
            encrypt: false,
        }
    }

    #[test]
    fn an_encrypted_copy_counts_only_as_what_this_node_sent_to_these_recipients() {
        let sealed = |size: u64, digest: Option<&str>, sent: Option<(u64, &str)>| SealedCopy {
            size,
            digest: digest.map(str::to_string),
            sent: sent.map(|(size, d)| (size, d.to_string())),
        };
        let none = || facts(None, None, None);
        // (plain facts, encrypted copy, encrypt) -> already there as NAME, or why not.
        type Row<'a> = (
            FileFacts,
            Option<SealedCopy>,
            bool,
            Result<&'a str, &'a str>,
        );
        let table: Vec<Row> = vec![
            (
                none(),
                Some(sealed(500, Some("cc"), Some((500, "cc")))),
                true,
                Ok("cvp.20240101020010.tgz.age"),
            ),
            (
                none(),
                Some(sealed(500, Some("cc"), Some((500, "cc")))),
                false,
                Err("only an encrypted copy is there, and encrypt_to is off"),
            ),
            (
                none(),
                Some(sealed(500, None, Some((500, "cc")))),
                true,
                Err("remote checksum file missing or malformed"),
            ),
            // Other recipients, another local file, or nothing recorded (another tool's file).
            (
                none(),
                Some(sealed(500, Some("cc"), None)),
                true,
                Err("the encrypted copy is not one this node sent to these recipients"),
            ),
            // Truncated on the server, or its checksum file rewritten.
            (
                none(),
                Some(sealed(499, Some("cc"), Some((500, "cc")))),
                true,
                Err("the encrypted copy is not what this node sent"),
            ),
            (
                none(),
                Some(sealed(500, Some("dd"), Some((500, "cc")))),
                true,
                Err("the encrypted copy is not what this node sent"),
            ),
            (none(), None, true, Err("not on the remote")),
            // A verified plain copy does not count when the run encrypts, nor an encrypted one
            // when it does not: a set is all one or the other.
            (
                facts(Some(100), Some("aa"), Some("aa")),
                None,
                true,
                Err("only a plain copy is there, and encrypt_to is on"),
            ),
            (
                facts(Some(100), Some("aa"), Some("aa")),
                Some(sealed(500, Some("cc"), Some((500, "cc")))),
                false,
                Ok("cvp.20240101020010.tgz"),
            ),
            (
                facts(Some(100), Some("aa"), Some("bb")),
                Some(sealed(500, Some("cc"), Some((500, "cc")))),
                true,
                Ok("cvp.20240101020010.tgz.age"),
            ),
        ];
        for (mut facts, sealed, encrypt, expected) in table {
            facts.sealed_copy = sealed;
            facts.encrypt = encrypt;
            match (decide(&facts), expected) {
                (CopyDecision::AlreadyThere { file, digest, .. }, Ok(name)) => {
                    assert_eq!(file.file_name(), name);
                    assert_eq!(digest, if file.sealed { "cc" } else { "aa" });
                }
                (CopyDecision::Upload { file, why, .. }, Err(reason)) => {
                    assert_eq!(why, reason);
                    assert_eq!(file.sealed, encrypt, "uploads as the run encrypts");
                }
                (other, expected) => panic!("{facts:?}: got {other:?}, expected {expected:?}"),
            }
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
                file: RemoteFile::plain(name),
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
            ..Plan::default()
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
