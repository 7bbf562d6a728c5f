//! `keygen` (newKeyGen.py): a new Fernet key, and the password re-encrypted with it; and the
//! one way `keygen` and `edit` change key and INI: together or not at all.

use crate::config::{self, SERVER};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::ini_edit::IniDocument;
use crate::privilege;
use crate::prompt;
use crate::safe_fs::{self, Dir, Mode};
use crate::secret::{self, Secret};
use crate::users::User;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const DEFAULT_KEY_FILE: &str = "/etc/cvp-backup-copy/keys/backup.key";

pub struct KeygenOptions {
    pub ini: PathBuf,
    /// Absolute (the command line's relative path is resolved against the working folder).
    pub key_file: Option<PathBuf>,
    pub password_stdin: bool,
    pub yes: bool,
    pub key_only: bool,
}

/// Where the key goes: `--key-file`, else the INI's `keyFile`, else the default.
fn key_path(options: &KeygenOptions, doc: Option<&IniDocument>) -> PathBuf {
    if let Some(path) = &options.key_file {
        return path.clone();
    }
    let from_ini = doc
        .and_then(|d| d.get(SERVER, "keyFile"))
        .filter(|v| !v.is_empty() && !v.contains("{{"));
    match from_ini {
        Some(value) => config::resolve_against(&options.ini, &value),
        None => PathBuf::from(DEFAULT_KEY_FILE),
    }
}

pub fn keygen(options: &KeygenOptions) -> Result<()> {
    let text = std::fs::read_to_string(&options.ini);
    let owner = privilege::key_owner(&options.ini)?;
    if options.key_only {
        let doc = text.ok().map(|t| IniDocument::parse(&t));
        let path = key_path(options, doc.as_ref());
        return privilege::as_owner(owner.as_ref(), || create_key_if_missing(&path));
    }
    let text = text.map_err(|err| {
        Error::config(format!(
            "cannot read configuration {}: {err}",
            options.ini.display()
        ))
    })?;
    config::refuse_duplicates(&text, &options.ini)?;
    let mut doc = IniDocument::parse(&text);
    warn_if_loose(&options.ini);
    let path = key_path(options, Some(&doc));
    if !options.yes {
        if !prompt::interactive() {
            return Err(Error::new(
                ExitCode::Usage,
                "keygen replaces the key and the password token: run it on a terminal, or \
                 confirm with --yes",
            ));
        }
        println!(
            "keygen writes a new key to {} and replaces the password in {}.\n\
             This cannot be undone: the current password token will not decrypt with the new key.",
            path.display(),
            options.ini.display()
        );
        if !prompt::yes_no("Continue? (y/n) ")? {
            return Err(Error::new(
                ExitCode::Usage,
                "keygen cancelled: nothing changed",
            ));
        }
    }
    let password = if options.password_stdin {
        prompt::password_from_stdin()?
    } else {
        let user = doc.get(SERVER, "user").unwrap_or_default();
        let server = doc.get(SERVER, "server").unwrap_or_default();
        prompt::new_password(&format!("{user}@{server}"))?
    };
    let key = NewKey {
        path: path.clone(),
        key: Zeroizing::new(secret::new_key()),
    };
    let token = encrypt_with(&key.key, &password)?;
    drop(password);
    // The other destinations whose passwords this key file decrypts: encrypted again with
    // the new key when the old one still decrypts them; else named, to be set again.
    let mut lost = Vec::new();
    for section in doc.sections() {
        if config::destination_section(&section).is_none() {
            continue;
        }
        let own = doc
            .get(&section, "keyFile")
            .filter(|v| !v.is_empty())
            .map(|v| config::resolve_against(&options.ini, &v));
        if own.as_ref().is_some_and(|own| *own != path) {
            continue;
        }
        let Some(old_token) = doc.get(&section, "password").filter(|t| !t.contains("{{")) else {
            continue;
        };
        let old = privilege::as_owner(owner.as_ref(), || {
            secret::decrypt_password(&old_token, &path, &options.ini)
        });
        match old {
            Ok(secret) => doc.set(&section, "password", &encrypt_with(&key.key, &secret)?),
            Err(_) => lost.push(section),
        }
    }
    doc.set(SERVER, "password", &token);
    doc.set(SERVER, "keyFile", &path.display().to_string());
    if let Some(kept) = commit(
        &options.ini,
        Before::Text(&text),
        &doc,
        Some(&key),
        owner.as_ref(),
    )? {
        println!("the previous key is kept as {}", kept.display());
    }
    println!(
        "new key written to {} (mode 0600); password in {} encrypted with it",
        path.display(),
        options.ini.display()
    );
    for section in lost {
        let name = config::destination_section(&section).unwrap_or_default();
        eprintln!(
            "cvp-backup-copy: warning: [{}]'s password did not decrypt with the old key: set it \
             again with `cvp-backup-copy edit --destination {}`",
            crate::error::printable(&section),
            crate::error::printable(name)
        );
    }
    Ok(())
}

