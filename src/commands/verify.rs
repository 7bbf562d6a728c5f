//! `verify`: is what the server holds still a restorable set? Without `--read-data`, every
//! member is there with its checksum file, and the checksum file says what the manifest
//! says (cheap: a listing and a few small reads). With it, every member is read back and
//! hashed, and a `.tgz` walked as an archive (an `.age` one decrypted and authenticated
//! first, with `--identity`); nothing is written to disk. The result lands in the state
//! record (status, metrics, nagios). It takes the run's lock: never beside a run.

use super::fetch::{connect_extras, Connection};
use super::{say, split_listing};
use crate::archive::{self, ArchiveCheck};
use crate::config::{Config, ServerConfig, Streams};
use crate::destination;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::inventory::Wanted;
use crate::lock;
use crate::monitor::Monitoring;
use crate::names::{BackupName, RemoteFile, Stamp};
use crate::read_ahead::{self, ReadAhead};
use crate::remote::{Remote, RemoteEntry};
use crate::seal::open::Identities;
use crate::sets;
use crate::state::{self, RunRecord, VerifyRecord};
use crate::transfer;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;

pub struct VerifyOptions {
    pub ini: PathBuf,
    pub destination: Option<String>,
    /// `latest`, `all`, a timestamp or a data file's name.
    pub set: String,
    pub read_data: bool,
    pub identities: Option<Identities>,
}

/// Which sets to verify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Which {
    /// The newest set with a manifest (the newest data file, when none has one).
    Latest,
    All,
    At(Stamp),
}

impl Which {
    pub fn parse(text: &str) -> Option<Which> {
        match text {
            "all" => Some(Which::All),
            _ => match Wanted::parse(text)? {
                Wanted::Latest => Some(Which::Latest),
                Wanted::At(stamp) => Some(Which::At(stamp)),
            },
        }
    }
}

/// The data files of the sets to verify, from a listing (pure): newest first. `latest` is
/// what `fetch latest` takes.
pub fn choose_sets(listing: &[RemoteEntry], which: Which, now: Stamp) -> Vec<BackupName> {
    let (copies, _) = split_listing(listing);
    let files: Vec<(BackupName, u64)> = copies.iter().map(|(f, size)| (f.name, *size)).collect();
    let wanted = match which {
        Which::Latest => Wanted::Latest,
        Which::At(stamp) => Wanted::At(stamp),
        Which::All => {
            let names: Vec<BackupName> = files.iter().map(|(n, _)| *n).collect();
            let mut data = sets::data_by_recency(&names, now);
            data.dedup();
            return data;
        }
    };
    crate::inventory::pick_remote(&files, &super::manifests(listing), wanted, now)
        .map(|set| set.data)
        .into_iter()
        .collect()
}

/// One destination's verdict.
struct Verdict {
    name: String,
    code: ExitCode,
    sets: Vec<String>,
    problems: Vec<String>,
    /// Copies read back whose bytes are not what the set lists (the next run replaces them).
    damaged: Vec<String>,
    /// The copies read back (whole or not).
    examined: Vec<String>,
}

pub fn verify(options: &VerifyOptions) -> Result<ExitCode> {
    let which = Which::parse(&options.set).ok_or_else(|| {
        Error::new(
            ExitCode::Usage,
            format!(
                "`{}` is not a set to verify: give `latest`, `all`, a timestamp such as \
                 20240101020010, or a data file name (`cvp-backup-copy list` shows them)",
                options.set
            ),
        )
    })?;
    let config = Config::load(&options.ini)?;
    let _lock = lock::acquire(&config.backup.state_dir, lock::Holder::Verify)?;
    let servers: Vec<&ServerConfig> = match &options.destination {
        Some(name) => vec![config.destination(name)?],
        None => config.destinations().collect(),
    };
    let mut verdicts = Vec::new();
    for server in servers {
        crate::logging::set_context(Some(server.name.clone()));
        let verdict = verify_destination(&config, server, which, options);
        crate::logging::set_context(None);
        verdicts.push(verdict);
        if crate::signals::received().is_some() {
            break;
        }
    }
    record(&config, options.read_data, &verdicts);
    if options.read_data {
        remember_damage(&config, &verdicts);
    }
    let mut code = ExitCode::Success;
    for verdict in &verdicts {
        code = code.most_severe(verdict.code);
        match verdict.code {
            ExitCode::Success => log::info!(
                "verified on {}: {} ({})",
                verdict.name,
                verdict.sets.join(", "),
                if options.read_data {
                    "every byte read back"
                } else {
                    "members and checksum files listed; --read-data reads them back"
                }
            ),
            _ => log::error!(
                "verification on {} failed: {}",
                verdict.name,
                verdict.problems.join("; ")
            ),
        }
    }
    Ok(code)
}

