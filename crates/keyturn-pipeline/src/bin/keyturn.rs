//! `keyturn`: see `keyturn --help`.

// The proxy's request path allocates for every parsed body, header map and label; glibc's malloc
// and free were 17 % of `keyturn serve`'s profile under load (issue 18). mimalloc's thread-local
// free lists cost a fraction of that. Only the binary chooses: the libraries stay allocator-agnostic.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keyturn_pipeline::cli::main()
}