/// `--key-only` (the RPM's post-install): create the key when it is missing, nothing else.
fn create_key_if_missing(path: &Path) -> Result<()> {
    let fail = |err: std::io::Error| {
        Error::config(format!("cannot write key file {}: {err}", path.display()))
    };
    let (folder, name) = safe_fs::split(path).map_err(fail)?;
    let dir = Dir::open_or_create(&folder, 0o700).map_err(fail)?;
    if dir.stat(&name).map_err(fail)?.is_some() {
        println!("key file {} exists: unchanged", path.display());
        return Ok(());
    }
    let key = Zeroizing::new(secret::new_key());
    dir.replace(&name, key.as_bytes(), Mode::Force(0o600))
        .map_err(fail)?;
    println!("created key file {} (mode 0600)", path.display());
    Ok(())
}

pub fn encrypt_with(key: &str, password: &Secret) -> Result<String> {
    let fernet = fernet::Fernet::new(key)
        .ok_or_else(|| Error::config("internal error: a generated key was not valid"))?;
    Ok(secret::encrypt_password(&fernet, password))
}

/// A key to write together with the INI.
pub struct NewKey {
    pub path: PathBuf,
    pub key: Zeroizing<String>,
}

/// Save the INI's new text and, when given, a new key: together or not at all, so the key
/// always decrypts the token the INI holds. Both are written under temporary names first
/// (which proves both folders take a file: `sudo -u cvp ... keygen` fails here, with
/// nothing changed); the old key is kept as `NAME.bak-<timestamp>`; then the INI is renamed
/// into place and the key right after it. Should that last rename fail, the INI's old text
/// is put back (a new INI goes again). The INI is written by whoever runs the command (its folder is root's), the
/// key as `key_owner` (the INI's owner, when root edits another account's INI). Returns
/// where the old key was kept.
pub fn commit(
    ini: &Path,
    before: Before,
    doc: &IniDocument,
    new_key: Option<&NewKey>,
    key_owner: Option<&User>,
) -> Result<Option<PathBuf>> {
    let unchanged = |what: String| Error::config(format!("{what}; nothing changed"));
    let (ini_folder, ini_name) = safe_fs::split(ini)
        .map_err(|err| unchanged(format!("cannot save {}: {err}", ini.display())))?;
    let ini_dir = Dir::open(&ini_folder)
        .map_err(|err| unchanged(format!("cannot save {}: {err}", ini.display())))?;
    let ini_tmp = ini_dir
        .stage(&ini_name, doc.render().as_bytes(), Mode::KeepOr(0o600))
        .map_err(|err| {
            unchanged(format!(
                "cannot save {}: {err} (its folder {} must be writable: run this as root)",
                ini.display(),
                ini_folder.display()
            ))
        })?;
    // A new INI is given to its account before it gets its name, through the handle of the
    // file just made: nothing put in its place meanwhile is given away.
    if let Before::Nothing { owner: Some(owner) } = before {
        let given = ini_dir.open_existing(&ini_tmp, false).and_then(|file| {
            let file = file.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))
        });
        if let Err(err) = given {
            let _ = ini_dir.remove(&ini_tmp);
            return Err(unchanged(format!(
                "cannot give {} to {}: {err}",
                ini.display(),
                owner.name
            )));
        }
        if let Some(new_key) = new_key {
            if let Err(err) = key_folder_for(new_key, owner) {
                let _ = ini_dir.remove(&ini_tmp);
                return Err(unchanged(err.message));
            }
        }
    }
    let Some(new_key) = new_key else {
        return ini_dir
            .rename(&ini_tmp, &ini_name)
            .and_then(|()| ini_dir.sync())
            .map(|()| None)
            .map_err(|err| {
                let _ = ini_dir.remove(&ini_tmp);
                unchanged(format!("cannot save {}: {err}", ini.display()))
            });
    };
    let key_path = &new_key.path;
    let staged = privilege::as_owner(key_owner, || stage_key(new_key));
    let (key_dir, key_name, key_tmp, kept) = match staged {
        Ok(staged) => staged,
        Err(err) => {
            let _ = ini_dir.remove(&ini_tmp);
            return Err(unchanged(err.message));
        }
    };
    if let Err(err) = ini_dir
        .rename(&ini_tmp, &ini_name)
        .and_then(|()| ini_dir.sync())
    {
        let _ = ini_dir.remove(&ini_tmp);
        let _ = privilege::as_owner(key_owner, || Ok(key_dir.remove(&key_tmp)));
        return Err(unchanged(format!("cannot save {}: {err}", ini.display())));
    }
    let placed = privilege::as_owner(key_owner, || {
        key_dir
            .rename(&key_tmp, &key_name)
            .and_then(|()| key_dir.sync())
            .map_err(|err| {
                let _ = key_dir.remove(&key_tmp);
                Error::config(format!(
                    "cannot write key file {}: {err}",
                    key_path.display()
                ))
            })
    });
    if let Err(err) = placed {
        // The token the INI now holds needs the key that could not be placed: undo.
        let restored = match before {
            Before::Text(text) => ini_dir.replace(&ini_name, text.as_bytes(), Mode::KeepOr(0o600)),
            // A new INI: there was none.
            Before::Nothing { .. } => ini_dir.remove(&ini_name),
        };
        return Err(match restored {
            Ok(()) => unchanged(format!("{}; {} was put back", err.message, ini.display())),
            Err(undo) => Error::config(format!(
                "{}; and {} could not be put back ({undo}): its password no longer decrypts; \
                 run `cvp-backup-copy keygen` again",
                err.message,
                ini.display()
            )),
        });
    }
    Ok(kept)
}

