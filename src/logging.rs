//! Service logging with `tracing`, in oslo.log's formats, so the log
//! shipping of an OpenStack deployment parses our lines as it parses
//! nova-compute's:
//!
//! - text (default): oslo.log's `logging_context_format_string`,
//!   `%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s
//!   [%(global_request_id)s %(request_id)s %(user_identity)s]
//!   %(instance)s%(message)s`, or `[-]` without a request context
//!   (`logging_default_format_string`); `user_identity` is
//!   `user project domain system_scope user_domain project_domain`, `-`
//!   for what the context lacks, and the logger name is the module path with
//!   dots (`nova_docker.compute.manager`). Fields of an event other than its
//!   message follow it as `key=value`.
//! - JSON (`[DEFAULT] use_json`): one object per line with oslo.log
//!   `JSONFormatter`'s field names (`message`, `asctime`, `name`,
//!   `levelname`, `levelno`, `created`, ..., `extra` holding the context's
//!   values and the event's fields).
//! - journald (`[DEFAULT] use_journal`): the native protocol on
//!   `/run/systemd/journal/socket`, with `MESSAGE`, `PRIORITY`,
//!   `SYSLOG_IDENTIFIER`, `LOGGER_NAME`, `CODE_FILE`, `CODE_LINE` and the
//!   context and event fields upper-cased (`REQUEST_ID`, `INSTANCE_UUID`).
//!   Without that socket the service refuses to start.
//!
//! Where lines go follows oslo.log too: `--log-file`, else `[DEFAULT]
//! log_file` (relative to `log_dir` when that is set), else
//! `<log_dir>/nova-docker.log` when only `log_dir` is set, else stderr.
//!
//! The request context comes from the `rpc` span the RPC server opens for
//! each request (fields `request_id`, `global_request_id`,
//! `user_identity`, `user`, `project`), the instance from an `instance`
//! field of the event or of any enclosing span. Text from outside (names,
//! error messages) never breaks a line: control characters are escaped.
//! Secrets never reach a log line: the types that hold them (transport
//! URLs, contexts) print redacted forms.
//!
//! The level filter can be replaced while the service runs ([`set_debug`]):
//! SIGHUP re-reads `[DEFAULT] debug`, as oslo services do.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, prelude::*};

/// journald's native socket (`sd_journal_sendv`'s).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// [`init`] was not called (or another subscriber was installed first).
    #[error("logging was not initialised by this process")]
    NotInitialised,
    /// The subscriber refused the new filter.
    #[error("cannot replace the log filter: {0}")]
    Reload(String),
    /// The log file cannot be opened for appending.
    #[error("cannot open the log file {path}: {source}")]
    File {
        /// The file given.
        path: PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },
    /// `[DEFAULT] use_journal` is set but journald's socket cannot be used.
    #[error(
        "[DEFAULT] use_journal = true but journald's socket {path} cannot be used ({source}): is systemd-journald running? Unset use_journal to log to a file or stderr"
    )]
    Journal {
        /// The socket tried.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
}

/// Where and how the service logs, from the command line and `[DEFAULT]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogSettings {
    /// `[DEFAULT] debug` or `--debug`: log at debug level.
    pub debug: bool,
    /// `[DEFAULT] use_json`: oslo.log's JSON lines instead of text.
    pub json: bool,
    /// The file to append to (see [`log_file_path`]).
    pub file: Option<PathBuf>,
    /// `[DEFAULT] use_journal`: send to journald's native socket (as well
    /// as to the file, when there is one, as oslo.log does). With neither,
    /// records go to stderr.
    pub journal: bool,
}

