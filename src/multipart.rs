//! Copy one file to an S3 bucket so that its name only ever holds a complete, verified
//! object: a multipart upload whose parts go up side by side, each with its SHA-256 for the
//! server to check, resumed from the parts an earlier attempt finished (ListParts, each
//! compared with the local bytes), completed only after the sidecar is written. Small files
//! go up in one PUT.

use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::names::{sidecar_line, RemoteFile};
use crate::remote::s3::{self, Body, Request, S3Remote};
use crate::remote::Remote;
use crate::seal::{ReadAt, Recipients};
use crate::signals;
use crate::transfer::{self, Outgoing, Seen, Uploaded};
use base64::Engine;
use indicatif::ProgressBar;
use rusty_s3::actions::S3Action;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// How a sender or the hasher says it stopped because another one failed: never the cause.
const STOPPED: &str = "stopped: another part of the upload failed";

fn stopped() -> Error {
    Error::transient(STOPPED)
}

/// The error that says why, of several: the first that is not "stopped".
fn first_cause(errors: impl IntoIterator<Item = Error>) -> Option<Error> {
    let mut errors: Vec<Error> = errors.into_iter().collect();
    let cause = errors
        .iter()
        .position(|e| e.message != STOPPED)
        .unwrap_or(0);
    (!errors.is_empty()).then(|| errors.swap_remove(cause))
}
const BUFFER: usize = 1024 * 1024;

/// A part the server holds: its ETag and SHA-256 (base64), as CompleteMultipartUpload wants.
#[derive(Clone, Debug)]
struct DonePart {
    etag: String,
    sha256: String,
}

