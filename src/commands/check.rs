//! `check`: test every link of the nightly chain once, before the first night, and say how
//! to fix the one that breaks. One line per check; the exit code is what a run would meet.

use crate::backup;
use crate::claim;
use crate::config::{Config, DestinationKind, ServerConfig, Streams};
use crate::error::Error;
use crate::exit_codes::ExitCode;
use crate::lock;
use crate::names::Stamp;
use crate::remote::sftp::{self, ConnectOptions, Stage};
use crate::remote::Remote;
use crate::run;
use crate::secret::{self, Secret};
use crate::sets;
use crate::space;
use crate::state;
use std::path::PathBuf;

pub struct CheckOptions {
    pub ini: PathBuf,
    /// Root's crontab, read before a root `check` becomes the INI's owner.
    pub root_crontab: RootCrontab,
}

/// What reading root's crontab gave.
pub struct RootCrontab {
    path: PathBuf,
    text: std::io::Result<String>,
}

pub fn read_root_crontab() -> RootCrontab {
    let path = std::env::var_os(ROOT_CRONTAB_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ROOT_CRONTAB));
    let text = std::fs::read_to_string(&path);
    RootCrontab { path, text }
}

/// Root's crontab on CentOS; the environment variable lets the tests point elsewhere.
const ROOT_CRONTAB: &str = "/var/spool/cron/root";
const ROOT_CRONTAB_ENV: &str = "CVP_BACKUP_COPY_ROOT_CRONTAB";
const STOCK_BACKUP: &str = "/cvpi/tools/backup.py";

enum Outcome {
    Pass(String),
    Warn(String),
    Fail(Error),
    Skip(String),
}

#[derive(Default)]
struct Report {
    passed: usize,
    warned: usize,
    failed: usize,
    code: Option<ExitCode>,
    /// The destination the lines are about, when there are several.
    scope: Option<String>,
}

impl Report {
    fn line(&mut self, what: &str, outcome: Outcome) {
        let (tag, text) = match outcome {
            Outcome::Pass(text) => {
                self.passed += 1;
                ("ok  ", text)
            }
            Outcome::Warn(text) => {
                self.warned += 1;
                ("WARN", text)
            }
            Outcome::Skip(text) => ("skip", text),
            Outcome::Fail(err) => {
                self.failed += 1;
                let code = self.code.unwrap_or(ExitCode::Success).most_severe(err.code);
                self.code = Some(code);
                ("FAIL", err.message)
            }
        };
        let scope = self
            .scope
            .as_deref()
            .map(|name| format!("{name}: "))
            .unwrap_or_default();
        println!("[{tag}] {scope}{what}: {}", crate::error::printable(&text));
    }

    fn fail(&mut self, what: &str, err: Error) {
        self.line(what, Outcome::Fail(err));
    }
}

pub fn check(options: &CheckOptions) -> ExitCode {
    let mut report = Report::default();
    let config = match Config::load(&options.ini) {
        Ok(config) => {
            report.line(
                "configuration",
                Outcome::Pass(format!("{} is valid", config.path.display())),
            );
            config
        }
        Err(err) => {
            report.line("configuration", Outcome::Fail(err));
            return finish(report);
        }
    };
    for warning in &config.warnings {
        report.line("configuration", Outcome::Warn(warning.clone()));
    }
    check_backup_command(&config, &mut report);
    check_local_folders(&config, &mut report);
    check_state_dir(&config, &mut report);
    check_stamps(&config, &mut report);
    check_monitoring(&config, &mut report);
    check_root_crontab(&options.root_crontab, &mut report);
    let several = !config.extra.is_empty();
    for server in config.destinations() {
        // Each destination's lines say which (`destination main: ...`) when there are several.
        report.scope = several.then(|| format!("destination {}", server.name));
        let password = credentials(&config, server, &mut report);
        check_encryption(server, &mut report);
        match &server.kind {
            DestinationKind::Sftp => check_server(&config, server, &password, &mut report),
            DestinationKind::S3(_) => check_bucket(&config, server, &password, &mut report),
        }
    }
    report.scope = None;
    if several {
        check_pruning_held_back(&config, &mut report);
    }
    finish(report)
}

