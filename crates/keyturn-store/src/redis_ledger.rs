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
//! The scripts address keys they compute from the namespace, so a Redis Cluster is not
//! supported; a single Redis (with replicas) is.
//!
//! [`connect`]: RedisLedger::connect

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyturn_core::error::Exhaustion;
use keyturn_core::snapshot::{
    Disabled, HISTORY_DAYS, KeySnapshot, NoticeMark, ProjectSnapshot, ScopeSnapshot, UsageDay,
};
use keyturn_core::{
    AcquireError, Breaker, BreakerState, Clock, DeadReason, Demand, Fingerprint, KeyId, KeyRing,
    Lease, LedgerConfig, LedgerError, LimitSource, ModelLimits, Outcome, Policy, PoolStatus,
    QuotaDay, QuotaLedger, ResetTarget, SCHEMA_VERSION, Snapshot, SnapshotError, StoreError,
    ThrottleKind, scope_status_from_snapshot,
};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};

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

/// Where the scripts take "now" from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// Redis's `TIME`: one clock for every process (production).
    #[default]
    Redis,
    /// The ledger's injected clock (tests drive it with a `ManualClock`).
    Clock,
}

/// A URL with any credentials removed, for messages: the user and password before `@`, and the
/// query, where a `redis+unix://` URL carries `user=` and `pass=`.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split(['?', '#']).next().unwrap_or("");
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "(redis url)".to_owned(),
    }
}

/// Connecting to Redis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Redis refused keyturn: wrong or missing password (`WRONGPASS`, `NOAUTH`), or an ACL that
    /// denies the commands keyturn needs (`NOPERM`). A configuration error: waiting will not help.
    #[error(
        "Redis at {server} refused keyturn ({detail}): check the user and password in the Redis URL (KEYTURN_REDIS_URL or state.redis_url) and that user's ACL; nothing was admitted"
    )]
    Refused {
        /// The server, without credentials.
        server: String,
        /// What Redis said: its error code and meaning, never the password.
        detail: String,
    },
    /// The URL is not one Redis can be reached at.
    #[error("bad Redis URL {server}: {detail}")]
    BadUrl {
        /// The URL without credentials.
        server: String,
        /// What is wrong, without credentials.
        detail: String,
    },
    /// Redis did not answer (down, unreachable, timing out).
    #[error(transparent)]
    Unavailable(StoreError),
}

impl ConnectError {
    /// Whether the configuration must change (a refusal or a bad URL), as opposed to an outage
    /// that ends by itself.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::BadUrl { .. })
    }
}

impl From<ConnectError> for StoreError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Unavailable(s) => s,
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// Why Redis refused a command, if it refused keyturn itself (credentials or ACL) rather than
/// failing to answer. Read from the error's kind and Redis's error code, never its text.
fn refusal(e: &redis::RedisError) -> Option<&'static str> {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some("authentication failed: wrong user or password");
    }
    match e.code() {
        Some("WRONGPASS") => Some("WRONGPASS: wrong user or password"),
        Some("NOAUTH") => Some("NOAUTH: Redis requires a password and the URL gives none"),
        Some("NOPERM") => Some("NOPERM: the user's ACL denies a command or key keyturn needs"),
        _ => None,
    }
}

/// The passwords `url` carries (after `user:` or as `pass=`), to strip from any text that might
/// echo them.
fn passwords_of(url: &str) -> Vec<&str> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out: Vec<&str> = before_query
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .into_iter()
        .collect();
    out.extend(query.split('&').filter_map(|kv| kv.strip_prefix("pass=")));
    out.retain(|p| !p.is_empty());
    out
}