/// oslo.log's `_get_log_file_path`: `log_file` (joined to `log_dir` when
/// both are set; an absolute `log_file` stays as it is), or
/// `<log_dir>/nova-docker.log` when only `log_dir` is set.
pub fn log_file_path(log_file: Option<&Path>, log_dir: Option<&Path>) -> Option<PathBuf> {
    match (log_file, log_dir) {
        (Some(file), Some(dir)) => Some(dir.join(file)),
        (Some(file), None) => Some(file.to_path_buf()),
        (None, Some(dir)) => Some(dir.join("nova-docker.log")),
        (None, None) => None,
    }
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

/// Installs the global subscriber as `settings` say; a second call is a
/// no-op. Fails, before anything is installed, when the log file cannot
/// be opened or journald's socket cannot be used.
pub fn init(settings: &LogSettings) -> Result<(), LoggingError> {
    let sinks = Sink::open(settings)?;
    let format = if settings.json { Format::Json } else { Format::Text };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter(settings.debug));
    let subscriber = tracing_subscriber::registry().with(filter).with(OsloLayer::with_sinks(sinks, format));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return Ok(());
    }
    // Crates logging with `log` (bollard, ...) go through the same layer.
    let _ = tracing_log::LogTracer::init();
    let _ = RELOAD.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
    Ok(())
}

/// Switches between the info and debug levels of [`init`] at run time.
pub fn set_debug(debug: bool) -> Result<(), LoggingError> {
    let reload = RELOAD.get().ok_or(LoggingError::NotInitialised)?;
    reload(filter(debug)).map_err(LoggingError::Reload)
}

/// How a record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// oslo.log's text line.
    Text,
    /// oslo.log's `JSONFormatter` object.
    Json,
}

/// Where records go.
pub enum Sink {
    /// Lines to a stream (stderr, a file, or a test's buffer).
    Stream(Mutex<Box<dyn std::io::Write + Send>>),
    /// Datagrams to journald's native socket.
    Journal(std::os::unix::net::UnixDatagram),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Stream(_) => "Stream",
            Sink::Journal(_) => "Journal",
        })
    }
}

impl Sink {
    /// The sinks `settings` ask for: the file and/or journald, else stderr.
    fn open(settings: &LogSettings) -> Result<Vec<Self>, LoggingError> {
        let mut sinks = Vec::new();
        if let Some(path) = &settings.file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::File { path: path.clone(), source })?;
            sinks.push(Sink::Stream(Mutex::new(Box::new(file))));
        }
        if settings.journal {
            sinks.push(Sink::journal(Path::new(JOURNAL_SOCKET))?);
        }
        if sinks.is_empty() {
            sinks.push(Sink::Stream(Mutex::new(Box::new(std::io::stderr()))));
        }
        Ok(sinks)
    }

    /// A journald sink on `socket` (tests use their own socket).
    pub fn journal(socket: &Path) -> Result<Self, LoggingError> {
        let err = |source| LoggingError::Journal { path: socket.to_path_buf(), source };
        let sock = std::os::unix::net::UnixDatagram::unbound().map_err(err)?;
        sock.connect(socket).map_err(err)?;
        // A stalled journald must not stall the service for long: a record
        // that cannot be sent in time goes to stderr instead.
        sock.set_write_timeout(Some(Duration::from_secs(1))).map_err(err)?;
        Ok(Sink::Journal(sock))
    }
}

/// The `tracing` layer writing records in oslo.log's formats.
pub struct OsloLayer {
    sinks: Vec<Sink>,
    format: Format,
    hostname: String,
    started: Instant,
}

impl OsloLayer {
    /// A layer writing to `sink` in `format`.
    pub fn new(sink: Sink, format: Format) -> Self {
        Self::with_sinks(vec![sink], format)
    }

    /// A layer writing every record to each of `sinks`.
    pub fn with_sinks(sinks: Vec<Sink>, format: Format) -> Self {
        OsloLayer { sinks, format, hostname: crate::config::system_hostname(), started: Instant::now() }
    }

    /// A text or JSON layer writing into a shared buffer (tests).
    pub fn to_buffer(buffer: Arc<Mutex<Vec<u8>>>, format: Format) -> Self {
        OsloLayer::new(Sink::Stream(Mutex::new(Box::new(SharedBuffer(buffer)))), format)
    }
}

struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The span fields that make up oslo's context and instance, kept in the
/// span's extensions.
#[derive(Debug, Default, Clone)]
struct SpanFields {
    request_id: Option<String>,
    global_request_id: Option<String>,
    user_identity: Option<String>,
    user: Option<String>,
    project: Option<String>,
    instance: Option<String>,
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "request_id" => &mut self.request_id,
            "global_request_id" => &mut self.global_request_id,
            "user_identity" => &mut self.user_identity,
            "user" => &mut self.user,
            "project" => &mut self.project,
            "instance" => &mut self.instance,
            _ => return,
        };
        // "-" is how a span says "none" for a field it must declare.
        *slot = (value != "-" && !value.is_empty()).then(|| value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// An event's message and other fields, in order.
#[derive(Default)]
struct EventFields {
    message: String,
    instance: Option<String>,
    fields: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            // tracing-log's own fields (target, file, line of a `log` record)
            name if name.starts_with("log.") => {}
            "message" => self.message = value.to_string(),
            "instance" => self.instance = Some(value.to_string()),
            name => self.fields.push((name, value.into())),
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if !field.name().starts_with("log.") {
            self.fields.push((field.name(), value.into()));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if !field.name().starts_with("log.") {
            self.fields.push((field.name(), value.into()));
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), value.into()));
    }
}

impl<S> Layer<S> for OsloLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        // The innermost span's value of each context field wins.
        let mut context = SpanFields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
                        if mine.is_none() {
                            mine.clone_from(theirs);
                        }
                    };
                    fill(&mut context.request_id, &f.request_id);
                    fill(&mut context.global_request_id, &f.global_request_id);
                    fill(&mut context.user_identity, &f.user_identity);
                    fill(&mut context.user, &f.user);
                    fill(&mut context.project, &f.project);
                    fill(&mut context.instance, &f.instance);
                }
            }
        }
        if fields.instance.is_some() {
            context.instance = fields.instance.take();
        }
        // A `log` record (bridged by tracing-log) carries its real target,
        // file and line in fields of its own.
        use tracing_log::NormalizeEvent;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let record = Record {
            meta: Meta {
                level: *meta.level(),
                target: meta.target().to_string(),
                file: meta.file().map(str::to_string),
                line: meta.line(),
            },
            now: chrono::Local::now(),
            fields,
            context,
        };
        self.write(&record);
    }
}

struct Record {
    meta: Meta,
    now: chrono::DateTime<chrono::Local>,
    fields: EventFields,
    context: SpanFields,
}

/// Where a record comes from.
struct Meta {
    level: Level,
    target: String,
    file: Option<String>,
    line: Option<u32>,
}

impl Meta {
    fn level(&self) -> &Level {
        &self.level
    }
    fn target(&self) -> &str {
        &self.target
    }
    fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }
    fn line(&self) -> Option<u32> {
        self.line
    }
}

/// oslo's level name and number for a `tracing` level.
fn level(level: &Level) -> (&'static str, u8, u8) {
    // (levelname, levelno, syslog priority)
    match *level {
        Level::ERROR => ("ERROR", 40, 3),
        Level::WARN => ("WARNING", 30, 4),
        Level::INFO => ("INFO", 20, 6),
        Level::DEBUG => ("DEBUG", 10, 7),
        Level::TRACE => ("TRACE", 5, 7),
    }
}

/// `nova_docker::compute::manager` as oslo names loggers: `nova_docker.compute.manager`.
fn logger_name(target: &str) -> String {
    target.replace("::", ".")
}

