//! The Prometheus recorder and the metrics it holds, for the admin
//! endpoint's `GET /metrics`.
//!
//! Metric names are part of the product's interface, for dashboards; each
//! series has a `service` label. Counts come from each service's
//! [`Counters`] at scrape time; the two histograms are recorded as
//! connections end. The exporter is installed only when the endpoint is
//! configured, and recording is a no-op without it.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::ops::counters::Counters;

/// Histogram buckets, in seconds: from a fast instantiation (tens of
/// microseconds) to a long-lived connection (an hour).
const BUCKETS: &[f64] = &[
    0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0,
    100.0, 300.0, 1000.0, 3600.0,
];

/// Whether the exporter is installed: without it, recording would only
/// build labels to throw away, once per connection.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the Prometheus exporter as the process's metrics recorder.
/// Call it once, before anything is recorded.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .context("cannot set the histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    INSTALLED.store(true, Relaxed);
    Ok(handle)
}

fn describe() {
    describe_connections();
    describe_plugins();
}

/// Connections: how many, how they ended, how long they took.
fn describe_connections() {
    describe_counter!(
        "portico_connections_total",
        "Connections accepted, refused ones included."
    );
    describe_gauge!(
        "portico_connections_active",
        "Connections being served now."
    );
    describe_gauge!(
        "portico_connections_queued",
        "Connections waiting for a place now."
    );
    describe_counter!(
        "portico_connections_refused_total",
        "Connections closed before any instance: the queue was full (full), the filter did not admit the client (filtered), no valid PROXY header from a trusted proxy (proxy-header), too many handshakes in progress (handshakes)."
    );
    describe_counter!(
        "portico_connections_closed_total",
        "Connections served, by how they ended."
    );
    describe_counter!(
        "portico_bytes_received_total",
        Unit::Bytes,
        "Bytes received from clients, counted when their connection closes."
    );
    describe_counter!(
        "portico_bytes_sent_total",
        Unit::Bytes,
        "Bytes sent to clients, counted when their connection closes."
    );
    describe_histogram!(
        "portico_connection_duration_seconds",
        Unit::Seconds,
        "How long connections lasted, from accept to close."
    );
    describe_histogram!(
        "portico_instantiation_seconds",
        Unit::Seconds,
        "How long creating a connection's plugin instance took."
    );
    describe_gauge!(
        "portico_connections_hibernated",
        "Connections hibernated now: open, with no instance (a part of portico_connections_active)."
    );
    describe_gauge!(
        "portico_hibernated_state_bytes",
        Unit::Bytes,
        "Bytes of plugin state the hibernated connections hold now."
    );
    describe_counter!(
        "portico_hibernations_total",
        "Times a connection hibernated."
    );
    describe_counter!(
        "portico_wakes_total",
        "Wakes of hibernated connections, by reason: client-data, client-closed, message, timer, draining."
    );
    describe_counter!(
        "portico_tls_handshake_failures_total",
        "TLS handshakes that failed, timed out or were abandoned; no instance was created for them."
    );
}

/// What plugins did: lines, memory, sockets, buckets and topics refused
/// them, and which plugin version is in force.
fn describe_plugins() {
    describe_counter!(
        "portico_plugin_log_lines_dropped_total",
        "Plugin stdout and stderr lines dropped over the rate limit."
    );
    describe_counter!(
        "portico_memory_limit_hits_total",
        "Connections whose plugin was refused memory at the limit."
    );
    describe_counter!(
        "portico_outbound_denied_total",
        "Outbound sockets, connects and name lookups refused by the service's grant or limits."
    );
    describe_counter!(
        "portico_outbound_connect_timeouts_total",
        "Outbound connects that got no answer within the connect timeout."
    );
    describe_counter!(
        "portico_keyvalue_denied_total",
        "Key-value buckets plugins tried to open without a grant."
    );
    describe_counter!(
        "portico_messaging_denied_total",
        "Topics plugins tried to publish or subscribe to without a grant."
    );
    describe_counter!(
        "portico_messages_dropped_total",
        "Messages dropped because a subscription's queue was full."
    );
    describe_counter!(
        "portico_keyvalue_limit_hits_total",
        "Key-value operations refused at a limit: key or value size, keys or bytes in a bucket."
    );
    describe_counter!(
        "portico_messaging_limit_hits_total",
        "Subscriptions and publications refused at a limit: subscriptions per connection, payload size."
    );
    describe_gauge!(
        "portico_plugin_info",
        "1 for the plugin version in force, by the SHA-256 of its file; 0 for versions replaced."
    );
}

