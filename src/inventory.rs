//! Which backup sets exist, and where: a pure function of the local and remote listings,
//! shared by `list` and `fetch`.

use crate::names::{BackupName, Kind, RemoteFile, Stamp};
use crate::sets::{self, RestoreSet};
use std::collections::HashMap;

/// One file of a set, as the listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: BackupName,
    pub local_size: Option<u64>,
    pub remote_size: Option<u64>,
    /// The checksum file of the remote copy is there.
    pub remote_sidecar: bool,
    /// The remote copy is `NAME.age` (encrypted).
    pub remote_sealed: bool,
}

impl Entry {
    /// The remote copy, when there is one.
    pub fn remote_file(&self) -> Option<RemoteFile> {
        self.remote_size
            .map(|_| RemoteFile::new(self.name, self.remote_sealed))
    }
}

/// A data backup with the images file it needs and its log (each where it was found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSet {
    pub data: Entry,
    pub images: Option<Entry>,
    pub log: Option<Entry>,
}

impl BackupSet {
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        [Some(&self.data), self.images.as_ref(), self.log.as_ref()]
            .into_iter()
            .flatten()
    }
}

/// Every data backup on either side, newest first. A set's images file and log are those
/// recorded for it (`known`) or `sets` assigns it, looked for on either side (a restore
/// needs them, wherever they are).
///
/// A file on the server both as NAME and NAME.age (encryption turned on while a copy was
/// there) counts once: the copy with a checksum file, the plain one if both have one.
pub fn sets(
    local: &[(BackupName, u64)],
    remote: &[(RemoteFile, u64)],
    remote_sidecars: &[RemoteFile],
    known: &[RestoreSet],
) -> Vec<BackupSet> {
    let mut seen: HashMap<BackupName, Entry> = HashMap::new();
    for (name, size) in local {
        seen.entry(*name).or_insert_with(|| blank(*name)).local_size = Some(*size);
    }
    for (file, _) in remote {
        let Some((copy, size)) = remote_copy(remote, remote_sidecars, file.name, false) else {
            continue;
        };
        let entry = seen.entry(file.name).or_insert_with(|| blank(file.name));
        entry.remote_size = Some(size);
        entry.remote_sidecar = remote_sidecars.contains(&copy);
        entry.remote_sealed = copy.sealed;
    }
    let names: Vec<BackupName> = seen.keys().copied().collect();
    let mut data: Vec<BackupName> = names
        .iter()
        .filter(|n| n.kind == Kind::Data)
        .copied()
        .collect();
    data.sort_by_key(|name| std::cmp::Reverse(name.stamp));
    let entry = |name: Option<BackupName>| name.and_then(|n| seen.get(&n).cloned());
    data.into_iter()
        .filter_map(|name| {
            let members = sets::members(&names, name, known);
            Some(BackupSet {
                data: seen.get(&name)?.clone(),
                images: entry(members.images),
                log: entry(members.log),
            })
        })
        .collect()
}

/// The copy of `name` on the server that counts when it is there twice (NAME and NAME.age:
/// encryption turned on or off while a copy was there): one with a checksum file, and of
/// those the encrypted one when `prefer_sealed` (fetch with an identity), else the plain one.
pub fn remote_copy(
    remote: &[(RemoteFile, u64)],
    sidecars: &[RemoteFile],
    name: BackupName,
    prefer_sealed: bool,
) -> Option<(RemoteFile, u64)> {
    remote
        .iter()
        .filter(|(file, _)| file.name == name)
        .min_by_key(|(file, _)| (!sidecars.contains(file), file.sealed != prefer_sealed))
        .copied()
}

fn blank(name: BackupName) -> Entry {
    Entry {
        name,
        local_size: None,
        remote_size: None,
        remote_sidecar: false,
        remote_sealed: false,
    }
}

/// Which set `fetch` is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    Latest,
    At(Stamp),
}

