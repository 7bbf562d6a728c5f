//! Nights in sequence against the real sshd and the simulated cvpi: good nights, failed
//! ones that leave partial archives, the documented `--no-backup` retry, a hung backup, a
//! network that is down, a clock that was years ahead, archives cvpi damaged but called
//! good (cut short, a byte changed, a tar killed inside a clean gzip stream). After every
//! night the invariant
//! holds: the newest good set is complete on the node, the set the last good copy verified
//! is complete on the server (its manifest passes `sha256sum -c`) and on the node, and no
//! archive of a failed backup is on the server.

mod common;

use common::proxy::{Fault, Proxy};
use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum Cvpi {
    Good,
    FailsWithPartialFiles,
    /// Writes part of its archive and never finishes (backup_timeout = 2 stops it).
    Hangs,
    /// A good backup stamped with this (future) stamp: a clock that was once wrong.
    GoodAt(&'static str),
    /// `--no-backup`: the documented retry.
    NotRun,
    /// cvpi exits 0 but its data archive is damaged this way (fake-cvpi --damage).
    Damaged(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Net {
    Up,
    Down,
}

struct NightRow {
    what: &'static str,
    cvpi: Cvpi,
    net: Net,
    code: i32,
}

/// A set as the node has it: (data, images, log) file names.
#[derive(Debug, Clone, PartialEq)]
struct Set {
    data: String,
    images: Option<String>,
    log: Option<String>,
}

impl Set {
    fn names(&self) -> Vec<&String> {
        [Some(&self.data), self.images.as_ref(), self.log.as_ref()]
            .into_iter()
            .flatten()
            .collect()
    }
}

struct Nights {
    fx: Fixture,
    proxy: Proxy,
    /// Good sets in the order they were made.
    made: Vec<Set>,
    /// The data file of the set the last successful copy verified.
    verified: Option<String>,
    /// Every archive a failed backup wrote (by its CVP name).
    failed: BTreeSet<String>,
}

/// The process group of the simulated cvpi the tool started (the tool makes it its own).
fn cvpi_group(tool_pid: u32) -> String {
    let out = Command::new("ps")
        .args(["-eo", "ppid=,pgid="])
        .output()
        .expect("ps");
    let group = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(&tool_pid.to_string()))
                .then(|| fields.next().map(str::to_string))
                .flatten()
        })
        .expect("the tool has a child");
    assert!(
        group
            .parse::<i32>()
            .is_ok_and(|g| g > 1 && g != tool_pid as i32),
        "cvpi runs in a process group of its own, not {group}"
    );
    group
}

/// SIGKILL to a process group, by the system call (procps' `kill -KILL -PGID` signals
/// every process, -1, when the group is gone).
fn kill_group(group: &str) {
    let group: i32 = group.parse().expect("numeric group");
    assert!(group > 1);
    // SAFETY: kill() with a negative pid signals only that process group.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// No live process is left in the group (a zombie waiting for a reaper is dead).
fn group_is_gone(group: &str) -> bool {
    let out = Command::new("ps")
        .args(["-eo", "pgid=,stat="])
        .output()
        .expect("ps");
    !String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some(group) && !fields.next().unwrap_or("Z").starts_with('Z')
    })
}

fn record(fx: &Fixture) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record"),
    )
    .expect("json")
}

impl Nights {
    fn new() -> Nights {
        let (mut fx, proxy) = Fixture::behind_proxy(Fault::Pass, "retries = 0\nremote_limit = 1");
        fx.backup_extra = "backup_timeout = 2".into();
        fx.write_ini();
        Nights {
            fx,
            proxy,
            made: Vec::new(),
            verified: None,
            failed: BTreeSet::new(),
        }
    }

    /// What the server's manifest of `data` lists (the tool's own record of the set).
    fn manifest_members(&self, data: &str) -> Vec<String> {
        let manifest = data.replace(".tgz", ".set.sha256");
        std::fs::read_to_string(self.fx.dest.join(&manifest))
            .unwrap_or_else(|err| panic!("{manifest}: {err}"))
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .map(str::to_string)
            .collect()
    }

    /// A node whose first night went well.
    fn after_a_good_night() -> Nights {
        let mut nights = Nights::new();
        nights.play(&NightRow {
            what: "a good night first",
            cvpi: Cvpi::Good,
            net: Net::Up,
            code: 0,
        });
        nights
    }

