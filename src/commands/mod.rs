//! The operator's commands around the nightly job: `check`, `list`, `fetch`, `status`.

pub mod check;
pub mod fetch;
pub mod list;
pub mod status;

use crate::config::Config;
use crate::error::Result;
use crate::names::{RemoteFile, RemoteName};
use crate::remote::sftp::{self, ConnectOptions, Connected};
use crate::remote::RemoteEntry;
use crate::run;

/// Connect with the INI's credentials. `record_host_key`: whether a new host's key may be
/// written under accept-new (`fetch` on a rebuilt node must; `list` only reads).
fn connect(config: &Config, record_host_key: bool) -> Result<Connected> {
    let password = run::credentials(config)?;
    let connected = sftp::connect(ConnectOptions {
        server: &config.server,
        password: password.as_ref(),
        record_host_key,
    })?;
    if let crate::remote::known_hosts::Verified::Recorded { fingerprint } = &connected.host_key {
        if record_host_key {
            log::warn!(
                "new host: recorded its key {fingerprint} in {} (host_key_policy = accept-new)",
                config.server.known_hosts.display()
            );
        }
    }
    Ok(connected)
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

/// A size for people: 1.2 GB, 830 MB, 12 kB.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_df() {
        let table = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1_234_567, "1.2 MB"),
            (5_000_000_000, "5.0 GB"),
        ];
        for (bytes, text) in table {
            assert_eq!(human_size(bytes), text);
        }
    }
}
