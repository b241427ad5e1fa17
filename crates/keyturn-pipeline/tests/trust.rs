//! The real `keyturn` binary against hostile upstreams, over real sockets: redirects to another
//! host, paths smuggled through encoded model names, error bodies built to crash or to leak a
//! key, keys in successful answers, and clients that open connections and send nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

const KEYS: &[&str] = &["made-up-trust-key-one", "made-up-trust-key-two"];
const FLASH: &str = "gemini-2.5-flash";

/// What an upstream saw: method, path (as sent, undecoded) and the key header.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    key: Option<String>,
}

type Handler = Arc<dyn Fn(&Method, &str, &HeaderMap) -> Response + Send + Sync>;

/// A local HTTP server that records every request and answers with `handler`.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start(handler: Handler) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let handler = handler.clone();
            let log = log.clone();
            async move {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let key = req
                    .headers()
                    .get("x-goog-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                log.lock().unwrap().push(Seen {
                    method: req.method().clone(),
                    path: path.clone(),
                    key,
                });
                handler(req.method(), &path, req.headers())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

fn model_json(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or_default();
    serde_json::json!({"name": format!("models/{name}"), "supportedGenerationMethods": ["generateContent"]})
        .to_string()
}

fn generate_json(text: &str) -> String {
    format!(
        "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}],\"role\":\"model\"}},\"finishReason\":\"STOP\"}}],\"usageMetadata\":{{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"totalTokenCount\":5}}}}"
    )
}

/// A well-behaved upstream for any model: model info on GET, an answer on POST.
fn answers(method: &Method, path: &str) -> Response {
    if method == Method::GET {
        json(StatusCode::OK, model_json(path))
    } else if path.contains(":countTokens") {
        json(StatusCode::OK, "{\"totalTokens\":3}".into())
    } else {
        json(StatusCode::OK, generate_json("fine"))
    }
}

