//! Where a night's set goes: a destination saves, lists, reads and removes whole files; how
//! a file becomes visible (SFTP: a partial name, then a rename; S3: a completed multipart
//! upload) and how connections are made and reused are each kind's own business. The rules
//! (what to copy, what counts as there) are the same for every kind: `copy_one` and
//! `plan::decide`.

pub mod s3;
pub mod sftp;

use crate::config::{DestinationKind, ServerConfig};
use crate::error::{Error, Result};
use crate::names::RemoteFile;
use crate::plan::{self, CopyDecision, FileFacts, SealedCopy};
use crate::remote::{Remote, RemoteEntry};
use crate::run::LocalFile;
use crate::secret::Secret;
use crate::sets::RestoreSet;
use crate::signals;
use crate::staged::Staged;
use crate::state::SealedUpload;
use crate::transfer::{self, Seen};
use std::collections::HashMap;
use std::time::Instant;

/// One destination, connected when first needed and again after a connection error.
pub trait Destination: Send {
    fn server(&self) -> &ServerConfig;
    fn label(&self) -> String {
        self.server().label()
    }
    /// The connection for listings, small files and removals.
    fn remote(&mut self) -> Result<&mut dyn Remote>;
    /// Decide how many streams a large file goes over (and start making them).
    fn plan_streams(&mut self) -> Result<()>;
    /// Upload one file the plan decided to send.
    fn upload(&mut self, file: &LocalFile, upload: Upload) -> Result<Copied>;
    /// The first attempt at all of a set's files at once, when the kind gains from it;
    /// outcomes by index in `files` (a file missing was not tried). `set`: the restore set
    /// they make, whose manifest may be written ahead (see `staged`); `listing`: what the
    /// destination held a moment ago.
    fn side_by_side(
        &mut self,
        _files: &[LocalFile],
        _sent: &[SealedUpload],
        _set_and_listing: (Option<&RestoreSet>, &[RemoteEntry]),
    ) -> HashMap<usize, Result<Copied>> {
        HashMap::new()
    }
    /// Claim the destination (`node`'s marker, which `claim::unclaimed` showed missing) on
    /// the connection of one of the set's first uploads, beside them: their final names wait
    /// for it (`gate::Gate`). See `claimed_beside`.
    fn claim_beside(&mut self, _node: &str) {}
    /// The outcome of the claim run beside the first uploads, the request withdrawn; None
    /// when none ran (then nothing was published, and the caller claims first).
    fn claimed_beside(&mut self) -> Option<Result<crate::claim::Claimed>> {
        None
    }
    /// Small files written ahead under their partial names while the large one was still on
    /// its way (its checksum file, the set's manifest): only their renames are left.
    fn staged(&self) -> Option<&Staged> {
        None
    }
    /// The set's files are done: extra connections may go. When every one is there
    /// (`whole`), one may first test immutability and another list the destination for the
    /// count of sets (see `probed_beside`, `listed_beside`); else neither, and a verdict
    /// already made is dropped (a failed or stopped night gives none).
    fn release_extras(&mut self, _whole: bool) {}
    /// Tonight's immutability test may run on a connection the set's files no longer need:
    /// one that carried a small file while the large one is still on its way, or one of the
    /// extras once they are released (asked for before the set's files; see `probed_beside`).
    fn probe_beside(&mut self, _now: crate::names::Stamp) {}
    /// The verdict of the test run beside, the request withdrawn; None when none ran (the
    /// caller then tests on the main connection, or on a failed night not at all).
    fn probed_beside(&mut self) -> Option<Result<crate::immutable::Verdict>> {
        None
    }
    /// The destination listed on a released extra connection once every file of the set was
    /// there (beside the manifest and pruning); None when none was made.
    fn listed_beside(&mut self) -> Option<Result<Option<Vec<RemoteEntry>>>> {
        None
    }
    /// Drop every connection (after a transfer error; the next call makes new ones).
    fn reset(&mut self);
}

