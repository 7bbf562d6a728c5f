//! Log to syslog (ident `cvp-backup-copy`) so the job fits the appliance's rsyslog, to
//! stderr when a person is watching, and, for a run, to its own file in `state_dir/logs`.
//!
//! The night's log is never lost: a syslog send that fails (rsyslog restarting, its socket
//! gone) or stalls (a daemon that stopped reading) holds the message back, stderr takes over
//! meanwhile, and the socket is tried again on later messages (at once after a quick
//! failure, 10 s later after a stall, so a stalled daemon costs at most a few 2 s waits);
//! once it answers, what was held back goes first, marked with the time it was logged. The
//! run's file has every line whatever syslog does.

use crate::safe_fs::Dir;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use syslog::{Formatter3164, Logger, LoggerBackend};

pub const IDENT: &str = "cvp-backup-copy";
/// Where to find syslog; overridable so tests can capture what we send.
pub const SOCKET_ENV: &str = "CVP_BACKUP_COPY_SYSLOG_SOCKET";
const DEFAULT_SOCKET: &str = "/dev/log";

/// The folder in `state_dir` that holds the runs' logs, and how many are kept.
pub const RUN_LOGS: &str = "logs";
pub const RUN_LOGS_KEPT: usize = 14;
const RUN_LOG_PREFIX: &str = "run.";
const RUN_LOG_SUFFIX: &str = ".log";

/// How long one syslog send may block before the message is held back.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// After a send that stalled, the next attempt waits this long.
const STALLED_PAUSE: Duration = Duration::from_secs(10);
/// Messages held back while syslog is away (the oldest go first when there are more).
const HELD_LIMIT: usize = 2000;
/// How much of the run's log is kept for `recent_lines`.
const RECENT_LIMIT: usize = 10 * 1024;
/// Lines kept in memory until the run's file opens (a run refused early has few).
const EARLY_LIMIT: usize = 1024 * 1024;

type SyslogWriter = Logger<LoggerBackend, Formatter3164>;

struct Held {
    level: log::Level,
    message: String,
    at: chrono::DateTime<chrono::Local>,
}

struct Syslog {
    writer: Option<SyslogWriter>,
    facility: syslog::Facility,
    /// Messages not delivered yet, in order.
    held: VecDeque<Held>,
    /// No new attempt before this (after a stall).
    next_attempt: Option<Instant>,
}

struct Sinks {
    syslog: Syslog,
    /// Info to stderr as asked (a terminal, `-v`); it also goes there while syslog is away.
    info_to_stderr: bool,
    verbose: bool,
    /// The run's latest messages (info and above), for the failure ping's body.
    recent: VecDeque<String>,
    recent_bytes: usize,
    /// Every line until the run's file opens (then written to it first).
    early: Vec<String>,
    early_bytes: usize,
    /// The run's own log file.
    file: Option<File>,
}

pub struct AppLogger {
    sinks: Mutex<Sinks>,
}

static LOGGER: std::sync::OnceLock<AppLogger> = std::sync::OnceLock::new();

fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

fn connect(facility: syslog::Facility) -> Option<SyslogWriter> {
    let formatter = Formatter3164 {
        facility,
        hostname: None,
        process: IDENT.into(),
        pid: std::process::id(),
    };
    let mut logger = syslog::unix_custom(formatter, socket_path()).ok()?;
    // A stalled syslog daemon must not stall the backup: give up on a message after a while.
    match &mut logger.backend {
        LoggerBackend::Unix(socket) => {
            let _ = socket.set_write_timeout(Some(SEND_TIMEOUT));
        }
        LoggerBackend::UnixStream(stream) => {
            let _ = stream.get_ref().set_write_timeout(Some(SEND_TIMEOUT));
        }
        LoggerBackend::Udp(..) | LoggerBackend::Tcp(..) => {}
    }
    Some(logger)
}

