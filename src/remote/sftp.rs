//! SFTP over libssh2 (the ssh2 crate): the one `Remote` implementation.

use super::known_hosts::{self, Verified};
use super::{Attempt, Remote, RemoteEntry, SeekWrite};
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::names::RemoteName;
use crate::secret::Secret;
use ssh2::{ErrorCode, MethodType, OpenFlags, OpenType, Session, Sftp};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// With AES-NI, AES-GCM is the cheapest cipher libssh2 offers (see domain notes).
const WITH_AES_NI: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "chacha20-poly1305@openssh.com",
];
/// Without it, ChaCha20 (where libssh2 has it) beats software AES.
const WITHOUT_AES_NI: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
];

fn cipher_preference(configured: Option<&str>) -> Vec<&str> {
    match configured {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect(),
        None if std::arch::is_x86_feature_detected!("aes") => WITH_AES_NI.to_vec(),
        None => WITHOUT_AES_NI.to_vec(),
    }
}

// SFTP status codes (draft-ietf-secsh-filexfer-02).
const FX_NO_SUCH_FILE: i32 = 2;
const FX_PERMISSION_DENIED: i32 = 3;
const FX_FAILURE: i32 = 4;
const FX_OP_UNSUPPORTED: i32 = 8;

#[derive(Clone, Copy)]
pub struct ConnectOptions<'a> {
    pub server: &'a ServerConfig,
    pub password: Option<&'a Secret>,
    /// false for `--dry-run`: an unknown host's key is reported, not written.
    pub record_host_key: bool,
    /// Told, once logged in (before SFTP starts), how long the server took to offer its
    /// logins: a round trip, plus the 5-9 ms some OpenSSH versions wait before refusing the
    /// "none" login (see `round_trip_from_login`). More connections can start then, with
    /// the host key checked (or recorded) and the credentials accepted.
    pub on_round_trip: Option<&'a (dyn Fn(Duration) + Sync)>,
    /// Told, once the SSH handshake is done (before the host key is checked), how long it
    /// took: connections started then are ready about when this one has listed the
    /// destination (see `round_trip_from_handshake`).
    pub on_handshake: Option<&'a (dyn Fn(Duration) + Sync)>,
    /// For a connection started beside the first: after its handshake it waits for the
    /// first one's login (settled by whoever makes the first) before it checks the host
    /// key, which a new host's first connection records for it, and logs in itself, so a
    /// wrong password fails once, not once per connection.
    pub after: Option<&'a crate::gate::Gate>,
}

pub struct SftpRemote {
    // Field order matters: a file handle closes before the SFTP channel, and the channel
    // before its session.
    /// The file a read-back reads in blocks, kept open from block to block.
    reading: Option<(PathBuf, ssh2::File)>,
    sftp: Sftp,
    session: Session,
    /// The session's socket, to cut a dead connection without waiting on it.
    socket: TcpStream,
    destination: PathBuf,
    label: String,
    /// libssh2 timeouts (ms): for any one operation, and for syncing and closing a file.
    idle_ms: u32,
    sync_ms: u32,
    /// `append_only = yes`: never remove, truncate, reopen or replace anything there.
    append_only: bool,
    /// How long the first `stat` of the destination took: a round trip, so planning the
    /// streams costs no request of its own.
    first_stat: Option<Duration>,
}

/// Files the node writes to an append-only server: nobody may write to them once created,
/// and the node's account is refused the chmod that would allow it.
const READ_ONLY: i32 = 0o444;
const OWNER_WRITES: i32 = 0o640;

fn millis(seconds: u64) -> u32 {
    seconds.saturating_mul(1000).min(u32::MAX as u64) as u32
}

pub struct Connected {
    pub remote: SftpRemote,
    pub host_key: Verified,
    pub cipher: String,
}

fn connect_error(server: &ServerConfig, what: impl std::fmt::Display) -> Error {
    Error::connect(format!(
        "{}@{}:{}: {what}",
        server.user, server.host, server.port
    ))
}

/// Unreachable, timed out, reset: another attempt may get through (unlike a refused key).
fn network_error(server: &ServerConfig, what: impl std::fmt::Display) -> Error {
    Error {
        transient: true,
        ..connect_error(server, what)
    }
}

/// The links of a connection, in order, as `check` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP and the SSH handshake.
    Reached,
    HostKey,
    Authenticated,
}

