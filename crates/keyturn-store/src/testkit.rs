//! A Redis for tests: `KEYTURN_TEST_REDIS_URL` if set; else a private `redis-server` on a free
//! loopback port; else the test is skipped with a printed reason — except under CI (`CI=true`),
//! where a missing Redis fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Redis server for one test (shared or private).
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    port: u16,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn ping(port: u16) -> bool {
    ping_reply(port).is_some_and(|r| &r == b"+PONG\r\n")
}

/// Whether a Redis answers on `port` at all (one that requires a password answers `-NOAUTH`).
fn answers(port: u16) -> bool {
    ping_reply(port).is_some_and(|r| r[0] == b'+' || r[0] == b'-')
}

fn ping_reply(port: u16) -> Option<[u8; 7]> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

impl TestRedis {
    /// A Redis for tests: `KEYTURN_TEST_REDIS_URL`; else the machine's Redis on 6379 if it
    /// answers; else one private server for this test process. `None` (skip, with the reason
    /// printed) when there is none, except under CI, where that panics.
    pub fn get() -> Option<Self> {
        if let Ok(url) = std::env::var("KEYTURN_TEST_REDIS_URL") {
            return Some(Self::external(url));
        }
        if ping(6379) {
            return Some(Self::external("redis://127.0.0.1:6379".into()));
        }
        static SHARED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let url = SHARED.get_or_init(|| {
            // Lives as long as this process: its wrapper exits with our stdin.
            let mut r = Self::private()?;
            r.detach();
            Some(r.url.clone())
        });
        url.clone().map(Self::external)
    }

    /// Whether a Redis is available, printing why not (for `skip_unless`).
    pub fn available() -> bool {
        Self::get().is_some()
    }

    fn external(url: String) -> Self {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(6379);
        Self {
            url,
            port,
            child: None,
            dir: None,
            args: Vec::new(),
        }
    }

    /// Always a private `redis-server` (for tests that stop and restart it), or `None`.
    pub fn private() -> Option<Self> {
        Self::private_with(&[])
    }

    /// A private `redis-server` started with extra arguments (`--requirepass …`, `--user …`), or
    /// `None` as [`TestRedis::private`]. Its URL carries no credentials.
    pub fn private_with(args: &[&str]) -> Option<Self> {
        let port = free_port();
        let mut me = Self {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
            dir: Some(tempfile::tempdir().expect("temp dir")),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        match me.start() {
            Ok(()) => Some(me),
            Err(why) if in_ci() => panic!("CI needs Redis for this test: {why}"),
            Err(why) => {
                eprintln!(
                    "SKIPPED: no Redis for this test ({why}); set KEYTURN_TEST_REDIS_URL or install redis-server"
                );
                None
            }
        }
    }

    /// (Re)starts the private server on its port. The server runs under a shell that kills it
    /// when our end of its stdin closes, so it never outlives the test process.
    pub fn start(&mut self) -> Result<(), String> {
        let dir = self
            .dir
            .as_ref()
            .ok_or("not a private server")?
            .path()
            .to_owned();
        let extra: String = self
            .args
            .iter()
            .map(|a| format!(" '{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "redis-server --port {} --bind 127.0.0.1 --save '' --appendonly no --dir '{}'{extra} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -9 $pid",
            self.port,
            dir.display()
        );
        which_redis()?;
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        for _ in 0..150 {
            if answers(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server did not answer on port {}", self.port))
    }

    /// Stops the private server (SIGKILL, as a crash would) and waits until it no longer answers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            c.wait().ok();
            for _ in 0..150 {
                if !answers(self.port) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn detach(&mut self) {
        // Keep the wrapper (and so the server) alive for the rest of the process.
        if let Some(c) = self.child.take() {
            std::mem::forget(c);
        }
        if let Some(d) = self.dir.take() {
            std::mem::forget(d);
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn which_redis() -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err("redis-server is not installed".into())
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A namespace no other test run uses.
pub fn unique_namespace(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // A random part (std's per-process hash keys), not the time: no clock is read here.
    let nonce = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            & 0xffff_ffff
    };
    format!(
        "test-{name}-{}-{nonce}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
