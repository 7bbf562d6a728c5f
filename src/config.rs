//! The INI file: a superset of the one the Python scripts read, loaded and validated once.
//! Option names are case-insensitive (`keyFile` = `keyfile`), as with ConfigParser; values are
//! taken literally (no quotes, escapes or inline comments), as ConfigParser does.

use crate::error::{Error, Result};
use ini::{Ini, ParseOption, Properties};
use std::path::{Path, PathBuf};

pub const DEFAULT_INI: &str = "/etc/cvp-backup-copy/backup.ini";
pub const INI_ENV: &str = "CVP_BACKUP_COPY_INI";
pub const DEFAULT_LIMIT: u32 = 5;
/// The INI the RPM installs, every option explained: `edit` starts a missing INI from it.
pub const DEFAULT_INI_TEXT: &str = include_str!("../packaging/backup.ini");

pub const SERVER: &str = "Server_Settings";
pub const BACKUP: &str = "Backup_Settings";

const SERVER_OPTIONS: &[&str] = &[
    "user",
    "server",
    "password",
    "keyFile",
    "destination",
    "port",
    "identity_file",
    "known_hosts",
    "host_key_policy",
    "remote_limit",
    "retries",
    "retry_wait",
    "timeout",
    "streams",
    "ciphers",
    "sync_timeout",
    "encrypt_to",
    "region",
    "s3_virtual_host",
    "ca_file",
    "append_only",
    "lock_days",
    "lock_mode",
];

/// Options only an S3 destination reads.
pub const S3_ONLY_OPTIONS: &[&str] = &[
    "region",
    "s3_virtual_host",
    "ca_file",
    "lock_days",
    "lock_mode",
];

/// What a `[Destination NAME]` takes from `[Server_Settings]` when it does not say: how keys
/// and hosts are trusted and how hard to try. Where and as whom (server, port, user,
/// password, identity_file, destination), what to keep there (remote_limit) and the S3
/// settings are each destination's own; encrypt_to is inherited (a second copy must not
/// leave in clear by omission; `encrypt_to = none` turns it off there).
pub const INHERITED_OPTIONS: &[&str] = &[
    "keyFile",
    "known_hosts",
    "host_key_policy",
    "retries",
    "retry_wait",
    "timeout",
    "sync_timeout",
    "streams",
    "ciphers",
    "encrypt_to",
];
const BACKUP_OPTIONS: &[&str] = &[
    "limit",
    "backup_command",
    "backup_user",
    "backup_dir",
    "log_dir",
    "state_dir",
    "syslog_facility",
    "backup_timeout",
    "node_name",
    "metrics_dir",
    "ping_url",
    "min_free_space",
];

/// Defaults of optional settings, shown by `edit`; `run` uses the same values.
pub fn default_value(option: &str) -> Option<&'static str> {
    Some(match option.to_ascii_lowercase().as_str() {
        "port" => "22",
        "known_hosts" => "~/.ssh/known_hosts",
        "host_key_policy" => "accept-new",
        "remote_limit" => "0",
        "retries" => "3",
        "retry_wait" => "10",
        "timeout" => "30",
        "streams" => "auto",
        "sync_timeout" => "900",
        "limit" => "5",
        "backup_timeout" => "21600",
        "backup_command" => "/cvpi/bin/cvpi backup cvp",
        "backup_user" => "cvp",
        "backup_dir" => "/data/cvpbackup",
        "log_dir" => "/cvpi/logs/cvpbackup",
        "state_dir" => "/var/lib/cvp-backup-copy",
        "syslog_facility" => "user",
        "min_free_space" => "auto",
        "region" => "us-east-1",
        "s3_virtual_host" => "no",
        "append_only" => "no",
        "lock_mode" => "compliance",
        _ => return None,
    })
}

fn default_of(option: &str) -> &'static str {
    default_value(option).unwrap_or_default()
}

fn parse_number(text: &str, min: u64, max: u64) -> std::result::Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a whole number from {min} to {max}"
        )),
    }
}

/// `limit`: at least 1; 0 would leave the node without a backup, so its message says what to
/// set instead.
fn parse_limit(text: &str) -> std::result::Result<u32, String> {
    if text.trim() == "0" {
        return Err("0 would delete every backup on the node: set 1 or more \
             (`cvp-backup-copy edit --set Backup_Settings.limit=5`; 5 is the default)"
            .into());
    }
    parse_number(text, 1, u32::MAX as u64).map(|n| n as u32)
}

/// `auto`, or a number of connections that pins it.
fn parse_streams(text: &str) -> std::result::Result<Streams, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Streams::Auto);
    }
    parse_number(text, 1, 16)
        .map(|n| Streams::Fixed(n as usize))
        .map_err(|_| format!("`{text}` is neither `auto` nor a whole number from 1 to 16"))
}

fn parse_yes_no(text: &str) -> std::result::Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("`{text}`: give yes or no")),
    }
}

fn parse_policy(text: &str) -> std::result::Result<HostKeyPolicy, String> {
    match text {
        "accept-new" => Ok(HostKeyPolicy::AcceptNew),
        "strict" => Ok(HostKeyPolicy::Strict),
        other => Err(format!("`{other}` is not one of accept-new, strict")),
    }
}

fn parse_facility(text: &str) -> std::result::Result<syslog::Facility, String> {
    text.parse::<syslog::Facility>().map_err(|_| {
        format!("`{text}` is not a syslog facility (user, daemon, local0..local7, ...)")
    })
}

/// A user name as `useradd` makes them: nothing a shell or `su` would read as more.
fn parse_user(text: &str) -> std::result::Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a user name (letters, digits, _ - . only)"
        ))
    }
}

fn parse_command(text: &str) -> std::result::Result<Vec<String>, String> {
    match shlex::split(text) {
        Some(words) if !words.is_empty() => Ok(words),
        _ => Err("empty or has unbalanced quotes".into()),
    }
}

fn all_options() -> impl Iterator<Item = &'static str> {
    KNOWN_OPTIONS
        .iter()
        .flat_map(|(_, options)| options.iter().copied())
}

/// "; did you mean `user`?" for a name one or two typos from a known one; else nothing.
pub fn suggestion<'a>(typed: &str, known: impl Iterator<Item = &'a str>) -> String {
    let typed = typed.to_ascii_lowercase();
    known
        .map(|name| {
            (
                strsim::levenshtein(&typed, &name.to_ascii_lowercase()),
                name,
            )
        })
        .filter(|(distance, _)| *distance <= 2.min(typed.len().saturating_sub(1)))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| format!("; did you mean `{name}`?"))
        .unwrap_or_default()
}