fn verify_destination(
    config: &Config,
    server: &ServerConfig,
    which: Which,
    options: &VerifyOptions,
) -> Verdict {
    let mut verdict = Verdict {
        name: server.name.clone(),
        code: ExitCode::Success,
        sets: Vec::new(),
        problems: Vec::new(),
        damaged: Vec::new(),
        examined: Vec::new(),
    };
    let fail = |verdict: &mut Verdict, err: Error| {
        say!("[FAIL] {}", err.message);
        verdict.problems.push(err.message);
        verdict.code = verdict.code.most_severe(err.code);
    };
    let mut remote = match destination::connect(server, &config.path, false) {
        Ok(remote) => remote,
        Err(err) => {
            let code = match err.code {
                ExitCode::Config => ExitCode::Config,
                _ => ExitCode::Connect,
            };
            fail(&mut verdict, Error { code, ..err });
            return verdict;
        }
    };
    let mut extras = if options.read_data {
        connect_readers(config, server, &mut *remote)
    } else {
        Vec::new()
    };
    let label = remote.describe();
    let listing = match remote.list() {
        Ok(Some(listing)) => listing,
        Ok(None) => {
            fail(
                &mut verdict,
                Error::copy(format!("{label} does not exist: no set there to verify")),
            );
            return verdict;
        }
        Err(err) => {
            fail(
                &mut verdict,
                Error {
                    code: ExitCode::Connect,
                    ..err
                },
            );
            return verdict;
        }
    };
    let chosen = choose_sets(&listing, which, Stamp::now());
    if chosen.is_empty() {
        let what = match which {
            Which::At(stamp) => format!("no set from {stamp}"),
            _ => "no set at all".into(),
        };
        fail(&mut verdict, Error::copy(format!("{label} holds {what}")));
        return verdict;
    }
    for data in chosen {
        verdict.sets.push(data.file_name());
        say!("{}: the set of {} on {label}", server.name, data.stamp);
        let (problems, examined) = verify_set((&mut *remote, &mut extras), &listing, data, options);
        verdict.examined.extend(examined);
        for (err, damaged) in problems {
            verdict.damaged.extend(damaged);
            fail(&mut verdict, err);
        }
        if crate::signals::received().is_some() {
            fail(&mut verdict, Error::copy("stopped by a signal"));
            break;
        }
    }
    verdict
}

/// The connections a read-back reads a large member over, besides the first (which reads
/// the listing, the checksum files and the small members); none: over the first alone. As
/// many as a fetch would use for its largest file (`streams`, or `auto` from the round trip),
/// at most `read_ahead::MOST_STREAMS`, so the blocks held stay within 40 MiB.
fn connect_readers(
    config: &Config,
    server: &ServerConfig,
    remote: &mut dyn Remote,
) -> Vec<Connection> {
    let streams = match server.streams {
        Streams::Auto => transfer::auto_fetch_streams(remote.round_trip()).0,
        Streams::Fixed(n) => n,
    }
    .min(read_ahead::MOST_STREAMS);
    if streams < 2 {
        return Vec::new();
    }
    let extras = connect_extras(config, server, streams);
    say!(
        "large files are read back over {} connections, in blocks of {} MiB",
        extras.len(),
        read_ahead::BLOCK >> 20
    );
    extras
}

type Problems = Vec<(Error, Option<String>)>;

