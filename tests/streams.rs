//! Large files over several SSH connections at once (INI `streams`), against the real sshd.

mod common;

use common::proxy::{Fault, Proxy};
use common::*;
use std::sync::atomic::Ordering;

const BIG: &str = "cvp.20240101020010.tgz";
/// Above the 64 MiB threshold, and not a whole number of 1 MiB chunks.
const BIG_SIZE: usize = 70 * 1024 * 1024 + 12_345;

fn big_fixture(server_extra: &str) -> (Fixture, Proxy, Vec<u8>) {
    let (fx, proxy) = Fixture::behind_proxy(Fault::Pass, server_extra);
    let bytes = fx.seed(BIG, BIG_SIZE);
    (fx, proxy, bytes)
}

#[test]
fn ranges_from_four_streams_reassemble_byte_identically() {
    let (fx, proxy, bytes) = big_fixture("streams = 4");
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.all_output().contains("over 4 streams"),
        "{}",
        run.all_output()
    );
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        4,
        "one connection per stream (the immutability test takes over one of them)"
    );
    assert!(
        run.all_output().contains(" is not immutable: "),
        "the test beside the data still gives its verdict: {}",
        run.all_output()
    );
    assert!(std::fs::read(fx.dest.join(BIG)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();
}

/// With a small file beside the large one (the night's log), tonight's immutability test
/// runs on the small file's connection while the large one is still on its way, and the
/// count of sets is listed on a released connection beside the manifest, before pruning:
/// the count must not include what pruning then removed. Two nights with `remote_limit =
/// 1` (the second prunes the first set), then the second again.
#[test]
fn the_test_beside_a_small_file_and_the_count_beside_the_manifest_agree_with_pruning() {
    let (mut fx, proxy) = Fixture::behind_proxy(Fault::Pass, "streams = 3\nremote_limit = 1");
    fx.cvpi_flags = format!("--size {BIG_SIZE}");
    fx.write_ini();
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    let first = fx.run(&["-v"]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    // Another second, another stamp.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A link slow enough that the log and the immutability test are done long before the
    // data file's last byte (20 MB/s, 4 ms round trip).
    proxy.set_default(Fault::Link {
        latency: std::time::Duration::from_millis(2),
        bytes_per_second: 20_000_000,
        queue: std::time::Duration::from_millis(20),
        in_flight: 4 << 20,
    });
    let before = proxy.connections.load(Ordering::SeqCst);
    let second = fx.run(&["-v"]);
    let output = second.all_output();
    assert_eq!(second.code, 0, "{output}");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst) - before,
        3,
        "no connection more than the streams: {output}"
    );
    assert!(output.contains(" is not immutable: "), "{output}");
    assert!(output.contains("pruned remote cvp."), "{output}");
    // The log's connection wrote the data file's checksum file and the manifest ahead:
    // after the data's last byte only renames were left.
    for renamed in [
        ".tgz.sha256: renamed from what was written ahead",
        ".set.sha256: renamed from what was written ahead",
    ] {
        assert!(output.contains(renamed), "{renamed}: {output}");
    }
    let names = fx.remote_names();
    assert!(
        !names.iter().any(|n| n.contains("cvpbc-part")),
        "nothing staged is left behind: {names:?}"
    );
    let data_sets: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("cvp.20") && n.ends_with(".tgz"))
        .collect();
    assert_eq!(data_sets.len(), 1, "{names:?}");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["immutable"], false, "{record}");
    assert_eq!(
        record["remote_sets"], 1,
        "what pruning removed is not counted: {record} {names:?}"
    );
    fx.assert_remote_checksums_verify();

    // The same set again: the manifest there already says it all; the write that found its
    // name taken leaves nothing behind.
    let manifest = fx.dest.join(data_sets[0].replace(".tgz", ".set.sha256"));
    let text = std::fs::read(&manifest).expect("manifest");
    let again = fx.run(&["--no-backup", "-v"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert_eq!(std::fs::read(&manifest).expect("manifest"), text);
    let names = fx.remote_names();
    assert!(
        !names.iter().any(|n| n.contains("cvpbc-part")),
        "no partial left: {names:?}"
    );
}

fn fetch_to(fx: &Fixture, to: &std::path::Path) -> Run {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["fetch", "--ini"])
        .arg(&fx.ini)
        .args(["latest", "--to"])
        .arg(to)
        .env_remove("CVP_BACKUP_COPY_INI");
    run_captured(&mut cmd, fx.root.path())
}

