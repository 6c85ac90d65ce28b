//! The credgate binary: parse the command line and hand over to [`credgate::cli`].

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: every request allocates and frees hyper's 8 KiB read buffers and a
/// multi-kilobyte request future, sizes where glibc takes its slow, lock-and-consolidate path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages off (what mimalloc's `allow_thp=0` does): where the kernel applies them always, each 2 MiB
    // of heap touched was made resident whole, and idle connections cost double (BENCHMARKS.md, "Idle connections").
    // Not fatal: a kernel without the call serves all the same, with more memory.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    credgate::cli::main()
}
