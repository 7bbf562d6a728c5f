//! Which local files make up the restore set to copy tonight: a pure function of the
//! listing, what tonight's backup did, and the last set a successful backup made.

use crate::names::{BackupName, Kind, Stamp};
use crate::sets;
pub use crate::sets::RestoreSet;
use std::collections::HashSet;

/// What a run's backup did.
#[derive(Debug, Clone, Copy)]
pub enum Tonight<'a> {
    /// It succeeded and these files appeared (a data file among them).
    Made(&'a HashSet<BackupName>),
    /// It failed, timed out or was stopped. Its archives were set aside before this choice;
    /// these are the names that appeared (its logs are copied so the failure can be read
    /// off-box).
    Failed(&'a HashSet<BackupName>),
    /// No backup ran (`--no-backup`, `--dry-run`).
    Skipped,
}

/// The newest good set this tool knows (made by its last successful backup, or verified on
/// the server by its last good copy), from the state record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGood {
    pub data: BackupName,
    /// The data files there were before it: all older than it, whatever their stamps say.
    pub known_before: Vec<BackupName>,
}

/// What to copy this run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub set: Option<RestoreSet>,
    /// Logs written by a failed backup run: copied so the failure can be read off-box.
    pub failed_run_logs: Vec<BackupName>,
    /// Data files retention must keep tonight: the set's, and on a night without a backup of
    /// ours, `last_good` and any that appeared after it (nothing says they are older).
    pub protect: Vec<BackupName>,
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

