//! Object-store access: where every persisted object lives, and durable writes.
//!
//! Everything Weir persists goes through [`Storage`]: the catalog, WAL files, snapshot
//! manifests and Parquet files. All paths are below the node prefix (`--node-id`):
//!
//! ```text
//! <node>/catalog/catalog.json                  catalog (versioned JSON)
//! <node>/wal/<seq:020>.wal                     WAL files, one per group commit
//! <node>/snapshots/<wal_seq:020>.json          snapshot manifests (Parquet file lists)
//! <node>/dbs/<db_id>/<table_id>/<partition>/<file_id:020>.parquet
//! ```
//!
//! [`Storage::put_durable`] is the only way a WAL file or the catalog is written. On the
//! local file store it writes a temporary file, fsyncs it, renames it into place and fsyncs
//! the directory, so an acknowledged object survives power loss; on S3-compatible stores a
//! completed PUT is durable by contract.

use std::{
    fmt,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed.
    #[error("object store error at {path}: {source}")]
    ObjectStore {
        /// Object path.
        path: String,
        /// Underlying error.
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("local file error at {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A blocking task was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Object store handle with the node prefix and durable writes.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Set when the store is a local directory: durable writes then bypass the object store
    /// to fsync the file and its directory.
    local_root: Option<PathBuf>,
    node: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .field("local_root", &self.local_root)
            .field("node", &self.node)
            .finish()
    }
}

impl Storage {
    /// Wrap an object store. `local_root` must be the directory a `LocalFileSystem` store
    /// is rooted at (it enables fsync-based durable writes), or `None`.
    pub fn new(store: Arc<dyn ObjectStore>, local_root: Option<PathBuf>, node: &str) -> Self {
        Self { store, local_root, node: node.to_string() }
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), None, "node0")
    }

    /// The underlying object store.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// A path below the node prefix.
    pub fn path(&self, rel: &str) -> Path {
        Path::from(format!("{}/{}", self.node, rel))
    }

    /// Path of the catalog object.
    pub fn catalog_path(&self) -> Path {
        self.path("catalog/catalog.json")
    }

    /// Prefix of the WAL files.
    pub fn wal_dir(&self) -> Path {
        self.path("wal")
    }

    /// Path of WAL file `seq`.
    pub fn wal_path(&self, seq: u64) -> Path {
        self.path(&format!("wal/{seq:020}.wal"))
    }

    /// Prefix of the snapshot manifests.
    pub fn snapshot_dir(&self) -> Path {
        self.path("snapshots")
    }

    /// Path of the snapshot manifest covering the WAL up to `wal_seq`.
    pub fn snapshot_path(&self, wal_seq: u64) -> Path {
        self.path(&format!("snapshots/{wal_seq:020}.json"))
    }

    /// Path of a Parquet file.
    pub fn parquet_path(&self, db_id: u32, table_id: u32, partition: &str, file_id: u64) -> Path {
        self.path(&format!("dbs/{db_id}/{table_id}/{partition}/{file_id:020}.parquet"))
    }

    /// Remove the temporary files an interrupted durable write left in the local store (none
    /// on other stores); how many.
    pub fn remove_stale_temp_files(&self) -> std::io::Result<usize> {
        match &self.local_root {
            Some(root) => remove_stale_temp_files(root),
            None => Ok(0),
        }
    }

    /// Write an object so that it survives a crash once this returns.
    pub async fn put_durable(&self, path: &Path, bytes: Bytes) -> Result<()> {
        match &self.local_root {
            Some(root) => {
                let full = root.join(path.as_ref());
                let display = full.display().to_string();
                tokio::task::spawn_blocking(move || write_file_durable(&full, &bytes))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
                    .map_err(|source| Error::Io { path: display, source })
            }
            None => self.put(path, bytes).await,
        }
    }

    /// Plain PUT (Parquet files: their durability is established by the manifest that
    /// references them, which is written with [`Storage::put_durable`] afterwards; on the
    /// local store they are fsynced too).
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        if self.local_root.is_some() {
            return Box::pin(self.put_durable(path, bytes)).await;
        }
        self.store
            .put(path, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|source| Error::ObjectStore { path: path.to_string(), source })
    }

    /// Read an object; `None` when it does not exist.
    pub async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|source| Error::ObjectStore { path: path.to_string(), source }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::ObjectStore { path: path.to_string(), source }),
        }
    }

    /// List object paths below a prefix, sorted.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        let mut out: Vec<Path> = self
            .store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore { path: prefix.to_string(), source })?;
        out.sort();
        Ok(out)
    }

    /// List objects below a prefix with their sizes, sorted by path.
    pub async fn list_meta(&self, prefix: &Path) -> Result<Vec<(Path, u64)>> {
        let mut out: Vec<(Path, u64)> = self
            .store
            .list(Some(prefix))
            .map_ok(|m| (m.location, m.size))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore { path: prefix.to_string(), source })?;
        out.sort();
        Ok(out)
    }

    /// Delete an object; a missing object is not an error.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::ObjectStore { path: path.to_string(), source }),
        }
    }
}

/// Suffix of the temporary files of [`write_file_durable`].
const TEMP_SUFFIX: &str = "tmp";

/// Remove temporary files a crash left under `root` (`.<name>.tmp`, never renamed into
/// place, so never acknowledged); how many.
pub fn remove_stale_temp_files(root: &FsPath) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && name.starts_with('.') && name.ends_with(&format!(".{TEMP_SUFFIX}")) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Write `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_file_durable(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    if !dir.exists() {
        // Remember the deepest directory that already exists: every directory created
        // below it, and it itself, must be fsynced for the new entries to be durable.
        let existing = dir.ancestors().find(|a| a.exists()).map(FsPath::to_path_buf);
        std::fs::create_dir_all(dir)?;
        for d in dir.ancestors() {
            sync_dir(d)?;
            if Some(d) == existing.as_deref() {
                break;
            }
        }
    }
    let file_name =
        path.file_name().ok_or_else(|| std::io::Error::other("path has no file name"))?.to_string_lossy().into_owned();
    let tmp = dir.join(format!(".{file_name}.{TEMP_SUFFIX}"));
    let written = (|| {
        // Owner-only: the catalog holds token hashes, and no file here is anyone else's.
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk must not leave a temporary file behind per failed write.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed durable write leaves no temporary file; stale ones are removed at start.
    #[test]
    fn temporary_files_never_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("wal").join("x.wal");
        // The target is a non-empty directory: the rename fails.
        std::fs::create_dir_all(target.join("occupied")).unwrap();
        assert!(write_file_durable(&target, b"data").is_err());
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("x.wal")], "only the target directory is left");
        std::fs::write(dir.path().join("wal").join(".y.wal.tmp"), b"torn").unwrap();
        std::fs::write(dir.path().join(".catalog.json.tmp"), b"torn").unwrap();
        std::fs::write(dir.path().join("keep.tmp"), b"not ours").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 2);
        assert!(dir.path().join("keep.tmp").exists());
    }

    /// Durable files (the catalog with its token hashes among them) are owner-only, even
    /// when an older file in their place was not.
    #[test]
    fn durable_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("catalog.json");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file_durable(&target, b"new").unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
}
