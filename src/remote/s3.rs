//! An S3-compatible bucket as a destination folder: requests signed by `rusty-s3` (which
//! does no I/O), sent with the HTTP client the binary already has (ureq, native TLS).
//! Objects are whole files: a name exists only once its upload is complete, so there are no
//! partial names; an unfinished multipart upload shows in listings as NAME's partial.

use crate::config::{S3Settings, ServerConfig};
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::names::{BackupName, RemoteName};
use crate::remote::{Attempt, Remote, RemoteEntry, SeekWrite};
use crate::secret::Secret;
use rusty_s3::actions::{ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// How long a signed request stays valid (it is sent at once).
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// One part of a multipart upload (the last may be shorter). 16 MiB: on a 50 ms link 8 MiB
/// parts left a fifth of the link idle waiting for each part's answer (the bench); a file
/// needs more only past 160 GB (S3 allows 10,000 parts). Parts stream from the file: their
/// size is not memory.
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
/// Files up to this size go up in one PUT, read whole into memory.
pub const WHOLE_PUT_MAX: u64 = 8 * 1024 * 1024;
pub const MAX_PARTS: u64 = 10_000;

/// Pages of a listing at most (1000 names each): a server cannot keep a listing going.
const MAX_PAGES: usize = 10_000;

/// A fetch reads an object in ranges this big, each with its own deadline.
const READ_RANGE: u64 = 16 * 1024 * 1024;

/// Parts at the end of a large file: smaller, so the last round of parts in flight ends
/// nearly together instead of one 16 MiB part going alone (at least S3's 5 MiB).
const TAIL_PART: u64 = 8 * 1024 * 1024;
const TAIL_PARTS: u64 = 8;

/// The byte ranges of an object's parts: `part_size` each, and the last up to
/// `TAIL_PARTS` × 8 MiB in 8 MiB parts. A function of the length alone, so an interrupted
/// upload resumes with the same parts.
pub fn part_plan(len: u64) -> Vec<std::ops::Range<u64>> {
    let part = part_size(len);
    let small = if part == PART_SIZE { TAIL_PART } else { part };
    let tail = len.min(TAIL_PARTS * small);
    let full = (len - tail) / part;
    let mut ranges = Vec::new();
    let mut at = 0;
    for _ in 0..full {
        ranges.push(at..at + part);
        at += part;
    }
    while at < len {
        let end = (at + small).min(len);
        ranges.push(at..end);
        at = end;
    }
    ranges
}

/// The part size for an object of `len` bytes: 8 MiB, or more (whole MiB) past 10,000 parts.
pub fn part_size(len: u64) -> u64 {
    let mib = 1024 * 1024;
    // Room for the smaller parts at the end (and the one that rounds up) within S3's limit.
    let budget = MAX_PARTS - TAIL_PARTS - 2;
    PART_SIZE.max(len.div_ceil(budget).div_ceil(mib) * mib)
}

#[derive(Clone)]
pub struct S3Remote {
    label: String,
    settings: S3Settings,
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    /// Seconds to connect and to get an answer; a part's body gets 8 times this.
    timeout: Duration,
    /// For a CompleteMultipartUpload, which may assemble GBs before it answers.
    sync_timeout: Duration,
    /// How long the first look at the bucket took: the round trip `streams = auto` sizes
    /// from, without a request of its own.
    round_trip: std::sync::Arc<std::sync::OnceLock<Duration>>,
    /// A restore after an attack reads chosen versions: name -> (version id, size). When
    /// set, the listing shows only these names and reads go to these versions.
    pins: HashMap<String, (String, u64)>,
}

/// An S3 error answer: its code and message, and the request it answered.
/// One version of an object, or a delete marker, in a versioned bucket.
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    pub key: String,
    pub id: String,
    pub delete_marker: bool,
    pub latest: bool,
    pub size: u64,
    /// As the server wrote it (ISO 8601, so it sorts).
    pub modified: String,
}

/// A bucket's Object Lock, as far as the node's key may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLock {
    Default { mode: String, days: u32 },
    NoDefault,
    Unreadable,
}

impl std::fmt::Display for BucketLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketLock::Default { mode, days } => write!(f, "default retention {mode} {days} days"),
            BucketLock::NoDefault => f.write_str("no default retention"),
            BucketLock::Unreadable => f.write_str("its settings not readable with this key"),
        }
    }
}

/// A retention date as an instant (servers write `Z`, `.000Z` or `+00:00`).
fn instant(date: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(date)
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

/// Whether a retention date (ISO 8601) is still ahead.
pub fn still_locked(until: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(until)
        .map(|until| until > chrono::Utc::now())
        // A date we cannot read is kept as locked: never send a delete it may refuse.
        .unwrap_or(true)
}

#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// For the tests only: how many seconds a day of `lock_days` lasts, so that locks end while a
/// test waits (a shorter lock weakens nothing an intruder with root could not change in the
/// INI).
pub const DAY_SECONDS_ENV: &str = "CVP_BACKUP_COPY_TEST_DAY_SECONDS";

fn day_seconds() -> i64 {
    std::env::var(DAY_SECONDS_ENV)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n > 0)
        // Shorter only: never a date past what the bucket can hold.
        .map_or(86_400, |n| n.min(86_400))
}

