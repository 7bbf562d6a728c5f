//! `verify` against the real sshd and the sets real nights left: an untouched set passes a
//! listing check and a read-back; a byte flipped in the middle of the server's copy passes
//! the listing (same size, same checksum file) but not the read-back, which names it and
//! exits 5; a missing checksum file or member is exit 5 without reading; the record, the
//! metrics and `status --nagios` follow each verdict; a run holding the lock is exit 6; an
//! unreachable server exit 4; the next night mends what the read-back found damaged.

mod common;

use common::*;
use std::path::Path;

fn flip_middle_byte(path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the server's copy");
    let middle = file.metadata().expect("size").len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, middle).expect("read");
    byte[0] ^= 0x20;
    file.write_all_at(&byte, middle).expect("write");
}

fn metric(textfile: &Path, name: &str) -> f64 {
    let text = std::fs::read_to_string(textfile.join("cvp_backup_copy.prom")).expect("metrics");
    text.lines()
        .find(|l| l.starts_with(&format!("cvp_backup_copy_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn last_verify(fx: &Fixture) -> serde_json::Value {
    let text = std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record");
    let record: serde_json::Value = serde_json::from_str(&text).expect("json");
    record["last_verify"].clone()
}

#[test]
fn a_read_back_finds_what_a_listing_cannot_and_monitoring_follows() {
    let mut fx = Fixture::new();
    let textfile = tempfile::tempdir().expect("textfile dir");
    fx.backup_extra = format!("metrics_dir = {}", textfile.path().display());
    fx.cvpi_flags = "--images --size 300000".into();
    fx.write_ini();
    let night = fx.run(&[]);
    assert_eq!(night.code, 0, "{}", night.all_output());
    assert!(
        night.all_output().contains("a whole archive"),
        "the upload checked the archives: {}",
        night.all_output()
    );
    let data = fx.newest_local("cvp.2").expect("data file");
    let images = fx.newest_local("cvp.eosimages.").expect("images file");
    assert_eq!(metric(textfile.path(), "last_verify_ok"), 0.0, "none yet");
    assert_eq!(
        metric(textfile.path(), "last_verify_timestamp_seconds"),
        0.0
    );

    // Untouched: both kinds pass.
    let listed = fx.run(&["verify"]);
    assert_eq!(listed.code, 0, "{}", listed.all_output());
    assert!(
        listed.stdout.contains("with its checksum file"),
        "{}",
        listed.stdout
    );
    let read = fx.run(&["verify", "--read-data", "--set", "latest"]);
    assert_eq!(read.code, 0, "{}", read.all_output());
    for name in [&data, &images] {
        assert!(
            read.stdout.contains(&format!("[ok  ] {name}: read back"))
                && read.stdout.contains("a whole archive ("),
            "{name}: {}",
            read.stdout
        );
    }
    assert_eq!(last_verify(&fx)["exit_code"], 0);
    assert_eq!(last_verify(&fx)["read_data"], true);
    assert_eq!(metric(textfile.path(), "last_verify_ok"), 1.0);
    assert!(metric(textfile.path(), "last_read_back_timestamp_seconds") > 0.0);
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(nagios.code, 0, "{}", nagios.stdout);

    // One byte flipped in the middle of the server's copy: same size, same checksum file.
    flip_middle_byte(&fx.dest.join(&data));
    let listed = fx.run(&["verify"]);
    assert_eq!(
        listed.code,
        0,
        "a listing cannot see it: {}",
        listed.all_output()
    );
    let read = fx.run(&["verify", "--read-data"]);
    assert_eq!(read.code, 5, "{}", read.all_output());
    assert!(
        read.all_output().contains(&format!("{data} on "))
            && read.all_output().contains("is damaged"),
        "{}",
        read.all_output()
    );
    assert_eq!(last_verify(&fx)["exit_code"], 5);
    assert_eq!(metric(textfile.path(), "last_verify_ok"), 0.0);
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(nagios.code, 1, "WARNING: {}", nagios.stdout);
    assert!(
        nagios.stdout.contains("the last verify") && nagios.stdout.contains("failed"),
        "{}",
        nagios.stdout
    );
    let status = fx.run(&["status"]);
    assert!(
        status.stdout.contains("FAILED (exit 5)"),
        "{}",
        status.stdout
    );

    // The next night puts a good copy back (the node still has the file), and the read-back
    // passes again.
    let mended = fx.run(&["--no-backup"]);
    assert_eq!(mended.code, 0, "{}", mended.all_output());
    assert!(
        mended.all_output().contains(&format!("{data}: uploading")),
        "{}",
        mended.all_output()
    );
    fx.assert_remote_checksums_verify();
    let read = fx.run(&["verify", "--read-data"]);
    assert_eq!(read.code, 0, "{}", read.all_output());
    assert_eq!(fx.run(&["status", "--nagios"]).code, 0);

    // A missing checksum file, then a missing member: found without reading.
    std::fs::remove_file(fx.dest.join(format!("{images}.sha256"))).expect("rm sidecar");
    let listed = fx.run(&["verify"]);
    assert_eq!(listed.code, 5, "{}", listed.all_output());
    assert!(
        listed
            .all_output()
            .contains(&format!("{images}.sha256 is missing")),
        "{}",
        listed.all_output()
    );
    std::fs::remove_file(fx.dest.join(&images)).expect("rm member");
    let listed = fx.run(&["verify", "--set", &data]);
    assert_eq!(listed.code, 5, "{}", listed.all_output());
    assert!(
        listed.all_output().contains(&images) && listed.all_output().contains("missing"),
        "{}",
        listed.all_output()
    );
    let unknown = fx.run(&["verify", "--set", "20000101000000"]);
    assert_eq!(unknown.code, 5, "{}", unknown.all_output());
    let usage = fx.run(&["verify", "--set", "yesterday"]);
    assert_eq!(usage.code, 2, "{}", usage.all_output());
}

#[test]
fn verify_waits_for_no_run_and_says_when_the_server_is_unreachable() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--sleep 4".into();
    fx.write_ini();
    let mut running = fx.spawn(&[]);
    let lock_holder = fx.state_dir.join("lock.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&lock_holder).is_ok_and(|t| t.contains("run")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let locked = fx.run(&["verify"]);
    assert_eq!(locked.code, 6, "{}", locked.all_output());
    assert!(
        locked.all_output().contains("run"),
        "{}",
        locked.all_output()
    );
    assert!(running.wait().expect("run").success());

    let mut away = Fixture::new();
    away.port = free_port();
    away.write_ini();
    let unreachable = away.run(&["verify", "--read-data"]);
    assert_eq!(unreachable.code, 4, "{}", unreachable.all_output());
    let text = std::fs::read_to_string(away.state_dir.join("last-run.json")).expect("record");
    let record: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(record["last_verify"]["exit_code"], 4, "{text}");
}

/// A member above the 64 MiB threshold, not a whole number of 8 MiB blocks.
const BIG: &str = "cvp.20240101020010.tgz";
const BIG_SIZE: usize = 70 * 1024 * 1024 + 12_345;

#[test]
fn a_large_member_is_read_back_over_several_connections_in_order() {
    use std::sync::atomic::Ordering;
    let (fx, proxy) = Fixture::behind_proxy(common::proxy::Fault::Pass, "streams = 3");
    fx.seed(BIG, BIG_SIZE);
    let night = fx.run(&["--no-backup"]);
    assert_eq!(night.code, 0, "{}", night.all_output());
    let before = proxy.connections.load(Ordering::SeqCst);

    let read = fx.run(&["verify", "--read-data"]);
    assert_eq!(read.code, 0, "{}", read.all_output());
    assert!(
        read.stdout
            .contains("large files are read back over 3 connections")
            && read.stdout.contains(&format!("[ok  ] {BIG}: read back"))
            && read.stdout.contains("a whole archive ("),
        "{}",
        read.stdout
    );
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst) - before,
        4,
        "the first connection and three readers"
    );

    // One reading connection cut after about a block: another one reads that block again,
    // and the read-back passes.
    proxy.then(common::proxy::Fault::Pass);
    proxy.then(common::proxy::Fault::CutAfter(25_000));
    let one_cut = fx.run(&["verify", "--read-data"]);
    assert_eq!(one_cut.code, 0, "{}", one_cut.all_output());
    assert!(
        one_cut.all_output().contains("another one reads them"),
        "{}",
        one_cut.all_output()
    );

    // Every reading connection cut: the read-back fails naming the file and where (it is
    // not found damaged: nothing to mend), and nothing hangs.
    proxy.then(common::proxy::Fault::Pass);
    for _ in 0..3 {
        proxy.then(common::proxy::Fault::CutAfter(25_000));
    }
    let cut = fx.run(&["verify", "--read-data"]);
    assert!(
        cut.code == 5
            && cut
                .all_output()
                .contains(&format!("reading {BIG} back from"))
            && cut.all_output().contains(": at byte ")
            && !cut.all_output().contains("is damaged"),
        "{}: {}",
        cut.code,
        cut.all_output()
    );

    // A byte changed in the file's last block, and one in its first: each block is read by
    // whichever connection is free, and the bytes still come back in order.
    for at in [BIG_SIZE as u64 - 100, 100] {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.dest.join(BIG))
            .expect("open the server's copy");
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 1], at).expect("write");
        let read = fx.run(&["verify", "--read-data"]);
        assert_eq!(read.code, 5, "{}", read.all_output());
        assert!(
            read.all_output().contains(&format!("{BIG} on "))
                && read.all_output().contains("is damaged"),
            "{}",
            read.all_output()
        );
        file.write_all_at(&byte, at).expect("put it back");
    }
    let read = fx.run(&["verify", "--read-data"]);
    assert_eq!(read.code, 0, "{}", read.all_output());
}
