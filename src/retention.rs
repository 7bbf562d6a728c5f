//! Which backups to keep, as a pure function of a listing (after restic's `ApplyPolicy`).
//!
//! Which images file and log a data backup needs is `sets`' rule; the same policy serves the
//! local backup directory and the remote. The set a run has just verified on the server is
//! protected: it is kept whatever the stamps around it say.

use crate::names::{BackupName, Kind, RemoteFile, RemoteName, Stamp};
use crate::restore_set::Tonight;
use crate::sets::{self, RestoreSet};
use std::collections::HashSet;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Data backups to keep, newest first. Never 0: configuration rejects it.
    pub keep_data: usize,
    /// A data backup kept beyond `keep_data` when it is not among them: on the node, the last
    /// set verified off-box, so a night whose copy failed still prunes (/data never fills
    /// while the server is down) without losing the newest set the server has; one per
    /// destination (each keeps the newest set it has, however long another is down).
    pub also_keep: Vec<BackupName>,
}

impl Policy {
    /// Keep the newest `keep_data` data backups (the protected ones among them).
    pub fn newest(keep_data: usize) -> Policy {
        Policy {
            keep_data,
            also_keep: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// The set this run verified on the server: never pruned.
    Protected,
    /// The newest set verified on the server, kept on the node beyond the limit.
    LastVerifiedOffBox,
    /// One of the `limit` newest data backups (1 = newest).
    NewestData { rank: usize, limit: usize },
    /// The images file a kept data backup needs.
    ImagesNeededBy(Stamp),
    /// Newer than every data backup: it belongs to a backup that is still to come.
    ImagesNewerThanData,
    /// The log of a kept data backup.
    LogOf(Stamp),
    /// A log newer than the oldest kept set (e.g. of a failed run).
    LogNewerThanOldestSet,
    /// There is no data backup at all: nothing anchors a deletion.
    NoDataBackup,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Protected => f.write_str("the set this run verified on the server"),
            KeepReason::LastVerifiedOffBox => {
                f.write_str("the last set verified on the server (kept beyond the limit)")
            }
            KeepReason::NewestData { rank, limit } => {
                write!(f, "data backup {rank} of the {limit} newest")
            }
            KeepReason::ImagesNeededBy(stamp) => write!(f, "images needed by cvp.{stamp}.tgz"),
            KeepReason::ImagesNewerThanData => f.write_str("images newer than every data backup"),
            KeepReason::LogOf(stamp) => write!(f, "log of cvp.{stamp}.tgz"),
            KeepReason::LogNewerThanOldestSet => f.write_str("log newer than the oldest kept set"),
            KeepReason::NoDataBackup => f.write_str("no data backup exists yet"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Data first (newest first), then images, then logs.
    pub keep: Vec<(BackupName, KeepReason)>,
    pub remove: Vec<BackupName>,
}

fn sorted_newest_first(files: &[BackupName], kind: Kind) -> Vec<BackupName> {
    let mut of_kind: Vec<BackupName> = files.iter().filter(|f| f.kind == kind).copied().collect();
    of_kind.sort_by_key(|f| std::cmp::Reverse(f.stamp));
    of_kind.dedup();
    of_kind
}

/// Keep the protected data backups, then the newest others (a stamp in the future counts as
/// the oldest) up to `keep_data` in all, then `also_keep` if it is not kept yet (so at most
/// `keep_data` + 1), and the images and logs those need.
pub fn apply_policy(
    files: &[BackupName],
    policy: Policy,
    protect: &[BackupName],
    known: &[RestoreSet],
    now: Stamp,
) -> Decision {
    let data = sets::data_by_recency(files, now);
    let images = sorted_newest_first(files, Kind::Images);
    let logs = sorted_newest_first(files, Kind::Log);
    let mut decision = Decision::default();

    if data.is_empty() {
        for file in images.iter().chain(&logs) {
            decision.keep.push((*file, KeepReason::NoDataBackup));
        }
        return decision;
    }

    let limit = policy.keep_data.max(1);
    let mut kept_data: Vec<BackupName> = Vec::new();
    for file in data.iter().filter(|d| protect.contains(d)) {
        kept_data.push(*file);
        decision.keep.push((*file, KeepReason::Protected));
    }
    for (index, file) in data.iter().filter(|d| !protect.contains(d)).enumerate() {
        if kept_data.len() < limit {
            kept_data.push(*file);
            let rank = index + 1;
            decision
                .keep
                .push((*file, KeepReason::NewestData { rank, limit }));
        } else if policy.also_keep.contains(file) {
            kept_data.push(*file);
            decision.keep.push((*file, KeepReason::LastVerifiedOffBox));
        } else {
            decision.remove.push(*file);
        }
    }

    // A stamp in the future is nobody's "newer": it never keeps itself.
    let honest = |stamp: Stamp| !sets::is_future(stamp, now);
    let newest_data = data
        .iter()
        .map(|d| d.stamp)
        .filter(|s| honest(*s))
        .max()
        .unwrap_or(data[0].stamp);
    let kept_sets: Vec<RestoreSet> = kept_data
        .iter()
        .map(|d| sets::members(files, *d, known))
        .collect();
    for image in &images {
        let needed_by = kept_sets
            .iter()
            .find(|set| set.images == Some(*image))
            .map(|set| set.data);
        match needed_by {
            Some(d) => decision
                .keep
                .push((*image, KeepReason::ImagesNeededBy(d.stamp))),
            None if image.stamp > newest_data.plus_seconds(sets::IMAGES_GRACE_SECONDS)
                && honest(image.stamp) =>
            {
                decision
                    .keep
                    .push((*image, KeepReason::ImagesNewerThanData))
            }
            None => decision.remove.push(*image),
        }
    }

    // A set's log is written when its backup starts, so it is a little older than the data
    // file: the threshold is the oldest kept set's log, not its data stamp.
    let threshold = kept_sets
        .iter()
        .map(|set| set.log.map_or(set.data.stamp, |log| log.stamp))
        .min()
        .unwrap_or(data[0].stamp);
    for log in &logs {
        let log_of = kept_sets
            .iter()
            .find(|set| set.log == Some(*log))
            .map(|set| set.data);
        match log_of {
            Some(d) => decision.keep.push((*log, KeepReason::LogOf(d.stamp))),
            None if log.stamp >= threshold && honest(log.stamp) => decision
                .keep
                .push((*log, KeepReason::LogNewerThanOldestSet)),
            None => decision.remove.push(*log),
        }
    }
    decision
}

/// Whether the node's backups are pruned tonight. After every good backup of ours, whether
/// or not its copy worked: the node keeps the newest `limit` and the last set verified
/// off-box (`Policy::also_keep`), so nights with the server down never fill /data. After a
/// failed backup, never (it added no set). On a night without a backup of ours, only once its
/// set is verified on the server, as before.
pub fn prunes_node(tonight: &Tonight, set_verified: bool) -> bool {
    match tonight {
        Tonight::Made(_) => true,
        Tonight::Failed(_) => false,
        Tonight::Skipped => set_verified,
    }
}

/// Our files in a remote listing that serve nothing once the backups are pruned: checksum
/// files and manifests whose file is gone, and abandoned partial uploads of files that are
/// not in the set being copied (that one may be resumed). Names that are not ours are never
/// returned.
pub fn remote_leftovers(
    listing: &[String],
    removed: &[BackupName],
    current: &[BackupName],
) -> Vec<String> {
    // Exact forms: NAME.sha256 serves NAME, not NAME.age.
    let present: HashSet<RemoteFile> = listing
        .iter()
        .filter_map(|name| match RemoteName::parse(name) {
            Some(RemoteName::Backup(f)) if !removed.contains(&f.name) => Some(f),
            _ => None,
        })
        .collect();
    let mut leftovers: Vec<String> = listing
        .iter()
        .filter(|name| match RemoteName::parse(name) {
            Some(RemoteName::Sidecar(f)) => !present.contains(&f),
            Some(RemoteName::Manifest(b)) => !present.iter().any(|f| f.name == b),
            Some(RemoteName::Partial(b)) => !current.contains(&b),
            Some(RemoteName::Backup(_)) | None => false,
        })
        .cloned()
        .collect();
    leftovers.sort();
    leftovers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Stamp {
        Stamp::parse("20240201020000").expect("stamp")
    }

    fn parse_all(names: &[&str]) -> Vec<BackupName> {
        names
            .iter()
            .map(|n| BackupName::parse(n).unwrap_or_else(|| panic!("bad test name {n}")))
            .collect()
    }

    fn names(list: &[BackupName]) -> Vec<String> {
        let mut out: Vec<String> = list.iter().map(|n| n.file_name()).collect();
        out.sort();
        out
    }

    struct Case {
        what: &'static str,
        files: &'static [&'static str],
        keep_data: usize,
        removed: &'static [&'static str],
    }

    #[test]
    fn policy_table() {
        let cases = [
            Case {
                what: "nothing to do",
                files: &[],
                keep_data: 5,
                removed: &[],
            },
            Case {
                what: "fewer data backups than the limit",
                files: &[
                    "cvp.20240101020010.tgz",
                    "cvp.eosimages.20240101020005.tgz",
                    "backup_cvp.20240101020003.log",
                ],
                keep_data: 5,
                removed: &[],
            },
            Case {
                what: "the oldest data backup goes, with its log; images stay for the rest",
                files: &[
                    "cvp.20240101020010.tgz",
                    "cvp.20240102020010.tgz",
                    "cvp.20240103020010.tgz",
                    "cvp.eosimages.20231201020005.tgz",
                    "backup_cvp.20240101020003.log",
                    "backup_cvp.20240102020003.log",
                    "backup_cvp.20240103020003.log",
                ],
                keep_data: 2,
                removed: &["cvp.20240101020010.tgz", "backup_cvp.20240101020003.log"],
            },
            Case {
                what: "images only needed by removed data go; the one the oldest kept needs stays",
                files: &[
                    "cvp.eosimages.20231101020005.tgz",
                    "cvp.20231101020010.tgz",
                    "cvp.eosimages.20231201020005.tgz",
                    "cvp.20231201020010.tgz",
                    "cvp.20240101020010.tgz",
                    "cvp.eosimages.20240115020005.tgz",
                    "cvp.20240115020010.tgz",
                ],
                keep_data: 2,
                removed: &[
                    "cvp.eosimages.20231101020005.tgz",
                    "cvp.20231101020010.tgz",
                    "cvp.20231201020010.tgz",
                ],
            },
            Case {
                what: "images newer than every data backup are kept",
                files: &[
                    "cvp.20240101020010.tgz",
                    "cvp.20240102020010.tgz",
                    "cvp.eosimages.20240101020005.tgz",
                    "cvp.eosimages.20240103020005.tgz",
                ],
                keep_data: 1,
                removed: &["cvp.20240101020010.tgz"],
            },
            Case {
                what: "logs of failed runs newer than the oldest kept set stay, older ones go",
                files: &[
                    "backup_cvp.20231231020003.log",
                    "cvp.20240101020010.tgz",
                    "backup_cvp.20240101020003.log",
                    "backup_cvp.20240102020003.log",
                    "cvp.20240103020010.tgz",
                    "backup_cvp.20240103020003.log",
                    "backup_cvp.20240104020003.log",
                ],
                keep_data: 2,
                removed: &["backup_cvp.20231231020003.log"],
            },
            Case {
                what: "limit 1 keeps only the newest set",
                files: &[
                    "cvp.20240101020010.tgz",
                    "cvp.20240102020010.tgz",
                    "cvp.eosimages.20240101020005.tgz",
                    "cvp.eosimages.20240102020005.tgz",
                    "backup_cvp.20240101020003.log",
                    "backup_cvp.20240102020003.log",
                ],
                keep_data: 1,
                removed: &[
                    "cvp.20240101020010.tgz",
                    "cvp.eosimages.20240101020005.tgz",
                    "backup_cvp.20240101020003.log",
                ],
            },
            Case {
                what: "no data backup: images and logs are all kept",
                files: &[
                    "cvp.eosimages.20240101020005.tgz",
                    "backup_cvp.20240101020003.log",
                ],
                keep_data: 1,
                removed: &[],
            },
            Case {
                what: "a set with the same stamp on all three files",
                files: &[
                    "cvp.20240101020003.tgz",
                    "cvp.eosimages.20240101020003.tgz",
                    "backup_cvp.20240101020003.log",
                    "cvp.20240102020003.tgz",
                    "backup_cvp.20240102020003.log",
                ],
                keep_data: 1,
                removed: &["cvp.20240101020003.tgz", "backup_cvp.20240101020003.log"],
            },
        ];
        for case in cases {
            let files = parse_all(case.files);
            let decision = apply_policy(&files, Policy::newest(case.keep_data), &[], &[], now());
            assert_eq!(
                names(&decision.remove),
                names(&parse_all(case.removed)),
                "{}",
                case.what
            );
            let kept: Vec<BackupName> = decision.keep.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                kept.len() + decision.remove.len(),
                files.len(),
                "{}: every file is decided exactly once",
                case.what
            );
        }
    }

