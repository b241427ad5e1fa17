//! `RedisLedger`: one quota ledger shared by many processes on many machines.
//!
//! Every acquire is one atomic server-side script (`EVALSHA`, loaded once; one round trip) that
//! walks the candidate keys in the policy's order and admits on the first whose scope has room,
//! with the same rules as keyturn-core's in-memory ledger. Counters live in Redis hashes that
//! expire by themselves after their window, day and cooldowns; disabled keys, breakers, cooldowns
//! and learned limits are shared by every process on the namespace.
//!
//! Time: by default the scripts read Redis's own clock (`TIME`), so processes on machines with
//! skewed clocks agree. [`TimeSource::Clock`] passes the injected clock's time instead (tests).
//!
//! Redis unavailable: every call fails closed with [`AcquireError::Backend`] naming the server
//! (never its password); the connection manager reconnects by itself and calls succeed again
//! once Redis is back. Nothing is admitted while Redis cannot be asked. Redis refusing keyturn
//! (wrong or missing password, an ACL that denies its commands) is not an outage: [`connect`]
//! says so with [`ConnectError::Refused`], a configuration error, and later refusals say the
//! same rather than "retries when Redis is back".
//!
//! Several configurations may share a namespace (a team's workers, some holding subsets of the
//! keys): counters belong to keys and projects, so whoever holds a key or project shares its
//! state, and a reset ([`ResetTarget::All`]) touches only the keys and projects of the ledger
//! that runs it.
//!
//! Redis Cluster: every key of a namespace carries the namespace as its hash tag
//! (`kt:{<namespace>}:…`), so each script call touches one slot and names it in `KEYS[1]` (the
//! client routes by it). `KEYTURN_REDIS_URL=redis+cluster://host:port[,host:port…]` connects to
//! a cluster; a namespace lives on one master (and its replicas), namespaces spread over the
//! masters. Namespaces written before the hash tags (`kt:<namespace>:…`, single Redis only)
//! are renamed to the new layout, atomically, by the first process that connects (see
//! [`RedisLedger::connect`]).
//!
//! [`connect`]: RedisLedger::connect

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use keyturn_core::error::Exhaustion;
use keyturn_core::snapshot::{
    Disabled, HISTORY_DAYS, KeySnapshot, NoticeMark, ProjectSnapshot, ScopeSnapshot, UsageDay,
};
use keyturn_core::{
    AcquireError, BackendError, Breaker, BreakerState, Clock, DeadReason, Demand, Fingerprint,
    KeyId, KeyRing, Lease, LedgerConfig, LedgerError, LimitSource, ModelLimits, Outcome, Policy,
    PoolStatus, QuotaDay, QuotaLedger, ResetTarget, SCHEMA_VERSION, Snapshot, SnapshotError,
    StoreError, ThrottleKind, scope_status_from_snapshot,
};
use parking_lot::Mutex;
use redis::{AsyncCommands, Script, Value};

mod admission;
mod call;
mod conn;
mod errors;
mod grants;
mod inspection;
mod resources;
mod settles;
mod state;

use conn::{Conn, Target};
pub use errors::{ConnectError, RedisFailure, redact_url};
use errors::{backend, passwords_of, refusal, settle_backend};
pub use resources::RedisResources;

