//! The backup server password: a Fernet token in the INI, decrypted with the key file, as
//! the Python scripts (`cryptography.fernet`) wrote them. Clear text lives only in `Secret`.

use crate::error::{Error, Result};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// A clear-text secret. No `Display`; `Debug` hides it; the memory is wiped on drop.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A new Fernet key, as `Fernet.generate_key()` makes it.
pub fn new_key() -> String {
    fernet::Fernet::generate_key()
}

pub fn encrypt_password(key: &fernet::Fernet, password: &Secret) -> String {
    key.encrypt(password.expose().as_bytes())
}

/// A key file others can read defeats the encryption of the password: refuse it.
pub fn check_key_is_private(path: &Path) -> Result<()> {
    private_file("key file", path, "decrypt the password")
}

/// The same rule for `identity_file` (an SSH private key): group or other can read it.
pub fn check_identity_is_private(path: &Path) -> Result<()> {
    private_file(
        "identity_file",
        path,
        "log in to the backup server as this node",
    )
}

/// A secret file only its owner may read: the error names what a reader could do, and the fix.
fn private_file(what: &str, path: &Path, reader_could: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|err| Error::config(format!("cannot read {what} {}: {err}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::config(format!(
            "{what} {} is open to group or other (mode {mode:04o}): anyone who can read it \
             can {reader_could}; run `chmod 600 {}`",
            path.display(),
            crate::error::shell_word(path)
        )));
    }
    Ok(())
}

/// Read a Fernet key file: 44 characters of URL-safe base64, a trailing newline tolerated.
pub fn load_key(path: &Path) -> Result<fernet::Fernet> {
    let text = read_key_text(path)?;
    fernet::Fernet::new(&text).ok_or_else(|| {
        Error::config(format!(
            "key file {} is not a Fernet key (expected 44 characters of URL-safe base64); \
             run `cvp-backup-copy keygen`",
            path.display()
        ))
    })
}

/// A key file's text, trimmed, checked to be a key; a symlink is not followed and nothing
/// but a plain file is read.
pub fn read_key_text(path: &Path) -> Result<Zeroizing<String>> {
    let fail = |err: std::io::Error| {
        Error::config(format!(
            "cannot read key file {}: {err}; run `cvp-backup-copy keygen`",
            path.display()
        ))
    };
    let (folder, name) = crate::safe_fs::split(path).map_err(fail)?;
    let raw = crate::safe_fs::Dir::open(&folder)
        .and_then(|dir| dir.read(&name, 4096))
        .map_err(fail)?
        .ok_or_else(|| fail(std::io::ErrorKind::NotFound.into()))?;
    let raw = Zeroizing::new(raw);
    let text = std::str::from_utf8(&raw).map_err(|_| {
        Error::config(format!(
            "key file {} is not a Fernet key (not text); run `cvp-backup-copy keygen`",
            path.display()
        ))
    })?;
    let text = Zeroizing::new(text.trim().to_string());
    if fernet::Fernet::new(&text).is_none() {
        return Err(Error::config(format!(
            "key file {} is not a Fernet key (expected 44 characters of URL-safe base64); \
             run `cvp-backup-copy keygen`",
            path.display()
        )));
    }
    Ok(text)
}

/// Decrypt the INI's `password` token. Fernet tokens carry a timestamp; no TTL applies.
pub fn decrypt_password(token: &str, key_path: &Path, ini_path: &Path) -> Result<Secret> {
    let key = load_key(key_path)?;
    let clear = key.decrypt(token.trim()).map_err(|_| {
        Error::config(format!(
            "cannot decrypt password in {} with key file {}: the key does not match the token \
             (or the token is damaged); run `cvp-backup-copy keygen`",
            ini_path.display(),
            key_path.display()
        ))
    })?;
    let clear = Zeroizing::new(clear);
    let text = String::from_utf8(clear.to_vec()).map_err(|_| {
        Error::config(format!(
            "password in {} decrypts with key file {} but is not UTF-8 text",
            ini_path.display(),
            key_path.display()
        ))
    })?;
    Ok(Secret::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // The Fernet specification's test vector (also what Python's `cryptography` accepts).
    const SPEC_KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    const SPEC_TOKEN: &str = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";

    fn key_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write key");
        file
    }

    #[test]
    fn decrypts_the_spec_vector_without_a_ttl_and_tolerates_a_newline() {
        for contents in [SPEC_KEY.to_string(), format!("{SPEC_KEY}\n")] {
            let key = key_file(&contents);
            let secret = decrypt_password(SPEC_TOKEN, key.path(), Path::new("backup.ini"))
                .expect("the spec token decrypts");
            assert_eq!(secret.expose(), "hello");
        }
    }

    #[test]
    fn a_different_key_names_the_key_file_and_the_fix() {
        let key = key_file(&fernet::Fernet::generate_key());
        let err = decrypt_password(SPEC_TOKEN, key.path(), Path::new("/etc/x/backup.ini"))
            .expect_err("wrong key");
        assert_eq!(err.code, crate::exit_codes::ExitCode::Config);
        assert!(
            err.message.contains(&key.path().display().to_string()),
            "{}",
            err.message
        );
        assert!(err.message.contains("/etc/x/backup.ini"));
        assert!(err.message.contains("cvp-backup-copy keygen"));
    }

    #[test]
    fn garbage_key_files_are_configuration_errors() {
        for contents in ["", "not a key", &"A".repeat(44)] {
            let key = key_file(contents);
            match load_key(key.path()) {
                Err(err) => assert_eq!(err.code, crate::exit_codes::ExitCode::Config),
                Ok(_) if contents.len() == 44 => {} // 44 base64 'A's is a valid (weak) key
                Ok(_) => panic!("{contents:?} accepted as a key"),
            }
        }
        assert!(load_key(Path::new("/nonexistent/key")).is_err());
    }

    #[test]
    fn keys_cross_over_and_are_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.key");
        let key = new_key();
        crate::safe_fs::Dir::open(dir.path())
            .and_then(|d| {
                d.replace(
                    "backup.key",
                    key.as_bytes(),
                    crate::safe_fs::Mode::Force(0o600),
                )
            })
            .expect("write key");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        check_key_is_private(&path).expect("0600 is private");
        let token = encrypt_password(&load_key(&path).expect("load"), &Secret::new("pw".into()));
        let clear = decrypt_password(&token, &path, Path::new("x.ini")).expect("decrypt");
        assert_eq!(clear.expose(), "pw");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = check_key_is_private(&path).expect_err("0644 is refused");
        assert!(err.message.contains("chmod 600"), "{}", err.message);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2".into())),
            "Secret(***)"
        );
    }
}
