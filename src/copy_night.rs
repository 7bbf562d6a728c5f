//! One destination's part of a night: connect, claim, copy the set's files, write its
//! manifest, prune what `remote_limit` lets go, count what is there. Several run side by
//! side, each with its own connections and retries; what they share (the history) is
//! behind a lock and saved at once.

use crate::claim;
use crate::config::{self, ServerConfig};
use crate::destination::{self, copy_one, retry, Copied, Destination, RetryPolicy};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::names::{BackupName, Kind, RemoteFile, RemoteName, Stamp};
use crate::remote::{Remote, RemoteEntry};
use crate::restore_set::{RestoreSet, Selection};
use crate::retention::{self, Decision, Policy};
use crate::run::LocalFile;
use crate::safe_fs::Dir;
use crate::secret::Secret;
use crate::sets;
use crate::signals;
use crate::state::{self, CopiedFile, History, RunRecord, SealedUpload};
use crate::transfer;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// What every destination's part of the night shares.
pub struct Shared<'a> {
    pub history: Mutex<History>,
    /// The state folder, where the history is saved.
    pub state: &'a Dir,
    /// This node's name, for the destination's claim.
    pub node: String,
    /// The node's clock as the run started.
    pub now: Stamp,
    /// The INI, for messages about the password.
    pub ini: &'a Path,
}

impl Shared<'_> {
    /// Change the history and save it at once (a later crash must not forget it).
    pub fn update(&self, change: impl FnOnce(&mut History)) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        change(&mut history);
        if let Err(err) = state::save_history(self.state, &history) {
            log::warn!("cannot save {}: {err}", self.state.path().display());
        }
    }

    fn sealed(&self, destination: &str) -> Vec<SealedUpload> {
        self.history
            .lock()
            .map(|h| h.sealed_at(destination))
            .unwrap_or_default()
    }

    fn restate_of(&self, destination: &str) -> Vec<(String, String)> {
        self.history
            .lock()
            .map(|mut h| h.restate_on(destination).clone())
            .unwrap_or_default()
    }
}

/// What tonight asks of every destination.
pub struct Tonight<'a> {
    pub files: &'a [LocalFile],
    pub selection: &'a Selection,
    /// Remote pruning is allowed once the set is verified there (not after a failed backup).
    pub may_prune: bool,
    /// What tonight's backup wrote (empty without one): a damaged backup's files uploaded
    /// tonight are withdrawn, also when an earlier attempt tonight had begun to publish them.
    pub made: &'a std::collections::HashSet<BackupName>,
}

/// What one destination's part of the night did.
pub struct DestinationNight {
    pub name: String,
    /// Its part of the run's record: its files, bytes, errors, pruning and sets.
    pub record: RunRecord,
    pub code: ExitCode,
    /// Every file of the set and its manifest are verified there.
    pub verified: bool,
    /// Archives its upload found damaged (the backup, not the copy, failed).
    pub damaged: Vec<BackupName>,
}

/// Copy tonight's set to `server` (with its password or secret key, or why there is none).
pub fn copy_to(
    server: &ServerConfig,
    password: Result<Option<Secret>>,
    tonight: &Tonight,
    shared: &Shared,
) -> DestinationNight {
    let mut night = Night {
        server,
        shared,
        record: RunRecord {
            destination: server.label(),
            destination_name: Some(server.name.clone()),
            ..RunRecord::default()
        },
        code: ExitCode::Success,
        damaged: Vec::new(),
        pruned: Vec::new(),
    };
    let verified = night.run(password, tonight);
    if verified {
        night.record.restore_set = tonight.selection.set.as_ref().map(|s| s.data.file_name());
    }
    night.record.exit_code = night.code.code();
    night.record.destination_exit_code = Some(night.code.code());
    night.record.megabytes_per_second = megabytes_per_second(
        night.record.bytes_uploaded,
        night.record.copy_seconds.unwrap_or(0.0),
    );
    DestinationNight {
        name: server.name.clone(),
        record: night.record,
        code: night.code,
        verified,
        damaged: night.damaged,
    }
}

struct Night<'a> {
    server: &'a ServerConfig,
    shared: &'a Shared<'a>,
    record: RunRecord,
    code: ExitCode,
    damaged: Vec<BackupName>,
    /// What pruning removed there tonight (a listing made before it still shows them).
    pruned: Vec<BackupName>,
}

