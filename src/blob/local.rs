//! The local blob directory: the first (and so far only) `Backend`.
//!
//! Layout under the data directory:
//! - `blobs/<2 hex>/<2 hex>/<64 hex>`: one file per distinct content, named by its BLAKE3
//!   digest, and beside it `<64 hex>.obao`, its outboard (`outboard`; none for blobs of one
//!   16 KiB group, whose outboard is empty);
//! - `tmp/<uuid>.part` and `tmp/<uuid>.part.obao`: uploads in progress, on the same filesystem
//!   so that a rename publishes them atomically;
//! - `quarantine/<64 hex>` (and its `.obao`): blobs no image referenced when the server started,
//!   kept until the grace period is over (an older database restored beside newer blobs must not
//!   cost their bytes).
//!
//! An outboard is placed before its blob and removed after it, so a crash leaves at worst an
//! outboard without a blob (ignored, and replaced by the same bytes when the content comes
//! again) and never a blob whose outboard is missing for any reason other than its age: blobs
//! stored before outboards existed get one when first read.
//!
//! Only server-computed digests and random UUIDs ever become paths.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::writer::TempWriter;
use super::{Backend, BlobReader, Space, Swept, TempObject};
use crate::kv::Digest;

/// The blob directory of one data directory.
pub struct LocalDir {
    root: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
}

impl LocalDir {
    /// Opens (creating if needed) the directories under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<LocalDir> {
        let dir = LocalDir {
            root: data_dir.to_owned(),
            blobs_dir: data_dir.join("blobs"),
            tmp_dir: data_dir.join("tmp"),
            quarantine_dir: data_dir.join("quarantine"),
        };
        fs::create_dir_all(&dir.blobs_dir)?;
        fs::create_dir_all(&dir.tmp_dir)?;
        fs::create_dir_all(&dir.quarantine_dir)?;
        Ok(dir)
    }

    /// Where the blob with this digest lives.
    pub fn path(&self, digest: Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.blobs_dir.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// Where the blob's outboard lives.
    pub fn outboard_path(&self, digest: Digest) -> PathBuf {
        with_outboard_suffix(self.path(digest))
    }
}

const OUTBOARD_SUFFIX: &str = ".obao";

fn with_outboard_suffix(path: PathBuf) -> PathBuf {
    let mut name = path.into_os_string();
    name.push(OUTBOARD_SUFFIX);
    PathBuf::from(name)
}

fn is_outboard(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.ends_with(OUTBOARD_SUFFIX))
}

/// Renames `from` to `to` if `from` exists; true if it did.
fn rename_if_present(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// An upload's temp file and, once the upload passes 16 KiB, its outboard's; removed when
/// dropped unless they were placed.
struct LocalTemp {
    path: Option<PathBuf>,
    writer: TempWriter,
    outboard: Option<(PathBuf, File)>,
}

impl Drop for LocalTemp {
    fn drop(&mut self) {
        let outboard = self.outboard.take().map(|(path, _)| path);
        for path in self.path.take().into_iter().chain(outboard) {
            if let Err(error) = remove_if_present(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove temp blob");
            }
        }
    }
}

impl TempObject for LocalTemp {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes)
    }

    fn write_outboard(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.outboard.is_none() {
            let blob = self
                .path
                .clone()
                .expect("temp blob has a path until placed");
            let path = with_outboard_suffix(blob);
            let file = File::options().append(true).create_new(true).open(&path)?;
            self.outboard = Some((path, file));
        }
        let (_, file) = self.outboard.as_mut().expect("opened above");
        io::Write::write_all(file, bytes)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.writer.finish()?;
        if let Some((_, file)) = &self.outboard {
            file.sync_all()?;
        }
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

struct LocalReader {
    blob: File,
    outboard: Option<File>,
}

impl BlobReader for LocalReader {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        self.blob.read_at(buffer, offset)
    }

    fn prefetch(&self, offset: u64, length: u64) {
        // Starts the reads into the page cache without waiting for them; only a hint.
        if let Some(length) = std::num::NonZeroU64::new(length) {
            let _ = rustix::fs::fadvise(
                &self.blob,
                offset,
                Some(length),
                rustix::fs::Advice::WillNeed,
            );
        }
    }

    fn outboard_len(&self) -> io::Result<Option<u64>> {
        self.outboard
            .as_ref()
            .map(|file| file.metadata().map(|metadata| metadata.len()))
            .transpose()
    }

    fn read_outboard_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.outboard {
            Some(file) => file.read_exact_at(buffer, offset),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the blob has no outboard",
            )),
        }
    }
}

