//! Root is never lent to the cvp account. An unprivileged account (the stand-in for cvp,
//! made here) owns its INI, key, state and backup folders, as the RPM lays them out; it
//! plants symlinks at every name the tool writes and edits its INI; then every command runs
//! as root. Afterwards: nothing outside cvp's folders was written or re-owned, no code of
//! cvp's INI ran as root, nothing root made blocks cvp, and the cvp job still runs.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CVP: &str = "cvpbc-cvp";

struct Node {
    fx: Fixture,
    uid: u32,
    gid: u32,
    /// A root-owned file the attacker would love to overwrite or own.
    victim: PathBuf,
    /// Where a backup command records who ran it.
    evidence: PathBuf,
}

fn mode(path: &Path, mode: u32) {
    set_mode(path, mode);
}

impl Node {
    /// The RPM's layout: the INI's folder is root's (0755), the INI, key folder, state,
    /// backups and home are cvp's.
    fn new() -> Node {
        let mut fx = Fixture::new();
        fx.cvpi_flags = "--images".into();
        let (uid, gid) = fx.give_to(CVP);
        let node = fx.root.path().to_path_buf();
        let evidence_dir = node.join("evidence");
        std::fs::create_dir_all(&evidence_dir).expect("evidence");
        mode(&evidence_dir, 0o777);
        let victim = node.join("victim");
        std::fs::write(&victim, "original").expect("victim");
        mode(&victim, 0o644);
        Node {
            evidence: evidence_dir.join("who-ran-it"),
            fx,
            uid,
            gid,
            victim,
        }
    }

    /// cvp edits its own INI (as it may).
    fn cvp_edits_ini(&self, edit: impl Fn(String) -> String) {
        let text = edit(std::fs::read_to_string(&self.fx.ini).expect("ini"));
        std::fs::write(&self.fx.ini, text).expect("ini");
        std::os::unix::fs::chown(&self.fx.ini, Some(self.uid), Some(self.gid)).expect("chown");
    }

    /// cvp plants a symlink to the victim at `path` (in place of a file or a folder).
    fn plant(&self, path: &Path) {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(path).expect("remove the folder");
        }
        let _ = std::fs::remove_file(path);
        std::os::unix::fs::symlink(&self.victim, path).expect("symlink");
        let _ = Command::new("chown")
            .arg("-h")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status();
    }

    /// cvp sets its INI's backup_command.
    fn cvp_sets_backup_command(&self, command: &str) {
        self.fx.set_in_ini("backup_command", command);
    }

    fn as_root(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("--ini").arg(&self.fx.ini);
        run_captured(&mut cmd, self.fx.root.path())
    }

    fn as_cvp(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--ini")
            .arg(&self.fx.ini)
            .uid(self.uid)
            .gid(self.gid)
            .env("HOME", self.fx.root.path().join("home"))
            .env("USER", CVP);
        run_captured(&mut cmd, self.fx.root.path())
    }

    /// The victim is as it was; no file under the node is root's but those root made
    /// itself (the INI's folder, the victim, the fixture's own files).
    fn assert_nothing_lent(&self, what: &str) {
        assert_eq!(
            std::fs::read_to_string(&self.victim).expect("victim"),
            "original",
            "{what}: the victim was written"
        );
        let meta = std::fs::metadata(&self.victim).expect("victim");
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (0, 0o644),
            "{what}: victim re-owned"
        );
        let mut root_owned = Vec::new();
        for dir in [
            self.fx.backup_dir.parent().expect("data").to_path_buf(),
            self.fx.log_dir.clone(),
            self.fx.state_dir.clone(),
            self.fx.key_file.parent().expect("keys").to_path_buf(),
            self.fx.root.path().join("home"),
        ] {
            walk(&dir, &mut |path, meta| {
                if meta.uid() == 0 {
                    root_owned.push(path.to_path_buf());
                }
            });
        }
        assert!(
            root_owned.is_empty(),
            "{what}: root left files in cvp's folders: {root_owned:?}"
        );
        let ini = std::fs::metadata(&self.fx.ini).expect("ini");
        assert_eq!(ini.uid(), self.uid, "{what}: the INI stays cvp's");
        if let Ok(who) = std::fs::read_to_string(&self.evidence) {
            assert!(
                !who.lines().any(|l| l.trim() == "0"),
                "{what}: cvp's backup_command ran as root"
            );
        }
    }
}

