//! OpenAI-format clients through the proxy, over real sockets: in front of the simulator (which
//! serves Google's OpenAI-compatible routes with the same quotas and error envelope as its native
//! ones), and in front of a local recorder that shows what reached upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderMap;
use keyturn_proxy::{Proxy, ProxyConfig, ProxyState, digest};
use keyturn_services::{Config, Env, Pool, create_pool};
use keyturn_sim::{Limits, Route, ScriptRule, SimConfig, SimKey, Simulator};
use parking_lot::Mutex;
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";
const TOKEN: &str = "kt_made-up-openai-client-token";

/// Made-up pool keys, built here so no key-shaped literal sits in the source.
fn pool_key(n: u32) -> String {
    format!("AIzaSy{}{n:04}", "openaiCompatFiller".repeat(2))
}

fn sim_config(keys: &[(String, &str)], rpm: u64) -> SimConfig {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(rpm, 10_000_000, 100_000));
    models.insert(EMBED.to_owned(), Limits::new(rpm, 10_000_000, 100_000));
    SimConfig {
        keys: keys
            .iter()
            .enumerate()
            .map(|(i, (k, p))| SimKey {
                key: k.clone(),
                label: Some(format!("k{}", i + 1)),
                project: Some((*p).into()),
                state: Default::default(),
            })
            .collect(),
        models,
        ..SimConfig::default()
    }
}

/// A proxy over `keys` ((secret, project)) in front of `upstream`, with `rpm` per model in its
/// own table, no waiting for capacity, and the client token [`TOKEN`] when `tokens`.
async fn proxy_for(
    upstream: &str,
    keys: &[(String, &str)],
    rpm: u64,
    tokens: bool,
    dir: &Path,
) -> (Proxy, Pool) {
    let lines: String = keys
        .iter()
        .enumerate()
        .map(|(i, (k, p))| format!("{k} label=k{} project={p}\n", i + 1))
        .collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nmax_attempts = 3\nbase_backoff = \"1ms\"\nmax_backoff = \"2ms\"\n\
         [models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 10000000\nrpd = 100000\n[models.\"{EMBED}\"]\nrpm = {rpm}\ntpm = 10000000\nrpd = 100000\n",
        dir.join("state").display()
    );
    let mut env = Env::new();
    env.insert(
        "KEYTURN_KEYS_FILE".into(),
        dir.join("keys.txt").display().to_string(),
    );
    env.insert("GEMINI_BASE_URL".into(), upstream.to_owned());
    let mut cfg = Config::from_toml(&toml, Path::new("test.toml")).unwrap();
    cfg.apply_env(&env);
    let pool = create_pool(&cfg, &env, dir).await.unwrap();
    let pcfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: if tokens {
            vec![("team".into(), digest(TOKEN))]
        } else {
            vec![]
        },
        ..ProxyConfig::default()
    };
    let state = Arc::new(ProxyState::new(
        pool.caller_for_version(&cfg, "v1beta").unwrap(),
        pool.caller_for_version(&cfg, "v1").unwrap(),
        pool.ledger.clone(),
        pool.clock.clone(),
        &pcfg,
    ));
    (Proxy::start(state, &pcfg).await.unwrap(), pool)
}

struct Setup {
    sim: Simulator,
    proxy: Proxy,
    pool: Pool,
    _dir: tempfile::TempDir,
}

async fn setup(projects: &[&str], rpm: u64, tokens: bool) -> Setup {
    let keys: Vec<(String, &str)> = projects
        .iter()
        .enumerate()
        .map(|(i, p)| (pool_key(i as u32), *p))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(sim_config(&keys, 1000)).await.unwrap();
    let (proxy, pool) = proxy_for(&sim.base_url(), &keys, rpm, tokens, dir.path()).await;
    Setup {
        sim,
        proxy,
        pool,
        _dir: dir,
    }
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("{}/v1beta/openai/{path}", proxy.base_url())
}

async fn post(proxy: &Proxy, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(proxy, path))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// (requests, input tokens) the proxy's ledger holds for `model` in `project` this minute.
async fn ledger_use(pool: &Pool, project: &str, model: &str) -> (u64, u64) {
    let st = pool.ledger.status().await.unwrap();
    st.scopes
        .iter()
        .find(|s| s.project == project && s.model == model)
        .map_or((0, 0), |s| (s.rpm_used, s.tpm_used))
}

