//! API keys, their secrecy, and the ring of keys a pool rotates over.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::KeyError;

/// A Gemini API key. The secret never leaves this type except through [`ApiKey::expose`], which the
/// transport calls to fill the `x-goog-api-key` header: `Debug` and `Display` show only the
/// fingerprint, and there is deliberately no `Serialize`.
#[derive(Clone)]
pub struct ApiKey {
    secret: SecretString,
    fingerprint: Fingerprint,
}

impl ApiKey {
    /// Wraps a key. Surrounding white space is trimmed (keys pasted from files often carry it).
    pub fn new(secret: impl Into<String>) -> Result<Self, KeyError> {
        let raw: String = secret.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KeyError::Malformed);
        }
        let fingerprint = Fingerprint::of(trimmed);
        Ok(Self {
            secret: SecretString::from(trimmed.to_owned()),
            fingerprint,
        })
    }

    /// The secret itself, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// First 8 hex digits of the SHA-256 of the key: how keyturn names a key everywhere.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for ApiKey {}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.fingerprint)
    }
}

/// The public name of a key: the first 4 bytes (8 hex digits) of SHA-256 of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// Fingerprint of a raw key.
    pub fn of(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        Self([digest[0], digest[1], digest[2], digest[3]])
    }

    /// Parses the 8-hex-digit form.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 8 || !s.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Fingerprint::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("a fingerprint is 8 hex digits"))
    }
}

/// Index of a key in its [`KeyRing`]; cheap to copy and to put in a [`crate::Lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl KeyId {
    /// The index as a `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A key as configured: the secret, a label for people, the Google Cloud project whose quota it
/// draws on, and a weight for the weighted policy.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// The secret.
    pub key: ApiKey,
    /// A human name (`work`, `GEMINI_API_KEY_3`); defaults to the fingerprint.
    pub label: Option<String>,
    /// Keys of one project share its quota. `None`: the key is its own project.
    pub project: Option<String>,
    /// Relative share under the weighted policy (≥ 1).
    pub weight: u32,
}

impl KeySpec {
    /// A key with no label, no project and weight 1.
    pub fn new(key: ApiKey) -> Self {
        Self {
            key,
            label: None,
            project: None,
            weight: 1,
        }
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets the project.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// A key in the ring, with its resolved label and project.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The secret.
    pub key: ApiKey,
    /// Label (the fingerprint when none was given).
    pub label: String,
    /// Project id; `key:<fingerprint>` for a key without one.
    pub project: String,
    /// Weight for the weighted policy.
    pub weight: u32,
}

impl KeyEntry {
    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint()
    }
}

/// The validated, ordered set of keys a pool rotates over. Order is the order given, and it is
/// the round-robin order.
///
/// A ring only grows while a pool runs: a reload ([`KeyRing::reloaded`]) appends new keys and
/// marks removed ones retired, so a [`KeyId`] held by a request in flight names the same key
/// until it settles. Retired keys take no new request and are left out of status.
#[derive(Debug, Clone)]
pub struct KeyRing {
    entries: Vec<KeyEntry>,
    retired: Vec<bool>,
}

/// What a reload changed in a ring: labels only, never keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingChange {
    /// Keys that joined.
    pub added: Vec<String>,
    /// Keys that left (they finish what they have in flight).
    pub removed: Vec<String>,
    /// Keys whose label, project or weight changed.
    pub changed: Vec<String>,
}