    #[test]
    fn every_keep_carries_its_reason() {
        let files = parse_all(&[
            "cvp.eosimages.20231201020005.tgz",
            "cvp.20240101020010.tgz",
            "backup_cvp.20240101020003.log",
            "cvp.20240102020010.tgz",
            "backup_cvp.20240102020003.log",
            "backup_cvp.20240103020003.log",
            "cvp.eosimages.20240104020005.tgz",
        ]);
        let decision = apply_policy(&files, Policy::newest(2), &[], &[], now());
        let reason = |name: &str| {
            let wanted = BackupName::parse(name).unwrap();
            decision
                .keep
                .iter()
                .find(|(n, _)| *n == wanted)
                .map(|(_, r)| *r)
        };
        let stamp = |s: &str| Stamp::parse(s).unwrap();
        assert_eq!(
            reason("cvp.20240102020010.tgz"),
            Some(KeepReason::NewestData { rank: 1, limit: 2 })
        );
        assert_eq!(
            reason("cvp.20240101020010.tgz"),
            Some(KeepReason::NewestData { rank: 2, limit: 2 })
        );
        assert_eq!(
            reason("cvp.eosimages.20231201020005.tgz"),
            Some(KeepReason::ImagesNeededBy(stamp("20240102020010")))
        );
        assert_eq!(
            reason("cvp.eosimages.20240104020005.tgz"),
            Some(KeepReason::ImagesNewerThanData)
        );
        assert_eq!(
            reason("backup_cvp.20240101020003.log"),
            Some(KeepReason::LogOf(stamp("20240101020010")))
        );
        assert_eq!(
            reason("backup_cvp.20240103020003.log"),
            Some(KeepReason::LogNewerThanOldestSet)
        );
        assert!(decision.remove.is_empty());
    }

