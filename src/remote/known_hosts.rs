//! Host key verification against an OpenSSH `known_hosts` file: the Python scripts answered
//! "yes" to any key; we refuse a changed key always and an unknown one under `strict`.

use crate::config::HostKeyPolicy;
use crate::error::{Error, Result};
use crate::safe_fs;
use base64::Engine as _;
use ssh2::{CheckResult, HostKeyType, KnownHostFileKind, Session};
use std::io::Write;
use std::path::Path;

/// The name OpenSSH writes for a host: `host`, or `[host]:port` off port 22.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn key_type_name(kind: HostKeyType) -> Option<&'static str> {
    Some(match kind {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => return None,
    })
}

/// Does a known_hosts host field (`h1,h2` or a hashed `|1|salt|hash`) name `pattern`?
fn names_host(field: &str, pattern: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let b64 = &base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
            return false;
        };
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(pattern.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    field.split(',').any(|h| h == pattern)
}

/// Key algorithms already recorded for this host, in plain or hashed (`ssh-keyscan -H`)
/// entries, so that the handshake asks for a key we can check (as OpenSSH orders
/// HostKeyAlgorithms) and a host known by one key type is not taken for a changed one.
pub fn known_key_types(path: &Path, host: &str, port: u16) -> Vec<String> {
    let Ok(Some(text)) = read(path) else {
        return Vec::new();
    };
    let pattern = host_pattern(host, port);
    let mut types = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(hosts) = fields.next() else { continue };
        if hosts.starts_with('#') || hosts.starts_with('@') {
            continue;
        }
        if names_host(hosts, &pattern) {
            if let Some(kind) = fields.next() {
                if !types.iter().any(|t| t == kind) {
                    types.push(kind.to_string());
                }
            }
        }
    }
    types
}

