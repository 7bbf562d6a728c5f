//! The main job: back up CVP, copy the restore set, verify it, prune, report.

mod backup_night;
mod dry_run;
mod local;

use backup_night::*;
use dry_run::*;
use local::*;

use crate::backup;
use crate::claim;
use crate::concurrent;
use crate::config::{self, Config, ServerConfig};
use crate::copy_night::{self, DestinationNight, Shared};
use crate::destination;
pub(crate) use crate::destination::credentials;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::lock;
use crate::logging;
use crate::monitor::Monitoring;
use crate::names::{BackupName, Kind, Stamp};
use crate::plan::{self, CopyDecision, Plan};
use crate::remote::{Remote, RemoteEntry};
use crate::restore_set::{self, RestoreSet, Selection, Tonight};
use crate::retention::{self, Decision, Policy};
use crate::safe_fs::Dir;
use crate::secret::Secret;
use crate::sets::{self};
use crate::signals;
use crate::space::{self, Room};
use crate::state::{self, BackupWindow, History, RunRecord};
use crate::transfer;
pub(crate) use backup_night::newest_set_bytes;
pub(crate) use local::{list_failed, list_local};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub ini: PathBuf,
    pub limit: Option<u32>,
    pub no_backup: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub struct LocalFile {
    pub name: BackupName,
    pub path: PathBuf,
    pub size: u64,
    /// When it was last written: tells a backup's files from another backup's.
    pub modified: Option<std::time::SystemTime>,
    /// A `.tgz` not yet found whole: the upload's hashing pass checks it.
    pub check_archive: bool,
    /// Its copy on the destination at hand was found damaged: upload it again, replacing it.
    pub replace_remote: bool,
}

/// Run the job and return its exit code. Every failure is logged where it happens, and
/// every night leaves a record (but a night refused because another run holds the lock:
/// that run writes its own; and a dry run, which changes nothing, neither records nor pings).
pub fn run_job(options: &RunOptions) -> ExitCode {
    let clock = Instant::now();
    let started = chrono::Local::now();
    let config = match Config::load(&options.ini) {
        Ok(config) => config,
        Err(err) if options.dry_run => return report_fatal(err),
        Err(err) => {
            return refused(
                config::state_dir_hint(&options.ini),
                config::destination_hint(&options.ini),
                Monitoring::from_ini_hint(&options.ini),
                &started,
                err,
            )
        }
    };
    logging::set_facility(config.backup.syslog_facility);
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    let refuse = |err: Error| {
        refused(
            Some(config.backup.state_dir.clone()),
            Some(destination_label(&config)),
            Monitoring::from_config(&config.backup),
            &started,
            err,
        )
    };
    let limit = match config.effective_limit(options.limit) {
        Ok(limit) => limit,
        Err(err) if options.dry_run => return report_fatal(err),
        Err(err) => return refuse(err),
    };
    if options.dry_run {
        return match dry_run(&config, options, limit) {
            Ok(plan) => {
                print!("{}", plan.render());
                plan.code
            }
            Err(err) => report_fatal(err),
        };
    }
    let lock = match lock::acquire(&config.backup.state_dir, lock::Holder::Run) {
        Ok(lock) => lock,
        Err(err) if err.code == ExitCode::Locked => return report_fatal(err),
        Err(err) => return refuse(err),
    };
    let log_file = logging::start_run_log(&config.backup.state_dir);
    let mut monitoring = Monitoring::from_config(&config.backup);
    monitoring.run_started();
    let destinations: Vec<String> = config
        .destinations()
        .map(|d| match config.extra.is_empty() {
            true => d.label(),
            false => format!("{} {}", d.name, d.label()),
        })
        .collect();
    log::info!(
        "starting: configuration {}, destination{} {}, keeping {limit} local data backups",
        config.path.display(),
        if destinations.len() == 1 { "" } else { "s" },
        destinations.join(", ")
    );
    let mut history = match state::load_history(&lock.dir) {
        Ok(history) => history,
        Err(err) => {
            log::warn!("{err}");
            History::default()
        }
    };
    fill_last_verified(&mut history, &config.backup.state_dir, &config);
    let mut job = Job {
        options,
        record: RunRecord {
            version: env!("CARGO_PKG_VERSION").into(),
            started: started.to_rfc3339(),
            destination: destination_label(&config),
            no_backup: options.no_backup,
            log_file: log_file.map(|path| path.display().to_string()),
            ..RunRecord::default()
        },
        config,
        limit,
        code: ExitCode::Success,
        copy_seconds: 0.0,
        history,
        now: Stamp::now(),
        lock,
        recovered: HashSet::new(),
        good_before: None,
    };
    job.execute();
    if let Some(line) = crate::timeline::moments().line() {
        log::info!("{line}");
    }
    job.finish(clock, monitoring)
}

