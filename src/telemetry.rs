//! Logging: `tracing` with structured fields to stderr, filtered by `RUST_LOG`
//! (default `info`). Set up once, in `main`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, at the start of `main`.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
