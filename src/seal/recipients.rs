//! `[Server_Settings] encrypt_to`: who can decrypt the backups on the server.

use std::path::{Path, PathBuf};
use std::str::FromStr;

type Boxed = Box<dyn age::Recipient + Send + Sync>;

/// The recipients every file of a set is encrypted to.
pub struct Recipients {
    list: Vec<Boxed>,
    /// sha256 of the recipients' keys, sorted: which copies on the server were encrypted to
    /// exactly these (see `state::SealedUpload`).
    pub fingerprint: String,
    /// Each key without comments, for the fingerprint.
    keys: Vec<String>,
    /// Each recipient as written (public keys: fine to log), for `check` and `-v`.
    pub described: Vec<String>,
    /// Recipient files others than their owner may write: whoever can, can add a key of
    /// theirs and read every backup after.
    pub loose_files: Vec<PathBuf>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.described).finish()
    }
}

impl Recipients {
    /// `spec`: comma-separated `age1…` recipients, SSH public keys (`ssh-ed25519 …`,
    /// `ssh-rsa …`) or `@FILE` (one per line, `#` comments). A relative FILE is taken from
    /// `base` (the INI's folder).
    pub fn parse(spec: &str, base: Option<&Path>) -> Result<Recipients, String> {
        let mut recipients = Recipients {
            list: Vec::new(),
            fingerprint: String::new(),
            keys: Vec::new(),
            described: Vec::new(),
            loose_files: Vec::new(),
        };
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(file) = entry.strip_prefix('@') {
                let path = match base {
                    Some(base) if Path::new(file.trim()).is_relative() => base.join(file.trim()),
                    _ => PathBuf::from(file.trim()),
                };
                recipients.add_file(&path)?;
            } else {
                // Not echoed either: a pasted secret key must not reach a log.
                let parsed = parse_one(entry).map_err(|why| {
                    format!("entry {} of the list: {why}", recipients.keys.len() + 1)
                })?;
                recipients.add(parsed, entry);
            }
        }
        if recipients.list.is_empty() {
            return Err("names no recipient".into());
        }
        recipients.keys.sort();
        recipients.keys.dedup();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for key in &recipients.keys {
            sha2::Digest::update(&mut hasher, key.as_bytes());
            sha2::Digest::update(&mut hasher, b"\n");
        }
        recipients.fingerprint = crate::transfer::hex(&sha2::Digest::finalize(hasher));
        Ok(recipients)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), String> {
        use std::io::Read as _;
        let cannot =
            |err: std::io::Error| format!("cannot read recipients file {}: {err}", path.display());
        // What is read and what is judged are the same file (one handle).
        let mut file = std::fs::File::open(path).map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        if crate::privilege::others_may_change(&meta, crate::users::current_uid()) {
            self.loose_files.push(path.to_path_buf());
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(cannot)?;
        let before = self.list.len();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line itself is not echoed: the file may be one that is not ours to show.
            let parsed = parse_one(line)
                .map_err(|why| format!("{} line {}: {why}", path.display(), number + 1))?;
            self.add(parsed, line);
        }
        if self.list.len() == before {
            return Err(format!(
                "recipients file {} names no recipient",
                path.display()
            ));
        }
        Ok(())
    }

    fn add(&mut self, parsed: Boxed, text: &str) {
        self.list.push(parsed);
        self.described.push(short(text));
        let key: Vec<&str> = text.split_whitespace().take(2).collect();
        self.keys.push(key.join(" "));
    }

    pub fn iter(&self) -> impl Iterator<Item = &(dyn age::Recipient + Send + Sync)> {
        self.list.iter().map(|r| r.as_ref())
    }
}

