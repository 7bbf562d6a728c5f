//! Questions on the operator's terminal. Passwords are read without echo (from
//! /dev/tty); they never pass through arguments, the environment or a log.

use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::secret::Secret;
use std::io::{BufRead, IsTerminal, Write};

pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

fn usage(message: impl Into<String>) -> Error {
    Error::new(ExitCode::Usage, message)
}

/// A line typed by the operator, without its newline. End of input cancels.
pub fn line(question: &str) -> Result<String> {
    print!("{question}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let read = std::io::stdin().lock().read_line(&mut answer);
    match read {
        Ok(0) | Err(_) => Err(usage("input ended: nothing changed")),
        Ok(_) => Ok(answer.trim_end_matches(['\n', '\r']).to_string()),
    }
}

pub fn yes_no(question: &str) -> Result<bool> {
    loop {
        match line(question)?.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(true),
            "n" | "no" => return Ok(false),
            _ => println!("   please answer y or n"),
        }
    }
}

/// A password typed on the terminal. Echo goes off before the question is written, as
/// OpenSSH's readpassphrase does: whatever is typed or pasted once the question shows is
/// never echoed (turning it off after writing the question left a window where it was).
/// The terminal is restored afterwards, also when a signal ends the program meanwhile.
pub fn password(question: &str) -> Result<Secret> {
    let fail =
        |err: std::io::Error| usage(format!("cannot read a password from the terminal: {err}"));
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(fail)?;
    let quiet = EchoOff::on(&tty).map_err(fail)?;
    let mut out = &tty;
    out.write_all(question.as_bytes())
        .and_then(|()| out.flush())
        .map_err(fail)?;
    // The terminal still edits the line (backspace, ^U): only echo is off. Read a byte at a
    // time into one buffer that never grows: no copy of the password is left unwiped.
    let mut typed = zeroize::Zeroizing::new(Vec::with_capacity(PASSWORD_MAX));
    let read = read_line_into(&tty, &mut typed);
    // The Enter that ended the line was not echoed either.
    let _ = out.write_all(b"\n");
    drop(quiet);
    match read {
        Ok(Line::Ended) => return Err(usage("input ended: nothing changed")),
        Ok(Line::TooLong) => {
            return Err(usage(format!(
                "the password is longer than {PASSWORD_MAX} bytes: nothing changed"
            )))
        }
        Ok(Line::Read) => {}
        Err(err) => return Err(fail(err)),
    }
    match std::str::from_utf8(&typed) {
        Ok(text) => Ok(Secret::new(text.to_string())),
        Err(_) => Err(usage("the password is not valid UTF-8: nothing changed")),
    }
}

/// The longest password read from the terminal.
const PASSWORD_MAX: usize = 1024;

enum Line {
    Read,
    /// Longer than `PASSWORD_MAX`: read to its end, kept nowhere.
    TooLong,
    /// The input ended before the line did.
    Ended,
}

/// One line from `tty` into `line`, without its end.
fn read_line_into(mut tty: &std::fs::File, line: &mut Vec<u8>) -> std::io::Result<Line> {
    use std::io::Read;
    let mut byte = [0u8; 1];
    let mut too_long = false;
    loop {
        if tty.read(&mut byte)? == 0 {
            return Ok(Line::Ended);
        }
        match byte[0] {
            b'\n' if too_long => return Ok(Line::TooLong),
            b'\n' => return Ok(Line::Read),
            b'\r' => {}
            b if line.len() < PASSWORD_MAX => line.push(b),
            _ => too_long = true,
        }
    }
}

/// Echo off on a terminal until dropped (or a signal arrives: see `restore_and_reraise`).
struct EchoOff {
    fd: std::os::fd::RawFd,
    saved: libc::termios,
}

/// The terminal's settings while echo is off, for a signal handler to put back.
static mut SAVED_TERMIOS: Option<(std::os::fd::RawFd, libc::termios)> = None;
const RESTORED_ON: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

impl EchoOff {
    fn on(tty: &std::fs::File) -> std::io::Result<EchoOff> {
        use std::os::fd::AsRawFd;
        let fd = tty.as_raw_fd();
        // SAFETY: termios is plain data filled by tcgetattr for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
        // SAFETY: single-threaded here (a prompt); the handler only reads what is set first.
        unsafe {
            SAVED_TERMIOS = Some((fd, saved));
            for signal in RESTORED_ON {
                libc::signal(
                    signal,
                    restore_and_reraise as *const () as libc::sighandler_t,
                );
            }
            // TCSAFLUSH: what was typed before echo went off (and was echoed) is dropped.
            if libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) != 0 {
                let err = std::io::Error::last_os_error();
                drop(EchoOff { fd, saved });
                return Err(err);
            }
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restoring settings read from this descriptor; handlers back to default.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved);
            for signal in RESTORED_ON {
                libc::signal(signal, libc::SIG_DFL);
            }
            SAVED_TERMIOS = None;
        }
    }
}

/// A signal while echo is off: echo back on, then die of the signal as we would have.
extern "C" fn restore_and_reraise(signal: libc::c_int) {
    // SAFETY: tcsetattr, signal and raise are async-signal-safe; the static was set before
    // this handler was installed.
    unsafe {
        if let Some((fd, saved)) = SAVED_TERMIOS {
            libc::tcsetattr(fd, libc::TCSAFLUSH, &saved);
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// A new password, typed twice; three attempts.
pub fn new_password(label: &str) -> Result<Secret> {
    for _ in 0..3 {
        let first = password(&format!("   New password for {label}: "))?;
        if first.expose().is_empty() {
            println!("   the password cannot be empty");
            continue;
        }
        let second = password("   Repeat the new password: ")?;
        if first.expose() == second.expose() {
            return Ok(first);
        }
        println!("   the two passwords differ");
    }
    Err(usage(
        "no password set after three attempts: nothing changed",
    ))
}

/// One line from standard input (`--password-stdin`), for scripts.
pub fn password_from_stdin() -> Result<Secret> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut text)
        .map_err(|err| {
            usage(format!(
                "cannot read the password from standard input: {err}"
            ))
        })?;
    let secret = Secret::new(text.trim_end_matches(['\n', '\r']).to_string());
    if secret.expose().is_empty() {
        return Err(usage("--password-stdin: standard input held no password"));
    }
    Ok(secret)
}
