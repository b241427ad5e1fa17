//! What the scenarios share: the real `keyturn` binary, an in-process simulator, a private folder
//! with keys, configuration and transcripts, and a report of checks.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use keyturn_sim::{KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::Value;

pub const FLASH: &str = "gemini-2.5-flash";
pub const LITE: &str = "gemini-2.5-flash-lite";
pub const EMBED: &str = "gemini-embedding-001";

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// Builds the binary (`release` for benchmarks) and returns its path; `KEYTURN_BIN` overrides.
pub fn build_keyturn(release: bool) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("KEYTURN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(root()).args(["build", "--bin", "keyturn"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("xtask: {cmd:?}");
    if !cmd.status().is_ok_and(|s| s.success()) {
        return Err("cannot build keyturn".into());
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from);
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("keyturn"))
}

/// Checks as they are made, printed one per line.
#[derive(Debug, Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub checks: usize,
}

impl Report {
    pub fn check(&mut self, ok: bool, what: impl Display) -> bool {
        self.checks += 1;
        if ok {
            println!("    ok    {what}");
        } else {
            println!("    FAIL  {what}");
            self.failures.push(what.to_string());
        }
        ok
    }

    pub fn note(&self, what: impl Display) {
        println!("          {what}");
    }
}

/// A finished `keyturn` run.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The last lines, for a failure message.
    pub fn tail(&self) -> String {
        let t = self.text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }
}

/// A key of a world: (key, label, project, valid).
pub type KeyDef = (String, String, String, bool);

pub fn key(label: &str, project: &str) -> KeyDef {
    (
        format!("made-up-scenario-key-{label}"),
        label.to_owned(),
        project.to_owned(),
        true,
    )
}

pub fn dead_key(label: &str, project: &str) -> KeyDef {
    let mut k = key(label, project);
    k.3 = false;
    k
}

/// A simulator, a folder with `keys.txt`, `keyturn.toml` and transcripts, and the binary.
pub struct World {
    pub bin: PathBuf,
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
}

/// Simulator limits per model, and the same written as keyturn configuration.
pub fn limits_toml(models: &[(&str, Limits)]) -> String {
    let mut t = String::new();
    for (m, l) in models {
        t.push_str(&format!("[models.\"{m}\"]\n"));
        for (name, v) in [("rpm", l.rpm), ("tpm", l.tpm), ("rpd", l.rpd)] {
            if let Some(v) = v {
                t.push_str(&format!("{name} = {v}\n"));
            }
        }
    }
    t
}

/// Fast retries and breakers, long waits: what a scenario wants from keyturn.
pub const BASE_TOML: &str = "[rotation]\nmax_wait = \"3m\"\n\
[breaker]\nbase_cooldown = \"300ms\"\nmax_cooldown = \"2s\"\n\
[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 1000\nmax_elapsed = \"5m\"\n";

impl World {
    /// Starts the simulator with `keys` and `models` (and `sim` for the rest), writes matching
    /// keyturn configuration (`BASE_TOML`, the limits, then `extra`) and the sample transcripts.
    pub async fn new(
        bin: &Path,
        keys: Vec<KeyDef>,
        models: &[(&str, Limits)],
        sim: SimConfig,
        extra_toml: &str,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut cfg = sim;
        cfg.keys = keys
            .iter()
            .map(|(k, l, p, ok)| SimKey {
                key: k.clone(),
                label: Some(l.clone()),
                project: Some(p.clone()),
                state: if *ok {
                    KeyState::Valid
                } else {
                    KeyState::Invalid
                },
            })
            .collect();
        for (m, l) in models {
            cfg.models.insert((*m).to_owned(), *l);
        }
        let sim = Simulator::start(cfg).await.map_err(|e| e.to_string())?;
        let lines: String = keys
            .iter()
            .map(|(k, l, p, _)| format!("{k} label={l} project={p}\n"))
            .collect();
        std::fs::write(dir.path().join("keys.txt"), lines).map_err(|e| e.to_string())?;
        // Extra `[state]` settings join the state table rather than repeat it.
        let (state, extra) = match extra_toml.strip_prefix("[state]\n") {
            Some(rest) => {
                let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
                (&rest[..end], &rest[end..])
            }
            None => ("", extra_toml),
        };
        std::fs::write(
            dir.path().join("keyturn.toml"),
            format!(
                "[state]\nflush_interval = \"200ms\"\n{state}{BASE_TOML}{}{extra}",
                limits_toml(models)
            ),
        )
        .map_err(|e| e.to_string())?;
        keyturn_pipeline::demo::write_samples(&dir.path().join("transcripts"))
            .map_err(|e| e.to_string())?;
        let mut env = BTreeMap::new();
        env.insert(
            "KEYTURN_KEYS_FILE".into(),
            dir.path().join("keys.txt").display().to_string(),
        );
        env.insert(
            "KEYTURN_CONFIG".into(),
            dir.path().join("keyturn.toml").display().to_string(),
        );
        env.insert(
            "KEYTURN_STATE_DIR".into(),
            dir.path().join("state").display().to_string(),
        );
        env.insert("GEMINI_BASE_URL".into(), sim.base_url());
        Ok(Self {
            bin: bin.to_owned(),
            sim,
            dir,
            env,
        })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `keyturn ARGS` in the world's folder with only the world's environment.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    pub async fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Out {
        self.run_cmd(self.command(args)).await
    }

    pub async fn run_cmd(&self, mut c: tokio::process::Command) -> Out {
        match c.output().await {
            Ok(o) => Out {
                code: o.status.code(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Out {
                code: None,
                stdout: String::new(),
                stderr: format!("cannot run keyturn: {e}"),
            },
        }
    }

    /// `seed` over `inputs` into `out`, small chunks and embeddings; `extra` flags are added (a
    /// `--chunk-tokens` there replaces the default).
    pub fn seed_args(&self, inputs: &str, out: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "seed".into(),
            self.path(inputs).display().to_string(),
            "--out".into(),
            self.path(out).display().to_string(),
            "--dimensions".into(),
            "16".into(),
        ];
        if !extra.contains(&"--chunk-tokens") {
            a.extend(["--chunk-tokens".to_owned(), "90".to_owned()]);
        }
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    }

    pub fn stats(&self) -> Value {
        self.sim.state().stats()
    }

    /// Admitted requests of one (project, model) scope in the simulator.
    pub fn admitted(&self, project: &str, model: &str) -> u64 {
        scope_field(&self.stats(), project, model, "admitted")
    }

    /// Responses with this HTTP status.
    pub fn responses(&self, status: u16) -> u64 {
        self.stats()["by_status"][status.to_string()]
            .as_u64()
            .unwrap_or(0)
    }

    /// A key's statistics in the simulator, by label.
    pub fn key_stats(&self, label: &str) -> Value {
        self.stats()["keys"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["label"] == label).cloned())
            .unwrap_or(Value::Null)
    }

    /// `keyturn status --json`.
    pub async fn status(&self) -> Value {
        serde_json::from_str(&self.run(&["status", "--json"]).await.stdout).unwrap_or(Value::Null)
    }
}

pub fn scope_field(stats: &Value, project: &str, model: &str, field: &str) -> u64 {
    stats["scopes"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["project"] == project && s["model"] == model)
                .and_then(|s| s[field].as_u64())
        })
        .unwrap_or(0)
}

