//! A second connection that stops and starts a Redis server under test: scripts held with
//! `CLIENT PAUSE`, a wait until a ledger's call is held there, the other clients' connections
//! dropped with their calls unread, and direct reads of what the ledger wrote (reads are not held
//! by `CLIENT PAUSE WRITE`).
//!
//! Pausing stalls every client of the server: use it on a [`TestRedis::private`] server.
//!
//! [`TestRedis::private`]: super::TestRedis::private

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// An admin connection to a test server, which knows its own client id.
pub struct RedisAdmin {
    conn: MultiplexedConnection,
    /// This connection's `CLIENT ID`, so it is not mistaken for a held call.
    me: i64,
}

impl std::fmt::Debug for RedisAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmin").field("me", &self.me).finish()
    }
}

impl RedisAdmin {
    /// Connects to `url` (a test server's).
    pub async fn connect(url: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let me = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        Self { conn, me }
    }

    /// The connection, for commands of a test's own.
    pub fn connection(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// Holds every script and write (`CLIENT PAUSE WRITE`) for up to `ms`; reads go on.
    pub async fn pause_scripts(&mut self, ms: u64) {
        self.pause(ms, "WRITE").await;
    }

    /// Holds every command (`CLIENT PAUSE ALL`) for up to `ms`.
    pub async fn pause_all(&mut self, ms: u64) {
        self.pause(ms, "ALL").await;
    }

    async fn pause(&mut self, ms: u64, mode: &str) {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg(mode)
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }

    /// Returns once a client other than this one waits in Redis, held by the pause (flag b).
    pub async fn until_a_call_is_held(&mut self) {
        let mine = format!("id={} ", self.me);
        loop {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut self.conn)
                .await
                .unwrap();
            if list
                .lines()
                .any(|c| !c.starts_with(&mine) && c.contains(" flags=b "))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Drops every other client's connection, with its held call unread (so it never runs).
    pub async fn kill_other_clients(&mut self) {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }

    /// Ends a pause: held calls run.
    pub async fn resume(&mut self) {
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }

    /// `field` of the one quota scope `namespace` holds (`kt:{namespace}:s:*`), read directly
    /// (a read, which `CLIENT PAUSE WRITE` does not hold); `None` if the field is not set.
    /// Panics unless the namespace holds exactly one scope.
    pub async fn scope_field(&mut self, namespace: &str, field: &str) -> Option<i64> {
        let scopes: Vec<String> = redis::cmd("KEYS")
            .arg(format!("kt:{{{namespace}}}:s:*"))
            .query_async(&mut self.conn)
            .await
            .unwrap();
        assert_eq!(scopes.len(), 1, "{scopes:?}");
        redis::cmd("HGET")
            .arg(&scopes[0])
            .arg(field)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }
}
