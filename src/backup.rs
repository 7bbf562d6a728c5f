//! Run the CVP backup command (`cvpi backup cvp`), as `backup_user` when we are root, with
//! its output going to our log. Like `su - cvp -c`, without a shell or a password. It runs
//! in a session of its own (its own process group, and no controlling terminal: a command
//! from cvp's INI must never reach the terminal of a root who started the job by hand), so
//! that a timeout, SIGTERM or SIGINT stops everything it started (TERM, then KILL after a
//! grace period) and the lock is freed.

use crate::error::{Error, Result};
use crate::users::{self, User};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL for a backup that is stopped.
const GRACE: Duration = Duration::from_secs(10);
/// How often the wait looks at the clock and for a stop request.
const TICK: Duration = Duration::from_millis(100);

/// cron's PATH lacks /cvpi/bin; `cvpi` itself calls other CVP tools by name.
pub const CHILD_PATH: &str =
    "/cvpi/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub enum Ending {
    Exited(ExitStatus),
    /// Ran longer than `backup_timeout`: stopped.
    TimedOut(Duration),
    /// The job was asked to stop (the signal's name): the backup was stopped too.
    Stopped(&'static str),
}

#[derive(Debug)]
pub struct Outcome {
    pub ending: Ending,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(&self.ending, Ending::Exited(status) if status.success())
    }

    /// Why it did not succeed, for the log: "exit status: 1", "timed out after 21600 s".
    pub fn failure(&self) -> String {
        match &self.ending {
            Ending::Exited(status) => status.to_string(),
            Ending::TimedOut(limit) => format!(
                "did not finish within backup_timeout = {} s and was stopped",
                limit.as_secs()
            ),
            Ending::Stopped(signal) => format!("stopped because the job received {signal}"),
        }
    }
}

/// Bytes free for an unprivileged user in the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Where `program` is found as the run starts it: as given when it has a slash, else in
/// CHILD_PATH.
pub fn resolve_program(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let path = std::path::PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    CHILD_PATH
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// How the command will be started, for logs and `--dry-run`.
pub fn describe(command: &[String], backup_user: &str) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| {
            shlex::try_quote(w)
                .map(|q| q.into_owned())
                .unwrap_or_default()
        })
        .collect();
    format!("{} (as user {backup_user})", words.join(" "))
}

pub fn run(command: &[String], backup_user: &str, timeout: Duration) -> Result<Outcome> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::config("backup_command is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    prepare_user(&mut cmd, backup_user)?;

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|err| {
        Error::new(
            crate::exit_codes::ExitCode::BackupFailed,
            format!("cannot start backup command {program}: {err}"),
        )
    })?;
    let (done_tx, done_rx) = mpsc::channel();
    for (stream, level) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            log::Level::Info,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            log::Level::Warn,
        ),
    ] {
        let done = done_tx.clone();
        std::thread::spawn(move || {
            relay(stream, level);
            let _ = done.send(());
        });
    }
    drop(done_tx);
    let ending = wait_or_stop(&mut child, program, timeout)?;
    // Output still in the pipes is logged; a grandchild that keeps them open is not waited for.
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(Outcome {
        ending,
        elapsed: started.elapsed(),
    })
}

/// Wait for the command; stop its whole process group on a timeout or a stop request.
fn wait_or_stop(child: &mut Child, program: &str, timeout: Duration) -> Result<Ending> {
    let started = Instant::now();
    let wait_error = |err: std::io::Error| {
        Error::new(
            crate::exit_codes::ExitCode::BackupFailed,
            format!("backup command {program}: cannot wait for it: {err}"),
        )
    };
    loop {
        if let Some(status) = child.try_wait().map_err(wait_error)? {
            return Ok(Ending::Exited(status));
        }
        let ending = if let Some(signal) = crate::signals::received() {
            Ending::Stopped(signal)
        } else if started.elapsed() >= timeout {
            Ending::TimedOut(timeout)
        } else {
            std::thread::sleep(TICK);
            continue;
        };
        log::warn!(
            "stopping the backup command (process group {}): {}",
            child.id(),
            match &ending {
                Ending::TimedOut(_) => "backup_timeout reached",
                _ => "the job was asked to stop",
            }
        );
        stop_group(child).map_err(wait_error)?;
        return Ok(ending);
    }
}

/// SIGTERM to the group, SIGKILL after GRACE, then reap the leader.
fn stop_group(child: &mut Child) -> std::io::Result<()> {
    let group = child.id() as libc::pid_t;
    // SAFETY: kill() with a negative pid signals the process group we created.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(TICK);
    }
    // Whatever is left of the group (the leader, or children it left behind).
    unsafe { libc::kill(-group, libc::SIGKILL) };
    child.wait().map(drop)
}

fn relay(stream: Option<Box<dyn Read + Send>>, level: log::Level) {
    let Some(stream) = stream else { return };
    for line in BufReader::new(stream).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if !text.is_empty() {
            log::log!(level, "backup: {text}");
        }
    }
}

/// Same user: run directly. Root: switch to `backup_user` (groups, gid, uid) in the child,
/// with a login-like environment. Anyone else: we cannot switch, say so.
fn prepare_user(cmd: &mut Command, backup_user: &str) -> Result<()> {
    let me = users::current_uid();
    let target = users::by_name(backup_user).ok_or_else(|| {
        Error::config(format!(
            "backup_user `{backup_user}` does not exist on this host: set backup_user in \
             [Backup_Settings]"
        ))
    })?;
    if target.uid == me {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env(
            "PATH",
            if path.is_empty() {
                CHILD_PATH.to_string()
            } else {
                format!("/cvpi/bin:{path}")
            },
        );
        return Ok(());
    }
    if me != 0 {
        let name = users::by_uid(me)
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string());
        return Err(Error::config(format!(
            "running as {name}, but backup_user is {backup_user}: run as {backup_user} \
             (the cron job does) or as root"
        )));
    }
    switch_user(cmd, target)
}

fn switch_user(cmd: &mut Command, user: User) -> Result<()> {
    let c_name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| Error::config("backup_user contains a NUL byte"))?;
    let home = if user.home.is_dir() {
        user.home.clone()
    } else {
        "/".into()
    };
    cmd.env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &user.shell)
        .env("PATH", CHILD_PATH)
        .env("LANG", std::env::var("LANG").unwrap_or_else(|_| "C".into()))
        .current_dir(home);
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::initgroups(c_name.as_ptr(), gid as _) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
