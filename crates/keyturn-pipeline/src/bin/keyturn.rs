//! `keyturn`: see `keyturn --help`.

fn main() -> std::process::ExitCode {
    keyturn_pipeline::cli::main()
}
