//! A Redis for tests: `KEYTURN_TEST_REDIS_URL` if set; else the machine's Redis on 6379; else a
//! private `redis-server` on a free loopback port; else the test fails, saying why.
//!
//! Tests that need Redis are marked `#[ignore = "needs Redis"]`, so a plain `cargo test` lists
//! them as ignored (a skip shows in the summary) and `cargo test -- --include-ignored` (the
//! README's and CI's command) runs them; none of them returns early and reports `ok`.
//!
//! [`RedisAdmin`] pauses such a server, waits until a call is held there, drops the other
//! clients and resumes it, for tests of what a ledger does when Redis stalls or a call is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod admin;
pub use admin::RedisAdmin;

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

/// A Redis Cluster for tests: three masters and a replica of each, `redis-server
/// --cluster-enabled yes` in temp dirs, joined by `redis-cli --cluster create`. Its nodes stop
/// with the test process.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<TestRedis>,
}

fn redis_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "redis-cli {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TestCluster {
    /// Starts a cluster of three masters and three replicas (a node is declared failed after
    /// `node_timeout_ms`), or says why it cannot.
    pub fn start(node_timeout_ms: u64) -> Result<Self, String> {
        which_redis()?;
        let timeout = node_timeout_ms.to_string();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port().to_string();
            nodes.push(Self::node(&bus, &timeout)?);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(&args)?;
        let me = Self { nodes };
        me.wait_until_ok()?;
        Ok(me)
    }

    fn node(bus: &str, timeout: &str) -> Result<TestRedis, String> {
        TestRedis::try_private_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            bus,
            "--cluster-node-timeout",
            timeout,
        ])
    }

    /// Waits until every running node says the cluster is ok and sees every slot served.
    pub fn wait_until_ok(&self) -> Result<(), String> {
        for _ in 0..1500 {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                redis_cli(&["-p", &n.port.to_string(), "cluster", "info"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the test cluster did not become ok".into())
    }

    /// One cluster for the whole test process (left running until it exits), or why none.
    pub fn shared() -> Result<String, String> {
        static SHARED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let mut c = Self::start(5000)?;
                let url = c.url();
                for n in &mut c.nodes {
                    n.detach();
                }
                Ok(url)
            })
            .clone()
    }

    /// A cluster for a test, or `None` with the reason printed when redis-server is missing
    /// outside CI; under `CI=true` a cluster that cannot start fails the test.
    #[allow(clippy::print_stderr)] // the skip's reason, next to the test's name in the output
    pub fn or_skip(node_timeout_ms: u64) -> Option<Self> {
        match Self::start(node_timeout_ms) {
            Ok(c) => Some(c),
            Err(why) if std::env::var("CI").is_err() && which_redis().is_err() => {
                eprintln!("SKIPPED: this test needs a Redis Cluster: {why}");
                None
            }
            Err(why) => panic!("this test needs a Redis Cluster: {why}"),
        }
    }

    /// `redis+cluster://` with every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The port of the master serving `key`'s slot and of its replica.
    pub fn master_and_replica_of(&self, key: &str) -> Result<(u16, u16), String> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .ok_or("no node runs")?;
        let p = live.port.to_string();
        let slot: u16 = redis_cli(&["-p", &p, "cluster", "keyslot", key])?
            .trim()
            .parse()
            .map_err(|e| format!("keyslot: {e}"))?;
        let nodes = redis_cli(&["-p", &p, "cluster", "nodes"])?;
        // <id> <ip:port@bus> <flags> <master-id|-> ... <slot ranges>
        let rows: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let port_of = |r: &Vec<&str>| -> Option<u16> {
            r.get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        let master = rows
            .iter()
            .find(|r| {
                r.get(2).is_some_and(|f| f.contains("master") && !f.contains("fail"))
                    && r.iter().skip(8).any(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                    })
            })
            .ok_or_else(|| format!("no master serves slot {slot}"))?;
        let replica = rows
            .iter()
            .find(|r| r.get(3) == master.first() && r.get(2).is_some_and(|f| !f.contains("fail")))
            .ok_or("the master has no live replica")?;
        Ok((
            port_of(master).ok_or("bad node row")?,
            port_of(replica).ok_or("bad node row")?,
        ))
    }

    /// Kills the node on `port` (SIGKILL, as a crash would).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.stop();
        }
    }

    /// Waits until the replica on `port` has every write its master acknowledged so far.
    pub fn wait_replicated(&self, master: u16, replica: u16) -> Result<(), String> {
        let offset = |port: u16, field: &str| -> Option<i64> {
            redis_cli(&["-p", &port.to_string(), "info", "replication"])
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        for _ in 0..1500 {
            if let (Some(m), Some(r)) = (
                offset(master, "master_repl_offset:"),
                offset(replica, "slave_repl_offset:"),
            ) && r >= m
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("the replica did not catch up".into())
    }

    /// Whether the node on `port` is now a master.
    pub fn is_master(&self, port: u16) -> bool {
        redis_cli(&["-p", &port.to_string(), "role"]).is_ok_and(|r| r.starts_with("master"))
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

/// Runs this test binary again as a child process with only the test `name` and `env` set, its
/// stdout piped: a multi-process test's body is an `#[ignore]`d test that does nothing without
/// its environment and prints what it did as `NAME=<number>` (read with [`reported`]).
pub fn child_process(name: &str, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary runs as a child")
}

/// Waits for a child from [`child_process`] and returns what it printed; panics if it failed.
pub fn child_output(child: Child) -> String {
    let out = child.wait_with_output().expect("the child's output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the child failed: {text}");
    text
}

/// The number a child printed as `NAME=<n>` (`name` is `"NAME="`); panics, showing what it
/// printed, if there is none.
pub fn reported(text: &str, name: &str) -> u64 {
    text.split(name)
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the child reported no {name}: {text}"))
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
