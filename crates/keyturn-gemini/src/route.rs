//! Egress routes: the forward proxy each key's requests may leave through, checked and shown
//! without credentials.

/// An egress route: the forward proxy a key's requests leave through (`http://`, `https://`,
/// `socks5://` or `socks5h://`). Its credentials are secrets like keys: `Debug` and `Display`
/// show only the scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressRoute(pub(crate) reqwest::Url);

/// Why a route was refused; never quotes the URL (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRoute(&'static str);

impl EgressRoute {
    /// Checks a route: a URL of an allowed scheme with a host, and nothing after it.
    pub fn parse(url: &str) -> Result<Self, BadRoute> {
        let u = reqwest::Url::parse(url.trim())
            .map_err(|_| BadRoute("is not a URL like http://host:port or socks5://host:port"))?;
        if !matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h") {
            return Err(BadRoute(
                "must be an http://, https://, socks5:// or socks5h:// proxy",
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(BadRoute("names no host"));
        }
        if u.path() != "/" && !u.path().is_empty() || u.query().is_some() || u.fragment().is_some()
        {
            return Err(BadRoute("must be only scheme://[user:password@]host:port"));
        }
        Ok(Self(u))
    }

    /// The route's own words: scheme, host and port, never credentials.
    pub fn shown(&self) -> String {
        let u = &self.0;
        match u.port() {
            Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or("")),
            None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
        }
    }
}

impl std::fmt::Debug for EgressRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EgressRoute({})", self.shown())
    }
}

impl std::fmt::Display for EgressRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// What went wrong on a key's egress route: the key itself is not in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RouteFault {
    /// The proxy could not be reached (connection refused, no route to it, its name unknown).
    Unreachable,
    /// Connecting to the proxy, or through it, took longer than `[http] connect_timeout`.
    TimedOut,
    /// The proxy refused to carry the request: 407 (its credentials), or a refused tunnel.
    Refused,
    /// The proxy answered something that is not HTTP.
    BadAnswer,
}

impl std::fmt::Display for RouteFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unreachable => "unreachable",
            Self::TimedOut => "timed out",
            Self::Refused => "refused the request",
            Self::BadAnswer => "answered something that is not HTTP",
        })
    }
}

impl RouteFault {
    /// Whether a failed send through a route was the route's fault, and which. Decided by the
    /// error's kind (connecting, a timeout while connecting, a request that got no HTTP
    /// answer); the cause's words only tell a refused tunnel (407) from an unreachable proxy.
    /// A timeout waiting for an answer is not counted: Gemini may be the slow one.
    pub fn of(e: &reqwest::Error) -> Option<Self> {
        if e.is_connect() {
            if e.is_timeout() {
                return Some(Self::TimedOut);
            }
            let mut words = String::new();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                words.push_str(&c.to_string());
                cause = c.source();
            }
            let words = words.to_ascii_lowercase();
            return Some(if words.contains("407") || words.contains("tunnel") {
                Self::Refused
            } else {
                Self::Unreachable
            });
        }
        if e.is_timeout() || e.is_body() || e.is_decode() {
            return None;
        }
        e.is_request().then_some(Self::BadAnswer)
    }
}

/// A key's route failing now: which route (without credentials), how, since when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteFailing {
    /// The route, as [`EgressRoute::shown`] has it.
    pub route: String,
    /// The last failure's kind.
    pub fault: RouteFault,
    /// The last failure in words (no key, no URL, no credentials).
    pub detail: String,
    /// When the route started failing (Unix ms, the pool's clock).
    pub since_ms: i64,
    /// When it last failed.
    pub last_ms: i64,
    /// Failures in a row.
    pub failures: u32,
}

/// Which keys' routes are failing now: the transport records every send through a route (a
/// failure, or any HTTP answer, which clears it), so status can say that a key cools because
/// its path fails, not the key. One per pool, shared by its transports.
#[derive(Debug)]
pub struct RouteBoard {
    clock: std::sync::Arc<dyn keyturn_core::Clock>,
    failing: parking_lot::Mutex<Vec<(keyturn_core::Fingerprint, RouteFailing)>>,
}

impl RouteBoard {
    /// An empty board on the pool's clock.
    pub fn new(clock: std::sync::Arc<dyn keyturn_core::Clock>) -> Self {
        Self {
            clock,
            failing: parking_lot::Mutex::default(),
        }
    }

    /// Records a failure of `fp`'s route.
    pub fn failed(
        &self,
        fp: keyturn_core::Fingerprint,
        route: &EgressRoute,
        fault: RouteFault,
        detail: &str,
    ) {
        let now = self.clock.now_ms();
        let mut g = self.failing.lock();
        match g.iter_mut().find(|(f, _)| *f == fp) {
            Some((_, r)) => {
                r.route = route.shown();
                r.fault = fault;
                r.detail = detail.to_owned();
                r.last_ms = now;
                r.failures = r.failures.saturating_add(1);
            }
            None => g.push((
                fp,
                RouteFailing {
                    route: route.shown(),
                    fault,
                    detail: detail.to_owned(),
                    since_ms: now,
                    last_ms: now,
                    failures: 1,
                },
            )),
        }
    }

    /// Records that `fp`'s route carried a request and brought an HTTP answer back.
    pub fn carried(&self, fp: keyturn_core::Fingerprint) {
        let mut g = self.failing.lock();
        if !g.is_empty() {
            g.retain(|(f, _)| *f != fp);
        }
    }

    /// `fp`'s route, if it is failing.
    pub fn failing(&self, fp: &keyturn_core::Fingerprint) -> Option<RouteFailing> {
        self.failing
            .lock()
            .iter()
            .find(|(f, _)| f == fp)
            .map(|(_, r)| r.clone())
    }
}