/// With several destinations the node keeps the last set verified on each: say which
/// destination is behind and holds a set on the node beyond `limit` (as the run will see it).
fn check_pruning_held_back(config: &Config, report: &mut Report) {
    const WHAT: &str = "pruning";
    let mut history = state::peek_history(&config.backup.state_dir);
    run::fill_last_verified(&mut history, &config.backup.state_dir, config);
    let limit = config
        .effective_limit(None)
        .unwrap_or(crate::config::DEFAULT_LIMIT) as usize;
    let mut local: Vec<crate::names::BackupName> = run::list_local(config)
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.name)
        .filter(|n| n.kind == crate::names::Kind::Data)
        .collect();
    local.sort_by_key(|n| std::cmp::Reverse(n.stamp));
    let within_limit: Vec<_> = local.into_iter().take(limit).collect();
    let held: Vec<String> = config
        .destinations()
        .filter_map(|d| {
            let set = history.last_verified_at(&d.name)?;
            (!within_limit.contains(&set)).then(|| {
                format!(
                    "{} (its newest verified set, {set}, is older than the newest {limit})",
                    d.name
                )
            })
        })
        .collect();
    if held.is_empty() {
        report.line(
            WHAT,
            Outcome::Pass(
                "no destination holds a set on the node beyond limit; one that falls behind \
                 keeps its newest verified set there until it has a newer one"
                    .into(),
            ),
        );
    } else {
        report.line(
            WHAT,
            Outcome::Warn(format!(
                "held back on the node for {}: a destination that is down never costs the node \
                 the newest set it has; the next good night there releases it",
                held.join(", ")
            )),
        );
    }
}

/// An S3 destination: the endpoint answers, the keys are accepted, the bucket exists and
/// takes (and gives up) a test object, the prefix is this node's.
fn check_bucket(config: &Config, server: &ServerConfig, password: &Password, report: &mut Report) {
    let Password::Usable(secret) = password else {
        report.line(
            "bucket",
            Outcome::Skip("not tried: the secret key cannot be used (see above)".into()),
        );
        return;
    };
    if let Some(s3) = server.s3() {
        if s3.endpoint.starts_with("http://") {
            let data = if server.encrypt_to.is_none() {
                "the backups travel in clear (set encrypt_to, or use https://), and "
            } else {
                "the backups are encrypted (encrypt_to), but "
            };
            report.line(
                "endpoint",
                Outcome::Warn(format!(
                    "{} is plain http: {data}anyone on the path can read the requests and \
                     forge the answers a copy is verified by; use https://",
                    s3.endpoint
                )),
            );
        }
    }
    let mut remote = match crate::remote::s3::S3Remote::new(server, secret) {
        Ok(remote) => remote,
        Err(err) => return report.fail("bucket", err),
    };
    let remote: &mut dyn Remote = &mut remote;
    match probe_destination(remote) {
        Ok(detail) => report.line("bucket", Outcome::Pass(detail)),
        Err(err) => return report.fail("bucket", err),
    }
    if let Some(lock) = server.s3().and_then(|s3| s3.lock) {
        check_object_lock(server, lock, secret, report);
    }
    check_claim(config, remote, report);
    check_immutable(server, remote, report);
    let (count, why) = crate::remote::s3::S3Remote::new(server, secret)
        .map(|remote| crate::destination::s3::planned_parts(server.streams, &remote))
        .unwrap_or((1, String::new()));
    report.line(
        "streams",
        Outcome::Pass(format!(
            "large files go up as multipart uploads, {count} parts of 16 MiB at a time ({why})"
        )),
    );
}

