//! The transfer code talks to a small trait (after rclone's backends); SFTP is the one
//! implementation today.

pub mod known_hosts;
pub mod s3;
pub mod sftp;

use crate::error::Result;
use std::io::{Read, Seek, Write};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub name: String,
    pub size: u64,
}

/// One destructive request an intruder holding the node's credentials would send against a
/// copy, and whether the server carried it out.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub what: String,
    pub allowed: bool,
    /// The server's answer, for the report.
    pub said: String,
}

impl Attempt {
    pub fn new(what: impl Into<String>, allowed: bool, said: String) -> Attempt {
        Attempt {
            what: what.into(),
            allowed,
            said,
        }
    }
}

/// A writer that can also move to an offset: resumed uploads and parallel ranges use it.
pub trait SeekWrite: Write + Seek {}
impl<T: Write + Seek> SeekWrite for T {}

/// A destination directory on a backup server. Names are plain file names inside it.
pub trait Remote {
    /// `user@host:destination`, for messages.
    fn describe(&self) -> String;
    /// Create the destination (and parents) if missing; false when it already existed.
    fn ensure_destination(&mut self) -> Result<bool>;
    /// Regular files in the destination. None when the destination does not exist.
    fn list(&mut self) -> Result<Option<Vec<RemoteEntry>>>;
    /// `ensure_destination`, then `list`: whether it was created, and what it holds. SFTP
    /// lists first (a listing shows the folder is there: a round trip less each night).
    fn ensure_listed(&mut self) -> Result<(bool, Vec<RemoteEntry>)> {
        let created = self.ensure_destination()?;
        Ok((created, self.list()?.unwrap_or_default()))
    }
    /// A small file's contents (checksum files); None when it does not exist.
    fn read_small(&mut self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>>;
    /// Create or truncate `name` for writing.
    fn create(&mut self, name: &str) -> Result<Box<dyn Write + '_>>;
    /// Create `name` only if nothing has that name yet; None when something does.
    fn create_exclusive(&mut self, name: &str) -> Result<Option<Box<dyn Write + '_>>>;
    /// Whether `create_exclusive` is one atomic step on the server (SFTP's O_EXCL), so that
    /// a name another writer took a moment ago is never overwritten; else the caller reads
    /// the name absent just before (an S3 PUT replaces).
    fn creates_exclusively(&self) -> bool {
        false
    }
    /// Write into an existing `name` from `offset` on (resuming an upload, or one range of
    /// a parallel upload; seek to write elsewhere). The writer follows libssh2's contract:
    /// a write may take fewer bytes than offered, and the bytes offered but not taken are
    /// offered again, first, on the next call (the transfer may leave them unread).
    fn open_at(&mut self, name: &str, offset: u64) -> Result<Box<dyn SeekWrite + '_>>;
    /// `open_at` from 0, creating `name` when it is not there yet (never truncating it):
    /// every stream of a parallel upload opens it at once, none waiting for another to
    /// create it. Only for a name nothing else writes to that held nothing before.
    fn open_creating(&mut self, name: &str) -> Result<Box<dyn SeekWrite + '_>> {
        self.open_at(name, 0)
    }
    /// Read `name` from the start (verifying a resumed upload), or from `offset` on (a
    /// lane of a parallel download). Reads ask for up to 4 times the buffer given ahead.
    fn open_read(&mut self, name: &str) -> Result<Box<dyn Read + '_>> {
        self.open_read_at(name, 0)
    }
    fn open_read_at(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>>;
    /// Read bytes `range` of `name` (one block of a read-back). With reads of at most a
    /// quarter of what is left, libssh2 asks for at most one request past it.
    fn open_read_range(
        &mut self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Box<dyn Read + '_>> {
        let len = range.end.saturating_sub(range.start);
        Ok(Box::new(self.open_read_at(name, range.start)?.take(len)))
    }
    fn size_of(&mut self, name: &str) -> Result<Option<u64>>;
    /// Rename, replacing `to` if it exists.
    fn rename_replace(&mut self, from: &str, to: &str) -> Result<()>;
    /// Rename onto a name nothing has (fails if something does): one round trip fewer
    /// than `rename_replace` when a listing just showed the name free.
    fn rename_new(&mut self, from: &str, to: &str) -> Result<()>;
    /// The time of one round trip to the server (`streams = auto` sizes from it).
    fn round_trip(&mut self) -> std::time::Duration;
    /// Done with this connection: close it without waiting for the server's answers (SFTP:
    /// an SSH disconnect, then the socket is cut; a round trip less at the end of a run).
    /// Only once nothing written is left open. Elsewhere: dropped.
    fn finish(self: Box<Self>) {}
    /// Remove a file; Ok when it was already gone.
    fn remove(&mut self, name: &str) -> Result<()>;
    /// Whether the node never removes, truncates or replaces anything there (SFTP
    /// `append_only`): then each attempt writes under a new partial name.
    fn append_only(&self) -> bool {
        false
    }
    /// Whether nothing the node writes there may be removed by it (append-only SFTP, an S3
    /// destination with `lock_days`): `check` then leaves its test file.
    fn keeps_what_it_writes(&self) -> bool {
        self.append_only()
    }
    /// Until when `name` is locked (S3 with `lock_days`: the latest retention among its
    /// versions still ahead); None: it may be removed now.
    fn locked_until(&mut self, _name: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// Retain every version of `name` for `lock_days` from now (S3 with `lock_days`;
    /// elsewhere nothing); how many versions.
    fn extend_lock(&mut self, _name: &str) -> Result<usize> {
        Ok(0)
    }
    /// A small file the night's decisions read (a manifest): as `read_small`, or on a locked
    /// bucket, when hidden, its oldest version.
    fn read_kept(&mut self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        self.read_small(name, max_bytes)
    }
    /// Data backups hidden or written over after the node wrote them (S3 with versions).
    fn hidden_sets(&mut self) -> Result<Vec<crate::names::BackupName>> {
        Ok(Vec::new())
    }
    /// The listing the night's keep and prune decisions count on: with `lock_days`, names
    /// hidden behind a delete marker too (their versions are the node's).
    fn list_for_locks(&mut self) -> Result<Option<Vec<RemoteEntry>>> {
        self.list()
    }
    /// Send what an intruder holding the node's credentials would send to destroy `name`
    /// (a test file), whatever the configuration allows the node itself: `check`'s and the
    /// night's proof of immutability.
    fn try_to_destroy(&mut self, name: &str) -> Result<Vec<Attempt>>;
    /// `put_whole` when nothing has that name yet; false (nothing written) when something
    /// has. Not on an append-only destination (what it writes stays).
    fn put_new(&mut self, name: &str, bytes: &[u8]) -> Result<bool> {
        put_new_after_a_look(self, name, bytes)
    }
    /// A small file (a manifest) made visible whole under `name`: written under its partial
    /// name and renamed (replacing what is there when `replacing`), or, where a write is
    /// whole by itself (an S3 PUT), written at once.
    fn put_whole(&mut self, name: &str, bytes: &[u8], replacing: bool) -> Result<()> {
        let mut partial = whole_partial(name);
        if self.append_only() {
            partial = crate::names::fresh_partial(&partial);
        }
        write_synced(self, &partial, bytes)?;
        if replacing {
            self.rename_replace(&partial, name)
        } else {
            self.rename_new(&partial, name)
        }
    }
}

/// `put_new` by looking first: one round trip more, nothing written in vain.
pub(crate) fn put_new_after_a_look<R: Remote + ?Sized>(
    remote: &mut R,
    name: &str,
    bytes: &[u8],
) -> Result<bool> {
    if remote.size_of(name)?.is_some() {
        return Ok(false);
    }
    remote.put_whole(name, bytes, false)?;
    Ok(true)
}

/// A small file written whole under `name` (created or truncated) and synced.
pub(crate) fn write_synced<R: Remote + ?Sized>(
    remote: &mut R,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let label = remote.describe();
    let mut sink = remote.create(name)?;
    sink.write_all(bytes)
        .and_then(|()| sink.flush())
        .map_err(|err| crate::error::Error::copy(format!("cannot write {name} on {label}: {err}")))
}

/// The partial name `put_whole` writes a small file under before renaming it.
pub(crate) fn whole_partial(name: &str) -> String {
    crate::names::partial_of(name)
}
