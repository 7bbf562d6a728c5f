//! Object storage and several destinations, against real servers: SeaweedFS (`weed mini`)
//! as the S3 server beside the harness's OpenSSH sshd, boto3 and `sha256sum -c` as the
//! peers that read what the tool wrote, the TCP proxy for cuts and stalls.

mod common;

use common::proxy::{Fault, Proxy};
use common::weed::{self, new_bucket, weed};
use common::*;

const PREFIX: &str = "nodes/cvp1";

/// A node whose `main` is the sshd and whose `offsite` is a bucket (`extra`: more options).
fn two_destinations(bucket: &str, extra: &str) -> Fixture {
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--images --size 20000000".into();
    fx.extra_sections = fx.s3_section("offsite", &weed().endpoint(), bucket, extra);
    fx.write_ini();
    fx
}

fn record(fx: &Fixture) -> serde_json::Value {
    let text = std::fs::read_to_string(fx.state_dir.join("last-run.json")).expect("record");
    serde_json::from_str(&text).expect("record json")
}

fn offsite_record(fx: &Fixture) -> serde_json::Value {
    record(fx)["extra"]
        .as_array()
        .and_then(|extra| extra.iter().find(|e| e["destination_name"] == "offsite"))
        .cloned()
        .expect("the offsite destination's part of the record")
}

/// The newest data backup on the node (not a failed one set aside).
fn newest_data(fx: &Fixture) -> String {
    fx.local_names()
        .into_iter()
        .filter(|n| n.starts_with("cvp.2") && n.ends_with(".tgz"))
        .max()
        .expect("a data backup on the node")
}

fn assert_no_secret(fx: &Fixture, run: &Run) {
    let all = run.all_output();
    assert!(!all.contains(weed::NODE_SECRET), "secret leaked: {all}");
    assert!(!all.contains(TEST_PASSWORD), "password leaked: {all}");
    let record = std::fs::read_to_string(fx.state_dir.join("last-run.json")).unwrap_or_default();
    assert!(!record.contains(weed::NODE_SECRET));
}

/// The newest set on the node is complete in the bucket: every member with its sidecar and
/// the manifest, downloaded by boto3 and checked by `sha256sum -c`, bytes as on the node.
fn assert_newest_set_in_bucket(fx: &Fixture, bucket: &str) {
    let data = newest_data(fx);
    let names = weed().names(bucket, PREFIX);
    let manifest = data.replace(".tgz", ".set.sha256");
    for wanted in [&data, &format!("{data}.sha256"), &manifest] {
        assert!(
            names.contains(wanted),
            "{wanted} not in the bucket: {names:?}"
        );
    }
    let to = tempfile::tempdir().expect("download dir");
    let checked = weed().download_and_check(bucket, PREFIX, to.path());
    assert!(checked.contains(&format!("{data}: OK")), "{checked}");
    assert_eq!(
        std::fs::read(to.path().join(&data)).expect("downloaded"),
        std::fs::read(fx.local_path(&data)).expect("local"),
    );
}

