//! The main job: back up CVP, copy the restore set, verify it, prune, report.

use crate::backup;
use crate::claim;
use crate::concurrent;
use crate::config::{self, Config, ServerConfig, Streams};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::lock;
use crate::logging;
use crate::monitor::Monitoring;
use crate::names::{BackupName, Kind, RemoteFile, RemoteName, Stamp};
use crate::plan::{self, CopyDecision, FileFacts, Plan, SealedCopy};
use crate::progress;
use crate::remote::known_hosts::Verified;
use crate::remote::sftp::{self, ConnectOptions, SftpRemote};
use crate::remote::{Remote, RemoteEntry};
use crate::restore_set::{self, RestoreSet, Selection, Tonight};
use crate::retention::{self, Decision, Policy};
use crate::safe_fs::Dir;
use crate::seal::Recipients;
use crate::secret::{self, Secret};
use crate::sets::{self, Member};
use crate::signals;
use crate::space::{self, Room};
use crate::state::{self, BackupWindow, CopiedFile, History, RunRecord, SealedUpload};
use crate::transfer::{self, Seen};
use std::collections::{HashMap, HashSet};
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
    /// When it was last written: tells a backup's files from another backup's.
    pub(crate) modified: Option<std::time::SystemTime>,
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
                ExitCode::Success
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
    log::info!(
        "starting: configuration {}, destination {}@{}:{}, keeping {limit} local data backups",
        config.path.display(),
        config.server.user,
        config.server.host,
        config.server.destination
    );
    let mut history = match state::load_history(&lock.dir) {
        Ok(history) => history,
        Err(err) => {
            log::warn!("{err}");
            History::default()
        }
    };
    fill_last_verified(
        &mut history,
        &config.backup.state_dir,
        &destination_label(&config),
    );
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
    };
    job.execute();
    job.finish(clock, monitoring)
}