const COMMON: &str = include_str!("lua/common.lua");
const ACQUIRE: &str = include_str!("lua/acquire.lua");
const SETTLE: &str = include_str!("lua/settle.lua");
/// Claims a warning mark: KEYS[1] the mark; ARGV now, until, ttl. The stored value is `until`,
/// so a mark whose day is over (on a test clock, before Redis expires it) can be claimed again.
const CLAIM: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]))
if v ~= nil and v > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";
/// One step of a scan of the namespace's slot: KEYS[1] routes it; ARGV cursor, pattern.
/// Inside a script, so on a cluster it runs on the master that holds the namespace.
const SCAN: &str = "return redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)";
/// Renames a namespace written before the hash tags to the new layout, in one atomic call
/// (single Redis only). KEYS[1] the new layout's marker; ARGV old prefix, its glob pattern,
/// new prefix. A key the new layout already has is left where it is (counted as skipped).
/// Returns {moved, skipped}.
const MIGRATE: &str = r"
local moved, skipped = 0, 0
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local new = ARGV[3] .. string.sub(k, #ARGV[1] + 1)
    if redis.call('RENAMENX', k, new) == 1 then moved = moved + 1 else skipped = skipped + 1 end
  end
until cursor == '0'
redis.call('SET', KEYS[1], 1)
return { moved, skipped }
";

/// Where the scripts take "now" from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// Redis's `TIME`: one clock for every process (production).
    #[default]
    Redis,
    /// The ledger's injected clock (tests drive it with a `ManualClock`).
    Clock,
}

