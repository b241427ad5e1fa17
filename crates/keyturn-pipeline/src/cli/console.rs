//! `keyturn console`: the web console and admin API of `keyturn serve`, over a state folder or
//! a Redis namespace, for users of the library and of `keyturn seed` who run no proxy.
//! Read-only by default; `--allow-actions` allows resets, disables, enables and re-checks
//! (on the file backend it then takes the state file's lock, as a run does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keyturn_core::PoolStatus;
use keyturn_proxy::{Console, Digests, Host};
use keyturn_services::view::StateView;
use keyturn_services::{Backend, Env, ServiceErrorKind};
use serde_json::{Map, Value, json};

use super::args::ConsoleArgs;
use super::{Global, fail, interrupts, load};
use crate::report::Outcome;
use crate::term::safe;

/// Where `keyturn console` listens unless told (`keyturn serve` takes 8080).
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8090";

/// How often the console re-reads a followed state file and looks for events.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the console reads: the state view, the tokens, and the seed runs beside it.
#[derive(Debug)]
struct ViewHost {
    view: Arc<StateView>,
    tokens: Digests,
    admin_tokens: Digests,
    state_dir: PathBuf,
}

impl Host for ViewHost {
    fn ledger(&self) -> Arc<dyn keyturn_core::QuotaLedger> {
        self.view.ledger()
    }

    fn tokens(&self) -> (Digests, Digests) {
        (self.tokens.clone(), self.admin_tokens.clone())
    }

    fn status_extra(&self, status: &PoolStatus, out: &mut Map<String, Value>) {
        out.insert("view".into(), json!(self.view.freshness()));
        let ring = self.view.ledger().keys();
        let runs = super::status::live_runs(&self.state_dir, &ring, status);
        out.insert("runs".into(), json!(runs));
    }
}

/// The models whose scopes a Redis console shows: `--model`, else a seed's and those the
/// configuration names.
fn models_to_show(cfg: &keyturn_services::Config, asked: &[String]) -> Vec<String> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let mut models = vec![
        crate::run::DEFAULT_MODEL.to_owned(),
        crate::run::DEFAULT_EMBEDDING_MODEL.to_owned(),
    ];
    let configured = cfg
        .models
        .keys()
        .chain(cfg.projects.values().flat_map(|p| p.models.keys()));
    for m in configured {
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    models
}

pub(super) async fn cmd_console(g: &Global, env: &Env, cwd: &Path, a: ConsoleArgs) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let Ok(listen) = a.listen.parse::<SocketAddr>() else {
        return fail(
            Outcome::Usage,
            format!(
                "--listen '{}' is not an address like {DEFAULT_LISTEN}",
                a.listen
            ),
        );
    };
    let (tokens, admin_tokens) = match super::serve::digests(&cfg) {
        Ok(t) => t,
        Err(e) => return fail(Outcome::Usage, e),
    };
    if admin_tokens.is_empty() && !listen.ip().is_loopback() {
        return fail(
            Outcome::Usage,
            keyturn_proxy::ProxyError::ConsoleOpenToTheWorld(listen),
        );
    }
    let models = models_to_show(&cfg, &a.models);
    let view = match StateView::open(&cfg, env, cwd, a.allow_actions, &models).await {
        Ok(v) => Arc::new(v),
        Err(e) if a.allow_actions && cfg.state.backend == Backend::File => {
            let hint = if e.kind() == ServiceErrorKind::Configuration {
                ": a keyturn seed or serve holds the state; stop it, or run keyturn console without --allow-actions to watch it read-only"
            } else {
                ""
            };
            return fail(e.kind(), format!("{e}{hint}"));
        }
        Err(e) => return fail(e.kind(), e),
    };
    let host = ViewHost {
        view: view.clone(),
        tokens,
        admin_tokens: admin_tokens.clone(),
        state_dir: cfg.state.dir.clone(),
    };
    let mut console = Console::new(Arc::new(host), view.clock(), listen.ip().is_loopback());
    if a.allow_actions {
        // Re-checks go through each key's own egress route, as its requests do.
        let transport = keyturn_services::key_ring(&cfg, env, cwd)
            .map_err(keyturn_services::ServiceError::from)
            .and_then(|(_, found)| keyturn_services::key_transport(&cfg, &found));
        match transport {
            Ok(t) => console = console.with_recheck(t),
            Err(e) => return fail(e.kind(), e),
        }
    } else {
        console = console.read_only();
    }
    let console = Arc::new(console);
    let server = match keyturn_proxy::ConsoleServer::start(
        console.clone(),
        listen,
        !admin_tokens.is_empty(),
    )
    .await
    {
        Ok(s) => s,
        Err(keyturn_proxy::ProxyError::ConsoleOpenToTheWorld(addr)) => {
            return fail(
                Outcome::Usage,
                keyturn_proxy::ProxyError::ConsoleOpenToTheWorld(addr),
            );
        }
        Err(e) => return fail(Outcome::Failed, e),
    };
    println!(
        "keyturn console on http://{}/console (state: {}; {}; {})",
        server.addr(),
        safe(&view.freshness().source),
        if a.allow_actions {
            "actions allowed"
        } else {
            "read-only: --allow-actions to reset, disable, enable or re-check keys"
        },
        if admin_tokens.is_empty() {
            "this machine only: no admin token".to_owned()
        } else {
            format!("{} admin token(s)", admin_tokens.len())
        }
    );
    let mut stop = interrupts();
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                view.refresh();
                console.watch_once().await;
            }
        }
    }
    server.shutdown(Duration::from_secs(5)).await;
    match view.flush().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            Outcome::Failed,
            format!("could not save the quota state: {e}"),
        ),
    }
}
