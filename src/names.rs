//! The file names CVP writes, and ours beside them. Nothing else in a directory is ours to
//! touch, so every deletion goes through `BackupName::parse`.

use std::fmt;

/// `YYYYMMDDhhmmss` as CVP writes it; the numeric order is the time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// The local time now, as CVP stamps its files.
    pub fn now() -> Stamp {
        Stamp::from_datetime(chrono::Local::now().naive_local())
    }

    pub fn from_datetime(time: chrono::NaiveDateTime) -> Stamp {
        let digits = time.format("%Y%m%d%H%M%S").to_string();
        Stamp(digits.parse().unwrap_or(0))
    }

    pub fn to_datetime(self) -> Option<chrono::NaiveDateTime> {
        chrono::NaiveDateTime::parse_from_str(&self.to_string(), "%Y%m%d%H%M%S").ok()
    }

    /// This stamp moved by `seconds` (either way); itself when that leaves the calendar.
    pub fn plus_seconds(self, seconds: i64) -> Stamp {
        self.to_datetime()
            .and_then(|t| t.checked_add_signed(chrono::TimeDelta::try_seconds(seconds)?))
            .map(Stamp::from_datetime)
            .unwrap_or(self)
    }

    pub fn parse(digits: &str) -> Option<Stamp> {
        if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Reject impossible dates so that a stray 14-digit name is never taken for a backup.
        chrono::NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok()?;
        digits.parse().ok().map(Stamp)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:014}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `cvp.<ts>.tgz`
    Data,
    /// `cvp.eosimages.<ts>.tgz`
    Images,
    /// `backup_cvp.<ts>.log`
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName {
    pub kind: Kind,
    pub stamp: Stamp,
}

impl BackupName {
    pub fn new(kind: Kind, stamp: Stamp) -> Self {
        BackupName { kind, stamp }
    }

    pub fn parse(name: &str) -> Option<BackupName> {
        let (kind, digits) = if let Some(rest) = name.strip_prefix("cvp.eosimages.") {
            (Kind::Images, rest.strip_suffix(".tgz")?)
        } else if let Some(rest) = name.strip_prefix("backup_cvp.") {
            (Kind::Log, rest.strip_suffix(".log")?)
        } else if let Some(rest) = name.strip_prefix("cvp.") {
            (Kind::Data, rest.strip_suffix(".tgz")?)
        } else {
            return None;
        };
        Some(BackupName::new(kind, Stamp::parse(digits)?))
    }

    pub fn file_name(&self) -> String {
        match self.kind {
            Kind::Data => format!("cvp.{}.tgz", self.stamp),
            Kind::Images => format!("cvp.eosimages.{}.tgz", self.stamp),
            Kind::Log => format!("backup_cvp.{}.log", self.stamp),
        }
    }

    /// What a data or images file of a failed backup is renamed to: no longer a CVP name,
    /// so nothing (this tool, cvpi, an operator's glob of `cvp.*.tgz`) takes it for a backup.
    pub fn failed_name(&self) -> String {
        format!("{}{FAILED_SUFFIX}", self.file_name())
    }

    /// `NAME.failed` back to NAME.
    pub fn parse_failed(name: &str) -> Option<BackupName> {
        BackupName::parse(name.strip_suffix(FAILED_SUFFIX)?)
    }

    /// The set manifest beside a data file on the server: one `sha256sum` line per member
    /// (images, data, log), so `sha256sum -c cvp.<ts>.set.sha256` checks the whole set.
    pub fn manifest_name(&self) -> String {
        format!("cvp.{}.set.sha256", self.stamp)
    }

    pub fn manifest_partial_name(&self) -> String {
        format!(".{}.cvpbc-part", self.manifest_name())
    }
}

const FAILED_SUFFIX: &str = ".failed";
const PARTIAL_SUFFIX: &str = ".cvpbc-part";

/// The file in a destination that names the node owning it (the first to write there).
pub const OWNER_MARKER: &str = ".cvp-backup-copy-owner";

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// A backup file as the server holds it: NAME, or NAME.age when encrypted (`seal`). Its
/// checksum file and partial upload are named after it, so `sha256sum -c` on the server
/// checks exactly the bytes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteFile {
    pub name: BackupName,
    pub sealed: bool,
}

