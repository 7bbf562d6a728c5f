//! Log to syslog (ident `cvp-backup-copy`) so the job fits the appliance's rsyslog, and to
//! stderr when a person is watching. Without a syslog socket, stderr carries everything.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use syslog::{Formatter3164, Logger, LoggerBackend};

pub const IDENT: &str = "cvp-backup-copy";
/// Where to find syslog; overridable so tests can capture what we send.
pub const SOCKET_ENV: &str = "CVP_BACKUP_COPY_SYSLOG_SOCKET";
const DEFAULT_SOCKET: &str = "/dev/log";

type SyslogWriter = Logger<LoggerBackend, Formatter3164>;

struct Sinks {
    syslog: Option<SyslogWriter>,
    facility: syslog::Facility,
    info_to_stderr: bool,
    verbose: bool,
    /// The run's latest messages (info and above), for the failure ping's body.
    recent: std::collections::VecDeque<String>,
    recent_bytes: usize,
}

/// How much of the run's log is kept for `recent_lines`.
const RECENT_LIMIT: usize = 10 * 1024;

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
    // A stalled syslog daemon must not stall the backup: give up on a message after a while
    // (the send then fails and we fall back to stderr).
    let timeout = Some(std::time::Duration::from_secs(2));
    match &mut logger.backend {
        LoggerBackend::Unix(socket) => {
            let _ = socket.set_write_timeout(timeout);
        }
        LoggerBackend::UnixStream(stream) => {
            let _ = stream.get_ref().set_write_timeout(timeout);
        }
        LoggerBackend::Udp(..) | LoggerBackend::Tcp(..) => {}
    }
    Some(logger)
}

/// Install the logger. Info goes to stderr on a terminal, with `-v`, or when syslog is absent;
/// warnings and errors always do, so a script calling us sees why it failed.
pub fn init(verbose: bool) {
    let syslog = connect(syslog::Facility::LOG_USER);
    let info_to_stderr = verbose || syslog.is_none() || std::io::stderr().is_terminal();
    let logger = LOGGER.get_or_init(|| AppLogger {
        sinks: Mutex::new(Sinks {
            syslog,
            facility: syslog::Facility::LOG_USER,
            info_to_stderr,
            verbose,
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
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

/// Switch to the INI's facility once the configuration is known.
pub fn set_facility(facility: syslog::Facility) {
    let Some(logger) = LOGGER.get() else { return };
    let Ok(mut sinks) = logger.sinks.lock() else {
        return;
    };
    if sinks.facility as i32 != facility as i32 && sinks.syslog.is_some() {
        sinks.syslog = connect(facility);
        sinks.facility = facility;
        if sinks.syslog.is_none() {
            sinks.info_to_stderr = true;
        }
    }
}

impl log::Log for AppLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sinks) = self.sinks.lock() else {
            return;
        };
        let message = record.args().to_string();
        let level = record.level();
        if level <= log::Level::Info {
            sinks.remember(level, &message);
        }
        let mut to_stderr = level <= log::Level::Warn || sinks.info_to_stderr;
        // Debug detail stays off syslog unless asked for.
        if level <= log::Level::Info || sinks.verbose {
            let facility = sinks.facility;
            let sent = sinks.syslog.as_mut().map(|w| send(w, level, &message));
            if sent == Some(false) {
                // rsyslog may have restarted: reconnect once, then fall back to stderr.
                sinks.syslog = connect(facility);
                let resent = sinks.syslog.as_mut().map(|w| send(w, level, &message));
                if resent != Some(true) {
                    sinks.syslog = None;
                    sinks.info_to_stderr = true;
                    to_stderr = true;
                }
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
    fn remember(&mut self, level: log::Level, message: &str) {
        let line = format!(
            "{} {level:<5} {message}",
            chrono::Local::now().format("%Y-%m-%dT%H:%M:%S")
        );
        self.recent_bytes += line.len() + 1;
        self.recent.push_back(line);
        while self.recent_bytes > RECENT_LIMIT && self.recent.len() > 1 {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.len() + 1;
            }
        }
    }
}

/// The newest messages this process logged (info and above, at most about 10 KB): what
/// syslog has of this run, for a monitoring ping. Messages never carry secrets.
pub fn recent_lines() -> Vec<String> {
    LOGGER
        .get()
        .and_then(|logger| logger.sinks.lock().ok())
        .map(|sinks| sinks.recent.iter().cloned().collect())
        .unwrap_or_default()
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
