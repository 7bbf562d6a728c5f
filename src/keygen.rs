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
    doc.set(SERVER, "password", &token);
    doc.set(SERVER, "keyFile", &path.display().to_string());
    if let Some(kept) = commit(&options.ini, Some(&text), &doc, Some(&key), owner.as_ref())? {
        println!("the previous key is kept as {}", kept.display());
    }
    println!(
        "new key written to {} (mode 0600); password in {} encrypted with it",
        path.display(),
        options.ini.display()
    );
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
/// is put back (`old_text` None: the INI is new, and goes again). The INI is written by whoever runs the command (its folder is root's), the
/// key as `key_owner` (the INI's owner, when root edits another account's INI). Returns
/// where the old key was kept.
pub fn commit(
    ini: &Path,
    old_text: Option<&str>,
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
        let restored = match old_text {
            Some(text) => ini_dir.replace(&ini_name, text.as_bytes(), Mode::KeepOr(0o600)),
            // A new INI: there was none.
            None => ini_dir.remove(&ini_name),
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