/// Input tokens the simulator admitted for `model` in `project` this minute (its own count).
fn sim_tokens(sim: &Simulator, project: &str, model: &str) -> u64 {
    let st = sim.state().stats();
    st["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == project && s["model"] == model)
        .map_or(0, |s| s["tpm_now"].as_u64().unwrap())
}

fn chat(text: &str) -> Value {
    json!({"model": FLASH, "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": text},
    ]})
}

/// The `data:` events of a stream, `[DONE]` included as it came.
fn events(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect()
}

/// Long enough that the pool's estimate (about a token per 3 bytes) and the simulator's count
/// (about one per word) differ: settling with the estimate would show.
const PROMPT: &str = "tell me about the rivers and the cities along them, the bridges, the boats, \
                      the markets by the water and the people who work there every day of the year";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_is_settled_with_the_answers_usage() {
    let s = setup(&["p1"], 100, true).await;
    let r = post(&s.proxy, "chat/completions", &chat(PROMPT)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let estimate = keyturn_gemini::wire::estimate_input_tokens(
        ("You answer briefly.".len() + PROMPT.len()) as u64,
        2,
    );
    assert_ne!(prompt_tokens, estimate, "the test needs them apart");
    assert_eq!(
        ledger_use(&s.pool, "p1", FLASH).await,
        (1, prompt_tokens),
        "the lease is settled with usage.prompt_tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_relay_chunks_and_usage_only_when_asked() {
    let s = setup(&["p1"], 100, true).await;
    // Asked for: the usage chunk comes through, and the ledger holds what it says.
    let mut b = chat(PROMPT);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let r = post(&s.proxy, "chat/completions", &b).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let ev = events(&text);
    assert_eq!(*ev.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 2, "{text}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["delta"]["content"].is_string())
    );
    let usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
    assert_eq!(usage.len(), 1, "{text}");
    let asked = usage[0]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(ledger_use(&s.pool, "p1", FLASH).await, (1, asked));

    // Not asked for: the proxy asks upstream anyway and settles with it, but the client gets
    // no usage chunk.
    let mut b = chat(PROMPT);
    b["stream"] = json!(true);
    let r = post(&s.proxy, "chat/completions", &b).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let ev = events(&text);
    assert_eq!(*ev.last().unwrap(), "[DONE]", "{text}");
    assert!(ev.len() >= 2, "{text}");
    for e in &ev[..ev.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c.get("usage").is_none(), "{text}");
        assert!(!c["choices"].as_array().unwrap().is_empty(), "{text}");
    }
    assert_eq!(
        ledger_use(&s.pool, "p1", FLASH).await,
        (2, 2 * asked),
        "the same prompt counted again, from the usage the client never saw"
    );
    assert_eq!(sim_tokens(&s.sim, "p1", FLASH), 2 * asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_relayed_event_by_event() {
    use futures::StreamExt;
    let s = setup(&["p1"], 100, true).await;
    s.sim.state().set_faults(keyturn_sim::Faults {
        stream_chunk_delay_ms: 150,
        ..keyturn_sim::Faults::default()
    });
    let mut b = chat(PROMPT);
    b["stream"] = json!(true);
    let r = post(&s.proxy, "chat/completions", &b).await;
    assert_eq!(r.status(), 200);
    let mut reads = 0;
    let mut all = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if !chunk.is_empty() {
            reads += 1;
            all.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let n = events(&all).len();
    assert!(n >= 3, "{all}");
    // The upstream pauses between events; a buffering proxy would deliver them in one piece.
    assert!(reads >= n - 1, "{reads} reads for {n} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_and_response_format_pass_through() {
    let s = setup(&["p1"], 100, true).await;
    let mut b = chat("what is the weather in Lisbon");
    b["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let v: Value = post(&s.proxy, "chat/completions", &b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");

    // An image as a data URL goes upstream untouched beside the text.
    let b = json!({"model": FLASH, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]});
    let r = post(&s.proxy, "chat/completions", &b).await;
    assert_eq!(r.status(), 200);

    let mut b = chat("name a colour");
    b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "c", "schema":
        {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}}});
    let v: Value = post(&s.proxy, "chat/completions", &b)
        .await
        .json()
        .await
        .unwrap();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content["colour"].is_string(), "{content}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_spend_a_request_per_input_and_models_list() {
    let s = setup(&["p1"], 100, true).await;
    let r = post(
        &s.proxy,
        "embeddings",
        &json!({"model": format!("models/{EMBED}"), "input": ["first text", "second text"], "dimensions": 8}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(ledger_use(&s.pool, "p1", EMBED).await.0, 2);

    let client = reqwest::Client::new();
    let v: Value = client
        .get(url(&s.proxy, "models"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"models/gemini-2.5-flash"), "{ids:?}");
    assert!(v["data"][0]["owned_by"] == "google" && v["data"][0]["object"] == "model");
    // By bare id and by the listed one.
    for id in [FLASH, "models/gemini-2.5-flash"] {
        let r = client
            .get(url(&s.proxy, &format!("models/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["id"],
            "models/gemini-2.5-flash"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_429_moves_to_another_project_and_ends_the_scopes_day() {
    let s = setup(&["p1", "p2"], 100, true).await;
    // Every request of project p1 gets a real per-day refusal, in the OpenAI endpoint's list.
    s.sim
        .state()
        .add_scripts(
            vec![ScriptRule {
                shape: "real-01".into(),
                key: None,
                project: Some("p1".into()),
                model: Some(FLASH.into()),
                method: Some(Route::GenerateContent),
                times: None,
            }],
            false,
        )
        .unwrap();
    let refused = |st: &Value| {
        st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["project"] == "p1")
            .unwrap()["by_status"]["429"]
            .as_u64()
            .unwrap_or(0)
    };
    // Whichever key the rotation tries first, p1 is tried within a few requests.
    for i in 0..4 {
        let r = post(&s.proxy, "chat/completions", &chat(&format!("hello {i}"))).await;
        assert_eq!(r.status(), 200, "the proxy retried on p2");
        if refused(&s.sim.state().stats()) > 0 {
            break;
        }
    }
    assert_eq!(refused(&s.sim.state().stats()), 1);
    let st = s.pool.ledger.status().await.unwrap();
    let p1 = st
        .scopes
        .iter()
        .find(|x| x.project == "p1" && x.model == FLASH)
        .unwrap();
    assert_eq!(
        p1.state,
        keyturn_core::ScopeState::Exhausted,
        "a per-day quota ends the scope's day, as on the native routes"
    );
    for i in 0..3 {
        let r = post(&s.proxy, "chat/completions", &chat(&format!("again {i}"))).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        refused(&s.sim.state().stats()),
        1,
        "p1 is not tried again today"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_refusals_are_in_openais_form() {
    let s = setup(&["p1"], 1, true).await;
    let client = reqwest::Client::new();
    // No token, a wrong token.
    for token in [None, Some("kt_wrong")] {
        let mut r = client
            .post(url(&s.proxy, "chat/completions"))
            .json(&chat("x"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        assert!(v["error"]["message"].is_string() && v["error"].get("param").is_some());
    }
    // Not JSON.
    let r = client
        .post(url(&s.proxy, "chat/completions"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    // The one request a minute, then no capacity: 429 with Retry-After.
    assert_eq!(
        post(&s.proxy, "chat/completions", &chat("x"))
            .await
            .status(),
        200
    );
    let r = post(&s.proxy, "chat/completions", &chat("y")).await;
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&secs), "{secs}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        s.sim.state().stats()["by_status"].get("429"),
        None,
        "keyturn refused; Gemini never had to"
    );
}

/// What a recording upstream saw.
#[derive(Default)]
struct Seen {
    /// (path, headers) of every request.
    requests: Vec<(String, HeaderMap)>,
    /// The bodies of the chat completions.
    chats: Vec<Value>,
}

/// A local upstream that answers the model probe, and answers chat completions with an echo of
/// the `Authorization` it received (as a hostile or broken upstream might); streamed, with the
/// usage in the last chunk beside its choice (where Gemini may put it) and `[DONE]` — unless the
/// chat says "cut short", when the stream ends cleanly without `[DONE]` (a truncated answer).
async fn recorder() -> (String, Arc<Mutex<Seen>>) {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;
    let seen = Arc::new(Mutex::new(Seen::default()));
    async fn record(
        State(seen): State<Arc<Mutex<Seen>>>,
        req: Request,
    ) -> axum::response::Response {
        let path = req.uri().path().to_owned();
        let headers = req.headers().clone();
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap();
        seen.lock().requests.push((path.clone(), headers));
        if !path.ends_with("/chat/completions") {
            return axum::Json(json!({"name": format!("models/{FLASH}")})).into_response();
        }
        let body: Value = serde_json::from_slice(&body).unwrap();
        seen.lock().chats.push(body.clone());
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7});
        if body["stream"] != true {
            return axum::Json(json!({"object": "chat.completion", "model": FLASH,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("you sent {auth}")}, "finish_reason": "stop"}],
                "usage": usage}))
            .into_response();
        }
        let first = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "one "}}]});
        let last = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "two"}, "finish_reason": "stop"}], "usage": usage});
        (
            [("content-type", "text/event-stream")],
            if body.to_string().contains("cut short") {
                format!("data: {first}\n\ndata: {last}\n\n")
            } else {
                format!("data: {first}\n\ndata: {last}\n\ndata: [DONE]\n\n")
            },
        )
            .into_response()
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_token_stays_here_and_the_pool_key_goes_only_upstream() {
    let (upstream, seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let key = pool_key(7);
    let (proxy, _pool) = proxy_for(&upstream, &[(key.clone(), "p1")], 100, true, dir.path()).await;
    let r = post(&proxy, "chat/completions", &chat("hello")).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&key),
        "the pool key reached the client: {text}"
    );
    assert!(text.contains("you sent Bearer"), "{text}");
    let seen = seen.lock();
    let call = seen
        .requests
        .iter()
        .find(|(p, _)| p == "/v1beta/openai/chat/completions")
        .expect("the call went upstream");
    assert_eq!(
        call.1["authorization"].to_str().unwrap(),
        format!("Bearer {key}"),
        "the pool key, as a bearer token"
    );
    for (path, headers) in &seen.requests {
        for (name, value) in headers {
            assert!(
                !value.to_str().unwrap_or_default().contains(TOKEN),
                "the client's token reached upstream in {name} of {path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_asks_upstream_for_usage_and_hides_it_beside_choices() {
    let (upstream, seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, pool) = proxy_for(&upstream, &[(pool_key(3), "p1")], 100, true, dir.path()).await;
    let mut b = chat("hello");
    b["stream"] = json!(true);
    b["stream_options"] = json!({"other_option": 1});
    let text = post(&proxy, "chat/completions", &b)
        .await
        .text()
        .await
        .unwrap();
    let ev = events(&text);
    assert_eq!(ev.len(), 3, "{text}");
    assert_eq!(ev[2], "[DONE]");
    let last: Value = serde_json::from_str(ev[1]).unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"], "stop",
        "the chunk itself is kept"
    );
    assert!(last.get("usage").is_none(), "{text}");
    assert_eq!(
        seen.lock().chats[0]["stream_options"],
        json!({"other_option": 1, "include_usage": true}),
        "asked upstream, the client's other options kept"
    );
    assert_eq!(ledger_use(&pool, "p1", FLASH).await, (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_names_and_smuggled_paths_never_reach_upstream() {
    let (upstream, seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _pool) = proxy_for(&upstream, &[(pool_key(1), "p1")], 100, true, dir.path()).await;
    for model in [
        json!("../../v1beta/models/gemini-2.5-flash:generateContent"),
        json!("gemini-2.5-flash?key=x"),
        json!("gemini-2.5-flash/../../admin"),
        json!("models/"),
        json!(""),
        json!(42),
        Value::Null,
    ] {
        let mut b = chat("x");
        b["model"] = model.clone();
        for path in ["chat/completions", "embeddings"] {
            let r = post(&proxy, path, &b).await;
            assert_eq!(r.status(), 400, "{model} on {path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        }
    }
    for path in [
        "models/..%2F..%2Fadmin",
        "models/gemini%3FgenerateContent",
        "models/a/b",
    ] {
        let r = reqwest::Client::new()
            .get(url(&proxy, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    assert!(
        seen.lock().requests.is_empty(),
        "nothing reached upstream: {:?}",
        seen.lock()
            .requests
            .iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_done_is_not_passed_off_as_whole() {
    let (upstream, _seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, pool) = proxy_for(&upstream, &[(pool_key(4), "p1")], 100, true, dir.path()).await;
    let mut b = chat("cut short");
    b["stream"] = json!(true);
    let text = post(&proxy, "chat/completions", &b)
        .await
        .text()
        .await
        .unwrap();
    let ev = events(&text);
    assert_eq!(ev.len(), 2, "what came is relayed: {text}");
    assert!(
        !ev.contains(&"[DONE]"),
        "an OpenAI stream that ended without [DONE] was cut short: the client must not be told it is whole: {text}"
    );
    // Settled as a broken stream (a transient failure), not as a success with its usage.
    assert_ne!(ledger_use(&pool, "p1", FLASH).await, (1, 3));
}
