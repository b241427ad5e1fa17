//! What the binary's end-to-end tests share: a folder with the demo's sample transcripts, a keys
//! file and a keyturn.toml; a simulator serving those keys; and the real `keyturn` run against
//! both, with nothing of the test's own environment leaking in.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::Value;

pub const FLASH: &str = "gemini-2.5-flash";
pub const EMBED: &str = "gemini-embedding-001";

/// (secret, label, project).
pub type Key = (&'static str, &'static str, &'static str);

/// What a world is made of.
pub struct Setup {
    /// The pool, in the keys file and on the simulator.
    pub keys: Vec<Key>,
    /// Labels of keys the simulator treats as invalid.
    pub invalid: Vec<&'static str>,
    /// keyturn.toml.
    pub toml: String,
    /// The simulator's limits per model.
    pub models: BTreeMap<String, Limits>,
    /// The simulator's faults.
    pub faults: Faults,
}

/// One temporary folder and one simulator.
pub struct World {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
}

impl World {
    /// Writes the samples, the keys file and keyturn.toml, and starts the simulator.
    pub async fn start(s: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        keyturn_pipeline::demo::write_samples(&dir.path().join("transcripts")).unwrap();
        let lines: String = s
            .keys
            .iter()
            .map(|(k, l, p)| format!("{k} label={l} project={p}\n"))
            .collect();
        std::fs::write(dir.path().join("keys.txt"), lines).unwrap();
        std::fs::write(dir.path().join("keyturn.toml"), &s.toml).unwrap();
        let sim = Simulator::start(SimConfig {
            keys: s
                .keys
                .iter()
                .map(|(k, l, p)| SimKey {
                    key: (*k).into(),
                    label: Some((*l).into()),
                    project: Some((*p).into()),
                    state: if s.invalid.contains(l) {
                        KeyState::Invalid
                    } else {
                        KeyState::Valid
                    },
                })
                .collect(),
            models: s.models,
            faults: s.faults,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        Self { sim, dir }
    }

    /// A path in the world's folder.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `keyturn args` on this world's keys, configuration, state folder and simulator, with an
    /// otherwise empty environment; output captured, no input.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYTURN_KEYS_FILE", self.path("keys.txt"))
            .env("KEYTURN_CONFIG", self.path("keyturn.toml"))
            .env("KEYTURN_STATE_DIR", self.path("state"))
            .env("GEMINI_BASE_URL", self.sim.base_url())
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `keyturn seed transcripts --out <out>` with small chunks and embeddings.
    pub fn seed_cmd(&self, out: &str) -> Command {
        let (t, o) = (self.path("transcripts"), self.path(out));
        self.command(&[
            "seed",
            t.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
            "--chunk-tokens",
            "90",
            "--dimensions",
            "16",
        ])
    }

    /// The simulator's statistics.
    pub fn stats(&self) -> Value {
        self.sim.state().stats()
    }

    /// Requests the simulator admitted for `model`, all projects together.
    pub fn admitted(&self, model: &str) -> u64 {
        self.stats()["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["model"] == model)
            .map(|s| s["admitted"].as_u64().unwrap_or(0))
            .sum()
    }
}

/// Runs a command to its end off the async runtime.
pub async fn run_cmd(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// Exit code, stdout and stderr, for assertion messages and searches.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
