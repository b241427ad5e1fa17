//! Gemini's batch limits per project, kept by `seed --batch` before it submits: with keyturn's
//! `[pipeline] batch_max_jobs` and `batch_enqueued_tokens` set to the simulator's limits, not one
//! job is refused; unset (higher than the simulator's), the first refusal of each project
//! teaches its limit and the run still finishes.
//!
//! The simulator counts ⌈chars / 4⌉ tokens of each request's instruction and transcript
//! excerpt: the sample set's five episodes are 1090, 838, 654, 612 and 426 tokens (3620 in
//! all); keyturn's estimate of the same requests is 1495, 1150, 897, 841 and 583 (4966).

use super::*;

/// The simulator's limits: `jobs` jobs at once per project, 2500 enqueued tokens per project
/// and model (about three of the episodes). Jobs take up to 100 requests, so without limits
/// one job would carry every episode.
async fn low_limits(jobs: u64, pipeline: &str) -> World {
    World::custom(1, &[], pipeline, move |r| {
        r.batch_concurrent = jobs;
        r.batch_enqueued_tokens = 2_500;
    })
    .await
}

const REQUESTS: &str = "batch_max_requests = 100\n";

fn refusals(w: &World) -> u64 {
    w.sim.state().stats()["by_status"]["429"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_matching_gemini_meet_no_refusal_and_the_graph_is_the_interactive_one() {
    // One job at a time: a project's second job waits for its first to end.
    let w = low_limits(
        1,
        &format!("{REQUESTS}batch_max_jobs = 1\nbatch_enqueued_tokens = 2500"),
    )
    .await;
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(refusals(&w), 0, "the interactive run meets no limit");

    let batch = w.dir.path().join("out-batch");
    let o = w.run(w.command(&batch, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        refusals(&w),
        0,
        "no job was refused: {}",
        w.sim.state().stats()["by_status"]
    );
    let r = report(&batch);
    assert_eq!(r["result"]["stop"], "done", "{r}");
    assert_eq!(r["items"]["processed"], 5, "{r}");
    assert_eq!(r["batch"]["limit_refusals"], 0, "{r}");
    assert!(r["batch"]["limits_learned"].as_object().unwrap().is_empty());
    // The jobs were cut to the limits: at least three for five episodes.
    assert!(r["batch"]["submitted"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(graph(&batch), graph(&inter));
    assert_eq!(w.batched_requests().await, chunks_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_limits_are_learned_from_the_first_refusal_and_the_run_finishes() {
    let w = low_limits(2, REQUESTS).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["result"]["stop"], "done", "{r}");
    assert_eq!(r["items"]["processed"], 5, "{r}");
    let b = &r["batch"];
    // Each paid project was refused at most once: what it stated was kept from then on.
    let refused = refusals(&w);
    assert!((1..=2).contains(&refused), "{refused} refusals: {b}");
    assert_eq!(b["limit_refusals"].as_u64().unwrap(), refused, "{b}");
    let learned = b["limits_learned"].as_object().unwrap();
    assert!(!learned.is_empty(), "{b}");
    for (project, l) in learned {
        assert!(project == "proj-a" || project == "proj-b", "{b}");
        assert_eq!(l["enqueued_tokens"][FLASH], 2_500, "{b}");
    }
    assert!(
        text(&o).contains("enqueued input tokens for gemini-2.5-flash lowered to 2500"),
        "{}",
        text(&o)
    );
    // Batch mode stayed on for both paid projects; every chunk in exactly one accepted job.
    let off = b["projects_off"].as_object().unwrap();
    assert_eq!(off.keys().collect::<Vec<_>>(), ["proj-free"], "{b}");
    assert_eq!(w.batched_requests().await, chunks_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_bigger_than_every_projects_limit_is_named_and_fails_instead_of_waiting() {
    // 1200 estimated tokens: the first episode (1495) and the second (1150)... only the first
    // cannot fit an empty project.
    let w = low_limits(2, &format!("{REQUESTS}batch_enqueued_tokens = 1200")).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["processed"], 4, "{r}");
    assert_eq!(r["items"]["failed"], 1, "{r}");
    let reason = r["failed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("too big for a batch job"), "{reason}");
    assert!(reason.contains("1495"), "{reason}");
    assert!(
        text(&o).contains("episode '01 The Engine and the Poet' is too big"),
        "{}",
        text(&o)
    );
    assert_eq!(refusals(&w), 0);

    // With the interactive fallback it is extracted interactively instead.
    let out2 = w.dir.path().join("out2");
    let o = w
        .run(w.command(&out2, &["--batch", "--batch-fallback", "interactive"]))
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out2);
    assert_eq!(r["items"]["processed"], 5, "{r}");
    assert_eq!(r["batch"]["interactive_episodes"], 1, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_429_lowers_the_projects_job_limit_to_what_it_had_live_and_the_run_finishes() {
    // Gemini's documented limits, far above what the run needs.
    let w = World::custom(1, &[], "", |_| {}).await;
    // proj-a's first job meets the bare 429 real Gemini has been seen sending for batch limits.
    w.sim
        .state()
        .add_scripts(
            vec![keyturn_sim::config::ScriptRule {
                shape: "real-09".into(),
                key: None,
                project: Some("proj-a".into()),
                model: None,
                method: Some(keyturn_sim::Route::BatchGenerateContent),
                times: Some(1),
            }],
            false,
        )
        .unwrap();
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["processed"], 5, "{r}");
    let b = &r["batch"];
    assert_eq!(
        refusals(&w),
        1,
        "{}\n{}",
        w.sim.state().stats()["keys"],
        text(&o)
    );
    assert_eq!(b["limit_refusals"], 1, "{b}");
    // Nothing was live there: one job at a time from then on.
    assert_eq!(b["limits_learned"]["proj-a"]["max_jobs"], 1, "{b}");
    assert!(b["limits_learned"]["proj-b"].is_null(), "{b}");
    assert!(
        text(&o).contains(
            "batch limit of project proj-a: jobs at once (a 429 naming no limit) lowered to 1"
        ),
        "{}",
        text(&o)
    );
    assert!(
        b["jobs"]["proj-a"]["succeeded"].as_u64().unwrap_or(0) >= 1,
        "{b}"
    );
    assert_eq!(w.batched_requests().await, chunks_of(&r));
}
