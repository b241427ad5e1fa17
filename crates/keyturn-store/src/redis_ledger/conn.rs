//! The connection: one Redis (a [`ConnectionManager`] that reconnects by itself) or a Redis
//! Cluster (the client's cluster connection, which follows slot moves and failovers). Every key
//! of a namespace carries the namespace as its hash tag (`kt:{<namespace>}:…`), so on a cluster
//! each script, pipeline and scan touches one slot, served by one master.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// Where `KEYTURN_REDIS_URL` points: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// `redis://`, `rediss://`, `redis+unix://`, `unix://`: one server.
    Single(String),
    /// `redis+cluster://[user:password@]host:port[,host:port…]` (or `rediss+cluster://` for
    /// TLS): one URL per seed node, each with the credentials.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads a URL; `None` when a cluster URL names no node.
    pub(super) fn parse(url: &str) -> Option<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Some(Self::Single(url.to_owned()));
        };
        let node_scheme = match scheme {
            "redis+cluster" => "redis",
            "rediss+cluster" => "rediss",
            _ => return Some(Self::Single(url.to_owned())),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, format!("?{q}")),
            None => (rest, String::new()),
        };
        // The credentials end at the last '@' (a password may hold '@' or ','); the nodes follow.
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{node_scheme}://{userinfo}{h}{query}"))
            .collect();
        if nodes.is_empty() {
            None
        } else {
            Some(Self::Cluster(nodes))
        }
    }
}

/// A connection to one Redis or to a cluster; cheap to clone (both multiplex one socket per node).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `target` with the ledger's timeouts (2 s to connect, 3 s per answer).
    pub(super) async fn open(target: &Target) -> RedisResult<Self> {
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(3)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, cfg).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(3))
                    .retries(3)
                    .max_retry_wait(500)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Whether this is a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node_with_the_credentials() {
        assert_eq!(
            Target::parse("redis+cluster://u:made-up@pw,x@h1:7000,h2:7001/"),
            Some(Target::Cluster(vec![
                "redis://u:made-up@pw,x@h1:7000".into(),
                "redis://u:made-up@pw,x@h2:7001".into(),
            ]))
        );
        assert_eq!(
            Target::parse("rediss+cluster://h1:7000?insecure"),
            Some(Target::Cluster(vec!["rediss://h1:7000?insecure".into()]))
        );
        assert_eq!(Target::parse("redis+cluster://"), None);
        assert_eq!(
            Target::parse("redis://h:6379/2"),
            Some(Target::Single("redis://h:6379/2".into()))
        );
    }
}
