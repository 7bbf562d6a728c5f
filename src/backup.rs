//! Run the CVP backup command (`cvpi backup cvp`) as `backup_user`, the way the old script's
//! `su - cvp -c "cvpi backup cvp"` ran it: through that user's login shell, which reads its
//! profile, with HOME, USER, LOGNAME, SHELL and PATH set from the password database and
//! nothing else from whoever started the job (cron, root by hand, cvp by hand: the same
//! environment each time). Its output goes to our log. It runs in a session of its own (its
//! own process group, and no controlling terminal: a command from cvp's INI must never reach
//! the terminal of a root who started the job by hand), so that a timeout, SIGTERM or SIGINT
//! stops everything it started (TERM, then KILL after a grace period) and the lock is freed.

use crate::error::{Error, Result};
use crate::users::{self, User};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL for a backup that is stopped.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the wait looks at the clock and for a stop request.
const TICK: Duration = Duration::from_millis(100);

/// The PATH the login shell starts with (its profile may add to it): cron's PATH lacks
/// /cvpi/bin, and `cvpi` itself calls other CVP tools by name.
pub const CHILD_PATH: &str =
    "/cvpi/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The login shell's script: run the command's words as they are (no second round of shell
/// parsing), after the profile has set the environment up.
const EXEC_WORDS: &str = "exec \"$@\"";

/// The login shell's script for `check`: where the program resolves, and whether it can be
/// executed, without running it.
const RESOLVE_PROGRAM: &str =
    "case $1 in */*) p=$1 ;; *) p=$(command -v -- \"$1\") || exit 127 ;; esac
[ -f \"$p\" ] || exit 127
[ -x \"$p\" ] || exit 126
printf 'cvp-backup-copy-resolved:%s\\n' \"$p\"";

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
    /// The session the command ran in (its pid): whatever it started belongs to it.
    pub session: u32,
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
    let program = command
        .first()
        .ok_or_else(|| Error::config("backup_command is empty"))?;
    let mut cmd = login_command(backup_user, EXEC_WORDS, command)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

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
        session: child.id(),
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

/// `script` run by `backup_user`'s login shell with `words` as its arguments (`$1`...), the
/// way `su - USER -c` runs a command: argv[0] `-sh` (so the shell reads the profile), a
/// cleared environment with HOME, USER, LOGNAME, SHELL and PATH, in the user's home, in a
/// session of its own, with the core-dump limit the job itself was given. As that user
/// already: run as it is. As root: switch to the user (groups, gid, uid) in the child.
/// Anyone else cannot switch: say so.
fn login_command(backup_user: &str, script: &str, words: &[String]) -> Result<Command> {
    let me = users::current_uid();
    let user = users::by_name(backup_user).ok_or_else(|| {
        Error::config(format!(
            "backup_user `{backup_user}` does not exist on this host: set backup_user in \
             [Backup_Settings]"
        ))
    })?;
    if user.uid != me && me != 0 {
        let name = users::by_uid(me)
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string());
        return Err(Error::config(format!(
            "running as {name}, but backup_user is {backup_user}: run as {backup_user} \
             (the cron job does) or as root"
        )));
    }
    let shell = login_shell(&user)?;
    let shell_name = shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let home = if user.home.is_dir() {
        user.home.clone()
    } else {
        "/".into()
    };
    let mut cmd = Command::new(&shell);
    cmd.arg0(format!("-{shell_name}"))
        .arg("-c")
        .arg(script)
        .arg(crate::logging::IDENT)
        .args(words)
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &shell)
        .env("PATH", CHILD_PATH)
        .current_dir(home);
    let core = crate::privilege::inherited_core_limit();
    // SAFETY: only async-signal-safe calls (setsid, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Our own process dropped its soft limit to 0 (secrets in memory); cvpi gets the
            // limit the job was started with, as under `su - cvp`.
            if let Some(core) = core {
                libc::setrlimit(libc::RLIMIT_CORE, &core);
            }
            Ok(())
        });
    }
    if user.uid != me {
        switch_user(&mut cmd, &user)?;
    }
    Ok(cmd)
}

/// The user's login shell, as `su -` takes it: /bin/sh when the field is empty; refused when
/// it is one that runs no command (nologin, false), since `su - USER -c` fails there too.
fn login_shell(user: &User) -> Result<std::path::PathBuf> {
    let shell = if user.shell.as_os_str().is_empty() {
        std::path::PathBuf::from("/bin/sh")
    } else {
        user.shell.clone()
    };
    let name = shell.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(name, "nologin" | "false") {
        return Err(Error::config(format!(
            "backup_user {} has no login shell ({}): `su - {} -c` cannot run the backup command \
             either; give it one (`usermod -s /bin/bash {}`) or set backup_user",
            user.name,
            shell.display(),
            user.name,
            user.name
        )));
    }
    Ok(shell)
}

fn switch_user(cmd: &mut Command, user: &User) -> Result<()> {
    let c_name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| Error::config("backup_user contains a NUL byte"))?;
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

/// Where `backup_user`'s login shell finds the backup command's program, looked up the way
/// the run starts it (same user, environment and profile) without running it: the path, or
/// why it cannot run. For `check`.
pub fn resolve_as_backup_user(command: &[String], backup_user: &str) -> Result<std::path::PathBuf> {
    let program = command
        .first()
        .ok_or_else(|| Error::config("backup_command is empty"))?;
    let mut cmd = login_command(backup_user, RESOLVE_PROGRAM, std::slice::from_ref(program))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|err| {
        Error::config(format!(
            "cannot start {backup_user}'s login shell to look for {program}: {err}"
        ))
    })?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = out.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(TICK),
            Ok(None) | Err(_) => {
                let _ = stop_group(&mut child);
                return Err(Error::config(format!(
                    "{backup_user}'s login shell did not answer within 30 s (does its profile \
                     wait for input?)"
                )));
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    let resolved = text
        .lines()
        .filter_map(|line| line.strip_prefix("cvp-backup-copy-resolved:"))
        .next_back();
    match (status.code(), resolved) {
        (Some(0), Some(path)) => Ok(path.into()),
        (Some(126), _) => Err(Error::config(format!(
            "{program} is not executable by {backup_user}: fix its mode, or set backup_command"
        ))),
        _ => Err(Error::config(format!(
            "{program} is not found by {backup_user}'s login shell (PATH {CHILD_PATH} and what \
             its profile adds): set backup_command to its full path with `cvp-backup-copy edit`"
        ))),
    }
}
