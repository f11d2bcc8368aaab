//! Service logging with `tracing`: text or JSON lines on stderr, at info (or
//! debug with `[DEFAULT] debug`), overridable with `RUST_LOG`. RPC spans carry
//! the request id and instance uuid, so every line of an operation can be
//! found by either. Secrets never reach a log line: the types that hold them
//! (transport URLs, contexts) print redacted forms.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call is a no-op.
pub fn init(debug: bool, json: bool) {
    let default = if debug { "debug,lapin=info,hyper=info,reqwest=info,h2=info" } else { "info,lapin=warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
