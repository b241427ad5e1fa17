//! What the configuration checks beyond its schema: toml errors rendered without quoting the
//! file (a line may hold a key), key-shaped values in any field, and the shape of names, URLs and
//! namespaces.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::ConfigError;

/// toml's error as a message that never quotes the file: toml's own rendering shows the
/// offending line, and that line may hold a key (`key = AIza…`, unquoted, does not parse).
pub(super) fn toml_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            path: path.to_owned(),
            detail: e.message().trim().to_owned(),
        };
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let source_line = text.lines().nth(line - 1).unwrap_or("");
    let name = source_line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    if crate::error::looks_like_key(source_line) {
        let field = if name.is_empty() || crate::error::looks_like_key(name) {
            format!("line {line}")
        } else {
            format!("line {line} ({name})")
        };
        return key_in_file(path, &field, "");
    }
    let field = field_at(text, line)
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    ConfigError::Parse {
        path: path.to_owned(),
        detail: format!(
            "line {line}, column {column}{field}: {}",
            e.message().trim()
        ),
    }
}

/// The dotted field (`state.backend`, `keys[1].env`) that line `line` (1-based) sets, or the
/// table it opens; read from the text, since toml's error only carries a position.
pub(super) fn field_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut field = None;
    for l in text.lines().take(line) {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            field = Some(table.clone());
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
            field = Some(table.clone());
        } else if let Some((k, _)) = t.split_once('=')
            && !t.starts_with('#')
        {
            let k = k.trim();
            field = Some(if table.is_empty() {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            });
        }
    }
    field
}

pub(super) fn key_in_file(path: &Path, field: &str, leaf: &str) -> ConfigError {
    let hint = match leaf {
        "env" => {
            ", not a variable name: put the key in an environment variable and name the variable (env = \"GEMINI_API_KEY_WORK\")"
        }
        "file" => ", not a path: put the key in a file and name the file (file = \"keys.txt\")",
        _ => {
            "; a key is never written here: put it in an environment variable and name the variable in [[keys]] env = \"NAME\" (or use GEMINI_API_KEY), or list it in a keys file ([[keys]] file = \"path\")"
        }
    };
    ConfigError::KeyShaped {
        path: path.to_owned(),
        field: field.to_owned(),
        hint: hint.to_owned(),
    }
}

pub(super) fn env_holds_key(var: &str, what: &str) -> ConfigError {
    ConfigError::KeyShaped {
        path: "(environment)".into(),
        field: var.to_owned(),
        hint: format!(
            ", not {what}: put keys in GEMINI_API_KEY (or GEMINI_API_KEYS, GEMINI_API_KEY_<N>)"
        ),
    }
}

/// The variables `[[keys]] env = …` names, read from the plain TOML.
pub(super) fn key_env_names(table: &toml::Table) -> Vec<String> {
    table
        .get("keys")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| {
            k.get("env")
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

pub(super) fn dotted(parent: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let seg = if bare {
        name.to_owned()
    } else {
        format!("\"{name}\"")
    };
    if parent.is_empty() {
        seg
    } else {
        format!("{parent}.{seg}")
    }
}

pub(super) fn is_secret(v: &str, secrets: &[String]) -> bool {
    crate::error::looks_like_key(v) || crate::error::is_known_secret(v, secrets)
}

/// The first field (dotted, `keys[0].env`) holding something key-shaped or a known key value, and
/// the field's own name; table names count too.
pub(super) fn find_key_shaped(
    table: &toml::Table,
    parent: &str,
    secrets: &[String],
) -> Option<(String, String)> {
    for (name, value) in table {
        let here = dotted(parent, name);
        if is_secret(name, secrets) {
            return Some((here, String::new()));
        }
        if let Some(found) = value_key_shaped(value, &here, name, secrets) {
            return Some(found);
        }
    }
    None
}

pub(super) fn value_key_shaped(
    value: &toml::Value,
    here: &str,
    name: &str,
    secrets: &[String],
) -> Option<(String, String)> {
    match value {
        toml::Value::String(v) if is_secret(v, secrets) => Some((here.to_owned(), name.to_owned())),
        toml::Value::Table(t) => find_key_shaped(t, here, secrets),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| value_key_shaped(v, &format!("{here}[{i}]"), name, secrets)),
        _ => None,
    }
}

/// The Gemini API versions there are.
pub const API_VERSIONS: &[&str] = &["v1beta", "v1"];

pub(super) fn is_variable_name(v: &str) -> bool {
    let mut chars = v.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels are shown everywhere (logs, status, metrics): printable, one line, not empty.
pub(super) fn check_name(v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err("is empty".into());
    }
    if v.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    if v.chars().count() > 128 {
        return Err("is longer than 128 characters".into());
    }
    Ok(())
}

/// A project id is also part of the state's keys (`model|project`).
pub(super) fn check_project(v: &str) -> Result<(), String> {
    check_name(v)?;
    if v.contains('|') {
        return Err("holds '|', which keyturn's state uses as a separator".into());
    }
    Ok(())
}

pub(super) fn check_model(v: &str) -> Result<(), String> {
    check_project(v)?;
    if v.chars().any(char::is_whitespace) {
        return Err("holds white space; a model id is one word (gemini-2.5-flash)".into());
    }
    Ok(())
}

/// The namespace is a Redis key prefix (`kt:<namespace>:`) and part of patterns keyturn scans
/// for: a glob character or a ':' there would reach another namespace's keys.
pub(super) fn check_namespace(v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "'{v}' is not a namespace: 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

pub(super) fn check_redis_url(v: &str) -> Result<(), String> {
    let scheme = v.split_once("://").map(|(s, _)| s);
    if !matches!(
        scheme,
        Some("redis" | "rediss" | "unix" | "redis+unix" | "redis+cluster" | "rediss+cluster")
    ) {
        return Err(format!(
            "'{}' is not a Redis URL (redis://[user:password@]host:port[/db], rediss://, unix://, or a cluster: redis+cluster://[user:password@]host:port[,host:port…])",
            keyturn_store::redact_url(v)
        ));
    }
    Ok(())
}

/// The value is not repeated: a webhook URL's path is often its secret (Slack, Discord).
pub(super) fn check_http_url(v: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(v).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("is not an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// The base URL has no version segment (keyturn adds `/v1beta/…`), no query and no fragment.
pub(super) fn check_base_url(v: &str) -> Result<(), String> {
    let url = check_http_url(v)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "has a query or fragment; give the endpoint only, like https://generativelanguage.googleapis.com".into(),
        );
    }
    if url.username() != "" || url.password().is_some() {
        return Err(
            "has a user or password in it; keyturn authenticates with the API key only".into(),
        );
    }
    let last = url
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if API_VERSIONS.contains(&last) {
        return Err(format!(
            "ends with the API version; give it without (keyturn adds /{last}/models/…), or set http.api_version"
        ));
    }
    Ok(())
}
