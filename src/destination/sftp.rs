//! An SFTP server's folder: today's connection (`Link`), several streams for a large file,
//! and the first attempt at a set's files side by side.

use super::{Copied, Destination, Upload};
use crate::claim::{self, Claimed};
use crate::config::{ServerConfig, Streams};
use crate::error::{Error, Result};
use crate::gate::{Gate, Settles};
use crate::immutable::Verdict;
use crate::names::Stamp;
use crate::names::{sidecar_line, BackupName, RemoteFile};
use crate::progress;
use crate::remote::known_hosts::Verified;
use crate::remote::sftp::{self, ConnectOptions, SftpRemote};
use crate::remote::{Remote, RemoteEntry};
use crate::run::LocalFile;
use crate::seal::Recipients;
use crate::secret::Secret;
use crate::sets::{self, RestoreSet};
use crate::staged::{lock, LargeUpload, Staged};
use crate::state::SealedUpload;
use crate::transfer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The connection to the backup server, made when first needed and made again after a
/// connection or transfer error.
pub struct SftpDestination {
    server: Arc<ServerConfig>,
    password: Option<Arc<Secret>>,
    remote: Option<SftpRemote>,
    /// More connections for parallel streams.
    extra: Vec<SftpRemote>,
    /// Those connections being made in the background while the main one looks at the
    /// destination: on a WAN each handshake costs several round trips.
    /// Batches of them on their way, each with its size.
    connecting: Vec<(usize, Batch)>,
    /// Whether a file of the restore set is large enough for several streams.
    parallel: bool,
    /// How many streams a large file goes over, and why: decided once the first
    /// connection has measured the round trip (`streams = auto`), or as configured.
    streams: Option<(usize, String)>,
    /// How many extra connections a large file will want.
    wanted_extra: usize,
    /// The extra connections closing in the background once the set's files are done.
    releasing: Vec<std::thread::JoinHandle<()>>,
    /// Tonight's immutability test, asked for before the set's files: it runs on the
    /// connection of a small file once that file is there (while the large one is still on
    /// its way), else on one of the streams' connections when they are released. On a long
    /// link its 20-odd round trips would otherwise follow the manifest.
    probe_at: Option<Stamp>,
    /// That test: its verdict when it ran beside a small file, else running beside the
    /// manifest and the pruning on a released connection.
    probe: Option<Beside<Verdict>>,
    /// The destination listed for the count of sets: by the connection that wrote ahead
    /// (before the large file's rename: it may not list that one yet), else on a released
    /// connection beside the manifest.
    listing: Option<Beside<Option<Vec<RemoteEntry>>>>,
    /// The large file's checksum file and the set's manifest, written ahead on the
    /// connection of the last small file done.
    staged: Arc<Staged>,
    /// The node to claim the destination for beside the set's first uploads, and the
    /// outcome once that ran.
    claim_for: Option<String>,
    claimed: Option<Result<Claimed>>,
}

impl Drop for SftpDestination {
    fn drop(&mut self) {
        // Made for a night that ended before they were used.
        for (_, batch) in self.connecting.drain(..) {
            for remote in batch.join().unwrap_or_default().into_iter().flatten() {
                remote.abandon();
            }
        }
        for releasing in self.releasing.drain(..) {
            let _ = releasing.join();
        }
        if let Some(probe) = self.probe.take() {
            let _ = probe.outcome("");
        }
        if let Some(listing) = self.listing.take() {
            let _ = listing.outcome("");
        }
        // The night is done: no round trip waits for the server to answer the closes.
        if let Some(remote) = self.remote.take() {
            remote.finish();
        }
        self.extra.drain(..).for_each(SftpRemote::finish);
    }
}

impl SftpDestination {
    pub fn new(server: &ServerConfig, password: Option<Secret>, parallel: bool) -> Self {
        SftpDestination {
            server: Arc::new(server.clone()),
            password: password.map(Arc::new),
            remote: None,
            extra: Vec::new(),
            connecting: Vec::new(),
            parallel,
            streams: None,
            wanted_extra: 0,
            releasing: Vec::new(),
            probe_at: None,
            probe: None,
            listing: None,
            staged: Arc::default(),
            claim_for: None,
            claimed: None,
        }
    }

