//! `prune-dir`: retention run on the backup server itself, for destinations the node may not
//! prune (append_only). The same rules as `remote_limit` (`copy_night::remote_retention` and
//! `retention::remote_leftovers`, not written again here): sets by their manifests, the
//! images a kept set needs, CVP names only; and never the newest good set. What the node
//! leaves while a night is under way (a checksum file before its data, a partial upload)
//! goes only once it is a day old. Pure: the command lists the folder and acts.

use crate::names::{BackupName, Kind, RemoteName, Stamp};
use crate::remote::RemoteEntry;
use crate::restore_set::RestoreSet;
use crate::retention::KeepReason;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Leftovers younger than this may belong to a night under way.
pub const GRACE: Duration = Duration::from_secs(24 * 3600);

/// A regular file in the folder, with the time since it was last written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub age: Duration,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// File names to remove, each with why.
    pub remove: Vec<(String, String)>,
    pub keep: Vec<(BackupName, KeepReason)>,
    /// The newest set whose manifest's members are all there.
    pub newest_good: Option<BackupName>,
}

/// What to remove from a folder of `entries` to keep the `keep` newest sets. `manifests`:
/// the text of each data file's `cvp.<ts>.set.sha256`, where there is one.
pub fn plan(
    entries: &[Entry],
    manifests: &HashMap<BackupName, String>,
    keep: u32,
    now: Stamp,
) -> Plan {
    let listing: Vec<RemoteEntry> = entries
        .iter()
        .map(|e| RemoteEntry {
            name: e.name.clone(),
            size: 0,
        })
        .collect();
    // CVP files present, in either form (NAME or NAME.age).
    let present: HashSet<BackupName> = entries
        .iter()
        .filter_map(|e| match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(file)) => Some(file.name),
            _ => None,
        })
        .collect();
    let known: Vec<RestoreSet> = manifests
        .iter()
        .filter_map(|(data, text)| crate::sets::parse_manifest(text, *data))
        .collect();
    let newest_good = known
        .iter()
        .filter(|set| set.files().iter().all(|name| present.contains(name)))
        .map(|set| set.data)
        .max_by_key(|data| data.stamp);
    // A data file of the last day may be a night under way, its manifest still to come:
    // kept, as the node keeps tonight's set (among the `keep`).
    let under_way: Vec<BackupName> = entries
        .iter()
        .filter(|e| e.age < GRACE)
        .filter_map(|e| match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(file)) if file.name.kind == Kind::Data => Some(file.name),
            _ => None,
        })
        .collect();
    let also_keep: Vec<BackupName> = newest_good.into_iter().collect();
    let decision =
        crate::copy_night::remote_retention(&listing, (keep, &also_keep), &under_way, &known, now);
    let mut remove = Vec::new();
    for name in &decision.remove {
        for entry in entries {
            if let Some(RemoteName::Backup(file)) = RemoteName::parse(&entry.name) {
                if file.name == *name {
                    remove.push((entry.name.clone(), format!("beyond the newest {keep} sets")));
                }
            }
        }
    }
    let all: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let age_of = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.age)
            .unwrap_or_default()
    };
    for leftover in crate::retention::remote_leftovers(&all, &decision.remove, &[]) {
        let of_removed = match RemoteName::parse(&leftover) {
            Some(RemoteName::Sidecar(file)) => decision.remove.contains(&file.name),
            Some(RemoteName::Manifest(data)) => decision.remove.contains(&data),
            _ => false,
        };
        let why = match RemoteName::parse(&leftover) {
            _ if of_removed => "its file is pruned",
            Some(RemoteName::Partial(_)) => "a partial upload more than a day old",
            _ => "its file is gone, more than a day ago",
        };
        if of_removed || age_of(&leftover) >= GRACE {
            remove.push((leftover, why.to_string()));
        }
    }
    for entry in entries {
        if entry.name.starts_with(crate::immutable::CANARY_PREFIX) && entry.age >= GRACE {
            remove.push((
                entry.name.clone(),
                "a test file of `check` or a night, more than a day old".into(),
            ));
        }
    }
    remove.sort();
    remove.dedup();
    Plan {
        remove,
        keep: decision.keep,
        newest_good,
    }
}

