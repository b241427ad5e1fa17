//! `keyturn seed`: the pipeline on transcripts, and the command line that resumes it.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use keyturn_services::{Env, create_gemini_services};

use super::args::{BatchFallbackArg, SeedArgs};
use super::{Global, fail, interrupts, load, start_metrics};
use crate::batch::{BatchFallback, BatchOptions};
use crate::progress::Progress;
use crate::report::Outcome;
use crate::report::report_and_exit;
use crate::run::{SeedOptions, SeedServices, run_seed};
use crate::term::safe;
use keyturn_services::{BatchFallbackSetting, PipelineMode};

/// A path as one POSIX shell word, for a command line the user can paste back.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `keyturn` and these arguments, each quoted unless it is plainly one shell word.
fn resume_command(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    };
    let mut line = String::from("keyturn");
    for a in args {
        let w = a.to_string_lossy();
        line.push(' ');
        if plain(&w) {
            line.push_str(&w);
        } else {
            line.push_str(&shell_quote(Path::new(&*w)));
        }
    }
    line
}

/// Batch mode, if `--batch` or `[pipeline] mode = "batch"` asks for it: a client on the pool's
/// transport and the options.
fn batch_options(
    cfg: &keyturn_services::Config,
    a: &SeedArgs,
) -> Result<Option<(keyturn_gemini::BatchClient, BatchOptions)>, keyturn_services::ServiceError> {
    let p = &cfg.pipeline;
    if !a.batch && p.mode != PipelineMode::Batch {
        return Ok(None);
    }
    let fallback = match a.batch_fallback {
        Some(BatchFallbackArg::Interactive) => BatchFallback::Interactive,
        Some(BatchFallbackArg::Batch) => BatchFallback::Batch,
        None => match p.batch_fallback {
            BatchFallbackSetting::Interactive => BatchFallback::Interactive,
            BatchFallbackSetting::Batch => BatchFallback::Batch,
        },
    };
    let transport = keyturn_services::transport(cfg, &cfg.http.api_version)?;
    Ok(Some((
        keyturn_gemini::BatchClient::new(transport),
        BatchOptions {
            max_requests: p.batch_max_requests,
            poll: p.batch_poll,
            max_poll: p.batch_max_poll,
            fallback,
            embeddings: p.batch_embeddings,
            max_jobs: p.batch_max_jobs,
            enqueued_tokens: p.batch_enqueued_tokens,
            ..BatchOptions::default()
        },
    )))
}

pub(super) async fn cmd_seed(g: &Global, env: &Env, cwd: &Path, a: SeedArgs) -> ExitCode {
    let cfg = match load(g, env, cwd, a.no_cache) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    if let Err(e) = start_metrics(&cfg) {
        return fail(Outcome::Failed, e);
    }
    let services = match create_gemini_services(&cfg, env, cwd).await {
        Ok(s) => s,
        Err(e) => return fail(e.kind(), e),
    };
    tracing::info!(keys = services.keys.len(), state = %safe(services.state.describe()), "starting");
    let batch = match batch_options(&cfg, &a) {
        Ok(b) => b,
        Err(e) => return fail(e.kind(), e),
    };
    let mut seed_services = SeedServices::of(&services);
    seed_services.batch = batch.as_ref().map(|(client, _)| client.clone());
    let opts = SeedOptions {
        inputs: a.inputs.clone(),
        out: a.out.clone(),
        concurrency: a.concurrency.max(1),
        requests: a.requests.max(1),
        model: a.model,
        embedding_model: a.embedding_model,
        dimensions: Some(a.dimensions),
        chunk_tokens: a.chunk_tokens.max(50),
        follow_links: a.follow_links,
        batch: batch.map(|(_, o)| o),
        ..SeedOptions::default()
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    // `keyturn status` finds the run, and its ETA, in the state folder.
    progress.announce(
        keyturn_store::runs::RunBoard::new(&cfg.state.dir),
        cwd.join(&a.out),
    );
    // The command as it was given, every flag included (global ones like --state-dir and
    // --config too), each word quoted: pasted back, it resumes this very run.
    let resume = resume_command(std::env::args_os().skip(1));
    let result = run_seed(
        opts,
        &seed_services,
        interrupts(),
        Duration::from_secs(5),
        &progress,
    )
    .await;
    let shutdown = services.state.shutdown().await;
    match result {
        Ok(report) => {
            if let Err(e) = shutdown {
                eprintln!(
                    "keyturn: could not save the quota state: {}",
                    safe(&e.to_string())
                );
            }
            report_and_exit(&report, &resume)
        }
        Err(e) => fail(e.kind(), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_lines_quote_paths_as_one_shell_word_each() {
        assert_eq!(shell_quote(Path::new("a b")), "'a b'");
        assert_eq!(shell_quote(Path::new("it's")), "'it'\\''s'");
        let args = [
            "seed",
            "my pods",
            "--out",
            "o",
            "--state-dir",
            "st2",
            "-v",
            "--model",
            "it's",
        ];
        assert_eq!(
            resume_command(args.iter().map(std::ffi::OsString::from)),
            "keyturn seed 'my pods' --out o --state-dir st2 -v --model 'it'\\''s'"
        );
    }
}
