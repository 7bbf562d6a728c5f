//! Ready for the real appliance: /data never fills because the server is down, the backup
//! command runs as `su - cvp -c` runs it whoever starts the job, another backup already
//! running is never touched, and the night's log survives a syslog that goes away.
//! Against the real sshd, with the simulated cvpi (tests/fixtures/fake-cvpi).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stand-in for the cvp account in this file's tests.
const JOB: &str = "cvpbc-job";

fn data_files(fx: &Fixture) -> Vec<String> {
    file_names(&fx.backup_dir)
        .into_iter()
        .filter(|n| n.starts_with("cvp.2") && n.ends_with(".tgz"))
        .collect()
}

/// The files of the set a run verified on the server, from its manifest.
fn manifest_members(fx: &Fixture, data: &str) -> Vec<String> {
    let manifest = data.replace(".tgz", ".set.sha256");
    std::fs::read_to_string(fx.dest.join(&manifest))
        .unwrap_or_else(|e| panic!("{manifest}: {e}"))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .collect()
}

/// limit = 2, and the server unreachable for limit + 3 nights after a good one: every night
/// still backs up (exit 4 for the copy), and the node never holds more than limit + 1 sets,
/// the last set verified on the server always among them, complete. When the server is back,
/// the node goes down to the limit.
#[test]
fn with_the_server_down_for_limit_plus_3_nights_the_node_holds_at_most_limit_plus_1_sets() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--images".into();
    fx.server_extra = "retries = 0".into();
    let write = |fx: &Fixture| {
        std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 2")).expect("ini");
    };
    write(&fx);
    let good = fx.run(&[]);
    assert_eq!(good.code, 0, "{}", good.all_output());
    let verified = data_files(&fx).pop().expect("the first set");
    let members = manifest_members(&fx, &verified);
    assert_eq!(members.len(), 3, "data, images, log: {members:?}");

    let sshd_port = fx.port;
    fx.port = free_port(); // nothing listens there: the server is down
    write(&fx);
    for night in 1..=5 {
        let down = fx.run(&[]);
        assert_eq!(down.code, 4, "night {night}: {}", down.all_output());
        let data = data_files(&fx);
        assert!(
            data.len() <= 3,
            "night {night}: {} data backups with limit 2: {data:?}",
            data.len()
        );
        let local = fx.local_names();
        for member in &members {
            assert!(
                local.contains(member),
                "night {night}: {member} of the last verified set is gone: {local:?}"
            );
        }
        if night >= 2 {
            assert_eq!(
                data.len(),
                3,
                "night {night}: the newest 2 and the verified one"
            );
            assert!(
                down.all_output().contains("pruning the node all the same"),
                "{}",
                down.all_output()
            );
        }
    }
    let newest = data_files(&fx).pop().expect("tonight's");

    fx.port = sshd_port;
    write(&fx);
    let back = fx.run(&[]);
    assert_eq!(back.code, 0, "{}", back.all_output());
    let data = data_files(&fx);
    assert_eq!(data.len(), 2, "back to the limit: {data:?}");
    assert!(
        !data.contains(&verified),
        "the old verified set goes once a newer one is"
    );
    assert!(data.contains(&newest), "the newest two stay: {data:?}");
    let tonight = data.last().expect("tonight");
    assert!(fx.remote_names().contains(tonight));
    fx.assert_remote_checksums_verify();
}

/// The job account, its home and its login profile (which sets a marker and adds a folder
/// to PATH, as CVP's profile adds /cvpi/bin), and a program only that PATH finds.
struct JobAccount {
    fx: Fixture,
    uid: u32,
    gid: u32,
    home: PathBuf,
    evidence: PathBuf,
}

const PROFILE_BIN: &str = "/opt/cvpbc-profile-bin";

impl JobAccount {
    fn new() -> JobAccount {
        let mut fx = Fixture::new();
        let evidence = fx.root.path().join("evidence");
        std::fs::create_dir_all(&evidence).expect("evidence");
        set_mode(&evidence, 0o777);
        fx.cvpi_flags = format!("--env-file {}", evidence.join("env").display());
        let (uid, gid) = fx.give_to(JOB);
        let home = PathBuf::from(format!("/home/{JOB}"));
        std::fs::create_dir_all(&home).expect("home");
        std::fs::write(
            home.join(".profile"),
            format!("export CVPBC_PROFILE=loaded\nPATH=\"$PATH:{PROFILE_BIN}\"\n"),
        )
        .expect("profile");
        chown_tree(&home, uid, gid);
        std::fs::create_dir_all(PROFILE_BIN).expect("profile bin");
        let wrapper = Path::new(PROFILE_BIN).join("cvpi-from-profile");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec {} \"$@\"\n", fx.cvpi.display()),
        )
        .expect("wrapper");
        set_mode(&wrapper, 0o755);
        JobAccount {
            fx,
            uid,
            gid,
            home,
            evidence,
        }
    }

    /// The environment the backup command saw on the last run, as NAME -> value.
    fn captured(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.evidence.join("env")).expect("env captured");
        let _ = std::fs::remove_file(self.evidence.join("env"));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A soft core-dump limit for the started job, as a shell's `ulimit -S -c` would set it.