/// A time as S3's retention dates are written.
fn s3_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl S3Remote {
    pub fn new(server: &ServerConfig, secret: &Secret) -> Result<S3Remote> {
        let settings = server
            .s3()
            .cloned()
            .ok_or_else(|| Error::config("internal error: not an S3 destination"))?;
        let endpoint: url::Url = settings.endpoint.parse().map_err(|err| {
            Error::config(format!(
                "{}: [{}] server `{}` is not a URL: {err}",
                server.name, server.name, settings.endpoint
            ))
        })?;
        let style = if settings.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|err| {
            Error::config(format!(
                "destination {}: cannot address bucket {} at {}: {err}",
                server.name, settings.bucket, settings.endpoint
            ))
        })?;
        let secret_text = Ok::<&str, ()>(secret.expose()).map_err(|_| {
            Error::config(format!(
                "destination {}: the secret access key is not text",
                server.name
            ))
        })?;
        let credentials = Credentials::new(server.user.clone(), secret_text.to_string());
        let agent = agent(&settings, Duration::from_secs(server.timeout))?;
        Ok(S3Remote {
            label: server.label(),
            settings,
            bucket,
            credentials,
            agent,
            timeout: Duration::from_secs(server.timeout),
            sync_timeout: Duration::from_secs(server.sync_timeout),
            round_trip: Default::default(),
            pins: HashMap::new(),
        })
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// With `lock_days`: the retention every object written now carries (mode, until).
    pub fn retention(&self) -> Option<(&'static str, String)> {
        let lock = self.settings.lock?;
        let seconds = i64::from(lock.days).saturating_mul(day_seconds());
        let until = chrono::Utc::now() + chrono::Duration::seconds(seconds);
        Some((lock.mode.as_s3(), s3_time(until)))
    }

    /// The Object Lock headers of a write (none without `lock_days`), to sign and send.
    pub fn lock_headers(&self) -> Vec<(&'static str, String)> {
        match self.retention() {
            Some((mode, until)) => vec![
                ("x-amz-object-lock-mode", mode.to_string()),
                ("x-amz-object-lock-retain-until-date", until),
            ],
            None => Vec::new(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        self.settings.key(name)
    }

    /// The part of `key` after the prefix, when it is directly inside it.
    /// Read `name` from the given version from now on (and list only pinned names).
    pub fn pin(&mut self, name: &str, version: &str, size: u64) {
        self.pins
            .insert(name.to_string(), (version.to_string(), size));
    }

    pub fn unpin_all(&mut self) {
        self.pins.clear();
    }

    pub(crate) fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = if self.settings.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&self.settings.prefix)?.strip_prefix('/')?
        };
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    pub(crate) fn list_prefix(&self) -> String {
        if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        }
    }

    /// Send a signed request and return the answer when it is a success; an error answer
    /// becomes an Error naming `what` (the request, for "access denied").
    pub(crate) fn send(
        &self,
        what: &str,
        request: Request<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        self.exchange(what, request).map_err(|(_, err)| err)
    }

    /// The same, and None when the server says the thing is not there: HTTP 404, or the
    /// error code `absent` (judged by the answer's status and code, never by its words).
    fn send_unless_absent(
        &self,
        what: &str,
        request: Request<'_>,
        absent: &str,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        match self.exchange(what, request) {
            Ok(answer) => Ok(Some(answer)),
            // A 404 saying the bucket is missing is not the file missing.
            Err((Some(refusal), _))
                if refusal.code == absent || (refusal.status == 404 && refusal.code.is_empty()) =>
            {
                Ok(None)
            }
            Err((_, err)) => Err(err),
        }
    }

    fn exchange(
        &self,
        what: &str,
        request: Request<'_>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, (Option<Refusal>, Error)> {
        let Request {
            method,
            url,
            headers,
            body,
            deadline,
        } = request;
        let builder = ureq::http::Request::builder()
            .method(method.to_str())
            .uri(url.as_str());
        let builder = headers
            .iter()
            .fold(builder, |b, (name, value)| b.header(*name, value.as_str()));
        let deadline = deadline.unwrap_or(self.timeout);
        let outcome = match body {
            Body::Empty => {
                let request = builder
                    .body(())
                    .map_err(|err| (None, Error::copy(format!("{what}: {err}"))))?;
                let request = self
                    .agent
                    .configure_request(request)
                    .timeout_recv_response(Some(deadline))
                    .timeout_recv_body(Some(deadline))
                    .build();
                self.agent.run(request)
            }
            Body::Bytes(bytes) => {
                let request = builder
                    .header("content-length", bytes.len().to_string())
                    .body(bytes)
                    .map_err(|err| (None, Error::copy(format!("{what}: {err}"))))?;
                let request = self
                    .agent
                    .configure_request(request)
                    .timeout_send_body(Some(deadline * 8))
                    .timeout_recv_response(Some(deadline))
                    .timeout_recv_body(Some(deadline))
                    .build();
                self.agent.run(request)
            }
            Body::Reader(reader, len) => {
                let request = builder
                    .header("content-length", len.to_string())
                    .body(ureq::SendBody::from_reader(reader))
                    .map_err(|err| (None, Error::copy(format!("{what}: {err}"))))?;
                let request = self
                    .agent
                    .configure_request(request)
                    .timeout_send_body(Some(self.timeout * 8))
                    .timeout_recv_response(Some(deadline))
                    .timeout_recv_body(Some(deadline))
                    .build();
                self.agent.run(request)
            }
        };
        let mut answer = outcome.map_err(|err| (None, self.transport_error(what, err)))?;
        let status = answer.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let date = answer
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .map(str::to_string);
        let text = answer
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        // The server's words reach logs and terminals: one short line, no control characters.
        let said = |tag: &str| {
            let text = xml_text(&text, tag).unwrap_or_default();
            crate::error::printable(&text.chars().take(300).collect::<String>())
        };
        let refusal = Refusal {
            status,
            code: said("Code"),
            message: said("Message"),
        };
        let date = date.map(|d| crate::error::printable(&d.chars().take(64).collect::<String>()));
        let error = self.refused(what, &refusal, date);
        Err((Some(refusal), error))
    }

    fn transport_error(&self, what: &str, err: ureq::Error) -> Error {
        let endpoint = &self.settings.endpoint;
        match err {
            ureq::Error::Tls(why) => Error::connect(format!(
                "{what} on {}: the TLS certificate of {endpoint} does not verify ({why}): if \
                 it is signed by a private CA, give its certificate in `ca_file`",
                self.label
            )),
            ureq::Error::Io(io) if io.to_string().contains("certificate") => {
                Error::connect(format!(
                    "{what} on {}: the TLS certificate of {endpoint} does not verify ({io}): if \
                     it is signed by a private CA, give its certificate in `ca_file`",
                    self.label
                ))
            }
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                        | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                // Worth another attempt (a restarting server), and a failure to connect.
                Error {
                    code: ExitCode::Connect,
                    transient: true,
                    message: format!(
                        "{what}: cannot connect to {endpoint} ({}): {io}",
                        self.label
                    ),
                }
            }
            ureq::Error::HostNotFound => Error::connect(format!(
                "{what}: the endpoint {endpoint} of {} does not resolve. This binary looks \
                 names up in /etc/hosts and then in DNS, not through nsswitch.conf: give the \
                 full name or the address in `server`",
                self.label
            )),
            other => {
                let why = other.to_string().replace(|c: char| c.is_control(), " ");
                if why.contains("ertificate") {
                    return Error::connect(format!(
                        "{what} on {}: the TLS certificate of {endpoint} does not verify \
                         ({why}): if it is signed by a private CA, give its certificate in \
                         `ca_file`",
                        self.label
                    ));
                }
                let mut error = Error::transient(format!("{what} on {}: {why}", self.label));
                if matches!(
                    other,
                    ureq::Error::ConnectionFailed | ureq::Error::Timeout(ureq::Timeout::Connect)
                ) {
                    error.message = format!(
                        "{what}: cannot connect to {endpoint} ({}): {why}",
                        self.label
                    );
                    error.code = ExitCode::Connect;
                }
                error
            }
        }
    }

    fn refused(&self, what: &str, refusal: &Refusal, date: Option<String>) -> Error {
        let Refusal {
            status,
            code,
            message,
        } = refusal;
        let status = *status;
        let said = match (code.is_empty(), message.is_empty()) {
            // A HEAD answer has no body to say why.
            (true, _) if status == 503 => "the server is busy or unavailable (SlowDown)".into(),
            (true, _) => "no reason given".into(),
            (false, true) => code.clone(),
            (false, false) => format!("{code}: {message}"),
        };
        let label = &self.label;
        let connect = |text: String| Error::connect(text);
        match code.as_str() {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidSecurity" => connect(format!(
                "{what} on {label}: the access key or secret key does not match ({said}): set \
                 `user` (the access key ID) and the password (the secret key) with \
                 `cvp-backup-copy edit`"
            )),
            "NoSuchBucket" => connect(format!(
                "no such bucket {} at {} ({what}): create it, or correct `destination`",
                self.settings.bucket, self.settings.endpoint
            )),
            "AccessDenied" | "AllAccessDisabled" => connect(format!(
                "access denied on {label}: the server refused {what} ({said}); the access key \
                 needs read, write, list and delete rights on the bucket (README, S3 settings)"
            )),
            "RequestTimeTooSkewed" => {
                let node = chrono::Utc::now().to_rfc2822();
                connect(format!(
                    "{what} on {label}: the node's clock is off: the server's time is {}, this \
                     node's {node}; correct the node's time (chronyd/ntpd)",
                    date.unwrap_or_else(|| "not given".into())
                ))
            }
            "SlowDown"
            | "ServiceUnavailable"
            | "InternalError"
            | "RequestTimeout"
            | "BadDigest"
            | "XAmzContentSHA256Mismatch"
            | "TooManyRequests" => {
                Error::transient(format!("{what} on {label}: the server said {said}"))
            }
            _ if status >= 500 || status == 429 => {
                Error::transient(format!("{what} on {label}: HTTP {status}, {said}"))
            }
            _ if status == 403 => connect(format!(
                "access denied on {label}: the server refused {what} (HTTP 403, {said})"
            )),
            _ => Error::copy(format!("{what} on {label}: HTTP {status}, {said}")),
        }
    }

    /// Keys of unfinished multipart uploads under the prefix, with their upload IDs, oldest
    /// first (ListMultipartUploads; rusty-s3 has no action for it, only the signing).
    pub fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        self.paged(
            ("unfinished uploads", "ListMultipartUploads"),
            vec![("prefix", prefix.to_string()), ("uploads", String::new())],
            [
                ("key-marker", "NextKeyMarker"),
                ("upload-id-marker", "NextUploadIdMarker"),
            ],
            |text| {
                for upload in xml_elements(text, "Upload") {
                    if let (Some(key), Some(id)) =
                        (xml_text(upload, "Key"), xml_text(upload, "UploadId"))
                    {
                        found.push((key, id));
                    }
                }
            },
        )?;
        Ok(found)
    }

    /// A listing paged by two markers (ListMultipartUploads, ListObjectVersions): each page's
    /// text to `page` until the server says it is complete. Markers met before, or more than
    /// MAX_PAGES pages, end it with an error: a server cannot loop us.
    fn paged(
        &self,
        (what, request): (&str, &str),
        query: Vec<(&'static str, String)>,
        markers: [(&'static str, &'static str); 2],
        mut page: impl FnMut(&str),
    ) -> Result<()> {
        let mut next_markers: Option<(String, String)> = None;
        let mut seen: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        loop {
            crate::signals::check(&format!("listing {what}"))?;
            let mut query = query.clone();
            if let Some((first, second)) = &next_markers {
                query.push((markers[0].0, first.clone()));
                query.push((markers[1].0, second.clone()));
            }
            let url = self.signed(rusty_s3::Method::Get, None, &query, &[]);
            let mut answer =
                self.send(&format!("listing {what} ({request})"), Request::get(url))?;
            let text = read_text(&mut answer, &self.label)?;
            page(&text);
            let truncated = xml_text(&text, "IsTruncated").as_deref() == Some("true");
            let next = (xml_text(&text, markers[0].1), xml_text(&text, markers[1].1));
            match (truncated, next) {
                (true, (Some(first), Some(second)))
                    if seen.len() < MAX_PAGES && seen.insert((first.clone(), second.clone())) =>
                {
                    next_markers = Some((first, second))
                }
                (true, _) => {
                    return Err(Error::copy(format!(
                        "{}: the list of {what} does not end",
                        self.label
                    )))
                }
                _ => return Ok(()),
            }
        }
    }

    /// A write; one that carried a retention (`locked`) and is refused says what the lock
    /// needs: the right to set retention (4), or a bucket with Object Lock (3).
    pub(crate) fn send_write(
        &self,
        what: &str,
        request: Request<'_>,
        locked: bool,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        match self.exchange(what, request) {
            Ok(answer) => Ok(answer),
            Err((Some(refusal), err)) if locked => Err(self.lock_refused(what, &refusal, err)),
            Err((_, err)) => Err(err),
        }
    }

    fn lock_refused(&self, what: &str, refusal: &Refusal, err: Error) -> Error {
        let said = crate::error::printable(&format!("{}: {}", refusal.code, refusal.message));
        let bucket = &self.settings.bucket;
        match refusal.code.as_str() {
            "AccessDenied" => Error::connect(format!(
                "access denied on {}: the server refused {what} with a retention (lock_days) \
                 ({said}); the access key needs the right to set retention \
                 (s3:PutObjectRetention on AWS; Admin:{bucket} in SeaweedFS's identities), or \
                 remove lock_days and give the bucket a default retention, which needs no such \
                 right",
                self.label
            )),
            "InvalidRequest"
                if refusal.message.to_ascii_lowercase().contains("object lock")
                    || refusal.message.to_ascii_lowercase().contains("objectlock") =>
            {
                self.lock_refused_config(what, &said)
            }
            "ObjectLockConfigurationNotFoundError" => self.lock_refused_config(what, &said),
            _ => err,
        }
    }

    fn lock_refused_config(&self, what: &str, said: &str) -> Error {
        let bucket = &self.settings.bucket;
        {
            {
                Error::config(format!(
                    "{what} on {}: lock_days is set but bucket {bucket} has no Object Lock \
                 ({said}): Object Lock is chosen when a bucket is created; create one with it \
                 (README: A stolen node), or remove lock_days",
                    self.label
                ))
            }
        }
    }

    /// A request rusty-s3 has no action for, signed by its `signing::sign` with `headers`
    /// (to be sent as they are); `key` None: the bucket.
    fn signed(
        &self,
        method: rusty_s3::Method,
        key: Option<&str>,
        query: &[(&str, String)],
        headers: &[(&'static str, String)],
    ) -> url::Url {
        let url = match key {
            Some(key) => self.bucket.object_url(key),
            None => self.bucket.base_url().clone(),
        };
        let mut query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        query.sort();
        let mut headers: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.sort();
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            self.credentials.key(),
            self.credentials.secret(),
            None,
            self.bucket.region(),
            SIGNED_FOR.as_secs(),
            query.iter().copied(),
            headers.iter().copied(),
        )
    }

    /// The bucket's Object Lock (GetObjectLockConfiguration): None when it has none, else
    /// its default retention in words ("no default retention" when it has none, "not
    /// readable with this key" when the key may not ask: the first locked write tells).
    pub fn object_lock(&self) -> Result<Option<BucketLock>> {
        let url = self.signed(
            rusty_s3::Method::Get,
            None,
            &[("object-lock", String::new())],
            &[],
        );
        let what = "reading the bucket's Object Lock (GetObjectLockConfiguration)";
        let mut answer = match self.exchange(what, Request::get(url)) {
            Ok(answer) => answer,
            Err((Some(refusal), _))
                if refusal.code == "ObjectLockConfigurationNotFoundError"
                    || (refusal.status == 404 && refusal.code.is_empty()) =>
            {
                return Ok(None)
            }
            Err((Some(refusal), _)) if refusal.code == "AccessDenied" => {
                return Ok(Some(BucketLock::Unreadable))
            }
            Err((_, err)) => return Err(err),
        };
        let text = read_text(&mut answer, &self.label)?;
        if xml_text(&text, "ObjectLockEnabled").as_deref() != Some("Enabled") {
            return Ok(None);
        }
        let days = match (xml_text(&text, "Days"), xml_text(&text, "Years")) {
            (Some(days), _) => days.parse::<u32>().ok(),
            (None, Some(years)) => years.parse::<u32>().ok().map(|y| y.saturating_mul(365)),
            _ => None,
        };
        Ok(Some(match (xml_text(&text, "Mode"), days) {
            (Some(mode), Some(days)) => BucketLock::Default {
                mode: crate::error::printable(&mode),
                days,
            },
            _ => BucketLock::NoDefault,
        }))
    }

    /// Retain every version of `name` (hidden and written-over ones too: an intruder cannot
    /// let the node's versions lapse by hiding them) until now + lock_days
    /// (PutObjectRetention by versionId). A version already retained longer stays as it is
    /// (COMPLIANCE never shortens). The number of versions.
    pub fn extend_retention(&self, name: &str) -> Result<usize> {
        let Some((mode, until)) = self.retention() else {
            return Ok(0);
        };
        let key = self.key(name);
        // The oldest first: the node's versions before any written over them.
        let versions: Vec<ObjectVersion> = self
            .versions_of(name)?
            .into_iter()
            .rev()
            .filter(|v| !v.delete_marker)
            .collect();
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode>\
             <RetainUntilDate>{until}</RetainUntilDate></Retention>"
        );
        let md5 = {
            use base64::Engine;
            use md5::Digest;
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()))
        };
        let mut first_error = None;
        for version in &versions {
            crate::signals::check("extending the locks")?;
            let headers = vec![("content-md5", md5.clone())];
            let query = vec![
                ("retention", String::new()),
                ("versionId", version.id.clone()),
            ];
            let url = self.signed(rusty_s3::Method::Put, Some(&key), &query, &headers);
            let mut request = Request::new(rusty_s3::Method::Put, url);
            request.headers = headers;
            request.body = Body::Bytes(body.clone().into_bytes());
            let what = format!("extending the retention of {name} (PutObjectRetention)");
            match self.exchange(&what, request) {
                Ok(_) => {}
                // Refused: fine only when that version is already retained at least as long,
                // in this mode or COMPLIANCE (nothing can shorten a lock; a longer one stays).
                Err((Some(refusal), err)) => {
                    let held = self
                        .retention_of(&key, &version.id)
                        .ok()
                        .flatten()
                        .is_some_and(|(held_mode, held_until)| {
                            (held_mode == mode || held_mode == "COMPLIANCE")
                                && instant(&held_until).is_some()
                                && instant(&held_until) >= instant(&until)
                        });
                    if !held {
                        first_error.get_or_insert(self.lock_refused(&what, &refusal, err));
                    }
                }
                Err((None, err)) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(versions.len()),
        }
    }

    /// Names under the prefix with a version the node wrote, hidden ones included (a delete
    /// marker on top, or written over): what the night's decisions count on a locked bucket,
    /// so an intruder hiding objects changes nothing the node keeps or extends.
    pub fn list_with_hidden(&self) -> Result<Vec<RemoteEntry>> {
        let mut entries: Vec<RemoteEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for version in self.versions_under(&self.list_prefix())? {
            if version.delete_marker {
                continue;
            }
            let Some(name) = self.name_of(&version.key) else {
                continue;
            };
            if seen.insert(name.to_string()) {
                entries.push(RemoteEntry {
                    name: name.to_string(),
                    size: version.size,
                });
            }
        }
        Ok(entries)
    }

    /// Every version of `name` (id, and whether it is a delete marker), newest first as the
    /// server lists them (ListObjectVersions).
    pub fn versions_of(&self, name: &str) -> Result<Vec<ObjectVersion>> {
        let key = self.key(name);
        Ok(self
            .versions_under(&key)?
            .into_iter()
            .filter(|v| v.key == key)
            .collect())
    }

    /// Every version of every key starting with `prefix` (ListObjectVersions).
    pub fn versions_under(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let mut found = Vec::new();
        self.paged(
            ("object versions", "ListObjectVersions"),
            vec![("prefix", prefix.to_string()), ("versions", String::new())],
            [
                ("key-marker", "NextKeyMarker"),
                ("version-id-marker", "NextVersionIdMarker"),
            ],
            |text| {
                for (tag, delete_marker) in [("Version", false), ("DeleteMarker", true)] {
                    for element in xml_elements(text, tag) {
                        if let (Some(key), Some(id)) =
                            (xml_text(element, "Key"), xml_text(element, "VersionId"))
                        {
                            found.push(ObjectVersion {
                                key,
                                id,
                                delete_marker,
                                latest: xml_text(element, "IsLatest").as_deref() == Some("true"),
                                size: xml_text(element, "Size")
                                    .and_then(|s| s.parse().ok())
                                    .unwrap_or(0),
                                modified: xml_text(element, "LastModified").unwrap_or_default(),
                            });
                        }
                    }
                }
            },
        )?;
        // Newest first within a key (servers list them so; the dates decide ties).
        found.sort_by(|a, b| a.key.cmp(&b.key).then(b.modified.cmp(&a.modified)));
        Ok(found)
    }

    /// Until when one version of `key` is retained (None: not locked, or no date given).
    pub fn retained_until(&self, key: &str, version: &str) -> Result<Option<String>> {
        Ok(self.retention_of(key, version)?.map(|(_, until)| until))
    }

    /// One version's retention: its mode and until when (None: not locked).
    fn retention_of(&self, key: &str, version: &str) -> Result<Option<(String, String)>> {
        let mut action = self.bucket.head_object(Some(&self.credentials), key);
        action.query_mut().insert("versionId", version.to_string());
        let answer = self.send(
            &format!("looking at a version of {key} (HeadObject)"),
            Request::new(rusty_s3::Method::Head, action.sign(SIGNED_FOR)),
        )?;
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(header("x-amz-object-lock-retain-until-date")
            .map(|until| (header("x-amz-object-lock-mode").unwrap_or_default(), until)))
    }

    fn delete_version(&self, key: &str, version: &str) -> Result<()> {
        let mut action = self.bucket.delete_object(Some(&self.credentials), key);
        action.query_mut().insert("versionId", version.to_string());
        self.send_unless_absent(
            &format!("deleting a version of {key} (DeleteObject with versionId)"),
            Request::new(rusty_s3::Method::Delete, action.sign(SIGNED_FOR)),
            "NoSuchVersion",
        )
        .map(drop)
    }

    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let action = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id);
        self.send_unless_absent(
            &format!("aborting the unfinished upload of {key}"),
            Request::new(rusty_s3::Method::Delete, action.sign(SIGNED_FOR)),
            "NoSuchUpload",
        )
        .map(drop)
    }

    /// PUT a small object whole, its SHA-256 checked by the server as it arrives, and the
    /// ETag it answers (an MD5 for such objects) checked here: a server that ignores the
    /// checksum header still cannot keep damaged bytes unnoticed.
    pub fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let key = self.key(name);
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        let checksum = base64_sha256(bytes);
        action
            .headers_mut()
            .insert("x-amz-checksum-sha256", checksum.clone());
        let locks = self.lock_headers();
        for (header, value) in &locks {
            action.headers_mut().insert(*header, value.clone());
        }
        let mut request = Request::new(rusty_s3::Method::Put, action.sign(SIGNED_FOR));
        request.headers.push(("x-amz-checksum-sha256", checksum));
        let locked = !locks.is_empty();
        request.headers.extend(locks);
        request.body = Body::Bytes(bytes.to_vec());
        let answer = self.send_write(&format!("writing {name} (PutObject)"), request, locked)?;
        // With server-side encryption by KMS or a customer key the ETag is no MD5.
        let encrypted = answer
            .headers()
            .get("x-amz-server-side-encryption")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("aws:kms"))
            || answer
                .headers()
                .contains_key("x-amz-server-side-encryption-customer-algorithm");
        let etag = answer
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_ascii_lowercase());
        let md5_shaped = |e: &String| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(etag) = etag.filter(md5_shaped).filter(|_| !encrypted) {
            use md5::Digest;
            let md5 = crate::transfer::hex(&md5::Md5::digest(bytes));
            if etag != md5 {
                return Err(Error::transient(format!(
                    "writing {name} on {}: the server stored other bytes (ETag {etag}, MD5 of \
                     what was sent {md5})",
                    self.label
                )));
            }
        }
        Ok(())
    }

    /// The size of `name` and the SHA-256 checksum the server keeps for it (base64, `-N`
    /// for a multipart object), when it keeps one.
    pub fn head_with_checksum(&self, name: &str) -> Result<Option<(u64, Option<String>)>> {
        let key = self.key(name);
        let mut action = self.bucket.head_object(Some(&self.credentials), &key);
        action
            .headers_mut()
            .insert("x-amz-checksum-mode", "ENABLED");
        let mut request = Request::new(rusty_s3::Method::Head, action.sign(SIGNED_FOR));
        request
            .headers
            .push(("x-amz-checksum-mode", "ENABLED".into()));
        let what = format!("looking at {name} (HeadObject)");
        match self.send_unless_absent(&what, request, "NoSuchKey") {
            Ok(Some(answer)) => {
                let header = |name: &str| {
                    answer
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let size = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Some((size, header("x-amz-checksum-sha256"))))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn head(&self, name: &str) -> Result<Option<u64>> {
        if !self.pins.is_empty() {
            return Ok(self.pins.get(name).map(|(_, size)| *size));
        }
        let key = self.key(name);
        let action = self.bucket.head_object(Some(&self.credentials), &key);
        let what = format!("looking at {name} (HeadObject)");
        match self.send(
            &what,
            Request::new(rusty_s3::Method::Head, action.sign(SIGNED_FOR)),
        ) {
            Ok(answer) => Ok(answer
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            // A HEAD answer has no body: a 404 is a 404, whatever its code.
            Err(err) if err.message.contains("HTTP 404") || err.message.contains("NoSuchKey") => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn sync_timeout(&self) -> Duration {
        self.sync_timeout
    }

    /// The time one HEAD of the bucket takes: the round trip `streams = auto` sizes from.
    pub fn measure_round_trip(&self) -> Duration {
        if let Some(measured) = self.round_trip.get() {
            return *measured;
        }
        let _ = self.head_bucket();
        self.round_trip.get().copied().unwrap_or_default()
    }

    fn head_bucket(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let looked = self.look_at_bucket();
        if looked.is_ok() {
            let _ = self.round_trip.set(started.elapsed());
        }
        looked
    }

    fn look_at_bucket(&self) -> Result<()> {
        let action = self.bucket.head_bucket(Some(&self.credentials));
        match self.send(
            "looking at the bucket (HeadBucket)",
            Request::new(rusty_s3::Method::Head, action.sign(SIGNED_FOR)),
        ) {
            Ok(_) => Ok(()),
            // A HEAD answer has no body to say why: ask in a way that gets one.
            Err(err) if !err.transient => self.list_page(None).map(drop),
            Err(err) => Err(err),
        }
    }

    fn list_page(&self, token: Option<&str>) -> Result<rusty_s3::actions::ListObjectsV2Response> {
        let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        action.with_prefix(self.list_prefix());
        action.with_delimiter("/");
        if let Some(token) = token {
            action.with_continuation_token(token.to_string());
        }
        let mut answer = self.send(
            "listing the bucket (ListObjectsV2)",
            Request::get(action.sign(SIGNED_FOR)),
        )?;
        let text = read_text(&mut answer, &self.label)?;
        ListObjectsV2::parse_response(&text).map_err(|err| {
            Error::copy(format!(
                "{}: cannot read the bucket's listing: {err}",
                self.label
            ))
        })
    }

    fn get(&self, name: &str, range: Option<(u64, u64)>) -> Result<Option<ureq::Body>> {
        let key = self.key(name);
        let mut action = self.bucket.get_object(Some(&self.credentials), &key);
        if let Some((version, _)) = self.pins.get(name) {
            action.query_mut().insert("versionId", version.clone());
        } else if !self.pins.is_empty() {
            return Ok(None);
        }
        let mut request = Request::get(action.sign(SIGNED_FOR));
        if let Some((from, to)) = range {
            request
                .headers
                .push(("range", format!("bytes={from}-{}", to.saturating_sub(1))));
        }
        request.deadline = Some(self.timeout * 8);
        Ok(self
            .send_unless_absent(&format!("reading {name} (GetObject)"), request, "NoSuchKey")?
            .map(|answer| answer.into_body()))
    }
}

fn agent(settings: &S3Settings, timeout: Duration) -> Result<ureq::Agent> {
    let roots = match &settings.ca_file {
        None => ureq::tls::RootCerts::PlatformVerifier,
        Some(path) => {
            // A regular file of at most 1 MiB (a CA bundle), opened as a plain file.
            let mut pem = Vec::new();
            crate::safe_fs::open_file(path)
                .and_then(|file| file.take(1024 * 1024).read_to_end(&mut pem))
                .map_err(|err| {
                    Error::config(format!("cannot read ca_file {}: {err}", path.display()))
                })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Error::config(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
    };
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(roots)
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .https_only(settings.endpoint.starts_with("https://"))
        .timeout_connect(Some(timeout))
        .max_idle_connections_per_host(32)
        .user_agent(concat!("cvp-backup-copy/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

pub(crate) enum Body<'a> {
    Empty,
    Bytes(Vec<u8>),
    Reader(&'a mut dyn Read, u64),
}

/// A signed URL and what goes with it.
pub(crate) struct Request<'a> {
    pub method: rusty_s3::Method,
    pub url: url::Url,
    /// Exactly the headers that were signed (and a range, which is not).
    pub headers: Vec<(&'static str, String)>,
    pub body: Body<'a>,
    /// How long the answer may take (default: `timeout`).
    pub deadline: Option<Duration>,
}

impl<'a> Request<'a> {
    pub fn new(method: rusty_s3::Method, url: url::Url) -> Request<'a> {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: Body::Empty,
            deadline: None,
        }
    }

    pub fn get(url: url::Url) -> Request<'a> {
        Request::new(rusty_s3::Method::Get, url)
    }
}

fn read_text(answer: &mut ureq::http::Response<ureq::Body>, label: &str) -> Result<String> {
    answer
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_string()
        .map_err(|err| Error::transient(format!("reading an answer from {label}: {err}")))
}

pub fn base64_sha256(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

/// The text of the first `<tag>` in an S3 answer (codes, IDs, markers: no entities but
/// `&amp;` and friends, which are decoded).
pub fn xml_text(text: &str, tag: &str) -> Option<String> {
    xml_elements(text, tag).next().map(xml_unescape)
}

/// The insides of every `<tag>...</tag>`, in order.
pub fn xml_elements<'t>(text: &'t str, tag: &str) -> impl Iterator<Item = &'t str> + 't {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let inner = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(inner)
    })
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// A whole small object, written when the writer is flushed (a claim, a check's probe).
struct PutOnFlush<'a> {
    remote: &'a S3Remote,
    name: String,
    bytes: Vec<u8>,
}

impl Write for PutOnFlush<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > 1024 * 1024 {
            return Err(std::io::Error::other("a small file only"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.remote
            .put_bytes(&self.name, &self.bytes)
            .map_err(std::io::Error::other)
    }
}

/// A fetch's reader: ranged GETs of `READ_RANGE` one after another, each with a deadline,
/// so a stalled server is noticed without limiting the whole object's time.
struct RangedReader<'a> {
    remote: &'a S3Remote,
    name: String,
    offset: u64,
    /// Where the reading ends: the object's size, or the end of the range asked for.
    size: u64,
    /// Where the range being read ends.
    range_end: u64,
    body: Option<Box<dyn Read + Send + 'static>>,
}

impl Read for RangedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset >= self.size {
            return Ok(0);
        }
        if self.body.is_none() {
            let end = (self.offset + READ_RANGE).min(self.size);
            let body = self
                .remote
                .get(&self.name, Some((self.offset, end)))
                .map_err(|err| {
                    let kind = if err.transient {
                        std::io::ErrorKind::ConnectionReset
                    } else {
                        std::io::ErrorKind::Other
                    };
                    std::io::Error::new(kind, err.message)
                })?
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{} is gone from the bucket", self.name),
                    )
                })?;
            self.body = Some(Box::new(body.into_reader().take(end - self.offset)));
            self.range_end = end;
        }
        let n = match self.body.as_mut() {
            Some(body) => body.read(buf)?,
            None => 0,
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} ended early at {} bytes", self.name, self.offset),
            ));
        }
        self.offset += n as u64;
        if self.offset >= self.range_end {
            self.body = None;
        }
        Ok(n)
    }
}

