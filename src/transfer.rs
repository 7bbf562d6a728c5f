//! Copy one file to a `Remote` so that a final name only ever holds a complete, verified file:
//! write a partial name while hashing what is read, check the size on the server, write the
//! `sha256sum` sidecar, then rename into place.

use crate::error::{Error, Result};
use crate::names::{sidecar_line, BackupName};
use crate::remote::Remote;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// Large writes keep libssh2's SFTP pipeline full (32 KiB writes ran at a third of the speed).
pub const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub digest: String,
    pub bytes: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a local file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn upload(remote: &mut dyn Remote, local: &Path, name: BackupName) -> Result<Uploaded> {
    let label = remote.describe();
    let local_error =
        |err: std::io::Error| Error::copy(format!("cannot read {}: {err}", local.display()));
    let mut source = std::fs::File::open(local).map_err(local_error)?;
    let expected = source.metadata().map_err(local_error)?.len();
    let partial = name.partial_name();

    let (digest, bytes) = {
        let mut sink = remote.create(&partial)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        loop {
            let n = source.read(&mut buf).map_err(local_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(|err| {
                Error::copy(format!(
                    "writing {partial} on {label} failed after {bytes} bytes: {err}"
                ))
            })?;
            bytes += n as u64;
        }
        sink.flush()
            .map_err(|err| Error::copy(format!("cannot sync {partial} on {label}: {err}")))?;
        (hex(&hasher.finalize()), bytes)
    };
    if bytes != expected {
        return Err(Error::copy(format!(
            "{} changed while it was copied ({expected} bytes before, {bytes} read): not \
             publishing it; the next run copies it again",
            local.display()
        )));
    }
    match remote.size_of(&partial)? {
        Some(size) if size == bytes => {}
        other => {
            return Err(Error::copy(format!(
                "verification failed for {name} on {label}: sent {bytes} bytes, the server has {}",
                other
                    .map(|s| format!("{s} bytes"))
                    .unwrap_or_else(|| "no file".into())
            )))
        }
    }
    publish(remote, name, &partial, &digest)?;
    Ok(Uploaded { digest, bytes })
}

/// A stale final file goes first, then the sidecar lands, then the data is renamed into
/// place: at no moment does a final name hold a file its sidecar does not describe.
fn publish(remote: &mut dyn Remote, name: BackupName, partial: &str, digest: &str) -> Result<()> {
    remote.remove(&name.file_name())?;
    let sidecar_partial = name.sidecar_partial_name();
    let label = remote.describe();
    {
        let mut sink = remote.create(&sidecar_partial)?;
        sink.write_all(sidecar_line(digest, &name.file_name()).as_bytes())
            .and_then(|()| sink.flush())
            .map_err(|err| {
                Error::copy(format!("cannot write {sidecar_partial} on {label}: {err}"))
            })?;
    }
    remote.rename_replace(&sidecar_partial, &name.sidecar_name())?;
    remote.rename_replace(partial, &name.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(
            sha256_file(&path).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
