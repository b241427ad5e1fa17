//! `keyturn sim`: the Gemini simulator alone. It reads only its own configuration (its
//! `--config`, TOML or JSON, and its flags), never keyturn.toml; `--metrics-addr` is the only
//! keyturn flag it takes.

use std::process::ExitCode;

use super::{Global, fail};
use crate::report::Outcome;

pub(super) async fn cmd_sim(g: &Global, a: keyturn_sim::SimArgs) -> ExitCode {
    let cfg = match a.to_config() {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    if let Some(addr) = g.metrics_addr {
        if let Err(e) = keyturn_services::install_metrics_exporter(addr) {
            return fail(Outcome::Failed, e);
        }
        println!("metrics on http://{addr}/metrics");
    }
    match keyturn_sim::Simulator::start(cfg).await {
        Ok(sim) => {
            println!("keyturn sim listening on {}", sim.base_url());
            println!("GEMINI_BASE_URL={}", sim.base_url());
            sim.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => fail(Outcome::Failed, format!("cannot listen: {e}")),
    }
}