/// lock_days against the bucket's own settings: the node's explicit retention replaces the
/// bucket's default on what it writes, so a shorter or weaker one is a warning; so is a lock
/// that nothing will ever prune (remote_limit = 0).
fn check_object_lock(
    server: &ServerConfig,
    lock: crate::config::ObjectLock,
    secret: &crate::secret::Secret,
    report: &mut Report,
) {
    use crate::remote::s3::BucketLock;
    const WHAT: &str = "object lock";
    let bucket = crate::remote::s3::S3Remote::new(server, secret).and_then(|r| r.object_lock());
    let Ok(Some(bucket)) = bucket else {
        return; // the bucket line above has said why
    };
    report.line(
        WHAT,
        Outcome::Pass(format!(
            "lock_days = {} ({}): every object written carries a retention of {} days, \
             extended each night for the sets kept there; pruning waits for it to end (the \
             bucket: {bucket})",
            lock.days,
            lock.mode.as_s3(),
            lock.days
        )),
    );
    if let BucketLock::Default { mode, days } = &bucket {
        let weaker_mode = mode == "COMPLIANCE" && lock.mode == crate::config::LockMode::Governance;
        if *days > lock.days || weaker_mode {
            report.line(
                WHAT,
                Outcome::Warn(format!(
                    "the bucket's default retention ({mode}, {days} days) is stronger than \
                     lock_days = {} ({}), which replaces it on everything the node writes: \
                     raise lock_days (or lock_mode = compliance), or remove them and let the \
                     default lock",
                    lock.days,
                    lock.mode.as_s3()
                )),
            );
        }
    }
    if server.remote_limit == 0 {
        report.line(
            WHAT,
            Outcome::Warn(
                "remote_limit = 0: every set stays kept, so its lock is extended every night \
                 and nothing there is ever pruned (the bucket grows for good); set \
                 remote_limit"
                    .into(),
            ),
        );
    }
}

/// `encrypt_to` was parsed with the configuration (a bad recipient fails it): say who can
/// read the backups, and warn about recipient files others may change.
fn check_encryption(server: &ServerConfig, report: &mut Report) {
    const WHAT: &str = "encryption at rest";
    let Some(recipients) = &server.encrypt_to else {
        report.line(
            WHAT,
            Outcome::Skip(
                "encrypt_to is not set: the backup server holds the backups as they are".into(),
            ),
        );
        return;
    };
    let count = recipients.described.len();
    report.line(
        WHAT,
        Outcome::Pass(format!(
            "every file on the server is encrypted (age) to {count} recipient{}: {}",
            if count == 1 { "" } else { "s" },
            recipients.described.join(", ")
        )),
    );
    for file in &recipients.loose_files {
        report.line(
            WHAT,
            Outcome::Warn(format!(
                "{} can be written by other accounts: whoever can add a key of theirs there \
                 reads every backup after; run `chmod go-w {}`",
                file.display(),
                crate::error::shell_word(file)
            )),
        );
    }
}

fn finish(report: Report) -> ExitCode {
    println!(
        "{} passed, {} failed, {} warnings",
        report.passed, report.failed, report.warned
    );
    report.code.unwrap_or(ExitCode::Success)
}

/// What the credentials checks leave for the connection checks.
enum Password {
    NotSet,
    Usable(Secret),
    /// Reported as failed already; the login is not tried with it.
    Unusable,
}

/// Key file and password; the decrypted password, for the login check.
fn credentials(config: &Config, server: &ServerConfig, report: &mut Report) -> Password {
    if let Some(identity) = &server.identity_file {
        if identity.is_file() {
            match secret::check_identity_is_private(identity) {
                Ok(()) => report.line(
                    "identity file",
                    Outcome::Pass(format!(
                        "{} exists and only its owner can read it",
                        identity.display()
                    )),
                ),
                Err(err) => report.line("identity file", Outcome::Warn(err.message)),
            }
        } else {
            report.fail(
                "identity file",
                Error::config(format!(
                    "{} does not exist: fix identity_file with `cvp-backup-copy edit`",
                    identity.display()
                )),
            );
        }
    }
    let (Some(token), Some(key)) = (&server.password_token, &server.key_file) else {
        report.line(
            "key file",
            Outcome::Skip("no password set: authentication uses identity_file".into()),
        );
        return Password::NotSet;
    };
    if !key.is_file() {
        report.fail(
            "key file",
            Error::config(format!(
                "{} does not exist: run `cvp-backup-copy keygen` to make a key and encrypt the \
                 password with it",
                key.display()
            )),
        );
        return Password::Unusable;
    }
    if let Err(err) = secret::check_key_is_private(key) {
        report.fail("key file", err);
        return Password::Unusable;
    }
    report.line(
        "key file",
        Outcome::Pass(format!(
            "{} exists and only its owner can read it",
            key.display()
        )),
    );
    match secret::decrypt_password(token, key, &config.path) {
        Ok(password) => {
            report.line(
                "password",
                Outcome::Pass(format!("decrypts with {}", key.display())),
            );
            Password::Usable(password)
        }
        Err(err) => {
            report.fail("password", err);
            Password::Unusable
        }
    }
}