/// Text from outside (tenants' names, peers' errors) on one line:
/// control characters are escaped, so no value can forge a log line.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl OsloLayer {
    fn write(&self, r: &Record) {
        for sink in &self.sinks {
            self.write_to(sink, r);
        }
    }

    fn write_to(&self, sink: &Sink, r: &Record) {
        match sink {
            Sink::Stream(stream) => {
                let mut line = match self.format {
                    Format::Text => self.text(r),
                    Format::Json => self.json(r).to_string(),
                };
                line.push('\n');
                let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
                let _ = stream.write_all(line.as_bytes());
            }
            Sink::Journal(sock) => {
                let datagram = self.journal(r);
                if let Err(e) = sock.send(&datagram) {
                    // Not silently lost: the record goes to stderr, with why.
                    let _ = writeln!(std::io::stderr(), "{} (journald: {e})", self.text(r));
                }
            }
        }
    }

    /// oslo.log's text line.
    fn text(&self, r: &Record) -> String {
        let (levelname, _, _) = level(r.meta.level());
        let mut line = format!(
            "{} {} {} {} ",
            r.now.format("%Y-%m-%d %H:%M:%S%.3f"),
            std::process::id(),
            levelname,
            logger_name(r.meta.target())
        );
        match &r.context.request_id {
            Some(request_id) => {
                let _ = write!(
                    line,
                    "[{} {} {}] ",
                    one_line(r.context.global_request_id.as_deref().unwrap_or("None")),
                    one_line(request_id),
                    one_line(r.context.user_identity.as_deref().unwrap_or("- - - - - -"))
                );
            }
            None => line.push_str("[-] "),
        }
        if let Some(instance) = &r.context.instance {
            let _ = write!(line, "[instance: {}] ", one_line(instance));
        }
        line.push_str(&one_line(&r.fields.message));
        for (name, value) in &r.fields.fields {
            match value {
                serde_json::Value::String(s) => {
                    let _ = write!(line, " {name}={}", one_line(s));
                }
                other => {
                    let _ = write!(line, " {name}={other}");
                }
            }
        }
        line
    }

    /// oslo.log's `JSONFormatter` object.
    fn json(&self, r: &Record) -> serde_json::Value {
        let (levelname, levelno, _) = level(r.meta.level());
        let created = r.now.timestamp_micros() as f64 / 1e6;
        let msecs = f64::from(r.now.timestamp_subsec_micros()) / 1000.0;
        let pathname = r.meta.file().unwrap_or("");
        let filename = Path::new(pathname).file_name().and_then(|f| f.to_str()).unwrap_or("");
        let module = Path::new(filename).file_stem().and_then(|f| f.to_str()).unwrap_or("");
        let mut extra = serde_json::Map::new();
        for (name, value) in &r.fields.fields {
            extra.insert((*name).to_string(), value.clone());
        }
        let c = &r.context;
        for (key, value) in [
            ("request_id", &c.request_id),
            ("global_request_id", &c.global_request_id),
            ("user_identity", &c.user_identity),
            ("user", &c.user),
            ("project", &c.project),
            ("instance_uuid", &c.instance),
        ] {
            if let Some(v) = value {
                extra.insert(key.into(), v.clone().into());
            }
        }
        let error_summary = r
            .fields
            .fields
            .iter()
            .find(|(n, _)| *n == "error")
            .and_then(|(_, v)| v.as_str().map(str::to_string))
            .unwrap_or_default();
        serde_json::json!({
            "message": r.fields.message,
            "asctime": r.now.format("%Y-%m-%d %H:%M:%S").to_string(),
            "name": logger_name(r.meta.target()),
            "msg": r.fields.message,
            "args": [],
            "levelname": levelname,
            "levelno": levelno,
            "pathname": pathname,
            "filename": filename,
            "module": module,
            "lineno": r.meta.line(),
            "funcname": serde_json::Value::Null,
            "created": created,
            "msecs": msecs,
            "relative_created": self.started.elapsed().as_secs_f64() * 1000.0,
            "thread": serde_json::Value::Null,
            "thread_name": std::thread::current().name().unwrap_or(""),
            "process_name": "nova-docker",
            "process": std::process::id(),
            "traceback": serde_json::Value::Null,
            "hostname": self.hostname,
            "error_summary": error_summary,
            "extra": extra,
        })
    }

    /// One journald datagram (native protocol: `KEY=value\n`, or for a
    /// value holding a newline `KEY\n<u64 LE length><value>\n`).
    fn journal(&self, r: &Record) -> Vec<u8> {
        let (levelname, _, priority) = level(r.meta.level());
        let mut out = Vec::with_capacity(256);
        let mut put = |key: &str, value: &str| {
            if value.contains('\n') {
                out.extend_from_slice(key.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value.as_bytes());
                out.push(b'\n');
            } else {
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value.as_bytes());
                out.push(b'\n');
            }
        };
        put("MESSAGE", &r.fields.message);
        put("PRIORITY", &priority.to_string());
        put("SYSLOG_IDENTIFIER", "nova-docker");
        put("LOGGER_NAME", &logger_name(r.meta.target()));
        put("LOGGER_LEVEL", levelname);
        if let Some(file) = r.meta.file() {
            put("CODE_FILE", file);
        }
        if let Some(line) = r.meta.line() {
            put("CODE_LINE", &line.to_string());
        }
        let c = &r.context;
        for (key, value) in [
            ("REQUEST_ID", &c.request_id),
            ("GLOBAL_REQUEST_ID", &c.global_request_id),
            ("USER_IDENTITY", &c.user_identity),
            ("INSTANCE_UUID", &c.instance),
        ] {
            if let Some(v) = value {
                put(key, v);
            }
        }
        for (name, value) in &r.fields.fields {
            let key = journal_key(name);
            if key.is_empty() || matches!(key.as_str(), "MESSAGE" | "PRIORITY" | "SYSLOG_IDENTIFIER") {
                continue;
            }
            match value {
                serde_json::Value::String(s) => put(&key, s),
                other => put(&key, &other.to_string()),
            }
        }
        out
    }
}

