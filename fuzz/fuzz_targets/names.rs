//! The CVP file-name parser decides what may be deleted: on arbitrary names it must not
//! panic, and whatever it accepts must be exactly the name it would write.
#![no_main]

use cvp_backup_copy::names::{parse_sidecar, BackupName, RemoteFile, RemoteName};
use cvp_backup_copy::sets::parse_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Some(parsed) = BackupName::parse(name) {
        assert_eq!(parsed.file_name(), name);
        for form in [RemoteFile::plain(parsed), RemoteFile::new(parsed, true)] {
            assert!(BackupName::parse(&form.partial_name()).is_none());
            assert_eq!(RemoteFile::parse(&form.file_name()), Some(form));
        }
        assert!(BackupName::parse(&parsed.failed_name()).is_none());
    }
    if let Some(parsed) = BackupName::parse_failed(name) {
        assert_eq!(parsed.failed_name(), name);
    }
    match RemoteName::parse(name) {
        Some(RemoteName::Backup(parsed)) => assert_eq!(parsed.file_name(), name),
        Some(RemoteName::Sidecar(parsed)) => assert_eq!(parsed.sidecar_name(), name),
        Some(RemoteName::Manifest(parsed)) => assert_eq!(parsed.manifest_name(), name),
        // A partial name, or one an append-only attempt made fresh (`-<hex>` after it).
        Some(RemoteName::Partial(parsed)) => assert!(
            [RemoteFile::plain(parsed), RemoteFile::new(parsed, true)]
                .iter()
                .flat_map(|f| [f.partial_name(), f.sidecar_partial_name()])
                .chain([parsed.manifest_partial_name()])
                .any(|n| n == name
                    || name
                        .strip_prefix(n.as_str())
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|hex| {
                            !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
                        })),
            "{name}"
        ),
        None => {}
    }
    let _ = parse_sidecar(name, "cvp.20240101020010.tgz");
    if let Some(data) = BackupName::parse("cvp.20240101020010.tgz") {
        let _ = parse_manifest(name, data);
    }
});
