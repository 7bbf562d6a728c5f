//! What a new operator's first week found, one test each: a dry run that wrote a record, a
//! closed pipe that panicked, INIs written by hand (a BOM, indented keys), the folder a failed
//! fetch left, the lock message, the status of a refused night and its copy time, `--ini`
//! before the subcommand, and messages that did not say what to do. Against the real sshd.

mod common;

use common::proxy::Fault;
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn record_text(fx: &Fixture) -> Option<String> {
    std::fs::read_to_string(fx.state_dir.join("last-run.json")).ok()
}

/// A good night: the fake cvpi wrote a set and the job copied it.
fn after_a_good_night(fx: &Fixture) -> String {
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    fx.newest_local("cvp.2").expect("data")
}

#[test]
fn a_dry_run_never_writes_a_record_even_when_refused() {
    let fx = Fixture::new();
    // Refused before any run ever happened: no record, no state folder made.
    let refused = fx.run(&["--dry-run", "--limit", "0"]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(record_text(&fx).is_none(), "a dry run recorded itself");

    after_a_good_night(&fx);
    let good = record_text(&fx).expect("record");
    for args in [
        &["--dry-run", "--limit", "0"][..],
        &["run", "--dry-run", "--limit", "0"],
    ] {
        let refused = fx.run(args);
        assert_eq!(refused.code, 3, "{}", refused.all_output());
        assert_eq!(
            record_text(&fx).as_ref(),
            Some(&good),
            "{args:?} changed the record"
        );
    }
    // An INI a dry run cannot load: refused, and still no record.
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 0")).expect("ini");
    let refused = fx.run(&["--dry-run"]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert_eq!(record_text(&fx).as_ref(), Some(&good));
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(
        nagios.code, 0,
        "the good night still counts: {}",
        nagios.stdout
    );
}

/// Output to a pipe whose reader is already gone (`check | head -1` once head has its line).
fn with_closed_stdout(mut cmd: Command) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let fx = Fixture::new();
    after_a_good_night(&fx);
    for args in [
        &["check"][..],
        &["list", "--json"],
        &["list"],
        &["status"],
        &["status", "--json"],
        &["--dry-run"],
    ] {
        let out = with_closed_stdout(fx.command(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(134), "{args:?} aborted: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} ends as `ls | head` does: {:?} {stderr}",
            out.status
        );
    }
    // fetch finishes its work whatever happens to its output.
    let to = fx.root.path().join("fetched");
    let out = with_closed_stdout(fx.command(&["fetch", "--to", to.to_str().expect("utf-8")]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        file_names(&to).iter().any(|n| n.starts_with("cvp.2")),
        "{stderr}"
    );
}

#[test]
fn an_ini_with_a_byte_order_mark_and_crlf_reads_and_edits_as_written() {
    let fx = Fixture::new();
    let text = format!("\u{feff}{}", fx.ini_text().replace('\n', "\r\n"));
    std::fs::write(&fx.ini, &text).expect("ini");
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.all_output());
    assert!(
        check.stdout.contains("[ok  ] configuration:"),
        "{}",
        check.stdout
    );
    let edit = fx.run(&["edit", "--set", "Backup_Settings.backup_timeout=7200"]);
    assert_eq!(edit.code, 0, "{}", edit.all_output());
    let after = std::fs::read_to_string(&fx.ini).expect("ini");
    assert!(
        after.starts_with("\u{feff}[Server_Settings]\r\n"),
        "{after:?}"
    );
    assert_eq!(after.matches("[Server_Settings]").count(), 1, "{after}");
    assert_eq!(after.matches("[Backup_Settings]").count(), 1, "{after}");
    assert!(after.contains("backup_timeout = 7200\r\n"), "{after:?}");
    assert_eq!(
        after.replace("backup_timeout = 7200\r\n", ""),
        text,
        "only the new line changed"
    );
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
}

#[test]
fn an_indented_key_is_the_key_edit_replaces_and_check_counts() {
    let fx = Fixture::new();
    let text = fx
        .ini_text()
        .replace(&format!("user = {TEST_USER}"), "  user = someone-else")
        .replace("server = 127.0.0.1", "\tserver = 127.0.0.1");
    std::fs::write(&fx.ini, &text).expect("ini");
    let edit = fx.run(&[
        "edit",
        "--set",
        &format!("Server_Settings.user={TEST_USER}"),
    ]);
    assert_eq!(edit.code, 0, "{}", edit.all_output());
    let after = std::fs::read_to_string(&fx.ini).expect("ini");
    assert!(
        after.contains(&format!("\n  user = {TEST_USER}\n")),
        "{after}"
    );
    assert_eq!(
        after.matches("user = ").count(),
        2,
        "user and backup_user: {after}"
    );
    assert!(after.contains("\n\tserver = 127.0.0.1\n"), "{after}");
    let run = fx.run(&[]);
    assert_eq!(
        run.code,
        0,
        "the run reads the indented keys: {}",
        run.all_output()
    );

    // Twice, once indented: one of them would silently win, so it is refused.
    std::fs::write(
        &fx.ini,
        after.replace(
            &format!("  user = {TEST_USER}\n"),
            &format!("user = {TEST_USER}\n    user = other\n"),
        ),
    )
    .expect("ini");
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 3, "{}", check.all_output());
    assert!(
        check.stdout.contains("[Server_Settings] user is set twice"),
        "{}",
        check.stdout
    );
}

#[test]
fn a_fetch_that_fails_removes_the_folder_it_created_and_names_what_holds_the_lock() {
    let mut fx = Fixture::new();
    after_a_good_night(&fx);
    // The server gone: nothing fetched, and no empty folder left behind.
    let sshd_port = fx.port;
    fx.port = free_port();
    fx.write_ini();
    let to = fx.root.path().join("restore/new");
    let failed = fx.run(&["fetch", "--to", to.to_str().expect("utf-8")]);
    assert_eq!(failed.code, 4, "{}", failed.all_output());
    assert!(
        !fx.root.path().join("restore").exists(),
        "{}",
        failed.all_output()
    );

    // A member missing on the server: refused before anything is downloaded.
    fx.port = sshd_port;
    fx.write_ini();
    let log = fx.newest_local("backup_cvp.").expect("log");
    std::fs::remove_file(fx.dest.join(&log)).expect("remove the log on the server");
    let failed = fx.run(&["fetch", "--to", to.to_str().expect("utf-8")]);
    assert_eq!(failed.code, 5, "{}", failed.all_output());
    assert!(
        !fx.root.path().join("restore").exists(),
        "{}",
        failed.all_output()
    );

    // A folder that was there before stays (and what it held).
    let existing = fx.root.path().join("existing");
    std::fs::create_dir_all(&existing).expect("existing");
    std::fs::write(existing.join("notes.txt"), "mine").expect("notes");
    let failed = fx.run(&["fetch", "--to", existing.to_str().expect("utf-8")]);
    assert_eq!(failed.code, 5, "{}", failed.all_output());
    assert_eq!(file_names(&existing), ["notes.txt"]);

    // A run holds the lock: the message names it.
    fx.cvpi_flags = "--sleep 4".into();
    fx.write_ini();
    let mut run = fx.spawn(&[]);
    let holder = fx.state_dir.join("lock.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&holder).is_ok_and(|t| t.ends_with("run\n")) {
        assert!(Instant::now() < deadline, "the run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let locked = fx.run(&["fetch", "--to", to.to_str().expect("utf-8")]);
    assert_eq!(locked.code, 6, "{}", locked.all_output());
    assert!(
        locked.stderr.contains(&format!(
            "another cvp-backup-copy run (pid {}) holds the lock",
            run.id()
        )) && locked.stderr.contains("a fetch waits until it ends"),
        "{}",
        locked.stderr
    );
    assert!(
        !locked.stderr.contains("a second backup"),
        "{}",
        locked.stderr
    );
    assert!(!fx.root.path().join("restore").exists());
    assert!(run.wait().expect("run").success());
}

#[test]
fn status_after_a_refused_night_says_what_happened_and_where_it_was_to_go() {
    let fx = Fixture::new();
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 0")).expect("ini");
    let refused = fx.run(&[]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    let status = fx.run(&["status"]);
    assert_eq!(status.code, 3, "{}", status.all_output());
    assert!(!status.stdout.contains("--no-backup"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("CVP backup:  not started: the run ended before it"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(&format!(
            "destination: {TEST_USER}@127.0.0.1:{}",
            fx.dest.display()
        )),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("0 would delete every backup on the node"),
        "{}",
        status.stdout
    );
}

/// A connection cut once, a retry after 3 s: the copy time `status` shows is the copy's, the
/// wait is said apart.
#[test]
fn the_copy_time_excludes_the_waits_between_retries() {
    let (fx, proxy) = Fixture::behind_proxy(Fault::Pass, "retries = 2\nretry_wait = 3");
    fx.seed("cvp.20240101020010.tgz", 2_000_000);
    proxy.then(Fault::CutAfter(500_000));
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let record: serde_json::Value =
        serde_json::from_str(&record_text(&fx).expect("record")).expect("json");
    let waited = record["retry_wait_seconds"].as_f64().expect("waits");
    let copy = record["copy_seconds"].as_f64().expect("copy");
    let total = record["seconds"].as_f64().expect("total");
    assert!(waited >= 3.0, "{record}");
    assert!(copy + waited <= total + 0.01, "{record}");
    assert!(
        copy < total - 2.9,
        "the wait is not in the copy time: {record}"
    );
    let status = fx.run(&["status"]);
    assert!(
        status.stdout.contains("s waiting between retries)"),
        "{}",
        status.stdout
    );
}

#[test]
fn ini_goes_before_or_after_the_subcommand() {
    let fx = Fixture::new();
    after_a_good_night(&fx);
    let bin = bin();
    for args in [
        vec!["--ini", fx.ini.to_str().expect("utf-8"), "status"],
        vec!["status", "--ini", fx.ini.to_str().expect("utf-8")],
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args(&args).env_remove("CVP_BACKUP_COPY_INI");
        let out = run_captured(&mut cmd, fx.root.path());
        assert_eq!(out.code, 0, "{args:?}: {}", out.all_output());
        assert!(out.stdout.starts_with("OK\n"), "{args:?}: {}", out.stdout);
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["--ini", fx.ini.to_str().expect("utf-8"), "list"]);
    let list = run_captured(&mut cmd, fx.root.path());
    assert_eq!(list.code, 0, "{}", list.all_output());
    let mut cmd = Command::new(&bin);
    cmd.args(["--dry-run", "check"]);
    let conflict = run_captured(&mut cmd, fx.root.path());
    assert_eq!(conflict.code, 2, "{}", conflict.all_output());
    assert!(
        conflict.stderr.contains("belong to the run"),
        "{}",
        conflict.stderr
    );
    for sub in ["keygen", "edit"] {
        let mut cmd = Command::new(&bin);
        cmd.args([sub, "--help"]);
        let help = run_captured(&mut cmd, fx.root.path());
        assert!(
            help.stdout.contains("relative to the current folder")
                && help.stdout.contains("relative to the INI's folder"),
            "{sub} --help: {}",
            help.stdout
        );
    }
}

#[test]
fn messages_say_what_to_do() {
    let mut fx = Fixture::new();
    let typo = fx.run(&["edit", "--set", "Server_Settings.usr=x"]);
    assert_eq!(typo.code, 3, "{}", typo.all_output());
    assert!(
        typo.stderr.contains("did you mean `user`?"),
        "{}",
        typo.stderr
    );
    let typo = fx.run(&["edit", "--set", "Server_Setings.user=x"]);
    assert!(
        typo.stderr.contains("did you mean `Server_Settings`?"),
        "{}",
        typo.stderr
    );

    let age = fx.run(&["status", "--max-age", "26"]);
    assert_eq!(age.code, 2, "{}", age.all_output());
    assert!(
        age.stderr.contains("`26` has no unit: give 26h"),
        "{}",
        age.stderr
    );
    let age = fx.run(&["status", "--max-age", "26h"]);
    assert_eq!(
        age.code,
        7,
        "no run yet, but the age was taken: {}",
        age.all_output()
    );

    let missing = fx.root.path().join("no-such-state");
    let status = fx.run(&["status", "--state-dir", missing.to_str().expect("utf-8")]);
    assert_eq!(status.code, 7, "{}", status.all_output());
    assert!(
        status
            .stdout
            .contains(&format!("--state-dir {} does not exist", missing.display())),
        "{}",
        status.stdout
    );

    let help = fx.run(&["check", "--help"]);
    assert!(
        help.stdout.contains("1  too little free space"),
        "{}",
        help.stdout
    );
    assert!(
        !help.stdout.contains("another run holds the lock"),
        "{}",
        help.stdout
    );
    assert!(
        !help.stdout.contains("status: no run recorded"),
        "{}",
        help.stdout
    );

    // An identity file others can read: warned, with its fix.
    let identity = fx.root.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&identity)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    set_mode(&identity, 0o644);
    let public = std::fs::read_to_string(identity.with_extension("pub")).expect("pub");
    fx.sshd.authorize(&public);
    fx.server_extra = format!("identity_file = {}", identity.display());
    fx.write_ini();
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 0, "a warning only: {}", check.all_output());
    assert!(
        check.stdout.contains(&format!(
            "[WARN] identity file: identity_file {} is open to group or other (mode 0644)",
            identity.display()
        )) && check
            .stdout
            .contains(&format!("run `chmod 600 {}`", identity.display())),
        "{}",
        check.stdout
    );

    // limit = 0: the FAIL line names the fix.
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 0")).expect("ini");
    let check = fx.run(&["check"]);
    assert_eq!(check.code, 3, "{}", check.all_output());
    assert!(
        check.stdout.contains(
            "limit: 0 would delete every backup on the node: set 1 or more \
             (`cvp-backup-copy edit --set Backup_Settings.limit=5`"
        ),
        "{}",
        check.stdout
    );
}