/// A field name as journald accepts it: upper-case letters, digits and
/// `_`, not starting with `_` (those are journald's trusted fields).
fn journal_key(name: &str) -> String {
    let key: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    key.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit()).chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(format: Format, f: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(OsloLayer::to_buffer(buffer.clone(), format));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn rpc_span() -> tracing::Span {
        tracing::info_span!(
            "rpc",
            method = "build_and_run_instance",
            request_id = "req-0b9e7c1e-1111-2222-3333-444455556666",
            global_request_id = "-",
            user_identity = "u1 p1 - - default default",
            user = "u1",
            project = "p1",
            instance = tracing::field::Empty,
        )
    }

    #[test]
    fn text_lines_are_oslo_context_lines() {
        let out = capture(Format::Text, || {
            let span = rpc_span();
            let _g = span.enter();
            span.record("instance", "6f1c0f3e-aaaa-bbbb-cccc-dddddddddddd");
            tracing::info!(elapsed_ms = 12u64, "instance built");
        });
        let line = out.lines().next().unwrap();
        // 2026-12-06 08:00:00.123 1234 INFO nova_docker.logging::tests [None req-.. u1 p1 - - default default] [instance: ..] msg
        let (date, rest) = line.split_at(23);
        assert!(chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%S%.3f").is_ok(), "{line}");
        let want = format!(
            " {} INFO nova_docker.logging.tests [None req-0b9e7c1e-1111-2222-3333-444455556666 u1 p1 - - default default] \
             [instance: 6f1c0f3e-aaaa-bbbb-cccc-dddddddddddd] instance built elapsed_ms=12",
            std::process::id()
        );
        assert_eq!(rest, want);
    }

    #[test]
    fn without_context_the_default_format_and_the_events_instance() {
        let out = capture(Format::Text, || {
            tracing::warn!(instance = "abc", error = "boom\nINFO forged line", "operation failed");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains(
                " WARNING nova_docker.logging.tests [-] [instance: abc] operation failed error=boom\\nINFO forged line"
            ),
            "{out}"
        );
    }

    #[test]
    fn json_lines_have_oslo_jsonformatter_fields() {
        let out = capture(Format::Json, || {
            let span = rpc_span();
            let _g = span.enter();
            tracing::error!(instance = "i-1", error = "no space", "build failed");
        });
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v["message"], "build failed");
        assert_eq!(v["levelname"], "ERROR");
        assert_eq!(v["levelno"], 40);
        assert_eq!(v["name"], "nova_docker.logging.tests");
        assert_eq!(v["process"], std::process::id());
        assert_eq!(v["error_summary"], "no space");
        assert!(v["created"].as_f64().unwrap() > 1.7e9);
        for key in ["asctime", "msecs", "relative_created", "pathname", "filename", "lineno", "hostname", "module"] {
            assert!(!v[key].is_null(), "{key}: {v}");
        }
        let extra = &v["extra"];
        assert_eq!(extra["request_id"], "req-0b9e7c1e-1111-2222-3333-444455556666");
        assert_eq!(extra["user"], "u1");
        assert_eq!(extra["project"], "p1");
        assert_eq!(extra["instance_uuid"], "i-1");
        assert_eq!(extra["error"], "no space");
        assert!(extra.get("global_request_id").is_none(), "{extra}");
    }

    #[test]
    fn journal_datagrams_use_the_native_protocol() {
        let dir = std::env::temp_dir().join(format!("nd-journal-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let layer = OsloLayer::new(Sink::journal(&path).unwrap(), Format::Text);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = rpc_span();
            let _g = span.enter();
            tracing::warn!(instance = "i-2", detail = "two\nlines", "disk full");
        });
        let mut buf = vec![0u8; 65536];
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = server.recv(&mut buf).unwrap();
        let got = &buf[..n];
        let text = String::from_utf8_lossy(got);
        for want in [
            "MESSAGE=disk full\n",
            "PRIORITY=4\n",
            "SYSLOG_IDENTIFIER=nova-docker\n",
            "LOGGER_NAME=nova_docker.logging.tests\n",
            "REQUEST_ID=req-0b9e7c1e-1111-2222-3333-444455556666\n",
            "INSTANCE_UUID=i-2\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text:?}");
        }
        // A value with a newline is length-prefixed.
        let mut binary = b"DETAIL\n".to_vec();
        binary.extend_from_slice(&9u64.to_le_bytes());
        binary.extend_from_slice(b"two\nlines\n");
        assert!(got.windows(binary.len()).any(|w| w == binary.as_slice()), "{text:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn use_journal_without_journald_is_refused() {
        let missing = std::env::temp_dir().join(format!("nd-nojournal-{}", uuid::Uuid::new_v4().simple()));
        let err = Sink::journal(&missing).unwrap_err();
        assert!(err.to_string().contains("use_journal = true but journald's socket"), "{err}");
        if !Path::new(JOURNAL_SOCKET).exists() {
            let settings = LogSettings { journal: true, ..Default::default() };
            assert!(matches!(Sink::open(&settings), Err(LoggingError::Journal { .. })));
        }
    }

    #[test]
    fn log_file_and_log_dir_as_oslo_log() {
        let p = |f: Option<&str>, d: Option<&str>| log_file_path(f.map(Path::new), d.map(Path::new));
        assert_eq!(p(None, None), None);
        assert_eq!(p(Some("/var/log/a.log"), None), Some("/var/log/a.log".into()));
        assert_eq!(p(Some("a.log"), Some("/var/log/nova")), Some("/var/log/nova/a.log".into()));
        assert_eq!(p(Some("/abs/a.log"), Some("/var/log/nova")), Some("/abs/a.log".into()));
        assert_eq!(p(None, Some("/var/log/nova")), Some("/var/log/nova/nova-docker.log".into()));
    }
}