#[test]
fn every_night_goes_to_sftp_and_s3_side_by_side_and_any_s3_client_restores_it() {
    let bucket = new_bucket();
    let metrics = tempfile::tempdir().expect("metrics dir");
    let mut fx = two_destinations(&bucket, "");
    fx.backup_extra = format!("metrics_dir = {}", metrics.path().display());
    fx.write_ini();
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert_no_secret(&fx, &run);
    // Both destinations complete: the sshd's folder and the bucket.
    fx.assert_remote_checksums_verify();
    assert_newest_set_in_bucket(&fx, &bucket);
    // Messages of the bucket's copy say which destination they are about.
    assert!(
        run.syslog
            .iter()
            .any(|l| l.contains("[offsite]") && l.contains("copied and verified")),
        "{:?}",
        run.syslog
    );
    let offsite = offsite_record(&fx);
    assert_eq!(offsite["exit_code"], 0);
    assert!(offsite["recovery_point"].as_str().is_some(), "{offsite}");
    assert!(offsite["destination"]
        .as_str()
        .is_some_and(|d| d.starts_with(&format!("s3://{bucket}/{PREFIX}@127.0.0.1:"))));
    // One sample per destination, under one HELP line.
    let prom = std::fs::read_to_string(metrics.path().join("cvp_backup_copy.prom")).expect("prom");
    let exit_lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("cvp_backup_copy_last_exit_code{"))
        .collect();
    assert_eq!(exit_lines.len(), 2, "{prom}");
    assert!(exit_lines.iter().any(|l| l.contains("s3://")), "{prom}");
    assert_eq!(
        prom.matches("# HELP cvp_backup_copy_last_exit_code ")
            .count(),
        1,
        "{prom}"
    );
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(nagios.code, 0, "{}", nagios.stdout);
    assert!(
        nagios.stdout.contains("2 destinations (main, offsite)"),
        "{}",
        nagios.stdout
    );

    // `fetch --destination offsite` restores the set from the bucket alone.
    let restore = tempfile::tempdir().expect("restore dir");
    let to = restore.path().join("from-s3");
    let fetch = fx.run(&[
        "fetch",
        "--destination",
        "offsite",
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    let data = newest_data(&fx);
    assert_eq!(
        std::fs::read(to.join(&data)).expect("fetched"),
        std::fs::read(fx.local_path(&data)).expect("local")
    );
    assert!(
        fetch.stdout.contains("cvpi restore cvp"),
        "{}",
        fetch.stdout
    );
    // `list --destination offsite` reads the bucket.
    let list = fx.run(&["list", "--destination", "offsite"]);
    assert_eq!(list.code, 0, "{}", list.all_output());
    assert!(
        list.stdout.contains(&data) && list.stdout.contains("local+remote"),
        "{}",
        list.stdout
    );
    let unknown = fx.run(&["list", "--destination", "ofsite"]);
    assert_eq!(unknown.code, 3, "{}", unknown.all_output());
    assert!(
        unknown.stderr.contains("did you mean `offsite`?"),
        "{}",
        unknown.stderr
    );
}

/// cvpi says success but a byte in the middle of its 20 MB archive changed: the hashing pass
/// finds it half way, the multipart upload is aborted, and neither the bucket nor the sshd
/// gets tonight's archives; the set before stays whole in both, and a read-back of the
/// bucket proves it.
#[test]
fn a_damaged_archive_reaches_no_destination_and_its_multipart_upload_is_aborted() {
    let bucket = new_bucket();
    let mut fx = two_destinations(&bucket, "");
    let good = fx.run(&[]);
    assert_eq!(good.code, 0, "{}", good.all_output());
    let previous = newest_data(&fx);
    fx.cvpi_flags = "--images --size 20000000 --damage flip".into();
    fx.write_ini();
    let damaged = fx.run(&[]);
    assert_eq!(damaged.code, 1, "{}", damaged.all_output());
    assert!(
        damaged.all_output().contains("fails its gzip CRC-32"),
        "{}",
        damaged.all_output()
    );
    let aside: Vec<String> = fx
        .local_names()
        .into_iter()
        .filter(|n| n.ends_with(".tgz.failed"))
        .collect();
    assert_eq!(aside.len(), 2, "data and images set aside: {aside:?}");
    let in_bucket = weed().names(&bucket, PREFIX);
    let on_sshd = fx.remote_names();
    for name in &aside {
        let name = name.trim_end_matches(".failed");
        assert!(
            !in_bucket.iter().any(|n| n.starts_with(name)),
            "{in_bucket:?}"
        );
        assert!(!on_sshd.iter().any(|n| n.starts_with(name)), "{on_sshd:?}");
    }
    assert!(
        weed().uploads(&bucket, PREFIX).is_empty(),
        "no unfinished upload left: {:?}",
        weed().uploads(&bucket, PREFIX)
    );
    assert_eq!(newest_data(&fx), previous);
    assert_newest_set_in_bucket(&fx, &bucket);
    fx.assert_remote_checksums_verify();
    let read_back = fx.run(&["verify", "--destination", "offsite", "--read-data"]);
    assert_eq!(read_back.code, 0, "{}", read_back.all_output());
    assert!(
        read_back
            .stdout
            .contains(&format!("[ok  ] {previous}: read back"))
            && read_back.stdout.contains("a whole archive ("),
        "{}",
        read_back.stdout
    );
    assert_eq!(offsite_record(&fx)["last_verify"]["exit_code"], 0);
}

#[test]
fn a_destination_that_is_down_fails_the_night_but_not_the_other_and_never_costs_a_local_set() {
    let bucket = new_bucket();
    // The bucket's endpoint is a proxy: gone on the second night, back on the third.
    let proxy = Proxy::start(weed().port, Fault::Pass);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut fx = Fixture::new();
    let metrics = tempfile::tempdir().expect("metrics dir");
    fx.backup_extra = format!("metrics_dir = {}", metrics.path().display());
    fx.cvpi_flags = "--images --size 20000000".into();
    fx.extra_sections = fx.s3_section("offsite", &endpoint, &bucket, "retries = 0");
    let write = |fx: &Fixture| {
        std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 1")).expect("ini")
    };
    write(&fx);
    // Night 1: both up.
    let first = fx.run(&[]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    let first_set = newest_data(&fx);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The history is lost (damaged, deleted as its error says): the record still tells
    // what each destination verified.
    std::fs::remove_file(fx.state_dir.join("history.json")).expect("history");
    // Night 2: the bucket's endpoint is down.
    let port = proxy.port;
    drop(proxy);
    let second = fx.run(&[]);
    assert_eq!(second.code, 4, "{}", second.all_output());
    assert!(
        second.stderr.contains("cannot connect"),
        "{}",
        second.stderr
    );
    let second_set = newest_data(&fx);
    assert_ne!(first_set, second_set);
    // main has tonight's set; the node keeps the set the bucket has (limit 1, plus it).
    assert!(fx.remote_names().contains(&second_set));
    fx.assert_remote_checksums_verify();
    let local = fx.local_names();
    assert!(
        local.contains(&first_set),
        "the bucket's newest set was pruned: {local:?}"
    );
    assert!(local.contains(&second_set), "{local:?}");
    assert!(
        second
            .syslog
            .iter()
            .any(|l| l.contains("pruning of the node is held back for destination offsite")),
        "{:?}",
        second.syslog
    );
    // Both destinations reported: main fine, offsite failed, the run's code the worst.
    let rec = record(&fx);
    assert_eq!(rec["exit_code"], 4);
    assert_eq!(rec["destination_exit_code"], 0);
    let offsite = offsite_record(&fx);
    assert_eq!(offsite["exit_code"], 4);
    assert_eq!(offsite["recovery_point"].as_str(), Some(first_set.as_str()));
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(nagios.code, 2, "{}", nagios.stdout);
    assert!(
        nagios
            .stdout
            .starts_with("CVP_BACKUP_COPY CRITICAL - destination offsite:"),
        "{}",
        nagios.stdout
    );
    let status = fx.run(&["status"]);
    assert!(
        status.stdout.contains("destination offsite:"),
        "{}",
        status.stdout
    );
    // Night 3: back up. Both have the newest set; the node is pruned to limit.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let _proxy = Proxy::start_on(port, weed().port, Fault::Pass);
    let third = fx.run(&[]);
    assert_eq!(third.code, 0, "{}", third.all_output());
    assert_newest_set_in_bucket(&fx, &bucket);
    let local = fx.local_names();
    assert!(!local.contains(&first_set), "{local:?}");
    let nagios = fx.run(&["status", "--nagios"]);
    assert_eq!(nagios.code, 0, "{}", nagios.stdout);
}

#[test]
fn a_cut_in_the_middle_of_a_large_upload_resumes_without_sending_finished_parts_again() {
    let bucket = new_bucket();
    let proxy = Proxy::start(weed().port, Fault::CutAfter(20_000_000));
    let mut fx = Fixture::new();
    // 60 MB: 8 parts of 8 MiB; two at a time, each connection cut after 20 MB.
    fx.cvpi_flags = "--size 60000000".into();
    fx.extra_sections = fx.s3_section(
        "offsite",
        &format!("http://127.0.0.1:{}", proxy.port),
        &bucket,
        "retries = 0\nstreams = 2",
    );
    fx.write_ini();
    let cut = fx.run(&[]);
    assert_eq!(cut.code, 5, "{}", cut.all_output());
    let data = newest_data(&fx);
    // Nothing under the final name; the finished parts wait in an unfinished upload.
    assert!(!weed().names(&bucket, PREFIX).contains(&data));
    let uploads = weed().uploads(&bucket, PREFIX);
    let finished = uploads
        .iter()
        .find(|(key, _)| *key == data)
        .map(|(_, parts)| *parts)
        .unwrap_or_else(|| panic!("no unfinished upload of {data}: {uploads:?}"));
    assert!(finished >= 2, "{uploads:?}");
    // The next night (the link is whole again) sends only the rest.
    proxy.set_default(Fault::Pass);
    let resumed = fx.run(&["--no-backup"]);
    assert_eq!(resumed.code, 0, "{}", resumed.all_output());
    let said = format!("resuming the upload: {finished} of 8 parts are on the server");
    assert!(
        resumed.syslog.iter().any(|l| l.contains(&said)),
        "{said}: {:?}",
        resumed.syslog
    );
    assert_newest_set_in_bucket(&fx, &bucket);
    assert!(weed().uploads(&bucket, PREFIX).is_empty());
}

#[test]
fn a_stalled_upload_times_out_and_leaves_no_object() {
    let bucket = new_bucket();
    let proxy = Proxy::start(weed().port, Fault::Pass);
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--size 30000000".into();
    fx.extra_sections = fx.s3_section(
        "offsite",
        &format!("http://127.0.0.1:{}", proxy.port),
        &bucket,
        "retries = 0\ntimeout = 2\nstreams = 1",
    );
    fx.write_ini();
    // The claim and the listing pass; the upload's connection stalls after 1 MB.
    let first = fx.run(&[]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    proxy.set_default(Fault::StallAfter(1_000_000));
    let started = std::time::Instant::now();
    let stalled = fx.run(&[]);
    assert_eq!(stalled.code, 5, "{}", stalled.all_output());
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    let data = newest_data(&fx);
    assert!(!weed().names(&bucket, PREFIX).contains(&data));
    // main (the sshd, not behind the proxy) has it.
    assert!(fx.remote_names().contains(&data));
}

#[test]
fn wrong_keys_a_missing_bucket_a_refused_request_and_a_dead_endpoint_are_clear_exit_4s() {
    let bucket = new_bucket();
    let fx = Fixture::new();
    let s3_only = |fx: &Fixture, endpoint: &str, bucket: &str, secret: &str| {
        let token = python_encrypt(&fx.key_file, secret);
        let ini = format!(
            "[Server_Settings]\nuser = {}\nserver = {endpoint}\npassword = {token}\n\
             keyFile = {}\ndestination = s3://{bucket}/{PREFIX}\nretries = 0\n\
             [Backup_Settings]\nbackup_user = root\nbackup_dir = {}\nlog_dir = {}\nstate_dir = {}\n",
            weed::NODE_KEY,
            fx.key_file.display(),
            fx.backup_dir.display(),
            fx.log_dir.display(),
            fx.state_dir.display()
        );
        std::fs::write(&fx.ini, ini).expect("ini");
        fx.seed("cvp.20240101020010.tgz", 1000);
        let run = fx.run(&["--no-backup"]);
        assert_no_secret(fx, &run);
        run
    };
    let wrong = s3_only(&fx, &weed().endpoint(), &bucket, "not-the-secret");
    assert_eq!(wrong.code, 4, "{}", wrong.all_output());
    assert!(
        wrong
            .stderr
            .contains("the access key or secret key does not match"),
        "{}",
        wrong.stderr
    );
    // In the node's rights, never created.
    let missing = s3_only(
        &fx,
        &weed().endpoint(),
        weed::NEVER_CREATED,
        weed::NODE_SECRET,
    );
    assert_eq!(missing.code, 4, "{}", missing.all_output());
    assert!(
        missing
            .stderr
            .contains(&format!("no such bucket {}", weed::NEVER_CREATED)),
        "{}",
        missing.stderr
    );
    // A bucket the node has no right to.
    weed().boto3("s3.create_bucket(Bucket='cvpbc-not-ours')", true);
    let denied = s3_only(&fx, &weed().endpoint(), "cvpbc-not-ours", weed::NODE_SECRET);
    assert_eq!(denied.code, 4, "{}", denied.all_output());
    assert!(
        denied.stderr.contains("access denied") && denied.stderr.contains("the server refused"),
        "{}",
        denied.stderr
    );
    let dead = s3_only(
        &fx,
        &format!("http://127.0.0.1:{}", free_port()),
        &bucket,
        weed::NODE_SECRET,
    );
    assert_eq!(dead.code, 4, "{}", dead.all_output());
    assert!(dead.stderr.contains("cannot connect"), "{}", dead.stderr);
    // `check` says the same, per line.
    let check = fx.run(&["check"]);
    assert_ne!(check.code, 0, "{}", check.stdout);
    assert!(check.stdout.contains("[FAIL] bucket:"), "{}", check.stdout);
    // A good one: `check` passes and warns that http travels in clear.
    s3_only(&fx, &weed().endpoint(), &bucket, weed::NODE_SECRET);
    let check = fx.run(&["check"]);
    assert!(check.stdout.contains("[ok  ] bucket:"), "{}", check.stdout);
    assert!(check.stdout.contains("plain http"), "{}", check.stdout);
}

/// A TLS server that answers every request 403 AccessDenied ("tls ok"): reached only when
/// the certificate verified. Arguments: port, certificate, key.
const TLS_SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = b'<Error><Code>AccessDenied</Code><Message>tls ok</Message></Error>'
        self.send_response(403)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = answer
s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

#[test]
fn a_certificate_that_does_not_verify_points_to_ca_file() {
    let dir = tempfile::tempdir().expect("tls dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    let server = std::process::Command::new("python3")
        .args(["-c", TLS_SERVER])
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .spawn()
        .expect("python tls server");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let _server = Kill(server);
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 20,
            "the TLS server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut fx = Fixture::new();
    fx.seed("cvp.20240101020010.tgz", 1000);
    let endpoint = format!("https://127.0.0.1:{port}");
    fx.extra_sections = fx.s3_section("tls", &endpoint, "cvpbc-tls", "retries = 0");
    fx.write_ini();
    let untrusted = fx.run(&["--no-backup"]);
    assert_eq!(untrusted.code, 4, "{}", untrusted.all_output());
    assert!(untrusted.stderr.contains("ca_file"), "{}", untrusted.stderr);
    fx.extra_sections = fx.s3_section(
        "tls",
        &endpoint,
        "cvpbc-tls",
        &format!("retries = 0\nca_file = {}", cert.display()),
    );
    fx.write_ini();
    let trusted = fx.run(&["--no-backup"]);
    assert_eq!(trusted.code, 4, "{}", trusted.all_output());
    assert!(
        trusted.stderr.contains("tls ok"),
        "with ca_file the TLS handshake passes: {}",
        trusted.stderr
    );
}

#[test]
fn nights_over_two_destinations_with_remote_limit_keep_the_newest_good_set_complete_on_each() {
    let bucket = new_bucket();
    let mut fx = two_destinations(&bucket, "remote_limit = 2");
    fx.cvpi_flags = "--images --size 3000000".into();
    fx.server_extra = "remote_limit = 2".into();
    let write = |fx: &Fixture| {
        std::fs::write(&fx.ini, fx.ini_text().replace("limit = 5", "limit = 2")).expect("ini")
    };
    write(&fx);
    // An abandoned upload of an old file of ours: remote hygiene aborts it.
    weed().boto3(
        &format!(
            "u = s3.create_multipart_upload(Bucket='{bucket}', Key='{PREFIX}/cvp.20200101020010.tgz')\n\
             s3.upload_part(Bucket='{bucket}', Key='{PREFIX}/cvp.20200101020010.tgz', \
             UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1000)"
        ),
        true,
    );
    let plan = fx.run(&["--dry-run"]);
    assert!(
        plan.stdout.contains("destination offsite: copy to s3://"),
        "{}",
        plan.all_output()
    );
    for night in 0..4 {
        if night == 2 {
            // A failed backup in the middle: both destinations keep their newest good set.
            fx.cvpi_flags = "--images --size 3000000 --fail".into();
        } else {
            fx.cvpi_flags = "--images --size 3000000".into();
        }
        write(&fx);
        let run = fx.run(&[]);
        let expected = if night == 2 { 1 } else { 0 };
        assert_eq!(run.code, expected, "night {night}: {}", run.all_output());
        assert_newest_set_in_bucket(&fx, &bucket);
        fx.assert_remote_checksums_verify();
        let in_bucket = weed().names(&bucket, PREFIX);
        let data_files = in_bucket
            .iter()
            .filter(|n| n.starts_with("cvp.2") && n.ends_with(".tgz"))
            .count();
        assert!(data_files <= 2, "night {night}: {in_bucket:?}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert!(
        weed().uploads(&bucket, PREFIX).is_empty(),
        "{:?}",
        weed().uploads(&bucket, PREFIX)
    );
    let rec = record(&fx);
    assert_eq!(offsite_record(&fx)["remote_sets"], 2, "{rec}");
    assert_eq!(rec["remote_sets"], 2);
}

#[test]
fn edit_sets_a_destinations_secret_and_keygen_keeps_every_destination_decrypting() {
    let bucket = new_bucket();
    let fx = two_destinations(&bucket, "");
    // A third destination, set up by a script: server and user by --set, the secret by stdin.
    let mut cmd = fx.command(&[
        "edit",
        "--destination",
        "third",
        "--set",
        &format!("Destination third.server={}", weed().endpoint()),
        "--set",
        &format!("Destination third.user={}", weed::NODE_KEY),
        "--set",
        &format!("Destination third.destination=s3://{bucket}/third"),
        "--password-stdin",
    ]);
    cmd.env_remove("CVP_BACKUP_COPY_INI");
    let out = with_stdin(cmd, &format!("{}\n", weed::NODE_SECRET));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ini = std::fs::read_to_string(&fx.ini).expect("ini");
    assert!(ini.contains("[Destination third]"), "{ini}");
    assert!(!ini.contains(weed::NODE_SECRET), "{ini}");
    // A new key: every destination's password is encrypted again with it.
    let mut keygen = fx.command(&["keygen", "--yes", "--password-stdin"]);
    keygen.env_remove("CVP_BACKUP_COPY_INI");
    let out = with_stdin(keygen, &format!("{TEST_PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(weed()
        .names(&bucket, "third")
        .iter()
        .any(|n| n.ends_with(".set.sha256")));
    assert_newest_set_in_bucket(&fx, &bucket);
}

/// An S3 endpoint that answers every request with one error (status, code, message) and a
/// Date header an hour ahead. Arguments: port, status, code.
const ERROR_SERVER: &str = r#"
import email.utils, http.server, sys, time
status, code = int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = ('<Error><Code>%s</Code><Message>said by the test</Message></Error>' % code).encode()
        self.send_response(status)
        self.send_header('Date', email.utils.formatdate(time.time() + 3600, usegmt=True))
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = answer
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn error_server(status: u16, code: &str) -> (u16, Killed) {
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args(["-c", ERROR_SERVER])
        .arg(port.to_string())
        .arg(status.to_string())
        .arg(code)
        .spawn()
        .expect("python3");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 20,
            "the error server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (port, Killed(child))
}

#[test]
fn slow_down_is_retried_with_backoff_and_a_skewed_clock_names_both_times() {
    let mut fx = Fixture::new();
    fx.seed("cvp.20240101020010.tgz", 1000);
    let (slow, _slow) = error_server(503, "SlowDown");
    fx.extra_sections = fx.s3_section(
        "busy",
        &format!("http://127.0.0.1:{slow}"),
        "cvpbc-busy",
        "retries = 2\nretry_wait = 1",
    );
    fx.write_ini();
    let busy = fx.run(&["--no-backup"]);
    assert_eq!(busy.code, 5, "{}", busy.all_output());
    assert!(busy.stderr.contains("SlowDown"), "{}", busy.stderr);
    assert!(
        busy.stderr.contains("retry 1 of 2 in 1 s") && busy.stderr.contains("retry 2 of 2 in 2 s"),
        "{}",
        busy.stderr
    );
    // main (the sshd) has the set all the same.
    assert!(fx
        .remote_names()
        .contains(&"cvp.20240101020010.tgz".to_string()));
    let (skewed, _skewed) = error_server(403, "RequestTimeTooSkewed");
    fx.extra_sections = fx.s3_section(
        "busy",
        &format!("http://127.0.0.1:{skewed}"),
        "cvpbc-busy",
        "retries = 0",
    );
    fx.write_ini();
    let clock = fx.run(&["--no-backup"]);
    assert_eq!(clock.code, 4, "{}", clock.all_output());
    assert!(
        clock
            .stderr
            .contains("the node's clock is off: the server's time is")
            && clock.stderr.contains("this node's"),
        "{}",
        clock.stderr
    );
}

#[test]
fn an_encrypted_copy_in_a_bucket_is_fetched_with_the_identity_and_another_node_is_refused() {
    let bucket = new_bucket();
    let keys = tempfile::tempdir().expect("keys");
    let identity = keys.path().join("identity.txt");
    let out = std::process::Command::new(bin())
        .args(["keygen", "--age-identity"])
        .arg(&identity)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{out:?}");
    let recipient_line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut fx = Fixture::new();
    fx.cvpi_flags = "--images --size 12000000".into();
    fx.extra_sections = fx.s3_section("offsite", &weed().endpoint(), &bucket, &recipient_line);
    fx.write_ini();
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let data = newest_data(&fx);
    let names = weed().names(&bucket, PREFIX);
    assert!(names.contains(&format!("{data}.age")), "{names:?}");
    assert!(!names.contains(&data), "stored in clear: {names:?}");
    // main stays plain (encrypt_to was set for offsite only).
    assert!(fx.remote_names().contains(&data));
    let to = keys.path().join("restore");
    let fetch = fx.run(&[
        "fetch",
        "--destination",
        "offsite",
        "--identity",
        identity.to_str().expect("utf-8"),
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(fetch.code, 0, "{}", fetch.all_output());
    assert_eq!(
        std::fs::read(to.join(&data)).expect("decrypted"),
        std::fs::read(fx.local_path(&data)).expect("local")
    );
    // Another node pointed at this prefix is refused there, and writes nothing.
    let before = weed().names(&bucket, PREFIX);
    let mut other = Fixture::new();
    other.seed("cvp.20240101020010.tgz", 1000);
    other.backup_extra = "node_name = another-node".into();
    other.extra_sections = other.s3_section("offsite", &weed().endpoint(), &bucket, "");
    other.write_ini();
    let refused = other.run(&["--no-backup"]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    assert!(
        refused.stderr.contains("belongs to node"),
        "{}",
        refused.stderr
    );
    assert_eq!(weed().names(&bucket, PREFIX), before);
}

#[test]
fn check_and_the_night_say_a_plain_bucket_is_not_immutable_and_a_locked_one_is() {
    let plain = new_bucket();
    let fx = two_destinations(&plain, "");
    let check = fx.run(&["check"]);
    assert!(
        check
            .stdout
            .contains("[WARN] destination offsite: immutable: no (")
            && check.stdout.contains("Object Lock"),
        "{}",
        check.stdout
    );
    // The plain bucket's test object is gone with the test (nothing left but the claim).
    let names = weed().names(&plain, PREFIX);
    assert!(names.iter().all(|n| !n.contains("canary")), "{names:?}");

    let locked = weed::new_locked_bucket(1);
    let fx = two_destinations(&locked, "");
    let check = fx.run(&["check"]);
    assert!(
        check
            .stdout
            .contains("[ok  ] destination offsite: immutable: yes (")
            && check.stdout.contains("delete its version"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("[WARN] destination main: immutable: no ("),
        "{}",
        check.stdout
    );
    // A night into the locked bucket: its objects come back locked, the set verifies, and
    // the record tells each destination's verdict.
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert_newest_set_in_bucket(&fx, &locked);
    let data = newest_data(&fx);
    let mode = weed().boto3(
        &format!(
            "print(s3.head_object(Bucket='{locked}', Key='{PREFIX}/{data}').get('ObjectLockMode'))"
        ),
        true,
    );
    assert_eq!(mode.trim(), "COMPLIANCE");
    assert_eq!(offsite_record(&fx)["immutable"], true);
    assert_eq!(record(&fx)["immutable"], false);
    assert!(
        run.all_output().contains("is not immutable")
            && run.all_output().contains("[offsite] immutable:"),
        "{}",
        run.all_output()
    );
}

/// A 70 MB member in a bucket is read back over 2 more connections, in ranged GETs of one
/// 8 MiB block each, in order: the sha256 and the archive check pass.
#[test]
fn a_large_object_is_read_back_over_several_connections() {
    let bucket = new_bucket();
    let mut fx = two_destinations(&bucket, "streams = 2");
    fx.cvpi_flags = "--size 70000000".into();
    fx.write_ini();
    let night = fx.run(&[]);
    assert_eq!(night.code, 0, "{}", night.all_output());
    let data = newest_data(&fx);
    let read_back = fx.run(&["verify", "--destination", "offsite", "--read-data"]);
    assert_eq!(read_back.code, 0, "{}", read_back.all_output());
    assert!(
        read_back
            .stdout
            .contains("large files are read back over 2 connections")
            && read_back
                .stdout
                .contains(&format!("[ok  ] {data}: read back, 70000000 bytes"))
            && read_back.stdout.contains("a whole archive ("),
        "{}",
        read_back.stdout
    );
}
