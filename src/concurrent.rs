//! Another CVP backup already running on the node: root's stock cron line
//! (`/cvpi/tools/backup.py --limit 5`) left in place, or an operator's `cvpi backup cvp` by
//! hand. Two backups at once must not happen, and the files one is writing are not ours to
//! adopt or set aside: the night refuses to start (exit 6). Our own runs exclude each other
//! by the lock; this looks at the processes themselves, through /proc.

use std::path::Path;

/// The stock script that root's crontab runs on CVP.
pub const STOCK_SCRIPT: &str = "/cvpi/tools/backup.py";

/// A process that is a CVP backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Its command line, words joined by spaces.
    pub command: String,
}

fn base(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// CVP's own program.
const CVPI: &str = "/cvpi/bin/cvpi";

/// Whether `word` (an argument of a process) names `program`: the same path, or, for a bare
/// name found through PATH, the same name (`cvpi` for /cvpi/bin/cvpi, as an operator types
/// it).
fn names(word: &str, program: &str) -> bool {
    word == program || (!word.contains('/') && word == base(program))
}

/// Whether a process with these arguments is a CVP backup, for a job whose backup command is
/// `configured`: the stock script (by its path), `cvpi ... backup`, or the configured
/// program with `backup` after it when the configured command has that word (a wrapper
/// without it: the program itself). Programs are matched by their path, so a script of the
/// same name elsewhere is not taken for one. Words are compared whole: a shell's `-c`
/// string is one word, so `su - cvp -c "cvpi backup cvp"` is not the backup itself (the
/// cvpi it starts is).
pub fn is_cvp_backup(argv: &[String], configured: &[String]) -> bool {
    if argv.iter().any(|w| w == STOCK_SCRIPT) {
        return true;
    }
    let program_then_backup = |program: &str, needs_backup: bool| {
        argv.iter().enumerate().any(|(index, word)| {
            names(word, program)
                && (!needs_backup || argv[index + 1..].iter().any(|w| w == "backup"))
        })
    };
    if program_then_backup(CVPI, true) {
        return true;
    }
    match configured.split_first() {
        Some((program, args)) => program_then_backup(program, args.iter().any(|w| w == "backup")),
        None => false,
    }
}

/// How long the look at the processes may take: reading a process's command line reads its
/// memory, which a process can make hang (argv on a file system that never answers).
const LOOK_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The CVP backups running now: processes of root (the stock cron line) or of `backup_user`
/// (cvpi), by their real and effective uids, other than this process, its children and the
/// session `ours` (the backup command this run started: it and all it started). Other
/// accounts' processes are not looked at: nobody else runs a CVP backup, and a process of
/// theirs could only fake one or make the look hang. Processes that vanish or cannot be read
/// while we look are skipped. Err: the look did not finish within 10 s (the caller must then
/// assume the worst).
pub fn running(
    configured: &[String],
    backup_user: &str,
    ours: Option<u32>,
) -> Result<Vec<Process>, String> {
    let mut owners = vec![0];
    owners.extend(crate::users::by_name(backup_user).map(|user| user.uid));
    let configured = configured.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    let looking = std::thread::Builder::new()
        .name("look at processes".into())
        .spawn(move || {
            let _ = tx.send(running_in(Path::new("/proc"), &configured, ours, &owners));
        });
    if let Err(err) = looking {
        return Err(format!("cannot look at the running processes: {err}"));
    }
    rx.recv_timeout(LOOK_LIMIT).map_err(|_| {
        format!(
            "the look at the running processes did not finish within {} s (a process's \
             command line cannot be read)",
            LOOK_LIMIT.as_secs()
        )
    })
}

fn running_in(
    proc_root: &Path,
    configured: &[String],
    ours: Option<u32>,
    owners: &[u32],
) -> Vec<Process> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<Process> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let dir = proc_root.join(pid.to_string());
            // What needs no read of the process's memory first: its owner, its parent and
            // its session; its command line only for those still in question.
            let (parent, session) = parent_and_session(proc_root, pid).unwrap_or((0, 0));
            if !owned_by(&dir, owners) || parent == me || ours == Some(session) {
                return None;
            }
            let raw = std::fs::read(dir.join("cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            if argv.is_empty() {
                return None;
            }
            is_cvp_backup(&argv, configured).then(|| Process {
                pid,
                command: argv.join(" "),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Whether the process's real and effective uids are both among `owners`, from the `Uid:`
/// line of /proc/PID/status (not the owner of /proc/PID: a process that made itself not
/// dumpable shows as root's there), without touching the process's memory.
fn owned_by(dir: &Path, owners: &[u32]) -> bool {
    let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
        return false;
    };
    let Some(uids) = status.lines().find_map(|line| line.strip_prefix("Uid:")) else {
        return false;
    };
    let mut ids = uids.split_whitespace().map(|id| id.parse::<u32>().ok());
    matches!((ids.next(), ids.next()), (Some(Some(real)), Some(Some(effective)))
        if owners.contains(&real) && owners.contains(&effective))
}

/// The parent pid and session id, from /proc/PID/stat (after the command name, which may hold
/// spaces: state, ppid, pgrp, session, ...).
fn parent_and_session(proc_root: &Path, pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let parent = fields.nth(1)?.parse().ok()?;
    let session = fields.nth(1)?.parse().ok()?;
    Some((parent, session))
}

/// "pid 812: /usr/bin/python /cvpi/tools/backup.py --limit 5" (and how many more).
pub fn describe(found: &[Process]) -> String {
    let Some(first) = found.first() else {
        return "none".into();
    };
    let mut command = first.command.clone();
    if command.len() > 200 {
        let cut = (0..=200).rev().find(|i| command.is_char_boundary(*i));
        command.truncate(cut.unwrap_or(0));
        command.push('…');
    }
    let more = match found.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    // One line whatever the command line holds (a newline could forge a log line).
    let command = crate::error::printable(&command).replace('\n', "\\n");
    format!("pid {}: {command}{more}", first.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        shlex::split(text).expect("words")
    }

    #[test]
    fn what_counts_as_a_cvp_backup() {
        let stock = words("/cvpi/bin/cvpi backup cvp");
        let fake = words("/opt/t/fake-cvpi --backup-dir /d --log-dir /l backup cvp");
        let wrapper = words("/usr/local/bin/nightly.sh");
        // (process, configured, is a backup)
        let table = [
            (
                "/usr/bin/python2 /cvpi/tools/backup.py --limit 5",
                &stock,
                true,
            ),
            ("/cvpi/tools/backup.py", &wrapper, true),
            ("/usr/bin/python /cvpi/bin/cvpi backup cvp", &stock, true),
            ("cvpi backup cvp", &wrapper, true),
            ("/cvpi/bin/cvpi -v backup cvp", &stock, true),
            ("/opt/other/cvpi backup cvp", &wrapper, false),
            (
                "/bin/sh /opt/u/fake-cvpi --sleep 5 backup cvp",
                &fake,
                false,
            ),
            ("fake-cvpi backup cvp", &fake, true),
            ("/cvpi/bin/cvpi status all", &stock, false),
            ("/cvpi/bin/cvpi restore cvp /data/x.tgz", &stock, false),
            ("su - cvp -c 'cvpi backup cvp'", &stock, false),
            ("-bash -c 'cvpi backup cvp'", &stock, false),
            ("/bin/sh /opt/t/fake-cvpi --sleep 5 backup cvp", &fake, true),
            ("/bin/sh /opt/t/fake-cvpi --sleep 5", &fake, false),
            ("/bin/sh /usr/local/bin/nightly.sh", &wrapper, true),
            (
                "/usr/bin/cvp-backup-copy --ini /etc/cvp-backup-copy/backup.ini",
                &stock,
                false,
            ),
            ("vi /cvpi/tools/backup.py.orig", &stock, false),
            ("grep backup /var/log/messages", &stock, false),
        ];
        for (process, configured, want) in table {
            assert_eq!(
                is_cvp_backup(&words(process), configured),
                want,
                "{process} (configured {configured:?})"
            );
        }
    }

    /// A /proc of our own making: who owns a process is its status's Uid line (real and
    /// effective), never the owner of its folder.
    #[test]
    fn only_processes_whose_real_and_effective_uid_are_trusted_are_looked_at() {
        let proc_root = tempfile::tempdir().expect("proc");
        let process = |pid: u32, uids: &str, argv: &[&str]| {
            let dir = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("pid dir");
            std::fs::write(dir.join("status"), format!("Name:\tx\nUid:\t{uids}\n"))
                .expect("status");
            std::fs::write(dir.join("stat"), format!("{pid} (x y) S 1 {pid} {pid} 0"))
                .expect("stat");
            std::fs::write(dir.join("cmdline"), argv.join("\0")).expect("cmdline");
        };
        let stock = ["/usr/bin/python", STOCK_SCRIPT, "--limit", "5"];
        process(11, "0\t0\t0\t0", &stock);
        process(12, "1000\t1000\t1000\t1000", &stock);
        process(13, "1000\t0\t0\t0", &stock);
        process(
            14,
            "500\t500\t500\t500",
            &["/cvpi/bin/cvpi", "backup", "cvp"],
        );
        std::fs::create_dir_all(proc_root.path().join("15")).expect("no status");
        let found = running_in(proc_root.path(), &[], None, &[0, 500]);
        let pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [11, 14]);
        assert_eq!(
            running_in(proc_root.path(), &[], Some(14), &[0, 500])
                .iter()
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
            [11],
            "the run's own backup session is not another backup"
        );
    }

    #[test]
    fn finds_a_running_backup_but_not_itself_or_its_children() {
        let script = tempfile::Builder::new()
            .prefix("cvpi")
            .tempdir()
            .expect("dir");
        let program = script.path().join("fake-cvpi");
        std::fs::write(&program, "#!/bin/sh\nsleep 30\n").expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let configured = vec![program.display().to_string(), "backup".into(), "cvp".into()];
        // A child of ours: not another backup (ours would be, to a second run).
        let mut child = std::process::Command::new(&program)
            .args(["backup", "cvp"])
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            running(&configured, "root", None).expect("looked"),
            Vec::new()
        );
        // Started by someone else (a grandchild through a shell that exits at once).
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{} backup cvp >/dev/null 2>&1 & echo $!",
                program.display()
            ))
            .output()
            .expect("sh");
        let other: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let found = running(&configured, "root", None).expect("looked");
        // Another account's processes are not looked at (here: root's, for an account
        // that is neither root nor the backup user).
        let of_another = running_in(Path::new("/proc"), &configured, None, &[4_000_000]);
        // In a session of its own, named as ours: not another backup (what a run's backup
        // command left running is its own).
        let status = std::process::Command::new("setsid")
            .arg("-f")
            .arg(&program)
            .args(["backup", "cvp"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("setsid");
        assert!(status.success());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let both = running(&configured, "root", None).expect("looked");
        let session = both
            .iter()
            .find(|p| p.pid != other)
            .map(|p| p.pid)
            .expect("the setsid one");
        let without_ours = running(&configured, "root", Some(session)).expect("looked");
        let _ = child.kill();
        let _ = child.wait();
        for pid in both.iter().map(|p| p.pid) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(without_ours.len(), 1, "{without_ours:?}");
        assert_eq!(without_ours[0].pid, other);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(of_another, Vec::new());
        assert_eq!(found[0].pid, other);
        assert!(describe(&found).starts_with(&format!("pid {other}: /bin/sh ")));
        assert!(describe(&found).ends_with("fake-cvpi backup cvp"));
        let forged = [Process {
            pid: 1,
            command: "cvpi backup\nERROR fake line".into(),
        }];
        assert_eq!(describe(&forged), "pid 1: cvpi backup\\nERROR fake line");
    }
}