#[test]
fn fetch_brings_a_large_file_back_over_several_streams_byte_identically() {
    let (fx, proxy, bytes) = big_fixture("streams = 3");
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let before = proxy.connections.load(Ordering::SeqCst);
    let back = fx.root.path().join("back");
    let fetched = fetch_to(&fx, &back);
    assert_eq!(fetched.code, 0, "{}", fetched.all_output());
    assert!(
        fetched.stdout.contains("over 3 streams"),
        "{}",
        fetched.stdout
    );
    assert_eq!(proxy.connections.load(Ordering::SeqCst) - before, 3);
    assert!(std::fs::read(back.join(BIG)).expect("fetched") == bytes);
}

/// The largest member is fetched on the manifest's sha256 before its checksum file is read
/// (by the images file's connection, once that one is done): a checksum file that disagrees
/// with the manifest still stops it, and nothing is left under its name.
#[test]
fn a_large_members_checksum_file_that_disagrees_with_the_manifest_stops_its_fetch() {
    let (fx, _proxy, _) = big_fixture("streams = 3");
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // A well-formed checksum file with another sha256 than the manifest's.
    let sidecar = fx.dest.join(format!("{BIG}.sha256"));
    std::fs::write(&sidecar, format!("{}  {BIG}\n", "0".repeat(64))).expect("sidecar");
    let back = fx.root.path().join("back");
    let fetched = fetch_to(&fx, &back);
    let output = fetched.all_output();
    assert_ne!(fetched.code, 0, "{output}");
    assert!(fetched.stdout.contains("over 3 streams"), "{output}");
    assert!(output.contains("disagree about its sha256"), "{output}");
    let left: Vec<String> = file_names(&back)
        .into_iter()
        .filter(|name| name.contains(BIG))
        .collect();
    assert!(left.is_empty(), "nothing of it is left: {left:?}");
}

#[test]
fn a_fetch_stream_cut_midway_leaves_no_file_under_its_final_name() {
    let (fx, proxy, _) = big_fixture("streams = 3");
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // The fetch's main connection passes; its extra connections are cut once they have
    // asked for some of a file (read requests are all a download sends). Three
    // connections for two members: the images file comes alongside on one, the data
    // file over the other two, so its second stream is a cut one.
    proxy.then(Fault::Pass);
    proxy.set_default(Fault::CutAfter(40_000));
    let back = fx.root.path().join("back");
    let fetched = fetch_to(&fx, &back);
    assert_eq!(fetched.code, 5, "{}", fetched.all_output());
    assert!(
        fetched.stderr.contains("stream 2 of 2"),
        "{}",
        fetched.stderr
    );
    assert!(
        !back.join(BIG).exists(),
        "nothing under the final name: {:?}",
        file_names(&back)
    );
    assert!(
        file_names(&back).iter().all(|name| !name.contains(BIG)),
        "no partial left either: {:?}",
        file_names(&back)
    );
}