/// Install the logger. Info goes to stderr on a terminal, with `-v`, or while syslog is away;
/// warnings and errors always do, so a script calling us sees why it failed.
pub fn init(verbose: bool) {
    let writer = connect(syslog::Facility::LOG_USER);
    let logger = LOGGER.get_or_init(|| AppLogger {
        sinks: Mutex::new(Sinks {
            syslog: Syslog {
                writer,
                facility: syslog::Facility::LOG_USER,
                held: VecDeque::new(),
                next_attempt: None,
            },
            info_to_stderr: verbose || std::io::stderr().is_terminal(),
            verbose,
            recent: VecDeque::new(),
            recent_bytes: 0,
            early: Vec::new(),
            early_bytes: 0,
            file: None,
        }),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if verbose {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
}

fn with_sinks<T>(f: impl FnOnce(&mut Sinks) -> T) -> Option<T> {
    let logger = LOGGER.get()?;
    let mut sinks = logger.sinks.lock().ok()?;
    Some(f(&mut sinks))
}

/// Switch to the INI's facility once the configuration is known.
pub fn set_facility(facility: syslog::Facility) {
    with_sinks(|sinks| {
        let syslog = &mut sinks.syslog;
        if syslog.facility as i32 != facility as i32 {
            syslog.facility = facility;
            if syslog.writer.is_some() {
                syslog.writer = connect(facility);
            }
        }
    });
}

/// Start this run's own log: `state_dir/logs/run.<time>.log` (0640, the monitoring group
/// may read it), beginning with everything logged so far; the oldest beyond the newest
/// `RUN_LOGS_KEPT` are deleted. Its path, or None when it cannot be made (a warning says why).
pub fn start_run_log(state_dir: &Path) -> Option<PathBuf> {
    // The folder by the state folder's handle: a symlink planted at `logs` is refused.
    let folder = crate::state::open_dir(state_dir).and_then(|state| state.subdir(RUN_LOGS, 0o750));
    let opened = folder.and_then(|dir| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let mut attempt = 0;
        let (name, file) = loop {
            let name = match attempt {
                0 => format!("{RUN_LOG_PREFIX}{stamp}{RUN_LOG_SUFFIX}"),
                n => format!("{RUN_LOG_PREFIX}{stamp}-{n}{RUN_LOG_SUFFIX}"),
            };
            match dir.create_new(&name, 0o640) {
                Ok(file) => break (name, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 20 => {
                    attempt += 1
                }
                Err(err) => return Err(err),
            }
        };
        rotate(&dir, &name);
        Ok((dir.join(&name), file))
    });
    match opened {
        Ok((path, mut file)) => {
            with_sinks(|sinks| {
                for line in sinks.early.drain(..) {
                    let _ = writeln!(file, "{line}");
                }
                sinks.early_bytes = 0;
                sinks.file = Some(file);
            });
            Some(path)
        }
        Err(err) => {
            log::warn!(
                "cannot keep this run's log in {}: {err} (syslog still has it)",
                state_dir.join(RUN_LOGS).display()
            );
            None
        }
    }
}

/// Delete the oldest run logs beyond the newest `RUN_LOGS_KEPT` (names sort by time).
fn rotate(dir: &Dir, current: &str) {
    let Ok(names) = dir.names() else { return };
    let mut logs: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(RUN_LOG_PREFIX) && n.ends_with(RUN_LOG_SUFFIX))
        .filter(|n| n.as_str() != current)
        .collect();
    logs.sort();
    let excess = (logs.len() + 1).saturating_sub(RUN_LOGS_KEPT);
    for old in logs.iter().take(excess) {
        let _ = dir.remove(old);
    }
}

/// Deliver what syslog has not had yet, if it is back (the end of a run calls this).
pub fn flush() {
    with_sinks(|sinks| {
        sinks.syslog.next_attempt = None;
        sinks.syslog.deliver(None);
        if let Some(file) = sinks.file.as_mut() {
            let _ = file.flush();
        }
    });
}

impl Syslog {
    /// Send what is held back, then `message` (if any); what cannot be sent is held back.
    /// Whether everything went.
    fn deliver(&mut self, message: Option<(log::Level, &str)>) -> bool {
        if let Some((level, text)) = message {
            self.held.push_back(Held {
                level,
                message: text.to_string(),
                at: chrono::Local::now(),
            });
            if self.held.len() > HELD_LIMIT {
                self.held.pop_front();
            }
        }
        if self.next_attempt.is_some_and(|at| Instant::now() < at) {
            return self.held.is_empty();
        }
        let current = message.is_some();
        while let Some(held) = self.held.front() {
            if self.writer.is_none() {
                self.writer = connect(self.facility);
            }
            let Some(writer) = self.writer.as_mut() else {
                break;
            };
            // Only messages that waited say when they were logged.
            let text = if current && self.held.len() == 1 {
                held.message.clone()
            } else {
                format!(
                    "(logged at {}, syslog was unavailable) {}",
                    held.at.format("%H:%M:%S"),
                    held.message
                )
            };
            let started = Instant::now();
            let mut sent = send(writer, held.level, &text);
            let stalled = || started.elapsed() >= SEND_TIMEOUT / 2;
            if !sent && !stalled() {
                // A quick failure: rsyslog may have restarted. Once more on a new connection.
                self.writer = connect(self.facility);
                if let Some(writer) = self.writer.as_mut() {
                    sent = send(writer, held.level, &text);
                }
            }
            if sent {
                self.held.pop_front();
                continue;
            }
            self.writer = None;
            // A stall (the daemon stopped reading) waits before the next try; a quick
            // failure (its socket gone) tries again on the next message.
            if stalled() {
                self.next_attempt = Some(Instant::now() + STALLED_PAUSE);
            }
            break;
        }
        self.held.is_empty()
    }
}

thread_local! {
    /// What this thread's messages are about (a destination's name, when a night copies to
    /// several side by side): each line starts with it in brackets.
    static CONTEXT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// This thread's context, to give to a thread it starts.
pub fn context() -> Option<String> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// Messages logged by this thread from now on start with `[context]` (None: nothing).
pub fn set_context(context: Option<String>) {
    CONTEXT.with(|c| *c.borrow_mut() = context);
}

impl log::Log for AppLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // The HTTP client's own debug lines (every request) are not the operator's.
        if metadata.level() > log::Level::Info && !metadata.target().starts_with("cvp_backup_copy")
        {
            return false;
        }
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sinks) = self.sinks.lock() else {
            return;
        };
        let message = CONTEXT.with(|context| match context.borrow().as_deref() {
            Some(context) => format!("[{context}] {}", record.args()),
            None => record.args().to_string(),
        });
        let level = record.level();
        let line = format!(
            "{} {level:<5} {message}",
            chrono::Local::now().format("%Y-%m-%dT%H:%M:%S")
        );
        if level <= log::Level::Info {
            sinks.remember(&line);
        }
        let mut to_stderr = level <= log::Level::Warn || sinks.info_to_stderr;
        // Debug detail stays off syslog and the run's file unless asked for.
        if level <= log::Level::Info || sinks.verbose {
            sinks.keep(line);
            if !sinks.syslog.deliver(Some((level, &message))) {
                to_stderr = true;
            }
        }
        if to_stderr {
            let label = match level {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                log::Level::Debug | log::Level::Trace => "debug: ",
                log::Level::Info => "",
            };
            let _ = writeln!(std::io::stderr(), "{IDENT}: {label}{message}");
        }
    }

    fn flush(&self) {}
}

