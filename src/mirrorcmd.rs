//! `ocellus mirror check|plan|sync|verify|export|import|status`.
//!
//! `check` reads the catalog and its keyrings and needs nothing else. The others work like
//! the other operator commands: on a stopped server's data directory directly, or through the
//! running server's admin endpoints (`/ocellus/v1/mirror…`), which then use the server's own
//! `mirror_catalog`.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::keycmd::{Backend, KeyTarget, call};
use crate::mirror::bundle::{self, ItemReport};
use crate::mirror::catalog::{self, Catalog, SignatureRule, Versions};
use crate::mirror::service::{select, status_view};
use crate::mirror::sync::{Mirror, Outcome, Report};
use crate::opcmd::Outcome as Exit;

/// Where the catalog is when neither --catalog nor the settings say.
pub const DEFAULT_CATALOG: &str = "/etc/ocellus/mirror.toml";

#[derive(Debug, clap::Args)]
pub struct CatalogArg {
    /// The mirror catalog [default: the settings' mirror_catalog, else /etc/ocellus/mirror.toml]
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum MirrorCommand {
    /// Check the catalog and the keyrings it names, fetching nothing; exit 2 with file:line
    /// on the first mistake
    Check {
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Find each source's newest version and verify its signed digest, without downloading
    /// images: what `sync` would do
    Plan {
        /// Sources, by name [default: all]
        sources: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Sync sources now: download each newest version once, verify it and publish it; exit 1
    /// if any source failed
    Sync {
        /// Sources, by name [default: all]
        sources: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Check every mirrored image again: its vendor signature with this catalog's keys, its
    /// bytes (read back verified) against the vendor's digest; exit 1 if any fails
    Verify {
        /// Sources, by name [default: all]
        sources: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Write an air-gapped bundle of the mirrored images: manifest.json (metadata, digests,
    /// trust, the vendor's digest file and signature) and `blobs/<blake3>`; while the server
    /// runs, it stages the bundle in its data directory and this command moves it
    Export {
        /// Sources, by name [default: all]
        sources: Vec<String>,
        /// The bundle's directory (created; must be new or empty)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Sign manifest.json with this armored, unprotected OpenPGP secret key (written as
        /// manifest.json.asc)
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Import a bundle: every blob hashed again, every vendor signature checked again with
    /// this catalog's keyrings (the server's own catalog while it runs: it must be able to read
    /// DIR); each image on its own (a bad blob fails only its image), and importing twice
    /// changes nothing; exit 1 if any image failed
    Import {
        /// A directory written by `ocellus mirror export`
        dir: PathBuf,
        /// Accept only images signed by this key (fingerprint of a pinned primary key)
        #[arg(long, value_name = "FINGERPRINT")]
        require_signer: Option<String>,
        /// Require manifest.json.asc, made by this primary key, before anything is imported
        #[arg(long, value_name = "FINGERPRINT", requires = "manifest_keyring")]
        manifest_signer: Option<String>,
        /// The keyring holding --manifest-signer's key
        #[arg(long, value_name = "FILE", requires = "manifest_signer")]
        manifest_keyring: Option<PathBuf>,
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Each source's last run, next run, backoff, last error and images
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        catalog: CatalogArg,
        #[command(flatten)]
        target: KeyTarget,
    },
}

fn settings(target: &KeyTarget) -> Result<crate::config::Config, String> {
    crate::config::Config::resolve(&crate::config::ServeArgs {
        config: target.config.clone(),
        data_dir: target.data_dir.clone(),
        ..crate::config::ServeArgs::default()
    })
}

fn catalog_path(arg: &CatalogArg, config: &crate::config::Config) -> PathBuf {
    arg.catalog
        .clone()
        .or_else(|| config.mirror_catalog.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CATALOG))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
}

fn local_mirror(store: crate::store::Store, config: &crate::config::Config) -> Mirror {
    Mirror::new(
        Arc::new(store),
        config.web_download.clone(),
        config.image_size_cap,
        config.default_project.clone(),
    )
}

pub fn run(command: MirrorCommand) -> Result<Exit, String> {
    match command {
        MirrorCommand::Check { catalog, target } => {
            let config = settings(&target)?;
            let catalog = catalog::load(&catalog_path(&catalog, &config))?;
            print_check(&catalog);
            Ok(Exit::Clean)
        }
        MirrorCommand::Plan {
            sources,
            json,
            catalog,
            target,
        } => {
            let config = settings(&target)?;
            let value = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let catalog = catalog::load(&catalog_path(&catalog, &config))?;
                    let chosen = select(&catalog, &sources)?;
                    let mirror = local_mirror(*store, &config);
                    runtime()?.block_on(async {
                        let mut plans = Vec::new();
                        for source in chosen {
                            plans.push(match mirror.plan_value(&catalog, source).await {
                                Ok(plan) => json!({"source": source.name, "plan": plan}),
                                Err(error) => json!({"source": source.name, "error": error}),
                            });
                        }
                        json!({ "plans": plans })
                    })
                }
                Backend::Remote { url, target } => crate::opcmd::remote(call(
                    &url,
                    &target,
                    "POST",
                    "/ocellus/v1/mirror/plan",
                    Some(json!({ "sources": sources })),
                ))?,
            };
            print_plans(&value, json);
            let failed = value["plans"]
                .as_array()
                .is_some_and(|plans| plans.iter().any(|plan| plan.get("error").is_some()));
            Ok(if failed { Exit::Problems } else { Exit::Clean })
        }
        MirrorCommand::Sync {
            sources,
            json,
            catalog,
            target,
        } => {
            let config = settings(&target)?;
            let reports: Vec<Report> = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let catalog = catalog::load(&catalog_path(&catalog, &config))?;
                    let chosen = select(&catalog, &sources)?;
                    let mirror = local_mirror(*store, &config);
                    runtime()?.block_on(async {
                        let mut reports = Vec::new();
                        for source in chosen {
                            let report = mirror.sync(&catalog, source).await;
                            if !json {
                                print_report(&report);
                            }
                            reports.push(report);
                        }
                        reports
                    })
                }
                Backend::Remote { url, target } => {
                    let value = crate::opcmd::remote(call(
                        &url,
                        &target,
                        "POST",
                        "/ocellus/v1/mirror/sync",
                        Some(json!({ "sources": sources })),
                    ))?;
                    let reports: Vec<Report> = serde_json::from_value(value["reports"].clone())
                        .map_err(|error| error.to_string())?;
                    if !json {
                        reports.iter().for_each(print_report);
                    }
                    reports
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "reports": reports }))
                        .unwrap_or_default()
                );
            }
            let failed = reports
                .iter()
                .any(|report| report.outcome == Outcome::Failed);
            Ok(if failed { Exit::Problems } else { Exit::Clean })
        }
        MirrorCommand::Verify {
            sources,
            json,
            catalog,
            target,
        } => {
            let config = settings(&target)?;
            let reports: Vec<ItemReport> = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let loaded = catalog::load(&catalog_path(&catalog, &config));
                    let mirror = local_mirror(*store, &config);
                    runtime()?.block_on(bundle::verify(&mirror, loaded.as_ref().ok(), &sources))?
                }
                Backend::Remote { url, target } => {
                    let value = crate::opcmd::remote(call(
                        &url,
                        &target,
                        "POST",
                        "/ocellus/v1/mirror/verify",
                        Some(json!({ "sources": sources })),
                    ))?;
                    serde_json::from_value(value["images"].clone())
                        .map_err(|error| error.to_string())?
                }
            };
            print_items(&reports, json, "verified");
            Ok(outcome(&reports))
        }
        MirrorCommand::Export {
            sources,
            out,
            sign_key,
            target,
        } => {
            let config = settings(&target)?;
            let sign_key = sign_key
                .map(|path| {
                    std::fs::canonicalize(&path)
                        .map_err(|error| format!("{}: {error}", path.display()))
                })
                .transpose()?;
            let reports = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let mirror = local_mirror(*store, &config);
                    runtime()?.block_on(bundle::export(
                        &mirror,
                        &out,
                        &sources,
                        sign_key.as_deref(),
                    ))?
                }
                Backend::Remote { url, target } => {
                    if out.exists()
                        && std::fs::read_dir(&out)
                            .map_err(|error| format!("{}: {error}", out.display()))?
                            .next()
                            .is_some()
                    {
                        return Err(format!("{} must be new or empty", out.display()));
                    }
                    let value = crate::opcmd::remote(call(
                        &url,
                        &target,
                        "POST",
                        "/ocellus/v1/mirror/export",
                        Some(json!({ "sources": sources, "sign_key": sign_key })),
                    ))?;
                    let staged = PathBuf::from(
                        value["path"]
                            .as_str()
                            .ok_or("the server did not say where it staged the bundle")?,
                    );
                    let moved = move_tree(&staged, &out);
                    if staged.exists() {
                        let _ = std::fs::remove_dir_all(&staged);
                    }
                    moved?;
                    serde_json::from_value(value["images"].clone())
                        .map_err(|error| error.to_string())?
                }
            };
            print_items(&reports, false, "exported");
            Ok(outcome(&reports))
        }
        MirrorCommand::Import {
            dir,
            require_signer,
            manifest_signer,
            manifest_keyring,
            catalog,
            target,
        } => {
            let manifest_keyring = manifest_keyring
                .map(|path| {
                    std::fs::canonicalize(&path)
                        .map_err(|error| format!("{}: {error}", path.display()))
                })
                .transpose()?;
            let manifest = manifest_keyring.as_deref().zip(manifest_signer.as_deref());
            let config = settings(&target)?;
            let reports = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let loaded = catalog::load(&catalog_path(&catalog, &config))?;
                    let mirror = local_mirror(*store, &config);
                    runtime()?.block_on(bundle::import(
                        &mirror,
                        &loaded,
                        &dir,
                        require_signer.as_deref(),
                        manifest,
                    ))?
                }
                Backend::Remote { url, target } => {
                    // The server reads the bundle itself, checked with its own catalog.
                    let dir = std::fs::canonicalize(&dir)
                        .map_err(|error| format!("{}: {error}", dir.display()))?;
                    let value = crate::opcmd::remote(call(
                        &url,
                        &target,
                        "POST",
                        "/ocellus/v1/mirror/import",
                        Some(json!({
                            "dir": dir.display().to_string(),
                            "require_signer": require_signer,
                            "manifest_signer": manifest_signer,
                            "manifest_keyring": manifest_keyring,
                        })),
                    ))?;
                    serde_json::from_value(value["images"].clone())
                        .map_err(|error| error.to_string())?
                }
            };
            print_items(&reports, false, "imported");
            Ok(outcome(&reports))
        }
        MirrorCommand::Status {
            json,
            catalog,
            target,
        } => {
            let config = settings(&target)?;
            let value = match crate::keycmd::backend(target.clone())? {
                Backend::Local(store) => {
                    let loaded = catalog::load(&catalog_path(&catalog, &config));
                    let names: Vec<String> = match &loaded {
                        Ok(catalog) => catalog.sources.iter().map(|s| s.name.clone()).collect(),
                        Err(_) => Vec::new(),
                    };
                    let mirror = local_mirror(*store, &config);
                    status_view(&mirror, &names, loaded.err())
                }
                Backend::Remote { url, target } => {
                    crate::opcmd::remote(call(&url, &target, "GET", "/ocellus/v1/mirror", None))?
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print_status(&value);
            }
            let failing = value["sources"].as_array().is_some_and(|sources| {
                sources
                    .iter()
                    .any(|source| !source["state"]["last_error"].is_null())
            });
            Ok(if failing { Exit::Problems } else { Exit::Clean })
        }
    }
}

