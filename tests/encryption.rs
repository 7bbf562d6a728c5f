//! Encryption at rest (`encrypt_to`): what the server holds opens with the stock `age` tool
//! (Debian's package), and `fetch --identity` opens what the stock tool encrypted.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const DATA: &str = "cvp.20240101020010.tgz";
const IMAGES: &str = "cvp.eosimages.20240101020005.tgz";
const LOG: &str = "backup_cvp.20240101020003.log";

/// An X25519 identity made by `keygen --age-identity` (its recipient as printed), and an
/// ssh-ed25519 key pair made by ssh-keygen.
struct Keys {
    age_identity: PathBuf,
    age_recipient: String,
    ssh_private: PathBuf,
    ssh_public: String,
}

fn keys(dir: &Path) -> Keys {
    let age_identity = dir.join("backup-identity.txt");
    let out = Command::new(bin())
        .args(["keygen", "--age-identity"])
        .arg(&age_identity)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let age_recipient = stdout
        .trim()
        .strip_prefix("encrypt_to = ")
        .unwrap_or_else(|| panic!("a recipient line: {stdout}"))
        .to_string();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("losing it loses every backup"),
        "the warning"
    );
    let ssh_private = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f"])
        .arg(&ssh_private)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let ssh_public = std::fs::read_to_string(dir.join("id_ed25519.pub"))
        .expect("public key")
        .trim()
        .to_string();
    Keys {
        age_identity,
        age_recipient,
        ssh_private,
        ssh_public,
    }
}

/// The age recipient directly, the SSH key through a recipients file.
fn encrypting_fixture(extra: &str) -> (Fixture, Keys) {
    let mut fx = Fixture::new();
    let keys = keys(fx.root.path());
    let recipients = fx.root.path().join("recipients.txt");
    std::fs::write(
        &recipients,
        format!("# the ops team\n{}\n", keys.ssh_public),
    )
    .expect("write");
    fx.server_extra = format!(
        "encrypt_to = {}, @{}\n{extra}",
        keys.age_recipient,
        recipients.display()
    );
    fx.write_ini();
    (fx, keys)
}

fn stock_age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("age");
    assert!(
        out.status.success(),
        "age -d {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tool(fx: &Fixture, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--ini").arg(&fx.ini);
    cmd.env_remove("CVP_BACKUP_COPY_INI");
    cmd.env(
        "CVP_BACKUP_COPY_ROOT_CRONTAB",
        fx.root.path().join("no-crontab"),
    );
    run_captured(&mut cmd, fx.root.path())
}

