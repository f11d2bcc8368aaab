//! Service logging with `tracing`: text or JSON lines on stderr, at info (or
//! debug with `[DEFAULT] debug`), overridable with `RUST_LOG`. RPC spans carry
//! the request id and instance uuid, so every line of an operation can be
//! found by either. Secrets never reach a log line: the types that hold them
//! (transport URLs, contexts) print redacted forms.
//!
//! The level filter can be replaced while the service runs ([`set_debug`]):
//! SIGHUP re-reads `[DEFAULT] debug`, as oslo services do.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Why the log levels could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// [`init`] was not called (or another subscriber was installed first).
    #[error("logging was not initialised by this process")]
    NotInitialised,
    /// The subscriber refused the new filter.
    #[error("cannot replace the log filter: {0}")]
    Reload(String),
    /// `--log-file` cannot be opened for appending.
    #[error("cannot open the log file {path}: {source}")]
    File {
        /// The file given.
        path: std::path::PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },
}

type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the installed filter; set once by [`init`].
static RELOAD: OnceLock<Reloader> = OnceLock::new();

/// The filter for `debug`; `RUST_LOG`, when set, wins (an operator's
/// explicit override survives a reload too).
fn filter(debug: bool) -> EnvFilter {
    let default = if debug { "debug,lapin=info,hyper=info,reqwest=info,h2=info" } else { "info,lapin=warn" };
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the global subscriber writing to stderr; a second call is a no-op.
pub fn init(debug: bool, json: bool) {
    let _ = init_to(debug, json, None);
}

/// Installs the global subscriber, appending to `log_file` when given
/// (`--log-file`), else writing to stderr; a second call is a no-op.
pub fn init_to(debug: bool, json: bool, log_file: Option<&std::path::Path>) -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, ansi) = match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::File { path: path.to_path_buf(), source })?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter(debug)).with_writer(writer).with_ansi(ansi);
    let reloader: Reloader = if json {
        let builder = builder.json().flatten_event(true).with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_err() {
            return Ok(());
        }
        Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_err() {
            return Ok(());
        }
        Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
    };
    let _ = RELOAD.set(reloader);
    Ok(())
}

/// Switches between the info and debug levels of [`init`] at run time.
pub fn set_debug(debug: bool) -> Result<(), LoggingError> {
    let reload = RELOAD.get().ok_or(LoggingError::NotInitialised)?;
    reload(filter(debug)).map_err(LoggingError::Reload)
}