    #[test]
    fn the_newest_restore_set_is_never_removed() {
        // Whatever the limit, the newest data backup, its images and its log survive.
        let files = parse_all(&[
            "cvp.eosimages.20230101020005.tgz",
            "cvp.20240101020010.tgz",
            "cvp.20240102020010.tgz",
            "backup_cvp.20240102020003.log",
        ]);
        for keep_data in [0, 1, 2, 10] {
            let decision = apply_policy(&files, Policy::newest(keep_data), &[], &[], now());
            let removed = names(&decision.remove);
            for survivor in [
                "cvp.20240102020010.tgz",
                "cvp.eosimages.20230101020005.tgz",
                "backup_cvp.20240102020003.log",
            ] {
                assert!(
                    !removed.contains(&survivor.to_string()),
                    "limit {keep_data}"
                );
            }
        }
    }

    #[test]
    fn a_protected_set_is_kept_and_a_future_stamp_never_pushes_it_out() {
        // Tonight's verified set beside a file stamped years ahead, limit 1.
        let files = parse_all(&[
            "cvp.20300101020010.tgz",
            "cvp.eosimages.20300101020005.tgz",
            "backup_cvp.20300101020003.log",
            "cvp.20240131020010.tgz",
            "cvp.eosimages.20231201020005.tgz",
            "backup_cvp.20240131020003.log",
        ]);
        let tonight = BackupName::parse("cvp.20240131020010.tgz").unwrap();
        for protect in [vec![tonight], vec![]] {
            let decision = apply_policy(&files, Policy::newest(1), &protect, &[], now());
            let removed = names(&decision.remove);
            assert!(!removed.contains(&tonight.file_name()), "{protect:?}");
            assert!(removed.contains(&"backup_cvp.20300101020003.log".to_string()));
            assert!(removed.contains(&"cvp.eosimages.20300101020005.tgz".to_string()));
            assert!(!removed.contains(&"cvp.eosimages.20231201020005.tgz".to_string()));
            assert!(!removed.contains(&"backup_cvp.20240131020003.log".to_string()));
            assert!(
                removed.contains(&"cvp.20300101020010.tgz".to_string()),
                "{removed:?}"
            );
        }
        // The protected set counts toward the limit first, whatever its stamp.
        let older = BackupName::parse("cvp.20240131020010.tgz").unwrap();
        let files = parse_all(&["cvp.20240131020010.tgz", "cvp.20240201010010.tgz"]);
        let decision = apply_policy(&files, Policy::newest(1), &[older], &[], now());
        assert_eq!(names(&decision.remove), ["cvp.20240201010010.tgz"]);
        assert_eq!(decision.keep[0], (older, KeepReason::Protected));
        let decision = apply_policy(&files, Policy::newest(2), &[older], &[], now());
        assert!(decision.remove.is_empty(), "{:?}", decision.remove);
    }

