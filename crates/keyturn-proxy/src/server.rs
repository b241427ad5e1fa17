//! The accept loop: hyper's own connection builder rather than `axum::serve`, for what axum does
//! not offer — a bound on open connections, a header-read timeout that also closes idle
//! keep-alive connections, and a write timeout for clients that stop reading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::Semaphore;

use crate::lanes::Lanes;
use crate::{ProxyConfig, ProxyError, ProxyState, router};

/// What bounds a client's hold on the server.
struct Limits {
    connections: Arc<Semaphore>,
    header_timeout: Duration,
    /// How long a write to the client may wait without progress.
    send_timeout: Duration,
}

/// The accept loop: at most `connections` open at once (more wait in the kernel's backlog), each
/// served on the least busy of `lanes` and closed when its headers take longer than
/// `header_timeout` to arrive — a slow client's or an idle keep-alive's — or when a write to it
/// makes no progress for `send_timeout`, and all drained on shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    lanes: Arc<Lanes>,
    limits: Limits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // Each connection holds a receiver: `true` asks it to finish; all dropped, all are done.
    let (draining, drain) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = limits.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "proxy could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        socket.set_nodelay(true).ok();
        // The socket leaves this runtime's reactor for its lane's.
        let Ok(socket) = socket.into_std() else {
            continue;
        };
        let (lane, seat) = lanes.seat();
        let (http, app, drain) = (http.clone(), app.clone(), drain.clone());
        let send_timeout = limits.send_timeout;
        lane.spawn(async move {
            let _held = (permit, seat);
            let Ok(socket) = tokio::net::TcpStream::from_std(socket) else {
                return;
            };
            // hyper has no write timeout: a client that never reads (pipelining requests it
            // never takes the answers to, or leaving a stream untaken) would hold its
            // connection, and a stream's in-flight slot, for ever.
            let mut socket = tokio_io_timeout::TimeoutStream::new(socket);
            socket.set_write_timeout(Some(send_timeout));
            connection(&http, app, Box::pin(socket), drain).await;
        });
    }
    drop(listener);
    drop(drain);
    draining.send_replace(true);
    draining.closed().await;
}

/// Serves one connection to its end, then lingers: a client whose request was refused before
/// its body was read (a 413 for a body over the cap, a 401 before an upload) is still sending
/// it, and a socket closed with unread data resets the connection — the client would see
/// "connection reset" or "broken pipe" instead of the answer. So the write side is shut (the
/// client reads the answer to its end) and what still comes is read and thrown away, for at
/// most [`LINGER`] and [`LINGER_BYTES`], as nginx's `lingering_close` does.
async fn connection<I>(
    http: &hyper::server::conn::http1::Builder,
    app: Router,
    io: I,
    mut drain: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut asked = *drain.borrow();
    if asked {
        std::pin::Pin::new(&mut conn).graceful_shutdown();
    }
    let served = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            changed = drain.changed(), if !asked => {
                asked = true;
                if changed.is_ok() {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "proxy connection ended");
    }
    // Served: a shutdown need not wait for the lingering.
    drop(drain);
    let mut io = conn.into_parts().io.into_inner();
    if io.shutdown().await.is_err() {
        return;
    }
    let mut left = LINGER_BYTES;
    let mut buf = vec![0u8; 16 << 10];
    let until = tokio::time::sleep(LINGER);
    tokio::pin!(until);
    while left > 0 {
        tokio::select! {
            read = io.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            },
            () = &mut until => return,
        }
    }
}

/// How long a closed connection goes on reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How much a closed connection reads and throws away at most.
const LINGER_BYTES: usize = 16 << 20;

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The accept loop, until a drain has waited for it: a finished task's handle must not be
    /// polled again (tokio panics), and `drain` may be called more than once.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Watches the pool for the console's events.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The threads its connections are served on; they end when it is dropped.
    _lanes: Arc<Lanes>,
}

/// How often the proxy looks at the pool's status for the console's events.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl Proxy {
    /// Binds and serves in the background.
    pub async fn start(state: Arc<ProxyState>, cfg: &ProxyConfig) -> Result<Self, ProxyError> {
        cfg.validate()?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let app = router(state.clone());
        // First: a failure to start them leaves nothing running.
        let lanes = Arc::new(Lanes::per_core("keyturn-serve").map_err(ProxyError::Threads)?);
        let watcher = if cfg.console_enabled() {
            let st = state.clone();
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(WATCH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    st.admin.console.watch_once().await;
                }
            }))
        } else {
            tracing::warn!(
                listen = %cfg.listen,
                "the console and admin API are off: this proxy listens beyond loopback without an admin token ([[serve.admin_tokens]])"
            );
            None
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            app,
            lanes.clone(),
            Limits {
                connections: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
                header_timeout: cfg.header_timeout,
                send_timeout: cfg.body_timeout,
            },
            rx,
        ));
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
            watcher,
            _lanes: lanes,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What its handlers share: waiting counts, the console's events.
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// `http://ip:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, answers requests waiting for an upstream slot with 503 and a retry
    /// delay, drains the calls in flight (up to `grace`), then closes what is left, and ends
    /// its serving threads.
    pub async fn shutdown(mut self, grace: Duration) {
        self.drain(grace).await;
    }

    /// [`Proxy::shutdown`] but for its serving threads, which go on running what requests left
    /// behind (a give-back to a shared ledger, say) until the proxy is dropped: `keyturn serve`
    /// drains, saves the quota state, then drops.
    pub async fn drain(&mut self, grace: Duration) {
        // Requests still waiting for an upstream slot get 503 with a retry delay now; those
        // already upstream finish within the drain.
        self.state.in_flight.close();
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

/// `keyturn console`'s server: the console and admin API alone (no Gemini route), behind the
/// same accept loop and bounds as the proxy's.
#[derive(Debug)]
pub struct ConsoleServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _lanes: Arc<Lanes>,
}

impl ConsoleServer {
    /// Binds `listen` and serves `console` in the background. Beyond loopback the console needs
    /// an admin token: without one this refuses to start ([`ProxyError::ConsoleOpenToTheWorld`]).
    pub async fn start(
        console: Arc<crate::Console>,
        listen: SocketAddr,
        has_admin_token: bool,
    ) -> Result<Self, ProxyError> {
        if !has_admin_token && !listen.ip().is_loopback() {
            return Err(ProxyError::ConsoleOpenToTheWorld(listen));
        }
        let bind_err = |source| ProxyError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let app = Router::new()
            .route(
                "/",
                axum::routing::get(|| async { axum::response::Redirect::to("/console") }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .merge(console.router())
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found") });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let lanes = Arc::new(Lanes::start(1, "keyturn-console").map_err(ProxyError::Threads)?);
        let task = tokio::spawn(serve(
            listener,
            app,
            lanes.clone(),
            Limits {
                connections: Arc::new(Semaphore::new(CONSOLE_CONNECTIONS)),
                header_timeout: Duration::from_secs(10),
                send_timeout: Duration::from_secs(60),
            },
            rx,
        ));
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
            _lanes: lanes,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and lets the requests in flight finish (up to `grace`).
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Open connections `keyturn console` serves at once (a few people and their browsers).
const CONSOLE_CONNECTIONS: usize = 64;