/// Decrypt a destination's password (or S3 secret key) when there is one; also check that
/// an identity file exists. `ini` names the configuration in messages.
pub fn credentials(server: &ServerConfig, ini: &std::path::Path) -> Result<Option<Secret>> {
    if let Some(identity) = &server.identity_file {
        if !identity.is_file() {
            return Err(Error::config(format!(
                "{}: identity_file {} of destination {} does not exist",
                ini.display(),
                identity.display(),
                server.name
            )));
        }
        if let Err(err) = crate::secret::check_identity_is_private(identity) {
            log::warn!("{err}");
        }
    }
    match (&server.password_token, &server.key_file) {
        (Some(token), Some(key)) => {
            crate::secret::check_key_is_private(key)?;
            crate::secret::decrypt_password(token, key, ini).map(Some)
        }
        _ => Ok(None),
    }
}

/// A connection to `server` for a command that lists, reads or removes files (`list`,
/// `fetch`, `check`, `--dry-run`), with its password or secret key from the INI at `ini`.
/// `record_host_key`: whether a new SFTP host's key may be written under accept-new (`fetch`
/// on a rebuilt node must; `list` only reads).
pub fn connect(
    server: &ServerConfig,
    ini: &std::path::Path,
    record_host_key: bool,
) -> Result<Box<dyn Remote + Send>> {
    connect_telling(server, ini, record_host_key, None)
}

/// `connect`, telling `on_round_trip` the round trip as soon as an SFTP connection has
/// logged in (S3: never), so more connections can start while it starts SFTP.
pub fn connect_telling(
    server: &ServerConfig,
    ini: &std::path::Path,
    record_host_key: bool,
    on_round_trip: Option<&(dyn Fn(std::time::Duration) + Sync)>,
) -> Result<Box<dyn Remote + Send>> {
    let password = credentials(server, ini)?;
    match &server.kind {
        DestinationKind::Sftp => {
            let connected = crate::remote::sftp::connect(crate::remote::sftp::ConnectOptions {
                server,
                password: password.as_ref(),
                record_host_key,
                on_round_trip,
                on_handshake: None,
                after: None,
            })?;
            if let crate::remote::known_hosts::Verified::Recorded { fingerprint } =
                &connected.host_key
            {
                if record_host_key {
                    log::warn!(
                        "new host: recorded its key {fingerprint} in {} (host_key_policy = \
                         accept-new)",
                        server.known_hosts.display()
                    );
                }
            }
            Ok(Box::new(connected.remote))
        }
        DestinationKind::S3(_) => {
            let secret = s3_secret(server, password)?;
            Ok(Box::new(crate::remote::s3::S3Remote::new(server, &secret)?))
        }
    }
}

/// `count` more connections to `server` at once (SFTP handshakes in parallel; S3 clients
/// are only made: they connect as they send).
pub fn connect_several(
    server: &ServerConfig,
    ini: &std::path::Path,
    count: usize,
) -> Vec<Result<Box<dyn Remote + Send>>> {
    let password = match credentials(server, ini) {
        Ok(password) => password,
        Err(err) => return vec![Err(err)],
    };
    match &server.kind {
        DestinationKind::Sftp => {
            let options = crate::remote::sftp::ConnectOptions {
                server,
                password: password.as_ref(),
                record_host_key: false,
                on_round_trip: None,
                on_handshake: None,
                after: None,
            };
            crate::remote::sftp::connect_several(options, count)
                .into_iter()
                .map(|outcome| outcome.map(|r| Box::new(r) as Box<dyn Remote + Send>))
                .collect()
        }
        DestinationKind::S3(_) => (0..count).map(|_| connect(server, ini, false)).collect(),
    }
}

/// An S3 destination's secret key: its decrypted `password`, which it cannot do without.
fn s3_secret(server: &ServerConfig, password: Option<Secret>) -> Result<Secret> {
    password.ok_or_else(|| {
        Error::config(format!(
            "{}: an S3 destination needs its secret key as `password`",
            server.describe()
        ))
    })
}

