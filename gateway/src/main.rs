// A global allocator built for many small, short-lived allocations; measured faster than
// glibc's malloc on the proxy path. authgate-alloc says why not the `mimalloc` crate's own.
#[global_allocator]
static GLOBAL: authgate_alloc::MiMalloc = authgate_alloc::MiMalloc;

fn main() -> std::process::ExitCode {
    authgate::cli::main()
}
