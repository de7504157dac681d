//! The operator's commands: `ocellus check`, `gc`, `stats`, `backup` and `restore`.
//!
//! Like the key commands, each first tries to open the data directory itself (the server is
//! stopped) and otherwise calls the running server's admin endpoint (`/ocellus/v1/…`) with an
//! admin key; `--url` always calls the server. `restore` only ever works on a stopped, empty
//! data directory. Long runs show a progress bar on a terminal and a final line otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::keycmd::{Backend, KeyTarget, backend, call};
use crate::store::{BackupManifest, CheckReport, GcReport, MANIFEST_FILE, Mode, Store};

/// How a command ended: its exit code.
pub enum Outcome {
    /// Done; nothing wrong found (exit 0).
    Clean,
    /// Done; problems found (exit 1).
    Problems,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Fix what is safe: reference counts, unreferenced blobs (to quarantine), missing blobs
    /// still in quarantine, damage marks on blobs that verify again and, on a stopped server,
    /// interrupted uploads and their temp files
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: KeyTarget,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Only say what would be removed, and how many bytes
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: KeyTarget,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: KeyTarget,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Directory for the backup (created; must be empty)
    pub dir: PathBuf,
    #[command(flatten)]
    pub target: KeyTarget,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A directory written by `ocellus backup`
    pub dir: PathBuf,
    /// Server settings file, read for data_dir
    #[arg(long, env = "OCELLUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory to restore into: missing or empty [default: ./ocellus-data]
    #[arg(long, env = "OCELLUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The local store, or the running server's URL; `None` data directory errors are the
/// caller's message.
pub(crate) fn open(target: &KeyTarget) -> Result<Backend, String> {
    if target.url.is_none() {
        let config = crate::config::Config::resolve(&crate::config::ServeArgs {
            config: target.config.clone(),
            data_dir: target.data_dir.clone(),
            ..crate::config::ServeArgs::default()
        })?;
        if !config.data_dir.join(crate::DATABASE_FILE).exists() {
            return Err(format!("{} holds no database", config.data_dir.display()));
        }
    }
    backend(target.clone())
}

pub(crate) fn remote<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?
        .block_on(work)
}

/// Calls the running server's admin endpoint and reads its answer as `T`.
fn ask<T: serde::de::DeserializeOwned>(
    url: &str,
    target: &KeyTarget,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<T, String> {
    let value = remote(call(url, target, method, path, body))?;
    serde_json::from_value(value).map_err(|error| error.to_string())
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A progress bar over `total` bytes on a terminal; hidden otherwise.
fn bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub fn check(args: CheckArgs) -> Result<Outcome, String> {
    let report: CheckReport = match open(&args.target)? {
        Backend::Local(store) => {
            let total = store
                .blob_sizes()
                .map_err(|error| error.to_string())?
                .iter()
                .map(|(_, size)| size)
                .sum();
            let progress = bar(total, "verifying");
            let report = store
                .check_full(Mode::Offline, args.repair, &mut |bytes| progress.inc(bytes))
                .map_err(|error| error.to_string())?;
            progress.finish_and_clear();
            report
        }
        Backend::Remote { url, target } => ask(
            &url,
            &target,
            "POST",
            "/ocellus/v1/check",
            Some(json!({"repair": args.repair})),
        )?,
    };
    if args.json {
        print_json(&report);
    } else {
        println!(
            "{} images, {} blobs ({} verified, {} bytes), {} in quarantine",
            report.images,
            report.blobs,
            report.verified_blobs,
            report.verified_bytes,
            report.quarantined
        );
        for line in &report.repaired {
            println!("repaired: {line}");
        }
        for line in &report.leftovers {
            println!("leftover (repaired at the next start, or by --repair): {line}");
        }
        for line in &report.problems {
            println!("problem: {line}");
        }
        if report.sound() {
            println!("consistent");
        } else {
            println!("{} problems", report.problems.len());
        }
    }
    Ok(if report.sound() {
        Outcome::Clean
    } else {
        Outcome::Problems
    })
}

pub fn gc(args: GcArgs) -> Result<Outcome, String> {
    let report: GcReport = match open(&args.target)? {
        Backend::Local(store) => store
            .gc(Mode::Offline, args.dry_run)
            .map_err(|error| error.to_string())?,
        Backend::Remote { url, target } => ask(
            &url,
            &target,
            "POST",
            "/ocellus/v1/gc",
            Some(json!({"dry_run": args.dry_run})),
        )?,
    };
    if args.json {
        print_json(&report);
    } else {
        let verb = if report.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} quarantined blobs past their grace ({} bytes) and {} stale temp files ({} bytes)",
            report.quarantine.count,
            report.quarantine.bytes,
            report.temps.count,
            report.temps.bytes
        );
    }
    Ok(Outcome::Clean)
}