/// Each character as a JSON `\uXXXX` escape.
fn json_escaped(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys: String = KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} label=k{i} project=p{i}\n"))
            .collect();
        std::fs::write(dir.path().join("keys.txt"), keys).unwrap();
        let toml = format!(
            "[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 4\n{toml}"
        );
        std::fs::write(dir.path().join("keyturn.toml"), toml).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, base_url: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYTURN_KEYS_FILE", self.path().join("keys.txt"))
            .env("KEYTURN_CONFIG", self.path().join("keyturn.toml"))
            .env("KEYTURN_STATE_DIR", self.path().join("state"))
            .env("GEMINI_BASE_URL", base_url)
            .current_dir(self.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    async fn run(&self, base_url: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
        let mut c = self.command(base_url, args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    /// `keyturn serve` on a port it picks itself (`--listen 127.0.0.1:0`: no port probed and
    /// raced for), at the address it prints, waited for until it answers `/healthz`.
    async fn serve(&self, base_url: &str) -> Served {
        let mut child = self
            .command(base_url, &["serve", "--listen", "127.0.0.1:0"])
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (stdout, head) = tokio::task::spawn_blocking(move || {
            let mut head = String::new();
            while !head.contains("keyturn serve listening on ") {
                if stdout.read_line(&mut head).unwrap() == 0 {
                    break;
                }
            }
            (stdout, head)
        })
        .await
        .unwrap();
        let addr = head
            .split("keyturn serve listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("keyturn serve printed no address: {head}"))
            .parse()
            .unwrap();
        let served = Served {
            child,
            addr,
            head,
            stdout,
        };
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(format!("{}/healthz", served.url())).await
                && r.status() == 200
            {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("keyturn serve did not come up");
    }
}

struct Served {
    child: Child,
    addr: SocketAddr,
    /// What it printed before its address, and the rest of its stdout.
    head: String,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the proxy (SIGTERM) and returns what it printed.
    fn stop(mut self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let o = self.child.wait_with_output().unwrap();
        format!("{}{rest}{}", self.head, text(&o))
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No key, in any spelling, anywhere in `s`.
fn assert_no_key(s: &str) {
    for k in KEYS {
        assert!(!s.contains(k), "a key leaked: {s}");
        assert!(
            !s.contains(&json_escaped(k)),
            "a \\u-escaped key leaked: {s}"
        );
    }
}

/// One raw HTTP/1.1 request, the path sent exactly as given (no client normalises it).
fn raw_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn write_episode(d: &Dir) {
    let inputs = d.path().join("in/show");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(
        inputs.join("ep.txt"),
        "Ada: We talked about rivers and the sea for a long while today.\n",
    )
    .unwrap();
}

fn seed_args(d: &Dir) -> Vec<String> {
    vec![
        "seed".to_owned(),
        d.path().join("in").display().to_string(),
        "--out".to_owned(),
        d.path().join("out").display().to_string(),
    ]
}

const HELLO: &str = r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_never_carries_a_key() {
    let catcher = Upstream::start(Arc::new(|m, p, _| answers(m, p))).await;
    // "localhost" and "127.0.0.1" are different hosts to an HTTP client.
    let target = format!("http://localhost:{}", catcher.addr.port());
    let redirector = Upstream::start(Arc::new(move |_, p, _| {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("{target}{p}"))],
        )
            .into_response()
    }))
    .await;
    let d = Dir::new("");

    let check = d.run(&redirector.url(), &["keys", "check"]).await;
    let out = text(&check);
    assert!(out.contains("307") && out.contains("localhost"), "{out}");
    assert_no_key(&out);

    write_episode(&d);
    let seed = d.run(&redirector.url(), &seed_args(&d)).await;
    assert!(!seed.status.success(), "{}", text(&seed));
    assert_no_key(&text(&seed));

    let mut served = d.serve(&redirector.url()).await;
    let (status, body) = raw_request(
        served.addr,
        "POST",
        &format!("/v1beta/models/{FLASH}:generateContent"),
        HELLO,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("307"), "{body}");
    assert_no_key(&body);
    assert!(served.alive());
    assert_no_key(&served.stop());

    let asked = redirector.seen();
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|s| s.key.as_deref().is_some_and(|k| KEYS.contains(&k))),
        "the redirector was asked with pool keys, so each client really met a redirect"
    );
    assert!(
        catcher.seen().is_empty(),
        "the other host got requests: {:?}",
        catcher.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_model_names_reach_no_other_path_and_no_unmetered_method() {
    let upstream = Upstream::start(Arc::new(|m, p, _| answers(m, p))).await;
    // One request a day per project: after those, the proxy must refuse every generateContent.
    let d = Dir::new(&format!(
        "[rotation]\nmax_wait = \"0s\"\n[models.\"{FLASH}\"]\nrpm = 100\ntpm = 1000000\nrpd = 1\n"
    ));
    let served = d.serve(&upstream.url()).await;
    let generate = format!("/v1beta/models/{FLASH}:generateContent");
    let mut admitted = 0;
    while raw_request(served.addr, "POST", &generate, HELLO).0 == 200 {
        admitted += 1;
        assert!(admitted <= KEYS.len(), "the day's quota did not hold");
    }
    assert_eq!(admitted, KEYS.len(), "one request per project");
    let attacks = [
        (
            "POST",
            format!("/v1beta/models/{FLASH}%253AgenerateContent%3Fa%3D:countTokens"),
        ),
        (
            "POST",
            format!("/v1beta/models/{FLASH}%3AgenerateContent%3Fa%3D:countTokens"),
        ),
        (
            "POST",
            "/v1beta/models/..%2Ffiles:generateContent".to_owned(),
        ),
        (
            "POST",
            "/v1beta/models/..%2F..%2Fadmin%2Freset:countTokens".to_owned(),
        ),
        ("POST", "/v1beta/models/%2E%2E:countTokens".to_owned()),
        ("POST", format!("/v1beta/models/{FLASH}%23x:countTokens")),
        ("GET", "/v1beta/models/..%2F..%2Fadmin%2Fstats".to_owned()),
        ("GET", format!("/v1beta/models/{FLASH}%3Fkey%3Dx")),
    ];
    for (method, path) in &attacks {
        let (status, body) = raw_request(served.addr, method, path, HELLO);
        assert!(
            status == 400 || status == 404,
            "{method} {path} answered {status}: {body}"
        );
        if status == 400 {
            assert!(body.contains("INVALID_ARGUMENT"), "{body}");
        }
    }
    served.stop();
    let generates = upstream
        .seen()
        .iter()
        .filter(|s| s.path.contains("generateContent"))
        .count();
    assert_eq!(
        generates, admitted,
        "only the admitted generateContent requests went upstream"
    );
    for s in upstream.seen() {
        let rest = s.path.strip_prefix("/v1beta/models/").unwrap_or_else(|| {
            panic!("upstream saw {} {}", s.method, s.path);
        });
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)),
            "upstream saw {} {}",
            s.method,
            s.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_neither_crash_the_proxy_nor_leak_a_key() {
    let upstream = Upstream::start(Arc::new(|m, p, h| {
        let key = h
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if m == Method::GET {
            return json(StatusCode::OK, model_json(p));
        }
        let model = p
            .trim_start_matches("/v1beta/models/")
            .split(':')
            .next()
            .unwrap_or_default();
        match model {
            "crash" => {
                let message = "AIza ".repeat(20_000);
                json(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{{\"error\":{{\"code\":400,\"message\":\"{message}\",\"status\":\"INVALID_ARGUMENT\"}}}}"
                    ),
                )
            }
            "escaped" => json(
                StatusCode::BAD_REQUEST,
                format!(
                    "{{\"error\":{{\"code\":400,\"message\":\"key {} is bad\",\"status\":\"INVALID_ARGUMENT\"}}}}",
                    json_escaped(&key)
                ),
            ),
            "percent" => json(
                StatusCode::BAD_REQUEST,
                format!(
                    "{{\"error\":{{\"code\":400,\"message\":\"see /x?key={}\",\"status\":\"INVALID_ARGUMENT\"}}}}",
                    key.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
                ),
            ),
            "plain-ok" => json(StatusCode::OK, generate_json(&format!("your key is {key}"))),
            "escaped-ok" => json(
                StatusCode::OK,
                generate_json(&format!("your key is {}", json_escaped(&key))),
            ),
            "stream" => Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(format!(
                    "data: {}\r\n\r\n",
                    generate_json(&format!("streamed {key}"))
                )))
                .unwrap(),
            _ => answers(m, p),
        }
    }))
    .await;
    let d = Dir::new("");
    let mut served = d.serve(&upstream.url()).await;
    let (status, body) = raw_request(
        served.addr,
        "POST",
        "/v1beta/models/crash:generateContent",
        HELLO,
    );
    assert_eq!(status, 400, "{body}");
    assert!(served.alive(), "a crafted error body crashed the proxy");
    for model in ["escaped", "percent", "plain-ok", "escaped-ok"] {
        let (status, body) = raw_request(
            served.addr,
            "POST",
            &format!("/v1beta/models/{model}:generateContent"),
            HELLO,
        );
        assert!(status == 200 || status == 400, "{model}: {body}");
        assert!(body.contains("[key]"), "{model}: {body}");
        assert_no_key(&body);
        assert!(!body.contains("%6D%61%64%65"), "{model}: {body}");
    }
    let (status, body) = raw_request(
        served.addr,
        "POST",
        "/v1beta/models/stream:streamGenerateContent?alt=sse",
        HELLO,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("streamed [key]"), "{body}");
    assert_no_key(&body);
    assert!(served.alive());
    assert_no_key(&served.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_error_body_does_not_crash_seed_or_keys_check() {
    let upstream = Upstream::start(Arc::new(|m, p, _| {
        if m == Method::GET && !p.contains("crash") {
            return answers(m, p);
        }
        let message = "AIza ".repeat(20_000);
        json(
            StatusCode::BAD_REQUEST,
            format!(
                "{{\"error\":{{\"code\":400,\"message\":\"{message}\",\"status\":\"INVALID_ARGUMENT\"}}}}"
            ),
        )
    }))
    .await;
    let d = Dir::new("");
    write_episode(&d);
    let seed = d.run(&upstream.url(), &seed_args(&d)).await;
    // It ends by itself with an exit code (the request was refused): no abort, no signal.
    assert_eq!(seed.status.code(), Some(1), "{}", text(&seed));
    assert_no_key(&text(&seed));
    let check = d
        .run(&upstream.url(), &["keys", "check", "--model", "crash"])
        .await;
    assert!(check.status.code().is_some(), "{}", text(&check));
    assert_no_key(&text(&check));
}

/// Reads until the server closes the connection (or 60 s pass, which fails the test).
fn closed_by_server(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off_and_connections_are_bounded() {
    let upstream = Upstream::start(Arc::new(|m, p, _| answers(m, p))).await;
    let d = Dir::new("[serve]\nheader_timeout = \"1s\"\nmax_connections = 4\n");
    let mut served = d.serve(&upstream.url()).await;
    let addr = served.addr;
    let sockets: Vec<TcpStream> = (0..6)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                // Slowloris: a request line and one header, then nothing more.
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    // Six silent sockets hold the four connection slots; a real request still gets through once
    // the header timeout frees them.
    let generate = format!("/v1beta/models/{FLASH}:generateContent");
    let (status, body) =
        tokio::task::spawn_blocking(move || raw_request(addr, "POST", &generate, HELLO))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let closed = tokio::task::spawn_blocking(move || {
        sockets
            .into_iter()
            .map(closed_by_server)
            .filter(|c| *c)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(
        closed, 6,
        "every slow or silent socket was closed by the proxy"
    );
    // An idle keep-alive connection is closed too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(
        tokio::task::spawn_blocking(move || closed_by_server(s))
            .await
            .unwrap()
    );
    assert!(served.alive());
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_tells_a_client_when_to_come_back_instead_of_holding_it() {
    let upstream = Upstream::start(Arc::new(|m, p, _| answers(m, p))).await;
    // One request a minute per project, a long rotation wait, the proxy's own short bound.
    let d = Dir::new(&format!(
        "[rotation]\nmax_wait = \"90s\"\n[models.\"{FLASH}\"]\nrpm = 1\ntpm = 1000000\nrpd = 1000\n[serve]\nmax_queue_wait = \"1s\"\n"
    ));
    let served = d.serve(&upstream.url()).await;
    let generate = format!("/v1beta/models/{FLASH}:generateContent");
    for _ in KEYS {
        assert_eq!(raw_request(served.addr, "POST", &generate, HELLO).0, 200);
    }
    let (status, answer) = raw_request(served.addr, "POST", &generate, HELLO);
    assert_eq!(status, 429, "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    let delay = body["error"]["details"][0]["retryDelay"].as_str().unwrap();
    let secs: u64 = delay.trim_end_matches('s').parse().unwrap();
    assert!((1..=61).contains(&secs), "{delay}");
    served.stop();
}