/// `local`: the CVP names on the node now (a failed backup's archives are no longer among
/// them). `last_good`: the newest good set this tool knows.
///
/// After a successful backup the set is the data file it made, whatever other stamps say.
/// Otherwise it is `last_good`, unless a data file that appeared after it (a backup run by
/// hand) is stamped later; without a history, the newest set by stamp. A stamp in the
/// future never wins over an honest one.
pub fn select(
    local: &[BackupName],
    tonight: Tonight,
    last_good: Option<&LastGood>,
    known: &[RestoreSet],
    now: Stamp,
) -> Selection {
    let mut protect = Vec::new();
    let data = match tonight {
        Tonight::Made(new) => new
            .iter()
            .filter(|f| f.kind == Kind::Data && local.contains(f))
            .max_by_key(|f| f.stamp)
            .copied(),
        Tonight::Failed(_) | Tonight::Skipped => {
            match last_good.filter(|m| local.contains(&m.data)) {
                None => sets::data_by_recency(local, now).first().copied(),
                Some(made) => {
                    let appeared_since: Vec<BackupName> = local
                        .iter()
                        .filter(|f| {
                            f.kind == Kind::Data
                                && **f != made.data
                                && !made.known_before.contains(f)
                        })
                        .copied()
                        .collect();
                    protect.push(made.data);
                    protect.extend(&appeared_since);
                    let later: Vec<BackupName> = appeared_since
                        .into_iter()
                        .filter(|f| f.stamp > made.data.stamp)
                        .collect();
                    sets::data_by_recency(&later, now)
                        .first()
                        .copied()
                        .filter(|f| !sets::is_future(f.stamp, now))
                        .or(Some(made.data))
                }
            }
        }
    };
    let mut failed_run_logs: Vec<BackupName> = match tonight {
        Tonight::Failed(new) => new
            .iter()
            .filter(|f| f.kind == Kind::Log && local.contains(f))
            .copied()
            .collect(),
        Tonight::Made(_) | Tonight::Skipped => Vec::new(),
    };
    failed_run_logs.sort_by_key(|f| f.stamp);
    if let Some(data) = data {
        protect.retain(|p| *p != data);
        protect.insert(0, data);
    }
    let set = data.map(|data| match tonight {
        Tonight::Made(new) => {
            let new: Vec<BackupName> = new.iter().copied().collect();
            sets::made_by(local, data, &new)
        }
        Tonight::Failed(_) | Tonight::Skipped => sets::members(local, data, known),
    });
    Selection {
        set,
        failed_run_logs,
        protect,
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

    fn now() -> Stamp {
        Stamp::parse("20240105020000").expect("stamp")
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
        let selection = select(&local, Tonight::Skipped, None, &[], now());
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
        let selection = select(&local, Tonight::Made(&new), None, &[], now());
        assert_eq!(
            selection.set.and_then(|s| s.images),
            Some(n("cvp.eosimages.20240102020030.tgz"))
        );
    }

    #[test]
    fn a_failed_run_copies_its_log_and_the_previous_set_but_no_new_archive() {
        // The failed run's archives were renamed aside: only its log is in the listing.
        let local = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("backup_cvp.20240101020003.log"),
            n("cvp.20240101020010.tgz"),
            n("backup_cvp.20240102020003.log"),
        ];
        let new: HashSet<_> = [
            n("backup_cvp.20240102020003.log"),
            n("cvp.20240102020010.tgz"),
            n("cvp.eosimages.20240102020010.tgz"),
        ]
        .into_iter()
        .collect();
        let selection = select(&local, Tonight::Failed(&new), None, &[], now());
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
    fn tonight_s_backup_is_copied_even_beside_a_future_stamp() {
        let local = [
            n("cvp.20300101020010.tgz"),
            n("backup_cvp.20240105020003.log"),
            n("cvp.20240105020010.tgz"),
        ];
        let new: HashSet<_> = local[1..].iter().copied().collect();
        let made = select(&local, Tonight::Made(&new), None, &[], now());
        assert_eq!(made.set.map(|s| s.data), Some(n("cvp.20240105020010.tgz")));
        // The retry of a failed night does not pick the future stamp either.
        let retry = select(&local, Tonight::Skipped, None, &[], now());
        assert_eq!(retry.set.map(|s| s.data), Some(n("cvp.20240105020010.tgz")));
    }

    #[test]
    fn the_last_set_made_wins_after_the_clock_was_set_back() {
        // Made at "2026" by a clock that was later set back to 2024.
        let local = [n("cvp.20240101020010.tgz"), n("cvp.20261126020010.tgz")];
        let made = LastGood {
            data: n("cvp.20261126020010.tgz"),
            known_before: vec![n("cvp.20240101020010.tgz")],
        };
        let retry = select(&local, Tonight::Skipped, Some(&made), &[], now());
        assert_eq!(retry.set.map(|s| s.data), Some(made.data));
        assert_eq!(retry.protect, [made.data]);
        // A file from before it stays older even when the clock makes its stamp look newer.
        let old_future = [n("cvp.20301126020010.tgz"), n("cvp.20240102020010.tgz")];
        let made = LastGood {
            data: old_future[1],
            known_before: vec![old_future[0]],
        };
        let later_clock = Stamp::parse("20310101020000").expect("stamp");
        let retry = select(&old_future, Tonight::Skipped, Some(&made), &[], later_clock);
        assert_eq!(retry.set.map(|s| s.data), Some(made.data));
    }

    #[test]
    fn a_backup_made_by_hand_after_the_last_one_wins_and_nothing_new_is_pruned() {
        let local = [
            n("cvp.20240101020010.tgz"),
            n("cvp.20240103020010.tgz"),
            n("cvp.20240104020010.tgz"),
        ];
        let made = LastGood {
            data: local[1],
            known_before: vec![local[0]],
        };
        let retry = select(&local, Tonight::Skipped, Some(&made), &[], now());
        assert_eq!(retry.set.map(|s| s.data), Some(local[2]));
        assert_eq!(
            retry.protect,
            [local[2], local[1]],
            "and the last good one stays"
        );
        // Fetched back from the server (older stamp): copied nowhere, but not pruned either.
        let fetched = [local[0], local[1], n("cvp.20231201020010.tgz")];
        let retry = select(&fetched, Tonight::Skipped, Some(&made), &[], now());
        assert_eq!(retry.set.map(|s| s.data), Some(local[1]));
        assert_eq!(retry.protect, [local[1], fetched[2]]);
    }

    #[test]
    fn no_images_file_at_all_is_not_a_crash() {
        let local = [n("cvp.20240101020010.tgz")];
        let selection = select(&local, Tonight::Skipped, None, &[], now());
        assert_eq!(set_names(&selection), ["cvp.20240101020010.tgz"]);
        assert_eq!(
            select(&[], Tonight::Skipped, None, &[], now()),
            Selection::default()
        );
        assert_eq!(selection.protect, [n("cvp.20240101020010.tgz")]);
    }

    #[test]
    fn a_good_night_s_set_is_what_it_wrote_and_a_record_beats_the_rule() {
        // cvpi took more than an hour between data and images: still tonight's images.
        let local = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("backup_cvp.20240102020003.log"),
            n("cvp.20240102020010.tgz"),
            n("cvp.eosimages.20240102040000.tgz"),
        ];
        let new: HashSet<_> = local[1..].iter().copied().collect();
        let made = select(&local, Tonight::Made(&new), None, &[], now());
        let set = made.set.expect("a set");
        assert_eq!(set.images, Some(n("cvp.eosimages.20240102040000.tgz")));
        // On a later night, the record of that set wins over the rule.
        let retry = select(
            &local,
            Tonight::Skipped,
            None,
            std::slice::from_ref(&set),
            now(),
        );
        assert_eq!(retry.set, Some(set.clone()));
        let by_rule = select(&local, Tonight::Skipped, None, &[], now());
        assert_eq!(
            by_rule.set.and_then(|s| s.images),
            Some(n("cvp.eosimages.20230101020005.tgz"))
        );
    }
}