    #[test]
    fn the_last_set_verified_off_box_is_kept_beyond_the_limit() {
        // Three good backups while the server was down; 20240101 was the last one verified.
        let files = parse_all(&[
            "cvp.eosimages.20231201020005.tgz",
            "cvp.20240101020010.tgz",
            "backup_cvp.20240101020003.log",
            "cvp.20240102020010.tgz",
            "backup_cvp.20240102020003.log",
            "cvp.eosimages.20240103020005.tgz",
            "cvp.20240103020010.tgz",
            "backup_cvp.20240103020003.log",
            "cvp.20240104020010.tgz",
            "backup_cvp.20240104020003.log",
        ]);
        let verified = BackupName::parse("cvp.20240101020010.tgz").unwrap();
        let tonight = BackupName::parse("cvp.20240104020010.tgz").unwrap();
        // (limit, also_keep, removed)
        let table: [(usize, Option<BackupName>, &[&str]); 4] = [
            // Its log stays too: newer than the oldest kept set's.
            (2, Some(verified), &["cvp.20240102020010.tgz"]),
            (
                2,
                None,
                &[
                    "cvp.eosimages.20231201020005.tgz",
                    "cvp.20240101020010.tgz",
                    "backup_cvp.20240101020003.log",
                    "cvp.20240102020010.tgz",
                    "backup_cvp.20240102020003.log",
                ],
            ),
            // Already among the newest: nothing more is kept (limit, not limit + 1).
            (4, Some(verified), &[]),
            (
                1,
                Some(tonight),
                &[
                    "cvp.eosimages.20231201020005.tgz",
                    "cvp.20240101020010.tgz",
                    "backup_cvp.20240101020003.log",
                    "cvp.20240102020010.tgz",
                    "backup_cvp.20240102020003.log",
                    "cvp.20240103020010.tgz",
                    "backup_cvp.20240103020003.log",
                ],
            ),
        ];
        for (limit, also_keep, removed) in table {
            let policy = Policy {
                keep_data: limit,
                also_keep: also_keep.into_iter().collect(),
            };
            let decision = apply_policy(&files, policy, &[tonight], &[], now());
            assert_eq!(
                names(&decision.remove),
                names(&parse_all(removed)),
                "limit {limit}, also {also_keep:?}"
            );
            let kept_data = decision
                .keep
                .iter()
                .filter(|(n, _)| n.kind == Kind::Data)
                .count();
            assert!(kept_data <= limit + 1, "limit {limit}: {kept_data} kept");
            if let Some(also) = also_keep {
                assert!(decision.keep.iter().any(|(n, _)| *n == also));
            }
        }
        let decision = apply_policy(
            &files,
            Policy {
                keep_data: 2,
                also_keep: vec![verified],
            },
            &[tonight],
            &[],
            now(),
        );
        assert!(decision
            .keep
            .contains(&(verified, KeepReason::LastVerifiedOffBox)));
    }