/// The problems of one set (none: it is whole), each with the copy it found damaged, and the
/// copies it looked at.
fn verify_set(
    (remote, extras): (&mut dyn Remote, &mut Vec<Connection>),
    listing: &[RemoteEntry],
    data: BackupName,
    options: &VerifyOptions,
) -> (Problems, Vec<String>) {
    let label = remote.describe();
    let (copies, sidecars) = split_listing(listing);
    let manifest_name = data.manifest_name();
    let manifest = match remote.read_small(&manifest_name, 64 * 1024) {
        Ok(text) => text.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) => return (vec![(err, None)], Vec::new()),
    };
    // Each member as the manifest lists it (name and sha256); a set from before manifests:
    // by the naming rule, each with its checksum file's sha256.
    let members: Vec<(BackupName, Option<(RemoteFile, String)>)> = match &manifest {
        Some(text) => match sets::parse_manifest(text, data) {
            Some(set) => set
                .files()
                .into_iter()
                .map(|name| (name, sets::manifest_entry(text, name)))
                .collect(),
            None => {
                let damaged = Error::copy(format!(
                    "{manifest_name} on {label} is damaged: it does not list this set's files"
                ));
                return (vec![(damaged, None)], Vec::new());
            }
        },
        None => {
            let names: Vec<BackupName> = copies.iter().map(|(f, _)| f.name).collect();
            let set = sets::compose(&names, data);
            let mut members = Vec::new();
            for name in set.files() {
                let copy = crate::inventory::remote_copy(&copies, &sidecars, name, false);
                let entry = match copy {
                    Some((file, _)) => match transfer::read_sidecar(remote, file) {
                        Ok(Some(digest)) => Some((file, digest)),
                        Ok(None) => None,
                        Err(err) => return (vec![(err, None)], Vec::new()),
                    },
                    None => None,
                };
                members.push((name, entry));
            }
            say!("  (no {manifest_name}: a set from before manifests, checked by its checksum files)");
            members
        }
    };
    let mut problems = Vec::new();
    let mut examined = Vec::new();
    for (name, entry) in members {
        let Some((file, expected)) = entry else {
            problems.push((
                Error::copy(format!(
                    "{name} of the set {} is missing on {label} (or has no checksum): the set \
                     cannot be restored from there",
                    data.stamp
                )),
                None,
            ));
            continue;
        };
        examined.push(file.file_name());
        match check_member((remote, extras), &copies, file, &expected, options) {
            Ok(line) => say!("[ok  ] {file}: {line}"),
            Err(Damaged::Copy(err)) => problems.push((err, Some(file.file_name()))),
            Err(Damaged::Other(err)) => problems.push((err, None)),
        }
    }
    (problems, examined)
}

/// One member: listed, its checksum file agreeing; with `--read-data`, read back whole.
fn check_member(
    (remote, extras): (&mut dyn Remote, &mut Vec<Connection>),
    copies: &[(RemoteFile, u64)],
    file: RemoteFile,
    expected: &str,
    options: &VerifyOptions,
) -> std::result::Result<String, Damaged> {
    let label = remote.describe();
    let Some(&(_, size)) = copies.iter().find(|(f, _)| *f == file) else {
        return Err(Damaged::Other(Error::copy(format!(
            "{file} is missing on {label}: the set cannot be restored from there"
        ))));
    };
    match transfer::read_sidecar(remote, file).map_err(Damaged::Other)? {
        Some(digest) if digest == expected => {}
        Some(digest) => {
            return Err(Damaged::Other(Error::copy(format!(
                "{} on {label} says sha256 {digest}, the set's manifest {expected}: one of them \
                 was changed",
                file.sidecar_name()
            ))))
        }
        None => {
            return Err(Damaged::Other(Error::copy(format!(
                "{} is missing on {label}: `sha256sum -c` cannot check {file} there",
                file.sidecar_name()
            ))))
        }
    }
    if !options.read_data {
        return Ok(format!("there, {size} bytes, with its checksum file"));
    }
    read_back(
        (remote, extras),
        file,
        size,
        expected,
        options.identities.as_ref(),
    )
}

/// Why a member failed: its bytes are not the set's (the next run may replace them), or
/// anything else (missing, unreadable, a broken connection).
enum Damaged {
    Copy(Error),
    Other(Error),
}

