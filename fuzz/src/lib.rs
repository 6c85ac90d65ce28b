//! What the fuzz targets share: the fixed key set (`fuzz/keys/`, public half in `keys/jwks.json`), the issuer the
//! caller-auth target trusts, and a way to cut one input into lines.

/// The issuer of every token the caller-auth target accepts.
pub const ISS: &str = "https://idp.fuzz.test/";
/// Their audience.
pub const AUD: &str = "credgate";
/// The scope the fuzzed route requires.
pub const SCOPE: &str = "read";
/// The claim the fuzzed route requires, and the value it requires.
pub const AZP: (&str, &str) = ("azp", "billing");

/// The public JWKS of the fixed keys (written by `cargo run --bin seeds`).
pub fn jwks_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/jwks.json")
}

/// The input's lines (split on `\n`), at most `max`: targets read a request head or several values from one input.
pub fn lines(data: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').take(max)
}

/// A current-thread runtime for the targets whose code is async (nothing is awaited on the network).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}
