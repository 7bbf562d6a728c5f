//! Dead man's switch pings in the healthchecks.io convention (also Uptime Kuma push monitors,
//! Cronitor, ...): `URL/start` as a run begins, `URL` when it succeeds, `URL/fail` when it
//! fails, the last two as a POST of the run's summary and latest log lines.
//!
//! A ping never fails or stalls the backup: short timeouts, a few attempts, then a warning.
//! HTTPS goes through the OpenSSL the binary already carries (native-tls), trusting the
//! node's CA bundle where EL keeps it (/etc/pki/tls/certs/ca-bundle.crt, found by
//! openssl-probe; `SSL_CERT_FILE` overrides), so a company CA the node trusts works too.

use std::time::Duration;

/// What a ping says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Success,
    Fail,
}

/// The largest body a ping carries (healthchecks.io keeps the first 10 KB).
pub const BODY_LIMIT: usize = 10 * 1024;

const ATTEMPTS: u32 = 3;
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Whether `ping_url` is a URL this tool can ping. The value itself is not repeated: the URL
/// is a capability (whoever has it can report for this node).
pub fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err("not an https:// or http:// URL".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL has no spaces".into());
    }
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err("not a valid URL: it names no host".into()),
    }
}

/// The URL for an event (pure): `/start` and `/fail` go before any query string.
pub fn target(url: &str, event: Event) -> String {
    let suffix = match event {
        Event::Start => "/start",
        Event::Success => "",
        Event::Fail => "/fail",
    };
    // A fragment never leaves the client.
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = if suffix.is_empty() {
        base
    } else {
        base.trim_end_matches('/')
    };
    match query {
        Some(query) => format!("{base}{suffix}?{query}"),
        None => format!("{base}{suffix}"),
    }
}

/// The longest log line a ping carries (the rest of a longer one is cut).
const LINE_LIMIT: usize = 1024;

/// The body of a success or failure ping (pure): the summary line, then as many of the
/// newest log lines (each cut at `LINE_LIMIT`) as fit in `BODY_LIMIT` bytes.
pub fn body(summary: &str, lines: &[String]) -> String {
    let mut head = summary.trim_end().to_string();
    truncate(&mut head, BODY_LIMIT - 1);
    let mut room = BODY_LIMIT.saturating_sub(head.len() + 1);
    let mut tail: Vec<String> = Vec::new();
    for line in lines.iter().rev() {
        let mut line = line.clone();
        truncate(&mut line, LINE_LIMIT);
        if line.len() + 1 > room {
            break;
        }
        room -= line.len() + 1;
        tail.push(line);
    }
    tail.reverse();
    let mut text = head;
    text.push('\n');
    for line in tail {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The host a URL points at, for messages (the path is the capability: not logged).
pub fn host_of(url: &str) -> String {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_string))
        .unwrap_or_else(|| "the ping URL".into())
}

#[derive(Clone)]
pub struct Pinger {
    url: String,
    agent: ureq::Agent,
}

