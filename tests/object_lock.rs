//! A stolen node cannot destroy its copies in a bucket: `lock_days` on SeaweedFS (`weed
//! mini`) buckets with Object Lock. Every object the node writes is retained, each night
//! extends the kept sets' retention, pruning waits for a lock to end, and the setups that
//! cannot work are clear errors. A lock day lasts a few seconds here (the test knob
//! CVP_BACKUP_COPY_TEST_DAY_SECONDS), so locks end while the test waits.

mod common;

use common::weed::{self, new_lock_bucket, weed};
use common::*;
use std::time::{Duration, Instant};

const PREFIX: &str = "nodes/cvp1";
const DAY_SECONDS: u64 = 3;

fn node_with_bucket(bucket: &str, extra: &str) -> Fixture {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--images --size 12000000".into();
    fx.extra_sections = fx.s3_section("offsite", &weed().endpoint(), bucket, extra);
    fx.write_ini();
    fx
}

/// A run with lock days of DAY_SECONDS seconds.
fn run(fx: &Fixture, args: &[&str]) -> Run {
    let mut cmd = fx.command(args);
    cmd.env("CVP_BACKUP_COPY_TEST_DAY_SECONDS", DAY_SECONDS.to_string());
    run_captured(&mut cmd, fx.root.path())
}

fn night(fx: &mut Fixture, stamp: &str, extra_flags: &str) -> Run {
    fx.cvpi_flags = format!("--images --size 12000000 --stamp {stamp} {extra_flags}");
    fx.write_ini();
    run(fx, &["-v"])
}

/// Each version of each key under the prefix: (name, version id, delete marker).
fn versions(bucket: &str) -> Vec<(String, String, bool)> {
    let out = weed().boto3(
        &format!(
            "r = s3.list_object_versions(Bucket='{bucket}', Prefix='{PREFIX}/')\n\
             for v in r.get('Versions', []): print(v['Key'], v['VersionId'], 'v')\n\
             for v in r.get('DeleteMarkers', []): print(v['Key'], v['VersionId'], 'd')"
        ),
        true,
    );
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words
                .next()?
                .strip_prefix(&format!("{PREFIX}/"))?
                .to_string();
            Some((key, words.next()?.to_string(), words.next()? == "d"))
        })
        .collect()
}

/// Seconds from now until the current version of `name` is no longer retained.
fn seconds_locked(bucket: &str, name: &str) -> f64 {
    let out = weed().boto3(
        &format!(
            "import datetime\n\
             h = s3.head_object(Bucket='{bucket}', Key='{PREFIX}/{name}')\n\
             print(h.get('ObjectLockMode'), (h['ObjectLockRetainUntilDate'] - \
             datetime.datetime.now(datetime.timezone.utc)).total_seconds())"
        ),
        true,
    );
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("COMPLIANCE"), "{out}");
    words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no retention: {out}"))
}

fn set_of(stamp: &str) -> Vec<String> {
    vec![
        format!("cvp.{stamp}.tgz"),
        format!("cvp.{stamp}.tgz.sha256"),
        format!("cvp.eosimages.{stamp}.tgz"),
        format!("cvp.eosimages.{stamp}.tgz.sha256"),
        format!("cvp.{stamp}.set.sha256"),
    ]
}

fn assert_whole_in_bucket(fx: &Fixture, bucket: &str, stamp: &str) {
    let names = weed().names(bucket, PREFIX);
    for name in set_of(stamp) {
        assert!(names.contains(&name), "{name} not in the bucket: {names:?}");
    }
    let to = tempfile::tempdir().expect("download dir");
    let checked = weed().download_and_check(bucket, PREFIX, to.path());
    assert!(
        checked.contains(&format!("cvp.{stamp}.tgz: OK")),
        "{checked}"
    );
    let data = format!("cvp.{stamp}.tgz");
    assert_eq!(
        std::fs::read(to.path().join(&data)).expect("downloaded"),
        std::fs::read(fx.local_path(&data)).expect("local")
    );
}

