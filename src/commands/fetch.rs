//! `fetch`: the way back. Download a restore set from the backup server onto a (rebuilt)
//! node, verify every file against its sha256 sidecar, and give its final name only to a
//! file that verified.

use super::{human_size, say, split_listing};
use crate::config::{Config, ServerConfig, Streams};
use crate::destination;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::inventory::{self, Wanted};
use crate::lock;
use crate::names::{BackupName, RemoteFile, Stamp};
use crate::progress;
use crate::remote::Remote;
use crate::safe_fs::{self, Dir};
use crate::seal::open::{Identities, Opener};
use crate::sets;
use crate::staged::lock;
use crate::transfer;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub struct FetchOptions {
    pub ini: PathBuf,
    pub wanted: String,
    pub to: Option<PathBuf>,
    /// `--identity`, read before acting as the INI's owner.
    pub identities: Option<Identities>,
    /// `--allow-plain`: unencrypted members are expected (a set from before encrypt_to).
    pub allow_plain: bool,
    /// `--destination NAME`; None: the first destination that holds a verified copy.
    pub destination: Option<String>,
}

pub(crate) type Connection = Box<dyn Remote + Send>;

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
    let (dir, created) = Dir::open_or_create_noting(&wanted_dir, 0o750).map_err(|err| {
        Error::copy(format!(
            "cannot create or open {}: {err}",
            wanted_dir.display()
        ))
    })?;
    let fetched = fetch_into(&config, &dir, options, wanted);
    if fetched.is_err() && !created.is_empty() {
        remove_created(&dir, &created);
    }
    fetched
}

/// A fetch that failed leaves no folder it made: what it put there (CVP names, plain or
/// encrypted, and their checksum files) goes, through the folder's own handle, then the
/// folders it made, innermost first, while each is still the one it made and empty.
fn remove_created(dir: &Dir, created: &safe_fs::Created) {
    for name in dir.names().unwrap_or_default() {
        if crate::names::RemoteName::parse(&name).is_some() {
            let _ = dir.remove(&name);
        }
    }
    if let Some(top) = created.remove_empty() {
        eprintln!(
            "cvp-backup-copy: removed {}, which this fetch had created",
            top.display()
        );
    }
}

fn fetch_into(config: &Config, dir: &Dir, options: &FetchOptions, wanted: Wanted) -> Result<()> {
    // The nightly job prunes this directory: never both at once.
    let _lock = lock::acquire(&config.backup.state_dir, lock::Holder::Fetch)?;
    let servers: Vec<&ServerConfig> = match &options.destination {
        Some(name) => vec![config.destination(name)?],
        None => config.destinations().collect(),
    };
    let mut first_error: Option<Error> = None;
    for (index, server) in servers.iter().enumerate() {
        if servers.len() > 1 {
            say!("trying {}", server.describe());
        }
        match fetch_from(config, server, dir, options, wanted) {
            Ok(()) => return Ok(()),
            Err(err) if index + 1 < servers.len() && crate::signals::received().is_none() => {
                log::warn!("{}: {err}; trying the next destination", server.describe());
                first_error.get_or_insert(err);
            }
            Err(err) => return Err(first_error.unwrap_or(err)),
        }
    }
    Err(first_error.unwrap_or_else(|| Error::config("no destination to fetch from")))
}

/// From one destination; from a bucket whose current objects do not give a whole, verified
/// set (hidden behind delete markers, junk written over them), from its earlier versions.
fn fetch_from(
    config: &Config,
    server: &ServerConfig,
    dir: &Dir,
    options: &FetchOptions,
    wanted: Wanted,
) -> Result<()> {
    // The set asked for was hidden or written over after the node wrote it (or, for
    // `latest`, a hidden set is newer than any the current view shows): the current objects
    // may be an intruder's, consistent with themselves; the node's versions decide.
    if let Some((touched, current)) = touched_sets(config, server) {
        let now = Stamp::now();
        let newest = |names: &[BackupName]| sets::data_by_recency(names, now).first().copied();
        let asked_touched = match wanted {
            Wanted::At(stamp) => touched.iter().any(|n| n.stamp == stamp),
            Wanted::Latest => match (newest(&touched), newest(&current)) {
                (Some(touched), Some(current)) => {
                    sets::recency(&touched, now) <= sets::recency(&current, now)
                }
                (Some(_), None) => true,
                _ => false,
            },
        };
        if asked_touched {
            let names: Vec<String> = touched.iter().map(|n| n.file_name()).collect();
            say!(
                "{} holds sets hidden or written over after the node wrote them ({}): fetching \
                 from the versions the node wrote",
                server.describe(),
                names.join(", ")
            );
            return fetch_from_versions(config, server, dir, options, wanted);
        }
    }
    let fetched = fetch_current(config, server, dir, options, wanted);
    match fetched {
        Err(err)
            if err.code == ExitCode::Copy
                && server.s3().is_some()
                && crate::signals::received().is_none() =>
        {
            say!("{err}");
            say!("looking for the set among the bucket's earlier versions");
            fetch_from_versions(config, server, dir, options, wanted)
                .map_err(|why| Error::copy(format!("{}; and {}", err.message, why.message)))
        }
        other => other,
    }
}

