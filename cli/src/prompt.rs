//! Questions asked on the terminal: a line, a password without echo, a confirmation.

use std::io::{BufRead, IsTerminal, Write};

use crate::Fail;

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

fn read_line() -> Result<String, Fail> {
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line).map_err(|err| Fail::new(format!("cannot read standard input: {err}")))?;
    if read == 0 {
        return Err(Fail::new("standard input ended before an answer"));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks `question` on standard error and reads the answer from standard input.
pub fn ask(question: &str) -> Result<String, Fail> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    read_line()
}

/// The first line of standard input (`--password-stdin`).
pub fn first_line_of_stdin() -> Result<String, Fail> {
    read_line()
}

/// Asks for a password on the terminal with echo turned off (and back on afterwards).
pub fn ask_password(question: &str) -> Result<String, Fail> {
    if !stdin_is_terminal() {
        return Err(Fail::new("no terminal to ask the password on: pass it on standard input with --password-stdin"));
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let echo = EchoOff::new();
    let answer = read_line();
    drop(echo);
    eprintln!();
    answer
}

/// Turns the terminal's echo off while it lives.
struct EchoOff {
    saved: Option<rustix::termios::Termios>,
}

impl EchoOff {
    #[cfg(unix)]
    fn new() -> Self {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
        }
        Self { saved }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}

/// Asks a yes/no question on the terminal; anything but y or yes is no.
pub fn confirm(question: &str) -> Result<bool, Fail> {
    let answer = ask(&format!("{question} [y/N] "))?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