/// The shared quota ledger.
pub struct RedisLedger {
    keys: Arc<KeyRing>,
    cfg: LedgerConfig,
    clock: Arc<dyn Clock>,
    time: TimeSource,
    conn: ConnectionManager,
    server: String,
    prefix: String,
    acquire: Script,
    settle: Script,
    claim: Script,
    projects: Vec<String>,
    /// Per key, in ring order: fingerprint as text, project, weight.
    candidates: Vec<(String, String, u32)>,
    /// Per model: each key's configured (rpm, tpm, rpd, tpd), -1 for unlimited.
    limits: Mutex<HashMap<String, Arc<Vec<[i64; 4]>>>>,
    models: Mutex<Vec<String>>,
    cursors: Mutex<HashMap<String, usize>>,
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

fn backend(server: &str, e: &redis::RedisError) -> String {
    if let Some(why) = refusal(e) {
        return format!(
            "Redis at {server} refused keyturn ({why}); nothing was admitted: this is a configuration error, check the user and password in the Redis URL and that user's ACL"
        );
    }
    // The error's own text can carry the URL (and its password): describe it by kind only.
    let what = if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection lost"
    } else {
        e.category()
    };
    format!(
        "Redis at {server} did not answer ({what}); nothing was admitted; keyturn retries when Redis is back"
    )
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
        let client = redis::Client::open(url).map_err(|e| {
            let detail = passwords_of(url)
                .into_iter()
                .fold(e.to_string(), |t, p| t.replace(p, "***"));
            ConnectError::BadUrl {
                server: server.clone(),
                detail,
            }
        })?;
        let fail = |e: redis::RedisError| match refusal(&e) {
            Some(why) => ConnectError::Refused {
                server: server.clone(),
                detail: why.to_owned(),
            },
            None => ConnectError::Unavailable(StoreError::Backend(backend(&server, &e))),
        };
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_with_config(client, mcfg)
            .await
            .map_err(fail)?;
        let prefix = format!("kt:{namespace}:");
        // Without a password Redis still connects and refuses the first command (NOAUTH); an
        // ACL may allow PING and refuse scripts or these keys (NOPERM): ask what keyturn will.
        let _: i64 = Script::new("return redis.call('EXISTS', KEYS[1])")
            .key(format!("{prefix}k:access-check"))
            .invoke_async(&mut conn)
            .await
            .map_err(fail)?;
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
        let candidates = keys
            .iter()
            .map(|(_, e)| (e.fingerprint().to_string(), e.project.clone(), e.weight))
            .collect();
        let ledger = Self {
            candidates,
            limits: Mutex::new(HashMap::new()),
            keys,
            cfg,
            clock,
            time,
            conn,
            server,
            prefix,
            acquire: Script::new(&format!("{COMMON}\n{ACQUIRE}")),
            settle: Script::new(&format!("{COMMON}\n{SETTLE}")),
            claim: Script::new(CLAIM),
            projects,
            models: Mutex::new(models),
            cursors: Mutex::new(HashMap::new()),
            days: Mutex::new(None),
        };
        ledger
            .adopt_tiers()
            .await
            .map_err(|e| ConnectError::Unavailable(StoreError::Backend(e.to_string())))?;
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
        let today = QuotaDay::containing(now);
        let yesterday = QuotaDay::containing(today.start_ms - 1);
        let tomorrow = QuotaDay::containing(today.end_ms);
        let d = [
            yesterday.start_ms,
            today.start_ms,
            today.end_ms,
            tomorrow.end_ms,
        ];
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

    /// One attempt, no waiting. On refusal: the error and, if capacity returns, when — on the
    /// local clock, anchored at the moment the request was sent (a slow reply must not stretch
    /// the wait).
    async fn try_acquire(
        &self,
        model: &str,
        demand: Demand,
    ) -> Result<Lease, (AcquireError, Option<i64>)> {
        let model = keyturn_core::limits::normalize_model(model);
        let slot = self.model_slot(model);
        let n = self.keys.len();
        let start = match self.cfg.policy {
            Policy::RoundRobin => self.cursors.lock().get(model).copied().unwrap_or(0) % n,
            _ => 0,
        };
        let policy = match self.cfg.policy {
            Policy::RoundRobin => "rr",
            Policy::LeastLoaded => "ll",
            Policy::Weighted => "w",
        };
        let demand = Demand {
            requests: demand.requests.max(1),
            ..demand
        };
        let sent_local = self.clock.now_ms();
        let mut inv = self.acquire.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(model)
            .arg(self.now_arg(sent_local))
            .arg(demand.requests)
            .arg(demand.tokens)
            .arg(policy);
        for m in self.midnights() {
            inv.arg(m);
        }
        inv.arg(self.cfg.breaker.probe_timeout.as_millis() as i64)
            .arg(n)
            .arg(
                self.cfg
                    .relearn_after
                    .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
        let limits = self.limits_for(model);
        for i in 0..n {
            let k = (start + i) % n;
            let (fp, project, weight) = &self.candidates[k];
            let [rpm, tpm, rpd, tpd] = limits[k];
            inv.arg(k)
                .arg(fp)
                .arg(project)
                .arg(rpm)
                .arg(tpm)
                .arg(rpd)
                .arg(tpd)
                .arg(*weight);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| (AcquireError::Backend(backend(&self.server, &e)), None))?;
        let int = |i: usize| -> i64 {
            match reply.get(i) {
                Some(Value::Int(x)) => *x,
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(-1),
                _ => -1,
            }
        };
        let text = |i: usize| -> String {
            match reply.get(i) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                Some(Value::Int(x)) => x.to_string(),
                _ => String::new(),
            }
        };
        if int(0) == 1 {
            let k = int(1) as usize;
            if matches!(self.cfg.policy, Policy::RoundRobin) {
                self.cursors.lock().insert(model.to_owned(), (k + 1) % n);
            }
            return Ok(Lease::new(
                KeyId(k as u32),
                slot,
                int(2),
                demand,
                int(3) == 1,
                0,
            ));
        }
        let (retry_at, why, n_off, disabled_csv) = (int(1), text(2), int(3), text(4));
        let (tl_what, tl_demand, tl_limit, server_now) = (text(5), int(6), int(7), int(8));
        let disabled: Vec<usize> = disabled_csv
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect();
        let model_s = model.to_owned();
        if disabled.len() == n {
            let detail = self.disabled_detail(&disabled).await;
            return Err((
                AcquireError::AllKeysDisabled {
                    model: model_s,
                    detail,
                },
                None,
            ));
        }
        if retry_at >= 0 {
            let reason = match why.as_str() {
                "tpm" => Exhaustion::TokensPerMinute,
                "rpd" => Exhaustion::RequestsPerDay,
                "tpd" => Exhaustion::TokensPerDay,
                "cooling" => Exhaustion::CoolingDown,
                "circuit" => Exhaustion::CircuitOpen,
                "reprobe" => Exhaustion::Reprobing,
                _ => Exhaustion::RequestsPerMinute,
            };
            let until = retry_at.max(server_now + 1);
            return Err((
                AcquireError::Exhausted {
                    model: model_s,
                    reason,
                    until_ms: until,
                },
                Some(sent_local.saturating_add(until - server_now)),
            ));
        }
        if !tl_what.is_empty() {
            let what = match tl_what.as_str() {
                "rpm" => "requests per minute",
                "rpd" => "requests per day",
                "tpd" => "input tokens per day",
                _ => "input tokens per minute",
            };
            return Err((
                AcquireError::DemandTooLarge {
                    model: model_s,
                    what,
                    demand: tl_demand.max(0) as u64,
                    limit: tl_limit.max(0) as u64,
                },
                None,
            ));
        }
        if n_off > 0 {
            // The cold path: who switched the model off, read from the status every ledger
            // shares (the built-in table, the configuration, or the server and until when).
            let detail = self.off_detail(&model_s, &disabled).await;
            return Err((
                AcquireError::ModelUnavailable {
                    model: model_s,
                    detail,
                },
                None,
            ));
        }
        let detail = self.disabled_detail(&disabled).await;
        Err((
            AcquireError::AllKeysDisabled {
                model: model_s,
                detail,
            },
            None,
        ))
    }