/// `ndots` as /etc/resolv.conf sets it (the resolver's default, 1, otherwise).
fn read_ndots() -> String {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|text| {
            text.lines()
                .filter(|line| line.trim_start().starts_with("options"))
                .flat_map(|line| line.split_whitespace())
                .filter_map(|word| word.strip_prefix("ndots:"))
                .next_back()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1".into())
}

/// Why a server name did not resolve, and what this static (musl) binary consults: unlike
/// the system's tools it does not go through nsswitch, so a name only NIS, LDAP, mDNS or
/// systemd-resolved knows is unknown to it.
fn unresolved(host: &str, err: &std::io::Error, ndots: &str) -> String {
    let dots = host.matches('.').count();
    let search = match ndots.parse::<usize>() {
        Ok(n) if dots < n => format!(
            "`{host}` has fewer dots than ndots ({n}), so the search domains of \
             /etc/resolv.conf are tried with it"
        ),
        Ok(n) => format!(
            "`{host}` has at least ndots ({n}) dots, so it is looked up as it is, without the \
             search domains"
        ),
        Err(_) => format!("ndots is {ndots}"),
    };
    format!(
        "cannot resolve the server name `{host}`: {err}. This binary looks names up in \
         /etc/hosts and then in DNS (the nameservers of /etc/resolv.conf), not through \
         nsswitch.conf; {search}. Give the full name (e.g. backup.example.net) or the address \
         in `server`"
    )
}

pub fn connect(options: ConnectOptions<'_>) -> Result<Connected> {
    connect_observed(options, &mut |_, _| {})
}

/// `connect`, telling `passed` about each link as it holds (with a detail to show).
pub fn connect_observed(
    options: ConnectOptions<'_>,
    passed: &mut dyn FnMut(Stage, String),
) -> Result<Connected> {
    let server = options.server;
    let timeout = Duration::from_secs(server.timeout);
    let addrs: Vec<_> = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|err| network_error(server, unresolved(&server.host, &err, &read_ndots())))?
        .collect();
    let mut last_error = None;
    let mut tcp = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        let why = last_error
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into());
        network_error(server, format!("server unreachable: {why}"))
    })?;
    let _ = tcp.set_nodelay(true);
    let socket = tcp
        .try_clone()
        .map_err(|err| network_error(server, format!("cannot use the connection: {err}")))?;

    let mut session = Session::new()
        .map_err(|err| connect_error(server, format!("cannot start an SSH session: {err}")))?;
    session.set_timeout(millis(server.timeout));
    session.set_tcp_stream(tcp);
    let ciphers = cipher_preference(server.ciphers.as_deref());
    if server.ciphers.is_some() {
        let supported = session
            .supported_algs(MethodType::CryptCs)
            .unwrap_or_default();
        if !ciphers.iter().any(|c| supported.contains(c)) {
            return Err(Error::config(format!(
                "[Server_Settings] ciphers: none of {} is supported; choose from {}",
                ciphers.join(","),
                supported.join(",")
            )));
        }
    }
    prefer(&session, MethodType::CryptCs, &ciphers);
    prefer(&session, MethodType::CryptSc, &ciphers);
    let known_types = known_hosts::known_key_types(&server.known_hosts, &server.host, server.port);
    let known_refs: Vec<&str> = known_types.iter().map(String::as_str).collect();
    prefer(&session, MethodType::HostKey, &known_refs);
    let shaking = std::time::Instant::now();
    session
        .handshake()
        .map_err(|err| network_error(server, format!("SSH handshake failed: {err}")))?;
    if let Some(tell) = options.on_handshake {
        tell(shaking.elapsed());
    }
    if let Some(first) = options.after {
        first.wait().map_err(|err| connect_error(server, err))?;
    }
    passed(
        Stage::Reached,
        format!(
            "{}:{} answers SSH (cipher {})",
            server.host,
            server.port,
            session.methods(MethodType::CryptCs).unwrap_or("unknown")
        ),
    );

    let host_key = known_hosts::verify(
        &session,
        &server.host,
        server.port,
        &server.known_hosts,
        server.host_key_policy,
        options.record_host_key,
    )?;
    passed(
        Stage::HostKey,
        match &host_key {
            Verified::Known => format!("known in {}", server.known_hosts.display()),
            Verified::Recorded { fingerprint } => format!(
                "new host: recorded {fingerprint} in {} (host_key_policy = accept-new)",
                server.known_hosts.display()
            ),
        },
    );
    let login = authenticate(&session, server, options.password)?;
    if let Some(tell) = options.on_round_trip {
        tell(login);
    }
    crate::timeline::connected();
    passed(
        Stage::Authenticated,
        format!("logged in as {}", server.user),
    );
    let cipher = session
        .methods(MethodType::CryptCs)
        .unwrap_or("unknown")
        .to_string();
    let sftp = session
        .sftp()
        .map_err(|err| network_error(server, format!("cannot start SFTP on the server: {err}")))?;
    let label = server.label();
    Ok(Connected {
        remote: SftpRemote {
            reading: None,
            sftp,
            session,
            socket,
            destination: PathBuf::from(&server.destination),
            label,
            idle_ms: millis(server.timeout),
            sync_ms: millis(server.sync_timeout.max(server.timeout)),
            append_only: server.append_only,
            first_stat: None,
        },
        host_key,
        cipher,
    })
}

