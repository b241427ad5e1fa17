//! A Redis for tests: `KEYTURN_TEST_REDIS_URL` if set; else the machine's Redis on 6379; else a
//! private `redis-server` on a free loopback port; else the test fails, saying why.
//!
//! Tests that need Redis are marked `#[ignore = "needs Redis"]`, so a plain `cargo test` lists
//! them as ignored (a skip shows in the summary) and `cargo test -- --include-ignored` (the
//! README's and CI's command) runs them; none of them returns early and reports `ok`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// A port that was free a moment ago. `redis-server` must bind it itself (its `--port 0` means
/// "no TCP"), so another process may take it first: [`TestRedis::start`] sees that in the
/// server's log and tries another port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Ports tried before a private server gives up on finding one nobody else takes.
const PORT_ATTEMPTS: usize = 8;

fn ping(port: u16) -> bool {
    ping_reply(port).is_some_and(|r| &r == b"+PONG\r\n")
}

/// Whether a Redis answers on `port` at all (one that requires a password answers `-NOAUTH`).
fn answers(port: u16) -> bool {
    ping_reply(port).is_some_and(|r| r[0] == b'+' || r[0] == b'-')
}

/// How a start of `redis-server` ended.
enum Started {
    Ready,
    PortTaken,
    Failed(String),
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
    /// answers; else one private server for this test process. Panics, saying why, when there is
    /// none: a test that needs Redis fails rather than passing without it.
    pub fn get() -> Self {
        Self::try_get().unwrap_or_else(|why| {
            panic!(
                "this test needs Redis: {why}; set KEYTURN_TEST_REDIS_URL or install redis-server"
            )
        })
    }

    /// [`TestRedis::get`], or why there is no Redis (for benchmarks and scenarios, which report
    /// a skip themselves).
    pub fn try_get() -> Result<Self, String> {
        if let Ok(url) = std::env::var("KEYTURN_TEST_REDIS_URL") {
            return Ok(Self::external(url));
        }
        if ping(6379) {
            return Ok(Self::external("redis://127.0.0.1:6379".into()));
        }
        static SHARED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
        let url = SHARED.get_or_init(|| {
            // Lives as long as this process: its wrapper exits with our stdin.
            let mut r = Self::try_private_with(&[])?;
            r.detach();
            Ok(r.url.clone())
        });
        url.clone().map(Self::external)
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

    /// Always a private `redis-server` (for tests that stop and restart it); panics, saying
    /// why, when none can be started.
    pub fn private() -> Self {
        Self::private_with(&[])
    }

    /// A private `redis-server` started with extra arguments (`--requirepass …`, `--user …`);
    /// panics as [`TestRedis::private`]. Its URL carries no credentials.
    pub fn private_with(args: &[&str]) -> Self {
        Self::try_private_with(args).unwrap_or_else(|why| {
            panic!("this test needs redis-server: {why}; install redis-server")
        })
    }

    fn try_private_with(args: &[&str]) -> Result<Self, String> {
        let mut me = Self {
            url: String::new(),
            port: 0,
            child: None,
            dir: Some(tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        for _ in 0..PORT_ATTEMPTS {
            me.port = free_port();
            me.url = format!("redis://127.0.0.1:{}", me.port);
            match me.launch()? {
                Started::Ready => return Ok(me),
                Started::PortTaken => me.reap(),
                Started::Failed(why) => return Err(why),
            }
        }
        Err(format!(
            "another process took each of {PORT_ATTEMPTS} free ports before redis-server could bind it"
        ))
    }

    /// Restarts the private server on its port (after [`TestRedis::stop`]).
    pub fn start(&mut self) -> Result<(), String> {
        match self.launch()? {
            Started::Ready => Ok(()),
            Started::PortTaken => Err(format!(
                "port {} was taken by another process while redis-server was down",
                self.port
            )),
            Started::Failed(why) => Err(why),
        }
    }

    /// Starts the server on `self.port` and waits for its log to say it listens, or that the
    /// port is taken. The log, not a PING, decides: a PING could be answered by another test's
    /// server that took the port. The server runs under a shell that kills it when our end of
    /// its stdin closes, so it never outlives the test process.
    fn launch(&mut self) -> Result<Started, String> {
        let dir = self
            .dir
            .as_ref()
            .ok_or("not a private server")?
            .path()
            .to_owned();
        which_redis()?;
        let log = dir.join(format!("redis-{}.log", self.port));
        std::fs::remove_file(&log).ok();
        let extra: String = self
            .args
            .iter()
            .map(|a| format!(" '{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "redis-server --port {} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' --logfile '{}'{extra} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -9 $pid",
            self.port,
            dir.display(),
            log.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        for _ in 0..250 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Address already in use") {
                return Ok(Started::PortTaken);
            }
            if text.contains("Ready to accept connections") && answers(self.port) {
                return Ok(Started::Ready);
            }
            if text.contains("aborting") || text.contains("FATAL") {
                return Ok(Started::Failed(format!(
                    "redis-server did not start: {}",
                    text.lines().last().unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Started::Failed(format!(
            "redis-server did not answer on port {}",
            self.port
        )))
    }

    /// Ends the wrapper (and its server, if it still runs).
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            c.wait().ok();
        }
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

/// A namespace no other test run uses: the process id, a number drawn once per process (pids
/// are reused; no clock is read) and a counter.
pub fn unique_namespace(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    format!(
        "test-{name}-{}-{run:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race a probed port leaves open: another test's Redis takes the port first. A PING
    /// would be answered (by the wrong server); the log tells, and another port is tried.
    #[test]
    #[ignore = "needs Redis"]
    fn a_port_another_redis_took_is_seen_as_taken_not_as_ours() {
        let other = TestRedis::private();
        let mut me = TestRedis {
            url: other.url().to_owned(),
            port: other.port,
            child: None,
            dir: Some(tempfile::tempdir().unwrap()),
            args: Vec::new(),
        };
        assert!(matches!(me.launch(), Ok(Started::PortTaken)));
        me.reap();
        let mine = TestRedis::private();
        assert_ne!(mine.port, other.port);
        assert!(ping(mine.port) && ping(other.port));
    }
}
