//! The operator's commands (`check`, `list`, `fetch`, `status`) against a real OpenSSH sshd
//! on 127.0.0.1 and a simulated cvpi.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `cvp-backup-copy SUBCOMMAND --ini INI ARGS...`, captured.
fn tool(fx: &Fixture, subcommand: &str, args: &[&str]) -> Run {
    tool_env(fx, subcommand, args, &[])
}

fn tool_env(fx: &Fixture, subcommand: &str, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg(subcommand).arg("--ini").arg(&fx.ini).args(args);
    cmd.env_remove("CVP_BACKUP_COPY_INI");
    // The machine's own root crontab is not the test's business.
    cmd.env(
        "CVP_BACKUP_COPY_ROOT_CRONTAB",
        fx.root.path().join("no-crontab"),
    );
    for (name, value) in env {
        cmd.env(name, value);
    }
    run_captured(&mut cmd, fx.root.path())
}

fn line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", run.all_output()))
}

/// A good night: the fake cvpi wrote a set and the job copied it.
fn after_a_good_night(fx: &Fixture) -> (String, String) {
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let data = fx.newest_local("cvp.2").expect("data");
    let log = fx.newest_local("backup_cvp.").expect("log");
    (data, log)
}

#[test]
fn check_passes_on_a_good_setup_and_records_a_new_host_key() {
    let fx = Fixture::new();
    let crontab = fx.root.path().join("root-crontab");
    std::fs::write(&crontab, "0 3 * * 5 /cvpi/tools/logsbackup.py\n").expect("crontab");
    let run = tool_env(
        &fx,
        "check",
        &[],
        &[("CVP_BACKUP_COPY_ROOT_CRONTAB", &crontab)],
    );
    assert_eq!(run.code, 0, "{}", run.all_output());
    for prefix in [
        "[ok  ] configuration:",
        "[ok  ] key file:",
        "[ok  ] password:",
        "[ok  ] backup command:",
        "[ok  ] backup_dir:",
        "[ok  ] log_dir:",
        "[ok  ] free space:",
        "[ok  ] state_dir:",
        "[ok  ] server:",
        "[ok  ] host key:",
        "[ok  ] authentication:",
        "[ok  ] destination:",
        "[ok  ] root's crontab:",
    ] {
        line(&run, prefix);
    }
    assert!(line(&run, "[ok  ] host key:").contains("recorded"));
    assert!(run.stdout.contains(" 0 failed"), "{}", run.stdout);
    assert_eq!(
        std::fs::read_to_string(&fx.known_hosts).expect("known_hosts"),
        fx.sshd.host_key_line()
    );
    // The destination was made and claimed as a run would do it, and the probe is gone.
    assert!(fx.dest.is_dir());
    assert_eq!(fx.remote_names(), [".cvp-backup-copy-owner"]);
    assert!(line(&run, "[ok  ] destination owner:").contains("claimed for this node"));
    assert!(!run.all_output().contains(TEST_PASSWORD));

    // A second check knows the host.
    let again = tool(&fx, "check", &[]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert!(line(&again, "[ok  ] host key:").contains("known"));
}

#[test]
fn check_warns_when_roots_crontab_still_runs_the_stock_backup() {
    let fx = Fixture::new();
    let crontab = fx.root.path().join("root-crontab");
    std::fs::write(&crontab, "0 2 * * * /cvpi/tools/backup.py --limit 5\n").expect("crontab");
    let run = tool_env(
        &fx,
        "check",
        &[],
        &[("CVP_BACKUP_COPY_ROOT_CRONTAB", &crontab)],
    );
    assert_eq!(
        run.code,
        0,
        "a warning is not a failure: {}",
        run.all_output()
    );
    assert!(line(&run, "[WARN] root's crontab:").contains("/cvpi/tools/backup.py"));
}

/// Each broken link: how to break it, the line that must fail, words it must carry, and
/// the exit code a run would meet.
#[test]
fn check_fails_with_the_right_words_on_each_broken_link() {
    type Break = fn(&mut Fixture);
    let cases: Vec<(&str, Break, &str, &[&str], i32)> = vec![
        (
            "unparsable INI",
            |fx| {
                let text = fx
                    .ini_text()
                    .replace(&format!("port = {}", fx.port), "port = many");
                std::fs::write(&fx.ini, text).expect("ini")
            },
            "[FAIL] configuration:",
            &["port"],
            3,
        ),
        (
            "key readable by others",
            |fx| {
                std::fs::set_permissions(&fx.key_file, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod")
            },
            "[FAIL] key file:",
            &["chmod 600"],
            3,
        ),
        (
            "key that does not match the token",
            |fx| {
                python_keygen(&fx.key_file, "other");
            },
            "[FAIL] password:",
            &["keygen"],
            3,
        ),
        (
            "wrong password on the server",
            |fx| {
                fx.token = python_keygen(&fx.key_file, "not-the-password");
                fx.write_ini();
            },
            "[FAIL] authentication:",
            &["authentication failed", TEST_USER],
            4,
        ),
        (
            "backup command missing",
            |fx| {
                let text = fx
                    .ini_text()
                    .replace(&fx.cvpi.display().to_string(), "/nonexistent/cvpi");
                std::fs::write(&fx.ini, text).expect("ini");
            },
            "[FAIL] backup command:",
            &["/nonexistent/cvpi is not found by root's login shell"],
            3,
        ),
        (
            "backup command not executable",
            |fx| {
                let copy = fx.root.path().join("cvpi-noexec");
                std::fs::copy(&fx.cvpi, &copy).expect("copy");
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
                let text = fx
                    .ini_text()
                    .replace(&fx.cvpi.display().to_string(), &copy.display().to_string());
                std::fs::write(&fx.ini, text).expect("ini");
            },
            "[FAIL] backup command:",
            &["not executable by root"],
            3,
        ),
        (
            "state_dir is a file",
            |fx| std::fs::write(&fx.state_dir, "not a folder").expect("file"),
            "[FAIL] state_dir:",
            &["cannot create or open state_dir"],
            3,
        ),
        (
            "server unreachable",
            |fx| {
                fx.port = free_port();
                fx.write_ini();
            },
            "[FAIL] server:",
            &["unreachable"],
            4,
        ),
        (
            "changed host key",
            |fx| {
                let other = Sshd::start();
                let line = other
                    .host_key_line()
                    .replace(&other.port.to_string(), &fx.sshd.port.to_string());
                std::fs::write(&fx.known_hosts, line).expect("known_hosts");
            },
            "[FAIL] host key:",
            &["does not match", "ssh-keygen -R"],
            4,
        ),
        (
            "destination is a file",
            |fx| {
                fx.make_remote_dir();
                std::fs::remove_dir(&fx.dest).expect("rmdir");
                std::fs::write(&fx.dest, "not a folder").expect("file");
            },
            "[FAIL] destination:",
            &[],
            5,
        ),
    ];
    for (label, break_it, prefix, words, code) in cases {
        let mut fx = Fixture::new();
        break_it(&mut fx);
        let run = tool(&fx, "check", &[]);
        assert_eq!(run.code, code, "{label}: {}", run.all_output());
        let failed = line(&run, prefix);
        for word in words {
            assert!(failed.contains(word), "{label}: {failed:?} lacks {word:?}");
        }
        assert!(!run.all_output().contains(TEST_PASSWORD), "{label}");
    }
}

#[test]
fn fetch_round_trips_a_set_byte_identically_and_prints_the_restore_command() {
    let fx = Fixture::new();
    let (data, log) = after_a_good_night(&fx);
    let rebuilt = fx.root.path().join("rebuilt/data/cvpbackup");
    let run = tool(
        &fx,
        "fetch",
        &["latest", "--to", rebuilt.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.all_output());
    let images = "cvp.eosimages.20240101020005.tgz";
    let mut fetched = file_names(&rebuilt);
    fetched.sort();
    let mut expected = vec![data.clone(), images.to_string(), log.clone()];
    expected.sort();
    assert_eq!(fetched, expected, "only final names, no temporary files");
    for name in &expected {
        let original = std::fs::read(fx.dest.join(name)).expect("remote");
        let copy = std::fs::read(rebuilt.join(name)).expect("fetched");
        assert!(original == copy, "{name} differs");
    }
    let command = format!(
        "restore cvp {} {}",
        rebuilt.join(&data).display(),
        rebuilt.join(images).display()
    );
    assert!(run.stdout.contains(&command), "{}", run.stdout);
    assert!(run.stdout.contains("su - root -c"), "{}", run.stdout);
    // Where the time went, before the restore advice (which stays last, to copy).
    let timeline = run.stdout.find("time line: connected ");
    let advice = run.stdout.find("every file matches its sha256");
    assert!(timeline.is_some() && timeline < advice, "{}", run.stdout);

    // By timestamp, into backup_dir: the files already there are verified, not fetched.
    let stamp = &data["cvp.".len()..data.len() - ".tgz".len()];
    let again = tool(&fx, "fetch", &[stamp]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert!(again.stdout.contains("already here"), "{}", again.stdout);

    let missing = tool(&fx, "fetch", &["20200101020010"]);
    assert_eq!(missing.code, 5, "{}", missing.all_output());
    assert!(
        missing.stderr.contains(stamp),
        "lists what there is: {}",
        missing.stderr
    );
    let bad = tool(&fx, "fetch", &["yesterday"]);
    assert_eq!(bad.code, 2, "{}", bad.all_output());
}

#[test]
fn fetch_refuses_a_corrupted_or_unverifiable_remote_file() {
    let fx = Fixture::new();
    let (data, _) = after_a_good_night(&fx);
    // One flipped byte, same size: only the sha256 can tell.
    let remote = fx.dest.join(&data);
    let mut bytes = std::fs::read(&remote).expect("remote");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&remote, &bytes).expect("corrupt");
    let into = fx.root.path().join("rebuilt");
    let run = tool(&fx, "fetch", &["--to", into.to_str().expect("utf-8")]);
    assert_eq!(run.code, 5, "{}", run.all_output());
    assert!(run.stderr.contains("corrupted"), "{}", run.stderr);
    assert!(run.stderr.contains(&data), "{}", run.stderr);
    let left = file_names(&into);
    assert!(
        !left.iter().any(|n| n == &data || n.contains("cvpbc-part")),
        "a corrupted file never gets a name: {left:?}"
    );

    // Without its checksum file, the set's manifest still verifies it...
    std::fs::write(&remote, {
        bytes[middle] ^= 0x55;
        &bytes
    })
    .expect("repair");
    std::fs::remove_file(fx.dest.join(format!("{data}.sha256"))).expect("rm sidecar");
    let run = tool(&fx, "fetch", &["--to", into.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(into.join(&data).exists());
    // ...and without either, a file cannot be verified and is not fetched.
    let stamp = data.trim_start_matches("cvp.").trim_end_matches(".tgz");
    std::fs::remove_file(fx.dest.join(format!("cvp.{stamp}.set.sha256"))).expect("rm manifest");
    let elsewhere = fx.root.path().join("rebuilt-again");
    let run = tool(&fx, "fetch", &["--to", elsewhere.to_str().expect("utf-8")]);
    assert_eq!(run.code, 5, "{}", run.all_output());
    assert!(run.stderr.contains("cannot be verified"), "{}", run.stderr);
    assert!(!elsewhere.join(&data).exists());
}

#[test]
fn status_reflects_the_last_run() {
    let mut fx = Fixture::new();
    let none = tool(&fx, "status", &[]);
    assert_eq!(none.code, 7, "no record yet: {}", none.all_output());

    let (data, _) = after_a_good_night(&fx);
    let ok = tool(&fx, "status", &[]);
    assert_eq!(ok.code, 0, "{}", ok.all_output());
    assert!(ok.stdout.starts_with("OK"), "{}", ok.stdout);
    assert!(ok.stdout.contains("uploaded"), "{}", ok.stdout);
    let good_finish =
        serde_json::from_str::<serde_json::Value>(&tool(&fx, "status", &["--json"]).stdout)
            .expect("JSON")["last_run"]["finished"]
            .as_str()
            .expect("finished")
            .to_string();

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let stale = tool(&fx, "status", &["--max-age", "1s"]);
    assert_eq!(stale.code, 7, "{}", stale.all_output());
    assert!(stale.stdout.contains("--max-age"), "{}", stale.stdout);

    // A night the server was unreachable (no retries: the test need not wait them out).
    fx.port = free_port();
    fx.server_extra = "retries = 0".into();
    fx.write_ini();
    let failed_run = fx.run(&["--no-backup"]);
    assert_eq!(failed_run.code, 4, "{}", failed_run.all_output());
    let failed = tool(&fx, "status", &[]);
    assert_eq!(failed.code, 4, "{}", failed.all_output());
    assert!(failed.stdout.contains("PROBLEM"), "{}", failed.stdout);
    assert!(failed.stdout.contains("unreachable"), "{}", failed.stdout);
    // What is still on the server: the good night's set, as of the good night.
    assert!(
        failed
            .stdout
            .contains(&format!("last good:   {good_finish}, set {data}\n")),
        "{}",
        failed.stdout
    );
    let json = tool(&fx, "status", &["--json"]);
    assert_eq!(json.code, 4);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(value["healthy"], serde_json::Value::Bool(false));
    assert_eq!(value["last_run"]["exit_code"], 4);
    assert_eq!(value["last_run"]["recovery_point"], data.as_str());
    assert_eq!(value["last_run"]["last_success"], good_finish.as_str());
}

#[test]
fn status_nagios_is_one_plugin_line_with_the_plugin_exit_codes_and_needs_no_ini() {
    let mut fx = Fixture::new();
    // As NRPE would run it: the record's folder given, no INI to read.
    let state_dir = fx.state_dir.to_str().expect("utf-8").to_string();
    let nagios = |fx: &Fixture, extra: &[&str]| {
        let mut args = vec!["--nagios", "--state-dir", state_dir.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(bin());
        cmd.arg("status")
            .args(&args)
            .arg("--ini")
            .arg(fx.root.path().join("no-such.ini"));
        run_captured(&mut cmd, fx.root.path())
    };
    // Before any run the folder is not there, and the line says so.
    let unknown = nagios(&fx, &[]);
    assert_eq!(unknown.code, 3, "{}", unknown.all_output());
    assert!(
        unknown.stdout.starts_with(&format!(
            "CVP_BACKUP_COPY UNKNOWN - --state-dir {state_dir} does not exist"
        )),
        "{}",
        unknown.stdout
    );
    std::fs::create_dir_all(&fx.state_dir).expect("state dir");
    let unknown = nagios(&fx, &[]);
    assert_eq!(unknown.code, 3, "{}", unknown.all_output());
    assert!(
        unknown
            .stdout
            .starts_with("CVP_BACKUP_COPY UNKNOWN - no run recorded"),
        "{}",
        unknown.stdout
    );

    let (data, _) = after_a_good_night(&fx);
    let ok = nagios(&fx, &[]);
    println!(
        "after a good night (exit {}): {}",
        ok.code,
        ok.stdout.trim_end()
    );
    assert_eq!(ok.code, 0, "{}", ok.all_output());
    let stamp = &data["cvp.".len()..data.len() - ".tgz".len()];
    let expected = format!("ago, set {stamp} on 127.0.0.1 | age=");
    assert!(
        ok.stdout
            .starts_with("CVP_BACKUP_COPY OK - last good copy ")
            && ok.stdout.contains(&expected)
            && ok.stdout.contains(";93600;180000;0 bytes="),
        "{}",
        ok.stdout
    );
    assert_eq!(ok.stdout.lines().count(), 1, "one line: {}", ok.stdout);

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let warning = nagios(&fx, &["--warning", "1s"]);
    assert_eq!(warning.code, 1, "{}", warning.all_output());
    assert!(
        warning.stdout.starts_with("CVP_BACKUP_COPY WARNING"),
        "{}",
        warning.stdout
    );
    let critical = nagios(&fx, &["--warning", "1s", "--critical", "1s"]);
    assert_eq!(critical.code, 2, "{}", critical.all_output());
    assert!(
        critical.stdout.starts_with("CVP_BACKUP_COPY CRITICAL"),
        "{}",
        critical.stdout
    );

    // A failed night is CRITICAL, however recent.
    fx.port = free_port();
    fx.server_extra = "retries = 0".into();
    fx.write_ini();
    let failed_run = fx.run(&["--no-backup"]);
    assert_eq!(failed_run.code, 4, "{}", failed_run.all_output());
    let failed = nagios(&fx, &[]);
    println!(
        "after a failed night (exit {}): {}",
        failed.code,
        failed.stdout.trim_end()
    );
    assert_eq!(failed.code, 2, "{}", failed.all_output());
    assert!(
        failed
            .stdout
            .starts_with("CVP_BACKUP_COPY CRITICAL - last run failed")
            && failed.stdout.contains("(exit 4)")
            && failed.stdout.contains("unreachable")
            && failed.stdout.contains("; last good copy "),
        "{}",
        failed.stdout
    );
}

#[test]
fn list_shows_where_each_file_is_and_whether_the_sidecar_matches() {
    let fx = Fixture::new();
    let (data, log) = after_a_good_night(&fx);
    // An older set only on this node, and one only on the server.
    fx.seed("cvp.20230101020010.tgz", 1000);
    std::fs::write(fx.dest.join("cvp.20220101020010.tgz"), b"remote only").expect("remote");
    let run = tool(&fx, "list", &["--json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let sets: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let sets = sets.as_array().expect("array");
    let stamps: Vec<&str> = sets
        .iter()
        .map(|s| s["timestamp"].as_str().expect("timestamp"))
        .collect();
    let newest = &data["cvp.".len()..data.len() - ".tgz".len()];
    assert_eq!(stamps, [newest, "20230101020010", "20220101020010"]);
    let file = |set: usize, name: &str| {
        sets[set]["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in set {set}: {}", run.stdout))
    };
    for name in [
        data.as_str(),
        log.as_str(),
        "cvp.eosimages.20240101020005.tgz",
    ] {
        let entry = file(0, name);
        assert_eq!(entry["location"], "both", "{entry}");
        assert_eq!(entry["sidecar"], "matches", "{entry}");
    }
    assert_eq!(sets[0]["restorable"], true);
    assert_eq!(
        sets[1]["restorable"], false,
        "no images file as old as 2023"
    );
    let local_only = file(1, "cvp.20230101020010.tgz");
    assert_eq!(local_only["location"], "local");
    assert_eq!(local_only["sidecar"], "not-on-remote");
    let remote_only = file(2, "cvp.20220101020010.tgz");
    assert_eq!(remote_only["location"], "remote");
    assert_eq!(remote_only["sidecar"], "missing");

    // A remote file that no longer matches the local one is called out.
    std::fs::write(fx.dest.join(&log), b"tampered").expect("tamper");
    let run = tool(&fx, "list", &[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let row = run
        .stdout
        .lines()
        .find(|l| l.contains(&log))
        .expect("log row");
    assert!(row.contains("DIFFERS"), "{row}");
    assert!(run.stdout.contains("no EOS images file"), "{}", run.stdout);
}

/// Progress on a terminal (a real pty), none when output goes to a pipe (cron, syslog).
#[test]
fn progress_shows_on_a_terminal_only() {
    use rexpect::process::WaitStatus;
    // Through 50 ms of round trip, so the copies last long enough to draw.
    let (fx, _proxy) = Fixture::behind_proxy(
        proxy::Fault::Latency(std::time::Duration::from_millis(25)),
        "",
    );
    fx.seed("cvp.eosimages.20240101020005.tgz", 1000);
    fx.seed("cvp.20240101020010.tgz", 24 * 1024 * 1024);
    let piped = fx.run(&["--no-backup"]);
    assert_eq!(piped.code, 0, "{}", piped.all_output());
    assert!(
        !piped.all_output().contains("ETA"),
        "{}",
        piped.all_output()
    );

    let into = fx.root.path().join("rebuilt");
    let mut cmd = Command::new(bin());
    cmd.args(["fetch", "--ini"])
        .arg(&fx.ini)
        .arg("--to")
        .arg(&into);
    let mut session = rexpect::session::spawn_command(cmd, Some(60_000)).expect("pty");
    let screen = session.exp_eof().unwrap_or_default();
    assert!(screen.contains("restore cvp"), "{screen}");
    // A bar for the 24 MiB data file: name, bytes of its total, rate and ETA.
    let drawn = screen.split(['\r', '\n']).any(|l| {
        l.contains("cvp.20240101020010.tgz") && l.contains("/24.00 MiB") && l.contains("ETA")
    });
    assert!(drawn, "no progress bar for the data file:\n{screen}");
    assert!(matches!(
        session.process().wait(),
        Ok(WaitStatus::Exited(_, 0))
    ));
    let piped = tool(&fx, "fetch", &["--to", into.to_str().expect("utf-8")]);
    assert_eq!(piped.code, 0, "{}", piped.all_output());
    assert!(
        !piped.all_output().contains("ETA"),
        "{}",
        piped.all_output()
    );
}

#[test]
fn check_warns_about_a_backup_stamped_in_the_future() {
    let fx = Fixture::new();
    fx.seed("cvp.20991231020010.tgz", 100);
    let run = tool(&fx, "check", &[]);
    assert_eq!(
        run.code,
        0,
        "a warning does not fail check: {}",
        run.all_output()
    );
    let warning = line(&run, "[WARN] timestamps:");
    assert!(warning.contains("cvp.20991231020010.tgz"), "{warning}");
    assert!(warning.contains("in the future"), "{warning}");
}
