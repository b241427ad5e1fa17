//! `keyturn serve`'s console: the [`Console`] over the proxy's live pool, which a reload swaps,
//! with the proxy's own counts (requests in flight and waiting, the last reload) in its status.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use keyturn_core::{Clock, PoolStatus, QuotaLedger};
use keyturn_gemini::{RouteBoard, RouteFailing};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::admin::{Console, Digests, Host};
use crate::{LastReload, Live};

/// The console's and admin API's share of the proxy's state.
#[derive(Debug)]
pub(crate) struct ServeAdmin {
    pub(crate) console: Arc<Console>,
    /// Requests waiting for an upstream slot (`max_in_flight`).
    pub(crate) waiting_slot: Arc<AtomicUsize>,
    /// The last reload of the configuration.
    pub(crate) last_reload: Arc<Mutex<Option<LastReload>>>,
    /// Which keys' egress routes fail, once the pool's board is given.
    pub(crate) route_board: Arc<OnceLock<Arc<RouteBoard>>>,
}

impl ServeAdmin {
    pub(crate) fn new(
        live: Arc<arc_swap::ArcSwap<Live>>,
        in_flight: Arc<Semaphore>,
        max_in_flight: usize,
        clock: Arc<dyn Clock>,
        loopback: bool,
        body_timeout: std::time::Duration,
    ) -> Self {
        let waiting_slot = Arc::new(AtomicUsize::new(0));
        let last_reload = Arc::new(Mutex::new(None));
        let route_board = Arc::new(OnceLock::new());
        let host = ServeHost {
            route_board: route_board.clone(),
            live,
            in_flight,
            max_in_flight,
            waiting_slot: waiting_slot.clone(),
            last_reload: last_reload.clone(),
        };
        Self {
            console: Arc::new(
                Console::new(Arc::new(host), clock, loopback).with_body_timeout(body_timeout),
            ),
            waiting_slot,
            last_reload,
            route_board,
        }
    }
}

/// What the console reads of a running proxy.
#[derive(Debug)]
struct ServeHost {
    live: Arc<arc_swap::ArcSwap<Live>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    waiting_slot: Arc<AtomicUsize>,
    last_reload: Arc<Mutex<Option<LastReload>>>,
    route_board: Arc<OnceLock<Arc<RouteBoard>>>,
}

impl Host for ServeHost {
    fn route_failing(&self, key: &keyturn_core::Fingerprint) -> Option<RouteFailing> {
        self.route_board.get()?.failing(key)
    }

    fn ledger(&self) -> Arc<dyn QuotaLedger> {
        self.live.load().ledger.clone()
    }

    fn tokens(&self) -> (Digests, Digests) {
        let live = self.live.load();
        (live.tokens.clone(), live.admin_tokens.clone())
    }

    fn status_extra(&self, _: &PoolStatus, out: &mut Map<String, Value>) {
        let live = self.live.load();
        let max = self.max_in_flight;
        out.insert(
            "requests".into(),
            json!({
                "in_flight": max.saturating_sub(self.in_flight.available_permits()),
                "max_in_flight": max,
                "waiting_for_slot": self.waiting_slot.load(Ordering::SeqCst),
                "waiting_for_quota": live.v1beta.waiting_for_quota() + live.v1.waiting_for_quota(),
            }),
        );
        out.insert("reload".into(), json!(*self.last_reload.lock()));
    }
}
