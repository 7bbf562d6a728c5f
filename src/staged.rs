//! Small files written ahead under their partial names, on a connection the set no longer
//! needs, while the large file's last bytes are still on their way: its checksum file once
//! its sha256 is known, the set's manifest once every member's is. After the last byte only
//! their renames are left; on a long link each small file written then would cost four round
//! trips (open, write, sync, close). A partial staged here is renamed only when it holds
//! exactly the bytes wanted; else the file is written the usual way. Publishing waits for
//! the destination's claim when that runs beside the first uploads (`gate::Gate`).

use crate::error::Result;
use crate::remote::{self, Remote};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

enum State {
    Writing,
    Written(Vec<u8>),
    /// Its publisher asked: staged or not, no stage starts any more (two writers of one
    /// partial could leave it empty under its final name).
    Taken,
}

#[derive(Default)]
pub struct Staged {
    files: Mutex<HashMap<String, State>>,
    written: Condvar,
    /// Each file's sha256 as soon as it is hashed, by name; and whether the large file's
    /// upload has ended (then no more will come).
    digests: Mutex<(HashMap<String, String>, bool)>,
    hashed: Condvar,
    /// Whether the destination is claimed yet: a claim running beside the first uploads
    /// holds back every final name.
    pub claim: crate::gate::Gate,
}

/// A mutex's guard; one a panicking thread left is taken as it is (what it guards is
/// whole at every step).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Staged {
    /// Write `bytes` under `name`'s partial name (synced), unless its publisher has asked
    /// for it already (then false).
    pub fn stage(&self, remote: &mut dyn Remote, name: &str, bytes: &[u8]) -> Result<bool> {
        self.stage_by(name, bytes, || {
            remote::write_synced(remote, &remote::whole_partial(name), bytes)
        })
    }

    fn stage_by(
        &self,
        name: &str,
        bytes: &[u8],
        write: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        {
            let mut files = lock(&self.files);
            if files.contains_key(name) {
                return Ok(false);
            }
            files.insert(name.to_string(), State::Writing);
        }
        // A write that panics leaves no "writing" behind for its publisher to wait on.
        let mut writing = Writing {
            staged: self,
            name,
            written: None,
        };
        let outcome = write();
        if outcome.is_ok() {
            writing.written = Some(bytes.to_vec());
        }
        outcome.map(|()| true)
    }

    /// Whether `name`'s partial holds `bytes`, staged: then only its rename is left. A stage
    /// still writing is waited for; once asked, the name is never staged again.
    pub fn take(&self, name: &str, bytes: &[u8]) -> bool {
        let mut files = lock(&self.files);
        while matches!(files.get(name), Some(State::Writing)) {
            files = self
                .written
                .wait(files)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let staged = matches!(files.get(name), Some(State::Written(held)) if held == bytes);
        files.insert(name.to_string(), State::Taken);
        staged
    }

    /// `name` (as the server will hold it) hashed to `digest`: known long before its last
    /// byte is sent, as it is hashed from the page cache.
    pub fn hashed(&self, name: &str, digest: &str) {
        let mut digests = lock(&self.digests);
        digests.0.insert(name.to_string(), digest.to_string());
        self.hashed.notify_all();
    }

    /// Wait for `name`'s sha256 while the large file's upload runs; None once it has ended
    /// (writing ahead then would only make the set wait).
    pub fn wait_hashed(&self, name: &str) -> Option<String> {
        let mut digests = lock(&self.digests);
        loop {
            if digests.1 {
                return None;
            }
            if let Some(digest) = digests.0.get(name) {
                return Some(digest.clone());
            }
            digests = self
                .hashed
                .wait(digests)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A stage being written: once done (or panicked), written or forgotten, and whoever waits
/// is woken.
struct Writing<'a> {
    staged: &'a Staged,
    name: &'a str,
    written: Option<Vec<u8>>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut files = lock(&self.staged.files);
        match self.written.take() {
            Some(bytes) => files.insert(self.name.to_string(), State::Written(bytes)),
            None => files.remove(self.name),
        };
        self.staged.written.notify_all();
    }
}

/// Held by the large file's upload: when dropped (done, failed or panicked) whoever waits
/// for a sha256 is never left waiting.
pub struct LargeUpload<'a>(pub &'a Staged);

impl Drop for LargeUpload<'_> {
    fn drop(&mut self) {
        lock(&self.0.digests).1 = true;
        self.0.hashed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::time::Duration;

    const LINE: &[u8] = b"digest  cvp.20240101020010.tgz\n";

    #[test]
    fn only_the_exact_bytes_staged_are_taken_and_only_once() {
        let staged = Staged::default();
        assert!(staged.stage_by("a", LINE, || Ok(())).expect("staged"));
        assert!(!staged.take("a", b"other bytes\n"), "different bytes");
        assert!(
            !staged.take("a", LINE),
            "taken once: a retry writes it itself"
        );
        staged.stage_by("b", LINE, || Ok(())).expect("staged");
        assert!(staged.take("b", LINE));
        assert!(!staged.take("c", LINE), "never staged");
    }

    #[test]
    fn a_failed_stage_is_not_taken_and_none_starts_once_asked() {
        let staged = Staged::default();
        let failed = staged.stage_by("a", LINE, || Err(Error::copy("cut")));
        assert!(failed.is_err());
        assert!(!staged.take("a", LINE));
        let mut wrote = false;
        staged
            .stage_by("a", LINE, || {
                wrote = true;
                Ok(())
            })
            .expect("skipped");
        assert!(
            !wrote,
            "its publisher writes it: two writers could empty it"
        );
    }

    #[test]
    fn take_waits_for_a_stage_still_writing() {
        let staged = Staged::default();
        let (started, wait_started) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let staged = &staged;
            scope.spawn(move || {
                staged
                    .stage_by("a", LINE, || {
                        started.send(()).expect("send");
                        std::thread::sleep(Duration::from_millis(200));
                        Ok(())
                    })
                    .expect("staged")
            });
            wait_started.recv().expect("started");
            assert!(staged.take("a", LINE), "waited for the write to end");
        });
    }

    #[test]
    fn a_files_own_digest_is_waited_for_and_the_large_uploads_end_ends_the_wait() {
        let staged = Staged::default();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| staged.wait_hashed("large"));
            // A small file's digest is not the large one's.
            staged.hashed("small", "abc");
            std::thread::sleep(Duration::from_millis(50));
            staged.hashed("large", "def");
            assert_eq!(waiter.join().expect("joined").as_deref(), Some("def"));
        });
        drop(LargeUpload(&staged));
        assert_eq!(staged.wait_hashed("large"), None, "too late to write ahead");

        let failed = Staged::default();
        failed.hashed("small", "abc");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| failed.wait_hashed("large"));
            std::thread::sleep(Duration::from_millis(50));
            drop(LargeUpload(&failed));
            assert_eq!(waiter.join().expect("joined"), None);
        });
    }

    #[test]
    fn a_checksum_files_partial_is_the_name_staging_writes() {
        let file = crate::names::RemoteFile::parse("cvp.20240101020010.tgz").expect("name");
        assert_eq!(
            file.sidecar_partial_name(),
            remote::whole_partial(&file.sidecar_name())
        );
    }
}
