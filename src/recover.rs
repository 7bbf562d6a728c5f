//! Restore after an attack. An intruder holding the node's key can hide a bucket's objects
//! behind delete markers and write junk under their names; where the bucket keeps versions
//! (Object Lock turns versioning on, and locks the node's), every version the node wrote is
//! still there. This finds, for a set, a version of its manifest and a version of each member
//! whose SHA-256 is the one that manifest lists, and pins the S3 remote to them: `fetch` then
//! reads exactly those, and verifies them as always.

use crate::error::{Error, Result};
use crate::inventory::Wanted;
use crate::names::{BackupName, Kind, RemoteFile, RemoteName};
use crate::remote::s3::{ObjectVersion, S3Remote};
use crate::remote::Remote;
use crate::sets;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// The versions of each name directly under the prefix (delete markers included), newest
/// first.
pub fn versions_by_name(remote: &S3Remote) -> Result<BTreeMap<String, Vec<ObjectVersion>>> {
    let mut by_name: BTreeMap<String, Vec<ObjectVersion>> = BTreeMap::new();
    for version in remote.versions_under(&remote.list_prefix())? {
        if let Some(name) = remote.name_of(&version.key) {
            by_name.entry(name.to_string()).or_default().push(version);
        }
    }
    Ok(by_name)
}

/// Data backups whose set was hidden or written over after the node wrote it: the data file
/// or its manifest behind a delete marker, or with more than one version. Their earlier
/// versions are there for `fetch` to look through.
pub fn hidden_data(by_name: &BTreeMap<String, Vec<ObjectVersion>>) -> Vec<BackupName> {
    let touched = |name: &str| {
        by_name.get(name).is_some_and(|versions| {
            let kept = versions.iter().filter(|v| !v.delete_marker).count();
            kept > 0 && (versions.iter().any(|v| v.latest && v.delete_marker) || kept > 1)
        })
    };
    let mut hidden: Vec<BackupName> = by_name
        .keys()
        .filter_map(|name| match RemoteName::parse(name) {
            Some(RemoteName::Backup(file)) if file.name.kind == Kind::Data => Some(file),
            _ => None,
        })
        .filter(|file| touched(&file.file_name()) || touched(&file.name.manifest_name()))
        .map(|file| file.name)
        .collect();
    hidden.sort_by_key(|n| std::cmp::Reverse(n.stamp));
    hidden.dedup();
    hidden
}

/// Data backups the current view shows (their newest entry is no delete marker).
pub fn current_data(by_name: &BTreeMap<String, Vec<ObjectVersion>>) -> Vec<BackupName> {
    by_name
        .iter()
        .filter(|(_, versions)| versions.iter().any(|v| v.latest && !v.delete_marker))
        .filter_map(|(name, _)| match RemoteName::parse(name) {
            Some(RemoteName::Backup(file)) if file.name.kind == Kind::Data => Some(file.name),
            _ => None,
        })
        .collect()
}

