//! `keygen` (newKeyGen.py): a new Fernet key, and the password re-encrypted with it.

use crate::config::{self, SERVER};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::ini_edit::IniDocument;
use crate::prompt;
use crate::safe_fs::Mode;
use crate::secret::{self, Secret};
use std::path::{Path, PathBuf};

pub const DEFAULT_KEY_FILE: &str = "/etc/cvp-backup-copy/keys/backup.key";

pub struct KeygenOptions {
    pub ini: PathBuf,
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
    if options.key_only {
        let doc = text.ok().map(|t| IniDocument::parse(&t));
        let path = key_path(options, doc.as_ref());
        if path.exists() {
            println!("key file {} exists: unchanged", path.display());
            return Ok(());
        }
        secret::write_key(&path, &secret::new_key())?;
        println!("created key file {} (mode 0600)", path.display());
        return Ok(());
    }
    let text = text.map_err(|err| {
        Error::config(format!(
            "cannot read configuration {}: {err}",
            options.ini.display()
        ))
    })?;
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
    let key = secret::new_key();
    let token = encrypt_with(&key, &password)?;
    drop(password);
    if path.exists() {
        let kept = backup_key(&path)?;
        println!("the previous key is kept as {}", kept.display());
    }
    secret::write_key(&path, &key)?;
    doc.set(SERVER, "password", &token);
    doc.set(SERVER, "keyFile", &path.display().to_string());
    save(&options.ini, &doc)?;
    println!(
        "new key written to {} (mode 0600); password in {} encrypted with it",
        path.display(),
        options.ini.display()
    );
    Ok(())
}

pub fn encrypt_with(key: &str, password: &Secret) -> Result<String> {
    let fernet = fernet::Fernet::new(key)
        .ok_or_else(|| Error::config("internal error: a generated key was not valid"))?;
    Ok(secret::encrypt_password(&fernet, password))
}

/// Copy a key to `NAME.bak-<timestamp>` (0600) before it is replaced.
pub fn backup_key(path: &Path) -> Result<PathBuf> {
    let stamp = chrono::Local::now().format("%Y%m%d%H%M%S");
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".bak-{stamp}"));
    let backup = PathBuf::from(name);
    let contents = std::fs::read(path).map_err(|err| {
        Error::config(format!(
            "cannot read key file {} to keep a copy: {err}",
            path.display()
        ))
    })?;
    let contents = zeroize::Zeroizing::new(contents);
    crate::safe_fs::replace_file(&backup, &contents, Mode::Force(0o600)).map_err(|err| {
        Error::config(format!(
            "cannot keep a copy of {} as {}: {err}",
            path.display(),
            backup.display()
        ))
    })?;
    Ok(backup)
}

pub fn save(ini: &Path, doc: &IniDocument) -> Result<()> {
    crate::safe_fs::replace_file(ini, doc.render().as_bytes(), Mode::KeepOr(0o600))
        .map_err(|err| Error::config(format!("cannot save {}: {err}", ini.display())))
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
                ini.display()
            );
        }
    }
}