fn with_core_limit(cmd: &mut Command, bytes: u64) {
    // SAFETY: setrlimit in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_CORE, &mut limit);
            limit.rlim_cur = bytes.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_CORE, &limit);
            Ok(())
        });
    }
}

/// The backup command's environment is the one `su - cvp -c` gives, whoever starts the job:
/// cron's (as the account, a bare environment), root by hand (root's environment, with a
/// token and sudo's variables), the account by hand (a working shell's odds and ends). Each
/// time: HOME, USER, LOGNAME, SHELL from the password database, PATH as the login profile
/// makes it, the profile read, the home as the folder, the core limit the job was given,
/// and nothing else of the caller's.
#[test]
fn the_backup_command_runs_as_su_dash_runs_it_whoever_starts_the_job() {
    let job = JobAccount::new();
    let fx = &job.fx;
    let home = job.home.display().to_string();
    let mut captures = Vec::new();

    let mut cron = Command::new(bin());
    cron.arg("--ini")
        .arg(&fx.ini)
        .env_clear()
        .env("SHELL", "/bin/sh")
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("LOGNAME", JOB)
        .env("USER", JOB)
        .uid(job.uid)
        .gid(job.gid);
    with_core_limit(&mut cron, 1 << 20);
    let run = run_captured(&mut cron, fx.root.path());
    assert_eq!(run.code, 0, "from cron: {}", run.all_output());
    captures.push(("cron", job.captured()));

    let mut root = Command::new(bin());
    root.arg("--ini")
        .arg(&fx.ini)
        .env("HOME", "/root")
        .env("ROOT_ONLY_TOKEN", "s3cret-of-root")
        .env("SUDO_USER", "admin")
        .env("TERM", "xterm-256color")
        .env("LANG", "C.UTF-8");
    with_core_limit(&mut root, 1 << 20);
    let run = run_captured(&mut root, fx.root.path());
    assert_eq!(run.code, 0, "by root: {}", run.all_output());
    captures.push(("root", job.captured()));

    let mut by_hand = Command::new(bin());
    by_hand
        .arg("--ini")
        .arg(&fx.ini)
        .env_clear()
        .env("HOME", "/tmp")
        .env("PATH", "/opt/junk:/usr/local/bin:/usr/bin:/bin")
        .env("TERM", "screen")
        .env("LANG", "de_DE.UTF-8")
        .env("EDITOR", "vi")
        .env("OLDPWD", "/var/tmp")
        .uid(job.uid)
        .gid(job.gid)
        .current_dir("/tmp");
    with_core_limit(&mut by_hand, 1 << 20);
    let run = run_captured(&mut by_hand, fx.root.path());
    assert_eq!(run.code, 0, "by hand: {}", run.all_output());
    captures.push(("by hand", job.captured()));

    let (_, first) = &captures[0];
    for (who, env) in &captures {
        assert_eq!(env, first, "{who} gave another environment than cron");
    }
    let get = |name: &str| first.get(name).map(String::as_str);
    assert_eq!(get("HOME"), Some(home.as_str()));
    assert_eq!(get("USER"), Some(JOB));
    assert_eq!(get("LOGNAME"), Some(JOB));
    assert_eq!(get("SHELL"), Some("/bin/sh"));
    assert_eq!(get("CVPBC_PROFILE"), Some("loaded"), "the profile was read");
    assert!(
        get("PATH").is_some_and(|p| p.ends_with(&format!(":{PROFILE_BIN}"))),
        "{first:?}"
    );
    assert_eq!(get("cwd"), Some(home.as_str()));
    assert!(
        get("core-soft").is_some_and(|c| c != "0"),
        "cvpi gets the job's core limit back, not the tool's 0: {first:?}"
    );
    for leaked in ["ROOT_ONLY_TOKEN", "SUDO_USER", "TERM", "LANG", "EDITOR"] {
        assert!(get(leaked).is_none(), "{leaked} leaked: {first:?}");
    }

    // check looks the program up the same way: one only the profile's PATH has is found.
    let command = format!(
        "cvpi-from-profile --backup-dir {} --log-dir {} backup cvp",
        fx.backup_dir.display(),
        fx.log_dir.display()
    );
    fx.set_in_ini("backup_command", &command);
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.all_output());
    assert!(
        check.stdout.contains(&format!(
            "[ok  ] backup command: cvpi-from-profile resolves to {PROFILE_BIN}/cvpi-from-profile \
             and is executable by {JOB} in its login environment"
        )),
        "{}",
        check.stdout
    );
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // And one nothing finds fails check, naming the login shell.
    fx.set_in_ini("backup_command", "no-such-cvpi backup cvp");
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 3, "{}", check.all_output());
    assert!(
        check.stdout.contains(&format!(
            "[FAIL] backup command: no-such-cvpi is not found by {JOB}'s login shell"
        )),
        "{}",
        check.stdout
    );
}

