//! Copy one file to a `Remote` so that a final name only ever holds a complete, verified file:
//! write a partial name while another thread hashes the file, check the size on the server,
//! write the `sha256sum` sidecar, then rename into place.

use crate::error::{Error, Result};
use crate::names::{parse_sidecar, sidecar_line, BackupName};
use crate::remote::Remote;
use crate::signals;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Large writes keep libssh2's SFTP pipeline full (32 KiB writes ran at a third of the speed).
pub const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub digest: String,
    pub bytes: u64,
    /// What hashing added to the copy: time spent hashing on the sending thread, or the
    /// time the streams waited for the hashing thread.
    pub hash_seconds: f64,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a local file, streamed; stops for SIGTERM like a copy does.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = crate::safe_fs::open_file(path).map_err(read_error(path))?;
    sha256_open(&file, path)
}

/// sha256 of a file already opened (`path` names it in messages).
pub fn sha256_open(file: &std::fs::File, path: &Path) -> Result<String> {
    let during = format!("hashing {}", path.display());
    hash_in_order(file, path, &AtomicBool::new(false), &during).map(|(digest, _)| digest)
}

/// The digest in the remote `NAME.sha256`, when it is there and names the file.
pub fn read_sidecar(remote: &mut dyn Remote, name: BackupName) -> Result<Option<String>> {
    Ok(remote
        .read_small(&name.sidecar_name(), 4096)?
        .and_then(|bytes| parse_sidecar(&String::from_utf8_lossy(&bytes), &name.file_name())))
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

fn read_error(local: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |err| Error::copy(format!("cannot read {}: {err}", local.display()))
}

/// The local file as the upload starts, to notice it changing while it is copied.
struct LocalSnapshot {
    file: std::fs::File,
    size: u64,
    modified: Option<SystemTime>,
}

/// Opened without following a symlink, and only as a plain file: what is read is what the
/// listing saw, even for a run root started in a folder another account owns.
fn open_local(local: &Path) -> Result<LocalSnapshot> {
    let file = crate::safe_fs::open_file(local).map_err(read_error(local))?;
    let metadata = file.metadata().map_err(read_error(local))?;
    Ok(LocalSnapshot {
        size: metadata.len(),
        modified: metadata.modified().ok(),
        file,
    })
}

/// After the bytes are sent: the local file must not have changed while it was read, and
/// the server must hold exactly what was sent. Only then may the file be published.
fn check_sent(
    remote: &mut dyn Remote,
    local: &Path,
    before: &LocalSnapshot,
    name: BackupName,
    bytes: u64,
    via: &str,
) -> Result<()> {
    check_unchanged(local, before, bytes)?;
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

/// `bytes` were read (sent, or hashed) and the file still looks as it did at the start.
fn check_unchanged(local: &Path, before: &LocalSnapshot, bytes: u64) -> Result<()> {
    let now = std::fs::metadata(local).ok();
    let unchanged = now
        .as_ref()
        .is_some_and(|now| now.len() == before.size && now.modified().ok() == before.modified);
    if bytes == before.size && unchanged {
        return Ok(());
    }
    Err(Error::copy(format!(
        "{} changed while it was copied ({} bytes before, {bytes} read): not publishing it; \
         the next run copies it again",
        local.display(),
        before.size
    )))
}

/// Upload `local` as `name`, resuming a partial upload an earlier attempt left on the server
/// (then reading the whole remote file back to verify it), and publish it.
pub fn upload(
    remote: &mut dyn Remote,
    local: &Path,
    name: BackupName,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let label = remote.describe();
    let snapshot = open_local(local)?;
    let expected = snapshot.size;
    let partial = name.partial_name();

    let resume_at = match remote.size_of(&partial)? {
        Some(size) if size > 0 && size <= expected => size,
        _ => 0,
    };
    if resume_at > 0 {
        log::info!("{name}: resuming the upload at {resume_at} of {expected} bytes");
        progress.set_position(resume_at);
    }
    let during = format!("the copy of {name}");
    let (bytes, hashed) = beside_hash(&snapshot.file, local, &during, |abandon| {
        let mut sink = if resume_at > 0 {
            remote.open_at(&partial, resume_at)?
        } else {
            remote.create(&partial)?
        };
        let what = format!("{during}: writing {partial} on {label}");
        let watch = Watch {
            abandon,
            progress,
            what: &what,
        };
        let sent = send_range(
            &mut *sink,
            &snapshot.file,
            local,
            resume_at..u64::MAX,
            &watch,
        )?;
        sink.flush()
            .map_err(|err| write_error(err, format!("cannot sync {partial} on {label}")))?;
        Ok(resume_at + sent)
    })?;
    let digest = hashed.digest;
    check_unchanged(local, &snapshot, hashed.bytes)?;
    check_sent(remote, local, &snapshot, name, bytes, "")?;
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
    Ok(Uploaded {
        digest,
        bytes,
        hash_seconds: hashed.lag.as_secs_f64(),
    })
}

/// Files at least this big go over several streams (a single SSH channel is capped near
/// window/RTT on a WAN); smaller ones are not worth the extra connections.
pub const PARALLEL_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Bytes a stream keeps unacknowledged: OpenSSH's channel window. libssh2 wants the
/// unacknowledged bytes passed again on every write call and returns as soon as some are
/// acknowledged, so a window over contiguous data slides and never drains.
const IN_FLIGHT: usize = 2 * 1024 * 1024;

/// Read granularity of a stream: its buffer holds IN_FLIGHT + READ_AHEAD bytes, and the
/// acknowledged ones are dropped once READ_AHEAD of them have piled up (each byte is moved
/// at most twice).
const READ_AHEAD: usize = 1024 * 1024;

/// Send `range` of `source` (reading stops early at the file's end) through `sink`, already
/// positioned at `range.start`, keeping IN_FLIGHT bytes on the wire. Stops early, without
/// error, when `abandon` is set:
/// another stream failed and its error is the one to report. Returns the bytes sent.
fn send_range(
    sink: &mut dyn Write,
    source: &std::fs::File,
    local: &Path,
    range: Range<u64>,
    watch: &Watch,
) -> Result<u64> {
    let Watch {
        abandon,
        progress,
        what,
    } = *watch;
    let mut buf = vec![0u8; IN_FLIGHT + READ_AHEAD];
    let (mut head, mut tail) = (0usize, 0usize);
    let mut read_at = range.start;
    let mut at_eof = false;
    let mut sent = 0u64;
    loop {
        signals::check(what)?;
        if abandon.load(Ordering::Relaxed) {
            return Ok(sent);
        }
        if head >= READ_AHEAD {
            buf.copy_within(head..tail, 0);
            tail -= head;
            head = 0;
        }
        while !at_eof && tail < buf.len() && read_at < range.end {
            let want = usize::try_from(range.end - read_at)
                .unwrap_or(usize::MAX)
                .min(buf.len() - tail);
            let n = source
                .read_at(&mut buf[tail..tail + want], read_at)
                .map_err(read_error(local))?;
            if n == 0 {
                at_eof = true;
            }
            tail += n;
            read_at += n as u64;
        }
        if head == tail {
            return Ok(sent);
        }
        let end = tail.min(head + IN_FLIGHT);
        let position = range.start + sent;
        match sink.write(&buf[head..end]) {
            Ok(0) => {
                return Err(write_error(
                    std::io::ErrorKind::WriteZero.into(),
                    format!("{what}: the server accepted nothing at {position}"),
                ))
            }
            Ok(n) => {
                head += n;
                sent += n as u64;
                progress.inc(n as u64);
            }
            Err(err) => return Err(write_error(err, format!("{what} failed at {position}"))),
        }
    }
}

/// What a sending loop watches besides its data.
#[derive(Clone, Copy)]
struct Watch<'a> {
    /// Set when another stream failed: stop quietly, its error is the one to report.
    abandon: &'a AtomicBool,
    progress: &'a ProgressBar,
    /// For messages: "the copy of NAME: writing PARTIAL".
    what: &'a str,
}

/// `size` bytes as `streams` contiguous ranges of whole MiBs (the last one takes the rest);
/// fewer when the file is too small to give every stream a MiB.
fn split_ranges(size: u64, streams: usize) -> Vec<Range<u64>> {
    const ALIGN: u64 = 1024 * 1024;
    let streams = streams.max(1) as u64;
    let per_stream = size.div_ceil(streams).div_ceil(ALIGN).max(1) * ALIGN;
    (0..streams)
        .map(|i| (i * per_stream).min(size)..((i + 1) * per_stream).min(size))
        .filter(|range| !range.is_empty())
        .collect()
}

/// Upload `local` over several connections at once, each sending its own contiguous range
/// into the same temporary file with a full window in flight, while one more thread hashes
/// the file in order (from the page cache: cvpi has just written it). A failed stream fails
/// the whole file: the caller retries it from the start (a parallel partial may have holes,
/// so it is never resumed), and no final name is written unless every byte arrived, the
/// local file did not change meanwhile, and the size on the server checks out.
pub fn upload_parallel(
    remotes: &mut [&mut (dyn Remote + Send)],
    local: &Path,
    name: BackupName,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let streams = remotes.len();
    let label = remotes[0].describe();
    let snapshot = open_local(local)?;
    let partial = name.partial_name();
    drop(remotes[0].create(&partial)?);
    let ranges = split_ranges(snapshot.size, streams);
    let during = format!("the copy of {name}");
    let (sent, hashed) = beside_hash(&snapshot.file, local, &during, |abandon| {
        std::thread::scope(|scope| {
            let workers: Vec<_> = remotes
                .iter_mut()
                .zip(ranges)
                .enumerate()
                .map(|(index, (remote, range))| {
                    let (partial, label, during) = (&partial, &label, &during);
                    let source = &snapshot.file;
                    scope.spawn(move || {
                        let watch = Watch {
                            abandon,
                            progress,
                            what: during,
                        };
                        let outcome =
                            send_stream(&mut **remote, partial, source, local, range, &watch)
                                .map_err(|err| Error {
                                    message: format!(
                                        "stream {} of {streams} to {label}: {}",
                                        index + 1,
                                        err.message
                                    ),
                                    ..err
                                });
                        if outcome.is_err() {
                            abandon.store(true, Ordering::Relaxed);
                        }
                        outcome
                    })
                })
                .collect();
            let mut failure = None;
            let mut sent = 0u64;
            for worker in workers {
                match worker.join() {
                    Ok(Ok(bytes)) => sent += bytes,
                    Ok(Err(err)) => {
                        failure.get_or_insert(err);
                    }
                    Err(_) => {
                        failure
                            .get_or_insert(Error::copy(format!("a stream copying {name} crashed")));
                    }
                }
            }
            failure.map_or(Ok(sent), Err)
        })
    })?;
    let digest = hashed.digest;

    let remote = &mut *remotes[0];
    let via = format!(" over {streams} streams");
    check_unchanged(local, &snapshot, hashed.bytes)?;
    check_sent(remote, local, &snapshot, name, sent, &via)?;
    publish(remote, name, &partial, &digest)?;
    Ok(Uploaded {
        digest,
        bytes: sent,
        hash_seconds: hashed.lag.as_secs_f64(),
    })
}

/// One stream: its own remote handle, reading the file opened once (positioned reads), its
/// range, sync.
fn send_stream(
    remote: &mut dyn Remote,
    partial: &str,
    source: &std::fs::File,
    local: &Path,
    range: Range<u64>,
    watch: &Watch,
) -> Result<u64> {
    let mut sink = remote.open_at(partial, range.start)?;
    let what = format!("{}: writing {partial}", watch.what);
    let sent = send_range(
        &mut *sink,
        source,
        local,
        range,
        &Watch {
            what: &what,
            ..*watch
        },
    )?;
    if !watch.abandon.load(Ordering::Relaxed) {
        sink.flush()
            .map_err(|err| write_error(err, format!("syncing {partial}")))?;
    }
    Ok(sent)
}

/// The whole file hashed in order, and what hashing cost the copy.
struct Hashed {
    digest: String,
    bytes: u64,
    /// How long the sending waited for the hash once it was done itself.
    lag: Duration,
}

/// Run `send` while another thread hashes the whole file in order (from the page cache:
/// cvpi has just written it), so hashing costs the copy nothing unless the CPU is short.
/// When `send` fails, the hashing stops early; when the hashing fails, `send` is told to
/// stop through the flag it is given.
fn beside_hash<T: Send>(
    file: &std::fs::File,
    local: &Path,
    during: &str,
    send: impl FnOnce(&AtomicBool) -> Result<T>,
) -> Result<(T, Hashed)> {
    let abandon = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let abandon = &abandon;
        let hasher = scope.spawn(move || {
            let outcome = hash_in_order(file, local, abandon, during);
            if outcome.is_err() {
                abandon.store(true, Ordering::Relaxed);
            }
            outcome
        });
        let started = Instant::now();
        let sent = send(abandon);
        if sent.is_err() {
            abandon.store(true, Ordering::Relaxed);
        }
        let send_done = started.elapsed();
        let hashed = hasher
            .join()
            .unwrap_or_else(|_| Err(Error::copy(format!("hashing crashed during {during}"))));
        let lag = started.elapsed().saturating_sub(send_done);
        let sent = sent?;
        let (digest, bytes) = hashed?;
        Ok((sent, Hashed { digest, bytes, lag }))
    })
}

