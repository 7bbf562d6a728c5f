//! The archive check decides whether a night's backup counts: on any input it must not
//! panic, and it must never call good what a reference gzip decoder refuses. The first
//! byte chooses: raw input, or a whole archive built from the rest and then damaged (a cut
//! or a changed byte), which may pass only if it still inflates to exactly the original.
#![no_main]

use cvp_backup_copy::archive::ArchiveCheck;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

fn judge(bytes: &[u8], piece: usize) -> bool {
    let mut check = ArchiveCheck::new();
    for chunk in bytes.chunks(piece.max(1)) {
        check.update(chunk);
    }
    check.finish().is_ok()
}

fn inflate(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let piece = usize::from(mode >> 2) * 37 + 1;
    match mode & 3 {
        0 => {
            if judge(rest, piece) {
                assert!(inflate(rest).is_some(), "passed what gzip refuses");
            }
        }
        _ => {
            if rest.len() < 4 {
                return;
            }
            let (knobs, content) = rest.split_at(4);
            let tar = cvp_backup_copy::archive::ustar(&[("cvp/db.sql", content)]);
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar).expect("gzip in memory");
            let mut tgz = encoder.finish().expect("gzip in memory");
            assert!(judge(&tgz, piece), "a whole archive failed");
            let at = usize::from(u16::from_le_bytes([knobs[0], knobs[1]])) % tgz.len();
            if mode & 3 == 1 {
                assert!(!judge(&tgz[..at], piece), "a cut archive passed");
            } else if at >= 10 && knobs[2] != 0 {
                tgz[at] ^= knobs[2];
                if judge(&tgz, piece) {
                    assert_eq!(inflate(&tgz).as_deref(), Some(&tar[..]), "a changed archive passed");
                }
            }
        }
    }
});
