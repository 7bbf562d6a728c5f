//! `keygen --age-identity FILE`: a new X25519 identity for encrypt_to, to keep off the node.

use age::secrecy::ExposeSecret;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write a new identity to `path` (a new file, mode 0600, never over an existing one or
/// through a symlink) in `age-keygen`'s format; its recipient, for `encrypt_to`.
pub fn write_new(path: &Path) -> Result<String, String> {
    // In a folder another account may write, that account could swap the file before it is
    // stored away, and every backup would go to its key (a sticky folder such as /tmp is fine).
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::metadata(folder)
        .map_err(|err| format!("cannot use the folder {}: {err}", folder.display()))?;
    if crate::privilege::others_may_change(&meta, crate::users::current_uid()) {
        return Err(format!(
            "{} can be written by other accounts: write the identity into a folder only you \
             can write",
            folder.display()
        ));
    }
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%:z"),
        identity.to_string().expose_secret()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: an identity is never overwritten (the backups encrypted to it \
                 would be lost); choose another name",
                path.display()
            ),
            _ => format!("cannot create {}: {err}", path.display()),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(recipient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_identity_is_private_opens_what_its_recipient_seals_and_is_never_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("backup-identity.txt");
        let recipient = write_new(&path).expect("written");
        assert!(recipient.starts_with("age1"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&path).expect("read");
        let err = write_new(&path).expect_err("exists");
        assert!(err.contains("never overwritten"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), before);
        let shared = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777))
            .expect("mode");
        let err = write_new(&shared.path().join("id")).expect_err("a folder others write");
        assert!(err.contains("other accounts"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).expect("symlink");
        assert!(write_new(&link).is_err());
        assert!(!dir.path().join("elsewhere").exists());
        // It opens what is sealed to its recipient.
        let recipients = crate::seal::Recipients::parse(&recipient, None).expect("recipient");
        let identities = crate::seal::open::Identities::load(&[&path]).expect("identity");
        let mut plain = tempfile::tempfile().expect("tmp");
        plain.write_all(b"the network's secrets").expect("write");
        let sealer = crate::seal::Sealer::new(&recipients).expect("sealer");
        let mut sealed = vec![0u8; sealer.sealed_len(21) as usize];
        let mut reader = sealer.reader(&plain, 21);
        let mut at = 0;
        while at < sealed.len() {
            at += crate::seal::ReadAt::read_at(&mut reader, &mut sealed[at..], at as u64)
                .expect("read");
        }
        let mut out = Vec::new();
        assert_eq!(identities.decrypt(&sealed[..], &mut out), Ok(21));
        assert_eq!(out, b"the network's secrets");
        // A flipped byte in the payload is refused.
        let last = sealed.len() - 20;
        sealed[last] ^= 1;
        let mut out = Vec::new();
        let err = identities
            .decrypt(&sealed[..], &mut out)
            .expect_err("tampered");
        assert!(err.contains("does not authenticate"), "{err}");
    }
}
