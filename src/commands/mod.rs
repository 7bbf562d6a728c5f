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
