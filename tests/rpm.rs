//! The RPM, checked with the real `rpm` tool: what it requires, what it contains, and what
//! installing, upgrading and erasing it does in a scratch root whose scriptlets run under a
//! static busybox shell. `make test` builds the package first (CVP_BACKUP_COPY_RPM_DIR).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CVP_UID: u32 = 4242;

fn rpm_dir() -> PathBuf {
    std::env::var_os("CVP_BACKUP_COPY_RPM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/generate-rpm"))
}

fn package() -> PathBuf {
    let dir = rpm_dir();
    let mut rpms: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "no RPM in {} ({e}): build it with `make rpm` (make test does)",
                dir.display()
            )
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
        .collect();
    assert_eq!(rpms.len(), 1, "exactly one package in {}", dir.display());
    rpms.remove(0)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn query(rpm: &Path, args: &[&str]) -> String {
    let out = run(Command::new("rpm").arg("-qp").args(args).arg(rpm));
    assert!(out.status.success(), "rpm -qp {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_payload_is_gzip_and_every_requirement_is_one_rpm_4_11_has() {
    let rpm = package();
    assert_eq!(query(&rpm, &["--qf", "%{PAYLOADCOMPRESSOR}"]), "gzip");
    // What rpm 4.11 (CentOS 7) provides, with versions (`rpm --showrc` there).
    let rpm_4_11: &[(&str, &str)] = &[
        ("rpmlib(BuiltinLuaScripts)", "4.2.2-1"),
        ("rpmlib(CompressedFileNames)", "3.0.4-1"),
        ("rpmlib(ConcurrentAccess)", "4.1-1"),
        ("rpmlib(ExplicitPackageProvide)", "4.0-1"),
        ("rpmlib(FileCaps)", "4.6.1-1"),
        ("rpmlib(FileDigests)", "4.6.0-1"),
        ("rpmlib(HeaderLoadSortsTags)", "4.0.1-1"),
        ("rpmlib(PartialHardlinkSets)", "4.0.4-1"),
        ("rpmlib(PayloadFilesHavePrefix)", "4.0-1"),
        ("rpmlib(PayloadIsBzip2)", "3.0.5-1"),
        ("rpmlib(PayloadIsLzma)", "4.4.2-1"),
        ("rpmlib(PayloadIsXz)", "5.2-1"),
        ("rpmlib(ScriptletExpansion)", "4.9.0-1"),
        ("rpmlib(ScriptletInterpreterArgs)", "4.0.3-1"),
        ("rpmlib(TildeInVersions)", "4.10.0-1"),
        ("rpmlib(VersionedDependencies)", "3.0.3-1"),
    ];
    let requires = query(&rpm, &["--requires"]);
    let provides = query(&rpm, &["--provides"]);
    assert!(!requires.contains("Zstd"), "{requires}");
    for line in requires.lines() {
        // The shell every EL has, and what the package provides itself (config(...)).
        if line == "/bin/sh" || provides.lines().any(|p| p == line) {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let provided = rpm_4_11.iter().find(|(n, _)| *n == name);
        let Some((_, have)) = provided else {
            panic!("rpm 4.11 lacks the requirement {line:?}");
        };
        if let (Some("<="), Some(need)) = (words.next(), words.next()) {
            let version = |v: &str| -> Vec<u32> {
                v.split(['.', '-'])
                    .map(|p| p.parse().unwrap_or(0))
                    .collect()
            };
            assert!(
                version(need) <= version(have),
                "{line} needs more than rpm 4.11's {have}"
            );
        }
    }
}

#[test]
fn every_file_has_the_right_owner_mode_and_flags() {
    let rpm = package();
    let listing = query(
        &rpm,
        &["--qf", "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}\\n]"],
    );
    let expected = [
        "/etc/cron.d/cvp-backup-copy -rw-r--r-- root root cn",
        "/etc/cvp-backup-copy drwxr-xr-x root root ",
        "/etc/cvp-backup-copy/backup.ini -rw------- cvp cvp cn",
        "/etc/cvp-backup-copy/keys drwx------ cvp cvp ",
        "/usr/bin/cvp-backup-copy -rwxr-xr-x root root ",
        "/usr/share/bash-completion/completions/cvp-backup-copy -rw-r--r-- root root ",
        "/usr/share/doc/cvp-backup-copy drwxr-xr-x root root ",
        "/usr/share/doc/cvp-backup-copy/README.md -rw-r--r-- root root d",
        "/usr/share/man/man1/cvp-backup-copy.1 -rw-r--r-- root root d",
        "/var/lib/cvp-backup-copy drwxr-x--- cvp cvp ",
    ];
    let mut lines: Vec<&str> = listing.lines().map(str::trim_end).collect();
    lines.sort();
    let expected: Vec<&str> = expected.iter().map(|l| l.trim_end()).collect();
    assert_eq!(lines, expected, "{listing}");
}

#[test]
fn the_packaged_binary_is_static_and_carries_man_page_and_completion() {
    let dir = extract();
    let bin = dir.path().join("usr/bin/cvp-backup-copy");
    let program_headers =
        String::from_utf8_lossy(&run(Command::new("readelf").args(["-lW"]).arg(&bin)).stdout)
            .into_owned();
    assert!(
        !program_headers.contains("INTERP"),
        "an interpreter is requested:\n{program_headers}"
    );
    assert!(
        !program_headers.contains("DYNAMIC"),
        "a dynamic section exists:\n{program_headers}"
    );
    let sections =
        String::from_utf8_lossy(&run(Command::new("readelf").args(["-SW"]).arg(&bin)).stdout)
            .into_owned();
    assert!(!sections.contains(".symtab"), "the binary is not stripped");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.status.success() && text(&version).contains("cvp-backup-copy"));
    let man = std::fs::read_to_string(dir.path().join("usr/share/man/man1/cvp-backup-copy.1"))
        .expect("man page");
    assert!(
        man.contains(".TH cvp-backup-copy") && man.contains("another run holds the lock"),
        "{man}"
    );
    let completion = std::fs::read_to_string(
        dir.path()
            .join("usr/share/bash-completion/completions/cvp-backup-copy"),
    )
    .expect("completion");
    assert!(completion.contains("--no-backup") && completion.contains("keygen"));
}

fn extract() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let rpm = package();
    let status = Command::new("sh")
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
        .arg("sh")
        .arg(&rpm)
        .current_dir(dir.path())
        .status()
        .expect("rpm2cpio");
    assert!(status.success());
    dir
}

