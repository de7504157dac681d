//! `ocellus metadefs load DIR`: imports metadata definition namespaces from JSON files in
//! Glance's format (its `etc/metadefs` directory: one namespace per file, with its
//! properties, objects, tags and resource-type associations nested), as Glance's
//! `glance-manage db_load_metadefs` does.
//!
//! Like the other operator commands, it opens the data directory itself when the server is
//! stopped and otherwise sends the documents to the running server's admin endpoint
//! (`POST /ocellus/v1/metadefs`) with an admin key. Every file is read and checked before
//! anything is written, and the whole load is one transaction. A namespace that exists is
//! left alone unless `--overwrite` replaces it (its contents included).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::http::metadefs::{LoadReport, load_namespaces, parse_files};
use crate::keycmd::{Backend, KeyTarget, call};
use crate::opcmd::{Outcome, open, remote};

/// `ocellus metadefs …`.
#[derive(Debug, clap::Subcommand)]
pub enum MetadefsCommand {
    /// Load namespace files (*.json in DIR, or one file) in Glance's metadefs format; existing
    /// namespaces are skipped unless --overwrite
    Load {
        /// A directory of namespace files (each *.json in it is read), or one file
        path: PathBuf,
        /// Replace namespaces that exist, with everything in them, by the files' versions
        #[arg(long)]
        overwrite: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
}

/// The namespace files at `path`, by name: the `.json` files of a directory, or the file.
fn read_files(path: &Path) -> Result<Vec<(String, String)>, String> {
    let paths: Vec<PathBuf> = if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| format!("{}: {error}", path.display()))?;
            let file = entry.path();
            if file.is_file()
                && file
                    .extension()
                    .is_some_and(|extension| extension == "json")
            {
                found.push(file);
            }
        }
        found.sort();
        found
    } else {
        vec![path.to_owned()]
    };
    if paths.is_empty() {
        return Err(format!("{} holds no .json files", path.display()));
    }
    paths
        .iter()
        .map(|file| {
            std::fs::read_to_string(file)
                .map(|text| (file.display().to_string(), text))
                .map_err(|error| format!("{}: {error}", file.display()))
        })
        .collect()
}

pub fn run(command: MetadefsCommand) -> Result<Outcome, String> {
    let MetadefsCommand::Load {
        path,
        overwrite,
        json,
        target,
    } = command;
    let files = read_files(&path)?;
    let documents = parse_files(&files)?;
    let report: LoadReport = match open(&target)? {
        Backend::Local(store) => {
            load_namespaces(&store, &documents, overwrite).map_err(|error| error.message)?
        }
        Backend::Remote { url, target } => {
            let bodies: Vec<Value> = files
                .iter()
                .map(|(name, text)| {
                    serde_json::from_str(text).map_err(|error| format!("{name}: {error}"))
                })
                .collect::<Result<_, String>>()?;
            let value = remote(call(
                &url,
                &target,
                "POST",
                "/ocellus/v1/metadefs",
                Some(json!({"namespaces": bodies, "overwrite": overwrite})),
            ))?;
            serde_json::from_value(value).map_err(|error| error.to_string())?
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for name in &report.loaded {
            println!("loaded: {name}");
        }
        for name in &report.replaced {
            println!("replaced: {name}");
        }
        for name in &report.skipped {
            println!("skipped (exists; --overwrite replaces it): {name}");
        }
        println!(
            "{} loaded, {} replaced, {} skipped",
            report.loaded.len(),
            report.replaced.len(),
            report.skipped.len()
        );
    }
    Ok(Outcome::Clean)
}
