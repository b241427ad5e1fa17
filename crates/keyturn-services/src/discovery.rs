//! Finding keys. Sources, in this order (the order is the round-robin order):
//!
//! 1. `[[keys]]` in `keyturn.toml`, in file order (`env = "NAME"` or `file = "path"`);
//! 2. `KEYTURN_KEYS_FILE`: one key per line, `#` comments, optional `label=…`, `project=…`,
//!    `weight=…` after the key;
//! 3. `GEMINI_API_KEY_<N>` for any N, by N (gaps allowed: _1, _2, _7 are all found);
//! 4. `GEMINI_API_KEYS`: separated by commas, semicolons or white space, each key optionally
//!    quoted (`"k1","k2"`, `'k1' 'k2'`), or a JSON array (`["k1", "k2"]`);
//! 5. `GEMINI_API_KEY`;
//! 6. `GOOGLE_API_KEY`.
//!
//! A key found twice counts once, with the label and project of its first place. Each key is
//! labelled by where it came from (`GEMINI_API_KEY_3`, `GEMINI_API_KEYS[2]`, `keys.txt:4`) unless a
//! label is given; values are never shown. One pair of quotes around a value (`"AIza…"`, as
//! some `.env` loaders leave them) is removed; a key that still holds a character no API key has
//! (quotes, brackets, `;`, `,`, `=`, white space) is refused, naming where it came from.

use std::path::{Path, PathBuf};

use keyturn_core::{ApiKey, KeyRing, KeySpec};

use crate::config::{Config, Env};
use crate::error::{ConfigError, looks_like_key};

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
    /// The egress route of its `[[keys]]` entry (`proxy`), if it has one.
    pub route: Option<keyturn_gemini::EgressRoute>,
}

fn spec(
    secret: &str,
    label: String,
    project: Option<String>,
    weight: Option<u32>,
    source: String,
) -> Result<Found, ConfigError> {
    let secret = unquote(secret);
    if let Some(c) = secret
        .chars()
        .find(|c| NEVER_IN_A_KEY.contains(c) || c.is_whitespace())
    {
        return Err(ConfigError::Key {
            source_name: source,
            detail: format!(
                "holds {}, which no API key has (keys are letters, digits, '-' and '_'); write the key alone, without quotes or brackets{}",
                shown_char(c),
                if matches!(c, ',' | ';') || c.is_whitespace() {
                    "; for several keys use GEMINI_API_KEYS (k1,k2) or GEMINI_API_KEY_1, GEMINI_API_KEY_2, …"
                } else {
                    ""
                }
            ),
        });
    }
    for (what, v) in [("label", Some(&label)), ("project", project.as_ref())] {
        let Some(v) = v else { continue };
        let problem = if looks_like_key(v) {
            Some(
                "holds what looks like an API key; labels and projects are shown everywhere: give a name, not the key",
            )
        } else if v.chars().any(char::is_control) {
            Some("holds a control character")
        } else if what == "project" && v.contains('|') {
            Some("holds '|', which keyturn's state uses as a separator")
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(ConfigError::Key {
                source_name: source,
                detail: format!("its {what} {p}"),
            });
        }
    }
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
    Ok(Found {
        spec: s,
        source,
        route: None,
    })
}

/// Characters no API key holds: what is left of JSON, quoting or a list separator.
const NEVER_IN_A_KEY: &[char] = &[
    '"', '\'', '`', '[', ']', '{', '}', '(', ')', ';', ',', '=', '<', '>', '\\',
];

fn shown_char(c: char) -> String {
    if c.is_whitespace() || c.is_control() {
        format!("white space or a control character (U+{:04X})", c as u32)
    } else {
        format!("'{c}'")
    }
}

/// The value without surrounding white space and one pair of matching quotes around it.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.trim();
        }
    }
    v
}