impl Backend for LocalDir {
    fn create_temp(&self) -> io::Result<Box<dyn TempObject>> {
        let path = self.tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4()));
        let writer = TempWriter::create(&path)?;
        Ok(Box::new(LocalTemp {
            path: Some(path),
            writer,
            outboard: None,
        }))
    }

    fn place(&self, temp: Box<dyn TempObject>, digest: Digest) -> io::Result<()> {
        let mut temp = temp
            .into_any()
            .downcast::<LocalTemp>()
            .map_err(|_| io::Error::other("a temp object of another backend"))?;
        let target = self.path(digest);
        let outboard_target = self.outboard_path(digest);
        let parent = target.parent().expect("blob paths have parents");
        if target.exists() {
            // Dedupe: the content is stored already; the temp files go when `temp` drops. A
            // blob stored before outboards existed adopts this upload's.
            if let Some((source, _)) = &temp.outboard
                && !outboard_target.exists()
            {
                fs::rename(source, &outboard_target)?;
                temp.outboard = None;
                sync_directory(parent)?;
            }
            return Ok(());
        }
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            // New directories must themselves be durable for the rename below to survive.
            sync_directory(&self.blobs_dir)?;
            sync_directory(parent.parent().expect("blob fan-out has two levels"))?;
        }
        // The outboard first: a crash between the renames leaves an outboard without its blob,
        // which nothing reads, rather than a blob without its outboard.
        if let Some((source, _)) = &temp.outboard {
            fs::rename(source, &outboard_target)?;
            temp.outboard = None;
        }
        let source = temp.path.take().expect("temp blob has a path until placed");
        if let Err(error) = fs::rename(&source, &target) {
            temp.path = Some(source);
            return Err(error);
        }
        sync_directory(parent)
    }

    fn remove(&self, digest: Digest) -> io::Result<()> {
        let path = self.path(digest);
        remove_if_present(&path)?;
        remove_if_present(&self.outboard_path(digest))?;
        match path.parent() {
            // A blob that never was here has no directory to sync.
            Some(parent) if parent.exists() => sync_directory(parent),
            _ => Ok(()),
        }
    }

    fn open(&self, digest: Digest) -> io::Result<Arc<dyn BlobReader>> {
        let blob = File::open(self.path(digest))?;
        // Downloads read front to back: a larger kernel readahead keeps more of the disk busy.
        let _ = rustix::fs::fadvise(&blob, 0, None, rustix::fs::Advice::Sequential);
        let outboard = match File::open(self.outboard_path(digest)) {
            Ok(file) => Some(file),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        Ok(Arc::new(LocalReader { blob, outboard }))
    }

    fn put_outboard(&self, digest: Digest, outboard: &[u8]) -> io::Result<()> {
        let temp = self
            .tmp_dir
            .join(format!("{}.part{OUTBOARD_SUFFIX}", uuid::Uuid::new_v4()));
        let written = (|| {
            let mut file = File::options().write(true).create_new(true).open(&temp)?;
            io::Write::write_all(&mut file, outboard)?;
            file.sync_all()?;
            let target = self.outboard_path(digest);
            fs::rename(&temp, &target)?;
            sync_directory(target.parent().expect("blob paths have parents"))
        })();
        if written.is_err() {
            let _ = remove_if_present(&temp);
        }
        written
    }

    fn size(&self, digest: Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn list(&self) -> io::Result<Vec<Digest>> {
        let mut found = Vec::new();
        for level1 in fs::read_dir(&self.blobs_dir)? {
            let level1 = level1?.path();
            if !level1.is_dir() {
                continue;
            }
            for level2 in fs::read_dir(&level1)? {
                let level2 = level2?.path();
                if !level2.is_dir() {
                    continue;
                }
                for blob in fs::read_dir(&level2)? {
                    let blob = blob?.path();
                    if is_outboard(&blob) {
                        continue;
                    }
                    let name = blob.file_name().and_then(|name| name.to_str());
                    match name.and_then(Digest::from_hex) {
                        Some(digest) if self.path(digest) == blob => found.push(digest),
                        _ => {
                            tracing::warn!(path = %blob.display(), "a stray file in the blob directory; left alone")
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    fn quarantine(&self, digest: Digest) -> io::Result<()> {
        let target = self.quarantine_dir.join(digest.to_hex());
        // The outboard first, as in `place`; a blob quarantined without one (stored before
        // outboards existed) gets one again when read after a restore.
        rename_if_present(
            &self.outboard_path(digest),
            &with_outboard_suffix(target.clone()),
        )?;
        fs::rename(self.path(digest), &target)?;
        // The rename starts the grace period.
        File::options()
            .write(true)
            .open(&target)?
            .set_modified(SystemTime::now())?;
        sync_directory(&self.quarantine_dir)
    }

    fn restore(&self, digest: Digest) -> io::Result<bool> {
        let source = self.quarantine_dir.join(digest.to_hex());
        if !source.exists() {
            return Ok(false);
        }
        let target = self.path(digest);
        let parent = target.parent().expect("blob paths have parents");
        fs::create_dir_all(parent)?;
        rename_if_present(
            &with_outboard_suffix(source.clone()),
            &self.outboard_path(digest),
        )?;
        fs::rename(&source, &target)?;
        sync_directory(parent)?;
        sync_directory(&self.quarantine_dir)?;
        Ok(true)
    }

    fn sweep_quarantine(&self, older_than: SystemTime, dry_run: bool) -> io::Result<Swept> {
        let mut swept = Swept::default();
        let mut outboards = Vec::new();
        for entry in fs::read_dir(&self.quarantine_dir)? {
            let path = entry?.path();
            if is_outboard(&path) {
                outboards.push(path);
                continue;
            }
            let metadata = fs::metadata(&path)?;
            if metadata.modified()? < older_than {
                swept.count += 1;
                swept.bytes += metadata.len();
                if !dry_run {
                    fs::remove_file(&path)?;
                }
            }
        }
        // An outboard goes with its blob (its own time is the upload's, not the quarantine's).
        for outboard in outboards {
            let blob = PathBuf::from(
                outboard
                    .to_string_lossy()
                    .trim_end_matches(OUTBOARD_SUFFIX)
                    .to_owned(),
            );
            if !blob.exists() && !dry_run {
                fs::remove_file(&outboard)?;
            }
        }
        if swept.count > 0 && !dry_run {
            sync_directory(&self.quarantine_dir)?;
        }
        Ok(swept)
    }

    fn quarantined(&self) -> io::Result<usize> {
        let mut count = 0;
        for entry in fs::read_dir(&self.quarantine_dir)? {
            if !is_outboard(&entry?.path()) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn sweep_temps(&self, older_than: Option<SystemTime>, dry_run: bool) -> io::Result<Swept> {
        let mut swept = Swept::default();
        for entry in fs::read_dir(&self.tmp_dir)? {
            let path = entry?.path();
            let metadata = match fs::metadata(&path) {
                Ok(metadata) => metadata,
                // Placed or dropped by its upload meanwhile.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if older_than.is_some_and(|cutoff| metadata.modified().is_ok_and(|at| at >= cutoff)) {
                continue;
            }
            if !is_outboard(&path) {
                swept.count += 1;
            }
            swept.bytes += metadata.len();
            if !dry_run {
                remove_if_present(&path)?;
            }
        }
        Ok(swept)
    }

    fn export(&self, digest: Digest, dir: &Path) -> io::Result<bool> {
        let hex = digest.to_hex();
        let target = dir
            .join("blobs")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex);
        fs::create_dir_all(target.parent().expect("blob paths have parents"))?;
        let mut linked = true;
        for (from, to) in [
            (self.path(digest), target.clone()),
            (
                self.outboard_path(digest),
                with_outboard_suffix(target.clone()),
            ),
        ] {
            match fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound && is_outboard(&from) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => {
                    // Another filesystem (or one without links): copy.
                    linked = false;
                    match fs::copy(&from, &to) {
                        Ok(_) => {}
                        Err(error)
                            if error.kind() == io::ErrorKind::NotFound && is_outboard(&from) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
        }
        Ok(linked)
    }

    fn temps(&self) -> io::Result<usize> {
        // An upload's outboard part belongs to its blob part; count uploads.
        let mut count = 0;
        for entry in fs::read_dir(&self.tmp_dir)? {
            if !is_outboard(&entry?.path()) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn space(&self) -> io::Result<Option<Space>> {
        let stat = rustix::fs::statvfs(&self.root)?;
        let unit = stat.f_frsize.max(1);
        Ok(Some(Space {
            free: stat.f_bavail.saturating_mul(unit),
            total: stat.f_blocks.saturating_mul(unit),
        }))
    }
}

fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removing a blob that was never stored here (its directory does not even exist) is not
    /// an error: a copy released in one store may never have been in another.
    #[test]
    fn removing_a_blob_that_never_was_here_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDir::open(dir.path()).unwrap();
        local.remove(Digest([0x5a; 32])).unwrap();
    }
}
