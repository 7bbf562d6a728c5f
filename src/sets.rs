//! What a backup set is, decided in one place: which images file and which log belong to a
//! data file, how sets are ordered when a clock was wrong, and the manifest that records on
//! the server exactly which files a run uploaded as one set. `run`, retention, `list` and
//! `fetch` all ask here; none of them re-derives it.

use crate::names::{parse_sidecar, sidecar_line, BackupName, Kind, RemoteFile, Stamp};
use std::collections::HashMap;

/// cvpi may stamp the images file of a backup a little after its data file (it writes one
/// after the other); backups are a night apart, so an hour cannot reach another night's.
pub const IMAGES_GRACE_SECONDS: i64 = 3600;

/// A stamp this far ahead of the node's clock is "in the future": a clock that was once
/// wrong. Two hours cover the daylight-saving step back and a little drift.
pub const FUTURE_SLACK_SECONDS: i64 = 2 * 3600;

/// A data backup with the images file it needs and its log.
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

/// The newest file of `kind` whose stamp is not newer than `at`.
pub fn newest_not_newer(files: &[BackupName], kind: Kind, at: Stamp) -> Option<BackupName> {
    files
        .iter()
        .filter(|f| f.kind == kind && f.stamp <= at)
        .max_by_key(|f| f.stamp)
        .copied()
}

/// The images file `data` needs: the newest one not newer than it (CVP re-dumps images only
/// when image bundles change), allowing for cvpi stamping the images of the same backup a
/// moment after the data, but never one from a later backup: cvpi opens a backup's log as
/// it starts, so an images file stamped after the next log belongs to that next run.
pub fn images_for(files: &[BackupName], data: BackupName) -> Option<BackupName> {
    let mut limit = data.stamp.plus_seconds(IMAGES_GRACE_SECONDS);
    let next_run = files
        .iter()
        .filter(|f| f.kind == Kind::Log && f.stamp > data.stamp)
        .map(|f| f.stamp)
        .min();
    if let Some(next_run) = next_run.filter(|next| *next <= limit) {
        limit = next_run.plus_seconds(-1);
    }
    newest_not_newer(files, Kind::Images, limit)
}

/// The log of `data`: cvpi opens it when the backup starts, so it is the newest log not
/// newer than the data file.
pub fn log_for(files: &[BackupName], data: BackupName) -> Option<BackupName> {
    newest_not_newer(files, Kind::Log, data.stamp)
}

/// `data` with the images file and log it needs, from the files at hand.
pub fn compose(files: &[BackupName], data: BackupName) -> RestoreSet {
    RestoreSet {
        data,
        images: images_for(files, data),
        log: log_for(files, data),
    }
}

/// `data` with its members as recorded (the tool's history on the node, the set's manifest on
/// the server) when every recorded member is there, else by the rule (`compose`). A record
/// is the truth: cvpi's stamps only suggest which images file a backup wrote.
pub fn members(files: &[BackupName], data: BackupName, known: &[RestoreSet]) -> RestoreSet {
    match known.iter().find(|set| set.data == data) {
        Some(set) if set.files().iter().all(|f| files.contains(f)) => set.clone(),
        _ => compose(files, data),
    }
}

/// The set a successful backup made: the images file and log it wrote itself, when it wrote
/// them (whatever their stamps), else those the rule gives.
pub fn made_by(files: &[BackupName], data: BackupName, new: &[BackupName]) -> RestoreSet {
    let by_rule = compose(files, data);
    let newest_new = |kind: Kind| {
        new.iter()
            .filter(|f| f.kind == kind && files.contains(f))
            .max_by_key(|f| f.stamp)
            .copied()
    };
    RestoreSet {
        data,
        images: newest_new(Kind::Images).or(by_rule.images),
        log: newest_new(Kind::Log).or(by_rule.log),
    }
}

/// Stamped further ahead of `now` than a clock's honest error.
pub fn is_future(stamp: Stamp, now: Stamp) -> bool {
    stamp > now.plus_seconds(FUTURE_SLACK_SECONDS)
}

/// Sort key, newest first: sets stamped in the future come after every honest one (their
/// stamp says nothing about when they were made), then by stamp.
pub fn recency(name: &BackupName, now: Stamp) -> impl Ord {
    std::cmp::Reverse((!is_future(name.stamp, now), name.stamp))
}