/// The keys in a `GEMINI_API_KEYS` value: a JSON array of strings, or a list separated by
/// commas, semicolons or white space whose items may be quoted.
pub fn split_key_list(value: &str) -> Result<Vec<String>, String> {
    let v = value.trim();
    if v.starts_with('[') {
        let items: Vec<String> = serde_json::from_str(v).map_err(|_| {
            "starts with '[' but is not a JSON array of strings; write [\"key1\", \"key2\"] or key1,key2".to_owned()
        })?;
        return Ok(items
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect());
    }
    Ok(v.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .map(unquote)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Every key value the environment holds (the key variables, and the variables `[[keys]]` names
/// in `extra_vars`), whole and split, so that messages can hide them wherever they turn up.
pub fn env_secrets(env: &Env, extra_vars: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |v: &str| {
        let v = unquote(v);
        if !v.is_empty() && !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    };
    for (name, v) in env {
        let numbered = name
            .strip_prefix("GEMINI_API_KEY_")
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if numbered
            || matches!(
                name.as_str(),
                "GEMINI_API_KEY" | "GOOGLE_API_KEY" | "GEMINI_API_KEYS"
            )
            || extra_vars.contains(name)
        {
            add(v);
            if name == "GEMINI_API_KEYS" {
                for k in split_key_list(v).unwrap_or_default() {
                    add(&k);
                }
                // Even when the list does not parse, its pieces are secrets.
                for piece in v.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                {
                    add(piece);
                }
            }
        }
    }
    out
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
        let line_err = |detail: String| ConfigError::KeysFile {
            path: path.to_owned(),
            line: i + 1,
            detail,
        };
        if let Some((name, _)) = secret.split_once('=') {
            let hint = if matches!(name, "label" | "project" | "weight") {
                "the key comes first on the line, then label=…, project=…, weight=…".to_owned()
            } else {
                format!(
                    "this looks like a variable assignment ({name}=…), not a key; a keys file holds the keys themselves, one per line"
                )
            };
            return Err(line_err(hint));
        }
        let (mut label, mut project, mut weight) = (None, None, None);
        for f in fields {
            match f.split_once('=') {
                Some(("label", v)) => label = Some(v.to_owned()),
                Some(("project", v)) => project = Some(v.to_owned()),
                Some(("weight", v)) => {
                    weight = Some(match v.parse::<u32>() {
                        Ok(w) if w >= 1 => w,
                        _ => {
                            return Err(line_err(format!(
                                "weight '{v}' is not a whole number of at least 1"
                            )));
                        }
                    })
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
    read_small_file(path)
}

/// Keys files and `keyturn.toml` are small: anything larger, or not a regular file (a device, a
/// pipe: `/dev/zero` would never end), is refused instead of read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a configuration or keys file, refusing what cannot be one (see
/// [`MAX_CONFIG_FILE_BYTES`]).
pub fn read_small_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let err = |detail: String| ConfigError::Read {
        path: path.to_owned(),
        detail,
    };
    // Looked at before opening: opening a FIFO for reading waits for a writer, for ever.
    if !std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .is_file()
    {
        return Err(err("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(err(format!(
            "{} bytes; a configuration or keys file is at most {MAX_CONFIG_FILE_BYTES}",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(err(format!(
            "grew past {MAX_CONFIG_FILE_BYTES} bytes while being read"
        )));
    }
    Ok(text)
}

fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match (p.is_relative(), base.and_then(Path::parent)) {
        (true, Some(dir)) => dir.join(p),
        _ => p.to_owned(),
    }
}

/// The files a configuration is read from — `keyturn.toml`, the `[[keys]] file =` entries and
/// `KEYTURN_KEYS_FILE` — which `keyturn serve` watches to reload when one changes.
pub fn config_files(cfg: &Config, env: &Env, cwd: &Path) -> Vec<PathBuf> {
    let absolute = |p: PathBuf| if p.is_relative() { cwd.join(p) } else { p };
    let mut out: Vec<PathBuf> = cfg.source.iter().cloned().map(absolute).collect();
    for k in &cfg.keys {
        if let Some(file) = &k.file {
            out.push(absolute(resolve(cfg.source.as_deref(), file)));
        }
    }
    if let Some(p) = env
        .get("KEYTURN_KEYS_FILE")
        .filter(|v| !v.is_empty() && !looks_like_key(v))
    {
        out.push(absolute(resolve(None, Path::new(p))));
    }
    out.dedup();
    out
}

/// Every key, from every source, deduplicated, in the documented order. Errors never show a key:
/// anything key-shaped and every key value configured anywhere is hidden in them.
pub fn discover(cfg: &Config, env: &Env, cwd: &Path) -> Result<Vec<Found>, ConfigError> {
    let names: Vec<String> = cfg.keys.iter().filter_map(|k| k.env.clone()).collect();
    let mut found = Vec::new();
    let result = discover_into(cfg, env, cwd, &mut found);
    let secrets = || {
        let mut s = env_secrets(env, &names);
        s.extend(found.iter().map(|f: &Found| f.spec.key.expose().to_owned()));
        s
    };
    if let Err(e) = result {
        return Err(e.scrubbed(&secrets()));
    }
    // A label or project that is some configured key (of another source) would be shown
    // everywhere labels are.
    let all = secrets();
    for f in &found {
        for (what, v) in [
            ("label", f.spec.label.as_ref()),
            ("project", f.spec.project.as_ref()),
        ] {
            if v.is_some_and(|v| crate::error::is_known_secret(v, &all)) {
                return Err(ConfigError::Key {
                    source_name: f.source.clone(),
                    detail: format!("its {what} is one of the configured API keys; labels and projects are shown everywhere: give a name, not a key"),
                }
                .scrubbed(&all));
            }
        }
    }
    // Each key's first place, by fingerprint (no extra copy of the secret): linear in the
    // number of keys, however many there are.
    let mut first: std::collections::HashMap<keyturn_core::Fingerprint, Vec<usize>> =
        std::collections::HashMap::with_capacity(found.len());
    let mut unique: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        let places = first.entry(f.spec.key.fingerprint()).or_default();
        if let Some(&i) = places.iter().find(|&&i| unique[i].spec.key == f.spec.key) {
            tracing::debug!(first = %unique[i].source, again = %f.source, "the same key is configured twice; counted once");
            continue;
        }
        places.push(unique.len());
        unique.push(f);
    }
    Ok(unique)
}

fn discover_into(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
    found: &mut Vec<Found>,
) -> Result<(), ConfigError> {
    for (i, k) in cfg.keys.iter().enumerate() {
        // Checked with the configuration: a route that does not parse never gets here.
        let route = k
            .proxy
            .as_ref()
            .and_then(|p| keyturn_gemini::EgressRoute::parse(p.expose()).ok());
        if let Some(var) = &k.env {
            let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) else {
                return Err(ConfigError::MissingEnv {
                    path: cfg.source.clone().unwrap_or_default(),
                    entry: i,
                    var: var.clone(),
                });
            };
            let mut f = spec(
                v,
                k.label.clone().unwrap_or_else(|| var.clone()),
                k.project.clone(),
                k.weight,
                format!("env {var}"),
            )?;
            f.route.clone_from(&route);
            found.push(f);
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
                f.route.clone_from(&route);
            }
            found.extend(keys);
        }
    }
    if let Some(p) = env.get("KEYTURN_KEYS_FILE").filter(|v| !v.is_empty()) {
        if looks_like_key(p) {
            return Err(ConfigError::KeyShaped {
                path: "(environment)".into(),
                field: "KEYTURN_KEYS_FILE".into(),
                hint: ", not a path: put the keys in a file (one per line) and name the file here, or put the key in GEMINI_API_KEY".into(),
            });
        }
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
        let keys = split_key_list(list).map_err(|detail| ConfigError::Key {
            source_name: "env GEMINI_API_KEYS".into(),
            detail,
        })?;
        for (i, k) in keys.iter().enumerate() {
            let label = format!("GEMINI_API_KEYS[{}]", i + 1);
            found.push(spec(k, label.clone(), None, None, format!("env {label}"))?);
        }
    }
    for var in ["GEMINI_API_KEY", "GOOGLE_API_KEY"] {
        if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
            found.push(spec(v, var.to_owned(), None, None, format!("env {var}"))?);
        }
    }
    Ok(())
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
        let secrets: Vec<String> = found
            .iter()
            .map(|f| f.spec.key.expose().to_owned())
            .collect();
        ConfigError::Key {
            source_name: "the configured keys".into(),
            detail: e.to_string(),
        }
        .scrubbed(&secrets)
    })?;
    Ok((ring, found))
}
