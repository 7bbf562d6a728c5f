//! What the job keeps in `state_dir`: the record of the last run (for the operator and for
//! monitoring; no secret in it, so it is readable by others, 0644) and the history the next
//! nights need (the last set a backup made, archives of failed backups, a backup that was
//! running when the job died).

use crate::names::BackupName;
use crate::restore_set::{LastGood, RestoreSet};
use crate::safe_fs::{Dir, Mode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `state_dir` is created with this mode: the monitoring user reads the record as a member
/// of the job account's group.
pub const STATE_DIR_MODE: u32 = 0o750;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CopiedFile {
    pub name: String,
    pub bytes: u64,
    /// false: it was already on the remote with a matching checksum.
    pub uploaded: bool,
    pub sha256: Option<String>,
    /// Upload time, and the part of it hashing added (not set when nothing was uploaded).
    #[serde(default)]
    pub seconds: Option<f64>,
    #[serde(default)]
    pub hash_seconds: Option<f64>,
    /// Connections the upload went over.
    #[serde(default)]
    pub streams: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub version: String,
    pub started: String,
    pub finished: String,
    pub exit_code: i32,
    pub backup_ran: bool,
    pub backup_succeeded: Option<bool>,
    pub destination: String,
    /// The data file of the restore set this run chose (and, on success, verified).
    #[serde(default)]
    pub restore_set: Option<String>,
    pub files: Vec<CopiedFile>,
    pub bytes_uploaded: u64,
    pub seconds: f64,
    pub megabytes_per_second: f64,
    pub pruned_local: usize,
    pub pruned_remote: usize,
    pub errors: Vec<String>,
    /// When the newest run that ended with exit 0 finished (this one, or carried over from
    /// the record before): a failed night does not erase when things last went well.
    #[serde(default)]
    pub last_success: Option<String>,
    /// The data file of the newest set verified complete on the server (the recovery
    /// point): this run's, or carried over when this run verified none.
    #[serde(default)]
    pub recovery_point: Option<String>,
    /// When that set was last verified on the server: a bound on its age that a stamp from a
    /// clock set ahead cannot push into the future.
    #[serde(default)]
    pub recovery_point_verified: Option<String>,
    /// Data backups on the node and on the server after this run; None when this run could
    /// not tell (it did not reach the server, or could not list the backup folder).
    #[serde(default)]
    pub local_sets: Option<usize>,
    #[serde(default)]
    pub remote_sets: Option<usize>,
    /// The run was asked not to back up (`--no-backup`).
    #[serde(default)]
    pub no_backup: bool,
    /// Free space in `backup_dir` before the backup, and the floor it had to reach
    /// (`min_free_space`); None when not measured.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    #[serde(default)]
    pub free_floor_bytes: Option<u64>,
    /// Seconds the copy took, without the waits between retries; and those waits.
    #[serde(default)]
    pub copy_seconds: Option<f64>,
    #[serde(default)]
    pub retry_wait_seconds: Option<f64>,
    /// This run's own log in `state_dir`.
    #[serde(default)]
    pub log_file: Option<String>,
    /// This destination's own outcome (the night's backup included): `exit_code` is the
    /// run's, the worst of every destination's. Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_exit_code: Option<i32>,
    /// The destination's name (`main`, or NAME of `[Destination NAME]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_name: Option<String>,
    /// Whether the server refused, tonight, to let the node's credentials destroy a test
    /// file there (`immutable`); None: not tested (no connection, or a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
    /// The other destinations' parts of the night (`[Destination NAME]`), one record each,
    /// in the INI's order: their files, errors, recovery point and sets; this record's own
    /// destination fields are `main`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<RunRecord>,
    /// The last `verify` of this destination (carried over from record to record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<VerifyRecord>,
    /// When a `verify --read-data` last found every set it read whole there (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_back: Option<String>,
}

/// What `verify` found on one destination.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    /// When it finished (RFC 3339).
    pub finished: String,
    /// 0: every set whole; 5: a member damaged or missing; 4: unreachable.
    pub exit_code: i32,
    /// Whether every byte was read back (`--read-data`), or only listed.
    pub read_data: bool,
    /// The data files of the sets it verified.
    pub sets: Vec<String>,
    pub problems: Vec<String>,
}

