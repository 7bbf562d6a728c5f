//! `prune-dir`: retention run on the backup server itself, for destinations the node may not
//! prune (append_only). The rules of `remote_limit` (`copy_night::remote_retention` and
//! `retention::remote_leftovers`, not written again here): sets by their manifests, the
//! images a kept set needs, CVP names only. Two more, because whoever holds the node's
//! credentials can write names into the folder: nothing changed (written, or renamed: its
//! ctime) within `min_age` is removed, whatever its name says, and the set whose manifest the
//! server received last is kept. Pure: the command lists the folder and acts.

use crate::names::{BackupName, Kind, RemoteName, Stamp};
use crate::remote::RemoteEntry;
use crate::restore_set::RestoreSet;
use crate::retention::KeepReason;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// `--min-age`'s default: a week of copies survives anything planted in the folder, time
/// for monitoring to notice a node that stopped or an intruder.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// More CVP names than this is not a backup folder any more (a flood of planted names):
/// prune-dir refuses rather than spend hours planning.
pub const MAX_NAMES: usize = 100_000;

/// Test files start with this (the node's, or a partial of one a probe left).
fn is_canary(name: &str) -> bool {
    name.trim_start_matches('.')
        .starts_with(crate::immutable::CANARY_PREFIX.trim_start_matches('.'))
}

/// A regular file in the folder, with the time since it last changed (written, or renamed:
/// the later of its mtime and ctime, both from the server's clock).
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
    /// The complete set (its manifest's members all there) whose manifest arrived last.
    pub newest_good: Option<BackupName>,
    /// Files the rules would remove but that changed within `min_age`.
    pub held: Vec<String>,
}

