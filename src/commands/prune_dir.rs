//! `cvp-backup-copy prune-dir DIR --keep N`: on the backup server, as the account that owns
//! DIR, the retention an append-only destination's node may not do itself (the plan is
//! `prune_dir::plan`, pure; this lists the folder and removes).

use super::say;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::names::{RemoteName, Stamp};
use crate::prune_dir::{self, Entry};
use crate::safe_fs::Dir;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub struct PruneDirOptions {
    pub dir: PathBuf,
    pub keep: u32,
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
    for name in dir.names().map_err(unreadable)? {
        // Only regular files: a symlink or folder someone put there is never ours.
        let Some(st) = dir.stat(&name).map_err(unreadable)? else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
        let age = now.duration_since(written).unwrap_or_default();
        if let Some(RemoteName::Manifest(data)) = RemoteName::parse(&name) {
            if let Some(bytes) = dir.read(&name, 64 * 1024).map_err(unreadable)? {
                manifests.insert(data, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        entries.push(Entry { name, age });
    }
    let plan = prune_dir::plan(&entries, &manifests, options.keep, Stamp::now());
    match plan.newest_good {
        Some(data) => say!("newest complete set: {data} (never removed)"),
        None => say!(
            "no complete set in {shown} (none has a manifest whose files are all there): \
             only the stamp rule decides"
        ),
    }
    let mut failed = 0;
    for (name, why) in &plan.remove {
        if options.dry_run {
            say!("would remove {name} ({why})");
            continue;
        }
        match dir.remove(name) {
            Ok(()) => {
                say!("removed {name} ({why})");
                log::info!("prune-dir {shown}: removed {name} ({why})");
            }
            Err(err) => {
                failed += 1;
                log::error!("prune-dir {shown}: cannot remove {name}: {err}");
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