impl Remote for S3Remote {
    fn describe(&self) -> String {
        self.label.clone()
    }

    /// A bucket is made by its owner (with the rights and lock settings it needs), never by
    /// the node: missing is an error; a prefix needs nothing made.
    fn ensure_destination(&mut self) -> Result<bool> {
        self.head_bucket()?;
        if self.settings.lock.is_some() && self.object_lock()?.is_none() {
            return Err(Error::config(format!(
                "{}: lock_days is set but bucket {} has no Object Lock: Object Lock is chosen \
                 when a bucket is created; create one with it (README: A stolen node), or \
                 remove lock_days",
                self.label, self.settings.bucket
            )));
        }
        Ok(false)
    }

    fn list(&mut self) -> Result<Option<Vec<RemoteEntry>>> {
        if !self.pins.is_empty() {
            return Ok(Some(
                self.pins
                    .iter()
                    .map(|(name, (_, size))| RemoteEntry {
                        name: name.clone(),
                        size: *size,
                    })
                    .collect(),
            ));
        }
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            crate::signals::check("listing the bucket")?;
            let page = self.list_page(token.as_deref())?;
            for object in &page.contents {
                if let Some(name) = self.name_of(&object.key) {
                    entries.push(RemoteEntry {
                        name: name.to_string(),
                        size: object.size.unwrap_or(0),
                    });
                }
            }
            // A token met before (or too many pages) ends it: a server cannot loop us.
            match page.next_continuation_token {
                Some(next) if seen.len() < MAX_PAGES && seen.insert(next.clone()) => {
                    token = Some(next)
                }
                Some(_) => {
                    return Err(Error::copy(format!(
                        "{}: the bucket's listing does not end (a continuation token came \
                         twice, or more than {MAX_PAGES} pages)",
                        self.label
                    )))
                }
                None => break,
            }
        }
        // An unfinished multipart upload of NAME is NAME's partial: resumed by the next
        // attempt, aborted by remote hygiene like an SFTP partial file.
        for (key, _) in self.unfinished_uploads(&self.list_prefix())? {
            let Some(name) = self.name_of(&key) else {
                continue;
            };
            if let Some(RemoteName::Backup(file)) = RemoteName::parse(name) {
                let partial = file.partial_name();
                if !entries.iter().any(|e| e.name == partial) {
                    entries.push(RemoteEntry {
                        name: partial,
                        size: 0,
                    });
                }
            }
        }
        Ok(Some(entries))
    }

    fn read_small(&mut self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let Some(body) = self.get(name, None)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        body.into_reader()
            .take(max_bytes)
            .read_to_end(&mut bytes)
            .map_err(|err| {
                Error::transient(format!("reading {name} from {}: {err}", self.label))
            })?;
        Ok(Some(bytes))
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn Write + '_>> {
        Ok(Box::new(PutOnFlush {
            remote: self,
            name: name.to_string(),
            bytes: Vec::new(),
        }))
    }

    /// S3 has no create-if-absent everywhere (AWS's If-None-Match is recent): the caller
    /// (the claim) has just read the name absent. Two nodes racing for one prefix within a
    /// round trip is the gap.
    fn create_exclusive(&mut self, name: &str) -> Result<Option<Box<dyn Write + '_>>> {
        Ok(Some(Box::new(PutOnFlush {
            remote: self,
            name: name.to_string(),
            bytes: Vec::new(),
        })))
    }

    fn open_at(&mut self, name: &str, _offset: u64) -> Result<Box<dyn SeekWrite + '_>> {
        Err(Error::copy(format!(
            "internal error: {name} on {} is written by a multipart upload, not in place",
            self.label
        )))
    }

    fn open_read_at(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>> {
        let size = self
            .head(name)?
            .ok_or_else(|| Error::copy(format!("{name} is not in {}", self.label)))?;
        Ok(Box::new(RangedReader {
            remote: self,
            name: name.to_string(),
            offset,
            size,
            range_end: offset,
            body: None,
        }))
    }

    /// Ranged GETs that end where the range does (no HEAD first: an object shorter than
    /// the range ends early, which the reader reports).
    fn open_read_range(
        &mut self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(RangedReader {
            remote: self,
            name: name.to_string(),
            offset: range.start,
            size: range.end,
            range_end: range.start,
            body: None,
        }))
    }

    fn size_of(&mut self, name: &str) -> Result<Option<u64>> {
        self.head(name)
    }

    fn round_trip(&mut self) -> Duration {
        self.measure_round_trip()
    }

    fn rename_replace(&mut self, from: &str, to: &str) -> Result<()> {
        Err(Error::copy(format!(
            "internal error: no renames on {} ({from} to {to}): objects are written whole",
            self.label
        )))
    }

    fn rename_new(&mut self, from: &str, to: &str) -> Result<()> {
        self.rename_replace(from, to)
    }

    /// A partial name is an unfinished multipart upload: removing it aborts that upload.
    fn remove(&mut self, name: &str) -> Result<()> {
        if let Some(RemoteName::Partial(data)) = RemoteName::parse(name) {
            return self.abort_uploads_of(data, name);
        }
        let key = self.key(name);
        if self.settings.lock.is_some() {
            // Every version goes (a plain DELETE would only hide the object behind a marker),
            // never one still locked: the caller asked `locked_until` first.
            let versions = self.versions_of(name)?;
            let (objects, markers): (Vec<_>, Vec<_>) =
                versions.into_iter().partition(|v| !v.delete_marker);
            for version in objects.iter().chain(&markers) {
                self.delete_version(&key, &version.id)?;
            }
            return Ok(());
        }
        let action = self.bucket.delete_object(Some(&self.credentials), &key);
        self.send_unless_absent(
            &format!("deleting {name} (DeleteObject)"),
            Request::new(rusty_s3::Method::Delete, action.sign(SIGNED_FOR)),
            "NoSuchKey",
        )
        .map(drop)
    }

    fn put_whole(&mut self, name: &str, bytes: &[u8], _replacing: bool) -> Result<()> {
        self.put_bytes(name, bytes)
    }

    fn keeps_what_it_writes(&self) -> bool {
        self.settings.lock.is_some()
    }

    fn locked_until(&mut self, name: &str) -> Result<Option<String>> {
        if self.settings.lock.is_none() {
            return Ok(None);
        }
        let key = self.key(name);
        let mut latest: Option<String> = None;
        for version in self.versions_of(name)? {
            if version.delete_marker {
                continue;
            }
            if let Some(until) = self.retained_until(&key, &version.id)? {
                let later = latest
                    .as_deref()
                    .is_none_or(|l| instant(&until) > instant(l) || instant(l).is_none());
                if still_locked(&until) && later {
                    latest = Some(until);
                }
            }
        }
        Ok(latest)
    }

    fn extend_lock(&mut self, name: &str) -> Result<usize> {
        self.extend_retention(name)
    }

    /// With `lock_days`, a name hidden behind a delete marker is read from its oldest
    /// version (the node's): a hidden kept set is judged by its own manifest.
    fn read_kept(&mut self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.read_small(name, max_bytes)? {
            return Ok(Some(bytes));
        }
        if self.settings.lock.is_none() || !self.pins.is_empty() {
            return Ok(None);
        }
        let Some(oldest) = self
            .versions_of(name)?
            .into_iter()
            .rev()
            .find(|v| !v.delete_marker)
        else {
            return Ok(None);
        };
        self.pin(name, &oldest.id, oldest.size);
        let bytes = self.read_small(name, max_bytes);
        self.unpin_all();
        bytes
    }

    fn hidden_sets(&mut self) -> Result<Vec<BackupName>> {
        Ok(crate::recover::hidden_data(
            &crate::recover::versions_by_name(self)?,
        ))
    }

    fn list_for_locks(&mut self) -> Result<Option<Vec<RemoteEntry>>> {
        if self.settings.lock.is_none() {
            return self.list();
        }
        let mut entries = self.list()?.unwrap_or_default();
        let mut seen: std::collections::HashSet<String> =
            entries.iter().map(|e| e.name.clone()).collect();
        for hidden in self.list_with_hidden()? {
            if seen.insert(hidden.name.clone()) {
                entries.push(hidden);
            }
        }
        Ok(Some(entries))
    }

    /// In a versioned bucket: delete the object's version (a plain DELETE only hides it
    /// behind a marker); in one without versions: overwrite it, then delete it.
    fn try_to_destroy(&mut self, name: &str) -> Result<Vec<Attempt>> {
        let key = self.key(name);
        let head = self.bucket.head_object(Some(&self.credentials), &key);
        let answer = self.send(
            &format!("looking at {name} (HeadObject)"),
            Request::new(rusty_s3::Method::Head, head.sign(SIGNED_FOR)),
        )?;
        let version = answer
            .headers()
            .get("x-amz-version-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && *v != "null")
            .map(str::to_string);
        let mut attempts = Vec::new();
        match version {
            Some(version) => {
                let mut delete = self.bucket.delete_object(Some(&self.credentials), &key);
                delete.query_mut().insert("versionId", version.clone());
                attempts.push(self.attempt(
                    "delete its version (DeleteObject with versionId)",
                    Request::new(rusty_s3::Method::Delete, delete.sign(SIGNED_FOR)),
                )?);
                // GOVERNANCE gives way to a key allowed to bypass it.
                if attempts.iter().all(|a| !a.allowed) {
                    let bypass = [("x-amz-bypass-governance-retention", "true".to_string())];
                    let url = self.signed(
                        rusty_s3::Method::Delete,
                        Some(&key),
                        &[("versionId", version)],
                        &bypass,
                    );
                    let mut request = Request::new(rusty_s3::Method::Delete, url);
                    request.headers = bypass.to_vec();
                    attempts.push(self.attempt(
                        "delete its version bypassing a GOVERNANCE retention",
                        request,
                    )?);
                }
            }
            None => {
                let put = self.bucket.put_object(Some(&self.credentials), &key);
                let mut request = Request::new(rusty_s3::Method::Put, put.sign(SIGNED_FOR));
                request.body = Body::Bytes(b"overwritten\n".to_vec());
                attempts
                    .push(self.attempt("overwrite it (the bucket keeps no versions)", request)?);
                let delete = self.bucket.delete_object(Some(&self.credentials), &key);
                attempts.push(self.attempt(
                    "delete it (DeleteObject)",
                    Request::new(rusty_s3::Method::Delete, delete.sign(SIGNED_FOR)),
                )?);
            }
        }
        Ok(attempts)
    }
}