#[test]
fn a_failing_stream_fails_the_file_without_a_final_name_and_a_retry_heals_it() {
    let (fx, proxy, bytes) = big_fixture("streams = 3\nretries = 0");
    // The main connection passes; the next connection made is cut after 5 MB.
    proxy.then(Fault::Pass);
    proxy.then(Fault::CutAfter(5_000_000));
    let failed = fx.run(&["--no-backup"]);
    assert_eq!(failed.code, 5, "{}", failed.all_output());
    // The extra connections are made side by side, so the cut one is stream 2 or 3.
    assert!(
        failed.stderr.contains("stream 2 of 3") || failed.stderr.contains("stream 3 of 3"),
        "{}",
        failed.stderr
    );
    assert!(
        !fx.dest.join(BIG).exists(),
        "no final name for a file a stream failed"
    );
    assert!(!fx.dest.join(format!("{BIG}.sha256")).exists());

    std::fs::write(
        &fx.ini,
        fx.ini_text()
            .replace("retries = 0", "retries = 2\nretry_wait = 0"),
    )
    .expect("ini");
    proxy.then(Fault::Pass);
    proxy.then(Fault::CutAfter(5_000_000));
    let healed = fx.run(&["--no-backup"]);
    assert_eq!(healed.code, 0, "{}", healed.all_output());
    assert!(healed.stderr.contains("retry 1 of 2"), "{}", healed.stderr);
    assert!(std::fs::read(fx.dest.join(BIG)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();
}

/// A stream much slower than the others (a congested path, a busy server process) does not
/// hold the file back: the others take over the part of its lane it has not reached, both
/// ways, and the file is byte-identical.
#[test]
fn a_slow_streams_lane_is_taken_over_by_the_others_both_ways() {
    let (fx, proxy, bytes) = big_fixture("streams = 3");
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    // Every connection after the first waits 40 ms before passing on each chunk; the
    // first (the main stream) runs at full speed and so finishes its lane first.
    proxy.then(Fault::Pass);
    proxy.set_default(Fault::Delay(std::time::Duration::from_millis(40)));
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.all_output().contains("from a slower stream"),
        "{}",
        run.all_output()
    );
    assert!(std::fs::read(fx.dest.join(BIG)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();

    // Back: the main connection fetches the data file with one slow stream (the images
    // file takes the other), so the main one takes over most of the slow one's lane;
    // every byte must still land at its offset and verify.
    proxy.then(Fault::Pass);
    let back = fx.root.path().join("back");
    let fetched = fetch_to(&fx, &back);
    assert_eq!(fetched.code, 0, "{}", fetched.all_output());
    assert!(std::fs::read(back.join(BIG)).expect("fetched") == bytes);
}

#[test]
fn one_stream_still_works() {
    let (fx, proxy, bytes) = big_fixture("streams = 1");
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        !run.all_output().contains("streams ("),
        "{}",
        run.all_output()
    );
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 1);
    assert!(std::fs::read(fx.dest.join(BIG)).expect("remote") == bytes);
}

/// A server that refuses connections beyond the first (MaxStartups, a per-user limit) still
/// gets every large file, over the connections it accepted, with a warning; `check` says so.
#[test]
fn refused_extra_connections_mean_fewer_streams_not_a_failure() {
    let (fx, proxy, bytes) = big_fixture("streams = 4\nretries = 0");
    // The first connection passes; the next three are cut before the SSH banner.
    proxy.then(Fault::Pass);
    for _ in 0..3 {
        proxy.then(Fault::CutAfter(0));
    }
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let out = run.all_output();
    assert!(
        out.contains("the server accepted 0 of 3 extra connections"),
        "{out}"
    );
    assert!(out.contains("over 1 streams"), "{out}");
    assert!(std::fs::read(fx.dest.join(BIG)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();

    proxy.then(Fault::Pass);
    for _ in 0..2 {
        proxy.then(Fault::CutAfter(0));
    }
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("check").arg("--ini").arg(&fx.ini);
    let check = run_captured(&mut cmd, fx.root.path());
    assert_eq!(
        check.code,
        0,
        "warnings do not fail check: {}",
        check.all_output()
    );
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("streams:"))
        .unwrap_or_else(|| panic!("no streams line: {}", check.stdout));
    assert!(line.starts_with("[WARN]"), "{line}");
    assert!(line.contains("accepted 2 of 4"), "{line}");
}

/// Two nodes claim one empty destination in the same second. The listing shows no owner
/// marker, so this node's claim runs beside its first uploads (their bytes go under partial
/// names meanwhile); the other node's marker lands a moment before this node's exclusive
/// create of it (an sftp-server that plants it). The night is refused (exit 3, naming the
/// owner) and nothing of it stays there: no final name, no partial.
#[test]
fn a_claim_lost_beside_the_first_uploads_publishes_nothing_and_leaves_no_partial() {
    let (_shim, sftp_server) = claim_racing_sftp_server("cvp-node-other");
    let mut fx = Fixture::on(Sshd::start_with(&sftp_server));
    fx.server_extra = "streams = 3\nretries = 0".into();
    fx.write_ini();
    fx.seed(BIG, BIG_SIZE);
    fx.seed("cvp.eosimages.20240101020010.tgz", 4096);
    let run = fx.run(&["--no-backup", "-v"]);
    let output = run.all_output();
    assert_eq!(run.code, 3, "{output}");
    assert!(
        output.contains("belongs to node cvp-node-other"),
        "{output}"
    );
    assert!(
        output.contains(&format!("{BIG}: uploading")),
        "the claim ran beside the uploads: {output}"
    );
    let names = fx.remote_names();
    assert_eq!(
        names,
        vec![".cvp-backup-copy-owner".to_string()],
        "only the other node's marker: {output}"
    );
    let marker = std::fs::read_to_string(fx.dest.join(".cvp-backup-copy-owner")).expect("marker");
    assert_eq!(marker, "node = cvp-node-other\n");
}

/// The extra connections start beside the first (their SSH handshake while it logs in) but
/// log in only once it has: with a wrong password the server sees one failed login, not
/// one per stream (fail2ban, account lockout), and the night fails with the connection's
/// exit code.
#[test]
fn a_wrong_password_fails_once_though_the_streams_connect_beside_the_first() {
    let (mut fx, proxy, _bytes) = big_fixture("streams = 4\nretries = 0");
    fx.token = python_keygen(&fx.key_file, "not-the-password");
    fx.write_ini();
    let run = fx.run(&["--no-backup", "-v"]);
    let output = run.all_output();
    assert_eq!(run.code, 4, "{output}");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        4,
        "the three extra connections started beside the first: {output}"
    );
    let log = fx.sshd.log();
    assert_eq!(
        log.matches("Failed password").count(),
        1,
        "one failed login: {log}"
    );
}