/// A scope's state in `keyturn status --json`.
pub fn scope_state(status: &Value, project: &str, model: &str) -> String {
    status["scopes"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["project"] == project && s["model"] == model)
                .and_then(|s| s["state"].as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "absent".into())
}

/// Writes `episodes` synthetic transcripts (several podcasts) under `dir`: varied sentences
/// with capitalised names, so extraction finds entities and chunks differ.
pub fn synth_transcripts(dir: &Path, episodes: usize, tag: &str) -> std::io::Result<()> {
    const PEOPLE: &[&str] = &[
        "Ada Lovelace",
        "Charles Babbage",
        "Grace Hopper",
        "Alan Turing",
        "Katherine Johnson",
        "John von Neumann",
        "Margaret Hamilton",
        "Claude Shannon",
        "Hedy Lamarr",
        "Tim Berners-Lee",
    ];
    const PLACES: &[&str] = &[
        "London",
        "Vienna",
        "Boston",
        "Budapest",
        "Paris",
        "Bletchley Park",
        "Princeton",
        "Geneva",
        "Houston",
        "Manchester",
    ];
    const THINGS: &[&str] = &[
        "the Analytical Engine",
        "the compiler",
        "the Enigma machine",
        "the Apollo guidance computer",
        "information theory",
        "frequency hopping",
        "the World Wide Web",
        "the stored program",
        "the difference engine",
        "orbital mechanics",
    ];
    for e in 0..episodes {
        let podcast = dir.join(format!("{tag} podcast {}", e % 4));
        std::fs::create_dir_all(&podcast)?;
        let mut text = String::new();
        for s in 0..6 {
            let i = e * 7 + s * 3;
            text.push_str(&format!(
                "In episode {e} part {s}, {} talked about {} in {} with {}. ",
                PEOPLE[i % PEOPLE.len()],
                THINGS[(i / 2) % THINGS.len()],
                PLACES[(i / 3) % PLACES.len()],
                PEOPLE[(i + 3) % PEOPLE.len()],
            ));
            text.push_str(&format!(
                "Listeners of {tag} heard how {} changed {} forever, and why {} still matters today.\n",
                THINGS[(i + 1) % THINGS.len()],
                PLACES[(i + 2) % PLACES.len()],
                THINGS[(i + 4) % THINGS.len()],
            ));
        }
        std::fs::write(podcast.join(format!("episode {e:04}.txt")), text)?;
    }
    Ok(())
}

/// Every output of a seed run is whole: `expected` episode files, node ids unique, every edge's
/// ends are nodes, no temporary file left. Returns a description of what is wrong, if anything.
pub fn graph_problems(out: &Path, expected: usize) -> Option<String> {
    let episodes = std::fs::read_dir(out.join("episodes"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    if episodes != expected {
        return Some(format!("{episodes} episode files, expected {expected}"));
    }
    let read =
        |name: &str| std::fs::read_to_string(out.join("graph").join(name)).unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    for line in read("nodes.jsonl").lines() {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Some(format!("a node line does not parse: {e}")),
        };
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        if !ids.insert(id.clone()) {
            return Some(format!("node {id} appears twice"));
        }
    }
    if ids.is_empty() {
        return Some("no nodes".into());
    }
    let mut edges = std::collections::HashSet::new();
    for line in read("edges.jsonl").lines() {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Some(format!("an edge line does not parse: {e}")),
        };
        for end in ["source", "target"] {
            if !ids.contains(v[end].as_str().unwrap_or_default()) {
                return Some(format!("edge {end} {} is not a node", v[end]));
            }
        }
        if !edges.insert(line.to_owned()) {
            return Some(format!("edge {line} appears twice"));
        }
    }
    let leftovers: Vec<String> = walk(out)
        .into_iter()
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.ends_with(".tmp") || name.starts_with(".tmp")
        })
        .map(|p| p.display().to_string())
        .collect();
    if !leftovers.is_empty() {
        return Some(format!("temporary files left: {leftovers:?}"));
    }
    None
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
