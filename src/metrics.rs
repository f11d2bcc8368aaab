//! Process-wide Prometheus metrics.
//!
//! A handful of labelled counters and histograms, rendered in the Prometheus
//! text format by the optional HTTP endpoint. Kept dependency-free: the few
//! series a compute host exposes do not justify a metrics framework.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds (5 ms .. 5 min).
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A series: metric name and label pairs.
type SeriesKey = (&'static str, Vec<(&'static str, String)>);

/// The registry.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<SeriesKey, f64>>,
    histograms: Mutex<BTreeMap<SeriesKey, Histogram>>,
    gauges: Mutex<BTreeMap<SeriesKey, f64>>,
}

/// Help text per metric name.
const HELP: &[(&str, &str, &str)] = &[
    ("nova_docker_rpc_requests_total", "counter", "RPC requests handled, by method and outcome."),
    ("nova_docker_rpc_duration_seconds", "histogram", "Time to handle an RPC request, by method."),
    ("nova_docker_operation_duration_seconds", "histogram", "Instance operation latency, by operation and phase."),
    ("nova_docker_glance_bytes_total", "counter", "Bytes moved to or from Glance, by direction."),
    ("nova_docker_instances", "gauge", "Instances on this host, by Nova vm_state."),
    ("nova_docker_amqp_connections_total", "counter", "AMQP connections established (1 + reconnections)."),
    ("nova_docker_rpc_call_resends_total", "counter", "Calls sent again because no queue was bound to the topic yet."),
    ("nova_docker_docker_events_total", "counter", "Docker container events seen, by action."),
];

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

fn labels(l: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((name, labels(l))).or_default() += v;
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        self.add(name, l, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.insert((name, labels(l)), v);
    }

    /// Replaces every series of a gauge (e.g. instances by state).
    pub fn set_all(&self, name: &'static str, series: Vec<(Vec<(&'static str, String)>, f64)>) {
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|(n, _), _| *n != name);
        for (l, v) in series {
            g.insert((name, l), v);
        }
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], d: Duration) {
        let secs = d.as_secs_f64();
        let mut h = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let entry = h
            .entry((name, labels(l)))
            .or_insert_with(|| Histogram { counts: vec![0; BUCKETS.len()], ..Default::default() });
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                entry.counts[i] += 1;
            }
        }
        entry.sum += secs;
        entry.count += 1;
    }

    /// The value of a counter (tests and `check`).
    pub fn counter(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&(name, labels(l))).copied().unwrap_or(0.0)
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        fn fmt_labels(l: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
            let mut parts: Vec<String> =
                l.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
        }
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        let histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        for (name, kind, help) in HELP {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((n, l), v) in counters.iter().chain(gauges.iter()) {
                if n == name {
                    out.push_str(&format!("{name}{} {v}\n", fmt_labels(l, None)));
                }
            }
            for ((n, l), h) in histograms.iter() {
                if n != name {
                    continue;
                }
                for (i, b) in BUCKETS.iter().enumerate() {
                    out.push_str(&format!(
                        "{name}_bucket{} {}\n",
                        fmt_labels(l, Some(("le", b.to_string()))),
                        h.counts[i]
                    ));
                }
                out.push_str(&format!("{name}_bucket{} {}\n", fmt_labels(l, Some(("le", "+Inf".into()))), h.count));
                out.push_str(&format!("{name}_sum{} {}\n", fmt_labels(l, None), h.sum));
                out.push_str(&format!("{name}_count{} {}\n", fmt_labels(l, None), h.count));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.inc("nova_docker_rpc_requests_total", &[("method", "ping"), ("outcome", "ok")]);
        m.observe("nova_docker_rpc_duration_seconds", &[("method", "ping")], Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("nova_docker_rpc_requests_total{method=\"ping\",outcome=\"ok\"} 1"));
        assert!(text.contains("nova_docker_rpc_duration_seconds_bucket{method=\"ping\",le=\"0.005\"} 1"));
        assert!(text.contains("nova_docker_rpc_duration_seconds_count{method=\"ping\"} 1"));
        assert_eq!(m.counter("nova_docker_rpc_requests_total", &[("method", "ping"), ("outcome", "ok")]), 1.0);
    }
}
