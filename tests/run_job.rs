//! The main job end to end, against a real OpenSSH sshd on 127.0.0.1 and a simulated cvpi.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn summary_field(run: &Run, field: &str) -> Option<u64> {
    let text = run.all_output();
    let line = text.lines().find(|l| l.contains("summary:"))?;
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))?;
    value.parse().ok()
}

#[test]
fn a_run_copies_the_set_byte_identically_and_a_second_run_copies_nothing() {
    let fx = Fixture::new();
    let old_images = fx.seed("cvp.eosimages.20240101020005.tgz", 300_000);

    let run = fx.run(&["-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());

    let data = fx
        .newest_local("cvp.2")
        .expect("the backup wrote a data file");
    let log = fx
        .newest_local("backup_cvp.")
        .expect("the backup wrote a log");
    let manifest = data.replace(".tgz", ".set.sha256");
    let expected = set(&[
        &data,
        &format!("{data}.sha256"),
        "cvp.eosimages.20240101020005.tgz",
        "cvp.eosimages.20240101020005.tgz.sha256",
        &log,
        &format!("{log}.sha256"),
        &manifest,
        ".cvp-backup-copy-owner",
    ]);
    assert_eq!(
        fx.remote_names().into_iter().collect::<BTreeSet<_>>(),
        expected
    );
    for name in [&data, &log] {
        let local = std::fs::read(fx.local_path(name)).expect("local");
        let remote = std::fs::read(fx.dest.join(name)).expect("remote");
        assert!(local == remote, "{name} differs");
    }
    assert!(
        std::fs::read(fx.dest.join("cvp.eosimages.20240101020005.tgz")).expect("images")
            == old_images
    );
    fx.assert_remote_checksums_verify();
    assert_eq!(summary_field(&run, "uploaded"), Some(3));
    assert!(run
        .syslog
        .iter()
        .any(|l| l.contains("cvp-backup-copy[") && l.contains("summary:")));

    // The record of the run is in state_dir.
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["files"].as_array().map(Vec::len), Some(3));

    let mtime = |name: &str| {
        std::fs::metadata(fx.dest.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    let before = mtime(&data);
    let again = fx.run(&["--no-backup", "-v"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert_eq!(
        summary_field(&again, "uploaded"),
        Some(0),
        "{}",
        again.all_output()
    );
    assert_eq!(summary_field(&again, "bytes"), Some(0));
    assert_eq!(mtime(&data), before, "the data file was not rewritten");
}

#[test]
fn a_fresh_destination_receives_the_older_images_file_the_data_needs() {
    let fx = Fixture::new();
    fx.seed("cvp.eosimages.20230601020005.tgz", 1000);
    fx.seed("cvp.eosimages.20240101020005.tgz", 2000);
    fx.seed("cvp.20240102020010.tgz", 3000);
    fx.seed("backup_cvp.20240102020003.log", 100);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let remote = fx.remote_names();
    assert!(
        remote.contains(&"cvp.eosimages.20240101020005.tgz".to_string()),
        "{remote:?}"
    );
    assert!(
        !remote.contains(&"cvp.eosimages.20230601020005.tgz".to_string()),
        "{remote:?}"
    );
    assert!(remote.contains(&"cvp.20240102020010.tgz".to_string()));
    assert!(remote.contains(&"backup_cvp.20240102020003.log".to_string()));
    fx.assert_remote_checksums_verify();
}

#[test]
fn limit_leaves_exactly_the_right_local_files() {
    let mut fx = Fixture::new();
    for name in [
        "cvp.eosimages.20231201020005.tgz",
        "backup_cvp.20231201020003.log",
        "cvp.20231201020010.tgz",
        "cvp.eosimages.20240101020005.tgz",
        "backup_cvp.20240101020003.log",
        "cvp.20240101020010.tgz",
        "backup_cvp.20240102020003.log",
        "cvp.20240102020010.tgz",
    ] {
        fx.seed(name, 500);
    }
    fx.backup_extra = String::new();
    fx.write_ini();
    // The INI's limit (5) wins over --limit; set it to 2 to check the rule.
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 2")).expect("ini");
    let run = fx.run(&["--limit", "4"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let data = fx.newest_local("cvp.2").expect("new data");
    let log = fx.newest_local("backup_cvp.").expect("new log");
    let expected = set(&[
        "cvp.eosimages.20240101020005.tgz",
        "cvp.20240102020010.tgz",
        "backup_cvp.20240102020003.log",
        &data,
        &log,
    ]);
    assert_eq!(
        fx.local_names().into_iter().collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(
        summary_field(&run, "pruned_local"),
        Some(5),
        "{}",
        run.all_output()
    );
    // Nothing is pruned on the remote unless remote_limit is set.
    assert!(fx.remote_names().iter().all(|n| !n.contains("20231201")));
}

#[test]
fn remote_limit_prunes_only_cvp_files_and_their_sidecars() {
    let mut fx = Fixture::new();
    fx.make_remote_dir();
    for name in [
        "cvp.20230101020010.tgz",
        "cvp.20230101020010.tgz.sha256",
        "notes.txt",
        "cvp.old.tgz",
    ] {
        std::fs::write(fx.dest.join(name), b"x").expect("remote file");
    }
    fx.seed("cvp.20240101020010.tgz", 100);
    fx.server_extra = "remote_limit = 1".into();
    fx.write_ini();
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let remote = fx.remote_names();
    assert_eq!(
        remote,
        [
            ".cvp-backup-copy-owner",
            "cvp.20240101020010.set.sha256",
            "cvp.20240101020010.tgz",
            "cvp.20240101020010.tgz.sha256",
            "cvp.old.tgz",
            "notes.txt"
        ]
    );
    assert_eq!(summary_field(&run, "pruned_remote"), Some(1));
}

#[test]
fn a_failing_backup_copies_no_new_archive_keeps_everything_and_exits_1() {
    let mut fx = Fixture::new();
    fx.seed("cvp.eosimages.20240101020005.tgz", 700);
    fx.seed("backup_cvp.20240101020003.log", 70);
    fx.seed("cvp.20240101020010.tgz", 7000);
    fx.cvpi_flags = "--fail --images --size 4000".into();
    fx.write_ini();
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 1")).expect("ini");
    let run = fx.run(&[]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("backup command failed"),
        "{}",
        run.stderr
    );
    let failed_log = fx.newest_local("backup_cvp.").expect("failed run's log");
    let remote = fx.remote_names();
    // The previous set is brought up to date and the failure's log is copied...
    for name in [
        "cvp.20240101020010.tgz",
        "cvp.eosimages.20240101020005.tgz",
        &failed_log,
    ] {
        assert!(
            remote.contains(&name.to_string()),
            "{name} missing: {remote:?}"
        );
    }
    // ...but no archive from the failed run, partial or not.
    let new_archives: Vec<&String> = remote
        .iter()
        .filter(|n| n.ends_with(".tgz") && !n.contains("20240101"))
        .collect();
    assert!(new_archives.is_empty(), "{new_archives:?}");
    // No pruning after a failed backup, even with limit 1.
    assert!(fx.local_path("cvp.20240101020010.tgz").exists());
    assert_eq!(fx.local_names().len(), 6, "{:?}", fx.local_names());
}

#[test]
fn a_wrong_password_exits_4_and_writes_nothing() {
    let mut fx = Fixture::new();
    fx.token = python_keygen(&fx.key_file, "not-the-password");
    fx.write_ini();
    fx.seed("cvp.20240101020010.tgz", 100);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 4, "{}", run.all_output());
    assert!(
        run.stderr.contains("authentication failed"),
        "{}",
        run.stderr
    );
    assert!(
        !fx.dest.exists(),
        "nothing may be written on a failed login"
    );
}

#[test]
fn a_key_file_that_does_not_match_the_token_exits_3_naming_the_key_file() {
    let fx = Fixture::new();
    // Replace the key with another valid key: the token no longer decrypts.
    let other_key = fx.root.path().join("other.key");
    python_keygen(&other_key, "x");
    std::fs::copy(&other_key, &fx.key_file).expect("swap key");
    fx.seed("cvp.20240101020010.tgz", 100);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.stderr.contains(&fx.key_file.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cvp-backup-copy keygen"),
        "{}",
        run.stderr
    );
    assert!(!fx.dest.exists());
}

#[test]
fn a_bad_key_still_makes_the_local_backup() {
    let fx = Fixture::new();
    std::fs::write(&fx.key_file, "garbage").expect("break key");
    let run = fx.run(&[]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        fx.newest_local("cvp.2").is_some(),
        "the CVP backup still ran"
    );
}

#[test]
fn a_changed_host_key_exits_4_with_nothing_written() {
    let fx = Fixture::new();
    // Record some other server's key for this host and port.
    let other = Sshd::start();
    let line = other
        .host_key_line()
        .replace(&other.port.to_string(), &fx.sshd.port.to_string());
    std::fs::write(&fx.known_hosts, &line).expect("known_hosts");
    fx.seed("cvp.20240101020010.tgz", 100);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 4, "{}", run.all_output());
    assert!(run.stderr.contains("does not match"), "{}", run.stderr);
    assert!(run.stderr.contains("ssh-keygen -R"), "{}", run.stderr);
    assert!(
        !fx.dest.exists(),
        "nothing may be written to a server we did not verify"
    );
    assert_eq!(
        std::fs::read_to_string(&fx.known_hosts).expect("kh"),
        line,
        "known_hosts untouched"
    );
}

#[test]
fn accept_new_records_the_key_and_strict_refuses_an_unknown_host() {
    let mut fx = Fixture::new();
    fx.seed("cvp.20240101020010.tgz", 100);
    fx.server_extra = "host_key_policy = strict".into();
    fx.write_ini();
    let strict = fx.run(&["--no-backup"]);
    assert_eq!(strict.code, 4, "{}", strict.all_output());
    assert!(strict.stderr.contains("strict"), "{}", strict.stderr);
    assert!(!fx.known_hosts.exists());

    fx.server_extra = String::new();
    fx.write_ini();
    let accept = fx.run(&["--no-backup"]);
    assert_eq!(accept.code, 0, "{}", accept.all_output());
    let recorded = std::fs::read_to_string(&fx.known_hosts).expect("recorded");
    assert_eq!(recorded, fx.sshd.host_key_line());

    // Now known: strict passes, and the key OpenSSH itself would accept is the one recorded.
    fx.server_extra = "host_key_policy = strict".into();
    fx.write_ini();
    assert_eq!(fx.run(&["--no-backup"]).code, 0);
}

#[test]
fn a_second_run_during_the_first_exits_6() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--sleep 4".into();
    fx.write_ini();
    let mut first = fx.command(&[]).spawn().expect("first run");
    let lock_holder = fx.state_dir.join("lock.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && std::fs::read_to_string(&lock_holder)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = fx.run(&["--no-backup"]);
    assert_eq!(second.code, 6, "{}", second.all_output());
    assert!(
        second.stderr.contains(&format!(
            "another cvp-backup-copy run (pid {}) holds the lock",
            first.id()
        )),
        "{}",
        second.stderr
    );
    assert_eq!(first.wait().expect("first run").code(), Some(0));
}

#[test]
fn an_ini_and_key_written_by_python_work_unchanged() {
    let fx = Fixture::new();
    // Written the way iniEditor/newKeyGen did: ConfigParser, comments, `keyFile`, a key file
    // from Fernet.generate_key() and a token from cryptography.
    let script = r##"
import configparser, sys
from cryptography.fernet import Fernet
ini, key_path, port, dest, kh, cvpi, bd, ld, sd, password = sys.argv[1:]
key = Fernet.generate_key()
open(key_path, "wb").write(key)
config = configparser.ConfigParser()
config.optionxform = str  # keep `keyFile` as the scripts' users wrote it
config["Server_Settings"] = {
    "user": "cvpbc-test", "server": "127.0.0.1",
    "password": Fernet(key).encrypt(password.encode()).decode(),
    "keyFile": key_path, "destination": dest, "port": port, "known_hosts": kh,
}
config["Backup_Settings"] = {
    "limit": "3", "backup_command": cvpi + " --backup-dir " + bd + " --log-dir " + ld,
    "backup_user": "root", "backup_dir": bd, "log_dir": ld, "state_dir": sd,
}
with open(ini, "w") as f:
    f.write("# written by the Python scripts\n")
    config.write(f)
"##;
    let py_key = fx.root.path().join("py.key");
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&fx.ini)
        .arg(&py_key)
        .arg(fx.sshd.port.to_string())
        .arg(&fx.dest)
        .arg(&fx.known_hosts)
        .arg(fake_cvpi())
        .args([&fx.backup_dir, &fx.log_dir, &fx.state_dir])
        .arg(TEST_PASSWORD)
        .status()
        .expect("python3");
    assert!(status.success());
    let ini = std::fs::read_to_string(&fx.ini).expect("ini");
    assert!(
        ini.contains("keyFile = ") && ini.contains("password = gAAAAA"),
        "{ini}"
    );
    // Python wrote the key with the umask's mode (0644): anyone on the node could decrypt the
    // password. The run refuses it with the fix; after `chmod 600` the files work unchanged.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&py_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = fx.run(&[]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(
        refused
            .stderr
            .contains(&format!("chmod 600 {}", py_key.display())),
        "{}",
        refused.stderr
    );
    std::fs::set_permissions(&py_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    fx.assert_remote_checksums_verify();
}

#[test]
fn no_password_in_output_syslog_or_any_process_command_line() {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--sleep 2 --size 3000000".into();
    fx.write_ini();
    let mut cmd = fx.command(&["-v"]);
    let scratch = fx.root.path().to_path_buf();
    let runner = std::thread::spawn(move || run_captured(&mut cmd, &scratch));
    // While the run (and its backup child) is going, read every process's command line and
    // environment.
    let mut seen_processes = 0;
    while !runner.is_finished() {
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            for file in ["cmdline", "environ"] {
                let mut contents = Vec::new();
                if let Ok(mut f) = std::fs::File::open(entry.path().join(file)) {
                    let _ = f.read_to_end(&mut contents);
                    seen_processes += 1;
                    let text = String::from_utf8_lossy(&contents);
                    assert!(
                        !text.contains(TEST_PASSWORD),
                        "password in {:?}/{file}",
                        entry.path()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = runner.join().expect("runner");
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(seen_processes > 0);
    assert!(!run.syslog.is_empty(), "syslog was captured");
    assert!(!run.all_output().contains(TEST_PASSWORD), "password leaked");
    assert!(!run.all_output().contains(&fx.token), "token leaked");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let mut fx = Fixture::new();
    fx.seed("cvp.20231201020010.tgz", 100);
    fx.seed("cvp.20240101020010.tgz", 100);
    fx.server_extra = "remote_limit = 3".into();
    fx.write_ini();
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 1")).expect("ini");
    let before = fx.local_names();
    // Read-only: the password never goes to a host nobody has vetted (`check` records it).
    assert_refused_as_an_unknown_host(&fx, &fx.run(&["--dry-run"]));
    std::fs::write(&fx.known_hosts, fx.sshd.host_key_line()).expect("known_hosts");
    let run = fx.run(&["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(run.stdout.contains("would run"), "{}", run.stdout);
    assert!(
        run.stdout.contains("upload  cvp.20240101020010.tgz"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("delete  cvp.20231201020010.tgz"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("a real run claims it for this node"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("a real run creates it"),
        "{}",
        run.stdout
    );
    assert_eq!(fx.local_names(), before, "no backup ran, nothing pruned");
    assert!(!fx.dest.exists());
    assert_eq!(
        std::fs::read_to_string(&fx.known_hosts).expect("known_hosts"),
        fx.sshd.host_key_line(),
        "known_hosts untouched"
    );
    assert!(!fx.state_dir.exists());
}

#[test]
fn configuration_errors_exit_3_with_file_section_and_option() {
    let fx = Fixture::new();
    let zero = fx.run(&["--limit", "0", "--no-backup"]);
    // The INI's limit wins, but 0 on the command line is still refused.
    assert_eq!(zero.code, 3, "{}", zero.all_output());

    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 0")).expect("ini");
    let bad = fx.run(&[]);
    assert_eq!(bad.code, 3);
    assert!(
        bad.stderr.contains(&fx.ini.display().to_string()),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("[Backup_Settings] limit"),
        "{}",
        bad.stderr
    );

    std::fs::write(&fx.ini, fx.ini_text() + "surprise = 1\n").expect("ini");
    fx.seed("cvp.20240101020010.tgz", 10);
    let unknown = fx.run(&["--no-backup"]);
    assert_eq!(unknown.code, 0, "{}", unknown.all_output());
    assert!(
        unknown
            .stderr
            .contains("unknown option [Backup_Settings] surprise"),
        "{}",
        unknown.stderr
    );

    let missing = fx.command(&[]).arg("--bogus-flag").output().expect("run");
    assert_eq!(missing.status.code(), Some(2), "usage errors exit 2");
    let no_ini = std::process::Command::new(bin())
        .args(["--ini", "/nonexistent/backup.ini"])
        .output()
        .expect("run");
    assert_eq!(no_ini.status.code(), Some(3));
}

#[test]
fn the_ini_path_comes_from_the_environment_when_not_given() {
    let fx = Fixture::new();
    fx.seed("cvp.20240101020010.tgz", 10);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--no-backup").env("CVP_BACKUP_COPY_INI", &fx.ini);
    let run = run_captured(&mut cmd, fx.root.path());
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(fx.dest.join("cvp.20240101020010.tgz").exists());
}

#[test]
fn key_authentication_with_identity_file() {
    let mut fx = Fixture::new();
    let identity = fx.root.path().join("id_ed25519");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&identity)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    fx.sshd
        .authorize(&std::fs::read_to_string(identity.with_extension("pub")).expect("pub"));
    fx.server_extra = format!("identity_file = {}", identity.display());
    fx.write_ini();
    // No password at all: key authentication alone.
    let text = fx
        .ini_text()
        .lines()
        .filter(|l| !l.starts_with("password") && !l.starts_with("keyFile"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&fx.ini, text).expect("ini");
    fx.seed("cvp.20240101020010.tgz", 10);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(fx.dest.join("cvp.20240101020010.tgz").exists());
}

#[test]
fn as_root_the_backup_command_runs_as_backup_user() {
    let fx = Fixture::new();
    ensure_user("cvpbc-cvp", "unused-password-1");
    let uid = uid_of("cvpbc-cvp");
    for dir in [&fx.backup_dir, &fx.log_dir] {
        std::os::unix::fs::chown(dir, Some(uid), None).expect("chown");
    }
    std::fs::write(
        &fx.ini,
        fx.ini_text()
            .replace("backup_user = root", "backup_user = cvpbc-cvp"),
    )
    .expect("ini");
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let data = fx.newest_local("cvp.2").expect("data");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(fx.local_path(&data)).expect("meta").uid(),
        uid
    );
    let log = fx.newest_local("backup_cvp.").expect("log");
    let log_text = std::fs::read_to_string(fx.local_path(&log)).expect("log");
    assert!(log_text.contains("as cvpbc-cvp"), "{log_text}");
    assert!(
        run.all_output().contains("backup: cvpi: backup complete"),
        "output relayed to our log"
    );
}

#[test]
fn a_stale_remote_file_with_a_wrong_checksum_is_replaced() {
    let fx = Fixture::new();
    let bytes = fx.seed("cvp.20240101020010.tgz", 5000);
    fx.make_remote_dir();
    // Same size, wrong content, a sidecar that describes the wrong content.
    std::fs::write(fx.dest.join("cvp.20240101020010.tgz"), vec![0u8; 5000]).expect("stale");
    let wrong = format!("{}  cvp.20240101020010.tgz\n", "0".repeat(64));
    std::fs::write(fx.dest.join("cvp.20240101020010.tgz.sha256"), wrong).expect("sidecar");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(std::fs::read(fx.dest.join("cvp.20240101020010.tgz")).expect("remote") == bytes);
    fx.assert_remote_checksums_verify();
    assert!(
        fx.remote_names().iter().all(|n| !n.contains("cvpbc-part")),
        "no partials left"
    );
}

#[test]
fn without_a_syslog_socket_everything_goes_to_stderr_and_the_run_goes_on() {
    let fx = Fixture::new();
    fx.seed("cvp.20240101020010.tgz", 10);
    let out = fx
        .command(&["--no-backup"])
        .env(SYSLOG_ENV, fx.root.path().join("no-such-socket"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("restore set: cvp.20240101020010.tgz"),
        "{stderr}"
    );
    assert!(stderr.contains("summary: files=1 uploaded=1"), "{stderr}");
    // Where the copy's time went, before the summary.
    let timeline = stderr.find("time line: connected ");
    assert!(
        timeline.is_some() && timeline < stderr.find("summary: files="),
        "{stderr}"
    );
    assert!(stderr.contains(" MB in "), "{stderr}");
}

/// With `remote_limit`, pruning also clears what earlier runs left behind: abandoned partial
/// uploads of files outside tonight's set, and checksum files and manifests whose file is
/// gone. A file that is not ours is never touched, nor the partial of tonight's set.
#[test]
fn remote_pruning_clears_abandoned_uploads_and_orphaned_checksums_only() {
    let mut fx = Fixture::new();
    fx.make_remote_dir();
    let leftovers = [
        ".cvp.20230101020010.tgz.cvpbc-part",
        ".cvp.20230101020010.tgz.sha256.cvpbc-part",
        ".cvp.20230101020010.set.sha256.cvpbc-part",
        "cvp.20221201020010.tgz.sha256",
        "cvp.20221201020010.set.sha256",
    ];
    let not_ours = [
        "notes.txt",
        "notes.txt.sha256",
        ".hidden.cvpbc-part",
        "cvp.20221201020010.tgz.bak",
    ];
    for name in leftovers.iter().chain(&not_ours) {
        std::fs::write(fx.dest.join(name), b"x").expect("remote file");
    }
    fx.seed("cvp.20240101020010.tgz", 100);
    fx.server_extra = "remote_limit = 2".into();
    fx.write_ini();
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let remote = fx.remote_names();
    for name in leftovers {
        assert!(
            !remote.contains(&name.to_string()),
            "{name} left: {remote:?}"
        );
    }
    for name in not_ours {
        assert!(
            remote.contains(&name.to_string()),
            "{name} removed: {remote:?}"
        );
    }
    assert!(remote.contains(&"cvp.20240101020010.tgz".to_string()));
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "cvp.20240101020010.set.sha256"])
        .current_dir(&fx.dest)
        .status()
        .expect("sha256sum");
    assert!(check.success());

    // Without remote_limit nothing is deleted remotely, leftovers included.
    fx.server_extra = String::new();
    fx.write_ini();
    std::fs::write(fx.dest.join(leftovers[0]), b"x").expect("remote file");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(fx.dest.join(leftovers[0]).exists());
}

/// Two nodes pointed at one destination: the first claims it; the second refuses (exit 3,
/// naming the owner) and neither overwrites nor prunes anything there.
#[test]
fn a_destination_belongs_to_the_node_that_first_wrote_to_it() {
    let mut first = Fixture::new();
    first.backup_extra = "node_name = cvp-node-a".into();
    first.server_extra = "remote_limit = 1".into();
    first.write_ini();
    first.seed("cvp.20240101020010.tgz", 1000);
    let run = first.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let marker =
        std::fs::read_to_string(first.dest.join(".cvp-backup-copy-owner")).expect("marker");
    assert!(marker.contains("node = cvp-node-a"), "{marker}");
    let remote_contents = || -> Vec<(String, Vec<u8>)> {
        first
            .remote_names()
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(first.dest.join(&n)).expect("read");
                (n, bytes)
            })
            .collect()
    };
    let before = remote_contents();

    // A second node, same destination, same stamps (a cluster backs up at 02:00).
    let second_root = tempfile::tempdir().expect("second node");
    let backup_dir = second_root.path().join("data");
    std::fs::create_dir_all(&backup_dir).expect("dir");
    std::fs::write(
        backup_dir.join("cvp.20240101020010.tgz"),
        b"another node's backup",
    )
    .expect("seed");
    std::fs::write(backup_dir.join("cvp.20240102020010.tgz"), b"a newer one").expect("seed");
    let text = first
        .ini_text()
        .replace("node_name = cvp-node-a", "node_name = cvp-node-b")
        .replace(
            &first.backup_dir.display().to_string(),
            &backup_dir.display().to_string(),
        )
        .replace(
            &first.state_dir.display().to_string(),
            &second_root.path().join("state").display().to_string(),
        );
    let ini = second_root.path().join("backup.ini");
    std::fs::write(&ini, text).expect("ini");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--ini").arg(&ini).arg("--no-backup");
    let refused = run_captured(&mut cmd, second_root.path());
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(
        refused.stderr.contains("belongs to node cvp-node-a"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(".cvp-backup-copy-owner"),
        "{}",
        refused.stderr
    );
    let after = remote_contents();
    assert!(
        after == before,
        "the second node changed the first node's files"
    );
    // The first node goes on as before.
    let again = first.run(&["--no-backup"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
}

/// Nights that end before they start still leave a record (exit 3), readable by a
/// monitoring user who cannot read the INI, through `status --state-dir`.
#[test]
fn a_night_refused_by_its_configuration_is_recorded_and_status_reports_it() {
    let fx = Fixture::new();
    std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 0")).expect("ini");
    let run = fx.run(&[]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["exit_code"], 3);
    assert!(
        record["errors"][0].as_str().unwrap_or("").contains("limit"),
        "{record}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fx.state_dir.join("last-run.json"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    // A monitoring user: may read the state folder, not the INI (0600, root's here).
    let monitor = "cvpbc-monitor";
    ensure_user(monitor, "unused-password-3");
    std::fs::set_permissions(&fx.ini, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for dir in [fx.root.path(), fx.state_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("status")
        .arg("--state-dir")
        .arg(&fx.state_dir)
        .uid(uid_of(monitor))
        .gid(gid_of(monitor));
    let status = run_captured(&mut cmd, fx.root.path());
    assert_eq!(status.code, 3, "{}", status.all_output());
    assert!(status.stdout.contains("exit code 3"), "{}", status.stdout);
    // Without --state-dir, the INI it cannot read still gives its state_dir... or not: then
    // the default folder. Either way it never needs the INI's secrets.
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("status")
        .arg("--ini")
        .arg(&fx.ini)
        .uid(uid_of(monitor))
        .gid(gid_of(monitor));
    let unreadable = run_captured(&mut cmd, fx.root.path());
    assert_ne!(unreadable.code, 0, "{}", unreadable.all_output());
    assert!(!unreadable.all_output().contains(&fx.token));
}

/// `ssh-keyscan -H` records hashed entries, often of one key type only. The handshake asks
/// for that type, so the host is recognised; a really different key is still refused.
#[test]
fn a_hashed_known_hosts_entry_of_one_key_type_is_recognised() {
    let fx = Fixture::on(Sshd::start_with_host_keys(&["ecdsa"]));
    fx.seed("cvp.20240101020010.tgz", 100);
    let port = fx.port.to_string();
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-H", "-t", "ecdsa", "-p", &port, "127.0.0.1"])
        .output()
        .expect("ssh-keyscan");
    let hashed = String::from_utf8_lossy(&scan.stdout).into_owned();
    assert!(
        hashed.starts_with("|1|") && hashed.contains("ecdsa"),
        "{hashed}"
    );
    std::fs::write(&fx.known_hosts, &hashed).expect("known_hosts");
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert_eq!(
        std::fs::read_to_string(&fx.known_hosts).expect("known_hosts"),
        hashed,
        "known, so nothing recorded"
    );

    // Another ECDSA key for the same host, hashed: a real change, refused.
    let other = fx.root.path().join("other_ecdsa");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(keygen.success());
    let public = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let mut fields = public.split_whitespace();
    let line = format!(
        "[127.0.0.1]:{port} {} {}\n",
        fields.next().expect("type"),
        fields.next().expect("key")
    );
    std::fs::write(&fx.known_hosts, line).expect("known_hosts");
    let hash = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&fx.known_hosts)
        .output()
        .expect("ssh-keygen -H");
    assert!(hash.status.success());
    let changed = fx.run(&["--no-backup"]);
    assert_eq!(changed.code, 4, "{}", changed.all_output());
    assert!(
        changed.stderr.contains("does not match"),
        "{}",
        changed.stderr
    );
}

/// `list` only reads: it never sends the password to a host nobody has vetted.
#[test]
fn list_refuses_an_unknown_host_and_points_to_check() {
    let fx = Fixture::new();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("list").arg("--ini").arg(&fx.ini);
    assert_refused_as_an_unknown_host(&fx, &run_captured(&mut cmd, fx.root.path()));
}

/// A read-only command met a host whose key is not recorded: exit 4, pointing to `check`,
/// nothing recorded, and the password never sent.
fn assert_refused_as_an_unknown_host(fx: &Fixture, run: &Run) {
    assert_eq!(run.code, 4, "{}", run.all_output());
    assert!(
        run.stderr.contains("run `cvp-backup-copy check` first"),
        "{}",
        run.stderr
    );
    assert!(!fx.known_hosts.exists());
    assert!(
        !fx.sshd.log().contains("Accepted password"),
        "the password was sent: {}",
        fx.sshd.log()
    );
}
