//! `cvp-backup-copy prune-dir DIR --keep N`: on the backup server, as the account that owns
//! DIR, the retention an append-only destination's node may not do itself (the plan is
//! `prune_dir::plan`, pure; this lists the folder and removes).

use super::say;
use crate::error::printable;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::names::RemoteFile;
use crate::names::{RemoteName, Stamp};
use crate::prune_dir::{self, Entry};
use crate::safe_fs::Dir;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub struct PruneDirOptions {
    pub dir: PathBuf,
    pub keep: u32,
    /// Nothing changed more recently than this is removed.
    pub min_age: Duration,
    pub dry_run: bool,
}

pub fn prune_dir(options: &PruneDirOptions) -> Result<ExitCode> {
    let shown = options.dir.display();
    let dir = Dir::open(&options.dir)
        .map_err(|err| Error::config(format!("cannot open the folder {shown}: {err}")))?;
    let unreadable = |err: std::io::Error| Error::copy(format!("cannot read {shown}: {err}"));
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut manifests = HashMap::new();
    let mut ours = 0usize;
    for name in dir.names().map_err(unreadable)? {
        // Only regular files: a symlink or folder someone put there is never ours.
        let Some(st) = dir.stat(&name).map_err(unreadable)? else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        // The later of mtime and ctime: a rename (a copy moved to another name) counts as a
        // change, and neither can be set back over SFTP when setstat is refused.
        let changed = st.st_mtime.max(st.st_ctime).max(0) as u64;
        let age = now
            .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(changed))
            .unwrap_or_default();
        let parsed = RemoteName::parse(&name);
        if parsed.is_some() {
            ours += 1;
            if ours > prune_dir::MAX_NAMES {
                break;
            }
        }
        if let Some(RemoteName::Manifest(data)) = parsed {
            match dir.read(&name, 64 * 1024) {
                Ok(Some(bytes)) => {
                    manifests.insert(data, String::from_utf8_lossy(&bytes).into_owned());
                }
                Ok(None) => {}
                // One unreadable file must not stop retention: the set counts as without
                // its manifest.
                Err(err) => log::warn!(
                    "prune-dir {shown}: cannot read {} ({err}): its set counts as without a \
                     manifest",
                    printable(&name)
                ),
            }
        }
        entries.push(Entry { name, age });
    }
    if ours > prune_dir::MAX_NAMES {
        return Err(Error::copy(format!(
            "{shown} holds more than {} files with CVP names: not a backup folder any more; \
             look at it before pruning",
            prune_dir::MAX_NAMES
        )));
    }
    let plan = prune_dir::plan(
        &entries,
        &manifests,
        (options.keep, options.min_age),
        Stamp::now(),
    );
    match plan.newest_good {
        Some(data) => say!("newest complete set: {data} (never removed)"),
        None => say!(
            "no complete set in {shown} (none has a manifest whose files are all there): \
             only the stamp rule decides"
        ),
    }
    let days = options.min_age.as_secs() as f64 / 86_400.0;
    if !plan.held.is_empty() {
        say!(
            "held: {} file(s) the rules would remove changed less than {days:.1} day(s) ago \
             (--min-age)",
            plan.held.len()
        );
    }
    let mut failed = 0;
    // The files first, then what served them (checked again just before it goes).
    let (files, others): (Vec<_>, Vec<_>) = plan
        .remove
        .iter()
        .partition(|(name, _)| matches!(RemoteName::parse(name), Some(RemoteName::Backup(_))));
    for (name, why) in files.into_iter().chain(others) {
        let shown_name = printable(name);
        if options.dry_run {
            say!("would remove {shown_name} ({why})");
            continue;
        }
        // A checksum file or manifest whose file was missing at the listing: not if the
        // file has arrived since (a night publishing it right now).
        if served_file_is_back(&dir, name) {
            say!("kept {shown_name}: its file has just arrived");
            continue;
        }
        match dir.remove(name) {
            Ok(()) => {
                say!("removed {shown_name} ({why})");
                log::info!("prune-dir {shown}: removed {shown_name} ({why})");
            }
            Err(err) => {
                failed += 1;
                log::error!("prune-dir {shown}: cannot remove {shown_name}: {err}");
            }
        }
    }
    let kept: Vec<String> = prune_dir::kept_sets(&plan)
        .iter()
        .map(|n| n.file_name())
        .collect();
    say!(
        "{} {} set(s): {}",
        if options.dry_run {
            "would keep"
        } else {
            "kept"
        },
        kept.len(),
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(", ")
        }
    );
    if failed > 0 {
        return Err(Error::copy(format!(
            "{failed} file(s) in {shown} could not be removed (see above): run prune-dir as \
             the account that owns the folder"
        )));
    }
    if !options.dry_run {
        let _ = dir.sync();
    }
    Ok(ExitCode::Success)
}

/// Whether the file a checksum file or manifest `name` is for is in the folder now.
fn served_file_is_back(dir: &Dir, name: &str) -> bool {
    let forms: Vec<String> = match RemoteName::parse(name) {
        Some(RemoteName::Sidecar(file)) => vec![file.file_name()],
        Some(RemoteName::Manifest(data)) => vec![
            RemoteFile::new(data, false).file_name(),
            RemoteFile::new(data, true).file_name(),
        ],
        _ => return false,
    };
    forms
        .iter()
        .any(|form| matches!(dir.stat(form), Ok(Some(_))))
}