    /// Who switched `model` off for each project with a live key: the built-in table, the
    /// configuration, or the server and until when (the rules every ledger shares, over a
    /// snapshot; a scope Redis has no counters for yet reads as fresh).
    async fn off_detail(&self, model: &str, disabled: &[usize]) -> String {
        let snap = match self.read_snapshot(false).await {
            Ok(s) => s,
            Err(e) => return format!("(could not read why: {e})"),
        };
        let mut projects: Vec<&str> = self
            .keys
            .iter()
            .filter(|(id, _)| !disabled.contains(&id.index()))
            .map(|(_, e)| e.project.as_str())
            .collect();
        projects.sort_unstable();
        projects.dedup();
        let now = snap.taken_at_ms;
        let whys: Vec<String> = projects
            .into_iter()
            .filter_map(|p| {
                let fresh = ScopeSnapshot {
                    project: p.to_owned(),
                    model: model.to_owned(),
                    window: Vec::new(),
                    day_start_ms: 0,
                    day_count: 0,
                    day_tokens: 0,
                    day_served: 0,
                    day_refused: 0,
                    cooldown_until_ms: 0,
                    exhausted_until_ms: 0,
                    learned: ModelLimits::UNLIMITED,
                    learned_until_ms: 0,
                    tier: None,
                };
                let ss = snap
                    .scopes
                    .iter()
                    .find(|s| s.project == p && s.model == model)
                    .unwrap_or(&fresh);
                let off = snap.projects.iter().find(|x| x.project == p);
                let st = scope_status_from_snapshot(
                    ss,
                    self.configured(p, model),
                    self.cfg.limits.tier(p),
                    Vec::new(),
                    now,
                    off,
                );
                st.why_off()
            })
            .collect();
        whys.join("; ")
    }