impl RunRecord {
    /// One record per destination, `main` first, each with its own outcome as `exit_code`:
    /// what `status`, the metrics and nagios judge destination by destination.
    pub fn per_destination(&self) -> Vec<RunRecord> {
        let mut main = self.clone();
        main.extra.clear();
        main.exit_code = self.destination_exit_code.unwrap_or(self.exit_code);
        std::iter::once(main)
            .chain(self.extra.iter().cloned().map(|mut extra| {
                extra.exit_code = extra.destination_exit_code.unwrap_or(extra.exit_code);
                extra
            }))
            .collect()
    }

    /// Carry over from the record before, this record and each other destination's (each
    /// from the previous record's part for the same destination).
    pub fn carry_over_all(&mut self, previous: Option<&RunRecord>) {
        for extra in &mut self.extra {
            let before =
                previous.and_then(|p| p.extra.iter().find(|e| e.destination == extra.destination));
            extra.carry_over(before);
        }
        self.carry_over(previous);
    }

    /// Take from the record before what this run could not know itself: when the job last
    /// succeeded and the recovery point (both only for the same destination: another server
    /// holds none of it), and, for a run refused before reading its INI, the destination.
    /// Records written before these fields existed count by their exit code.
    pub fn carry_over(&mut self, previous: Option<&RunRecord>) {
        // A success is a night that verified a set on the server.
        let own_code = self.destination_exit_code.unwrap_or(self.exit_code);
        if own_code == 0 && self.recovery_point.is_some() && !self.finished.is_empty() {
            self.last_success = Some(self.finished.clone());
        }
        let Some(previous) = previous else { return };
        if self.destination.is_empty() {
            self.destination = previous.destination.clone();
        }
        if self.destination != previous.destination {
            return;
        }
        if self.last_verify.is_none() {
            self.last_verify = previous.last_verify.clone();
        }
        if self.last_read_back.is_none() {
            self.last_read_back = previous.last_read_back.clone();
        }
        let previous_success = previous.last_success.clone().or_else(|| {
            (previous.destination_exit_code.unwrap_or(previous.exit_code) == 0
                && previous.restore_set.is_some()
                && !previous.finished.is_empty())
            .then(|| previous.finished.clone())
        });
        if self.last_success.is_none() {
            self.last_success = previous_success;
        }
        let previous_point = match &previous.recovery_point {
            Some(point) => Some((point.clone(), previous.recovery_point_verified.clone())),
            None if previous.destination_exit_code.unwrap_or(previous.exit_code) == 0 => previous
                .restore_set
                .clone()
                .map(|set| (set, Some(previous.finished.clone()))),
            None => None,
        };
        match (previous_point, &self.recovery_point) {
            (Some((point, verified)), None) => {
                self.recovery_point = Some(point);
                self.recovery_point_verified = verified;
            }
            // The same set verified again (nights whose backup fails re-copy it): it is as old
            // as its first verification, however often it is checked.
            (Some((point, Some(verified))), Some(mine)) if point == *mine => {
                let now = self.recovery_point_verified.take();
                self.recovery_point_verified = Some(earlier(verified, now));
            }
            _ => {}
        }
    }
}

pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD)
}

const RECORD: &str = "last-run.json";
const HISTORY: &str = "history.json";

/// Open (creating it if needed) the state folder safely.
pub fn open_dir(state_dir: &Path) -> std::io::Result<Dir> {
    Dir::open_or_create(state_dir, STATE_DIR_MODE)
}

/// Write atomically: a reader never sees half a record.
pub fn save(state_dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(record)?;
    json.push(b'\n');
    open_dir(state_dir)?.replace(RECORD, &json, Mode::Force(0o644))
}

