//! Durable per-trigger checkpoints: for every enabled WAL trigger, the last WAL file its
//! plugin finished (every file up to it is done), and whether the retention policy stopped
//! it. They decide which WAL files snapshots keep, and where a trigger resumes after a
//! restart of either process.
//!
//! Persisted as `engine/checkpoints.json` (below the node prefix):
//! `{"format_version": 2, "triggers": {"<db_id>/<name>": {"wal_seq": N, "stopped": "..."}}}`.
//! Version 1 (a plain `{"<db_id>/<name>": N}` map) is read too. Progress is written at
//! most once a second; losing some in a crash only means those batches are delivered again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::storage::Storage;

/// Object path (below the node prefix) of the checkpoints.
pub const CHECKPOINTS: &str = "engine/checkpoints.json";
/// The current format.
pub const FORMAT_VERSION: u32 = 2;

/// A trigger: database id and name.
pub type TriggerKey = (u32, Arc<str>);

/// Why checkpoints could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed.
    #[error("reading {path}: {source}")]
    Storage {
        /// The object.
        path: String,
        /// The store's error.
        source: crate::storage::Error,
    },
    /// The file does not decode.
    #[error("{path} is unreadable: {message}")]
    Corrupt {
        /// The object.
        path: String,
        /// The decoder's message.
        message: String,
    },
    /// Written by a newer Weir.
    #[error("{path} has format version {found}; this server reads up to {FORMAT_VERSION}")]
    Newer {
        /// The object.
        path: String,
        /// The version found.
        found: u32,
    },
}

/// One trigger's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last WAL file the plugin finished.
    pub wal_seq: u64,
    /// Set when the retention policy stopped the trigger (it no longer holds WAL files;
    /// only an explicit skip starts it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileV2 {
    format_version: u32,
    triggers: BTreeMap<String, Checkpoint>,
}

fn key_text((db, name): &TriggerKey) -> String {
    format!("{db}/{name}")
}

fn parse_key(s: &str) -> Option<TriggerKey> {
    let (db, name) = s.split_once('/')?;
    Some((db.parse().ok()?, Arc::from(name)))
}

/// Decode either format.
pub fn decode(bytes: &[u8], path: &str) -> Result<HashMap<TriggerKey, Checkpoint>, Error> {
    let corrupt = |e: serde_json::Error| Error::Corrupt { path: path.to_string(), message: e.to_string() };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(corrupt)?;
    let entries: Vec<(String, Checkpoint)> = match value.get("format_version").and_then(serde_json::Value::as_u64) {
        // Version 1 has no version field: a map of trigger → sequence number.
        None => {
            let v1: BTreeMap<String, u64> = serde_json::from_value(value).map_err(corrupt)?;
            v1.into_iter().map(|(k, wal_seq)| (k, Checkpoint { wal_seq, stopped: None })).collect()
        }
        Some(v) if v > u64::from(FORMAT_VERSION) => {
            return Err(Error::Newer { path: path.to_string(), found: u32::try_from(v).unwrap_or(u32::MAX) });
        }
        Some(_) => serde_json::from_value::<FileV2>(value).map_err(corrupt)?.triggers.into_iter().collect(),
    };
    Ok(entries.into_iter().filter_map(|(k, cp)| Some((parse_key(&k)?, cp))).collect())
}