/// Find the set `wanted` among the versions and pin `remote` to it; the set's data name.
/// `skip`: how many whole candidates to pass over (the caller's fetch of an earlier one
/// failed, e.g. an older encryption its identity cannot open). An error names what no
/// version could supply.
pub fn pin_set(remote: &mut S3Remote, wanted: Wanted, skip: usize) -> Result<BackupName> {
    let by_name = versions_by_name(remote)?;
    let names: Vec<BackupName> = by_name
        .keys()
        .filter_map(|name| RemoteFile::parse(name))
        .map(|file| file.name)
        .collect();
    // Newest first as everywhere else: a stamp in the future (a planted set, a clock once
    // ahead) comes last.
    let candidates: Vec<BackupName> = sets::data_by_recency(&names, crate::names::Stamp::now())
        .into_iter()
        .filter(|name| match wanted {
            Wanted::Latest => true,
            Wanted::At(stamp) => name.stamp == stamp,
        })
        .collect();
    let label = remote.describe();
    let mut digests: HashMap<(String, String), String> = HashMap::new();
    let mut why_not = Vec::new();
    let mut passed = 0;
    for data in candidates {
        let manifest = data.manifest_name();
        let Some(manifest_versions) = by_name.get(&manifest) else {
            why_not.push(format!("{data}: no version of {manifest}"));
            continue;
        };
        // The oldest version first: the node writes a set's manifest once (an intruder's
        // comes after it).
        for manifest_version in manifest_versions.iter().rev().filter(|v| !v.delete_marker) {
            let text = match read_version(remote, &manifest, manifest_version, 64 * 1024) {
                Ok(text) => text,
                Err(err) => {
                    why_not.push(format!(
                        "{data}: a version of {manifest} cannot be read ({err})"
                    ));
                    continue;
                }
            };
            let Some(set) = sets::parse_manifest(&text, data) else {
                why_not.push(format!(
                    "{data}: a version of {manifest} that lists no set (junk?)"
                ));
                continue;
            };
            match members_of(remote, &by_name, &text, &set, &mut digests)? {
                Ok(_) if passed < skip => passed += 1,
                Ok(members) => {
                    remote.unpin_all();
                    remote.pin(&manifest, &manifest_version.id, manifest_version.size);
                    for (name, version) in members {
                        remote.pin(&name, &version.id, version.size);
                    }
                    return Ok(data);
                }
                Err(missing) => why_not.push(format!("{data}: {missing}")),
            }
        }
    }
    Err(Error::copy(format!(
        "no set {} can be put together from the versions in {label}{}",
        match wanted {
            Wanted::Latest => "at all".to_string(),
            Wanted::At(stamp) => format!("of {stamp}"),
        },
        if why_not.is_empty() {
            String::new()
        } else {
            format!(": {}", why_not.join("; "))
        }
    )))
}

/// For each member the manifest lists, a version whose SHA-256 is the listed one (newest
/// first), or what is missing.
fn members_of(
    remote: &mut S3Remote,
    by_name: &BTreeMap<String, Vec<ObjectVersion>>,
    manifest: &str,
    set: &crate::restore_set::RestoreSet,
    digests: &mut HashMap<(String, String), String>,
) -> Result<std::result::Result<Vec<(String, ObjectVersion)>, String>> {
    let mut members = Vec::new();
    for name in set.files() {
        let Some((form, wanted)) = sets::manifest_entry(manifest, name) else {
            return Ok(Err(format!("the manifest gives no sha256 for {name}")));
        };
        let file = form.file_name();
        let mut found = None;
        for version in by_name
            .get(&file)
            .into_iter()
            .flatten()
            .filter(|v| !v.delete_marker)
        {
            let key = (file.clone(), version.id.clone());
            let digest = match digests.get(&key) {
                Some(digest) => digest.clone(),
                None => {
                    // One version that cannot be read (archived, another key's encryption)
                    // is not the one; the others are still looked at.
                    let digest = match sha256_of_version(remote, &file, version) {
                        Ok(digest) => digest,
                        Err(err) if err.transient => return Err(err),
                        Err(err) => {
                            log::warn!("{file}: a version cannot be read: {err}");
                            String::new()
                        }
                    };
                    digests.insert(key, digest.clone());
                    digest
                }
            };
            if digest == wanted {
                found = Some(version.clone());
                break;
            }
        }
        match found {
            Some(version) => members.push((file, version)),
            None => return Ok(Err(format!("no version of {file} has sha256 {wanted}"))),
        }
    }
    Ok(Ok(members))
}

fn read_version(
    remote: &mut S3Remote,
    name: &str,
    version: &ObjectVersion,
    max: u64,
) -> Result<String> {
    remote.unpin_all();
    remote.pin(name, &version.id, version.size);
    let bytes = remote.read_small(name, max);
    remote.unpin_all();
    Ok(String::from_utf8_lossy(&bytes?.unwrap_or_default()).into_owned())
}

fn sha256_of_version(remote: &mut S3Remote, name: &str, version: &ObjectVersion) -> Result<String> {
    remote.unpin_all();
    remote.pin(name, &version.id, version.size);
    let label = remote.describe();
    let hashed = (|| -> Result<String> {
        let mut reader = remote.open_read(name)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            crate::signals::check("looking through the bucket's versions")?;
            let n = reader
                .read(&mut buf)
                .map_err(|err| Error::transient(format!("reading {name} from {label}: {err}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(crate::transfer::hex(&hasher.finalize()))
    })();
    remote.unpin_all();
    hashed
}
