//! The simulator sends every error shape of the real-body corpus, scripted by id, and answers the
//! cost-free probes (`GET models…`) the way the real service does in each case, for the
//! refusals scripts send; the states a project stays in are in `project_states.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::corpus::*;
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{ProjectState, Route, ScriptRule, SimConfig};
use serde_json::{Value, json};

#[test]
fn the_corpus_copy_is_byte_equal_to_the_classifiers() {
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/data/gemini-errors");
    let there = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../keyturn-gemini/tests/data/gemini-errors"
    );
    for file in ["bodies.json", "README.md"] {
        let a = std::fs::read(format!("{here}/{file}")).unwrap();
        let b = std::fs::read(format!("{there}/{file}")).unwrap();
        assert!(
            a == b,
            "{file}: the simulator's copy and keyturn-gemini's differ; copy the newer over the other"
        );
    }
    // What is compiled in is that file.
    assert_eq!(
        keyturn_sim::corpus::BODIES_JSON.as_bytes(),
        std::fs::read(format!("{here}/bodies.json")).unwrap()
    );
    // Every entry names where it was seen.
    for e in corpus() {
        assert!(!e["source"].as_str().unwrap().is_empty(), "{}", e["id"]);
    }
}

#[tokio::test]
async fn every_corpus_id_can_be_scripted_and_comes_back_as_the_real_body() {
    let s = Sim::start(base_config()).await;
    let entries = corpus();
    assert!(entries.len() >= 34);
    for e in &entries {
        let id = e["id"].as_str().unwrap();
        let text = serde_json::to_string(&e["body"]).unwrap();
        if !NAMED_MODELS.iter().any(|(i, _)| *i == id) {
            assert!(
                !text.contains("models/") && !text.contains("\"model\""),
                "{id} names a model: add it to NAMED_MODELS"
            );
        }
        let (st, _) = s
            .script(json!({"shape": id, "key": "k1", "model": MODEL, "times": 1}))
            .await;
        assert_eq!(st, 200, "{id}");
        let (status, body) = s.generate(&secret(1), MODEL).await;
        assert_eq!(
            u64::from(status),
            e["status"].as_u64().unwrap(),
            "{id}: {body}"
        );
        assert_eq!(body, expected(e, "k1", "p1", MODEL), "{id}");
        assert!(
            !body.to_string().contains(&secret(1)),
            "{id}: the key itself is never in a scripted body"
        );
        // Spent after one answer: the next request is served.
        assert_eq!(s.generate(&secret(1), MODEL).await.0, 200, "{id}");
    }
    // Another key and another model were never touched by the scripts.
    assert_eq!(s.generate(&secret(2), MODEL).await.0, 200);
    assert_eq!(s.key_row("k1").await["by_status"]["200"], entries.len());
}

#[tokio::test]
async fn scripts_load_from_toml_and_count_down() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sim.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[[keys]]
key = "{k1}"
label = "k1"
project = "p1"
[[keys]]
key = "{k3}"
label = "k3"
project = "p2"

[projects."p9"]
state = "credits-depleted"
models_off = {{ "{MODEL}" = "real-20" }}
files = ["files/abc123"]

[[script]]
shape = "real-39"
project = "p1"
model = "{OTHER}"
method = "generateContent"
times = 2

[[script]]
shape = "real-09"
key = "k3"
"#,
            k1 = secret(1),
            k3 = secret(3)
        ),
    )
    .unwrap();
    let cfg = SimConfig::from_file(&p).unwrap();
    assert_eq!(
        cfg.script[0],
        ScriptRule {
            shape: "real-39".into(),
            key: None,
            project: Some("p1".into()),
            model: Some(OTHER.into()),
            method: Some(Route::GenerateContent),
            times: Some(2),
        }
    );
    let p9 = &cfg.projects["p9"];
    assert_eq!(p9.state, ProjectState::CreditsDepleted);
    assert_eq!(p9.models_off[MODEL], "real-20");
    assert_eq!(cfg.file_owner("abc123"), Some("p9"));
    let s = Sim::start(cfg).await;
    let overloaded = entry("real-39");
    for _ in 0..2 {
        let (st, body) = s.generate(&secret(1), OTHER).await;
        assert_eq!((st, &body), (503, &overloaded["body"]));
    }
    let (_, listed) = s.get("/admin/script", "").await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the first is spent: {listed}"
    );
    assert_eq!(listed[0]["shape"], "real-09");
    assert_eq!(listed[0]["remaining"], Value::Null, "always");
    assert_eq!(s.generate(&secret(1), OTHER).await.0, 200);
    // Always, on every call of k3, but a probe still answers (a throttle is not about the key).
    for _ in 0..3 {
        assert_eq!(s.generate(&secret(3), OTHER).await.0, 429);
    }
    assert!(s.probes(&secret(3), OTHER).await.iter().all(|r| r.0 == 200));
    let (st, _) = s
        .admin(reqwest::Method::DELETE, "/admin/script", json!(null))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.generate(&secret(3), OTHER).await.0, 200);
}

