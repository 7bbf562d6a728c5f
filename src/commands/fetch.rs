//! `fetch`: the way back. Download a restore set from the backup server onto a (rebuilt)
//! node, verify every file against its sha256 sidecar, and give its final name only to a
//! file that verified.

use super::{connect, human_size, split_listing};
use crate::backup;
use crate::config::{Config, Streams};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::inventory::{self, Wanted};
use crate::lock;
use crate::names::{BackupName, Stamp};
use crate::progress;
use crate::remote::sftp::{self, ConnectOptions, SftpRemote};
use crate::remote::Remote;
use crate::run;
use crate::safe_fs::Dir;
use crate::sets;
use crate::transfer;
use std::path::{Path, PathBuf};

pub struct FetchOptions {
    pub ini: PathBuf,
    pub wanted: String,
    pub to: Option<PathBuf>,
}

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
    let wanted_dir = options
        .to
        .clone()
        .unwrap_or_else(|| config.backup.backup_dir.clone());
    let dir = Dir::open_or_create(&wanted_dir, 0o750).map_err(|err| {
        Error::copy(format!(
            "cannot create or open {}: {err}",
            wanted_dir.display()
        ))
    })?;
    // The nightly job prunes this directory: never both at once.
    let _lock = lock::acquire(&config.backup.state_dir)?;
    let mut connected = connect(&config, true)?;
    let remote: &mut dyn Remote = &mut connected.remote;
    let label = remote.describe();
    let listing = remote
        .list()?
        .ok_or_else(|| Error::copy(format!("{label} does not exist: nothing to fetch")))?;
    let (files, _) = split_listing(&listing);
    let by_rule = inventory::pick_remote(&files, wanted, Stamp::now()).ok_or_else(|| {
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
    // The manifest says exactly what the run uploaded as this set; older sets have none.
    let manifest_name = by_rule.data.manifest_name();
    let manifest = remote
        .read_small(&manifest_name, 64 * 1024)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let set = match &manifest {
        None => by_rule,
        Some(text) => sets::parse_manifest(text, by_rule.data).ok_or_else(|| {
            Error::copy(format!(
                "{manifest_name} on {label} is damaged: it does not list this set's files; \
                 check the backup server, or fetch another set (`cvp-backup-copy list`)"
            ))
        })?,
    };
    let size_of = |name: &BackupName| files.iter().find(|(n, _)| n == name).map(|(_, size)| *size);
    if let Some(missing) = set.files().into_iter().find(|n| size_of(n).is_none()) {
        return Err(Error::copy(format!(
            "{missing}, which {} lists, is not on {label}: this set cannot be restored from \
             there; fetch another set (`cvp-backup-copy list`)",
            if manifest.is_some() {
                manifest_name.as_str()
            } else {
                "the set"
            }
        )));
    }
    let total: u64 = set.files().iter().filter_map(size_of).sum();
    if let Some(free) = backup::free_bytes(dir.path()) {
        if free < total {
            return Err(Error::copy(format!(
                "{} has {} free but the set needs {}: free space or fetch with --to DIR",
                dir.path().display(),
                human_size(free),
                human_size(total)
            )));
        }
    }
    println!(
        "fetching the set of {} from {label} into {} ({}{})",
        set.data.stamp,
        dir.path().display(),
        human_size(total),
        if manifest.is_some() {
            format!(", as {manifest_name} lists it")
        } else {
            String::new()
        }
    );
    let mut extras = extra_streams(
        &config,
        &mut connected.remote,
        set.files().iter().filter_map(size_of).max(),
    );
    let mut remotes: Vec<&mut (dyn Remote + Send)> = vec![&mut connected.remote];
    remotes.extend(extras.iter_mut().map(|r| r as &mut (dyn Remote + Send)));
    for name in set.files() {
        let expected = expected_digest(&mut *remotes[0], name, manifest.as_deref())?;
        let outcome = fetch_one(
            &mut remotes,
            name,
            size_of(&name).unwrap_or(0),
            &dir,
            &expected,
        )?;
        println!("  {name}: {outcome}");
    }
    drop(remotes);
    warn_unless_readable(&config, &dir, &set.files());
    let Some(images) = set.images else {
        return Err(Error::copy(format!(
            "the server has no EOS images file (cvp.eosimages.*.tgz) as old as {}: the data \
             file was fetched, but cvpi restores it only with its images file",
            set.data
        )));
    };
    println!(
        "every file matches its sha256. To restore CVP from this set, run on this node:\n  {}",
        restore_command(&config, dir.path(), set.data, images)
    );
    Ok(())
}

/// The connections beyond the first that a large file is fetched over (`streams`; for
/// `auto`, from the round trip measured on the first): none for a set of small files, and
/// fewer when the server refuses some.
fn extra_streams(
    config: &Config,
    remote: &mut SftpRemote,
    largest: Option<u64>,
) -> Vec<SftpRemote> {
    if largest.unwrap_or(0) < transfer::PARALLEL_THRESHOLD {
        return Vec::new();
    }
    let (streams, why) = match config.server.streams {
        Streams::Auto => transfer::auto_fetch_streams(remote.measure_round_trip()),
        Streams::Fixed(n) => (n, format!("streams = {n}")),
    };
    if streams < 2 {
        println!("large files come over 1 stream ({why})");
        return Vec::new();
    }
    let password = run::credentials(config).ok().flatten();
    let options = ConnectOptions {
        server: &config.server,
        password: password.as_ref(),
        record_host_key: false,
    };
    let mut extras = Vec::new();
    let mut refused = None;
    for outcome in sftp::connect_several(options, streams - 1) {
        match outcome {
            Ok(remote) => extras.push(remote),
            Err(err) => {
                refused.get_or_insert(err.message);
            }
        }
    }
    println!("large files come over {} streams ({why})", extras.len() + 1);
    if let Some(refused) = refused {
        log::warn!(
            "the server accepted {} of {} extra connections ({refused}): fetching over fewer streams",
            extras.len(),
            streams - 1
        );
    }
    extras
}

/// The sha256 a member must have: the manifest's, when there is one (and then the sidecar,
/// when present, must agree), else the sidecar's.
fn expected_digest(
    remote: &mut dyn Remote,
    name: BackupName,
    manifest: Option<&str>,
) -> Result<String> {
    let label = remote.describe();
    let sidecar = transfer::read_sidecar(remote, name)?;
    let listed = manifest.map(|text| sets::manifest_digest(text, name));
    match (listed, sidecar) {
        (Some(Some(listed)), Some(sidecar)) if listed != sidecar => Err(Error::copy(format!(
            "{name} on {label}: {} and {} disagree about its sha256; not fetched",
            "the set's manifest",
            name.sidecar_name()
        ))),
        (Some(Some(listed)), _) => Ok(listed),
        (Some(None), _) => Err(Error::copy(format!(
            "{name} on {label}: the set's manifest gives no sha256 for it; not fetched"
        ))),
        (None, Some(sidecar)) => Ok(sidecar),
        (None, None) => Err(Error::copy(format!(
            "{name} on {label} has no usable {}: it cannot be verified, so it is not fetched",
            name.sidecar_name()
        ))),
    }
}

/// `cvpi restore cvp DATA IMAGES` with absolute paths, run as the backup user like the
/// backup was. Root pastes it: every word from the INI is quoted, and cvpi is CVP's own,
/// never a path from the INI.
fn restore_command(config: &Config, dir: &Path, data: BackupName, images: BackupName) -> String {
    use crate::error::shell_word;
    let inner = format!(
        "/cvpi/bin/cvpi restore cvp {} {}",
        shell_word(dir.join(data.file_name())),
        shell_word(dir.join(images.file_name()))
    );
    format!(
        "su - {} -c {}",
        shell_word(&config.backup.user),
        shell_word(&inner)
    )
}

/// `cvpi restore` runs as the backup user: say so when it could not read what was fetched.
fn warn_unless_readable(config: &Config, dir: &Dir, names: &[BackupName]) {
    let Some(user) = crate::users::by_name(&config.backup.user) else {
        return;
    };
    for name in names {
        let path = dir.join(&name.file_name());
        let readable = std::fs::metadata(&path)
            .is_ok_and(|meta| crate::users::permits(&meta, &user, crate::users::READ));
        if !readable {
            log::warn!(
                "{} is not readable by {} (backup_user), who runs `cvpi restore`: fix its owner \
                 or mode (`chown {} {}`)",
                path.display(),
                user.name,
                crate::error::shell_word(&user.name),
                crate::error::shell_word(&path)
            );
        }
    }
}

fn fetch_one(
    remotes: &mut [&mut (dyn Remote + Send)],
    name: BackupName,
    size: u64,
    dir: &Dir,
    expected: &str,
) -> Result<String> {
    let file_name = name.file_name();
    let read_error = |err: std::io::Error| {
        Error::copy(format!(
            "cannot read {}: {err}",
            dir.join(&file_name).display()
        ))
    };
    match dir.open_existing(&file_name, false) {
        Ok(Some(existing)) => {
            if transfer::sha256_open(&existing, &dir.join(&file_name))? == expected {
                return Ok(format!("already here, sha256 matches ({expected})"));
            }
        }
        Ok(None) => {}
        // A symlink or a special file under the name: never read, replaced by the download.
        Err(err) => log::warn!("{}; it is replaced", read_error(err)),
    }
    let partial = name.partial_name();
    let outcome = download(remotes, name, size, dir, &partial, expected);
    if outcome.is_err() {
        let _ = dir.remove(&partial);
    }
    outcome?;
    dir.rename(&partial, &file_name)
        .and_then(|()| dir.sync())
        .map_err(|err| {
            Error::copy(format!(
                "cannot rename {}: {err}",
                dir.join(&partial).display()
            ))
        })?;
    Ok(format!(
        "fetched, {} bytes, sha256 matches ({expected})",
        size
    ))
}

/// Download into a fresh `partial` (whatever had that name is removed first, never
/// followed), over several streams when it is large, hashing in order as it arrives; an
/// error unless every byte is there and the sha256 is the expected one.
fn download(
    remotes: &mut [&mut (dyn Remote + Send)],
    name: BackupName,
    size: u64,
    dir: &Dir,
    partial: &str,
    expected: &str,
) -> Result<()> {
    let label = remotes[0].describe();
    let partial_path = dir.join(partial);
    let local_error = |err: std::io::Error| {
        Error::copy(format!("cannot write {}: {err}", partial_path.display()))
    };
    dir.remove(partial).map_err(local_error)?;
    let out = dir.create_new(partial, 0o640).map_err(local_error)?;
    let read_back = dir
        .open_existing(partial, false)
        .map_err(local_error)?
        .ok_or_else(|| local_error(std::io::ErrorKind::NotFound.into()))?;
    let streams = if size >= transfer::PARALLEL_THRESHOLD {
        remotes.len()
    } else {
        1
    };
    let bar = progress::bar(size, &name.file_name());
    let digest = transfer::download_parallel(
        &mut remotes[..streams],
        &name.file_name(),
        size,
        &out,
        &read_back,
        &partial_path,
        &bar,
    );
    bar.finish_and_clear();
    let digest = digest?;
    out.sync_all().map_err(local_error)?;
    if digest != expected {
        return Err(Error::copy(format!(
            "{name} on {label} is corrupted: its sha256 is {digest} ({size} bytes) but {} says \
             {expected}; not fetched. Fetch an older set (`cvp-backup-copy list`) and check the \
             backup server's disk",
            name.sidecar_name()
        )));
    }
    Ok(())
}