/// Read a member back: its sha256 and length, and for an archive its gzip and tar
/// structure (decrypting an `.age` one with the identities, when given). A large one over
/// the extra connections, in blocks (`read_ahead`), when there are any.
fn read_back(
    (remote, extras): (&mut dyn Remote, &mut Vec<Connection>),
    file: RemoteFile,
    size: u64,
    expected: &str,
    identities: Option<&Identities>,
) -> std::result::Result<String, Damaged> {
    let label = remote.describe();
    if size < transfer::PARALLEL_THRESHOLD || extras.is_empty() {
        // Large reads: libssh2 keeps four of them in flight, a window that fills a long
        // link (small ones would leave one stream at a fraction of a MB/s at 50 ms).
        let reader = std::io::BufReader::with_capacity(
            transfer::READ_BUFFER,
            remote
                .open_read(&file.file_name())
                .map_err(Damaged::Other)?,
        );
        return read_through(reader, (file, &label), size, expected, identities);
    }
    let ahead = ReadAhead::new(&file.file_name(), size, extras.len());
    let (outcome, alive) = std::thread::scope(|scope| {
        let workers: Vec<_> = extras
            .iter_mut()
            .map(|extra| {
                let ahead = &ahead;
                scope.spawn(move || ahead.work(extra.as_mut()))
            })
            .collect();
        // The reader, dropped when this returns, stops the connections.
        let outcome = read_through(ahead.reader(), (file, &label), size, expected, identities);
        let alive: Vec<bool> = workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or(false))
            .collect();
        (outcome, alive)
    });
    // A connection that failed is not used for the next members.
    let mut alive = alive.into_iter();
    extras.retain(|_| alive.next().unwrap_or(false));
    outcome
}

/// The checks of `read_back` on the member's bytes in order.
fn read_through(
    reader: impl Read,
    (file, label): (RemoteFile, &str),
    size: u64,
    expected: &str,
    identities: Option<&Identities>,
) -> std::result::Result<String, Damaged> {
    let what = format!("reading {file} back from {label}");
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        bytes: 0,
        what: &what,
    };
    let is_archive = archive::is_archive(&file.name.file_name());
    let mut check = ArchiveSink(ArchiveCheck::new());
    let mut decrypted = None;
    let mut note = "";
    if file.sealed {
        match identities {
            Some(identities) => {
                let bytes = identities
                    .decrypt(&mut hashing, &mut check)
                    .map_err(|why| {
                        Damaged::Other(Error::copy(format!(
                            "{file} on {label} does not decrypt with the identity given: {why}"
                        )))
                    })?;
                decrypted = Some(bytes);
            }
            None => note = "; encrypted: its ciphertext's sha256 only (--identity reads into it)",
        }
    } else if is_archive {
        std::io::copy(&mut hashing, &mut check)
            .map_err(|err| Damaged::Other(transfer_error(&what, err)))?;
    }
    // What the decryptor or the check did not read (a log; bytes after the age stream).
    std::io::copy(&mut hashing, &mut std::io::sink())
        .map_err(|err| Damaged::Other(transfer_error(&what, err)))?;
    let (digest, bytes) = (transfer::hex(&hashing.hasher.finalize()), hashing.bytes);
    if bytes != size || digest != expected {
        return Err(Damaged::Copy(Error::copy(format!(
            "{file} on {label} is damaged: read back {bytes} bytes with sha256 {digest}, but the \
             set lists sha256 {expected} ({size} bytes listed); restore from another set or \
             destination, and check the backup server's disk; the next run copies it again \
             while the node still has it"
        ))));
    }
    let mut line = format!("read back, {bytes} bytes, sha256 matches");
    if let Some(plain) = decrypted {
        line.push_str(&format!(
            "; decrypted, {plain} bytes, every chunk authenticated"
        ));
    }
    if is_archive && (!file.sealed || decrypted.is_some()) {
        let summary = check.0.finish().map_err(|damage| {
            Damaged::Other(Error::copy(format!(
                "{file} on {label} matches its sha256 but is not a whole archive: {damage}; the \
                 backup was damaged before it was copied: restore from another set"
            )))
        })?;
        line.push_str(&format!(
            "; a whole archive ({} files, {} bytes inflated)",
            summary.members, summary.inflated
        ));
    }
    line.push_str(note);
    Ok(line)
}