    fn connection(&mut self) -> Result<&mut SftpRemote> {
        if self.remote.is_none() {
            // The first time, a large file's extra connections start as soon as this one's
            // SSH handshake is done: theirs runs while this one logs in, which they wait for
            // before they check the host key (a new host's is recorded for them to check)
            // and log in (a wrong password fails once, not once per stream); they are ready
            // about when this one has started SFTP and listed the destination.
            let early = Mutex::new(None);
            let first = Arc::new(Gate::held());
            let (server, password) = (self.server.clone(), self.password.clone());
            let wanted = self.parallel && self.streams.is_none();
            let (early_ref, first_ref) = (&early, &first);
            let start_early = move |handshake: Duration| {
                let least = sftp::round_trip_from_handshake(handshake);
                let extra = early_extras(&server, least);
                if extra > 0 {
                    let after = Some(first_ref.clone());
                    let batch = connect_batch(server.clone(), password.clone(), extra, after);
                    *lock(early_ref) = Some((extra, batch));
                }
            };
            let logged_in = |_: Duration| first.settle(Ok(()));
            // Settled whatever happens, even a panic: no connection waits for ever.
            let _settles = Settles(&first, "the first connection's attempt crashed");
            let connected = sftp::connect(ConnectOptions {
                server: &self.server,
                password: self.password.as_deref(),
                record_host_key: true,
                on_round_trip: wanted.then_some(&logged_in as &(dyn Fn(Duration) + Sync)),
                on_handshake: wanted.then_some(&start_early as &(dyn Fn(Duration) + Sync)),
                after: None,
            });
            let failed = Error::connect("the first connection did not log in");
            first.settle(connected.as_ref().map(|_| ()).map_err(|_| &failed));
            if let Some(batch) = early.into_inner().ok().flatten() {
                if connected.is_ok() {
                    self.connecting.push(batch);
                } else {
                    // They end at once, told the first did not log in.
                    self.releasing.push(std::thread::spawn(move || {
                        batch
                            .1
                            .join()
                            .unwrap_or_default()
                            .into_iter()
                            .flatten()
                            .for_each(SftpRemote::abandon)
                    }));
                }
            }
            let connected = connected?;
            if let Verified::Recorded { fingerprint } = &connected.host_key {
                log::warn!(
                    "new host {}: recorded its key {fingerprint} in {} (host_key_policy = accept-new)",
                    crate::remote::known_hosts::host_pattern(&self.server.host, self.server.port),
                    self.server.known_hosts.display()
                );
            }
            log::info!(
                "connected to {} (cipher {})",
                connected.remote.describe(),
                connected.cipher
            );
            self.remote = Some(connected.remote);
            // Only now: the main connection records a new host's key the others check.
            // (Once streams are decided: after a reconnection.)
            if self.streams.is_some() {
                self.start_connecting(self.wanted_extra.saturating_sub(self.extra.len()));
            }
        }
        self.remote
            .as_mut()
            .ok_or_else(|| Error::connect("internal error: no connection"))
    }

    /// Decide how many streams a large file goes over (for `auto`, from the round trip
    /// measured on the first connection) and start connecting the extra ones.
    fn plan(&mut self) -> Result<()> {
        if self.streams.is_none() {
            let round_trip = self.connection()?.measure_round_trip();
            let (count, why) = streams_for(&self.server, round_trip);
            if self.parallel {
                log::info!("large files go over {count} stream(s): {why}");
                self.wanted_extra = count - 1;
            }
            self.streams = Some((count, why));
        }
        self.connection()?;
        self.start_connecting(self.wanted_extra.saturating_sub(self.extra.len()));
        Ok(())
    }

    /// Start making connections until `missing` more are on their way.
    fn start_connecting(&mut self, missing: usize) {
        let on_their_way: usize = self.connecting.iter().map(|(count, _)| count).sum();
        let count = missing.saturating_sub(on_their_way);
        if count == 0 {
            return;
        }
        let batch = connect_batch(self.server.clone(), self.password.clone(), count, None);
        self.connecting.push((count, batch));
    }

