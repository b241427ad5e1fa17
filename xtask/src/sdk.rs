//! `cargo xtask sdk`: real clients from PyPI, unmodified, against `keyturn serve` in front of
//! `keyturn sim` with keys of three projects.
//!
//! 1. google-genai's Files API, cachedContents and Batch Mode straight against the simulator
//!    (`tests/python/genai_resources_check.py`), so the simulator's surface is proven by the real
//!    SDK whether or not the proxy serves it.
//! 2. Through the proxy: google-genai (generate, stream, embed, count), the openai SDK and
//!    LiteLLM on the OpenAI-compatible routes, curl; then google-genai's files, caches and
//!    batches again, if the proxy serves the Files API (it says so, and is skipped, if not).

use std::process::Command;

use crate::examples;
use crate::{root, run};

/// Keys of three paid projects (Batch Mode needs billing), with room for every check.
const SIM_CONFIG: &str = r#"
[[keys]]
key = "made-up-sdk-key-1"
label = "sdk-1"
project = "sdk-p1"

[[keys]]
key = "made-up-sdk-key-2"
label = "sdk-2"
project = "sdk-p2"

[[keys]]
key = "made-up-sdk-key-3"
label = "sdk-3"
project = "sdk-p3"

[projects."sdk-p1"]
tier = "paid"
[projects."sdk-p2"]
tier = "paid"
[projects."sdk-p3"]
tier = "paid"

[models."gemini-2.5-flash"]
rpm = 1000
tpm = 10000000
rpd = 100000

[models."gemini-embedding-001"]
rpm = 1000
tpm = 10000000
rpd = 100000
"#;

/// The proxy's limits for the models the checks use: the simulator's (its projects are paid).
const PROXY_LIMITS: &str = r#"
[models."gemini-2.5-flash"]
rpm = 1000
tpm = 10000000
rpd = 100000

[models."gemini-embedding-001"]
rpm = 1000
tpm = 10000000
rpd = 100000
"#;

/// The proxy's keys: the same three, each with its project, so it can pin resources.
const KEYS_FILE: &str = "made-up-sdk-key-1 label=sdk-1 project=sdk-p1
made-up-sdk-key-2 label=sdk-2 project=sdk-p2
made-up-sdk-key-3 label=sdk-3 project=sdk-p3
";

fn python(script: &str, args: &[&str]) -> Result<(), String> {
    let root = root();
    if run(Command::new(root.join("target/sdk-venv/bin/python"))
        .arg(root.join("tests/python").join(script))
        .args(args))
    {
        Ok(())
    } else {
        Err(format!("{script} failed"))
    }
}

/// Whether `keyturn serve` has a route: asked without a token, it answers 401 if it has it,
/// 404 if not.
fn proxy_serves(method: &str, url: String) -> bool {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg(url)
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout) != "404")
}

fn curl_status(args: &[&str], url: String) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The `sdk` task.
pub fn main() -> Result<(), String> {
    let root = root();
    if !run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--bin", "keyturn"]))
    {
        return Err("cannot build keyturn".into());
    }
    let keyturn = root.join("target/debug/keyturn");
    let venv = root.join("target/sdk-venv");
    let py = venv.join("bin/python");
    if !py.exists() && !run(Command::new("python3").args(["-m", "venv"]).arg(&venv)) {
        return Err("python3 -m venv failed".into());
    }
    if !run(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "-q",
        "google-genai",
        "openai",
        "litellm",
    ])) {
        return Err("pip install google-genai openai litellm failed".into());
    }
    let work = std::env::temp_dir().join(format!("keyturn-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = checks(&keyturn, &work);
    std::fs::remove_dir_all(&work).ok();
    result
}

fn checks(keyturn: &std::path::Path, work: &std::path::Path) -> Result<(), String> {
    std::fs::write(work.join("sim.toml"), SIM_CONFIG).map_err(|e| e.to_string())?;
    std::fs::write(work.join("keys.txt"), KEYS_FILE).map_err(|e| e.to_string())?;
    // Each server binds port 0 itself and prints its address: no port probed, dropped and
    // raced for.
    let mut sim = Command::new(keyturn);
    sim.args(["sim", "--port", "0", "--config"])
        .arg(work.join("sim.toml"));
    let (_sim, sim_url) = examples::spawn_announcing(sim, "GEMINI_BASE_URL=")?;

    println!("== google-genai files, caches and batches, straight against keyturn sim");
    python(
        "genai_resources_check.py",
        &[&sim_url, "made-up-sdk-key-1", &sim_url, "made-up-sdk-key-2"],
    )?;

    let (token, mut toml) = crate::bench::serve_token(keyturn, "sdk")?;
    // The proxy's limits are the simulator's: files, caches and batches pin requests to one
    // project, which the built-in free-tier limits (a few requests a minute) would run dry.
    toml.push_str(PROXY_LIMITS);
    std::fs::write(work.join("keyturn.toml"), toml).map_err(|e| e.to_string())?;
    let mut serve = Command::new(keyturn);
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KEYTURN_CONFIG", work.join("keyturn.toml"))
        .env("KEYTURN_STATE_DIR", work.join("state"))
        .env("KEYTURN_KEYS_FILE", work.join("keys.txt"))
        .env("GEMINI_BASE_URL", &sim_url)
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEYS");
    let (_proxy, listening) = examples::spawn_announcing(serve, "keyturn serve listening on ")?;
    let base = listening
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();

    println!("== through keyturn serve ({base})");
    python("sdk_check.py", &[&base, &token]).map_err(|_| "the google-genai checks failed")?;
    python("openai_check.py", &[&base, &token]).map_err(|_| "the openai SDK checks failed")?;
    python("litellm_check.py", &[&base, &token]).map_err(|_| "the LiteLLM checks failed")?;

    let key_header = format!("x-goog-api-key: {token}");
    let code = curl_status(
        &[
            "-H",
            &key_header,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#,
        ],
        format!("{base}/v1beta/models/gemini-2.5-flash:generateContent"),
    )?;
    if code != "200" {
        return Err(format!("curl got {code}"));
    }
    println!("curl generateContent through the proxy: 200");
    let bearer = format!("authorization: Bearer {token}");
    let code = curl_status(
        &[
            "-H",
            &bearer,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hello"}]}"#,
        ],
        format!("{base}/v1beta/openai/chat/completions"),
    )?;
    if code != "200" {
        return Err(format!("curl chat/completions got {code}"));
    }
    println!("curl chat/completions through the proxy: 200");

    let parts: Vec<&str> = [
        ("files", proxy_serves("POST", format!("{base}/upload/v1beta/files"))),
        ("caches", proxy_serves("GET", format!("{base}/v1beta/cachedContents"))),
        ("batches", proxy_serves("GET", format!("{base}/v1beta/batches"))),
    ]
    .into_iter()
    .filter_map(|(part, served)| {
        if !served {
            println!("SKIP google-genai {part} through keyturn serve: the proxy has no route for it (404)");
        }
        served.then_some(part)
    })
    .collect();
    if !parts.is_empty() {
        println!("== google-genai {} through keyturn serve", parts.join(", "));
        let root = root();
        if !run(Command::new(root.join("target/sdk-venv/bin/python"))
            .arg(root.join("tests/python/genai_resources_check.py"))
            .args([&base, &token, &sim_url])
            .env("SDK_PARTS", parts.join(",")))
        {
            return Err("genai_resources_check.py through the proxy failed".into());
        }
    }
    Ok(())
}
