//! Copy one file to a `Remote` so that a final name only ever holds a complete, verified file:
//! write a partial name while another thread hashes the file, check the size on the server,
//! write the `sha256sum` sidecar, then rename into place.

use crate::archive::{self, BackgroundCheck};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::lanes::Lanes;
use crate::names::{parse_sidecar, sidecar_line, BackupName, RemoteFile};
use crate::remote::{write_synced, Remote, RemoteEntry};
use crate::seal::{PlainReader, ReadAt, Recipients, Sealer};
use crate::signals;
use crate::staged::Staged;
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

/// What the in-order hash reads at once from the page cache and hands the archive check:
/// small, as a few of them wait for the check at a time (peak memory), large enough that
/// passing them costs nothing.
const HASH_READ: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub digest: String,
    pub bytes: u64,
    /// What hashing added to the copy: time spent hashing on the sending thread, or the
    /// time the streams waited for the hashing thread.
    pub hash_seconds: f64,
    /// The archive check's finding, when the pass made one.
    pub archive: Option<archive::Summary>,
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
    hash_in_order(
        &mut PlainReader(file),
        None,
        path,
        &AtomicBool::new(false),
        &during,
    )
    .map(|(digest, _, _)| digest)
}

/// The digest in the remote `NAME.sha256`, when it is there and names the file.
pub fn read_sidecar(remote: &mut dyn Remote, file: RemoteFile) -> Result<Option<String>> {
    Ok(remote
        .read_small(&file.sidecar_name(), 4096)?
        .and_then(|bytes| parse_sidecar(&String::from_utf8_lossy(&bytes), &file.file_name())))
}

/// Broken or silent connections are worth another attempt; anything the server said
/// (disk full, permission denied) is not.
pub(crate) fn write_error(err: std::io::Error, what: String) -> Error {
    use std::io::ErrorKind::*;
    match err.kind() {
        TimedOut | ConnectionAborted | ConnectionReset | BrokenPipe | UnexpectedEof => {
            Error::transient(format!("{what}: {err}"))
        }
        _ => Error::copy(format!("{what}: {err}")),
    }
}

pub(crate) fn read_error(local: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |err| Error::copy(format!("cannot read {}: {err}", local.display()))
}

/// The local file as the upload starts, to notice it changing while it is copied.
pub(crate) struct LocalSnapshot {
    file: std::fs::File,
    size: u64,
    modified: Option<SystemTime>,
}

/// Opened without following a symlink, and only as a plain file: what is read is what the
/// listing saw, even for a run root started in a folder another account owns.
pub(crate) fn open_local(local: &Path) -> Result<LocalSnapshot> {
    let file = crate::safe_fs::open_file(local).map_err(read_error(local))?;
    let metadata = file.metadata().map_err(read_error(local))?;
    Ok(LocalSnapshot {
        size: metadata.len(),
        modified: metadata.modified().ok(),
        file,
    })
}

/// What an upload sends of a local file: its bytes, or their age ciphertext (`seal`),
/// sealed with a new file key for every attempt.
pub(crate) struct Outgoing<'a> {
    snapshot: &'a LocalSnapshot,
    sealer: Option<Sealer>,
    /// The local file is a `.tgz` not yet checked: the hashing pass checks it too.
    check_archive: bool,
}

/// What an upload sends: the local file, and whether the pass that hashes it also checks
/// that it is a whole archive (a night's new `.tgz`; one checked before is not inflated
/// again).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub check_archive: bool,
    /// Told the sha256 as soon as it is known, and asked whether the checksum file is
    /// staged already (`staged`), when another connection writes it ahead.
    pub staged: Option<&'a Staged>,
}

impl<'a> Source<'a> {
    /// A copy that replaces one on the server is always checked: the node's file may have
    /// changed on its disk since it was found whole, and the server's copy goes for it.
    pub fn of(file: &'a crate::run::LocalFile, seen: Seen) -> Source<'a> {
        Source {
            path: &file.path,
            check_archive: file.check_archive
                || (seen.finals && archive::is_archive(&file.name.file_name())),
            staged: None,
        }
    }

    pub fn staged(self, staged: Option<&'a Staged>) -> Source<'a> {
        Source { staged, ..self }
    }
}

impl<'a> Outgoing<'a> {
    pub(crate) fn new(
        snapshot: &'a LocalSnapshot,
        recipients: Option<&Recipients>,
    ) -> Result<Self> {
        let sealer = recipients
            .map(Sealer::new)
            .transpose()
            .map_err(|err| Error::copy(format!("cannot encrypt: {err}")))?;
        Ok(Outgoing {
            snapshot,
            sealer,
            check_archive: false,
        })
    }

    pub(crate) fn checking(self, check_archive: bool) -> Self {
        Outgoing {
            check_archive,
            ..self
        }
    }

    /// The archive check fed by the hashing pass, when this file needs one.
    pub(crate) fn archive_tap(&self) -> Option<ArchiveTap<'_>> {
        self.check_archive.then(|| ArchiveTap {
            check: Some(BackgroundCheck::start()),
            plain: self.sealer.as_ref().map(|_| &self.snapshot.file),
            size: self.snapshot.size,
            at: 0,
            buf: Vec::new(),
        })
    }

    /// The bytes the server gets.
    pub(crate) fn sealed(&self) -> bool {
        self.sealer.is_some()
    }

    pub(crate) fn len(&self) -> u64 {
        match &self.sealer {
            Some(sealer) => sealer.sealed_len(self.snapshot.size),
            None => self.snapshot.size,
        }
    }

    /// A reader of those bytes for one thread.
    pub(crate) fn reader(&self) -> Box<dyn ReadAt + '_> {
        match &self.sealer {
            Some(sealer) => Box::new(sealer.reader(&self.snapshot.file, self.snapshot.size)),
            None => Box::new(PlainReader(&self.snapshot.file)),
        }
    }
}

/// The archive check beside the hash: given the bytes the hashing pass reads (the file's
/// own when the copy is plain; when it is encrypted, as many of the file's plaintext bytes,
/// read from the page cache beside the ciphertext being hashed).
pub(crate) struct ArchiveTap<'a> {
    /// None once it has reported damage.
    check: Option<BackgroundCheck>,
    plain: Option<&'a std::fs::File>,
    size: u64,
    at: u64,
    buf: Vec<u8>,
}

