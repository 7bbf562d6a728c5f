//! A stolen node cannot destroy its copies on an append-only SFTP server: the harness's sshd
//! forces OpenSSH's own sftp-server with the README's deny list on the node's account, the
//! tool writes read-only files and never removes one, an intruder with the node's password
//! (OpenSSH's `sftp`) tries every destructive request, `fetch` restores, and `prune-dir`
//! does the retention on the server. `check` and the metrics say `immutable` from what the
//! server refused, on this server and on an ordinary one.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn append_only_node() -> Fixture {
    let mut fx = Fixture::on(Sshd::start_append_only());
    fx.server_extra = "append_only = yes".into();
    fx.cvpi_flags = "--images --size 3000000".into();
    fx.write_ini();
    fx.make_remote_dir();
    fx
}

fn night(fx: &mut Fixture, stamp: &str) -> Run {
    fx.cvpi_flags = format!("--images --size 3000000 --stamp {stamp}");
    fx.write_ini();
    fx.run(&["-v"])
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every file in the destination with its sha256 and mode.
fn snapshot(dir: &std::path::Path) -> Vec<(String, String, u32)> {
    let mut files: Vec<(String, String, u32)> = file_names(dir)
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            (name, sha256(&path), mode(&path))
        })
        .collect();
    files.sort();
    files
}

fn as_server_account(fx: &Fixture, args: &[&str]) -> std::process::Output {
    // The binary must be reachable by the account: a copy of its own.
    let copy = fx.remote_root.path().join("cvp-backup-copy");
    if !copy.exists() {
        std::fs::copy(bin(), &copy).expect("copy the binary");
        set_mode(&copy, 0o755);
    }
    Command::new("runuser")
        .args(["-u", TEST_USER, "--"])
        .arg(&copy)
        .args(args)
        .output()
        .expect("runuser")
}

