//! The main job: back up CVP, copy the restore set, verify it, prune, report.

use crate::backup;
use crate::claim;
use crate::concurrent;
use crate::config::{self, Config, ServerConfig};
use crate::copy_night::{self, DestinationNight, Shared};
use crate::destination;
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
use crate::secret::{self, Secret};
use crate::sets::{self};
use crate::signals;
use crate::space::{self, Room};
use crate::state::{self, BackupWindow, History, RunRecord};
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
        let before_copy = self.code;
        let nights = self.copy_everywhere(passwords, &files, &selection, &night);
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
        if selection.set.is_some() && retention::prunes_node(&tonight, verified_everywhere) {
            self.prune_local(&after, &selection, verified_everywhere);
        } else if matches!(night, Night::Failed(_)) {
            log::warn!("pruning skipped: the backup did not complete");
        }
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
        let tonight = copy_night::Tonight {
            files,
            selection,
            may_prune: !matches!(night, Night::Failed(_)),
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

    /// Prune the node: the newest `limit` sets and the last set verified on the server stay.
    /// `verified`: tonight's set is on the server (else this is a good backup whose copy
    /// failed, pruned all the same so that /data never fills while the server is down).
    fn prune_local(&mut self, files: &[LocalFile], selection: &Selection, verified: bool) {
        let names: Vec<BackupName> = files.iter().map(|f| f.name).collect();
        let mut known = self.history.known();
        known.extend(selection.set.clone());
        let policy = Policy {
            keep_data: self.limit as usize,
            also_keep: last_verified_everywhere(&self.config, &self.history),
        };
        if !verified {
            log::warn!(
                "the copy did not complete, but the backup did: pruning the node all the same \
                 (keeping the newest {} and the last set verified on the server, {}) so that \
                 {} does not fill while copies fail",
                self.limit,
                describe_kept(&policy.also_keep),
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

pub(crate) fn log_keeps(side: &str, decision: &Decision) {
    for (name, reason) in &decision.keep {
        log::debug!("{side}: keep {name}: {reason}");
    }
}

/// The last set verified on each destination: each stays on the node beyond `limit` (a
/// destination that is down never costs the node the newest set that destination has).
pub(crate) fn last_verified_everywhere(config: &Config, history: &History) -> Vec<BackupName> {
    let mut sets: Vec<BackupName> = config
        .destinations()
        .filter_map(|server| history.last_verified_at(&server.name))
        .collect();
    sets.sort_by_key(|name| name.file_name());
    sets.dedup();
    sets
}

fn describe_kept(names: &[BackupName]) -> String {
    if names.is_empty() {
        return "none yet".into();
    }
    names
        .iter()
        .map(|n| n.file_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decrypt a destination's password (or S3 secret key) when there is one; also check that
/// an identity file exists. `ini` names the configuration in messages.
pub(crate) fn credentials(server: &ServerConfig, ini: &Path) -> Result<Option<Secret>> {
    if let Some(identity) = &server.identity_file {
        if !identity.is_file() {
            return Err(Error::config(format!(
                "{}: identity_file {} of destination {} does not exist",
                ini.display(),
                identity.display(),
                server.name
            )));
        }
        if let Err(err) = secret::check_identity_is_private(identity) {
            log::warn!("{err}");
        }
    }
    match (&server.password_token, &server.key_file) {
        (Some(token), Some(key)) => {
            secret::check_key_is_private(key)?;
            secret::decrypt_password(token, key, ini).map(Some)
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
            also_keep: last_verified_everywhere(config, &history),
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
    for server in config.destinations() {
        let part = plan_destination(config, server, &history, &local, &selection, &known, now)
            .unwrap_or_else(|err| {
                log::error!("{err}");
                Plan {
                    destination: server.label(),
                    notes: vec![format!("cannot plan this destination: {err}")],
                    code: err.code,
                    ..Plan::default()
                }
            });
        if server.name == config::MAIN {
            plan.destination = part.destination;
            plan.copies = part.copies;
            plan.remote_retention = part.remote_retention;
            plan.notes.extend(part.notes);
            plan.code = plan.code.most_severe(part.code);
        } else {
            plan.code = plan.code.most_severe(part.code);
            plan.others.push((server.name.clone(), part));
        }
    }
    Ok(plan)
}

/// One destination's part of the dry run: what it would be sent, and what pruned there.
fn plan_destination(
    config: &Config,
    server: &ServerConfig,
    history: &History,
    local: &[LocalFile],
    selection: &Selection,
    known: &[RestoreSet],
    now: Stamp,
) -> Result<Plan> {
    let mut plan = Plan {
        destination: server.label(),
        ..Plan::default()
    };
    let mut remote = destination::connect(server, &config.path, false)?;
    let remote: &mut dyn Remote = &mut *remote;
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
        let encryption = server
            .encrypt_to
            .as_deref()
            .map(|r| (r.fingerprint.as_str(), &history.sealed[..]));
        let decision = plan::decide(&destination::gather_facts(
            remote, &listing, file, encryption,
        )?);
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
    if server.remote_limit > 0 {
        plan.remote_retention = Some(copy_night::remote_retention(
            &after_copy,
            server.remote_limit,
            &selection.protect,
            known,
            now,
        ));
    }
    Ok(plan)
}