fn walk(path: &Path, visit: &mut impl FnMut(&Path, &std::fs::Metadata)) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    visit(path, &meta);
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            walk(&entry.path(), visit);
        }
    }
}

/// A backup command of cvp's choosing that records who ran it, then does the real job.
fn evil_command(node: &Node) -> String {
    let script = node.fx.root.path().join("evidence/evil.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nid -u >> {}\nexec {} \"$@\"\n",
            node.evidence.display(),
            fake_cvpi().display()
        ),
    )
    .expect("script");
    mode(&script, 0o755);
    format!(
        "{} --backup-dir {} --log-dir {} backup cvp",
        script.display(),
        node.fx.backup_dir.display(),
        node.fx.log_dir.display()
    )
}

#[test]
fn every_command_run_as_root_acts_as_the_ini_s_owner() {
    let node = Node::new();
    // A good night as cvp first: host key recorded, a set on both sides.
    let first = node.as_cvp(&[]);
    assert_eq!(first.code, 0, "{}", first.all_output());

    // cvp plants symlinks at every fixed name the tool writes, and edits its INI to make
    // root run its command.
    let state = &node.fx.state_dir;
    for name in [
        "lock",
        "lock.pid",
        "last-run.json",
        ".last-run.json.tmp",
        "history.json",
        "logs",
    ] {
        node.plant(&state.join(name));
    }
    let command = evil_command(&node);
    node.cvp_sets_backup_command(&command);
    node.cvp_edits_ini(|text| text.replace(&format!("backup_user = {CVP}"), "backup_user = root"));

    let run = node.as_root(&[]);
    assert_eq!(
        run.code,
        3,
        "backup_user = root is refused: {}",
        run.all_output()
    );
    assert!(
        run.all_output().contains(&format!("running as {CVP}")),
        "{}",
        run.all_output()
    );
    assert!(!node.evidence.exists(), "the command never ran");
    node.assert_nothing_lent("run with backup_user = root");

    // As cvp's own account it is cvp's command: it runs, as cvp.
    node.cvp_edits_ini(|text| text.replace("backup_user = root", &format!("backup_user = {CVP}")));
    let run = node.as_root(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let who = std::fs::read_to_string(&node.evidence).expect("evidence");
    assert_eq!(who.trim(), node.uid.to_string());
    node.assert_nothing_lent("run as root");

    for args in [
        &["--dry-run"][..],
        &["check"],
        &["list"],
        &["status"],
        &["--no-backup"],
    ] {
        for name in ["lock.pid", "last-run.json", "history.json", "logs"] {
            node.plant(&state.join(name));
        }
        let out = node.as_root(args);
        assert!(
            out.code == 0 || args == ["status"],
            "{args:?}: {}",
            out.all_output()
        );
        node.assert_nothing_lent(&format!("{args:?}"));
    }

    // fetch as root into cvp's folder, where cvp planted the partial and final names.
    let data = node.fx.newest_local("cvp.2").expect("a data file");
    let fetch_to = node.fx.backup_dir.join("restore");
    std::fs::create_dir_all(&fetch_to).expect("dir");
    chown_tree(&fetch_to, node.uid, node.gid);
    node.plant(&fetch_to.join(format!(".{data}.cvpbc-part")));
    node.plant(&fetch_to.join(&data));
    let fetched = node.as_root(&["fetch", "--to", fetch_to.to_str().expect("utf-8")]);
    assert_eq!(fetched.code, 0, "{}", fetched.all_output());
    assert_eq!(
        std::fs::read(fetch_to.join(&data)).expect("fetched"),
        std::fs::read(node.fx.local_path(&data)).expect("local")
    );
    assert!(
        fetched
            .stdout
            .contains(&format!("{}/{data}", fetch_to.display())),
        "the restore command has absolute paths: {}",
        fetched.stdout
    );
    node.assert_nothing_lent("fetch");

    // Nothing root made blocks the cvp job: it still runs, and status reads its record.
    let again = node.as_cvp(&[]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    let status = node.as_cvp(&["status"]);
    assert_eq!(status.code, 0, "{}", status.all_output());
}

#[test]
fn a_planted_known_hosts_symlink_is_refused_not_followed() {
    let node = Node::new();
    node.plant(&node.fx.known_hosts);
    let run = node.as_root(&[]);
    assert_eq!(run.code, 4, "{}", run.all_output());
    assert!(run.all_output().contains("symlink"), "{}", run.all_output());
    node.assert_nothing_lent("known_hosts symlink");
}

/// An INI that root owns is trusted only when nobody else can change it.
#[test]
fn a_root_owned_ini_another_account_can_change_is_refused() {
    let node = Node::new();
    std::os::unix::fs::chown(&node.fx.ini, Some(0), Some(node.gid)).expect("chown");
    mode(&node.fx.ini, 0o660);
    let run = node.as_root(&["--no-backup"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.all_output().contains("writable by group or other"),
        "{}",
        run.all_output()
    );
    // In a folder cvp owns, cvp could swap the file: refused too.
    mode(&node.fx.ini, 0o600);
    let folder = node.fx.root.path().join("cvp-folder");
    std::fs::create_dir_all(&folder).expect("dir");
    std::os::unix::fs::chown(&folder, Some(node.uid), Some(node.gid)).expect("chown");
    let moved = folder.join("backup.ini");
    std::fs::copy(&node.fx.ini, &moved).expect("copy");
    let mut cmd = Command::new(bin());
    cmd.arg("--ini").arg(&moved).arg("--no-backup");
    let run = run_captured(&mut cmd, node.fx.root.path());
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.all_output().contains("belongs to uid"),
        "{}",
        run.all_output()
    );
}

/// A root-owned INI (root runs as root) whose state_dir is cvp's: cvp plants a symlink to a
/// root folder where the runs' logs go. Root's run refuses it and writes nothing there (the
/// log stays in syslog).
#[test]
fn a_root_run_follows_no_symlink_cvp_plants_at_the_log_folder() {
    let node = Node::new();
    std::os::unix::fs::chown(&node.fx.ini, Some(0), Some(0)).expect("chown ini to root");
    let roots = node.fx.root.path().join("roots-folder");
    std::fs::create_dir_all(&roots).expect("root's folder");
    node.fx.seed("cvp.20240101020010.tgz", 1000);
    chown_tree(&node.fx.backup_dir, node.uid, node.gid);
    let logs = node.fx.state_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::os::unix::fs::symlink(&roots, &logs).expect("plant");
    let status = Command::new("chown")
        .arg("-h")
        .arg(format!("{}:{}", node.uid, node.gid))
        .arg(&logs)
        .status()
        .expect("chown -h");
    assert!(status.success());
    let out = node.as_root(&["--no-backup"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert!(
        out.all_output().contains("cannot keep this run's log"),
        "{}",
        out.all_output()
    );
    assert!(file_names(&roots).is_empty(), "{:?}", file_names(&roots));
    assert!(
        std::fs::symlink_metadata(&logs).is_ok_and(|m| m.file_type().is_symlink()),
        "left as cvp planted it"
    );
    std::os::unix::fs::chown(&node.fx.ini, Some(node.uid), Some(node.gid)).expect("chown back");
    node.assert_nothing_lent("a root run with cvp's logs symlink");
}

/// keygen and edit as root: the INI is saved by root (its folder is root's) and keeps its
/// owner; the key is written as the INI's owner, so a keyFile pointing at root's files
/// gets nowhere; and the cvp job still decrypts the password afterwards.
#[test]
fn keygen_and_edit_as_root_write_keys_only_as_the_ini_s_owner() {
    let node = Node::new();
    let before = std::fs::read_to_string(&node.fx.ini).expect("ini");
    // cvp points keyFile at a root-owned file.
    node.cvp_edits_ini(|text| {
        text.replace(
            &node.fx.key_file.display().to_string(),
            &node.victim.display().to_string(),
        )
    });
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--yes", "--password-stdin", "--ini"])
        .arg(&node.fx.ini);
    let out = with_input(cmd, &format!("{TEST_PASSWORD}\n"));
    assert_eq!(out.0, 3, "{}", out.1);
    assert!(out.1.contains("nothing changed"), "{}", out.1);
    node.assert_nothing_lent("keygen with keyFile at a root file");
    let after = std::fs::read_to_string(&node.fx.ini).expect("ini");
    assert_ne!(after, before);
    assert!(
        after.contains(&node.victim.display().to_string()),
        "the INI is as cvp left it"
    );

    // keyFile as a symlink in cvp's key folder: not followed, refused, nothing changed.
    node.cvp_edits_ini(|_| before.clone());
    node.plant(&node.fx.key_file);
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--yes", "--password-stdin", "--ini"])
        .arg(&node.fx.ini);
    let out = with_input(cmd, &format!("{TEST_PASSWORD}\n"));
    node.assert_nothing_lent("keygen over a symlinked key");
    assert_eq!(out.0, 3, "{}", out.1);
    assert!(
        out.1.contains("symlink") && out.1.contains("nothing changed"),
        "{}",
        out.1
    );
    assert_eq!(std::fs::read_to_string(&node.fx.ini).expect("ini"), before);
    std::fs::remove_file(&node.fx.key_file).expect("cvp removes its symlink");

    // A real keygen and an edit as root: the job, as cvp, still works.
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--yes", "--password-stdin", "--ini"])
        .arg(&node.fx.ini);
    let out = with_input(cmd, &format!("{TEST_PASSWORD}\n"));
    assert_eq!(out.0, 0, "{}", out.1);
    let mut cmd = Command::new(bin());
    cmd.args(["edit", "--password-stdin", "--ini"])
        .arg(&node.fx.ini);
    let out = with_input(cmd, &format!("{TEST_PASSWORD}\n"));
    assert_eq!(out.0, 0, "{}", out.1);
    node.assert_nothing_lent("keygen and edit as root");
    let key = std::fs::metadata(&node.fx.key_file).expect("key");
    assert_eq!((key.uid(), key.mode() & 0o777), (node.uid, 0o600));
    let run = node.as_cvp(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
}

/// Standard input, then the exit code and everything printed.
fn with_input(cmd: Command, input: &str) -> (i32, String) {
    let out = with_stdin(cmd, input);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// While secrets are in memory the process is not dumpable (no core file, no ptrace by the
/// same user): the files in /proc/PID belong to root even when the job runs as cvp, and the
/// soft core limit is 0.
#[test]
fn no_core_dumps_while_secrets_are_in_memory() {
    let mut node = Node::new();
    node.fx.cvpi_flags = "--sleep 3".into();
    node.fx.write_ini();
    let text = node
        .fx
        .ini_text()
        .replace("backup_user = root", &format!("backup_user = {CVP}"));
    std::fs::write(&node.fx.ini, text).expect("ini");
    std::os::unix::fs::chown(&node.fx.ini, Some(node.uid), Some(node.gid)).expect("chown");
    let mut child = Command::new(bin())
        .arg("--ini")
        .arg(&node.fx.ini)
        .env(SYSLOG_ENV, node.fx.root.path().join("no-syslog"))
        .uid(node.uid)
        .gid(node.gid)
        .env("HOME", node.fx.root.path().join("home"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let owner = std::fs::metadata(proc_dir.join("status"))
        .expect("proc")
        .uid();
    let limits = std::fs::read_to_string(proc_dir.join("limits")).expect("limits");
    let _ = child.wait();
    assert_eq!(owner, 0, "a dumpable process's /proc files would be cvp's");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    // "Max core file size  SOFT  HARD  bytes": only the soft limit drops (the backup command
    // gets the one the job was started with back: tests/appliance.rs).
    let soft = core.split_whitespace().nth(4);
    assert_eq!(soft, Some("0"), "{core}");
}

/// Root starts the job by hand on a terminal: the backup command (cvp's to choose) gets no
/// controlling terminal to type into, and none of root's environment.
#[test]
fn the_backup_command_gets_no_terminal_and_none_of_root_s_environment() {
    let node = Node::new();
    let script = node.fx.root.path().join("evidence/probe.sh");
    let env_dump = node.fx.root.path().join("evidence/env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif (exec 3</dev/tty) 2>/dev/null; then echo tty; else echo no-tty; fi > {}\n\
             env > {}\nexec {} \"$@\"\n",
            node.evidence.display(),
            env_dump.display(),
            fake_cvpi().display()
        ),
    )
    .expect("script");
    mode(&script, 0o755);
    let command = format!(
        "{} --backup-dir {} --log-dir {} backup cvp",
        script.display(),
        node.fx.backup_dir.display(),
        node.fx.log_dir.display()
    );
    node.cvp_sets_backup_command(&command);
    let mut cmd = Command::new(bin());
    cmd.arg("--ini")
        .arg(&node.fx.ini)
        .env("ROOT_ONLY_TOKEN", "s3cret-of-root")
        .env(SYSLOG_ENV, node.fx.root.path().join("no-syslog"));
    let mut session = rexpect::session::spawn_command(cmd, Some(30_000)).expect("pty");
    let _ = session.exp_eof();
    assert_eq!(
        std::fs::read_to_string(&node.evidence)
            .expect("evidence")
            .trim(),
        "no-tty",
        "the backup command could open root's terminal"
    );
    let env = std::fs::read_to_string(&env_dump).expect("env");
    assert!(!env.contains("s3cret-of-root"), "{env}");
    assert!(env.contains(&format!("USER={CVP}")), "{env}");
    node.assert_nothing_lent("a run on root's terminal");
}

/// `fetch --identity` and `keygen --age-identity` run by root never take a key cvp planted
/// or swapped in, and never write through cvp's folders.
#[test]
fn identities_cvp_planted_or_swapped_are_refused_and_keygen_writes_none_in_cvp_s_folders() {
    let node = Node::new();
    let cvp_dir = node.fx.backup_dir.clone();
    let identity = cvp_dir.join("restore-identity.txt");
    let identity_arg = identity.to_str().expect("utf-8");
    let into = node.fx.root.path().join("restored");
    let into_arg = into.to_str().expect("utf-8");

    // A symlink where root expects its identity: not followed.
    node.plant(&identity);
    let run = node.as_root(&["fetch", "--identity", identity_arg, "--to", into_arg]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.stderr.contains("cannot read identity file"),
        "{}",
        run.stderr
    );

    // A key of cvp's own in its place: not trusted as root's restore key.
    std::fs::remove_file(&identity).expect("rm");
    let out = Command::new(bin())
        .args(["keygen", "--age-identity"])
        .arg(&identity)
        .uid(node.uid)
        .gid(node.gid)
        .output()
        .expect("keygen as cvp");
    assert!(out.status.success(), "{out:?}");
    let run = node.as_root(&["fetch", "--identity", identity_arg, "--to", into_arg]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.stderr
            .contains("must be a plain file owned by you (or root)"),
        "{}",
        run.stderr
    );
    assert!(!into.exists(), "nothing fetched");

    // keygen as root into a folder cvp owns: refused, nothing written there.
    let new = cvp_dir.join("new-identity.txt");
    let run = node.as_root(&["keygen", "--age-identity", new.to_str().expect("utf-8")]);
    assert_eq!(run.code, 2, "{}", run.all_output());
    assert!(run.stderr.contains("other accounts"), "{}", run.stderr);
    assert!(!new.exists());
    node.assert_nothing_lent("identities");
}

/// The metrics file is written as cvp, whoever runs the job: a symlink cvp planted in its
/// place is replaced, not followed, and a `metrics_dir` cvp points at root's folder gets
/// nothing, also from a run its INI refuses.
#[test]
fn metrics_planted_symlink_or_root_folder_get_nothing_from_a_root_run() {
    let node = Node::new();
    let metrics = node.fx.root.path().join("metrics");
    std::fs::create_dir_all(&metrics).expect("metrics dir");
    chown_tree(&metrics, node.uid, node.gid);
    let prom = metrics.join("cvp_backup_copy.prom");
    node.plant(&prom);
    let line = |dir: &Path| format!("\nmetrics_dir = {}\n", dir.display());
    node.cvp_edits_ini(|text| {
        text.replacen(
            "\n[Backup_Settings]\n",
            &format!("\n[Backup_Settings]{}", line(&metrics)),
            1,
        )
    });
    let run = node.as_root(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let meta = std::fs::symlink_metadata(&prom).expect("metrics file");
    assert!(
        meta.file_type().is_file(),
        "the planted symlink is replaced"
    );
    assert_eq!((meta.uid(), meta.mode() & 0o777), (node.uid, 0o644));
    assert!(std::fs::read_to_string(&prom)
        .expect("metrics")
        .contains("cvp_backup_copy_last_exit_code{"));
    node.assert_nothing_lent("metrics symlink");

    // cvp points metrics_dir at a folder only root may write.
    let roots = node.fx.root.path().join("roots-only");
    std::fs::create_dir_all(&roots).expect("root dir");
    mode(&roots, 0o755);
    node.cvp_edits_ini(|text| text.replace(&line(&metrics), &line(&roots)));
    let run = node.as_root(&["--no-backup"]);
    assert_eq!(
        run.code,
        0,
        "a metrics file is never worth a failed night: {}",
        run.all_output()
    );
    assert!(
        run.all_output().contains("cannot write the metrics file"),
        "{}",
        run.all_output()
    );
    // A night its INI refuses (a placeholder) reads metrics_dir leniently, still as cvp.
    node.cvp_edits_ini(|text| text.replacen("\nserver = 127.0.0.1\n", "\nserver = {{host}}\n", 1));
    let refused = node.as_root(&[]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(
        refused
            .all_output()
            .contains("cannot write the metrics file"),
        "{}",
        refused.all_output()
    );
    assert!(
        file_names(&roots).is_empty(),
        "root wrote into its own folder for cvp"
    );
    node.assert_nothing_lent("metrics_dir in root's folder");
}

/// An S3 destination's `ca_file` is read as the INI's owner, never followed through a
/// symlink: cvp cannot make a root run read a file only root may read, or one it points at.
#[test]
fn a_ca_file_cvp_names_is_read_as_cvp_and_never_through_a_symlink() {
    let node = Node::new();
    let secret_pem = node.fx.root.path().join("root-only.pem");
    std::fs::write(&secret_pem, "-----BEGIN CERTIFICATE-----\nroot only\n").expect("pem");
    mode(&secret_pem, 0o600);
    let planted = node.fx.root.path().join("home/planted-ca.pem");
    std::fs::create_dir_all(planted.parent().expect("home")).expect("home");
    node.plant(&planted);
    for (what, ca_file) in [("root-only", &secret_pem), ("symlink", &planted)] {
        let section = node.fx.s3_section(
            "bucket",
            "https://127.0.0.1:1",
            "cvpbc-ca",
            &format!("ca_file = {}", ca_file.display()),
        );
        node.cvp_edits_ini(|text| match text.find("[Destination bucket]") {
            Some(at) => format!("{}{section}", &text[..at]),
            None => format!("{text}\n{section}"),
        });
        let check = node.as_root(&["check"]);
        assert!(
            check.stdout.contains("cannot read ca_file"),
            "{what}: {}",
            check.all_output()
        );
        assert!(
            !check.stdout.contains("holds no PEM certificate"),
            "{what}: it was read"
        );
        node.assert_nothing_lent(&format!("ca_file {what}"));
    }
}

/// `verify` (both kinds) and a decrypting `fetch` run by root where cvp planted symlinks at
/// every name they write (the lock, the record, the metrics, both partials of a decrypting
/// fetch and the final name): none is followed, nothing is lent, the plaintext is whole,
/// and the cvp job still runs.
#[test]
fn verify_and_a_decrypting_fetch_as_root_follow_no_symlink_cvp_plants() {
    let node = Node::new();
    // Root's restore identity, outside cvp's folders; the set is encrypted to it.
    let identity = node.fx.root.path().join("root-identity.txt");
    let out = Command::new(bin())
        .args(["keygen", "--age-identity"])
        .arg(&identity)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{out:?}");
    let recipient_line = String::from_utf8(out.stdout).expect("utf-8");
    node.cvp_edits_ini(|text| {
        text.replace(
            "[Backup_Settings]",
            &format!("{}\n[Backup_Settings]", recipient_line.trim()),
        )
    });
    let night = node.as_cvp(&[]);
    assert_eq!(night.code, 0, "{}", night.all_output());
    let data = node.fx.newest_local("cvp.2").expect("a data file");
    assert!(
        node.fx.dest.join(format!("{data}.age")).exists(),
        "the set is encrypted: {:?}",
        node.fx.remote_names()
    );

    let state = &node.fx.state_dir;
    let identity_arg = identity.to_str().expect("utf-8");
    for args in [
        &["verify"][..],
        &["verify", "--read-data"],
        &["verify", "--read-data", "--identity", identity_arg],
    ] {
        for name in ["lock", "lock.pid", "last-run.json", "history.json", "logs"] {
            node.plant(&state.join(name));
        }
        let out = node.as_root(args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.all_output());
        node.assert_nothing_lent(&format!("{args:?}"));
    }

    // A decrypting fetch into cvp's folder, where cvp planted the ciphertext's partial, the
    // plaintext's partial and the final name.
    let fetch_to = node.fx.backup_dir.join("restore");
    std::fs::create_dir_all(&fetch_to).expect("dir");
    chown_tree(&fetch_to, node.uid, node.gid);
    for name in [
        format!(".{data}.age.cvpbc-part"),
        format!(".{data}.cvpbc-part"),
        data.clone(),
    ] {
        node.plant(&fetch_to.join(name));
    }
    let fetched = node.as_root(&[
        "fetch",
        "--identity",
        identity_arg,
        "--to",
        fetch_to.to_str().expect("utf-8"),
    ]);
    assert_eq!(fetched.code, 0, "{}", fetched.all_output());
    assert!(
        fetched.stdout.contains("every chunk authenticated"),
        "{}",
        fetched.stdout
    );
    assert!(
        std::fs::read(fetch_to.join(&data)).expect("fetched")
            == std::fs::read(node.fx.local_path(&data)).expect("local"),
        "the plaintext is the node's archive"
    );
    node.assert_nothing_lent("fetch --identity");

    let again = node.as_cvp(&[]);
    assert_eq!(again.code, 0, "{}", again.all_output());
}
