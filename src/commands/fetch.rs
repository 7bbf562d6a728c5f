//! `fetch`: the way back. Download a restore set from the backup server onto a (rebuilt)
//! node, verify every file against its sha256 sidecar, and give its final name only to a
//! file that verified.

use super::{connect, human_size, split_listing};
use crate::backup;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::inventory::{self, Wanted};
use crate::lock;
use crate::names::BackupName;
use crate::progress;
use crate::remote::Remote;
use crate::signals;
use crate::transfer;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct FetchOptions {
    pub ini: PathBuf,
    pub wanted: String,
    pub to: Option<PathBuf>,
}

/// libssh2 keeps read requests in flight for the whole buffer it is given.
const READ_BUFFER: usize = 2 * 1024 * 1024;

pub fn fetch(options: &FetchOptions) -> Result<()> {
    let wanted = Wanted::parse(&options.wanted).ok_or_else(|| {
        Error::new(
            ExitCode::Usage,
            format!(
                "`{}` is not a backup to fetch: give `latest`, a timestamp such as \
                 20240101020010, or a data file name such as cvp.20240101020010.tgz \
                 (`cvp-backup-copy list` shows them)",
                options.wanted
            ),
        )
    })?;
    let config = Config::load(&options.ini)?;
    let dir = options
        .to
        .clone()
        .unwrap_or_else(|| config.backup.backup_dir.clone());
    std::fs::create_dir_all(&dir)
        .map_err(|err| Error::copy(format!("cannot create {}: {err}", dir.display())))?;
    // The nightly job prunes this directory: never both at once.
    let _lock = lock::acquire(&config.backup.state_dir)?;
    let mut connected = connect(&config, true)?;
    let remote: &mut dyn Remote = &mut connected.remote;
    let label = remote.describe();
    let listing = remote
        .list()?
        .ok_or_else(|| Error::copy(format!("{label} does not exist: nothing to fetch")))?;
    let (files, _) = split_listing(&listing);
    let set = inventory::pick_remote(&files, wanted).ok_or_else(|| {
        let mut stamps: Vec<String> = files
            .iter()
            .filter(|(n, _)| n.kind == crate::names::Kind::Data)
            .map(|(n, _)| n.stamp.to_string())
            .collect();
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        Error::copy(format!(
            "no data backup {} on {label}; it has: {}",
            match wanted {
                Wanted::Latest => "at all".to_string(),
                Wanted::At(stamp) => format!("from {stamp}"),
            },
            if stamps.is_empty() {
                "none".to_string()
            } else {
                stamps.join(", ")
            }
        ))
    })?;
    let size_of = |name: &BackupName| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, size)| *size)
            .unwrap_or(0)
    };
    let total: u64 = set.files().iter().map(size_of).sum();
    if let Some(free) = backup::free_bytes(&dir) {
        if free < total {
            return Err(Error::copy(format!(
                "{} has {} free but the set needs {}: free space or fetch with --to DIR",
                dir.display(),
                human_size(free),
                human_size(total)
            )));
        }
    }
    println!(
        "fetching the set of {} from {label} into {} ({})",
        set.data.stamp,
        dir.display(),
        human_size(total)
    );
    for name in set.files() {
        let outcome = fetch_one(remote, name, size_of(&name), &dir)?;
        println!("  {name}: {outcome}");
    }
    let Some(images) = set.images else {
        return Err(Error::copy(format!(
            "the server has no EOS images file (cvp.eosimages.*.tgz) as old as {}: the data \
             file was fetched, but cvpi restores it only with its images file",
            set.data
        )));
    };
    println!(
        "every file matches its sha256. To restore CVP from this set, run on this node:\n  {}",
        restore_command(&config, &dir, set.data, images)
    );
    Ok(())
}

/// `cvpi restore cvp DATA IMAGES`, run as the backup user like the backup was.
fn restore_command(config: &Config, dir: &Path, data: BackupName, images: BackupName) -> String {
    let cvpi = config
        .backup
        .command
        .first()
        .filter(|word| Path::new(word).file_name().is_some_and(|n| n == "cvpi"))
        .cloned()
        .unwrap_or_else(|| "/cvpi/bin/cvpi".into());
    let inner = format!(
        "{cvpi} restore cvp {} {}",
        dir.join(data.file_name()).display(),
        dir.join(images.file_name()).display()
    );
    format!(
        "su - {} -c {}",
        config.backup.user,
        shlex::try_quote(&inner).unwrap_or_else(|_| inner.clone().into())
    )
}

fn fetch_one(remote: &mut dyn Remote, name: BackupName, size: u64, dir: &Path) -> Result<String> {
    let label = remote.describe();
    let file_name = name.file_name();
    let expected = transfer::read_sidecar(remote, name)?.ok_or_else(|| {
        Error::copy(format!(
            "{file_name} on {label} has no usable {}: it cannot be verified, so it is not \
                 fetched",
            name.sidecar_name()
        ))
    })?;
    let target = dir.join(&file_name);
    if target.is_file() && transfer::sha256_file(&target)? == expected {
        return Ok(format!("already here, sha256 matches ({expected})"));
    }
    let partial = dir.join(name.partial_name());
    let outcome = download(remote, name, size, &partial, &expected);
    if outcome.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    outcome?;
    std::fs::rename(&partial, &target)
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|err| Error::copy(format!("cannot rename {}: {err}", partial.display())))?;
    Ok(format!(
        "fetched, {} bytes, sha256 matches ({expected})",
        size
    ))
}

/// Download into `partial`, hashing as it arrives; an error unless every byte is there and
/// the sha256 is the sidecar's.
fn download(
    remote: &mut dyn Remote,
    name: BackupName,
    size: u64,
    partial: &Path,
    expected: &str,
) -> Result<()> {
    let label = remote.describe();
    let local_error =
        |err: std::io::Error| Error::copy(format!("cannot write {}: {err}", partial.display()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(partial)
        .map_err(local_error)?;
    give_to_folder_owner(&out, partial);
    let bar = progress::bar(size, &name.file_name());
    let mut reader = remote.open_read(&name.file_name())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut bytes = 0u64;
    loop {
        signals::check(&format!("the fetch of {name}"))?;
        let n = reader.read(&mut buf).map_err(|err| {
            Error::copy(format!(
                "reading {name} from {label} failed after {bytes} bytes: {err}"
            ))
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(local_error)?;
        bytes += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all().map_err(local_error)?;
    let digest = transfer::hex(&hasher.finalize());
    if digest != expected {
        return Err(Error::copy(format!(
            "{name} on {label} is corrupted: its sha256 is {digest} ({bytes} bytes) but {} says \
             {expected}; not fetched. Fetch an older set (`cvp-backup-copy list`) and check the \
             backup server's disk",
            name.sidecar_name()
        )));
    }
    Ok(())
}

/// Run as root on a rebuilt node, the files still belong to whoever owns the folder (cvp),
/// since `cvpi restore` runs as that user.
fn give_to_folder_owner(file: &std::fs::File, path: &Path) {
    if crate::users::current_uid() != 0 {
        return;
    }
    let owner = path
        .parent()
        .and_then(|dir| std::fs::metadata(dir).ok())
        .map(|meta| (meta.uid(), meta.gid()));
    if let Some((uid, gid)) = owner {
        if let Err(err) = std::os::unix::fs::fchown(file, Some(uid), Some(gid)) {
            log::warn!("cannot give {} to uid {uid}: {err}", path.display());
        }
    }
}
