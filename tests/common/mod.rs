//! Test harness: a real OpenSSH sshd on 127.0.0.1 (random port, throwaway host key, a test
//! user with a password), a simulated `cvpi`, Python's `cryptography` for keys and tokens,
//! and a socket that captures what the tool sends to syslog. Tests run as root.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod proxy;
pub mod weed;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const TEST_USER: &str = "cvpbc-test";
/// Distinctive, so a leak is found by a plain substring search.
pub const TEST_PASSWORD: &str = "Zq8-leak-canary-Pw7x";
pub const SYSLOG_ENV: &str = "CVP_BACKUP_COPY_SYSLOG_SOCKET";

/// The binary under test: the RPM tests point this at the packaged one.
pub fn bin() -> PathBuf {
    std::env::var_os("CVP_BACKUP_COPY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cvp-backup-copy")))
}

pub fn fake_cvpi() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-cvpi")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn uid_of(user: &str) -> u32 {
    run_ok(Command::new("id").args(["-u", user]))
        .trim()
        .parse()
        .expect("numeric uid")
}

pub fn gid_of(user: &str) -> u32 {
    run_ok(Command::new("id").args(["-g", user]))
        .trim()
        .parse()
        .expect("numeric gid")
}

/// Create a local user (once per test process and name) with a known password.
pub fn ensure_user(name: &str, password: &str) {
    static TEST_USER_ONCE: Once = Once::new();
    // Tests of one process run in parallel: one useradd per name, never two at once.
    static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let create = || {
        let exists = Command::new("id")
            .arg(name)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            run_ok(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
        }
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("chpasswd runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{name}:{password}\n").as_bytes())
            .expect("write to chpasswd");
        assert!(child.wait().expect("chpasswd").success());
    };
    if name == TEST_USER {
        TEST_USER_ONCE.call_once(create);
    } else {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        if !created.iter().any(|n| n == name) {
            create();
            created.push(name.to_string());
        }
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The requests an append-only server refuses the node's account (the README's list).
pub const APPEND_ONLY_DENY: &str =
    "remove,rmdir,setstat,fsetstat,lsetstat,posix-rename,symlink,hardlink";

/// Run OpenSSH's `sftp` as an intruder holding the node's password would, with `batch`
/// (each line prefixed with `-` so a refused request does not end it); its output.
pub fn attacker_sftp(port: u16, batch: &str) -> String {
    let dir = tempfile::tempdir().expect("attacker dir");
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{TEST_PASSWORD}'\n")).expect("askpass");
    set_mode(&askpass, 0o700);
    let batch_file = dir.path().join("batch");
    let lines: String = batch
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("-{}\n", l.trim()))
        .collect();
    std::fs::write(&batch_file, lines).expect("batch");
    let out = Command::new("setsid")
        .arg("-w")
        .arg("sftp")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        ])
        .args([
            "-o",
            "NumberOfPasswordPrompts=1",
            "-P",
            &port.to_string(),
            "-b",
        ])
        .arg(&batch_file)
        .arg(format!("{TEST_USER}@127.0.0.1"))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .expect("run sftp");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with("internal-sftp")
    }

    /// An sshd whose SFTP server is `subsystem` (a command line), e.g. a slowed-down one.
    pub fn start_with(subsystem: &str) -> Sshd {
        Sshd::start_full(subsystem, &[], "")
    }

    /// An append-only server as the README sets one up: OpenSSH's own sftp-server, with a
    /// deny list for the node's account, forced in a `Match User` block.
    pub fn start_append_only() -> Sshd {
        let block = format!(
            "Match User {TEST_USER}\n    ForceCommand internal-sftp -P {APPEND_ONLY_DENY}\n"
        );
        Sshd::start_full("internal-sftp", &[], &block)
    }

    /// An sshd with more host keys besides ed25519 (`ecdsa`, `rsa`), listed first.
    pub fn start_with_host_keys(extra: &[&str]) -> Sshd {
        Sshd::start_full("internal-sftp", extra, "")
    }

    fn start_full(subsystem: &str, extra_keys: &[&str], match_block: &str) -> Sshd {
        ensure_user(TEST_USER, TEST_PASSWORD);
        std::fs::create_dir_all("/run/sshd").expect("privilege separation dir");
        let dir = tempfile::tempdir().expect("sshd dir");
        let key = dir.path().join("host_ed25519");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let mut host_keys = String::new();
        for kind in extra_keys {
            let extra = dir.path().join(format!("host_{kind}"));
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", kind, "-N", "", "-f"])
                    .arg(&extra),
            );
            host_keys.push_str(&format!("HostKey {}\n", extra.display()));
        }
        host_keys.push_str(&format!("HostKey {}\n", key.display()));
        std::fs::create_dir_all(dir.path().join("authorized_keys")).expect("authorized_keys dir");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\n{host_keys}PidFile {dir}/sshd.pid\n\
                     AuthorizedKeysFile {dir}/authorized_keys/%u\nPasswordAuthentication yes\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
                     StrictModes no\nPermitRootLogin no\nAllowUsers {TEST_USER}\n\
                     Subsystem sftp {subsystem}\nLogLevel VERBOSE\nMaxStartups 100:30:200\n\
                     {match_block}",
                    dir = dir.path().display()
                ),
            )
            .expect("write sshd_config");
            let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd log");
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            if wait_for_banner(port, &mut child) {
                return Sshd { port, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start; see its log");
    }

    pub fn host_key_line(&self) -> String {
        let public = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .expect("host public key");
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().expect("type"), fields.next().expect("key"));
        format!("[127.0.0.1]:{} {kind} {blob}\n", self.port)
    }

    /// Allow key authentication for the test user.
    pub fn authorize(&self, public_key: &str) {
        std::fs::write(
            self.dir.path().join("authorized_keys").join(TEST_USER),
            public_key,
        )
        .expect("write authorized_keys");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

fn wait_for_banner(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 4];
            if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python's `cryptography` makes the key and token, as newKeyGen.py did.
pub fn python_keygen(key_file: &Path, password: &str) -> String {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom cryptography.fernet import Fernet\nk = Fernet.generate_key()\n\
             open(sys.argv[1], 'wb').write(k)\n\
             print(Fernet(k).encrypt(sys.stdin.buffer.read()).decode())",
        ])
        .arg(key_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with cryptography (make test installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "python keygen failed");
    // The one step an operator adds to newKeyGen's output: the tool refuses a key others read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    String::from_utf8(out.stdout)
        .expect("token is text")
        .trim()
        .to_string()
}

