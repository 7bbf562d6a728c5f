//! Bad nights, against the real sshd through a fault-injecting TCP proxy: cuts, stalls, a
//! full disk, signals, a non-root run. After each: nothing lost, nothing half-written under
//! a final name, a clear message and the documented exit code.

mod common;

use common::proxy::{Fault, Proxy};
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DATA: &str = "cvp.20240101020010.tgz";
const DATA_SIZE: usize = 3_000_000;

/// A node with one data backup, talking to sshd through a proxy with `fault`.
fn faulty(fault: Fault, server_extra: &str) -> (Fixture, Proxy, Vec<u8>) {
    let (fx, proxy) = Fixture::behind_proxy(fault, server_extra);
    let bytes = fx.seed(DATA, DATA_SIZE);
    (fx, proxy, bytes)
}

/// Final-named files on the remote that are not byte-identical to the local ones.
fn assert_no_partial_under_a_final_name(fx: &Fixture, local: &[u8]) {
    let remote = fx.dest.join(DATA);
    if remote.exists() {
        assert!(
            std::fs::read(&remote).expect("remote") == local,
            "a final name holds a partial file"
        );
    }
    for name in fx.remote_names() {
        if name.ends_with(".sha256") {
            fx.assert_remote_checksums_verify();
        }
    }
}