impl RemoteFile {
    pub fn new(name: BackupName, sealed: bool) -> RemoteFile {
        RemoteFile { name, sealed }
    }

    pub fn plain(name: BackupName) -> RemoteFile {
        RemoteFile::new(name, false)
    }

    /// NAME or NAME.age.
    pub fn parse(file: &str) -> Option<RemoteFile> {
        match file.strip_suffix(crate::seal::SUFFIX) {
            Some(inner) => BackupName::parse(inner).map(|n| RemoteFile::new(n, true)),
            None => BackupName::parse(file).map(RemoteFile::plain),
        }
    }

    pub fn file_name(&self) -> String {
        if self.sealed {
            format!("{}{}", self.name.file_name(), crate::seal::SUFFIX)
        } else {
            self.name.file_name()
        }
    }

    /// The checksum file written beside each copied file, in `sha256sum` format.
    pub fn sidecar_name(&self) -> String {
        format!("{}.sha256", self.file_name())
    }

    /// Where an upload is written before it is complete. It starts with a dot and ends in our
    /// own suffix, so it never matches a CVP name and never counts as a backup.
    pub fn partial_name(&self) -> String {
        partial_of(&self.file_name())
    }

    /// Where the checksum file is written before it is renamed into place.
    pub fn sidecar_partial_name(&self) -> String {
        partial_of(&self.sidecar_name())
    }
}

impl fmt::Display for RemoteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// What a name in a remote destination is, as far as we are concerned. Anything else is not
/// ours and is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteName {
    Backup(RemoteFile),
    /// `X.sha256`, of the file X.
    Sidecar(RemoteFile),
    /// `cvp.<ts>.set.sha256`, of the data file with that stamp.
    Manifest(BackupName),
    /// `.X.cvpbc-part`: an upload of X (a backup, its sidecar or a manifest) not yet
    /// published; the name is that of the backup file it belongs to.
    Partial(BackupName),
}

impl RemoteName {
    pub fn parse(name: &str) -> Option<RemoteName> {
        if let Some(inner) = name.strip_prefix('.').and_then(|n| {
            n.strip_suffix(PARTIAL_SUFFIX)
                .or_else(|| strip_fresh_suffix(n))
        }) {
            return match RemoteName::parse(inner)? {
                RemoteName::Backup(f) | RemoteName::Sidecar(f) => Some(RemoteName::Partial(f.name)),
                RemoteName::Manifest(n) => Some(RemoteName::Partial(n)),
                RemoteName::Partial(_) => None,
            };
        }
        if let Some(digits) = name
            .strip_prefix("cvp.")
            .and_then(|n| n.strip_suffix(".set.sha256"))
        {
            return Stamp::parse(digits)
                .map(|s| RemoteName::Manifest(BackupName::new(Kind::Data, s)));
        }
        if let Some(target) = name.strip_suffix(".sha256") {
            return RemoteFile::parse(target).map(RemoteName::Sidecar);
        }
        RemoteFile::parse(name).map(RemoteName::Backup)
    }
}

/// The partial name a file is written under before it is renamed to `name`.
pub fn partial_of(name: &str) -> String {
    format!(".{name}{PARTIAL_SUFFIX}")
}

/// A partial name no earlier attempt used: `.X.cvpbc-part-<hex>`. An append-only server
/// keeps every partial (read-only, never truncated or removed by the node), so each attempt
/// writes a new one.
pub fn fresh_partial(partial: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{partial}-{nanos:x}{count:x}")
}