/// `secret` encrypted with the Fernet key in `key_file` (Python's `cryptography`), as
/// `edit` stores a password or an S3 secret key.
pub fn python_encrypt(key_file: &Path, secret: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom cryptography.fernet import Fernet\n\
             print(Fernet(open(sys.argv[1], 'rb').read().strip()).encrypt(sys.argv[2].encode()).decode())",
        ])
        .arg(key_file)
        .arg(secret)
        .output()
        .expect("python3 with cryptography");
    assert!(out.status.success(), "python encrypt failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Fixture {
    /// A `[Destination NAME]` section for an S3 bucket on the test's SeaweedFS (`endpoint`:
    /// another, e.g. a proxy's or a closed port), with the node's secret under this node's key.
    pub fn s3_section(&self, name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
        let token = python_encrypt(&self.key_file, weed::NODE_SECRET);
        format!(
            "[Destination {name}]\nuser = {}\nserver = {endpoint}\npassword = {token}\n\
             destination = s3://{bucket}/nodes/cvp1\n{extra}\n",
            weed::NODE_KEY
        )
    }
}

/// A captured run of the tool.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub syslog: Vec<String>,
}

impl Run {
    pub fn all_output(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.stdout,
            self.stderr,
            self.syslog.join("\n")
        )
    }
}

