//! Process-wide Prometheus metrics.
//!
//! Exposition is done by `prometheus-client`, the Prometheus project's own
//! Rust client (github.com/prometheus/client_rust): it writes the
//! OpenMetrics text format that Prometheus scrapes, escapes label values
//! (a backslash, quote or newline in a value cannot break a scrape), and
//! keeps the registry's families lock-free on the hot path. A hand-written
//! exposition had to get each of those right by itself.
//!
//! Label values stay bounded: callers pass values from closed sets (RPC
//! methods the host serves, else [`UNKNOWN`]; operation and phase names;
//! Nova vm_states; Docker actions), never a peer's or a tenant's free text.
//!
//! Besides the service's own series: `nova_docker_build_info`, the
//! process's metrics (`process_*`, read from `/proc` at each scrape, as the
//! other Prometheus clients name them) and whether the broker and Docker are
//! connected (`nova_docker_broker_connected`, `nova_docker_docker_connected`,
//! refreshed before each scrape by the endpoint).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The label value of an RPC method this host does not serve (and of a
/// message too malformed to have one): a peer's made-up method names
/// would otherwise each add a series, forever.
pub const UNKNOWN: &str = "unknown";

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds (5 ms .. 5 min).
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Finer buckets for spans that are usually well below a millisecond (the
/// server's own part of an RPC call): 25 µs .. 5 min. A percentile read
/// from them is interpolated within one bucket, so it is exact to the
/// bucket's width (25 µs up to 100 µs, 50 µs up to 200 µs).
pub const FINE_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01,
    0.025, 0.1, 1.0, 10.0, 60.0, 300.0,
];

/// The method classes of `nova_docker_rpc_server_seconds`: Nova's
/// `baseapi` (ping), the compute manager's methods, and calls this host
/// does not serve (answered with a failure).
pub const RPC_CLASSES: &[&str] = &["baseapi", "compute", UNKNOWN];

/// Metric kinds of [`DEFINITIONS`].
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A histogram with [`FINE_BUCKETS`].
    FineHistogram,
}

/// Every metric the service records: full name (as scraped), kind, help.
const DEFINITIONS: &[(&str, Kind, &str)] = &[
    ("nova_docker_rpc_requests_total", Kind::Counter, "RPC requests handled, by method and outcome."),
    ("nova_docker_rpc_duration_seconds", Kind::Histogram, "Time to handle an RPC request, by method."),
    (
        "nova_docker_rpc_server_seconds",
        Kind::FineHistogram,
        "RPC calls: from the message's delivery by the broker to its reply published and confirmed, by method class.",
    ),
    (
        "nova_docker_rpc_reply_published_seconds",
        Kind::FineHistogram,
        "RPC calls: from the message's delivery by the broker to its reply handed to the connection (before the broker's confirm), by method class.",
    ),
    ("nova_docker_operation_duration_seconds", Kind::Histogram, "Instance operation latency, by operation and phase."),
    ("nova_docker_glance_bytes_total", Kind::Counter, "Bytes moved to or from Glance, by direction."),
    ("nova_docker_instances", Kind::Gauge, "Instances on this host, by Nova vm_state."),
    ("nova_docker_amqp_connections_total", Kind::Counter, "AMQP connections established (1 + reconnections)."),
    (
        "nova_docker_rpc_call_resends_total",
        Kind::Counter,
        "Calls sent again because no queue was bound to the topic yet.",
    ),
    ("nova_docker_docker_events_total", Kind::Counter, "Docker container events seen, by action."),
    ("nova_docker_broker_connected", Kind::Gauge, "1 while the RabbitMQ connection is up, else 0."),
    ("nova_docker_docker_connected", Kind::Gauge, "1 when the Docker engine answered its last ping, else 0."),
];

type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter<f64, AtomicU64>>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

fn fine_histogram() -> Histogram {
    Histogram::new(FINE_BUCKETS.iter().copied())
}

/// The registry and the families callers record into, by name.
pub struct Metrics {
    registry: Registry,
    counters: BTreeMap<&'static str, CounterFamily>,
    gauges: BTreeMap<&'static str, GaugeFamily>,
    histograms: BTreeMap<&'static str, HistogramFamily>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let (mut counters, mut gauges, mut histograms) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (name, kind, help) in DEFINITIONS {
            // The registry ends each help text with a period of its own.
            let help = help.trim_end_matches('.');
            match kind {
                Kind::Counter => {
                    let family = CounterFamily::default();
                    // The client adds the `_total` suffix of counters itself.
                    registry.register(name.trim_end_matches("_total"), help, family.clone());
                    counters.insert(*name, family);
                }
                Kind::Gauge => {
                    let family = GaugeFamily::default();
                    registry.register(*name, help, family.clone());
                    gauges.insert(*name, family);
                }
                Kind::Histogram | Kind::FineHistogram => {
                    let constructor = match kind {
                        Kind::FineHistogram => fine_histogram as fn() -> Histogram,
                        _ => histogram as fn() -> Histogram,
                    };
                    let family = HistogramFamily::new_with_constructor(constructor);
                    registry.register(*name, help, family.clone());
                    histograms.insert(*name, family);
                }
            }
        }
        // `_info` is added by the client: nova_docker_build_info{version=...} 1.
        registry.register(
            "nova_docker_build",
            "The nova-docker build serving this host",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics { registry, counters, gauges, histograms }
    }
}

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        match self.counters.get(name) {
            Some(family) => {
                family.get_or_create(&labels(l)).inc_by(v);
            }
            None => debug_assert!(false, "{name} is not a counter of DEFINITIONS"),
        }
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        self.add(name, l, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        match self.gauges.get(name) {
            Some(family) => {
                family.get_or_create(&labels(l)).set(v);
            }
            None => debug_assert!(false, "{name} is not a gauge of DEFINITIONS"),
        }
    }

    /// Replaces every series of a gauge (e.g. instances by state).
    pub fn set_all(&self, name: &'static str, series: Vec<(Vec<(&'static str, String)>, f64)>) {
        let Some(family) = self.gauges.get(name) else {
            debug_assert!(false, "{name} is not a gauge of DEFINITIONS");
            return;
        };
        family.clear();
        for (l, v) in series {
            family.get_or_create(&l).set(v);
        }
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], d: Duration) {
        match self.histograms.get(name) {
            Some(family) => family.get_or_create(&labels(l)).observe(d.as_secs_f64()),
            None => debug_assert!(false, "{name} is not a histogram of DEFINITIONS"),
        }
    }

    /// The value of a counter (tests and `check`).
    pub fn counter(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        self.counters.get(name).and_then(|f| f.get(&labels(l)).map(|c| c.get())).unwrap_or(0.0)
    }

    /// The value of a gauge (tests).
    pub fn gauge(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        self.gauges.get(name).and_then(|f| f.get(&labels(l)).map(|g| g.get())).unwrap_or(0.0)
    }

    /// Renders the OpenMetrics text exposition (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a formatter error, which writing to a String never gives.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The process's own metrics, read from `/proc` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: Option<f64>,
}