impl Pinger {
    pub fn new(url: String) -> Pinger {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        // No redirects: a ping server has no reason to send the node elsewhere (another host
        // of its choosing, or from https down to http).
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .max_redirects(0)
            .https_only(url.to_ascii_lowercase().starts_with("https://"))
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(10)))
            .user_agent(concat!("cvp-backup-copy/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Pinger { url, agent }
    }

    pub fn host(&self) -> String {
        host_of(&self.url)
    }

    /// Send one ping, trying again after 1 s and 2 s on a network error or a 5xx answer;
    /// the reason of the last failure otherwise.
    pub fn send(&self, event: Event, body: Option<&str>) -> Result<(), String> {
        let url = target(&self.url, event);
        let mut wait = FIRST_WAIT;
        let mut attempt = 1;
        loop {
            let outcome = match body {
                Some(body) => self
                    .agent
                    .post(&url)
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .send(body),
                None => self.agent.get(&url).call(),
            };
            let (problem, worth_retrying) = match outcome {
                Ok(answer) if answer.status().is_success() => return Ok(()),
                Ok(answer) => (
                    format!(
                        "HTTP status {} (redirects are not followed: give the final URL)",
                        answer.status().as_u16()
                    ),
                    false,
                ),
                Err(err) => describe(&err),
            };
            if !worth_retrying || attempt >= ATTEMPTS || crate::signals::received().is_some() {
                return Err(problem);
            }
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }
}

/// An error in words that never repeat the URL, and whether another attempt may help.
fn describe(err: &ureq::Error) -> (String, bool) {
    match err {
        ureq::Error::StatusCode(code) => (format!("HTTP status {code}"), *code >= 500),
        ureq::Error::Timeout(_) => ("no answer in time".into(), true),
        ureq::Error::HostNotFound => ("host not found".into(), true),
        ureq::Error::ConnectionFailed => ("cannot connect".into(), true),
        ureq::Error::Io(io) => (io.to_string(), true),
        ureq::Error::Tls(why) => (format!("TLS: {why}"), false),
        ureq::Error::BadUri(_) => ("not a valid URL".into(), false),
        other => (
            other.to_string().replace(|c: char| c.is_control(), " "),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_urls_follow_the_healthchecks_convention() {
        let table = [
            (
                "https://hc.example/ping/abc",
                Event::Start,
                "https://hc.example/ping/abc/start",
            ),
            (
                "https://hc.example/ping/abc",
                Event::Success,
                "https://hc.example/ping/abc",
            ),
            (
                "https://hc.example/ping/abc/",
                Event::Fail,
                "https://hc.example/ping/abc/fail",
            ),
            (
                "https://hc.example/ping/abc/",
                Event::Success,
                "https://hc.example/ping/abc/",
            ),
            (
                "https://hc.example/ping/abc#frag",
                Event::Start,
                "https://hc.example/ping/abc/start",
            ),
            (
                "http://kuma:3001/api/push/XyZ?status=up",
                Event::Fail,
                "http://kuma:3001/api/push/XyZ/fail?status=up",
            ),
        ];
        for (url, event, expected) in table {
            assert_eq!(target(url, event), expected, "{url} {event:?}");
        }
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert_eq!(check_url("https://hc-ping.com/5f0c-uuid"), Ok(()));
        assert_eq!(check_url("http://127.0.0.1:8000/ping/x"), Ok(()));
        for bad in [
            "hc-ping.com/uuid",
            "ftp://host/x",
            "https://",
            "https://host/a b",
        ] {
            let why = check_url(bad).expect_err(bad);
            assert!(!why.contains(bad), "{why}");
        }
        assert_eq!(host_of("https://hc-ping.com/secret-uuid"), "hc-ping.com");
    }

    #[test]
    fn the_body_is_the_summary_and_the_newest_lines_within_10_kb() {
        let lines: Vec<String> = (0..1000)
            .map(|i| format!("line {i:04} {}", "x".repeat(40)))
            .collect();
        let text = body("summary: exit=4", &lines);
        assert!(text.len() <= BODY_LIMIT, "{}", text.len());
        assert!(
            text.len() > BODY_LIMIT - 60,
            "fills the room: {}",
            text.len()
        );
        assert!(text.starts_with("summary: exit=4\n"));
        assert!(text.ends_with(&format!("{}\n", lines[999])));
        assert!(!text.contains("line 0000"), "the oldest lines go first");
        let long_line = body("s", &["x".repeat(5000), "last".into()]);
        assert_eq!(long_line, format!("s\n{}\nlast\n", "x".repeat(LINE_LIMIT)));
        let short = body("summary: exit=0", &["a".into(), "b".into()]);
        assert_eq!(short, "summary: exit=0\na\nb\n");
        let huge = body(&"é".repeat(BODY_LIMIT), &["a".into()]);
        assert!(huge.len() <= BODY_LIMIT && huge.ends_with('\n'));
    }
}