impl Wanted {
    /// `latest`, a 14-digit CVP timestamp, or a data file's name.
    pub fn parse(text: &str) -> Option<Wanted> {
        if text == "latest" {
            return Some(Wanted::Latest);
        }
        if let Some(stamp) = Stamp::parse(text) {
            return Some(Wanted::At(stamp));
        }
        match BackupName::parse(text) {
            Some(name) if name.kind == Kind::Data => Some(Wanted::At(name.stamp)),
            _ => None,
        }
    }
}

/// The restore set to download, from the remote listing alone: the wanted data file, the
/// images file it needs and its log, all of which must be on the server. (`fetch` prefers
/// the set's manifest, when the server has one, to this rule.) `latest` is the newest set
/// with a manifest (`with_manifest`: their data files): a data file without one is being
/// copied, or was left by a night that failed; only when no set has one (sets from before
/// manifests) the newest data file.
pub fn pick_remote(
    remote: &[(BackupName, u64)],
    with_manifest: &[BackupName],
    wanted: Wanted,
    now: Stamp,
) -> Option<RestoreSet> {
    let names: Vec<BackupName> = remote.iter().map(|(n, _)| *n).collect();
    let by_recency = sets::data_by_recency(&names, now);
    let data = match wanted {
        Wanted::Latest => by_recency
            .iter()
            .find(|n| with_manifest.contains(n))
            .or(by_recency.first())
            .copied(),
        Wanted::At(stamp) => by_recency.into_iter().find(|n| n.stamp == stamp),
    }?;
    Some(sets::compose(&names, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> BackupName {
        BackupName::parse(name).unwrap_or_else(|| panic!("bad test name {name}"))
    }

    fn now() -> Stamp {
        Stamp::parse("20240201020000").expect("stamp")
    }

    fn sized(names: &[&str]) -> Vec<(BackupName, u64)> {
        names.iter().map(|s| (n(s), 10)).collect()
    }

    fn remote_sized(names: &[&str]) -> Vec<(RemoteFile, u64)> {
        names
            .iter()
            .map(|s| (RemoteFile::parse(s).expect("a remote name"), 10))
            .collect()
    }

    #[test]
    fn a_file_there_plain_and_encrypted_counts_once_by_its_checksum() {
        let local = sized(&[]);
        let remote = remote_sized(&[
            "cvp.20240101020010.tgz",
            "cvp.20240101020010.tgz.age",
            "cvp.20240102020010.tgz.age",
            "cvp.20240103020010.tgz",
            "cvp.20240103020010.tgz.age",
        ]);
        let sidecars: Vec<RemoteFile> = [
            "cvp.20240101020010.tgz.age",
            "cvp.20240102020010.tgz.age",
            "cvp.20240103020010.tgz",
            "cvp.20240103020010.tgz.age",
        ]
        .iter()
        .map(|s| RemoteFile::parse(s).expect("name"))
        .collect();
        let found = sets(&local, &remote, &sidecars, &[]);
        let forms: Vec<(String, bool)> = found
            .iter()
            .map(|s| {
                let file = s.data.remote_file().expect("remote");
                (file.file_name(), s.data.remote_sidecar)
            })
            .collect();
        assert_eq!(
            forms,
            [
                ("cvp.20240103020010.tgz".to_string(), true),
                ("cvp.20240102020010.tgz.age".to_string(), true),
                ("cvp.20240101020010.tgz.age".to_string(), true),
            ]
        );
        // fetch with an identity: the encrypted copy of the two with a checksum file.
        let both = BackupName::parse("cvp.20240103020010.tgz").expect("name");
        let picked = remote_copy(&remote, &sidecars, both, true).expect("a copy");
        assert_eq!(picked.0.file_name(), "cvp.20240103020010.tgz.age");
    }

    #[test]
    fn sets_are_newest_first_with_what_each_needs_and_where_it_is() {
        let local = sized(&[
            "cvp.20240103020010.tgz",
            "backup_cvp.20240103020003.log",
            "cvp.eosimages.20240102020005.tgz",
        ]);
        let remote = remote_sized(&[
            "cvp.20240101020010.tgz",
            "backup_cvp.20240101020003.log",
            "cvp.eosimages.20231201020005.tgz",
            "cvp.eosimages.20240102020005.tgz",
        ]);
        let sidecars = [RemoteFile::plain(n("cvp.20240101020010.tgz"))];
        let found = sets(&local, &remote, &sidecars, &[]);
        // (data, images, log, data is local, data is remote, data has a sidecar)
        type Row = (String, Option<String>, Option<String>, bool, bool, bool);
        let rows: Vec<Row> = found
            .iter()
            .map(|s| {
                (
                    s.data.name.file_name(),
                    s.images.as_ref().map(|e| e.name.file_name()),
                    s.log.as_ref().map(|e| e.name.file_name()),
                    s.data.local_size.is_some(),
                    s.data.remote_size.is_some(),
                    s.data.remote_sidecar,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "cvp.20240103020010.tgz".to_string(),
                    Some("cvp.eosimages.20240102020005.tgz".to_string()),
                    Some("backup_cvp.20240103020003.log".to_string()),
                    true,
                    false,
                    false
                ),
                (
                    "cvp.20240101020010.tgz".to_string(),
                    Some("cvp.eosimages.20231201020005.tgz".to_string()),
                    Some("backup_cvp.20240101020003.log".to_string()),
                    false,
                    true,
                    true
                ),
            ]
        );
        // The images file of the newest set is on both sides.
        let images = found[0].images.as_ref().expect("images");
        assert_eq!(
            (images.local_size, images.remote_size),
            (Some(10), Some(10))
        );
    }

    #[test]
    fn wanted_sets_are_parsed_strictly() {
        let table = [
            ("latest", Some(Wanted::Latest)),
            (
                "20240101020010",
                Some(Wanted::At(Stamp::parse("20240101020010").expect("stamp"))),
            ),
            (
                "cvp.20240101020010.tgz",
                Some(Wanted::At(Stamp::parse("20240101020010").expect("stamp"))),
            ),
            ("cvp.eosimages.20240101020010.tgz", None),
            ("2024", None),
            ("20241301020010", None),
            ("newest", None),
        ];
        for (text, expected) in table {
            assert_eq!(Wanted::parse(text), expected, "{text}");
        }
    }

    #[test]
    fn the_remote_set_is_picked_from_remote_files_only() {
        let remote = sized(&[
            "cvp.20240101020010.tgz",
            "cvp.20240102020010.tgz",
            "cvp.eosimages.20231201020005.tgz",
            "backup_cvp.20240102020003.log",
        ]);
        let latest = pick_remote(&remote, &[], Wanted::Latest, now()).expect("latest");
        assert_eq!(latest.data, n("cvp.20240102020010.tgz"));
        assert_eq!(latest.images, Some(n("cvp.eosimages.20231201020005.tgz")));
        assert_eq!(latest.log, Some(n("backup_cvp.20240102020003.log")));
        let older = pick_remote(
            &remote,
            &[],
            Wanted::parse("20240101020010").expect("wanted"),
            now(),
        )
        .expect("older");
        assert_eq!(older.data, n("cvp.20240101020010.tgz"));
        assert_eq!(older.log, None);
        assert_eq!(
            pick_remote(
                &remote,
                &[],
                Wanted::parse("20230101020010").expect("wanted"),
                now()
            ),
            None
        );
        assert_eq!(pick_remote(&[], &[], Wanted::Latest, now()), None);
        // A newer data file without a manifest (a night that failed after publishing it):
        // latest is the newest set with one.
        let with_manifest = [n("cvp.20240101020010.tgz")];
        let latest = pick_remote(&remote, &with_manifest, Wanted::Latest, now()).expect("latest");
        assert_eq!(latest.data, n("cvp.20240101020010.tgz"));
    }
}
