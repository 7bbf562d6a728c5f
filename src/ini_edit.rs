//! Change values in an INI file the way iniparse did: comments, blank lines, option order and
//! spelling (`keyFile` stays `keyFile`) are kept; only the changed values change. rust-ini
//! reads the file; it cannot rewrite one without losing the operator's comments.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniDocument {
    lines: Vec<String>,
    newline: &'static str,
    ends_with_newline: bool,
}

fn section_name(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    let inner = trimmed.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim())
}

fn is_comment_or_blank(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';')
}

/// Byte offset of the `=` or `:` that ends the key, for an option line.
fn separator(line: &str) -> Option<usize> {
    if is_comment_or_blank(line) || section_name(line).is_some() {
        return None;
    }
    // Indented lines continue a value in ConfigParser; they are not options.
    if line.starts_with(' ') || line.starts_with('\t') {
        return None;
    }
    line.find(['=', ':'])
}

impl IniDocument {
    pub fn parse(text: &str) -> IniDocument {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let ends_with_newline = text.is_empty() || text.ends_with('\n');
        let lines = text.lines().map(str::to_string).collect();
        IniDocument {
            lines,
            newline,
            ends_with_newline,
        }
    }

    pub fn render(&self) -> String {
        let mut text = self.lines.join(self.newline);
        if self.ends_with_newline && !self.lines.is_empty() {
            text.push_str(self.newline);
        }
        text
    }

    /// (line index, separator offset) of an option, case-insensitively (last one wins, as in
    /// ConfigParser's non-strict reading).
    fn find(&self, section: &str, option: &str) -> Option<(usize, usize)> {
        let mut current: Option<&str> = None;
        let mut found = None;
        for (index, line) in self.lines.iter().enumerate() {
            if let Some(name) = section_name(line) {
                current = Some(name);
                continue;
            }
            if !current.is_some_and(|c| c.eq_ignore_ascii_case(section)) {
                continue;
            }
            if let Some(sep) = separator(line) {
                if line[..sep].trim().eq_ignore_ascii_case(option) {
                    found = Some((index, sep));
                }
            }
        }
        found
    }

    pub fn get(&self, section: &str, option: &str) -> Option<String> {
        self.find(section, option)
            .map(|(index, sep)| self.lines[index][sep + 1..].trim().to_string())
    }

    /// Set a value. An existing line keeps its key spelling and separator; a new option goes
    /// after the section's last option; a new section goes at the end.
    pub fn set(&mut self, section: &str, option: &str, value: &str) {
        if let Some((index, sep)) = self.find(section, option) {
            let line = &self.lines[index];
            let after = &line[sep + 1..];
            let gap = &after[..after.len() - after.trim_start().len()];
            self.lines[index] = format!("{}{gap}{value}", &line[..sep + 1]);
            return;
        }
        let new_line = format!("{option} = {value}");
        let mut in_section = false;
        let mut insert_at = None;
        for (index, line) in self.lines.iter().enumerate() {
            if let Some(name) = section_name(line) {
                if in_section {
                    break;
                }
                in_section = name.eq_ignore_ascii_case(section);
                if in_section {
                    insert_at = Some(index + 1);
                }
                continue;
            }
            if in_section && separator(line).is_some() {
                insert_at = Some(index + 1);
            }
        }
        match insert_at {
            Some(index) => self.lines.insert(index, new_line),
            None => {
                if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    self.lines.push(String::new());
                }
                self.lines.push(format!("[{section}]"));
                self.lines.push(new_line);
            }
        }
    }
}

/// The mode a written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The existing file's mode, or this one for a new file (INI files).
    KeepOr(u32),
    /// Always this mode (key files).
    Force(u32),
}

/// Replace `path` atomically with `contents`: a temporary file in the same folder, fsync,
/// mode and owner set, rename, fsync of the folder. A crash leaves the old file or the new
/// one, never half of either. An existing file keeps its owner; a new one written by root
/// gets the folder's owner (the key the RPM's post-install makes in cvp's key folder).
pub fn write_atomically(path: &Path, contents: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let original = std::fs::metadata(path).ok();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    let mode = match (mode, &original) {
        (Mode::Force(mode), _) => mode,
        (Mode::KeepOr(_), Some(meta)) => meta.mode() & 0o7777,
        (Mode::KeepOr(mode), None) => mode,
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    if crate::users::current_uid() == 0 {
        let owner = match &original {
            Some(meta) => Some((meta.uid(), meta.gid())),
            None => std::fs::metadata(dir).ok().map(|m| (m.uid(), m.gid())),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))?;
        }
    }
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str =
        "# my notes\n[Server_Settings]\n#Backup Server Settings\nuser = backup\n\
        keyFile=/root/key.key\npassword: gAAAA-old\n\n; spare\n[Backup_Settings]\nlimit = 5\n";

    #[test]
    fn only_the_changed_value_changes() {
        let mut doc = IniDocument::parse(ORIGINAL);
        doc.set("Server_Settings", "password", "gAAAA-new");
        doc.set("server_settings", "KEYFILE", "/etc/k");
        let text = doc.render();
        assert_eq!(
            text,
            ORIGINAL
                .replace("password: gAAAA-old", "password: gAAAA-new")
                .replace("keyFile=/root/key.key", "keyFile=/etc/k")
        );
        assert_eq!(
            doc.get("Server_Settings", "keyfile").as_deref(),
            Some("/etc/k")
        );
    }

    #[test]
    fn new_options_go_after_the_section_s_last_option() {
        let mut doc = IniDocument::parse(ORIGINAL);
        doc.set("Server_Settings", "port", "2222");
        doc.set("Backup_Settings", "backup_user", "cvp");
        let text = doc.render();
        assert!(
            text.contains("password: gAAAA-old\nport = 2222\n\n; spare\n[Backup_Settings]"),
            "{text}"
        );
        assert!(text.ends_with("limit = 5\nbackup_user = cvp\n"), "{text}");
    }

    #[test]
    fn a_missing_section_is_appended() {
        let mut doc = IniDocument::parse("[Server_Settings]\nuser = u");
        doc.set("Backup_Settings", "limit", "3");
        assert_eq!(
            doc.render(),
            "[Server_Settings]\nuser = u\n\n[Backup_Settings]\nlimit = 3"
        );
    }

    #[test]
    fn crlf_files_stay_crlf_and_unchanged_documents_round_trip() {
        for text in [ORIGINAL, "[a]\r\nb = c\r\n", "", "no newline at end"] {
            assert_eq!(IniDocument::parse(text).render(), text);
        }
        let mut doc = IniDocument::parse("[a]\r\nb = c\r\n");
        doc.set("a", "b", "d");
        assert_eq!(doc.render(), "[a]\r\nb = d\r\n");
    }

    #[test]
    fn comments_and_other_sections_are_never_matched() {
        let mut doc = IniDocument::parse("[Other]\nlimit = 9\n[Backup_Settings]\n# limit = 1\n");
        assert_eq!(doc.get("Backup_Settings", "limit"), None);
        doc.set("Backup_Settings", "limit", "4");
        assert_eq!(
            doc.render(),
            "[Other]\nlimit = 9\n[Backup_Settings]\nlimit = 4\n# limit = 1\n"
        );
    }

    #[test]
    fn atomic_writes_keep_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.ini");
        write_atomically(&path, b"one", Mode::KeepOr(0o600)).expect("new file");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomically(&path, b"two", Mode::KeepOr(0o600)).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o640
        );
        write_atomically(&path, b"key", Mode::Force(0o600)).expect("force");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary left"
        );
    }
}