/// `count` connections opened side by side (each handshake costs round trips on a WAN), in
/// the order asked; a failed one is its error.
pub fn connect_several(options: ConnectOptions<'_>, count: usize) -> Vec<Result<SftpRemote>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| scope.spawn(move || connect(options).map(|c| c.remote)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::connect("a connection attempt crashed")))
            })
            .collect()
    })
}

/// Close `remotes` in the background (`finish`: nothing waits for the server's answers).
/// Join the handle before exiting so the server is told.
pub fn release_all(remotes: Vec<SftpRemote>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || remotes.into_iter().for_each(SftpRemote::finish))
}

/// Put `wanted` algorithms first, keeping every other one libssh2 supports after them.
fn prefer(session: &Session, method: MethodType, wanted: &[&str]) {
    let Ok(supported) = session.supported_algs(method) else {
        return;
    };
    let mut order: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| supported.contains(w))
        .collect();
    if order.is_empty() {
        return;
    }
    let rest: Vec<&str> = supported
        .iter()
        .copied()
        .filter(|s| !order.contains(s))
        .collect();
    order.extend(rest);
    if let Err(err) = session.method_pref(method, &order.join(",")) {
        log::debug!("cannot set algorithm preference {}: {err}", order.join(","));
    }
}

/// The least the round trip can be, from how long the server took to offer its logins
/// (`login`): the 5-9 ms some OpenSSH versions wait before refusing the "none" login taken
/// off at its most, so a LAN is never taken for a WAN. For starting connections early; the
/// streams are planned on a measured round trip, which starts any more.
pub fn round_trip_from_login(login: Duration) -> Duration {
    login.saturating_sub(Duration::from_millis(10))
}

/// The least the round trip can be, from how long the SSH handshake took: its three round
/// trips (banner, key exchange, new keys), 10 ms of key exchange work taken off at its most
/// (as for `round_trip_from_login`).
pub fn round_trip_from_handshake(handshake: Duration) -> Duration {
    (handshake / 3).saturating_sub(Duration::from_millis(10))
}

/// Log in; how long the server took to offer its login methods.
fn authenticate(
    session: &Session,
    server: &ServerConfig,
    password: Option<&Secret>,
) -> Result<Duration> {
    let asked = std::time::Instant::now();
    let offered = session.auth_methods(&server.user).unwrap_or("").to_string();
    let login = asked.elapsed();
    if session.authenticated() {
        return Ok(login);
    }
    let mut attempts = Vec::new();
    if let Some(identity) = &server.identity_file {
        match session.userauth_pubkey_file(&server.user, None, identity, None) {
            Ok(()) if session.authenticated() => return Ok(login),
            Ok(()) => attempts.push(format!("key {} was not accepted", identity.display())),
            Err(err) => attempts.push(format!("key {}: {}", identity.display(), err.message())),
        }
    }
    if let Some(password) = password {
        if offered.split(',').any(|m| m == "password") {
            match session.userauth_password(&server.user, password.expose()) {
                Ok(()) if session.authenticated() => return Ok(login),
                _ => attempts.push("password rejected".into()),
            }
        }
        if offered.split(',').any(|m| m == "keyboard-interactive") {
            let mut prompter = PasswordPrompt { password };
            match session.userauth_keyboard_interactive(&server.user, &mut prompter) {
                Ok(()) if session.authenticated() => return Ok(login),
                _ => attempts.push("keyboard-interactive password rejected".into()),
            }
        }
    }
    if attempts.is_empty() {
        attempts.push(format!("the server offers only {offered}"));
    }
    Err(connect_error(
        server,
        format!(
            "authentication failed as {} ({}): check user, password (`cvp-backup-copy edit`) or \
             identity_file",
            server.user,
            attempts.join("; ")
        ),
    ))
}