#[test]
fn the_server_only_holds_age_files_that_stock_age_opens_with_either_key() {
    let (fx, keys) = encrypting_fixture("");
    let set = [
        (DATA, fx.seed(DATA, 300_000)),
        (IMAGES, fx.seed(IMAGES, 65_536 * 3)),
        (LOG, fx.seed(LOG, 0)),
    ];
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let mut remote = fx.remote_names();
    remote.retain(|n| !n.starts_with(".cvp-backup-copy-owner"));
    remote.sort();
    let mut expected: Vec<String> = set
        .iter()
        .flat_map(|(name, _)| [format!("{name}.age"), format!("{name}.age.sha256")])
        .chain(["cvp.20240101020010.set.sha256".to_string()])
        .collect();
    expected.sort();
    assert_eq!(remote, expected, "no plain name on the server");
    // sha256sum -c on the server checks the ciphertext (sidecars and the set's manifest).
    fx.assert_remote_checksums_verify();
    let manifest =
        std::fs::read_to_string(fx.dest.join("cvp.20240101020010.set.sha256")).expect("manifest");
    assert!(
        manifest.contains("  cvp.20240101020010.tgz.age\n"),
        "{manifest}"
    );
    for (name, bytes) in &set {
        let sealed = fx.dest.join(format!("{name}.age"));
        let on_server = std::fs::read(&sealed).expect("remote");
        assert!(
            on_server.starts_with(b"age-encryption.org/v1\n"),
            "{name} is an age file"
        );
        assert!(
            bytes.len() < 64 || !on_server.windows(64).any(|w| w == &bytes[..64]),
            "{name}: no plaintext on the server"
        );
        assert!(
            stock_age_decrypt(&keys.age_identity, &sealed) == *bytes,
            "{name}: X25519"
        );
        assert!(
            stock_age_decrypt(&keys.ssh_private, &sealed) == *bytes,
            "{name}: ssh-ed25519"
        );
    }

    // The weekly read-back: without the identity only the ciphertext's sha256 (and it says
    // so); with it, every chunk authenticated and the archives walked.
    let blind = fx.run(&["verify", "--read-data"]);
    assert_eq!(blind.code, 0, "{}", blind.all_output());
    assert!(
        blind.stdout.contains("its ciphertext's sha256 only"),
        "{}",
        blind.stdout
    );
    let identity = keys.ssh_private.to_str().expect("utf-8");
    let seeing = fx.run(&["verify", "--read-data", "--identity", identity]);
    assert_eq!(seeing.code, 0, "{}", seeing.all_output());
    assert_eq!(
        seeing.stdout.matches("every chunk authenticated").count(),
        3,
        "{}",
        seeing.stdout
    );
    assert_eq!(
        seeing.stdout.matches("a whole archive (").count(),
        2,
        "{}",
        seeing.stdout
    );

    // The next night finds the set there, encrypted, and uploads nothing again.
    let again = fx.run(&["--no-backup", "-v"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    let text = again.all_output();
    assert!(
        text.contains("already on the remote as cvp.20240101020010.tgz.age"),
        "{text}"
    );
    assert!(text.contains("uploaded=0"), "{text}");

    // An encrypted copy altered on the server (its checksum file rewritten to match) is not
    // what this node sent: it goes again.
    let sealed = fx.dest.join(format!("{DATA}.age"));
    let mut bytes = std::fs::read(&sealed).expect("sealed");
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&sealed, &bytes).expect("truncate");
    write_sidecar(&sealed);
    let again = fx.run(&["--no-backup", "-v"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert!(
        again
            .all_output()
            .contains("(the encrypted copy is not what this node sent)"),
        "{}",
        again.all_output()
    );
    assert!(stock_age_decrypt(&keys.age_identity, &sealed) == set[0].1);

    // Other recipients: every file goes again, encrypted to them only.
    let mut fx = fx;
    fx.server_extra = format!("encrypt_to = {}\n", keys.age_recipient);
    fx.write_ini();
    let again = fx.run(&["--no-backup", "-v"]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert!(
        again.all_output().contains("uploaded=3"),
        "{}",
        again.all_output()
    );
    assert!(
        again
            .all_output()
            .contains("(the encrypted copy is not one this node sent to these recipients)"),
        "{}",
        again.all_output()
    );
    fx.assert_remote_checksums_verify();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&keys.ssh_private)
        .arg(&sealed)
        .output()
        .expect("age");
    assert!(
        !out.status.success(),
        "the SSH key is no longer a recipient"
    );

    // `check` says who can read the backups; `list` shows the files as encrypted.
    let check = tool(&fx, &["check"]);
    assert!(
        check
            .stdout
            .contains("every file on the server is encrypted (age) to 1 recipient: age1"),
        "{}",
        check.all_output()
    );
    let list = tool(&fx, &["list"]);
    assert_eq!(list.code, 0, "{}", list.all_output());
    assert!(list.stdout.contains("encrypted (.age)"), "{}", list.stdout);
}

#[test]
fn a_large_file_over_parallel_streams_decrypts_byte_identically_both_ways() {
    let (fx, keys) = encrypting_fixture("streams = 4\n");
    // Above the 64 MiB threshold, not a whole number of age chunks.
    let data = fx.seed(DATA, 70 * 1024 * 1024 + 12_345);
    let images = fx.seed(IMAGES, 10_000);
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // Three streams: the images file takes the fourth connection alongside.
    assert!(
        run.all_output()
            .contains("cvp.20240101020010.tgz.age: uploading 73412665 bytes over 3 streams"),
        "{}",
        run.all_output()
    );
    let sealed = fx.dest.join(format!("{DATA}.age"));
    assert!(
        stock_age_decrypt(&keys.age_identity, &sealed) == data,
        "stock age"
    );
    let into = fx.root.path().join("rebuilt");
    let identity = keys.age_identity.to_str().expect("utf-8");
    let fetch = tool(
        &fx,
        &[
            "fetch",
            "--identity",
            identity,
            "--to",
            into.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert!(
        fetch.stdout.contains("every chunk authenticated"),
        "{}",
        fetch.stdout
    );
    let mut names = file_names(&into);
    names.sort();
    assert_eq!(
        names,
        [DATA, IMAGES],
        "final names only, no .age, no partials"
    );
    assert!(std::fs::read(into.join(DATA)).expect("data") == data);
    assert!(std::fs::read(into.join(IMAGES)).expect("images") == images);

    // Over one stream (what `auto` picks on a short round trip) the ciphertext is decrypted
    // in order from memory and never written: same plaintext, no partial of either kind.
    fx.set_in_ini("streams", "1");
    let one = fx.root.path().join("one-stream");
    let one_arg = one.to_str().expect("utf-8");
    let fetch = tool(&fx, &["fetch", "--identity", identity, "--to", one_arg]);
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert!(
        fetch.stdout.contains("every chunk authenticated"),
        "{}",
        fetch.stdout
    );
    assert!(std::fs::read(one.join(DATA)).expect("data") == data);
    let mut names = file_names(&one);
    names.sort();
    assert_eq!(names, [DATA, IMAGES]);

    // Cut at a chunk boundary in the middle, with its checksum file made to match: every
    // chunk left authenticates but the last one is not sealed as the last; refused, and
    // nothing of it is left.
    let mut bytes = std::fs::read(&sealed).expect("sealed");
    let payload = bytes.len() - (data.len() / 65_536 + 1) * 16 - data.len();
    bytes.truncate(payload + 600 * (65_536 + 16));
    std::fs::write(&sealed, &bytes).expect("cut");
    write_sidecar(&sealed);
    // Someone with access to the server would mend the set's manifest too.
    let manifest = fx.dest.join("cvp.20240101020010.set.sha256");
    let sidecar =
        std::fs::read_to_string(fx.dest.join(format!("{DATA}.age.sha256"))).expect("sidecar");
    let mended: String = std::fs::read_to_string(&manifest)
        .expect("manifest")
        .lines()
        .map(|line| {
            if line.ends_with(&format!("  {DATA}.age")) {
                format!("{}\n", sidecar.trim_end())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&manifest, mended).expect("manifest");
    let cut = fx.root.path().join("cut");
    let cut_arg = cut.to_str().expect("utf-8");
    let run = tool(&fx, &["fetch", "--identity", identity, "--to", cut_arg]);
    assert_ne!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stderr.contains("does not authenticate") && run.stderr.contains("not fetched"),
        "{}",
        run.stderr
    );
    let left = file_names(&cut);
    assert!(
        !left.iter().any(|n| n == DATA || n.contains("cvpbc-part")),
        "a cut file never gets a name: {left:?}"
    );
}

/// Put `name` on the server as the stock `age` encrypted it, with its sidecar.
fn stock_age_upload(fx: &Fixture, recipient: &str, name: &str, bytes: &[u8]) {
    let plain = fx.root.path().join(format!("plain-{name}"));
    std::fs::write(&plain, bytes).expect("write");
    let sealed = fx.dest.join(format!("{name}.age"));
    let status = Command::new("age")
        .arg("-r")
        .arg(recipient)
        .arg("-o")
        .arg(&sealed)
        .arg(&plain)
        .status()
        .expect("age");
    assert!(status.success());
    write_sidecar(&sealed);
}

fn write_sidecar(file: &Path) {
    let out = Command::new("sha256sum")
        .arg(file.file_name().expect("name"))
        .current_dir(file.parent().expect("dir"))
        .output()
        .expect("sha256sum");
    let mut sidecar = file.as_os_str().to_owned();
    sidecar.push(".sha256");
    std::fs::write(sidecar, out.stdout).expect("sidecar");
}

#[test]
fn fetch_opens_what_stock_age_encrypted_and_refuses_what_it_cannot_open_leaving_nothing() {
    let (fx, keys) = encrypting_fixture("");
    fx.make_remote_dir();
    let data = random_bytes(200_000);
    let images = random_bytes(70_000);
    stock_age_upload(&fx, &keys.age_recipient, DATA, &data);
    stock_age_upload(&fx, &keys.age_recipient, IMAGES, &images);
    let into = fx.root.path().join("rebuilt");
    let into_arg = into.to_str().expect("utf-8");

    // Without --identity: refused before anything is written, exit 3.
    let refused = tool(&fx, &["fetch", "--to", into_arg]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(refused.stderr.contains("--identity"), "{}", refused.stderr);
    assert_eq!(
        file_names(&into),
        Vec::<String>::new(),
        "nothing left behind"
    );

    // With the identity the stock tool's files decrypt; an SSH key of the wrong person does not.
    let identity = keys.age_identity.to_str().expect("utf-8");
    let fetched = tool(&fx, &["fetch", "--identity", identity, "--to", into_arg]);
    assert_eq!(fetched.code, 0, "{}", fetched.all_output());
    assert!(std::fs::read(into.join(DATA)).expect("data") == data);
    assert!(std::fs::read(into.join(IMAGES)).expect("images") == images);
    let elsewhere = fx.root.path().join("elsewhere");
    let wrong = tool(
        &fx,
        &[
            "fetch",
            "--identity",
            keys.ssh_private.to_str().expect("utf-8"),
            "--to",
            elsewhere.to_str().expect("utf-8"),
        ],
    );
    assert_ne!(wrong.code, 0, "{}", wrong.all_output());
    assert!(
        wrong.stderr.contains("does not open this file"),
        "{}",
        wrong.stderr
    );
    assert_eq!(file_names(&elsewhere), Vec::<String>::new());

    // A flipped byte in the payload, with its checksum file made to match (someone with
    // access to the server): age's authentication refuses it and no final name is written.
    let sealed = fx.dest.join(format!("{DATA}.age"));
    let mut bytes = std::fs::read(&sealed).expect("sealed");
    let near_end = bytes.len() - 100;
    bytes[near_end] ^= 0x01;
    std::fs::write(&sealed, &bytes).expect("tamper");
    write_sidecar(&sealed);
    let tampered = fx.root.path().join("tampered");
    let run = tool(
        &fx,
        &[
            "fetch",
            "--identity",
            identity,
            "--to",
            tampered.to_str().expect("utf-8"),
        ],
    );
    assert_ne!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stderr.contains("does not authenticate"),
        "{}",
        run.stderr
    );
    let left = file_names(&tampered);
    assert!(
        !left.iter().any(|n| n == DATA || n.contains("cvpbc-part")),
        "a file that does not authenticate never gets a name: {left:?}"
    );
}

#[test]
fn a_destination_with_sets_from_before_and_after_encryption_is_listed_fetched_and_pruned() {
    // A plain set from before encryption was turned on.
    let mut fx = Fixture::new();
    let old = [
        (
            "cvp.20240101020010.tgz",
            fx.seed("cvp.20240101020010.tgz", 5_000),
        ),
        (IMAGES, fx.seed(IMAGES, 4_000)),
    ];
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(fx.dest.join("cvp.20240101020010.tgz").exists());
    // Gone from the node since (local retention): the server's copy is the only one.
    std::fs::remove_file(fx.local_path("cvp.20240101020010.tgz")).expect("rm");

    // Encryption on: the plain set is not uploaded again; the new one goes encrypted.
    let keys = keys(fx.root.path());
    fx.server_extra = format!("encrypt_to = {}\nremote_limit = 2\n", keys.age_recipient);
    fx.write_ini();
    let new = fx.seed("cvp.20240102020010.tgz", 6_000);
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(fx.dest.join("cvp.20240102020010.tgz.age").exists());
    assert!(
        !fx.dest.join("cvp.20240102020010.tgz").exists(),
        "{:?}",
        fx.remote_names()
    );
    assert!(fx.dest.join("cvp.20240101020010.tgz").exists());
    fx.assert_remote_checksums_verify();
    let list = tool(&fx, &["list"]);
    assert_eq!(list.code, 0, "{}", list.all_output());
    let row = |data: &str| {
        list.stdout
            .lines()
            .find(|l| l.contains(&format!("data   {data}")))
            .unwrap_or_else(|| panic!("{}", list.stdout))
            .to_string()
    };
    assert!(
        row("cvp.20240102020010.tgz").contains("encrypted (.age)"),
        "{}",
        list.stdout
    );
    assert!(
        row("cvp.20240101020010.tgz").contains("sha256 file present (remote only"),
        "{}",
        list.stdout
    );

    // The new set is all encrypted: its images file went again, as .age, beside the plain
    // copy the older set's manifest lists.
    assert!(fx.dest.join(format!("{IMAGES}.age")).exists());
    assert!(fx.dest.join(IMAGES).exists());
    // Both restore. The old set is plain: with encrypt_to set that takes --allow-plain (a
    // plain file where an encrypted one is expected may be a server's substitute).
    let plain_into = fx.root.path().join("old");
    let into = plain_into.to_str().expect("utf-8");
    let refused = tool(&fx, &["fetch", "20240101020010", "--to", into]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(
        refused.stderr.contains("--allow-plain"),
        "{}",
        refused.stderr
    );
    assert_eq!(file_names(&plain_into), Vec::<String>::new());
    let fetch = tool(
        &fx,
        &["fetch", "20240101020010", "--allow-plain", "--to", into],
    );
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    for (name, bytes) in &old {
        assert!(std::fs::read(plain_into.join(name)).expect("fetched") == *bytes);
    }
    let new_into = fx.root.path().join("new");
    let fetch = tool(
        &fx,
        &[
            "fetch",
            "latest",
            "--identity",
            keys.age_identity.to_str().expect("utf-8"),
            "--to",
            new_into.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert!(std::fs::read(new_into.join("cvp.20240102020010.tgz")).expect("new") == new);
    assert!(std::fs::read(new_into.join(IMAGES)).expect("images") == old[1].1);
    assert!(
        fetch.stdout.contains(&format!("{IMAGES}.age: fetched")),
        "{}",
        fetch.stdout
    );

    // A third set: remote_limit = 2 prunes the oldest (plain) data file and its checksum.
    fx.seed("cvp.20240103020010.tgz", 7_000);
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let remote = fx.remote_names();
    assert!(
        !remote
            .iter()
            .any(|n| n.starts_with("cvp.20240101020010.tgz")),
        "{remote:?}\n{}",
        run.all_output()
    );
    for kept in ["cvp.20240102020010.tgz.age", "cvp.20240103020010.tgz.age"] {
        assert!(remote.iter().any(|n| n == kept), "{kept}: {remote:?}");
        assert!(
            remote.iter().any(|n| *n == format!("{kept}.sha256")),
            "{remote:?}"
        );
    }
    fx.assert_remote_checksums_verify();
}

#[test]
fn new_recipients_keep_the_older_sets_restorable_with_both_identities() {
    let mut fx = Fixture::new();
    let old_keys = keys(fx.root.path());
    fx.server_extra = format!("encrypt_to = {}\n", old_keys.age_recipient);
    fx.write_ini();
    let old_data = fx.seed(DATA, 50_000);
    let images = fx.seed(IMAGES, 40_000);
    let run = fx.run(&["--no-backup"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    std::fs::remove_file(fx.local_path(DATA)).expect("rm");

    // The key is rotated: the next set (which shares the images file) goes to the new one.
    let new_dir = fx.root.path().join("new-key");
    std::fs::create_dir(&new_dir).expect("dir");
    let new_keys = keys(&new_dir);
    fx.server_extra = format!("encrypt_to = {}\n", new_keys.age_recipient);
    fx.write_ini();
    fx.seed("cvp.20240102020010.tgz", 60_000);
    let run = fx.run(&["--no-backup", "-v"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // The older set's manifest follows its images file's new encryption.
    assert!(
        run.all_output()
            .contains("cvp.20240101020010.set.sha256: now lists the new sha256 of"),
        "{}",
        run.all_output()
    );
    fx.assert_remote_checksums_verify();

    // The older set: its data to the old key, its images now to the new one.
    let into = fx.root.path().join("older");
    let into_arg = into.to_str().expect("utf-8");
    let old_identity = old_keys.age_identity.to_str().expect("utf-8");
    let new_identity = new_keys.age_identity.to_str().expect("utf-8");
    let one = tool(
        &fx,
        &[
            "fetch",
            "20240101020010",
            "--identity",
            old_identity,
            "--to",
            into_arg,
        ],
    );
    assert_ne!(one.code, 0, "{}", one.all_output());
    assert!(!into.join(IMAGES).exists() || std::fs::read(into.join(IMAGES)).expect("x") == images);
    let both = tool(
        &fx,
        &[
            "fetch",
            "20240101020010",
            "--identity",
            old_identity,
            "--identity",
            new_identity,
            "--to",
            into_arg,
        ],
    );
    assert_eq!(both.code, 0, "{}", both.all_output());
    assert!(std::fs::read(into.join(DATA)).expect("data") == old_data);
    assert!(std::fs::read(into.join(IMAGES)).expect("images") == images);
}