#[test]
fn append_only_nights_write_read_only_files_an_intruder_cannot_destroy_and_fetch_restores() {
    let mut fx = append_only_node();
    let check = fx.run(&["check"]);
    assert!(
        check.stdout.contains("[ok  ] immutable: yes ("),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("remove it (") && check.stdout.contains("overwrite it ("));

    let first = night(&mut fx, "20261201020000");
    assert_eq!(first.code, 0, "{}", first.all_output());
    // An attempt interrupted on an earlier night left a read-only partial of tonight's file.
    let planted = fx.dest.join(".cvp.20261202020000.tgz.cvpbc-part");
    std::fs::write(&planted, b"half a file").expect("plant a partial");
    std::os::unix::fs::chown(&planted, Some(uid_of(TEST_USER)), Some(gid_of(TEST_USER)))
        .expect("chown");
    set_mode(&planted, 0o444);
    let second = night(&mut fx, "20261202020000");
    assert_eq!(second.code, 0, "{}", second.all_output());
    let log = second.all_output();
    assert!(
        log.contains("keeps 1 partial upload(s)")
            && log.contains(".cvp.20261202020000.tgz.cvpbc-part"),
        "the partial is left and named: {log}"
    );
    assert!(!log.contains("is not immutable"), "{log}");
    assert_eq!(
        std::fs::read(&planted).expect("partial kept"),
        b"half a file"
    );

    // What the node wrote is read-only from the moment it was made; nothing was removed.
    let names = fx.remote_names();
    for stamp in ["20261201020000", "20261202020000"] {
        for name in [
            format!("cvp.{stamp}.tgz"),
            format!("cvp.{stamp}.tgz.sha256"),
            format!("cvp.{stamp}.set.sha256"),
        ] {
            assert!(names.contains(&name), "{name} missing: {names:?}");
            assert_eq!(mode(&fx.dest.join(&name)), 0o444, "{name}");
        }
    }
    assert_eq!(mode(&fx.dest.join(".cvp-backup-copy-owner")), 0o444);
    let canaries = names
        .iter()
        .filter(|n| n.starts_with(".cvp-backup-copy-canary."))
        .count();
    assert_eq!(
        canaries, 3,
        "check's and two nights' test files stay: {names:?}"
    );
    fx.assert_remote_checksums_verify();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["immutable"], true, "{record}");

    // An intruder with the node's password tries everything destructive.
    let before = snapshot(&fx.dest);
    let dest = fx.dest.display().to_string();
    let junk = fx.root.path().join("junk");
    std::fs::write(&junk, b"ransom note").expect("junk");
    let mut batch = String::new();
    for (name, _, _) in &before {
        let path = format!("{dest}/{name}");
        batch.push_str(&format!(
            "rm {path}\nchmod 666 {path}\nput {} {path}\nrename {dest}/cvp.20261201020000.tgz {path}\n\
             ln -s /etc/passwd {path}.lnk\nln {path} {path}.hard\n",
            junk.display()
        ));
    }
    batch.push_str(&format!(
        "rename {dest}/cvp.20261202020000.tgz {dest}/cvp.20261201020000.tgz\nrmdir {dest}\n"
    ));
    let said = attacker_sftp(fx.sshd.port, &batch);
    assert!(said.contains("Permission denied"), "{said}");
    assert_eq!(
        snapshot(&fx.dest),
        before,
        "the server let the intruder change something: {said}"
    );

    // The node is lost: fetch on a rebuilt one restores the newest set, verified.
    let rebuilt = fx.root.path().join("rebuilt");
    let fetch = fx.run(&["fetch", "latest", "--to", rebuilt.to_str().expect("utf-8")]);
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert_eq!(
        std::fs::read(rebuilt.join("cvp.20261202020000.tgz")).expect("fetched"),
        std::fs::read(fx.local_path("cvp.20261202020000.tgz")).expect("local")
    );

    // Retention on the server, as the account that owns the folder.
    let third = night(&mut fx, "20261203020000");
    assert_eq!(third.code, 0, "{}", third.all_output());
    let untouched = snapshot(&fx.dest);
    let prune = |args: &[&str]| {
        let mut all = vec!["prune-dir", dest.as_str(), "--keep", "1"];
        all.extend_from_slice(args);
        let out = as_server_account(&fx, &all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    // Everything here was written minutes ago: within the default --min-age (7 days)
    // nothing goes, whatever the names say.
    let held = prune(&[]);
    assert!(
        held.contains("newest complete set: cvp.20261203020000.tgz") && held.contains("held: "),
        "{held}"
    );
    assert!(!held.contains("removed "), "{held}");
    assert_eq!(
        snapshot(&fx.dest),
        untouched,
        "nothing younger than --min-age goes"
    );
    // mtime can be set back here, ctime cannot: the age prune-dir goes by is the server's
    // record of the last change, so the rules are shown with --min-age 0.
    let dry = prune(&["--min-age", "0", "--dry-run"]);
    assert!(dry.contains("would remove cvp.20261201020000.tgz"), "{dry}");
    assert_eq!(snapshot(&fx.dest), untouched, "a dry run removes nothing");
    let pruned = prune(&["--min-age", "0"]);
    let names = fx.remote_names();
    for gone in [
        "cvp.20261201020000.tgz",
        "cvp.20261201020000.set.sha256",
        "cvp.20261202020000.tgz.sha256",
        ".cvp.20261202020000.tgz.cvpbc-part",
    ] {
        assert!(!names.contains(&gone.to_string()), "{gone} stays: {pruned}");
    }
    assert!(
        names
            .iter()
            .all(|n| !n.contains("cvpbc-part") && !n.starts_with(".cvp-backup-copy-canary.")),
        "{names:?}"
    );
    assert!(names.contains(&".cvp-backup-copy-owner".to_string()));
    // The newest set is whole and verifies on the server.
    let check = Command::new("sha256sum")
        .args(["-c", "cvp.20261203020000.set.sha256"])
        .current_dir(&fx.dest)
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let after = fx.run(&["--no-backup"]);
    assert_eq!(
        after.code,
        0,
        "a night after prune-dir: {}",
        after.all_output()
    );

    // The server's account plants symlinks with CVP names (to a file, to a folder, as a
    // manifest); prune-dir run by root neither follows nor removes them.
    let passwd = sha256(std::path::Path::new("/etc/passwd"));
    for (target, name) in [
        ("/etc/passwd", "cvp.20200101020000.tgz"),
        ("/etc/shadow", "cvp.20200101020000.set.sha256"),
        ("/etc", "cvp.20200102020000.tgz"),
    ] {
        let planted = Command::new("runuser")
            .args(["-u", TEST_USER, "--", "ln", "-s", target])
            .arg(fx.dest.join(name))
            .status()
            .expect("ln");
        assert!(planted.success());
    }
    let as_root = Command::new(bin())
        .args(["prune-dir", dest.as_str(), "--keep", "1", "--min-age", "0"])
        .output()
        .expect("prune-dir as root");
    let said = String::from_utf8_lossy(&as_root.stdout);
    assert!(as_root.status.success(), "{said}");
    assert!(!said.contains("cvp.202001"), "{said}");
    for name in [
        "cvp.20200101020000.tgz",
        "cvp.20200101020000.set.sha256",
        "cvp.20200102020000.tgz",
    ] {
        assert!(
            std::fs::symlink_metadata(fx.dest.join(name)).is_ok_and(|m| m.file_type().is_symlink()),
            "{name}"
        );
    }
    assert_eq!(sha256(std::path::Path::new("/etc/passwd")), passwd);
    assert!(std::path::Path::new("/etc/shadow").exists());
}

#[test]
fn an_ordinary_server_is_reported_not_immutable_by_check_the_night_and_the_metrics() {
    let mut fx = Fixture::new();
    let metrics = fx.root.path().join("metrics");
    std::fs::create_dir_all(&metrics).expect("metrics dir");
    fx.backup_extra = format!("metrics_dir = {}", metrics.display());
    fx.write_ini();
    let check = fx.run(&["check"]);
    assert!(
        check.stdout.contains("[WARN] immutable: no (")
            && check.stdout.contains("remove it")
            && check.stdout.contains("append_only = yes"),
        "{}",
        check.stdout
    );
    let run = fx.run(&[]);
    assert_eq!(
        run.code,
        0,
        "not immutable is a warning: {}",
        run.all_output()
    );
    assert!(
        run.all_output().contains("is not immutable"),
        "{}",
        run.all_output()
    );
    let prom = std::fs::read_to_string(metrics.join("cvp_backup_copy.prom")).expect("metrics");
    assert!(
        prom.contains("cvp_backup_copy_destination_immutable{destination=\"")
            && prom
                .lines()
                .any(|l| l.starts_with("cvp_backup_copy_destination_immutable{")
                    && l.ends_with(" 0")),
        "{prom}"
    );
    // The test file went with the test: nothing of it is left on an ordinary server.
    assert!(
        fx.remote_names()
            .iter()
            .all(|n| !n.starts_with(".cvp-backup-copy-canary.")),
        "{:?}",
        fx.remote_names()
    );

    // append_only on a server that allows everything: the node's files are read-only, but
    // the account can still chmod and remove them, and the check says so.
    fx.server_extra = "append_only = yes".into();
    fx.write_ini();
    let check = fx.run(&["check"]);
    assert!(
        check.stdout.contains("[WARN] immutable: no ("),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("make it writable (chmod)"),
        "{}",
        check.stdout
    );
}

#[test]
fn append_only_refuses_remote_limit_and_buckets_as_configuration_errors() {
    let mut fx = Fixture::new();
    fx.server_extra = "append_only = yes\nremote_limit = 3".into();
    fx.write_ini();
    let run = fx.run(&[]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(run.stderr.contains("prune-dir"), "{}", run.stderr);
    assert!(
        fx.local_names().is_empty(),
        "no backup is started: {:?}",
        fx.local_names()
    );
    fx.server_extra = "append_only = maybe".into();
    fx.write_ini();
    let run = fx.run(&["check"]);
    assert_ne!(run.code, 0);
    assert!(
        run.all_output().contains("append_only"),
        "{}",
        run.all_output()
    );
}

/// A read-back finds a copy on the append-only server damaged: the node cannot replace it
/// there, so the next night sends nothing for it, fails that destination (exit 5) and says
/// who can mend it; once the server's owner removed the bad copy, the night after copies it
/// again and the read-back passes.
#[test]
fn a_damaged_copy_on_an_append_only_server_is_named_not_uploaded_every_night() {
    let mut fx = append_only_node();
    let first = night(&mut fx, "20261202020000");
    assert_eq!(first.code, 0, "{}", first.all_output());
    let data = "cvp.20261202020000.tgz";
    let on_server = fx.dest.join(data);
    {
        use std::os::unix::fs::FileExt;
        // The server's disk rots a byte (root on the server writes through the 0444 mode).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&on_server)
            .expect("open");
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 1_000_000).expect("read");
        file.write_all_at(&[byte[0] ^ 0xff], 1_000_000)
            .expect("write");
    }
    let read_back = fx.run(&["verify", "--read-data"]);
    assert_eq!(read_back.code, 5, "{}", read_back.all_output());
    let before = file_names(&fx.dest);
    let stuck = fx.run(&["--no-backup", "-v"]);
    assert_eq!(stuck.code, 5, "{}", stuck.all_output());
    assert!(
        stuck
            .all_output()
            .contains("the node never replaces a file there")
            && !stuck.all_output().contains(&format!("{data}: uploading")),
        "{}",
        stuck.all_output()
    );
    assert_eq!(
        file_names(&fx.dest),
        before,
        "nothing sent, no partial left"
    );

    // The server's owner removes the bad copy; the next night copies it again.
    std::fs::remove_file(&on_server).expect("rm");
    std::fs::remove_file(fx.dest.join(format!("{data}.sha256"))).expect("rm sidecar");
    let mended = fx.run(&["--no-backup", "-v"]);
    assert_eq!(mended.code, 0, "{}", mended.all_output());
    let read_back = fx.run(&["verify", "--read-data"]);
    assert_eq!(read_back.code, 0, "{}", read_back.all_output());
}