/// The shared quota ledger.
pub struct RedisLedger {
    keys: Arc<KeyRing>,
    cfg: LedgerConfig,
    clock: Arc<dyn Clock>,
    time: TimeSource,
    conn: Conn,
    server: String,
    prefix: String,
    /// A key in the namespace's slot: `KEYS[1]` of every script call (the cluster routes by it).
    anchor: String,
    scan_script: Script,
    /// The settle script, and the settles waiting to go together.
    settler: Arc<settles::Settler>,
    claim: Script,
    projects: Vec<String>,
    /// Per key, in ring order: fingerprint as text, project, weight.
    candidates: Arc<Vec<(String, String, u32)>>,
    /// This process's quota grants, and what gives back their unspent part.
    giver: Arc<grants::Giver>,
    /// Per model: each key's configured (rpm, tpm, rpd, tpd), -1 for unlimited.
    limits: Mutex<HashMap<String, Arc<Vec<[i64; 4]>>>>,
    models: Mutex<Vec<String>>,
    cursors: call::Cursors,
    /// Per model: the acquire calls in flight and the acquires waiting for the next.
    batches: admission::Queues,
    days: Mutex<Option<[i64; 4]>>,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl RedisLedger {
    /// Connects to `url` and uses `namespace` (several pipelines can share one Redis). Checks
    /// at once that Redis accepts keyturn (credentials, and an ACL that lets it run scripts on
    /// the namespace's keys): a refusal is [`ConnectError::Refused`], not an outage.
    pub async fn connect(
        url: &str,
        namespace: &str,
        keys: Arc<KeyRing>,
        cfg: LedgerConfig,
        clock: Arc<dyn Clock>,
        time: TimeSource,
    ) -> Result<Self, ConnectError> {
        let server = redact_url(url);
        let bad_url = |detail: String| ConnectError::BadUrl {
            server: server.clone(),
            detail: passwords_of(url)
                .into_iter()
                .fold(detail, |t, p| t.replace(p, "***")),
        };
        let target = Target::parse(url)
            .ok_or_else(|| bad_url("a redis+cluster:// URL names no node".into()))?;
        let fail = |e: redis::RedisError| match refusal(&e) {
            Some(why) => ConnectError::Refused {
                server: server.clone(),
                detail: why.to_owned(),
            },
            None if e.kind() == redis::ErrorKind::InvalidClientConfig => bad_url(e.to_string()),
            None => ConnectError::Unavailable(StoreError::Backend(backend(&server, &e))),
        };
        let mut conn = Conn::open(&target).await.map_err(fail)?;
        let prefix = format!("kt:{{{namespace}}}:");
        let anchor = format!("{prefix}k:access-check");
        // Without a password Redis still connects and refuses the first command (NOAUTH); an
        // ACL may allow PING and refuse scripts or these keys (NOPERM): ask what keyturn will.
        let _: i64 = Script::new("return redis.call('EXISTS', KEYS[1])")
            .key(&anchor)
            .invoke_async(&mut conn)
            .await
            .map_err(fail)?;
        if !conn.is_cluster() {
            Self::migrate_layout(&mut conn, namespace, &prefix)
                .await
                .map_err(fail)?;
        }
        let mut projects = Vec::new();
        for (_, e) in keys.iter() {
            if !projects.contains(&e.project) {
                projects.push(e.project.clone());
            }
        }
        let models = cfg
            .models
            .iter()
            .map(|m| keyturn_core::limits::normalize_model(m).to_owned())
            .collect();
        let candidates: Arc<Vec<_>> = Arc::new(
            keys.iter()
                .map(|(_, e)| (e.fingerprint().to_string(), e.project.clone(), e.weight))
                .collect(),
        );
        let acquire = Script::new(&format!("{COMMON}\n{ACQUIRE}"));
        let giver = Arc::new(grants::Giver {
            conn: conn.clone(),
            acquire,
            anchor: anchor.clone(),
            prefix: prefix.clone(),
            server: server.clone(),
            time,
            clock: clock.clone(),
            candidates: candidates.clone(),
            grants: Arc::default(),
            spent_total: Default::default(),
            instance: grants::random_instance(),
            last_id: Default::default(),
            answered: Mutex::default(),
            out: Default::default(),
            quiet: Default::default(),
            era: Default::default(),
            home: tokio::runtime::Handle::current(),
        });
        let settler = Arc::new(settles::Settler {
            conn: conn.clone(),
            script: Script::new(&format!("{COMMON}\n{SETTLE}")),
            anchor: anchor.clone(),
            server: server.clone(),
            queue: Mutex::default(),
            idle: Default::default(),
            calls: Default::default(),
            home: tokio::runtime::Handle::current(),
        });
        let ledger = Self {
            candidates,
            giver,
            limits: Mutex::new(HashMap::new()),
            keys,
            cfg,
            clock,
            time,
            conn,
            server,
            prefix,
            anchor,
            scan_script: Script::new(SCAN),
            settler,
            claim: Script::new(CLAIM),
            projects,
            models: Mutex::new(models),
            cursors: Arc::default(),
            batches: Arc::default(),
            days: Mutex::new(None),
        };
        ledger.adopt_tiers().await.map_err(|e| {
            ConnectError::Unavailable(StoreError::Backend(BackendError::caused_by(
                e.to_string(),
                e,
            )))
        })?;
        Ok(ledger)
    }

    /// Records each project's configured tier in the namespace (`tier:<project>`) and, for a
    /// project whose recorded tier differs, drops what the server taught under the old one:
    /// learned limits and switch-offs (`l:`), the day's exhaustion and cooldown (in `s:`).
    /// What was sent still counts.
    async fn adopt_tiers(&self) -> Result<(), LedgerError> {
        let err = |e: redis::RedisError| LedgerError::Backend(backend(&self.server, &e));
        let mut conn = self.conn.clone();
        let mut changed = Vec::new();
        for project in &self.projects {
            let tier = self.cfg.limits.tier(project);
            // GETSET rather than SET … GET: the latter needs Redis 6.2.
            let old: Option<String> = redis::cmd("GETSET")
                .arg(format!("{}tier:{project}", self.prefix))
                .arg(tier.name())
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            if old.is_some_and(|o| o != tier.name()) {
                tracing::info!(
                    project = %project,
                    tier = %tier,
                    "the project's tier changed: what the server said under the old one is dropped"
                );
                changed.push(project.as_str());
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let of_changed = |k: &str, kind: &str| {
            k[self.prefix.len() + kind.len()..]
                .rsplit_once('|')
                .is_some_and(|(_, p)| changed.contains(&p))
        };
        for k in self.scan(&mut conn, "l:").await? {
            if of_changed(&k, "l:") {
                let _: () = conn.del(&k).await.map_err(err)?;
            }
        }
        for k in self.scan(&mut conn, "s:").await? {
            if of_changed(&k, "s:") {
                let _: () = conn.hdel(&k, &["cd", "ex"]).await.map_err(err)?;
            }
        }
        Ok(())
    }

    /// Renames a namespace written before the hash tags (`kt:<namespace>:…`) to the layout of
    /// this version (`kt:{<namespace>}:…`), once: the first process of this version to connect
    /// moves every key in one atomic script and leaves a marker (`kt:{<namespace>}:layout`), so
    /// today's counts, switch-offs and history carry over. Processes of an older version still
    /// running on the namespace would go on counting under the old names: upgrade them together.
    async fn migrate_layout(
        conn: &mut Conn,
        namespace: &str,
        prefix: &str,
    ) -> Result<(), redis::RedisError> {
        let marker = format!("{prefix}layout");
        let done: bool = conn.exists(&marker).await?;
        if done {
            return Ok(());
        }
        let old = format!("kt:{namespace}:");
        let (moved, skipped): (u64, u64) = Script::new(MIGRATE)
            .key(&marker)
            .arg(&old)
            .arg(format!("{}*", glob_escape(&old)))
            .arg(prefix)
            .invoke_async(conn)
            .await?;
        if moved > 0 || skipped > 0 {
            tracing::info!(
                namespace = %namespace,
                moved,
                skipped,
                "moved the namespace's Redis keys to the hash-tagged layout (kt:{{namespace}}:…)"
            );
        }
        Ok(())
    }

    /// The Redis server, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn now_arg(&self, local_now: i64) -> String {
        match self.time {
            TimeSource::Redis => String::new(),
            TimeSource::Clock => local_now.to_string(),
        }
    }

    /// Four Pacific midnights around now (yesterday's start … tomorrow's end), cached per day.
    fn midnights(&self) -> [i64; 4] {
        let now = self.clock.now_ms();
        let mut cached = self.days.lock();
        if let Some(d) = *cached
            && d[1] <= now
            && now < d[2]
        {
            return d;
        }
        let d = grants::midnights_around(now);
        *cached = Some(d);
        d
    }

    fn model_slot(&self, model: &str) -> u32 {
        let mut models = self.models.lock();
        match models.iter().position(|m| m == model) {
            Some(i) => i as u32,
            None => {
                models.push(model.to_owned());
                (models.len() - 1) as u32
            }
        }
    }

    /// Each key's configured limits for a model, resolved once per model.
    fn limits_for(&self, model: &str) -> Arc<Vec<[i64; 4]>> {
        let mut cache = self.limits.lock();
        if let Some(l) = cache.get(model) {
            return l.clone();
        }
        let lim = |v: Option<u64>| v.map_or(-1i64, |x| x.min(i64::MAX as u64) as i64);
        let per_key: Vec<[i64; 4]> = self
            .candidates
            .iter()
            .map(|(_, project, _)| {
                let (l, _) = self.configured(project, model);
                [lim(l.rpm), lim(l.tpm), lim(l.rpd), lim(l.tpd)]
            })
            .collect();
        let per_key = Arc::new(per_key);
        cache.insert(model.to_owned(), per_key.clone());
        per_key
    }

    fn configured(&self, project: &str, model: &str) -> (ModelLimits, LimitSource) {
        self.cfg.limits.resolve(project, model)
    }

    async fn now(&self) -> Result<i64, LedgerError> {
        match self.time {
            TimeSource::Clock => Ok(self.clock.now_ms()),
            TimeSource::Redis => {
                let mut conn = self.conn.clone();
                let (s, us): (i64, i64) = redis::cmd("TIME")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
                Ok(s * 1000 + us / 1000)
            }
        }
    }

    fn known_models(&self) -> Vec<String> {
        self.models.lock().clone()
    }

    fn scope_key(&self, model: &str, project: &str) -> String {
        format!("{}s:{model}|{project}", self.prefix)
    }

    fn learned_key(&self, model: &str, project: &str) -> String {
        format!("{}l:{model}|{project}", self.prefix)
    }

    fn project_key(&self, project: &str) -> String {
        format!("{}p:{project}", self.prefix)
    }
}

/// `s` with Redis's glob characters escaped, for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn reason_code(r: DeadReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "permission-denied".into())
}

#[async_trait]
impl QuotaLedger for RedisLedger {
    fn keys(&self) -> Arc<KeyRing> {
        self.keys.clone()
    }