    /// Collect the background connections. A server that refuses some (MaxStartups, a
    /// per-user limit) still gets the file, over those it accepted: a warning, not an error.
    fn finish_connecting(&mut self) {
        if self.connecting.is_empty() {
            return;
        }
        let outcomes: Vec<Result<SftpRemote>> = std::mem::take(&mut self.connecting)
            .into_iter()
            .flat_map(|(_, batch)| {
                batch
                    .join()
                    .unwrap_or_else(|_| vec![Err(Error::connect("a connection attempt crashed"))])
            })
            .collect();
        let asked = outcomes.len();
        let mut refused = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(remote) => self.extra.push(remote),
                Err(err) => refused.push(err.message),
            }
        }
        if let Some(first) = refused.first() {
            // Asking again for each file would meet the same limit.
            self.wanted_extra = self.wanted_extra.min(self.extra.len());
            log::warn!(
                "the server accepted {} of {asked} extra connections ({first}): large files go \
                 over {} streams; set `streams` lower to silence this",
                asked - refused.len(),
                self.wanted_extra + 1
            );
        }
    }

    /// Up to `count` connections (the main one first), for a parallel upload: as many as
    /// the server accepts, at least the main one.
    fn streams(&mut self, count: usize) -> Result<Vec<&mut (dyn Remote + Send)>> {
        self.connection()?;
        self.finish_connecting();
        if self.extra.len() > self.wanted_extra {
            // Started on the estimate made while the first logged in, which the round trip
            // measured since lowered.
            let surplus = self.extra.split_off(self.wanted_extra);
            self.releasing.push(sftp::release_all(surplus));
        }
        let wanted = count.min(self.wanted_extra + 1);
        self.start_connecting(wanted.saturating_sub(self.extra.len() + 1));
        self.finish_connecting();
        let mut all: Vec<&mut (dyn Remote + Send)> = Vec::with_capacity(count);
        if let Some(main) = self.remote.as_mut() {
            all.push(main);
        }
        for remote in self.extra.iter_mut().take(count - 1) {
            all.push(remote);
        }
        Ok(all)
    }

    /// The set's files are done: close the extra connections in the background while the
    /// main one writes the manifest and prunes; one of them first runs tonight's
    /// immutability test when it was asked for and has not run yet, another lists the
    /// destination for the count of sets (no connection more than the streams had).
    fn release(&mut self, whole: bool) {
        self.finish_connecting();
        self.wanted_extra = 0;
        if !whole {
            self.probe_at = None;
            self.probe = None;
            self.listing = None;
        }
        let untested = self.probe.is_none();
        if let (Some(now), true) = (self.probe_at, untested) {
            if let Some(mut remote) = self.extra.pop() {
                self.probe_at = None;
                let server = self.server.clone();
                let context = crate::logging::context();
                self.probe = Some(Beside::Running(std::thread::spawn(move || {
                    crate::logging::set_context(context);
                    let verdict = crate::immutable::probe(&mut remote, &server, now);
                    remote.finish();
                    verdict
                })));
            }
        }
        if self.listing.is_none() && whole {
            if let Some(mut remote) = self.extra.pop() {
                self.listing = Some(Beside::Running(std::thread::spawn(move || {
                    let listed = remote.list();
                    remote.finish();
                    listed
                })));
            }
        }
        if !self.extra.is_empty() {
            self.releasing
                .push(sftp::release_all(std::mem::take(&mut self.extra)));
        }
    }

    fn drop_connections(&mut self) {
        if let Some(remote) = self.remote.take() {
            remote.abandon();
        }
        for (_, batch) in self.connecting.drain(..) {
            for remote in batch.join().unwrap_or_default().into_iter().flatten() {
                remote.abandon();
            }
        }
        for remote in self.extra.drain(..) {
            remote.abandon();
        }
    }
}

impl Destination for SftpDestination {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn remote(&mut self) -> Result<&mut dyn Remote> {
        Ok(self.connection()?)
    }