/// The destination `server` describes, not yet connected. `password`: the SFTP password or
/// the S3 secret key; `files`: tonight's, to know whether several streams will be wanted.
pub fn open(
    server: &ServerConfig,
    password: Option<Secret>,
    files: &[LocalFile],
) -> Result<Box<dyn Destination>> {
    let parallel = server.streams != crate::config::Streams::Fixed(1)
        && files
            .iter()
            .any(|file| file.size >= transfer::PARALLEL_THRESHOLD);
    Ok(match &server.kind {
        DestinationKind::Sftp => Box::new(sftp::SftpDestination::new(server, password, parallel)),
        DestinationKind::S3(_) => {
            let secret = s3_secret(server, password)?;
            Box::new(s3::S3Destination::new(server, &secret, parallel)?)
        }
    })
}

pub struct RetryPolicy {
    retries: u32,
    wait: u64,
    /// Time spent waiting between attempts: not part of the copy time.
    pub waited: std::cell::Cell<std::time::Duration>,
}

impl RetryPolicy {
    pub fn of(server: &ServerConfig) -> RetryPolicy {
        RetryPolicy {
            retries: server.retries,
            wait: server.retry_wait,
            waited: Default::default(),
        }
    }
}

/// Run `op` on the remote; after a connection or transfer error, reconnect and try again
/// (waiting `wait` seconds, doubling), up to `retries` more times. Other errors end at once.
pub fn retry<T>(
    policy: &RetryPolicy,
    link: &mut dyn Destination,
    mut op: impl FnMut(&mut dyn Destination) -> Result<T>,
) -> Result<T> {
    let mut wait = policy.wait;
    let mut attempt = 0;
    loop {
        signals::check("the copy")?;
        let result = op(link);
        match result {
            Ok(value) => return Ok(value),
            Err(err)
                if err.transient && attempt < policy.retries && signals::received().is_none() =>
            {
                attempt += 1;
                log::warn!("{err}; retry {attempt} of {} in {wait} s", policy.retries);
                link.reset();
                let asleep = Instant::now();
                let slept = signals::sleep(wait);
                policy.waited.set(policy.waited.get() + asleep.elapsed());
                slept?;
                wait = wait.saturating_mul(2);
            }
            Err(err) => {
                if err.transient {
                    link.reset();
                }
                return Err(err);
            }
        }
    }
}

pub enum Copied {
    AlreadyThere {
        file: RemoteFile,
        digest: String,
    },
    Uploaded {
        file: RemoteFile,
        /// A file of that name was there before: other sets' manifests may list its old sha256.
        replaced: bool,
        done: transfer::Uploaded,
        seconds: f64,
        /// Connections it went over.
        streams: usize,
    },
}

impl Copied {
    /// The file as the server holds it, and the sha256 it was verified with.
    pub fn verified(&self) -> (RemoteFile, &str) {
        match self {
            Copied::AlreadyThere { file, digest } => (*file, digest),
            Copied::Uploaded { file, done, .. } => (*file, &done.digest),
        }
    }
}

/// One file, as one retryable unit: look at the remote, decide, upload if needed. `sent`:
/// the encrypted copies this node sent (`state::History::sealed`).
pub fn copy_one(
    destination: &mut dyn Destination,
    file: &LocalFile,
    sent: &[SealedUpload],
) -> Result<Copied> {
    let recipients = destination.server().encrypt_to.clone();
    let encryption = recipients
        .as_deref()
        .map(|r| (r.fingerprint.as_str(), sent));
    let remote = destination.remote()?;
    let listing = remote.list()?.unwrap_or_default();
    match plan::decide(&gather_facts(remote, &listing, file, encryption)?) {
        CopyDecision::AlreadyThere { file, digest, .. } => {
            Ok(Copied::AlreadyThere { file, digest })
        }
        CopyDecision::Upload {
            file: target,
            size,
            why,
        } => {
            let seen = Seen::in_listing(&listing, target);
            destination.upload(
                file,
                Upload {
                    target,
                    size,
                    why,
                    seen,
                },
            )
        }
    }
}