/// The whole file's sha256, read in order beside the streams.
fn hash_in_order(
    source: &std::fs::File,
    local: &Path,
    abandon: &AtomicBool,
    during: &str,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while !abandon.load(Ordering::Relaxed) {
        signals::check(during)?;
        let n = source
            .read_at(&mut buf, offset)
            .map_err(read_error(local))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok((hex(&hasher.finalize()), offset))
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
    write_small(
        remote,
        &sidecar_partial,
        sidecar_line(digest, &name.file_name()).as_bytes(),
    )?;
    remote.rename_replace(&sidecar_partial, &name.sidecar_name())?;
    remote.rename_replace(partial, &name.file_name())
}

/// The set's manifest beside its data file, written under a partial name and renamed, once
/// every member is verified on the server. False when the server already has this text.
pub fn publish_manifest(remote: &mut dyn Remote, data: BackupName, text: &str) -> Result<bool> {
    let name = data.manifest_name();
    if remote.read_small(&name, 64 * 1024)?.as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    let partial = data.manifest_partial_name();
    write_small(remote, &partial, text.as_bytes())?;
    remote.rename_replace(&partial, &name)?;
    Ok(true)
}

/// A small file written whole and synced.
fn write_small(remote: &mut dyn Remote, name: &str, bytes: &[u8]) -> Result<()> {
    let label = remote.describe();
    let mut sink = remote.create(name)?;
    sink.write_all(bytes)
        .and_then(|()| sink.flush())
        .map_err(|err| Error::copy(format!("cannot write {name} on {label}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one range is a real answer here
    fn ranges_cover_the_file_in_whole_mibs() {
        const MIB: u64 = 1024 * 1024;
        // (size, streams) -> ranges
        let table: &[(u64, usize, &[Range<u64>])] = &[
            (0, 4, &[]),
            (10, 4, &[0..10]),
            (
                4 * MIB,
                4,
                &[0..MIB, MIB..2 * MIB, 2 * MIB..3 * MIB, 3 * MIB..4 * MIB],
            ),
            (
                4 * MIB + 1,
                4,
                &[0..2 * MIB, 2 * MIB..4 * MIB, 4 * MIB..4 * MIB + 1],
            ),
            (70 * MIB + 12_345, 1, &[0..70 * MIB + 12_345]),
            (
                70 * MIB + 12_345,
                3,
                &[0..24 * MIB, 24 * MIB..48 * MIB, 48 * MIB..70 * MIB + 12_345],
            ),
        ];
        for (size, streams, expected) in table {
            assert_eq!(
                &split_ranges(*size, *streams),
                expected,
                "{size} over {streams}"
            );
        }
    }

    /// Answers like libssh2's sftp_write: takes what is offered, acknowledges part of it,
    /// and expects the unacknowledged rest offered again.
    struct AckingSink {
        received: Vec<u8>,
        ack_size: usize,
        largest_offer: usize,
    }

    impl Write for AckingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.largest_offer = self.largest_offer.max(buf.len());
            let n = buf.len().min(self.ack_size);
            self.received.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_range_is_sent_in_order_with_a_bounded_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..(5 * IN_FLIGHT + 777))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let source = std::fs::File::open(&path).expect("open");
        for (range, ack_size) in [
            (0..u64::MAX, 30_000),
            (1000..3 * IN_FLIGHT as u64 + 5, 4096),
        ] {
            let mut sink = AckingSink {
                received: Vec::new(),
                ack_size,
                largest_offer: 0,
            };
            let sent = send_range(
                &mut sink,
                &source,
                &path,
                range.clone(),
                &Watch {
                    abandon: &AtomicBool::new(false),
                    progress: &ProgressBar::hidden(),
                    what: "test",
                },
            )
            .expect("send");
            let end = (range.end as usize).min(data.len());
            let expected = &data[range.start as usize..end];
            assert_eq!(sent, expected.len() as u64);
            assert!(sink.received == expected, "bytes differ for {range:?}");
            assert!(
                sink.largest_offer <= IN_FLIGHT,
                "offered {}",
                sink.largest_offer
            );
        }
    }

    #[test]
    fn an_abandoned_range_stops_without_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        std::fs::write(&path, vec![1u8; 3 * IN_FLIGHT]).expect("write");
        let source = std::fs::File::open(&path).expect("open");
        let mut sink = AckingSink {
            received: Vec::new(),
            ack_size: 1024,
            largest_offer: 0,
        };
        let sent = send_range(
            &mut sink,
            &source,
            &path,
            0..u64::MAX,
            &Watch {
                abandon: &AtomicBool::new(true),
                progress: &ProgressBar::hidden(),
                what: "test",
            },
        )
        .expect("send");
        assert_eq!(sent, 0);
        assert!(sink.received.is_empty());
    }

    #[test]
    fn the_hash_beside_the_copy_is_the_files_and_a_failed_copy_stops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let (sent, hashed) = beside_hash(&file, &path, "test", |_| Ok(7u64)).expect("hash");
        let mut reference = Sha256::new();
        reference.update(&data);
        assert_eq!(sent, 7);
        assert_eq!(hashed.digest, hex(&reference.finalize()));
        assert_eq!(hashed.bytes, data.len() as u64);
        let failed = beside_hash(&file, &path, "test", |_| -> Result<()> {
            Err(Error::copy("the server went away"))
        });
        assert!(failed.is_err_and(|err| err.message == "the server went away"));
    }

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