struct PasswordPrompt<'a> {
    password: &'a Secret,
}

impl ssh2::KeyboardInteractivePrompt for PasswordPrompt<'_> {
    fn prompt<'b>(
        &mut self,
        _username: &str,
        _instructions: &str,
        prompts: &[ssh2::Prompt<'b>],
    ) -> Vec<String> {
        // Answer hidden prompts (the password) only; never echo it into a visible one.
        prompts
            .iter()
            .map(|p| {
                if p.echo {
                    String::new()
                } else {
                    self.password.expose().to_string()
                }
            })
            .collect()
    }
}

fn sftp_code(err: &ssh2::Error) -> Option<i32> {
    match err.code() {
        ErrorCode::SFTP(code) => Some(code),
        ErrorCode::Session(_) => None,
    }
}

impl SftpRemote {
    /// The link's round-trip time: one SFTP request the server answers at once (a `stat`
    /// of the destination; starting SFTP is no measure, the server starts a process). The
    /// first such stat answers it when one was made.
    pub fn measure_round_trip(&mut self) -> Duration {
        match self.first_stat {
            Some(took) => took,
            None => self.stat_destination().1,
        }
    }

    /// Stat the destination folder, timing it (the first time is kept as the round trip).
    fn stat_destination(&mut self) -> (std::result::Result<ssh2::FileStat, ssh2::Error>, Duration) {
        let started = std::time::Instant::now();
        let stat = self.sftp.stat(&self.destination);
        let took = started.elapsed();
        self.first_stat.get_or_insert(took);
        (stat, took)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.destination.join(name)
    }

    /// Done: an SSH disconnect (the server ends its sftp-server and logs a clean
    /// disconnect), then the socket is cut, so that no round trip waits for the server to
    /// answer the close of a read handle, the channel and the session. Every file this
    /// connection wrote is closed by now (each upload syncs and closes before its rename).
    pub fn finish(self) {
        let _ = self
            .session
            .disconnect(None, "cvp-backup-copy is done", None);
        self.abandon();
    }

    /// Drop a connection that failed: cut the socket first so closing the channel and the
    /// session does not wait for a server that stopped answering.
    pub fn abandon(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    fn writer(&self, file: ssh2::File) -> SyncingFile {
        SyncingFile {
            file: Some(file),
            session: self.session.clone(),
            idle_ms: self.idle_ms,
            sync_ms: self.sync_ms,
            synced: false,
        }
    }

    fn mode(&self) -> i32 {
        if self.append_only {
            READ_ONLY
        } else {
            OWNER_WRITES
        }
    }

    /// What append_only forbids the node to do, refused before anything is sent.
    fn forbidden(&self, what: &str, name: &str) -> Error {
        Error::copy(format!(
            "not {what} {name} on {}: the destination is append_only, where the node never \
             removes, truncates or replaces a file",
            self.label
        ))
    }

    fn fail(&self, action: &str, path: &Path, err: &ssh2::Error) -> Error {
        let hint = match sftp_code(err) {
            Some(FX_PERMISSION_DENIED) => {
                "permission denied: the backup user must be able to write there".to_string()
            }
            Some(FX_NO_SUCH_FILE) => "no such file or directory".to_string(),
            Some(FX_FAILURE) => format!(
                "the server reported a failure ({}): is its disk full, or is the destination \
                 not a directory?",
                err.message()
            ),
            _ => err.message().to_string(),
        };
        let message = format!("{action} {} on {}: {hint}", path.display(), self.label);
        match sftp_code(err) {
            // The server answered: the same request would get the same answer.
            Some(_) => Error::copy(message),
            None => Error::transient(message),
        }
    }
}

impl Remote for SftpRemote {
    fn finish(self: Box<Self>) {
        SftpRemote::finish(*self)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn ensure_destination(&mut self) -> Result<bool> {
        match self.stat_destination().0 {
            Ok(stat) if stat.is_dir() => return Ok(false),
            Ok(_) => {
                return Err(Error::copy(format!(
                    "destination {} is not a directory",
                    self.label
                )))
            }
            Err(_) => {}
        }
        let mut partial = PathBuf::new();
        for component in self.destination.components() {
            partial.push(component);
            if self.sftp.stat(&partial).is_ok() {
                continue;
            }
            if let Err(err) = self.sftp.mkdir(&partial, 0o750) {
                return Err(self.fail("cannot create directory", &partial, &err));
            }
        }
        Ok(true)
    }

    fn ensure_listed(&mut self) -> Result<(bool, Vec<RemoteEntry>)> {
        if let Some(listing) = self.list()? {
            return Ok((false, listing));
        }
        // Missing, or not a folder (`ensure_destination` says which).
        let created = self.ensure_destination()?;
        Ok((created, self.list()?.unwrap_or_default()))
    }

    fn list(&mut self) -> Result<Option<Vec<RemoteEntry>>> {
        let path = self.destination.clone();
        // Opening the folder takes one round trip: timed, it plans the streams when the
        // night's first request is a listing (no `stat` of its own).
        let started = std::time::Instant::now();
        let mut dir = match self.sftp.opendir(&path) {
            Ok(dir) => dir,
            Err(err) if sftp_code(&err) == Some(FX_NO_SUCH_FILE) => return Ok(None),
            Err(err) => return Err(self.fail("cannot list", &path, &err)),
        };
        self.first_stat.get_or_insert(started.elapsed());
        let mut entries = Vec::new();
        loop {
            match dir.readdir() {
                Ok((name, stat)) => {
                    let Some(name) = name.to_str().filter(|_| stat.is_file()) else {
                        continue;
                    };
                    entries.push(RemoteEntry {
                        name: name.to_string(),
                        size: stat.size.unwrap_or(0),
                    });
                }
                // The end of the folder.
                Err(err) if err.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_FILE) => break,
                Err(err) => return Err(self.fail("cannot list", &path, &err)),
            }
        }
        Ok(Some(entries))
    }

