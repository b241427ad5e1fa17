//! What the types cannot check: every number and duration for sense, the strings that are
//! really enums, and that no field holds what looks like an API key.

use std::path::PathBuf;
use std::time::Duration;

use super::checks::*;
use super::{Config, RELEARN_AFTER_MAX, RELEARN_AFTER_MIN};
use crate::error::ConfigError;

impl Config {
    pub(super) fn file_name(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("(configuration)"))
    }

    /// Checks values the types cannot: every number and duration for sense (zero where zero means
    /// nothing, a minimum above its maximum), the strings that are really enums, and that no
    /// field holds what looks like an API key. Errors name the field and the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, detail: String| ConfigError::Invalid {
            path: self.file_name(),
            field: field.to_owned(),
            detail,
        };
        // Values that reach logs and messages (or come from variables a careless user may fill
        // with a key) must not be keys.
        let mut shown: Vec<(String, String)> = vec![
            (
                "state.dir".into(),
                self.state.dir.to_string_lossy().into_owned(),
            ),
            ("state.redis_url".into(), self.state.redis_url.clone()),
            ("state.namespace".into(), self.state.namespace.clone()),
            ("http.base_url".into(), self.http.base_url.clone()),
            ("http.api_version".into(), self.http.api_version.clone()),
            ("serve.listen".into(), self.serve.listen.clone()),
        ];
        if let Some(u) = &self.notify.webhook_url {
            shown.push(("notify.webhook_url".into(), u.clone()));
        }
        for (i, k) in self.keys.iter().enumerate() {
            for (name, v) in [
                ("env", k.env.clone()),
                (
                    "file",
                    k.file.as_ref().map(|f| f.to_string_lossy().into_owned()),
                ),
                ("label", k.label.clone()),
                ("project", k.project.clone()),
            ] {
                if let Some(v) = v {
                    shown.push((format!("keys[{i}].{name}"), v));
                }
            }
        }
        for (i, t) in self.serve.tokens.iter().enumerate() {
            shown.push((format!("serve.tokens[{i}].label"), t.label.clone()));
        }
        for (i, t) in self.serve.admin_tokens.iter().enumerate() {
            shown.push((format!("serve.admin_tokens[{i}].label"), t.label.clone()));
        }
        for (field, v) in &shown {
            if crate::error::looks_like_key(v) {
                let leaf = field.rsplit('.').next().unwrap_or("");
                return Err(key_in_file(&self.file_name(), field, leaf));
            }
        }
        for (i, k) in self.keys.iter().enumerate() {
            let field = format!("keys[{i}]");
            if k.key.is_some() {
                return Err(bad(
                    &format!("{field}.key"),
                    "keys are never written in keyturn.toml; put the key in an environment variable (env = \"NAME\") or a file (file = \"path\")".into(),
                ));
            }
            match (&k.env, &k.file) {
                (Some(_), Some(_)) => {
                    return Err(bad(&field, "give either env or file, not both".into()));
                }
                (None, None) => {
                    return Err(bad(
                        &field,
                        "needs env = \"NAME\" or file = \"path\"".into(),
                    ));
                }
                _ => {}
            }
            if let Some(var) = &k.env
                && !is_variable_name(var)
            {
                return Err(bad(
                    &format!("{field}.env"),
                    format!(
                        "'{var}' is not a variable name (letters, digits and _, not starting with a digit); name the environment variable that holds the key"
                    ),
                ));
            }
            if k.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(bad(
                    &format!("{field}.file"),
                    "is empty; name the file that holds the key".into(),
                ));
            }
            if let Some(l) = &k.label {
                check_name(l).map_err(|d| bad(&format!("{field}.label"), d))?;
            }
            if let Some(p) = &k.project {
                check_project(p).map_err(|d| bad(&format!("{field}.project"), d))?;
            }
            if k.weight == Some(0) {
                return Err(bad(&format!("{field}.weight"), "weights start at 1".into()));
            }
            if let Some(p) = &k.proxy {
                keyturn_gemini::EgressRoute::parse(p.expose())
                    .map_err(|e| bad(&format!("{field}.proxy"), e.to_string()))?;
            }
        }
        if let Some(p) = &self.http.proxy {
            keyturn_gemini::EgressRoute::parse(p.expose())
                .map_err(|e| bad("http.proxy", e.to_string()))?;
        }
        let positive = |field: &str, d: Duration| {
            if d.is_zero() {
                Err(bad(field, "must be more than 0".into()))
            } else {
                Ok(())
            }
        };
        let at_least = |field: &str, n: u64, min: u64| {
            if n < min {
                Err(bad(field, format!("must be at least {min}, not {n}")))
            } else {
                Ok(())
            }
        };
        let ordered = |lo: (&str, Duration), hi: (&str, Duration)| {
            if lo.1 > hi.1 {
                Err(bad(
                    lo.0,
                    format!(
                        "{:?} is longer than {} ({:?}): the shortest cannot exceed the longest",
                        lo.1, hi.0, hi.1
                    ),
                ))
            } else {
                Ok(())
            }
        };

        // [state]
        if self.state.dir.as_os_str().is_empty() {
            return Err(bad("state.dir", "is empty".into()));
        }
        check_namespace(&self.state.namespace).map_err(|d| bad("state.namespace", d))?;
        check_redis_url(&self.state.redis_url).map_err(|d| bad("state.redis_url", d))?;
        if self.state.flush_interval < Duration::from_millis(10) {
            return Err(bad(
                "state.flush_interval",
                "must be at least 10ms (the state is written at most once per interval)".into(),
            ));
        }

        // [rotation]: max_wait = 0 is meaningful (fail at once instead of waiting).
        positive(
            "rotation.default_throttle_cooldown",
            self.rotation.default_throttle_cooldown,
        )?;
        if let Some(d) = self.rotation.relearn_after
            && !(RELEARN_AFTER_MIN..=RELEARN_AFTER_MAX).contains(&d)
        {
            return Err(bad(
                "rotation.relearn_after",
                format!(
                    "{d:?} is out of range: from 1m (each expiry costs a real request to a refusing project) to 30 days, or \"pacific-midnight\""
                ),
            ));
        }

        // [breaker]
        at_least(
            "breaker.failure_threshold",
            self.breaker.failure_threshold.into(),
            1,
        )?;
        positive("breaker.base_cooldown", self.breaker.base_cooldown)?;
        positive("breaker.max_cooldown", self.breaker.max_cooldown)?;
        positive("breaker.probe_timeout", self.breaker.probe_timeout)?;
        ordered(
            ("breaker.base_cooldown", self.breaker.base_cooldown),
            ("breaker.max_cooldown", self.breaker.max_cooldown),
        )?;

        // [retry]
        at_least("retry.max_attempts", self.retry.max_attempts.into(), 1)?;
        positive("retry.max_elapsed", self.retry.max_elapsed)?;
        positive("retry.base_backoff", self.retry.base_backoff)?;
        positive("retry.max_backoff", self.retry.max_backoff)?;
        ordered(
            ("retry.base_backoff", self.retry.base_backoff),
            ("retry.max_backoff", self.retry.max_backoff),
        )?;

        // [http]
        check_base_url(&self.http.base_url).map_err(|d| bad("http.base_url", d))?;
        if !API_VERSIONS.contains(&self.http.api_version.as_str()) {
            return Err(bad(
                "http.api_version",
                format!(
                    "'{}' is not a Gemini API version; use \"v1beta\" or \"v1\"",
                    self.http.api_version
                ),
            ));
        }
        positive("http.connect_timeout", self.http.connect_timeout)?;
        positive("http.request_timeout", self.http.request_timeout)?;

        // [cache]
        positive("cache.ttl", self.cache.ttl)?;

        // [pipeline]
        at_least(
            "pipeline.batch_max_requests",
            self.pipeline.batch_max_requests as u64,
            1,
        )?;
        at_least(
            "pipeline.batch_max_jobs",
            self.pipeline.batch_max_jobs as u64,
            1,
        )?;
        if let Some(t) = self.pipeline.batch_enqueued_tokens {
            at_least("pipeline.batch_enqueued_tokens", t, 1)?;
        }
        positive("pipeline.batch_poll", self.pipeline.batch_poll)?;
        ordered(
            ("pipeline.batch_poll", self.pipeline.batch_poll),
            ("pipeline.batch_max_poll", self.pipeline.batch_max_poll),
        )?;
        at_least("cache.max_entries", self.cache.max_entries, 1)?;

        // [embeddings]
        if !(1..=keyturn_embeddings::MAX_BATCH).contains(&self.embeddings.batch_size) {
            return Err(bad(
                "embeddings.batch_size",
                format!("{} is not between 1 and 100", self.embeddings.batch_size),
            ));
        }
        at_least(
            "embeddings.concurrency",
            self.embeddings.concurrency as u64,
            1,
        )?;

        // [serve]
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "serve.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.serve.listen
                ),
            ));
        }
        at_least("serve.max_body_bytes", self.serve.max_body_bytes as u64, 1)?;
        at_least("serve.max_upload_bytes", self.serve.max_upload_bytes, 1)?;
        at_least("serve.max_in_flight", self.serve.max_in_flight as u64, 1)?;
        at_least(
            "serve.max_connections",
            self.serve.max_connections as u64,
            1,
        )?;
        positive("serve.header_timeout", self.serve.header_timeout)?;
        positive("serve.body_timeout", self.serve.body_timeout)?;
        positive("recheck.interval", self.recheck.interval)?;
        for (table, tokens) in [
            ("tokens", &self.serve.tokens),
            ("admin_tokens", &self.serve.admin_tokens),
        ] {
            for (i, t) in tokens.iter().enumerate() {
                check_name(&t.label).map_err(|d| bad(&format!("serve.{table}[{i}].label"), d))?;
                if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        &format!("serve.{table}[{i}].sha256"),
                        "must be 64 hex digits (the SHA-256 that `keyturn serve token new` prints); never the token itself".into(),
                    ));
                }
            }
        }
        // One token in both tables would make a client an admin.
        if let Some(t) = self.serve.admin_tokens.iter().find(|a| {
            self.serve
                .tokens
                .iter()
                .any(|c| c.sha256.eq_ignore_ascii_case(&a.sha256))
        }) {
            return Err(bad(
                "serve.admin_tokens",
                format!(
                    "'{}' is also a client token ([[serve.tokens]]); an admin token must be its own (keyturn serve token new --admin)",
                    t.label
                ),
            ));
        }

        // [notify]
        if let Some(u) = &self.notify.webhook_url {
            check_http_url(u).map_err(|d| bad("notify.webhook_url", d))?;
        }
        if let Some(t) = self
            .notify
            .thresholds
            .iter()
            .find(|t| **t == 0 || **t > 100)
        {
            return Err(bad(
                "notify.thresholds",
                format!("{t} is not a percentage between 1 and 100"),
            ));
        }
        at_least("notify.queue", self.notify.queue as u64, 1)?;
        at_least("notify.max_attempts", self.notify.max_attempts.into(), 1)?;
        if self.notify.check_interval < Duration::from_millis(50) {
            return Err(bad("notify.check_interval", "must be at least 50ms".into()));
        }
        positive("notify.timeout", self.notify.timeout)?;

        // [models], [projects]
        for m in self.models.keys() {
            check_model(m).map_err(|d| bad(&format!("models.\"{m}\""), d))?;
        }
        for (p, ps) in &self.projects {
            check_project(p).map_err(|d| bad(&format!("projects.\"{p}\""), d))?;
            for m in ps.models.keys() {
                check_model(m).map_err(|d| bad(&format!("projects.\"{p}\".models.\"{m}\""), d))?;
            }
        }
        self.limit_table()?;
        Ok(())
    }
}
