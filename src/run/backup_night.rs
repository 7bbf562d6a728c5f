//! The night's CVP backup on the node: never beside another backup, what a dead backup
//! left set aside, the room it needs in backup_dir, running it, and what its archives are.

use super::*;

impl Job<'_> {
    pub(super) fn refuse_beside_another_backup(&self) -> Result<()> {
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
    pub(super) fn other_backups(
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
    pub(super) fn adopt_as_last_good(&mut self, set: &RestoreSet, local: &[BackupName]) {
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
    pub(super) fn recover_from_a_dead_backup(&mut self) -> Result<()> {
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
    pub(super) fn measure_room(&mut self, local: &[LocalFile]) -> Option<Room> {
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
    pub(super) fn backup_night(
        &mut self,
        before: Vec<LocalFile>,
        room: Option<Room>,
    ) -> Result<Night> {
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
                self.good_before = Some((
                    self.history.last_good.clone(),
                    self.history.older_than_last_good.clone(),
                ));
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
    pub(super) fn set_aside(&mut self, names: &HashSet<BackupName>) {
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
    pub(super) fn make_room(&mut self, room: Room, local: &[LocalFile]) -> Room {
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
    pub(super) fn run_backup(&mut self) -> (bool, Option<u32>) {
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
pub(super) fn appeared_during(
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

pub(super) fn warn_about_foreign(foreign: &[BackupName]) {
    for name in foreign {
        log::warn!(
            "{name} appeared during the backup the job did not see finish, but was written \
             outside it (a backup made since, or copied in): left as it is, not set aside"
        );
    }
}

/// Stamps in the future come from a clock that was once wrong: they never count as the
/// newest set, and the operator is told once a night.
pub(super) fn warn_about_future_stamps(names: &[BackupName], now: Stamp) {
    for name in names.iter().filter(|n| sets::is_future(n.stamp, now)) {
        log::warn!(
            "{name} is stamped in the future (this node's clock says {now}): it never counts as \
             the newest backup and never makes tonight's prunable; check the clock (NTP) and \
             delete the file if it is not needed"
        );
    }
}

pub(super) fn describe_names(names: &HashSet<BackupName>) -> String {
    let mut list: Vec<String> = names.iter().map(|n| n.file_name()).collect();
    list.sort();
    if list.is_empty() {
        "nothing new".into()
    } else {
        list.join(", ")
    }
}