/// The data backups a plan keeps, newest first, for its summary.
pub fn kept_sets(plan: &Plan) -> Vec<BackupName> {
    plan.keep
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| name.kind == Kind::Data)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn entry(name: &str, age_hours: u64) -> Entry {
        Entry {
            name: name.into(),
            age: Duration::from_secs(age_hours * 3600),
        }
    }

    fn manifest(data: &str, members: &[&str]) -> (BackupName, String) {
        let text: String = members
            .iter()
            .map(|m| format!("{}  {m}\n", "a".repeat(64)))
            .collect();
        (BackupName::parse(data).expect("data name"), text)
    }

    /// A whole set: data, images, their checksum files and the manifest.
    fn set(stamp: &str, images: &str, age_hours: u64) -> (Vec<Entry>, (BackupName, String)) {
        let data = format!("cvp.{stamp}.tgz");
        let images = format!("cvp.eosimages.{images}.tgz");
        let files = vec![
            entry(&data, age_hours),
            entry(&format!("{data}.sha256"), age_hours),
            entry(&images, age_hours),
            entry(&format!("{images}.sha256"), age_hours),
            entry(&format!("cvp.{stamp}.set.sha256"), age_hours),
        ];
        (files, manifest(&data, &[&images, &data]))
    }

    fn now() -> Stamp {
        Stamp::parse("20260110020000").expect("stamp")
    }

    fn removed(plan: &Plan) -> Vec<&str> {
        plan.remove.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_sets_and_the_images_they_need_and_removes_the_rest_whole() {
        let mut entries = Vec::new();
        let mut manifests = HashMap::new();
        // Three sets share one images file; the oldest has its own.
        for (stamp, images, age) in [
            ("20260101020000", "20260101020000", 9 * 24),
            ("20260102020000", "20260102020000", 8 * 24),
            ("20260103020000", "20260102020000", 7 * 24),
            ("20260104020000", "20260102020000", 6 * 24),
        ] {
            let (files, (data, text)) = set(stamp, images, age);
            for file in files {
                if !entries.iter().any(|e: &Entry| e.name == file.name) {
                    entries.push(file);
                }
            }
            manifests.insert(data, text);
        }
        let plan = plan(&entries, &manifests, 2, now());
        assert_eq!(
            removed(&plan),
            vec![
                "cvp.20260101020000.set.sha256",
                "cvp.20260101020000.tgz",
                "cvp.20260101020000.tgz.sha256",
                "cvp.20260102020000.set.sha256",
                "cvp.20260102020000.tgz",
                "cvp.20260102020000.tgz.sha256",
                "cvp.eosimages.20260101020000.tgz",
                "cvp.eosimages.20260101020000.tgz.sha256",
            ]
        );
        assert_eq!(
            plan.newest_good,
            BackupName::parse("cvp.20260104020000.tgz")
        );
        // The shared images file stays: the kept sets' manifests list it.
        assert!(!removed(&plan).contains(&"cvp.eosimages.20260102020000.tgz"));
    }

    #[test]
    fn the_newest_good_set_stays_when_newer_ones_are_incomplete() {
        let (mut entries, (data, text)) = set("20260105020000", "20260105020000", 5 * 24);
        // Two later nights stopped before their manifest (their images file missing).
        entries.push(entry("cvp.20260106020000.tgz", 4 * 24));
        entries.push(entry("cvp.20260107020000.tgz", 3 * 24));
        let manifests = HashMap::from([(data, text)]);
        let plan = plan(&entries, &manifests, 1, now());
        assert_eq!(plan.newest_good, Some(data));
        assert!(
            !removed(&plan).contains(&"cvp.20260105020000.tgz"),
            "{plan:?}"
        );
        assert!(!removed(&plan).contains(&"cvp.eosimages.20260105020000.tgz"));
        assert!(
            removed(&plan).contains(&"cvp.20260106020000.tgz"),
            "{plan:?}"
        );
        assert!(
            !removed(&plan).contains(&"cvp.20260107020000.tgz"),
            "the newest"
        );
        // A data file of the last hours (a night under way) is never removed.
        entries.push(entry("cvp.20260109020000.tgz", 1));
        let plan = super::plan(&entries, &manifests, 1, now());
        assert!(
            !removed(&plan).contains(&"cvp.20260109020000.tgz"),
            "{plan:?}"
        );
        assert!(
            !removed(&plan).contains(&"cvp.20260105020000.tgz"),
            "{plan:?}"
        );
        assert!(
            removed(&plan).contains(&"cvp.20260107020000.tgz"),
            "{plan:?}"
        );
    }

    #[test]
    fn leftovers_and_test_files_go_only_once_a_day_old_and_foreign_names_never() {
        let (mut entries, (data, text)) = set("20260108020000", "20260108020000", 30);
        let young = [
            ".cvp.20260109020000.tgz.cvpbc-part-17f3a2",
            "cvp.20260109020000.tgz.sha256",
            ".cvp-backup-copy-canary.20260109020000-1a",
        ];
        let old = [
            ".cvp.20260107020000.tgz.cvpbc-part-aa01",
            ".cvp.20260107020000.tgz.cvpbc-part",
            "cvp.20260107020000.tgz.sha256",
            ".cvp-backup-copy-canary.20260107020000-2b",
        ];
        for name in young {
            entries.push(entry(name, 2));
        }
        for name in old {
            entries.push(entry(name, 26));
        }
        for foreign in ["notes.txt", ".bash_history", "cvp.20260101020000.tgz.bak"] {
            entries.push(entry(foreign, 24 * 30));
        }
        let plan = plan(&entries, &HashMap::from([(data, text)]), 3, now());
        let mut expected = old.to_vec();
        expected.sort();
        assert_eq!(removed(&plan), expected);
        assert!(plan.remove.iter().all(|(_, why)| !why.is_empty()));
        assert!(GRACE.as_secs() == DAY);
    }

    #[test]
    fn without_any_manifest_the_stamp_rule_keeps_the_newest() {
        let entries: Vec<Entry> = [
            "cvp.20260101020000.tgz",
            "cvp.20260102020000.tgz",
            "cvp.eosimages.20260101020000.tgz",
        ]
        .iter()
        .map(|n| entry(n, 48))
        .collect();
        let plan = plan(&entries, &HashMap::new(), 1, now());
        assert_eq!(plan.newest_good, None);
        assert_eq!(removed(&plan), vec!["cvp.20260101020000.tgz"]);
    }
}
