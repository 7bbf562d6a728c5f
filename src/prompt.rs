//! Questions on the operator's terminal. Passwords are read without echo (rpassword reads
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

pub fn password(question: &str) -> Result<Secret> {
    rpassword::prompt_password(question)
        .map(Secret::new)
        .map_err(|err| usage(format!("cannot read a password from the terminal: {err}")))
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