    fn plan_streams(&mut self) -> Result<()> {
        self.plan()
    }

    /// Over several streams when the file is large and they were planned, else the main one.
    fn upload(&mut self, file: &LocalFile, upload: Upload) -> Result<Copied> {
        let (recipients, staged) = (self.server.encrypt_to.clone(), self.staged.clone());
        let (streams, because) = self.streams.clone().unwrap_or((1, String::new()));
        let mut remotes = if streams > 1 && upload.size >= transfer::PARALLEL_THRESHOLD {
            self.streams(streams)?
        } else {
            let main: &mut (dyn Remote + Send) = self.connection()?;
            vec![main]
        };
        upload_over(
            &mut remotes,
            file,
            upload,
            (&because, recipients.as_deref(), Some(&staged)),
        )
    }

    fn side_by_side(
        &mut self,
        files: &[LocalFile],
        sent: &[SealedUpload],
        set_and_listing: (Option<&RestoreSet>, &[RemoteEntry]),
    ) -> HashMap<usize, Result<Copied>> {
        if self.wanted_extra > 0 && files.len() > 1 {
            side_by_side(self, files, sent, set_and_listing)
        } else {
            HashMap::new()
        }
    }

    fn staged(&self) -> Option<&Staged> {
        Some(&self.staged)
    }

    fn claim_beside(&mut self, node: &str) {
        self.claim_for = Some(node.to_string());
    }

    fn claimed_beside(&mut self) -> Option<Result<Claimed>> {
        self.claim_for = None;
        self.claimed.take()
    }

    fn release_extras(&mut self, whole: bool) {
        self.release(whole)
    }

    fn probe_beside(&mut self, now: Stamp) {
        self.probe_at = Some(now);
    }

    fn probed_beside(&mut self) -> Option<Result<Verdict>> {
        self.probe_at = None;
        Some(self.probe.take()?.outcome("the immutability test crashed"))
    }

    fn listed_beside(&mut self) -> Option<Result<Option<Vec<RemoteEntry>>>> {
        Some(
            self.listing
                .take()?
                .outcome("listing the destination crashed"),
        )
    }

    fn reset(&mut self) {
        self.drop_connections()
    }
}

/// Why the uploads beside a claim that never settled fail (they are tried again).
const CLAIM_CRASHED: &str = "the claim of the destination crashed";

/// Extra connections to start as soon as the first has logged in, on the round trip its
/// login suggests (a few ms under the one the listing then measures): for `streams = auto`
/// one spare when several are wanted and the budget holds more, since a connection started
/// only after the listing makes the first byte wait for its handshake (a surplus one is
/// closed unused).
fn early_extras(server: &ServerConfig, least: Duration) -> usize {
    let streams = streams_for(server, least).0;
    let most = transfer::IN_FLIGHT_BUDGET / transfer::IN_FLIGHT;
    let spare = server.streams == Streams::Auto && streams > 1 && streams < most;
    streams - 1 + usize::from(spare)
}

/// How many streams a large file goes over, and why.
fn streams_for(server: &ServerConfig, round_trip: Duration) -> (usize, String) {
    match server.streams {
        // A file created read-only can be written only through the handle that created it:
        // no second connection can write its other ranges.
        _ if server.append_only => (1, "append_only = yes".to_string()),
        Streams::Auto => transfer::auto_streams(round_trip),
        Streams::Fixed(n) => (n, format!("streams = {n}")),
    }
}

/// Work on a connection the set's files no longer need: done already, or running on a
/// thread of its own.
enum Beside<T> {
    Done(Result<T>),
    Running(std::thread::JoinHandle<Result<T>>),
}

impl<T> Beside<T> {
    /// Its outcome, waiting for it when it still runs (`crashed`: when its thread panicked).
    fn outcome(self, crashed: &str) -> Result<T> {
        match self {
            Beside::Done(outcome) => outcome,
            Beside::Running(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(Error::connect(crashed))),
        }
    }
}

/// The set's members verified so far: each as the server holds it, with its sha256.
type VerifiedSoFar = Mutex<HashMap<BackupName, (RemoteFile, String)>>;

