//! Root is never lent to the account that owns the configuration.
//!
//! The rule (README, "Running as root"): whoever owns `backup.ini` is who the tool acts as.
//! Everything under `/etc/cvp-backup-copy`, `/var/lib/cvp-backup-copy` and `/data/cvpbackup`
//! that the job touches belongs to the cvp account, which can edit its INI (`backup_user`,
//! `backup_command`, `keyFile`, `state_dir`, ...). So when root runs `run`, `check`, `list` or
//! `fetch` with an INI another user owns, the tool becomes that user (its groups, gid, uid)
//! before it reads anything the INI names: nothing it writes is root's, and nothing in a
//! cvp-owned INI runs as root. `keygen` and `edit` write the INI itself as root (its folder is
//! root's), and every key file as the INI's owner. An INI owned by root is trusted only when
//! no other account can change it (the file, or the folder it is in).

use crate::error::{Error, Result};
use crate::users::{self, User};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The core-dump limit the process was started with, before `no_core_dumps`.
static INHERITED_CORE_LIMIT: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Core dumps would carry the decrypted password and the key: none, for any command. Only the
/// soft limit drops to 0 (and the process is made not dumpable): the hard limit stays, so the
/// backup command gets back the limit the job was given (`inherited_core_limit`).
pub fn no_core_dumps() {
    // SAFETY: plain system calls on our own process.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0 {
            let _ = INHERITED_CORE_LIMIT.set(limit);
        }
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: limit.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// The core-dump limit to give a program we start (None: `no_core_dumps` never ran).
pub fn inherited_core_limit() -> Option<libc::rlimit> {
    INHERITED_CORE_LIMIT.get().copied()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    euid() == 0
}

fn euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// Whose authority the INI at `ini` carries: its owner. An INI root owns is trusted only when
/// no other account can change it or what its path leads through: every folder on the way
/// (as given, and as the symlinks resolve) must be root's and not writable by group or other
/// (sticky folders excepted), and so must the file. None when we are not root (nothing to
/// decide).
pub fn authority(ini: &Path) -> Result<Option<User>> {
    if users::current_uid() != 0 {
        return Ok(None);
    }
    let meta = std::fs::metadata(ini).map_err(|err| {
        Error::config(format!(
            "cannot read configuration {}: {err}",
            ini.display()
        ))
    })?;
    if meta.uid() != 0 {
        let owner = users::by_uid(meta.uid()).ok_or_else(|| {
            Error::config(format!(
                "{} belongs to uid {}, which is not a user of this node: give it to the account \
                 the job runs as (`chown cvp {}`)",
                ini.display(),
                meta.uid(),
                crate::error::shell_word(ini)
            ))
        })?;
        return Ok(Some(owner));
    }
    let real = std::fs::canonicalize(ini)
        .map_err(|err| Error::config(format!("cannot resolve {}: {err}", ini.display())))?;
    match untrusted(ini).or_else(|| untrusted(&real)) {
        None => Ok(Some(User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: users::by_uid(0)
                .map(|u| u.home)
                .unwrap_or_else(|| "/root".into()),
            shell: "/bin/sh".into(),
        })),
        Some(problem) => Err(Error::config(format!(
            "{} is root's, but {problem}: another account could make root run its commands. \
             Give the INI to the account the job runs as (`chown cvp {}`), or keep it and every \
             folder above it root's alone (`chmod go-w`)",
            ini.display(),
            crate::error::shell_word(ini)
        ))),
    }
}

/// The first thing on `path` (each leading folder, symlinks not followed, then the file)
/// that an account other than root could change.
/// Whether an account other than `me` and root could change the file or folder `meta`
/// describes: owned by another account, or writable by group or others (a sticky folder such
/// as /tmp excepted: there only owners replace their own entries).
pub fn others_may_change(meta: &std::fs::Metadata, me: u32) -> bool {
    let mode = meta.mode();
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    (meta.uid() != me && meta.uid() != 0) || (mode & 0o022 != 0 && !sticky_dir)
}

fn untrusted(path: &Path) -> Option<String> {
    let mut prefix = std::path::PathBuf::new();
    for component in path.components() {
        prefix.push(component);
        let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
            return Some(format!("{} cannot be examined", prefix.display()));
        };
        let mode = meta.mode();
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        if meta.uid() != 0 {
            return Some(format!(
                "{} belongs to uid {}",
                prefix.display(),
                meta.uid()
            ));
        }
        if !meta.file_type().is_symlink() && mode & 0o022 != 0 && !sticky_dir {
            return Some(format!(
                "{} is writable by group or other (mode {:04o})",
                prefix.display(),
                mode & 0o7777
            ));
        }
    }
    None
}

