//! `edit` (iniEditor.py): show the settings with the password masked, change them one by
//! one, or scripted with `--set`. Nothing is written until every change is valid and, on a
//! terminal, the operator says so; then key and INI are written atomically.

use crate::config::{self, BACKUP, KNOWN_OPTIONS, SERVER};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::ini_edit::IniDocument;
use crate::keygen::{self, NewKey, DEFAULT_KEY_FILE};
use crate::privilege;
use crate::prompt;
use crate::secret::{self, Secret};
use crate::users::User;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub struct EditOptions {
    pub ini: PathBuf,
    /// `Section.option=value`
    pub set: Vec<String>,
    pub password_stdin: bool,
    /// `--destination NAME`: edit `[Destination NAME]` (made if missing) instead of
    /// `[Server_Settings]`; the password then is that destination's (S3: its secret key).
    pub destination: Option<String>,
}

struct Session {
    ini: PathBuf,
    /// The INI as it was read: put back if a new key cannot be placed (None: a new INI).
    text: Option<String>,
    doc: IniDocument,
    /// A key to write when the edit is saved.
    new_key: Option<NewKey>,
    changed: bool,
    /// When root edits another account's INI: the files it names are read and written as
    /// that account.
    owner: Option<User>,
    /// The destination section being edited: `[Server_Settings]` or `[Destination NAME]`.
    section: String,
}

impl Session {
    fn load(ini: &Path) -> Result<Session> {
        let text = std::fs::read_to_string(ini).map_err(|err| {
            Error::config(format!(
                "cannot read configuration {}: {err}",
                ini.display()
            ))
        })?;
        config::refuse_duplicates(&text, ini)?;
        Ok(Session {
            ini: ini.to_path_buf(),
            doc: IniDocument::parse(&text),
            text: Some(text),
            new_key: None,
            changed: false,
            owner: privilege::key_owner(ini)?,
            section: SERVER.to_string(),
        })
    }

    /// A new INI, from the one the RPM installs (every option explained, placeholders for
    /// what must be set): written only when the edit is saved. Made by root, it is the job's
    /// account's (`backup_user`'s default, cvp, when it exists), as the RPM lays it out: the
    /// cvp cron job must read it, and its keys are written as that account.
    fn new_from_default(ini: &Path) -> Session {
        let job_account = config::default_value("backup_user").and_then(crate::users::by_name);
        Session {
            ini: ini.to_path_buf(),
            doc: IniDocument::parse(config::DEFAULT_INI_TEXT),
            text: None,
            new_key: None,
            changed: true,
            owner: job_account.filter(|user| user.uid != 0 && privilege::is_root()),
            section: SERVER.to_string(),
        }
    }