/// A history from before it kept the last set verified on the server: the previous run's
/// record says it, read the way `RunRecord::carry_over` reads records of any version (the
/// recovery point, or an older record's successful restore set), for this destination only.
fn fill_last_verified(history: &mut History, state_dir: &Path, destination: &str) {
    if history.last_verified.is_some() {
        return;
    }
    let Some(previous) = state::load(state_dir).ok().flatten() else {
        return;
    };
    let mut reading = RunRecord {
        destination: destination.to_string(),
        ..RunRecord::default()
    };
    reading.carry_over(Some(&previous));
    history.last_verified = reading.recovery_point;
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
    record.carry_over(previous.as_ref());
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
        let password = credentials(&self.config);
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
        }
        let mut link = None;
        let all_copied = match password {
            _ if files.is_empty() => false,
            Ok(password) => {
                let link = link.insert(self.link(password, &files));
                let (clock, policy) = (Instant::now(), RetryPolicy::of(&self.config.server));
                let copied = self.copy_files(link, &policy, &files, selection.set.as_ref());
                let waited = policy.waited.get();
                self.copy_seconds = clock.elapsed().saturating_sub(waited).as_secs_f64();
                self.record.copy_seconds = Some(self.copy_seconds);
                self.record.retry_wait_seconds = Some(waited.as_secs_f64());
                copied
            }
            Err(err) => {
                log::warn!("copy skipped: the password cannot be used");
                self.fail(err);
                false
            }
        };
        let verified = match (all_copied, &selection.set) {
            (true, Some(set)) => {
                self.adopt_as_last_good(set, &names);
                // Its members as verified: the node keeps exactly those while it is the last
                // set the server has (a by-hand set's images file is not the rule's to guess).
                self.history.record(set);
                self.history.last_verified = Some(set.data.file_name());
                self.save_history();
                self.record.recovery_point = Some(set.data.file_name());
                self.record.recovery_point_verified = Some(chrono::Local::now().to_rfc3339());
                true
            }
            _ => false,
        };
        if signals::received().is_some() {
            return log::warn!("pruning skipped: the run was stopped");
        }
        if selection.set.is_some() && retention::prunes_node(&tonight, verified) {
            self.prune_local(&after, &selection, verified);
        } else if matches!(night, Night::Failed(_)) {
            log::warn!("pruning skipped: the backup did not complete");
        }
        let Some(link) = link.as_mut().filter(|_| all_copied) else {
            return log::warn!(
                "remote pruning skipped: not every file of the restore set is on the remote"
            );
        };
        if self.config.server.remote_limit > 0 && verified && !matches!(night, Night::Failed(_)) {
            match link.remote() {
                Ok(remote) => self.prune_remote(remote, &selection),
                Err(err) => log::warn!("remote pruning skipped: {err}"),
            }
        }
        self.count_remote_sets(link);
    }

    /// The connection tonight's files go over (made when first needed).
    fn link(&self, password: Option<Secret>, files: &[LocalFile]) -> Link {
        let parallel = self.config.server.streams != Streams::Fixed(1)
            && files
                .iter()
                .any(|file| file.size >= transfer::PARALLEL_THRESHOLD);
        Link {
            server: Arc::new(self.config.server.clone()),
            password: password.map(Arc::new),
            remote: None,
            extra: Vec::new(),
            connecting: None,
            parallel,
            streams: None,
            wanted_extra: 0,
            releasing: None,
        }
    }

    /// A CVP backup already running (root's stock cron line, an operator by hand): two at
    /// once must not happen, and the files it is writing are not ours to choose, adopt or set
    /// aside. The night does nothing.
    fn refuse_beside_another_backup(&self) -> Result<()> {
        let running = match self.other_backups(None) {
            Ok(running) if running.is_empty() => return Ok(()),
            Ok(running) => concurrent::describe(&running),
            Err(why) => why,
        };
        Err(Error::new(
            ExitCode::Locked,
            format!(
                "a CVP backup is already running ({running}): not starting another, and \
                 nothing is copied or pruned while it writes; if it is root's stock line \
                 ({}), remove it from root's crontab",
                concurrent::STOCK_SCRIPT
            ),
        ))
    }

    /// The CVP backups running now besides `ours` (the session of this run's backup). Err
    /// (the look did not finish): one may be, and the night must act as if one were.
    fn other_backups(
        &self,
        ours: Option<u32>,
    ) -> std::result::Result<Vec<concurrent::Process>, String> {
        let backup = &self.config.backup;
        concurrent::running(&backup.command, &backup.user, ours)
            .map_err(|why| format!("cannot tell whether one is: {why}"))
    }

    /// The data backups on the server once the night is done, for the metrics.
    fn count_remote_sets(&mut self, link: &mut Link) {
        match link.remote().and_then(|remote| remote.list()) {
            Ok(listing) => {
                // NAME and NAME.age of one data file are one set.
                let data: HashSet<BackupName> = backup_names(&listing.unwrap_or_default())
                    .into_iter()
                    .filter(|name| name.kind == Kind::Data)
                    .collect();
                self.record.remote_sets = Some(data.len());
            }
            Err(err) => log::warn!("cannot count the sets on the remote: {err}"),
        }
    }

    /// Without a history (a new install, or a node moved from the Python scripts), the set
    /// just verified on the server becomes the newest good one this tool knows: every other
    /// data file is older than it from now on, whatever the clock does to their stamps.
    fn adopt_as_last_good(&mut self, set: &RestoreSet, local: &[BackupName]) {
        if self.history.last_good.is_some() {
            return;
        }
        let data = set.data;
        self.history.record(set);
        self.history.last_good = Some(data.file_name());
        self.history.older_than_last_good = local
            .iter()
            .filter(|n| n.kind == Kind::Data && **n != data)
            .map(|n| n.file_name())
            .collect();
        self.save_history();
    }

    /// A run that died during its backup (killed, node restarted) left a note: whatever
    /// appeared since is not known to be complete, so it is set aside like a failed backup's.
    fn recover_from_a_dead_backup(&mut self) -> Result<()> {
        let Some(before) = self.history.backup_started.clone() else {
            return Ok(());
        };
        let window = self.history.backup_window.clone();
        let (leftovers, foreign) = appeared_during(&before, window.as_ref(), &self.usable_local()?);
        log::warn!(
            "the previous run ended during its CVP backup (the job was killed or the node \
             restarted): {} is set aside as failed",
            describe_names(&leftovers)
        );
        warn_about_foreign(&foreign);
        self.set_aside(&leftovers);
        self.recovered = leftovers;
        self.history.backup_started = None;
        self.history.backup_window = None;
        self.save_history();
        Ok(())
    }

    /// The room `backup_dir` has for tonight's backup (recorded for `status` and the
    /// metrics, also on nights without a backup); None when its file system cannot be
    /// looked at.
    fn measure_room(&mut self, local: &[LocalFile]) -> Option<Room> {
        let free = space::free_bytes(&self.config.backup.backup_dir)?;
        let last_set = newest_set_bytes(local, &self.history, self.now);
        let room = space::assess(self.config.backup.min_free_space, free, last_set);
        self.record.free_bytes = Some(room.free);
        self.record.free_floor_bytes = Some(room.floor);
        Some(room)
    }

    /// Run the backup. A failed one has its archives set aside before anything is chosen.
    /// `before`: the node's CVP files as the night began; `room`: what `backup_dir` has for
    /// it (None: could not be measured).
    fn backup_night(&mut self, before: Vec<LocalFile>, room: Option<Room>) -> Result<Night> {
        let room = match room {
            Some(room) if !room.enough() => Some(self.make_room(room, &before)),
            room => room,
        };
        match room {
            Some(room) if !room.enough() => {
                self.record.backup_succeeded = Some(false);
                self.fail(Error::new(
                    ExitCode::BackupFailed,
                    format!(
                        "not enough free space in {} for tonight's backup: {}; the backup was \
                         not started (the previous set is still copied). Free space there, \
                         lower limit, or set min_free_space",
                        self.config.backup.backup_dir.display(),
                        room.describe()
                    ),
                ));
                return Ok(Night::Refused);
            }
            Some(room) => log::info!(
                "free space in {}: {}",
                self.config.backup.backup_dir.display(),
                room.describe()
            ),
            None => log::warn!(
                "cannot measure the free space in {}: the backup starts without the \
                 min_free_space check",
                self.config.backup.backup_dir.display()
            ),
        }
        let names_before: Vec<String> = before.iter().map(|f| f.name.file_name()).collect();
        self.history.backup_started = Some(names_before.clone());
        self.history.backup_window = Some(BackupWindow::starting_now(
            self.config.backup.timeout + backup::GRACE,
        ));
        self.save_history();
        let (succeeded, session) = self.run_backup();
        // One started while ours ran (a stock line at another minute, an operator): the
        // files that appeared cannot be told apart, so none is adopted, copied or set aside.
        let others = match self.other_backups(session) {
            Ok(others) if others.is_empty() => None,
            Ok(others) => Some(concurrent::describe(&others)),
            Err(why) => Some(why),
        };
        if let Some(others) = others {
            self.history.backup_started = None;
            self.history.backup_window = None;
            self.save_history();
            return Err(Error::new(
                ExitCode::Locked,
                format!(
                    "another CVP backup started while this one ran ({others}): the files that \
                     appeared cannot be told apart, so none is adopted, copied or set aside \
                     tonight; the next night sorts them out"
                ),
            ));
        }
        let after = self.usable_local();
        // No other backup ran as ours started or ended: what appeared is ours, whatever its
        // time says (a clock stepped back during the backup must not make a partial file
        // look like someone else's good one).
        let new: HashSet<BackupName> = match &after {
            Ok(after) => appeared_during(&names_before, None, after).0,
            Err(_) => HashSet::new(),
        };
        let newest_data = new
            .iter()
            .filter(|n| n.kind == Kind::Data)
            .max_by_key(|n| n.stamp)
            .copied();
        let night = match (succeeded, newest_data) {
            (true, Some(data)) => {
                self.history.last_good = Some(data.file_name());
                self.history.older_than_last_good = before
                    .iter()
                    .filter(|f| f.name.kind == Kind::Data)
                    .map(|f| f.name.file_name())
                    .collect();
                Night::Made(new)
            }
            (made, _) => {
                if made {
                    self.record.backup_succeeded = Some(false);
                    self.fail(Error::new(
                        ExitCode::BackupFailed,
                        format!(
                            "the backup command reported success but wrote no new data backup \
                             in {}",
                            self.config.backup.backup_dir.display()
                        ),
                    ));
                }
                self.set_aside(&new);
                Night::Failed(new)
            }
        };
        self.history.backup_started = None;
        self.history.backup_window = None;
        self.save_history();
        after?;
        Ok(night)
    }

    /// Rename the data and images files of a failed backup to `NAME.failed`: never copied,
    /// never counted, never taken for a backup by anyone. Only the newest failed night's are
    /// kept (to look at); older ones go, and all go once a good set is on the server. What
    /// cannot be renamed is remembered in `state_dir` instead.
    fn set_aside(&mut self, names: &HashSet<BackupName>) {
        let folder = &self.config.backup.backup_dir;
        for name in names.iter().filter(|n| n.kind != Kind::Log) {
            let (from, to) = (
                folder.join(name.file_name()),
                folder.join(name.failed_name()),
            );
            let renamed = Dir::open(folder)
                .and_then(|dir| dir.rename(&name.file_name(), &name.failed_name()));
            match renamed {
                Ok(()) => log::warn!(
                    "{name}: set aside as {} (from a failed backup: it is never copied)",
                    name.failed_name()
                ),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    log::error!(
                        "cannot rename {} to {}: {err}; it is remembered as failed in {}",
                        from.display(),
                        to.display(),
                        self.lock.dir.path().display()
                    );
                    self.history.failed.push(name.file_name());
                }
            }
        }
        for (older, path, _) in list_failed(&self.config) {
            if !names.contains(&older) && !self.recovered.contains(&older) {
                remove_local(&path, "an older failed backup's archive");
            }
        }
    }

    /// Too little room for tonight's backup: failed backups' archives (kept only to look at;
    /// nothing restores from them) give theirs, when that is enough: older ones first, then
    /// what tonight's recovery from a dead backup set aside. The room after that.
    fn make_room(&mut self, room: Room, local: &[LocalFile]) -> Room {
        let failed = list_failed(&self.config);
        let (recovered, older): (Vec<_>, Vec<_>) = failed
            .into_iter()
            .partition(|(name, _, _)| self.recovered.contains(name));
        let needed = room.floor.saturating_sub(room.free);
        let sum = |files: &[(BackupName, PathBuf, u64)]| files.iter().map(|f| f.2).sum::<u64>();
        let to_delete = if sum(&older) >= needed {
            older
        } else if sum(&older) + sum(&recovered) >= needed {
            older.into_iter().chain(recovered).collect()
        } else {
            // Not enough however many go: keep them to look at; the night is refused.
            Vec::new()
        };
        let mut freed = false;
        for (_, path, _) in &to_delete {
            freed |= remove_local(
                path,
                "a failed backup's archive: tonight's backup needs the room",
            );
        }
        match freed {
            true => self.measure_room(local).unwrap_or(room),
            false => room,
        }
    }

    /// Whether the backup succeeded, and the session it ran in.
    fn run_backup(&mut self) -> (bool, Option<u32>) {
        let command = &self.config.backup.command;
        let user = &self.config.backup.user;
        log::info!(
            "running the CVP backup: {} (backup_timeout {} s)",
            backup::describe(command, user),
            self.config.backup.timeout.as_secs()
        );
        self.record.backup_ran = true;
        let outcome = backup::run(command, user, self.config.backup.timeout);
        let session = outcome.as_ref().ok().map(|o| o.session);
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
                        "the CVP backup command failed ({}) after {:.0} s: its archives are set \
                         aside and never copied; its log is, and the previous restore set is \
                         kept up to date",
                        outcome.failure(),
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
        (succeeded, session)
    }

    fn copy_files(
        &mut self,
        link: &mut Link,
        policy: &RetryPolicy,
        files: &[LocalFile],
        set: Option<&RestoreSet>,
    ) -> bool {
        match retry(policy, link, |link| {
            let created = link.remote()?.ensure_destination()?;
            link.plan_streams()?;
            Ok(created)
        }) {
            Ok(true) => log::info!("created the destination {}", link.label()),
            Ok(false) => {}
            Err(err) => {
                self.fail(err);
                return false;
            }
        }
        let node = self.config.backup.node_name.clone();
        match retry(policy, link, |link| claim::claim(link.remote()?, &node)) {
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
        // What the server holds of each file (NAME or NAME.age), and its sha256.
        let mut digests: HashMap<BackupName, (RemoteFile, String)> = HashMap::new();

        let mut all_ok = true;
        let mut first_attempts = if link.wanted_extra > 0 && files.len() > 1 {
            side_by_side(link, files, &self.history.sealed)
        } else {
            HashMap::new()
        };
        for (index, file) in files.iter().enumerate() {
            let outcome = match first_attempts.remove(&index) {
                Some(Err(err)) if err.transient && signals::received().is_none() => {
                    log::warn!("{err}; trying {} again on its own", file.name);
                    retry(policy, link, |link| {
                        copy_one(link, file, &self.history.sealed)
                    })
                }
                Some(outcome) => outcome,
                None => retry(policy, link, |link| {
                    copy_one(link, file, &self.history.sealed)
                }),
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
                    if replaced {
                        // Saved at once: other sets' manifests still list the old sha256.
                        let name = sent.file_name();
                        self.history.restate.retain(|(n, _)| *n != name);
                        self.history.restate.push((name, done.digest.clone()));
                        self.save_history();
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
                    self.record.bytes_uploaded += done.bytes;
                    digests.insert(file.name, (sent, done.digest.clone()));
                    if let (true, Some(recipients)) = (sent.sealed, &self.config.server.encrypt_to)
                    {
                        let upload = SealedUpload {
                            name: sent.file_name(),
                            sha256: done.digest.clone(),
                            bytes: done.bytes,
                            local_bytes: file.size,
                            recipients: recipients.fingerprint.clone(),
                        };
                        self.history.record_sealed(upload);
                        self.save_history();
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
                    self.fail(err);
                    all_ok = false;
                    if signals::received().is_some() {
                        break;
                    }
                }
            }
        }
        link.release_extras();
        if let (true, Some(set)) = (all_ok, set) {
            let members: Vec<Member> = set
                .files()
                .into_iter()
                .filter_map(|name| {
                    let (file, sha256) = digests.get(&name)?.clone();
                    Some(Member { file, sha256 })
                })
                .collect();
            let text = sets::render_manifest(&members);
            match retry(policy, link, |link| {
                transfer::publish_manifest(link.remote()?, set.data, &text)
            }) {
                Ok(true) => log::info!(
                    "{}: the set's manifest, `sha256sum -c` checks every member",
                    set.data.manifest_name()
                ),
                Ok(false) => {}
                Err(err) => {
                    self.fail(err);
                    all_ok = false;
                }
            }
        }
        // Files that replaced one of the same name (a new encryption of a shared images file),
        // tonight or on a night stopped before the older manifests were updated.
        let replaced_files: Vec<(RemoteFile, String)> = self
            .history
            .restate
            .iter()
            .filter_map(|(name, digest)| Some((RemoteFile::parse(name)?, digest.clone())))
            .collect();
        if !replaced_files.is_empty() && signals::received().is_none() {
            let except = set.map(|s| s.data);
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
                    self.history.restate.clear();
                    self.save_history();
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

    /// Prune the node: the newest `limit` sets and the last set verified on the server stay.
    /// `verified`: tonight's set is on the server (else this is a good backup whose copy
    /// failed, pruned all the same so that /data never fills while the server is down).
    fn prune_local(&mut self, files: &[LocalFile], selection: &Selection, verified: bool) {
        let names: Vec<BackupName> = files.iter().map(|f| f.name).collect();
        let mut known = self.history.known();
        known.extend(selection.set.clone());
        let policy = Policy {
            keep_data: self.limit as usize,
            also_keep: self.history.last_verified(),
        };
        if !verified {
            log::warn!(
                "the copy did not complete, but the backup did: pruning the node all the same \
                 (keeping the newest {} and the last set verified on the server, {}) so that \
                 {} does not fill while copies fail",
                self.limit,
                policy
                    .also_keep
                    .map(|n| n.file_name())
                    .unwrap_or_else(|| "none yet".into()),
                self.config.backup.backup_dir.display()
            );
        }
        let decision =
            retention::apply_policy(&names, policy, &selection.protect, &known, self.now);
        log_keeps("local", &decision);
        for name in &decision.remove {
            let Some(file) = files.iter().find(|f| f.name == *name) else {
                continue;
            };
            if remove_local(&file.path, "pruned") {
                self.record.pruned_local += 1;
            }
        }
        // A good set is on the server: failed backups' archives have served their purpose.
        let older_failed = list_failed(&self.config)
            .into_iter()
            .filter(|(name, _, _)| verified && !self.recovered.contains(name));
        for (_, path, _) in older_failed {
            remove_local(
                &path,
                "a failed backup's archive, now that a good set is verified",
            );
        }
        // What the history remembers of files that are gone is forgotten; a failed archive
        // that could not be renamed is remembered for as long as it is on the node.
        let on_disk: HashSet<String> = list_local(&self.config)
            .map(|files| files.iter().map(|f| f.name.file_name()).collect())
            .unwrap_or_default();
        let before = (self.history.failed.len(), self.history.sets.len());
        self.history.failed.retain(|name| on_disk.contains(name));
        self.history.sets.retain(|set| on_disk.contains(&set.data));
        if (self.history.failed.len(), self.history.sets.len()) != before {
            self.save_history();
        }
    }

    fn prune_remote(&mut self, remote: &mut dyn Remote, selection: &Selection) {
        let current = selection.files();
        let listing = match remote.list() {
            Ok(listing) => listing.unwrap_or_default(),
            Err(err) => return log::warn!("remote pruning skipped: {err}"),
        };
        let limit = self.config.server.remote_limit;
        let mut known: Vec<RestoreSet> = selection.set.iter().cloned().collect();
        // Which data files stay does not depend on their members; what each kept set needs
        // is what its manifest lists (the rule only for sets without one).
        let first = remote_retention(&listing, limit, &selection.protect, &known, self.now);
        for (data, _) in first.keep.iter().filter(|(n, _)| n.kind == Kind::Data) {
            match remote.read_small(&data.manifest_name(), 64 * 1024) {
                Ok(Some(text)) => {
                    known.extend(sets::parse_manifest(&String::from_utf8_lossy(&text), *data));
                }
                Ok(None) => {}
                Err(err) => return log::warn!("remote pruning skipped: {err}"),
            }
        }
        let decision = remote_retention(&listing, limit, &selection.protect, &known, self.now);
        log_keeps("remote", &decision);
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
            }
        }
        let names: Vec<String> = listing.iter().map(|e| e.name.clone()).collect();
        for leftover in retention::remote_leftovers(&names, &removed, &current) {
            match remote.remove(&leftover) {
                Ok(()) => log::info!(
                    "removed remote {leftover} (its file is gone, or an abandoned upload)"
                ),
                Err(err) => log::warn!("cannot remove remote {leftover}: {err}"),
            }
        }
    }

    fn finish(mut self, clock: Instant, monitoring: Monitoring) -> ExitCode {
        let seconds = clock.elapsed().as_secs_f64();
        let uploaded = self.record.files.iter().filter(|f| f.uploaded).count();
        self.record.finished = chrono::Local::now().to_rfc3339();
        self.record.exit_code = self.code.code();
        self.record.seconds = seconds;
        self.record.megabytes_per_second =
            megabytes_per_second(self.record.bytes_uploaded, self.copy_seconds);
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
    /// Whether a file of the restore set is large enough for several streams.
    parallel: bool,
    /// How many streams a large file goes over, and why: decided once the first
    /// connection has measured the round trip (`streams = auto`), or as configured.
    streams: Option<(usize, String)>,
    /// How many extra connections a large file will want.
    wanted_extra: usize,
    /// The extra connections closing in the background once the set's files are done.
    releasing: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(releasing) = self.releasing.take() {
            let _ = releasing.join();
        }
    }
}

impl Link {
    fn label(&self) -> String {
        self.server.label()
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
    fn plan_streams(&mut self) -> Result<()> {
        if self.streams.is_none() {
            let (count, why) = match self.server.streams {
                Streams::Auto => transfer::auto_streams(self.remote()?.measure_round_trip()),
                Streams::Fixed(n) => (n, format!("streams = {n}")),
            };
            if self.parallel {
                log::info!("large files go over {count} stream(s): {why}");
                self.wanted_extra = count - 1;
            }
            self.streams = Some((count, why));
        }
        self.remote()?;
        self.start_connecting(self.wanted_extra.saturating_sub(self.extra.len()));
        Ok(())
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
            sftp::connect_several(options, count)
        }));
    }

    /// Collect the background connections. A server that refuses some (MaxStartups, a
    /// per-user limit) still gets the file, over those it accepted: a warning, not an error.
    fn finish_connecting(&mut self) {
        let Some(connecting) = self.connecting.take() else {
            return;
        };
        let outcomes = connecting
            .join()
            .unwrap_or_else(|_| vec![Err(Error::connect("a connection attempt crashed"))]);
        let asked = outcomes.len();
        let mut refused = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(remote) => self.extra.push(remote),
                Err(err) => refused.push(err.message),
            }
        }
        if let Some(first) = refused.first() {
            log::warn!(
                "the server accepted {} of {asked} extra connections ({first}): large files go \
                 over {} streams; set `streams` lower to silence this",
                asked - refused.len(),
                self.extra.len() + 1
            );
            // Asking again for each file would meet the same limit.
            self.wanted_extra = self.extra.len();
        }
    }

    /// Up to `count` connections (the main one first), for a parallel upload: as many as
    /// the server accepts, at least the main one.
    fn streams(&mut self, count: usize) -> Result<Vec<&mut (dyn Remote + Send)>> {
        self.remote()?;
        self.finish_connecting();
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
    /// main one writes the manifest and prunes.
    fn release_extras(&mut self) {
        self.finish_connecting();
        self.wanted_extra = 0;
        if !self.extra.is_empty() && self.releasing.is_none() {
            self.releasing = Some(sftp::release_all(std::mem::take(&mut self.extra)));
        }
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
    /// Time spent waiting between attempts: not part of the copy time.
    waited: std::cell::Cell<std::time::Duration>,
}

impl RetryPolicy {
    fn of(server: &ServerConfig) -> RetryPolicy {
        RetryPolicy {
            retries: server.retries,
            wait: server.retry_wait,
            waited: Default::default(),
        }
    }
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

enum Copied {
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

/// One file, as one retryable unit: look at the remote, decide, upload if needed (over
/// several streams when it is large). `sent`: the encrypted copies this node sent
/// (`state::History::sealed`).
fn copy_one(link: &mut Link, file: &LocalFile, sent: &[SealedUpload]) -> Result<Copied> {
    let recipients = link.server.encrypt_to.clone();
    let encryption = recipients
        .as_deref()
        .map(|r| (r.fingerprint.as_str(), sent));
    let remote = link.remote()?;
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
            let (streams, because) = link.streams.clone().unwrap_or((1, String::new()));
            let mut remotes = if streams > 1 && size >= transfer::PARALLEL_THRESHOLD {
                link.streams(streams)?
            } else {
                let main: &mut (dyn Remote + Send) = link.remote()?;
                vec![main]
            };
            upload_over(
                &mut remotes,
                file,
                Upload {
                    target,
                    size,
                    why,
                    seen,
                },
                (&because, recipients.as_deref()),
            )
        }
    }
}

/// A file to upload, as the listing and the plan saw it.
#[derive(Clone, Copy)]
struct Upload {
    /// NAME, or NAME.age when the run encrypts.
    target: RemoteFile,
    size: u64,
    why: &'static str,
    seen: Seen,
}

/// Upload over the connections given: several streams for a large file, else the first.
fn upload_over(
    remotes: &mut [&mut (dyn Remote + Send)],
    file: &LocalFile,
    upload: Upload,
    (because, recipients): (&str, Option<&Recipients>),
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
        transfer::upload_parallel(remotes, &file.path, (target, recipients), seen, &bar)
    } else {
        log::info!("{target}: uploading {size} bytes ({why})");
        transfer::upload(
            &mut *remotes[0],
            &file.path,
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
/// one), so the round trips of the small files hide behind the large one. What fails here
/// (outcomes by index in `files`; a file missing was not tried) gets the usual retries,
/// one file at a time.
fn side_by_side(
    link: &mut Link,
    files: &[LocalFile],
    sent: &[SealedUpload],
) -> HashMap<usize, Result<Copied>> {
    let mut outcomes = HashMap::new();
    let recipients = link.server.encrypt_to.clone();
    let recipients = recipients.as_deref();
    let looked = (|| -> Result<Vec<(usize, CopyDecision, Seen)>> {
        let remote = link.remote()?;
        let listing = remote.list()?.unwrap_or_default();
        files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                let encryption = recipients.map(|r| (r.fingerprint.as_str(), sent));
                let decision = plan::decide(&gather_facts(remote, &listing, file, encryption)?);
                let target = match &decision {
                    CopyDecision::Upload { file, .. } | CopyDecision::AlreadyThere { file, .. } => {
                        *file
                    }
                };
                Ok((index, decision, Seen::in_listing(&listing, target)))
            })
            .collect()
    })();
    let decisions = match looked {
        Ok(decisions) => decisions,
        Err(err) => {
            if err.transient {
                link.reset();
            }
            return outcomes;
        }
    };
    let mut uploads = Vec::new();
    for (index, decision, seen) in decisions {
        match decision {
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
                    seen,
                },
            )),
        }
    }
    // The largest first: it takes the streams the others leave.
    uploads.sort_by_key(|(_, upload)| std::cmp::Reverse(upload.size));
    let (count, because) = link.streams.clone().unwrap_or((1, String::new()));
    let mut remotes = match link.streams(count) {
        Ok(remotes) if remotes.len() >= uploads.len() && !uploads.is_empty() => remotes,
        _ => return outcomes,
    };
    let for_largest = remotes.len() - (uploads.len() - 1);
    let (largest, others) = remotes.split_at_mut(for_largest);
    let results: Vec<(usize, Result<Copied>)> = std::thread::scope(|scope| {
        let because = because.as_str();
        let (first, rest) = uploads.split_first().expect("not empty");
        let mut workers = vec![(first.0, {
            let (index, upload) = *first;
            scope.spawn(move || upload_over(largest, &files[index], upload, (because, recipients)))
        })];
        for ((index, upload), remote) in rest.iter().copied().zip(others.iter_mut()) {
            workers.push((
                index,
                scope.spawn(move || {
                    let remote = std::slice::from_mut(remote);
                    upload_over(remote, &files[index], upload, (because, recipients))
                }),
            ));
        }
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
    if results
        .iter()
        .any(|(_, outcome)| outcome.as_ref().is_err_and(|err| err.transient))
    {
        link.reset();
    }
    outcomes.extend(results);
    outcomes
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
            transfer::publish_manifest(remote, data, &text)?;
            restated.push(data);
        }
    }
    Ok(restated)
}