    async fn disabled_detail(&self, idx: &[usize]) -> String {
        let mut conn = self.conn.clone();
        let mut parts = Vec::new();
        for &k in idx {
            let Some(e) = self.keys.get(KeyId(k as u32)) else {
                continue;
            };
            let reason: Option<String> = conn
                .hget(format!("{}k:{}", self.prefix, e.fingerprint()), "dis")
                .await
                .unwrap_or(None);
            let shown = reason
                .and_then(|r| {
                    serde_json::from_value::<DeadReason>(serde_json::Value::String(r)).ok()
                })
                .map_or_else(|| "disabled".to_owned(), |r| r.to_string());
            parts.push(format!("{}: {shown}", e.label));
        }
        parts.join(", ")
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

    /// A scope from its counters' hash `h` and its learned limits' hash `l`.
    fn parse_scope(
        &self,
        model: &str,
        project: &str,
        h: &HashMap<String, String>,
        l: &HashMap<String, String>,
    ) -> ScopeSnapshot {
        let num =
            |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok());
        let head = num(h, "head");
        let mut window = Vec::new();
        if let Some(head) = head {
            for slot in 0..61i64 {
                if let Some(t) = num(h, &format!("t{slot}"))
                    && t <= head
                    && t > head - 61
                {
                    let r = num(h, &format!("r{slot}")).unwrap_or(0).max(0) as u64;
                    let k = num(h, &format!("k{slot}")).unwrap_or(0).max(0) as u64;
                    if r > 0 || k > 0 {
                        window.push((t, r, k));
                    }
                }
            }
        }
        window.sort_unstable();
        let learned_field = |k: &str| num(l, k).map(|v| v.max(0) as u64);
        ScopeSnapshot {
            project: project.to_owned(),
            model: model.to_owned(),
            window,
            day_start_ms: num(h, "dk").unwrap_or(0),
            day_count: num(h, "dc").unwrap_or(0).max(0) as u64,
            day_tokens: num(h, "dt").unwrap_or(0).max(0) as u64,
            day_served: num(h, "ds").unwrap_or(0).max(0) as u64,
            day_refused: num(h, "dx").unwrap_or(0).max(0) as u64,
            cooldown_until_ms: num(h, "cd").unwrap_or(0),
            exhausted_until_ms: num(h, "ex").unwrap_or(0),
            learned: ModelLimits {
                rpm: learned_field("rpm"),
                tpm: learned_field("tpm"),
                rpd: learned_field("rpd"),
                tpd: learned_field("tpd"),
            },
            learned_until_ms: num(l, "until").unwrap_or(0),
            tier: Some(self.cfg.limits.tier(project)),
        }
    }

    /// A key's health from its hash.
    fn parse_key(h: &HashMap<String, String>) -> (Option<Disabled>, Breaker) {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        let disabled = h.get("dis").map(|r| Disabled {
            reason: serde_json::from_value(serde_json::Value::String(r.clone()))
                .unwrap_or(DeadReason::PermissionDenied),
            since_ms: num("dis_at").unwrap_or(0),
        });
        let state = match h.get("bs").map(String::as_str) {
            Some("open") => BreakerState::Open {
                until_ms: num("bu").unwrap_or(0),
            },
            Some("half") => BreakerState::HalfOpen {
                probe_deadline_ms: num("bp").filter(|p| *p > 0),
            },
            _ => BreakerState::Closed,
        };
        let breaker = Breaker {
            state,
            failures: num("bf").unwrap_or(0).max(0) as u32,
            trips: num("bt").unwrap_or(0).max(0) as u32,
        };
        (disabled, breaker)
    }

    /// Every Redis key of this namespace starting with `kind` (`"k:"`, `"s:"`…). The prefix is
    /// escaped: a glob character in a namespace must not reach another namespace's keys.
    async fn scan(
        &self,
        conn: &mut ConnectionManager,
        kind: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let mut out = Vec::new();
        let mut iter: redis::AsyncIter<String> = conn
            .scan_match(format!(
                "{}*",
                glob_escape(&format!("{}{kind}", self.prefix))
            ))
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        while let Some(k) = iter.next_item().await {
            out.push(k.map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?);
        }
        Ok(out)
    }