/// The options, by section and in the order `edit` offers them, spelled canonically.
pub const KNOWN_OPTIONS: [(&str, &[&str]); 2] =
    [(SERVER, SERVER_OPTIONS), (BACKUP, BACKUP_OPTIONS)];

/// Check one value as `run` would read it; `base` resolves relative paths. `password` is a
/// token that only `keygen` and `edit` write, so it is not accepted here.
pub fn check_value(
    section: &str,
    option: &str,
    value: &str,
    ini: &Path,
) -> std::result::Result<(), String> {
    let value = value.trim();
    let home = KNOWN_OPTIONS
        .iter()
        .find(|(_, options)| options.iter().any(|o| o.eq_ignore_ascii_case(option)))
        .map(|(s, _)| *s);
    match home {
        None => {
            return Err(format!(
                "{option} is not an option this tool reads{}",
                suggestion(option, all_options())
            ))
        }
        Some(home)
            if !(home.eq_ignore_ascii_case(section)
                || home == SERVER && destination_section(section).is_some()) =>
        {
            return Err(format!("{option} belongs in [{home}], not [{section}]"))
        }
        Some(_) if option.eq_ignore_ascii_case("password") => {
            return Err("the password is set with `edit` on a terminal or --password-stdin".into())
        }
        Some(_) => {}
    }
    if value.is_empty() || value.contains("{{") {
        return Err("a value is required".into());
    }
    // One line: a carriage return or another control character could add options.
    if value.chars().any(char::is_control) {
        return Err("a value is one line of text (no control characters)".into());
    }
    let path = |v: &str| resolve_against(ini, v);
    match option.to_ascii_lowercase().as_str() {
        "port" => parse_number(value, 1, u16::MAX as u64).map(drop),
        "remote_limit" | "retries" | "retry_wait" => {
            parse_number(value, 0, u32::MAX as u64).map(drop)
        }
        "timeout" | "sync_timeout" => parse_number(value, 1, 86_400).map(drop),
        "backup_timeout" => parse_number(value, 1, 7 * 86_400).map(drop),
        "streams" => parse_streams(value).map(drop),
        "s3_virtual_host" | "append_only" => parse_yes_no(value).map(drop),
        "lock_days" => parse_number(value, 1, MAX_LOCK_DAYS).map(drop),
        "lock_mode" => parse_lock_mode(value).map(drop),
        "ca_file" if !path(value).is_file() => {
            Err(format!("{} does not exist", path(value).display()))
        }
        "limit" => parse_limit(value).map(drop),
        "host_key_policy" => parse_policy(value).map(drop),
        "syslog_facility" => parse_facility(value).map(drop),
        "backup_command" => parse_command(value).map(drop),
        "backup_user" => parse_user(value).map(drop),
        "keyfile" => crate::secret::load_key(&path(value))
            .map(drop)
            .map_err(|e| e.message),
        "encrypt_to" => {
            let base = ini.parent().unwrap_or(Path::new("."));
            crate::seal::Recipients::parse(value, Some(base)).map(drop)
        }
        "metrics_dir" if !path(value).is_dir() => Err(format!(
            "{} is not a folder (node_exporter's --collector.textfile.directory)",
            path(value).display()
        )),
        "ping_url" => crate::monitor::ping::check_url(value),
        "min_free_space" => crate::space::parse_setting(value).map(drop),
        "identity_file" if !path(value).is_file() => {
            Err(format!("{} does not exist", path(value).display()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Record an unknown host's key; refuse a changed one.
    AcceptNew,
    /// Refuse unknown hosts.
    Strict,
}

/// Where a destination keeps the sets: a folder over SFTP, or a bucket (and prefix) on an
/// S3-compatible object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    Sftp,
    S3(S3Settings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `https://host[:port]` (or `http://`), without a path.
    pub endpoint: String,
    pub bucket: String,
    /// Inside the bucket, without slashes at either end; empty: the bucket's top.
    pub prefix: String,
    pub region: String,
    /// `bucket.host` requests instead of `host/bucket` (AWS; path style suits the rest).
    pub virtual_host: bool,
    /// A private CA's certificate(s), PEM, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `lock_days`: every object written carries a retention, extended each night for the
    /// sets kept there.
    pub lock: Option<ObjectLock>,
}

/// S3 Object Lock retention the node sets on what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub days: u32,
    pub mode: LockMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody can shorten or lift it, the bucket's owner included.
    Compliance,
    /// Accounts with s3:BypassGovernanceRetention can.
    Governance,
}

impl LockMode {
    /// As the S3 API spells it.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// A hundred years: beyond it a retention date is a typo.
const MAX_LOCK_DAYS: u64 = 36_500;

fn parse_lock_mode(text: &str) -> std::result::Result<LockMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "compliance" => Ok(LockMode::Compliance),
        "governance" => Ok(LockMode::Governance),
        _ => Err(format!("`{text}` is neither `compliance` nor `governance`")),
    }
}

impl S3Settings {
    /// `PREFIX/NAME`, the key of a file.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `main` for `[Server_Settings]`, else NAME of `[Destination NAME]`.
    pub name: String,
    pub kind: DestinationKind,
    /// SFTP: the user; S3: the access key ID.
    pub user: String,
    pub host: String,
    pub port: u16,
    /// Fernet token; decrypted only when needed.
    pub password_token: Option<String>,
    pub key_file: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub destination: String,
    /// 0: never delete on the remote.
    pub remote_limit: u32,
    /// SFTP: never remove, truncate, overwrite or chmod anything there (files are created
    /// 0444 and published by renames that cannot replace); for servers whose sftp-server
    /// refuses those requests to the node's account.
    pub append_only: bool,
    /// Further attempts per file after a connection or transfer error.
    pub retries: u32,
    /// Seconds before the first retry; doubles each time.
    pub retry_wait: u64,
    /// Seconds to connect, and the longest the server may leave one operation unanswered.
    pub timeout: u64,
    /// Connections a large file is copied over at once.
    pub streams: Streams,
    /// Seconds the server may take to sync and close a file (a slow NAS flushing GBs).
    pub sync_timeout: u64,
    /// Cipher preference (OpenSSH names, comma-separated); None: AES-GCM first with AES-NI.
    pub ciphers: Option<String>,
    /// Who the files on the server are encrypted to (age); None: they are stored as they are.
    pub encrypt_to: Option<std::sync::Arc<crate::seal::Recipients>>,
}

/// How many connections a large file goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Sized from the round-trip time measured at connect (`transfer::auto_streams`).
    Auto,
    Fixed(usize),
}

impl std::fmt::Display for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Streams::Auto => f.write_str("auto"),
            Streams::Fixed(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Set only when the INI has `limit`: it then wins over `--limit`.
    pub limit: Option<u32>,
    pub command: Vec<String>,
    pub user: String,
    pub backup_dir: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub syslog_facility: syslog::Facility,
    /// The backup command is stopped (its whole process group) after this long.
    pub timeout: std::time::Duration,
    /// The name this node claims its destination with (default: the host name).
    pub node_name: String,
    /// node_exporter's textfile folder, where each run leaves `cvp_backup_copy.prom`.
    pub metrics_dir: Option<PathBuf>,
    /// Pinged as a run starts (`/start`), succeeds, and fails (`/fail`).
    pub ping_url: Option<String>,
    /// The free space `backup_dir` must have before a backup starts.
    pub min_free_space: crate::space::FloorSetting,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// `[Server_Settings]`: the destination called `main`.
    pub server: ServerConfig,
    /// `[Destination NAME]` sections, in the file's order.
    pub extra: Vec<ServerConfig>,
    pub backup: BackupConfig,
    /// Unknown sections and options: reported, never fatal.
    pub warnings: Vec<String>,
}

impl ServerConfig {
    /// `user@server:destination`, or `s3://BUCKET/PREFIX@host` (never the access key).
    pub fn label(&self) -> String {
        match &self.kind {
            DestinationKind::Sftp => destination_label(&self.user, &self.host, &self.destination),
            DestinationKind::S3(s3) => s3_label(
                &format!(
                    "s3://{}{}{}",
                    s3.bucket,
                    if s3.prefix.is_empty() { "" } else { "/" },
                    s3.prefix
                ),
                &self.host,
            ),
        }
    }

    /// `destination main (user@server:/dir)`, for messages that speak of several.
    pub fn describe(&self) -> String {
        format!("destination {} ({})", self.name, self.label())
    }

    pub fn s3(&self) -> Option<&S3Settings> {
        match &self.kind {
            DestinationKind::S3(settings) => Some(settings),
            DestinationKind::Sftp => None,
        }
    }
}

impl Config {
    /// Every destination, `main` first.
    pub fn destinations(&self) -> impl Iterator<Item = &ServerConfig> {
        std::iter::once(&self.server).chain(self.extra.iter())
    }

    /// The destination called `name` (`main` is `[Server_Settings]`).
    pub fn destination(&self, name: &str) -> Result<&ServerConfig> {
        self.destinations()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = self.destinations().map(|d| d.name.as_str()).collect();
                Error::config(format!(
                    "no destination `{name}` in {}: it has {}{}",
                    self.path.display(),
                    names.join(", "),
                    suggestion(name, names.iter().copied())
                ))
            })
    }
}