    fn play(&mut self, night: &NightRow) {
        let flags = match night.cvpi {
            Cvpi::Good => "--images --size 40000".to_string(),
            Cvpi::FailsWithPartialFiles => "--fail --images --size 40000".to_string(),
            Cvpi::Hangs => "--hang 60 --size 40000".to_string(),
            Cvpi::GoodAt(stamp) => format!("--stamp {stamp} --size 40000"),
            Cvpi::NotRun => String::new(),
            Cvpi::Damaged(how) => format!("--images --size 40000 --damage {how}"),
        };
        self.fx.cvpi_flags = flags;
        self.fx.write_ini();
        let text = self.fx.ini_text().replace("limit = 5", "limit = 1");
        std::fs::write(&self.fx.ini, text).expect("ini");
        self.proxy.set_default(match night.net {
            Net::Up => Fault::Pass,
            Net::Down => Fault::CutAfter(0),
        });
        let before: BTreeSet<String> = self.fx.local_names().into_iter().collect();
        let args: &[&str] = match night.cvpi {
            Cvpi::NotRun => &["--no-backup"],
            _ => &[],
        };
        let started = Instant::now();
        let run = self.fx.run(args);
        let took = started.elapsed();
        let out = run.all_output();
        assert_eq!(run.code, night.code, "{}: {out}", night.what);
        let appeared: Vec<String> = self
            .fx
            .local_names()
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        match night.cvpi {
            Cvpi::Good | Cvpi::GoodAt(_) => {
                let find = |prefix: &str| appeared.iter().find(|n| n.starts_with(prefix)).cloned();
                let data = find("cvp.1")
                    .or_else(|| find("cvp.2"))
                    .unwrap_or_else(|| panic!("{}: no data file in {appeared:?}", night.what));
                // cvpi re-dumps images only when bundles change: else the newest older one.
                let images = find("cvp.eosimages.").or_else(|| {
                    before
                        .iter()
                        .filter(|n| n.starts_with("cvp.eosimages.") && !n.ends_with(".failed"))
                        .max()
                        .cloned()
                });
                self.made.push(Set {
                    data,
                    images,
                    log: find("backup_cvp."),
                });
            }
            Cvpi::FailsWithPartialFiles | Cvpi::Hangs | Cvpi::Damaged(_) => {
                let failed: Vec<&String> =
                    appeared.iter().filter(|n| n.ends_with(".failed")).collect();
                assert!(
                    !failed.is_empty(),
                    "{}: the failed archives are set aside as NAME.failed: {appeared:?}",
                    night.what
                );
                for name in failed {
                    self.failed
                        .insert(name.trim_end_matches(".failed").to_string());
                }
                assert!(
                    appeared.iter().all(|n| !n.ends_with(".tgz")),
                    "{}: a failed archive kept a CVP name: {appeared:?}",
                    night.what
                );
            }
            Cvpi::NotRun => {}
        }
        if let Cvpi::Damaged(_) = night.cvpi {
            println!("{}:\n{out}", night.what);
            assert!(
                out.contains("is not a whole archive") && out.contains("nothing is pruned"),
                "{}: {out}",
                night.what
            );
            let last_good = self.made.last().map(|s| s.data.clone()).unwrap_or_default();
            assert!(
                out.contains(&format!("the last good set ({last_good}) stays")),
                "{}: the damaged set never became the last good one: {out}",
                night.what
            );
            let record = record(&self.fx);
            assert_eq!(record["backup_succeeded"], false, "{}", night.what);
        }
        if let Cvpi::Hangs = night.cvpi {
            assert!(took < Duration::from_secs(30), "the hang lasted {took:?}");
            assert!(out.contains("backup_timeout"), "{out}");
        }
        let record = record(&self.fx);
        // A damaged backup verified nothing: the set verified before is the one to hold.
        let damaged = matches!(night.cvpi, Cvpi::Damaged(_));
        if night.net == Net::Up && (night.code == 0 || night.code == 1) && !damaged {
            self.verified = record["restore_set"].as_str().map(str::to_string);
        }
        if damaged {
            assert_eq!(
                record["restore_set"],
                serde_json::Value::Null,
                "{}: nothing copied as a set",
                night.what
            );
        }
        if let (Cvpi::Good | Cvpi::GoodAt(_), Net::Up, 0) = (night.cvpi, night.net, night.code) {
            assert_eq!(
                record["restore_set"].as_str(),
                self.made.last().map(|s| s.data.as_str()),
                "{}: tonight's set is tonight's",
                night.what
            );
        }
        self.check(night.what);
    }

