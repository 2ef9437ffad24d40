//! The global plugin cache (`cache.put(..., use_global=True)`): one scope shared by every
//! trigger and worker process, kept here in the host. Values arrive pickled and are stored
//! as bytes; a plugin gets a copy back, not the same object (unlike the trigger scope,
//! which lives in the trigger's worker as live objects).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// A pickled value and when it expires.
type Entry = (Vec<u8>, Option<Instant>);

/// Pickled values by key, with optional expiry.
#[derive(Debug, Default)]
pub struct GlobalCache {
    items: Mutex<HashMap<String, Entry>>,
}

impl GlobalCache {
    /// Store `value` (pickled) under `key`, expiring after `ttl`.
    pub fn put(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) {
        // An expiry too far away to represent simply never comes.
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        self.items.lock().insert(key, (value, expires));
    }

    /// The pickled value, unless missing or expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut items = self.items.lock();
        match items.get(key) {
            Some((_, Some(exp))) if Instant::now() >= *exp => {
                items.remove(key);
                None
            }
            Some((v, _)) => Some(v.clone()),
            None => None,
        }
    }

    /// Remove `key`; whether a live value was there.
    pub fn delete(&self, key: &str) -> bool {
        match self.items.lock().remove(key) {
            Some((_, Some(exp))) => Instant::now() < exp,
            Some((_, None)) => true,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_delete() {
        let c = GlobalCache::default();
        c.put("a".into(), b"1".to_vec(), None);
        c.put("b".into(), b"2".to_vec(), Some(Duration::ZERO));
        assert_eq!(c.get("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(c.get("b"), None);
        assert!(c.delete("a"));
        assert!(!c.delete("a"));
    }
}