impl RingChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl KeyRing {
    /// Validates the keys: at least one, no duplicate secret, weights ≥ 1, labels unique.
    pub fn new(specs: Vec<KeySpec>) -> Result<Self, KeyError> {
        if specs.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if specs.len() > u32::MAX as usize {
            return Err(KeyError::TooMany);
        }
        let mut entries: Vec<KeyEntry> = Vec::with_capacity(specs.len());
        for spec in specs {
            let fingerprint = spec.key.fingerprint();
            let label = spec.label.unwrap_or_else(|| fingerprint.to_string());
            if let Some(first) = entries.iter().find(|e| e.key == spec.key) {
                return Err(KeyError::Duplicate {
                    first: first.label.clone(),
                    second: label,
                    fingerprint,
                });
            }
            if entries.iter().any(|e| e.label == label) {
                return Err(KeyError::DuplicateLabel { label });
            }
            if spec.weight == 0 {
                return Err(KeyError::ZeroWeight { label });
            }
            let project = match spec.project {
                Some(p) if !p.trim().is_empty() => p.trim().to_owned(),
                _ => format!("key:{fingerprint}"),
            };
            entries.push(KeyEntry {
                key: spec.key,
                label,
                project,
                weight: spec.weight,
            });
        }
        let retired = vec![false; entries.len()];
        Ok(Self { entries, retired })
    }

    /// This ring after a reload to `next` (a validated ring): every key of this ring keeps its
    /// id — with `next`'s label, project and weight if `next` has it, retired if not — and
    /// `next`'s new keys are appended. A retired key whose label a current key took is shown
    /// by its fingerprint.
    pub fn reloaded(&self, next: &KeyRing) -> (KeyRing, RingChange) {
        let mut change = RingChange::default();
        let mut entries = Vec::with_capacity(self.entries.len() + next.entries.len());
        let mut retired = Vec::with_capacity(entries.capacity());
        for (old, was_retired) in self.entries.iter().zip(&self.retired) {
            match next.entries.iter().find(|e| e.key == old.key) {
                Some(now) => {
                    if *was_retired {
                        change.added.push(now.label.clone());
                    } else if now.label != old.label
                        || now.project != old.project
                        || now.weight != old.weight
                    {
                        change.changed.push(now.label.clone());
                    }
                    entries.push(now.clone());
                    retired.push(false);
                }
                None => {
                    if !*was_retired {
                        change.removed.push(old.label.clone());
                    }
                    let mut gone = old.clone();
                    if next.entries.iter().any(|e| e.label == gone.label) {
                        gone.label = gone.fingerprint().to_string();
                    }
                    entries.push(gone);
                    retired.push(true);
                }
            }
        }
        for e in &next.entries {
            if !self.entries.iter().any(|old| old.key == e.key) {
                change.added.push(e.label.clone());
                entries.push(e.clone());
                retired.push(false);
            }
        }
        (KeyRing { entries, retired }, change)
    }

    /// Whether a reload removed this key: it takes no new request.
    pub fn is_retired(&self, id: KeyId) -> bool {
        self.retired.get(id.index()).copied().unwrap_or(true)
    }

    /// The keys that take requests, with their ids, in ring order.
    pub fn active(&self) -> impl Iterator<Item = (KeyId, &KeyEntry)> {
        self.iter().filter(|(id, _)| !self.is_retired(*id))
    }

    /// Number of keys, retired ones included (ids run from 0 to `len() - 1`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a ring has at least one key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key with this id.
    pub fn get(&self, id: KeyId) -> Option<&KeyEntry> {
        self.entries.get(id.index())
    }