    /// The state of this configuration: its keys' health (`k:<fp>`), and the counters and
    /// learned limits of its projects for every model anyone used (`s:`/`l:<model>|<project>`).
    /// The weighted policy's running weights are per key inside a per-model hash; they are
    /// removed field by field here, before the caller deletes the rest.
    async fn own_state_keys(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<Vec<String>, LedgerError> {
        let err = |e: redis::RedisError| LedgerError::Backend(backend(&self.server, &e));
        let mut out: Vec<String> = self
            .keys
            .iter()
            .map(|(_, e)| format!("{}k:{}", self.prefix, e.fingerprint()))
            .collect();
        out.extend(self.projects.iter().map(|p| self.project_key(p)));
        for kind in ["s:", "l:"] {
            for k in self.scan(conn, kind).await? {
                let project = k[self.prefix.len() + kind.len()..]
                    .rsplit_once('|')
                    .map(|(_, p)| p);
                if project.is_some_and(|p| self.projects.iter().any(|mine| mine == p)) {
                    out.push(k);
                }
            }
        }
        let fps: Vec<String> = self
            .candidates
            .iter()
            .map(|(fp, _, _)| fp.clone())
            .collect();
        for w in self.scan(conn, "w:").await? {
            let _: () = conn.hdel(&w, &fps).await.map_err(err)?;
        }
        Ok(out)
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
        let k = lease.key();
        let Some(entry) = self.keys.get(k) else {
            return Ok(());
        };
        let Some(model) = self.models.lock().get(lease.model_slot() as usize).cloned() else {
            return Ok(());
        };
        let (code, real, kind, retry, qv, reason) = match outcome {
            Outcome::Success { input_tokens } => (
                "ok",
                input_tokens.map_or(-1, |t| t as i64),
                "none",
                -1,
                -1,
                String::new(),
            ),
            Outcome::Throttled {
                kind,
                retry_after,
                quota_value,
            } => (
                "thr",
                -1,
                match kind {
                    ThrottleKind::RequestsPerMinute => "rpm",
                    ThrottleKind::TokensPerMinute => "tpm",
                    ThrottleKind::RequestsPerDay => "rpd",
                    ThrottleKind::TokensPerDay => "tpd",
                    ThrottleKind::Unspecified => "none",
                },
                retry_after.map_or(-1, |d| d.as_millis() as i64),
                quota_value.map_or(-1, |v| v as i64),
                String::new(),
            ),
            Outcome::ModelUnavailable => ("off", -1, "none", -1, -1, String::new()),
            Outcome::ProjectOff => ("poff", -1, "none", -1, -1, String::new()),
            Outcome::KeyDead(r) => ("dead", -1, "none", -1, -1, reason_code(r)),
            Outcome::ProjectDead(r) => ("pdead", -1, "none", -1, -1, reason_code(r)),
            Outcome::Transient => ("trans", -1, "none", -1, -1, String::new()),
            Outcome::CallerFault => ("fault", -1, "none", -1, -1, String::new()),
        };
        let b = &self.cfg.breaker;
        let mut inv = self.settle.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&model)
            .arg(self.now_arg(self.clock.now_ms()))
            .arg(entry.fingerprint().to_string())
            .arg(&entry.project)
            .arg(lease.second())
            .arg(lease.reserved_tokens())
            .arg(code)
            .arg(real)
            .arg(kind)
            .arg(retry)
            .arg(qv)
            .arg(reason)
            .arg(if lease.is_probe() { "1" } else { "0" })
            .arg(b.failure_threshold)
            .arg(b.base_cooldown.as_millis() as i64)
            .arg(b.max_cooldown.as_millis() as i64)
            .arg(self.cfg.default_throttle_cooldown.as_millis() as i64);
        for m in self.midnights() {
            inv.arg(m);
        }
        inv.arg(
            self.cfg
                .relearn_after
                .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        );
        inv.arg(lease.requests());
        if code == "pdead" {
            let same: Vec<&String> = self
                .candidates
                .iter()
                .filter(|(_, p, _)| *p == entry.project)
                .map(|(fp, _, _)| fp)
                .collect();
            inv.arg(same.len());
            for fp in same {
                inv.arg(fp);
            }
        } else {
            inv.arg(0);
        }
        let mut conn = self.conn.clone();
        let events: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        for ev in events {
            match ev.as_str() {
                "disabled" => tracing::info!(key = %entry.label, "key disabled until reset"),
                "opened" => {
                    tracing::info!(key = %entry.label, "circuit breaker opened after transient failures")
                }
                "closed" => {
                    tracing::info!(key = %entry.label, "key recovered: circuit breaker closed")
                }
                "off" => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, "model not available for this project (limit 0): switched off until a re-probe")
                }
                "project-off" => {
                    tracing::info!(key = %entry.label, project = %entry.project, "project cannot be served (credits depleted or no quota at all): every model switched off until a re-probe")
                }
                "back" => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, "re-probe served: the model is back for this project")
                }
                "project-back" => {
                    tracing::info!(key = %entry.label, project = %entry.project, "re-probe answered: the project is back")
                }
                other if other.starts_with("disabled:") => {
                    let fp = &other["disabled:".len()..];
                    let shown = self
                        .keys
                        .iter()
                        .find(|(_, e)| e.fingerprint().to_string() == fp)
                        .map_or_else(String::new, |(_, e)| e.label.clone());
                    tracing::info!(key = %shown, project = %entry.project, "key disabled until reset: its project is");
                }
                other => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, state = other, "scope rate limited by the server")
                }
            }
        }
        Ok(())
    }

    async fn reset(&self, target: ResetTarget) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let err = |e: redis::RedisError| LedgerError::Backend(backend(&self.server, &e));
        let doomed: Vec<String> = match target {
            ResetTarget::Key(id) => {
                let e = self
                    .keys
                    .get(id)
                    .ok_or_else(|| LedgerError::UnknownTarget(format!("no key #{}", id.0)))?;
                vec![format!("{}k:{}", self.prefix, e.fingerprint())]
            }
            ResetTarget::Scope { project, model } => {
                let model = keyturn_core::limits::normalize_model(&model).to_owned();
                if !self.projects.contains(&project) {
                    return Err(LedgerError::UnknownTarget(format!(
                        "no project '{project}'"
                    )));
                }
                vec![
                    self.scope_key(&model, &project),
                    self.learned_key(&model, &project),
                ]
            }
            // Everything of this configuration's keys and projects but the usage history and the
            // warnings already sent (what was sent stays sent, like the in-memory ledger's
            // reset). A namespace may be shared by processes holding other keys (a team's
            // workers with subsets of the keys): their keys and projects are not ours to zero.
            ResetTarget::All => {
                let mine = self.own_state_keys(&mut conn).await?;
                let others = self
                    .scan(&mut conn, "k:")
                    .await?
                    .iter()
                    .filter(|k| !mine.contains(k))
                    .count();
                if others > 0 {
                    tracing::info!(
                        namespace = %self.prefix,
                        other_keys = others,
                        "reset the keys and projects of this configuration; other keys sharing the namespace were left as they are"
                    );
                }
                mine
            }
        };
        for chunk in doomed.chunks(500) {
            let _: () = conn.del(chunk).await.map_err(err)?;
        }
        Ok(())
    }

    async fn status(&self) -> Result<PoolStatus, LedgerError> {
        // Status is the snapshot read by the rules every ledger shares (without the history,
        // which status does not show: the monitor reads status every second).
        let snap = self.read_snapshot(false).await?;
        Ok(PoolStatus::from_snapshot(
            &snap,
            &self.cfg.limits,
            &self.keys,
        ))
    }

    async fn snapshot(&self) -> Result<Snapshot, LedgerError> {
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
        if snapshot.schema > SCHEMA_VERSION {
            return Err(SnapshotError::NewerSchema {
                found: snapshot.schema,
                supported: SCHEMA_VERSION,
            }
            .into());
        }
        let now = self.now().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (_, e) in self.keys.iter() {
            let kk = format!("{}k:{}", self.prefix, e.fingerprint());
            pipe.del(&kk).ignore();
            let Some(ks) = snapshot
                .keys
                .iter()
                .find(|k| k.fingerprint == e.fingerprint())
            else {
                continue;
            };
            let mut fields: Vec<(String, String)> = Vec::new();
            if let Some(d) = ks.disabled {
                fields.push(("dis".into(), reason_code(d.reason)));
                fields.push(("dis_at".into(), d.since_ms.to_string()));
            }
            let (bs, bu, bp) = match ks.breaker.state {
                BreakerState::Closed => ("closed", 0, 0),
                BreakerState::Open { until_ms } => ("open", until_ms, 0),
                BreakerState::HalfOpen { probe_deadline_ms } => {
                    ("half", 0, probe_deadline_ms.unwrap_or(0))
                }
            };
            fields.push(("bs".into(), bs.into()));
            fields.push(("bu".into(), bu.to_string()));
            fields.push(("bp".into(), bp.to_string()));
            fields.push(("bf".into(), ks.breaker.failures.to_string()));
            fields.push(("bt".into(), ks.breaker.trips.to_string()));
            pipe.hset_multiple(&kk, &fields).ignore();
        }
        let now_sec = now.div_euclid(1000);
        for ss in &snapshot.scopes {
            if !self.projects.contains(&ss.project) {
                continue;
            }
            let model = keyturn_core::limits::normalize_model(&ss.model).to_owned();
            self.model_slot(&model);
            let sk = self.scope_key(&model, &ss.project);
            let lk = self.learned_key(&model, &ss.project);
            pipe.del(&sk).ignore().del(&lk).ignore();
            // Learned under another tier: none of what the server said describes this one.
            let stale = ss
                .tier
                .is_some_and(|t| t != self.cfg.limits.tier(&ss.project));
            let ss = &if stale {
                ScopeSnapshot {
                    cooldown_until_ms: 0,
                    exhausted_until_ms: 0,
                    learned: ModelLimits::UNLIMITED,
                    learned_until_ms: 0,
                    ..ss.clone()
                }
            } else {
                ss.clone()
            };
            let mut fields: Vec<(String, String)> = vec![("head".into(), now_sec.to_string())];
            let (mut sr, mut sum_k) = (0u64, 0u64);
            for &(sec, r, k) in &ss.window {
                if sec > now_sec || sec <= now_sec - 61 {
                    continue;
                }
                let slot = sec.rem_euclid(61);
                fields.push((format!("t{slot}"), sec.to_string()));
                fields.push((format!("r{slot}"), r.to_string()));
                fields.push((format!("k{slot}"), k.to_string()));
                sr += r;
                sum_k += k;
            }
            fields.push(("sr".into(), sr.to_string()));
            fields.push(("sk".into(), sum_k.to_string()));
            fields.push(("dk".into(), ss.day_start_ms.to_string()));
            fields.push(("dc".into(), ss.day_count.to_string()));
            fields.push(("dt".into(), ss.day_tokens.to_string()));
            fields.push(("ds".into(), ss.day_served.to_string()));
            fields.push(("dx".into(), ss.day_refused.to_string()));
            fields.push(("cd".into(), ss.cooldown_until_ms.to_string()));
            fields.push(("ex".into(), ss.exhausted_until_ms.to_string()));
            pipe.hset_multiple(&sk, &fields).ignore();
            // Relative, like the scripts' TTLs: "now" may be a test clock, not Redis's.
            let day_end = QuotaDay::containing(now).end_ms;
            let ttl = day_end
                .max(ss.cooldown_until_ms)
                .max(ss.exhausted_until_ms)
                .max((now_sec + 62) * 1000)
                - now
                + 60_000;
            pipe.cmd("PEXPIRE").arg(&sk).arg(ttl.max(1000)).ignore();
            let mut learned: Vec<(String, String)> = [
                ("rpm", ss.learned.rpm),
                ("tpm", ss.learned.tpm),
                ("rpd", ss.learned.rpd),
                ("tpd", ss.learned.tpd),
            ]
            .into_iter()
            .filter_map(|(f, v)| v.map(|v| (f.to_owned(), v.to_string())))
            .collect();
            if !learned.is_empty() {
                // An older file knows no expiry: what it learned holds until the next one.
                let until = if ss.learned_until_ms == 0 {
                    self.cfg.relearn_at(now)
                } else {
                    ss.learned_until_ms
                };
                learned.push(("until".into(), until.to_string()));
                pipe.hset_multiple(&lk, &learned).ignore();
            }
        }
        for project in &self.projects {
            let pk = self.project_key(project);
            pipe.del(&pk).ignore();
            if let Some(ps) = snapshot.projects.iter().find(|p| p.project == *project) {
                pipe.hset_multiple(
                    &pk,
                    &[
                        ("since", ps.off_since_ms.max(1)),
                        ("until", ps.reprobe_at_ms),
                    ],
                )
                .ignore();
            }
        }
        self.restore_usage(&mut pipe, &snapshot, now);
        for n in snapshot.notices.iter().filter(|n| n.until_ms > now) {
            pipe.cmd("SET")
                .arg(format!("{}n:{}", self.prefix, n.id))
                .arg(n.until_ms)
                .arg("PX")
                .arg(n.until_ms - now)
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        Ok(())
    }
}