impl ArchiveTap<'_> {
    pub(crate) fn feed(&mut self, read: &[u8], local: &Path) -> Result<()> {
        let Some(file) = self.plain else {
            if let Some(check) = self.check.as_mut() {
                check.update(read);
            }
            return self.stop_if_damaged(local);
        };
        self.read_plain(file, read.len() as u64, local)
    }

    fn read_plain(&mut self, file: &std::fs::File, want: u64, local: &Path) -> Result<()> {
        let end = self.at.saturating_add(want).min(self.size);
        while self.at < end {
            let n = usize::try_from(end - self.at)
                .unwrap_or(HASH_READ)
                .min(HASH_READ);
            self.buf.resize(n, 0);
            let got = file
                .read_at(&mut self.buf[..n], self.at)
                .map_err(read_error(local))?;
            if got == 0 {
                return Err(Error::copy(format!(
                    "{} is shorter than it was: it changed while it was copied",
                    local.display()
                )));
            }
            if let Some(check) = self.check.as_mut() {
                check.update(&self.buf[..got]);
            }
            self.at += got as u64;
            self.stop_if_damaged(local)?;
        }
        Ok(())
    }

    fn stop_if_damaged(&mut self, local: &Path) -> Result<()> {
        match self.check.take_if(|check| check.damaged()) {
            Some(check) => Err(match check.finish() {
                Err(damage) => damaged_archive(local, &damage),
                Ok(_) => Error::copy("internal error: the archive check changed its mind"),
            }),
            None => Ok(()),
        }
    }

    /// The verdict, once the hashing pass has read everything.
    pub(crate) fn finish(mut self, local: &Path) -> Result<archive::Summary> {
        if let Some(file) = self.plain {
            self.read_plain(file, u64::MAX, local)?;
        }
        self.check
            .take()
            .ok_or_else(|| Error::copy("internal error: the archive check already ended"))?
            .finish()
            .map_err(|damage| damaged_archive(local, &damage))
    }
}

/// The partial of an archive found damaged goes at once (no attempt will resume it); on an
/// append-only server it stays, named in the log, for prune-dir.
fn discard_damaged(remote: &mut dyn Remote, partial: &str, err: Error) -> Error {
    if err.code == ExitCode::BackupFailed && !remote.append_only() {
        if let Err(cannot) = remote.remove(partial) {
            log::warn!("cannot remove {partial}: {cannot}");
        }
    }
    err
}

/// A damaged archive is a failed backup, not a failed copy: no retry can mend it.
pub fn damaged_archive(local: &Path, damage: &archive::Damage) -> Error {
    Error::new(
        ExitCode::BackupFailed,
        format!(
            "{} is not a whole archive: {damage}. The backup that wrote it failed (a full \
             disk, a killed cvpi?); it is not published as a set",
            local.display()
        ),
    )
}

/// After the bytes are sent: the local file must not have changed while it was read, and
/// the server must hold exactly what was sent. Only then may the file be published.
fn check_sent(
    remote: &mut dyn Remote,
    local: &Path,
    outgoing: &Outgoing,
    (file, partial): (RemoteFile, &str),
    bytes: u64,
    via: &str,
) -> Result<()> {
    check_unchanged(local, outgoing, bytes)?;
    match remote.size_of(partial)? {
        Some(size) if size == bytes => Ok(()),
        other => Err(Error::transient(format!(
            "verification failed for {file} on {}: sent {bytes} bytes{via}, the server has {}",
            remote.describe(),
            other
                .map(|s| format!("{s} bytes"))
                .unwrap_or_else(|| "no file".into())
        ))),
    }
}

/// `bytes` were read (sent, or hashed) and the file still looks as it did at the start.
pub(crate) fn check_unchanged(local: &Path, outgoing: &Outgoing, bytes: u64) -> Result<()> {
    let before = outgoing.snapshot;
    let now = std::fs::metadata(local).ok();
    let unchanged = now
        .as_ref()
        .is_some_and(|now| now.len() == before.size && now.modified().ok() == before.modified);
    if bytes == outgoing.len() && unchanged {
        return Ok(());
    }
    Err(Error::copy(format!(
        "{} changed while it was copied ({} bytes before, {bytes} of {} read): not \
         publishing it; the next run copies it again",
        local.display(),
        before.size,
        outgoing.len()
    )))
}

/// What a listing taken just before the upload showed of a file's names on the server, so
/// the upload need not ask again (each question is a round trip on a WAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// NAME or NAME.sha256 is there: both are removed before the new ones are renamed in.
    pub finals: bool,
    /// The size of the partial upload an earlier attempt left there.
    pub partial: Option<u64>,
}

impl Seen {
    pub fn in_listing(listing: &[RemoteEntry], name: RemoteFile) -> Seen {
        let size = |wanted: &str| {
            listing
                .iter()
                .find(|entry| entry.name == wanted)
                .map(|entry| entry.size)
        };
        Seen {
            finals: size(&name.file_name()).is_some() || size(&name.sidecar_name()).is_some(),
            partial: size(&name.partial_name()),
        }
    }
}