/// A root with a static shell, the commands the scriptlets use, and (optionally) user cvp.
struct ScratchRoot {
    dir: tempfile::TempDir,
}

impl ScratchRoot {
    fn new(with_cvp: bool) -> ScratchRoot {
        let dir = tempfile::tempdir().expect("scratch root");
        let root = dir.path();
        for sub in [
            "bin",
            "etc",
            "tmp",
            "root",
            "var/lib/rpm",
            "var/spool/cron",
            "home/cvp",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::fs::create_dir_all(root.join("dev")).expect("dev");
        let null = run(Command::new("mknod")
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]));
        assert!(null.status.success(), "mknod /dev/null: {}", text(&null));
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("static busybox");
        for applet in [
            "sh", "mkdir", "chmod", "chown", "id", "cat", "mv", "grep", "rm", "ls", "test", "[",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
        let (mut passwd, mut group) = (
            "root:x:0:0:root:/root:/bin/sh\n".to_string(),
            "root:x:0:\n".to_string(),
        );
        if with_cvp {
            passwd.push_str(&format!(
                "cvp:x:{CVP_UID}:{CVP_UID}:CloudVision:/home/cvp:/bin/sh\n"
            ));
            group.push_str(&format!("cvp:x:{CVP_UID}:\n"));
        }
        std::fs::write(root.join("etc/passwd"), passwd).expect("passwd");
        std::fs::write(root.join("etc/group"), group).expect("group");
        let root_ = ScratchRoot { dir };
        let out = root_.rpm(&["--initdb"]);
        assert!(out.status.success(), "{}", text(&out));
        root_
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn rpm(&self, args: &[&str]) -> Output {
        // /bin/sh is the static shell in the root, not a package: hence --nodeps.
        run(Command::new("rpm")
            .arg("--root")
            .arg(self.dir.path())
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args))
    }

    fn install(&self, rpm: &Path, mode: &str) -> Output {
        let out = self.rpm(&[mode, "--nodeps", &rpm.display().to_string()]);
        assert!(out.status.success(), "rpm {mode}: {}", text(&out));
        out
    }

    fn owner_and_mode(&self, inside: &str) -> (u32, u32) {
        let meta = std::fs::symlink_metadata(self.path(inside))
            .unwrap_or_else(|e| panic!("{inside}: {e}"));
        (meta.uid(), meta.permissions().mode() & 0o7777)
    }
}