    fn check(&self, what: &str) {
        let local: BTreeSet<String> = self.fx.local_names().into_iter().collect();
        let remote: BTreeSet<String> = self.fx.remote_names().into_iter().collect();
        if let Some(newest) = self.made.last() {
            for name in newest.names() {
                assert!(
                    local.contains(name),
                    "{what}: {name} of the newest good set is gone from the node: {local:?}"
                );
            }
        }
        if let Some(data) = &self.verified {
            let members = self.manifest_members(data);
            assert!(members.contains(data), "{what}: {members:?}");
            if let Some(made) = self.made.iter().find(|s| &s.data == data) {
                let expected: Vec<&String> = made.names();
                for name in expected {
                    assert!(
                        members.contains(name),
                        "{what}: the manifest lacks {name}: {members:?}"
                    );
                }
            }
            for name in &members {
                assert!(
                    local.contains(name),
                    "{what}: verified {name} gone from the node"
                );
                assert!(
                    remote.contains(name),
                    "{what}: verified {name} gone from the server: {remote:?}"
                );
            }
            let manifest = data.replace(".tgz", ".set.sha256");
            let out = Command::new("sha256sum")
                .args(["-c", &manifest])
                .current_dir(&self.fx.dest)
                .output()
                .expect("sha256sum");
            assert!(
                out.status.success(),
                "{what}: sha256sum -c {manifest}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let listed = String::from_utf8_lossy(&out.stdout).lines().count();
            assert_eq!(listed, members.len(), "{what}: every member checked");
        }
        for name in &self.failed {
            assert!(
                !remote.contains(name),
                "{what}: the failed backup's {name} is on the server"
            );
            assert!(
                !local.contains(name),
                "{what}: {name} is taken for a backup"
            );
        }
        assert!(
            remote.iter().all(|n| !n.ends_with(".failed")),
            "{what}: {remote:?}"
        );
        if !self.fx.remote_names().is_empty() {
            self.fx.assert_remote_checksums_verify();
        }
    }
}

#[test]
fn a_sequence_of_bad_nights_never_costs_the_last_good_set() {
    let table = [
        NightRow {
            what: "1: a good night",
            cvpi: Cvpi::Good,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "2: cvpi fails, leaving partial archives",
            cvpi: Cvpi::FailsWithPartialFiles,
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "3: the documented retry, --no-backup",
            cvpi: Cvpi::NotRun,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "4: fails again",
            cvpi: Cvpi::FailsWithPartialFiles,
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "5: and again, a second failed night in a row",
            cvpi: Cvpi::FailsWithPartialFiles,
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "6: cvpi hangs (backup_timeout = 2)",
            cvpi: Cvpi::Hangs,
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "7: a good backup, the backup server unreachable",
            cvpi: Cvpi::Good,
            net: Net::Down,
            code: 4,
        },
        NightRow {
            what: "8: the retry copies the set night 7 made",
            cvpi: Cvpi::NotRun,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "9: the clock is years ahead for one night",
            cvpi: Cvpi::GoodAt("20991231020000"),
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "10: the clock is right again",
            cvpi: Cvpi::Good,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "11: fails beside the future stamp",
            cvpi: Cvpi::FailsWithPartialFiles,
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "12: the retry keeps tonight's honest set, not the future one",
            cvpi: Cvpi::NotRun,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "13: cvpi exits 0 but its archive is cut short",
            cvpi: Cvpi::Damaged("truncate"),
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "14: the retry after it copies nothing new",
            cvpi: Cvpi::NotRun,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "15: a byte of the archive changed",
            cvpi: Cvpi::Damaged("flip"),
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "16: a killed tar inside a clean gzip stream",
            cvpi: Cvpi::Damaged("tar-cut"),
            net: Net::Up,
            code: 1,
        },
        NightRow {
            what: "17: a good night recovers",
            cvpi: Cvpi::Good,
            net: Net::Up,
            code: 0,
        },
        NightRow {
            what: "18: a good backup, the server unreachable",
            cvpi: Cvpi::Good,
            net: Net::Down,
            code: 4,
        },
        NightRow {
            what: "19: a damaged backup, the server still unreachable: no copy reads it, the \
                   node does before it counts toward limit",
            cvpi: Cvpi::Damaged("flip"),
            net: Net::Down,
            code: 4,
        },
        NightRow {
            what: "20: the server is back, a good night",
            cvpi: Cvpi::Good,
            net: Net::Up,
            code: 0,
        },
    ];
    let mut nights = Nights::new();
    for night in &table {
        nights.play(night);
    }
    let local = nights.fx.local_names();
    // Limit 1: only the newest good set (night 20's) and the failed night's log remain; the
    // future-stamped set from night 9 is gone, never having pushed tonight's out.
    let newest = nights.made.last().expect("sets were made").clone();
    assert!(
        !local.iter().any(|n| n.contains("2099")),
        "the future-stamped set is pruned: {local:?}"
    );
    assert_eq!(nights.verified.as_deref(), Some(newest.data.as_str()));
    // The failed nights' archives: only the newest failed night's are kept, until a good
    // set is verified (night 20 pruned them).
    assert!(
        !file_names(&nights.fx.backup_dir)
            .iter()
            .any(|n| n.ends_with(".failed")),
        "{:?}",
        file_names(&nights.fx.backup_dir)
    );
}

#[test]
fn only_the_newest_failed_night_s_archives_are_kept_and_list_shows_them() {
    let mut nights = Nights::after_a_good_night();
    for what in ["first failure", "second failure"] {
        nights.play(&NightRow {
            what,
            cvpi: Cvpi::FailsWithPartialFiles,
            net: Net::Up,
            code: 1,
        });
    }
    let failed: Vec<String> = file_names(&nights.fx.backup_dir)
        .into_iter()
        .filter(|n| n.ends_with(".failed"))
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "data and images of the last failed night: {failed:?}"
    );
    let list_command = |json: bool| {
        let mut cmd = Command::new(bin());
        cmd.arg("list").arg("--ini").arg(&nights.fx.ini);
        if json {
            cmd.arg("--json");
        }
        run_captured(&mut cmd, nights.fx.root.path())
    };
    let list = list_command(false);
    assert_eq!(list.code, 0, "{}", list.all_output());
    assert!(list.stdout.contains("FAILED backup"), "{}", list.stdout);
    for name in &failed {
        assert!(list.stdout.contains(name.as_str()), "{}", list.stdout);
    }
    let json = list_command(true);
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert!(rows
        .as_array()
        .expect("array")
        .iter()
        .any(|row| row["failed"] == true));
}