/// A history that does not know the last set verified on a destination (one from before
/// it kept it, one that was damaged and started anew, a destination renamed in the INI):
/// the previous run's record says it, read the way `RunRecord::carry_over` reads records of
/// any version (the recovery point, or an older record's successful restore set), for the
/// same destination only (`main`'s, and each other's part by its place: a destination that
/// moved has none of what the old place has).
pub(crate) fn fill_last_verified(history: &mut History, state_dir: &Path, config: &Config) {
    let Some(previous) = state::load(state_dir).ok().flatten() else {
        return;
    };
    for server in config.destinations() {
        if history.last_verified_at(&server.name).is_some() {
            continue;
        }
        let label = server.label();
        let part = if server.name == config::MAIN {
            Some(&previous)
        } else {
            previous.extra.iter().find(|part| part.destination == label)
        };
        let Some(part) = part else { continue };
        let mut reading = RunRecord {
            destination: label,
            ..RunRecord::default()
        };
        reading.carry_over(Some(part));
        if let Some(point) = reading
            .recovery_point
            .as_deref()
            .and_then(BackupName::parse)
        {
            history.set_last_verified(&server.name, point);
        }
    }
}

fn destination_label(config: &Config) -> String {
    config.server.label()
}

fn report_fatal(err: Error) -> ExitCode {
    log::error!("{err}");
    err.code
}

/// A night that ends before it starts still leaves its record, so `status` does not report
/// the night before, and tells monitoring.
fn refused(
    state_dir: Option<PathBuf>,
    destination: Option<String>,
    monitoring: Monitoring,
    started: &chrono::DateTime<chrono::Local>,
    err: Error,
) -> ExitCode {
    log::error!("{err}");
    let summary = format!("summary: refused before the backup: exit={}", err.code);
    let mut record = RunRecord {
        version: env!("CARGO_PKG_VERSION").into(),
        started: started.to_rfc3339(),
        destination: destination.unwrap_or_default(),
        finished: chrono::Local::now().to_rfc3339(),
        exit_code: err.code.code(),
        errors: vec![err.message.clone()],
        ..RunRecord::default()
    };
    if let Some(state_dir) = &state_dir {
        record.log_file = logging::start_run_log(state_dir).map(|path| path.display().to_string());
        record_run(state_dir, &mut record);
    }
    logging::flush();
    monitoring.run_finished(&record, &summary);
    err.code
}

/// Save the run's record, with what it carries over from the one before.
fn record_run(state_dir: &Path, record: &mut RunRecord) {
    let previous = state::load(state_dir).ok().flatten();
    record.carry_over_all(previous.as_ref());
    if let Err(err) = state::save(state_dir, record) {
        log::warn!("cannot record this run in {}: {err}", state_dir.display());
    }
}

struct Job<'a> {
    options: &'a RunOptions,
    config: Config,
    limit: u32,
    record: RunRecord,
    code: ExitCode,
    copy_seconds: f64,
    history: History,
    /// The node's clock as the run started: stamps beyond it are "in the future".
    now: Stamp,
    lock: lock::RunLock,
    /// What tonight's recovery from a dead backup set aside: kept this night whatever else
    /// happens (judged by file times, it may be someone's by mistake).
    recovered: HashSet<BackupName>,
    /// `last_good` and `older_than_last_good` before tonight's backup replaced them: put
    /// back when its archives turn out damaged.
    good_before: Option<(Option<String>, Vec<String>)>,
}