/// An S3 destination's sets hidden or written over (None: not S3, or its versions cannot be
/// listed with this key).
fn touched_sets(
    config: &Config,
    server: &ServerConfig,
) -> Option<(Vec<BackupName>, Vec<BackupName>)> {
    server.s3()?;
    let secret = destination::credentials(server, &config.path).ok()??;
    let remote = crate::remote::s3::S3Remote::new(server, &secret).ok()?;
    let versions = crate::recover::versions_by_name(&remote).ok()?;
    Some((
        crate::recover::hidden_data(&versions),
        crate::recover::current_data(&versions),
    ))
}

fn fetch_from_versions(
    config: &Config,
    server: &ServerConfig,
    dir: &Dir,
    options: &FetchOptions,
    wanted: Wanted,
) -> Result<()> {
    let secret = destination::credentials(server, &config.path)?.ok_or_else(|| {
        Error::config(format!(
            "{}: no secret key to read it with",
            server.describe()
        ))
    })?;
    let identities = options.identities.as_ref();
    let expect_sealed =
        !options.allow_plain && (identities.is_some() || server.encrypt_to.is_some());
    let mut first_error: Option<Error> = None;
    // A candidate whose fetch fails (an older encryption the identity cannot open, a
    // version that went meanwhile) gives way to the next one.
    for skip in 0..VERSION_CANDIDATES {
        let mut remote = crate::remote::s3::S3Remote::new(server, &secret)?;
        let data = match crate::recover::pin_set(&mut remote, wanted, skip) {
            Ok(data) => data,
            Err(err) => return Err(first_error.unwrap_or(err)),
        };
        say!(
            "{data}: a version of its manifest and of each member with the sha256 the \
             manifest lists are in the bucket; fetching those"
        );
        let asked = Asked {
            wanted: Wanted::At(data.stamp),
            identities,
            expect_sealed,
        };
        let mut first: Connection = Box::new(remote);
        match fetch_set(config, dir, &mut first, asked, &mut |_| Vec::new()) {
            Ok(()) => return Ok(()),
            Err(err) if crate::signals::received().is_none() && err.code != ExitCode::Usage => {
                say!("{err}; trying the next candidate among the versions");
                first_error.get_or_insert(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(first_error.unwrap_or_else(|| Error::copy("no candidate among the versions")))
}

/// How many sets put together from versions a fetch tries before it gives up.
const VERSION_CANDIDATES: usize = 4;

fn fetch_current(
    config: &Config,
    server: &ServerConfig,
    dir: &Dir,
    options: &FetchOptions,
    wanted: Wanted,
) -> Result<()> {
    std::thread::scope(|scope| {
        // The extra connections (if any) start as soon as the first has logged in, and are
        // made while it starts SFTP and looks for the set: their handshakes cost no time of
        // their own. Planned on how long logging in took, at most a few ms more than a round
        // trip: never fewer streams than the link needs (it is not measured again).
        let started = Mutex::new(None);
        let start = |login: Duration| {
            let (streams, why) = planned_streams(server, login);
            let pending = (streams > 1)
                .then(|| scope.spawn(move || connect_extras(config, server, streams - 1)));
            if let Ok(mut started) = started.lock() {
                *started = Some((why, pending));
            }
        };
        let mut first = destination::connect_telling(server, &config.path, true, Some(&start))?;
        // An S3 connection tells no round trip: measured now.
        let (why, pending) = match started.into_inner().ok().flatten() {
            Some(started) => started,
            None => {
                let (streams, why) = planned_streams(server, first.round_trip());
                let pending = (streams > 1)
                    .then(|| scope.spawn(move || connect_extras(config, server, streams - 1)));
                (why, pending)
            }
        };
        let mut pending = Some(pending);
        let mut extras = |wanted: bool| -> Vec<Connection> {
            let extras = pending
                .take()
                .flatten()
                .map(|handle| handle.join().unwrap_or_default())
                .unwrap_or_default();
            if !wanted {
                extras.into_iter().for_each(|extra| extra.finish());
                return Vec::new();
            }
            let streams = extras.len() + 1;
            let plural = if streams == 1 { "" } else { "s" };
            say!("large files come over {streams} stream{plural} ({why})");
            extras
        };
        let identities = options.identities.as_ref();
        // Encrypted copies are expected: a plain one might be a server's substitute.
        let expect_sealed =
            !options.allow_plain && (identities.is_some() || server.encrypt_to.is_some());
        let asked = Asked {
            wanted,
            identities,
            expect_sealed,
        };
        let fetched = fetch_set(config, dir, &mut first, asked, &mut extras);
        first.finish();
        fetched
    })
}

/// What the operator asked `fetch` for.
struct Asked<'a> {
    wanted: Wanted,
    identities: Option<&'a Identities>,
    /// Refuse unencrypted members (`--identity` or encrypt_to, without `--allow-plain`).
    expect_sealed: bool,
}

/// Everything after connecting: find the set, fetch and verify its members, say how to
/// restore it. `extras(true)` gives the extra connections for a large file (false: they
/// are not needed).
fn fetch_set(
    config: &Config,
    dir: &Dir,
    first: &mut Connection,
    asked: Asked,
    extras: &mut dyn FnMut(bool) -> Vec<Connection>,
) -> Result<()> {
    let Asked {
        wanted,
        identities,
        expect_sealed,
    } = asked;
    let remote: &mut dyn Remote = &mut **first;
    let label = remote.describe();
    let listing = remote
        .list()?
        .ok_or_else(|| Error::copy(format!("{label} does not exist: nothing to fetch")))?;
    let (copies, sidecars) = split_listing(&listing);
    let files: Vec<(BackupName, u64)> = copies.iter().map(|(f, size)| (f.name, *size)).collect();
    let with_manifest = super::manifests(&listing);
    let by_rule =
        inventory::pick_remote(&files, &with_manifest, wanted, Stamp::now()).ok_or_else(|| {
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
    // The copy of each member to fetch: as the manifest lists it (NAME or NAME.age), else
    // as the listing shows it.
    let copy_of = |name: &BackupName| -> Option<(RemoteFile, u64)> {
        match manifest
            .as_deref()
            .and_then(|text| sets::manifest_entry(text, *name))
        {
            Some((listed, _)) => copies.iter().find(|(f, _)| *f == listed).copied(),
            // The encrypted one first when an identity is given or encryption is expected.
            None => {
                let prefer_sealed = expect_sealed || identities.is_some();
                inventory::remote_copy(&copies, &sidecars, *name, prefer_sealed)
            }
        }
    };
    let found: Vec<(BackupName, Option<(RemoteFile, u64)>)> = set
        .files()
        .into_iter()
        .map(|name| (name, copy_of(&name)))
        .collect();
    if let Some((missing, _)) = found.iter().find(|(_, copy)| copy.is_none()) {
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
    let members: Vec<(RemoteFile, u64)> = found.into_iter().filter_map(|(_, c)| c).collect();
    if let Some((plain, _)) = members.iter().find(|(f, _)| !f.sealed && expect_sealed) {
        return Err(Error::new(
            ExitCode::Config,
            format!(
                "{plain} on {label} is not encrypted, though {}: a server that swapped an \
                 encrypted file for a plain one would look like this. If this set is from \
                 before encrypt_to was set, fetch it with --allow-plain; nothing was fetched",
                if identities.is_some() {
                    "--identity was given"
                } else {
                    "the INI sets encrypt_to"
                }
            ),
        ));
    }
    if let Some((sealed, _)) = members.iter().find(|(f, _)| f.sealed) {
        if identities.is_none() {
            return Err(Error::new(
                ExitCode::Config,
                format!(
                    "{sealed} on {label} is encrypted (encrypt_to): fetch it with --identity \
                     FILE, the age identity or SSH private key its recipient line came from \
                     (kept off this node); nothing was fetched"
                ),
            ));
        }
    }
    // Checked: a hostile server's sizes could wrap the sum past the free-space check. An
    // encrypted file needs room twice for a moment: downloaded, then decrypted beside it.
    let total = members
        .iter()
        .flat_map(|(f, size)| [Some(*size), f.sealed.then_some(*size)])
        .flatten()
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(|| {
            Error::copy(format!(
                "{label} lists sizes for this set that add up to more than any disk holds: \
                 check the backup server"
            ))
        })?;
    if let Some(free) = crate::space::free_bytes(dir.path()) {
        if free < total {
            return Err(Error::copy(format!(
                "{} has {} free but the set needs {}: free space or fetch with --to DIR",
                dir.path().display(),
                human_size(free),
                human_size(total)
            )));
        }
    }
    say!(
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
    let large =
        members.iter().map(|(_, size)| *size).max().unwrap_or(0) >= transfer::PARALLEL_THRESHOLD;
    let mut extras = extras(large);
    let mut remotes: Vec<&mut (dyn Remote + Send)> = Vec::with_capacity(extras.len() + 1);
    remotes.push(first.as_mut());
    for extra in extras.iter_mut() {
        remotes.push(extra.as_mut());
    }
    let fetched = fetch_members(
        &mut remotes,
        &members,
        dir,
        (manifest.as_deref(), identities),
    );
    drop(remotes);
    // Closed in the background while the set is checked.
    let releasing = std::thread::spawn(move || extras.into_iter().for_each(|extra| extra.finish()));
    fetched?;
    if let Some(line) = crate::timeline::moments().line() {
        say!("{line}");
    }
    warn_unless_readable(config, dir, &set.files());
    let Some(images) = set.images else {
        return Err(Error::copy(format!(
            "the server has no EOS images file (cvp.eosimages.*.tgz) as old as {}: the data \
             file was fetched, but cvpi restores it only with its images file",
            set.data
        )));
    };
    say!(
        "every file matches its sha256. To restore CVP from this set, run on this node:\n  {}",
        restore_command(config, dir.path(), set.data, images)
    );
    let _ = releasing.join();
    Ok(())
}

/// How many connections a large file is fetched over, and why: `streams`, or for `auto`
/// enough for `round_trip` (the first connection's login time, or what S3 measured), plus one
/// for each of the set's two other members (images, log) so they come alongside when the
/// round trip counts.
fn planned_streams(server: &ServerConfig, round_trip: Duration) -> (usize, String) {
    const OTHER_MEMBERS: usize = 2;
    match server.streams {
        Streams::Auto => match transfer::auto_fetch_streams(round_trip) {
            (1, why) => (1, why),
            // At most 10 in all: OpenSSH's MaxStartups starts refusing beyond that.
            (large, why) => (
                (large + OTHER_MEMBERS).min(10),
                format!(
                    "{why}; {large} for the largest file, the set's other files one each alongside"
                ),
            ),
        },
        Streams::Fixed(n) => (n, format!("streams = {n}")),
    }
}

/// `count` more connections, fewer when the server refuses some (a warning says so).
pub(crate) fn connect_extras(
    config: &Config,
    server: &ServerConfig,
    count: usize,
) -> Vec<Connection> {
    let mut extras = Vec::new();
    let mut refused = None;
    for outcome in destination::connect_several(server, &config.path, count) {
        match outcome {
            Ok(remote) => extras.push(remote),
            Err(err) => {
                refused.get_or_insert(err.message);
            }
        }
    }
    if let Some(refused) = refused {
        log::warn!(
            "the server accepted {} of {count} extra connections ({refused}): reading over \
             fewer streams",
            extras.len(),
        );
    }
    extras
}

/// Fetch every member of the set, printing each outcome in the set's order. With a
/// connection for each small member besides the largest one, all of them come at once
/// (the small ones one connection each, the largest over the rest): the set costs the
/// round trips of its largest member, not the sum of all. Else one after the other over
/// every connection. The first failure, in the set's order, is the error; members fetched
/// and verified before it stay.
fn fetch_members(
    remotes: &mut [&mut (dyn Remote + Send)],
    members: &[(RemoteFile, u64)],
    dir: &Dir,
    (manifest, identities): (Option<&str>, Option<&Identities>),
) -> Result<()> {
    let one = |remotes: &mut [&mut (dyn Remote + Send)], (file, size): (RemoteFile, u64)| {
        let expected = expected_digest(&mut *remotes[0], file, manifest)?;
        fetch_one(
            remotes,
            (file, size),
            dir,
            &expected,
            (identities, &|_| Ok(())),
        )
    };
    let largest = members
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, size))| *size)
        .map(|(index, _)| index);
    let Some(largest) = largest.filter(|_| remotes.len() > members.len()) else {
        for member in members {
            let outcome = one(remotes, *member)?;
            say!("  {}: {outcome}", member.0);
        }
        return Ok(());
    };
    // The largest member starts at once on the manifest's sha256; its checksum file, which
    // must agree, is read by the first other member's connection once that one is done
    // (else by its own, after its last byte) and compared before it is published.
    let large = members[largest].0;
    let listed = manifest.and_then(|text| listed_digest(text, large));
    let sidecar = SidecarAhead::default();
    let large_one = |remotes: &mut [&mut (dyn Remote + Send)], (file, size): (RemoteFile, u64)| {
        let Some(listed) = &listed else {
            return one(remotes, (file, size));
        };
        let agrees = |remote: &mut dyn Remote| {
            let label = remote.describe();
            agreed_digest(file, &label, manifest, sidecar.read(remote, file)?).map(|_| ())
        };
        fetch_one(remotes, (file, size), dir, listed, (identities, &agrees))
    };
    let (for_largest, for_others) = remotes.split_at_mut(remotes.len() - (members.len() - 1));
    let outcomes: Vec<Result<String>> = std::thread::scope(|scope| {
        let mut others = for_others.iter_mut();
        let mut for_largest = Some(for_largest);
        let workers: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let connections: &mut [&mut (dyn Remote + Send)] = if index == largest {
                    for_largest.take().unwrap_or_default()
                } else {
                    others.next().map(std::slice::from_mut).unwrap_or_default()
                };
                let (one, large_one, sidecar, listed) = (&one, &large_one, &sidecar, &listed);
                scope.spawn(move || {
                    if connections.is_empty() {
                        return Err(Error::copy("no connection left for a member".to_string()));
                    }
                    if index == largest {
                        return large_one(connections, *member);
                    }
                    let outcome = one(connections, *member);
                    // A connection that just failed is left alone.
                    if listed.is_some() && outcome.is_ok() {
                        sidecar.read_ahead(&mut *connections[0], large);
                    }
                    outcome
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Error::copy("fetching a member crashed".to_string())))
            })
            .collect()
    });
    for ((name, _), outcome) in members.iter().zip(outcomes) {
        say!("  {name}: {}", outcome?);
    }
    Ok(())
}

/// The sha256 a member must have: the manifest's, when there is one (and then the sidecar,
/// when present, must agree), else the sidecar's.
fn expected_digest(
    remote: &mut dyn Remote,
    name: RemoteFile,
    manifest: Option<&str>,
) -> Result<String> {
    let label = remote.describe();
    let sidecar = transfer::read_sidecar(remote, name)?;
    agreed_digest(name, &label, manifest, sidecar)
}

/// The sha256 the manifest lists for `name` in this form (NAME or NAME.age).
fn listed_digest(manifest: &str, name: RemoteFile) -> Option<String> {
    sets::manifest_entry(manifest, name.name)
        .filter(|(listed, _)| *listed == name)
        .map(|(_, digest)| digest)
}

/// The largest member's checksum file, read ahead by a connection that is free.
#[derive(Default)]
struct SidecarAhead(Mutex<Option<Option<String>>>);

impl SidecarAhead {
    /// Read on a connection done with its own member (a failure leaves it to `read`).
    fn read_ahead(&self, remote: &mut dyn Remote, name: RemoteFile) {
        let mut slot = lock(&self.0);
        if slot.is_none() {
            if let Ok(sidecar) = transfer::read_sidecar(remote, name) {
                *slot = Some(sidecar);
            }
        }
    }

    /// What was read ahead, else read now.
    fn read(&self, remote: &mut dyn Remote, name: RemoteFile) -> Result<Option<String>> {
        let ahead = lock(&self.0).take();
        match ahead {
            Some(sidecar) => Ok(sidecar),
            None => transfer::read_sidecar(remote, name),
        }
    }
}

/// The sha256 a member must have, from the manifest (if any) and its checksum file as read.
fn agreed_digest(
    name: RemoteFile,
    label: &str,
    manifest: Option<&str>,
    sidecar: Option<String>,
) -> Result<String> {
    let listed = manifest.map(|text| listed_digest(text, name));
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

/// Fetch one member into its final name, which it gets only once verified (and for an
/// encrypted one, decrypted with every chunk authenticated).
fn fetch_one(
    remotes: &mut [&mut (dyn Remote + Send)],
    (name, size): (RemoteFile, u64),
    dir: &Dir,
    expected: &str,
    (identities, agrees): (Option<&Identities>, &Agrees),
) -> Result<String> {
    let file_name = name.name.file_name();
    let read_error = |err: std::io::Error| {
        Error::copy(format!(
            "cannot read {}: {err}",
            dir.join(&file_name).display()
        ))
    };
    // An encrypted copy's sha256 is of its ciphertext: a local file cannot be compared.
    match dir
        .open_existing(&file_name, false)
        .map(|f| f.filter(|_| !name.sealed))
    {
        Ok(Some(existing)) => {
            if transfer::sha256_open(&existing, &dir.join(&file_name))? == expected {
                agrees(&mut *remotes[0])?;
                return Ok(format!("already here, sha256 matches ({expected})"));
            }
        }
        Ok(None) => {}
        // A symlink or a special file under the name: never read, replaced by the download.
        Err(err) => log::warn!("{}; it is replaced", read_error(err)),
    }
    let partial = name.partial_name();
    let plain_partial = RemoteFile::plain(name.name).partial_name();
    let outcome = if name.sealed {
        let identities = identities.ok_or_else(|| {
            Error::new(
                ExitCode::Config,
                format!("{name} needs --identity to decrypt"),
            )
        })?;
        download_decrypting(
            remotes,
            (name, size),
            dir,
            (&partial, &plain_partial),
            expected,
            identities,
        )
        .map(|bytes| {
            let _ = dir.remove(&partial);
            Some(bytes)
        })
    } else {
        download(remotes, (name, size), dir, &partial, expected, None).map(|()| None)
    };
    let outcome = outcome.and_then(|decrypted| agrees(&mut *remotes[0]).map(|()| decrypted));
    let (ready, decrypted) = match outcome {
        Ok(None) => (partial, None),
        Ok(Some(bytes)) => (plain_partial, Some(bytes)),
        Err(err) => {
            let _ = dir.remove(&partial);
            let _ = dir.remove(&plain_partial);
            return Err(err);
        }
    };
    dir.rename(&ready, &file_name)
        .and_then(|()| dir.sync())
        .map_err(|err| {
            let _ = dir.remove(&ready);
            Error::copy(format!(
                "cannot rename {}: {err}",
                dir.join(&ready).display()
            ))
        })?;
    Ok(match decrypted {
        None => format!("fetched, {size} bytes, sha256 matches ({expected})"),
        Some(bytes) => format!(
            "fetched, {size} bytes, sha256 matches ({expected}); decrypted into {file_name}, \
             {bytes} bytes, every chunk authenticated"
        ),
    })
}

/// Whether the member's checksum file agrees with the sha256 it was fetched on (the
/// largest member starts on the manifest's before its checksum file is read); asked
/// before it is published.
type Agrees<'a> = dyn Fn(&mut dyn Remote) -> Result<()> + Sync + 'a;

/// Download the encrypted `sealed` and decrypt it in the same pass: over several streams a
/// thread decrypts the chunks as the streams receive them (in any order), each where it
/// lies in `plain` (synced); over one, in order from memory. Its size, once the download's
/// sha256 is the expected one and every chunk authenticated; else an error, and `plain` is
/// not to be published.
fn download_decrypting(
    remotes: &mut [&mut (dyn Remote + Send)],
    (name, size): (RemoteFile, u64),
    dir: &Dir,
    (sealed, plain): (&str, &str),
    expected: &str,
    identities: &Identities,
) -> Result<u64> {
    if size < transfer::PARALLEL_THRESHOLD || remotes.len() < 2 {
        return download_decrypting_in_order(
            &mut *remotes[0],
            (name, size),
            dir,
            plain,
            expected,
            identities,
        );
    }
    let plain_path = dir.join(plain);
    let local_error =
        |err: std::io::Error| Error::copy(format!("cannot write {}: {err}", plain_path.display()));
    dir.remove(plain).map_err(local_error)?;
    let out = dir.create_new(plain, 0o640).map_err(local_error)?;
    let during = format!("the decryption of {name}");
    let opening = OpenAsItArrives {
        dir,
        sealed,
        plain: &out,
        size,
        identities,
        during: &during,
        ready: std::sync::OnceLock::new(),
        streams: (0..remotes.len().max(1))
            .map(|_| Mutex::new(StreamCursor::default()))
            .collect(),
        all_arrived: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
    };
    let downloaded = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..DECRYPTING_THREADS)
            .map(|_| scope.spawn(|| opening.work()))
            .collect();
        let arrived = |stream: usize, run: Range<u64>| opening.arrived(stream, run);
        let downloaded = {
            let _on_panic = StopOnUnwind(&opening.stop);
            download(remotes, (name, size), dir, sealed, expected, Some(&arrived))
        };
        match downloaded {
            Ok(()) => opening.all_arrived.store(true, Ordering::Relaxed),
            Err(_) => opening.stop.store(true, Ordering::Relaxed),
        }
        for worker in workers {
            if worker.join().is_err() {
                opening.failed("the decryption crashed".into());
            }
        }
        downloaded
    });
    // A download that failed (its sha256, the connection) says why first; a whole,
    // verified ciphertext that does not decrypt is the identity's or the file's.
    downloaded?;
    crate::signals::check(&during)?;
    let bytes = opening
        .finish()
        .map_err(|why| Error::copy(format!("{name}: {why}; not fetched")))?;
    out.sync_all().map_err(local_error)?;
    Ok(bytes)
}