/// The known_hosts file's text (None when it does not exist), read without following a
/// symlink: it lives in the job account's home.
fn read(path: &Path) -> std::io::Result<Option<String>> {
    let (folder, name) = safe_fs::split(path)?;
    let dir = match safe_fs::Dir::open(&folder) {
        Ok(dir) => dir,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(dir
        .read(&name, 16 * 1024 * 1024)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Outcome of a successful check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    Known,
    /// Unknown and recorded (accept-new).
    Recorded {
        fingerprint: String,
    },
}

pub fn verify(
    session: &Session,
    host: &str,
    port: u16,
    path: &Path,
    policy: HostKeyPolicy,
    record: bool,
) -> Result<Verified> {
    let (key, kind) = session
        .host_key()
        .ok_or_else(|| Error::connect(format!("{host}: the server sent no host key")))?;
    let fingerprint = fingerprint(session);
    let mut known = session
        .known_hosts()
        .map_err(|err| Error::connect(format!("cannot initialise host key checks: {err}")))?;
    let text = read(path).map_err(|err| {
        Error::connect(format!(
            "cannot read known_hosts file {}: {err}",
            path.display()
        ))
    })?;
    // Line by line, as OpenSSH reads it: a line libssh2 cannot parse (a marker it does not
    // know) is skipped, not fatal.
    for line in text.iter().flat_map(|t| t.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Err(err) = known.read_str(line, KnownHostFileKind::OpenSSH) {
            log::debug!(
                "{}: a line libssh2 cannot read is skipped: {err}",
                path.display()
            );
        }
    }
    let pattern = host_pattern(host, port);
    match known.check_port(host, port, key) {
        CheckResult::Match => Ok(Verified::Known),
        CheckResult::Mismatch => Err(Error::connect(format!(
            "host key for {pattern} does not match the one recorded in {} (server now offers \
             {fingerprint}): refusing to connect. If the backup server was really reinstalled, \
             remove the old key with `ssh-keygen -R {} -f {}` and run again",
            path.display(),
            crate::error::shell_word(&pattern),
            crate::error::shell_word(path)
        ))),
        CheckResult::NotFound => match policy {
            HostKeyPolicy::Strict => Err(Error::connect(format!(
                "host {pattern} is not in {} and host_key_policy = strict: add its key (check \
                 the fingerprint {fingerprint} with the server's administrator) or use accept-new",
                path.display()
            ))),
            // Read-only commands never introduce the password to a host nobody has vetted.
            HostKeyPolicy::AcceptNew if !record => Err(Error::connect(format!(
                "host {pattern} is not in {} yet (its key is {fingerprint}): run \
                 `cvp-backup-copy check` first, which records it (host_key_policy = accept-new); \
                 this command does not send the password to an unknown host",
                path.display()
            ))),
            HostKeyPolicy::AcceptNew => {
                let type_name = key_type_name(kind).ok_or_else(|| {
                    Error::connect(format!("{pattern}: host key of an unknown type"))
                })?;
                append(path, &pattern, type_name, key)?;
                Ok(Verified::Recorded { fingerprint })
            }
        },
        CheckResult::Failure => Err(Error::connect(format!(
            "cannot check the host key of {pattern} against {}",
            path.display()
        ))),
    }
}

fn fingerprint(session: &Session) -> String {
    match session.host_key_hash(ssh2::HashType::Sha256) {
        Some(hash) => format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        ),
        None => "an unknown fingerprint".into(),
    }
}

/// Append in OpenSSH's format, keeping the rest of the file as the operator wrote it. The
/// file is opened without following a symlink, and only when it is a plain file.
fn append(path: &Path, pattern: &str, type_name: &str, key: &[u8]) -> Result<()> {
    let fail = |err: std::io::Error| {
        Error::connect(format!(
            "cannot record the host key of {pattern} in {}: {err}",
            path.display()
        ))
    };
    let (folder, name) = safe_fs::split(path).map_err(fail)?;
    let dir = safe_fs::Dir::open_or_create(&folder, 0o700).map_err(fail)?;
    let existing = dir.read(&name, 16 * 1024 * 1024).map_err(fail)?;
    let needs_newline = existing
        .as_ref()
        .is_some_and(|bytes| bytes.last().is_some_and(|b| *b != b'\n'));
    let line = format!(
        "{}{pattern} {type_name} {}\n",
        if needs_newline { "\n" } else { "" },
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut file = match dir.open_existing(&name, true).map_err(fail)? {
        Some(file) => file,
        None => dir.create_new(&name, 0o600).map_err(fail)?,
    };
    use std::io::Seek;
    file.seek(std::io::SeekFrom::End(0)).map_err(fail)?;
    file.write_all(line.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_openssh() {
        assert_eq!(host_pattern("backup.example", 22), "backup.example");
        assert_eq!(host_pattern("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn known_types_come_from_matching_plain_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            "# comment\nother ssh-rsa AAAA\n[h]:2222,h2 ssh-ed25519 AAAA\n[h]:2222 ecdsa-sha2-nistp256 AAAA\n\
             @revoked [h]:2222 ssh-rsa AAAA\n|1|salt|hash ssh-rsa AAAA\n",
        )
        .expect("write");
        assert_eq!(
            known_key_types(&path, "h", 2222),
            ["ssh-ed25519", "ecdsa-sha2-nistp256"]
        );
        assert!(known_key_types(&path, "h", 22).is_empty());
        // `ssh-keyscan -H` entries: HMAC-SHA1 of the host pattern under a random salt.
        use hmac::Mac;
        let salt = b"0123456789abcdefghij";
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).expect("hmac");
        mac.update(b"[10.0.0.5]:2222");
        let b64 = &base64::engine::general_purpose::STANDARD;
        let hashed = format!(
            "|1|{}|{} ecdsa-sha2-nistp256 AAAA\n",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        );
        std::fs::write(&path, &hashed).expect("write");
        assert_eq!(
            known_key_types(&path, "10.0.0.5", 2222),
            ["ecdsa-sha2-nistp256"]
        );
        assert!(known_key_types(&path, "10.0.0.6", 2222).is_empty());
        assert!(known_key_types(&dir.path().join("missing"), "h", 22).is_empty());
    }
}
