//! `keygen` and `edit` driven through a real pty (rexpect), with Python's `cryptography` as
//! the reference for keys and tokens.

mod common;

use common::*;
use rexpect::process::WaitStatus;
use rexpect::session::PtySession;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const NEW_PASSWORD: &str = "Nw9-second-canary-Qz";

/// A CVP node's INI with comments, its key and token made by Python, as newKeyGen.py left them.
struct Node {
    dir: tempfile::TempDir,
    ini: PathBuf,
    key: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("backup.key");
        let token = python_keygen(&key, TEST_PASSWORD);
        let ini = dir.path().join("backup.ini");
        std::fs::write(
            &ini,
            format!(
                "[Server_Settings]\n#Backup Server Settings\nuser = backup\nserver = 10.10.10.10\n\
                 password = {token}\nkeyFile = {}\ndestination = /data/cvpbackups/\n\n\
                 [Backup_Settings]\n; keep a week\nlimit: 7\n",
                key.display()
            ),
        )
        .expect("ini");
        std::fs::set_permissions(&ini, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Node { dir, ini, key }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.ini).expect("ini")
    }

    fn option(&self, name: &str) -> String {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")).map(str::to_string))
            .unwrap_or_else(|| panic!("{name} not in INI"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--ini")
            .arg(&self.ini)
            .env_remove("CVP_BACKUP_COPY_INI");
        cmd
    }

    fn backups_of_key(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("backup.key.bak-"))
            .collect()
    }
}

/// What Python's `cryptography` decrypts `token` to with the key in `key_file`.
fn python_decrypt(key_file: &Path, token: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom cryptography.fernet import Fernet\n\
             print(Fernet(open(sys.argv[1], 'rb').read().strip()).decrypt(sys.argv[2].encode()).decode())",
        ])
        .arg(key_file)
        .arg(token)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "Python cannot decrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_string()
}

/// A terminal session that keeps everything the program printed.
struct Term {
    session: PtySession,
    screen: String,
}

impl Term {
    fn spawn(cmd: Command) -> Term {
        let session = rexpect::session::spawn_command(cmd, Some(15_000)).expect("spawn on a pty");
        Term {
            session,
            screen: String::new(),
        }
    }

    fn expect(&mut self, text: &str) {
        let before = self.session.exp_string(text).unwrap_or_else(|e| {
            panic!("waiting for {text:?}: {e}\nscreen so far:\n{}", self.screen)
        });
        self.screen.push_str(&before);
        self.screen.push_str(text);
    }

    fn answer(&mut self, prompt: &str, reply: &str) {
        self.expect(prompt);
        self.session.send_line(reply).expect("type");
    }

    /// Type at a no-echo prompt the moment it shows, as a paste does: echo must already be
    /// off then (the tool turns it off before writing the prompt, never after).
    fn secret(&mut self, prompt: &str, reply: &str) {
        self.expect(prompt);
        self.session.send_line(reply).expect("type");
    }

    fn finish(mut self) -> (i32, String) {
        let rest = self.session.exp_eof().unwrap_or_default();
        self.screen.push_str(&rest);
        let code = match self.session.process().wait() {
            Ok(WaitStatus::Exited(_, code)) => code,
            other => panic!("unexpected end: {other:?}"),
        };
        (code, self.screen)
    }
}

/// Diff of two INI texts as (old line, new line) pairs; the line count must not change.
fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    let (old, new): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_eq!(
        old.len(),
        new.len(),
        "lines were added or removed:\n{after}"
    );
    old.iter()
        .zip(&new)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn keygen_on_a_terminal_replaces_key_and_token_without_echo() {
    let node = Node::new();
    let before = node.text();
    let old_key = std::fs::read(&node.key).expect("key");
    let mut term = Term::spawn(node.command(&["keygen"]));
    term.answer("Continue? (y/n) ", "y");
    term.secret("New password for backup@10.10.10.10: ", NEW_PASSWORD);
    term.secret("Repeat the new password: ", NEW_PASSWORD);
    let (code, screen) = term.finish();
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("cannot be undone"), "{screen}");
    assert!(!screen.contains(NEW_PASSWORD), "password echoed:\n{screen}");

    let after = node.text();
    let changes = changed_lines(&before, &after);
    assert_eq!(
        changes.len(),
        1,
        "only the password line changes: {changes:?}"
    );
    assert!(
        changes[0].0.starts_with("password = ") && changes[0].1.starts_with("password = gAAAAA")
    );
    assert_eq!(
        python_decrypt(&node.key, &node.option("password")),
        NEW_PASSWORD
    );
    assert_eq!(
        std::fs::metadata(&node.key).expect("key").mode() & 0o777,
        0o600
    );
    let backups = node.backups_of_key();
    assert_eq!(backups.len(), 1, "the old key is kept");
    assert_eq!(std::fs::read(&backups[0]).expect("backup"), old_key);
}

