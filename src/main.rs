//! The `ocellus` command: parses flags, starts logging and runtime, and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ocellus::config::{Config, LogFormat, ServeArgs};
use ocellus::keycmd::KeyCommand;
use tracing_subscriber::EnvFilter;

/// An OpenStack Glance-compatible image service in one binary.
///
/// Serves the Glance Image API v2 with image metadata in a redb database and image bytes in a
/// content-addressed blob directory. Settings come from flags, OCELLUS_* environment variables
/// and an optional TOML file, in that order of precedence.
#[derive(Parser)]
#[command(name = "ocellus", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Glance Image API and a Keystone-compatible token endpoint (default
    /// 127.0.0.1:9292, data in ./ocellus-data, no authentication: every request acts as an
    /// admin of the default project)
    Serve(ServeArgs),
    /// Manage API keys, in the data directory or through the running server
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a stopped server's data directory: every blob's reference count equals the images
    /// naming it and every referenced blob exists with its recorded size (exit 1 if not);
    /// also lists what an interrupted run left (images in saving, temp files, unreferenced
    /// blobs), which the next start repairs
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The data directory [default: ./ocellus-data]
    #[arg(long, env = "OCELLUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
}

/// Upper bound of tokio's blocking pool.
const METADATA_THREADS: usize = 32;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(args),
        Command::Key(command) => match ocellus::keycmd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ocellus: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| ocellus::config::Config::default().data_dir);
    if !data_dir.join(ocellus::DATABASE_FILE).exists() {
        eprintln!("ocellus: {} holds no database", data_dir.display());
        return ExitCode::from(2);
    }
    let store = match ocellus::store::Store::open_metadata(&data_dir) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("ocellus: cannot open {}: {error}", data_dir.display());
            return ExitCode::from(2);
        }
    };
    match store.check() {
        Ok(report) => {
            println!(
                "{} images, {} blobs, {} in quarantine",
                report.images, report.blobs, report.quarantined
            );
            for leftover in &report.leftovers {
                println!("leftover (repaired at the next start): {leftover}");
            }
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if report.problems.is_empty() {
                println!("consistent");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("ocellus: check failed: {error}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ocellus: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("ocellus: bad log filter {:?}: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line; the request span (its id and key) rides along in each.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }

    // Blocking threads run metadata work (redb calls, argon2); transfers have their own pool.
    // redb serializes writes, so a crowd of requests gains nothing from more threads than
    // this, while unbounded growth would cost a thread (and its stack) per waiting request.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(METADATA_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let result = runtime.block_on(async move {
        let state = tokio::task::spawn_blocking(move || ocellus::open(config))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("cannot open {}: {error}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        tracing::info!(%address, data_dir = %state.config.data_dir.display(), "ocellus is serving");
        // Under systemd (Type=notify): the store is open and the listener bound.
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("serving on {address}")),
        ]);
        ocellus::serve(listener, state, shutdown_signal())
            .await
            .map_err(|error| format!("server failed: {error}"))
    });
    match result {
        Ok(()) => {
            tracing::info!("ocellus stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Tells the service manager about the server's state when it asked to be told
/// (`NOTIFY_SOCKET`); a failure only costs the notification.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "could not notify the service manager");
    }
}