/// Moves a staged bundle to its destination: a rename on the same filesystem, else a copy.
fn move_tree(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let describe =
        |path: &std::path::Path, error: std::io::Error| format!("{}: {error}", path.display());
    if to.exists() {
        std::fs::remove_dir(to).map_err(|error| describe(to, error))?;
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(to.join("blobs")).map_err(|error| describe(to, error))?;
    for entry in std::fs::read_dir(from.join("blobs")).map_err(|error| describe(from, error))? {
        let entry = entry.map_err(|error| describe(from, error))?;
        let target = to.join("blobs").join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(|error| describe(&target, error))?;
    }
    let manifest = to.join(bundle::MANIFEST);
    std::fs::copy(from.join(bundle::MANIFEST), &manifest)
        .map_err(|error| describe(&manifest, error))?;
    Ok(())
}

fn outcome(reports: &[ItemReport]) -> Exit {
    if reports.iter().all(|report| report.ok) {
        Exit::Clean
    } else {
        Exit::Problems
    }
}

fn print_items(reports: &[ItemReport], json: bool, done: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "images": reports })).unwrap_or_default()
        );
        return;
    }
    for report in reports {
        let what = if report.ok { done } else { "FAILED" };
        println!("{} {}: {what}: {}", report.id, report.name, report.message);
    }
    let failed = reports.iter().filter(|report| !report.ok).count();
    println!("{} image(s), {failed} failed", reports.len());
}