fn describe_files(files: &[(RemoteFile, String)]) -> String {
    let names: Vec<String> = files.iter().map(|(f, _)| f.file_name()).collect();
    names.join(", ")
}

fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// The size of the newest good set on the node (its data file and the images file it
/// needs): what the next backup will about take.
pub(crate) fn newest_set_bytes(local: &[LocalFile], history: &History, now: Stamp) -> Option<u64> {
    let names: Vec<BackupName> = local.iter().map(|f| f.name).collect();
    let selection = restore_set::select(
        &names,
        Tonight::Skipped,
        history.last_good().as_ref(),
        &history.known(),
        now,
    );
    let set = selection.set?;
    let size = |name: Option<BackupName>| {
        name.and_then(|name| local.iter().find(|f| f.name == name))
            .map_or(0, |f| f.size)
    };
    Some(size(Some(set.data)) + size(set.images))
}

/// The CVP files that appeared since `before` (names) and can be a backup's that ran in
/// `window` (None: all of them); and those that appeared but were written outside it
/// (another backup's, or copied in or fetched since): never ours to set aside.
fn appeared_during(
    before: &[String],
    window: Option<&BackupWindow>,
    now: &[LocalFile],
) -> (HashSet<BackupName>, Vec<BackupName>) {
    let booted = state::boot_time();
    let mut ours = HashSet::new();
    let mut foreign = Vec::new();
    for file in now.iter().filter(|f| !before.contains(&f.name.file_name())) {
        let in_window = match (window, file.modified) {
            (Some(window), Some(modified)) => window.contains(modified, booted),
            _ => true,
        };
        if in_window {
            ours.insert(file.name);
        } else {
            foreign.push(file.name);
        }
    }
    foreign.sort_by_key(|n| n.file_name());
    (ours, foreign)
}

