//! The label sets of keyturn's metrics, built once and kept: a request records five or six
//! metrics, and building each one's labels anew (the key's label, its fingerprint and the model,
//! each a fresh `String`, in a fresh `Vec`) was a dozen allocations a call. The recorder is
//! still asked for its handle on every record, so a recorder installed later, or a thread-local
//! one, sees every call just as the `metrics` macros would make it.
//!
//! Bounded: label values come from the configuration (key labels) but also from requests
//! (models), so at most [`MAX_KEPT`] label sets are kept; past that, each call builds its own
//! as before, and nothing more is kept.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock};

use metrics::{Key, Label};
use parking_lot::RwLock;

/// Most label sets kept, over all metrics: room for 8 metrics × 64 keys × 8 models.
pub(crate) const MAX_KEPT: usize = 4096;

#[derive(Default)]
struct Kept {
    /// By the hash of (name, labels): the keys with that hash (almost always one).
    by_hash: HashMap<u64, Vec<Arc<Key>>>,
    len: usize,
}

static KEPT: LazyLock<RwLock<Kept>> = LazyLock::new(RwLock::default);

/// One hasher for every lookup, so a hash computed now finds what was kept before.
static HASHER: LazyLock<std::collections::hash_map::RandomState> =
    LazyLock::new(std::collections::hash_map::RandomState::new);

fn hash_of(name: &str, labels: &[(&'static str, &str)]) -> u64 {
    let mut h = HASHER.build_hasher();
    h.write(name.as_bytes());
    h.write_u8(0xff);
    for (k, v) in labels {
        h.write(k.as_bytes());
        h.write_u8(0xff);
        h.write(v.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

fn same(key: &Key, name: &str, labels: &[(&'static str, &str)]) -> bool {
    key.name() == name
        && key.labels().len() == labels.len()
        && key
            .labels()
            .zip(labels)
            .all(|(l, (k, v))| l.key() == *k && l.value() == *v)
}

/// Calls `f` with the metric key `name` and `labels` make (labels in this order), kept from an
/// earlier call when there was one, else built and kept while there is room.
pub(crate) fn with_key<T>(
    name: &'static str,
    labels: &[(&'static str, &str)],
    f: impl FnOnce(&Key) -> T,
) -> T {
    let hash = hash_of(name, labels);
    // Out of the lock before `f` runs: the recorder may take locks of its own.
    let found = KEPT
        .read()
        .by_hash
        .get(&hash)
        .and_then(|keys| keys.iter().find(|k| same(k, name, labels)).cloned());
    if let Some(key) = found {
        return f(&key);
    }
    let key = Arc::new(Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    ));
    {
        let mut kept = KEPT.write();
        let Kept { by_hash, len } = &mut *kept;
        if *len < MAX_KEPT {
            let keys = by_hash.entry(hash).or_default();
            // Another thread may have kept it since the read.
            if !keys.iter().any(|k| same(k, name, labels)) {
                keys.push(key.clone());
                *len += 1;
            }
        }
    }
    f(&key)
}

/// Label sets kept now.
#[cfg(test)]
pub(crate) fn kept() -> usize {
    KEPT.read().len
}