fn parse_one(text: &str) -> Result<Boxed, &'static str> {
    if text.contains("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY") {
        return Err(
            "this is a secret key, which must never be on this node: give its public \
                    key (`age-keygen -y FILE`, or the .pub of an SSH key)",
        );
    }
    if text.starts_with("age1") {
        return age::x25519::Recipient::from_str(text)
            .map(|r| Box::new(r) as Boxed)
            .map_err(|_| "not a valid age recipient");
    }
    if text.starts_with("ssh-") {
        return age::ssh::Recipient::from_str(text)
            .map(|r| Box::new(r) as Boxed)
            .map_err(|err| match err {
                age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                    "an ssh-rsa key shorter than 2048 bits is refused"
                }
                age::ssh::ParseRecipientKeyError::Unsupported(_) => {
                    "this SSH key type cannot be a recipient (use ssh-ed25519 or ssh-rsa)"
                }
                _ => "not a valid SSH public key",
            });
    }
    Err("not a recipient (age1…, ssh-ed25519 …, ssh-rsa … or @FILE)")
}

/// A public key as people recognise it: its type and the start and end of its key.
fn short(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (kind, key) = match words.as_slice() {
        [key] => ("", *key),
        [kind, key, ..] => (*kind, *key),
        [] => ("", ""),
    };
    let key = if key.len() > 24 {
        format!("{}…{}", &key[..12], &key[key.len() - 8..])
    } else {
        key.to_string()
    };
    if kind.is_empty() {
        key
    } else {
        format!("{kind} {key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN someone@host";

    #[test]
    fn age_and_ssh_recipients_and_files_are_read() {
        let age_key = age::x25519::Identity::generate().to_public().to_string();
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# ops team\n\n{ED25519}\n")).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let spec = format!("{age_key}, @recipients.txt");
        let recipients = Recipients::parse(&spec, Some(dir.path())).expect("parses");
        assert_eq!(recipients.iter().count(), 2);
        assert!(recipients.described[1].starts_with("ssh-ed25519 AAAAC3NzaC1l…"));
        assert!(recipients.loose_files.is_empty());
    }

    #[test]
    fn a_recipients_file_others_may_write_is_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("r");
        std::fs::write(&file, format!("{ED25519}\n")).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("mode");
        let recipients = Recipients::parse(&format!("@{}", file.display()), None).expect("ok");
        assert_eq!(recipients.loose_files, vec![file]);
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").expect("write");
        let secret_like = dir.path().join("shadow");
        std::fs::write(&secret_like, "root:$6$secret:19000::::::\n").expect("write");
        let table = [
            ("", "names no recipient".to_string()),
            ("age1nope", "not a valid age recipient".to_string()),
            ("ssh-dss AAAA", "SSH".to_string()),
            ("hello", "not a recipient".to_string()),
            (
                &*format!("@{}", empty.display()),
                "names no recipient".to_string(),
            ),
            ("@/nonexistent/r", "cannot read recipients file".to_string()),
        ];
        for (spec, expected) in table {
            let err = Recipients::parse(spec, None).expect_err(spec);
            assert!(err.contains(&expected), "{spec}: {err}");
        }
        let err = Recipients::parse(&format!("@{}", secret_like.display()), None).expect_err("x");
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("secret"), "the line is not echoed: {err}");
        let identity = age::x25519::Identity::generate();
        let pasted = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
        let err = Recipients::parse(&pasted, None).expect_err("a secret key");
        assert!(
            err.contains("secret key") && !err.contains(&pasted[20..]),
            "{err}"
        );
    }

    #[test]
    fn the_fingerprint_is_of_the_keys_whatever_their_order_and_comments() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = ED25519.rsplit_once(' ').expect("comment").0;
        let one = Recipients::parse(&format!("{a}, {ED25519}"), None).expect("ok");
        let two = Recipients::parse(&format!("{b} other@host,{a}"), None).expect("ok");
        let three = Recipients::parse(&a, None).expect("ok");
        assert_eq!(one.fingerprint, two.fingerprint);
        assert_ne!(one.fingerprint, three.fingerprint);
    }
}
