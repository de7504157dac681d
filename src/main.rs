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
    Serve(Box<ServeArgs>),
    /// Manage API keys, in the data directory or through the running server
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check the store: every referenced blob read and verified against its digest and
    /// verification tree, missing and unreferenced blobs, reference counts, images stuck in
    /// saving, temp files, the catalog's running totals; exit 0 if sound, 1 if problems remain, 2 if the check could not
    /// run. `--repair` fixes what is safe. Works on a stopped server's data directory or
    /// through the running server
    Check(ocellus::opcmd::CheckArgs),
    /// Remove quarantined blobs past their grace and temp files no upload owns; `--dry-run`
    /// says what and how many bytes
    Gc(ocellus::opcmd::GcArgs),
    /// Images by status, bytes stored, dedupe ratio, damaged blobs and per-project usage
    Stats(ocellus::opcmd::StatsArgs),
    /// Write a consistent backup into an empty directory: a copy of the database and the
    /// blobs it references (hard-linked on the same filesystem, copied otherwise), each
    /// verified; works while the server runs
    Backup(ocellus::opcmd::BackupArgs),
    /// Restore a backup into a new (missing or empty) data directory, verifying every blob
    Restore(ocellus::opcmd::RestoreArgs),
    /// Per-project quotas: set overrides of the configured defaults, list limits and usage
    #[command(subcommand)]
    Quota(ocellus::opcmd::QuotaCommand),
    /// Metadata definitions: load namespace files in Glance's format (etc/metadefs), in the
    /// data directory or through the running server
    #[command(subcommand)]
    Metadefs(ocellus::metadefcmd::MetadefsCommand),
    /// The mirror of vendor cloud images: check the catalog, plan, sync, status; works on a
    /// stopped server's data directory or through the running server (see the README, "Mirror")
    #[command(subcommand)]
    Mirror(ocellus::mirrorcmd::MirrorCommand),
}

/// Upper bound of tokio's blocking pool.
const METADATA_THREADS: usize = 32;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => operate(ocellus::opcmd::check(args)),
        Command::Gc(args) => operate(ocellus::opcmd::gc(args)),
        Command::Stats(args) => operate(ocellus::opcmd::stats(args)),
        Command::Backup(args) => operate(ocellus::opcmd::backup(args)),
        Command::Restore(args) => operate(ocellus::opcmd::restore(args)),
        Command::Quota(command) => operate(ocellus::opcmd::quota(command)),
        Command::Metadefs(command) => operate(ocellus::metadefcmd::run(command)),
        Command::Mirror(command) => operate(ocellus::mirrorcmd::run(command)),
        Command::Key(command) => match ocellus::keycmd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ocellus: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs an operator command: exit 0 when clean, 1 when it found problems, 2 when it failed.
fn operate(result: Result<ocellus::opcmd::Outcome, String>) -> ExitCode {
    match result {
        Ok(ocellus::opcmd::Outcome::Clean) => ExitCode::SUCCESS,
        Ok(ocellus::opcmd::Outcome::Problems) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ocellus: {error}");
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
        // Opening can take long once: a schema upgrade (or a changed indexed_properties)
        // builds the filter index, about a minute per million images. Under systemd, the start
        // timeout is extended while the open is still working.
        let opening = tokio::spawn(async {
            loop {
                notify(&[
                    sd_notify::NotifyState::ExtendTimeoutUsec(60_000_000),
                    sd_notify::NotifyState::Status("opening the data directory"),
                ]);
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
            }
        });
        let opened = tokio::task::spawn_blocking(move || ocellus::open(config)).await;
        opening.abort();
        let state = opened
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("cannot open {}: {error}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        // The NBD export shares the shutdown: a watch channel tells it, and so does the
        // sender's end when the HTTP server stops for any reason.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let nbd = match state.config.nbd.listen {
            Some(nbd_listen) => {
                let nbd_listener = tokio::net::TcpListener::bind(nbd_listen)
                    .await
                    .map_err(|error| format!("cannot listen for NBD on {nbd_listen}: {error}"))?;
                let mut stopped = stopped.clone();
                Some(tokio::spawn(ocellus::nbd::serve(
                    nbd_listener,
                    state.clone(),
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )))
            }
            None => None,
        };
        tracing::info!(%address, data_dir = %state.config.data_dir.display(), "ocellus is serving");
        // Under systemd (Type=notify): the store is open and the listener bound.
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("serving on {address}")),
        ]);
        let served = ocellus::serve(listener, state, async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        })
        .await
        .map_err(|error| format!("server failed: {error}"));
        // The shutdown future (and with it the sender) is gone now, which stops NBD too.
        if let Some(nbd) = nbd {
            let _ = nbd.await;
        }
        served
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