/// Upload `local` as `name` (encrypted to `recipients` when given) over `streams` parallel
/// requests, and publish it with its sidecar.
pub fn upload(
    remote: &S3Remote,
    source: transfer::Source,
    (name, recipients): (RemoteFile, Option<&Recipients>),
    seen: Seen,
    streams: usize,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let local = source.path;
    let snapshot = transfer::open_local(local)?;
    let outgoing = Outgoing::new(&snapshot, recipients)?.checking(source.check_archive);
    let len = outgoing.len();
    if len <= s3::WHOLE_PUT_MAX {
        return upload_whole(remote, local, &outgoing, name, seen, progress);
    }
    let plan = s3::part_plan(len);
    let key = remote.key(&name.file_name());
    let count = plan.len();

    // Earlier attempts' uploads of this key: resume the newest (a plain file's bytes are the
    // same every time; an encrypted one's are not), abort the rest.
    let mut earlier = if seen.partial.is_some() {
        remote
            .unfinished_uploads(&key)?
            .into_iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, id)| id)
            .collect()
    } else {
        Vec::new()
    };
    let resume = if outgoing.sealed() {
        None
    } else {
        earlier.pop()
    };
    for id in earlier {
        remote.abort_upload(&key, &id)?;
    }
    let mut done: Vec<Option<DonePart>> = vec![None; count];
    let upload_id = match resume {
        Some(id) => {
            let kept = verify_listed_parts(remote, &key, &id, &outgoing, local, &plan, &mut done)?;
            log::info!(
                "{name}: resuming the upload: {kept} of {count} parts are on the server and \
                 match the local file"
            );
            let resumed: u64 = plan
                .iter()
                .zip(&done)
                .filter(|(_, done)| done.is_some())
                .map(|(range, _)| range.end - range.start)
                .sum();
            progress.set_position(resumed);
            id
        }
        None => create(remote, &key, &name)?,
    };

    let during = format!("the copy of {name}");
    let results = Mutex::new(done);
    let digests = PartDigests::new(count);
    let abandon = AtomicBool::new(false);
    let (sent, hashed) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| {
            let outcome = hash_in_order(&outgoing, local, &plan, &digests, &abandon, &during)
                .and_then(|(digest, bytes, archive)| {
                    // A new name's checksum file goes up as soon as the hash is known, while
                    // the last parts are still on the way (a round trip less at the end).
                    if !seen.finals {
                        let line = sidecar_line(&digest, &name.file_name());
                        remote.put_bytes(&name.sidecar_name(), line.as_bytes())?;
                    }
                    Ok((digest, bytes, archive))
                });
            if outcome.is_err() {
                abandon.store(true, Ordering::Relaxed);
                digests.ready.notify_all();
            }
            outcome
        });
        let sending = std::time::Instant::now();
        let sent = send_parts(
            remote,
            (&key, &upload_id),
            &outgoing,
            &plan,
            (&results, &digests),
            streams.max(1),
            &abandon,
            progress,
        );
        if sent.is_err() {
            abandon.store(true, Ordering::Relaxed);
            digests.ready.notify_all();
        }
        let sent_after = sending.elapsed();
        let hashed = hasher
            .join()
            .unwrap_or_else(|_| Err(Error::copy(format!("hashing crashed during {during}"))));
        let lag = sending.elapsed().saturating_sub(sent_after);
        (
            sent,
            hashed.map(|(digest, bytes, archive)| (digest, bytes, lag, archive)),
        )
    });
    let (digest, hashed_bytes, lag, archive) = match (sent, hashed) {
        (Ok(()), Ok(hashed)) => hashed,
        // A damaged archive: its parts are of no use to any later attempt.
        (_, Err(err)) if err.code == ExitCode::BackupFailed => {
            if let Err(cannot) = remote.abort_upload(&key, &upload_id) {
                log::warn!("cannot abort the upload of {name}: {cannot}");
            }
            return Err(err);
        }
        (sent, hashed) => {
            let errors = [sent.err(), hashed.err()].into_iter().flatten();
            return Err(first_cause(errors).unwrap_or_else(stopped));
        }
    };
    let hashed = transfer::Hashed {
        digest,
        bytes: hashed_bytes,
        lag,
        archive,
    };
    transfer::check_unchanged(local, &outgoing, hashed.bytes)?;
    let parts: Vec<DonePart> = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::transient(format!("{name}: a part is missing after the upload")))?;

    let sidecar = sidecar_line(&hashed.digest, &name.file_name());
    // A new name's checksum file is there already (the hasher wrote it), so the object
    // never stands without one. A name being replaced: the completion replaces the old
    // object at once (it stays whole until then), and the checksum file follows.
    let composite = composite_sha256(&parts);
    complete(remote, &key, &upload_id, &parts, &name, (len, &composite))?;
    // The server's own composite SHA-256 of the parts (when it keeps one) must be ours.
    if let Some(wrong) = verify_object(remote, &name, len, Some(&composite))? {
        return Err(discard(remote, &name, seen.finals, wrong));
    }
    if seen.finals {
        remote.put_bytes(&name.sidecar_name(), sidecar.as_bytes())?;
    }
    Ok(Uploaded {
        digest: hashed.digest,
        bytes: len,
        hash_seconds: hashed.lag.as_secs_f64(),
        archive: hashed.archive,
    })
}

/// A file of one part or less: read whole (at most one part's memory), hashed, and sent in
/// one PUT that the server checks against its SHA-256.
fn upload_whole(
    remote: &S3Remote,
    local: &Path,
    outgoing: &Outgoing,
    name: RemoteFile,
    seen: Seen,
    progress: &ProgressBar,
) -> Result<Uploaded> {
    let started = std::time::Instant::now();
    let len = outgoing.len();
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut reader = outgoing.reader();
    let mut at = 0;
    while at < bytes.len() {
        let n = reader
            .read_at(&mut bytes[at..], at as u64)
            .map_err(transfer::read_error(local))?;
        if n == 0 {
            break;
        }
        at += n;
    }
    transfer::check_unchanged(local, outgoing, at as u64)?;
    let archive = match outgoing.archive_tap() {
        Some(mut tap) => {
            tap.feed(&bytes, local)?;
            Some(tap.finish(local)?)
        }
        None => None,
    };
    let digest = transfer::hex(&Sha256::digest(&bytes));
    let hash_seconds = started.elapsed().as_secs_f64();
    let sidecar = sidecar_line(&digest, &name.file_name());
    // As for a large file: a new name gets its checksum file first; a replaced one after.
    if !seen.finals {
        remote.put_bytes(&name.sidecar_name(), sidecar.as_bytes())?;
    }
    remote.put_bytes(&name.file_name(), &bytes)?;
    if let Some(wrong) = verify_object(remote, &name, len, None)? {
        return Err(discard(remote, &name, seen.finals, wrong));
    }
    if seen.finals {
        remote.put_bytes(&name.sidecar_name(), sidecar.as_bytes())?;
    }
    progress.set_position(len);
    Ok(Uploaded {
        digest,
        bytes: len,
        hash_seconds,
        archive,
    })
}