pub fn load(state_dir: &Path) -> std::io::Result<Option<RunRecord>> {
    let Some(bytes) = Dir::open(state_dir)
        .and_then(|dir| dir.read(RECORD, 16 * 1024 * 1024))
        .or_else(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(err),
        })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// What the next nights need to know about the past ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// The data file of the newest good set this tool knows: made by its last successful
    /// backup (or, before the first one, the first set it verified on the server). A set
    /// whose stamp merely says it is newer (after the clock was set back) does not replace it.
    #[serde(default)]
    pub last_good: Option<String>,
    /// The data files there were when `last_good` became it: all older than it.
    #[serde(default)]
    pub older_than_last_good: Vec<String>,
    /// Archives of failed backups that could not be renamed aside: never selected.
    #[serde(default)]
    pub failed: Vec<String>,
    /// The members of the sets this tool made or verified, as they were then: the truth
    /// about which images file and log belong to a data file (stamps only suggest it).
    #[serde(default)]
    pub sets: Vec<RecordedSet>,
    /// Present while the backup command runs: the CVP names there were before it. Found by
    /// the next run, it means the job died during a backup; what appeared since is failed.
    #[serde(default)]
    pub backup_started: Option<Vec<String>>,
    /// When that backup started (RFC 3339) and how long it could run (`backup_timeout` plus
    /// the grace before KILL): only files written in that window can be its. Absent in
    /// histories written before it existed.
    #[serde(default)]
    pub backup_window: Option<BackupWindow>,
    /// The data file of the newest set verified complete on the server: kept on the node
    /// beyond `limit` while later backups cannot be copied.
    #[serde(default)]
    pub last_verified: Option<String>,
    /// The encrypted copies this node uploaded and verified. Nothing on the node can decrypt
    /// one to compare it, so a NAME.age on the server counts as a copy of the local file only
    /// when it is one of these: same recipients, same local size, and the server's checksum
    /// file and size still those of what was sent.
    #[serde(default)]
    pub sealed: Vec<SealedUpload>,
    /// Files that replaced one of the same name on the server (NAME, sha256 now), whose new
    /// sha256 other sets' manifests may not list yet: kept until they are updated, so a
    /// night stopped before that leaves the work to the next one.
    #[serde(default)]
    pub restate: Vec<(String, String)>,
    /// `last_verified` and `restate` of the other destinations (`[Destination NAME]`), by
    /// name; `main`'s stay in the fields above, where earlier versions read them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub last_verified_on: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub restate_at: std::collections::BTreeMap<String, Vec<(String, String)>>,
    /// Archives on the node found whole by the upload's check (name, size): a later copy of
    /// one (another destination, a retry) is not inflated again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<(String, u64)>,
    /// Copies `verify --read-data` found damaged, by destination name: the next run copies
    /// them again when tonight's set has them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub damaged_at: std::collections::BTreeMap<String, Vec<String>>,
}

/// When a backup of ours ran, to tell what a backup the job did not see finish wrote from
/// what appeared later (an operator's backup after a restart, a set fetched back).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupWindow {
    /// RFC 3339.
    pub started: String,
    /// The longest it could run, in seconds (`backup_timeout` and the stop's grace).
    pub seconds: u64,
}

impl BackupWindow {
    pub fn starting_now(longest: std::time::Duration) -> BackupWindow {
        BackupWindow {
            started: chrono::Local::now().to_rfc3339(),
            seconds: longest.as_secs(),
        }
    }

    /// Whether a file last written at `modified` can be this backup's: written after it
    /// started (2 s of slack for coarse file system times) and before it can have ended: its
    /// timeout, or the node's restart (`booted`), whichever came first. (Not when the job
    /// died: the backup runs in a session of its own and may have gone on writing.) An
    /// unreadable start time proves nothing: the file counts.
    pub fn contains(
        &self,
        modified: std::time::SystemTime,
        booted: Option<std::time::SystemTime>,
    ) -> bool {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let Some(started) = chrono::DateTime::parse_from_rfc3339(&self.started)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
        else {
            return true;
        };
        // From a file others can write: no number in it may overflow (the longest
        // backup_timeout is a week; a month bounds any window), and times are compared as
        // they are, never converted (a file's time can be beyond any calendar).
        let longest = Duration::from_secs(self.seconds.min(31 * 86_400) + 2);
        let mut end: Option<SystemTime> = started.checked_add(longest);
        if let Some(booted) = booted.filter(|booted| *booted > started) {
            end = Some(end.map_or(booted, |end| end.min(booted)));
        }
        let from = started
            .checked_sub(Duration::from_secs(2))
            .unwrap_or(UNIX_EPOCH);
        modified >= from && end.is_none_or(|end| modified <= end)
    }
}

/// When this node last booted (`btime` in /proc/stat).
pub fn boot_time() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SealedUpload {
    /// NAME.age
    pub name: String,
    /// The ciphertext's sha256 and size, as sent.
    pub sha256: String,
    pub bytes: u64,
    /// The local file's size when it was encrypted.
    pub local_bytes: u64,
    /// `Recipients::fingerprint` of the recipients it was encrypted to.
    pub recipients: String,
    /// The destination it went to (its name, lower case); None: `main` (records of earlier
    /// versions, which had one destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

impl SealedUpload {
    /// Sent to `destination` (a name).
    pub fn went_to(&self, destination: &str) -> bool {
        match &self.destination {
            Some(to) => to.eq_ignore_ascii_case(destination),
            None => destination.eq_ignore_ascii_case(crate::config::MAIN),
        }
    }
}

/// One set's members, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordedSet {
    pub data: String,
    pub images: Option<String>,
    pub log: Option<String>,
}

