//! The node's side: its CVP files, failed archives set aside, and pruning it.

use super::*;

impl Job<'_> {
    /// Prune the node: the newest `limit` sets and the last set verified on the server stay.
    /// `verified`: tonight's set is on the server (else this is a good backup whose copy
    /// failed, pruned all the same so that /data never fills while the server is down).
    pub(super) fn prune_local(
        &mut self,
        files: &[LocalFile],
        selection: &Selection,
        verified: bool,
    ) {
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
}

/// Delete a local file (a symlink itself, never what it points to), logging why; true when
/// it is gone.
pub(super) fn remove_local(path: &Path, why: &str) -> bool {
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

pub(super) fn describe_kept(names: &[BackupName]) -> String {
    if names.is_empty() {
        return "none yet".into();
    }
    names
        .iter()
        .map(|n| n.file_name())
        .collect::<Vec<_>>()
        .join(", ")
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

pub(super) fn scan(
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
                // Every archive until the history says it passed (`History::checked`).
                check_archive: crate::archive::is_archive(&name.file_name()),
                replace_remote: false,
            }),
            _ => continue,
        }
    }
    Ok(files)
}
