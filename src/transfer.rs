//! Copy one file to a `Remote` so that a final name only ever holds a complete, verified file:
//! write a partial name while hashing what is read, check the size on the server, write the
//! `sha256sum` sidecar, then rename into place.

use crate::error::{Error, Result};
use crate::names::{sidecar_line, BackupName};
use crate::remote::Remote;
use crate::signals;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

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

/// Broken or silent connections are worth another attempt; anything the server said
/// (disk full, permission denied) is not.
fn write_error(err: std::io::Error, what: String) -> Error {
    use std::io::ErrorKind::*;
    match err.kind() {
        TimedOut | ConnectionAborted | ConnectionReset | BrokenPipe | UnexpectedEof => {
            Error::transient(format!("{what}: {err}"))
        }
        _ => Error::copy(format!("{what}: {err}")),
    }
}

fn hash_prefix(source: &mut std::fs::File, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = source.read(&mut buf[..CHUNK.min(left as usize)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

fn read_error(local: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |err| Error::copy(format!("cannot read {}: {err}", local.display()))
}

/// The local file and its size when the upload starts.
fn open_local(local: &Path) -> Result<(std::fs::File, u64)> {
    let source = std::fs::File::open(local).map_err(read_error(local))?;
    let size = source.metadata().map_err(read_error(local))?.len();
    Ok((source, size))
}

/// After the bytes are sent: the local file must not have changed size while it was read,
/// and the server must hold exactly what was sent. Only then may the file be published.
fn check_sent(
    remote: &mut dyn Remote,
    local: &Path,
    name: BackupName,
    expected: u64,
    bytes: u64,
    via: &str,
) -> Result<()> {
    if bytes != expected {
        return Err(Error::copy(format!(
            "{} changed while it was copied ({expected} bytes before, {bytes} read): not \
             publishing it; the next run copies it again",
            local.display()
        )));
    }
    match remote.size_of(&name.partial_name())? {
        Some(size) if size == bytes => Ok(()),
        other => Err(Error::transient(format!(
            "verification failed for {name} on {}: sent {bytes} bytes{via}, the server has {}",
            remote.describe(),
            other
                .map(|s| format!("{s} bytes"))
                .unwrap_or_else(|| "no file".into())
        ))),
    }
}

/// Upload `local` as `name`, resuming a partial upload an earlier attempt left on the server
/// (then reading the whole remote file back to verify it), and publish it.
pub fn upload(remote: &mut dyn Remote, local: &Path, name: BackupName) -> Result<Uploaded> {
    let label = remote.describe();
    let local_error = read_error(local);
    let (mut source, expected) = open_local(local)?;
    let partial = name.partial_name();

    let mut hasher = Sha256::new();
    let resume_at = match remote.size_of(&partial)? {
        Some(size) if size > 0 && size <= expected => size,
        _ => 0,
    };
    if resume_at > 0 {
        log::info!("{name}: resuming the upload at {resume_at} of {expected} bytes");
        hash_prefix(&mut source, resume_at, &mut hasher).map_err(&local_error)?;
    }
    let mut bytes = resume_at;
    {
        let mut sink = if resume_at > 0 {
            remote.open_at(&partial, resume_at)?
        } else {
            remote.create(&partial)?
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            signals::check(&format!("the copy of {name}"))?;
            let n = source.read(&mut buf).map_err(&local_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(|err| {
                write_error(
                    err,
                    format!("writing {partial} on {label} failed after {bytes} bytes"),
                )
            })?;
            bytes += n as u64;
        }
        sink.flush()
            .map_err(|err| write_error(err, format!("cannot sync {partial} on {label}")))?;
    }
    let digest = hex(&hasher.finalize());
    check_sent(remote, local, name, expected, bytes, "")?;
    if resume_at > 0 {
        // Part of the file came from an earlier connection: check every byte that is there.
        let remote_digest = sha256_remote(remote, &partial)?;
        if remote_digest != digest {
            remote.remove(&partial)?;
            return Err(Error::transient(format!(
                "{name}: the resumed upload on {label} does not match the local file (sha256 \
                 {remote_digest}, expected {digest}); discarded it, the next attempt starts over"
            )));
        }
        log::info!("{name}: resumed upload verified by reading it back (sha256 {digest})");
    }
    publish(remote, name, &partial, &digest)?;
    Ok(Uploaded { digest, bytes })
}

/// Files at least this big go over several streams (a single SSH channel is capped near
/// window/RTT on a WAN); smaller ones are not worth the extra connections.
pub const PARALLEL_THRESHOLD: u64 = 64 * 1024 * 1024;

/// What one stream writes per call. libssh2 keeps one write call's data in flight and
/// drains it before returning, so a stream moves about one chunk per round trip: 2 MiB is
/// OpenSSH's whole channel window.
const STREAM_CHUNK: usize = 2 * 1024 * 1024;

/// Chunks waiting for a free stream. With recycled buffers, memory stays near
/// (QUEUE + streams + 1) x STREAM_CHUNK, plus libssh2's copy of each chunk being sent,
/// whatever the file size.
const QUEUE: usize = 2;

fn read_full(source: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Upload `local` over several connections at once, each taking the next 2 MiB chunk when
/// it is free (a slow stream holds nobody up) and writing it at its offset in the same
/// temporary file. The file is read once, in order, and hashed as it is read. A failed
/// stream fails the whole file: the caller retries it from the start (a parallel partial
/// may have holes, so it is never resumed), and no final name is written unless every byte
/// arrived and the size checks out.
pub fn upload_parallel(
    remotes: &mut [&mut (dyn Remote + Send)],
    local: &Path,
    name: BackupName,
) -> Result<Uploaded> {
    let streams = remotes.len();
    let label = remotes[0].describe();
    let local_error = read_error(local);
    let (mut source, expected) = open_local(local)?;
    let partial = name.partial_name();
    drop(remotes[0].create(&partial)?);

    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(QUEUE);
    let chunks = Mutex::new(chunk_rx);
    let stream_failed = AtomicBool::new(false);
    let (digest, bytes) = std::thread::scope(|scope| -> Result<(String, u64)> {
        let mut workers = Vec::with_capacity(streams);
        for (index, remote) in remotes.iter_mut().enumerate() {
            let recycle = recycle_tx.clone();
            let (partial, label, chunks, failed) = (&partial, &label, &chunks, &stream_failed);
            workers.push(scope.spawn(move || -> Result<()> {
                let outcome =
                    write_chunks(&mut **remote, partial, chunks, &recycle).map_err(|err| Error {
                        message: format!(
                            "stream {} of {streams} to {label}: {}",
                            index + 1,
                            err.message
                        ),
                        ..err
                    });
                if outcome.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                outcome
            }));
        }
        drop(recycle_tx);

        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut failure = None;
        loop {
            if let Err(err) = signals::check(&format!("the copy of {name}")) {
                failure = Some(err);
                break;
            }
            // A failed stream fails the file: stop reading; its error comes from join below.
            if stream_failed.load(Ordering::SeqCst) {
                break;
            }
            let mut buf = recycle_rx.try_recv().unwrap_or_default();
            buf.resize(STREAM_CHUNK, 0);
            let n = match read_full(&mut source, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) => {
                    failure = Some(local_error(err));
                    break;
                }
            };
            buf.truncate(n);
            hasher.update(&buf);
            if chunk_tx.send((offset, buf)).is_err() {
                break;
            }
            offset += n as u64;
        }
        drop(chunk_tx);
        for worker in workers {
            let outcome = worker
                .join()
                .unwrap_or_else(|_| Err(Error::copy(format!("a stream copying {name} crashed"))));
            if let Err(err) = outcome {
                // Keep the first cause; a stop request or a local read error comes first.
                failure.get_or_insert(err);
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok((hex(&hasher.finalize()), offset)),
        }
    })?;

    let remote = &mut *remotes[0];
    check_sent(
        remote,
        local,
        name,
        expected,
        bytes,
        &format!(" over {streams} streams"),
    )?;
    publish(remote, name, &partial, &digest)?;
    Ok(Uploaded { digest, bytes })
}

/// One stream: take chunks until there are none, write each at its offset, then sync.
fn write_chunks(
    remote: &mut dyn Remote,
    partial: &str,
    chunks: &Mutex<mpsc::Receiver<(u64, Vec<u8>)>>,
    recycle: &mpsc::Sender<Vec<u8>>,
) -> Result<()> {
    let mut sink = remote.open_at(partial, 0)?;
    // The lock is held only to take a chunk, never while writing one.
    let next = || chunks.lock().ok().and_then(|rx| rx.recv().ok());
    while let Some((offset, buf)) = next() {
        sink.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| sink.write_all(&buf))
            .map_err(|err| write_error(err, format!("writing {partial} at {offset}")))?;
        let _ = recycle.send(buf);
    }
    sink.flush()
        .map_err(|err| write_error(err, format!("syncing {partial}")))
}

fn sha256_remote(remote: &mut dyn Remote, name: &str) -> Result<String> {
    let label = remote.describe();
    let mut reader = remote.open_read(name)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        signals::check(&format!("the verification of {name}"))?;
        let n = reader
            .read(&mut buf)
            .map_err(|err| write_error(err, format!("reading {name} back from {label}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
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