impl S3Remote {
    /// A destructive request and the server's verdict: only a 403 is a refusal; another
    /// error answer, or none, is no test.
    fn attempt(&self, what: &'static str, request: Request<'_>) -> Result<Attempt> {
        match self.exchange(what, request) {
            Ok(_) => Ok(Attempt::new(what, true, "done".into())),
            Err((Some(refusal), _)) if refusal.status == 403 => Ok(Attempt::new(
                what,
                false,
                crate::error::printable(&format!("{}: {}", refusal.code, refusal.message)),
            )),
            Err((_, err)) => Err(Error::transient(format!(
                "testing whether the node's key can {what}: {err}; cannot tell"
            ))),
        }
    }
}

impl S3Remote {
    /// Abort every unfinished upload whose key is the partial's file (NAME or NAME.age).
    fn abort_uploads_of(&self, data: BackupName, partial: &str) -> Result<()> {
        for (key, id) in self.unfinished_uploads(&self.list_prefix())? {
            let matches = self
                .name_of(&key)
                .and_then(RemoteName::parse)
                .is_some_and(|parsed| match parsed {
                    RemoteName::Backup(file) => file.name == data && file.partial_name() == partial,
                    _ => false,
                });
            if matches {
                self.abort_upload(&key, &id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_16_mib_until_10000_would_not_hold_the_file() {
        assert_eq!(part_size(0), PART_SIZE);
        assert_eq!(part_size(2 << 30), PART_SIZE);
        let budget = MAX_PARTS - TAIL_PARTS - 2;
        assert_eq!(part_size(PART_SIZE * budget), PART_SIZE);
        let big = PART_SIZE * budget + 1;
        assert_eq!(part_size(big), 17 * 1024 * 1024);
        assert!(part_size(big) * budget >= big);
        let huge = 5u64 << 40;
        assert!(part_size(huge) * MAX_PARTS >= huge);
        assert_eq!(part_size(huge) % (1024 * 1024), 0);
    }

    #[test]
    fn a_part_plan_covers_the_file_and_ends_in_smaller_parts() {
        for len in [
            WHOLE_PUT_MAX + 1,
            100 << 20,
            2 << 30,
            2_147_483_649,
            200 << 30,
        ] {
            let plan = part_plan(len);
            assert_eq!(plan.first().map(|r| r.start), Some(0));
            assert_eq!(plan.last().map(|r| r.end), Some(len));
            assert!(plan.windows(2).all(|w| w[0].end == w[1].start), "{len}");
            assert!(
                plan.len() as u64 <= MAX_PARTS,
                "{len}: {} parts",
                plan.len()
            );
            let but_last = &plan[..plan.len() - 1];
            assert!(but_last.iter().all(|r| r.end - r.start >= 5 << 20), "{len}");
            assert_eq!(plan, part_plan(len), "the same every time");
        }
        let plan = part_plan(2 << 30);
        assert_eq!(plan[0].end, PART_SIZE);
        assert_eq!(
            plan.iter()
                .rev()
                .take(8)
                .filter(|r| r.end - r.start == TAIL_PART)
                .count(),
            8
        );
    }

    #[test]
    fn error_answers_are_read() {
        let text = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The \
                    bucket &amp; all</Message></Error>";
        assert_eq!(xml_text(text, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(
            xml_text(text, "Message").as_deref(),
            Some("The bucket & all")
        );
        assert_eq!(xml_text(text, "Nope"), None);
        let list = "<R><Upload><Key>a</Key><UploadId>1</UploadId></Upload>\
                    <Upload><Key>b</Key><UploadId>2</UploadId></Upload></R>";
        let keys: Vec<_> = xml_elements(list, "Upload")
            .filter_map(|u| xml_text(u, "Key"))
            .collect();
        assert_eq!(keys, ["a", "b"]);
    }
}