/// Two destinations that are one place (the same label, a folder's trailing `/` aside).
fn same_place(a: &ServerConfig, b: &ServerConfig) -> bool {
    let place = |d: &ServerConfig| (d.port, d.label().trim_end_matches('/').to_ascii_lowercase());
    place(a) == place(b)
}

/// The name `[Server_Settings]` goes by in messages, labels and options.
pub const MAIN: &str = "main";
/// `[Destination NAME]`.
pub const DESTINATION_PREFIX: &str = "Destination ";

/// NAME of a `[Destination NAME]` section.
pub fn destination_section(section: &str) -> Option<&str> {
    let (word, name) = section.split_once(' ')?;
    word.eq_ignore_ascii_case(DESTINATION_PREFIX.trim())
        .then(|| name.trim())
}

pub fn check_destination_name(name: &str) -> std::result::Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "`{name}` is not a destination name: letters, digits, `-` and `_` only"
        ));
    }
    if name.eq_ignore_ascii_case(MAIN) {
        return Err("`main` is [Server_Settings]'s name: choose another".into());
    }
    Ok(())
}

/// The label of an S3 destination: `s3://BUCKET/PREFIX@host[:port]`.
pub fn s3_label(destination: &str, endpoint: &str) -> String {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .trim_end_matches('/');
    format!("{destination}@{host}")
}