/// A CVP node (local dirs, INI, key) and a backup server (sshd, destination dir).
pub struct Fixture {
    pub sshd: Sshd,
    /// The port the INI names: sshd's, or a fault-injecting proxy's in front of it.
    pub port: u16,
    pub root: tempfile::TempDir,
    pub remote_root: tempfile::TempDir,
    pub backup_dir: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub known_hosts: PathBuf,
    pub key_file: PathBuf,
    pub ini: PathBuf,
    /// This node's simulated cvpi: its own copy, so a backup running for another test's node
    /// is not this node's "backup already running".
    pub cvpi: PathBuf,
    pub dest: PathBuf,
    pub token: String,
    /// Extra fake-cvpi flags, e.g. "--fail --size 1000".
    pub cvpi_flags: String,
    pub server_extra: String,
    pub backup_extra: String,
    /// More sections at the end of the INI (`[Destination NAME]`).
    pub extra_sections: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::on(Sshd::start())
    }

    /// A node backing up to this sshd.
    pub fn on(sshd: Sshd) -> Fixture {
        let root = tempfile::tempdir().expect("node dir");
        let remote_root = tempfile::Builder::new()
            .prefix("cvpbc-remote")
            .tempdir()
            .expect("remote");
        let uid = uid_of(TEST_USER);
        let gid = gid_of(TEST_USER);
        std::os::unix::fs::chown(remote_root.path(), Some(uid), Some(gid)).expect("chown remote");
        let node = root.path();
        let key_file = node.join("keys/backup.key");
        std::fs::create_dir_all(key_file.parent().expect("parent")).expect("key dir");
        let token = python_keygen(&key_file, TEST_PASSWORD);
        let cvpi = node.join("bin/fake-cvpi");
        std::fs::create_dir_all(node.join("bin")).expect("bin");
        std::fs::copy(fake_cvpi(), &cvpi).expect("copy fake-cvpi");
        set_mode(&cvpi, 0o755);
        let fixture = Fixture {
            cvpi,
            dest: remote_root.path().join("backups/cvp"),
            backup_dir: node.join("data/cvpbackup"),
            log_dir: node.join("cvpi/logs/cvpbackup"),
            state_dir: node.join("state"),
            known_hosts: node.join("known_hosts"),
            ini: node.join("backup.ini"),
            key_file,
            token,
            port: sshd.port,
            sshd,
            root,
            remote_root,
            cvpi_flags: String::new(),
            server_extra: String::new(),
            backup_extra: String::new(),
            extra_sections: String::new(),
        };
        std::fs::create_dir_all(&fixture.backup_dir).expect("backup dir");
        std::fs::create_dir_all(&fixture.log_dir).expect("log dir");
        fixture.write_ini();
        fixture
    }

    /// A node whose INI points at a fault-injecting proxy in front of sshd.
    pub fn behind_proxy(fault: proxy::Fault, server_extra: &str) -> (Fixture, proxy::Proxy) {
        let mut fx = Fixture::new();
        let proxy = proxy::Proxy::start(fx.sshd.port, fault);
        fx.port = proxy.port;
        fx.server_extra = server_extra.to_string();
        fx.write_ini();
        (fx, proxy)
    }

    pub fn ini_text(&self) -> String {
        format!(
            "[Server_Settings]\n# Backup Server Settings\nuser = {TEST_USER}\nserver = 127.0.0.1\n\
             port = {port}\npassword = {token}\nkeyFile = {key}\ndestination = {dest}\n\
             known_hosts = {kh}\n{server_extra}\n\
             [Backup_Settings]\n# Backup script settings\nlimit = 5\n\
             backup_command = {cvpi} --backup-dir {bd} --log-dir {ld} {flags} backup cvp\n\
             backup_user = root\nbackup_dir = {bd}\nlog_dir = {ld}\nstate_dir = {sd}\n{backup_extra}\n\
             {extra_sections}\n",
            port = self.port,
            token = self.token,
            key = self.key_file.display(),
            dest = self.dest.display(),
            kh = self.known_hosts.display(),
            server_extra = self.server_extra,
            cvpi = self.cvpi.display(),
            bd = self.backup_dir.display(),
            ld = self.log_dir.display(),
            flags = self.cvpi_flags,
            sd = self.state_dir.display(),
            backup_extra = self.backup_extra,
            extra_sections = self.extra_sections,
        )
    }

    pub fn write_ini(&self) {
        std::fs::write(&self.ini, self.ini_text()).expect("write ini");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--ini").arg(&self.ini).args(args);
        cmd.env_remove("CVP_BACKUP_COPY_INI");
        cmd
    }

    /// Start the tool in the background (syslog off, stderr piped), for tests that act on
    /// it while it runs.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .env(SYSLOG_ENV, self.root.path().join("no-syslog"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tool")
    }

    /// Run the tool and capture stdout, stderr and what it sent to syslog.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        run_captured(&mut cmd, self.root.path())
    }

    /// Put a file with a CVP name and random content into the local backup or log dir.
    pub fn seed(&self, name: &str, size: usize) -> Vec<u8> {
        let dir = if name.starts_with("backup_cvp.") {
            &self.log_dir
        } else {
            &self.backup_dir
        };
        let bytes = if name.ends_with(".tgz") {
            tgz_of_size(size)
        } else {
            random_bytes(size)
        };
        std::fs::write(dir.join(name), &bytes).expect("seed file");
        bytes
    }

    pub fn local_names(&self) -> Vec<String> {
        let mut names = file_names(&self.backup_dir);
        names.extend(file_names(&self.log_dir));
        names.sort();
        names
    }

    /// Create the destination as the backup server's user owns it.
    pub fn make_remote_dir(&self) {
        std::fs::create_dir_all(&self.dest).expect("create destination");
        let (uid, gid) = (uid_of(TEST_USER), gid_of(TEST_USER));
        for dir in [self.dest.as_path(), self.dest.parent().expect("parent")] {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown destination");
        }
    }

    pub fn remote_names(&self) -> Vec<String> {
        file_names(&self.dest)
    }

    pub fn newest_local(&self, prefix: &str) -> Option<String> {
        self.local_names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .max()
    }

    pub fn local_path(&self, name: &str) -> PathBuf {
        if name.starts_with("backup_cvp.") {
            self.log_dir.join(name)
        } else {
            self.backup_dir.join(name)
        }
    }

    /// The destination's files verify with the real `sha256sum -c`.
    pub fn assert_remote_checksums_verify(&self) {
        let sidecars: Vec<String> = self
            .remote_names()
            .into_iter()
            .filter(|n| n.ends_with(".sha256"))
            .collect();
        assert!(!sidecars.is_empty(), "no checksum files on the remote");
        let out = Command::new("sha256sum")
            .arg("-c")
            .args(&sidecars)
            .current_dir(&self.dest)
            .output()
            .expect("sha256sum");
        assert!(
            out.status.success(),
            "sha256sum -c failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Fixture {
    /// Give the node to `account` (the stand-in for cvp), as the RPM lays it out: the INI's
    /// folder is root's (0755); the INI (0600), key folder (0700), state (0750), backups and
    /// a home with `.ssh` (where known_hosts goes) are the account's, and `backup_user` is
    /// it. The account's (uid, gid).
    pub fn give_to(&mut self, account: &str) -> (u32, u32) {
        ensure_user(account, "unused-password-of-the-job-account");
        let (uid, gid) = (uid_of(account), gid_of(account));
        let node = self.root.path().to_path_buf();
        set_mode(&node, 0o755);
        let home = node.join("home");
        std::fs::create_dir_all(home.join(".ssh")).expect("home");
        self.known_hosts = home.join(".ssh/known_hosts");
        std::fs::create_dir_all(&self.state_dir).expect("state");
        self.write_ini();
        let text = self
            .ini_text()
            .replace("backup_user = root", &format!("backup_user = {account}"));
        std::fs::write(&self.ini, text).expect("ini");
        for path in [
            self.backup_dir.parent().expect("data"),
            self.log_dir.parent().and_then(Path::parent).expect("cvpi"),
            &self.state_dir,
            self.key_file.parent().expect("keys"),
            &home,
        ] {
            chown_tree(path, uid, gid);
        }
        std::os::unix::fs::chown(&self.ini, Some(uid), Some(gid)).expect("chown ini");
        set_mode(&self.ini, 0o600);
        set_mode(self.key_file.parent().expect("keys"), 0o700);
        set_mode(&self.state_dir, 0o750);
        (uid, gid)
    }

    /// Set one option's line in the INI as it is now (the file keeps its owner and mode).
    pub fn set_in_ini(&self, option: &str, value: &str) {
        let text = std::fs::read_to_string(&self.ini).expect("ini");
        let start = text
            .find(&format!("\n{option} = "))
            .unwrap_or_else(|| panic!("{option} not in the INI"))
            + 1;
        let end = start + text[start..].find('\n').expect("end of line");
        std::fs::write(
            &self.ini,
            format!("{}{option} = {value}{}", &text[..start], &text[end..]),
        )
        .expect("ini");
    }

    /// Rewrite the INI (after changing the fixture's fields) and give it back to its owner.
    pub fn rewrite_ini_for(&self, account: &str) {
        let text = self
            .ini_text()
            .replace("backup_user = root", &format!("backup_user = {account}"));
        std::fs::write(&self.ini, text).expect("ini");
        std::os::unix::fs::chown(&self.ini, Some(uid_of(account)), Some(gid_of(account)))
            .expect("chown ini");
    }
}

/// An `sftp-server` whose `fsync` of any file over 1 MB takes `seconds`: a slow NAS flushing
/// a large upload. The returned folder holds the shim (and must live as long as the sshd).
pub fn slow_fsync_sftp_server(seconds: u32) -> (tempfile::TempDir, String) {
    preloaded_sftp_server(&format!(
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <unistd.h>\n#include <sys/stat.h>\n\
         int fsync(int fd) {{\n  static int (*real)(int);\n\
         if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, \"fsync\");\n\
         struct stat st;\n  if (fstat(fd, &st) == 0 && st.st_size > 1000000) sleep({seconds});\n\
         return real(fd);\n}}\n"
    ))
}

/// An `sftp-server` on which another node, `other`, always wins the race for an empty
/// destination: its owner marker is written a moment before this node's exclusive create
/// of it, which then finds the name taken.
pub fn claim_racing_sftp_server(other: &str) -> (tempfile::TempDir, String) {
    let mut source = String::from(
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <fcntl.h>\n#include <stdarg.h>\n\
         #include <string.h>\n#include <unistd.h>\n\
         static void plant(const char *path, int flags) {\n\
           static const char *marker = \"/.cvp-backup-copy-owner\";\n\
           size_t n = strlen(path), m = strlen(marker);\n\
           if (!(flags & O_CREAT) || !(flags & O_EXCL) || n < m || strcmp(path + n - m, marker))\n\
             return;\n\
           int (*real)(const char *, int, ...) = dlsym(RTLD_NEXT, \"open\");\n\
           int fd = real(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);\n\
           if (fd < 0) return;\n",
    );
    source.push_str(&format!(
        "  const char *text = \"node = {other}\\n\";\n  write(fd, text, strlen(text));\n  close(fd);\n}}\n"
    ));
    for symbol in ["open", "open64"] {
        source.push_str(&format!(
            "int {symbol}(const char *path, int flags, ...) {{\n\
               static int (*real)(const char *, int, ...);\n\
               if (!real) real = dlsym(RTLD_NEXT, \"{symbol}\");\n\
               mode_t mode = 0;\n\
               if (flags & O_CREAT) {{ va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }}\n\
               plant(path, flags);\n\
               return real(path, flags, mode);\n}}\n"
        ));
    }
    preloaded_sftp_server(&source)
}

/// OpenSSH's `sftp-server` with `c_source` built here with gcc as an LD_PRELOAD shim; the
/// returned folder holds it (and must live as long as the sshd), the string is the command.
fn preloaded_sftp_server(c_source: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("shim dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let source = dir.path().join("shim.c");
    std::fs::write(&source, c_source).expect("shim source");
    let library = dir.path().join("shim.so");
    run_ok(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl"),
    );
    let wrapper = dir.path().join("shimmed-sftp-server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nLD_PRELOAD={} exec /usr/lib/openssh/sftp-server \"$@\"\n",
            library.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let command = wrapper.display().to_string();
    (dir, command)
}

/// Run `cmd` with `input` on its standard input; its output.
pub fn with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    // A program that refuses early never reads its input: a broken pipe is not a failure.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes());
    child.wait_with_output().expect("wait")
}

pub fn run_captured(cmd: &mut Command, scratch: &Path) -> Run {
    let socket_path = scratch.join(format!("syslog-{}.sock", free_port()));
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).expect("bind syslog socket");
    // Any user may log, as with /dev/log (the non-root tests need it).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    // Drain while the tool runs, as rsyslog would: the kernel queues only a few datagrams.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            lines
        })
    };
    let out: Output = cmd
        .env(SYSLOG_ENV, &socket_path)
        .output()
        .expect("run the tool");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let syslog = reader.join().expect("syslog reader");
    let _ = std::fs::remove_file(&socket_path);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        syslog,
    }
}

pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A real archive (gzip of a tar holding one file of random bytes) of exactly `size` bytes,
/// zeros after the gzip stream making up the difference (gzip and the tool's check accept
/// them); the smallest is about 80 bytes, so a smaller `size` gets that.
pub fn tgz_of_size(size: usize) -> Vec<u8> {
    let mut payload = size.saturating_sub(size / 500 + 1700);
    loop {
        let mut tgz = tgz_of(&[("cvp/database.dump", &random_bytes(payload))]);
        if tgz.len() <= size {
            tgz.resize(size, 0);
            return tgz;
        }
        if payload == 0 {
            return tgz;
        }
        payload = payload.saturating_sub(tgz.len() - size + 512);
    }
}

/// gzip (stored blocks: quick in a debug build, and random bytes do not compress) of a
/// ustar archive of `files`.
pub fn tgz_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let tar = cvp_backup_copy::archive::ustar(files);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(&tar).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    let mut file = std::fs::File::open("/dev/urandom").expect("urandom");
    file.read_exact(&mut bytes).expect("random bytes");
    bytes
}
