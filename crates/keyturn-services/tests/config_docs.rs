//! docs/CONFIG.md names every setting the configuration accepts, in its section's table, with the
//! real default: the settings are walked from `Config::default()` itself, so a setting added to
//! the code and not to the docs (or a default changed in one place only) fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_services::Config;

/// The part of CONFIG.md that documents `[section]`: from its heading to the next heading.
fn section<'a>(docs: &'a str, name: &str) -> &'a str {
    let heading = docs
        .match_indices("\n### ")
        .map(|(i, _)| i + 1)
        .find(|&i| {
            docs[i..]
                .lines()
                .next()
                .is_some_and(|l| l.contains(&format!("`[{name}]`")))
        })
        .unwrap_or_else(|| panic!("no section for [{name}] in CONFIG.md"));
    let rest = &docs[heading + 4..];
    let end = rest.find("\n### ").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The default a section's table gives `field`: rows name one field (`` | `a` | `x` | ``) or
/// several (`` | `a` / `b` | `x` / `y` | ``).
fn documented_default<'a>(section: &'a str, field: &str) -> Option<&'a str> {
    section.lines().find_map(|l| {
        let mut cells = l.split('|').skip(1);
        let (names, defaults) = (cells.next()?, cells.next()?);
        let i = names
            .split(" / ")
            .position(|n| n.trim() == format!("`{field}`"))?;
        defaults.split(" / ").nth(i)
    })
}

#[test]
fn every_setting_is_in_config_md_with_its_default() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"))
            .unwrap();
    let defaults: toml::Table =
        toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for (name, value) in &defaults {
        let Some(table) = value.as_table() else {
            continue;
        };
        // Maps of the user's own entries (models, projects) hold no defaults.
        if table.is_empty() {
            continue;
        }
        let text = section(&docs, name);
        for (field, default) in table {
            seen += 1;
            let shown = match default {
                toml::Value::String(s) => format!("\"{s}\""),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                // An array of tables (`[[serve.tokens]]`): documented by its own row.
                toml::Value::Array(a) if a.is_empty() => {
                    if !text.contains(&format!("`[[{name}.{field}]]`")) {
                        wrong.push(format!("[{name}] {field}: no `[[{name}.{field}]]` row"));
                    }
                    continue;
                }
                toml::Value::Array(a) => toml::Value::Array(a.clone()).to_string(),
                // Nested tables (limits.unknown_model…) are described in prose.
                _ => continue,
            };
            // `[limits]` is documented as an annotated TOML block.
            if let Some(d) = documented_default(text, field) {
                if !d.contains(&shown) {
                    wrong.push(format!(
                        "[{name}] {field}: the default is {shown}, CONFIG.md says {}",
                        d.trim()
                    ));
                }
            } else if !text.contains(&format!("{field} = {shown}")) {
                wrong.push(format!("[{name}] {field}: not in CONFIG.md"));
            }
        }
    }
    assert!(seen > 40, "the walk found the settings ({seen})");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
