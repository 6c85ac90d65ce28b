//! The credgate binary: parse the command line and hand over to [`credgate::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    credgate::cli::main()
}
