//! `gh:<path>` plugins: fetched from `--plugin-repo` (by default the public
//! influxdb3_plugins repository's raw URL) once, then served from a cache on disk so a
//! restart needs no network.
//!
//! The cache is `<plugin-dir>/.gh/<path>` (a hidden directory: never listed as a plugin,
//! never reachable through a plain plugin name) with `<plugin-dir>/.gh/index.json`
//! recording each file's sha256, source URL and fetch time. A cached file whose content no
//! longer matches its recorded sha256 is refused, so an edit or corruption on disk cannot
//! silently change what runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The public plugin repository (raw files).
pub const DEFAULT_REPO: &str = "https://raw.githubusercontent.com/influxdata/influxdb3_plugins/main/";

const CACHE: &str = ".gh";
/// Largest plugin file fetched.
const MAX_SIZE: u64 = 16 << 20;

// A repository path: a plugin name made only of URL-safe characters, so the URL fetched
// and the cached name are the same (shared with `weir serve`, which checks it first).
use weir_proto::plugin_name::check_gh_path as check_path;
const INDEX: &str = "index.json";

/// Why a `gh:` plugin is not available.
#[derive(Debug, thiserror::Error)]
pub enum GhError {
    /// The repository path is refused.
    #[error("{0}")]
    Path(String),
    /// The download failed.
    #[error("cannot fetch gh:{path} from {url}: {reason}")]
    Fetch {
        /// The repository path.
        path: String,
        /// The URL fetched.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The file could not be cached.
    #[error("caching gh:{path} in {}: {source}", dir.display())]
    Cache {
        /// The repository path.
        path: String,
        /// The cache directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cached file no longer matches its recorded sha256.
    #[error("gh:{path}: the cached file {} changed (sha256 {actual}, recorded {recorded}); delete it to fetch it again", file.display())]
    Changed {
        /// The repository path.
        path: String,
        /// The cached file.
        file: PathBuf,
        /// Its sha256 now.
        actual: String,
        /// The recorded sha256.
        recorded: String,
    },
}

/// What the index records per file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Hex sha256 of the content.
    pub sha256: String,
    /// Where it came from.
    pub url: String,
    /// When, ms since the epoch.
    pub fetched_at_ms: u64,
}

/// The `gh:` fetcher and cache.
#[derive(Debug)]
pub struct GhCache {
    repo: String,
    plugin_dir: PathBuf,
    client: reqwest::Client,
    /// Serializes index updates.
    lock: tokio::sync::Mutex<()>,
}

pub use weir_proto::plugin_name::gh_path;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl GhCache {
    /// A cache under `plugin_dir` fetching from `repo`.
    pub fn new(repo: &str, plugin_dir: &Path) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            repo: format!("{}/", repo.trim_end_matches('/')),
            plugin_dir: plugin_dir.to_path_buf(),
            client,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.plugin_dir.join(CACHE)
    }

    fn index(&self) -> BTreeMap<String, Entry> {
        std::fs::read(self.cache_dir().join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Download `gh:<path>` (again) into the cache and record its sha256; the cached path.
    pub async fn fetch(&self, path: &str) -> Result<PathBuf, GhError> {
        let rel = check_path(path).map_err(GhError::Path)?;
        let url = format!("{}{path}", self.repo);
        let fail = |reason: String| GhError::Fetch { path: path.to_string(), url: url.clone(), reason };
        let resp = self.client.get(&url).send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > MAX_SIZE) {
            return Err(fail(format!("larger than {MAX_SIZE} bytes")));
        }
        let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        if body.len() as u64 > MAX_SIZE {
            return Err(fail(format!("larger than {MAX_SIZE} bytes")));
        }
        let entry = Entry {
            sha256: sha256(&body),
            url: url.clone(),
            fetched_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let _guard = self.lock.lock().await;
        let dest = self.cache_dir().join(rel);
        let cache_dir = self.cache_dir();
        let index_path = cache_dir.join(INDEX);
        let mut index = self.index();
        index.insert(path.to_string(), entry);
        let cache_err =
            |source: std::io::Error| GhError::Cache { path: path.to_string(), dir: cache_dir.clone(), source };
        let index_bytes = serde_json::to_vec_pretty(&index).map_err(|e| cache_err(std::io::Error::other(e)))?;
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = dest2.parent() {
                std::fs::create_dir_all(parent)?;
            }
            write_atomically(&dest2, &body)?;
            write_atomically(&index_path, &index_bytes)
        })
        .await
        .map_err(|e| cache_err(std::io::Error::other(e)))?
        .map_err(cache_err)?;
        tracing::info!(%url, "plugin fetched from the plugin repository");
        Ok(dest)
    }

    /// The cached file of `gh:<path>`, checked against its recorded sha256; fetched first
    /// if it is not cached yet.
    pub async fn resolve(&self, path: &str) -> Result<PathBuf, GhError> {
        let rel = check_path(path).map_err(GhError::Path)?;
        let cached = self.cache_dir().join(rel);
        let recorded = self.index().remove(path);
        let Some(entry) = recorded else {
            return self.fetch(path).await;
        };
        let content = match std::fs::read(&cached) {
            Ok(c) => c,
            Err(_) => return self.fetch(path).await,
        };
        let actual = sha256(&content);
        if actual != entry.sha256 {
            return Err(GhError::Changed { path: path.to_string(), file: cached, actual, recorded: entry.sha256 });
        }
        Ok(cached)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cached_files_are_checked_against_their_recorded_sha256() {
        let d = tempfile::tempdir().unwrap();
        // Nothing listens on port 9: a fetch fails with a clear error.
        let gh = GhCache::new("http://127.0.0.1:9/repo", d.path());
        let e = gh.resolve("a/b.py").await.unwrap_err().to_string();
        assert!(e.starts_with("cannot fetch gh:a/b.py from http://127.0.0.1:9/repo/a/b.py"), "{e}");
        assert!(gh.resolve("../b.py").await.unwrap_err().to_string().starts_with("Path traversal detected"));
        // A cached file with its index entry resolves without the network...
        let body = b"def process_writes(influxdb3_local, table_batches, args):\n    pass\n";
        std::fs::create_dir_all(d.path().join(".gh/a")).unwrap();
        std::fs::write(d.path().join(".gh/a/b.py"), body).unwrap();
        let entry = Entry { sha256: sha256(body), url: "x".into(), fetched_at_ms: 0 };
        let index: BTreeMap<String, Entry> = [("a/b.py".to_string(), entry)].into();
        std::fs::write(d.path().join(".gh/index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        assert_eq!(gh.resolve("a/b.py").await.unwrap(), d.path().join(".gh/a/b.py"));
        // ...and is refused once its content changes.
        std::fs::write(d.path().join(".gh/a/b.py"), b"import os\n").unwrap();
        assert!(gh.resolve("a/b.py").await.unwrap_err().to_string().contains("changed"));
    }
}