/// S3's checksum of a multipart object: the SHA-256 of the parts' SHA-256s, `-N` parts.
fn composite_sha256(parts: &[DonePart]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&part.sha256) {
            hasher.update(raw);
        }
    }
    format!(
        "{}-{}",
        base64::engine::general_purpose::STANDARD.encode(hasher.finalize()),
        parts.len()
    )
}

/// Whether the object under its final name has the size sent and, when the server reports a
/// checksum, the one expected (`composite` for a multipart object; a whole PUT was checked
/// against its SHA-256 header as it arrived, and its ETag against its MD5 by `put_bytes`):
/// None when it does, else what is wrong; an error when it could not be looked at (then
/// nothing is known to be wrong, and nothing is removed).
fn verify_object(
    remote: &S3Remote,
    name: &RemoteFile,
    len: u64,
    composite: Option<&str>,
) -> Result<Option<String>> {
    let Some((size, checksum)) = remote.head_with_checksum(&name.file_name())? else {
        return Ok(Some(format!("sent {len} bytes, the server has no object")));
    };
    if size != len {
        return Ok(Some(format!("sent {len} bytes, the server has {size}")));
    }
    if let (Some(expected), Some(reported)) = (composite, checksum.as_deref()) {
        // Servers spell a composite checksum with or without its part count.
        let matches = reported == expected
            || expected.split('-').next() == Some(reported.split('-').next().unwrap_or(""));
        if !matches {
            return Ok(Some(format!(
                "the server's SHA-256 of the parts is {reported}, the parts sent make {expected}"
            )));
        }
    }
    Ok(None)
}

/// The object is not what was sent. A new name: its checksum file and the object go (the
/// checksum file first, so a name never stands with a checksum file that vouches for it),
/// and the next attempt sends it again. A replaced name: the earlier object is gone already;
/// the checksum file still describes it, so nothing vouches for the wrong bytes, and the
/// next attempt replaces them.
fn discard(remote: &S3Remote, name: &RemoteFile, replacing: bool, wrong: String) -> Error {
    let label = remote.describe();
    let mut remote = remote.clone();
    let removed = if replacing {
        Ok(())
    } else {
        remote
            .remove(&name.sidecar_name())
            .and_then(|()| remote.remove(&name.file_name()))
    };
    let after = match removed {
        Ok(()) if replacing => "the next attempt replaces it".to_string(),
        Ok(()) => "removed; the next attempt sends it again".to_string(),
        Err(err) => format!("it could not be removed ({err}): remove it by hand"),
    };
    Error::transient(format!(
        "verification failed for {name} on {label}: {wrong}; {after}"
    ))
}

fn create(remote: &S3Remote, key: &str, name: &RemoteFile) -> Result<String> {
    let mut action = remote
        .bucket()
        .create_multipart_upload(Some(remote.credentials()), key);
    action
        .headers_mut()
        .insert("x-amz-checksum-algorithm", "SHA256");
    let locks = remote.lock_headers();
    for (header, value) in &locks {
        action.headers_mut().insert(*header, value.clone());
    }
    let mut request = Request::new(rusty_s3::Method::Post, action.sign(SIGNED_FOR));
    request
        .headers
        .push(("x-amz-checksum-algorithm", "SHA256".into()));
    let locked = !locks.is_empty();
    request.headers.extend(locks);
    let mut answer = remote.send_write(
        &format!("starting the upload of {name} (CreateMultipartUpload)"),
        request,
        locked,
    )?;
    let text = answer
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|err| Error::transient(format!("starting the upload of {name}: {err}")))?;
    s3::xml_text(&text, "UploadId")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            Error::copy(format!(
                "starting the upload of {name}: the server gave no upload ID"
            ))
        })
}

