//! The main job: back up CVP, copy the restore set, verify it, prune, report.

use crate::backup;
use crate::config::Config;
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::lock;
use crate::logging;
use crate::names::{BackupName, Kind, RemoteName};
use crate::plan::{self, CopyDecision, FileFacts, Plan};
use crate::progress;
use crate::remote::known_hosts::Verified;
use crate::remote::sftp::{self, ConnectOptions, SftpRemote};
use crate::remote::{Remote, RemoteEntry};
use crate::restore_set::{self, Selection};
use crate::retention::{self, Decision, Policy};
use crate::secret::{self, Secret};
use crate::signals;
use crate::state::{self, CopiedFile, RunRecord};
use crate::transfer;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub ini: PathBuf,
    pub limit: Option<u32>,
    pub no_backup: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct LocalFile {
    pub(crate) name: BackupName,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
}

/// Run the job and return its exit code. Every failure is logged where it happens.
pub fn run_job(options: &RunOptions) -> ExitCode {
    let clock = Instant::now();
    let started = chrono::Local::now();
    let config = match Config::load(&options.ini) {
        Ok(config) => config,
        Err(err) => return report_fatal(err),
    };
    logging::set_facility(config.backup.syslog_facility);
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    let limit = match config.effective_limit(options.limit) {
        Ok(limit) => limit,
        Err(err) => return report_fatal(err),
    };
    if options.dry_run {
        return match dry_run(&config, options, limit) {
            Ok(plan) => {
                print!("{}", plan.render());
                ExitCode::Success
            }
            Err(err) => report_fatal(err),
        };
    }
    let _lock = match lock::acquire(&config.backup.state_dir) {
        Ok(lock) => lock,
        Err(err) => return report_fatal(err),
    };
    log::info!(
        "starting: configuration {}, destination {}@{}:{}, keeping {limit} local data backups",
        config.path.display(),
        config.server.user,
        config.server.host,
        config.server.destination
    );
    let mut job = Job {
        options,
        record: RunRecord {
            version: env!("CARGO_PKG_VERSION").into(),
            started: started.to_rfc3339(),
            destination: format!(
                "{}@{}:{}",
                config.server.user, config.server.host, config.server.destination
            ),
            ..RunRecord::default()
        },
        config,
        limit,
        code: ExitCode::Success,
        copy_seconds: 0.0,
    };
    job.execute();
    job.finish(clock)
}

fn report_fatal(err: Error) -> ExitCode {
    log::error!("{err}");
    err.code
}

struct Job<'a> {
    options: &'a RunOptions,
    config: Config,
    limit: u32,
    record: RunRecord,
    code: ExitCode,
    copy_seconds: f64,
}