/// `X.cvpbc-part-<hex>` → `X`.
fn strip_fresh_suffix(name: &str) -> Option<&str> {
    let (inner, tag) = name.rsplit_once(&format!("{PARTIAL_SUFFIX}-"))?;
    (!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(inner)
}

/// Parse the first line of a `sha256sum` file: `<64 hex>  <name>` (or `<hex> *<name>`).
/// Returns the digest in lower case when the line names `expected_name`.
pub fn parse_sidecar(contents: &str, expected_name: &str) -> Option<String> {
    let line = contents.lines().next()?;
    let (digest, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (name == expected_name).then(|| digest.to_ascii_lowercase())
}

pub fn sidecar_line(digest: &str, name: &str) -> String {
    format!("{digest}  {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(s: &str) -> Stamp {
        Stamp::parse(s).expect("valid stamp")
    }

    #[test]
    fn parses_the_three_cvp_names() {
        let table = [
            (
                "cvp.20210715101112.tgz",
                Some((Kind::Data, "20210715101112")),
            ),
            (
                "cvp.eosimages.20210710020003.tgz",
                Some((Kind::Images, "20210710020003")),
            ),
            (
                "backup_cvp.20210715020003.log",
                Some((Kind::Log, "20210715020003")),
            ),
            ("cvp.2021071510111.tgz", None),
            ("cvp.202107151011123.tgz", None),
            ("cvp.20211315101112.tgz", None),
            ("cvp.20210715101112.tgz.sha256", None),
            (".cvp.20210715101112.tgz.cvpbc-part", None),
            ("cvp.eosimages.20210710020003.log", None),
            ("backup_cvp.20210715020003.tgz", None),
            ("xcvp.20210715101112.tgz", None),
            ("cvp.+0210715101112.tgz", None),
            ("cvp..tgz", None),
            ("", None),
        ];
        for (name, expected) in table {
            let parsed = BackupName::parse(name);
            assert_eq!(
                parsed.map(|n| (n.kind, n.stamp)),
                expected.map(|(k, s)| (k, stamp(s))),
                "{name}"
            );
            if let Some(parsed) = parsed {
                assert_eq!(parsed.file_name(), name, "round trip");
            }
        }
    }

    #[test]
    fn fresh_partials_are_partials_of_their_file_and_never_repeat() {
        let file = RemoteFile::plain(BackupName::parse("cvp.20210715101112.tgz").expect("name"));
        let (one, two) = (
            fresh_partial(&file.partial_name()),
            fresh_partial(&file.partial_name()),
        );
        assert_ne!(one, two);
        for name in [&one, &two, &fresh_partial(&file.sidecar_partial_name())] {
            assert_eq!(
                RemoteName::parse(name),
                Some(RemoteName::Partial(file.name)),
                "{name}"
            );
        }
        for not_ours in [
            ".cvp.20210715101112.tgz.cvpbc-part-",
            ".cvp.20210715101112.tgz.cvpbc-part-xyz",
            "cvp.20210715101112.tgz.cvpbc-part-12",
        ] {
            assert_eq!(RemoteName::parse(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn a_fresh_partial_is_a_partial_of_its_file() {
        // What the names fuzzer found its own rule missing: an append-only attempt's name.
        let name = BackupName::parse("cvp.55111103151060.tgz").unwrap();
        let fresh = fresh_partial(&RemoteFile::plain(name).partial_name());
        assert_eq!(RemoteName::parse(&fresh), Some(RemoteName::Partial(name)));
        assert_eq!(
            RemoteName::parse(".cvp.55111103151060.tgz.cvpbc-part-e"),
            Some(RemoteName::Partial(name))
        );
        assert_eq!(BackupName::parse(&fresh), None);
    }

    #[test]
    fn partial_and_sidecar_names_are_never_backups() {
        let name = BackupName::parse("cvp.20210715101112.tgz").unwrap();
        for file in [RemoteFile::plain(name), RemoteFile::new(name, true)] {
            assert_eq!(BackupName::parse(&file.partial_name()), None);
            assert_eq!(
                RemoteName::parse(&file.partial_name()),
                Some(RemoteName::Partial(name))
            );
            assert_eq!(
                RemoteName::parse(&file.sidecar_partial_name()),
                Some(RemoteName::Partial(name))
            );
            assert_eq!(BackupName::parse(&file.sidecar_name()), None);
            assert_eq!(
                RemoteName::parse(&file.sidecar_name()),
                Some(RemoteName::Sidecar(file))
            );
            assert_eq!(
                RemoteName::parse(&file.file_name()),
                Some(RemoteName::Backup(file))
            );
        }
        assert_eq!(RemoteName::parse("notes.txt.sha256"), None);
    }

    #[test]
    fn encrypted_files_are_the_backup_they_hold() {
        let name = BackupName::parse("cvp.eosimages.20210715101112.tgz").unwrap();
        let table = [
            (
                "cvp.eosimages.20210715101112.tgz.age",
                Some(RemoteFile::new(name, true)),
            ),
            (
                "cvp.eosimages.20210715101112.tgz",
                Some(RemoteFile::plain(name)),
            ),
            ("cvp.eosimages.20210715101112.tgz.age.age", None),
            ("cvp.eosimages.20210715101112.age", None),
            ("notes.age", None),
        ];
        for (text, expected) in table {
            assert_eq!(RemoteFile::parse(text), expected, "{text}");
            if let Some(file) = expected {
                assert_eq!(file.file_name(), text);
            }
        }
        assert_eq!(
            RemoteFile::new(name, true).sidecar_name(),
            "cvp.eosimages.20210715101112.tgz.age.sha256"
        );
    }

    #[test]
    fn remote_names_we_own_and_nothing_else() {
        let data = BackupName::parse("cvp.20210715101112.tgz").unwrap();
        let images = BackupName::parse("cvp.eosimages.20210715101112.tgz").unwrap();
        let table = [
            (
                "cvp.20210715101112.set.sha256",
                Some(RemoteName::Manifest(data)),
            ),
            (
                ".cvp.20210715101112.set.sha256.cvpbc-part",
                Some(RemoteName::Partial(data)),
            ),
            (
                ".cvp.20210715101112.tgz.cvpbc-part",
                Some(RemoteName::Partial(data)),
            ),
            (
                ".cvp.20210715101112.tgz.sha256.cvpbc-part",
                Some(RemoteName::Partial(data)),
            ),
            (
                ".cvp.eosimages.20210715101112.tgz.cvpbc-part",
                Some(RemoteName::Partial(images)),
            ),
            ("..cvp.20210715101112.tgz.cvpbc-part.cvpbc-part", None),
            ("cvp.20210715101112.tgz.cvpbc-part", None),
            (".cvp.20210715101112.tgz", None),
            (".notes.cvpbc-part", None),
            ("cvp.2021071510111.set.sha256", None),
            ("cvp.20210715101112.tgz.failed", None),
            (OWNER_MARKER, None),
        ];
        for (name, expected) in table {
            assert_eq!(RemoteName::parse(name), expected, "{name}");
        }
        assert_eq!(data.manifest_name(), "cvp.20210715101112.set.sha256");
    }

    #[test]
    fn failed_names_are_not_cvp_names_and_parse_back() {
        let data = BackupName::parse("cvp.20210715101112.tgz").unwrap();
        assert_eq!(data.failed_name(), "cvp.20210715101112.tgz.failed");
        assert_eq!(BackupName::parse(&data.failed_name()), None);
        assert_eq!(RemoteName::parse(&data.failed_name()), None);
        assert_eq!(BackupName::parse_failed(&data.failed_name()), Some(data));
        assert_eq!(BackupName::parse_failed("cvp.20210715101112.tgz"), None);
    }

    #[test]
    fn stamps_move_by_seconds_across_days() {
        assert_eq!(
            stamp("20211231235959").plus_seconds(1),
            stamp("20220101000000")
        );
        assert_eq!(
            stamp("20220101000000").plus_seconds(-3600),
            stamp("20211231230000")
        );
        let now = Stamp::now();
        assert_eq!(Stamp::parse(&now.to_string()), Some(now));
    }

    #[test]
    fn stamps_order_by_time() {
        assert!(stamp("20211231235959") < stamp("20220101000000"));
        assert_eq!(stamp("20220101000000").to_string(), "20220101000000");
    }

    #[test]
    fn sidecar_lines_round_trip_and_reject_other_names() {
        let digest = "ab".repeat(32);
        let line = sidecar_line(&digest, "cvp.20210715101112.tgz");
        assert_eq!(line, format!("{digest}  cvp.20210715101112.tgz\n"));
        assert_eq!(
            parse_sidecar(&line, "cvp.20210715101112.tgz"),
            Some(digest.clone())
        );
        assert_eq!(parse_sidecar(&line, "cvp.20210715101113.tgz"), None);
        let binary_mode = format!("{}  *x", "AB".repeat(32)).replacen("  *", " *", 1);
        assert_eq!(parse_sidecar(&binary_mode, "x"), Some("ab".repeat(32)));
        assert_eq!(parse_sidecar("abc  x\n", "x"), None);
        assert_eq!(parse_sidecar("", "x"), None);
    }
}