type Batch = std::thread::JoinHandle<Vec<Result<SftpRemote>>>;

/// `count` more connections made side by side in the background.
/// (`after`: started beside the first, whose login they wait for.)
fn connect_batch(
    server: Arc<ServerConfig>,
    password: Option<Arc<Secret>>,
    count: usize,
    after: Option<Arc<Gate>>,
) -> Batch {
    std::thread::spawn(move || {
        let options = ConnectOptions {
            server: &server,
            password: password.as_deref(),
            record_host_key: false,
            on_round_trip: None,
            on_handshake: None,
            after: after.as_deref(),
        };
        sftp::connect_several(options, count)
    })
}

/// Upload over the connections given: several streams for a large file, else the first.
fn upload_over(
    remotes: &mut [&mut (dyn Remote + Send)],
    file: &LocalFile,
    upload: Upload,
    (because, recipients, staged): (&str, Option<&Recipients>, Option<&Staged>),
) -> Result<Copied> {
    let Upload {
        target,
        size,
        why,
        seen,
    } = upload;
    let started = Instant::now();
    let bar = progress::bar(size, &target.file_name());
    let used = if remotes.len() > 1 && size >= transfer::PARALLEL_THRESHOLD {
        remotes.len()
    } else {
        1
    };
    let done = if used > 1 {
        log::info!("{target}: uploading {size} bytes over {used} streams ({why}; {because})");
        transfer::upload_parallel(
            remotes,
            transfer::Source::of(file, seen).staged(staged),
            (target, recipients),
            seen,
            &bar,
        )
    } else {
        log::info!("{target}: uploading {size} bytes ({why})");
        transfer::upload(
            &mut *remotes[0],
            transfer::Source::of(file, seen).staged(staged),
            (target, recipients),
            seen,
            &bar,
        )
    };
    bar.finish_and_clear();
    Ok(Copied::Uploaded {
        file: target,
        replaced: seen.finals,
        done: done?,
        seconds: started.elapsed().as_secs_f64(),
        streams: used,
    })
}

