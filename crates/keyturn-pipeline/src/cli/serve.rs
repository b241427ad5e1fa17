//! `keyturn serve`: the rotating proxy, and `serve token new`.

use std::path::Path;
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
    let mut tokens = Vec::new();
    for t in &cfg.serve.tokens {
        match keyturn_proxy::parse_digest(&t.label, &t.sha256) {
            Ok(d) => tokens.push((t.label.clone(), d)),
            Err(e) => return fail(Outcome::Usage, e),
        }
    }
    let mut admin_tokens = Vec::new();
    for t in &cfg.serve.admin_tokens {
        match keyturn_proxy::parse_digest(&t.label, &t.sha256) {
            Ok(d) => admin_tokens.push((t.label.clone(), d)),
            Err(e) => return fail(Outcome::Usage, e),
        }
    }
    let pcfg = keyturn_proxy::ProxyConfig {
        listen,
        tokens,
        admin_tokens,
        max_body_bytes: cfg.serve.max_body_bytes,
        max_in_flight: cfg.serve.max_in_flight,
        max_connections: cfg.serve.max_connections,
        header_timeout: cfg.serve.header_timeout,
        body_timeout: cfg.serve.body_timeout,
        ..keyturn_proxy::ProxyConfig::default()
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
    let recheck = match keyturn_services::transport(&cfg, &cfg.http.api_version) {
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
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    eprintln!("keyturn serve: draining requests in flight…");
    proxy.shutdown(Duration::from_secs(10)).await;
    match pool.state.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            Outcome::Failed,
            format!("could not save the quota state: {e}"),
        ),
    }
}