#[test]
fn lock_days_needs_a_bucket_with_object_lock_and_the_right_to_set_retention() {
    // A bucket without Object Lock: a configuration error (3), at check and at the run.
    let plain = weed::new_admin_bucket(false, None);
    let fx = node_with_bucket(&plain, "lock_days = 7");
    let check = run(&fx, &["check"]);
    assert_eq!(check.code, 3, "{}", check.stdout);
    assert!(
        check.stdout.contains("[FAIL] destination offsite: bucket:")
            && check.stdout.contains("has no Object Lock"),
        "{}",
        check.stdout
    );
    let night = run(&fx, &[]);
    assert_eq!(night.code, 3, "{}", night.all_output());
    assert!(
        night.stderr.contains("has no Object Lock"),
        "{}",
        night.stderr
    );
    assert!(
        weed().names(&plain, PREFIX).is_empty(),
        "nothing written unlocked"
    );

    // A locked bucket, but the node's key may not set a retention: 4, naming the right.
    let locked = weed::new_locked_bucket(1);
    let fx = node_with_bucket(&locked, "lock_days = 7");
    let check = run(&fx, &["check"]);
    assert_eq!(check.code, 4, "{}", check.stdout);
    assert!(
        check.stdout.contains("s3:PutObjectRetention") && check.stdout.contains("Admin:"),
        "{}",
        check.stdout
    );
    let night = run(&fx, &[]);
    assert_eq!(night.code, 4, "{}", night.all_output());
    assert!(
        night.stderr.contains("s3:PutObjectRetention"),
        "{}",
        night.stderr
    );
    // Without lock_days the bucket's own default retention locks what the node writes, and
    // the node needs no such right: immutable.
    let fx = node_with_bucket(&locked, "");
    let check = run(&fx, &["check"]);
    assert!(
        check
            .stdout
            .contains("[ok  ] destination offsite: immutable: yes ("),
        "{}",
        check.stdout
    );
    assert_eq!(check.code, 0, "{}", check.stdout);
    // lock_days on an SFTP destination is refused as configuration.
    let mut fx = Fixture::new();
    fx.server_extra = "lock_days = 3".into();
    fx.write_ini();
    let refused = run(&fx, &[]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(refused.stderr.contains("append_only"), "{}", refused.stderr);
}

#[test]
fn nights_keep_the_kept_sets_locked_and_prune_a_set_only_once_its_lock_ends() {
    let bucket = new_lock_bucket(None);
    // Locks of 5 "days" (15 s: the checks between nights take seconds); one set kept there.
    let mut fx = node_with_bucket(&bucket, "lock_days = 5\nremote_limit = 1");
    let check = run(&fx, &["check"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("object lock: lock_days = 5 (COMPLIANCE)")
            && check
                .stdout
                .contains("[ok  ] destination offsite: immutable: yes ("),
        "{}",
        check.stdout
    );

    let a = "20261201020000";
    let first = night(&mut fx, a, "");
    let started = Instant::now();
    assert_eq!(first.code, 0, "{}", first.all_output());
    // Locked from the moment it was written, for lock_days (15 s here).
    for name in set_of(a) {
        let left = seconds_locked(&bucket, &name);
        assert!(left > 0.5 && left <= 15.5, "{name}: {left} s");
    }
    assert_whole_in_bucket(&fx, &bucket, a);
    assert!(
        first.all_output().contains("retention of the"),
        "{}",
        first.all_output()
    );

    // Night 2: set a is beyond remote_limit but locked: kept, nothing refused is sent.
    let b = "20261202020000";
    let second = night(&mut fx, b, "");
    assert_eq!(second.code, 0, "{}", second.all_output());
    assert_whole_in_bucket(&fx, &bucket, b);
    let log = second.all_output();
    assert!(
        log.contains(&format!("kept remote cvp.{a}.tgz: locked until")),
        "{log}"
    );
    assert!(!log.contains("cannot prune"), "{log}");
    assert!(weed()
        .names(&bucket, PREFIX)
        .contains(&format!("cvp.{a}.tgz")));

    // Night 3 fails its backup; the last good set is verified again and its lock extended.
    std::thread::sleep(Duration::from_secs(2));
    let before = seconds_locked(&bucket, &format!("cvp.{b}.tgz"));
    let third = night(&mut fx, "20261203020000", "--fail");
    assert_eq!(third.code, 1, "{}", third.all_output());
    let after = seconds_locked(&bucket, &format!("cvp.{b}.tgz"));
    assert!(after > before + 1.0, "extended: {before} -> {after}");
    for name in set_of(b) {
        assert!(seconds_locked(&bucket, &name) > 2.0, "{name}");
    }

    // Once a's lock has ended, the next night removes it whole, every version.
    let a_ends = Duration::from_secs(5 * DAY_SECONDS + 2);
    if let Some(wait) = a_ends.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
    let c = "20261204020000";
    let fourth = night(&mut fx, c, "");
    assert_eq!(fourth.code, 0, "{}", fourth.all_output());
    assert_whole_in_bucket(&fx, &bucket, c);
    let left: Vec<_> = versions(&bucket)
        .into_iter()
        .filter(|(key, _, _)| key.contains(a))
        .collect();
    assert!(left.is_empty(), "set a is still there: {left:?}");
    // The kept set is locked ahead again.
    for name in set_of(c) {
        assert!(seconds_locked(&bucket, &name) > 0.5, "{name}");
    }
}

#[test]
fn an_intruder_with_the_nodes_key_cannot_destroy_a_locked_set_and_fetch_restores_it() {
    // A bucket whose default retention locks what the node writes (a real day here), and
    // lock_days on top.
    let bucket = new_lock_bucket(Some(1));
    let mut fx = node_with_bucket(&bucket, "lock_days = 1");
    let stamp = "20261205020000";
    fx.cvpi_flags = format!("--images --size 12000000 --stamp {stamp}");
    fx.write_ini();
    let check = fx.run(&["check"]);
    assert!(
        check.stdout.contains("immutable: yes (")
            && check
                .stdout
                .contains("remote_limit = 0: every set stays kept"),
        "{}",
        check.stdout
    );
    let night = fx.run(&[]);
    assert_eq!(night.code, 0, "{}", night.all_output());
    assert_whole_in_bucket(&fx, &bucket, stamp);
    let before = versions(&bucket);

    // The intruder: the node's INI and key, so its access key and secret; boto3.
    let report = weed().boto3(
        &format!(
            "import datetime\n\
             b, p = '{bucket}', '{PREFIX}/'\n\
             refused, allowed = [], []\n\
             def attempt(what, call):\n\
             \x20   try:\n\
             \x20       call(); allowed.append(what)\n\
             \x20   except botocore.exceptions.ClientError as e:\n\
             \x20       refused.append(what + ':' + e.response['Error']['Code'])\n\
             r = s3.list_object_versions(Bucket=b, Prefix=p)\n\
             soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)\n\
             for v in r.get('Versions', []):\n\
             \x20   k, i = v['Key'], v['VersionId']\n\
             \x20   attempt('delete ' + k, lambda: s3.delete_object(Bucket=b, Key=k, VersionId=i))\n\
             \x20   attempt('bypass ' + k, lambda: s3.delete_object(Bucket=b, Key=k, VersionId=i, BypassGovernanceRetention=True))\n\
             \x20   attempt('shorten ' + k, lambda: s3.put_object_retention(Bucket=b, Key=k, VersionId=i, Retention={{'Mode': 'COMPLIANCE', 'RetainUntilDate': soon}}))\n\
             \x20   attempt('governance ' + k, lambda: s3.put_object_retention(Bucket=b, Key=k, VersionId=i, Retention={{'Mode': 'GOVERNANCE', 'RetainUntilDate': soon}}))\n\
             for v in r.get('Versions', []):\n\
             \x20   s3.delete_object(Bucket=b, Key=v['Key'])\n\
             s3.put_object(Bucket=b, Key=p + 'cvp.{stamp}.tgz', Body=b'ransom note')\n\
             s3.put_object(Bucket=b, Key=p + 'cvp.{stamp}.set.sha256', Body=b'0' * 64 + b'  cvp.{stamp}.tgz\\n')\n\
             print('ALLOWED', len(allowed), allowed)\n\
             print('REFUSED', len(refused))"
        ),
        false,
    );
    assert!(report.contains("ALLOWED 0 []"), "{report}");
    let node_versions = before.iter().filter(|(_, _, marker)| !marker).count();
    let refused: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("REFUSED "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        node_versions >= 5 && refused == 4 * node_versions,
        "{node_versions} versions, {refused} refusals: {report}"
    );
    // Every version the node wrote is still there, each under its lock.
    let after = versions(&bucket);
    for (key, id, marker) in &before {
        assert!(
            after
                .iter()
                .any(|(k, i, m)| k == key && i == id && m == marker),
            "{key} {id} is gone: {after:?}"
        );
    }
    // The bucket's current view is the intruder's: hidden members, junk data and manifest.
    let current = weed().names(&bucket, PREFIX);
    assert!(
        !current.contains(&format!("cvp.eosimages.{stamp}.tgz")),
        "{current:?}"
    );

    // `list` still shows the set, as hidden or written over, and restorable.
    let list = fx.run(&["list", "--destination", "offsite"]);
    assert_eq!(list.code, 0, "{}", list.all_output());
    assert!(
        list.stdout
            .contains(&format!("hidden or written over: cvp.{stamp}.tgz")),
        "{}",
        list.stdout
    );
    // The node is lost: `fetch` restores the set from the versions whose sha256 match its
    // manifest's earlier version, byte for byte what the node sent.
    let rebuilt = fx.root.path().join("rebuilt");
    let fetch = fx.run(&[
        "fetch",
        "latest",
        "--destination",
        "offsite",
        "--to",
        rebuilt.to_str().expect("utf-8"),
    ]);
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert!(
        fetch.stdout.contains("from the versions the node wrote")
            && fetch.stdout.contains("cvpi restore cvp"),
        "{}",
        fetch.stdout
    );
    for name in [
        format!("cvp.{stamp}.tgz"),
        format!("cvp.eosimages.{stamp}.tgz"),
    ] {
        assert_eq!(
            std::fs::read(rebuilt.join(&name)).expect("fetched"),
            std::fs::read(fx.local_path(&name)).expect("local"),
            "{name}"
        );
    }
    // The next night says so, re-locks the node's versions, and the set is whole again.
    let next = fx.run(&["--no-backup"]);
    assert_eq!(next.code, 0, "{}", next.all_output());
    assert!(
        next.all_output()
            .contains("sets hidden or written over since the node wrote them"),
        "{}",
        next.all_output()
    );
    assert_whole_in_bucket(&fx, &bucket, stamp);
    // A set no version can make whole is a clear error naming what is missing.
    let missing = fx.run(&[
        "fetch",
        "20261101020000",
        "--destination",
        "offsite",
        "--to",
        fx.root.path().join("none").to_str().expect("utf-8"),
    ]);
    assert_eq!(missing.code, 5, "{}", missing.all_output());
    assert!(
        missing.stderr.contains("no set of 20261101020000"),
        "{}",
        missing.stderr
    );
}

/// Seconds from now until one version of `name` is no longer retained.
fn version_seconds_locked(bucket: &str, name: &str, version: &str) -> f64 {
    let out = weed().boto3(
        &format!(
            "import datetime\n\
             h = s3.head_object(Bucket='{bucket}', Key='{PREFIX}/{name}', VersionId='{version}')\n\
             print((h['ObjectLockRetainUntilDate'] - \
             datetime.datetime.now(datetime.timezone.utc)).total_seconds())"
        ),
        true,
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no retention: {out}"))
}

#[test]
fn hiding_a_kept_set_or_locking_an_object_longer_changes_nothing_the_night_keeps() {
    let bucket = new_lock_bucket(None);
    let mut fx = node_with_bucket(&bucket, "lock_days = 2\nremote_limit = 2");
    let a = "20261206020000";
    let first = night(&mut fx, a, "");
    assert_eq!(first.code, 0, "{}", first.all_output());
    let data = format!("cvp.{a}.tgz");
    let version = versions(&bucket)
        .into_iter()
        .find(|(key, _, marker)| *key == data && !marker)
        .map(|(_, id, _)| id)
        .expect("the data file's version");
    // With the node's key: hide the data file behind a delete marker, and lock the claim an
    // hour ahead (longer than any night would ask).
    weed().boto3(
        &format!(
            "import datetime\n\
             s3.delete_object(Bucket='{bucket}', Key='{PREFIX}/{data}')\n\
             later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)\n\
             s3.put_object_retention(Bucket='{bucket}', Key='{PREFIX}/.cvp-backup-copy-owner', \
             Retention={{'Mode': 'COMPLIANCE', 'RetainUntilDate': later}})"
        ),
        false,
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = version_seconds_locked(&bucket, &data, &version);
    let b = "20261207020000";
    let second = night(&mut fx, b, "");
    // Neither stops the night: the hidden version is extended, the longer lock left as it is.
    assert_eq!(second.code, 0, "{}", second.all_output());
    let log = second.all_output();
    assert!(
        log.contains("sets hidden or written over since the node wrote them")
            && log.contains(&data),
        "{log}"
    );
    let after = version_seconds_locked(&bucket, &data, &version);
    assert!(
        after > before + 1.0,
        "the hidden version extended: {before} -> {after}"
    );
    // Its checksum file and manifest are no leftovers: they stay, and so does the version.
    let names = weed().names(&bucket, PREFIX);
    assert!(names.contains(&format!("{data}.sha256")), "{names:?}");
    assert!(names.contains(&format!("cvp.{a}.set.sha256")), "{names:?}");
    assert!(versions(&bucket)
        .iter()
        .any(|(key, id, _)| *key == data && *id == version));
}

#[test]
fn in_a_versioned_bucket_sets_the_node_pruned_are_no_attack_and_fetch_reads_the_current_set() {
    // Versions kept, no lock_days: the node's pruning leaves delete markers over what it
    // pruned; the newest set is as the node wrote it.
    let bucket = new_lock_bucket(None);
    let mut fx = node_with_bucket(&bucket, "remote_limit = 1");
    let (a, b) = ("20261208020000", "20261209020000");
    for stamp in [a, b] {
        let ran = night(&mut fx, stamp, "");
        assert_eq!(ran.code, 0, "{}", ran.all_output());
    }
    assert!(
        versions(&bucket)
            .iter()
            .any(|(key, _, marker)| *marker && key.contains(a)),
        "pruning left a delete marker"
    );
    let rebuilt = fx.root.path().join("rebuilt");
    let fetch = run(
        &fx,
        &[
            "fetch",
            "latest",
            "--destination",
            "offsite",
            "--to",
            rebuilt.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert!(
        !fetch.stdout.contains("from the versions"),
        "{}",
        fetch.stdout
    );
    assert!(rebuilt.join(format!("cvp.{b}.tgz")).exists());
    // The pruned set, asked for by its stamp, comes back from the versions.
    let older = fx.root.path().join("older");
    let fetch = run(
        &fx,
        &[
            "fetch",
            a,
            "--destination",
            "offsite",
            "--to",
            older.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert_eq!(
        std::fs::read(older.join(format!("cvp.{a}.tgz"))).expect("fetched"),
        std::fs::read(fx.local_path(&format!("cvp.{a}.tgz"))).expect("local")
    );
}