/// Upload `local` as `name` (encrypted to `recipients` when given), resuming a partial
/// upload an earlier attempt left on the server (then reading the whole remote file back to
/// verify it), and publish it. An encrypted upload never resumes: each attempt has a new key.
pub fn upload(
    remote: &mut dyn Remote,
    source: Source,
    (name, recipients): (RemoteFile, Option<&Recipients>),
    seen: Seen,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let label = remote.describe();
    let local = source.path;
    let snapshot = open_local(local)?;
    let outgoing = Outgoing::new(&snapshot, recipients)?.checking(source.check_archive);
    let expected = outgoing.len();
    let (partial, own) = partial_for(remote, name, source.staged);
    let resume_at = match seen.partial {
        Some(size) if size > 0 && size <= expected && outgoing.sealer.is_none() && !own => size,
        _ => 0,
    };
    if resume_at > 0 {
        log::info!("{name}: resuming the upload at {resume_at} of {expected} bytes");
        progress.set_position(resume_at);
    }
    let during = format!("the copy of {name}");
    let (bytes, hashed) = beside_hash(
        &outgoing,
        local,
        (&during, source.staged, name),
        |abandon| {
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
                &mut *outgoing.reader(),
                local,
                &mut cursor(resume_at..u64::MAX),
                IN_FLIGHT,
                &watch,
            )?;
            sink.flush()
                .map_err(|err| write_error(err, format!("cannot sync {partial} on {label}")))?;
            Ok(resume_at + sent)
        },
    )
    .map_err(|err| discard_damaged(remote, &partial, err))?;
    let digest = hashed.digest;
    check_unchanged(local, &outgoing, hashed.bytes)?;
    check_sent(remote, local, &outgoing, (name, &partial), bytes, "")?;
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
    publish(
        remote,
        name,
        &partial,
        (&digest, source.staged),
        seen.finals,
    )?;
    Ok(Uploaded {
        digest,
        bytes,
        hash_seconds: hashed.lag.as_secs_f64(),
        archive: hashed.archive,
    })
}

/// Files at least this big go over several streams (a single SSH channel is capped near
/// window/RTT on a WAN); smaller ones are not worth the extra connections.
pub const PARALLEL_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Bytes a stream keeps unacknowledged: OpenSSH's channel window (more would only wait).
/// libssh2 wants the unacknowledged bytes offered again on every write call and returns as
/// soon as some are acknowledged, so a window over contiguous data slides and never drains.
pub const IN_FLIGHT: usize = 2 * 1024 * 1024;

/// What all the streams of one file keep in flight together, at most: libssh2 holds a copy
/// of every unacknowledged byte, so this bounds the memory a copy takes whatever the
/// number of streams (9 full windows: 189 MB/s at 100 ms; with the set's small files on
/// connections of their own, the large file's 7 still fill a 1 Gbit/s link there, and peak
/// RSS stays under 32 MB).
pub const IN_FLIGHT_BUDGET: usize = 18 * 1024 * 1024;

/// What `streams = auto` plans for: enough windows in flight for 250 MB/s (a 1 Gbit/s link
/// and then some, since a window is never full all the time).
const AUTO_TARGET_BYTES_PER_SECOND: f64 = 250e6;

/// `streams = auto`: the number of connections for a large file, from the round-trip time
/// measured at connect, and why (for `-v`, the summary and `check`). A LAN gets one stream
/// (more would only fight the server for CPU); a long fat pipe gets enough full windows in
/// flight, up to what the memory budget holds at a full window each.
pub fn auto_streams(round_trip: Duration) -> (usize, String) {
    auto_streams_of(round_trip, IN_FLIGHT)
}

/// The same for `fetch`, whose streams each keep READ_WINDOW of requests in flight (the
/// answers are taken as they come: memory is a read buffer per stream, not the window).
pub fn auto_fetch_streams(round_trip: Duration) -> (usize, String) {
    auto_streams_of(round_trip, READ_WINDOW)
}

fn auto_streams_of(round_trip: Duration, window: usize) -> (usize, String) {
    let ms = round_trip.as_secs_f64() * 1000.0;
    let mib = window / (1024 * 1024);
    let most = IN_FLIGHT_BUDGET / IN_FLIGHT;
    let needed = (round_trip.as_secs_f64() * AUTO_TARGET_BYTES_PER_SECOND / window as f64)
        .ceil()
        .max(1.0) as usize;
    let streams = needed.min(most);
    let why = if streams == 1 {
        format!("streams = auto: {ms:.1} ms round trip, one {mib} MiB window keeps up")
    } else {
        format!(
            "streams = auto: {ms:.0} ms round trip, {streams} windows of {mib} MiB in flight{}",
            if needed > most {
                " (the most the memory budget holds)"
            } else {
                ""
            }
        )
    };
    (streams, why)
}

/// New bytes handed to libssh2 per write call, read from the page cache at that moment.
const HAND_OVER: usize = 128 * 1024;

/// The window each of `streams` streams keeps: a full channel window while the budget
/// allows, else an equal share of it.
pub fn window_per_stream(streams: usize) -> usize {
    (IN_FLIGHT_BUDGET / streams.max(1)).clamp(256 * 1024, IN_FLIGHT)
}

/// Anonymous memory that takes no RAM until a page of it is written (a large `Vec` may be
/// zeroed by the allocator, which would touch every page).
struct LazyBuffer {
    ptr: *mut u8,
    len: usize,
}