    async fn acquire(&self, model: &str, demand: Demand) -> Result<Lease, AcquireError> {
        let start = self.clock.now_ms();
        let deadline = start.saturating_add(self.cfg.max_wait.as_millis() as i64);
        loop {
            match self.try_acquire(model, demand).await {
                Ok(lease) => return Ok(lease),
                Err((e, Some(wake))) => {
                    // A breaker's time is only an upper bound (a probe may settle any moment):
                    // keep looking until the bound. Anything else returns at a known time.
                    let circuit = matches!(
                        e,
                        AcquireError::Exhausted {
                            reason: Exhaustion::CircuitOpen | Exhaustion::Reprobing,
                            ..
                        }
                    );
                    let now = self.clock.now_ms();
                    if wake > deadline && !(circuit && now < deadline) {
                        return Err(e);
                    }
                    let wake = wake.min(deadline);
                    // Other processes may free capacity sooner (a reset): look again at least
                    // every few seconds while waiting.
                    // No notifications cross processes: poll, briskly while a probe decides.
                    let poll = now.saturating_add(if circuit { 200 } else { 5_000 });
                    self.clock.sleep_until(wake.min(poll)).await;
                }
                Err((e, None)) => return Err(e),
            }
        }
    }

    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), LedgerError> {
        let model = self.models.lock().get(lease.model_slot() as usize).cloned();
        // A success that took more tokens than reserved leaves less room than the model's
        // grants were decided with; any other outcome may change what may be admitted (a
        // breaker, a cooldown, a disabled key or project): grants go back, and the next acquire
        // decides afresh.
        let changes = match outcome {
            Outcome::Success { input_tokens } => {
                input_tokens.is_some_and(|t| t > lease.reserved_tokens())
            }
            Outcome::CallerFault => false,
            _ => true,
        };
        let probe = lease.is_probe();
        let success = matches!(outcome, Outcome::Success { .. });
        self.settle_lease(lease, outcome).await?;
        match model {
            Some(m) if changes && success => self.give_back_model(&m).await,
            _ if changes || probe => {
                // Also the grants of the calls out, decided before this settle counted.
                self.giver.retire();
                self.give_back_all().await
            }
            _ => Ok(()),
        }
    }