/// The first attempt at a set's files when there are several connections: one listing,
/// then every upload at once (the largest over the streams left once each other file has
/// one), so the round trips of the small files hide behind the large one; the first small
/// file there lends its connection to tonight's immutability test, when asked for, and the
/// last writes the large file's checksum file and the set's manifest ahead (see
/// `write_ahead`). What fails here (outcomes by index in `files`; a file missing was not
/// tried) gets the usual retries, one file at a time.
fn side_by_side(
    link: &mut SftpDestination,
    files: &[LocalFile],
    sent: &[SealedUpload],
    (set, listing): (Option<&RestoreSet>, &[RemoteEntry]),
) -> HashMap<usize, Result<Copied>> {
    let recipients = link.server.encrypt_to.clone();
    let recipients = recipients.as_deref();
    let looked = link
        .connection()
        .and_then(|remote| super::first_look(remote, files, (recipients, sent), listing));
    let (mut outcomes, mut uploads) = match looked {
        Ok(looked) => looked,
        Err(err) => {
            if err.transient {
                link.drop_connections();
            }
            return HashMap::new();
        }
    };
    // The largest first: it takes the streams the others leave.
    uploads.sort_by_key(|(_, upload)| std::cmp::Reverse(upload.size));
    let (count, because) = link.streams.clone().unwrap_or((1, String::new()));
    let (server, probe_at, staged) = (link.server.clone(), link.probe_at, link.staged.clone());
    let claim_for = link.claim_for.take();
    let mut remotes = match link.streams(count) {
        Ok(remotes) if remotes.len() >= uploads.len() && !uploads.is_empty() => remotes,
        _ => return outcomes,
    };
    let for_largest = remotes.len() - (uploads.len() - 1);
    let (largest, others) = remotes.split_at_mut(for_largest);
    // The claim runs on the smallest file's connection before its upload, the others
    // starting meanwhile; with no small file to send, on the main one first.
    let claimed: Mutex<Option<Result<Claimed>>> = Mutex::new(None);
    if let (Some(node), true) = (&claim_for, others.is_empty()) {
        let outcome = claim::claim_listed(&mut *largest[0], node, Some(listing));
        if outcome.is_err() {
            link.claimed = Some(outcome);
            return outcomes;
        }
        *lock(&claimed) = Some(outcome);
    }
    let claim_beside = claim_for.filter(|_| !others.is_empty());
    if claim_beside.is_some() {
        staged.claim.hold();
    }
    let probe = ProbeOnce::new(probe_at, &server);
    // What the manifest written ahead lists: the members there already, then each small
    // file as it is verified.
    let verified: VerifiedSoFar = Mutex::new(
        outcomes
            .values()
            .filter_map(|outcome| outcome.as_ref().ok())
            .map(|copied| {
                let (file, digest) = copied.verified();
                (file.name, (file, digest.to_string()))
            })
            .collect(),
    );
    let ahead = WriteAhead {
        staged: &staged,
        large: uploads[0].1.target,
        set,
        verified,
        sidecar_taken: AtomicBool::new(false),
        small_left: AtomicUsize::new(uploads.len() - 1),
        listed: Mutex::new(None),
    };
    let results: Vec<(usize, Result<Copied>)> = std::thread::scope(|scope| {
        let because = because.as_str();
        let (probe, staged, ahead) = (&probe, &*staged, &ahead);
        let (first, rest) = uploads.split_first().expect("not empty");
        // Were a thread not to start, the uploads already started must not wait on a
        // claim that never runs; once all have started, the claim's own thread settles it.
        let unstarted = Settles(&staged.claim, CLAIM_CRASHED);
        let mut workers = vec![(first.0, {
            let (index, upload) = *first;
            let context = crate::logging::context();
            scope.spawn(move || {
                crate::logging::set_context(context);
                let _ended = LargeUpload(staged);
                let outcome = upload_over(
                    largest,
                    &files[index],
                    upload,
                    (because, recipients, Some(staged)),
                );
                // Too late to hide the test behind it: it runs after the set, as before.
                probe.too_late();
                outcome
            })
        })];
        for (at, ((index, upload), remote)) in
            rest.iter().copied().zip(others.iter_mut()).enumerate()
        {
            let context = crate::logging::context();
            let (claimed, claim_for) = (
                &claimed,
                claim_beside.as_deref().filter(|_| at + 1 == rest.len()),
            );
            workers.push((
                index,
                scope.spawn(move || {
                    crate::logging::set_context(context);
                    if let Some(node) = claim_for {
                        let _settles = Settles(&staged.claim, CLAIM_CRASHED);
                        let outcome = claim::claim_listed(&mut **remote, node, Some(listing));
                        staged.claim.settle(outcome.as_ref().map(|_| ()));
                        let failed = outcome.as_ref().err().cloned();
                        *lock(claimed) = Some(outcome);
                        if let Some(err) = failed {
                            return Err(err);
                        }
                    }
                    let outcome = upload_over(
                        std::slice::from_mut(remote),
                        &files[index],
                        upload,
                        (because, recipients, Some(staged)),
                    );
                    if let Ok(copied) = &outcome {
                        let (file, digest) = copied.verified();
                        lock(&ahead.verified).insert(file.name, (file, digest.to_string()));
                        probe.run_on(&mut **remote);
                    }
                    ahead.after_small_file(&mut **remote, outcome.is_ok());
                    outcome
                }),
            ));
        }
        std::mem::forget(unstarted);
        workers
            .into_iter()
            .map(|(index, worker)| {
                let outcome = worker.join().unwrap_or_else(|_| {
                    Err(Error::copy(format!(
                        "the upload of {} crashed",
                        files[index].name
                    )))
                });
                (index, outcome)
            })
            .collect()
    });
    // Later attempts publish at once: a failed claim is made again before them.
    staged.claim.open();
    if let Some(claimed) = claimed.into_inner().ok().flatten() {
        link.claimed = Some(claimed);
    }
    if let Some(listed) = ahead.listed.into_inner().ok().flatten() {
        link.listing = Some(Beside::Done(listed));
    }
    if let Some(verdict) = probe.verdict() {
        link.probe_at = None;
        link.probe = Some(Beside::Done(verdict));
    }
    if results
        .iter()
        .any(|(_, outcome)| outcome.as_ref().is_err_and(|err| err.transient))
    {
        link.drop_connections();
    }
    outcomes.extend(results);
    outcomes
}