    fn read_small(&mut self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        let file = match self.sftp.open(&path) {
            Ok(file) => file,
            Err(err) if sftp_code(&err) == Some(FX_NO_SUCH_FILE) => return Ok(None),
            Err(err) => return Err(self.fail("cannot open", &path, &err)),
        };
        // Into one buffer of the most wanted: libssh2 then asks for all of it at once, and
        // the answers past the end come back with the data (`read_to_end` starts with a
        // 32-byte read: two round trips more on a WAN).
        let mut contents = vec![0u8; usize::try_from(max_bytes).unwrap_or(usize::MAX)];
        let mut filled = 0;
        let mut file = file;
        while filled < contents.len() {
            match file.read(&mut contents[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(Error::copy(format!(
                        "cannot read {} on {}: {err}",
                        path.display(),
                        self.label
                    )))
                }
            }
        }
        contents.truncate(filled);
        Ok(Some(contents))
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn Write + '_>> {
        if self.append_only {
            let taken = self.forbidden("overwriting", name);
            return self.create_exclusive(name)?.ok_or(taken);
        }
        let path = self.path(name);
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        match self
            .sftp
            .open_mode(&path, flags, OWNER_WRITES, OpenType::File)
        {
            Ok(file) => Ok(Box::new(self.writer(file))),
            Err(err) => Err(self.fail("cannot create", &path, &err)),
        }
    }

    fn creates_exclusively(&self) -> bool {
        true
    }

    fn create_exclusive(&mut self, name: &str) -> Result<Option<Box<dyn Write + '_>>> {
        let path = self.path(name);
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
        match self
            .sftp
            .open_mode(&path, flags, self.mode(), OpenType::File)
        {
            Ok(file) => Ok(Some(Box::new(self.writer(file)))),
            // OpenSSH answers O_EXCL on an existing file with a bare "failure".
            Err(err) if sftp_code(&err) == Some(FX_FAILURE) && self.size_of(name)?.is_some() => {
                Ok(None)
            }
            Err(err) => Err(self.fail("cannot create", &path, &err)),
        }
    }

