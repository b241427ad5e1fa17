//! Writing the shared state wholesale: reset (only this configuration's keys and projects,
//! never the usage history) and restore from a snapshot; the namespace scans both use.

use super::*;

/// The operator's disable, in the key's health hash where the acquire script already looks
/// (`dis`, the reason code, and `dis_at`): set unless a disable by the operator is there, and
/// cleared only if it is the operator's. KEYS[1] the key's hash; ARGV[1] 1 to disable, 0 to put
/// back; ARGV[2] now (ms).
const ADMIN_DISABLE: &str = r"
local dis = redis.call('HGET', KEYS[1], 'dis')
if ARGV[1] == '1' then
  if dis ~= 'by-admin' then
    redis.call('HSET', KEYS[1], 'dis', 'by-admin', 'dis_at', ARGV[2])
  end
elseif dis == 'by-admin' then
  redis.call('HDEL', KEYS[1], 'dis', 'dis_at')
end
return 1
";

impl RedisLedger {
    /// [`QuotaLedger::disable_by_admin`]: one small script on the key's health hash.
    pub(super) async fn set_disabled_by_admin(
        &self,
        id: KeyId,
        disabled: bool,
    ) -> Result<(), LedgerError> {
        let e = self
            .keys
            .get(id)
            .ok_or_else(|| LedgerError::UnknownTarget(format!("no key #{}", id.0)))?;
        let now = self.now().await?;
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(ADMIN_DISABLE)
            .key(format!("{}k:{}", self.prefix, e.fingerprint()))
            .arg(i64::from(disabled))
            .arg(now)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        Ok(())
    }

    /// Resets keys, a scope or everything of this configuration (never the usage history).
    pub(super) async fn reset_target(&self, target: ResetTarget) -> Result<(), LedgerError> {
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

    /// Replaces the shared state of this configuration with a snapshot.
    pub(super) async fn restore_snapshot(&self, snapshot: Snapshot) -> Result<(), LedgerError> {
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

    /// Replaces the history days of `snapshot` (those within the window) in `pipe`.
    pub(super) fn restore_usage(&self, pipe: &mut redis::Pipeline, snapshot: &Snapshot, now: i64) {
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

    /// Every Redis key of this namespace starting with `kind` (`"k:"`, `"s:"`…). The prefix is
    /// escaped: a glob character in a namespace must not reach another namespace's keys.
    pub(super) async fn scan(
        &self,
        conn: &mut Conn,
        kind: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let pattern = format!("{}*", glob_escape(&format!("{}{kind}", self.prefix)));
        let mut out = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            // A script, keyed by the anchor: on a cluster it scans the namespace's master.
            let (next, keys): (String, Vec<String>) = self
                .scan_script
                .key(&self.anchor)
                .arg(&cursor)
                .arg(&pattern)
                .invoke_async(conn)
                .await
                .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
            out.extend(keys);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// The state of this configuration: its keys' health (`k:<fp>`), and the counters and
    /// learned limits of its projects for every model anyone used (`s:`/`l:<model>|<project>`).
    /// The weighted policy's running weights are per key inside a per-model hash; they are
    /// removed field by field here, before the caller deletes the rest.
    pub(super) async fn own_state_keys(&self, conn: &mut Conn) -> Result<Vec<String>, LedgerError> {
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
