//! The Gemini simulator on its own (also available as `keyturn sim`).

use clap::Parser;
use keyturn_sim::{SimArgs, Simulator};

#[derive(Debug, Parser)]
#[command(
    name = "keyturn-sim",
    about = "A faithful Gemini API simulator",
    version
)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // the binary's UI
#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match cli.sim.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyturn-sim: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match Simulator::start(cfg).await {
        Ok(sim) => {
            println!("keyturn-sim listening on {}", sim.base_url());
            println!("GEMINI_BASE_URL={}", sim.base_url());
            sim.wait().await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keyturn-sim: cannot listen: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