/// What to remove from a folder of `entries` to keep the `keep` newest sets. `manifests`:
/// the text of each data file's `cvp.<ts>.set.sha256`, where it could be read.
pub fn plan(
    entries: &[Entry],
    manifests: &HashMap<BackupName, String>,
    (keep, min_age): (u32, Duration),
    now: Stamp,
) -> Plan {
    let listing: Vec<RemoteEntry> = entries
        .iter()
        .map(|e| RemoteEntry {
            name: e.name.clone(),
            size: 0,
        })
        .collect();
    let age: HashMap<&str, Duration> = entries.iter().map(|e| (e.name.as_str(), e.age)).collect();
    let young = |name: &str| age.get(name).is_some_and(|a| *a < min_age);
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
    // By the server's clock, not by the stamp: a node clock once set ahead must not make an
    // old set "the newest" for good.
    let newest_good = known
        .iter()
        .filter(|set| set.files().iter().all(|name| present.contains(name)))
        .map(|set| set.data)
        .min_by_key(|data| {
            let manifest_age = age.get(data.manifest_name().as_str()).copied();
            (
                manifest_age.unwrap_or(Duration::MAX),
                std::cmp::Reverse(data.stamp),
            )
        });
    // Data changed within min_age stays, with the images and log it needs.
    let mut also_keep: Vec<BackupName> = newest_good.into_iter().collect();
    also_keep.extend(entries.iter().filter(|e| e.age < min_age).filter_map(|e| {
        match RemoteName::parse(&e.name) {
            Some(RemoteName::Backup(file)) if file.name.kind == Kind::Data => Some(file.name),
            _ => None,
        }
    }));
    also_keep.sort();
    also_keep.dedup();
    let decision =
        crate::copy_night::remote_retention(&listing, (keep, &also_keep), &[], &known, now);
    let mut remove = Vec::new();
    let mut held = Vec::new();
    let mut gone: Vec<BackupName> = Vec::new();
    for name in &decision.remove {
        let forms: Vec<&str> = entries
            .iter()
            .filter(|e| {
                matches!(RemoteName::parse(&e.name), Some(RemoteName::Backup(f)) if f.name == *name)
            })
            .map(|e| e.name.as_str())
            .collect();
        if forms.iter().any(|form| young(form)) {
            held.extend(forms.iter().map(|f| f.to_string()));
            continue;
        }
        gone.push(*name);
        for form in forms {
            remove.push((form.to_string(), format!("beyond the newest {keep} sets")));
        }
    }
    let all: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    for leftover in crate::retention::remote_leftovers(&all, &gone, &[]) {
        let why = match RemoteName::parse(&leftover) {
            Some(RemoteName::Sidecar(file)) if gone.contains(&file.name) => "its file is pruned",
            Some(RemoteName::Manifest(data)) if gone.contains(&data) => "its file is pruned",
            Some(RemoteName::Partial(_)) => "a partial upload",
            _ => "its file is gone",
        };
        if young(&leftover) {
            held.push(leftover);
        } else {
            remove.push((leftover, why.to_string()));
        }
    }
    for entry in entries.iter().filter(|e| is_canary(&e.name)) {
        if entry.age < min_age {
            held.push(entry.name.clone());
        } else {
            remove.push((
                entry.name.clone(),
                "a test file of `check` or a night".into(),
            ));
        }
    }
    remove.sort();
    remove.dedup();
    held.sort();
    held.dedup();
    Plan {
        remove,
        keep: decision.keep,
        newest_good,
        held,
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

    const HOUR: u64 = 3600;
    const ONE_DAY: Duration = Duration::from_secs(24 * HOUR);

    fn entry(name: &str, age_hours: u64) -> Entry {
        Entry {
            name: name.into(),
            age: Duration::from_secs(age_hours * HOUR),
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

    fn add(entries: &mut Vec<Entry>, files: Vec<Entry>) {
        for file in files {
            if !entries.iter().any(|e| e.name == file.name) {
                entries.push(file);
            }
        }
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
            add(&mut entries, files);
            manifests.insert(data, text);
        }
        let plan = plan(&entries, &manifests, (2, ONE_DAY), now());
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
        // With the default min age (a week) the sets 8 and 9 days old still go; with 10 days
        // nothing does.
        let plan = super::plan(&entries, &manifests, (2, DEFAULT_MIN_AGE), now());
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
            ],
            "8 and 9 days old go"
        );
        let plan = super::plan(
            &entries,
            &manifests,
            (1, Duration::from_secs(10 * 24 * HOUR)),
            now(),
        );
        assert!(plan.remove.is_empty(), "{plan:?}");
        assert!(
            kept_sets(&plan).contains(&BackupName::parse("cvp.20260101020000.tgz").expect("name")),
            "{plan:?}"
        );
    }

    #[test]
    fn the_newest_good_set_stays_when_newer_ones_are_incomplete() {
        let (mut entries, (data, text)) = set("20260105020000", "20260105020000", 5 * 24);
        // Two later nights stopped before their manifest (their images file missing).
        entries.push(entry("cvp.20260106020000.tgz", 4 * 24));
        entries.push(entry("cvp.20260107020000.tgz", 3 * 24));
        let manifests = HashMap::from([(data, text)]);
        let plan = plan(&entries, &manifests, (1, ONE_DAY), now());
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
        // A data file of the last hours (a night under way) is never removed, nor its
        // images file, however old.
        entries.push(entry("cvp.20260109020000.tgz", 1));
        let plan = super::plan(&entries, &manifests, (1, ONE_DAY), now());
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
    fn the_newest_good_set_is_the_one_whose_manifest_arrived_last_not_the_largest_stamp() {
        // A node clock once a year ahead left a complete set stamped 2027, long ago.
        let (mut entries, (ahead, ahead_text)) = set("20270101020000", "20270101020000", 40 * 24);
        // The real newest good set, and a newer night that never completed.
        let (real, (good, good_text)) = set("20260105020000", "20260105020000", 10 * 24);
        add(&mut entries, real);
        entries.push(entry("cvp.20260106020000.tgz", 9 * 24));
        let manifests = HashMap::from([(ahead, ahead_text), (good, good_text)]);
        let plan = plan(&entries, &manifests, (1, DEFAULT_MIN_AGE), now());
        assert_eq!(plan.newest_good, Some(good));
        for name in ["cvp.20260105020000.tgz", "cvp.eosimages.20260105020000.tgz"] {
            assert!(!removed(&plan).contains(&name), "{name}: {plan:?}");
        }
    }

    #[test]
    fn names_planted_in_the_folder_never_remove_a_copy_younger_than_min_age() {
        // Two real nights, 2 and 1 days old.
        let mut entries = Vec::new();
        let mut manifests = HashMap::new();
        for (stamp, age) in [("20260108020000", 48), ("20260109020000", 24)] {
            let (files, (data, text)) = set(stamp, stamp, age);
            add(&mut entries, files);
            manifests.insert(data, text);
        }
        let real: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        // An intruder with the node's password plants newer sets (one complete, with a fresh
        // manifest), renames nothing the server would date back, and waits for prune-dir.
        let (fake, (fake_data, fake_text)) = set("20260110010000", "20260110010000", 0);
        add(&mut entries, fake);
        manifests.insert(fake_data, fake_text);
        for stamp in ["20260110011000", "20260110012000", "20260110013000"] {
            entries.push(entry(&format!("cvp.{stamp}.tgz"), 0));
        }
        // A real copy renamed to a partial's or a test file's name: its ctime is fresh.
        entries.push(entry(".cvp.20260109020000.tgz.cvpbc-part-1", 0));
        entries.push(entry(".cvp-backup-copy-canary.20260101000000-1", 0));
        let plan = plan(&entries, &manifests, (1, DEFAULT_MIN_AGE), now());
        for name in &real {
            assert!(!removed(&plan).contains(&name.as_str()), "{name}: {plan:?}");
        }
        assert!(plan.remove.is_empty(), "{plan:?}");
    }

    #[test]
    fn leftovers_and_test_files_go_only_once_old_enough_and_foreign_names_never() {
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
            "..cvp-backup-copy-canary.20260107020000-3c.cvpbc-part-4d",
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
        let plan = plan(
            &entries,
            &HashMap::from([(data, text)]),
            (3, ONE_DAY),
            now(),
        );
        let mut expected = old.to_vec();
        expected.sort();
        assert_eq!(removed(&plan), expected);
        assert!(plan.remove.iter().all(|(_, why)| !why.is_empty()));
        let mut held = young.to_vec();
        held.sort();
        assert_eq!(plan.held, held);
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
        let plan = plan(&entries, &HashMap::new(), (1, ONE_DAY), now());
        assert_eq!(plan.newest_good, None);
        assert_eq!(removed(&plan), vec!["cvp.20260101020000.tgz"]);
    }
}