/// The backup command, looked up as the run starts it: `backup_user`'s login shell, its
/// environment and profile (`backup::resolve_as_backup_user`), without running it.
fn check_backup_command(config: &Config, report: &mut Report) {
    const WHAT: &str = "backup command";
    let user_name = &config.backup.user;
    match backup::resolve_as_backup_user(&config.backup.command, user_name) {
        Ok(path) => report.line(
            WHAT,
            Outcome::Pass(format!(
                "{} resolves to {} and is executable by {user_name} in its login environment: \
                 runs {}",
                config.backup.command.first().map_or("", String::as_str),
                path.display(),
                backup::describe(&config.backup.command, user_name)
            )),
        ),
        Err(err) => report.fail(WHAT, err),
    }
}

fn check_local_folders(config: &Config, report: &mut Report) {
    let folders = [
        ("backup_dir", &config.backup.backup_dir),
        ("log_dir", &config.backup.log_dir),
    ];
    for (option, dir) in folders {
        match std::fs::read_dir(dir) {
            Ok(_) => report.line(
                option,
                Outcome::Pass(format!("{} is readable", dir.display())),
            ),
            Err(err) => {
                report.fail(
                    option,
                    Error::config(format!(
                        "cannot read {}: {err}: create it or set {option} with `cvp-backup-copy \
                         edit`",
                        dir.display()
                    )),
                );
            }
        }
    }
    let dir = &config.backup.backup_dir;
    let Some(free) = space::free_bytes(dir) else {
        report.line(
            "free space",
            Outcome::Skip(format!("cannot stat {}", dir.display())),
        );
        return;
    };
    let files = run::list_local(config).unwrap_or_default();
    let history = state::peek_history(&config.backup.state_dir);
    let last_set = run::newest_set_bytes(&files, &history, Stamp::now());
    let room = space::assess(config.backup.min_free_space, free, last_set);
    if room.enough() {
        report.line(
            "free space",
            Outcome::Pass(format!("{}: {}", dir.display(), room.describe())),
        );
    } else {
        report.fail(
            "free space",
            Error::new(
                ExitCode::BackupFailed,
                format!(
                    "{}: {}: tonight's backup would be refused (exit 1); free space there, \
                     lower limit, or set min_free_space",
                    dir.display(),
                    room.describe()
                ),
            ),
        );
    }
}

fn check_state_dir(config: &Config, report: &mut Report) {
    let dir = &config.backup.state_dir;
    let outcome = lock::ensure_state_dir(dir).and_then(|handle| {
        handle.probe_writable().map_err(|err| {
            Error::config(format!(
                "cannot write in {}: {err}: the run keeps its lock and record there; fix its \
                 owner or set state_dir",
                dir.display()
            ))
        })
    });
    match outcome {
        Ok(()) => report.line(
            "state_dir",
            Outcome::Pass(format!("{} is writable", dir.display())),
        ),
        Err(err) => {
            report.fail("state_dir", err);
        }
    }
}

/// Monitoring never fails a run, so what would stop it working is a warning here. The ping
/// URL is not called: healthchecks-style services take any request as a good night.
fn check_monitoring(config: &Config, report: &mut Report) {
    if let Some(dir) = &config.backup.metrics_dir {
        match crate::safe_fs::Dir::open(dir).and_then(|handle| handle.probe_writable()) {
            Ok(()) => report.line(
                "metrics_dir",
                Outcome::Pass(format!(
                    "{} is writable: each run leaves {} there",
                    dir.display(),
                    crate::monitor::metrics::FILE
                )),
            ),
            Err(err) => report.line(
                "metrics_dir",
                Outcome::Warn(format!(
                    "cannot write in {}: {err}: give the job's account write access to \
                     node_exporter's textfile folder, or unset metrics_dir",
                    dir.display()
                )),
            ),
        }
    }
    if let Some(url) = &config.backup.ping_url {
        let host = crate::monitor::ping::host_of(url);
        let outcome = if url.to_ascii_lowercase().starts_with("https://") {
            Outcome::Pass(format!(
                "each run pings {host} (start, then success or fail); `check` sends none"
            ))
        } else {
            Outcome::Warn(format!(
                "pings to {host} go over plain http: the URL (whoever has it can report for \
                 this node) and the run's log lines cross the network readable; use https"
            ))
        };
        report.line("ping_url", outcome);
    }
}

