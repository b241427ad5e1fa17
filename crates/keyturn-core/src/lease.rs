//! Leases: the right to send one request (or one batch) on one key, with the room it reserved.

use crate::key::KeyId;

/// What a request will spend: how many requests it counts as (an embedding batch of n counts as
/// n) and an estimate of its input tokens; and, for a request that names a resource one project
/// owns (a file, a cached content, a batch), the project it must be sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Requests (≥ 1).
    pub requests: u32,
    /// Estimated input tokens.
    pub tokens: u64,
    /// Only keys of the same project as this key may take it (`None`: any key).
    pub project_of: Option<KeyId>,
}

impl Demand {
    /// One request with this many estimated input tokens.
    pub fn tokens(tokens: u64) -> Self {
        Self {
            requests: 1,
            tokens,
            project_of: None,
        }
    }

    /// A batch of `requests` requests with `tokens` estimated input tokens in all.
    pub fn batch(requests: u32, tokens: u64) -> Self {
        Self {
            requests,
            tokens,
            project_of: None,
        }
    }

    /// The same demand, admitted only on keys of `key`'s project: a request that refers to a
    /// resource that project owns fails with a bare 403 on any other project's key.
    pub fn within_project_of(self, key: KeyId) -> Self {
        Self {
            project_of: Some(key),
            ..self
        }
    }
}

/// Room reserved on one key for one call. Settle it with the outcome
/// ([`crate::QuotaLedger::settle`]); a lease dropped unsettled counts as sent with its estimate.
///
/// The fields are the ledger's own bookkeeping; other ledger implementations build leases with
/// [`Lease::new`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "settle the lease with the call's outcome; dropped, it counts as sent"]
pub struct Lease {
    key: KeyId,
    model: u32,
    sec: i64,
    requests: u32,
    tokens: u64,
    probe: bool,
    epoch: u64,
}

impl Lease {
    /// Builds a lease. `model` and `epoch` are ledger-defined; `sec` is the window second the
    /// reservation was recorded in.
    pub fn new(key: KeyId, model: u32, sec: i64, demand: Demand, probe: bool, epoch: u64) -> Self {
        Self {
            key,
            model,
            sec,
            requests: demand.requests,
            tokens: demand.tokens,
            probe,
            epoch,
        }
    }

    /// The key to send with.
    pub fn key(&self) -> KeyId {
        self.key
    }

    /// Ledger-defined model slot.
    pub fn model_slot(&self) -> u32 {
        self.model
    }

    /// Window second of the reservation.
    pub fn second(&self) -> i64 {
        self.sec
    }

    /// Requests reserved.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Tokens reserved (the estimate).
    pub fn reserved_tokens(&self) -> u64 {
        self.tokens
    }

    /// Whether this is a half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Ledger-defined epoch (state generation) the lease belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}