/// What the connections of the small files write ahead once they are done, while the large
/// file is still on its way, so that after its last byte only renames are left: the first
/// writes its checksum file as soon as its sha256 is known (long before its last byte: it
/// is hashed from the page cache); the last, once every other member is verified, the set's
/// manifest, then lists the destination for the count of sets. Nothing more once the large
/// file's upload has ended: it would only make the set wait (its publisher then writes what
/// was not written ahead).
struct WriteAhead<'a> {
    staged: &'a Staged,
    large: RemoteFile,
    set: Option<&'a RestoreSet>,
    verified: VerifiedSoFar,
    sidecar_taken: AtomicBool,
    small_left: AtomicUsize,
    listed: Mutex<Option<Result<Option<Vec<RemoteEntry>>>>>,
}

impl WriteAhead<'_> {
    fn after_small_file(&self, remote: &mut dyn Remote, copied: bool) {
        let last = self.small_left.fetch_sub(1, Ordering::AcqRel) == 1;
        if !copied || crate::signals::received().is_some() {
            return;
        }
        let large = self.large;
        if !self.sidecar_taken.swap(true, Ordering::AcqRel) {
            let Some(digest) = self.staged.wait_hashed(&large.file_name()) else {
                return;
            };
            let line = sidecar_line(&digest, &large.file_name());
            if !self.stage(remote, &large.sidecar_name(), &line) {
                return;
            }
        }
        let Some(set) = self.set.filter(|_| last) else {
            return;
        };
        let Some(digest) = self.staged.wait_hashed(&large.file_name()) else {
            return;
        };
        let mut members = lock(&self.verified).clone();
        members.insert(large.name, (large, digest));
        if !set.files().iter().all(|name| members.contains_key(name)) {
            return;
        }
        let text = sets::manifest_of(set, &members);
        if self.stage(remote, &set.data.manifest_name(), &text)
            && self.staged.wait_hashed(&large.file_name()).is_some()
        {
            *lock(&self.listed) = Some(remote.list());
        }
    }

    /// Whether `name` may still be renamed from what was written ahead, or written the usual way.
    fn stage(&self, remote: &mut dyn Remote, name: &str, text: &str) -> bool {
        match self.staged.stage(remote, name, text.as_bytes()) {
            Ok(true) => {
                log::debug!(
                    "{name}: written ahead, to be renamed once {} is there",
                    self.large
                );
                true
            }
            // Its publisher came first.
            Ok(false) => true,
            Err(err) => {
                log::debug!(
                    "writing {name} ahead on {}: {err}; written after the set instead",
                    remote.describe()
                );
                false
            }
        }
    }
}

/// Tonight's immutability test on the first connection free for it (none after a stop).
struct ProbeOnce<'a> {
    at: Option<Stamp>,
    server: &'a ServerConfig,
    verdict: std::sync::Mutex<Option<Result<Verdict>>>,
    /// Run, or no longer to run here.
    taken: std::sync::atomic::AtomicBool,
}

impl<'a> ProbeOnce<'a> {
    fn new(at: Option<Stamp>, server: &'a ServerConfig) -> Self {
        ProbeOnce {
            at,
            server,
            verdict: std::sync::Mutex::new(None),
            taken: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn run_on(&self, remote: &mut dyn Remote) {
        let Some(now) = self.at else {
            return;
        };
        if crate::signals::received().is_some()
            || self.taken.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let verdict = crate::immutable::probe(remote, self.server, now);
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
    }

    /// The large file is done: a test started now would only make the set wait.
    fn too_late(&self) {
        self.taken.store(true, std::sync::atomic::Ordering::Release);
    }

    fn verdict(self) -> Option<Result<Verdict>> {
        self.verdict.into_inner().ok().flatten()
    }
}
