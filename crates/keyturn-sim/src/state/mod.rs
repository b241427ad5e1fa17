//! The simulated service's state: its clock (real time plus an offset that admin can advance),
//! keys, quotas per (project, model) and stats.
//!
//! Quotas are exact: a sliding log of admissions over the last 60 s (the window is
//! `(now - 60 s, now]`), and a count per Pacific calendar day. This is deliberately a different
//! rule from keyturn-core's one-second buckets, so the two cannot share a mistake.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{
    Faults, KeyState, Limits, ProjectConfig, ProjectState, Route, ScriptRule, SimConfig,
    SimConfigError,
};

mod clock;
mod quota;

pub use self::clock::{SimClock, next_pacific_midnight, pacific_date};
pub use self::quota::Refusal;
use self::quota::ScopeQuota;

/// A key as the simulator knows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Index in stats.
    pub index: usize,
    /// Label.
    pub label: String,
    /// Project.
    pub project: String,
    /// State.
    pub state: KeyState,
}

#[derive(Debug, Default, Clone, Serialize)]
struct KeyStats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_route: BTreeMap<&'static str, u64>,
    query_key_uses: u64,
}

/// A script with what is left of it.
#[derive(Debug, Clone)]
struct ActiveScript {
    rule: ScriptRule,
    remaining: Option<u64>,
    fired: u64,
}

impl ActiveScript {
    fn new(rule: ScriptRule) -> Self {
        Self {
            remaining: rule.times,
            rule,
            fired: 0,
        }
    }