#[test]
fn keygen_from_a_script_needs_yes_and_takes_the_password_on_stdin() {
    let node = Node::new();
    let before = node.text();
    let refused = with_stdin(node.command(&["keygen", "--password-stdin"]), NEW_PASSWORD);
    assert_eq!(refused.status.code(), Some(2), "no terminal and no --yes");
    assert_eq!(node.text(), before, "nothing changed");

    let new_key = node.dir.path().join("keys/new.key");
    std::fs::create_dir_all(new_key.parent().expect("parent")).expect("dir");
    let key_arg = new_key.display().to_string();
    let out = with_stdin(
        node.command(&[
            "keygen",
            "--yes",
            "--password-stdin",
            "--key-file",
            &key_arg,
        ]),
        &format!("{NEW_PASSWORD}\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!output.contains(NEW_PASSWORD));
    assert_eq!(node.option("keyFile"), key_arg);
    assert_eq!(
        python_decrypt(&new_key, &node.option("password")),
        NEW_PASSWORD
    );
    assert!(
        node.backups_of_key().is_empty(),
        "a new path replaces no key"
    );
}

#[test]
fn keygen_key_only_creates_a_missing_key_and_touches_nothing_else() {
    let node = Node::new();
    let before = node.text();
    std::fs::remove_file(&node.key).expect("remove key");
    let first = node
        .command(&["keygen", "--key-only"])
        .output()
        .expect("run");
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key = std::fs::read_to_string(&node.key).expect("key created");
    assert_eq!(key.len(), 44, "a Fernet key as Python writes it");
    assert_eq!(
        std::fs::metadata(&node.key).expect("key").mode() & 0o777,
        0o600
    );
    let second = node
        .command(&["keygen", "--key-only"])
        .output()
        .expect("run");
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&node.key).expect("key"),
        key,
        "an existing key is kept"
    );
    assert_eq!(node.text(), before, "the INI is untouched");
    // And Python accepts the key we made.
    let check = Command::new("python3")
        .args(["-c", "import sys\nfrom cryptography.fernet import Fernet\nFernet(open(sys.argv[1],'rb').read())"])
        .arg(&node.key)
        .status()
        .expect("python3");
    assert!(check.success());
}

/// Walk the interactive edit: Enter for every option except the ones in `answers`.
fn edit_session(node: &Node, script: impl FnOnce(&mut Term)) -> (i32, String) {
    let mut term = Term::spawn(node.command(&["edit"]));
    term.answer("Would you like to edit these settings? (y/n) ", "y");
    script(&mut term);
    term.finish()
}

fn keep_values(term: &mut Term, options: &[&str]) {
    for option in options {
        term.answer(&format!("  {option} ["), "");
    }
}

const AFTER_KEYFILE: &[&str] = &[
    "destination",
    "port",
    "identity_file",
    "known_hosts",
    "host_key_policy",
    "remote_limit",
    "retries",
    "retry_wait",
    "timeout",
    "streams",
    "ciphers",
    "sync_timeout",
    "encrypt_to",
    "limit",
    "backup_command",
    "backup_user",
    "backup_dir",
    "log_dir",
    "state_dir",
    "syslog_facility",
    "backup_timeout",
    "node_name",
    "metrics_dir",
    "ping_url",
    "min_free_space",
];

#[test]
fn edit_changes_the_password_only_after_the_current_one_is_typed() {
    let node = Node::new();
    let before = node.text();
    let (code, screen) = edit_session(&node, |term| {
        keep_values(term, &["user", "server"]);
        term.answer("change the password? (y/n) ", "y");
        term.secret("Current password: ", TEST_PASSWORD);
        term.secret("New password for backup@10.10.10.10: ", NEW_PASSWORD);
        term.secret("Repeat the new password: ", NEW_PASSWORD);
        term.answer("update the key or key file? (y/n) ", "n");
        keep_values(term, AFTER_KEYFILE);
        term.answer("Save to ", "y");
    });
    assert_eq!(code, 0, "{screen}");
    for secret in [TEST_PASSWORD, NEW_PASSWORD] {
        assert!(
            !screen.contains(secret),
            "a password appeared on the terminal:\n{screen}"
        );
    }
    assert!(
        screen.contains("password : ******** (set)"),
        "masked:\n{screen}"
    );
    assert!(
        !screen.contains("gAAAAA"),
        "the token is never shown:\n{screen}"
    );
    let changes = changed_lines(&before, &node.text());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        python_decrypt(&node.key, &node.option("password")),
        NEW_PASSWORD
    );
}