/// Encode in the current format.
pub fn encode(map: &HashMap<TriggerKey, Checkpoint>) -> Vec<u8> {
    let file = FileV2 {
        format_version: FORMAT_VERSION,
        triggers: map.iter().map(|(k, cp)| (key_text(k), cp.clone())).collect(),
    };
    // Plain data always serializes.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// The checkpoints of the enabled WAL triggers.
#[derive(Debug)]
pub struct Checkpoints {
    storage: Storage,
    map: Mutex<HashMap<TriggerKey, Checkpoint>>,
    dirty: AtomicBool,
    /// Serializes saves, so an older snapshot never overwrites a newer one.
    save_lock: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    /// Empty checkpoints stored in `storage`.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            map: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            save_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// What was saved before (empty when nothing was).
    pub async fn load_saved(&self) -> Result<HashMap<TriggerKey, Checkpoint>, Error> {
        let path = self.storage.path(CHECKPOINTS);
        match self.storage.get(&path).await {
            Ok(Some(bytes)) => decode(&bytes, path.as_ref()),
            Ok(None) => Ok(HashMap::new()),
            Err(source) => Err(Error::Storage { path: path.to_string(), source }),
        }
    }

    /// A trigger's checkpoint.
    pub fn get(&self, key: &TriggerKey) -> Option<Checkpoint> {
        self.map.lock().get(key).cloned()
    }

    /// Set a trigger's checkpoint (a new trigger, a restart, a skip).
    pub fn set(&self, key: TriggerKey, cp: Checkpoint) {
        self.map.lock().insert(key, cp);
        self.dirty.store(true, Ordering::Release);
    }

    /// Give a trigger `wal_seq` unless it has a checkpoint; the checkpoint it has now.
    pub fn get_or_insert(&self, key: TriggerKey, wal_seq: u64) -> Checkpoint {
        let mut map = self.map.lock();
        let cp = map.entry(key).or_insert_with(|| {
            self.dirty.store(true, Ordering::Release);
            Checkpoint { wal_seq, stopped: None }
        });
        cp.clone()
    }

    /// The trigger finished everything up to `wal_seq`: move its checkpoint forward (never
    /// back). True when it moved.
    pub fn advance(&self, key: &TriggerKey, wal_seq: u64) -> bool {
        let mut map = self.map.lock();
        match map.get_mut(key) {
            Some(cp) if wal_seq > cp.wal_seq => {
                cp.wal_seq = wal_seq;
                self.dirty.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Mark a trigger stopped by the retention policy (it no longer holds WAL files).
    pub fn stop(&self, key: &TriggerKey, reason: String) {
        if let Some(cp) = self.map.lock().get_mut(key) {
            cp.stopped = Some(reason);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Forget a trigger (disabled or deleted: it holds no WAL files back).
    pub fn remove(&self, key: &TriggerKey) {
        if self.map.lock().remove(key).is_some() {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Keep only the triggers `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&TriggerKey) -> bool) {
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|k, _| keep(k));
        if map.len() != before {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Every trigger with its checkpoint.
    pub fn all(&self) -> Vec<(TriggerKey, Checkpoint)> {
        self.map.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// WAL files after this are still needed by a running trigger.
    pub fn retain_after(&self) -> Option<u64> {
        self.map.lock().values().filter(|cp| cp.stopped.is_none()).map(|cp| cp.wal_seq).min()
    }

    /// Write them if they changed since the last save; on failure they stay dirty (the
    /// next save retries).
    pub async fn save_if_dirty(&self) -> Result<(), crate::storage::Error> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            return self.save_now().await;
        }
        Ok(())
    }

    /// Write them now (a trigger change answers only after its starting point is durable).
    pub async fn save_now(&self) -> Result<(), crate::storage::Error> {
        let _guard = self.save_lock.lock().await;
        self.dirty.store(false, Ordering::Release);
        let bytes = encode(&self.map.lock());
        let result = self.storage.put_durable(&self.storage.path(CHECKPOINTS), bytes.into()).await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/golden/checkpoints-v1.json");
    const GOLDEN_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/golden/checkpoints-v2.json");

    fn key(db: u32, name: &str) -> TriggerKey {
        (db, Arc::from(name))
    }

    #[test]
    fn both_formats_decode_and_v2_round_trips() {
        let v1 = decode(&std::fs::read(GOLDEN_V1).unwrap(), GOLDEN_V1).unwrap();
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[&key(1, "hot")], Checkpoint { wal_seq: 42, stopped: None });
        assert_eq!(v1[&key(3, "a/b")].wal_seq, 7);
        let bytes = std::fs::read(GOLDEN_V2).unwrap();
        let v2 = decode(&bytes, GOLDEN_V2).unwrap();
        assert_eq!(v2[&key(1, "hot")].stopped.as_deref(), Some("lagging"));
        assert_eq!(encode(&v2), bytes);
        let e = decode(br#"{"format_version": 9, "triggers": {}}"#, "p").unwrap_err();
        assert!(matches!(e, Error::Newer { found: 9, .. }), "{e}");
        assert!(decode(b"[1]", "p").unwrap_err().to_string().contains("unreadable"));
    }

    #[tokio::test]
    async fn checkpoints_move_forward_persist_and_release_wal_when_stopped() {
        let storage = Storage::in_memory();
        let cps = Checkpoints::new(storage.clone());
        assert_eq!(cps.get_or_insert(key(1, "a"), 5).wal_seq, 5);
        assert_eq!(cps.get_or_insert(key(1, "a"), 9).wal_seq, 5);
        cps.get_or_insert(key(1, "b"), 3);
        assert!(cps.advance(&key(1, "a"), 8));
        assert!(!cps.advance(&key(1, "a"), 6));
        assert_eq!(cps.retain_after(), Some(3));
        cps.stop(&key(1, "b"), "too far behind".into());
        assert_eq!(cps.retain_after(), Some(8));
        cps.save_if_dirty().await.unwrap();
        let again = Checkpoints::new(storage).load_saved().await.unwrap();
        assert_eq!(again[&key(1, "a")].wal_seq, 8);
        assert_eq!(again[&key(1, "b")].stopped.as_deref(), Some("too far behind"));
        cps.remove(&key(1, "a"));
        assert_eq!(cps.retain_after(), None);
    }
}
