//! Which local files make up the restore set to copy: a pure function of the listing.

use crate::names::{BackupName, Kind};
use crate::retention::newest_not_newer;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSet {
    pub data: BackupName,
    /// None only when no images file exists at all (a CVP that never dumped images).
    pub images: Option<BackupName>,
    pub log: Option<BackupName>,
}

impl RestoreSet {
    /// Images first: a data file on the remote is only useful once its images file is there.
    pub fn files(&self) -> Vec<BackupName> {
        self.images
            .iter()
            .chain([&self.data])
            .chain(self.log.iter())
            .copied()
            .collect()
    }
}

/// What to copy this run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub set: Option<RestoreSet>,
    /// Logs written by a failed backup run: copied so the failure can be read off-box.
    pub failed_run_logs: Vec<BackupName>,
}

impl Selection {
    pub fn files(&self) -> Vec<BackupName> {
        let mut files = self.set.as_ref().map(RestoreSet::files).unwrap_or_default();
        for log in &self.failed_run_logs {
            if !files.contains(log) {
                files.push(*log);
            }
        }
        files
    }
}

/// `local` is the listing after the backup ran; `new` the names that appeared during this run
/// (empty with `--no-backup`). When the backup failed, data and images files that appeared
/// during the run may be partial: they are never chosen, but its logs are copied.
pub fn select(local: &[BackupName], new: &HashSet<BackupName>, backup_failed: bool) -> Selection {
    let usable: Vec<BackupName> = local
        .iter()
        .filter(|f| !(backup_failed && f.kind != Kind::Log && new.contains(f)))
        .copied()
        .collect();
    let data = usable
        .iter()
        .filter(|f| f.kind == Kind::Data)
        .max_by_key(|f| f.stamp)
        .copied();
    let set = data.map(|data| {
        // CVP may stamp the images file this run produced a moment after the data file.
        let images_of_this_run = usable
            .iter()
            .filter(|f| f.kind == Kind::Images && new.contains(f) && new.contains(&data))
            .max_by_key(|f| f.stamp)
            .copied();
        RestoreSet {
            data,
            images: images_of_this_run
                .or_else(|| newest_not_newer(&usable, Kind::Images, data.stamp)),
            log: newest_not_newer(&usable, Kind::Log, data.stamp),
        }
    });
    let mut failed_run_logs: Vec<BackupName> = if backup_failed {
        new.iter()
            .filter(|f| f.kind == Kind::Log)
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    failed_run_logs.sort_by_key(|f| f.stamp);
    Selection {
        set,
        failed_run_logs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> BackupName {
        BackupName::parse(name).unwrap_or_else(|| panic!("bad test name {name}"))
    }

    fn set_names(selection: &Selection) -> Vec<String> {
        selection.files().iter().map(|f| f.file_name()).collect()
    }

    #[test]
    fn newest_data_with_the_images_and_log_it_needs() {
        let local = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("cvp.20240101020010.tgz"),
            n("backup_cvp.20240101020003.log"),
            n("cvp.20240102020010.tgz"),
            n("backup_cvp.20240102020003.log"),
            n("cvp.eosimages.20250101020005.tgz"),
        ];
        let selection = select(&local, &HashSet::new(), false);
        assert_eq!(
            set_names(&selection),
            [
                "cvp.eosimages.20230101020005.tgz",
                "cvp.20240102020010.tgz",
                "backup_cvp.20240102020003.log"
            ]
        );
    }

    #[test]
    fn images_this_run_produced_count_even_when_stamped_after_the_data() {
        let local = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("backup_cvp.20240102020003.log"),
            n("cvp.20240102020010.tgz"),
            n("cvp.eosimages.20240102020030.tgz"),
        ];
        let new: HashSet<_> = local[1..].iter().copied().collect();
        let selection = select(&local, &new, false);
        assert_eq!(
            selection.set.and_then(|s| s.images),
            Some(n("cvp.eosimages.20240102020030.tgz"))
        );
    }

    #[test]
    fn a_failed_run_copies_its_log_and_the_previous_set_but_no_new_archive() {
        let local = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("backup_cvp.20240101020003.log"),
            n("cvp.20240101020010.tgz"),
            n("backup_cvp.20240102020003.log"),
            n("cvp.20240102020010.tgz"),
            n("cvp.eosimages.20240102020010.tgz"),
        ];
        let new: HashSet<_> = local[3..].iter().copied().collect();
        let selection = select(&local, &new, true);
        assert_eq!(
            set_names(&selection),
            [
                "cvp.eosimages.20230101020005.tgz",
                "cvp.20240101020010.tgz",
                "backup_cvp.20240101020003.log",
                "backup_cvp.20240102020003.log"
            ]
        );
    }

    #[test]
    fn no_images_file_at_all_is_not_a_crash() {
        let local = [n("cvp.20240101020010.tgz")];
        let selection = select(&local, &HashSet::new(), false);
        assert_eq!(set_names(&selection), ["cvp.20240101020010.tgz"]);
        assert_eq!(select(&[], &HashSet::new(), false), Selection::default());
    }
}
