//! `list`: the backup sets, newest first, and where each file of a set is.

use super::{human_size, split_listing};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::inventory::{self, BackupSet, Entry};
use crate::names::BackupName;
use crate::remote::Remote;
use crate::run::{self, LocalFile};
use crate::transfer;
use serde::Serialize;
use std::path::PathBuf;

pub struct ListOptions {
    pub ini: PathBuf,
    pub json: bool,
    /// `--destination NAME`; None: `main`.
    pub destination: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Location {
    Local,
    Remote,
    Both,
}

/// What the remote `NAME.sha256` says about the remote file.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SidecarState {
    /// It names the local file's sha256 (and the sizes agree).
    Matches,
    /// The remote file differs from the local one (size or sha256): the next run copies it.
    Differs,
    /// Remote only: the sidecar is there and well formed; `fetch` verifies the data.
    NotCompared,
    /// Encrypted on the remote (`NAME.age`) with its checksum file: the ciphertext cannot be
    /// compared with the local file; `fetch --identity` verifies and decrypts it.
    Encrypted,
    /// On the remote without a usable `NAME.sha256`.
    Missing,
    /// Not on the remote at all.
    NotOnRemote,
}

#[derive(Debug, Serialize)]
struct FileRow {
    role: &'static str,
    name: String,
    size: u64,
    location: Location,
    sidecar: SidecarState,
}

#[derive(Debug, Serialize)]
struct SetRow {
    timestamp: String,
    data_size: u64,
    /// An images file as old as the data exists somewhere: cvpi restores only with one.
    restorable: bool,
    /// Archives of a backup that failed: set aside on the node, never copied.
    failed: bool,
    /// In a bucket, behind a delete marker: its versions are there, `fetch` restores it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hidden: bool,
    files: Vec<FileRow>,
}

pub fn list(options: &ListOptions) -> Result<()> {
    let config = Config::load(&options.ini)?;
    let local = run::list_local(&config)?;
    let server = config.destination(
        options
            .destination
            .as_deref()
            .unwrap_or(crate::config::MAIN),
    )?;
    let mut connected = crate::destination::connect(server, &config.path, false)?;
    let remote: &mut dyn Remote = &mut *connected;
    let listing = remote.list()?.unwrap_or_default();
    let (remote_files, sidecars) = split_listing(&listing);
    let local_sizes: Vec<_> = local.iter().map(|f| (f.name, f.size)).collect();
    let known = crate::state::peek_history(&config.backup.state_dir).known();
    let sets = inventory::sets(&local_sizes, &remote_files, &sidecars, &known);
    let mut rows = sets
        .iter()
        .map(|set| set_row(set, &local, remote))
        .collect::<Result<Vec<_>>>()?;
    rows.extend(failed_rows(&config));
    let hidden = hidden_sets(server, &config)?;
    rows.extend(hidden.iter().map(|data| SetRow {
        timestamp: data.stamp.to_string(),
        data_size: 0,
        restorable: true,
        failed: false,
        hidden: true,
        files: Vec::new(),
    }));
    if options.json {
        let json = serde_json::to_string_pretty(&rows)
            .map_err(|err| Error::copy(format!("cannot write JSON: {err}")))?;
        println!("{json}");
    } else {
        let shown: Vec<SetRow> = rows.into_iter().filter(|row| !row.hidden).collect();
        print!("{}", render(&shown, &remote.describe()));
        for data in &hidden {
            println!(
                "hidden or written over: {data} (in the bucket after the node wrote it: a delete \
                 marker or another version; its earlier versions are there, and `cvp-backup-copy \
                 fetch {} --destination {}` restores the set from them)",
                data.stamp, server.name
            );
        }
        let others: Vec<&str> = config
            .destinations()
            .filter(|d| d.name != server.name)
            .map(|d| d.name.as_str())
            .collect();
        if !others.is_empty() {
            println!(
                "destination {} shown; also configured: {} (list --destination NAME)",
                server.name,
                others.join(", ")
            );
        }
    }
    Ok(())
}

/// The data backups a bucket hides behind delete markers (none on SFTP).
fn hidden_sets(server: &crate::config::ServerConfig, config: &Config) -> Result<Vec<BackupName>> {
    if server.s3().is_none() {
        return Ok(Vec::new());
    }
    let Some(secret) = crate::destination::credentials(server, &config.path)? else {
        return Ok(Vec::new());
    };
    let remote = crate::remote::s3::S3Remote::new(server, &secret)?;
    // A key without the right to list versions still lists the current objects.
    match crate::recover::versions_by_name(&remote) {
        Ok(versions) => Ok(crate::recover::hidden_data(&versions)),
        Err(err) => {
            log::warn!("cannot look at the bucket's earlier versions: {err}");
            Ok(Vec::new())
        }
    }
}