impl Job<'_> {
    fn fail(&mut self, err: Error) {
        log::error!("{err}");
        self.record.errors.push(err.message);
        self.code = self.code.most_severe(err.code);
    }

    fn execute(&mut self) {
        // Credentials are checked first, but a bad key does not stop the local backup: a
        // backup on the node is better than none when the copy cannot happen.
        let password = credentials(&self.config);
        let before = match list_local(&self.config) {
            Ok(files) => files,
            Err(err) => return self.fail(err),
        };
        if !self.options.no_backup {
            warn_if_short_of_space(&self.config.backup.backup_dir, &before);
        }
        let (after, new, backup_failed) = if self.options.no_backup {
            log::info!("--no-backup: bringing the remote up to date with the newest local set");
            (before, HashSet::new(), false)
        } else {
            let succeeded = self.run_backup();
            let after = match list_local(&self.config) {
                Ok(files) => files,
                Err(err) => return self.fail(err),
            };
            let old: HashSet<BackupName> = before.iter().map(|f| f.name).collect();
            let new: HashSet<BackupName> = after
                .iter()
                .map(|f| f.name)
                .filter(|n| !old.contains(n))
                .collect();
            let mut failed = !succeeded;
            if succeeded && !new.iter().any(|n| n.kind == Kind::Data) {
                self.fail(Error::new(
                    ExitCode::BackupFailed,
                    format!(
                        "the backup command reported success but wrote no new data backup in {}",
                        self.config.backup.backup_dir.display()
                    ),
                ));
                failed = true;
            }
            (after, new, failed)
        };

        let names: Vec<BackupName> = after.iter().map(|f| f.name).collect();
        let selection = restore_set::select(&names, &new, backup_failed);
        log_selection(&selection);
        let files: Vec<LocalFile> = selection
            .files()
            .iter()
            .filter_map(|name| after.iter().find(|f| f.name == *name).cloned())
            .collect();
        if selection.set.is_none() {
            self.fail(Error::copy(format!(
                "no data backup in {} to copy: the backup server has no restore set from this run",
                self.config.backup.backup_dir.display()
            )));
            if files.is_empty() {
                return;
            }
        }
        let password = match password {
            Ok(password) => password,
            Err(err) => {
                log::warn!("copy skipped: the password cannot be used");
                return self.fail(err);
            }
        };
        let parallel = self.config.server.streams > 1
            && files
                .iter()
                .any(|file| file.size >= transfer::PARALLEL_THRESHOLD);
        let mut link = Link {
            server: Arc::new(self.config.server.clone()),
            password: password.map(Arc::new),
            remote: None,
            extra: Vec::new(),
            connecting: None,
            wanted_extra: if parallel {
                self.config.server.streams - 1
            } else {
                0
            },
        };
        let all_copied = self.copy_files(&mut link, &files);
        if !all_copied {
            log::warn!("pruning skipped: not every file of the restore set is on the remote");
            return;
        }
        if backup_failed {
            log::warn!("pruning skipped: the backup did not complete");
            return;
        }
        self.prune_local(&after);
        if self.config.server.remote_limit > 0 {
            match link.remote() {
                Ok(remote) => self.prune_remote(remote),
                Err(err) => log::warn!("remote pruning skipped: {err}"),
            }
        }
    }

    fn run_backup(&mut self) -> bool {
        let command = &self.config.backup.command;
        let user = &self.config.backup.user;
        log::info!(
            "running the CVP backup: {}",
            backup::describe(command, user)
        );
        self.record.backup_ran = true;
        let outcome = backup::run(command, user);
        let succeeded = match outcome {
            Ok(outcome) if outcome.succeeded() => {
                log::info!(
                    "CVP backup finished in {:.0} s",
                    outcome.elapsed.as_secs_f64()
                );
                true
            }
            Ok(outcome) => {
                self.fail(Error::new(
                    ExitCode::BackupFailed,
                    format!(
                        "the CVP backup command failed ({}) after {:.0} s: no new archive is \
                         copied; its log is, and the previous restore set is kept up to date",
                        outcome.status,
                        outcome.elapsed.as_secs_f64()
                    ),
                ));
                false
            }
            Err(err) => {
                self.fail(err);
                false
            }
        };
        self.record.backup_succeeded = Some(succeeded);
        succeeded
    }

    fn copy_files(&mut self, link: &mut Link, files: &[LocalFile]) -> bool {
        let clock = Instant::now();
        let policy = RetryPolicy {
            retries: self.config.server.retries,
            wait: self.config.server.retry_wait,
        };
        match retry(&policy, link, |link| link.remote()?.ensure_destination()) {
            Ok(true) => log::info!("created the destination {}", link.label()),
            Ok(false) => {}
            Err(err) => {
                self.fail(err);
                return false;
            }
        }
        let mut all_ok = true;
        for file in files {
            match retry(&policy, link, |link| copy_one(link, file)) {
                Ok(Copied::AlreadyThere { digest }) => {
                    log::info!("{}: already on the remote, checksum matches", file.name);
                    self.record.files.push(CopiedFile {
                        name: file.name.file_name(),
                        bytes: file.size,
                        uploaded: false,
                        sha256: Some(digest),
                        ..CopiedFile::default()
                    });
                }
                Ok(Copied::Uploaded { done, seconds }) => {
                    log::info!(
                        "{}: copied and verified, {} bytes in {seconds:.1} s ({:.1} MB/s; \
                         hashing added {:.2} s), sha256 {}",
                        file.name,
                        done.bytes,
                        megabytes_per_second(done.bytes, seconds),
                        done.hash_seconds,
                        done.digest
                    );
                    self.record.bytes_uploaded += done.bytes;
                    self.record.files.push(CopiedFile {
                        name: file.name.file_name(),
                        bytes: done.bytes,
                        uploaded: true,
                        sha256: Some(done.digest),
                        seconds: Some(seconds),
                        hash_seconds: Some(done.hash_seconds),
                    });
                }
                Err(err) => {
                    self.fail(err);
                    all_ok = false;
                    if signals::received().is_some() {
                        break;
                    }
                }
            }
        }
        self.copy_seconds = clock.elapsed().as_secs_f64();
        all_ok
    }

    fn prune_local(&mut self, files: &[LocalFile]) {
        let names: Vec<BackupName> = files.iter().map(|f| f.name).collect();
        let decision = retention::apply_policy(
            &names,
            Policy {
                keep_data: self.limit as usize,
            },
        );
        log_keeps("local", &decision);
        for name in &decision.remove {
            let Some(file) = files.iter().find(|f| f.name == *name) else {
                continue;
            };
            match std::fs::remove_file(&file.path) {
                Ok(()) => {
                    log::info!("pruned local {}", file.path.display());
                    self.record.pruned_local += 1;
                }
                Err(err) => log::warn!("cannot prune {}: {err}", file.path.display()),
            }
        }
    }

    fn prune_remote(&mut self, remote: &mut dyn Remote) {
        let listing = match remote.list() {
            Ok(listing) => listing.unwrap_or_default(),
            Err(err) => return log::warn!("remote pruning skipped: {err}"),
        };
        let decision = remote_retention(&listing, self.config.server.remote_limit);
        log_keeps("remote", &decision);
        for name in &decision.remove {
            let removed = remote
                .remove(&name.file_name())
                .and_then(|()| remote.remove(&name.sidecar_name()));
            match removed {
                Ok(()) => {
                    log::info!("pruned remote {name}");
                    self.record.pruned_remote += 1;
                }
                Err(err) => log::warn!("cannot prune remote {name}: {err}"),
            }
        }
    }

    fn finish(mut self, clock: Instant) -> ExitCode {
        let seconds = clock.elapsed().as_secs_f64();
        let uploaded = self.record.files.iter().filter(|f| f.uploaded).count();
        self.record.finished = chrono::Local::now().to_rfc3339();
        self.record.exit_code = self.code.code();
        self.record.seconds = seconds;
        self.record.megabytes_per_second =
            megabytes_per_second(self.record.bytes_uploaded, self.copy_seconds);
        let summary = format!(
            "summary: files={} uploaded={uploaded} bytes={} copy_seconds={:.1} MB/s={:.1} \
             total_seconds={seconds:.1} pruned_local={} pruned_remote={} exit={}",
            self.record.files.len(),
            self.record.bytes_uploaded,
            self.copy_seconds,
            self.record.megabytes_per_second,
            self.record.pruned_local,
            self.record.pruned_remote,
            self.code
        );
        if self.code == ExitCode::Success {
            log::info!("{summary}");
        } else {
            log::error!("{summary}");
        }
        if let Err(err) = state::save(&self.config.backup.state_dir, &self.record) {
            log::warn!(
                "cannot record this run in {}: {err}",
                self.config.backup.state_dir.display()
            );
        }
        self.code
    }
}