impl LazyBuffer {
    fn new(len: usize) -> std::io::Result<LazyBuffer> {
        // SAFETY: a fresh private anonymous mapping, owned by this value until Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(LazyBuffer {
            ptr: ptr.cast(),
            len,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, zero-filled by the
        // kernel, and only reachable through this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for LazyBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Send the bytes `next` hands out (each call: at most the number asked for, right after
/// the last; empty when there are no more) of `source` (reading stops early at the file's
/// end) through `sink`, already positioned at the first of them, keeping up to `window`
/// bytes on the wire, until every byte handed out is acknowledged. Stops early, without
/// error, when `abandon` is set: another stream failed and its error is the one to report.
/// Returns the bytes sent.
///
/// libssh2's `sftp_write` copies the bytes it is given into its packets at once, and on the
/// next call skips, unread, the unacknowledged ones it wants offered again (`already` in
/// libssh2 1.11's sftp.c). So the offered slice is `window` bytes of a buffer that are never
/// written (and so take no memory) followed by the new bytes: only HAND_OVER bytes per
/// stream are ever resident here, and libssh2 keeps the one copy of what is in flight.
fn send_range(
    sink: &mut dyn Write,
    source: &mut dyn ReadAt,
    local: &Path,
    next: &mut dyn FnMut(u64) -> Range<u64>,
    window: usize,
    watch: &Watch,
) -> Result<u64> {
    let Watch {
        abandon,
        progress,
        what,
    } = *watch;
    let mut lazy = LazyBuffer::new(window + HAND_OVER)
        .map_err(|err| Error::copy(format!("{what}: cannot reserve a buffer: {err}")))?;
    let buf = lazy.as_mut_slice();
    // Handed to libssh2 and not acknowledged yet: the length of the offered prefix.
    let mut queued = 0usize;
    let mut first = None;
    let mut at_eof = false;
    let mut sent = 0u64;
    loop {
        signals::check(what)?;
        if abandon.load(Ordering::Relaxed) {
            return Ok(sent);
        }
        let room = (window - queued).min(HAND_OVER);
        let mut fresh = 0usize;
        while !at_eof && fresh < room {
            let bytes = next((room - fresh) as u64);
            if bytes.is_empty() {
                break;
            }
            first.get_or_insert(bytes.start);
            let mut read_at = bytes.start;
            while read_at < bytes.end {
                let want = usize::try_from(bytes.end - read_at).unwrap_or(usize::MAX);
                let n = source
                    .read_at(&mut buf[window + fresh..window + fresh + want], read_at)
                    .map_err(read_error(local))?;
                if n == 0 {
                    // Shorter than when it was listed: the caller's checks say so.
                    at_eof = true;
                    break;
                }
                fresh += n;
                read_at += n as u64;
            }
        }
        if queued + fresh == 0 {
            return Ok(sent);
        }
        let position = first.unwrap_or(0) + sent;
        match sink.write(&buf[window - queued..window + fresh]) {
            Ok(0) => {
                return Err(write_error(
                    std::io::ErrorKind::WriteZero.into(),
                    format!("{what}: the server accepted nothing at {position}"),
                ))
            }
            Ok(n) if n > queued + fresh => {
                return Err(Error::copy(format!(
                    "{what}: the SFTP layer acknowledged {n} bytes of {} offered at {position}",
                    queued + fresh
                )))
            }
            Ok(n) => {
                queued = queued + fresh - n;
                sent += n as u64;
                crate::progress::moved(progress, n as u64);
            }
            Err(err) => return Err(write_error(err, format!("{what} failed at {position}"))),
        }
    }
}

/// The partial name an upload writes, and whether it is this attempt's own (never resumed):
/// on an append-only server each attempt writes a new one (its partials are read-only), and
/// so does an upload started while the destination's claim still runs beside it (another
/// node racing for an empty folder with the same stamps would write the same partial
/// names, and the one that loses removes its own).
fn partial_for(remote: &dyn Remote, name: RemoteFile, staged: Option<&Staged>) -> (String, bool) {
    let own = remote.append_only() || staged.is_some_and(|staged| staged.claim.pending());
    if own {
        (crate::names::fresh_partial(&name.partial_name()), true)
    } else {
        (name.partial_name(), false)
    }
}

/// Hands out `range` in order, as `send_range` asks for it.
fn cursor(range: Range<u64>) -> impl FnMut(u64) -> Range<u64> {
    let mut at = range.start;
    move |most| {
        let start = at;
        at = range.end.min(start.saturating_add(most));
        start..at
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

/// Upload `local` over several connections at once, each carrying its lane of the file (see
/// `lanes`) at its offsets into the same temporary file with its window in flight, while one
/// more thread hashes the file in order (from the page cache: cvpi has just written it). A
/// failed stream fails
/// the whole file: the caller retries it from the start (a parallel partial may have holes,
/// so it is never resumed), and no final name is written unless every byte arrived, the
/// local file did not change meanwhile, and the size on the server checks out.
pub fn upload_parallel(
    remotes: &mut [&mut (dyn Remote + Send)],
    source: Source,
    (name, recipients): (RemoteFile, Option<&Recipients>),
    seen: Seen,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let streams = remotes.len();
    let label = remotes[0].describe();
    let local = source.path;
    let snapshot = open_local(local)?;
    let outgoing = Outgoing::new(&snapshot, recipients)?.checking(source.check_archive);
    let (partial, own) = partial_for(&*remotes[0], name, source.staged);
    // What an earlier attempt left is emptied first; else every stream creates the file as
    // it opens it, none waiting a round trip for another.
    let fresh = seen.partial.is_none() || own;
    if !fresh {
        drop(remotes[0].create(&partial)?);
    }
    let lanes = Lanes::new(outgoing.len(), streams);
    let window = window_per_stream(streams);
    let during = format!("the copy of {name}");
    let (sent, hashed) = beside_hash(
        &outgoing,
        local,
        (&during, source.staged, name),
        |abandon| {
            std::thread::scope(|scope| {
                let workers: Vec<_> = remotes
                    .iter_mut()
                    .enumerate()
                    .map(|(index, remote)| {
                        let (partial, label, during, lanes) = (&partial, &label, &during, &lanes);
                        let source = &outgoing;
                        scope.spawn(move || {
                            let watch = Watch {
                                abandon,
                                progress,
                                what: during,
                            };
                            let outcome = send_stream(
                                &mut **remote,
                                (partial, fresh),
                                source,
                                local,
                                (lanes, index),
                                window,
                                &watch,
                            );
                            stream_outcome(outcome, index, streams, &format!("to {label}"), abandon)
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
                            failure.get_or_insert(Error::copy(format!(
                                "a stream copying {name} crashed"
                            )));
                        }
                    }
                }
                failure.map_or(Ok(sent), Err)
            })
        },
    )
    .map_err(|err| discard_damaged(&mut *remotes[0], &partial, err))?;
    let digest = hashed.digest;

    let via = format!(" over {streams} streams");
    check_unchanged(local, &outgoing, hashed.bytes)?;
    let (main, others) = remotes.split_at_mut(1);
    let remote = &mut *main[0];
    match others.first_mut() {
        // Nothing to replace: the size check runs on a second connection beside the
        // checksum file's rename (a round trip less on a long link). A checksum file alone
        // under its final name describes no data file there, and goes again if the check
        // fails.
        Some(other) if !seen.finals && !remote.append_only() => {
            wait_for_claim(remote, &partial, source.staged)?;
            let (checked, checksum) = std::thread::scope(|scope| {
                let checking = scope.spawn(|| {
                    check_sent(&mut **other, local, &outgoing, (name, &partial), sent, &via)
                });
                let checksum = publish_checksum(remote, name, (&digest, source.staged), false);
                let checked = checking
                    .join()
                    .unwrap_or_else(|_| Err(Error::copy(format!("checking {name} crashed"))));
                (checked, checksum)
            });
            match (checked, checksum) {
                (Err(err), Ok(())) => {
                    // The second connection may have broken rather than the size be wrong.
                    log::debug!("{err}: checking again on {}", remote.describe());
                    let again = check_sent(remote, local, &outgoing, (name, &partial), sent, &via);
                    if let Err(err) = again {
                        if let Err(cannot) = remote.remove(&name.sidecar_name()) {
                            log::warn!("cannot remove {}: {cannot}", name.sidecar_name());
                        }
                        return Err(err);
                    }
                }
                (checked, checksum) => checked.and(checksum)?,
            }
            publish_data(remote, name, &partial, false)?;
        }
        _ => {
            check_sent(remote, local, &outgoing, (name, &partial), sent, &via)?;
            publish(
                remote,
                name,
                &partial,
                (&digest, source.staged),
                seen.finals,
            )?;
        }
    }
    Ok(Uploaded {
        digest,
        bytes: sent,
        hash_seconds: hashed.lag.as_secs_f64(),
        archive: hashed.archive,
    })
}

/// A stream's outcome, its error naming the stream; a failed stream tells the others to stop.
fn stream_outcome<T>(
    outcome: Result<T>,
    index: usize,
    streams: usize,
    peer: &str,
    abandon: &AtomicBool,
) -> Result<T> {
    outcome.map_err(|err| {
        abandon.store(true, Ordering::Relaxed);
        Error {
            message: format!("stream {} of {streams} {peer}: {}", index + 1, err.message),
            ..err
        }
    })
}

/// One stream: its own remote handle, reading the file opened once (positioned reads),
/// along its lane and then along the parts it takes over from others until none is left,
/// then sync.
fn send_stream(
    remote: &mut dyn Remote,
    (partial, fresh): (&str, bool),
    source: &Outgoing,
    local: &Path,
    (lanes, lane): (&Lanes, usize),
    window: usize,
    watch: &Watch,
) -> Result<u64> {
    let label = remote.describe();
    let mut sink = if fresh {
        remote.open_creating(partial)?
    } else {
        remote.open_at(partial, 0)?
    };
    let what = format!("{}: writing {partial}", watch.what);
    let watch = Watch {
        what: &what,
        ..*watch
    };
    let mut sent = 0u64;
    let mut reader = source.reader();
    let mut start = lanes.start(lane);
    while !watch.abandon.load(Ordering::Relaxed) {
        sink.seek(std::io::SeekFrom::Start(start))
            .map_err(|err| write_error(err, format!("{what}: seeking on {label}")))?;
        let mut claimed = 0u64;
        let mut next = |most| {
            let bytes = lanes.claim(lane, most);
            claimed += bytes.end - bytes.start;
            bytes
        };
        let lane_sent = send_range(&mut *sink, &mut *reader, local, &mut next, window, &watch)?;
        sent += lane_sent;
        if lane_sent < claimed {
            // The file ended early (it changed) or another stream failed: the caller's
            // checks say which.
            break;
        }
        lanes.done(lane, start + lane_sent);
        match lanes.steal(lane) {
            Some(taken) => {
                log::debug!(
                    "{what}: stream {} takes over bytes {}..{} from a slower stream",
                    lane + 1,
                    taken.start,
                    taken.end
                );
                start = taken.start;
            }
            None => break,
        }
    }
    if !watch.abandon.load(Ordering::Relaxed) {
        sink.flush()
            .map_err(|err| write_error(err, format!("syncing {partial}")))?;
    }
    Ok(sent)
}

/// A download's streams take the file in pieces this large, in order (`Lanes::in_order`),
/// so the in-order hash follows the download and about a piece per stream is left to hash
/// after the last byte; each piece costs its stream a seek on its read handle (its read-ahead
/// starts again: a round trip).
pub const DOWNLOAD_PIECE: u64 = 128 * 1024 * 1024;

/// libssh2 keeps up to 4 read buffers of requests in flight, at most 8 MiB: a download
/// stream's window.
pub const READ_WINDOW: usize = 8 * 1024 * 1024;

/// The buffer a download stream reads into: a quarter of its window.
pub(crate) const READ_BUFFER: usize = READ_WINDOW / 4;

/// How much to read at once when only `left` more bytes are wanted from a handle: libssh2
/// asks the server for 4 buffers ahead of each read, so a quarter of what is left (at most
/// one 30,000-byte request more comes back). Callers stop before `left` is 0 (a read of
/// nothing would look like the end of the file).
pub(crate) fn read_within(left: u64) -> usize {
    let left = usize::try_from(left).unwrap_or(usize::MAX);
    (left / 4).clamp(1, READ_BUFFER).min(left)
}

/// Download `name` (`size` bytes) over the connections given into `out`, each stream
/// carrying its lane (see `lanes`) and writing at the offsets it reads, while one more thread
/// hashes `out` (through `read_back`, the same file opened for reading) in order as far as
/// every byte below has arrived. The digest of all `size` bytes, once every one is there.
#[allow(clippy::too_many_arguments)]
pub fn download_parallel(
    remotes: &mut [&mut (dyn Remote + Send)],
    name: &str,
    size: u64,
    out: &std::fs::File,
    read_back: &std::fs::File,
    local: &Path,
    progress: &ProgressBar,
    arrived: Option<&Arrived<'_>>,
) -> Result<String> {
    let streams = remotes.len().max(1);
    let label = remotes[0].describe();
    let lanes = Lanes::in_order(size, streams, DOWNLOAD_PIECE);
    let abandon = AtomicBool::new(false);
    let during = format!("the fetch of {name}");
    std::thread::scope(|scope| {
        let (lanes, abandon, during) = (&lanes, &abandon, &during);
        let hasher = scope.spawn(move || {
            let hashed = hash_as_it_arrives(read_back, local, lanes, abandon, during);
            if hashed.is_err() {
                abandon.store(true, Ordering::Relaxed);
            }
            hashed
        });
        let workers: Vec<_> = remotes
            .iter_mut()
            .enumerate()
            .map(|(index, remote)| {
                let label = &label;
                scope.spawn(move || {
                    let outcome = receive_lane(
                        &mut **remote,
                        name,
                        out,
                        local,
                        (lanes, index),
                        abandon,
                        during,
                        (progress, arrived),
                    );
                    stream_outcome(outcome, index, streams, &format!("from {label}"), abandon)
                })
            })
            .collect();
        let mut failure = None;
        for worker in workers {
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    failure.get_or_insert(err);
                }
                Err(_) => {
                    failure.get_or_insert(Error::copy(format!("a stream fetching {name} crashed")));
                }
            }
        }
        if failure.is_some() {
            abandon.store(true, Ordering::Relaxed);
        }
        let hashed = hasher
            .join()
            .unwrap_or_else(|_| Err(Error::copy(format!("hashing crashed during {during}"))));
        match failure {
            Some(err) => Err(err),
            None => hashed,
        }
    })
}

/// One download stream: its lane, then the parts it takes over from others, each read in
/// order through one handle and written at its offsets.
#[allow(clippy::too_many_arguments)]
fn receive_lane(
    remote: &mut dyn Remote,
    name: &str,
    out: &std::fs::File,
    local: &Path,
    (lanes, lane): (&Lanes, usize),
    abandon: &AtomicBool,
    during: &str,
    (progress, arrived): (&ProgressBar, Option<&Arrived<'_>>),
) -> Result<()> {
    let label = remote.describe();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut at = lanes.start(lane);
    // Where the bytes this stream has received without a gap begin.
    let mut run_start = at;
    // One handle for every piece (SFTP): a piece costs a seek, not a close and an open.
    let mut reader = remote.open_read_range(name, at..lanes.size())?;
    loop {
        // What libssh2 may ask for is claimed first: up to READ_WINDOW ahead.
        let mut claimed_to = at;
        loop {
            signals::check(during)?;
            if abandon.load(Ordering::Relaxed) {
                return Ok(());
            }
            let more = lanes.claim(
                lane,
                at.saturating_add(READ_WINDOW as u64)
                    .saturating_sub(claimed_to),
            );
            claimed_to = claimed_to.max(more.end);
            if at >= claimed_to {
                break;
            }
            // Never ask past what this lane claimed, or bytes another stream carries would
            // cross the link twice.
            let want = read_within(claimed_to - at);
            let n = reader
                .read(&mut buf[..want])
                .map_err(|err| write_error(err, format!("reading {name} from {label} at {at}")))?;
            if n == 0 {
                return Err(Error::transient(format!(
                    "{name} on {label} ended at {at}, before the {} bytes listed: it changed on \
                     the server",
                    lanes.size()
                )));
            }
            out.write_all_at(&buf[..n], at)
                .map_err(|err| Error::copy(format!("cannot write {}: {err}", local.display())))?;
            at += n as u64;
            crate::progress::moved(progress, n as u64);
            lanes.done(lane, at);
            if let Some(arrived) = arrived {
                arrived(lane, run_start..at);
            }
        }
        match lanes.steal(lane) {
            Some(taken) => {
                log::debug!(
                    "{during}: stream {} takes over bytes {}..{} from a slower stream",
                    lane + 1,
                    taken.start,
                    taken.end
                );
                at = taken.start;
                run_start = at;
                drop(reader);
                reader = remote.open_read_range(name, at..lanes.size())?;
            }
            None => return Ok(()),
        }
    }
}

/// Told by each stream, after each piece it writes, which bytes it has received without a
/// gap (its number and their range): a decryption can follow the streams.
pub type Arrived<'a> = dyn Fn(usize, std::ops::Range<u64>) + Sync + 'a;

/// Hash the download in order, as far as it has arrived, until all of it is hashed.
fn hash_as_it_arrives(
    read_back: &std::fs::File,
    local: &Path,
    lanes: &Lanes,
    abandon: &AtomicBool,
    during: &str,
) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut hashed = 0u64;
    while hashed < lanes.size() {
        signals::check(during)?;
        if abandon.load(Ordering::Relaxed) {
            return Err(Error::copy(format!("{during} stopped")));
        }
        let ready = lanes.contiguous();
        if ready <= hashed {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let want = usize::try_from(ready - hashed)
            .unwrap_or(HASH_READ)
            .min(HASH_READ);
        let n = read_back
            .read_at(&mut buf[..want], hashed)
            .map_err(read_error(local))?;
        if n == 0 {
            return Err(Error::copy(format!(
                "{} is shorter than what arrived: something else writes it",
                local.display()
            )));
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// The whole file hashed in order, and what hashing cost the copy.
pub(crate) struct Hashed {
    pub(crate) digest: String,
    pub(crate) bytes: u64,
    /// How long the sending waited for the hash once it was done itself.
    pub(crate) lag: Duration,
    pub(crate) archive: Option<archive::Summary>,
}

/// Run `send` while another thread hashes the whole file in order (from the page cache:
/// cvpi has just written it), so hashing costs the copy nothing unless the CPU is short.
/// When `send` fails, the hashing stops early; when the hashing fails, `send` is told to
/// stop through the flag it is given.
pub(crate) fn beside_hash<T: Send>(
    outgoing: &Outgoing,
    local: &Path,
    (during, staged, name): (&str, Option<&Staged>, RemoteFile),
    send: impl FnOnce(&AtomicBool) -> Result<T>,
) -> Result<(T, Hashed)> {
    let abandon = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let abandon = &abandon;
        let hasher = scope.spawn(move || {
            let outcome = hash_in_order(
                &mut *outgoing.reader(),
                outgoing.archive_tap(),
                local,
                abandon,
                during,
            );
            match (&outcome, staged) {
                (Err(_), _) => abandon.store(true, Ordering::Relaxed),
                // Known long before the last byte: the checksum file can be written ahead.
                // (A hash stopped early by a failed send is of part of the file.)
                (Ok((digest, bytes, _)), Some(staged))
                    if *bytes == outgoing.len() && !abandon.load(Ordering::Relaxed) =>
                {
                    staged.hashed(&name.file_name(), digest)
                }
                (Ok(_), _) => {}
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
        // A damaged archive stopped the sending: its error is the one that says why.
        let (sent, (digest, bytes, archive)) = match (sent, hashed) {
            (_, Err(err)) if err.code == ExitCode::BackupFailed => return Err(err),
            (sent, hashed) => (sent?, hashed?),
        };
        Ok((
            sent,
            Hashed {
                digest,
                bytes,
                lag,
                archive,
            },
        ))
    })
}

/// The whole file's sha256, read in order beside the streams (and the archive check fed
/// from the same reads, when there is one).
fn hash_in_order(
    source: &mut dyn ReadAt,
    mut tap: Option<ArchiveTap>,
    local: &Path,
    abandon: &AtomicBool,
    during: &str,
) -> Result<(String, u64, Option<archive::Summary>)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
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
        if let Some(tap) = tap.as_mut() {
            tap.feed(&buf[..n], local)?;
        }
        offset += n as u64;
    }
    let summary = match tap {
        Some(tap) if !abandon.load(Ordering::Relaxed) => Some(tap.finish(local)?),
        _ => None,
    };
    Ok((hex(&hasher.finalize()), offset, summary))
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
/// place: at no moment does a final name hold a file its sidecar does not describe. When
/// the listing just showed neither final name (`replacing` false), there is nothing to
/// remove, and a rename that finds one after all fails rather than replace it.
fn publish(
    remote: &mut dyn Remote,
    name: RemoteFile,
    partial: &str,
    (digest, staged): (&str, Option<&Staged>),
    replacing: bool,
) -> Result<()> {
    wait_for_claim(remote, partial, staged)?;
    if remote.append_only() {
        return publish_appending(remote, name, partial, digest, replacing);
    }
    publish_checksum(remote, name, (digest, staged), replacing)?;
    publish_data(remote, name, partial, replacing)
}

/// Nothing is published before the destination is claimed (`gate::Gate`); when the claim
/// failed, nothing of tonight's stays there.
fn wait_for_claim(remote: &mut dyn Remote, partial: &str, staged: Option<&Staged>) -> Result<()> {
    let Err(err) = staged.map_or(Ok(()), |staged| staged.claim.wait()) else {
        return Ok(());
    };
    if let Err(cannot) = remote.remove(partial) {
        log::warn!("cannot remove {partial}: {cannot}");
    }
    Err(err)
}

/// `publish` up to the data file's rename: the stale final file removed, the checksum file
/// under its final name.
fn publish_checksum(
    remote: &mut dyn Remote,
    name: RemoteFile,
    (digest, staged): (&str, Option<&Staged>),
    replacing: bool,
) -> Result<()> {
    if replacing {
        remote.remove(&name.file_name())?;
    }
    let sidecar_partial = name.sidecar_partial_name();
    let line = sidecar_line(digest, &name.file_name());
    if staged.is_some_and(|staged| staged.take(&name.sidecar_name(), line.as_bytes())) {
        log::debug!(
            "{}: renamed from what was written ahead",
            name.sidecar_name()
        );
    } else {
        write_synced(remote, &sidecar_partial, line.as_bytes())?;
    }
    if replacing {
        remote.rename_replace(&sidecar_partial, &name.sidecar_name())
    } else {
        remote.rename_new(&sidecar_partial, &name.sidecar_name())
    }
}

fn publish_data(
    remote: &mut dyn Remote,
    name: RemoteFile,
    partial: &str,
    replacing: bool,
) -> Result<()> {
    if replacing {
        remote.rename_replace(partial, &name.file_name())
    } else {
        remote.rename_new(partial, &name.file_name())
    }
}

/// On an append-only server nothing is replaced: a checksum file already there (left by an
/// attempt stopped between its two renames) must say what ours would; a final name taken is
/// an error the node cannot fix, and says who can.
fn publish_appending(
    remote: &mut dyn Remote,
    name: RemoteFile,
    partial: &str,
    digest: &str,
    finals_seen: bool,
) -> Result<()> {
    let label = remote.describe();
    let line = sidecar_line(digest, &name.file_name());
    // The data name first: a checksum file must never be written beside bytes it was not
    // computed from.
    if finals_seen && remote.size_of(&name.file_name())?.is_some() {
        return Err(taken_on_append_only(&name.file_name(), &label, partial));
    }
    let sidecar_there = if finals_seen {
        match remote.read_small(&name.sidecar_name(), 4096)? {
            Some(text) if text == line.as_bytes() => true,
            Some(_) => return Err(taken_on_append_only(&name.sidecar_name(), &label, partial)),
            None => false,
        }
    } else {
        false
    };
    if !sidecar_there {
        let sidecar_partial = crate::names::fresh_partial(&name.sidecar_partial_name());
        write_synced(remote, &sidecar_partial, line.as_bytes())?;
        remote.rename_new(&sidecar_partial, &name.sidecar_name())?;
    }
    remote.rename_new(partial, &name.file_name())
}

fn taken_on_append_only(taken: &str, label: &str, partial: &str) -> Error {
    Error::copy(format!(
        "{taken} on {label} is there but cannot be shown to hold tonight's file (a checksum \
         file that differs or is missing; an encrypted copy counts only by this node's record \
         of what it sent), and the destination is append_only: the node never replaces a file \
         there. Tonight's copy stays as {partial}; if {taken} is no good copy, remove it and \
         its .sha256 on the server (as their owner) and the next night publishes the set"
    ))
}

/// The set's manifest beside its data file, written under a partial name and renamed, once
/// every member is verified on the server. False when the server already has this text.
/// `staged`: its partial holds this text already (`staged::Staged`), only the rename is left.
pub fn publish_manifest(
    remote: &mut dyn Remote,
    data: BackupName,
    text: &str,
    staged: bool,
) -> Result<bool> {
    let name = data.manifest_name();
    // A name taken (or a partial gone meanwhile) is looked at the usual way.
    if staged
        && remote
            .rename_new(&crate::remote::whole_partial(&name), &name)
            .is_ok()
    {
        log::debug!("{name}: renamed from what was written ahead");
        return Ok(true);
    }
    let there = if remote.append_only() {
        // One round trip to see it is not there; reading it takes three.
        remote.size_of(&name)?.is_some()
    } else if remote.put_new(&name, text.as_bytes())? {
        // The usual night: it was not there.
        return Ok(true);
    } else {
        true
    };
    if there && remote.read_small(&name, 64 * 1024)?.as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    if there && remote.append_only() {
        return Err(Error::copy(format!(
            "{name} on {} lists other files or checksums than tonight's set and the \
             destination is append_only: the node never replaces it; remove it on the server \
             (as its owner) and the next night writes it again",
            remote.describe()
        )));
    }
    remote.put_whole(&name, text.as_bytes(), there)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_never_asks_libssh2_for_much_past_what_is_left() {
        // (bytes left) -> one read's size; libssh2 requests 4 of them ahead.
        let table: &[(u64, usize)] = &[
            (0, 0),
            (1, 1),
            (3, 1),
            (4, 1),
            (1_000, 250),
            (READ_WINDOW as u64, READ_BUFFER),
            (u64::MAX, READ_BUFFER),
        ];
        for (left, expected) in table {
            assert_eq!(read_within(*left), *expected, "{left} left");
        }
    }

    #[test]
    fn auto_fetch_streams_need_a_quarter_as_many() {
        // (round trip in ms) -> streams
        let table: &[(u64, usize)] = &[(1, 1), (30, 1), (50, 2), (100, 3), (400, 9)];
        for (ms, expected) in table {
            let (streams, why) = auto_fetch_streams(Duration::from_millis(*ms));
            assert_eq!(streams, *expected, "{ms} ms: {why}");
        }
    }

    #[test]
    fn auto_streams_follow_the_round_trip() {
        // (round trip in ms) -> streams
        let table: &[(u64, usize)] =
            &[(0, 1), (1, 1), (8, 1), (10, 2), (50, 6), (100, 9), (600, 9)];
        for (ms, expected) in table {
            let (streams, why) = auto_streams(Duration::from_millis(*ms));
            assert_eq!(streams, *expected, "{ms} ms: {why}");
            assert!(why.starts_with("streams = auto: "), "{why}");
        }
    }

    #[test]
    fn the_window_is_shared_out_within_the_budget() {
        assert_eq!(window_per_stream(1), IN_FLIGHT);
        assert_eq!(window_per_stream(9), IN_FLIGHT);
        assert_eq!(window_per_stream(16), IN_FLIGHT_BUDGET / 16);
        for streams in 1..=16 {
            assert!(window_per_stream(streams) * streams <= IN_FLIGHT_BUDGET);
        }
    }

    /// Answers like libssh2's sftp_write: expects the unacknowledged bytes offered again
    /// and skips them unread, queues the new ones, acknowledges part of the queue.
    struct AckingSink {
        queue: Vec<u8>,
        received: Vec<u8>,
        ack_size: usize,
        largest_queue: usize,
    }

    impl AckingSink {
        fn new(ack_size: usize) -> AckingSink {
            AckingSink {
                queue: Vec::new(),
                received: Vec::new(),
                ack_size,
                largest_queue: 0,
            }
        }
    }

    impl Write for AckingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            assert!(
                buf.len() >= self.queue.len(),
                "offered {} bytes, {} are queued",
                buf.len(),
                self.queue.len()
            );
            self.queue.extend_from_slice(&buf[self.queue.len()..]);
            self.largest_queue = self.largest_queue.max(self.queue.len());
            let n = self.queue.len().min(self.ack_size);
            self.received.extend(self.queue.drain(..n));
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
        for (range, ack_size, window) in [
            (0..u64::MAX, 30_000, IN_FLIGHT),
            (1000..3 * IN_FLIGHT as u64 + 5, 4096, IN_FLIGHT),
            (0..u64::MAX, 300_000, window_per_stream(16)),
        ] {
            let mut sink = AckingSink::new(ack_size);
            let sent = send_range(
                &mut sink,
                &mut PlainReader(&source),
                &path,
                &mut cursor(range.clone()),
                window,
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
                sink.largest_queue <= window,
                "{} bytes in flight, the window is {window}",
                sink.largest_queue
            );
        }
    }

    #[test]
    fn an_abandoned_range_stops_without_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        std::fs::write(&path, vec![1u8; 3 * IN_FLIGHT]).expect("write");
        let source = std::fs::File::open(&path).expect("open");
        let mut sink = AckingSink::new(1024);
        let sent = send_range(
            &mut sink,
            &mut PlainReader(&source),
            &path,
            &mut cursor(0..u64::MAX),
            IN_FLIGHT,
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

    fn test_name() -> RemoteFile {
        RemoteFile::parse("cvp.20240101020010.tgz").expect("name")
    }

    #[test]
    fn the_hash_beside_the_copy_is_the_files_and_a_failed_copy_stops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let snapshot = open_local(&path).expect("open");
        let plain = Outgoing::new(&snapshot, None).expect("plain");
        let (sent, hashed) =
            beside_hash(&plain, &path, ("test", None, test_name()), |_| Ok(7u64)).expect("hash");
        let mut reference = Sha256::new();
        reference.update(&data);
        assert_eq!(sent, 7);
        assert_eq!(hashed.digest, hex(&reference.finalize()));
        assert_eq!(hashed.bytes, data.len() as u64);
        // Encrypted: the hash is of the ciphertext, all of it.
        let identity = age::x25519::Identity::generate();
        let recipients =
            Recipients::parse(&identity.to_public().to_string(), None).expect("recipients");
        let sealed = Outgoing::new(&snapshot, Some(&recipients)).expect("sealed");
        let (_, hashed) =
            beside_hash(&sealed, &path, ("test", None, test_name()), |_| Ok(())).expect("hash");
        assert_eq!(hashed.bytes, sealed.len());
        assert!(sealed.len() > data.len() as u64);
        let mut ciphertext = vec![0u8; sealed.len() as usize];
        let mut reader = sealed.reader();
        let mut at = 0;
        while at < ciphertext.len() {
            at += reader
                .read_at(&mut ciphertext[at..], at as u64)
                .expect("read");
        }
        let mut reference = Sha256::new();
        reference.update(&ciphertext);
        assert_eq!(hashed.digest, hex(&reference.finalize()));
        let failed = beside_hash(
            &plain,
            &path,
            ("test", None, test_name()),
            |_| -> Result<()> { Err(Error::copy("the server went away")) },
        );
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
