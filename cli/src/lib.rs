//! The `nexus` command-line client. It is served by the same binary as the server
//! (`nexus serve`): the composition root hands it every verb that is not the server's.
//! It talks to Nexus only through the client generated from the OpenAPI document
//! (`clients/rust`), never through the server's code.
#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod manifests;
pub mod output;
pub mod prompt;
pub mod session;
mod verbs;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// The verbs this crate serves; the binary hands it every command line whose first word
/// is one of them.
pub const VERBS: &[&str] = &[
    "login",
    "register",
    "logout",
    "whoami",
    "context",
    "tenants",
    "keys",
    "apply",
    "get",
    "describe",
    "delete",
    "logs",
    "events",
    "run",
    "versions",
    "rollback",
    "wait",
    "completion",
];

/// No stack trace for people: a closed output pipe (`nexus get agents | head -1`) ends
/// the command quietly, anything else unexpected is one line on standard error.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message =
            info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("unknown failure");
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!("error: nexus failed unexpectedly ({message}); please report it");
    }));
}

/// A failure, told on standard error as one message saying what to do.
#[derive(Debug)]
pub struct Fail {
    pub message: String,
    /// The HTTP status the server answered, when it answered.
    pub status: Option<u16>,
}

impl Fail {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), status: None }
    }

    #[must_use]
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The verb of a command line, past the global options (`nexus --server URL get agents`),
/// when it is one of this crate's: the binary hands such command lines to [`main`].
pub fn verb_of(args: &[OsString]) -> Option<&'static str> {
    let mut words = args.iter().skip(1).filter_map(|word| word.to_str());
    while let Some(word) = words.next() {
        match word {
            "--server" | "--tenant" | "--context" => {
                words.next();
            }
            _ if ["--server=", "--tenant=", "--context="].iter().any(|prefix| word.starts_with(prefix)) => {}
            _ => return VERBS.iter().find(|verb| **verb == word).copied(),
        }
    }
    None
}

/// The client's command, with the server's subcommands (`serve`, `openapi`, `crds`)
/// beside its verbs, for help and completions.
pub fn command(server: Option<clap::Command>) -> clap::Command {
    let mut command = args::Cli::command();
    if let Some(server) = server {
        for subcommand in server.get_subcommands() {
            command = command.subcommand(subcommand.clone());
        }
    }
    command
}

/// Runs one command line (`args[0]` the program's name). `server` is the server's own
/// command, so that completions cover `nexus serve` too.
pub fn main(args: Vec<OsString>, server: Option<clap::Command>) -> ExitCode {
    quiet_panics();
    let matches = match command(server.clone()).try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(verbs::run(cli, server)) {
        Ok(code) => code,
        Err(fail) => {
            let prefix = output::paint("error:", output::Colour::Red, output::colour_stderr());
            eprintln!("{prefix} {}", fail.message);
            ExitCode::FAILURE
        }
    }
}