fn transfer_error(what: &str, err: std::io::Error) -> Error {
    transfer::write_error(err, what.to_string())
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    what: &'a str,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::signals::check(self.what).map_err(|err| std::io::Error::other(err.message))?;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The archive check as a place to write the (decrypted) bytes to.
struct ArchiveSink(ArchiveCheck);

impl Write for ArchiveSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The copies a read-back found damaged, for the next run to replace; those it read whole
/// are no longer on the list.
fn remember_damage(config: &Config, verdicts: &[Verdict]) {
    let Ok(dir) = state::open_dir(&config.backup.state_dir) else {
        return;
    };
    let Ok(mut history) = state::load_history(&dir) else {
        return;
    };
    for verdict in verdicts {
        let mut damaged = history.damaged_on(&verdict.name);
        damaged.retain(|name| !verdict.examined.contains(name));
        damaged.extend(verdict.damaged.iter().cloned());
        history.set_damaged(&verdict.name, damaged);
    }
    if let Err(err) = state::save_history(&dir, &history) {
        log::warn!("cannot save {}: {err}", dir.path().display());
    }
}

/// Each destination's verdict into the state record (its part for that destination), and
/// the metrics written again from it.
fn record(config: &Config, read_data: bool, verdicts: &[Verdict]) {
    let state_dir = &config.backup.state_dir;
    let mut record = match state::load(state_dir) {
        Ok(Some(record)) => record,
        _ => RunRecord {
            destination: config.server.label(),
            destination_name: Some(config.server.name.clone()),
            ..RunRecord::default()
        },
    };
    let finished = chrono::Local::now().to_rfc3339();
    for verdict in verdicts {
        let Some(server) = config.destinations().find(|s| s.name == verdict.name) else {
            continue;
        };
        let entry = VerifyRecord {
            finished: finished.clone(),
            exit_code: verdict.code.code(),
            read_data,
            sets: verdict.sets.clone(),
            problems: verdict.problems.clone(),
        };
        let read_back = (read_data && verdict.code == ExitCode::Success).then(|| finished.clone());
        let label = server.label();
        let part = if record.destination == label {
            &mut record
        } else {
            if !record.extra.iter().any(|e| e.destination == label) {
                record.extra.push(RunRecord {
                    destination: label.clone(),
                    destination_name: Some(server.name.clone()),
                    ..RunRecord::default()
                });
            }
            match record.extra.iter_mut().find(|e| e.destination == label) {
                Some(part) => part,
                None => continue,
            }
        };
        part.last_verify = Some(entry);
        if read_back.is_some() {
            part.last_read_back = read_back;
        }
    }
    if let Err(err) = state::save(state_dir, &record) {
        log::warn!(
            "cannot save the verification in {}: {err}",
            state_dir.display()
        );
    }
    Monitoring::from_config(&config.backup).metrics_only(&record);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<RemoteEntry> {
        names
            .iter()
            .map(|n| RemoteEntry {
                name: n.to_string(),
                size: 1,
            })
            .collect()
    }

    #[test]
    fn latest_is_the_newest_set_with_a_manifest() {
        let now = Stamp::parse("20240110000000").expect("stamp");
        let listing = entries(&[
            "cvp.20240101020010.tgz",
            "cvp.20240101020010.set.sha256",
            "cvp.20240102020010.tgz",
            "cvp.20240102020010.set.sha256",
            // Being copied (or a damaged night's leftover): no manifest yet.
            "cvp.20240103020010.tgz",
        ]);
        let name = |s: &str| BackupName::parse(s).expect("name");
        let cases = [
            (Which::Latest, vec![name("cvp.20240102020010.tgz")]),
            (
                Which::All,
                vec![
                    name("cvp.20240103020010.tgz"),
                    name("cvp.20240102020010.tgz"),
                    name("cvp.20240101020010.tgz"),
                ],
            ),
            (
                Which::At(Stamp::parse("20240101020010").expect("stamp")),
                vec![name("cvp.20240101020010.tgz")],
            ),
            (
                Which::At(Stamp::parse("20230101020010").expect("stamp")),
                vec![],
            ),
        ];
        for (which, expected) in cases {
            assert_eq!(choose_sets(&listing, which, now), expected, "{which:?}");
        }
        // Sets from before manifests: the newest data file.
        let legacy = entries(&["cvp.20240101020010.tgz", "cvp.20240102020010.tgz"]);
        assert_eq!(
            choose_sets(&legacy, Which::Latest, now),
            vec![name("cvp.20240102020010.tgz")]
        );
    }

    #[test]
    fn which_parses_what_the_operator_types() {
        assert_eq!(Which::parse("all"), Some(Which::All));
        assert_eq!(Which::parse("latest"), Some(Which::Latest));
        assert!(matches!(Which::parse("20240101020010"), Some(Which::At(_))));
        assert!(matches!(
            Which::parse("cvp.20240101020010.tgz"),
            Some(Which::At(_))
        ));
        assert_eq!(Which::parse("yesterday"), None);
    }
}