/// The connection to the backup server, made when first needed and made again after a
/// connection or transfer error.
struct Link {
    server: Arc<ServerConfig>,
    password: Option<Arc<Secret>>,
    remote: Option<SftpRemote>,
    /// More connections for parallel streams.
    extra: Vec<SftpRemote>,
    /// Those connections being made in the background while the main one looks at the
    /// destination: on a WAN each handshake costs several round trips.
    connecting: Option<std::thread::JoinHandle<Vec<Result<SftpRemote>>>>,
    /// How many extra connections a large file in the restore set will want.
    wanted_extra: usize,
}

impl Link {
    fn label(&self) -> String {
        format!(
            "{}@{}:{}",
            self.server.user, self.server.host, self.server.destination
        )
    }

    fn remote(&mut self) -> Result<&mut SftpRemote> {
        if self.remote.is_none() {
            let connected = sftp::connect(ConnectOptions {
                server: &self.server,
                password: self.password.as_deref(),
                record_host_key: true,
            })?;
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
            self.start_connecting(self.wanted_extra.saturating_sub(self.extra.len()));
        }
        self.remote
            .as_mut()
            .ok_or_else(|| Error::connect("internal error: no connection"))
    }

    fn start_connecting(&mut self, count: usize) {
        if count == 0 || self.connecting.is_some() {
            return;
        }
        let (server, password) = (self.server.clone(), self.password.clone());
        self.connecting = Some(std::thread::spawn(move || {
            let options = ConnectOptions {
                server: &server,
                password: password.as_deref(),
                record_host_key: false,
            };
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..count)
                    .map(|_| scope.spawn(move || sftp::connect(options).map(|c| c.remote)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|_| Err(Error::connect("a connection attempt crashed")))
                    })
                    .collect()
            })
        }));
    }

    /// Collect the background connections; the first failure is the link's error.
    fn finish_connecting(&mut self) -> Result<()> {
        let Some(connecting) = self.connecting.take() else {
            return Ok(());
        };
        let outcomes = connecting
            .join()
            .unwrap_or_else(|_| vec![Err(Error::connect("a connection attempt crashed"))]);
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(remote) => self.extra.push(remote),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// `count` connections (the main one first), for a parallel upload.
    fn streams(&mut self, count: usize) -> Result<Vec<&mut (dyn Remote + Send)>> {
        self.remote()?;
        self.finish_connecting()?;
        self.start_connecting(count.saturating_sub(self.extra.len() + 1));
        self.finish_connecting()?;
        let mut all: Vec<&mut (dyn Remote + Send)> = Vec::with_capacity(count);
        if let Some(main) = self.remote.as_mut() {
            all.push(main);
        }
        for remote in self.extra.iter_mut().take(count - 1) {
            all.push(remote);
        }
        Ok(all)
    }

    fn reset(&mut self) {
        if let Some(remote) = self.remote.take() {
            remote.abandon();
        }
        if let Some(connecting) = self.connecting.take() {
            for remote in connecting.join().unwrap_or_default().into_iter().flatten() {
                remote.abandon();
            }
        }
        for remote in self.extra.drain(..) {
            remote.abandon();
        }
    }
}