pub fn stats(args: StatsArgs) -> Result<Outcome, String> {
    let value: Value = match open(&args.target)? {
        Backend::Local(store) => {
            crate::http::admin::stats_view(&store).map_err(|error| error.to_string())?
        }
        Backend::Remote { url, target } => {
            remote(call(&url, &target, "GET", "/ocellus/v1/stats", None))?
        }
    };
    if args.json {
        print_json(&value);
        return Ok(Outcome::Clean);
    }
    let number = |pointer: &str| value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    println!("images: {}", number("/images"));
    if let Some(statuses) = value["images_by_status"].as_object() {
        for (status, count) in statuses {
            if count.as_u64().unwrap_or(0) > 0 {
                println!("  {status}: {count}");
            }
        }
    }
    let image_bytes = number("/image_bytes");
    let blob_bytes = number("/blob_bytes");
    println!("image data: {image_bytes} bytes");
    println!(
        "stored: {blob_bytes} bytes in {} blobs; dedupe saves {} bytes (ratio {:.2})",
        number("/blobs"),
        number("/dedupe_saved_bytes"),
        if blob_bytes == 0 {
            1.0
        } else {
            image_bytes as f64 / blob_bytes as f64
        }
    );
    println!("quarantined blobs: {}", number("/quarantined_blobs"));
    if let Some(damaged) = value["damaged_blobs"].as_array()
        && !damaged.is_empty()
    {
        println!("damaged blobs: {}", damaged.len());
    }
    println!("projects (images, bytes; no quotas are enforced yet):");
    if let Some(projects) = value["projects"].as_array() {
        for project in projects {
            let name = project["project"].as_str().unwrap_or("");
            println!(
                "  {}: {} images, {} bytes",
                if name.is_empty() { "(none)" } else { name },
                project["images"],
                project["bytes"]
            );
        }
    }
    Ok(Outcome::Clean)
}

pub fn backup(args: BackupArgs) -> Result<Outcome, String> {
    let dir = &args.dir;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|error| format!("{}: {error}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} is not empty", dir.display()));
    }
    let manifest = match open(&args.target)? {
        Backend::Local(store) => {
            let manifest = store
                .backup_into(dir)
                .map_err(|error| format!("backup into {}: {error}", dir.display()))?;
            verify_tree(dir, &manifest, "verifying")?;
            manifest
        }
        Backend::Remote { url, target } => {
            let staged = remote(call(&url, &target, "POST", "/ocellus/v1/backups", None))?;
            let staging = PathBuf::from(
                staged["path"]
                    .as_str()
                    .ok_or("the server did not say where it staged the backup")?,
            );
            let copied = copy_backup(&staging, dir, true);
            // The staging copy is ours to remove either way (hard links: it costs nothing).
            if let Err(error) = std::fs::remove_dir_all(&staging) {
                eprintln!(
                    "ocellus: could not remove the staging copy {}: {error}",
                    staging.display()
                );
            }
            copied?
        }
    };
    println!(
        "backed up {} blobs ({} bytes; {} hard-linked) and the database to {}",
        manifest.blobs.len(),
        manifest.blobs.values().sum::<u64>(),
        manifest.linked,
        dir.display()
    );
    Ok(Outcome::Clean)
}

pub fn restore(args: RestoreArgs) -> Result<Outcome, String> {
    let config = crate::config::Config::resolve(&crate::config::ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        ..crate::config::ServeArgs::default()
    })?;
    let data_dir = &config.data_dir;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|error| format!("{}: {error}", data_dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty: restore only into a new data directory",
            data_dir.display()
        ));
    }
    let manifest = copy_backup(&args.dir, data_dir, false)?;
    // Open it as the server would (schema upgrade, repairs) to be sure it serves.
    let store = Store::open(data_dir)
        .map_err(|error| format!("the restored data directory does not open: {error}"))?;
    let stats = store.stats().map_err(|error| error.to_string())?;
    println!(
        "restored {} images and {} blobs ({} bytes) into {}",
        stats.images,
        manifest.blobs.len(),
        manifest.blobs.values().sum::<u64>(),
        data_dir.display()
    );
    Ok(Outcome::Clean)
}