/// Mark the parts an earlier attempt finished as done when the server's ETag (MD5) and size
/// match the local bytes of that part; the rest are sent again. How many are kept.
fn verify_listed_parts(
    remote: &S3Remote,
    key: &str,
    upload_id: &str,
    outgoing: &Outgoing,
    local: &Path,
    plan: &[std::ops::Range<u64>],
    done: &mut [Option<DonePart>],
) -> Result<usize> {
    let mut marker: Option<u16> = None;
    let mut listed: HashMap<u16, (String, u64)> = HashMap::new();
    loop {
        let mut action = remote
            .bucket()
            .list_parts(Some(remote.credentials()), key, upload_id);
        if let Some(marker) = marker {
            action.set_part_number_marker(marker);
        }
        let mut answer = remote.send(
            &format!("listing the finished parts of {key} (ListParts)"),
            Request::get(action.sign(SIGNED_FOR)),
        )?;
        let text = answer
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|err| Error::transient(format!("listing the parts of {key}: {err}")))?;
        let parsed = rusty_s3::actions::ListParts::parse_response(&text)
            .map_err(|err| Error::copy(format!("cannot read the parts of {key}: {err}")))?;
        for p in parsed.parts {
            listed.insert(
                p.number,
                (p.etag.trim_matches('"').to_ascii_lowercase(), p.size),
            );
        }
        // Part numbers only go up: anything else ends the listing.
        match parsed.next_part_number_marker {
            Some(next) if marker.is_none_or(|m| next > m) => marker = Some(next),
            _ => break,
        }
    }
    let mut reader = outgoing.reader();
    let mut buf = vec![0u8; BUFFER];
    let mut kept = 0;
    for (index, slot) in done.iter_mut().enumerate() {
        let number = u16::try_from(index + 1).unwrap_or(u16::MAX);
        let Some((etag, size)) = listed.get(&number) else {
            continue;
        };
        let Some(range) = plan.get(index) else {
            continue;
        };
        let (from, to) = (range.start, range.end);
        if *size != to - from {
            continue;
        }
        signals::check("the check of an earlier upload's parts")?;
        let (md5, sha256) = digests_of(&mut *reader, local, from..to, &mut buf)?;
        if md5 == *etag {
            *slot = Some(DonePart {
                etag: format!("\"{md5}\""),
                sha256,
            });
            kept += 1;
        }
    }
    Ok(kept)
}

/// MD5 (hex, an S3 part's ETag) and SHA-256 (base64) of a range of the outgoing bytes.
fn digests_of(
    reader: &mut dyn ReadAt,
    local: &Path,
    range: std::ops::Range<u64>,
    buf: &mut [u8],
) -> Result<(String, String)> {
    let mut md5 = md5::Md5::new();
    let mut sha = Sha256::new();
    let mut at = range.start;
    while at < range.end {
        let want = usize::try_from(range.end - at)
            .unwrap_or(buf.len())
            .min(buf.len());
        let n = reader
            .read_at(&mut buf[..want], at)
            .map_err(transfer::read_error(local))?;
        if n == 0 {
            return Err(Error::copy(format!(
                "{} is shorter than it was: it changed while it was copied",
                local.display()
            )));
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        at += n as u64;
    }
    Ok((
        transfer::hex(&md5.finalize()),
        base64::engine::general_purpose::STANDARD.encode(sha.finalize()),
    ))
}

/// The parts not yet done, sent by `streams` workers that each take the next one.
#[allow(clippy::too_many_arguments)]
fn send_parts(
    remote: &S3Remote,
    (key, upload_id): (&str, &str),
    outgoing: &Outgoing,
    plan: &[std::ops::Range<u64>],
    (results, digests): (&Mutex<Vec<Option<DonePart>>>, &PartDigests),
    streams: usize,
    abandon: &AtomicBool,
    progress: &ProgressBar,
) -> Result<()> {
    let todo: Vec<usize> = results
        .lock()
        .map_err(|_| Error::copy("internal error: a part worker crashed"))?
        .iter()
        .enumerate()
        .filter(|(_, done)| done.is_none())
        .map(|(index, _)| index)
        .collect();
    let next = AtomicUsize::new(0);
    let workers = streams.min(todo.len()).max(1);
    let outcomes: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let context = crate::logging::context();
                let todo = &todo;
                let next = &next;
                scope.spawn(move || -> Result<()> {
                    crate::logging::set_context(context);
                    let mut reader = outgoing.reader();
                    loop {
                        if abandon.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        signals::check("the copy")?;
                        let Some(&index) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        let Some(range) = plan.get(index) else {
                            return Ok(());
                        };
                        let (from, to) = (range.start, range.end);
                        let sent = digests.wait(index, abandon).and_then(|sha256| {
                            send_part(
                                remote,
                                (key, upload_id),
                                &mut *reader,
                                (index, from..to, sha256),
                                abandon,
                            )
                        });
                        match sent {
                            Ok(done) => {
                                if let Ok(mut results) = results.lock() {
                                    results[index] = Some(done);
                                }
                                crate::progress::moved(progress, to - from);
                            }
                            Err(err) => {
                                abandon.store(true, Ordering::Relaxed);
                                return Err(err);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::copy("a part upload crashed")))
            })
            .collect()
    });
    // The first error that is not "stopped because another failed".
    match first_cause(outcomes.into_iter().filter_map(Result::err)) {
        Some(cause) => Err(cause),
        None => Ok(()),
    }
}