    fn open_at(&mut self, name: &str, offset: u64) -> Result<Box<dyn SeekWrite + '_>> {
        if self.append_only {
            return Err(self.forbidden("reopening", name));
        }
        let path = self.path(name);
        let mut file = self
            .sftp
            .open_mode(&path, OpenFlags::WRITE, OWNER_WRITES, OpenType::File)
            .map_err(|err| self.fail("cannot reopen", &path, &err))?;
        file.seek(SeekFrom::Start(offset)).map_err(|err| {
            Error::transient(format!(
                "cannot resume {} on {}: {err}",
                path.display(),
                self.label
            ))
        })?;
        Ok(Box::new(self.writer(file)))
    }

    /// Written at once, without a look first: the rename that publishes it refuses a name
    /// taken (a look follows only then), so the usual night saves a round trip.
    fn put_new(&mut self, name: &str, bytes: &[u8]) -> Result<bool> {
        if self.append_only {
            // Its partials stay: never one written in vain.
            return super::put_new_after_a_look(self, name, bytes);
        }
        let refused = match self.put_whole(name, bytes, false) {
            Ok(()) => return Ok(true),
            Err(err) => err,
        };
        if self.size_of(name)?.is_none() {
            return Err(refused);
        }
        self.remove(&super::whole_partial(name))?;
        Ok(false)
    }

    fn open_creating(&mut self, name: &str) -> Result<Box<dyn SeekWrite + '_>> {
        if self.append_only {
            return Err(self.forbidden("reopening", name));
        }
        let path = self.path(name);
        let flags = OpenFlags::WRITE | OpenFlags::CREATE;
        match self
            .sftp
            .open_mode(&path, flags, OWNER_WRITES, OpenType::File)
        {
            Ok(file) => Ok(Box::new(self.writer(file))),
            Err(err) => Err(self.fail("cannot create", &path, &err)),
        }
    }

    fn open_read_at(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>> {
        let path = self.path(name);
        let mut file = self
            .sftp
            .open(&path)
            .map_err(|err| self.fail("cannot open", &path, &err))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(|err| {
                Error::transient(format!(
                    "cannot read {} on {} from {offset}: {err}",
                    path.display(),
                    self.label
                ))
            })?;
        }
        Ok(Box::new(ClassifyingReader {
            file,
            session: self.session.clone(),
        }))
    }

    /// One handle for all the blocks of a file: a block costs a seek, not an open and a
    /// close (two round trips).
    fn open_read_range(
        &mut self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Box<dyn Read + '_>> {
        let path = self.path(name);
        if !matches!(&self.reading, Some((open, _)) if *open == path) {
            self.reading = None;
            let file = self
                .sftp
                .open(&path)
                .map_err(|err| self.fail("cannot open", &path, &err))?;
            self.reading = Some((path.clone(), file));
        }
        let label = &self.label;
        let Some((_, file)) = self.reading.as_mut() else {
            return Err(Error::copy(format!("cannot open {}", path.display())));
        };
        file.seek(SeekFrom::Start(range.start)).map_err(|err| {
            Error::transient(format!(
                "cannot read {} on {label} from {}: {err}",
                path.display(),
                range.start
            ))
        })?;
        let len = range.end.saturating_sub(range.start);
        Ok(Box::new(
            ClassifyingReader {
                file,
                session: self.session.clone(),
            }
            .take(len),
        ))
    }

    fn round_trip(&mut self) -> Duration {
        self.measure_round_trip()
    }

    fn size_of(&mut self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name);
        match self.sftp.stat(&path) {
            Ok(stat) => Ok(Some(stat.size.unwrap_or(0))),
            Err(err) if sftp_code(&err) == Some(FX_NO_SUCH_FILE) => Ok(None),
            Err(err) => Err(self.fail("cannot stat", &path, &err)),
        }
    }

    fn rename_replace(&mut self, from: &str, to: &str) -> Result<()> {
        if self.append_only {
            return Err(self.forbidden("replacing", to));
        }
        // SFTP v3 rename fails when the target exists (OpenSSH uses link+unlink).
        self.remove(to)?;
        self.rename_new(from, to)
    }

    fn rename_new(&mut self, from: &str, to: &str) -> Result<()> {
        let (source, target) = (self.path(from), self.path(to));
        self.sftp.rename(&source, &target, None).map_err(|err| {
            self.fail(
                &format!("cannot rename {} to", source.display()),
                &target,
                &err,
            )
        })
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        if self.append_only {
            return Err(self.forbidden("removing", name));
        }
        let path = self.path(name);
        match self.sftp.unlink(&path) {
            Ok(()) => Ok(()),
            Err(err) if sftp_code(&err) == Some(FX_NO_SUCH_FILE) => Ok(()),
            Err(err) => Err(self.fail("cannot delete", &path, &err)),
        }
    }

    fn append_only(&self) -> bool {
        self.append_only
    }

    /// Overwrite, make writable, remove: what an intruder with the node's account would do
    /// to a copy, each asked of the server whatever the configuration says.
    fn try_to_destroy(&mut self, name: &str) -> Result<Vec<Attempt>> {
        let path = self.path(name);
        let label = self.label.clone();
        // Only "permission denied" is a refusal; any other answer, or none, is no test.
        let answer = |what: &str, outcome: std::result::Result<(), ssh2::Error>| match outcome {
            Ok(()) => Ok(Attempt::new(what, true, "done".into())),
            Err(err) if sftp_code(&err) == Some(FX_PERMISSION_DENIED) => {
                Ok(Attempt::new(what, false, err.message().to_string()))
            }
            Err(err) => Err(Error::transient(format!(
                "testing whether {label} lets the node {what}: the server answered {err}, \
                 which is no refusal: cannot tell"
            ))),
        };
        let flags = OpenFlags::WRITE | OpenFlags::TRUNCATE;
        let overwrite = self
            .sftp
            .open_mode(&path, flags, OWNER_WRITES, OpenType::File)
            .map(drop);
        let writable = || ssh2::FileStat {
            size: None,
            uid: None,
            gid: None,
            perm: Some(0o644),
            atime: None,
            mtime: None,
        };
        let chmod = self.sftp.setstat(&path, writable());
        let handle_chmod = self
            .sftp
            .open(&path)
            .and_then(|mut file| file.setstat(writable()));
        let remove = self.sftp.unlink(&path);
        let mut attempts = vec![
            answer("overwrite it", overwrite)?,
            answer("make it writable (chmod)", chmod)?,
            answer("make it writable through a handle (fsetstat)", handle_chmod)?,
            answer("remove it", remove)?,
        ];
        attempts.push(self.try_a_command());
        // Copies made before append_only (or by hand) may still be writable: a truncate
        // needs no request the deny list refuses.
        let writable_copies: Vec<String> = self
            .sftp
            .readdir(&self.destination)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, stat)| stat.is_file() && stat.perm.unwrap_or(0) & 0o222 != 0)
            .filter_map(|(path, _)| path.file_name()?.to_str().map(str::to_string))
            // Partials are uploads, not copies (tonight's manifest may be one right now).
            .filter(|n| {
                !matches!(RemoteName::parse(n), None | Some(RemoteName::Partial(_)))
                    || n == crate::names::OWNER_MARKER
            })
            .collect();
        if !writable_copies.is_empty() {
            let shown: Vec<&str> = writable_copies.iter().take(3).map(String::as_str).collect();
            attempts.push(Attempt::new(
                format!(
                    "overwrite the {} copies there that are writable ({}{}; chmod 0444 them on \
                     the server)",
                    writable_copies.len(),
                    shown.join(", "),
                    if writable_copies.len() > 3 {
                        ", ..."
                    } else {
                        ""
                    }
                ),
                true,
                "writable".into(),
            ));
        }
        Ok(attempts)
    }
}