#[tokio::test]
async fn scripts_from_outside_are_checked() {
    let s = Sim::start(base_config()).await;
    for (rule, says) in [
        (json!({"shape": "real-99"}), "real-99"),
        (json!({"shape": "real-26", "times": 0}), "times"),
        (json!({"shape": "real-26", "key": "nobody"}), "nobody"),
        (json!({"shape": "real-26", "project": "p9"}), "p9"),
        (json!({"shape": "real-26", "model": "gemini-9"}), "gemini-9"),
        (
            json!({"shape": "real-26", "method": "deleteModel"}),
            "deleteModel",
        ),
        (json!({"shape": "real-26", "colour": "red"}), "colour"),
        (
            json!({"shape": "real-26", "model": MODEL, "method": "listModels"}),
            "listModels",
        ),
        (
            json!({"shape": "real-26", "key": "k1", "project": "p2"}),
            "p2",
        ),
        (json!([{"shape": "real-26"}, {"shape": "nope"}]), "nope"),
    ] {
        let (st, v) = s.script(rule.clone()).await;
        assert_eq!(st, 400, "{rule}");
        assert!(v["error"].as_str().unwrap().contains(says), "{rule}: {v}");
    }
    // Nothing of a refused list was kept.
    assert_eq!(s.get("/admin/script", "").await.1, json!([]));
    let mut cfg = base_config();
    cfg.script.push(ScriptRule {
        shape: "real-\u{7}26".into(),
        key: None,
        project: None,
        model: None,
        method: None,
        times: None,
    });
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("real-26") && !e.contains('\u{7}'),
        "named, without the control character: {e}"
    );
    let mut cfg = base_config();
    let mut p1 = ProjectConfig::default();
    p1.models_off.insert(MODEL.into(), "real-98".into());
    cfg.projects.insert("p1".into(), p1);
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("models_off") && e.contains("real-98"), "{e}");
}

#[tokio::test]
async fn a_per_model_refusal_still_answers_the_probes() {
    let mut cfg = base_config();
    let mut p2 = ProjectConfig::default();
    p2.models_off.insert(MODEL.into(), "real-05".into());
    cfg.projects.insert("p2".into(), p2);
    let s = Sim::start(cfg).await;
    // A bare 403 on one model for every key of p1, scripted.
    let (st, _) = s
        .script(json!({"shape": "real-34", "project": "p1", "model": MODEL}))
        .await;
    assert_eq!(st, 200);
    for k in [secret(1), secret(2)] {
        let (status, body) = s.generate(&k, MODEL).await;
        assert_eq!((status, body), (403, entry("real-34")["body"].clone()));
        for (status, body) in s.probes(&k, MODEL).await {
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(s.generate(&k, OTHER).await.0, 200, "another model works");
        assert_eq!(s.embed(&k).await.0, 200);
    }
    // p2: the model is off with real-05's limit 0, named for this model; probes answer.
    let (status, body) = s.generate(&secret(3), MODEL).await;
    assert_eq!(status, 429);
    assert_eq!(body, expected(&entry("real-05"), "k3", "p2", MODEL));
    assert!(s.probes(&secret(3), MODEL).await.iter().all(|r| r.0 == 200));
    assert_eq!(s.generate(&secret(3), OTHER).await.0, 200);
    // Turned back on at run time.
    let (st, _) = s
        .admin(
            reqwest::Method::PUT,
            "/admin/projects",
            json!({"project": "p2", "models_off": {}}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200);
}