    #[test]
    fn which_nights_prune_the_node() {
        let new = HashSet::new();
        assert!(prunes_node(&Tonight::Made(&new), false));
        assert!(prunes_node(&Tonight::Made(&new), true));
        assert!(!prunes_node(&Tonight::Failed(&new), true));
        assert!(!prunes_node(&Tonight::Failed(&new), false));
        assert!(prunes_node(&Tonight::Skipped, true));
        assert!(!prunes_node(&Tonight::Skipped, false));
    }

    #[test]
    fn remote_leftovers_are_ours_and_useless_only() {
        let listing: Vec<String> = [
            "cvp.20240101020010.tgz",
            "cvp.20240101020010.tgz.sha256",
            "cvp.20240101020010.set.sha256",
            "cvp.20231201020010.tgz.sha256",
            "cvp.20231201020010.set.sha256",
            ".cvp.20231101020010.tgz.cvpbc-part",
            ".cvp.20240102020010.tgz.cvpbc-part",
            ".cvp.20231101020010.tgz.sha256.cvpbc-part",
            "cvp.20231231020010.tgz",
            "cvp.20231231020010.tgz.sha256",
            "notes.txt",
            "notes.txt.sha256",
            ".cvp-backup-copy-owner",
            // Encrypted: kept with their file, gone with it, never mistaken for the plain one.
            "cvp.20240103020010.tgz.age",
            "cvp.20240103020010.tgz.age.sha256",
            "cvp.20240103020010.tgz.sha256",
            "cvp.20240103020010.set.sha256",
            "cvp.20231230020010.tgz.age",
            "cvp.20231230020010.tgz.age.sha256",
            ".cvp.20231102020010.tgz.age.cvpbc-part",
            "notes.age",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let removed = parse_all(&["cvp.20231231020010.tgz", "cvp.20231230020010.tgz"]);
        let current = parse_all(&["cvp.20240102020010.tgz"]);
        assert_eq!(
            remote_leftovers(&listing, &removed, &current),
            [
                ".cvp.20231101020010.tgz.cvpbc-part",
                ".cvp.20231101020010.tgz.sha256.cvpbc-part",
                ".cvp.20231102020010.tgz.age.cvpbc-part",
                "cvp.20231201020010.set.sha256",
                "cvp.20231201020010.tgz.sha256",
                "cvp.20231230020010.tgz.age.sha256",
                "cvp.20231231020010.tgz.sha256",
                "cvp.20240103020010.tgz.sha256",
            ]
        );
    }
}