impl SftpRemote {
    /// A command on the server (`rm` would do): refused when the account is forced into
    /// SFTP (ForceCommand internal-sftp), which reads the command's channel as SFTP.
    fn try_a_command(&mut self) -> Attempt {
        const WHAT: &str = "run a command on the server (ssh)";
        const MARK: &str = "cvp-backup-copy-command-test";
        let ran = (|| -> std::result::Result<bool, ssh2::Error> {
            let mut channel = self.session.channel_session()?;
            channel.exec(&format!("echo {MARK}"))?;
            channel.send_eof()?;
            // Bytes, not text: a banner or junk before the mark must not hide it.
            let mut output = Vec::new();
            let _ = (&mut channel).take(64 * 1024).read_to_end(&mut output);
            let _ = channel.wait_close();
            Ok(output
                .windows(MARK.len())
                .any(|window| window == MARK.as_bytes()))
        })();
        match ran {
            Ok(true) => Attempt::new(WHAT, true, "ran".into()),
            Ok(false) => Attempt::new(WHAT, false, "forced into SFTP".into()),
            Err(err) => Attempt::new(WHAT, false, err.message().to_string()),
        }
    }
}

/// `flush` asks the server to fsync (fsync@openssh.com) so a renamed file is on its disk.
/// Syncing and closing a multi-GB file on a slow NAS can take minutes: both get
/// `sync_timeout`, not the idle `timeout` (which would turn them into a retry from zero).
struct SyncingFile {
    /// Always Some until dropped.
    file: Option<ssh2::File>,
    session: Session,
    idle_ms: u32,
    sync_ms: u32,
    /// Whether the last thing done was a successful sync: only then does closing get
    /// `sync_ms`. A file abandoned after an error or a stop request (the connection may be
    /// dead, or a packet half-sent) gets the idle timeout.
    synced: bool,
}

