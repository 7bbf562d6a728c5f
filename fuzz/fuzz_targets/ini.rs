//! The INI reader and the comment-preserving writer, on arbitrary text: no panic, and the
//! writer's two promises hold (an unchanged document renders byte-identically; a value that
//! is set reads back).
#![no_main]

use cvp_backup_copy::config::Config;
use cvp_backup_copy::ini_edit::IniDocument;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse(text, Path::new("/fuzz/backup.ini"));
    let mut doc = IniDocument::parse(text);
    assert_eq!(doc.render(), text);
    doc.set("Backup_Settings", "limit", "7");
    assert_eq!(doc.get("Backup_Settings", "limit").as_deref(), Some("7"));
    let _ = Config::parse(&doc.render(), Path::new("/fuzz/backup.ini"));
});