fn print_check(catalog: &Catalog) {
    println!(
        "{}: {} source(s), {} keyring(s)",
        catalog.path.display(),
        catalog.sources.len(),
        catalog.keyrings.len()
    );
    for source in &catalog.sources {
        let versions = match &source.versions {
            Versions::Dirs(pattern) => format!("newest directory matching {}", pattern.as_str()),
            Versions::File { path, .. } => format!("version from {path}"),
            Versions::Files => "version from the file name".to_owned(),
        };
        let signature = match &source.signature {
            SignatureRule::Detached(path) => {
                format!("detached signature {path} by {}", source.signers.join(", "))
            }
            SignatureRule::Clearsigned => {
                format!("clearsigned by {}", source.signers.join(", "))
            }
            SignatureRule::None(reason) => format!("no signature ({reason})"),
        };
        println!(
            "  {}: {} ({versions}); digests in {}; {signature}; keep {}, refresh every {}s",
            source.name,
            source.base_url,
            source.sums,
            source.keep,
            source.refresh.as_secs()
        );
    }
}

fn print_plans(value: &Value, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    for plan in value["plans"].as_array().into_iter().flatten() {
        let source = plan["source"].as_str().unwrap_or("?");
        if let Some(error) = plan["error"].as_str() {
            println!("{source}: cannot sync: {error}");
            continue;
        }
        let candidate = &plan["plan"];
        println!(
            "{source}: newest {} is {} ({}:{}, {}); image {} {}",
            candidate["version"].as_str().unwrap_or("?"),
            candidate["url"].as_str().unwrap_or("?"),
            candidate["algorithm"].as_str().unwrap_or("?"),
            candidate["hex"].as_str().unwrap_or("?"),
            candidate["trust"].as_str().unwrap_or("?"),
            candidate["image"].as_str().unwrap_or("?"),
            if candidate["present"].as_bool() == Some(true) {
                "is here"
            } else {
                "would be downloaded"
            },
        );
    }
}