/// One part, with the SHA-256 the in-order hasher gave it: the server refuses the part
/// when its bytes do not match.
fn send_part(
    remote: &S3Remote,
    (key, upload_id): (&str, &str),
    reader: &mut dyn ReadAt,
    (index, range, sha256): (usize, std::ops::Range<u64>, String),
    abandon: &AtomicBool,
) -> Result<DonePart> {
    let number = u16::try_from(index + 1)
        .map_err(|_| Error::copy("internal error: more than 65535 parts"))?;
    let mut action =
        remote
            .bucket()
            .upload_part(Some(remote.credentials()), key, number, upload_id);
    action
        .headers_mut()
        .insert("x-amz-checksum-sha256", sha256.clone());
    let mut request = Request::new(rusty_s3::Method::Put, action.sign(SIGNED_FOR));
    request
        .headers
        .push(("x-amz-checksum-sha256", sha256.clone()));
    let mut body = RangeReader {
        reader,
        at: range.start,
        end: range.end,
        abandon,
    };
    request.body = Body::Reader(&mut body, range.end - range.start);
    let answer = remote.send(
        &format!("sending part {number} of {key} (UploadPart)"),
        request,
    )?;
    let etag = answer
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::transient(format!("part {number} of {key}: no ETag in the answer"))
        })?;
    Ok(DonePart { etag, sha256 })
}

/// Each part's SHA-256 (base64), as the in-order hasher reaches the part's end; a part's
/// sender waits for its own.
struct PartDigests {
    slots: Mutex<Vec<Option<String>>>,
    ready: std::sync::Condvar,
}

impl PartDigests {
    fn new(count: usize) -> PartDigests {
        PartDigests {
            slots: Mutex::new(vec![None; count]),
            ready: std::sync::Condvar::new(),
        }
    }

    fn set(&self, index: usize, digest: String) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(digest);
            }
        }
        self.ready.notify_all();
    }

    fn wait(&self, index: usize, abandon: &AtomicBool) -> Result<String> {
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| Error::copy("internal error: the hasher crashed"))?;
        loop {
            if let Some(Some(digest)) = slots.get(index) {
                return Ok(digest.clone());
            }
            if abandon.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            slots = self
                .ready
                .wait_timeout(slots, Duration::from_millis(200))
                .map_err(|_| Error::copy("internal error: the hasher crashed"))?
                .0;
        }
    }
}