/// What there was before `commit` saves an INI.
#[derive(Debug, Clone, Copy)]
pub enum Before<'a> {
    /// Its text as it was read: put back if the new key cannot be placed.
    Text(&'a str),
    /// No INI: a new one, given to `owner` (the job's account, when root makes it).
    Nothing { owner: Option<&'a User> },
}

/// A new INI's key folder, when it is missing: made by root (the INI's folder is root's) and
/// given to the account that writes the key there, 0700, as the RPM lays out
/// /etc/cvp-backup-copy/keys. Only for an INI root makes in this session, whose key path
/// root chose: never for a path from an INI another account could edit.
fn key_folder_for(new_key: &NewKey, owner: &User) -> Result<()> {
    let fail = |err: std::io::Error| {
        Error::config(format!(
            "cannot make the folder of key file {}: {err}",
            new_key.path.display()
        ))
    };
    let (folder, _) = safe_fs::split(&new_key.path).map_err(fail)?;
    let (dir, created) = Dir::open_or_create_noting(&folder, 0o755).map_err(fail)?;
    if created.made(dir.path()) {
        dir.give_to(owner.uid, owner.gid, 0o700).map_err(fail)?;
    }
    Ok(())
}

/// The new key under a temporary name beside its final one, and a copy of the old key.
fn stage_key(new_key: &NewKey) -> Result<(Dir, String, String, Option<PathBuf>)> {
    let path = &new_key.path;
    let fail = |err: std::io::Error| {
        Error::config(format!("cannot write key file {}: {err}", path.display()))
    };
    let (folder, name) = safe_fs::split(path).map_err(fail)?;
    let dir = Dir::open_or_create(&folder, 0o700).map_err(fail)?;
    let tmp = dir
        .stage(&name, new_key.key.as_bytes(), Mode::Force(0o600))
        .map_err(fail)?;
    let kept = match dir.read(&name, 4096) {
        Ok(None) => None,
        Ok(Some(old)) => {
            let old = Zeroizing::new(old);
            let backup = format!("{name}.bak-{}", chrono::Local::now().format("%Y%m%d%H%M%S"));
            match dir.replace(&backup, &old, Mode::Force(0o600)) {
                Ok(()) => Some(folder.join(backup)),
                Err(err) => {
                    let _ = dir.remove(&tmp);
                    return Err(Error::config(format!(
                        "cannot keep a copy of {} as {backup}: {err}",
                        path.display()
                    )));
                }
            }
        }
        Err(err) => {
            let _ = dir.remove(&tmp);
            return Err(Error::config(format!(
                "cannot read the current key {} to keep a copy: {err}",
                path.display()
            )));
        }
    };
    Ok((dir, name, tmp, kept))
}

/// The INI holds the token and names the key: others should not read it.
pub fn warn_if_loose(ini: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(ini) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} is open to group or other (mode {mode:04o}); run `chmod 600 {}`",
                ini.display(),
                crate::error::shell_word(ini)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A new INI's missing key folder is made by root and given to the account that writes
    /// the key: 0700, as the RPM's /etc/cvp-backup-copy/keys. An existing one is left as it is.
    #[test]
    fn a_new_ini_s_key_folder_is_the_job_account_s() {
        let nobody = crate::users::by_name("nobody").expect("every Debian has nobody");
        let base = tempfile::tempdir().expect("tempdir");
        let key = NewKey {
            path: base.path().join("etc/keys/backup.key"),
            key: Zeroizing::new(crate::secret::new_key()),
        };
        key_folder_for(&key, &nobody).expect("made");
        let keys = std::fs::metadata(base.path().join("etc/keys")).expect("keys");
        assert_eq!((keys.uid(), keys.mode() & 0o7777), (nobody.uid, 0o700));
        let etc = std::fs::metadata(base.path().join("etc")).expect("etc");
        assert_eq!(
            (etc.uid(), etc.mode() & 0o777),
            (0, 0o755),
            "the folder above is root's"
        );
        // There already: not re-owned.
        let existing = tempfile::tempdir().expect("tempdir");
        let key = NewKey {
            path: existing.path().join("backup.key"),
            ..key
        };
        key_folder_for(&key, &nobody).expect("there");
        assert_eq!(std::fs::metadata(existing.path()).expect("dir").uid(), 0);
    }
}