impl RedisLedger {
    /// The state; `with_history` adds the usage history and the warning marks.
    async fn read_snapshot(&self, with_history: bool) -> Result<Snapshot, LedgerError> {
        let now = self.now().await?;
        let mut conn = self.conn.clone();
        // Every key's, scope's and project's hash in one round trip (the monitor reads status
        // every second): keys, then (counters, learned) per model and project, then projects.
        let models = self.known_models();
        let mut pipe = redis::pipe();
        for (_, e) in self.keys.iter() {
            pipe.hgetall(format!("{}k:{}", self.prefix, e.fingerprint()));
        }
        for model in &models {
            for project in &self.projects {
                pipe.hgetall(self.scope_key(model, project))
                    .hgetall(self.learned_key(model, project));
            }
        }
        for project in &self.projects {
            pipe.hgetall(self.project_key(project));
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        let mut hashes = hashes.iter();
        let mut next = || {
            hashes.next().ok_or_else(|| {
                LedgerError::Backend(format!("{}: a pipelined read came back short", self.server))
            })
        };
        let mut keys = Vec::new();
        for (_, e) in self.keys.iter() {
            let (disabled, breaker) = Self::parse_key(next()?);
            keys.push(KeySnapshot {
                fingerprint: e.fingerprint(),
                label: e.label.clone(),
                project: e.project.clone(),
                disabled,
                breaker,
            });
        }
        let mut scopes = Vec::new();
        for model in &models {
            for project in &self.projects {
                let (h, l) = (next()?, next()?);
                scopes.push(self.parse_scope(model, project, h, l));
            }
        }
        let mut projects = Vec::new();
        for project in &self.projects {
            let h = next()?;
            let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
            if let Some(since) = num("since") {
                projects.push(ProjectSnapshot {
                    project: project.clone(),
                    off_since_ms: since,
                    reprobe_at_ms: num("until").unwrap_or(0),
                });
            }
        }
        let (usage, notices) = if with_history {
            (
                self.read_usage(&mut conn, now).await?,
                self.read_notices(&mut conn, now).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Snapshot {
            schema: SCHEMA_VERSION,
            taken_at_ms: now,
            keys,
            scopes,
            usage,
            notices,
            projects,
        })
    }

    /// The usage hashes of the last [`HISTORY_DAYS`] Pacific days, newest first.
    fn history_days(&self, now: i64) -> Vec<QuotaDay> {
        QuotaDay::containing(now).and_before(HISTORY_DAYS)
    }

    fn usage_key(&self, day: &QuotaDay) -> String {
        format!("{}u:{}", self.prefix, day.start_ms)
    }

    /// Usage per key, model and day (one round trip for the 30 days).
    async fn read_usage(
        &self,
        conn: &mut ConnectionManager,
        now: i64,
    ) -> Result<Vec<UsageDay>, LedgerError> {
        let days = self.history_days(now);
        let mut pipe = redis::pipe();
        for d in &days {
            pipe.hgetall(self.usage_key(d));
        }
        let hashes: Vec<HashMap<String, i64>> = pipe
            .query_async(conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        let by_fp: HashMap<String, Fingerprint> = self
            .keys
            .iter()
            .map(|(_, e)| (e.fingerprint().to_string(), e.fingerprint()))
            .collect();
        let mut usage = Vec::new();
        for (day, h) in days.iter().zip(hashes).rev() {
            // (sent, served, refused, input tokens)
            let mut rows: HashMap<(String, String), (u64, u64, u64, u64)> = HashMap::new();
            for (field, v) in h {
                let mut parts = field.rsplitn(2, '|');
                let (Some(what), Some(rest)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Some((fp, model)) = rest.split_once('|') else {
                    continue;
                };
                let row = rows.entry((fp.to_owned(), model.to_owned())).or_default();
                let v = v.max(0) as u64;
                match what {
                    "r" => row.0 = v,
                    "s" => row.1 = v,
                    "x" => row.2 = v,
                    "t" => row.3 = v,
                    _ => {}
                }
            }
            let mut rows: Vec<_> = rows.into_iter().collect();
            rows.sort();
            for ((fp, model), (requests, served, refused, input_tokens)) in rows {
                // A key no longer in this pool keeps its history in Redis but is not shown.
                if let Some(f) = by_fp.get(&fp) {
                    usage.push(UsageDay {
                        date: day.date,
                        fingerprint: *f,
                        model,
                        requests,
                        served,
                        refused,
                        input_tokens,
                    });
                }
            }
        }
        Ok(usage)
    }

    async fn read_notices(
        &self,
        conn: &mut ConnectionManager,
        now: i64,
    ) -> Result<Vec<NoticeMark>, LedgerError> {
        let err = |e: redis::RedisError| LedgerError::Backend(backend(&self.server, &e));
        let prefix = format!("{}n:", self.prefix);
        let names = self.scan(conn, "n:").await?;
        let mut out = Vec::new();
        for name in names {
            let until: Option<i64> = conn.get(&name).await.map_err(err)?;
            if let Some(until) = until.filter(|u| *u > now) {
                out.push(NoticeMark {
                    id: name[prefix.len()..].to_owned(),
                    until_ms: until,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Replaces the history days of `snapshot` (those within the window) in `pipe`.
    fn restore_usage(&self, pipe: &mut redis::Pipeline, snapshot: &Snapshot, now: i64) {
        let days = self.history_days(now);
        for d in &days {
            pipe.del(self.usage_key(d)).ignore();
        }
        for u in &snapshot.usage {
            let Some(day) = days.iter().find(|d| d.date == u.date) else {
                continue;
            };
            let key = self.usage_key(day);
            let field = |what: &str| format!("{}|{}|{what}", u.fingerprint, u.model);
            pipe.hincr(&key, field("r"), u.requests)
                .ignore()
                .hincr(&key, field("s"), u.served)
                .ignore()
                .hincr(&key, field("x"), u.refused)
                .ignore()
                .hincr(&key, field("t"), u.input_tokens)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                // As the acquire script: 30 days after the day ends.
                .arg(day.end_ms - now + HISTORY_DAYS as i64 * 86_400_000)
                .ignore();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        for (url, shown) in [
            ("redis://:made-up-pw@h:6379/2", "redis://h:6379/2"),
            ("redis://user:made-up-pw@h:6379", "redis://h:6379"),
            ("rediss://user:made@up-pw@h", "rediss://h"),
            (
                "redis+unix:///run/redis.sock?user=u&pass=made-up-pw&db=1",
                "redis+unix:///run/redis.sock",
            ),
            (
                "unix:///run/redis.sock?pass=made-up-pw",
                "unix:///run/redis.sock",
            ),
            ("made-up-pw", "(redis url)"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(
            passwords_of("redis+unix:///s?pass=made-up-a&x=1"),
            ["made-up-a"]
        );
        assert_eq!(
            passwords_of("redis://:made-up-b@h?pass=made-up-c"),
            ["made-up-b", "made-up-c"]
        );
    }
}