/// The whole file's SHA-256 (hex, for its sidecar) and each part's (for the server to
/// check), in one pass in order beside the senders (from the page cache: cvpi has just
/// written it).
fn hash_in_order(
    outgoing: &Outgoing,
    local: &Path,
    plan: &[std::ops::Range<u64>],
    digests: &PartDigests,
    abandon: &AtomicBool,
    during: &str,
) -> Result<(String, u64, Option<crate::archive::Summary>)> {
    let len = outgoing.len();
    let mut reader = outgoing.reader();
    let mut tap = outgoing.archive_tap();
    let mut whole = Sha256::new();
    let mut this_part = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let mut at = 0u64;
    let mut index = 0usize;
    while at < len {
        signals::check(during)?;
        if abandon.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let part_end = plan.get(index).map_or(len, |range| range.end);
        let want = usize::try_from(part_end - at).unwrap_or(BUFFER).min(BUFFER);
        let n = reader
            .read_at(&mut buf[..want], at)
            .map_err(transfer::read_error(local))?;
        if n == 0 {
            return Err(Error::copy(format!(
                "{} is shorter than it was: it changed while it was copied",
                local.display()
            )));
        }
        whole.update(&buf[..n]);
        this_part.update(&buf[..n]);
        if let Some(tap) = tap.as_mut() {
            tap.feed(&buf[..n], local)?;
        }
        at += n as u64;
        if at == part_end {
            let digest = std::mem::take(&mut this_part).finalize();
            digests.set(
                index,
                base64::engine::general_purpose::STANDARD.encode(digest),
            );
            index += 1;
        }
    }
    let archive = tap.map(|tap| tap.finish(local)).transpose()?;
    Ok((transfer::hex(&whole.finalize()), at, archive))
}

/// One part's bytes as the HTTP body.
struct RangeReader<'a> {
    reader: &'a mut dyn ReadAt,
    at: u64,
    end: u64,
    abandon: &'a AtomicBool,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandon.load(Ordering::Relaxed) || signals::received().is_some() {
            return Err(std::io::Error::other(STOPPED));
        }
        let want = usize::try_from(self.end - self.at)
            .unwrap_or(buf.len())
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.reader.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the local file became shorter",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

fn complete(
    remote: &S3Remote,
    key: &str,
    upload_id: &str,
    parts: &[DonePart],
    name: &RemoteFile,
    (len, composite): (u64, &str),
) -> Result<()> {
    let action = remote.bucket().complete_multipart_upload(
        Some(remote.credentials()),
        key,
        upload_id,
        std::iter::empty::<&str>(),
    );
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, part) in parts.iter().enumerate() {
        body.push_str(&format!(
            "<Part><ETag>{}</ETag><PartNumber>{}</PartNumber><ChecksumSHA256>{}</ChecksumSHA256></Part>",
            part.etag.replace('"', "&quot;"),
            index + 1,
            part.sha256
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let mut request = Request::new(rusty_s3::Method::Post, action.sign(SIGNED_FOR));
    request.body = Body::Bytes(body.into_bytes());
    request.deadline = Some(remote.sync_timeout());
    let what = format!("completing the upload of {name} (CompleteMultipartUpload)");
    let mut answer = match remote.send(&what, request) {
        Ok(answer) => answer,
        // An earlier completion whose answer was lost may have gone through: then the
        // object is there, with the parts' checksum.
        Err(err) if err.message.contains("NoSuchUpload") => {
            return match verify_object(remote, name, len, Some(composite)) {
                Ok(None) => Ok(()),
                _ => Err(err),
            };
        }
        Err(err) => Err(err)?,
    };
    // S3 can answer 200 and still fail: the error is in the body.
    let text = answer
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|err| Error::transient(format!("{what}: {err}")))?;
    if text.contains("<Error>") {
        let code = s3::xml_text(&text, "Code").unwrap_or_default();
        let message = s3::xml_text(&text, "Message").unwrap_or_default();
        return Err(Error::transient(format!(
            "{what} on {}: {code}: {message}",
            remote.describe()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_first_error_that_is_not_a_stop() {
        let cause = first_cause([stopped(), Error::transient("connection reset"), stopped()]);
        assert_eq!(
            cause.map(|e| e.message).as_deref(),
            Some("connection reset")
        );
        let only_stops = first_cause([stopped(), stopped()]);
        assert_eq!(
            only_stops.map(|e| e.transient),
            Some(true),
            "a stop is worth a retry"
        );
        assert!(first_cause(Vec::new()).is_none());
    }

    #[test]
    fn the_composite_checksum_is_the_sha256_of_the_parts_sha256s() {
        let part = |bytes: &[u8]| DonePart {
            etag: String::new(),
            sha256: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes)),
        };
        let parts = [part(b"one"), part(b"two")];
        let mut joined = Sha256::digest(b"one").to_vec();
        joined.extend_from_slice(&Sha256::digest(b"two"));
        let expected = format!(
            "{}-2",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&joined))
        );
        assert_eq!(composite_sha256(&parts), expected);
    }
}
