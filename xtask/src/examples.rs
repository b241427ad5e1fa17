//! `cargo xtask examples`: every crate example, run against `keyturn sim` and checked by its exit
//! status and what it prints. An example that does not run is not an example.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use rand::Rng;

use crate::world;

/// One run of an example: package, example, what its output must contain (in order of runs:
/// an example listed twice runs twice against the same state).
struct Run {
    package: &'static str,
    example: &'static str,
    expect: &'static [&'static str],
}

const RUNS: &[Run] = &[
    Run {
        package: "keyturn-llm",
        example: "generate",
        expect: &["answer: Simulated answer", "keys used: 3", "streamed: "],
    },
    Run {
        package: "keyturn-llm",
        example: "persistent_state",
        expect: &["answer: Simulated answer", "requests counted today: 1"],
    },
    // The second run starts from the state file the first one left.
    Run {
        package: "keyturn-llm",
        example: "persistent_state",
        expect: &["requests counted today: 2"],
    },
    Run {
        package: "keyturn-embeddings",
        example: "embed",
        expect: &[
            "one text: 768 dimensions",
            "150 texts: 150 vectors of 768 dimensions",
        ],
    },
];

/// A child process that is killed when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Spawns `cmd` (which must bind port 0 itself, so no other process can take its port between a
/// probe and the bind) and returns it with the rest of the first stdout line that starts with
/// `prefix`: the address it printed. Its stdout is drained afterwards so it never blocks.
pub fn spawn_announcing(mut cmd: Command, prefix: &str) -> Result<(Killed, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
    std::thread::spawn(move || lines.for_each(drop));
    match found {
        Some(rest) => Ok((child, rest)),
        None => Err(format!("{cmd:?} exited without printing '{prefix}…'")),
    }
}

/// The simulator binary on a port it picked; returns it and its base URL.
pub fn start_sim(keyturn: &std::path::Path) -> Result<(Killed, String), String> {
    let mut cmd = Command::new(keyturn);
    cmd.args(["sim", "--port", "0"]);
    spawn_announcing(cmd, "GEMINI_BASE_URL=")
}

/// A made-up key shaped like Google's (`AIzaSy` and 33 more characters).
fn made_up_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let filler: String = (0..33)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("AIzaSy{filler}")
}

fn run() -> Result<(), String> {
    let keyturn = world::build_keyturn(false)?;
    let cargo = std::env::var("CARGO").unwrap_or("cargo".into());
    let mut build = Command::new(&cargo);
    build
        .current_dir(world::root())
        .args(["build", "--examples"]);
    for p in ["keyturn-llm", "keyturn-embeddings"] {
        build.args(["-p", p]);
    }
    if !build.status().is_ok_and(|s| s.success()) {
        return Err("cannot build the examples".into());
    }
    let (_sim, base_url) = start_sim(&keyturn)?;
    let keys = [made_up_key(), made_up_key(), made_up_key()].join(",");
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for r in RUNS {
        let out = Command::new(&cargo)
            .current_dir(world::root())
            .args(["run", "-q", "-p", r.package, "--example", r.example])
            .env("GEMINI_BASE_URL", &base_url)
            .env("GEMINI_API_KEYS", &keys)
            .env("KEYTURN_STATE_DIR", state.path())
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let missing: Vec<&str> = r
            .expect
            .iter()
            .copied()
            .filter(|e| !stdout.contains(e))
            .collect();
        let name = format!("{}/{}", r.package, r.example);
        if out.status.success() && missing.is_empty() {
            println!("PASS {name}");
        } else {
            println!(
                "FAIL {name}: {}, missing {missing:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
                out.status
            );
            failed.push(name);
        }
        // No key may reach an example's output.
        if keys
            .split(',')
            .any(|k| stdout.contains(k) || stderr.contains(k))
        {
            println!("FAIL {}/{}: a key reached its output", r.package, r.example);
            failed.push(format!("{}/{} (leak)", r.package, r.example));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

pub fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask examples: {e}");
            ExitCode::from(1)
        }
    }
}