/// `s3://BUCKET[/PREFIX]`: the bucket and the prefix (no slashes at its ends).
pub fn parse_s3_destination(text: &str) -> Option<std::result::Result<(String, String), String>> {
    let rest = text.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Some(Err(format!(
            "`{bucket}` is not a bucket name (3-63 lower-case letters, digits, `-`, `.`)"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..")
        || prefix.contains("//")
        || prefix.chars().any(|c| c.is_control())
    {
        return Some(Err(format!("`{prefix}` is not a usable prefix")));
    }
    Some(Ok((bucket.to_string(), prefix.to_string())))
}

/// `https://host[:port]` or `http://...`, nothing after the authority.
pub fn parse_endpoint(text: &str) -> std::result::Result<String, String> {
    let text = text.trim_end_matches('/');
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "`{text}`: an S3 destination's server is its endpoint, https://host[:port]"
        ));
    };
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "`{scheme}://`: the endpoint must be https:// or http://"
        ));
    }
    if rest.is_empty() || rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "`{text}`: give only https://host[:port] (the bucket goes in destination)"
        ));
    }
    Ok(text.to_string())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            Error::config(format!(
                "cannot read configuration {}: {err}",
                path.display()
            ))
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        // A byte order mark (Notepad's UTF-8) is not part of the first section's name.
        let text = text.strip_prefix(crate::ini_edit::BOM).unwrap_or(text);
        refuse_duplicates(text, path)?;
        let options = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..ParseOption::default()
        };
        // ConfigParser keeps a trailing backslash (the seed's example destination ends in
        // one); rust-ini would join the next line. A space after it stops that, and values
        // are trimmed.
        let text = text.replace("\\\r\n", "\\ \r\n").replace("\\\n", "\\ \n");
        let ini = Ini::load_from_str_opt(&text, options).map_err(|err| {
            Error::config(format!("{}: not a valid INI file: {err}", path.display()))
        })?;
        let reader = Reader {
            path,
            ini: &ini,
            base: base_dir(path),
        };
        let mut warnings = reader.unknown_entries();

        let server = reader.destination(reader.section(SERVER)?, SERVER, MAIN, None)?;
        let mut extra: Vec<ServerConfig> = Vec::new();
        for (section, props) in ini.iter() {
            let Some(name) = section.and_then(destination_section) else {
                continue;
            };
            let section = section.unwrap_or_default();
            if let Err(why) = check_destination_name(name) {
                return Err(Error::config(format!(
                    "{}: [{section}]: {why}",
                    path.display()
                )));
            }
            if extra.iter().any(|d| d.name.eq_ignore_ascii_case(name)) {
                return Err(Error::config(format!(
                    "{}: [{section}] is given twice",
                    path.display()
                )));
            }
            let added = reader.destination(props, section, name, Some(&server))?;
            // Two destinations at one place would abort and prune each other's uploads.
            if let Some(same) = std::iter::once(&server)
                .chain(extra.iter())
                .find(|d| same_place(d, &added))
            {
                return Err(Error::config(format!(
                    "{}: [{section}] is the same place as destination {} ({}): give each \
                     destination its own server, folder or bucket prefix",
                    path.display(),
                    same.name,
                    added.label()
                )));
            }
            extra.push(added);
        }

        let backup = ini.section(Some(BACKUP));
        let limit = match backup {
            Some(props) => match reader.optional(props, BACKUP, "limit")? {
                Some(text) => {
                    Some(parse_limit(&text).map_err(|why| reader.bad(BACKUP, "limit", &why))?)
                }
                None => None,
            },
            None => None,
        };
        let get = |name: &str| -> Result<Option<String>> {
            match backup {
                Some(props) => reader.optional(props, BACKUP, name),
                None => Ok(None),
            }
        };
        let command_text =
            get("backup_command")?.unwrap_or_else(|| default_of("backup_command").into());
        let command = parse_command(&command_text)
            .map_err(|why| reader.bad(BACKUP, "backup_command", &why))?;
        let dir = |name: &str| -> Result<PathBuf> {
            Ok(get(name)?
                .map(|v| reader.resolve(&v))
                .unwrap_or_else(|| PathBuf::from(default_of(name))))
        };
        let backup_timeout = match backup {
            Some(props) => reader.number(props, BACKUP, "backup_timeout", 1, 7 * 86_400)?,
            None => None,
        }
        .unwrap_or_else(|| default_of("backup_timeout").parse().unwrap_or(21_600));
        let facility_name =
            get("syslog_facility")?.unwrap_or_else(|| default_of("syslog_facility").into());
        let syslog_facility = parse_facility(&facility_name)
            .map_err(|why| reader.bad(BACKUP, "syslog_facility", &why))?;
        let min_free_space = crate::space::parse_setting(
            &get("min_free_space")?.unwrap_or_else(|| default_of("min_free_space").into()),
        )
        .map_err(|why| reader.bad(BACKUP, "min_free_space", &why))?;
        let backup = BackupConfig {
            limit,
            command,
            user: parse_user(
                &get("backup_user")?.unwrap_or_else(|| default_of("backup_user").into()),
            )
            .map_err(|why| reader.bad(BACKUP, "backup_user", &why))?,
            backup_dir: dir("backup_dir")?,
            log_dir: dir("log_dir")?,
            state_dir: dir("state_dir")?,
            syslog_facility,
            timeout: std::time::Duration::from_secs(backup_timeout),
            node_name: get("node_name")?.unwrap_or_else(crate::claim::node_name),
            metrics_dir: get("metrics_dir")?.map(|v| reader.resolve(&v)),
            ping_url: match get("ping_url")? {
                Some(url) => Some(
                    crate::monitor::ping::check_url(&url)
                        .map(|()| url)
                        .map_err(|why| reader.bad(BACKUP, "ping_url", &why))?,
                ),
                None => None,
            },
            min_free_space,
        };
        if let Some(missing_backup) = backup_section_missing(&ini) {
            warnings.push(missing_backup);
        }

        Ok(Config {
            path: path.to_path_buf(),
            server,
            extra,
            backup,
            warnings,
        })
    }

    /// The number of local data backups to keep: the INI's `limit` wins when set (as in the
    /// Python script), then `--limit`, then 5.
    pub fn effective_limit(&self, cli_limit: Option<u32>) -> Result<u32> {
        if cli_limit == Some(0) {
            return Err(Error::config(
                "--limit 0 would delete every backup: give 1 or more",
            ));
        }
        Ok(self.backup.limit.or(cli_limit).unwrap_or(DEFAULT_LIMIT))
    }
}

/// An option given twice is ambiguous (ConfigParser refuses it; rust-ini would read one and
/// `edit` change the other): a configuration error naming both lines.
pub fn refuse_duplicates(text: &str, path: &Path) -> Result<()> {
    let doc = crate::ini_edit::IniDocument::parse(text);
    match doc.duplicates().first() {
        None => Ok(()),
        Some(dup) => Err(Error::config(format!(
            "{}: [{}] {} is set twice, on line {} and on line {}: keep one of them",
            path.display(),
            dup.section,
            dup.option,
            dup.first_line,
            dup.second_line
        ))),
    }
}

/// Where a run records itself even when its configuration is unusable: the INI's
/// `state_dir` when that much of it can be read, else the default (when it exists: a record
/// is never the reason a folder is created).
pub fn state_dir_hint(path: &Path) -> Option<PathBuf> {
    let from_ini = backup_setting_hint(path, "state_dir").map(|v| resolve_against(path, &v));
    from_ini.or_else(|| {
        let default = PathBuf::from(default_of("state_dir"));
        default.is_dir().then_some(default)
    })
}

/// A `[Backup_Settings]` value read leniently, for an INI that does not load: where a
/// refused run still leaves its record and tells monitoring.
pub fn backup_setting_hint(path: &Path, option: &str) -> Option<String> {
    setting_hint(path, BACKUP, option)
}

fn setting_hint(path: &Path, section: &str, option: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc = crate::ini_edit::IniDocument::parse(&text);
    doc.get(section, option)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && !v.contains("{{"))
}