fn warn_about_foreign(foreign: &[BackupName]) {
    for name in foreign {
        log::warn!(
            "{name} appeared during the backup the job did not see finish, but was written \
             outside it (a backup made since, or copied in): left as it is, not set aside"
        );
    }
}

/// Stamps in the future come from a clock that was once wrong: they never count as the
/// newest set, and the operator is told once a night.
fn warn_about_future_stamps(names: &[BackupName], now: Stamp) {
    for name in names.iter().filter(|n| sets::is_future(n.stamp, now)) {
        log::warn!(
            "{name} is stamped in the future (this node's clock says {now}): it never counts as \
             the newest backup and never makes tonight's prunable; check the clock (NTP) and \
             delete the file if it is not needed"
        );
    }
}

fn describe_names(names: &HashSet<BackupName>) -> String {
    let mut list: Vec<String> = names.iter().map(|n| n.file_name()).collect();
    list.sort();
    if list.is_empty() {
        "nothing new".into()
    } else {
        list.join(", ")
    }
}

/// Delete a local file (a symlink itself, never what it points to), logging why; true when
/// it is gone.
fn remove_local(path: &Path, why: &str) -> bool {
    let removed = crate::safe_fs::split(path).and_then(|(folder, name)| {
        let dir = Dir::open(&folder)?;
        if dir.stat(&name)?.is_none() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        dir.remove(&name)
    });
    match removed {
        Ok(()) => {
            log::info!("deleted {} ({why})", path.display());
            true
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => {
            log::warn!("cannot delete {}: {err}", path.display());
            false
        }
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
        if let Err(err) = secret::check_identity_is_private(identity) {
            log::warn!("{err}");
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
    let mut files = scan(&config.backup.backup_dir, BackupName::parse, |kind| {
        kind != Kind::Log
    })?;
    for log_file in scan(&config.backup.log_dir, BackupName::parse, |kind| {
        kind == Kind::Log
    })? {
        if !files.iter().any(|f| f.name == log_file.name) {
            files.push(log_file);
        }
    }
    Ok(files)
}

/// Archives of failed backups set aside as `NAME.failed`: (name, path, size).
pub(crate) fn list_failed(config: &Config) -> Vec<(BackupName, PathBuf, u64)> {
    scan(&config.backup.backup_dir, BackupName::parse_failed, |_| {
        true
    })
    .unwrap_or_default()
    .into_iter()
    .map(|f| (f.name, f.path, f.size))
    .collect()
}

fn scan(
    dir: &Path,
    parse: impl Fn(&str) -> Option<BackupName>,
    wanted: impl Fn(Kind) -> bool,
) -> Result<Vec<LocalFile>> {
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
        let Some(name) = entry.file_name().to_str().and_then(&parse) else {
            continue;
        };
        if !wanted(name.kind) {
            continue;
        }
        // Not followed: a symlink is never taken for a backup.
        match entry.metadata() {
            Ok(meta) if meta.is_file() => files.push(LocalFile {
                name,
                path: entry.path(),
                size: meta.len(),
                modified: meta.modified().ok(),
            }),
            _ => continue,
        }
    }
    Ok(files)
}

/// What the run encrypts to (the recipients' fingerprint) and the encrypted copies this node
/// sent before; None: the run does not encrypt.
type Encryption<'a> = Option<(&'a str, &'a [SealedUpload])>;

fn gather_facts(
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
    if facts.remote_size == Some(file.size) {
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

/// The CVP files (plain or encrypted, one entry per copy) in a remote listing, by name.
fn backup_names(listing: &[RemoteEntry]) -> Vec<BackupName> {
    listing
        .iter()
        .filter_map(|e| match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(file)) => Some(file.name),
            _ => None,
        })
        .collect()
}

/// Only CVP-named files count (and are deleted; their sidecars and manifests follow as
/// leftovers).
fn remote_retention(
    listing: &[RemoteEntry],
    remote_limit: u32,
    protect: &[BackupName],
    known: &[RestoreSet],
    now: Stamp,
) -> Decision {
    retention::apply_policy(
        &backup_names(listing),
        Policy::newest(remote_limit as usize),
        protect,
        known,
        now,
    )
}

/// The same decisions as a run, taken read-only: no backup, no lock, no host key recorded,
/// no directory created, nothing uploaded or deleted, no record.
fn dry_run(config: &Config, options: &RunOptions, limit: u32) -> Result<Plan> {
    let now = Stamp::now();
    let mut plan = Plan {
        backup: (!options.no_backup)
            .then(|| backup::describe(&config.backup.command, &config.backup.user)),
        destination: destination_label(config),
        ..Plan::default()
    };
    let mut history = state::peek_history(&config.backup.state_dir);
    fill_last_verified(
        &mut history,
        &config.backup.state_dir,
        &destination_label(config),
    );
    let mut excluded = history.failed();
    let mut local = list_local(config)?;
    if let Some(before) = &history.backup_started {
        // What a run that died during its backup left: a real run sets it aside first.
        let (leftovers, _) = appeared_during(before, history.backup_window.as_ref(), &local);
        for name in leftovers {
            plan.notes.push(format!(
                "{name} appeared during a backup the job did not see finish: a real run sets it \
                 aside as failed"
            ));
            excluded.push(name);
        }
    }
    local.retain(|f| !excluded.contains(&f.name));
    let running = match concurrent::running(&config.backup.command, &config.backup.user, None) {
        Ok(running) if running.is_empty() => None,
        Ok(running) => Some(concurrent::describe(&running)),
        Err(why) => Some(format!("cannot tell whether one is: {why}")),
    };
    if let Some(running) = running {
        plan.notes.push(format!(
            "a CVP backup is running now ({running}): a real run refuses to start beside it \
             (exit 6)"
        ));
    }
    if let (false, Some(free)) = (
        options.no_backup,
        space::free_bytes(&config.backup.backup_dir),
    ) {
        let last_set = newest_set_bytes(&local, &history, now);
        let room = space::assess(config.backup.min_free_space, free, last_set);
        if !room.enough() {
            plan.notes.push(format!(
                "not enough free space in {} ({}): a real run does not start the backup (exit \
                 1) and copies the previous set",
                config.backup.backup_dir.display(),
                room.describe()
            ));
        }
    }
    let names: Vec<BackupName> = local.iter().map(|f| f.name).collect();
    let mut known = history.known();
    let selection = restore_set::select(
        &names,
        Tonight::Skipped,
        history.last_good().as_ref(),
        &known,
        now,
    );
    known.extend(selection.set.clone());
    let protect = selection.protect.clone();
    plan.local_retention = Some(retention::apply_policy(
        &names,
        Policy {
            keep_data: limit as usize,
            also_keep: history.last_verified(),
        },
        &protect,
        &known,
        now,
    ));
    for name in names.iter().filter(|n| sets::is_future(n.stamp, now)) {
        plan.notes.push(format!(
            "{name} is stamped in the future: it never counts as the newest set"
        ));
    }
    let password = credentials(config)?;
    let mut connected = sftp::connect(ConnectOptions {
        server: &config.server,
        password: password.as_ref(),
        record_host_key: false,
    })?;
    drop(password);
    let remote: &mut dyn Remote = &mut connected.remote;
    let listing = match remote.list()? {
        Some(listing) => listing,
        None => {
            plan.notes
                .push("the destination does not exist: a real run creates it".into());
            Vec::new()
        }
    };
    match claim::read(remote)? {
        Some(owner) if owner != config.backup.node_name => {
            return Err(claim::refusal(
                &remote.describe(),
                &owner,
                &config.backup.node_name,
            ));
        }
        Some(_) => {}
        None => plan
            .notes
            .push("the destination is not claimed yet: a real run claims it for this node".into()),
    }
    let mut after_copy = listing.clone();
    for name in selection.files() {
        let Some(file) = local.iter().find(|f| f.name == name) else {
            continue;
        };
        let encryption = config
            .server
            .encrypt_to
            .as_deref()
            .map(|r| (r.fingerprint.as_str(), &history.sealed[..]));
        let decision = plan::decide(&gather_facts(remote, &listing, file, encryption)?);
        if let CopyDecision::Upload { file: target, .. } = &decision {
            if !after_copy.iter().any(|e| e.name == target.file_name()) {
                after_copy.push(RemoteEntry {
                    name: target.file_name(),
                    size: file.size,
                });
            }
        }
        plan.copies.push(decision);
    }
    if config.server.remote_limit > 0 {
        plan.remote_retention = Some(remote_retention(
            &after_copy,
            config.server.remote_limit,
            &protect,
            &known,
            now,
        ));
    }
    Ok(plan)
}