/// The job killed (or the node restarted) while cvpi runs: the next run finds the note it
/// left and sets aside what appeared, instead of copying a partial archive.
#[test]
fn a_job_that_died_during_its_backup_is_cleaned_up_by_the_next_run() {
    let mut nights = Nights::after_a_good_night();
    nights.fx.cvpi_flags = "--hang 60 --size 40000".into();
    nights.fx.backup_extra = "backup_timeout = 600".into();
    nights.fx.write_ini();
    let before = nights.fx.local_names();
    let mut child = nights.fx.spawn(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let partial = loop {
        let new: Vec<String> = nights
            .fx
            .local_names()
            .into_iter()
            .filter(|n| !before.contains(n) && n.starts_with("cvp.2"))
            .collect();
        if let Some(name) = new.first() {
            break name.clone();
        }
        assert!(Instant::now() < deadline, "cvpi never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Killed hard, with its backup (as a reboot would).
    let group = cvpi_group(child.id());
    child.kill().expect("kill -9");
    kill_group(&group);
    let _ = child.wait();
    let history =
        std::fs::read_to_string(nights.fx.state_dir.join("history.json")).expect("history");
    assert!(history.contains("backup_started"), "{history}");

    nights.fx.backup_extra = "backup_timeout = 2".into();
    nights.fx.cvpi_flags.clear();
    nights.fx.write_ini();
    let run = nights.fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.all_output().contains("ended during its CVP backup"),
        "{}",
        run.all_output()
    );
    assert!(
        nights
            .fx
            .backup_dir
            .join(format!("{partial}.failed"))
            .exists()
            || {
                // Pruned already: the good set was verified on the server this run.
                !nights.fx.backup_dir.join(&partial).exists()
            }
    );
    assert!(!nights.fx.remote_names().contains(&partial));
    nights.failed.insert(partial);
    nights.check("after the run that found the dead backup");
}

/// SIGTERM (or Ctrl-C) while cvpi runs stops cvpi's whole process group, exits 1, sets the
/// partial archive aside and frees the lock.
#[test]
fn sigterm_during_the_backup_stops_cvpi_and_sets_its_archive_aside() {
    let mut nights = Nights::new();
    nights.fx.cvpi_flags = "--hang 60 --size 40000".into();
    nights.fx.backup_extra = "backup_timeout = 600".into();
    nights.fx.write_ini();
    let child = nights.fx.spawn(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nights
        .fx
        .local_names()
        .iter()
        .any(|n| n.starts_with("cvp.2"))
    {
        assert!(Instant::now() < deadline, "cvpi never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let group = cvpi_group(child.id());
    let started = Instant::now();
    // SAFETY: a signal to the tool, a child of this test.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(group_is_gone(&group), "cvpi outlived the stop");
    let names = file_names(&nights.fx.backup_dir);
    assert!(
        names.iter().any(|n| n.ends_with(".tgz.failed")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tgz")), "{names:?}");
    assert!(
        nights.fx.remote_names().is_empty(),
        "nothing copied after a stop"
    );
    assert_eq!(record(&nights.fx)["exit_code"], 1);
    // The lock is free: the next run goes ahead.
    nights.fx.cvpi_flags.clear();
    nights.fx.write_ini();
    let next = nights.fx.run(&[]);
    assert_eq!(next.code, 0, "{}", next.all_output());
}
