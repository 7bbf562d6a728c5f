//! Change values in an INI file the way iniparse did: comments, blank lines, option order and
//! spelling (`keyFile` stays `keyFile`) are kept; only the changed values change. rust-ini
//! reads the file; it cannot rewrite one without losing the operator's comments.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    text: String,
    /// "\n", "\r\n", or "" for a last line without one: each line keeps its own.
    end: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniDocument {
    lines: Vec<Line>,
    /// For lines we add: the file's first line ending.
    newline: &'static str,
    /// The file began with a UTF-8 byte order mark (Windows editors write one): kept when
    /// the file is written back, never part of the first line's text.
    bom: bool,
}

/// The UTF-8 byte order mark some editors put first in a file.
pub const BOM: char = '\u{feff}';

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
    // An indented `key = value` is an option, as the run reads it (rust-ini trims it).
    line.find(['=', ':'])
}

impl IniDocument {
    pub fn parse(text: &str) -> IniDocument {
        let (bom, text) = match text.strip_prefix(BOM) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let lines: Vec<Line> = text
            .split_inclusive('\n')
            .map(|piece| match piece.strip_suffix("\r\n") {
                Some(text) => Line {
                    text: text.into(),
                    end: "\r\n",
                },
                None => match piece.strip_suffix('\n') {
                    Some(text) => Line {
                        text: text.into(),
                        end: "\n",
                    },
                    None => Line {
                        text: piece.into(),
                        end: "",
                    },
                },
            })
            .collect();
        let newline = lines
            .iter()
            .map(|l| l.end)
            .find(|e| !e.is_empty())
            .unwrap_or("\n");
        IniDocument {
            lines,
            newline,
            bom,
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if self.bom {
            text.push(BOM);
        }
        text.extend(self.lines.iter().flat_map(|l| [l.text.as_str(), l.end]));
        text
    }

    /// A new line at `index`; a file that did not end with a newline still does not.
    fn insert(&mut self, index: usize, text: String) {
        let mut end = self.newline;
        if index > 0 && self.lines[index - 1].end.is_empty() {
            self.lines[index - 1].end = self.newline;
            end = "";
        }
        self.lines.insert(index, Line { text, end });
    }

    /// (line index, separator offset) of an option, case-insensitively (last one wins, as in
    /// ConfigParser's non-strict reading).
    fn find(&self, section: &str, option: &str) -> Option<(usize, usize)> {
        let mut current: Option<&str> = None;
        let mut found = None;
        for (index, line) in self.lines.iter().enumerate() {
            let line = &line.text;
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

    /// Options set more than once in a section (a section given twice counts as one),
    /// with their 1-based line numbers.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        let mut seen: Vec<(String, String, usize)> = Vec::new();
        let mut found = Vec::new();
        let mut current: Option<&str> = None;
        for (index, line) in self.lines.iter().enumerate() {
            let line = &line.text;
            if let Some(name) = section_name(line) {
                current = Some(name);
                continue;
            }
            let (Some(section), Some(sep)) = (current, separator(line)) else {
                continue;
            };
            let option = line[..sep].trim();
            let earlier = seen.iter().find(|(s, o, _)| {
                s.eq_ignore_ascii_case(section) && o.eq_ignore_ascii_case(option)
            });
            match earlier {
                Some((_, _, first)) => found.push(Duplicate {
                    section: section.to_string(),
                    option: option.to_ascii_lowercase(),
                    first_line: *first,
                    second_line: index + 1,
                }),
                None => seen.push((section.to_string(), option.to_string(), index + 1)),
            }
        }
        found
    }

    /// The sections' names, in the file's order.
    pub fn sections(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|line| section_name(&line.text).map(str::to_string))
            .collect()
    }

    pub fn get(&self, section: &str, option: &str) -> Option<String> {
        self.find(section, option)
            .map(|(index, sep)| self.lines[index].text[sep + 1..].trim().to_string())
    }

    /// Set a value. An existing line keeps its key spelling and separator; a new option goes
    /// after the section's last option; a new section goes at the end.
    pub fn set(&mut self, section: &str, option: &str, value: &str) {
        if let Some((index, sep)) = self.find(section, option) {
            let line = &self.lines[index].text;
            let after = &line[sep + 1..];
            let gap = &after[..after.len() - after.trim_start().len()];
            // The key keeps its indentation and spelling.
            self.lines[index].text = format!("{}{gap}{value}", &line[..sep + 1]);
            return;
        }
        let new_line = format!("{option} = {value}");
        let mut in_section = false;
        let mut insert_at = None;
        for (index, line) in self.lines.iter().enumerate() {
            let line = &line.text;
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
            Some(index) => self.insert(index, new_line),
            None => {
                if self.lines.last().is_some_and(|l| !l.text.trim().is_empty()) {
                    self.insert(self.lines.len(), String::new());
                }
                self.insert(self.lines.len(), format!("[{section}]"));
                self.insert(self.lines.len(), new_line);
            }
        }
    }
}

/// An option set twice in one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub section: String,
    pub option: String,
    pub first_line: usize,
    pub second_line: usize,
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
        // "m\n\r\n": mixed line endings, found by the fuzzer.
        for text in [
            ORIGINAL,
            "[a]\r\nb = c\r\n",
            "",
            "no newline at end",
            "m\n\r\n",
            "a\rb\n",
        ] {
            assert_eq!(IniDocument::parse(text).render(), text);
        }
        let mut doc = IniDocument::parse("[a]\r\nb = c\r\n");
        doc.set("a", "b", "d");
        assert_eq!(doc.render(), "[a]\r\nb = d\r\n");
        let mut mixed = IniDocument::parse("[a]\nb = c\r\n# note\n");
        mixed.set("a", "b", "d");
        mixed.set("a", "e", "f");
        assert_eq!(mixed.render(), "[a]\nb = d\r\ne = f\n# note\n");
    }

    #[test]
    fn a_byte_order_mark_is_kept_and_never_part_of_a_name() {
        let text = "\u{feff}[Server_Settings]\r\nuser = a\r\n";
        let mut doc = IniDocument::parse(text);
        assert_eq!(doc.render(), text, "unchanged: byte for byte");
        assert_eq!(doc.get("Server_Settings", "user").as_deref(), Some("a"));
        doc.set("Server_Settings", "user", "b");
        assert_eq!(doc.render(), "\u{feff}[Server_Settings]\r\nuser = b\r\n");
        assert!(doc.duplicates().is_empty());
    }

    #[test]
    fn an_indented_key_is_the_key_set_and_counted() {
        let mut doc = IniDocument::parse("[s]\n  user = a\n\tserver: x\n");
        assert_eq!(doc.get("s", "user").as_deref(), Some("a"));
        doc.set("s", "user", "b");
        doc.set("s", "SERVER", "y");
        assert_eq!(doc.render(), "[s]\n  user = b\n\tserver: y\n");
        let twice = IniDocument::parse("[s]\nuser = a\n    user = b\n");
        assert_eq!(
            twice.duplicates(),
            vec![Duplicate {
                section: "s".into(),
                option: "user".into(),
                first_line: 2,
                second_line: 3
            }]
        );
        // A line without a separator is no option, indented or not.
        assert!(IniDocument::parse("[s]\nuser = a\n  more\n")
            .duplicates()
            .is_empty());
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
}
