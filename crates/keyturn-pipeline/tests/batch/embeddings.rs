//! `[pipeline] batch_embeddings`: the chunk and entity embeddings as batch jobs too — the same
//! vectors as interactive calls, resumed after a kill without sending a text twice, failed items
//! retried in later jobs or interactively.

use super::*;

impl World {
    /// Turns `[pipeline] batch_embeddings` on (the `[pipeline]` table ends the file).
    fn batch_embeddings(&self) {
        let path = self.dir.path().join("keyturn.toml");
        let mut cfg = std::fs::read_to_string(&path).unwrap();
        cfg.push_str("batch_embeddings = true\n");
        std::fs::write(path, cfg).unwrap();
    }

    /// Requests in the paid projects' jobs to `model`.
    async fn requests_to(&self, model: &str) -> u64 {
        let mut n = 0;
        for key in [KEYS[1].0, KEYS[3].0] {
            for j in self.jobs(key).await {
                if j["metadata"]["model"] == format!("models/{model}") {
                    n += j["metadata"]["batchStats"]["requestCount"]
                        .as_str()
                        .unwrap_or("0")
                        .parse::<u64>()
                        .unwrap();
                }
            }
        }
        n
    }
}

/// Every episode file of a run, by name, without the time it was written.
fn episodes(out: &Path) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    for e in std::fs::read_dir(out.join("episodes")).unwrap() {
        let e = e.unwrap();
        let mut v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("processed_at");
        all.insert(e.file_name().to_string_lossy().into_owned(), v);
    }
    all
}

/// Texts an episode set embeds: its chunks and its entities.
fn texts_of(eps: &BTreeMap<String, Value>) -> u64 {
    eps.values()
        .map(|v| {
            (v["chunks"].as_array().unwrap().len() + v["entities"].as_array().unwrap().len()) as u64
        })
        .sum()
}

/// Calls to `route`, all keys.
fn route_calls(stats: &Value, route: &str) -> u64 {
    stats["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["by_route"][route].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_embeddings_are_the_interactive_vectors_and_no_interactive_embedding_is_sent() {
    let w = World::new(1).await;
    w.batch_embeddings();
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let before = w.sim.state().stats();
    let batch = w.dir.path().join("out-batch");
    let o = w.run(w.command(&batch, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let after = w.sim.state().stats();

    let (ei, eb) = (episodes(&inter), episodes(&batch));
    assert_eq!(ei.len(), 5);
    assert_eq!(eb, ei, "episode files (vectors included) differ");
    assert_eq!(graph(&batch), graph(&inter));
    // The embeddings went as jobs, each text once; nothing was embedded interactively.
    assert_eq!(w.requests_to(EMBED).await, texts_of(&ei));
    for route in ["batchEmbedContents", "embedContent", "generateContent"] {
        assert_eq!(
            route_calls(&after, route),
            route_calls(&before, route),
            "{route}: {}",
            after["keys"]
        );
    }
    assert!(route_calls(&after, "asyncBatchEmbedContent") >= 2);
    // Each job only with keys of its own project; every job left the checkpoint.
    assert_eq!(after["resources"]["cross_project_uses"], 0, "{after}");
    let cp: Value = serde_json::from_slice(
        &std::fs::read(batch.join(".keyturn-checkpoint/checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert!(cp["batches"].is_null(), "{cp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_an_embeddings_job_runs_resumes_it_without_sending_any_text_twice() {
    let w = World::new(2).await;
    w.batch_embeddings();
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));

    let out = w.dir.path().join("out-batch");
    let mut child = w.command(&out, &["--batch"]).spawn().unwrap();
    let cp_path = out.join(".keyturn-checkpoint/checkpoint.json");
    // Watched on the filesystem: an embeddings job accepted and recorded with its name.
    let embedding_named = |v: &Value| {
        v["batches"].as_object().is_some_and(|b| {
            b.iter()
                .any(|(d, r)| d.ends_with("-embed") && r["name"].is_string())
        })
    };
    let mut seen = false;
    for _ in 0..1200 {
        if let Ok(bytes) = std::fs::read(&cp_path)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && embedding_named(&v)
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(seen, "no embeddings job was ever recorded");
    child.kill().unwrap();
    child.wait().unwrap();

    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert!(r["batch"]["resumed"].as_u64().unwrap() >= 1, "{r}");
    let ei = episodes(&inter);
    assert_eq!(episodes(&out), ei);
    assert_eq!(graph(&out), graph(&inter));
    // No text went in two jobs: the rerun polled the recorded ones.
    assert_eq!(w.requests_to(EMBED).await, texts_of(&ei));
    assert_eq!(w.requests_to(FLASH).await, chunks_of(&report(&inter)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_embedding_items_are_retried_in_later_jobs_then_fall_back_to_interactive_calls() {
    // Every 7th request of every job fails, and every episode has 7 texts or more: its
    // embeddings fail in every job.
    let w = World::with_item_errors(1, 7).await;
    w.batch_embeddings();
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let ei = episodes(&inter);

    // Without a fallback: each episode's texts go to two later jobs, then it fails, named.
    let before = w.requests_to(EMBED).await;
    let batch = w.dir.path().join("out-batch");
    let o = w.run(w.command(&batch, &["--batch"])).await;
    assert!(!o.status.success());
    let r = report(&batch);
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 5, "{r}");
    for f in failed {
        assert!(
            f.to_string()
                .contains("batch embedding items failed 3 times"),
            "{f}"
        );
    }
    assert_eq!(w.requests_to(EMBED).await - before, 3 * texts_of(&ei));

    // With the interactive fallback: the failed texts are embedded interactively, and every
    // episode file is the interactive run's.
    let stats = w.sim.state().stats();
    let fallback = w.dir.path().join("out-fallback");
    let o = w
        .run(w.command(&fallback, &["--batch", "--batch-fallback", "interactive"]))
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&fallback);
    assert!(r["batch"]["items_failed"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["batch"]["interactive_episodes"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(episodes(&fallback), ei);
    assert!(
        route_calls(&w.sim.state().stats(), "batchEmbedContents")
            > route_calls(&stats, "batchEmbedContents")
    );
}