struct RetryPolicy {
    retries: u32,
    wait: u64,
}

/// Run `op` on the remote; after a connection or transfer error, reconnect and try again
/// (waiting `wait` seconds, doubling), up to `retries` more times. Other errors end at once.
fn retry<T>(
    policy: &RetryPolicy,
    link: &mut Link,
    mut op: impl FnMut(&mut Link) -> Result<T>,
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
                signals::sleep(wait)?;
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

enum Copied {
    AlreadyThere {
        digest: String,
    },
    Uploaded {
        done: transfer::Uploaded,
        seconds: f64,
    },
}

/// One file, as one retryable unit: look at the remote, decide, upload if needed (over
/// several streams when it is large).
fn copy_one(link: &mut Link, file: &LocalFile) -> Result<Copied> {
    let remote = link.remote()?;
    let listing = remote.list()?.unwrap_or_default();
    match plan::decide(&gather_facts(remote, &listing, file)?) {
        CopyDecision::AlreadyThere { digest, .. } => Ok(Copied::AlreadyThere { digest }),
        CopyDecision::Upload { name, size, why } => {
            let streams = link.server.streams;
            let started = Instant::now();
            let bar = progress::bar(size, &name.file_name());
            let done = if streams > 1 && size >= transfer::PARALLEL_THRESHOLD {
                log::info!("{name}: uploading {size} bytes over {streams} streams ({why})");
                transfer::upload_parallel(&mut link.streams(streams)?, &file.path, name, &bar)
            } else {
                log::info!("{name}: uploading {size} bytes ({why})");
                transfer::upload(link.remote()?, &file.path, name, &bar)
            };
            bar.finish_and_clear();
            let done = done?;
            Ok(Copied::Uploaded {
                done,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
    }
}

fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// The newest data backup on this node.
pub(crate) fn last_data_backup(files: &[LocalFile]) -> Option<&LocalFile> {
    files
        .iter()
        .filter(|f| f.name.kind == Kind::Data)
        .max_by_key(|f| f.name.stamp)
}

/// The next backup is about as big as the last one: the warning when it may not fit.
pub(crate) fn space_warning(backup_dir: &Path, free: u64, last: &LocalFile) -> Option<String> {
    (free < last.size).then(|| {
        format!(
            "{} has {} MB free but the last backup {} took {} MB: the next backup may not fit; \
             lower limit or free space",
            backup_dir.display(),
            free / 1_000_000,
            last.name,
            last.size / 1_000_000
        )
    })
}

fn warn_if_short_of_space(backup_dir: &Path, files: &[LocalFile]) {
    let (Some(last), Some(free)) = (last_data_backup(files), backup::free_bytes(backup_dir)) else {
        return;
    };
    if let Some(warning) = space_warning(backup_dir, free, last) {
        log::warn!("{warning}");
    }
}

fn log_selection(selection: &Selection) {
    if let Some(set) = &selection.set {
        log::info!(
            "restore set: {}, images {}, log {}",
            set.data,
            set.images
                .map(|n| n.file_name())
                .unwrap_or_else(|| "none on this node".into()),
            set.log
                .map(|n| n.file_name())
                .unwrap_or_else(|| "none".into())
        );
    }
    for log_file in &selection.failed_run_logs {
        log::info!("also copying {log_file}, the log of the failed backup");
    }
}

fn log_keeps(side: &str, decision: &Decision) {
    for (name, reason) in &decision.keep {
        log::debug!("{side}: keep {name}: {reason}");
    }
}

/// Decrypt the password when there is one; also check that an identity file exists.
pub(crate) fn credentials(config: &Config) -> Result<Option<Secret>> {
    let server = &config.server;
    if let Some(identity) = &server.identity_file {
        if !identity.is_file() {
            return Err(Error::config(format!(
                "{}: identity_file {} does not exist",
                config.path.display(),
                identity.display()
            )));
        }
    }
    match (&server.password_token, &server.key_file) {
        (Some(token), Some(key)) => {
            secret::check_key_is_private(key)?;
            secret::decrypt_password(token, key, &config.path).map(Some)
        }
        _ => Ok(None),
    }
}

pub(crate) fn list_local(config: &Config) -> Result<Vec<LocalFile>> {
    let mut files = scan(&config.backup.backup_dir, |kind| kind != Kind::Log)?;
    for log_file in scan(&config.backup.log_dir, |kind| kind == Kind::Log)? {
        if !files.iter().any(|f| f.name == log_file.name) {
            files.push(log_file);
        }
    }
    Ok(files)
}

fn scan(dir: &Path, wanted: impl Fn(Kind) -> bool) -> Result<Vec<LocalFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(Error::config(format!(
                "cannot list {}: {err}",
                dir.display()
            )));
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().and_then(BackupName::parse) else {
            continue;
        };
        if !wanted(name.kind) {
            continue;
        }
        match entry.metadata() {
            Ok(meta) if meta.is_file() => files.push(LocalFile {
                name,
                path: entry.path(),
                size: meta.len(),
            }),
            _ => continue,
        }
    }
    Ok(files)
}

fn gather_facts(
    remote: &mut dyn Remote,
    listing: &[RemoteEntry],
    file: &LocalFile,
) -> Result<FileFacts> {
    let file_name = file.name.file_name();
    let mut facts = FileFacts {
        name: file.name,
        local_size: file.size,
        remote_size: listing.iter().find(|e| e.name == file_name).map(|e| e.size),
        remote_digest: None,
        local_digest: None,
    };
    if facts.remote_size == Some(file.size) {
        facts.remote_digest = transfer::read_sidecar(remote, file.name)?;
    }
    if plan::needs_local_digest(&facts) {
        facts.local_digest = Some(transfer::sha256_file(&file.path)?);
    }
    Ok(facts)
}

/// Only CVP-named files count (and are deleted, with their sidecars).
fn remote_retention(listing: &[RemoteEntry], remote_limit: u32) -> Decision {
    let backups: Vec<BackupName> = listing
        .iter()
        .filter_map(|e| match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(name)) => Some(name),
            _ => None,
        })
        .collect();
    retention::apply_policy(
        &backups,
        Policy {
            keep_data: remote_limit as usize,
        },
    )
}

