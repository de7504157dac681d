//! The local blob directory: the first (and so far only) `Backend`.
//!
//! Layout under the data directory:
//! - `blobs/<2 hex>/<2 hex>/<64 hex>`: one file per distinct content, named by its BLAKE3
//!   digest;
//! - `tmp/<uuid>.part`: uploads in progress, on the same filesystem so that a rename publishes
//!   them atomically;
//! - `quarantine/<64 hex>`: blobs no image referenced when the server started, kept until the
//!   grace period is over (an older database restored beside newer blobs must not cost their
//!   bytes).
//!
//! Only server-computed digests and random UUIDs ever become paths.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::writer::TempWriter;
use super::{Backend, BlobReader, Space, TempObject};
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
}

/// An upload's temp file; removed when dropped unless it was placed.
struct LocalTemp {
    path: Option<PathBuf>,
    writer: TempWriter,
}

impl Drop for LocalTemp {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove temp blob");
        }
    }
}

impl TempObject for LocalTemp {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.writer.finish()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

struct LocalReader(File);

impl BlobReader for LocalReader {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buffer, offset)
    }

    fn prefetch(&self, offset: u64, length: u64) {
        // Starts the reads into the page cache without waiting for them; only a hint.
        if let Some(length) = std::num::NonZeroU64::new(length) {
            let _ =
                rustix::fs::fadvise(&self.0, offset, Some(length), rustix::fs::Advice::WillNeed);
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
        }))
    }

    fn place(&self, temp: Box<dyn TempObject>, digest: Digest) -> io::Result<()> {
        let mut temp = temp
            .into_any()
            .downcast::<LocalTemp>()
            .map_err(|_| io::Error::other("a temp object of another backend"))?;
        let target = self.path(digest);
        if target.exists() {
            // Dedupe: the content is stored already; the temp file goes when `temp` drops.
            return Ok(());
        }
        let parent = target.parent().expect("blob paths have parents");
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            // New directories must themselves be durable for the rename below to survive.
            sync_directory(&self.blobs_dir)?;
            sync_directory(parent.parent().expect("blob fan-out has two levels"))?;
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
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        match path.parent() {
            Some(parent) => sync_directory(parent),
            None => Ok(()),
        }
    }

    fn open(&self, digest: Digest) -> io::Result<Arc<dyn BlobReader>> {
        let file = File::open(self.path(digest))?;
        // Downloads read front to back: a larger kernel readahead keeps more of the disk busy.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(Arc::new(LocalReader(file)))
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
        fs::rename(&source, &target)?;
        sync_directory(parent)?;
        sync_directory(&self.quarantine_dir)?;
        Ok(true)
    }

    fn expire_quarantine(&self, older_than: SystemTime) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.quarantine_dir)? {
            let entry = entry?;
            if entry.metadata()?.modified()? < older_than {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_directory(&self.quarantine_dir)?;
        }
        Ok(removed)
    }

    fn quarantined(&self) -> io::Result<usize> {
        Ok(fs::read_dir(&self.quarantine_dir)?.count())
    }

    fn remove_temps(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp_dir)? {
            fs::remove_file(entry?.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    fn temps(&self) -> io::Result<usize> {
        Ok(fs::read_dir(&self.tmp_dir)?.count())
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