fn read_manifest(dir: &Path) -> Result<BackupManifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let manifest: BackupManifest =
        serde_json::from_slice(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    if manifest.format != crate::store::BACKUP_FORMAT {
        return Err(format!(
            "{}: backup format {} is not one this build reads",
            path.display(),
            manifest.format
        ));
    }
    Ok(manifest)
}

fn blob_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join("blobs")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(hex)
}

/// Copies a backup from `from` to `to`: the database, the manifest and every blob, each
/// hashed on the way and refused if its bytes do not match its name. With `links`, a blob is
/// hard-linked where the filesystem allows (and then read to verify it) rather than copied;
/// a restore copies, so that the new data directory shares no inode with the backup.
/// Outboards are left behind; the server rebuilds them on first read.
fn copy_backup(from: &Path, to: &Path, links: bool) -> Result<BackupManifest, String> {
    let mut manifest = read_manifest(from)?;
    manifest.linked = 0;
    std::fs::create_dir_all(to).map_err(|error| format!("{}: {error}", to.display()))?;
    let total = manifest.blobs.values().sum();
    let progress = bar(total, "copying");
    for (hex, size) in &manifest.blobs {
        let source = blob_path(from, hex);
        let target = blob_path(to, hex);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("{}: {error}", parent.display()))?;
        }
        if links && std::fs::hard_link(&source, &target).is_ok() {
            manifest.linked += 1;
            verify_blob_file(&target, hex, *size, &progress)?;
        } else {
            copy_verified(&source, &target, hex, *size, &progress)?;
        }
    }
    let database = to.join(crate::DATABASE_FILE);
    std::fs::copy(from.join(crate::DATABASE_FILE), &database)
        .and_then(|_| std::fs::File::open(&database)?.sync_all())
        .map_err(|error| format!("{}: {error}", database.display()))?;
    let text = serde_json::to_vec_pretty(&manifest).map_err(|error| error.to_string())?;
    let manifest_path = to.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, text)
        .and_then(|()| std::fs::File::open(&manifest_path)?.sync_all())
        .map_err(|error| format!("{}: {error}", manifest_path.display()))?;
    progress.finish_and_clear();
    Ok(manifest)
}

/// Copies one blob, hashing it on the way; the copy is kept only if it matches.
fn copy_verified(
    source: &Path,
    target: &Path,
    hex: &str,
    size: u64,
    progress: &ProgressBar,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let failed = |error: std::io::Error| format!("{}: {error}", source.display());
    let mut input = std::fs::File::open(source).map_err(failed)?;
    let partial = target.with_extension("part");
    let mut output = std::fs::File::create(&partial)
        .map_err(|error| format!("{}: {error}", partial.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0; 1 << 20];
    let mut copied = 0u64;
    loop {
        let read = input.read(&mut buffer).map_err(failed)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .map_err(|error| format!("{}: {error}", partial.display()))?;
        copied += read as u64;
        progress.inc(read as u64);
    }
    output
        .sync_all()
        .map_err(|error| format!("{}: {error}", partial.display()))?;
    if copied != size || hasher.finalize().to_hex().as_str() != hex {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "{}: its bytes do not match its digest; the backup is damaged",
            source.display()
        ));
    }
    std::fs::rename(&partial, target).map_err(|error| format!("{}: {error}", target.display()))
}

/// Reads every blob of a backup written in place and checks it against its name.
fn verify_tree(dir: &Path, manifest: &BackupManifest, what: &str) -> Result<(), String> {
    let progress = bar(manifest.blobs.values().sum(), what);
    for (hex, size) in &manifest.blobs {
        verify_blob_file(&blob_path(dir, hex), hex, *size, &progress)?;
    }
    progress.finish_and_clear();
    Ok(())
}

/// Hashes one blob file and checks it against its digest and size.
fn verify_blob_file(
    path: &Path,
    hex: &str,
    size: u64,
    progress: &ProgressBar,
) -> Result<(), String> {
    use std::io::Read;
    let failed = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut input = std::fs::File::open(path).map_err(failed)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0; 1 << 20];
    let mut seen = 0u64;
    loop {
        let read = input.read(&mut buffer).map_err(failed)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        seen += read as u64;
        progress.inc(read as u64);
    }
    if seen != size || hasher.finalize().to_hex().as_str() != hex {
        return Err(format!(
            "{}: its bytes do not match its digest; the store holds a damaged blob (see `ocellus check`)",
            path.display()
        ));
    }
    Ok(())
}

