//! `keyturn serve`: the rotating proxy, and `serve token new`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keyturn_services::{Env, create_pool};

use super::args::{ServeArgs, ServeCommand, TokenCommand};
use super::{Global, fail, interrupts, load, start_metrics};
use crate::report::Outcome;
use crate::term::safe;

pub(super) async fn cmd_serve(g: &Global, env: &Env, cwd: &Path, a: ServeArgs) -> ExitCode {
    if let Some(ServeCommand::Token(TokenCommand::New { label, admin })) = &a.command {
        let (token, digest) = keyturn_proxy::new_token();
        let (what, table) = if *admin {
            (
                "admin token (console and admin API)",
                "[[serve.admin_tokens]]",
            )
        } else {
            ("token", "[[serve.tokens]]")
        };
        println!(
            "{what} for {} (shown once; {}):",
            safe(label),
            if *admin {
                "sign in to /console with it, or send it as Authorization: Bearer to /admin/"
            } else {
                "give it to the client as its API key"
            }
        );
        println!("  {token}");
        println!();
        println!("add to keyturn.toml:");
        println!("{table}");
        // A JSON string is a valid TOML basic string, with every control character escaped.
        println!(
            "label = {}",
            serde_json::to_string(label).unwrap_or_default()
        );
        println!("sha256 = \"{digest}\"");
        return ExitCode::SUCCESS;
    }
    let mut cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    // The proxy's own bound on waiting for quota: a client is told when to come back (429 with
    // RetryInfo) rather than held past its SDK's timeout.
    cfg.rotation.max_wait = cfg.rotation.max_wait.min(cfg.serve.max_queue_wait);
    let listen = a.listen.clone().unwrap_or_else(|| cfg.serve.listen.clone());
    let Ok(listen) = listen.parse::<std::net::SocketAddr>() else {
        return fail(
            Outcome::Usage,
            format!("--listen '{listen}' is not an address like 127.0.0.1:8080"),
        );
    };
    let (tokens, admin_tokens) = match digests(&cfg) {
        Ok(t) => t,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let pcfg = keyturn_proxy::ProxyConfig {
        listen,
        tokens,
        admin_tokens,
        max_body_bytes: cfg.serve.max_body_bytes,
        max_in_flight: cfg.serve.max_in_flight,
        max_connections: cfg.serve.max_connections,
        header_timeout: cfg.serve.header_timeout,
        body_timeout: cfg.serve.body_timeout,
        max_upload_bytes: cfg.serve.max_upload_bytes,
        share_resources: cfg.serve.share_resources,
    };
    if let Err(e) = pcfg.validate() {
        return fail(Outcome::Usage, e);
    }
    if let Err(e) = start_metrics(&cfg) {
        return fail(Outcome::Failed, e);
    }
    let mut pool = match create_pool(&cfg, env, cwd).await {
        Ok(p) => p,
        Err(e) => return fail(e.kind(), e),
    };
    let callers = (
        pool.caller_for_version(&cfg, "v1beta"),
        pool.caller_for_version(&cfg, "v1"),
    );
    let (Ok(v1beta), Ok(v1)) = callers else {
        return fail(Outcome::Failed, "cannot set up the HTTP client");
    };
    // Re-checks go through each key's own egress route, as its requests do.
    let recheck = match pool.check_transport(&cfg) {
        Ok(t) => t,
        Err(e) => return fail(Outcome::Failed, e),
    };
    // Files, caches and batches: who owns each, kept on the state's backend.
    let upstream = match (
        keyturn_services::transport(&cfg, "v1beta"),
        keyturn_services::transport(&cfg, "v1"),
    ) {
        (Ok(v1beta), Ok(v1)) => keyturn_proxy::ResourceUpstream { v1beta, v1 },
        (Err(e), _) | (_, Err(e)) => return fail(Outcome::Failed, e),
    };
    let resources = match pool.state.resources(pool.clock.clone()) {
        Ok(r) => r,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let state = Arc::new(
        keyturn_proxy::ProxyState::new(v1beta, v1, pool.ledger.clone(), pool.clock.clone(), &pcfg)
            .with_recheck(recheck)
            .with_route_board(pool.route_board())
            .with_resources(resources, upstream),
    );
    // The monitor's warnings (quota thresholds, keys disabled or back) also go to the console.
    let events = state.events();
    let clock = pool.clock.clone();
    let sink: keyturn_services::monitor::WarningSink = Arc::new(move |w| {
        events.push(
            clock.now_ms(),
            keyturn_proxy::NewEvent {
                kind: "warning",
                severity: w.severity,
                key: w.key.clone(),
                project: w.project.clone(),
                model: w.model.clone(),
                message: w.message.clone(),
            },
        );
    });
    if let Err(e) = pool.watch_with(&cfg, Some(sink)) {
        return fail(Outcome::Failed, e);
    }
    let proxy = match keyturn_proxy::Proxy::start(state, &pcfg).await {
        Ok(p) => p,
        Err(e) => return fail(Outcome::Failed, e),
    };
    println!(
        "keyturn serve listening on {} ({} keys, state: {}, {} client token(s))",
        proxy.base_url(),
        pool.keys.len(),
        safe(pool.state.describe()),
        pcfg.tokens.len()
    );
    if pcfg.console_enabled() {
        println!(
            "console on {}/console ({})",
            proxy.base_url(),
            if pcfg.admin_tokens.is_empty() {
                "this machine only: no admin token".to_owned()
            } else {
                format!("{} admin token(s)", pcfg.admin_tokens.len())
            }
        );
    } else {
        eprintln!(
            "keyturn serve: the console and admin API are off: listening beyond loopback without an admin token; add [[serve.admin_tokens]] (keyturn serve token new --admin --label NAME)"
        );
    }
    let mut stop = interrupts();
    let mut reloads = Reloads {
        g,
        env,
        cwd,
        pcfg: &pcfg,
        files: Watched::of(keyturn_services::config_files(&cfg, env, cwd)),
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(WATCH_FILES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        let trigger = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "signal",
            _ = tick.tick() => {
                if !reloads.files.changed() {
                    continue;
                }
                reloads.files.settle(&stop, SETTLE_FOR).await;
                if *stop.borrow() {
                    break;
                }
                "file"
            }
        };
        reloads.run(trigger, &mut pool, proxy.state()).await;
    }
    eprintln!("keyturn serve: draining requests in flight…");
    let mut proxy = proxy;
    proxy.drain(Duration::from_secs(10)).await;
    let saved = pool.state.shutdown().await;
    drop(proxy);
    match saved {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            Outcome::Failed,
            format!("could not save the quota state: {e}"),
        ),
    }
}

/// How often `keyturn serve` looks at its configuration files for a change.
const WATCH_FILES_EVERY: Duration = Duration::from_secs(1);

/// How long a changed file must hold still before it is read.
const SETTLE_FOR: Duration = Duration::from_millis(300);

/// Most rounds of waiting for a changed file to hold still: a file that never does (rewritten
/// without end) is read after them anyway, and the reload decides.
const MAX_SETTLE_ROUNDS: u32 = 20;

/// The client and admin token digests of a configuration.
pub(super) fn digests(
    cfg: &keyturn_services::Config,
) -> Result<(keyturn_proxy::Digests, keyturn_proxy::Digests), keyturn_proxy::ProxyError> {
    let parse = |list: &[keyturn_services::config::ServeToken]| {
        list.iter()
            .map(|t| keyturn_proxy::parse_digest(&t.label, &t.sha256).map(|d| (t.label.clone(), d)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((parse(&cfg.serve.tokens)?, parse(&cfg.serve.admin_tokens)?))
}

/// The files the configuration comes from, with what they held when last read: modification
/// time, length and a hash of the content (a copy over a file keeps its time on some systems).
struct Watched {
    files: Vec<PathBuf>,
    seen: Vec<Option<(Option<std::time::SystemTime>, u64, u64)>>,
}

impl Watched {
    fn of(files: Vec<PathBuf>) -> Self {
        let seen = files.iter().map(|f| Self::look(f)).collect();
        Self { files, seen }
    }

    /// What a file holds now. Only a regular file within the size a configuration file may
    /// have is read, and at most that much of it: a keys file swapped for a symlink to
    /// `/dev/zero`, a FIFO or a huge file is looked at by its metadata alone (the reload then
    /// refuses it), never read without end or waited on.
    fn look(f: &Path) -> Option<(Option<std::time::SystemTime>, u64, u64)> {
        use std::hash::{Hash, Hasher};
        use std::io::Read;
        let most = keyturn_services::discovery::MAX_CONFIG_FILE_BYTES;
        let meta = std::fs::metadata(f).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if meta.is_file() && meta.len() <= most {
            let mut bytes = Vec::new();
            std::fs::File::open(f)
                .ok()?
                .take(most + 1)
                .read_to_end(&mut bytes)
                .ok()?;
            bytes.hash(&mut h);
        }
        Some((meta.modified().ok(), meta.len(), h.finish()))
    }

    /// Waits until the files hold still for `wait` ([`SETTLE_FOR`]: an editor writes a file in
    /// several steps), for at most [`MAX_SETTLE_ROUNDS`] rounds, and not once `stop` is set. The
    /// rounds waited.
    async fn settle(&mut self, stop: &tokio::sync::watch::Receiver<bool>, wait: Duration) -> u32 {
        let mut rounds = 0;
        while rounds < MAX_SETTLE_ROUNDS && !*stop.borrow() {
            tokio::time::sleep(wait).await;
            rounds += 1;
            if !self.changed() {
                break;
            }
        }
        rounds
    }

    /// Whether a file changed since the last look (and remembers this look).
    fn changed(&mut self) -> bool {
        let now: Vec<_> = self.files.iter().map(|f| Self::look(f)).collect();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

/// Reloads `keyturn serve`'s configuration: keys, projects, limits, client and admin tokens.
/// What does not parse or fails the checks is refused with the error logged (errors never show
/// a key) and the old configuration stays. The listen address, the state backend and the
/// server's own bounds need a restart.
struct Reloads<'a> {
    g: &'a Global,
    env: &'a Env,
    cwd: &'a Path,
    pcfg: &'a keyturn_proxy::ProxyConfig,
    files: Watched,
}

impl Reloads<'_> {
    async fn run(
        &mut self,
        trigger: &'static str,
        pool: &mut keyturn_services::Pool,
        state: &keyturn_proxy::ProxyState,
    ) {
        let at_ms = pool.clock.now_ms();
        match self.apply(pool, state).await {
            Ok((change, tokens, admin_tokens, files)) => {
                let keys = pool.keys.active().count();
                tracing::info!(
                    trigger,
                    keys,
                    added = ?change.added,
                    removed = ?change.removed,
                    changed = ?change.changed,
                    "configuration reloaded"
                );
                eprintln!(
                    "keyturn serve: configuration reloaded ({trigger}): {keys} keys{}{}{}",
                    list(", added ", &change.added),
                    list(", removed ", &change.removed),
                    list(", changed ", &change.changed),
                );
                // Files named by the new configuration (a new keys file) are watched from now on.
                self.files = Watched::of(files);
                state.record_reload(keyturn_proxy::LastReload {
                    at_ms,
                    trigger,
                    ok: true,
                    error: None,
                    keys,
                    change,
                    tokens,
                    admin_tokens,
                });
            }
            Err(error) => {
                tracing::error!(trigger, %error, "configuration reload refused; the previous configuration stays");
                eprintln!(
                    "keyturn serve: reload refused, the previous configuration stays: {}",
                    safe(&error)
                );
                let last = state.last_reload();
                state.record_reload(keyturn_proxy::LastReload {
                    at_ms,
                    trigger,
                    ok: false,
                    error: Some(error),
                    keys: pool.keys.active().count(),
                    change: keyturn_core::RingChange::default(),
                    tokens: last.as_ref().map_or(self.pcfg.tokens.len(), |l| l.tokens),
                    admin_tokens: last.map_or(self.pcfg.admin_tokens.len(), |l| l.admin_tokens),
                });
            }
        }
    }

    /// Reads and checks the configuration, then applies it; `Err` is the reason, for the log
    /// and the console.
    async fn apply(
        &self,
        pool: &mut keyturn_services::Pool,
        state: &keyturn_proxy::ProxyState,
    ) -> Result<(keyturn_core::RingChange, usize, usize, Vec<PathBuf>), String> {
        let mut cfg = load(self.g, self.env, self.cwd, false).map_err(|e| e.to_string())?;
        cfg.rotation.max_wait = cfg.rotation.max_wait.min(cfg.serve.max_queue_wait);
        let (tokens, admin_tokens) = digests(&cfg).map_err(|e| e.to_string())?;
        let next = keyturn_proxy::ProxyConfig {
            tokens: tokens.clone(),
            admin_tokens: admin_tokens.clone(),
            ..self.pcfg.clone()
        };
        next.validate().map_err(|e| e.to_string())?;
        let change = pool
            .reload(&cfg, self.env, self.cwd)
            .await
            .map_err(|e| e.to_string())?;
        let (Ok(v1beta), Ok(v1)) = (
            pool.caller_for_version(&cfg, "v1beta"),
            pool.caller_for_version(&cfg, "v1"),
        ) else {
            return Err("cannot set up the HTTP client".to_owned());
        };
        // Re-checks go through each key's route as configured now.
        let recheck = pool.check_transport(&cfg).map_err(|e| e.to_string())?;
        state.set_recheck(recheck);
        let counts = (tokens.len(), admin_tokens.len());
        state.reload(keyturn_proxy::Reload {
            v1beta,
            v1,
            ledger: pool.ledger.clone(),
            tokens,
            admin_tokens,
            share_resources: cfg.serve.share_resources,
        });
        let files = keyturn_services::config_files(&cfg, self.env, self.cwd);
        Ok((change, counts.0, counts.1, files))
    }
}

fn list(head: &str, labels: &[String]) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{head}{}", safe(&labels.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_swapped_for_a_device_a_fifo_or_a_huge_file_is_never_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("keys-zero.txt");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("keys-fifo.txt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let huge = dir.path().join("keys-huge.txt");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(keyturn_services::discovery::MAX_CONFIG_FILE_BYTES * 64)
            .unwrap();
        // Each returns (no endless read of /dev/zero, no wait for a FIFO's writer).
        for p in [&zero, &fifo, &huge] {
            assert!(Watched::look(p).is_some(), "{}", p.display());
        }
        let mut w = Watched::of(vec![zero, fifo, huge]);
        assert!(!w.changed());
    }

    #[tokio::test]
    async fn a_file_that_never_holds_still_is_waited_on_a_bounded_time_and_stop_ends_the_wait() {
        // A regular file whose content differs at every read.
        let restless = PathBuf::from("/proc/sys/kernel/random/uuid");
        let mut w = Watched::of(vec![restless]);
        assert!(w.changed(), "the file is expected to change at every read");
        let (tx, rx) = tokio::sync::watch::channel(false);
        assert_eq!(w.settle(&rx, Duration::ZERO).await, MAX_SETTLE_ROUNDS);
        tx.send(true).unwrap();
        assert_eq!(w.settle(&rx, Duration::ZERO).await, 0);
    }
}