/// A stamp in the future (a clock that was once wrong) never counts as the newest set.
fn check_stamps(config: &Config, report: &mut Report) {
    let now = Stamp::now();
    let files = run::list_local(config).unwrap_or_default();
    let future: Vec<String> = files
        .iter()
        .filter(|f| sets::is_future(f.name.stamp, now))
        .map(|f| f.name.file_name())
        .collect();
    if future.is_empty() {
        report.line(
            "timestamps",
            Outcome::Pass(format!(
                "no backup is stamped after this node's clock ({now})"
            )),
        );
    } else {
        report.line(
            "timestamps",
            Outcome::Warn(format!(
                "{} stamped in the future (this node's clock says {now}): never counted as the \
                 newest set; check the clock (NTP) and delete what is not needed",
                future.join(", ")
            )),
        );
    }
}

fn check_server(config: &Config, server: &ServerConfig, password: &Password, report: &mut Report) {
    let password_ok = !matches!(password, Password::Unusable);
    let password = match password {
        Password::Usable(secret) => Some(secret),
        Password::NotSet | Password::Unusable => None,
    };
    let mut passed: Vec<Stage> = Vec::new();
    let connected = sftp::connect_observed(
        ConnectOptions {
            server,
            password,
            record_host_key: true,
            on_round_trip: None,
            on_handshake: None,
            after: None,
        },
        &mut |stage, detail| {
            passed.push(stage);
            let what = match stage {
                Stage::Reached => "server",
                Stage::HostKey => "host key",
                Stage::Authenticated => "authentication",
            };
            report.line(what, Outcome::Pass(detail));
        },
    );
    let mut connected = match connected {
        Ok(connected) => connected,
        Err(err) => {
            let what = if !passed.contains(&Stage::Reached) {
                "server"
            } else if !passed.contains(&Stage::HostKey) {
                "host key"
            } else if !passed.contains(&Stage::Authenticated) {
                "authentication"
            } else {
                "destination"
            };
            if what == "authentication" && !password_ok {
                // The password is the broken link, reported above; a run would stop there.
                report.line(
                    what,
                    Outcome::Skip(format!(
                        "not tried with the password, which cannot be used (see above): {}",
                        err.message
                    )),
                );
            } else {
                report.fail(what, err);
            }
            return;
        }
    };
    let remote: &mut dyn Remote = &mut connected.remote;
    match probe_destination(remote) {
        Ok(detail) => report.line("destination", Outcome::Pass(detail)),
        Err(err) => {
            report.fail("destination", err);
            return;
        }
    }
    check_claim(config, remote, report);
    check_immutable(server, remote, report);
    let round_trip = connected.remote.measure_round_trip();
    check_streams(server, password, round_trip, report);
}

/// The destination is this node's (claimed now, or before), or another node's (refused).
fn check_claim(config: &Config, remote: &mut dyn Remote, report: &mut Report) {
    const WHAT: &str = "destination owner";
    let node = &config.backup.node_name;
    match claim::claim(remote, node) {
        Ok(claim::Claimed::Now) => report.line(
            WHAT,
            Outcome::Pass(format!(
                "claimed for this node ({node}); other nodes are refused there"
            )),
        ),
        Ok(claim::Claimed::Already) => {
            report.line(WHAT, Outcome::Pass(format!("this node ({node})")))
        }
        Err(err) => report.fail(WHAT, err),
    }
}

/// Large files go over several connections at once: how many (for `auto`, from the round
/// trip just measured), and does the server take them all?
fn check_streams(
    server: &ServerConfig,
    password: Option<&Secret>,
    round_trip: std::time::Duration,
    report: &mut Report,
) {
    let (wanted, why) = match server.streams {
        _ if server.append_only => (
            1,
            "append_only = yes: a read-only file is written through the one handle that made it"
                .to_string(),
        ),
        Streams::Auto => crate::transfer::auto_streams(round_trip),
        Streams::Fixed(n) => (n, format!("streams = {n}")),
    };
    if wanted < 2 {
        report.line(
            "streams",
            Outcome::Pass(format!("large files go over 1 connection ({why})")),
        );
        return;
    }
    let options = ConnectOptions {
        server,
        password,
        record_host_key: false,
        on_round_trip: None,
        on_handshake: None,
        after: None,
    };
    let outcomes = sftp::connect_several(options, wanted - 1);
    // Plus the one `check` already holds.
    let opened = (
        1 + outcomes.iter().filter(|o| o.is_ok()).count(),
        outcomes
            .into_iter()
            .find_map(|o| o.err())
            .map(|e| e.message),
    );
    match opened {
        (opened, None) => report.line(
            "streams",
            Outcome::Pass(format!(
                "the server accepts {opened} connections at once ({why})"
            )),
        ),
        (opened, Some(refused)) => report.line(
            "streams",
            Outcome::Warn(format!(
                "the server accepted {opened} of {wanted} connections at once ({refused}): \
                 large files will go over {opened}; set streams = {opened}, or raise the \
                 server's MaxStartups / per-user limits"
            )),
        ),
    }
}