/// Copies a service's counters into the recorder.
pub fn record_counts(service: &str, counters: &Counters) {
    let label = || service.to_string();
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Relaxed);
    counter!("portico_connections_total", "service" => label()).absolute(get(&counters.total));
    gauge!("portico_connections_active", "service" => label()).set(get(&counters.current) as f64);
    gauge!("portico_connections_queued", "service" => label()).set(get(&counters.queued) as f64);
    for (reason, count) in [
        ("full", &counters.refused),
        ("filtered", &counters.filtered),
        ("proxy-header", &counters.proxy_header_refusals),
        ("handshakes", &counters.handshakes_refused),
    ] {
        counter!("portico_connections_refused_total", "service" => label(), "reason" => reason)
            .absolute(get(count));
    }
    for (outcome, count) in [
        ("ok", &counters.finished),
        ("error", &counters.errors),
        ("trap", &counters.traps),
        ("cpu-budget", &counters.cpu_budget_stops),
        ("idle", &counters.idle_timeouts),
        ("lifetime", &counters.lifetime_stops),
        ("drain", &counters.drain_stops),
    ] {
        counter!("portico_connections_closed_total", "service" => label(), "outcome" => outcome)
            .absolute(get(count));
    }
    gauge!("portico_connections_hibernated", "service" => label())
        .set(get(&counters.hibernated) as f64);
    gauge!("portico_hibernated_state_bytes", "service" => label())
        .set(get(&counters.hibernated_state_bytes) as f64);
    counter!("portico_hibernations_total", "service" => label())
        .absolute(get(&counters.hibernations));
    for (reason, count) in [
        ("client-data", &counters.wakes_client_data),
        ("client-closed", &counters.wakes_client_closed),
        ("message", &counters.wakes_message),
        ("timer", &counters.wakes_timer),
        ("draining", &counters.wakes_draining),
    ] {
        counter!("portico_wakes_total", "service" => label(), "reason" => reason)
            .absolute(get(count));
    }
    counter!("portico_bytes_received_total", "service" => label())
        .absolute(get(&counters.bytes_in));
    counter!("portico_bytes_sent_total", "service" => label()).absolute(get(&counters.bytes_out));
    counter!("portico_plugin_log_lines_dropped_total", "service" => label())
        .absolute(get(&counters.log_lines_dropped));
    counter!("portico_memory_limit_hits_total", "service" => label())
        .absolute(get(&counters.memory_limit_hits));
    counter!("portico_outbound_denied_total", "service" => label())
        .absolute(get(&counters.outbound_denied));
    counter!("portico_tls_handshake_failures_total", "service" => label())
        .absolute(get(&counters.tls_handshake_failures));
    counter!("portico_outbound_connect_timeouts_total", "service" => label())
        .absolute(get(&counters.outbound_connect_timeouts));
    counter!("portico_keyvalue_denied_total", "service" => label())
        .absolute(get(&counters.keyvalue_denied));
    counter!("portico_messaging_denied_total", "service" => label())
        .absolute(get(&counters.messaging_denied));
    counter!("portico_messages_dropped_total", "service" => label())
        .absolute(get(&counters.messages_dropped));
    counter!("portico_keyvalue_limit_hits_total", "service" => label())
        .absolute(get(&counters.keyvalue_limit_hits));
    counter!("portico_messaging_limit_hits_total", "service" => label())
        .absolute(get(&counters.messaging_limit_hits));
}

/// Records a connection's end: how long it lasted and, if its plugin was
/// instantiated, how long that took.
pub fn connection_ended(service: &str, lasted: Duration, instantiation: Option<Duration>) {
    if !INSTALLED.load(Relaxed) {
        return;
    }
    histogram!("portico_connection_duration_seconds", "service" => service.to_string())
        .record(lasted.as_secs_f64());
    if let Some(instantiation) = instantiation {
        histogram!("portico_instantiation_seconds", "service" => service.to_string())
            .record(instantiation.as_secs_f64());
    }
}

/// Records which plugin version a service now serves, and that `replaced`
/// (if any) no longer is.
pub fn plugin_in_force(service: &str, digest: &str, replaced: Option<&str>) {
    if !INSTALLED.load(Relaxed) {
        return;
    }
    if let Some(replaced) = replaced.filter(|replaced| *replaced != digest) {
        gauge!("portico_plugin_info", "service" => service.to_string(), "digest" => replaced.to_string())
            .set(0.0);
    }
    gauge!("portico_plugin_info", "service" => service.to_string(), "digest" => digest.to_string())
        .set(1.0);
}