/// Data files newest first, as `recency` orders them.
pub fn data_by_recency(files: &[BackupName], now: Stamp) -> Vec<BackupName> {
    let mut data: Vec<BackupName> = files
        .iter()
        .filter(|f| f.kind == Kind::Data)
        .copied()
        .collect();
    data.sort_by_key(|f| recency(f, now));
    data.dedup();
    data
}

/// One member of an uploaded set with the sha256 it was verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// As the server holds it: NAME, or NAME.age.
    pub file: RemoteFile,
    pub sha256: String,
}

/// The manifest text: `sha256sum` lines, images first, so that `sha256sum -c` on the server
/// checks the whole set.
pub fn render_manifest(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| sidecar_line(&m.sha256, &m.file.file_name()))
        .collect()
}

/// The manifest of `set` from the sha256 each member was verified with on the server (as
/// the server holds it: NAME or NAME.age); a member without one is left out.
pub fn manifest_of(
    set: &RestoreSet,
    verified: &HashMap<BackupName, (RemoteFile, String)>,
) -> String {
    let members: Vec<Member> = set
        .files()
        .into_iter()
        .filter_map(|name| {
            let (file, sha256) = verified.get(&name)?.clone();
            Some(Member { file, sha256 })
        })
        .collect();
    render_manifest(&members)
}

/// The members a manifest lists; None unless every line is a well-formed `sha256sum` line
/// for a CVP name (or its `.age`), exactly one of them is `data`, and at most one images
/// file and one log.
pub fn parse_manifest(text: &str, data: BackupName) -> Option<RestoreSet> {
    let mut members = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let name_part = line.get(66..)?.trim_start_matches('*');
        let file = RemoteFile::parse(name_part)?;
        parse_sidecar(line, &file.file_name())?;
        members.push(file.name);
    }
    let of = |kind: Kind| members.iter().filter(move |m| m.kind == kind);
    if of(Kind::Data).collect::<Vec<_>>() != [&data]
        || of(Kind::Images).count() > 1
        || of(Kind::Log).count() > 1
    {
        return None;
    }
    Some(RestoreSet {
        data,
        images: of(Kind::Images).next().copied(),
        log: of(Kind::Log).next().copied(),
    })
}

/// `text` with the line for `file` giving `digest` instead; None when it lists no other
/// digest for it.
pub fn restate_manifest(text: &str, file: RemoteFile, digest: &str) -> Option<String> {
    let name = file.file_name();
    let mut changed = false;
    let lines: String = text
        .lines()
        .map(|line| match parse_sidecar(line, &name) {
            Some(old) if old != digest => {
                changed = true;
                sidecar_line(digest, &name)
            }
            _ => format!("{line}\n"),
        })
        .collect();
    changed.then_some(lines)
}