/// `immutable: yes (...)` when the server refused the node's own credentials every request
/// that would destroy a test file, `immutable: no (...)` with what an intruder could do and
/// the fix.
fn check_immutable(server: &ServerConfig, remote: &mut dyn Remote, report: &mut Report) {
    const WHAT: &str = "immutable";
    match crate::immutable::probe(remote, server, crate::names::Stamp::now()) {
        Ok(verdict) if verdict.immutable => {
            report.line(WHAT, Outcome::Pass(format!("yes ({})", verdict.detail)))
        }
        Ok(verdict) => report.line(WHAT, Outcome::Warn(format!("no ({})", verdict.detail))),
        Err(err) => report.fail(WHAT, err),
    }
}

/// The destination exists (made as a run would make it) and takes a file.
fn probe_destination(remote: &mut dyn Remote) -> crate::error::Result<String> {
    let label = remote.describe();
    let created = remote.ensure_destination()?;
    if remote.keeps_what_it_writes() {
        // The node may not remove a test file there: the immutability test's file shows
        // that it takes one.
        return Ok(if created {
            format!("{label} did not exist: created it")
        } else {
            format!("{label} exists")
        });
    }
    let probe = format!(".cvp-backup-copy-check.{}", std::process::id());
    {
        let mut sink = remote.create(&probe)?;
        std::io::Write::write_all(&mut sink, b"probe\n")
            .and_then(|()| std::io::Write::flush(&mut sink))
            .map_err(|err| {
                Error::copy(format!(
                    "cannot write a test file in {label}: {err}: the backup user must be able to \
                     write there (is its disk full?)"
                ))
            })?;
    }
    remote.remove(&probe)?;
    Ok(if created {
        format!("{label} did not exist: created it; a test file was written and deleted")
    } else {
        format!("{label} exists; a test file was written and deleted")
    })
}

fn check_root_crontab(crontab: &RootCrontab, report: &mut Report) {
    const WHAT: &str = "root's crontab";
    let path = &crontab.path;
    match &crontab.text {
        Ok(text) if runs_stock_backup(text) => report.line(
            WHAT,
            Outcome::Warn(format!(
                "{} also runs {STOCK_BACKUP}: two backups would start at night; remove that line \
                 (`crontab -e` as root)",
                path.display()
            )),
        ),
        Ok(_) => report.line(
            WHAT,
            Outcome::Pass(format!("{} does not run {STOCK_BACKUP}", path.display())),
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => report.line(
            WHAT,
            Outcome::Pass(format!("{} does not exist", path.display())),
        ),
        Err(err) => report.line(
            WHAT,
            Outcome::Skip(format!(
                "cannot read {} ({err}): run `check` as root to look for {STOCK_BACKUP}",
                path.display()
            )),
        ),
    }
}

/// A crontab line that is not a comment and starts the stock backup script.
fn runs_stock_backup(crontab: &str) -> bool {
    crontab
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#'))
        .any(|line| line.contains(STOCK_BACKUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_backup_line_is_found_unless_commented_out() {
        let table = [
            ("0 2 * * * /cvpi/tools/backup.py --limit 5\n", true),
            ("MAILTO=\"\"\n  0 2 * * * /cvpi/tools/backup.py\n", true),
            ("#0 2 * * * /cvpi/tools/backup.py --limit 5\n", false),
            ("0 3 * * 5 /cvpi/tools/logsbackup.py\n", false),
            ("", false),
        ];
        for (crontab, expected) in table {
            assert_eq!(runs_stock_backup(crontab), expected, "{crontab:?}");
        }
    }
}