impl Sinks {
    fn remember(&mut self, line: &str) {
        self.recent_bytes += line.len() + 1;
        self.recent.push_back(line.to_string());
        while self.recent_bytes > RECENT_LIMIT && self.recent.len() > 1 {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.len() + 1;
            }
        }
    }

    /// The run's file gets every line; until it opens, memory keeps them.
    fn keep(&mut self, line: String) {
        match self.file.as_mut() {
            Some(file) => {
                let _ = writeln!(file, "{line}");
            }
            None if self.early_bytes + line.len() < EARLY_LIMIT => {
                self.early_bytes += line.len() + 1;
                self.early.push(line);
            }
            None => {}
        }
    }
}

/// The newest messages this process logged (info and above, at most about 10 KB): what
/// syslog has of this run, for a monitoring ping. Messages never carry secrets.
pub fn recent_lines() -> Vec<String> {
    with_sinks(|sinks| sinks.recent.iter().cloned().collect()).unwrap_or_default()
}

fn send(writer: &mut SyslogWriter, level: log::Level, message: &str) -> bool {
    let result = match level {
        log::Level::Error => writer.err(message),
        log::Level::Warn => writer.warning(message),
        log::Level::Info => writer.info(message),
        log::Level::Debug | log::Level::Trace => writer.debug(message),
    };
    result.is_ok()
}