/// The destination (`user@server:destination`, as runs label it) of an INI that does not
/// load, read leniently: a refused night's record still says where it was to go.
pub fn destination_hint(path: &Path) -> Option<String> {
    let get = |option| setting_hint(path, SERVER, option);
    Some(destination_label(
        &get("user")?,
        &get("server")?,
        &get("destination")?,
    ))
}

/// How a destination is named in logs, records and metrics: `user@server:destination`.
pub fn destination_label(user: &str, host: &str, destination: &str) -> String {
    format!("{user}@{host}:{destination}")
}

fn backup_section_missing(ini: &Ini) -> Option<String> {
    ini.section(Some(BACKUP))
        .is_none()
        .then(|| format!("no [{BACKUP}] section: using the defaults"))
}

struct Reader<'a> {
    path: &'a Path,
    ini: &'a Ini,
    base: PathBuf,
}

impl Reader<'_> {
    fn bad(&self, section: &str, option: &str, what: &str) -> Error {
        Error::config(format!(
            "{}: [{section}] {option}: {what}",
            self.path.display()
        ))
    }

    fn section(&self, name: &str) -> Result<&Properties> {
        self.ini.section(Some(name)).ok_or_else(|| {
            Error::config(format!("{}: missing section [{name}]", self.path.display()))
        })
    }

    fn optional(&self, props: &Properties, section: &str, option: &str) -> Result<Option<String>> {
        let Some(value) = props.get(option).map(str::trim) else {
            return Ok(None);
        };
        if value.contains("{{") {
            return Err(self.bad(
                section,
                option,
                "not configured (still the placeholder): run `cvp-backup-copy edit`",
            ));
        }
        Ok((!value.is_empty()).then(|| value.to_string()))
    }

    fn required(&self, props: &Properties, section: &str, option: &str) -> Result<String> {
        self.optional(props, section, option)?.ok_or_else(|| {
            self.bad(
                section,
                option,
                "missing or empty: run `cvp-backup-copy edit`",
            )
        })
    }

    fn number(
        &self,
        props: &Properties,
        section: &str,
        option: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>> {
        let Some(text) = self.optional(props, section, option)? else {
            return Ok(None);
        };
        parse_number(&text, min, max)
            .map(Some)
            .map_err(|why| self.bad(section, option, &why))
    }

    fn path(&self, props: &Properties, section: &str, option: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .optional(props, section, option)?
            .map(|v| self.resolve(&v)))
    }

    fn resolve(&self, value: &str) -> PathBuf {
        resolve(&self.base, value)
    }

    /// One destination's section; `main` (None) is `[Server_Settings]`, whose values the
    /// others inherit (`INHERITED_OPTIONS`).
    fn destination(
        &self,
        props: &Properties,
        section: &str,
        name: &str,
        main: Option<&ServerConfig>,
    ) -> Result<ServerConfig> {
        let user = self.required(props, section, "user")?;
        let host = self.required(props, section, "server")?;
        let destination = self.required(props, section, "destination")?;
        let port = self
            .number(props, section, "port", 1, u16::MAX as u64)?
            .unwrap_or(22) as u16;
        let password_token = self.optional(props, section, "password")?;
        let key_file = match self.path(props, section, "keyfile")? {
            Some(path) => Some(path),
            None => main.and_then(|m| m.key_file.clone()),
        };
        let identity_file = self.path(props, section, "identity_file")?;
        let kind = match parse_s3_destination(&destination) {
            None => DestinationKind::Sftp,
            Some(parsed) => {
                let (bucket, prefix) =
                    parsed.map_err(|why| self.bad(section, "destination", &why))?;
                let endpoint =
                    parse_endpoint(&host).map_err(|why| self.bad(section, "server", &why))?;
                let virtual_host = match self.optional(props, section, "s3_virtual_host")? {
                    None => false,
                    Some(text) => parse_yes_no(&text)
                        .map_err(|why| self.bad(section, "s3_virtual_host", &why))?,
                };
                DestinationKind::S3(S3Settings {
                    endpoint,
                    bucket,
                    prefix,
                    region: self
                        .optional(props, section, "region")?
                        .unwrap_or_else(|| default_of("region").into()),
                    virtual_host,
                    ca_file: self.path(props, section, "ca_file")?,
                    lock: match self.number(props, section, "lock_days", 1, MAX_LOCK_DAYS)? {
                        None => None,
                        Some(days) => Some(ObjectLock {
                            days: days as u32,
                            mode: match self.optional(props, section, "lock_mode")? {
                                None => LockMode::Compliance,
                                Some(text) => parse_lock_mode(&text)
                                    .map_err(|why| self.bad(section, "lock_mode", &why))?,
                            },
                        }),
                    },
                })
            }
        };
        let is_s3 = matches!(kind, DestinationKind::S3(_));
        if is_s3 && password_token.is_none() {
            return Err(self.bad(
                section,
                "password",
                "missing: an S3 destination's password is its secret access key (set it with \
                 `cvp-backup-copy edit`)",
            ));
        }
        if identity_file.is_none() && password_token.is_none() {
            return Err(self.bad(
                section,
                "password",
                "missing: set `password` (with `keyFile`) or `identity_file`",
            ));
        }
        if password_token.is_some() && key_file.is_none() {
            return Err(self.bad(
                section,
                "keyFile",
                "missing: `password` is encrypted and needs the key file that decrypts it",
            ));
        }
        let known_hosts = match (self.path(props, section, "known_hosts")?, main) {
            (Some(path), _) => path,
            (None, Some(main)) => main.known_hosts.clone(),
            (None, None) => default_known_hosts()?,
        };
        let host_key_policy = match (self.optional(props, section, "host_key_policy")?, main) {
            (Some(text), _) => {
                parse_policy(&text).map_err(|why| self.bad(section, "host_key_policy", &why))?
            }
            (None, Some(main)) => main.host_key_policy,
            (None, None) => HostKeyPolicy::AcceptNew,
        };
        let remote_limit = self
            .number(props, section, "remote_limit", 0, u32::MAX as u64)?
            .unwrap_or(0) as u32;
        let append_only = match self.optional(props, section, "append_only")? {
            None => false,
            Some(text) => {
                parse_yes_no(&text).map_err(|why| self.bad(section, "append_only", &why))?
            }
        };
        if !is_s3 && self.optional(props, section, "lock_days")?.is_some() {
            return Err(self.bad(
                section,
                "lock_days",
                "is for S3 buckets with Object Lock: an SFTP server is made immutable by \
                 append_only = yes and its deny list (README: Append-only SFTP)",
            ));
        }
        if append_only && is_s3 {
            return Err(self.bad(
                section,
                "append_only",
                "is for SFTP destinations: a bucket is made immutable by Object Lock (a bucket \
                 with a default retention, README: A stolen node)",
            ));
        }
        if append_only && remote_limit > 0 {
            return Err(self.bad(
                section,
                "remote_limit",
                "cannot be used with append_only = yes: the node never deletes on an \
                 append-only server; prune there instead, with `cvp-backup-copy prune-dir DIR \
                 --keep N` in the server's crontab (README: Append-only SFTP), and set \
                 remote_limit = 0",
            ));
        }
        let number = |option: &str, min: u64, max: u64, inherited: Option<u64>| -> Result<u64> {
            Ok(self
                .number(props, section, option, min, max)?
                .or(inherited)
                .unwrap_or_else(|| default_of(option).parse().unwrap_or(min)))
        };
        let retries = number(
            "retries",
            0,
            u32::MAX as u64,
            main.map(|m| m.retries as u64),
        )? as u32;
        let retry_wait = number("retry_wait", 0, u32::MAX as u64, main.map(|m| m.retry_wait))?;
        let timeout = number("timeout", 1, 86_400, main.map(|m| m.timeout))?;
        let sync_timeout = number("sync_timeout", 1, 86_400, main.map(|m| m.sync_timeout))?;
        let streams = match (self.optional(props, section, "streams")?, main) {
            (Some(text), _) => {
                parse_streams(&text).map_err(|why| self.bad(section, "streams", &why))?
            }
            (None, Some(main)) => main.streams,
            (None, None) => Streams::Auto,
        };
        let ciphers = self
            .optional(props, section, "ciphers")?
            .or_else(|| main.and_then(|m| m.ciphers.clone()));
        let encrypt_to = match (self.optional(props, section, "encrypt_to")?, main) {
            (Some(text), Some(_)) if text.eq_ignore_ascii_case("none") => None,
            (Some(text), _) => Some(std::sync::Arc::new(
                crate::seal::Recipients::parse(&text, Some(&self.base))
                    .map_err(|why| self.bad(section, "encrypt_to", &why))?,
            )),
            (None, Some(main)) => main.encrypt_to.clone(),
            (None, None) => None,
        };
        Ok(ServerConfig {
            name: name.to_string(),
            kind,
            user,
            host,
            port,
            password_token,
            key_file,
            identity_file,
            known_hosts,
            host_key_policy,
            destination,
            remote_limit,
            append_only,
            retries,
            retry_wait,
            timeout,
            streams,
            sync_timeout,
            ciphers,
            encrypt_to,
        })
    }

    fn unknown_entries(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (section, props) in self.ini.iter() {
            let known: &[&str] = match section {
                Some(name) if name.eq_ignore_ascii_case(SERVER) => SERVER_OPTIONS,
                Some(name) if name.eq_ignore_ascii_case(BACKUP) => BACKUP_OPTIONS,
                Some(name) if destination_section(name).is_some() => SERVER_OPTIONS,
                Some(name) => {
                    warnings.push(format!(
                        "{}: unknown section [{name}] ignored{}",
                        self.path.display(),
                        suggestion(name, [SERVER, BACKUP, "Destination NAME"].into_iter())
                    ));
                    continue;
                }
                None => &[],
            };
            for (option, _) in props.iter() {
                if !known.iter().any(|k| k.eq_ignore_ascii_case(option)) {
                    let where_ = section.map(|s| format!("[{s}] ")).unwrap_or_default();
                    warnings.push(format!(
                        "{}: unknown option {where_}{option} ignored{}",
                        self.path.display(),
                        suggestion(option, known.iter().copied())
                    ));
                }
            }
        }
        warnings
    }
}