fn set_row(set: &BackupSet, local: &[LocalFile], remote: &mut dyn Remote) -> Result<SetRow> {
    let roles = [
        ("data", Some(&set.data)),
        ("images", set.images.as_ref()),
        ("log", set.log.as_ref()),
    ];
    let mut files = Vec::new();
    for (role, entry) in roles {
        let Some(entry) = entry else { continue };
        files.push(FileRow {
            role,
            name: entry
                .remote_file()
                .filter(|_| entry.local_size.is_none())
                .map_or_else(|| entry.name.file_name(), |file| file.file_name()),
            size: entry.local_size.or(entry.remote_size).unwrap_or(0),
            location: match (entry.local_size, entry.remote_size) {
                (Some(_), Some(_)) => Location::Both,
                (Some(_), None) => Location::Local,
                _ => Location::Remote,
            },
            sidecar: sidecar_state(entry, local, remote)?,
        });
    }
    Ok(SetRow {
        timestamp: set.data.name.stamp.to_string(),
        data_size: set.data.local_size.or(set.data.remote_size).unwrap_or(0),
        restorable: set.images.is_some(),
        failed: false,
        hidden: false,
        files,
    })
}

/// A failed backup's archives (set aside as `NAME.failed`, or remembered in state_dir when
/// they could not be renamed), one row per backup.
fn failed_rows(config: &Config) -> Vec<SetRow> {
    let mut failed: Vec<(BackupName, String, u64)> = run::list_failed(config)
        .into_iter()
        .map(|(name, _, size)| (name, name.failed_name(), size))
        .collect();
    let remembered = crate::state::peek_history(&config.backup.state_dir).failed();
    for name in remembered {
        let size = std::fs::metadata(config.backup.backup_dir.join(name.file_name()))
            .map(|m| m.len())
            .unwrap_or(0);
        failed.push((name, name.file_name(), size));
    }
    failed.sort_by_key(|(name, _, _)| std::cmp::Reverse((name.stamp, name.kind)));
    let mut rows: Vec<SetRow> = Vec::new();
    for (name, file_name, size) in failed {
        let stamp = name.stamp.to_string();
        let row = match rows.iter_mut().find(|r| r.timestamp == stamp) {
            Some(row) => row,
            None => {
                rows.push(SetRow {
                    timestamp: stamp,
                    data_size: 0,
                    restorable: false,
                    failed: true,
                    hidden: false,
                    files: Vec::new(),
                });
                rows.last_mut().expect("just pushed")
            }
        };
        if name.kind == crate::names::Kind::Data {
            row.data_size = size;
        }
        row.files.push(FileRow {
            role: if name.kind == crate::names::Kind::Data {
                "data"
            } else {
                "images"
            },
            name: file_name,
            size,
            location: Location::Local,
            sidecar: SidecarState::NotOnRemote,
        });
    }
    rows
}

/// Reads the sidecar, and hashes the local copy when both sides have the file.
fn sidecar_state(
    entry: &Entry,
    local: &[LocalFile],
    remote: &mut dyn Remote,
) -> Result<SidecarState> {
    let (Some(remote_size), Some(file)) = (entry.remote_size, entry.remote_file()) else {
        return Ok(SidecarState::NotOnRemote);
    };
    let digest = if entry.remote_sidecar {
        transfer::read_sidecar(remote, file)?
    } else {
        None
    };
    let Some(digest) = digest else {
        return Ok(SidecarState::Missing);
    };
    if file.sealed {
        return Ok(SidecarState::Encrypted);
    }
    let Some(local_file) = local.iter().find(|f| f.name == entry.name) else {
        return Ok(SidecarState::NotCompared);
    };
    if local_file.size != remote_size {
        return Ok(SidecarState::Differs);
    }
    Ok(if transfer::sha256_file(&local_file.path)? == digest {
        SidecarState::Matches
    } else {
        SidecarState::Differs
    })
}

fn render(rows: &[SetRow], destination: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "backup sets, newest first (remote: {destination})");
    if rows.is_empty() {
        let _ = writeln!(out, "  none: no data backup on this node or on the server");
    }
    let stamp = |digits: &str| {
        chrono::NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S")
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    for row in rows {
        if row.failed {
            let _ = writeln!(
                out,
                "{}  {}  FAILED backup: set aside on this node, never copied or restored from",
                row.timestamp,
                stamp(&row.timestamp)
            );
        } else {
            let _ = writeln!(
                out,
                "{}  {}  data {}",
                row.timestamp,
                stamp(&row.timestamp),
                human_size(row.data_size)
            );
        }
        for file in &row.files {
            let sidecar = match file.sidecar {
                SidecarState::Matches => "sha256 matches",
                SidecarState::Differs => "DIFFERS from local: the next run copies it again",
                SidecarState::NotCompared => "sha256 file present (remote only; fetch verifies)",
                SidecarState::Encrypted => {
                    "encrypted (.age), sha256 file present; fetch --identity verifies"
                }
                SidecarState::Missing => "NO sha256 file: not verified",
                SidecarState::NotOnRemote => "-",
            };
            let location = match file.location {
                Location::Both => "local+remote",
                Location::Local => "local only",
                Location::Remote => "remote only",
            };
            let _ = writeln!(
                out,
                "  {:<6} {:<34} {:>9}  {:<12}  {}",
                file.role,
                file.name,
                human_size(file.size),
                location,
                sidecar
            );
        }
        if !row.restorable && !row.failed {
            let _ = writeln!(
                out,
                "  images none: no EOS images file as old as this set here or on the server; \
                 cvpi cannot restore it"
            );
        }
    }
    out
}
