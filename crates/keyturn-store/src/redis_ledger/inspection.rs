//! Reading the shared state back: the snapshot in one pipelined round trip, the usage history,
//! the warning marks, and the words a refusal needs (who switched a model off, why keys are
//! disabled).

use super::*;

impl RedisLedger {
    /// The state; `with_history` adds the usage history and the warning marks.
    pub(super) async fn read_snapshot(&self, with_history: bool) -> Result<Snapshot, LedgerError> {
        self.read_scopes_of(&self.known_models(), with_history)
            .await
    }

    /// The state with the scopes of `models` only (a refusal's words need one model's).
    async fn read_scopes_of(
        &self,
        models: &[String],
        with_history: bool,
    ) -> Result<Snapshot, LedgerError> {
        let now = self.now().await?;
        let mut conn = self.conn.clone();
        // Every key's, scope's and project's hash in one round trip (the monitor reads status
        // every second): keys, then (counters, learned) per model and project, then projects.
        let mut pipe = redis::pipe();
        for (_, e) in self.keys.iter() {
            pipe.hgetall(format!("{}k:{}", self.prefix, e.fingerprint()));
        }
        for model in models {
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
                LedgerError::Backend(
                    format!("{}: a pipelined read came back short", self.server).into(),
                )
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
        for model in models {
            for project in &self.projects {
                let (h, l) = (next()?, next()?);
                scopes.push(self.parse_scope(model, project, h, l));
            }
        }
        let mut projects = Vec::new();
        for project in &self.projects {
            projects.extend(Self::parse_project(project, next()?));
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
    pub(super) fn history_days(&self, now: i64) -> Vec<QuotaDay> {
        QuotaDay::containing(now).and_before(HISTORY_DAYS)
    }

    pub(super) fn usage_key(&self, day: &QuotaDay) -> String {
        format!("{}u:{}", self.prefix, day.start_ms)
    }

    /// Usage per key, model and day (one round trip for the 30 days).
    pub(super) async fn read_usage(
        &self,
        conn: &mut Conn,
        now: i64,
    ) -> Result<Vec<UsageDay>, LedgerError> {
        let days = self.history_days(now);
        let mut pipe = redis::pipe();
        for d in &days {
            pipe.hgetall(self.usage_key(d));
        }
        // Read as text: a field something else wrote that is not an integer hides only itself.
        let hashes: Vec<HashMap<String, String>> = pipe
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
                let Ok(v) = v.parse::<i64>() else {
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

    pub(super) async fn read_notices(
        &self,
        conn: &mut Conn,
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

    /// Who switched `model` off for each project with a live key: the built-in table, the
    /// configuration, or the server and until when (the rules every ledger shares, over a
    /// snapshot; a scope Redis has no counters for yet reads as fresh).
    pub(super) async fn off_detail(&self, model: &str, disabled: &[usize]) -> String {
        let mut projects: Vec<&str> = self
            .keys
            .iter()
            .filter(|(id, _)| !disabled.contains(&id.index()))
            .map(|(_, e)| e.project.as_str())
            .collect();
        projects.sort_unstable();
        projects.dedup();
        // Only what the answer needs, in one round trip: per live project, the model's scope,
        // what was learned for it, and the project's switch-off (a refused request must not
        // cost a whole snapshot read).
        // The words go to proxy clients too: a failure here names no server.
        const UNREAD: &str = "(why could not be read: the quota ledger did not answer)";
        let Ok(now) = self.now().await else {
            return UNREAD.to_owned();
        };
        let mut pipe = redis::pipe();
        for p in &projects {
            pipe.hgetall(self.scope_key(model, p))
                .hgetall(self.learned_key(model, p))
                .hgetall(self.project_key(p));
        }
        let mut conn = self.conn.clone();
        let Ok(hashes) = pipe
            .query_async::<Vec<HashMap<String, String>>>(&mut conn)
            .await
        else {
            return UNREAD.to_owned();
        };
        let whys: Vec<String> = projects
            .iter()
            .zip(hashes.chunks(3))
            .filter_map(|(p, h)| {
                let [scope, learned, project] = h else {
                    return None;
                };
                let ss = self.parse_scope(model, p, scope, learned);
                let off = Self::parse_project(p, project);
                let st = scope_status_from_snapshot(
                    &ss,
                    self.configured(p, model),
                    self.cfg.limits.tier(p),
                    Vec::new(),
                    now,
                    off.as_ref(),
                );
                st.why_off()
            })
            .collect();
        whys.join("; ")
    }

    /// A project's switch-off from its hash, if it is off.
    pub(super) fn parse_project(
        project: &str,
        h: &HashMap<String, String>,
    ) -> Option<ProjectSnapshot> {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        num("since").map(|since| ProjectSnapshot {
            project: project.to_owned(),
            off_since_ms: since,
            reprobe_at_ms: num("until").unwrap_or(0),
        })
    }

    pub(super) async fn disabled_detail(&self, idx: &[usize]) -> String {
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

    /// A scope from its counters' hash `h` and its learned limits' hash `l`.
    pub(super) fn parse_scope(
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
    pub(super) fn parse_key(h: &HashMap<String, String>) -> (Option<Disabled>, Breaker) {
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
}