impl Night<'_> {
    fn fail(&mut self, err: Error) {
        log::error!("{err}");
        self.record.errors.push(err.message);
        self.code = self.code.most_severe(err.code);
    }

    /// Whether the set is verified there.
    fn run(&mut self, password: Result<Option<Secret>>, tonight: &Tonight) -> bool {
        let Tonight {
            files,
            selection,
            may_prune,
            made,
        } = *tonight;
        if files.is_empty() {
            return false;
        }
        let password = match password {
            Ok(password) => password,
            Err(err) => {
                log::warn!(
                    "copy to {} skipped: the password cannot be used",
                    self.server.describe()
                );
                self.fail(err);
                return false;
            }
        };
        let mut link = match destination::open(self.server, password, files) {
            Ok(link) => link,
            Err(err) => {
                self.fail(err);
                return false;
            }
        };
        let link = &mut *link;
        let files = &self.mark_damaged_copies(files);
        let (clock, policy) = (Instant::now(), RetryPolicy::of(self.server));
        let all_copied = self.copy_files(link, &policy, files, (selection.set.as_ref(), made));
        let waited = policy.waited.get();
        self.record.copy_seconds = Some(clock.elapsed().saturating_sub(waited).as_secs_f64());
        self.record.retry_wait_seconds = Some(waited.as_secs_f64());
        let verified = all_copied && selection.set.is_some();
        if signals::received().is_some() {
            return verified;
        }
        if self.server.s3().is_some_and(|s3| s3.lock.is_some()) {
            match link.remote() {
                Ok(remote) => self.extend_locks(remote, selection),
                Err(err) => log::warn!("cannot extend the locks there: {err}"),
            }
        }
        if !all_copied {
            log::warn!(
                "remote pruning skipped: not every file of the restore set is on the remote"
            );
            return verified;
        }
        if self.server.remote_limit > 0 && verified && may_prune {
            match link.remote() {
                Ok(remote) => self.prune_remote(remote, selection),
                Err(err) => log::warn!("remote pruning skipped: {err}"),
            }
        }
        self.count_remote_sets(link, selection.set.as_ref().map(|set| set.data));
        self.test_immutability(link);
        verified
    }

    /// Once a night: could an intruder holding these credentials destroy the copies there?
    /// A warning when it could, never a failure: the copy itself is good.
    fn test_immutability(&mut self, link: &mut dyn Destination) {
        let outcome = match link.probed_beside() {
            Some(Ok(verdict)) => Ok(verdict),
            beside => {
                if let Some(Err(err)) = beside {
                    log::info!(
                        "the immutability test beside the manifest failed ({err}): testing \
                         again on the main connection"
                    );
                }
                link.remote().and_then(|remote| {
                    crate::immutable::probe(remote, self.server, self.shared.now)
                })
            }
        };
        match outcome {
            Ok(verdict) => {
                self.record.immutable = Some(verdict.immutable);
                if verdict.immutable {
                    log::info!("immutable: {}", verdict.detail);
                } else {
                    log::warn!("{} is not immutable: {}", link.label(), verdict.detail);
                }
            }
            Err(err) => log::warn!("cannot test whether {} is immutable: {err}", link.label()),
        }
    }

    /// Claim the destination for this node, unless `beside` the first uploads it was
    /// already (a transient failure there is tried again here); false when it cannot be.
    fn claim(
        &mut self,
        link: &mut dyn Destination,
        policy: &RetryPolicy,
        listing: &[RemoteEntry],
        beside: Option<Result<claim::Claimed>>,
    ) -> bool {
        let node = self.shared.node.clone();
        let outcome = match beside {
            Some(Err(err)) if err.transient => {
                log::warn!("{err}; claiming {} again", link.label());
                None
            }
            other => other,
        };
        let outcome = outcome.unwrap_or_else(|| {
            retry(policy, link, |link| {
                claim::claim_listed(link.remote()?, &node, Some(listing))
            })
        });
        match outcome {
            Ok(claim::Claimed::Now) => log::info!(
                "claimed {} for this node ({node}): other nodes are refused there",
                link.label()
            ),
            Ok(claim::Claimed::Already) => {}
            Err(err) => {
                self.fail(err);
                return false;
            }
        }
        true
    }

    fn copy_files(
        &mut self,
        link: &mut dyn Destination,
        policy: &RetryPolicy,
        files: &[LocalFile],
        (set, made): (Option<&RestoreSet>, &HashSet<BackupName>),
    ) -> bool {
        // One listing serves the claim and the plan of every file.
        let listing = match retry(policy, link, |link| {
            let listed = link.remote()?.ensure_listed()?;
            link.plan_streams()?;
            Ok(listed)
        }) {
            Ok((created, listing)) => {
                if created {
                    log::info!("created the destination {}", link.label());
                }
                listing
            }
            Err(err) => {
                self.fail(err);
                return false;
            }
        };
        let node = self.shared.node.clone();
        // A destination nobody has claimed is claimed beside the first uploads (their final
        // names wait for it); one with a marker is read before anything is sent.
        let beside = match link.remote() {
            Ok(remote) => claim::unclaimed(remote, &listing),
            Err(err) => {
                self.fail(err);
                return false;
            }
        };
        if beside {
            link.claim_beside(&node);
        } else if !self.claim(link, policy, &listing, None) {
            return false;
        }
        // What the server holds of each file (NAME or NAME.age), and its sha256.
        let mut digests: HashMap<BackupName, (RemoteFile, String)> = HashMap::new();

        let mut all_ok = true;
        // Once an archive of the set is found damaged, the set's other archives stay here.
        let mut damage_found = false;
        // New names published tonight: withdrawn again if the backup turns out damaged.
        let mut published: Vec<RemoteFile> = Vec::new();
        let sealed = self.shared.sealed(&self.server.name);
        // Tonight's immutability test, beside the files when a connection is free for it.
        link.probe_beside(self.shared.now);
        let mut first_attempts = link.side_by_side(files, &sealed, (set, &listing));
        if beside {
            let claimed = link.claimed_beside();
            if !self.claim(link, policy, &listing, claimed) {
                return false;
            }
        }
        for (index, file) in files.iter().enumerate() {
            let first = first_attempts.remove(&index);
            // Once an archive is found damaged no other archive of the set is sent; one the
            // side-by-side start already sent is taken in (and withdrawn below).
            if damage_found
                && crate::archive::is_archive(&file.name.file_name())
                && !matches!(first, Some(Ok(_)))
            {
                continue;
            }
            let outcome = match first {
                Some(Err(err)) if err.transient && signals::received().is_none() => {
                    log::warn!("{err}; trying {} again on its own", file.name);
                    retry(policy, link, |link| copy_one(link, file, &sealed))
                }
                Some(outcome) => outcome,
                None => retry(policy, link, |link| copy_one(link, file, &sealed)),
            };
            match outcome {
                Ok(Copied::AlreadyThere {
                    file: there,
                    digest,
                }) => {
                    if there.sealed {
                        log::info!(
                            "{}: already on the remote as {there}, with its checksum file",
                            file.name
                        );
                    } else {
                        log::info!("{}: already on the remote, checksum matches", file.name);
                    }
                    digests.insert(file.name, (there, digest.clone()));
                    self.record.files.push(CopiedFile {
                        name: there.file_name(),
                        bytes: file.size,
                        uploaded: false,
                        sha256: Some(digest),
                        ..CopiedFile::default()
                    });
                }
                Ok(Copied::Uploaded {
                    file: sent,
                    replaced,
                    done,
                    seconds,
                    streams,
                }) => {
                    // Withdrawn if the backup turns out damaged: archives only (a failed
                    // night's log is copied all the same, to read why), and of those replaced,
                    // only tonight's own (a shared images file replaced stays: older sets
                    // list it).
                    if crate::archive::is_archive(&sent.name.file_name())
                        && (!replaced || made.contains(&sent.name))
                    {
                        published.push(sent);
                    }
                    let (destination, name) = (self.server.name.clone(), sent.file_name());
                    self.shared
                        .update(|history| history.mended(&destination, &name));
                    if replaced {
                        // Saved at once: other sets' manifests still list the old sha256.
                        let (name, digest) = (sent.file_name(), done.digest.clone());
                        let destination = self.server.name.clone();
                        self.shared.update(|history| {
                            let restate = history.restate_on(&destination);
                            restate.retain(|(n, _)| *n != name);
                            restate.push((name, digest));
                        });
                    }
                    log::info!(
                        "{}: copied and verified, {} bytes in {seconds:.1} s ({:.1} MB/s over \
                         {streams} stream{}; hashing added {:.2} s), sha256 {}",
                        sent,
                        done.bytes,
                        megabytes_per_second(done.bytes, seconds),
                        if streams == 1 { "" } else { "s" },
                        done.hash_seconds,
                        done.digest
                    );
                    if let Some(summary) = &done.archive {
                        log::info!(
                            "{}: a whole archive ({} files, {} bytes inflated; gzip CRC and tar \
                             checked as it was read)",
                            file.name,
                            summary.members,
                            summary.inflated
                        );
                        let (name, size) = (file.name, file.size);
                        self.shared
                            .update(|history| history.record_checked(name, size));
                    }
                    self.record.bytes_uploaded += done.bytes;
                    digests.insert(file.name, (sent, done.digest.clone()));
                    if let (true, Some(recipients)) = (sent.sealed, &self.server.encrypt_to) {
                        let upload = SealedUpload {
                            name: sent.file_name(),
                            sha256: done.digest.clone(),
                            bytes: done.bytes,
                            local_bytes: file.size,
                            recipients: recipients.fingerprint.clone(),
                            destination: (!self.server.name.eq_ignore_ascii_case(config::MAIN))
                                .then(|| self.server.name.to_ascii_lowercase()),
                        };
                        self.shared.update(|history| history.record_sealed(upload));
                    }
                    self.record.files.push(CopiedFile {
                        name: sent.file_name(),
                        bytes: done.bytes,
                        uploaded: true,
                        sha256: Some(done.digest),
                        seconds: Some(seconds),
                        hash_seconds: Some(done.hash_seconds),
                        streams: Some(streams),
                    });
                }
                Err(err) => {
                    if err.code == ExitCode::BackupFailed {
                        self.damaged.push(file.name);
                        damage_found = true;
                    }
                    self.fail(err);
                    all_ok = false;
                    if signals::received().is_some() {
                        break;
                    }
                }
            }
        }
        link.release_extras(all_ok && signals::received().is_none());
        if !self.damaged.is_empty() {
            // What another set known to this node lists stays (an images file older sets
            // share); what only the damaged set has goes.
            let others: Vec<RestoreSet> = self
                .shared
                .history
                .lock()
                .map(|h| h.known())
                .unwrap_or_default()
                .into_iter()
                .filter(|known| set.is_none_or(|s| s.data != known.data))
                .collect();
            published.retain(|file| !others.iter().any(|s| s.files().contains(&file.name)));
            withdraw(link, &published);
            return false;
        }
        // Tonight's set's manifest lists the new sha256s only once it is written tonight.
        let mut manifest_written = false;
        if let (true, Some(set)) = (all_ok, set) {
            let text = sets::manifest_of(set, &digests);
            let name = set.data.manifest_name();
            // Only the first attempt: a failed one may have written the partial again.
            let staged = std::cell::Cell::new(
                link.staged()
                    .is_some_and(|staged| staged.take(&name, text.as_bytes())),
            );
            match retry(policy, link, |link| {
                transfer::publish_manifest(link.remote()?, set.data, &text, staged.replace(false))
            }) {
                Ok(true) => {
                    manifest_written = true;
                    log::info!(
                        "{}: the set's manifest, `sha256sum -c` checks every member",
                        set.data.manifest_name()
                    )
                }
                Ok(false) => manifest_written = true,
                Err(err) => {
                    self.fail(err);
                    all_ok = false;
                }
            }
        }
        // Files that replaced one of the same name (a new encryption of a shared images file),
        // tonight or on a night stopped before the older manifests were updated.
        let replaced_files: Vec<(RemoteFile, String)> = self
            .shared
            .restate_of(&self.server.name)
            .iter()
            .filter_map(|(name, digest)| Some((RemoteFile::parse(name)?, digest.clone())))
            .collect();
        if !replaced_files.is_empty() && signals::received().is_none() {
            let except = set.map(|s| s.data).filter(|_| manifest_written);
            match retry(policy, link, |link| {
                restate_manifests(link.remote()?, &replaced_files, except)
            }) {
                Ok(restated) => {
                    for data in restated {
                        log::info!(
                            "{}: now lists the new sha256 of {}",
                            data.manifest_name(),
                            describe_files(&replaced_files)
                        );
                    }
                    let destination = self.server.name.clone();
                    self.shared
                        .update(|history| history.restate_on(&destination).clear());
                }
                // Those sets' members are all there; only their manifest disagrees.
                Err(err) => log::warn!(
                    "cannot update older sets' manifests for {}: {err}; fetching those sets \
                     reports the mismatch",
                    describe_files(&replaced_files)
                ),
            }
        }
        all_ok
    }

    /// Tonight's files as this destination copies them: those whose copy there (in the form
    /// tonight writes: NAME, or NAME.age with encrypt_to) the last read-back found damaged are
    /// uploaded again, replacing it, whatever its checksum file says (the plan never counts
    /// them as there; an append-only server refuses before anything is sent).
    fn mark_damaged_copies(&self, files: &[LocalFile]) -> Vec<LocalFile> {
        let damaged = self
            .shared
            .history
            .lock()
            .map(|h| h.damaged_on(&self.server.name))
            .unwrap_or_default();
        let sealed = self.server.encrypt_to.is_some();
        files
            .iter()
            .cloned()
            .map(|mut file| {
                let form = RemoteFile::new(file.name, sealed);
                file.replace_remote = damaged.contains(&form.file_name());
                if file.replace_remote {
                    log::warn!(
                        "{form}: the last read-back found its copy on {} damaged: copying it \
                         again",
                        self.server.describe()
                    );
                }
                file
            })
            .collect()
    }

    /// What `remote_limit` keeps and removes there (every CVP file is kept without it).
    /// `strict`: a manifest that cannot be read is an error (pruning then waits); else the
    /// set is judged by the rule (extending locks: more rather than fewer).
    fn remote_decision(
        &self,
        remote: &mut dyn Remote,
        listing: &[RemoteEntry],
        selection: &Selection,
        strict: bool,
    ) -> Result<Decision> {
        let limit = match self.server.remote_limit {
            0 => u32::MAX,
            limit => limit,
        };
        let mut known: Vec<RestoreSet> = selection.set.iter().cloned().collect();
        // Which data files stay does not depend on their members; what each kept set needs
        // is what its manifest lists (the rule only for sets without one).
        let now = self.shared.now;
        let first = remote_retention(listing, (limit, &[]), &selection.protect, &known, now);
        for (data, _) in first.keep.iter().filter(|(n, _)| n.kind == Kind::Data) {
            match remote.read_kept(&data.manifest_name(), 64 * 1024) {
                Ok(Some(text)) => {
                    known.extend(sets::parse_manifest(&String::from_utf8_lossy(&text), *data));
                }
                Ok(None) => {}
                Err(err) if strict => return Err(err),
                Err(err) => log::warn!("{err}: its set is judged by the naming rule"),
            }
        }
        Ok(remote_retention(
            listing,
            (limit, &[]),
            &selection.protect,
            &known,
            now,
        ))
    }

    /// With `lock_days`: every version of every object of the sets kept there (and the
    /// claim) is retained `lock_days` from tonight, so a kept set stays locked however many
    /// nights fail after; hidden sets count (their versions are the node's). Run on every
    /// night that reaches the bucket, whether or not tonight's copy worked; one object's
    /// failure does not stop the others.
    fn extend_locks(&mut self, remote: &mut dyn Remote, selection: &Selection) {
        let Some(lock) = self.server.s3().and_then(|s3| s3.lock) else {
            return;
        };
        let names = match remote.list_for_locks().and_then(|listing| {
            let listing = listing.unwrap_or_default();
            let decision = self.remote_decision(remote, &listing, selection, false)?;
            Ok(objects_of(&listing, &decision))
        }) {
            Ok(names) => names,
            Err(err) => return self.fail(err),
        };
        match remote.hidden_sets() {
            Ok(hidden) if !hidden.is_empty() => {
                let hidden: Vec<String> = hidden.iter().map(|n| n.file_name()).collect();
                log::warn!(
                    "{}: sets hidden or written over since the node wrote them: {} (an intruder \
                     with this node's key?); their versions stay locked and `fetch` restores \
                     from them",
                    remote.describe(),
                    hidden.join(", ")
                );
            }
            Ok(_) => {}
            Err(err) => log::warn!("cannot look at the bucket's versions: {err}"),
        }
        let (mut versions, mut first_error) = (0, None);
        for name in &names {
            if signals::received().is_some() {
                return;
            }
            match remote.extend_lock(name) {
                Ok(count) => versions += count,
                Err(err) => {
                    log::warn!("{err}");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            None => log::info!(
                "retention of the {versions} versions of the {} objects of the kept sets \
                 extended to {} days from now ({})",
                names.len(),
                lock.days,
                lock.mode.as_s3()
            ),
            Some(err) => self.fail(err),
        }
    }

    fn prune_remote(&mut self, remote: &mut dyn Remote, selection: &Selection) {
        let current = selection.files();
        let listing = match remote.list_for_locks() {
            Ok(listing) => listing.unwrap_or_default(),
            Err(err) => return log::warn!("remote pruning skipped: {err}"),
        };
        let decision = match self.remote_decision(remote, &listing, selection, true) {
            Ok(decision) => decision,
            Err(err) => return log::warn!("remote pruning skipped: {err}"),
        };
        crate::run::log_keeps("remote", &decision);
        let mut removed = Vec::new();
        for name in &decision.remove {
            // Every form it is there in: NAME and NAME.age (encryption turned on meanwhile).
            let forms: Vec<RemoteFile> = listing
                .iter()
                .filter_map(|e| match RemoteName::parse(&e.name) {
                    Some(RemoteName::Backup(file)) if file.name == *name => Some(file),
                    _ => None,
                })
                .collect();
            let mut all_gone = true;
            for file in forms {
                if let Some(until) = still_locked(remote, &file.file_name()) {
                    log::info!("kept remote {file}: locked until {until}; pruned once it ends");
                    all_gone = false;
                    continue;
                }
                match remote.remove(&file.file_name()) {
                    Ok(()) => log::info!("pruned remote {file}"),
                    Err(err) => {
                        all_gone = false;
                        log::warn!("cannot prune remote {file}: {err}");
                    }
                }
            }
            if all_gone {
                self.record.pruned_remote += 1;
                removed.push(*name);
                self.pruned.push(*name);
            }
        }
        let names: Vec<String> = listing.iter().map(|e| e.name.clone()).collect();
        for leftover in retention::remote_leftovers(&names, &removed, &current) {
            if let Some(until) = still_locked(remote, &leftover) {
                log::info!("kept remote {leftover}: locked until {until}; removed once it ends");
                continue;
            }
            match remote.remove(&leftover) {
                Ok(()) => log::info!(
                    "removed remote {leftover} (its file is gone, or an abandoned upload)"
                ),
                Err(err) => log::warn!("cannot remove remote {leftover}: {err}"),
            }
        }
    }

    /// The data backups on the server once the night is done, for the metrics: from the
    /// listing made beside the manifest when there is one (less what pruning removed since;
    /// tonight's set, all there, counts even when that listing came before its rename),
    /// else listed now.
    fn count_remote_sets(&mut self, link: &mut dyn Destination, tonight: Option<BackupName>) {
        let listed = match link.listed_beside() {
            Some(Ok(listing)) => Ok(listing),
            _ => link.remote().and_then(|remote| remote.list()),
        };
        match listed {
            Ok(listing) => {
                // NAME and NAME.age of one data file are one set.
                let listing = listing.unwrap_or_default();
                if self.server.append_only {
                    log_partials_left(&listing, &link.label());
                }
                let data: HashSet<BackupName> = backup_names(&listing)
                    .into_iter()
                    .chain(tonight)
                    .filter(|name| name.kind == Kind::Data && !self.pruned.contains(name))
                    .collect();
                self.record.remote_sets = Some(data.len());
            }
            Err(err) => log::warn!("cannot count the sets on the remote: {err}"),
        }
    }
}

/// The archives of a damaged backup uploaded tonight that no other set lists (its images
/// file) go again: nothing of a failed backup stays on the server under a CVP name. An
/// append-only server, or a bucket whose lock refuses, keeps them, and the log says so; no
/// manifest lists them, so `fetch latest` passes them by.
fn withdraw(link: &mut dyn Destination, published: &[RemoteFile]) {
    if published.is_empty() {
        return;
    }
    let remote = match link.remote() {
        Ok(remote) => remote,
        Err(err) => return log::warn!("cannot withdraw the damaged backup's files: {err}"),
    };
    let label = remote.describe();
    if remote.append_only() {
        return log::warn!(
            "{label} is append-only: the damaged backup's {} stay there, in no set (prune-dir \
             removes them once older than its --min-age)",
            published
                .iter()
                .map(|f| f.file_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for file in published {
        for name in [file.file_name(), file.sidecar_name()] {
            match remote.remove(&name) {
                Ok(()) => log::info!("{name}: removed from {label} (from the damaged backup)"),
                Err(err) => log::warn!("cannot remove {name} from {label}: {err}"),
            }
        }
    }
}

/// Until when `name` is locked there; a lock that cannot be read counts as one (never send
/// a delete the lock may refuse).
fn still_locked(remote: &mut dyn Remote, name: &str) -> Option<String> {
    match remote.locked_until(name) {
        Ok(until) => until,
        Err(err) => Some(format!("(unknown: {err})")),
    }
}

/// The names of every object of the kept sets in a listing: each form (NAME, NAME.age) and
/// its checksum file, each kept data file's manifest, and the claim.
fn objects_of(listing: &[RemoteEntry], decision: &Decision) -> Vec<String> {
    let kept: HashSet<BackupName> = decision.keep.iter().map(|(name, _)| *name).collect();
    listing
        .iter()
        .filter(|entry| match RemoteName::parse(&entry.name) {
            Some(RemoteName::Backup(file)) | Some(RemoteName::Sidecar(file)) => {
                kept.contains(&file.name)
            }
            Some(RemoteName::Manifest(data)) => kept.contains(&data),
            Some(RemoteName::Partial(_)) => false,
            None => entry.name == crate::names::OWNER_MARKER,
        })
        .map(|entry| entry.name.clone())
        .collect()
}

/// An append-only server keeps the partial uploads of interrupted attempts: named here, for
/// the server's `prune-dir`, which removes them once older than its `--min-age`.
fn log_partials_left(listing: &[RemoteEntry], label: &str) {
    let partials: Vec<&str> = listing
        .iter()
        .filter(|e| matches!(RemoteName::parse(&e.name), Some(RemoteName::Partial(_))))
        .map(|e| e.name.as_str())
        .collect();
    if !partials.is_empty() {
        log::info!(
            "{label} keeps {} partial upload(s) of interrupted attempts (append_only: the node \
             never removes them; prune-dir on the server does, after its --min-age): {}",
            partials.len(),
            partials.join(", ")
        );
    }
}

/// Other sets' manifests on the server that list a file just replaced (a shared images file
/// encrypted anew): their line for it is rewritten with its new sha256, so those sets still
/// verify as they are. The data files whose manifests changed.
fn restate_manifests(
    remote: &mut dyn Remote,
    replaced: &[(RemoteFile, String)],
    except: Option<BackupName>,
) -> Result<Vec<BackupName>> {
    let listing = remote.list()?.unwrap_or_default();
    let mut restated = Vec::new();
    for entry in &listing {
        let Some(RemoteName::Manifest(data)) = RemoteName::parse(&entry.name) else {
            continue;
        };
        if Some(data) == except {
            continue;
        }
        let Some(bytes) = remote.read_small(&entry.name, 64 * 1024)? else {
            continue;
        };
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        let mut changed = false;
        for (file, digest) in replaced {
            if let Some(new) = sets::restate_manifest(&text, *file, digest) {
                text = new;
                changed = true;
            }
        }
        if changed {
            transfer::publish_manifest(remote, data, &text, false)?;
            restated.push(data);
        }
    }
    Ok(restated)
}

fn describe_files(files: &[(RemoteFile, String)]) -> String {
    let names: Vec<String> = files.iter().map(|(f, _)| f.file_name()).collect();
    names.join(", ")
}

pub(crate) fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// The CVP files (plain or encrypted, one entry per copy) in a remote listing, by name.
pub(crate) fn backup_names(listing: &[RemoteEntry]) -> Vec<BackupName> {
    listing
        .iter()
        .filter_map(|e| match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(file)) => Some(file.name),
            _ => None,
        })
        .collect()
}

/// Only CVP-named files count (and are deleted; their sidecars and manifests follow as
/// leftovers). `protect`: kept and counted among the `remote_limit` newest; `also_keep`:
/// kept beyond them (`prune-dir`'s newest complete set).
pub(crate) fn remote_retention(
    listing: &[RemoteEntry],
    (remote_limit, also_keep): (u32, &[BackupName]),
    protect: &[BackupName],
    known: &[RestoreSet],
    now: Stamp,
) -> Decision {
    retention::apply_policy(
        &backup_names(listing),
        Policy {
            keep_data: remote_limit as usize,
            also_keep: also_keep.to_vec(),
        },
        protect,
        known,
        now,
    )
}