    /// All keys with their ids, in ring order.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, &KeyEntry)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (KeyId(i as u32), e))
    }

    /// Finds a key that takes requests by label or fingerprint.
    pub fn find(&self, label_or_fingerprint: &str) -> Option<KeyId> {
        let fp = Fingerprint::parse(label_or_fingerprint);
        self.active()
            .find(|(_, e)| e.label == label_or_fingerprint || Some(e.fingerprint()) == fp)
            .map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-key-not-real-0123456789";

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let key = ApiKey::new(SECRET).unwrap();
        let spec = KeySpec::new(key.clone()).label("work");
        let ring = KeyRing::new(vec![spec.clone()]).unwrap();
        for shown in [
            format!("{key:?}"),
            format!("{key}"),
            format!("{spec:?}"),
            format!("{ring:?}"),
            format!("{:#?}", ring.get(KeyId(0))),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(!shown.contains("0123456789"), "{shown}");
        }
    }

    #[test]
    fn fingerprint_is_first_8_hex_of_sha256() {
        // sha256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(Fingerprint::of("abc").to_string(), "ba7816bf");
        let fp = Fingerprint::parse("ba7816bf").unwrap();
        assert_eq!(fp, Fingerprint::of("abc"));
        assert_eq!(Fingerprint::parse("xyz"), None);
        assert_eq!(Fingerprint::parse("ba7816bg"), None);
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert!(matches!(ApiKey::new("  "), Err(KeyError::Empty)));
        assert!(matches!(ApiKey::new("a b"), Err(KeyError::Malformed)));
        assert!(matches!(KeyRing::new(vec![]), Err(KeyError::NoKeys)));
        let a = KeySpec::new(ApiKey::new("k1").unwrap()).label("a");
        let b = KeySpec::new(ApiKey::new(" k1 ").unwrap()).label("b");
        let err = KeyRing::new(vec![a.clone(), b]).unwrap_err();
        assert!(matches!(err, KeyError::Duplicate { .. }));
        assert!(!err.to_string().contains("k1 "), "{err}");
        let c = KeySpec::new(ApiKey::new("k2").unwrap()).label("a");
        assert!(matches!(
            KeyRing::new(vec![a.clone(), c]),
            Err(KeyError::DuplicateLabel { .. })
        ));
        assert!(matches!(
            KeyRing::new(vec![a.weight(0)]),
            Err(KeyError::ZeroWeight { .. })
        ));
    }

    #[test]
    fn a_reload_keeps_every_id_retires_the_removed_and_appends_the_new() {
        let spec = |k: &str, l: &str| KeySpec::new(ApiKey::new(k).unwrap()).label(l);
        let old = KeyRing::new(vec![spec("k1", "a"), spec("k2", "b")]).unwrap();
        let next = KeyRing::new(vec![spec("k3", "b"), spec("k1", "a").project("p")]).unwrap();
        let (ring, change) = old.reloaded(&next);
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.get(KeyId(0)).unwrap().key, ApiKey::new("k1").unwrap());
        assert_eq!(ring.get(KeyId(0)).unwrap().project, "p");
        assert!(ring.is_retired(KeyId(1)));
        assert_eq!(ring.get(KeyId(1)).unwrap().key, ApiKey::new("k2").unwrap());
        // The label went to the new key; the retired one is shown by its fingerprint.
        assert_eq!(ring.find("b"), Some(KeyId(2)));
        assert_eq!(ring.active().count(), 2);
        assert_eq!(change.added, vec!["b".to_owned()]);
        assert_eq!(change.removed, vec!["b".to_owned()]);
        assert_eq!(change.changed, vec!["a".to_owned()]);
        // A removed key that comes back gets its old id again.
        let (again, change) = ring.reloaded(&old);
        assert_eq!(again.len(), 3);
        assert!(!again.is_retired(KeyId(1)) && again.is_retired(KeyId(2)));
        assert_eq!(change.added, vec!["b".to_owned()]);
    }

    #[test]
    fn keys_without_project_are_their_own_project() {
        let ring = KeyRing::new(vec![
            KeySpec::new(ApiKey::new("k1").unwrap()),
            KeySpec::new(ApiKey::new("k2").unwrap()).project("p"),
            KeySpec::new(ApiKey::new("k3").unwrap()).project("p"),
        ])
        .unwrap();
        let projects: Vec<_> = ring.iter().map(|(_, e)| e.project.clone()).collect();
        assert!(projects[0].starts_with("key:"));
        assert_eq!(projects[1], "p");
        assert_eq!(projects[2], "p");
        assert_eq!(ring.find("p"), None);
        assert_eq!(
            ring.find(&ring.get(KeyId(2)).unwrap().label),
            Some(KeyId(2))
        );
    }
}
