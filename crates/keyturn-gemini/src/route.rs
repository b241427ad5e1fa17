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