#[test]
fn three_wrong_current_passwords_change_nothing() {
    let node = Node::new();
    let before = node.text();
    let (code, screen) = edit_session(&node, |term| {
        keep_values(term, &["user", "server"]);
        term.answer("change the password? (y/n) ", "y");
        for _ in 0..3 {
            term.secret("Current password: ", "wrong-guess");
        }
    });
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("nothing changed"), "{screen}");
    assert_eq!(node.text(), before);
}

#[test]
fn edit_update_key_keeps_the_old_key_and_re_encrypts_the_password() {
    let node = Node::new();
    let before = node.text();
    let old_key = std::fs::read(&node.key).expect("key");
    let (code, screen) = edit_session(&node, |term| {
        keep_values(term, &["user"]);
        term.answer("  server [", "backup2.example.net");
        term.answer("change the password? (y/n) ", "n");
        term.answer("update the key or key file? (y/n) ", "y");
        term.answer(
            "(A)ssign an existing key file or (U)pdate the key? (a/u) ",
            "u",
        );
        term.answer("  destination [", "");
        term.answer("  port [", "70000");
        term.answer("not changed:", "2222");
        keep_values(term, &AFTER_KEYFILE[2..]);
        term.answer("Save to ", "y");
    });
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("is not a whole number from 1 to 65535"),
        "{screen}"
    );
    let after = node.text();
    let changes = changed_lines(&before, &after.replace("port = 2222\n", ""));
    let changed: Vec<&str> = changes
        .iter()
        .map(|(old, _)| old.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(changed, ["server", "password"], "{after}");
    assert!(
        after.contains("destination = /data/cvpbackups/\nport = 2222\n"),
        "{after}"
    );
    assert!(after.contains("#Backup Server Settings") && after.contains("; keep a week\nlimit: 7"));
    assert_ne!(std::fs::read(&node.key).expect("key"), old_key, "a new key");
    assert_eq!(
        python_decrypt(&node.key, &node.option("password")),
        TEST_PASSWORD
    );
    let backups = node.backups_of_key();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read(&backups[0]).expect("backup"), old_key);
}

#[test]
fn edit_assign_re_encrypts_with_an_existing_python_key() {
    let node = Node::new();
    let other = node.dir.path().join("other.key");
    python_keygen(&other, "unused");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, screen) = edit_session(&node, |term| {
        keep_values(term, &["user", "server"]);
        term.answer("change the password? (y/n) ", "n");
        term.answer("update the key or key file? (y/n) ", "y");
        term.answer(
            "(A)ssign an existing key file or (U)pdate the key? (a/u) ",
            "a",
        );
        term.answer("Full path of the key file: ", &other.display().to_string());
        keep_values(term, AFTER_KEYFILE);
        term.answer("Save to ", "y");
    });
    assert_eq!(code, 0, "{screen}");
    assert_eq!(node.option("keyFile"), other.display().to_string());
    assert_eq!(
        python_decrypt(&other, &node.option("password")),
        TEST_PASSWORD
    );
    assert!(node.backups_of_key().is_empty(), "assigning writes no key");
}