    async fn reset(&self, target: ResetTarget) -> Result<(), LedgerError> {
        self.give_back_all().await?;
        let done = self.reset_target(target).await;
        // The grants of calls that were out, decided before it, are not spent after it.
        self.giver.retire();
        done
    }

    async fn disable_by_admin(&self, key: KeyId, disabled: bool) -> Result<(), LedgerError> {
        self.give_back_all().await?;
        let done = self.set_disabled_by_admin(key, disabled).await;
        self.giver.retire();
        done
    }

    async fn status(&self) -> Result<PoolStatus, LedgerError> {
        // Status is the snapshot read by the rules every ledger shares (without the history,
        // which status does not show: the monitor reads status every second). This process's
        // unspent grants go back first, so what shows as used is what it admitted; another
        // process's show as used until they go back, at the end of their second at the latest.
        self.give_back_all().await?;
        let snap = self.read_snapshot(false).await?;
        Ok(PoolStatus::from_snapshot(
            &snap,
            &self.cfg.limits,
            &self.keys,
        ))
    }

    async fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        self.give_back_all().await?;
        self.read_snapshot(true).await
    }

    async fn claim_notice(&self, id: &str, until_ms: i64) -> Result<bool, LedgerError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let claimed: i64 = self
            .claim
            .key(format!("{}n:{id}", self.prefix))
            .arg(now)
            .arg(until_ms)
            .arg((until_ms - now).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        Ok(claimed == 1)
    }

    async fn restore(&self, snapshot: Snapshot) -> Result<(), LedgerError> {
        self.give_back_all().await?;
        let done = self.restore_snapshot(snapshot).await;
        self.giver.retire();
        done
    }
}