/// The same decisions as a run, taken read-only: no backup, no lock, no host key recorded,
/// no directory created, nothing uploaded or deleted.
fn dry_run(config: &Config, options: &RunOptions, limit: u32) -> Result<Plan> {
    let mut plan = Plan {
        backup: (!options.no_backup)
            .then(|| backup::describe(&config.backup.command, &config.backup.user)),
        destination: format!(
            "{}@{}:{}",
            config.server.user, config.server.host, config.server.destination
        ),
        ..Plan::default()
    };
    let local = list_local(config)?;
    let names: Vec<BackupName> = local.iter().map(|f| f.name).collect();
    plan.local_retention = Some(retention::apply_policy(
        &names,
        Policy {
            keep_data: limit as usize,
        },
    ));
    let selection = restore_set::select(&names, &HashSet::new(), false);
    let password = credentials(config)?;
    let mut connected = sftp::connect(ConnectOptions {
        server: &config.server,
        password: password.as_ref(),
        record_host_key: false,
    })?;
    drop(password);
    if let Verified::Recorded { fingerprint } = &connected.host_key {
        plan.notes.push(format!(
            "the server's host key {fingerprint} is not in {}: a real run records it",
            config.server.known_hosts.display()
        ));
    }
    let remote: &mut dyn Remote = &mut connected.remote;
    let listing = match remote.list()? {
        Some(listing) => listing,
        None => {
            plan.notes
                .push("the destination does not exist: a real run creates it".into());
            Vec::new()
        }
    };
    let mut after_copy = listing.clone();
    for name in selection.files() {
        let Some(file) = local.iter().find(|f| f.name == name) else {
            continue;
        };
        let decision = plan::decide(&gather_facts(remote, &listing, file)?);
        if !after_copy.iter().any(|e| e.name == name.file_name()) {
            after_copy.push(RemoteEntry {
                name: name.file_name(),
                size: file.size,
            });
        }
        plan.copies.push(decision);
    }
    if config.server.remote_limit > 0 {
        plan.remote_retention = Some(remote_retention(&after_copy, config.server.remote_limit));
    }
    Ok(plan)
}
