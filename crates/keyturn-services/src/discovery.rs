//! Finding keys. Sources, in this order (the order is the round-robin order):
//!
//! 1. `[[keys]]` in `keyturn.toml`, in file order (`env = "NAME"` or `file = "path"`);
//! 2. `KEYTURN_KEYS_FILE`: one key per line, `#` comments, optional `label=…`, `project=…`,
//!    `weight=…` after the key;
//! 3. `GEMINI_API_KEY_<N>` for any N, by N (gaps allowed: _1, _2, _7 are all found);
//! 4. `GEMINI_API_KEYS`: comma- or white-space-separated;
//! 5. `GEMINI_API_KEY`;
//! 6. `GOOGLE_API_KEY`.
//!
//! A key found twice counts once, with the label and project of its first place. Each key is
//! labelled by where it came from (`GEMINI_API_KEY_3`, `GEMINI_API_KEYS[2]`, `keys.txt:4`) unless a
//! label is given; values are never shown.

use std::path::{Path, PathBuf};

use keyturn_core::{ApiKey, KeyRing, KeySpec};

use crate::config::{Config, Env};
use crate::error::ConfigError;

/// The variables and files keyturn looks in, for "no keys" messages.
pub const LOOKED_AT: &[&str] = &[
    "[[keys]] in keyturn.toml",
    "KEYTURN_KEYS_FILE",
    "GEMINI_API_KEY_<N>",
    "GEMINI_API_KEYS",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

/// A key and where it came from.
#[derive(Debug, Clone)]
pub struct Found {
    /// The key spec (label always set).
    pub spec: KeySpec,
    /// Where it was found, e.g. `env GEMINI_API_KEY_3` or `file keys.txt line 4`.
    pub source: String,
}

fn spec(
    secret: &str,
    label: String,
    project: Option<String>,
    weight: Option<u32>,
    source: String,
) -> Result<Found, ConfigError> {
    let key = ApiKey::new(secret).map_err(|e| ConfigError::Key {
        source_name: source.clone(),
        detail: e.to_string(),
    })?;
    let mut s = KeySpec::new(key).label(label);
    if let Some(p) = project {
        s = s.project(p);
    }
    if let Some(w) = weight {
        s = s.weight(w);
    }
    Ok(Found { spec: s, source })
}

/// Parses a keys file: `KEY [label=NAME] [project=ID] [weight=N]` per line, `#` comments.
pub fn parse_keys_file(text: &str, path: &Path) -> Result<Vec<Found>, ConfigError> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(secret) = fields.next() else {
            continue;
        };
        let (mut label, mut project, mut weight) = (None, None, None);
        for f in fields {
            match f.split_once('=') {
                Some(("label", v)) => label = Some(v.to_owned()),
                Some(("project", v)) => project = Some(v.to_owned()),
                Some(("weight", v)) => {
                    weight = Some(v.parse().map_err(|_| ConfigError::KeysFile {
                        path: path.to_owned(),
                        line: i + 1,
                        detail: format!("weight '{v}' is not a whole number"),
                    })?)
                }
                _ => {
                    return Err(ConfigError::KeysFile {
                        path: path.to_owned(),
                        line: i + 1,
                        detail: "after the key, only label=…, project=… and weight=… are allowed"
                            .into(),
                    });
                }
            }
        }
        let at = format!("{name}:{}", i + 1);
        out.push(spec(
            secret,
            label.unwrap_or_else(|| at.clone()),
            project,
            weight,
            format!("file {} line {}", path.display(), i + 1),
        )?);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match (p.is_relative(), base.and_then(Path::parent)) {
        (true, Some(dir)) => dir.join(p),
        _ => p.to_owned(),
    }
}

/// Every key, from every source, deduplicated, in the documented order.
pub fn discover(cfg: &Config, env: &Env, cwd: &Path) -> Result<Vec<Found>, ConfigError> {
    let mut found: Vec<Found> = Vec::new();
    for (i, k) in cfg.keys.iter().enumerate() {
        if let Some(var) = &k.env {
            let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) else {
                return Err(ConfigError::MissingEnv {
                    path: cfg.source.clone().unwrap_or_default(),
                    entry: i,
                    var: var.clone(),
                });
            };
            found.push(spec(
                v,
                k.label.clone().unwrap_or_else(|| var.clone()),
                k.project.clone(),
                k.weight,
                format!("env {var}"),
            )?);
        } else if let Some(file) = &k.file {
            let path = resolve(cfg.source.as_deref(), file);
            let path = if path.is_relative() {
                cwd.join(path)
            } else {
                path
            };
            let mut keys = parse_keys_file(&read_file(&path)?, &path)?;
            let single = keys.len() == 1;
            for (j, f) in keys.iter_mut().enumerate() {
                if let Some(l) = &k.label {
                    let label = if single {
                        l.clone()
                    } else {
                        format!("{l}-{}", j + 1)
                    };
                    f.spec.label = Some(label);
                }
                if f.spec.project.is_none() {
                    f.spec.project.clone_from(&k.project);
                }
                if let Some(w) = k.weight {
                    f.spec.weight = w;
                }
            }
            found.extend(keys);
        }
    }
    if let Some(p) = env.get("KEYTURN_KEYS_FILE").filter(|v| !v.is_empty()) {
        let path = resolve(None, Path::new(p));
        let path = if path.is_relative() {
            cwd.join(path)
        } else {
            path
        };
        found.extend(parse_keys_file(&read_file(&path)?, &path)?);
    }
    let mut numbered: Vec<(u64, &String, &String)> = env
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("GEMINI_API_KEY_")?.parse::<u64>().ok()?;
            Some((n, k, v))
        })
        .collect();
    numbered.sort_by_key(|(n, _, _)| *n);
    for (_, name, v) in numbered {
        if !v.trim().is_empty() {
            found.push(spec(v, name.clone(), None, None, format!("env {name}"))?);
        }
    }
    if let Some(list) = env.get("GEMINI_API_KEYS") {
        for (i, k) in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let label = format!("GEMINI_API_KEYS[{}]", i + 1);
            found.push(spec(k, label.clone(), None, None, format!("env {label}"))?);
        }
    }
    for var in ["GEMINI_API_KEY", "GOOGLE_API_KEY"] {
        if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
            found.push(spec(v, var.to_owned(), None, None, format!("env {var}"))?);
        }
    }
    let mut unique: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if let Some(first) = unique.iter().find(|u| u.spec.key == f.spec.key) {
            tracing::debug!(first = %first.source, again = %f.source, "the same key is configured twice; counted once");
            continue;
        }
        unique.push(f);
    }
    Ok(unique)
}

/// The key ring: discovered keys, validated. No keys is an error that lists where keyturn looked.
pub fn key_ring(cfg: &Config, env: &Env, cwd: &Path) -> Result<(KeyRing, Vec<Found>), ConfigError> {
    let found = discover(cfg, env, cwd)?;
    if found.is_empty() {
        return Err(ConfigError::NoKeys {
            looked_at: LOOKED_AT.iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    let ring = KeyRing::new(found.iter().map(|f| f.spec.clone()).collect()).map_err(|e| {
        ConfigError::Key {
            source_name: "the configured keys".into(),
            detail: e.to_string(),
        }
    })?;
    Ok((ring, found))
}