fn wait_with_watchdog(mut child: Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_connection_cut_mid_file_is_healed_by_a_retry_that_resumes() {
    let (fx, proxy, bytes) = faulty(Fault::Pass, "retries = 3\nretry_wait = 0");
    proxy.then(Fault::CutAfter(1_000_000));
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let out = run.all_output();
    assert!(out.contains("retry 1 of 3"), "{out}");
    assert!(out.contains("resuming the upload at"), "{out}");
    assert!(
        out.contains("resumed upload verified by reading it back"),
        "{out}"
    );
    assert!(std::fs::read(fx.dest.join(DATA)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();
    assert!(proxy.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn every_connection_cut_exits_5_and_the_next_run_completes() {
    let (fx, proxy, bytes) = faulty(Fault::CutAfter(1_000_000), "retries = 2\nretry_wait = 0");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 5, "{}", run.all_output());
    assert!(run.stderr.contains("retry 2 of 2"), "{}", run.stderr);
    assert!(
        !fx.dest.join(DATA).exists(),
        "no final name for an incomplete file"
    );
    assert_no_partial_under_a_final_name(&fx, &bytes);
    assert!(fx.local_path(DATA).exists(), "local backup untouched");

    proxy.set_default(Fault::Pass);
    let next = fx.run(&["--no-backup"]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    assert!(std::fs::read(fx.dest.join(DATA)).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();
}

#[test]
fn a_stalled_server_is_ended_by_the_timeout() {
    let (fx, _proxy, bytes) = faulty(
        Fault::StallAfter(1_000_000),
        "retries = 1\nretry_wait = 0\ntimeout = 2",
    );
    let child = fx.spawn(&["--no-backup"]);
    let code = wait_with_watchdog(child, Duration::from_secs(120));
    assert_eq!(code, 5);
    assert!(!fx.dest.join(DATA).exists());
    assert_no_partial_under_a_final_name(&fx, &bytes);
}

#[test]
fn a_slow_wan_link_still_copies_correctly() {
    let (fx, _proxy, bytes) = faulty(Fault::Delay(Duration::from_millis(2)), "");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(std::fs::read(fx.dest.join(DATA)).expect("remote") == bytes);
}

/// A small tmpfs: a full disk.
struct TinyDisk {
    path: std::path::PathBuf,
}

impl TinyDisk {
    /// 1 MB as the backup server's disk (its user's).
    fn mount(path: &std::path::Path) -> TinyDisk {
        TinyDisk::mount_as(path, (uid_of(TEST_USER), gid_of(TEST_USER)))
    }

    /// 1 MB (1048576 bytes) owned by `owner`.
    fn mount_as(path: &std::path::Path, (uid, gid): (u32, u32)) -> TinyDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size=1m,uid={uid},gid={gid},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs (tests run as root)");
        TinyDisk {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_remote_disk_exits_5_without_a_final_name_or_local_loss() {
    let mut fx = Fixture::new();
    fx.make_remote_dir();
    let _disk = TinyDisk::mount(&fx.dest);
    fx.cvpi_flags = format!("--size {DATA_SIZE}");
    fx.write_ini();
    let run = fx.run(&[]);
    assert_eq!(run.code, 5, "{}", run.all_output());
    assert!(run.stderr.contains("disk full"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("retry"),
        "a full disk is not retried: {}",
        run.stderr
    );
    let data = fx.newest_local("cvp.2").expect("the local backup is kept");
    let local = std::fs::read(fx.local_path(&data)).expect("local");
    assert_eq!(local.len(), DATA_SIZE, "local backup untouched");
    assert!(
        !fx.dest.join(&data).exists(),
        "no final name for the partial upload"
    );
    assert!(!fx.dest.join(format!("{data}.sha256")).exists());
}

#[test]
fn a_destination_that_is_a_file_or_not_writable_exits_5() {
    let fx = Fixture::new();
    fx.seed(DATA, 1000);
    std::fs::create_dir_all(fx.dest.parent().expect("parent")).expect("parent");
    std::fs::write(&fx.dest, b"not a directory").expect("file");
    let file = fx.run(&["--no-backup"]);
    assert_eq!(file.code, 5, "{}", file.all_output());
    assert!(file.stderr.contains("not a directory"), "{}", file.stderr);

    std::fs::remove_file(&fx.dest).expect("rm");
    std::fs::create_dir_all(&fx.dest).expect("root-owned destination");
    let denied = fx.run(&["--no-backup"]);
    assert_eq!(denied.code, 5, "{}", denied.all_output());
    assert!(
        denied.stderr.contains("permission denied"),
        "{}",
        denied.stderr
    );
}

#[test]
fn sigterm_mid_copy_leaves_no_final_name_and_the_next_run_resumes() {
    let (fx, proxy, bytes) = faulty(Fault::Delay(Duration::from_millis(20)), "retry_wait = 0");
    let child = fx.spawn(&["--no-backup"]);
    let partial = fx.dest.join(format!(".{DATA}.cvpbc-part"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map(|m| m.size()).unwrap_or(0) < 200_000 {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the tool, a child of this test.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(!fx.dest.join(DATA).exists(), "no final name after SIGTERM");
    assert!(partial.exists(), "the partial upload is kept for resuming");

    proxy.set_default(Fault::Pass);
    let next = fx.run(&["--no-backup", "-v"]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    assert!(
        next.all_output().contains("resuming the upload at"),
        "{}",
        next.all_output()
    );
    assert!(std::fs::read(fx.dest.join(DATA)).expect("remote") == bytes);
    assert!(!partial.exists());
}

#[test]
fn the_whole_job_runs_as_an_unprivileged_user() {
    let fx = Fixture::new();
    let user = "cvpbc-cvp";
    ensure_user(user, "unused-password-2");
    let (uid, gid) = (uid_of(user), gid_of(user));
    let text = fx
        .ini_text()
        .replace("backup_user = root", &format!("backup_user = {user}"));
    std::fs::write(&fx.ini, text).expect("ini");
    // Everything the cron job touches belongs to the user, as the RPM sets it up for cvp.
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(fx.root.path())
        .status();
    assert!(status.expect("chown").success());
    std::fs::set_permissions(
        fx.root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fx.seed("cvp.eosimages.20240101020005.tgz", 1000);
    let mut cmd = fx.command(&["-v"]);
    use std::os::unix::process::CommandExt;
    cmd.uid(uid)
        .gid(gid)
        .env("HOME", fx.root.path())
        .env("USER", user);
    let run = run_captured(&mut cmd, fx.root.path());
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        !run.syslog.is_empty(),
        "an unprivileged user can log to syslog"
    );
    let data = fx.newest_local("cvp.2").expect("backup made by the user");
    assert_eq!(
        std::fs::metadata(fx.local_path(&data)).expect("meta").uid(),
        uid
    );
    assert!(fx.state_dir.join("last-run.json").exists());
    fx.assert_remote_checksums_verify();
}

/// A 1 MB tmpfs as /data and 300 KB backups: three nights fit; before the fourth, the free
/// space (about 150 KB) is under the floor (the last set plus 10 %, 330 KB), so the backup is
/// not started: exit 1, nothing new on the disk (it never fills), the previous set still on
/// the server, and `status`, `check` and the metrics say why.
#[test]
fn the_free_space_floor_refuses_a_backup_before_backup_dir_fills() {
    let mut fx = Fixture::new();
    let _disk = TinyDisk::mount_as(&fx.backup_dir, (0, 0));
    let metrics = fx.root.path().join("metrics");
    std::fs::create_dir_all(&metrics).expect("metrics dir");
    fx.cvpi_flags = "--size 300000".into();
    fx.backup_extra = format!("metrics_dir = {}", metrics.display());
    fx.write_ini();
    for night in 1..=3 {
        let run = fx.run(&[]);
        assert_eq!(run.code, 0, "night {night}: {}", run.all_output());
    }
    let before = fx.local_names();
    let last = fx.newest_local("cvp.2").expect("a set");
    let free_before = free_bytes(&fx.backup_dir);
    assert!(
        free_before < 330_000,
        "the fourth would not fit: {free_before}"
    );

    let refused = fx.run(&[]);
    assert_eq!(refused.code, 1, "{}", refused.all_output());
    let out = refused.all_output();
    for needle in [
        format!("not enough free space in {}", fx.backup_dir.display()),
        "floor 330.0 kB (min_free_space = auto: the last set, 300.0 kB, plus 10 %)".into(),
        "the backup was not started".into(),
    ] {
        assert!(out.contains(&needle), "{needle:?} not in {out}");
    }
    assert!(!out.contains("running the CVP backup"), "{out}");
    assert_eq!(fx.local_names(), before, "nothing new, nothing partial");
    assert!(
        free_bytes(&fx.backup_dir) >= free_before,
        "the disk did not fill"
    );
    assert!(
        fx.remote_names().contains(&last),
        "the previous set is on the server"
    );

    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["exit_code"], 1);
    assert_eq!(record["backup_ran"], false);
    assert_eq!(record["free_floor_bytes"], 330_000);
    assert!(
        record["free_bytes"].as_u64().is_some_and(|f| f < 330_000),
        "{record}"
    );
    let status = fx.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.all_output());
    assert!(
        status.stdout.contains("CVP backup:  NOT STARTED"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("(floor 330.0 kB: too little)"),
        "{}",
        status.stdout
    );
    let prom = std::fs::read_to_string(metrics.join("cvp_backup_copy.prom")).expect("metrics");
    assert!(
        prom.contains("cvp_backup_copy_backup_dir_free_floor_bytes{"),
        "{prom}"
    );
    assert!(prom.contains("} 330000\n"), "{prom}");
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 1, "{}", check.all_output());
    assert!(
        check.stdout.contains("[FAIL] free space:"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("tonight's backup would be refused (exit 1)"),
        "{}",
        check.stdout
    );

    // Room again (the operator deletes the oldest backup): the next night backs up.
    let oldest = data_names(&fx).into_iter().next().expect("oldest");
    std::fs::remove_file(fx.backup_dir.join(oldest)).expect("free space");
    let fits = fx.run(&[]);
    assert_eq!(fits.code, 0, "{}", fits.all_output());
}

/// A failed backup's archive (set aside, nothing restores from it) takes the room the next
/// backup needs: it goes first, and the night backs up instead of being refused.
#[test]
fn a_failed_backup_s_archive_gives_its_room_to_the_next_backup() {
    let mut fx = Fixture::new();
    let _disk = TinyDisk::mount_as(&fx.backup_dir, (0, 0));
    fx.cvpi_flags = "--size 300000".into();
    fx.write_ini();
    let good = fx.run(&[]);
    assert_eq!(good.code, 0, "{}", good.all_output());
    fx.cvpi_flags = "--fail --size 1000000".into();
    fx.write_ini();
    let failed = fx.run(&[]);
    assert_eq!(failed.code, 1, "{}", failed.all_output());
    let aside: Vec<String> = file_names(&fx.backup_dir)
        .into_iter()
        .filter(|n| n.ends_with(".failed"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", file_names(&fx.backup_dir));
    assert!(
        free_bytes(&fx.backup_dir) < 330_000,
        "the next backup would not fit"
    );
    fx.cvpi_flags = "--size 300000".into();
    fx.write_ini();
    let next = fx.run(&[]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    assert!(
        next.all_output()
            .contains("(a failed backup's archive: tonight's backup needs the room)"),
        "{}",
        next.all_output()
    );
    assert!(!fx.backup_dir.join(&aside[0]).exists());
    assert_eq!(data_names(&fx).len(), 2, "{:?}", file_names(&fx.backup_dir));
}

fn data_names(fx: &Fixture) -> Vec<String> {
    file_names(&fx.backup_dir)
        .into_iter()
        .filter(|n| n.starts_with("cvp.2") && n.ends_with(".tgz"))
        .collect()
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail")
}

/// A slow NAS: the server takes 5 s to sync a large upload, longer than the idle `timeout`
/// (2 s). Syncing and closing get `sync_timeout` (default 900 s), so the file lands on the
/// first attempt; with `sync_timeout` as short as `timeout` it would fail every night.
#[test]
fn syncing_a_large_upload_on_a_slow_disk_gets_its_own_timeout() {
    let (_shim, sftp_server) = slow_fsync_sftp_server(5);
    let mut fx = Fixture::on(Sshd::start_with(&sftp_server));
    let bytes = fx.seed(DATA, DATA_SIZE);
    fx.server_extra = "timeout = 2\nretries = 0".into();
    fx.write_ini();
    let started = Instant::now();
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the sync was slow"
    );
    assert!(!run.all_output().contains("retry"), "{}", run.all_output());
    assert!(std::fs::read(fx.dest.join(DATA)).expect("remote") == bytes);

    // The same slow disk with no more patience for the sync than for any other step.
    std::fs::remove_file(fx.dest.join(DATA)).expect("rm");
    fx.server_extra = "timeout = 2\nretries = 0\nsync_timeout = 2".into();
    fx.write_ini();
    let impatient = fx.run(&["--no-backup"]);
    assert_eq!(impatient.code, 5, "{}", impatient.all_output());
    assert!(!fx.dest.join(DATA).exists());
}
