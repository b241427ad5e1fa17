//! Injected faults: which one (if any) an answer gets, and the broken answers themselves.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use rand::Rng;
use serde_json::Value;

use crate::config::Faults;

/// What fault, if any, this request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    Internal,
    Overloaded,
    Deadline,
    Bare429,
    Drop,
    Malformed,
}

pub(crate) fn draw_fault(f: &Faults) -> (Fault, u64) {
    let mut rng = rand::rng();
    let delay = f.latency_ms
        + if f.jitter_ms > 0 {
            rng.random_range(0..=f.jitter_ms)
        } else {
            0
        };
    let r: f64 = rng.random();
    let mut acc = 0.0;
    for (p, fault) in [
        (f.p500, Fault::Internal),
        (f.p503, Fault::Overloaded),
        (f.p504, Fault::Deadline),
        (f.p429_bare, Fault::Bare429),
        (f.p_drop, Fault::Drop),
        (f.p_malformed, Fault::Malformed),
    ] {
        acc += p;
        if r < acc {
            return (fault, delay);
        }
    }
    (Fault::None, delay)
}

pub(crate) fn dropped() -> Response {
    // A body that fails mid-way: hyper aborts the connection without a complete response.
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("simulated dropped connection"))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

pub(crate) fn malformed(body: &Value) -> Response {
    let full = serde_json::to_vec(body).unwrap_or_default();
    let cut = full[..full.len() / 2].to_vec();
    let mut r = Response::new(Body::from(cut));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}