/// The first look at a set's files, from one listing: the outcomes of those already there
/// (by index in `files`) and the uploads the plan wants for the others.
#[allow(clippy::type_complexity)]
pub(crate) fn first_look(
    remote: &mut dyn Remote,
    files: &[LocalFile],
    (recipients, sent): (Option<&crate::seal::Recipients>, &[SealedUpload]),
    listing: &[RemoteEntry],
) -> Result<(HashMap<usize, Result<Copied>>, Vec<(usize, Upload)>)> {
    let mut outcomes = HashMap::new();
    let mut uploads = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let encryption = recipients.map(|r| (r.fingerprint.as_str(), sent));
        match plan::decide(&gather_facts(remote, listing, file, encryption)?) {
            CopyDecision::AlreadyThere { file, digest, .. } => {
                outcomes.insert(index, Ok(Copied::AlreadyThere { file, digest }));
            }
            CopyDecision::Upload {
                file: target,
                size,
                why,
            } => uploads.push((
                index,
                Upload {
                    target,
                    size,
                    why,
                    seen: Seen::in_listing(listing, target),
                },
            )),
        }
    }
    Ok((outcomes, uploads))
}

/// A file to upload, as the listing and the plan saw it.
#[derive(Clone, Copy)]
pub struct Upload {
    /// NAME, or NAME.age when the run encrypts.
    pub target: RemoteFile,
    pub size: u64,
    pub why: &'static str,
    pub seen: Seen,
}

/// What the run encrypts to (the recipients' fingerprint) and the encrypted copies this node
/// sent before; None: the run does not encrypt.
pub(crate) type Encryption<'a> = Option<(&'a str, &'a [SealedUpload])>;

pub(crate) fn gather_facts(
    remote: &mut dyn Remote,
    listing: &[RemoteEntry],
    file: &LocalFile,
    encryption: Encryption,
) -> Result<FileFacts> {
    let plain = RemoteFile::plain(file.name);
    let sealed = RemoteFile::new(file.name, true);
    let size_of = |form: RemoteFile| {
        let name = form.file_name();
        listing.iter().find(|e| e.name == name).map(|e| e.size)
    };
    let mut facts = FileFacts {
        name: file.name,
        local_size: file.size,
        remote_size: size_of(plain),
        remote_digest: None,
        local_digest: None,
        sealed_copy: None,
        encrypt: encryption.is_some(),
    };
    // A copy the last read-back found damaged is never "already there"; an append-only
    // server cannot have it replaced, which is said before anything is sent.
    if file.replace_remote && remote.append_only() {
        let tonight = RemoteFile::new(file.name, encryption.is_some());
        if size_of(tonight).is_some() {
            let there = tonight;
            return Err(Error::copy(format!(
                "{there} on {} was found damaged by the last read-back, and the destination \
                 is append_only: the node never replaces a file there. Remove it and its \
                 .sha256 on the server (as their owner) and the next night copies it again",
                remote.describe()
            )));
        }
    }
    if facts.remote_size == Some(file.size) && !file.replace_remote {
        facts.remote_digest = transfer::read_sidecar(remote, plain)?;
    }
    if let Some(size) = size_of(sealed) {
        let sent = encryption.and_then(|(recipients, uploads)| {
            uploads
                .iter()
                .find(|u| {
                    u.name == sealed.file_name()
                        && u.recipients == recipients
                        && u.local_bytes == file.size
                })
                .map(|u| (u.bytes, u.sha256.clone()))
        });
        let sent = sent.filter(|_| !file.replace_remote);
        let listed = listing.iter().any(|e| e.name == sealed.sidecar_name());
        // One round trip less when it could not count anyway.
        let digest = if listed && sent.is_some() {
            transfer::read_sidecar(remote, sealed)?
        } else {
            None
        };
        facts.sealed_copy = Some(SealedCopy { size, digest, sent });
    }
    if plan::needs_local_digest(&facts) {
        facts.local_digest = Some(transfer::sha256_file(&file.path)?);
    }
    Ok(facts)
}