/// What tonight's backup did, once its archives are where they belong.
enum Night {
    Skipped,
    Made(HashSet<BackupName>),
    Failed(HashSet<BackupName>),
    /// Not enough free space in `backup_dir`: no backup was started.
    Refused,
}

impl Job<'_> {
    fn fail(&mut self, err: Error) {
        log::error!("{err}");
        self.record.errors.push(err.message);
        self.code = self.code.most_severe(err.code);
    }

    fn save_history(&self) {
        if let Err(err) = state::save_history(&self.lock.dir, &self.history) {
            log::warn!("cannot save {}: {err}", self.lock.dir.path().display());
        }
    }

    /// The node's CVP files, without those remembered as failed.
    fn usable_local(&self) -> Result<Vec<LocalFile>> {
        let failed = self.history.failed();
        Ok(list_local(&self.config)?
            .into_iter()
            .filter(|f| !failed.contains(&f.name))
            .collect())
    }

    fn execute(&mut self) {
        // Credentials are checked first, but a bad key does not stop the local backup: a
        // backup on the node is better than none when the copy cannot happen.
        let passwords: Vec<Result<Option<Secret>>> = self
            .config
            .destinations()
            .map(|server| credentials(server, &self.config.path))
            .collect();
        if let Err(err) = self.refuse_beside_another_backup() {
            return self.fail(err);
        }
        if let Err(err) = self.recover_from_a_dead_backup() {
            return self.fail(err);
        }
        let before = match self.usable_local() {
            Ok(local) => local,
            Err(err) => return self.fail(err),
        };
        let room = self.measure_room(&before);
        let night = if self.options.no_backup {
            log::info!("--no-backup: bringing the remote up to date with the newest local set");
            Night::Skipped
        } else {
            match self.backup_night(before, room) {
                Ok(night) => night,
                Err(err) => return self.fail(err),
            }
        };
        if let Some(signal) = signals::received() {
            log::warn!("stopped by {signal} before the copy: nothing was copied or pruned");
            // Never a good night, even when the backup itself had finished: its set is not on
            // the server. A backup the signal stopped has already failed the night.
            if self.code == ExitCode::Success {
                self.fail(Error::copy(format!(
                    "stopped by {signal} before the copy: tonight's set is not on the server; \
                     the next run copies it"
                )));
            }
            return;
        }
        let after = match self.usable_local() {
            Ok(files) => files,
            Err(err) => return self.fail(err),
        };
        let names: Vec<BackupName> = after.iter().map(|f| f.name).collect();
        warn_about_future_stamps(&names, self.now);
        let tonight = match &night {
            Night::Skipped | Night::Refused => Tonight::Skipped,
            Night::Made(new) => Tonight::Made(new),
            Night::Failed(new) => Tonight::Failed(new),
        };
        let known = self.history.known();
        let selection = restore_set::select(
            &names,
            tonight,
            self.history.last_good().as_ref(),
            &known,
            self.now,
        );
        if let (Night::Made(_), Some(set)) = (&night, &selection.set) {
            // What tonight's backup wrote, whatever its stamps: recorded for later nights.
            self.history.record(set);
            self.save_history();
        }
        log_selection(&selection);
        self.record.restore_set = selection.set.as_ref().map(|s| s.data.file_name());
        self.history.keep_checked(&names);
        let files: Vec<LocalFile> = selection
            .files()
            .iter()
            .filter_map(|name| after.iter().find(|f| f.name == *name).cloned())
            .map(|mut file| {
                file.check_archive &= !self.history.was_checked(file.name, file.size);
                file
            })
            .collect();
        if selection.set.is_none() {
            self.fail(Error::copy(format!(
                "no data backup in {} to copy: the backup server has no restore set from this run",
                self.config.backup.backup_dir.display()
            )));
        }
        let before_copy = self.code;
        let nights = self.copy_everywhere(passwords, &files, &selection, &night);
        let damaged: HashSet<BackupName> = nights
            .iter()
            .flat_map(|n| n.damaged.iter().copied())
            .collect();
        if !damaged.is_empty() {
            self.take_in(nights, before_copy, selection.set.as_ref());
            return self.damaged_backup(&damaged, &night);
        }
        let verified_everywhere = !nights.is_empty() && nights.iter().all(|n| n.verified);
        if let Some(set) = selection
            .set
            .as_ref()
            .filter(|_| nights.iter().any(|n| n.verified))
        {
            self.adopt_as_last_good(set, &names);
            // Its members as verified: the node keeps exactly those while it is the last
            // set a destination has (a by-hand set's images file is not the rule's to guess).
            self.history.record(set);
            for verified in nights.iter().filter(|n| n.verified) {
                self.history.set_last_verified(&verified.name, set.data);
            }
            self.save_history();
        }
        self.take_in(nights, before_copy, selection.set.as_ref());
        if signals::received().is_some() {
            return log::warn!("pruning skipped: the run was stopped");
        }
        // Tonight's archives no copy read (every destination down): read here before they
        // count toward `limit`, so a damaged one never prunes the set before it.
        if let Night::Made(new) = &night {
            let damaged = self.check_unread(&files, new);
            if !damaged.is_empty() {
                return self.damaged_backup(&damaged, &night);
            }
        }
        if selection.set.is_some() && retention::prunes_node(&tonight, verified_everywhere) {
            self.prune_local(&after, &selection, verified_everywhere);
        } else if matches!(night, Night::Failed(_)) {
            log::warn!("pruning skipped: the backup did not complete");
        }
    }

    /// An archive the copy found damaged fails the night as a backup that failed: never
    /// published as a set, set aside (with the rest of tonight's backup when it is tonight's),
    /// nothing pruned; the last good set stays on the node and on every destination.
    fn damaged_backup(&mut self, damaged: &HashSet<BackupName>, night: &Night) {
        // Nothing was copied as a set tonight; the record's recovery point stays the last one.
        self.record.restore_set = None;
        // Only tonight's backup is set aside: an older archive found damaged (a shared images
        // file copied to a new destination, rot on the node's disk) is reported, not moved,
        // and its copies on the servers stay as they are.
        let mut aside = HashSet::new();
        if let Night::Made(new) = night {
            if new.iter().any(|name| damaged.contains(name)) {
                self.record.backup_succeeded = Some(false);
                aside.extend(new.iter().copied());
                if let Some((last_good, older)) = self.good_before.take() {
                    self.history.last_good = last_good;
                    self.history.older_than_last_good = older;
                }
            }
        }
        let older: HashSet<BackupName> = damaged.difference(&aside).copied().collect();
        if !older.is_empty() {
            self.fail(Error::new(
                ExitCode::BackupFailed,
                format!(
                    "{} on this node, from an earlier backup, {} not a whole archive (changed on \
                     the node's disk since it was written): not copied; a copy already on a \
                     server is kept. A set that needs it cannot be restored from this node",
                    describe_names(&older),
                    if older.len() == 1 { "is" } else { "are" },
                ),
            ));
            if aside.is_empty() {
                return self.save_history();
            }
        }
        let kept = self
            .history
            .last_good()
            .map(|good| {
                format!(
                    "the last good set ({}) stays on the node and the servers",
                    good.data
                )
            })
            .unwrap_or_else(|| "there is no earlier good set".into());
        self.fail(Error::new(
            ExitCode::BackupFailed,
            format!(
                "{} {} not a whole archive: the backup failed although cvpi reported \
                 success; nothing of it is published as a set and nothing is pruned; {kept}",
                describe_names(&damaged.intersection(&aside).copied().collect()),
                if damaged.intersection(&aside).count() == 1 {
                    "is"
                } else {
                    "are"
                },
            ),
        ));
        self.set_aside(&aside);
        self.save_history();
    }

    /// Tonight's new archives among `files` that no upload checked (read here, once); the
    /// damaged ones.
    fn check_unread(
        &mut self,
        files: &[LocalFile],
        new: &HashSet<BackupName>,
    ) -> HashSet<BackupName> {
        let mut damaged = HashSet::new();
        for file in files
            .iter()
            .filter(|f| f.check_archive && new.contains(&f.name))
        {
            if self.history.was_checked(file.name, file.size) {
                continue;
            }
            let opened = crate::safe_fs::open_file(&file.path);
            match opened.and_then(|f| crate::archive::check_file(&f)) {
                Ok(Ok(summary)) => {
                    log::info!(
                        "{}: a whole archive ({} files, {} bytes inflated; read here, as no copy \
                         read it tonight)",
                        file.name,
                        summary.members,
                        summary.inflated
                    );
                    self.history.record_checked(file.name, file.size);
                }
                Ok(Err(damage)) => {
                    log::error!("{}", transfer::damaged_archive(&file.path, &damage));
                    damaged.insert(file.name);
                }
                Err(err) => log::warn!("cannot read {}: {err}", file.path.display()),
            }
        }
        damaged
    }

    /// Tonight's set to every destination, side by side (each in its own thread, its
    /// messages starting with its name when there are several).
    fn copy_everywhere(
        &mut self,
        passwords: Vec<Result<Option<Secret>>>,
        files: &[LocalFile],
        selection: &Selection,
        night: &Night,
    ) -> Vec<DestinationNight> {
        let servers: Vec<ServerConfig> = self.config.destinations().cloned().collect();
        let several = servers.len() > 1;
        let shared = Shared {
            history: std::sync::Mutex::new(std::mem::take(&mut self.history)),
            state: &self.lock.dir,
            node: self.config.backup.node_name.clone(),
            now: self.now,
            ini: &self.config.path,
        };
        let nothing_made = HashSet::new();
        let tonight = copy_night::Tonight {
            files,
            selection,
            may_prune: !matches!(night, Night::Failed(_)),
            made: match night {
                Night::Made(new) => new,
                _ => &nothing_made,
            },
        };
        let nights: Vec<DestinationNight> = std::thread::scope(|scope| {
            let workers: Vec<_> = servers
                .iter()
                .zip(passwords)
                .map(|(server, password)| {
                    let (shared, tonight) = (&shared, &tonight);
                    let worker = scope.spawn(move || {
                        if several {
                            logging::set_context(Some(server.name.clone()));
                        }
                        copy_night::copy_to(server, password, tonight, shared)
                    });
                    (server, worker)
                })
                .collect();
            workers
                .into_iter()
                .map(|(server, worker)| {
                    worker.join().unwrap_or_else(|_| {
                        let message = format!("the copy to {} crashed", server.describe());
                        log::error!("{message}");
                        DestinationNight {
                            name: server.name.clone(),
                            record: RunRecord {
                                destination: server.label(),
                                errors: vec![message],
                                ..RunRecord::default()
                            },
                            code: ExitCode::Copy,
                            verified: false,
                            damaged: Vec::new(),
                        }
                    })
                })
                .collect()
        });
        self.history = shared.history.into_inner().unwrap_or_default();
        if several {
            for n in &nights {
                let state = if n.verified {
                    "verified"
                } else {
                    "NOT verified"
                };
                log::info!(
                    "destination {} ({}): tonight's set {state}, exit {}",
                    n.name,
                    n.record.destination,
                    n.code
                );
            }
            if let Some(down) = nights.iter().find(|n| !n.verified) {
                log::warn!(
                    "pruning of the node is held back for destination {}: the last set \
                     verified there is kept on the node until tonight's is",
                    down.name
                );
            }
        }
        nights
    }

    /// Each destination's part of the night into the run's record: `main`'s into the record
    /// itself, the others' as its `extra`; each destination's code counts the backup's.
    fn take_in(
        &mut self,
        nights: Vec<DestinationNight>,
        backup_code: ExitCode,
        set: Option<&RestoreSet>,
    ) {
        let verified_at = chrono::Local::now().to_rfc3339();
        for night in nights {
            let code = backup_code.most_severe(night.code);
            self.code = self.code.most_severe(night.code);
            let mut part = night.record;
            part.destination_exit_code = Some(code.code());
            part.exit_code = code.code();
            if let (true, Some(set)) = (night.verified, set) {
                part.recovery_point = Some(set.data.file_name());
                part.recovery_point_verified = Some(verified_at.clone());
            }
            if night.name == config::MAIN {
                self.record.errors.extend(part.errors);
                self.record.files = part.files;
                self.record.bytes_uploaded = part.bytes_uploaded;
                self.record.pruned_remote = part.pruned_remote;
                self.record.remote_sets = part.remote_sets;
                self.record.immutable = part.immutable;
                self.record.copy_seconds = part.copy_seconds;
                self.record.retry_wait_seconds = part.retry_wait_seconds;
                self.record.recovery_point = part.recovery_point;
                self.record.recovery_point_verified = part.recovery_point_verified;
                self.record.destination_exit_code = part.destination_exit_code;
                self.record.destination_name = part.destination_name;
                self.copy_seconds = part.copy_seconds.unwrap_or(0.0);
            } else {
                self.record
                    .errors
                    .extend(part.errors.iter().map(|e| format!("[{}] {e}", night.name)));
                part.started = self.record.started.clone();
                part.version = self.record.version.clone();
                self.record.extra.push(part);
            }
        }
    }

    /// A CVP backup already running (root's stock cron line, an operator by hand): two at
    /// once must not happen, and the files it is writing are not ours to choose, adopt or set
    /// aside. The night does nothing.
    fn finish(mut self, clock: Instant, monitoring: Monitoring) -> ExitCode {
        let seconds = clock.elapsed().as_secs_f64();
        let uploaded = self.record.files.iter().filter(|f| f.uploaded).count();
        self.record.finished = chrono::Local::now().to_rfc3339();
        self.record.exit_code = self.code.code();
        self.record.seconds = seconds;
        self.record.megabytes_per_second =
            megabytes_per_second(self.record.bytes_uploaded, self.copy_seconds);
        for extra in &mut self.record.extra {
            extra.finished = self.record.finished.clone();
            extra.seconds = seconds;
            let uploaded = extra.files.iter().filter(|f| f.uploaded).count();
            let line = format!(
                "summary for destination {}: files={} uploaded={uploaded} bytes={} \
                 copy_seconds={:.1} MB/s={:.1} pruned_remote={} exit={}",
                extra.destination_name.as_deref().unwrap_or("?"),
                extra.files.len(),
                extra.bytes_uploaded,
                extra.copy_seconds.unwrap_or(0.0),
                extra.megabytes_per_second,
                extra.pruned_remote,
                extra.exit_code
            );
            if extra.exit_code == 0 {
                log::info!("{line}");
            } else {
                log::error!("{line}");
            }
        }
        let streams = self
            .record
            .files
            .iter()
            .filter_map(|f| f.streams)
            .max()
            .unwrap_or(0);
        let summary = format!(
            "summary: files={} uploaded={uploaded} bytes={} copy_seconds={:.1} MB/s={:.1} \
             streams={streams} total_seconds={seconds:.1} pruned_local={} pruned_remote={} exit={}",
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
        self.record.local_sets = self.usable_local().ok().map(|files| {
            files
                .iter()
                .filter(|file| file.name.kind == Kind::Data)
                .count()
        });
        record_run(&self.config.backup.state_dir, &mut self.record);
        logging::flush();
        // The next run need not wait for a slow monitoring server.
        let Job {
            lock, record, code, ..
        } = self;
        drop(lock);
        monitoring.run_finished(&record, &summary);
        code
    }
}

fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
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

pub(crate) fn log_keeps(side: &str, decision: &Decision) {
    for (name, reason) in &decision.keep {
        log::debug!("{side}: keep {name}: {reason}");
    }
}