    fn matches(&self, key: &KeyInfo, route: Route, model: Option<&str>) -> bool {
        let r = &self.rule;
        let on_route = match r.method {
            Some(m) => m == route,
            None => match crate::corpus::shape(&r.shape).map(crate::corpus::Shape::reach) {
                Some(crate::corpus::Reach::Everywhere) => true,
                _ => route.spends_quota(),
            },
        };
        on_route
            && r.key.as_ref().is_none_or(|k| *k == key.label)
            && r.project.as_ref().is_none_or(|p| *p == key.project)
            && r.model.as_deref().is_none_or(|m| Some(m) == model)
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, KeyInfo>,
    key_stats: Vec<KeyStats>,
    key_fingerprints: Vec<String>,
    quotas: BTreeMap<(String, String), ScopeQuota>,
    scripts: Vec<ActiveScript>,
    config: SimConfig,
}

/// Shared state of a running simulator.
#[derive(Debug)]
pub struct SimState {
    /// The simulated clock.
    pub clock: SimClock,
    inner: Mutex<Inner>,
    faults: RwLock<Faults>,
    /// Responses served.
    pub responses: AtomicU64,
    /// Counter for response ids.
    pub response_seq: AtomicU64,
    /// Files, cached contents and batches, each owned by a project.
    pub resources: Mutex<crate::resources::Resources>,
}

/// 8 hex digits of SHA-256: how stats name keys.
pub fn fingerprint(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

impl SimState {
    /// State for a configuration.
    pub fn new(config: SimConfig) -> Self {
        let faults = config.faults;
        let mut inner = Inner {
            scripts: config
                .script
                .iter()
                .cloned()
                .map(ActiveScript::new)
                .collect(),
            config,
            ..Inner::default()
        };
        for k in inner.config.keys.clone() {
            let fp = fingerprint(&k.key);
            register(
                &mut inner,
                &k.key,
                k.label.unwrap_or_else(|| fp.clone()),
                k.project,
                k.state,
            );
        }
        Self {
            clock: SimClock::default(),
            inner: Mutex::new(inner),
            faults: RwLock::new(faults),
            responses: AtomicU64::new(0),
            response_seq: AtomicU64::new(0),
            resources: Mutex::new(crate::resources::Resources::default()),
        }
    }

    /// A new `responseId`: `sim-` and 12 hex digits, unique in this simulator.
    pub fn next_response_id(&self) -> String {
        format!(
            "sim-{:012x}",
            self.response_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Notes that `key` asked for `resource` (owned by `owner`, when known) on `route`.
    pub fn note_use(&self, route: Route, resource: String, owner: Option<String>, key: &KeyInfo) {
        let at_ms = self.clock.now_ms();
        self.resources.lock().note(crate::resources::ResourceUse {
            route: route.name(),
            resource,
            owner,
            key: key.label.clone(),
            key_project: key.project.clone(),
            at_ms,
        });
    }

    /// Limits and timings of files, caches and batches.
    pub fn resource_config(&self) -> crate::config::ResourceConfig {
        self.inner.lock().config.resources
    }

    /// A project's billing tier.
    pub fn tier(&self, project: &str) -> crate::config::Tier {
        self.inner
            .lock()
            .config
            .projects
            .get(project)
            .map_or(crate::config::Tier::Free, |p| p.tier)
    }

    /// The key's info, counting the request on its route; in open mode (no keys configured) an
    /// unknown key is registered as valid.
    pub fn key(&self, key: &str, via_query: bool, route: Route) -> Option<KeyInfo> {
        let mut inner = self.inner.lock();
        let info = match inner.keys.get(key) {
            Some(i) => i.clone(),
            None if inner.config.keys.is_empty() => {
                let fp = fingerprint(key);
                register(&mut inner, key, fp, None, KeyState::Valid)
            }
            None => return None,
        };
        let s = &mut inner.key_stats[info.index];
        s.requests += 1;
        *s.by_route.entry(route.name()).or_default() += 1;
        if via_query {
            s.query_key_uses += 1;
        }
        Some(info)
    }

    /// Records the status a key's request got.
    pub fn record_status(&self, key: Option<&KeyInfo>, status: u16) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        // Exported when the binary runs with --metrics-addr (the key's label, never its value).
        metrics::counter!(
            "keyturn_sim_responses_total",
            "key" => key.map_or_else(|| "-".to_owned(), |k| k.label.clone()),
            "status" => status.to_string(),
        )
        .increment(1);
        if let Some(k) = key {
            let mut inner = self.inner.lock();
            *inner.key_stats[k.index]
                .by_status
                .entry(status)
                .or_default() += 1;
        }
    }

    /// Current faults.
    pub fn faults(&self) -> Faults {
        *self.faults.read()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, f: Faults) {
        *self.faults.write() = f;
    }

    /// Limits of (project, model).
    pub fn limits(&self, project: &str, model: &str) -> Limits {
        self.inner.lock().config.limits(project, model)
    }

    /// Whether a model is served, and whether it embeds.
    pub fn served(&self, model: &str) -> Option<crate::config::ServedModel> {
        self.inner.lock().config.served(model)
    }

    /// The models served, by name.
    pub fn served_models(&self) -> Vec<(String, crate::config::ServedModel)> {
        let inner = self.inner.lock();
        let mut out: Vec<(String, crate::config::ServedModel)> = crate::config::SERVED_MODELS
            .iter()
            .map(|m| (m.name.to_owned(), *m))
            .collect();
        for name in inner.config.models.keys() {
            if !out.iter().any(|(n, _)| n == name)
                && let Some(m) = inner.config.served(name)
            {
                out.push((name.clone(), m));
            }
        }
        out
    }

    /// Admits `n` requests with `tokens` input tokens for (project, model), or says why not.
    pub fn admit(&self, project: &str, model: &str, n: u64, tokens: u64) -> Result<(), Refusal> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let limits = inner.config.limits(project, model);
        inner
            .quotas
            .entry((project.to_owned(), model.to_owned()))
            .or_default()
            .admit(now, n, tokens, &limits)
    }

    /// Changes limits at run time (`project` None: for every project).
    pub fn set_limits(&self, project: Option<&str>, model: &str, limits: Limits) {
        let mut inner = self.inner.lock();
        match project {
            None => {
                inner.config.models.insert(model.to_owned(), limits);
            }
            Some(p) => {
                inner
                    .config
                    .projects
                    .entry(p.to_owned())
                    .or_default()
                    .models
                    .insert(model.to_owned(), limits);
            }
        }
    }

    /// The shape a script answers this request with, if one matches; spends one of its `times`.
    pub fn scripted(&self, key: &KeyInfo, route: Route, model: Option<&str>) -> Option<String> {
        let mut inner = self.inner.lock();
        let i = inner
            .scripts
            .iter()
            .position(|s| s.matches(key, route, model))?;
        let s = &mut inner.scripts[i];
        s.fired += 1;
        let shape = s.rule.shape.clone();
        if let Some(n) = &mut s.remaining {
            *n = n.saturating_sub(1);
        }
        if s.remaining == Some(0) {
            inner.scripts.remove(i);
        }
        Some(shape)
    }

    /// Adds scripts after the current ones (`replace`: instead of them), after checking each.
    pub fn add_scripts(&self, rules: Vec<ScriptRule>, replace: bool) -> Result<(), SimConfigError> {
        let mut inner = self.inner.lock();
        for r in &rules {
            inner.config.check_script(r)?;
        }
        if replace {
            inner.scripts.clear();
        }
        inner
            .scripts
            .extend(rules.into_iter().map(ActiveScript::new));
        Ok(())
    }

    /// The scripts in force, with how many answers each has left and has given.
    pub fn scripts(&self) -> serde_json::Value {
        let inner = self.inner.lock();
        scripts_json(&inner.scripts)
    }

    /// A project's state.
    pub fn project_state(&self, project: &str) -> ProjectState {
        self.inner
            .lock()
            .config
            .projects
            .get(project)
            .map_or(ProjectState::Active, |p| p.state)
    }

    /// The shape a model that is off for a project answers with.
    pub fn model_off(&self, project: &str, model: &str) -> Option<String> {
        self.inner
            .lock()
            .config
            .projects
            .get(project)
            .and_then(|p| p.models_off.get(model).cloned())
    }

    /// The project that created a file, by id: one uploaded and not yet expired, or one the
    /// configuration names.
    pub fn file_owner(&self, id: &str) -> Option<String> {
        let now = self.clock.now_ms();
        {
            let mut res = self.resources.lock();
            res.purge(now);
            if let Some(f) = res.files.get(id) {
                return Some(f.project.clone());
            }
        }
        self.inner.lock().config.file_owner(id).map(str::to_owned)
    }

    /// Changes a project's state, models off, configured files and tier (each only when given),
    /// after checking them. Limits stay.
    pub fn set_project(
        &self,
        project: &str,
        state: Option<ProjectState>,
        models_off: Option<BTreeMap<String, String>>,
        files: Option<Vec<String>>,
        tier: Option<crate::config::Tier>,
    ) -> Result<(), SimConfigError> {
        let mut inner = self.inner.lock();
        if !inner.config.keys.is_empty()
            && !inner.config.projects.contains_key(project)
            && !inner.keys.values().any(|k| k.project == project)
        {
            return Err(SimConfigError::Invalid(format!(
                "no key of project {:?}",
                project
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(80)
                    .collect::<String>()
            )));
        }
        let mut config = inner.config.clone();
        let p: &mut ProjectConfig = config.projects.entry(project.to_owned()).or_default();
        if let Some(s) = state {
            p.state = s;
        }
        if let Some(m) = models_off {
            p.models_off = m;
        }
        if let Some(f) = files {
            p.files = f;
        }
        if let Some(t) = tier {
            p.tier = t;
        }
        config.validate()?;
        inner.config = config;
        Ok(())
    }

    /// Changes a key's state by label. Returns false if there is no such key.
    pub fn set_key_state(&self, label: &str, state: KeyState) -> bool {
        let mut inner = self.inner.lock();
        let mut found = false;
        for info in inner.keys.values_mut() {
            if info.label == label {
                info.state = state;
                found = true;
            }
        }
        found
    }

    /// Clears counters and stats (keys, limits, files, caches and batches stay).
    pub fn reset(&self) {
        self.resources.lock().log.clear();
        let mut inner = self.inner.lock();
        inner.quotas.clear();
        for s in &mut inner.key_stats {
            *s = KeyStats::default();
        }
        self.responses.store(0, Ordering::Relaxed);
    }

    /// Moves the clock to the next Pacific midnight.
    pub fn advance_day(&self) -> i64 {
        let now = self.clock.now_ms();
        let to = next_pacific_midnight(now);
        self.clock.advance(to - now);
        to
    }

    /// Stats as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let now = self.clock.now_ms();
        // Never held together with `inner`'s lock.
        let resources = {
            let mut res = self.resources.lock();
            res.purge(now);
            res.stats(now)
        };
        let mut inner = self.inner.lock();
        let mut keys: Vec<&KeyInfo> = inner.keys.values().collect();
        keys.sort_by_key(|k| k.index);
        let key_rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let s = &inner.key_stats[k.index];
                serde_json::json!({
                    "label": k.label,
                    "fingerprint": inner.key_fingerprints[k.index],
                    "project": k.project,
                    "state": k.state,
                    "requests": s.requests,
                    "by_status": s.by_status,
                    "by_route": s.by_route,
                    "probes": Route::ALL.iter().filter(|r| r.is_probe()).map(|r| s.by_route.get(r.name()).copied().unwrap_or(0)).sum::<u64>(),
                    "query_key_uses": s.query_key_uses,
                })
            })
            .collect();
        let query_key_uses: u64 = inner.key_stats.iter().map(|s| s.query_key_uses).sum();
        let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
        for s in &inner.key_stats {
            for (k, v) in &s.by_status {
                *by_status.entry(*k).or_default() += v;
            }
        }
        let config = inner.config.clone();
        let projects: BTreeMap<&String, serde_json::Value> = config
            .projects
            .iter()
            .map(|(name, p)| {
                (
                    name,
                    serde_json::json!({"state": p.state, "models_off": p.models_off, "files": p.files, "tier": p.tier}),
                )
            })
            .collect();
        let script = scripts_json(&inner.scripts);
        let scopes: Vec<serde_json::Value> = inner
            .quotas
            .iter_mut()
            .map(|((project, model), q)| {
                q.evict(now);
                let l = config.limits(project, model);
                serde_json::json!({
                    "project": project,
                    "model": model,
                    "admitted": q.admitted,
                    "refused": q.refused,
                    "rpm_limit": l.rpm,
                    "tpm_limit": l.tpm,
                    "rpd_limit": l.rpd,
                    "peak_rpm": q.peak_rpm,
                    "peak_tpm": q.peak_tpm,
                    "rpm_now": q.requests,
                    "tpm_now": q.tokens,
                    "day": q.day.to_string(),
                    "day_count": q.day_count,
                })
            })
            .collect();
        serde_json::json!({
            "now_ms": now,
            "clock_offset_ms": self.clock.offset_ms(),
            "pacific_date": pacific_date(now).to_string(),
            "responses": self.responses.load(Ordering::Relaxed),
            "by_status": by_status,
            "query_key_uses": query_key_uses,
            "keys": key_rows,
            "projects": projects,
            "script": script,
            "scopes": scopes,
            "resources": resources,
        })
    }
}

fn scripts_json(scripts: &[ActiveScript]) -> serde_json::Value {
    scripts
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s.rule).unwrap_or_default();
            v["remaining"] = serde_json::json!(s.remaining);
            v["fired"] = serde_json::json!(s.fired);
            v
        })
        .collect()
}

fn register(
    inner: &mut Inner,
    key: &str,
    label: String,
    project: Option<String>,
    state: KeyState,
) -> KeyInfo {
    let fp = fingerprint(key);
    let info = KeyInfo {
        index: inner.key_stats.len(),
        label,
        project: project.unwrap_or_else(|| format!("key:{fp}")),
        state,
    };
    inner.key_stats.push(KeyStats::default());
    inner.key_fingerprints.push(fp);
    inner.keys.insert(key.to_owned(), info.clone());
    info
}
