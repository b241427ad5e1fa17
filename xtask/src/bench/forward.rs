//! The floor the proxy rows are read against: a bare forwarder built from the same crates as
//! `keyturn serve` (hyper's server through axum, reqwest, a Tokio multi-thread runtime), doing
//! nothing but relay `POST {path}` to the simulator with one made-up key — no client tokens, no
//! quota, no JSON parsing, no retries, no metrics. Whatever it adds over going direct is the
//! second loopback hop and the two HTTP stacks, which no proxy of this design can avoid on the
//! machine; what `keyturn serve` adds beyond it is keyturn's own work.
//!
//! Run as `xtask bench-forward UPSTREAM KEY` in its own process (release, like serve); it prints
//! `forwarding on http://…` and serves until killed.

use std::process::ExitCode;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    base: String,
    key: String,
}

async fn relay(State(up): State<Upstream>, Path(name): Path<String>, body: Bytes) -> Response {
    let url = format!("{}/v1beta/models/{name}", up.base);
    let sent = up
        .client
        .post(url)
        .header("x-goog-api-key", &up.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.bytes().await {
                Ok(b) => (status, [("content-type", "application/json")], b).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// `xtask bench-forward UPSTREAM KEY`.
pub fn main(args: &[String]) -> ExitCode {
    let [base, key] = args else {
        eprintln!("usage: bench-forward UPSTREAM_BASE_URL KEY");
        return ExitCode::from(2);
    };
    let up = Upstream {
        client: reqwest::Client::builder()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client"),
        base: base.trim_end_matches('/').to_owned(),
        key: key.clone(),
    };
    crate::runtime().block_on(async move {
        let app = axum::Router::new()
            .route("/v1beta/models/{name}", axum::routing::post(relay))
            .with_state(up);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        println!("forwarding on http://{addr}");
        let listener = listener.tap_io(|tcp| {
            tcp.set_nodelay(true).ok();
        });
        axum::serve(listener, app).await.ok();
    });
    ExitCode::SUCCESS
}