/// `~/` is the running user's home; other relative paths are relative to the INI's folder
/// (cron's working directory is not the operator's).
fn resolve(base: &Path, value: &str) -> PathBuf {
    if let Some(rest) = value.strip_prefix("~/") {
        if let Some(home) = home_dir() {
            return home.join(rest);
        }
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// A path from the INI at `ini`, resolved as `run` resolves it.
pub fn resolve_against(ini: &Path, value: &str) -> PathBuf {
    resolve(&base_dir(ini), value)
}

fn base_dir(ini_path: &Path) -> PathBuf {
    let parent = ini_path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::canonicalize(&parent).unwrap_or(parent)
}

/// The running user's home: `$HOME` (cron sets it), else the password database.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    crate::users::by_uid(crate::users::current_uid()).map(|user| user.home)
}

fn default_known_hosts() -> Result<PathBuf> {
    home_dir()
        .map(|home| home.join(".ssh/known_hosts"))
        .ok_or_else(|| {
            Error::config(
                "cannot find the running user's home for ~/.ssh/known_hosts: set known_hosts",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_codes::ExitCode;

    const PYTHON_STYLE: &str = "[Server_Settings]
#Backup Server Settings
user = backup
server = 10.10.10.10
password = gAAAAABg7xoT7PVgqYI5c69wQyPeG-25O5__Ps_WoWO86zLUUvt2wKy22nxHHv15osJ5DXPl-WplAGkTPLpxRs-JNRrqpv7hjw==
keyFile = /home/cvpadmin/key.key
destination = \\backups\\cvp\\

[Backup_Settings]
; Backup script settings
limit: 7
";

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/cvp-backup-copy/backup.ini"))
    }

    fn expect_config_error(text: &str, needles: &[&str]) {
        let err = parse(text).expect_err("should be rejected");
        assert_eq!(err.code, ExitCode::Config);
        for needle in needles {
            assert!(
                err.message.contains(needle),
                "{needle:?} not in {:?}",
                err.message
            );
        }
    }

    #[test]
    fn reads_the_python_scripts_file_unchanged() {
        let config = parse(PYTHON_STYLE).expect("valid");
        assert_eq!(config.server.user, "backup");
        assert_eq!(config.server.host, "10.10.10.10");
        assert_eq!(config.server.port, 22);
        assert_eq!(
            config.server.key_file.as_deref(),
            Some(Path::new("/home/cvpadmin/key.key"))
        );
        assert_eq!(
            config.server.destination, "\\backups\\cvp\\",
            "backslashes kept literally"
        );
        assert_eq!(config.backup.limit, Some(7));
        assert_eq!(config.backup.command, ["/cvpi/bin/cvpi", "backup", "cvp"]);
        assert_eq!(config.backup.user, "cvp");
        assert_eq!(config.backup.backup_dir, Path::new("/data/cvpbackup"));
        assert_eq!(config.server.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(config.server.remote_limit, 0);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn a_byte_order_mark_and_indented_keys_read_as_written() {
        let text = format!(
            "\u{feff}{}",
            PYTHON_STYLE
                .replace("\nuser = backup", "\n  user = backup")
                .replace("\nserver =", "\n\tserver =")
                .replace('\n', "\r\n")
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.server.user, "backup");
        assert_eq!(config.server.host, "10.10.10.10");
        assert_eq!(config.backup.limit, Some(7));
        // An indented second `user` is a second user, as the run would read it.
        let twice = PYTHON_STYLE.replace("user = backup", "user = backup\n   user = other");
        expect_config_error(
            &twice,
            &["[Server_Settings] user is set twice", "line 3", "line 4"],
        );
    }

    #[test]
    fn option_names_are_case_insensitive() {
        let text = PYTHON_STYLE
            .replace("keyFile", "KEYFILE")
            .replace("user =", "User =");
        let config = parse(&text).expect("valid");
        assert_eq!(config.server.user, "backup");
        assert!(config.server.key_file.is_some());
    }

    #[test]
    fn the_ini_limit_wins_over_the_command_line() {
        let config = parse(PYTHON_STYLE).expect("valid");
        assert_eq!(config.effective_limit(Some(3)).ok(), Some(7));
        let without = parse(&PYTHON_STYLE.replace("limit: 7", "")).expect("valid");
        assert_eq!(without.effective_limit(Some(3)).ok(), Some(3));
        assert_eq!(without.effective_limit(None).ok(), Some(5));
        let err = without.effective_limit(Some(0)).expect_err("0 rejected");
        assert_eq!(err.code, ExitCode::Config);
    }

    #[test]
    fn bad_values_name_file_section_option_and_problem() {
        let ini = "/etc/cvp-backup-copy/backup.ini";
        expect_config_error(
            &PYTHON_STYLE.replace("limit: 7", "limit: 0"),
            &[
                ini,
                "[Backup_Settings] limit",
                "0 would delete every backup on the node",
                "`cvp-backup-copy edit --set Backup_Settings.limit=5`",
            ],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("limit: 7", "limit: many"),
            &["[Backup_Settings] limit", "`many`"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("user = backup", "user = backup\nport = 70000"),
            &["[Server_Settings] port", "`70000`"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("user = backup", "user = backup\nhost_key_policy = yes"),
            &["host_key_policy", "accept-new, strict"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("server = 10.10.10.10\n", ""),
            &["server"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("keyFile = /home/cvpadmin/key.key\n", ""),
            &["keyFile", "missing"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("10.10.10.10", "{{URL or IP of remote host}}"),
            &[
                "[Server_Settings] server",
                "not configured",
                "cvp-backup-copy edit",
            ],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("limit: 7", "syslog_facility = kernel-ish"),
            &["syslog_facility"],
        );
        expect_config_error(
            &PYTHON_STYLE.replace("limit: 7", "backup_user = cvp`id`"),
            &["[Backup_Settings] backup_user", "not a user name"],
        );
        expect_config_error("just text", &[ini]);
        expect_config_error(
            "[Backup_Settings]\nlimit=3\n",
            &["missing section [Server_Settings]"],
        );
    }

    #[test]
    fn unknown_options_warn_but_load() {
        let text = PYTHON_STYLE.replace("limit: 7", "limit: 7\ncolour = blue\n[Extra]\na=b");
        let config = parse(&text).expect("still valid");
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("colour"));
        assert!(config.warnings[1].contains("[Extra]"));
    }

    #[test]
    fn new_options_are_read() {
        let text = PYTHON_STYLE.replace(
            "limit: 7",
            "limit: 2\nbackup_command = /opt/fake cvpi --size 10\nbackup_user = root\n\
             backup_dir = data\nstate_dir = /tmp/state\nsyslog_facility = local3",
        ) + "";
        let text = text.replace(
            "user = backup",
            "user = backup\nport = 2222\nidentity_file = /root/.ssh/id_ed25519\n\
             known_hosts = /tmp/kh\nhost_key_policy = strict\nremote_limit = 4",
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.server.port, 2222);
        assert_eq!(
            config.server.identity_file.as_deref(),
            Some(Path::new("/root/.ssh/id_ed25519"))
        );
        assert_eq!(config.server.known_hosts, Path::new("/tmp/kh"));
        assert_eq!(config.server.host_key_policy, HostKeyPolicy::Strict);
        assert_eq!(config.server.remote_limit, 4);
        assert_eq!(config.backup.command, ["/opt/fake", "cvpi", "--size", "10"]);
        assert_eq!(config.backup.user, "root");
        assert!(config.backup.backup_dir.ends_with("data"));
        assert!(
            config.backup.backup_dir.is_absolute(),
            "relative to the INI's folder"
        );
        assert_eq!(
            config.backup.syslog_facility as i32,
            syslog::Facility::LOG_LOCAL3 as i32
        );
    }

    #[test]
    fn single_values_are_checked_as_run_reads_them() {
        let ini = Path::new("/etc/cvp-backup-copy/backup.ini");
        let table = [
            ("Server_Settings", "port", "2222", None),
            ("Server_Settings", "port", "0", Some("from 1 to 65535")),
            ("server_settings", "PORT", "x", Some("`x`")),
            ("Backup_Settings", "limit", "0", Some("set 1 or more")),
            ("Backup_Settings", "limit", "-1", Some("from 1 to")),
            ("Backup_Settings", "min_free_space", "20G", None),
            (
                "Backup_Settings",
                "min_free_space",
                "lots",
                Some("such as 20G"),
            ),
            ("Server_Settings", "usr", "x", Some("did you mean `user`?")),
            (
                "Server_Settings",
                "keyfiel",
                "x",
                Some("did you mean `keyFile`?"),
            ),
            ("Server_Settings", "remote_limit", "0", None),
            (
                "Backup_Settings",
                "remote_limit",
                "1",
                Some("belongs in [Server_Settings]"),
            ),
            ("Server_Settings", "host_key_policy", "strict", None),
            (
                "Server_Settings",
                "host_key_policy",
                "yes",
                Some("accept-new, strict"),
            ),
            ("Backup_Settings", "syslog_facility", "local7", None),
            (
                "Backup_Settings",
                "backup_command",
                "'unbalanced",
                Some("quotes"),
            ),
            (
                "Server_Settings",
                "keyFile",
                "/nonexistent/key",
                Some("/nonexistent/key"),
            ),
            (
                "Server_Settings",
                "identity_file",
                "/nonexistent/id",
                Some("does not exist"),
            ),
            ("Server_Settings", "server", "", Some("required")),
            ("Server_Settings", "server", "{{IP}}", Some("required")),
            ("Server_Settings", "password", "x", Some("--password-stdin")),
            ("Server_Settings", "colour", "blue", Some("not an option")),
        ];
        for (section, option, value, problem) in table {
            let result = check_value(section, option, value, ini);
            match (result, problem) {
                (Ok(()), None) => {}
                (Err(why), Some(needle)) => {
                    assert!(why.contains(needle), "{option}={value}: {why}")
                }
                (other, _) => panic!("{section}.{option}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_option_given_twice_is_refused_naming_both_lines() {
        let text = PYTHON_STYLE.replace(
            "keyFile = /home/cvpadmin/key.key\n",
            "keyFile = /home/cvpadmin/key.key\nPassword = gAAAAA-second\n",
        );
        expect_config_error(
            &text,
            &["[Server_Settings] password", "line 5", "line 7", "twice"],
        );
        let split = format!("{PYTHON_STYLE}[Backup_Settings]\nLIMIT = 3\n");
        expect_config_error(&split, &["limit", "line 11", "line 13"]);
        parse(&PYTHON_STYLE.replace("limit: 7", "limit: 7\n[Other]\nlimit = 1"))
            .expect("the same name in another section is fine");
    }

    #[test]
    fn timeouts_have_defaults_and_limits() {
        let config = parse(PYTHON_STYLE).expect("valid");
        assert_eq!(config.backup.timeout.as_secs(), 21_600);
        assert_eq!(config.server.sync_timeout, 900);
        let text = PYTHON_STYLE.replace("limit: 7", "limit: 7\nbackup_timeout = 5");
        assert_eq!(parse(&text).expect("valid").backup.timeout.as_secs(), 5);
        expect_config_error(
            &PYTHON_STYLE.replace("limit: 7", "backup_timeout = 0"),
            &["backup_timeout", "`0`"],
        );
    }

    #[test]
    fn destinations_are_sections_with_main_first_and_keys_inherited() {
        let text = "[Server_Settings]\nuser=u\nserver=h\ndestination=/d\npassword=t\n\
                    keyFile=/k\nstreams=3\nencrypt_to=age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq\n\
                    [Destination offsite]\nuser=AK\nserver=https://s3.example.net:9000/\n\
                    password=t2\ndestination=s3://cvp-backups/nodes/cvp1/\n\
                    [Destination plain]\nuser=v\nserver=h2\npassword=t3\ndestination=/e\n\
                    encrypt_to=none\nkeyFile=/k2\n";
        let config = match parse(text) {
            Ok(config) => config,
            Err(err) => panic!("{err}"),
        };
        let names: Vec<&str> = config.destinations().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["main", "offsite", "plain"]);
        let offsite = config.destination("OFFSITE").expect("by name, any case");
        let s3 = offsite.s3().expect("an S3 destination");
        assert_eq!(s3.endpoint, "https://s3.example.net:9000");
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("cvp-backups", "nodes/cvp1")
        );
        assert_eq!(s3.region, "us-east-1");
        assert!(!s3.virtual_host);
        assert_eq!(s3.key("cvp.x.tgz"), "nodes/cvp1/cvp.x.tgz");
        assert_eq!(offsite.key_file.as_deref(), Some(Path::new("/k")));
        assert_eq!(offsite.streams, Streams::Fixed(3));
        assert!(offsite.encrypt_to.is_some(), "encrypt_to is inherited");
        assert_eq!(
            offsite.label(),
            "s3://cvp-backups/nodes/cvp1@s3.example.net:9000"
        );
        let plain = config.destination("plain").expect("plain");
        assert!(plain.encrypt_to.is_none(), "encrypt_to = none turns it off");
        assert_eq!(plain.key_file.as_deref(), Some(Path::new("/k2")));
        assert!(config.destination("ofsite").is_err());
    }

    #[test]
    fn bad_destinations_are_refused_naming_the_section() {
        let main = "[Server_Settings]\nuser=u\nserver=h\ndestination=/d\npassword=t\nkeyFile=/k\n";
        let cases = [
            ("[Destination bad name!]\nuser=u\nserver=h\ndestination=/e\npassword=t\n", "not a destination name"),
            ("[Destination main]\nuser=u\nserver=h\ndestination=/e\npassword=t\n", "`main` is"),
            ("[Destination x]\nuser=u\nserver=h\ndestination=/d\npassword=t\n", "the same place as destination main"),
            ("[Destination x]\nuser=u\nserver=h\ndestination=s3://B/p\npassword=t\n", "not a bucket name"),
            ("[Destination x]\nuser=u\nserver=h\ndestination=s3://bucket/p\npassword=t\n", "endpoint"),
            ("[Destination x]\nuser=u\nserver=https://h/path\ndestination=s3://bucket/p\npassword=t\n", "only https://host"),
            ("[Destination x]\nuser=u\nserver=https://h\ndestination=s3://bucket/../p\npassword=t\n", "not a usable prefix"),
            ("[Destination x]\nuser=u\nserver=https://h\ndestination=s3://bucket\nidentity_file=/i\n", "secret access key"),
        ];
        for (section, needle) in cases {
            expect_config_error(&format!("{main}{section}"), &[needle]);
        }
    }

    #[test]
    fn key_authentication_makes_the_password_optional() {
        let text = "[Server_Settings]\nuser=u\nserver=h\ndestination=/d\nidentity_file=/k\n";
        let config = parse(text).expect("valid");
        assert!(config.server.password_token.is_none());
        expect_config_error(
            "[Server_Settings]\nuser=u\nserver=h\ndestination=/d\n",
            &["password"],
        );
    }
}
