//! Monitoring against the real things: Debian's prometheus-node-exporter reading the metrics
//! file through its textfile collector, and a real local HTTP(S) server receiving the pings,
//! over nights that succeed, fail, and are refused.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// A process stopped when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node_exporter(textfile_dir: &Path) -> (Running, u16) {
    let port = free_port();
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile_dir.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-node-exporter (tests/prereqs.sh installs it)");
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node_exporter did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (running, port)
}

/// GET /metrics, as Prometheus would scrape it.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect node_exporter");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// `name{labels} value` samples of our metrics, and node_exporter's scrape error gauge.
fn samples(body: &str) -> HashMap<String, (String, f64)> {
    body.lines()
        .filter(|l| {
            l.starts_with("cvp_backup_copy_") || l.starts_with("node_textfile_scrape_error")
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            Some((name.to_string(), (labels.to_string(), value.parse().ok()?)))
        })
        .collect()
}

fn value(samples: &HashMap<String, (String, f64)>, name: &str) -> f64 {
    samples
        .get(&format!("cvp_backup_copy_{name}"))
        .unwrap_or_else(|| panic!("no cvp_backup_copy_{name} in {samples:?}"))
        .1
}

fn stamp_of(data: &str) -> f64 {
    let digits = &data["cvp.".len()..data.len() - ".tgz".len()];
    let out = Command::new("date")
        .args(["-d"])
        .arg(format!(
            "{}-{}-{} {}:{}:{}",
            &digits[0..4],
            &digits[4..6],
            &digits[6..8],
            &digits[8..10],
            &digits[10..12],
            &digits[12..14]
        ))
        .arg("+%s")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("epoch")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn node_exporter_serves_the_metrics_after_a_good_a_failed_and_a_refused_night() {
    let mut fx = Fixture::new();
    let textfile = tempfile::tempdir().expect("textfile dir");
    fx.backup_extra = format!("metrics_dir = {}", textfile.path().display());
    fx.write_ini();
    let (_exporter, port) = start_node_exporter(textfile.path());
    let label = format!(
        "destination=\"{TEST_USER}@127.0.0.1:{}\"",
        fx.dest.display()
    );

    // A good night.
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let before = unix_now().floor();
    let good = fx.run(&[]);
    assert_eq!(good.code, 0, "{}", good.all_output());
    let data = fx.newest_local("cvp.2").expect("data backup");
    let prom = textfile.path().join("cvp_backup_copy.prom");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&prom)
        .expect("metrics file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        file_names(textfile.path()),
        vec!["cvp_backup_copy.prom".to_string()],
        "no temporary file left"
    );
    let body = scrape(port);
    println!(
        "after a good night, {}:\n{}",
        prom.display(),
        std::fs::read_to_string(&prom).unwrap_or_default()
    );
    let after_good = samples(&body);
    assert_eq!(
        after_good.get("node_textfile_scrape_error").map(|s| s.1),
        Some(0.0),
        "{body}"
    );
    for (name, (labels, _)) in &after_good {
        if name.starts_with("cvp_backup_copy_") {
            assert_eq!(labels.trim_end_matches('}'), label, "{name}");
            assert!(body.contains(&format!("# TYPE {name} gauge")), "{name}");
            assert!(body.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
    let last_run = value(&after_good, "last_run_timestamp_seconds");
    assert!(
        last_run >= before && last_run <= unix_now() + 1.0,
        "{last_run}"
    );
    assert_eq!(
        value(&after_good, "last_success_timestamp_seconds"),
        last_run
    );
    assert_eq!(value(&after_good, "last_exit_code"), 0.0);
    assert!(value(&after_good, "last_run_duration_seconds") > 0.0);
    let uploaded: u64 = fx
        .remote_names()
        .iter()
        .filter(|n| n.ends_with(".tgz") || n.ends_with(".log"))
        .map(|n| {
            std::fs::metadata(fx.dest.join(n))
                .expect("remote file")
                .len()
        })
        .sum();
    assert_eq!(value(&after_good, "uploaded_bytes"), uploaded as f64);
    assert_eq!(
        value(&after_good, "newest_remote_set_timestamp_seconds"),
        stamp_of(&data)
    );
    assert_eq!(value(&after_good, "local_sets"), 1.0);
    assert_eq!(value(&after_good, "remote_sets"), 1.0);

    // A failed night: the server is gone. When the job last succeeded and the recovery point
    // stay those of the good night.
    std::thread::sleep(Duration::from_millis(1100));
    let good_port = fx.port;
    fx.port = free_port();
    fx.server_extra = "retries = 0".into();
    fx.write_ini();
    let failed = fx.run(&[]);
    assert_eq!(failed.code, 4, "{}", failed.all_output());
    let scraped = scrape(port);
    println!(
        "after a failed night, scraped:\n{}",
        scraped
            .lines()
            .filter(|l| l.starts_with("cvp_") || l.starts_with("node_textfile_scrape_error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let after_failed = samples(&scraped);
    assert_eq!(
        after_failed.get("node_textfile_scrape_error").map(|s| s.1),
        Some(0.0)
    );
    assert_eq!(value(&after_failed, "last_exit_code"), 4.0);
    assert!(value(&after_failed, "last_run_timestamp_seconds") > last_run);
    assert_eq!(
        value(&after_failed, "last_success_timestamp_seconds"),
        last_run
    );
    assert_eq!(
        value(&after_failed, "newest_remote_set_timestamp_seconds"),
        stamp_of(&data)
    );
    assert_eq!(value(&after_failed, "uploaded_bytes"), 0.0);
    assert_eq!(
        value(&after_failed, "local_sets"),
        2.0,
        "tonight's backup is on the node"
    );
    assert!(
        !after_failed.contains_key("cvp_backup_copy_remote_sets"),
        "the server could not be listed: no count rather than a stale one"
    );

    // A night refused before its INI is read (a placeholder left in it): still reported,
    // under the same destination, with the same last success.
    fx.port = good_port;
    let broken = fx.ini_text().replace(
        &format!("user = {TEST_USER}\n"),
        "user = {{user name on the backup server}}\n",
    );
    std::fs::write(&fx.ini, broken).expect("break the INI");
    let refused = fx.run(&[]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    let after_refused = samples(&scrape(port));
    assert_eq!(
        after_refused.get("node_textfile_scrape_error").map(|s| s.1),
        Some(0.0)
    );
    assert_eq!(value(&after_refused, "last_exit_code"), 3.0);
    assert_eq!(
        value(&after_refused, "last_success_timestamp_seconds"),
        last_run
    );
    assert_eq!(
        after_refused
            .get("cvp_backup_copy_last_exit_code")
            .map(|s| s.0.trim_end_matches('}').to_string()),
        Some(label.clone())
    );
}

/// The healthchecks.io stand-in: its port and the file it records requests in.
struct PingServer {
    _process: Running,
    port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl PingServer {
    fn start(tls: bool) -> PingServer {
        PingServer::start_with(tls, 200, 0.0)
    }

    fn start_with_status(status: u16) -> PingServer {
        PingServer::start_with(false, status, 0.0)
    }

    fn start_with(tls: bool, status: u16, post_delay: f64) -> PingServer {
        let dir = tempfile::tempdir().expect("ping server dir");
        let record = dir.path().join("requests.jsonl");
        let mut cmd =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ping-server"));
        cmd.arg("--record")
            .arg(&record)
            .arg("--status")
            .arg(status.to_string())
            .arg("--post-delay")
            .arg(post_delay.to_string());
        if tls {
            cmd.arg("--tls").arg(dir.path());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tests/fixtures/ping-server");
        let mut port = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut port)
            .expect("port");
        PingServer {
            _process: Running(child),
            port: port.trim().parse().expect("the server prints its port"),
            record,
            _dir: dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    /// (method, path, body) of every request so far.
    fn requests(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                assert!(
                    field("method") == "GET" || field("content_type").starts_with("text/plain"),
                    "{line}"
                );
                (field("method"), field("path"), field("body"))
            })
            .collect()
    }
}

const UUID: &str = "5f0c1d2e-ping-capability-0a1b";

#[test]
fn pings_report_start_success_and_failure_with_the_summary_and_log() {
    let server = PingServer::start(false);
    let mut fx = Fixture::new();
    fx.backup_extra = format!("ping_url = http://127.0.0.1:{}/ping/{UUID}", server.port);
    fx.write_ini();

    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let good = fx.run(&[]);
    assert_eq!(good.code, 0, "{}", good.all_output());
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (
            requests[0].0.as_str(),
            requests[0].1.as_str(),
            requests[0].2.as_str()
        ),
        ("GET", format!("/ping/{UUID}/start").as_str(), "")
    );
    let (method, path, body) = &requests[1];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", format!("/ping/{UUID}").as_str())
    );
    assert!(body.starts_with("summary: files=3 uploaded=3 "), "{body}");
    assert!(
        body.lines().next().unwrap_or_default().ends_with(" exit=0"),
        "{body}"
    );
    assert!(
        body.contains("copied and verified"),
        "the run's log: {body}"
    );
    assert!(body.contains("INFO  starting: configuration"), "{body}");

    // A failed night: /fail, with why.
    fx.port = free_port();
    fx.server_extra = "retries = 0".into();
    fx.write_ini();
    let failed = fx.run(&["--no-backup"]);
    assert_eq!(failed.code, 4, "{}", failed.all_output());
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert_eq!(requests[2].1, format!("/ping/{UUID}/start"));
    let (method, path, body) = &requests[3];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", format!("/ping/{UUID}/fail").as_str())
    );
    assert!(
        body.lines().next().unwrap_or_default().ends_with(" exit=4"),
        "{body}"
    );
    assert!(
        body.contains("ERROR") && body.contains("server unreachable"),
        "{body}"
    );
    assert!(body.len() <= 10 * 1024);

    // A night refused before it starts (a placeholder left in the INI): /fail, no /start.
    let broken = fx.ini_text().replace(
        &format!("user = {TEST_USER}\n"),
        "user = {{user name on the backup server}}\n",
    );
    std::fs::write(&fx.ini, broken).expect("break the INI");
    let refused = fx.run(&["--no-backup"]);
    assert_eq!(refused.code, 3, "{}", refused.all_output());
    let requests = server.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    let (_, path, body) = &requests[4];
    assert_eq!(path, &format!("/ping/{UUID}/fail"));
    assert!(
        body.starts_with("summary: refused before the backup: exit=3\n"),
        "{body}"
    );
    assert!(body.contains("not configured"), "{body}");

    for (method, path, body) in &requests {
        println!("{method} {path}\n{body}");
    }
    for (_, _, body) in &requests {
        assert!(
            !body.contains(TEST_PASSWORD) && !body.contains(&fx.token),
            "{body}"
        );
    }
}

#[test]
fn an_unreachable_ping_url_is_a_warning_and_never_fails_or_leaks_the_url() {
    let mut fx = Fixture::new();
    fx.backup_extra = format!("ping_url = http://127.0.0.1:{}/ping/{UUID}", free_port());
    fx.write_ini();
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let run = fx.run(&[]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let output = run.all_output();
    assert!(
        output.contains("cannot ping 127.0.0.1 (start)")
            && output.contains("cannot ping 127.0.0.1 (success)"),
        "{output}"
    );
    assert!(!output.contains(UUID), "the URL is a capability: {output}");

    // An answer that is not 2xx is reported too, not retried when it is 4xx, and a redirect
    // is not followed (the server would choose where the node's requests go).
    for status in [404, 302] {
        let server = PingServer::start_with_status(status);
        fx.backup_extra = format!("ping_url = http://127.0.0.1:{}/ping/{UUID}", server.port);
        fx.write_ini();
        let run = fx.run(&["--no-backup"]);
        assert_eq!(run.code, 0, "{}", run.all_output());
        assert!(
            run.all_output()
                .contains(&format!("(success): HTTP status {status}")),
            "{}",
            run.all_output()
        );
        assert_eq!(
            server.requests().len(),
            2,
            "one start, one success: no retry, no redirect followed"
        );
    }
}

#[test]
fn pings_go_over_https_to_a_server_the_node_trusts_and_only_to_it() {
    let server = PingServer::start(true);
    let mut fx = Fixture::new();
    fx.backup_extra = format!("ping_url = https://127.0.0.1:{}/ping/{UUID}", server.port);
    fx.write_ini();
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);

    // The node's CA bundle does not know the test CA: the ping is refused, the run is not.
    let untrusted = fx.run(&[]);
    assert_eq!(untrusted.code, 0, "{}", untrusted.all_output());
    assert!(
        untrusted
            .all_output()
            .contains("cannot ping 127.0.0.1 (success)"),
        "{}",
        untrusted.all_output()
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // With the CA in the bundle (SSL_CERT_FILE, as openssl-probe reads it): delivered.
    let mut cmd = fx.command(&["--no-backup"]);
    cmd.env("SSL_CERT_FILE", server.ca());
    let trusted = run_captured(&mut cmd, fx.root.path());
    assert_eq!(trusted.code, 0, "{}", trusted.all_output());
    assert!(
        !trusted.all_output().contains("cannot ping"),
        "{}",
        trusted.all_output()
    );
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.1).collect();
    assert_eq!(
        paths,
        [format!("/ping/{UUID}/start"), format!("/ping/{UUID}")]
    );
}

#[test]
fn a_slow_ping_server_does_not_hold_the_lock_from_the_next_run() {
    let server = PingServer::start_with(false, 200, 8.0);
    let mut fx = Fixture::new();
    fx.backup_extra = format!("ping_url = http://127.0.0.1:{}/ping/{UUID}", server.port);
    fx.write_ini();
    fx.seed("cvp.eosimages.20240101020005.tgz", 200_000);
    let first = fx.spawn(&[]);
    // The server has the first run's final ping and sits on its answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.requests().iter().any(|r| r.0 == "POST") {
        assert!(
            Instant::now() < deadline,
            "no final ping: {:?}",
            server.requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = fx.run(&["--no-backup"]);
    assert_eq!(second.code, 0, "not locked out: {}", second.all_output());
    let out = first.wait_with_output().expect("first run");
    assert_eq!(out.status.code(), Some(0));
    let posts = server.requests().iter().filter(|r| r.0 == "POST").count();
    assert_eq!(posts, 2, "{:?}", server.requests());
}