fn print_report(report: &Report) {
    let what = match report.outcome {
        Outcome::Published => "published",
        Outcome::UpToDate => "up to date",
        Outcome::Failed => "FAILED",
    };
    let version = report
        .version
        .as_deref()
        .map(|version| format!(" version {version}"))
        .unwrap_or_default();
    println!("{}: {what}{version}: {}", report.source, report.message);
}

fn print_status(value: &Value) {
    if let Some(error) = value["catalog_error"].as_str() {
        println!("catalog: {error}");
    }
    let edge = &value["edge"];
    if edge.is_object() {
        let number = |key: &str| edge[key].as_u64().unwrap_or(0);
        println!(
            "edge cache of {}: {} of {} image(s) cached, {} bytes (cap {}); {} hits, {} misses, {} bytes fetched, {} bytes served, {} evictions, {} fetching",
            edge["source"].as_str().unwrap_or("?"),
            number("cached_images"),
            number("images"),
            number("cached_bytes"),
            edge["cache_max_bytes"]
                .as_u64()
                .map_or("none".to_owned(), |cap| cap.to_string()),
            number("hits"),
            number("misses"),
            number("fetched_bytes"),
            number("served_bytes"),
            number("evictions"),
            number("fetching"),
        );
    }
    for source in value["sources"].as_array().into_iter().flatten() {
        let state = &source["state"];
        let when = |key: &str| {
            state[key]
                .as_i64()
                .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
                .and_then(|at| {
                    at.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "never".to_owned())
        };
        println!(
            "{}{}: version {}, last success {}, next run {}",
            source["name"].as_str().unwrap_or("?"),
            if source["in_catalog"].as_bool() == Some(true) {
                ""
            } else {
                " (no longer in the catalog)"
            },
            state["version"].as_str().unwrap_or("none"),
            when("last_success"),
            when("next_run"),
        );
        if let Some(error) = state["last_error"].as_str() {
            println!(
                "  failing ({} in a row): {error}",
                state["failures"].as_u64().unwrap_or(0)
            );
        }
        for image in source["images"].as_array().into_iter().flatten() {
            println!(
                "  {} {}{}{}",
                image["id"].as_str().unwrap_or("?"),
                image["name"].as_str().unwrap_or("?"),
                if image["latest"].as_bool() == Some(true) {
                    " [latest]"
                } else {
                    ""
                },
                if image["os_hidden"].as_bool() == Some(true) {
                    " (hidden)"
                } else {
                    ""
                },
            );
        }
    }
}
