//! Run the CVP backup command (`cvpi backup cvp`), as `backup_user` when we are root, with
//! its output going to our log. Like `su - cvp -c`, without a shell or a password.

use crate::error::{Error, Result};
use crate::users::{self, User};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// cron's PATH lacks /cvpi/bin; `cvpi` itself calls other CVP tools by name.
pub const CHILD_PATH: &str =
    "/cvpi/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status.success()
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

pub fn run(command: &[String], backup_user: &str) -> Result<Outcome> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::config("backup_command is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare_user(&mut cmd, backup_user)?;

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|err| {
        Error::new(
            crate::exit_codes::ExitCode::BackupFailed,
            format!("cannot start backup command {program}: {err}"),
        )
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let relay_err = std::thread::spawn(move || relay(stderr, log::Level::Warn));
    relay(stdout, log::Level::Info);
    let _ = relay_err.join();
    let status = child.wait().map_err(|err| {
        Error::new(
            crate::exit_codes::ExitCode::BackupFailed,
            format!("backup command {program}: cannot wait for it: {err}"),
        )
    })?;
    Ok(Outcome {
        status,
        elapsed: started.elapsed(),
    })
}

fn relay(stream: Option<impl Read>, level: log::Level) {
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
