//! The credgate binary: parse the command line and hand over to [`credgate::cli`].

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: every request allocates and frees hyper's 8 KiB read buffers and a
/// multi-kilobyte request future, sizes where glibc takes its slow, lock-and-consolidate path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    credgate::cli::main()
}