/// Parses `/proc/self/stat` (fields after the parenthesised command name,
/// which may itself hold spaces or parentheses).
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: f64, boot_time: f64) -> Option<ProcessStats> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        start_time_seconds: boot_time + field(22)? / ticks_per_second,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        ..ProcessStats::default()
    })
}

fn read_process_stats() -> Option<ProcessStats> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()? as f64;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
    let mut stats = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?, ticks, page, boot_time)?;
    stats.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    stats.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.trim_start_matches("Max open files").split_whitespace().next().and_then(|v| v.parse().ok()))
    });
    Some(stats)
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = read_process_stats() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauges = vec![
            ("process_resident_memory_bytes", "Resident memory size in bytes.", s.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", s.virtual_bytes),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors.", s.open_fds),
        ];
        if let Some(max) = s.max_fds {
            gauges.push(("process_max_fds", "Maximum number of open file descriptors.", max));
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.inc("nova_docker_rpc_requests_total", &[("method", "ping"), ("outcome", "ok")]);
        m.add("nova_docker_glance_bytes_total", &[("direction", "download")], 1024.0);
        m.observe("nova_docker_rpc_duration_seconds", &[("method", "ping")], Duration::from_millis(3));
        m.set_all("nova_docker_instances", vec![(vec![("vm_state", "active".into())], 2.0)]);
        m.set_all("nova_docker_instances", vec![(vec![("vm_state", "stopped".into())], 1.0)]);
        let text = m.render();
        assert!(text.contains("# TYPE nova_docker_rpc_requests counter"), "{text}");
        assert_eq!(sample(&text, "nova_docker_rpc_requests_total{method=\"ping\",outcome=\"ok\"}"), Some(1.0));
        assert_eq!(sample(&text, "nova_docker_glance_bytes_total{direction=\"download\"}"), Some(1024.0));
        assert_eq!(sample(&text, "nova_docker_rpc_duration_seconds_bucket{le=\"0.005\",method=\"ping\"}"), Some(1.0));
        assert_eq!(sample(&text, "nova_docker_rpc_duration_seconds_count{method=\"ping\"}"), Some(1.0));
        assert_eq!(sample(&text, "nova_docker_instances{vm_state=\"active\"}"), None, "replaced: {text}");
        assert_eq!(sample(&text, "nova_docker_instances{vm_state=\"stopped\"}"), Some(1.0));
        assert_eq!(m.counter("nova_docker_rpc_requests_total", &[("method", "ping"), ("outcome", "ok")]), 1.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn build_info_process_and_connection_metrics() {
        let m = Metrics::default();
        m.set("nova_docker_broker_connected", &[], 1.0);
        m.set("nova_docker_docker_connected", &[], 0.0);
        // Some CPU time to show (a test process is young).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while read_process_stats().is_some_and(|s| s.cpu_seconds == 0.0) && std::time::Instant::now() < deadline {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let text = m.render();
        assert!(!text.contains(".."), "{text}");
        let info = format!("nova_docker_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert_eq!(sample(&text, "nova_docker_broker_connected"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "nova_docker_docker_connected"), Some(0.0), "{text}");
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|v| v > 1e6), "{text}");
        assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|v| v > 0.0), "{text}");
        assert!(sample(&text, "process_open_fds").is_some_and(|v| v >= 3.0), "{text}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = sample(&text, "process_start_time_seconds").expect("start time");
        assert!(started <= now + 1.0 && started > now - 86400.0, "{started} vs {now}");
    }

    #[test]
    fn hostile_label_values_cannot_break_the_scrape() {
        let m = Metrics::default();
        m.inc("nova_docker_docker_events_total", &[("action", "x\"}\nnova_docker_forged 1\n")]);
        let text = m.render();
        assert!(!text.lines().any(|l| l.starts_with("nova_docker_forged")), "{text}");
    }

    #[test]
    fn proc_stat_fields_after_a_tricky_command_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 \
                    104857600 2560 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 104857600.0);
        assert_eq!(s.resident_bytes, 2560.0 * 4096.0);
    }
}