/// Become `user` for good (groups, gid, uid), with its home as HOME: from here on the
/// process can do nothing the user could not.
pub fn become_user(user: &User) -> Result<()> {
    if user.uid == 0 || euid() != 0 {
        return Ok(());
    }
    let name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| Error::config("a user name contains a NUL byte"))?;
    // SAFETY: plain system calls; the name is NUL-terminated.
    let switched = unsafe {
        libc::initgroups(name.as_ptr(), user.gid as _) == 0
            && libc::setgid(user.gid) == 0
            && libc::setuid(user.uid) == 0
    };
    // The uid change is irreversible: regaining root must fail.
    let irreversible = unsafe { libc::setuid(0) != 0 && libc::getuid() == user.uid };
    if !switched || !irreversible {
        return Err(Error::config(format!(
            "cannot switch to user {}: {}",
            user.name,
            std::io::Error::last_os_error()
        )));
    }
    // Root's environment (tokens, proxies, SUDO_*) is not the account's: a login-like one
    // instead, keeping only the locale, the time zone and this tool's own settings.
    let kept: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            matches!(key.as_ref(), "LANG" | "TZ" | "TERM")
                || key.starts_with("LC_")
                || key.starts_with("CVP_BACKUP_COPY_")
        })
        .collect();
    // SAFETY: called at start-up, before any thread is spawned.
    unsafe {
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        for (key, value) in kept {
            std::env::set_var(key, value);
        }
        std::env::set_var("HOME", &user.home);
        std::env::set_var("USER", &user.name);
        std::env::set_var("LOGNAME", &user.name);
        std::env::set_var("SHELL", &user.shell);
        std::env::set_var("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    // Non-dumpable again (setuid resets it from the system default).
    no_core_dumps();
    Ok(())
}

/// As root, act as the INI's owner from here on (see the module's rule). Logged, so that
/// `journalctl` shows why a root command wrote files as cvp.
pub fn act_as_ini_owner(ini: &Path) -> Result<()> {
    let Some(owner) = authority(ini)? else {
        return Ok(());
    };
    if owner.uid != 0 {
        log::info!(
            "running as {} (the owner of {}), not as root",
            owner.name,
            ini.display()
        );
        become_user(&owner)?;
    }
    Ok(())
}

/// Run `work` with the effective identity of `owner` (groups, gid, uid), then return to
/// root: for the files an INI names, written by `keygen` or `edit` run as root. Nothing
/// else runs meanwhile (these commands have one thread).
pub fn as_owner<T>(owner: Option<&User>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(owner) = owner.filter(|o| o.uid != 0 && euid() == 0) else {
        return work();
    };
    let mut groups = users::group_ids(owner);
    if groups.is_empty() {
        groups.push(owner.gid);
    }
    // SAFETY: plain system calls; `groups` outlives the call.
    let switched = unsafe {
        libc::setgroups(groups.len(), groups.as_ptr()) == 0
            && libc::setegid(owner.gid) == 0
            && libc::seteuid(owner.uid) == 0
    };
    let result = if switched {
        work()
    } else {
        Err(Error::config(format!(
            "cannot act as {}: {}",
            owner.name,
            std::io::Error::last_os_error()
        )))
    };
    // SAFETY: back to root (the real uid is still 0).
    let restored = unsafe {
        libc::seteuid(0) == 0 && libc::setegid(0) == 0 && {
            let root_groups = [0 as libc::gid_t];
            libc::setgroups(1, root_groups.as_ptr()) == 0
        }
    };
    if !restored {
        return Err(Error::config(format!(
            "cannot return to root after acting as {}: {}",
            owner.name,
            std::io::Error::last_os_error()
        )));
    }
    result
}

/// The owner of the INI, when root edits a file another account owns (keys are then read
/// and written as that account); None when the INI is root's and trusted, or absent, or we
/// are not root. An INI root owns but others could change is refused, as for `run`.
pub fn key_owner(ini: &Path) -> Result<Option<User>> {
    if euid() != 0 || !ini.exists() {
        return Ok(None);
    }
    Ok(authority(ini)?.filter(|user| user.uid != 0))
}