impl History {
    /// Whether `name` of `size` bytes was found a whole archive.
    pub fn was_checked(&self, name: BackupName, size: u64) -> bool {
        let name = name.file_name();
        self.checked.iter().any(|(n, s)| *n == name && *s == size)
    }

    pub fn record_checked(&mut self, name: BackupName, size: u64) {
        let file = name.file_name();
        self.checked.retain(|(n, _)| *n != file);
        self.checked.push((file, size));
    }

    /// The copies found damaged on `destination` (remote file names).
    pub fn damaged_on(&self, destination: &str) -> Vec<String> {
        self.damaged_at
            .get(&destination.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// What `verify` found damaged on `destination` (an empty list: nothing).
    pub fn set_damaged(&mut self, destination: &str, names: Vec<String>) {
        let key = destination.to_ascii_lowercase();
        if names.is_empty() {
            self.damaged_at.remove(&key);
        } else {
            self.damaged_at.insert(key, names);
        }
    }

    /// A good copy of `name` is on `destination` again.
    pub fn mended(&mut self, destination: &str, name: &str) {
        let key = destination.to_ascii_lowercase();
        if let Some(names) = self.damaged_at.get_mut(&key) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.damaged_at.remove(&key);
            }
        }
    }

    /// Forget the checks of archives no longer on the node.
    pub fn keep_checked(&mut self, present: &[BackupName]) {
        self.checked
            .retain(|(n, _)| present.iter().any(|p| p.file_name() == *n));
    }

