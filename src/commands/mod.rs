//! The operator's commands around the nightly job: `check`, `list`, `fetch`, `status`, `verify`.

pub mod check;
pub mod fetch;
pub mod list;
pub mod prune_dir;
pub mod status;
pub mod verify;

use crate::names::{RemoteFile, RemoteName};
use crate::remote::RemoteEntry;
pub(crate) use crate::space::human as human_size;

/// A line on standard output that never stops the command: a fetch whose output goes to a
/// closed pipe (`fetch | head -1`) still finishes, verifies and cleans up.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;

/// The data files whose set has a manifest there, in a remote listing.
fn manifests(listing: &[RemoteEntry]) -> Vec<crate::names::BackupName> {
    listing
        .iter()
        .filter_map(|entry| match RemoteName::parse(&entry.name) {
            Some(RemoteName::Manifest(data)) => Some(data),
            _ => None,
        })
        .collect()
}

/// CVP files (plain or encrypted) and those that have a checksum file, in a remote listing.
fn split_listing(listing: &[RemoteEntry]) -> (Vec<(RemoteFile, u64)>, Vec<RemoteFile>) {
    let mut files = Vec::new();
    let mut sidecars = Vec::new();
    for entry in listing {
        match RemoteName::parse(&entry.name) {
            Some(RemoteName::Backup(name)) => files.push((name, entry.size)),
            Some(RemoteName::Sidecar(name)) => sidecars.push(name),
            Some(RemoteName::Manifest(_)) | Some(RemoteName::Partial(_)) | None => {}
        }
    }
    (files, sidecars)
}
