//! Projects that stay in a state until changed (API disabled, out of credits, whole-API limit
//! zero, billing denied), dead keys on the probes, another project's file, the stats, and the
//! simulator's own 429s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::corpus::*;
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{KeyState, Limits, ProjectState};
use serde_json::{Value, json};

#[tokio::test]
async fn a_dead_key_is_refused_on_the_probes_the_same_way() {
    let states = [
        (KeyState::Invalid, "real-17"),
        (KeyState::Deleted, "real-18"),
        (KeyState::Leaked, "real-24"),
        (KeyState::Suspended, ""),
        (KeyState::IpBlocked, "real-28"),
        (KeyState::ReferrerBlocked, "real-29"),
        (KeyState::CredentialsMissing, "real-35"),
        (KeyState::Expired, ""),
        (KeyState::Blocked, ""),
    ];
    let mut cfg = base_config();
    for (i, (state, _)) in states.iter().enumerate() {
        cfg.keys.push(key(
            &secret(10 + i as u32),
            &format!("dead{i}"),
            "p3",
            *state,
        ));
    }
    let s = Sim::start(cfg).await;
    for (i, (state, id)) in states.iter().enumerate() {
        let k = secret(10 + i as u32);
        let (status, body) = s.generate(&k, MODEL).await;
        assert!(status == 400 || status == 401 || status == 403, "{state:?}");
        if !id.is_empty() {
            assert_eq!(
                body,
                expected(&entry(id), &format!("dead{i}"), "p3", MODEL),
                "{state:?}"
            );
        }
        for (pstatus, pbody) in s.probes(&k, MODEL).await {
            assert_eq!(pstatus, status, "{state:?}: the probe is refused too");
            assert_eq!(
                pbody["error"]["status"], body["error"]["status"],
                "{state:?}"
            );
            if *state == KeyState::Blocked {
                // The refusal quotes the RPC: a probe is ModelService's, not GenerativeService's.
                let m = pbody["error"]["message"].as_str().unwrap();
                assert!(m.contains("v1beta.ModelService."), "{m}");
            } else {
                assert_eq!(pbody, body, "{state:?}: refused the same way");
            }
        }
        assert_eq!(s.key_row(&format!("dead{i}")).await["probes"], 4);
    }
    // A scripted leak (no route named) reaches the probes too; the other key of p1 is fine.
    s.script(json!({"shape": "real-24", "key": "k1"})).await;
    for (status, body) in s.probes(&secret(1), MODEL).await {
        assert_eq!((status, body), (403, entry("real-24")["body"].clone()));
    }
    assert!(s.probes(&secret(2), MODEL).await.iter().all(|r| r.0 == 200));
    // A key's state can be changed at run time, and persists until changed again.
    s.admin(
        reqwest::Method::PUT,
        "/admin/keys",
        json!({"label": "k2", "state": "ip-blocked"}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = s.get(&format!("/v1beta/models/{MODEL}"), &secret(2)).await;
        assert_eq!(status, 403);
        assert_eq!(body, expected(&entry("real-28"), "k2", "p1", MODEL));
    }
}

#[tokio::test]
async fn service_disabled_refuses_every_key_of_the_project_on_every_route() {
    let s = Sim::start(base_config()).await;
    let (st, v) = s
        .admin(
            reqwest::Method::PUT,
            "/admin/projects",
            json!({"project": "p1", "state": "service-disabled"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let want = expected(&entry("real-26"), "", "p1", MODEL);
    for k in [secret(1), secret(2)] {
        let mut answers = vec![
            s.generate(&k, MODEL).await,
            s.embed(&k).await,
            s.count(&k, MODEL, hello(None)).await,
        ];
        answers.extend(s.probes(&k, MODEL).await);
        for (status, body) in answers {
            assert_eq!((status, &body), (403, &want));
        }
    }
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200, "p2 is not p1");
    // Scripted by project, the same reach.
    s.script(json!({"shape": "real-26", "project": "p2"})).await;
    let (status, body) = s.get("/v1/models", &secret(3)).await;
    assert_eq!(
        (status, body),
        (403, expected(&entry("real-26"), "", "p2", ""))
    );
}

#[tokio::test]
async fn out_of_credits_refuses_calls_but_answers_probes() {
    let mut cfg = base_config();
    cfg.projects.insert(
        "p1".into(),
        ProjectConfig {
            state: ProjectState::CreditsDepleted,
            ..ProjectConfig::default()
        },
    );
    let s = Sim::start(cfg).await;
    let want = entry("real-16")["body"].clone();
    for k in [secret(1), secret(2)] {
        assert_eq!(s.generate(&k, MODEL).await, (402, want.clone()));
        assert_eq!(s.generate(&k, OTHER).await, (402, want.clone()));
        assert_eq!(s.embed(&k).await, (402, want.clone()));
        assert!(s.probes(&k, MODEL).await.iter().all(|r| r.0 == 200));
        assert_eq!(s.count(&k, MODEL, hello(None)).await.0, 200);
    }
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200);
    let row = &s.stats().await["projects"]["p1"];
    assert_eq!(row["state"], "credits-depleted");
}

#[tokio::test]
async fn whole_api_limit_zero_and_billing_denial_refuse_everything() {
    let s = Sim::start(base_config()).await;
    s.admin(
        reqwest::Method::PUT,
        "/admin/projects",
        json!({"project": "p1", "state": "api-limit-zero"}),
    )
    .await;
    s.admin(
        reqwest::Method::PUT,
        "/admin/projects",
        json!({"project": "p2", "state": "billing-denied"}),
    )
    .await;
    let mut answers = vec![
        s.generate(&secret(1), MODEL).await,
        s.embed(&secret(2)).await,
    ];
    answers.extend(s.probes(&secret(1), MODEL).await);
    for (status, body) in answers {
        assert_eq!(status, 429);
        let info = &body["error"]["details"][0];
        assert_eq!(info["reason"], "RATE_LIMIT_EXCEEDED");
        assert_eq!(
            info["metadata"]["quota_limit"],
            "ApiRequestsPerMinutePerProjectPerRegion"
        );
        assert_eq!(info["metadata"]["quota_limit_value"], "0");
        assert_eq!(info["metadata"]["consumer"], "p1");
    }
    let want = expected(&entry("real-30"), "k3", "p2", MODEL);
    let mut answers = vec![s.generate(&secret(3), MODEL).await];
    answers.extend(s.probes(&secret(3), MODEL).await);
    for a in answers {
        assert_eq!(a, (403, want.clone()));
    }
    // Bad states and shapes from outside are refused.
    for body in [
        json!({"project": "p1", "state": "bankrupt"}),
        json!({"project": "p1", "models_off": {MODEL: "real-99"}}),
        json!({"project": "p1", "models_off": {"gemini-9": "real-05"}}),
        json!({"project": "p1", "files": [""]}),
        json!({"project": "p9", "state": "credits-depleted"}),
    ] {
        let (st, _) = s
            .admin(reqwest::Method::PUT, "/admin/projects", body.clone())
            .await;
        assert_eq!(st, 400, "{body}");
    }
}

#[tokio::test]
async fn another_projects_file_is_refused_only_where_it_is_named() {
    let mut cfg = base_config();
    cfg.projects.insert(
        "p1".into(),
        ProjectConfig {
            files: vec!["files/owned-by-p1".into()],
            ..ProjectConfig::default()
        },
    );
    let s = Sim::start(cfg).await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let foreign = "https://generativelanguage.googleapis.com/v1beta/files/other-project-abc";
    let p1_file = "https://generativelanguage.googleapis.com/v1beta/files/owned-by-p1";
    let refusal = |file: &str| {
        let mut v = entry("real-32")["body"].clone();
        v["error"]["message"] = json!(format!(
            "You do not have permission to access the File {file} or it may not exist."
        ));
        v
    };
    for k in [secret(1), secret(3)] {
        let (status, body) = s.post(&path, &k, hello(Some(foreign))).await;
        assert_eq!((status, body), (403, refusal("other-project-abc")));
        let (status, _) = s.count(&k, MODEL, hello(Some(foreign))).await;
        assert_eq!(status, 403, "countTokens reads the file too");
        assert_eq!(s.post(&path, &k, hello(None)).await.0, 200);
        assert!(s.probes(&k, MODEL).await.iter().all(|r| r.0 == 200));
    }
    // The file p1 created: p1's keys may use it, p2's may not (rotation across uploads).
    assert_eq!(s.post(&path, &secret(2), hello(Some(p1_file))).await.0, 200);
    let (status, body) = s.post(&path, &secret(3), hello(Some(p1_file))).await;
    assert_eq!((status, body), (403, refusal("owned-by-p1")));
    let embed = json!({"content": {"parts": [{"fileData": {"fileUri": foreign}}, {"text": "x"}]}});
    let (status, _) = s
        .post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            &secret(1),
            embed,
        )
        .await;
    assert_eq!(status, 403, "an embedding reads the file too");
    // snake_case spelling, in the system instruction.
    let body = json!({"system_instruction": {"parts": [{"file_data": {"file_uri": foreign}}]},
        "contents": [{"parts": [{"text": "hi"}]}]});
    assert_eq!(s.post(&path, &secret(1), body).await.0, 403);
}

#[tokio::test]
async fn stats_count_each_keys_requests_per_route_probes_included() {
    let mut cfg = base_config();
    cfg.keys
        .push(key(&secret(9), "leaked", "p3", KeyState::Leaked));
    let s = Sim::start(cfg).await;
    s.generate(&secret(1), MODEL).await;
    s.generate(&secret(1), MODEL).await;
    s.embed(&secret(1)).await;
    s.get(&format!("/v1beta/models/{MODEL}"), &secret(1)).await;
    s.get("/v1beta/models", &secret(1)).await;
    s.get(&format!("/v1beta/models/{MODEL}"), &secret(9)).await;
    s.count(&secret(9), MODEL, hello(None)).await;
    let k1 = s.key_row("k1").await;
    assert_eq!(
        k1["by_route"],
        json!({"generateContent": 2, "embedContent": 1, "getModel": 1, "listModels": 1})
    );
    assert_eq!(k1["probes"], 2);
    assert_eq!(k1["requests"], 5);
    let leaked = s.key_row("leaked").await;
    assert_eq!(
        leaked["by_route"],
        json!({"getModel": 1, "countTokens": 1}),
        "refused requests are counted"
    );
    assert_eq!(leaked["probes"], 1);
    assert_eq!(leaked["by_status"], json!({"403": 2}));
}

#[tokio::test]
async fn the_simulators_own_429s_have_the_2026_form() {
    // real-00: free-tier per-day on gemini-2.5-flash-lite, limit 20, as sent in 2026.
    let real = entry("real-00")["body"].clone();
    let mut cfg = base_config();
    cfg.models.insert(
        "gemini-2.5-flash-lite".into(),
        Limits::new(1_000, 1_000_000, 20),
    );
    let s = Sim::start(cfg).await;
    for _ in 0..20 {
        assert_eq!(s.generate(&secret(1), "gemini-2.5-flash-lite").await.0, 200);
    }
    let (status, ours) = s.generate(&secret(1), "gemini-2.5-flash-lite").await;
    assert_eq!(status, 429);
    let types = |v: &Value| -> Vec<String> {
        v["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["@type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types(&ours), types(&real), "Help, QuotaFailure, RetryInfo");
    assert_eq!(ours["error"]["details"][0], real["error"]["details"][0]);
    assert_eq!(ours["error"]["details"][1], real["error"]["details"][1]);
    let message = |v: &Value| v["error"]["message"].as_str().unwrap().to_owned();
    let (ours_m, real_m) = (message(&ours), message(&real));
    let cut = |m: &str| m[..m.find("Please retry in").unwrap()].to_owned();
    assert_eq!(
        cut(&ours_m),
        cut(&real_m),
        "ai.dev/rate-limit and the quota line"
    );
    // "Please retry in 41.065029449s." → retryDelay "41s": truncated, not rounded up.
    let secs = ours_m
        .rsplit_once("Please retry in ")
        .unwrap()
        .1
        .trim_end_matches("s.");
    let (whole, frac) = secs.split_once('.').unwrap();
    assert_eq!(frac.len(), 9, "nanoseconds, like the real message: {secs}");
    assert_eq!(
        ours["error"]["details"][2]["retryDelay"],
        format!("{whole}s")
    );

    // limit 0 (real-05's form): the same order, a line per violated quota, no quotaValue.
    let mut cfg = base_config();
    let mut free = ProjectConfig::default();
    free.models.insert(OTHER.into(), Limits::new(0, 0, 0));
    cfg.projects.insert("p1".into(), free);
    let s = Sim::start(cfg).await;
    let (status, ours) = s.generate(&secret(1), OTHER).await;
    assert_eq!(status, 429);
    assert_eq!(types(&ours), types(&entry("real-05")["body"]));
    let m = message(&ours);
    assert_eq!(
        m.matches("\n* Quota exceeded for metric:").count(),
        3,
        "{m}"
    );
    assert!(m.contains("https://ai.dev/rate-limit. "), "{m}");
}