/// The same package at a higher version, for the upgrade.
fn newer_package(out_dir: &Path) -> PathBuf {
    // The patched cargo-generate-rpm that `make` builds (tests/prereqs.sh) comes first.
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = Command::new("cargo")
        .env("PATH", path)
        .args([
            "generate-rpm",
            "--payload-compress",
            "gzip",
            "-s",
            "version = \"99.0.0\"",
            "-o",
        ])
        .arg(out_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo generate-rpm");
    assert!(status.success());
    std::fs::read_dir(out_dir)
        .expect("out dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "rpm"))
        .expect("the newer package")
}

#[test]
fn install_upgrade_and_erase_on_a_cvp_node() {
    let rpm = package();
    let root = ScratchRoot::new(true);
    let installed = text(&root.install(&rpm, "-i"));
    assert!(installed.contains("cvp-backup-copy edit"), "{installed}");
    assert!(installed.contains("cvp-backup-copy check"), "{installed}");
    assert!(installed.contains("/cvpi/tools/backup.py"), "{installed}");

    assert_eq!(root.owner_and_mode("/usr/bin/cvp-backup-copy"), (0, 0o755));
    assert_eq!(
        root.owner_and_mode("/etc/cron.d/cvp-backup-copy"),
        (0, 0o644)
    );
    assert_eq!(
        root.owner_and_mode("/etc/cvp-backup-copy/backup.ini"),
        (CVP_UID, 0o600)
    );
    assert_eq!(
        root.owner_and_mode("/etc/cvp-backup-copy/keys"),
        (CVP_UID, 0o700)
    );
    assert_eq!(
        root.owner_and_mode("/etc/cvp-backup-copy/keys/backup.key"),
        (CVP_UID, 0o600)
    );
    assert_eq!(
        root.owner_and_mode("/var/lib/cvp-backup-copy"),
        (CVP_UID, 0o750)
    );
    let key =
        std::fs::read_to_string(root.path("/etc/cvp-backup-copy/keys/backup.key")).expect("key");
    assert_eq!(key.trim().len(), 44, "a Fernet key");
    // The package owns its folders: `rpm -qf` names it and `rpm -V` finds nothing changed.
    for dir in [
        "/etc/cvp-backup-copy",
        "/etc/cvp-backup-copy/keys",
        "/var/lib/cvp-backup-copy",
        "/usr/share/doc/cvp-backup-copy",
    ] {
        let owner = root.rpm(&["-qf", "--qf", "%{NAME}", dir]);
        assert_eq!(text(&owner).trim(), "cvp-backup-copy", "{dir}");
    }
    let verify = root.rpm(&["-V", "--nodeps", "cvp-backup-copy"]);
    assert!(verify.status.success(), "rpm -V: {}", text(&verify));
    let cron = std::fs::read_to_string(root.path("/etc/cron.d/cvp-backup-copy")).expect("cron");
    assert!(cron.contains("MAILTO=\"\""), "{cron}");
    let jobs: Vec<&str> = cron
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        jobs,
        [
            "0 2 * * * cvp /usr/bin/cvp-backup-copy --ini /etc/cvp-backup-copy/backup.ini",
            "0 4 * * 0 cvp /usr/bin/cvp-backup-copy --ini /etc/cvp-backup-copy/backup.ini \
             verify --read-data --set latest"
        ]
    );
    // The weekly line's arguments are ones the packaged binary takes.
    let weekly_help = run(Command::new(root.path("/usr/bin/cvp-backup-copy")).args([
        "--ini",
        "/etc/cvp-backup-copy/backup.ini",
        "verify",
        "--read-data",
        "--set",
        "latest",
        "--help",
    ]));
    assert!(
        weekly_help.status.success() && text(&weekly_help).contains("--read-data"),
        "{}",
        text(&weekly_help)
    );

    // The shipped INI's placeholders stop a run before it connects anywhere (a copy of it
    // owned by root: the scratch root's cvp is no user of this machine).
    let ini = root.path("/etc/cvp-backup-copy/backup.ini");
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let copy = copy_dir.path().join("backup.ini");
    std::fs::copy(&ini, &copy).expect("copy");
    let unconfigured = run(Command::new(root.path("/usr/bin/cvp-backup-copy"))
        .arg("--ini")
        .arg(&copy)
        .arg("--no-backup"));
    assert_eq!(
        unconfigured.status.code(),
        Some(3),
        "{}",
        text(&unconfigured)
    );
    assert!(
        text(&unconfigured).contains("not configured")
            && text(&unconfigured).contains("cvp-backup-copy edit")
    );

    // The operator configures it; an upgrade keeps the INI and the key.
    let edited = std::fs::read_to_string(&ini)
        .expect("ini")
        .replace("limit = 5", "limit = 9");
    std::fs::write(&ini, &edited).expect("edit ini");
    let newer_dir = tempfile::tempdir().expect("tempdir");
    let newer = newer_package(newer_dir.path());
    root.install(&newer, "-U");
    assert_eq!(
        std::fs::read_to_string(&ini).expect("ini"),
        edited,
        "upgrade kept the INI"
    );
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/cvp-backup-copy/keys/backup.key")).expect("key"),
        key
    );
    let version = root.rpm(&["-q", "--qf", "%{VERSION}", "cvp-backup-copy"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "99.0.0");

    // Erase: binary and cron job go; settings, key and state stay, and it says so (an empty
    // state folder, which the package owns, goes with it: there is nothing to keep).
    std::fs::write(root.path("/var/lib/cvp-backup-copy/last-run.json"), "{}").expect("record");
    let erased = root.rpm(&["-e", "--nodeps", "cvp-backup-copy"]);
    assert!(erased.status.success(), "{}", text(&erased));
    assert!(!root.path("/usr/bin/cvp-backup-copy").exists());
    assert!(!root.path("/etc/cron.d/cvp-backup-copy").exists());
    assert_eq!(std::fs::read_to_string(&ini).expect("INI kept"), edited);
    assert!(root.path("/etc/cvp-backup-copy/keys/backup.key").exists());
    assert!(root
        .path("/var/lib/cvp-backup-copy/last-run.json")
        .is_file());
    assert!(text(&erased).contains("Kept"), "{}", text(&erased));
}

#[test]
fn install_is_refused_where_user_cvp_does_not_exist() {
    let rpm = package();
    let root = ScratchRoot::new(false);
    let refused = root.rpm(&["-i", "--nodeps", &rpm.display().to_string()]);
    let output = text(&refused);
    assert!(!refused.status.success(), "installed without cvp: {output}");
    assert!(
        output.contains("not installed: this host has no user cvp"),
        "the reason is given: {output}"
    );
    assert!(
        output.contains("%pre"),
        "rpm names the refusing scriptlet: {output}"
    );
    for path in [
        "/usr/bin/cvp-backup-copy",
        "/etc/cron.d/cvp-backup-copy",
        "/etc/cvp-backup-copy",
    ] {
        assert!(!root.path(path).exists(), "{path} was installed: {output}");
    }
    let query = root.rpm(&["-q", "cvp-backup-copy"]);
    assert!(
        !query.status.success(),
        "the package is not recorded as installed"
    );
}

#[test]
fn the_post_install_warns_when_root_still_runs_the_stock_backup() {
    let rpm = package();
    let root = ScratchRoot::new(true);
    std::fs::write(
        root.path("/var/spool/cron/root"),
        "0 2 * * * /cvpi/tools/backup.py --limit 5\n",
    )
    .expect("crontab");
    let installed = text(&root.install(&rpm, "-i"));
    assert!(
        installed.contains("WARNING: root's crontab still runs /cvpi/tools/backup.py"),
        "{installed}"
    );

    // A commented-out line runs nothing: no warning.
    let quiet = ScratchRoot::new(true);
    std::fs::write(
        quiet.path("/var/spool/cron/root"),
        "#0 2 * * * /cvpi/tools/backup.py --limit 5
  # 0 2 * * * /cvpi/tools/backup.py
",
    )
    .expect("crontab");
    let installed = text(&quiet.install(&rpm, "-i"));
    assert!(!installed.contains("WARNING"), "{installed}");
}

/// `%post` creates only the package's key, whatever path a (cvp-owned) INI names: an
/// upgrade over an INI whose keyFile points into /etc writes nothing there.
#[test]
fn the_post_install_only_creates_keys_in_the_package_s_key_folder() {
    let rpm = package();
    let root = ScratchRoot::new(true);
    std::fs::create_dir_all(root.path("/etc/cvp-backup-copy")).expect("conf");
    std::fs::write(
        root.path("/etc/cvp-backup-copy/backup.ini"),
        "[Server_Settings]\nuser = u\nserver = s\ndestination = /d\npassword = x\n\
         keyFile = /etc/cron.d/planted\n",
    )
    .expect("ini");
    std::os::unix::fs::chown(
        root.path("/etc/cvp-backup-copy/backup.ini"),
        Some(CVP_UID),
        Some(CVP_UID),
    )
    .expect("chown");
    std::fs::create_dir_all(root.path("/etc/cron.d")).expect("cron.d");
    root.install(&rpm, "-i");
    assert!(!root.path("/etc/cron.d/planted").exists());
    assert!(root.path("/etc/cvp-backup-copy/keys/backup.key").exists());
}