/// Over one stream (what `auto` picks on a short round trip) the ciphertext arrives in
/// order: it is hashed and decrypted from memory as it arrives, and only the plaintext is
/// written (no ciphertext through the page cache, read back twice, then removed). Its size,
/// once the sha256 is the expected one and every chunk authenticated.
fn download_decrypting_in_order(
    remote: &mut (dyn Remote + Send),
    (name, size): (RemoteFile, u64),
    dir: &Dir,
    plain: &str,
    expected: &str,
    identities: &Identities,
) -> Result<u64> {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let plain_path = dir.join(plain);
    let local_error =
        |err: std::io::Error| Error::copy(format!("cannot write {}: {err}", plain_path.display()));
    dir.remove(plain).map_err(local_error)?;
    let mut out = dir.create_new(plain, 0o640).map_err(local_error)?;
    let label = remote.describe();
    let file_name = name.file_name();
    let during = format!("the fetch of {name}");
    let bar = progress::bar(size, &file_name);
    let mut reader = remote.open_read(&file_name)?;
    let mut hasher = sha2::Sha256::new();
    let mut piece = vec![0u8; transfer::READ_BUFFER];
    // What has arrived and is not decrypted yet: less than a chunk, plus the last piece.
    let mut carry: Vec<u8> = Vec::with_capacity(transfer::READ_BUFFER + 128 * 1024);
    let mut opener: Option<Opener> = None;
    // Once the file does not open, the rest is only hashed: whether the sha256 matches tells
    // a damaged copy from a wrong identity.
    let mut failure: Option<String> = None;
    let (mut received, mut opened, mut written) = (0u64, 0u64, 0u64);
    let head = usize::try_from(size.min(Opener::HEAD)).unwrap_or(0);
    // Never past the listed size: a file that grows on the server would grow `carry`.
    while received < size {
        crate::signals::check(&during)?;
        let want =
            usize::try_from(size - received).map_or(piece.len(), |left| left.min(piece.len()));
        let n = reader.read(&mut piece[..want]).map_err(|err| {
            transfer::write_error(
                err,
                format!("reading {file_name} from {label} at {received}"),
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&piece[..n]);
        received += n as u64;
        crate::progress::moved(&bar, n as u64);
        if failure.is_some() {
            continue;
        }
        carry.extend_from_slice(&piece[..n]);
        if opener.is_none() && carry.len() >= head {
            match Opener::new(&carry[..head], size, identities) {
                Ok(new) => {
                    let start = usize::try_from(new.payload_start()).unwrap_or(usize::MAX);
                    carry.drain(..start.min(carry.len()));
                    opener = Some(new);
                }
                Err(why) => {
                    failure = Some(why);
                    continue;
                }
            }
        }
        let Some(opener) = &opener else { continue };
        let which = opener.chunks_within(received - carry.len() as u64..received);
        if which.is_empty() {
            continue;
        }
        // chunks_within only names chunks wholly in what arrived.
        let len = usize::try_from(opener.sealed_len_of(which.clone())).unwrap_or(usize::MAX);
        let Some(sealed) = carry.get_mut(..len) else {
            failure = Some(format!("chunks {which:?} did not all arrive (a bug)"));
            continue;
        };
        match opener.open_in_place(which.clone(), sealed) {
            Ok(packed) => {
                out.write_all(&carry[..packed]).map_err(local_error)?;
                written += packed as u64;
                opened = which.end;
                carry.drain(..len);
            }
            Err(why) => failure = Some(why),
        }
    }
    bar.finish_and_clear();
    if received < size {
        return Err(Error::transient(format!(
            "{file_name} on {label} ended at {received}, before the {size} bytes listed: it \
             changed on the server"
        )));
    }
    let digest = transfer::hex(&hasher.finalize());
    if digest != expected {
        return Err(corrupted(name, &label, (&digest, received), expected));
    }
    let not_fetched = |why: String| Error::copy(format!("{name}: {why}; not fetched"));
    if let Some(why) = failure {
        return Err(not_fetched(why));
    }
    let opener = opener.ok_or_else(|| not_fetched("not an age file this version reads".into()))?;
    if opened != opener.chunks() || written != opener.plain_len() {
        return Err(not_fetched("the decryption stopped before the end".into()));
    }
    out.sync_all().map_err(local_error)?;
    Ok(written)
}

/// Tells the decrypting thread to stop when the download panics (else the scope would wait
/// for it forever).
struct StopOnUnwind<'a>(&'a AtomicBool);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Threads decrypting a download: one decrypts about 1 GB/s, several times a 1 Gbit/s
/// link; a second only competed for the CPU with the streams and the hash (loopback: +41 %
/// instead of +31 % over a plain fetch).
const DECRYPTING_THREADS: usize = 1;

/// Chunks decrypted at a time: 2 MiB of plaintext.
const CHUNKS_AT_A_TIME: u64 = 32;

/// A download's decryption, following its streams.
struct OpenAsItArrives<'a> {
    dir: &'a Dir,
    sealed: &'a str,
    plain: &'a std::fs::File,
    size: u64,
    identities: &'a Identities,
    during: &'a str,
    /// Once the header has arrived: the opener, or why the file cannot be opened.
    ready: std::sync::OnceLock<std::result::Result<Ready, String>>,
    streams: Vec<Mutex<StreamCursor>>,
    /// Every byte is there (and its sha256 the expected one).
    all_arrived: AtomicBool,
    /// The download failed: nothing more to decrypt.
    stop: AtomicBool,
    /// Why the file does not open (the first chunk that did not).
    failure: Mutex<Option<String>>,
}

