//! The server's counters, kept in one place for the shutdown report (and
//! for an admin endpoint to read later). The first six are the ones POCO's
//! `TCPServer` keeps; the rest count how connections ended.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counts shared by the accept loop and every connection task.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl fmt::Display for Counters {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut separator = "";
                $(
                    write!(f, "{separator}{}={}", stringify!($name), self.$name.load(Relaxed))?;
                    separator = " ";
                )*
                let _ = separator;
                Ok(())
            }
        }
    };
}

counters! {
    /// Connections being served now.
    current,
    /// Connections accepted since start, refused ones included.
    total,
    /// The highest `current` has been.
    max_concurrent,
    /// Connections accepted and waiting for a place now.
    queued,
    /// Connections closed at once because the queue was full.
    refused,
    /// Connections closed at once because the service's filter did not
    /// admit the client.
    filtered,
    /// Connections closed without a valid PROXY protocol header from a
    /// trusted proxy, on a listener that expects one.
    proxy_header_refusals,
    /// Connections closed at once because as many as the service may serve
    /// were still in their PROXY header or TLS handshake.
    handshakes_refused,
    /// Plugins whose `run` returned `ok` (or that exited with status 0).
    finished,
    /// Plugins that trapped (panics and aborts included).
    traps,
    /// Plugins that returned an error or exited with a failure status.
    errors,
    /// Plugins stopped for spending their CPU budget.
    cpu_budget_stops,
    /// Plugins whose memory growth was refused at the limit.
    memory_limit_hits,
    /// TLS handshakes that failed, timed out or were abandoned.
    tls_handshake_failures,
    /// Connections closed for being idle.
    idle_timeouts,
    /// Connections closed at their maximum lifetime.
    lifetime_stops,
    /// Connections stopped because the drain timed out.
    drain_stops,
    /// Plugin log lines dropped for exceeding the rate limit.
    log_lines_dropped,
    /// Outbound sockets, connects and name lookups refused.
    outbound_denied,
    /// Outbound connects that failed for taking longer than the timeout.
    outbound_connect_timeouts,
    /// Key-value buckets a plugin tried to open without a grant.
    keyvalue_denied,
    /// Topics a plugin tried to publish or subscribe to without a grant.
    messaging_denied,
    /// Messages dropped because a subscription's queue was full.
    messages_dropped,
    /// Key-value operations refused at a limit (key, value, bucket size).
    keyvalue_limit_hits,
    /// Subscriptions and publications refused at a limit.
    messaging_limit_hits,
    /// Bytes received from clients, counted as connections close.
    bytes_in,
    /// Bytes sent to clients, counted as connections close.
    bytes_out,
    /// Connections hibernated now: open, without an instance (a part of
    /// `current`).
    hibernated,
    /// Bytes of state the hibernated connections hold now.
    hibernated_state_bytes,
    /// Times a connection hibernated.
    hibernations,
    /// Wakes of hibernated connections, by what woke them: bytes from the
    /// client, the client closing, a message, the timer, the drain.
    wakes_client_data,
    wakes_client_closed,
    wakes_message,
    wakes_timer,
    wakes_draining,
}

/// Adds one to `counter`.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    /// Records a connection starting to be served.
    pub fn connection_started(&self) {
        let now = self.current.fetch_add(1, Relaxed) + 1;
        self.max_concurrent.fetch_max(now, Relaxed);
    }

    /// Records a connection ending; returns how many are left.
    pub fn connection_ended(&self) -> u64 {
        self.current.fetch_sub(1, Relaxed) - 1
    }
}