/// A CVP backup not started by the job (as root's stock line or an operator would): this
/// node's simulated cvpi, 6 s long, writing into its folders.
fn other_backup(fx: &Fixture, flags: &[&str]) -> std::process::Child {
    Command::new(&fx.cvpi)
        .arg("--backup-dir")
        .arg(&fx.backup_dir)
        .arg("--log-dir")
        .arg(&fx.log_dir)
        .args(flags)
        .args(["--sleep", "6", "backup", "cvp"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the other backup")
}

/// Until a backup has written its first file (its log) on the node.
fn wait_for_a_backup_to_write(fx: &Fixture, which: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fx.local_names().is_empty() {
        assert!(Instant::now() < deadline, "{which} never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A backup already running (root's stock line, or an operator's by hand) when the night
/// starts: exit 6 naming its process; nothing of it renamed, adopted or copied; and once it
/// is done, the next night's set is the job's own.
#[test]
fn a_cvp_backup_already_running_makes_the_night_refuse_with_exit_6() {
    let fx = Fixture::new();
    let mut stock = other_backup(&fx, &["--images"]);
    wait_for_a_backup_to_write(&fx, "the other backup");
    let refused = fx.run(&[]);
    let during = fx.local_names();
    assert_eq!(refused.code, 6, "{}", refused.all_output());
    let out = refused.all_output();
    assert!(
        out.contains(&format!(
            "a CVP backup is already running (pid {}:",
            stock.id()
        )),
        "{out}"
    );
    assert!(!out.contains("running the CVP backup"), "{out}");
    assert!(
        fx.remote_names().is_empty(),
        "nothing copied: {:?}",
        fx.remote_names()
    );
    assert!(
        !during.iter().any(|n| n.ends_with(".failed")),
        "nothing set aside: {during:?}"
    );
    let history = std::fs::read_to_string(fx.state_dir.join("history.json")).unwrap_or_default();
    assert!(!history.contains("cvp.2"), "nothing adopted: {history}");
    let record = std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record");
    assert!(record.contains("\"exit_code\": 6"), "{record}");

    assert!(stock.wait().expect("other backup").success());
    let theirs: Vec<String> = fx.local_names();
    let next = fx.run(&[]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    let ours: Vec<String> = data_files(&fx)
        .into_iter()
        .filter(|n| !theirs.contains(n))
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", fx.local_names());
    assert!(
        fx.remote_names().contains(&ours[0]),
        "tonight's set is the job's own"
    );
    for name in &theirs {
        assert!(
            fx.local_names().contains(name),
            "{name} of the other backup was touched"
        );
    }
}

/// One starts while the job's own backup runs: when ours ends, the files that appeared cannot
/// be told apart, so the night adopts, copies and sets aside none of them (exit 6).
#[test]
fn a_backup_started_during_ours_makes_the_night_touch_nothing() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--sleep 3".into();
    fx.write_ini();
    let run = fx
        .command(&[])
        .env(SYSLOG_ENV, fx.root.path().join("no-syslog"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    wait_for_a_backup_to_write(&fx, "our backup");
    let mut stock = other_backup(&fx, &[]);
    let out = run.wait_with_output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another CVP backup started while this one ran (pid {}:",
            stock.id()
        )),
        "{stderr}"
    );
    assert!(fx.remote_names().is_empty(), "nothing copied");
    let local = fx.local_names();
    assert!(!local.iter().any(|n| n.ends_with(".failed")), "{local:?}");
    let history = std::fs::read_to_string(fx.state_dir.join("history.json")).unwrap_or_default();
    assert!(!history.contains("cvp.2"), "nothing adopted: {history}");
    assert!(stock.wait().expect("other").success());
    // The next night: both backups' files are old news; tonight's set is its own.
    let before = data_files(&fx);
    assert_eq!(before.len(), 2, "{before:?}");
    fx.cvpi_flags.clear();
    fx.write_ini();
    let next = fx.run(&[]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    let tonight: Vec<String> = data_files(&fx)
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert_eq!(tonight.len(), 1);
    assert!(fx.remote_names().contains(&tonight[0]));
}

/// The job died during its backup 7 hours ago (history says a backup was running, with a
/// timeout of 6 hours). Since then an operator copied an older backup in (its time
/// preserved, `cp -p`) and made one by hand. The next run sets aside only what the dead
/// backup can have written (before its timeout; a restart of the node would end it sooner),
/// kept as NAME.failed this night even though a good set is verified; the other two are
/// left, and one is copied.
#[test]
fn only_files_written_while_a_dead_backup_ran_are_set_aside() {
    let fx = Fixture::new();
    let ours = "cvp.20261201020010.tgz";
    let copied_in = "cvp.20261120020010.tgz";
    let by_hand = "cvp.20261201031010.tgz";
    let started = chrono::Local::now() - chrono::Duration::hours(7);
    for (name, written) in [
        (ours, started + chrono::Duration::seconds(30)),
        (copied_in, started - chrono::Duration::days(2)),
        (by_hand, chrono::Local::now()),
    ] {
        fx.seed(name, 10_000);
        let status = Command::new("touch")
            .arg("-d")
            .arg(written.to_rfc3339())
            .arg(fx.backup_dir.join(name))
            .status()
            .expect("touch");
        assert!(status.success());
    }
    std::fs::create_dir_all(&fx.state_dir).expect("state");
    std::fs::write(
        fx.state_dir.join("history.json"),
        format!(
            "{{\"backup_started\": [], \"backup_window\": {{\"started\": \"{}\", \"seconds\": \
             21610}}}}\n",
            started.to_rfc3339()
        ),
    )
    .expect("history");
    let run = fx.run(&["--no-backup"]);
    let out = run.all_output();
    assert_eq!(run.code, 0, "{out}");
    assert!(
        out.contains(&format!("{ours}: set aside as {ours}.failed")),
        "the dead backup's file is set aside: {out}"
    );
    assert!(
        fx.backup_dir.join(format!("{ours}.failed")).exists(),
        "kept this night, though a good set is verified: {out}"
    );
    for left in [copied_in, by_hand] {
        assert!(fx.backup_dir.join(left).exists(), "{left} is left: {out}");
        assert!(
            out.contains(&format!("{left} appeared during the backup the job did not see finish, but was written outside it")),
            "{out}"
        );
    }
    // The by-hand backup, stamped later than anything else, is tonight's set.
    assert!(fx.remote_names().contains(&by_hand.to_string()), "{out}");
    assert!(!fx.remote_names().contains(&ours.to_string()), "{out}");
}

/// Nodes upgraded from a version whose history did not keep the last set verified: its
/// record (written before the recovery point existed) says it. With the server down, good
/// nights prune the node, but never that set.
#[test]
fn after_an_upgrade_the_set_the_old_record_verified_is_still_kept() {
    let mut fx = Fixture::new();
    fx.server_extra = "retries = 0".into();
    let verified = "cvp.20240101020010.tgz";
    let images = "cvp.eosimages.20240101020005.tgz";
    fx.seed(verified, 10_000);
    fx.seed(images, 10_000);
    std::fs::create_dir_all(&fx.state_dir).expect("state");
    // As version 0.1.0 of the monitoring change left them: no recovery_point, no history.
    std::fs::write(
        fx.state_dir.join("last-run.json"),
        format!(
            "{{\"version\": \"0.1.0\", \"started\": \"2024-01-01T02:00:00+00:00\", \
             \"finished\": \"2024-01-01T02:05:00+00:00\", \"exit_code\": 0, \"backup_ran\": true, \
             \"backup_succeeded\": true, \"destination\": \"{TEST_USER}@127.0.0.1:{}\", \
             \"restore_set\": \"{verified}\", \"files\": [], \"bytes_uploaded\": 0, \
             \"seconds\": 1.0, \"megabytes_per_second\": 0.0, \"pruned_local\": 0, \
             \"pruned_remote\": 0, \"errors\": []}}\n",
            fx.dest.display()
        ),
    )
    .expect("old record");
    fx.port = free_port(); // the server is down
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 1")).expect("ini");
    for night in 1..=2 {
        let run = fx.run(&[]);
        assert_eq!(run.code, 4, "night {night}: {}", run.all_output());
    }
    let local = fx.local_names();
    assert!(local.contains(&verified.to_string()), "{local:?}");
    assert!(local.contains(&images.to_string()), "{local:?}");
    assert_eq!(
        data_files(&fx).len(),
        2,
        "limit 1 and the verified one: {local:?}"
    );
}

/// A syslog that collects datagrams on `path` (as rsyslog's /dev/log) into `lines`.
struct Syslog {
    path: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    fn start(path: &Path, lines: Arc<Mutex<Vec<String>>>) -> Syslog {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).expect("bind syslog");
        set_mode(path, 0o777);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (lines, stop) = (lines.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                        lines.lock().expect("lines").push(line);
                    }
                }
            })
        };
        Syslog {
            path: path.to_path_buf(),
            stop,
            reader: Some(reader),
        }
    }

    /// The daemon goes away: its socket is closed and gone.
    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// rsyslog restarts in the middle of a run: its socket is gone for a few seconds. Nothing
/// of the night is lost: what was logged meanwhile reaches syslog once it is back (marked
/// with when it was logged), the rest of the run after it, and the run's own log in
/// state_dir has every line; `status` points to it.
#[test]
fn the_night_s_log_survives_syslog_going_away_in_the_middle_of_a_run() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--sleep 4".into();
    fx.write_ini();
    let socket = fx.root.path().join("dev-log");
    let before = Arc::new(Mutex::new(Vec::new()));
    let syslog = Syslog::start(&socket, before.clone());
    let child = fx
        .command(&[])
        .env(SYSLOG_ENV, &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !before
        .lock()
        .expect("lines")
        .iter()
        .any(|l| l.contains("running the CVP backup"))
    {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    syslog.stop();
    // cvpi says "dumping the database" 2 s in: logged while syslog is away.
    std::thread::sleep(Duration::from_millis(3000));
    let after = Arc::new(Mutex::new(Vec::new()));
    let syslog = Syslog::start(&socket, after.clone());
    let out = child.wait_with_output().expect("run");
    std::thread::sleep(Duration::from_millis(200));
    syslog.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let after = after.lock().expect("lines").clone();
    let before = before.lock().expect("lines").clone();
    let all = format!(
        "{}\n--- syslog back ---\n{}",
        before.join("\n"),
        after.join("\n")
    );
    assert!(
        after.iter().any(|l| l.contains("syslog was unavailable)")
            && l.contains("backup: cvpi: dumping the database")),
        "the held-back line arrives, marked: {all}"
    );
    for later in ["CVP backup finished", "copied and verified", "summary: "] {
        assert!(
            after.iter().any(|l| l.contains(later)),
            "{later:?} reached syslog after it came back: {all}"
        );
    }
    assert!(
        stderr.contains("dumping the database"),
        "stderr carried it meanwhile: {stderr}"
    );
    let logs = file_names(&fx.state_dir.join("logs"));
    assert_eq!(logs.len(), 1, "{logs:?}");
    let run_log =
        std::fs::read_to_string(fx.state_dir.join("logs").join(&logs[0])).expect("run log");
    for line in [
        "starting: configuration",
        "running the CVP backup",
        "backup: cvpi: dumping the database",
        "copied and verified",
        "summary: ",
    ] {
        assert!(
            run_log.contains(line),
            "{line:?} not in the run's log:\n{run_log}"
        );
    }
    let status = fx.run(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "whole log:   {}",
            fx.state_dir.join("logs").join(&logs[0]).display()
        )),
        "{}",
        status.stdout
    );
}

/// Each run keeps its own log in state_dir/logs; only the newest 14 stay.
#[test]
fn runs_keep_their_logs_in_state_dir_rotated() {
    let fx = Fixture::new();
    fx.seed("cvp.20261201020010.tgz", 1000);
    let logs = fx.state_dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    for day in 1..=20 {
        std::fs::write(logs.join(format!("run.202611{day:02}-020000.log")), "old").expect("old");
    }
    std::fs::write(logs.join("notes.txt"), "mine").expect("notes");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let names = file_names(&logs);
    let runs: Vec<&String> = names.iter().filter(|n| n.starts_with("run.")).collect();
    assert_eq!(runs.len(), 14, "{names:?}");
    assert!(
        names.contains(&"notes.txt".to_string()),
        "not ours to delete"
    );
    assert!(
        !names.contains(&"run.20261106-020000.log".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"run.20261120-020000.log".to_string()),
        "{names:?}"
    );
    let newest = runs.iter().max().expect("newest");
    let text = std::fs::read_to_string(logs.join(newest)).expect("log");
    assert!(text.contains("summary: "), "{text}");
    let mode = std::fs::metadata(logs.join(newest))
        .expect("meta")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o640);
}
