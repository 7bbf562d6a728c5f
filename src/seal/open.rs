//! Decrypting a fetched file: `fetch --identity FILE`. The age crate does the work, so what
//! the stock `age` tool encrypted opens here too.

use std::io::{BufReader, Read, Write};
use std::path::Path;

type Boxed = Box<dyn age::Identity + Send + Sync>;

/// The keys of an identity file: age identities (`AGE-SECRET-KEY-1…` lines, as `age-keygen`
/// and `keygen --age-identity` write them) or one unencrypted SSH private key.
pub struct Identities {
    list: Vec<Boxed>,
}

impl Identities {
    /// The identities of every file given.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Identities, String> {
        let mut list = Vec::new();
        for path in paths {
            list.extend(Identities::load_one(path.as_ref())?.list);
        }
        Ok(Identities { list })
    }

    /// Opened without following a symlink, and only a file no other account can write: a
    /// planted file would otherwise decide what is trusted as the restore key.
    fn load_one(path: &Path) -> Result<Identities, String> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt;
        let cannot =
            |err: std::io::Error| format!("cannot read identity file {}: {err}", path.display());
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        let me = crate::users::current_uid();
        if !meta.is_file() || crate::privilege::others_may_change(&meta, me) {
            return Err(format!(
                "identity file {} must be a plain file owned by you (or root) that no one else \
                 can write (`chmod 600`)",
                path.display()
            ));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(cannot)?;
        let text = String::from_utf8_lossy(&bytes);
        let list: Vec<Boxed> = if text.contains("AGE-SECRET-KEY-") {
            age::IdentityFile::from_buffer(&bytes[..])
                .ok()
                .and_then(|file| file.into_identities().ok())
                .ok_or_else(|| format!("{} is not a valid age identity file", path.display()))?
        } else {
            let name = Some(path.display().to_string());
            match age::ssh::Identity::from_buffer(&bytes[..], name) {
                Ok(key @ age::ssh::Identity::Unencrypted(_)) => vec![Box::new(key)],
                Ok(age::ssh::Identity::Encrypted(_)) => {
                    return Err(format!(
                        "{} is a passphrase-protected SSH key: fetch cannot ask for the \
                         passphrase; use a copy without one (`ssh-keygen -p -N '' -f COPY`) \
                         kept as safely as the key",
                        path.display()
                    ))
                }
                Ok(age::ssh::Identity::Unsupported(_)) => {
                    return Err(format!(
                        "{}: this SSH key type cannot decrypt age files (ssh-ed25519 and \
                         ssh-rsa can)",
                        path.display()
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "{} is neither an age identity file nor an SSH private key",
                        path.display()
                    ))
                }
            }
        };
        if list.is_empty() {
            return Err(format!("{} holds no identity", path.display()));
        }
        Ok(Identities { list })
    }

    /// Decrypt `sealed` into `out`, authenticating every chunk. Returns the plaintext's size.
    /// On an error, what `out` holds must be thrown away.
    pub fn decrypt(&self, sealed: impl Read, out: &mut dyn Write) -> Result<u64, String> {
        use std::io::BufRead as _;
        let mut input = BufReader::with_capacity(256 * 1024, sealed);
        // The header ends within its first 64 KiB (the age crate reads it whole, unbounded).
        let head = input.fill_buf().map_err(|err| err.to_string())?;
        if !head.starts_with(b"age-encryption.org/v1\n")
            || !head[..head.len().min(64 * 1024)]
                .windows(5)
                .any(|w| w == b"\n--- ")
        {
            return Err("not an age file this version reads".into());
        }
        let decryptor = age::Decryptor::new_buffered(input).map_err(explain)?;
        let mut reader = decryptor
            .decrypt(self.list.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(explain)?;
        std::io::copy(&mut reader, out).map_err(|err| {
            if err.kind() == std::io::ErrorKind::InvalidData {
                "the file does not authenticate: it was damaged or altered after it was \
                 encrypted"
                    .to_string()
            } else {
                format!("while decrypting: {err}")
            }
        })
    }
}

fn explain(err: age::DecryptError) -> String {
    match err {
        age::DecryptError::NoMatchingKeys => {
            "the identity given does not open this file (it was encrypted to other recipients)"
                .into()
        }
        age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
            "the file's header does not authenticate: it was damaged or altered".into()
        }
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "not an age file this version reads".into()
        }
        other => other.to_string(),
    }
}