    /// Touch what the INI names with its owner's rights, never more.
    fn as_owner<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        privilege::as_owner(self.owner.as_ref(), work)
    }

    fn value(&self, section: &str, option: &str) -> Option<String> {
        self.doc.get(section, option).filter(|v| !v.is_empty())
    }

    fn key_path(&self) -> Option<PathBuf> {
        if let Some(new) = &self.new_key {
            return Some(new.path.clone());
        }
        self.key_path_of(&self.section)
    }

    /// The key file a section's password decrypts with: its own keyFile, else main's.
    fn key_path_of(&self, section: &str) -> Option<PathBuf> {
        self.value(section, "keyFile")
            .or_else(|| self.value(SERVER, "keyFile"))
            .filter(|v| !v.contains("{{"))
            .map(|v| config::resolve_against(&self.ini, &v))
    }

    /// Every destination section: `[Server_Settings]` and each `[Destination NAME]`.
    fn destination_sections(&self) -> Vec<String> {
        let mut sections = vec![SERVER.to_string()];
        sections.extend(
            self.doc
                .sections()
                .into_iter()
                .filter(|s| config::destination_section(s).is_some()),
        );
        sections
    }

    /// The other destinations' passwords that decrypt with the key file at `path` now (to
    /// be encrypted again once it changes); a section whose token does not decrypt is named.
    fn passwords_sharing(&self, path: &Path) -> Result<Vec<(String, Secret)>> {
        let mut found = Vec::new();
        for section in self.destination_sections() {
            if section.eq_ignore_ascii_case(&self.section)
                || self.key_path_of(&section).as_deref() != Some(path)
            {
                continue;
            }
            let Some(token) = self
                .value(&section, "password")
                .filter(|t| !t.contains("{{"))
            else {
                continue;
            };
            let secret = self
                .as_owner(|| secret::decrypt_password(&token, path, &self.ini))
                .map_err(|err| {
                    Error::config(format!(
                        "[{section}]'s password does not decrypt with {} ({err}): set it again \
                         with `cvp-backup-copy edit --destination NAME` before changing the key",
                        path.display()
                    ))
                })?;
            found.push((section, secret));
        }
        Ok(found)
    }

    /// Encrypt those passwords again with the key they now decrypt with.
    fn restore_passwords(&mut self, passwords: Vec<(String, Secret)>) -> Result<()> {
        for (section, secret) in passwords {
            let key = match (&self.new_key, self.key_path_of(&section)) {
                (Some(new), Some(path)) if path == new.path => new.key.clone(),
                (_, Some(path)) => self.as_owner(|| secret::read_key_text(&path))?,
                (_, None) => continue,
            };
            let token = keygen::encrypt_with(key.trim(), &secret)?;
            self.set(&section, "password", &token);
        }
        Ok(())
    }

    /// The key text that encrypts the password from now on.
    fn current_key(&self) -> Result<Zeroizing<String>> {
        if let Some(new) = &self.new_key {
            return Ok(new.key.clone());
        }
        let path = self.key_path().ok_or_else(|| {
            Error::config("no keyFile is set: run `cvp-backup-copy keygen` first")
        })?;
        self.as_owner(|| secret::read_key_text(&path))
    }

    /// The current password in clear, when a token exists and the key decrypts it.
    fn current_password(&self) -> Result<Option<Secret>> {
        let Some(token) = self
            .value(&self.section, "password")
            .filter(|t| !t.contains("{{"))
        else {
            return Ok(None);
        };
        let path = self.key_path().ok_or_else(|| {
            Error::config("the password is set but no keyFile is: run `cvp-backup-copy keygen`")
        })?;
        self.as_owner(|| secret::decrypt_password(&token, &path, &self.ini))
            .map(Some)
    }

    fn set(&mut self, section: &str, option: &str, value: &str) {
        if self.doc.get(section, option).as_deref() != Some(value) {
            self.doc.set(section, option, value);
            self.changed = true;
        }
    }

    fn set_password(&mut self, password: &Secret) -> Result<()> {
        let token = keygen::encrypt_with(&self.current_key()?, password)?;
        let section = self.section.clone();
        self.set(&section, "password", &token);
        Ok(())
    }

    /// Use another existing key file: the password is re-encrypted with it.
    fn assign_key(&mut self, path: PathBuf) -> Result<()> {
        let text = self.as_owner(|| secret::read_key_text(&path))?;
        let password = self.current_password()?;
        // Sections that inherit this one's key follow it to the new file.
        let others = match self.key_path() {
            Some(old) if self.section == SERVER => self.passwords_sharing(&old)?,
            _ => Vec::new(),
        };
        self.new_key = None;
        let section = self.section.clone();
        self.set(&section, "keyFile", &path.display().to_string());
        if let Some(password) = password {
            let token = keygen::encrypt_with(text.trim(), &password)?;
            self.set(&section, "password", &token);
        }
        self.restore_passwords(others)?;
        // Written nothing: the key file exists. Loose modes are for the operator to fix.
        if let Err(err) = self.as_owner(|| secret::check_key_is_private(&path)) {
            eprintln!("warning: {err}");
        }
        Ok(())
    }

    /// A new key in place of the current one (kept as `.bak-<timestamp>` on save).
    fn update_key(&mut self) -> Result<()> {
        let password = self.current_password()?;
        let path = self
            .key_path()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        // Every section whose password this key decrypts is encrypted again with the new one.
        let others = self.passwords_sharing(&path)?;
        let key = Zeroizing::new(secret::new_key());
        let section = self.section.clone();
        if let Some(password) = password {
            let token = keygen::encrypt_with(&key, &password)?;
            self.set(&section, "password", &token);
        }
        self.set(&section, "keyFile", &path.display().to_string());
        self.new_key = Some(NewKey { path, key });
        self.changed = true;
        self.restore_passwords(others)
    }

    fn save(self) -> Result<()> {
        if let Err(err) = config::Config::parse(&self.doc.render(), &self.ini) {
            eprintln!("note: saved, but not complete yet: {err}");
        }
        let before = match &self.text {
            Some(text) => keygen::Before::Text(text),
            None => keygen::Before::Nothing {
                owner: self.owner.as_ref(),
            },
        };
        let kept = keygen::commit(
            &self.ini,
            before,
            &self.doc,
            self.new_key.as_ref(),
            self.owner.as_ref(),
        )?;
        if let Some(kept) = kept {
            println!("old key kept as {}", kept.display());
        }
        if let Some(new) = &self.new_key {
            println!("new key written to {} (mode 0600)", new.path.display());
        }
        match (&self.text, &self.owner) {
            (None, Some(owner)) => {
                println!(
                    "saved {} (new, owned by {})",
                    self.ini.display(),
                    owner.name
                );
            }
            _ => println!("saved {}", self.ini.display()),
        }
        Ok(())
    }

    /// `check_value`, reading what a value names (a key file) as the INI's owner.
    fn check(&self, section: &str, option: &str, value: &str) -> std::result::Result<(), String> {
        self.as_owner(|| Ok(config::check_value(section, option, value, &self.ini)))
            .unwrap_or_else(|err| Err(err.message))
    }

    fn show(&self, title: &str) {
        println!("\n#####  {title}  #####");
        for (section, options) in KNOWN_OPTIONS {
            println!("[{}]", crate::error::printable(section));
            for option in options {
                println!(
                    "  {option} : {}",
                    crate::error::printable(&self.display(section, option))
                );
            }
        }
        println!();
    }

    /// Never the token or the clear password.
    fn display(&self, section: &str, option: &str) -> String {
        let value = self.value(section, option);
        if option.eq_ignore_ascii_case("password") {
            return match value {
                Some(v) if !v.contains("{{") => "******** (set)".into(),
                _ => "(not set)".into(),
            };
        }
        match (value, config::default_value(option)) {
            (Some(v), _) => v,
            (None, Some(default)) => format!("(default {default})"),
            (None, None) => "(not set)".into(),
        }
    }
}