impl SyncingFile {
    fn file(&mut self) -> std::io::Result<&mut ssh2::File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the remote file is closed"))
    }
}

impl Drop for SyncingFile {
    fn drop(&mut self) {
        if self.synced {
            self.session.set_timeout(self.sync_ms);
        }
        drop(self.file.take());
        self.session.set_timeout(self.idle_ms);
    }
}

/// libssh2's codes for "the server did not answer in time" and "the server sent an SFTP
/// status" (disk full, permission denied: the same request gets the same answer).
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// What `readdir` says at the end of a folder.
const LIBSSH2_ERROR_FILE: i32 = -16;
const LIBSSH2_ERROR_SFTP_PROTOCOL: i32 = -31;

/// ssh2 keeps only the message when it turns its error into an `io::Error`; the session
/// still knows the code. A broken or silent connection becomes `ConnectionAborted` or
/// `TimedOut`, which the copy retries.
fn classify(session: &Session, err: std::io::Error) -> std::io::Error {
    let kind = match ssh2::Error::last_session_error(session).map(|e| e.code()) {
        Some(ErrorCode::Session(LIBSSH2_ERROR_SFTP_PROTOCOL)) | Some(ErrorCode::SFTP(_)) => {
            // OpenSSH's sftp-server answers a failed write (ENOSPC, EDQUOT) with a bare
            // "failure" status.
            return std::io::Error::other(format!(
                "the server refused the data ({err}): is its disk full, or a quota reached?"
            ));
        }
        None => return err,
        Some(ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT)) => std::io::ErrorKind::TimedOut,
        Some(ErrorCode::Session(_)) => std::io::ErrorKind::ConnectionAborted,
    };
    std::io::Error::new(kind, err.to_string())
}

struct ClassifyingReader<F> {
    file: F,
    session: Session,
}

impl<F: Read> Read for ClassifyingReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file
            .read(buf)
            .map_err(|err| classify(&self.session, err))
    }
}

impl Seek for SyncingFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.synced = false;
        self.file()?.seek(pos)
    }
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.synced = false;
        let written = self.file()?.write(buf);
        written.map_err(|err| classify(&self.session, err))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.session.set_timeout(self.sync_ms);
        let synced = self.file()?.fsync();
        self.session.set_timeout(self.idle_ms);
        let synced = self.sync_outcome(synced);
        self.synced = synced.is_ok();
        synced
    }
}

impl SyncingFile {
    fn sync_outcome(&self, synced: Result<(), ssh2::Error>) -> std::io::Result<()> {
        match synced {
            Ok(()) => Ok(()),
            Err(err) if sftp_code(&err) == Some(FX_OP_UNSUPPORTED) => Ok(()),
            Err(err)
                if matches!(err.code(), ErrorCode::Session(_))
                    && err.message().contains("support") =>
            {
                Ok(())
            }
            Err(err) => Err(classify(&self.session, std::io::Error::other(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unresolved_name_says_what_the_binary_consults() {
        let err = std::io::Error::other("Name does not resolve");
        let short = unresolved("backup", &err, "1");
        for needle in [
            "cannot resolve the server name `backup`: Name does not resolve",
            "/etc/hosts and then in DNS",
            "not through nsswitch.conf",
            "fewer dots than ndots (1), so the search domains",
            "Give the full name (e.g. backup.example.net) or the address",
        ] {
            assert!(short.contains(needle), "{needle:?} not in {short}");
        }
        let full = unresolved("backup.example.net", &err, "1");
        assert!(full.contains("at least ndots (1) dots"), "{full}");
        let five = unresolved("backup.example.net", &err, "5");
        assert!(five.contains("fewer dots than ndots (5)"), "{five}");
    }

    #[test]
    fn a_name_that_does_not_resolve_is_a_connection_error_with_the_hint() {
        let server = crate::config::Config::parse(
            "[Server_Settings]\nuser = u\nserver = no-such-host.invalid\npassword = x\n\
             keyFile = /k\ndestination = /d\nknown_hosts = /dev/null\n",
            std::path::Path::new("/tmp/x.ini"),
        )
        .expect("config")
        .server;
        let err = connect(ConnectOptions {
            server: &server,
            password: None,
            record_host_key: false,
            on_round_trip: None,
            on_handshake: None,
            after: None,
        })
        .err()
        .expect("no such host");
        assert_eq!(err.code, crate::exit_codes::ExitCode::Connect);
        assert!(
            err.message.contains("not through nsswitch.conf"),
            "{}",
            err.message
        );
    }
}