    /// The recorded sets whose names are all CVP names.
    pub fn known(&self) -> Vec<RestoreSet> {
        self.sets
            .iter()
            .filter_map(|set| {
                Some(RestoreSet {
                    data: BackupName::parse(&set.data)?,
                    images: match &set.images {
                        Some(name) => Some(BackupName::parse(name)?),
                        None => None,
                    },
                    log: match &set.log {
                        Some(name) => Some(BackupName::parse(name)?),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Record an encrypted upload (replacing an older record of the same name), keeping only
    /// the newest 200: more than any retention keeps.
    pub fn record_sealed(&mut self, upload: SealedUpload) {
        self.sealed
            .retain(|s| !(s.name == upload.name && s.destination == upload.destination));
        self.sealed.push(upload);
        let excess = self.sealed.len().saturating_sub(1000);
        self.sealed.drain(..excess);
    }

    /// The encrypted copies this node sent to `destination`.
    pub fn sealed_at(&self, destination: &str) -> Vec<SealedUpload> {
        self.sealed
            .iter()
            .filter(|s| s.went_to(destination))
            .cloned()
            .collect()
    }

    /// Record (or re-record) a set's members.
    pub fn record(&mut self, set: &RestoreSet) {
        let data = set.data.file_name();
        self.sets.retain(|s| s.data != data);
        self.sets.push(RecordedSet {
            data,
            images: set.images.map(|n| n.file_name()),
            log: set.log.map(|n| n.file_name()),
        });
    }

    pub fn last_good(&self) -> Option<LastGood> {
        Some(LastGood {
            data: self.last_good.as_deref().and_then(BackupName::parse)?,
            known_before: self
                .older_than_last_good
                .iter()
                .filter_map(|n| BackupName::parse(n))
                .collect(),
        })
    }

    pub fn last_verified(&self) -> Option<BackupName> {
        self.last_verified.as_deref().and_then(BackupName::parse)
    }

    /// The newest set verified complete on `destination`.
    pub fn last_verified_at(&self, destination: &str) -> Option<BackupName> {
        if destination.eq_ignore_ascii_case(crate::config::MAIN) {
            return self.last_verified();
        }
        self.last_verified_on
            .get(&destination.to_ascii_lowercase())
            .and_then(|name| BackupName::parse(name))
    }

    pub fn set_last_verified(&mut self, destination: &str, data: BackupName) {
        if destination.eq_ignore_ascii_case(crate::config::MAIN) {
            self.last_verified = Some(data.file_name());
        } else {
            self.last_verified_on
                .insert(destination.to_ascii_lowercase(), data.file_name());
        }
    }

    /// The replaced files whose new sha256 `destination`'s older manifests may not list yet.
    pub fn restate_on(&mut self, destination: &str) -> &mut Vec<(String, String)> {
        if destination.eq_ignore_ascii_case(crate::config::MAIN) {
            &mut self.restate
        } else {
            self.restate_at
                .entry(destination.to_ascii_lowercase())
                .or_default()
        }
    }

    pub fn failed(&self) -> Vec<BackupName> {
        self.failed
            .iter()
            .filter_map(|n| BackupName::parse(n))
            .collect()
    }
}

pub fn load_history(dir: &Dir) -> std::io::Result<History> {
    match dir.read(HISTORY, 1024 * 1024)? {
        None => Ok(History::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
            std::io::Error::other(format!(
                "{} is damaged ({err}); delete it and the next run starts a new one",
                dir.join(HISTORY).display()
            ))
        }),
    }
}

/// The history for commands that only read it (`--dry-run`, `list`): never creates the state
/// folder; an absent or unreadable one reads as no history.
pub fn peek_history(state_dir: &Path) -> History {
    Dir::open(state_dir)
        .ok()
        .and_then(|dir| load_history(&dir).ok())
        .unwrap_or_default()
}

pub fn save_history(dir: &Dir, history: &History) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(history)?;
    json.push(b'\n');
    dir.replace(HISTORY, &json, Mode::Force(0o644))
}

/// The earlier of two RFC 3339 times (the first when the second is missing or unreadable).
fn earlier(first: String, second: Option<String>) -> String {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match second {
        Some(second) => match (parse(&first), parse(&second)) {
            (Some(a), Some(b)) if b < a => second,
            _ => first,
        },
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_night_carries_the_last_success_and_recovery_point_for_its_destination() {
        let at = |exit_code: i32, finished: &str, destination: &str| RunRecord {
            exit_code,
            finished: finished.into(),
            destination: destination.into(),
            restore_set: Some(format!("cvp.{finished}.tgz")),
            ..RunRecord::default()
        };
        let with = |mut record: RunRecord, success: Option<&str>, point: Option<&str>| {
            record.last_success = success.map(String::from);
            record.recovery_point = point.map(String::from);
            record
        };
        /// This run, the record before, then last_success, recovery_point, destination.
        type Row = (
            RunRecord,
            Option<RunRecord>,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let table: Vec<Row> = vec![
            (
                with(at(0, "T2", "a"), None, Some("cvp.T2.tgz")),
                None,
                Some("T2"),
                Some("cvp.T2.tgz"),
                "a",
            ),
            // Exit 0 without a set verified on the server (stopped before the copy by an
            // older version): not a success.
            (at(0, "T2", "a"), None, None, None, "a"),
            (
                at(4, "T2", "a"),
                Some(RunRecord {
                    restore_set: None,
                    ..at(0, "T1", "a")
                }),
                None,
                None,
                "a",
            ),
            (at(4, "T2", "a"), None, None, None, "a"),
            // A record from before these fields: its exit code says whether it succeeded.
            (
                at(4, "T2", "a"),
                Some(at(0, "T1", "a")),
                Some("T1"),
                Some("cvp.T1.tgz"),
                "a",
            ),
            (at(4, "T2", "a"), Some(at(1, "T1", "a")), None, None, "a"),
            (
                at(4, "T3", "a"),
                Some(with(at(4, "T2", "a"), Some("T1"), Some("cvp.T1.tgz"))),
                Some("T1"),
                Some("cvp.T1.tgz"),
                "a",
            ),
            // This run verified a set: its own, not the one before.
            (
                with(at(0, "T3", "a"), None, Some("cvp.T3.tgz")),
                Some(with(at(0, "T2", "a"), Some("T2"), Some("cvp.T2.tgz"))),
                Some("T3"),
                Some("cvp.T3.tgz"),
                "a",
            ),
            // Another server holds nothing of the old one's.
            (at(4, "T2", "b"), Some(at(0, "T1", "a")), None, None, "b"),
            // Refused before its INI was read: the destination is the last one known.
            (
                at(3, "T2", ""),
                Some(at(0, "T1", "a")),
                Some("T1"),
                Some("cvp.T1.tgz"),
                "a",
            ),
        ];
        for (mut run, previous, success, point, destination) in table {
            let label = format!("{run:?} after {previous:?}");
            run.carry_over(previous.as_ref());
            assert_eq!(run.last_success.as_deref(), success, "{label}");
            assert_eq!(run.recovery_point.as_deref(), point, "{label}");
            assert_eq!(run.destination, destination, "{label}");
        }
        // The time the recovery point was verified travels with it; for a record from before
        // the field, that record's finish.
        let mut failed = at(4, "T3", "a");
        failed.carry_over(Some(&at(0, "T1", "a")));
        assert_eq!(failed.recovery_point_verified.as_deref(), Some("T1"));
        let mut again = at(4, "T4", "a");
        again.carry_over(Some(&failed));
        assert_eq!(
            (
                again.recovery_point.as_deref(),
                again.recovery_point_verified.as_deref()
            ),
            (Some("cvp.T1.tgz"), Some("T1"))
        );
        // Verified again on a later night (a failed backup re-copies the last good set): it
        // keeps its first verification time; a new set gets its own.
        let first = "2026-11-20T02:10:00+00:00";
        let later = "2026-11-26T02:10:00+00:00";
        let previous = RunRecord {
            recovery_point: Some("cvp.T1.tgz".into()),
            recovery_point_verified: Some(first.into()),
            ..at(0, first, "a")
        };
        let mut reverified = RunRecord {
            recovery_point: Some("cvp.T1.tgz".into()),
            recovery_point_verified: Some(later.into()),
            ..at(1, later, "a")
        };
        reverified.carry_over(Some(&previous));
        assert_eq!(reverified.recovery_point_verified.as_deref(), Some(first));
        let mut newer = RunRecord {
            recovery_point: Some("cvp.T2.tgz".into()),
            recovery_point_verified: Some(later.into()),
            ..at(0, later, "a")
        };
        newer.carry_over(Some(&previous));
        assert_eq!(newer.recovery_point_verified.as_deref(), Some(later));
    }

    #[test]
    fn a_record_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = RunRecord {
            exit_code: 5,
            files: vec![CopiedFile {
                name: "cvp.20240101020010.tgz".into(),
                bytes: 3,
                uploaded: true,
                sha256: None,
                seconds: Some(1.5),
                hash_seconds: Some(0.25),
                streams: Some(6),
            }],
            errors: vec!["disk full".into()],
            ..RunRecord::default()
        };
        save(dir.path(), &record).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(record));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(record_path(dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "readable by a monitoring user");
        assert_eq!(load(&dir.path().join("none")).expect("absent"), None);
    }

    #[test]
    fn a_dead_backup_s_window_ends_at_its_timeout_or_the_restart() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |seconds: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds);
        let window = BackupWindow {
            started: chrono::DateTime::<chrono::Utc>::from(at(0)).to_rfc3339(),
            seconds: 21_600,
        };
        // (booted, file written at, counts)
        let table = [
            (None, 0, true),
            (None, 21_600, true),
            (None, 21_700, false),
            // The node restarted at 65 min: an operator's backup at 70 min is not its.
            (Some(at(3_900)), 3_800, true),
            (Some(at(3_900)), 4_200, false),
            // A boot before the backup started says nothing about it.
            (Some(UNIX_EPOCH), 4_200, true),
        ];
        for (booted, written, counts) in table {
            assert_eq!(
                window.contains(at(written), booted),
                counts,
                "booted {booted:?} written {written}"
            );
        }
        assert!(
            !window.contains(UNIX_EPOCH, None),
            "written before it started"
        );
        // Numbers and times from files others can write never overflow or panic.
        let absurd = BackupWindow {
            seconds: u64::MAX,
            ..window.clone()
        };
        assert!(absurd.contains(at(3_600), Some(UNIX_EPOCH)));
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert!(!window.contains(far, None));
        for started in ["-9999-01-01T00:00:00+00:00", "+262142-01-01T00:00:00+00:00"] {
            let odd = BackupWindow {
                started: started.into(),
                ..window.clone()
            };
            let _ = odd.contains(far, Some(far));
        }
        let unreadable = BackupWindow {
            started: "yesterday".into(),
            ..window.clone()
        };
        assert!(unreadable.contains(UNIX_EPOCH, None));
        assert!(boot_time().is_some_and(|boot| boot > UNIX_EPOCH));
    }

    #[test]
    fn history_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = open_dir(dir.path()).expect("open");
        assert_eq!(load_history(&handle).expect("empty"), History::default());
        let history = History {
            last_good: Some("cvp.20240101020010.tgz".into()),
            older_than_last_good: vec!["cvp.20231231020010.tgz".into()],
            failed: vec!["cvp.20240102020010.tgz".into(), "junk".into()],
            backup_started: Some(vec![]),
            ..History::default()
        };
        save_history(&handle, &history).expect("save");
        let back = load_history(&handle).expect("load");
        assert_eq!(back, history);
        assert_eq!(back.failed().len(), 1, "only CVP names count");
    }
}