pub fn edit(options: &EditOptions) -> Result<()> {
    let scripted_edit = !options.set.is_empty() || options.password_stdin;
    let missing = matches!(std::fs::symlink_metadata(&options.ini), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let mut session = if missing {
        offer_new_ini(&options.ini, scripted_edit)?
    } else {
        Session::load(&options.ini)?
    };
    if let Some(name) = &options.destination {
        if !name.eq_ignore_ascii_case(config::MAIN) {
            config::check_destination_name(name).map_err(Error::config)?;
            session.section = format!("{}{name}", config::DESTINATION_PREFIX);
        }
    }
    keygen::warn_if_loose(&options.ini);
    if scripted_edit {
        return scripted(session, options);
    }
    if !prompt::interactive() {
        return Err(Error::new(
            ExitCode::Usage,
            "edit asks questions on a terminal; from a script use --set Section.option=value \
             and --password-stdin",
        ));
    }
    session.show(&format!("Current settings in {}", options.ini.display()));
    if !prompt::yes_no("Would you like to edit these settings? (y/n) ")? {
        return Ok(());
    }
    println!("Type a new value, or press Enter to keep the current one.\n");
    let destination_only = [(session.section.clone(), KNOWN_OPTIONS[0].1)];
    let sections: Vec<(String, &[&str])> = if session.section == SERVER {
        KNOWN_OPTIONS
            .iter()
            .map(|(s, o)| (s.to_string(), *o))
            .collect()
    } else {
        destination_only.to_vec()
    };
    for (section, options) in &sections {
        let section = section.as_str();
        println!("[{}]", crate::error::printable(section));
        let is_s3 = session
            .value(section, "destination")
            .is_some_and(|d| d.starts_with("s3://"));
        for option in options.iter() {
            // The S3 settings are asked only of a bucket's section.
            // The immutability options are never asked: the server or bucket must be set up
            // for them first (README, A stolen node); `--set` sets them.
            if !is_s3 && config::S3_ONLY_OPTIONS.contains(option)
                || ["append_only", "lock_days", "lock_mode"].contains(option)
            {
                continue;
            }
            match *option {
                "password" => ask_password(&mut session)?,
                "keyFile" => ask_key(&mut session)?,
                _ => ask_value(&mut session, section, option)?,
            }
        }
    }
    if !session.changed {
        println!("nothing changed");
        return Ok(());
    }
    session.show("New settings");
    if !prompt::yes_no(&format!("Save to {}? (y/n) ", options.ini.display()))? {
        return Err(Error::new(ExitCode::Usage, "not saved: nothing changed"));
    }
    session.save()
}

/// A missing INI: on a terminal, offer to start it from the default settings (a node without
/// the RPM has nothing to copy from); from a script, say how.
fn offer_new_ini(ini: &Path, scripted_edit: bool) -> Result<Session> {
    let missing = || {
        Error::config(format!(
            "{} does not exist: run `cvp-backup-copy edit --ini {}` on a terminal to create it \
             from the default settings",
            ini.display(),
            crate::error::shell_word(ini)
        ))
    };
    if scripted_edit || !prompt::interactive() {
        return Err(missing());
    }
    let question = format!(
        "{} does not exist. Create it from the default settings (every option explained)? (y/n) ",
        ini.display()
    );
    if !prompt::yes_no(&question)? {
        return Err(Error::new(ExitCode::Usage, "nothing created"));
    }
    Ok(Session::new_from_default(ini))
}

fn ask_value(session: &mut Session, section: &str, option: &str) -> Result<()> {
    loop {
        let shown = crate::error::printable(&session.display(section, option));
        let answer = prompt::line(&format!("  {option} [{shown}]: "))?;
        let answer = answer.trim();
        if answer.is_empty() {
            return Ok(());
        }
        match session.check(section, option, answer) {
            Ok(()) => {
                session.set(section, option, answer);
                return Ok(());
            }
            Err(why) => println!("   not changed: {why}"),
        }
    }
}

fn ask_password(session: &mut Session) -> Result<()> {
    let shown = session.display(&session.section.clone(), "password");
    if !prompt::yes_no(&format!(
        "  password [{shown}]: change the password? (y/n) "
    ))? {
        return Ok(());
    }
    let current = match session.current_password() {
        Ok(current) => current,
        Err(err) => {
            println!("   cannot change it here: {err}");
            return Ok(());
        }
    };
    if let Some(current) = current {
        let mut verified = false;
        for attempt in 1..=3 {
            let typed = prompt::password("   Current password: ")?;
            if typed.expose() == current.expose() {
                verified = true;
                break;
            }
            println!("   that is not the current password ({attempt} of 3)");
        }
        if !verified {
            return Err(Error::new(
                ExitCode::Usage,
                "the current password was not typed correctly three times: nothing changed",
            ));
        }
    }
    let user = session.value(&session.section, "user").unwrap_or_default();
    let server = session
        .value(&session.section, "server")
        .unwrap_or_default();
    let new = prompt::new_password(&format!("{user}@{server}"))?;
    session.set_password(&new)?;
    println!("   password changed (it is saved encrypted)");
    Ok(())
}

fn ask_key(session: &mut Session) -> Result<()> {
    let shown = crate::error::printable(&session.display(&session.section.clone(), "keyFile"));
    if !prompt::yes_no(&format!(
        "  keyFile [{shown}]: update the key or key file? (y/n) "
    ))? {
        return Ok(());
    }
    loop {
        let choice = prompt::line("   (A)ssign an existing key file or (U)pdate the key? (a/u) ")?;
        match choice.trim().to_ascii_lowercase().as_str() {
            "a" => {
                let path = prompt::line("   Full path of the key file: ")?;
                let path = config::resolve_against(&session.ini, path.trim());
                match session.assign_key(path) {
                    Ok(()) => println!("   password re-encrypted with the assigned key"),
                    Err(err) => println!("   not changed: {err}"),
                }
                return Ok(());
            }
            "u" => {
                session.update_key()?;
                println!("   a new key will be written on save; the old one is kept as a backup");
                return Ok(());
            }
            _ => println!("   please answer a or u"),
        }
    }
}

fn scripted(mut session: Session, options: &EditOptions) -> Result<()> {
    for assignment in &options.set {
        let (name, value) = assignment.split_once('=').ok_or_else(|| {
            Error::config(format!("--set {assignment}: expected Section.option=value"))
        })?;
        let (section, option) = name.split_once('.').ok_or_else(|| {
            Error::config(format!("--set {assignment}: expected Section.option=value"))
        })?;
        let section: String = match [SERVER, BACKUP]
            .into_iter()
            .find(|s| s.eq_ignore_ascii_case(section.trim()))
        {
            Some(known) => known.to_string(),
            None => match config::destination_section(section.trim()) {
                Some(name) => {
                    config::check_destination_name(name)
                        .map_err(|why| Error::config(format!("--set {assignment}: {why}")))?;
                    format!("{}{name}", config::DESTINATION_PREFIX)
                }
                None => {
                    return Err(Error::config(format!(
                        "--set {assignment}: unknown section {section}{}",
                        config::suggestion(section, [SERVER, BACKUP].into_iter())
                    )))
                }
            },
        };
        let section = section.as_str();
        let option = option.trim();
        let value = value.trim();
        if option.eq_ignore_ascii_case("password") {
            return Err(Error::config(
                "--set cannot take a password (it would show in the process list): use --password-stdin",
            ));
        }
        session
            .check(section, option, value)
            .map_err(|why| Error::config(format!("--set {name}: {why}; nothing changed")))?;
        if option.eq_ignore_ascii_case("keyFile") {
            if !section.eq_ignore_ascii_case(&session.section) {
                return Err(Error::config(format!(
                    "--set {name}: a destination's keyFile is set with --destination NAME, so \
                     its password is encrypted again with it"
                )));
            }
            session.assign_key(config::resolve_against(&session.ini, value))?;
        } else {
            session.set(section, option, value);
        }
    }
    if options.password_stdin {
        let password = prompt::password_from_stdin()?;
        session.set_password(&password)?;
    }
    if !session.changed {
        println!("nothing changed");
        return Ok(());
    }
    session.save()
}
