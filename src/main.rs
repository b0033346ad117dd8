//! The `nexus` binary: parses configuration, sets up logging, and serves (or prints the
//! OpenAPI document); the command-line client's verbs are handed to `nexus-cli`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use nexus::config::{Cli, Command, LogFormat, ServeConfig};
use poem::listener::{Listener, TcpListener};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The client's verbs (`nexus login`, `nexus apply`...) go to the client crate, which
    // talks to a server over HTTP only; everything else is the server's command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if nexus_cli::verb_of(&args).is_some() {
        return nexus_cli::main(args, Some(Cli::command()));
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Openapi { yaml }) => {
            print!("{}", if yaml { nexus::http::openapi_yaml() } else { nexus::http::openapi_json() });
            ExitCode::SUCCESS
        }
        Some(Command::Crds) => match nexus_cluster_kube::crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("cannot render the custom resource definitions: {err}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve) | None => {
            init_logging(&cli.serve);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(cli.serve))
        }
    }
}

fn init_logging(config: &ServeConfig) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|err| {
        eprintln!("NEXUS_LOG {:?} is not a valid filter ({err}); using \"info\"", config.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: ServeConfig) -> ExitCode {
    let nexus = match nexus::bootstrap::build(&config).await {
        Ok(nexus) => nexus,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let acceptor = match TcpListener::bind(config.listen).into_acceptor().await {
        Ok(acceptor) => acceptor,
        Err(err) => {
            tracing::error!(error = %err, listen = %config.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match TcpListener::bind(config.metrics_listen).into_acceptor().await {
        Ok(acceptor) => tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(nexus::http::metrics::endpoint())),
        Err(err) => {
            tracing::error!(error = %err, listen = %config.metrics_listen, "cannot listen for metrics");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %config.listen, metrics = %config.metrics_listen, "nexus serving");
    let served = nexus::http::serve(acceptor, nexus, config.connection_limits(), shutdown_signal()).await;
    metrics.abort();
    match served {
        Ok(()) => {
            tracing::info!("nexus stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