struct Ready {
    opener: Opener,
    sealed: std::fs::File,
    /// Which chunks a thread has taken (to decrypt, or decrypted).
    taken: Mutex<Vec<bool>>,
    /// Where the search for chunks no stream's run held starts.
    sweep_from: std::sync::atomic::AtomicUsize,
}

/// What one stream has received without a gap, and how far its decryption got in it.
#[derive(Default)]
struct StreamCursor {
    run: Range<u64>,
    next: u64,
}

impl OpenAsItArrives<'_> {
    /// Stream `stream` has received `run` without a gap.
    fn arrived(&self, stream: usize, run: Range<u64>) {
        let mut cursor = self.streams[stream]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cursor.run.start != run.start {
            cursor.next = 0;
        }
        cursor.run = run;
    }

    fn failed(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }

    fn has_failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// One decrypting thread: chunks as they arrive, until all are taken. Once a chunk does
    /// not open, the rest is only downloaded (and hashed: whether the sha256 matches tells
    /// a damaged copy from a wrong identity).
    fn work(&self) {
        let mut buffer = Vec::new();
        loop {
            if self.stop.load(Ordering::Relaxed) || self.has_failed() {
                return;
            }
            if let Err(stopped) = crate::signals::check(self.during) {
                self.failed(stopped.message);
                return;
            }
            let all_arrived = self.all_arrived.load(Ordering::Relaxed);
            let ready = match self.ready.get() {
                Some(ready) => ready,
                None if all_arrived || self.head_arrived() => {
                    self.ready.get_or_init(|| self.start())
                }
                None => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    continue;
                }
            };
            let Ok(ready) = ready else { return };
            match self.next_batch(ready, all_arrived) {
                Some(batch) => {
                    if let Err(why) =
                        ready
                            .opener
                            .open(batch, &ready.sealed, self.plain, &mut buffer)
                    {
                        self.failed(why);
                        return;
                    }
                }
                None if all_arrived => return,
                None => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    }

    /// The header and the payload's nonce have arrived.
    fn head_arrived(&self) -> bool {
        let head = self.size.min(Opener::HEAD);
        // (An empty file has no header to wait for: the download's end decides.)
        self.size > 0
            && self.streams.iter().any(|cursor| {
                let cursor = cursor.lock().unwrap_or_else(PoisonError::into_inner);
                cursor.run.start == 0 && cursor.run.end >= head
            })
    }

    fn start(&self) -> std::result::Result<Ready, String> {
        let sealed = self
            .dir
            .open_existing(self.sealed, false)
            .ok()
            .flatten()
            .ok_or_else(|| format!("cannot read {}", self.dir.join(self.sealed).display()))?;
        let mut head = vec![0u8; usize::try_from(self.size.min(Opener::HEAD)).unwrap_or(0)];
        sealed
            .read_exact_at(&mut head, 0)
            .map_err(|err| format!("cannot read what was downloaded: {err}"))?;
        let opener = Opener::new(&head, self.size, self.identities)?;
        let taken = Mutex::new(vec![false; usize::try_from(opener.chunks()).unwrap_or(0)]);
        Ok(Ready {
            opener,
            sealed,
            taken,
            sweep_from: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The next chunks to decrypt, taken: inside what a stream has received, or, once
    /// everything has arrived, anywhere (the chunks two streams share).
    fn next_batch(&self, ready: &Ready, all_arrived: bool) -> Option<Range<u64>> {
        for cursor in &self.streams {
            let mut cursor = cursor.lock().unwrap_or_else(PoisonError::into_inner);
            let within = ready.opener.chunks_within(cursor.run.clone());
            let mut next = cursor.next.max(within.start);
            while next < within.end {
                let batch = take(&ready.taken, next..within.end);
                if batch.is_empty() {
                    next += 1; // another thread's, or taken before this stream's run
                    continue;
                }
                cursor.next = batch.end;
                return Some(batch);
            }
            cursor.next = next;
        }
        if !all_arrived {
            return None;
        }
        let mut taken = ready.taken.lock().unwrap_or_else(PoisonError::into_inner);
        // Every chunk below the hint is taken: the search does not start over each time.
        let hint = ready.sweep_from.load(Ordering::Relaxed);
        let first = hint + taken.get(hint..)?.iter().position(|chunk| !chunk)?;
        ready.sweep_from.store(first, Ordering::Relaxed);
        let count = taken[first..]
            .iter()
            .take(CHUNKS_AT_A_TIME as usize)
            .take_while(|chunk| !**chunk)
            .count();
        taken[first..first + count].fill(true);
        Some(first as u64..(first + count) as u64)
    }

    /// After the threads: the plaintext's size, or why the file does not open.
    fn finish(&self) -> std::result::Result<u64, String> {
        if let Some(why) = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(why);
        }
        let ready = self
            .ready
            .get()
            .ok_or("the download ended before its header")?
            .as_ref()
            .map_err(Clone::clone)?;
        let taken = ready.taken.lock().unwrap_or_else(PoisonError::into_inner);
        if taken.iter().any(|chunk| !chunk) {
            return Err("the decryption stopped before the end".into());
        }
        Ok(ready.opener.plain_len())
    }
}

/// Take the untaken chunks at the start of `from` (at most CHUNKS_AT_A_TIME); empty when its
/// first chunk is taken already.
fn take(taken: &Mutex<Vec<bool>>, from: Range<u64>) -> Range<u64> {
    let mut taken = taken.lock().unwrap_or_else(PoisonError::into_inner);
    let mut end = from.start;
    while end < from.end && end - from.start < CHUNKS_AT_A_TIME {
        match usize::try_from(end).ok().and_then(|i| taken.get_mut(i)) {
            Some(chunk) if !*chunk => *chunk = true,
            _ => break,
        }
        end += 1;
    }
    from.start..end
}

/// Download into a fresh `partial` (whatever had that name is removed first, never
/// followed), over several streams when it is large, hashing in order as it arrives; an
/// error unless every byte is there and the sha256 is the expected one.
fn download(
    remotes: &mut [&mut (dyn Remote + Send)],
    (name, size): (RemoteFile, u64),
    dir: &Dir,
    partial: &str,
    expected: &str,
    arrived: Option<&transfer::Arrived<'_>>,
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
    // A ciphertext only decrypted from is removed next: flushing it to the disk would only
    // double the writes.
    let durable = arrived.is_none();
    let digest = transfer::download_parallel(
        &mut remotes[..streams],
        &name.file_name(),
        size,
        &out,
        &read_back,
        &partial_path,
        &bar,
        arrived,
    );
    bar.finish_and_clear();
    let digest = digest?;
    if durable {
        out.sync_all().map_err(local_error)?;
    }
    if digest != expected {
        return Err(corrupted(name, &label, (&digest, size), expected));
    }
    Ok(())
}

/// The error of a download whose sha256 is not the one its checksum file lists.
fn corrupted(name: RemoteFile, label: &str, (digest, size): (&str, u64), expected: &str) -> Error {
    Error::copy(format!(
        "{name} on {label} is corrupted: its sha256 is {digest} ({size} bytes) but {} says \
         {expected}; not fetched. Fetch an older set (`cvp-backup-copy list`) and check the \
         backup server's disk",
        name.sidecar_name()
    ))
}