#[test]
fn scripted_edit_sets_values_and_refuses_invalid_ones_whole() {
    let node = Node::new();
    let before = node.text();
    for bad in [
        vec!["--set", "Backup_Settings.limit=0"],
        vec!["--set", "Server_Settings.port=99999"],
        vec!["--set", "Server_Settings.keyFile=/nonexistent/key"],
        vec!["--set", "Server_Settings.host_key_policy=trust-me"],
        vec![
            "--set",
            "Server_Settings.user=ok",
            "--set",
            "Nowhere.user=x",
        ],
        vec!["--set", "Server_Settings.password=plain"],
        vec!["--set", "limit=3"],
        vec!["--set", "Backup_Settings.remote_limit=2"],
    ] {
        let mut args = vec!["edit"];
        args.extend(&bad);
        let out = node.command(&args).output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(node.text(), before, "{bad:?} changed the file");
    }
    let out = node
        .command(&[
            "edit",
            "--set",
            "server_settings.SERVER=backup.example.net",
            "--set",
            "Backup_Settings.limit=3",
            "--set",
            "Server_Settings.remote_limit=2",
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = node.text();
    assert_eq!(
        after,
        before
            .replace("server = 10.10.10.10", "server = backup.example.net")
            .replace("limit: 7\n", "limit: 3\n")
            .replace(
                "/data/cvpbackups/\n",
                "/data/cvpbackups/\nremote_limit = 2\n"
            )
    );
}

#[test]
fn scripted_password_change_keeps_mode_and_owner() {
    let node = Node::new();
    ensure_user(TEST_USER, TEST_PASSWORD);
    let uid = uid_of(TEST_USER);
    // The job account's INI and key, in a folder of root's (as the RPM lays them out): root
    // saves the INI, and reads the key as the INI's owner.
    std::os::unix::fs::chown(&node.ini, Some(uid), None).expect("chown");
    std::os::unix::fs::chown(&node.key, Some(uid), None).expect("chown");
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&node.ini, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = with_stdin(
        node.command(&["edit", "--password-stdin"]),
        &format!("{NEW_PASSWORD}\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "a loose INI is warned about"
    );
    assert_eq!(
        python_decrypt(&node.key, &node.option("password")),
        NEW_PASSWORD
    );
    let meta = std::fs::metadata(&node.ini).expect("meta");
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o640, uid),
        "mode and owner kept"
    );
    let leftovers: Vec<_> = std::fs::read_dir(node.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");
}

/// The account the job runs as cannot save the INI in root's folder: keygen and edit fail
/// before anything is written, and key and INI stay a matching pair.
#[test]
fn keygen_and_edit_that_cannot_save_change_nothing() {
    let node = Node::new();
    ensure_user(TEST_USER, TEST_PASSWORD);
    let (uid, gid) = (uid_of(TEST_USER), gid_of(TEST_USER));
    // The RPM's layout: the INI's folder is root's; INI and key folder are the job's.
    let keys = node.dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    let key = keys.join("backup.key");
    std::fs::rename(&node.key, &key).expect("move key");
    let text = node
        .text()
        .replace(&node.key.display().to_string(), &key.display().to_string());
    std::fs::write(&node.ini, &text).expect("ini");
    for path in [&node.ini, &keys, &key] {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let old_key = std::fs::read(&key).expect("key");
    use std::os::unix::process::CommandExt;
    let as_job = |args: &[&str]| {
        let mut cmd = node.command(args);
        cmd.uid(uid).gid(gid);
        with_stdin(cmd, &format!("{NEW_PASSWORD}\n"))
    };
    for args in [
        &["keygen", "--yes", "--password-stdin"][..],
        &["edit", "--password-stdin"],
        &["edit", "--set", "Backup_Settings.limit=3"],
    ] {
        let out = as_job(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing changed"), "{args:?}: {stderr}");
        assert!(stderr.contains("run this as root"), "{args:?}: {stderr}");
        assert_eq!(node.text(), text, "{args:?}: the INI changed");
        assert_eq!(
            std::fs::read(&key).expect("key"),
            old_key,
            "{args:?}: the key changed"
        );
        assert_eq!(
            python_decrypt(&key, &node.option("password")),
            TEST_PASSWORD
        );
        let litter: Vec<String> = file_names(&keys)
            .into_iter()
            .chain(file_names(node.dir.path()))
            .filter(|n| n.ends_with(".tmp") || n.contains(".bak-"))
            .collect();
        assert!(litter.is_empty(), "{args:?}: {litter:?}");
    }

    // A key folder the key cannot be written to: the INI is not saved either.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let out = with_stdin(
        node.command(&["keygen", "--yes", "--password-stdin"]),
        &format!("{NEW_PASSWORD}\n"),
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert_eq!(node.text(), text);
    assert_eq!(std::fs::read(&key).expect("key"), old_key);

    // As root, both are written (the key as the INI's owner), and they match.
    let out = with_stdin(
        node.command(&["keygen", "--yes", "--password-stdin"]),
        &format!("{NEW_PASSWORD}\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(python_decrypt(&key, &node.option("password")), NEW_PASSWORD);
    let meta = std::fs::metadata(&key).expect("key");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o600));
    assert_eq!(std::fs::metadata(&node.ini).expect("ini").uid(), uid);
}

#[test]
fn a_relative_key_file_is_stored_as_an_absolute_path() {
    let node = Node::new();
    let mut cmd = node.command(&[
        "keygen",
        "--yes",
        "--password-stdin",
        "--key-file",
        "sub/rel.key",
    ]);
    std::fs::create_dir_all(node.dir.path().join("sub")).expect("sub");
    cmd.current_dir(node.dir.path());
    let out = with_stdin(cmd, &format!("{NEW_PASSWORD}\n"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = node.option("keyFile");
    assert_eq!(PathBuf::from(&stored), node.dir.path().join("sub/rel.key"));
    assert_eq!(
        python_decrypt(Path::new(&stored), &node.option("password")),
        NEW_PASSWORD
    );
}

/// An option given twice: `edit` refuses the file (exit 3, both lines named) instead of
/// changing one of the two while `run` reads the other.
#[test]
fn an_option_given_twice_stops_edit_and_keygen() {
    let node = Node::new();
    let text = node.text().replace(
        "destination = /data/cvpbackups/\n",
        "destination = /data/cvpbackups/\npassword = gAAAAA-a-second-one\n",
    );
    std::fs::write(&node.ini, &text).expect("ini");
    for args in [
        &["edit", "--password-stdin"][..],
        &["keygen", "--yes", "--password-stdin"],
    ] {
        let out = with_stdin(node.command(args), &format!("{NEW_PASSWORD}\n"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("[Server_Settings] password is set twice, on line 5 and on line 8"),
            "{args:?}: {stderr}"
        );
        assert_eq!(node.text(), text);
    }
}

#[test]
fn declining_to_save_an_edit_exits_2_and_changes_nothing() {
    let node = Node::new();
    let before = node.text();
    let (code, screen) = edit_session(&node, |term| {
        keep_values(term, &["user"]);
        term.answer("  server [", "10.10.10.99");
        term.answer("change the password? (y/n) ", "n");
        term.answer("update the key or key file? (y/n) ", "n");
        keep_values(term, AFTER_KEYFILE);
        term.answer("Save to ", "n");
    });
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("not saved"), "{screen}");
    assert_eq!(node.text(), before);
    // Only looking is not cancelling.
    let mut term = Term::spawn(node.command(&["edit"]));
    term.answer("Would you like to edit these settings? (y/n) ", "n");
    let (code, screen) = term.finish();
    assert_eq!(code, 0, "{screen}");
}

/// No INI at the path given (a node without the RPM): `edit` offers to start one from the
/// default settings, asks for each value, and writes it only on "Save". The new file is the
/// packaged INI with the answers in place of its placeholders, 0600, and (made by root) the
/// job account's, cvp's, as the RPM lays it out: the cron job runs as cvp and must read it.
#[test]
fn edit_on_a_missing_ini_offers_to_create_it_from_the_default_settings() {
    ensure_user("cvp", "unused-password-of-cvp");
    let dir = tempfile::tempdir().expect("tempdir");
    let ini = dir.path().join("new.ini");
    let mut cmd = Command::new(bin());
    cmd.args(["edit", "--ini"])
        .arg(&ini)
        .env_remove("CVP_BACKUP_COPY_INI");
    let mut term = Term::spawn(cmd);
    term.answer("does not exist. Create it from the default settings", "y");
    term.answer("Would you like to edit these settings? (y/n) ", "y");
    term.answer("  user [", "backup");
    term.answer("  server [", "backup.example.net");
    term.answer("  password [", "n");
    term.answer("  keyFile [", "n");
    term.answer("  destination [", "/srv/cvp/node1");
    keep_values(&mut term, &AFTER_KEYFILE[1..]);
    term.answer("Save to ", "y");
    let (code, screen) = term.finish();
    assert_eq!(code, 0, "{screen}");
    let text = std::fs::read_to_string(&ini).expect("created");
    assert!(text.contains("\nuser = backup\n"), "{text}");
    assert!(text.contains("\nserver = backup.example.net\n"), "{text}");
    assert!(text.contains("\ndestination = /srv/cvp/node1\n"), "{text}");
    assert!(
        text.starts_with("# cvp-backup-copy configuration"),
        "{text}"
    );
    assert!(
        text.contains("#min_free_space = auto"),
        "every option explained: {text}"
    );
    let meta = std::fs::metadata(&ini).expect("ini");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (uid_of("cvp"), gid_of("cvp")));
    assert!(screen.contains("(new, owned by cvp)"), "{screen}");
    // What was not answered keeps its placeholder: a run says "not configured" until set.
    assert!(text.contains("password = {{"), "{text}");
    assert!(screen.contains("saved, but not complete yet"), "{screen}");

    // From a script: not created, and the message says how.
    let missing = dir.path().join("other.ini");
    let out = with_stdin(
        {
            let mut cmd = Command::new(bin());
            cmd.args(["edit", "--set", "Server_Settings.user=x", "--ini"])
                .arg(&missing)
                .env_remove("CVP_BACKUP_COPY_INI");
            cmd
        },
        "",
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("on a terminal to create it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists());
}