/// `ocellus quota …`.
#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Set a project's quotas (the others stay); sizes take units (50GiB), -1 is unlimited,
    /// "default" goes back to the configured default
    Set {
        /// The project id
        project: String,
        /// Bytes of all the project's images, staged data included
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        image_size_total: Option<String>,
        /// Bytes of staged data
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        image_stage_total: Option<String>,
        /// Number of images
        #[arg(long, value_name = "COUNT", allow_hyphen_values = true)]
        image_count_total: Option<String>,
        /// Images receiving data at once
        #[arg(long, value_name = "COUNT", allow_hyphen_values = true)]
        image_count_uploading: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// List every project with quota overrides or images: overrides, limits in force, usage
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
}

/// A quota value from the command line: a size or count, `-1`, or `default` (JSON null).
fn quota_value(text: &str, size: bool) -> Result<Value, String> {
    if text == "default" {
        return Ok(Value::Null);
    }
    let parsed = if size {
        crate::config::parse_size(text)?
    } else {
        match text.parse::<i64>() {
            Ok(value) if value < 0 => None,
            Ok(value) => Some(value as u64),
            Err(_) => return Err(format!("{text:?} is not a count")),
        }
    };
    Ok(match parsed {
        None => json!(-1),
        Some(value) => json!(i64::try_from(value).map_err(|_| format!("{text:?} is too large"))?),
    })
}

pub fn quota(command: QuotaCommand) -> Result<Outcome, String> {
    match command {
        QuotaCommand::Set {
            project,
            image_size_total,
            image_stage_total,
            image_count_total,
            image_count_uploading,
            json,
            target,
        } => {
            let mut body = serde_json::Map::new();
            for (key, value, size) in [
                ("image_size_total", image_size_total, true),
                ("image_stage_total", image_stage_total, true),
                ("image_count_total", image_count_total, false),
                ("image_count_uploading", image_count_uploading, false),
            ] {
                if let Some(value) = value {
                    body.insert(
                        key.into(),
                        quota_value(&value, size)
                            .map_err(|error| format!("--{}: {error}", key.replace('_', "-")))?,
                    );
                }
            }
            if body.is_empty() {
                return Err("give at least one quota to set".into());
            }
            let body = Value::Object(body);
            let view = match open(&target)? {
                Backend::Local(store) => {
                    crate::http::admin::apply_quota_change(&store, &project, &body)?
                        .map_err(|error| error.to_string())?
                }
                Backend::Remote { url, target } => remote(call(
                    &url,
                    &target,
                    "PUT",
                    &format!("/ocellus/v1/quotas/{project}"),
                    Some(body),
                ))?,
            };
            print_quotas(&[view], json);
        }
        QuotaCommand::List { json, target } => {
            let views = match open(&target)? {
                Backend::Local(store) => {
                    crate::http::admin::quota_views(&store).map_err(|error| error.to_string())?
                }
                Backend::Remote { url, target } => {
                    let value = remote(call(&url, &target, "GET", "/ocellus/v1/quotas", None))?;
                    value["quotas"].as_array().cloned().unwrap_or_default()
                }
            };
            print_quotas(&views, json);
        }
    }
    Ok(Outcome::Clean)
}

fn print_quotas(views: &[Value], json: bool) {
    if json {
        print_json(&views);
        return;
    }
    let shown = |value: &Value| match value.as_i64() {
        Some(-1) => "unlimited".to_owned(),
        Some(value) => value.to_string(),
        None => "-".to_owned(),
    };
    println!(
        "{:<34} {:>22} {:>22} {:>14} {:>14}",
        "project", "size (usage/limit)", "staged", "images", "uploading"
    );
    for view in views {
        let pair = |key: &str| {
            format!(
                "{}/{}",
                view["usage"][key].as_u64().unwrap_or(0),
                shown(&view["limits"][key])
            )
        };
        println!(
            "{:<34} {:>22} {:>22} {:>14} {:>14}",
            view["project"].as_str().unwrap_or(""),
            pair("image_size_total"),
            pair("image_stage_total"),
            pair("image_count_total"),
            pair("image_count_uploading")
        );
    }
}