/// The form a manifest lists a member in (NAME or NAME.age) and its digest.
pub fn manifest_entry(text: &str, name: BackupName) -> Option<(RemoteFile, String)> {
    [RemoteFile::plain(name), RemoteFile::new(name, true)]
        .into_iter()
        .find_map(|file| {
            text.lines()
                .find_map(|line| parse_sidecar(line, &file.file_name()))
                .map(|digest| (file, digest))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> BackupName {
        BackupName::parse(name).unwrap_or_else(|| panic!("bad test name {name}"))
    }

    fn stamp(s: &str) -> Stamp {
        Stamp::parse(s).expect("stamp")
    }

    #[test]
    fn the_images_and_log_a_data_file_needs() {
        let files = [
            n("cvp.eosimages.20230101020005.tgz"),
            n("backup_cvp.20240101020003.log"),
            n("cvp.20240101020010.tgz"),
            n("cvp.eosimages.20240101020530.tgz"),
            n("backup_cvp.20240102020003.log"),
            n("cvp.20240102020010.tgz"),
            n("cvp.eosimages.20240103020005.tgz"),
        ];
        // (data, images, log)
        let table = [
            (
                "cvp.20240101020010.tgz",
                Some("cvp.eosimages.20240101020530.tgz"),
                Some("backup_cvp.20240101020003.log"),
            ),
            (
                "cvp.20240102020010.tgz",
                Some("cvp.eosimages.20240101020530.tgz"),
                Some("backup_cvp.20240102020003.log"),
            ),
            ("cvp.20221231020010.tgz", None, None),
        ];
        // Two backups within the hour: the later run's images never go to the earlier data.
        let close = [
            n("backup_cvp.20240101013000.log"),
            n("cvp.20240101013010.tgz"),
            n("cvp.eosimages.20240101013040.tgz"),
            n("backup_cvp.20240101020000.log"),
            n("cvp.20240101020010.tgz"),
            n("cvp.eosimages.20240101020040.tgz"),
        ];
        assert_eq!(images_for(&close, close[1]), Some(close[2]));
        assert_eq!(images_for(&close, close[4]), Some(close[5]));
        for (data, images, log) in table {
            let set = compose(&files, n(data));
            assert_eq!(set.images, images.map(n), "{data}");
            assert_eq!(set.log, log.map(n), "{data}");
        }
    }

    #[test]
    fn future_stamps_sort_after_every_honest_one() {
        let now = stamp("20261126020000");
        let files = [
            n("cvp.20261125020000.tgz"),
            n("cvp.20300101020000.tgz"),
            n("cvp.20261126020000.tgz"),
            n("cvp.20261126030000.tgz"),
            n("cvp.eosimages.20300101020000.tgz"),
        ];
        let order: Vec<String> = data_by_recency(&files, now)
            .iter()
            .map(|f| f.file_name())
            .collect();
        assert_eq!(
            order,
            [
                "cvp.20261126030000.tgz",
                "cvp.20261126020000.tgz",
                "cvp.20261125020000.tgz",
                "cvp.20300101020000.tgz"
            ]
        );
        assert!(!is_future(stamp("20261126035959"), now));
        assert!(is_future(stamp("20261126040001"), now));
    }

    #[test]
    fn manifests_round_trip_and_reject_anything_odd() {
        let data = n("cvp.20240102020010.tgz");
        // An encrypted set, but for its log (encryption turned on between two files).
        let members = [
            Member {
                file: RemoteFile::new(n("cvp.eosimages.20240101020005.tgz"), true),
                sha256: "a".repeat(64),
            },
            Member {
                file: RemoteFile::new(data, true),
                sha256: "b".repeat(64),
            },
            Member {
                file: RemoteFile::plain(n("backup_cvp.20240102020003.log")),
                sha256: "c".repeat(64),
            },
        ];
        let text = render_manifest(&members);
        assert!(text.contains("  cvp.20240102020010.tgz.age\n"), "{text}");
        let set = parse_manifest(&text, data).expect("parses");
        assert_eq!(
            set.files(),
            members.iter().map(|m| m.file.name).collect::<Vec<_>>()
        );
        assert_eq!(
            manifest_entry(&text, n("backup_cvp.20240102020003.log")),
            Some((members[2].file, "c".repeat(64)))
        );
        assert_eq!(
            manifest_entry(&text, data),
            Some((members[1].file, "b".repeat(64)))
        );
        let other = n("cvp.20240103020010.tgz");
        assert_eq!(parse_manifest(&text, other), None, "another data file");
        assert_eq!(parse_manifest(&format!("{text}junk\n"), data), None);
        let twice = format!(
            "{text}{}",
            sidecar_line(&"d".repeat(64), "cvp.eosimages.20240102020005.tgz")
        );
        assert_eq!(parse_manifest(&twice, data), None, "two images files");
        assert_eq!(parse_manifest("", data), None);
    }

    #[test]
    fn a_replaced_member_is_restated_and_nothing_else() {
        let images = RemoteFile::new(n("cvp.eosimages.20240101020005.tgz"), true);
        let data = RemoteFile::new(n("cvp.20240102020010.tgz"), true);
        let text = render_manifest(&[
            Member {
                file: images,
                sha256: "a".repeat(64),
            },
            Member {
                file: data,
                sha256: "b".repeat(64),
            },
        ]);
        let new = restate_manifest(&text, images, &"e".repeat(64)).expect("changed");
        assert_eq!(
            new,
            text.replace(&"a".repeat(64), &"e".repeat(64)),
            "only the images line"
        );
        assert_eq!(restate_manifest(&new, images, &"e".repeat(64)), None);
        // The plain form is another file: not restated.
        let plain = RemoteFile::plain(images.name);
        assert_eq!(restate_manifest(&text, plain, &"e".repeat(64)), None);
    }
}
