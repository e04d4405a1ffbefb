//! What the soak saw, in one place every client and fault writes to: each
//! client's successes per window, its errors with their time, the echo
//! round trips of the window in progress, and the windows of the faults
//! injected. Errors are judged only at the end (see [`Record::judge`]),
//! against every fault window, so that a fault still open when an error
//! happens explains it all the same.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The windows the soak samples and reports in.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The part of the soak a legitimate client exercises: what a fault must
/// touch to explain that client's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// Our echo clients on the echo service (the one reloads change).
    Echo,
    /// `wrk` against http-hello.
    Http,
    /// `redis-benchmark` against redis-kv on a memory bucket.
    RedisKv,
    /// `redis-benchmark` through tcp-proxy to a real redis-server.
    Proxy,
    /// Chat members over a real nats-server.
    Chat,
    /// Full TLS handshakes.
    Tls,
    /// The verifier's writes and reads on the file-backed redis-kv.
    KvFile,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::Echo,
        Part::Http,
        Part::RedisKv,
        Part::Proxy,
        Part::Chat,
        Part::Tls,
        Part::KvFile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::Echo => "echo",
            Part::Http => "http (wrk)",
            Part::RedisKv => "redis-kv (redis-benchmark)",
            Part::Proxy => "tcp-proxy (redis-benchmark)",
            Part::Chat => "chat over NATS",
            Part::Tls => "TLS handshakes",
            Part::KvFile => "file redis-kv (verifier)",
        }
    }
}

/// A fault the soak injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGHUP or `POST /reload`, with the echo service's plugin swapped.
    Reload,
    /// redis-server killed (SIGKILL) and started again.
    RedisKill,
    /// nats-server killed (SIGKILL) and started again.
    NatsKill,
    /// More connections than the echo service's places and queue.
    Burst,
    /// A client that stops reading and is never heard from again, and one
    /// that resets its connection.
    Vanish,
    /// The file bucket's disk filled up.
    DiskFull,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Reload => "reload",
            Fault::RedisKill => "redis-kill",
            Fault::NatsKill => "nats-kill",
            Fault::Burst => "burst",
            Fault::Vanish => "vanish",
            Fault::DiskFull => "disk-full",
        }
    }

    /// The parts whose errors this fault may explain. A reload and a
    /// vanishing client explain nothing: a reload is to be invisible to
    /// clients, and a vanished client harms only its own connection.
    pub fn touches(self) -> &'static [Part] {
        match self {
            Fault::Reload | Fault::Vanish => &[],
            Fault::RedisKill => &[Part::Proxy],
            Fault::NatsKill => &[Part::Chat],
            Fault::Burst => &[Part::Echo],
            Fault::DiskFull => &[Part::KvFile],
        }
    }
}

/// A fault's window, from its start to the end of its grace time (what
/// the system under test is allowed to take to recover).
#[derive(Clone, Debug)]
pub struct FaultWindow {
    pub fault: Fault,
    pub start: Duration,
    /// `None` while the fault is still going on.
    pub end: Option<Duration>,
    pub note: String,
}

/// One error a legitimate client met, over the span of time it covers (a
/// point for our own clients, a whole run for `wrk` and
/// `redis-benchmark`, which do not say when their errors happened).
#[derive(Clone, Debug)]
pub struct ClientError {
    pub part: Part,
    pub from: Duration,
    pub to: Duration,
    pub what: String,
    /// How many failed operations the entry stands for.
    pub count: u64,
}

/// The check made after one reload.
#[derive(Clone, Debug)]
pub struct ReloadCheck {
    pub at: Duration,
    pub via: &'static str,
    pub plugin: String,
    /// Time from the reload's request to the new digest on /metrics and a
    /// fresh echo connection served.
    pub took: Duration,
    pub problem: Option<String>,
}

#[derive(Default)]
struct Inner {
    done: BTreeMap<(usize, Part), u64>,
    echo_round_trips: Vec<Duration>,
    errors: Vec<ClientError>,
    faults: Vec<FaultWindow>,
    reloads: Vec<ReloadCheck>,
    problems: Vec<(Duration, String)>,
}

/// The soak's shared record. Cheap to write to from every task.
pub struct Record {
    started: Instant,
    inner: Mutex<Inner>,
}

/// How an error was judged.
pub enum Verdict {
    /// Inside the window of a fault that touches its part.
    Explained(Fault),
    Lost,
}

impl Record {
    pub fn new() -> Record {
        Record {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Time since the soak started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A task that panicked while holding the lock left whole entries:
        // every write is one push or one addition.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `n` operations of `part` done now.
    pub fn done(&self, part: Part, n: u64) {
        let window = (self.now().as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        *self.inner().done.entry((window, part)).or_default() += n;
    }

    /// Operations of `part` done in window `window`.
    pub fn done_in(&self, window: usize, part: Part) -> u64 {
        self.inner().done.get(&(window, part)).copied().unwrap_or(0)
    }

    pub fn echo_round_trip(&self, took: Duration) {
        self.inner().echo_round_trips.push(took);
        self.done(Part::Echo, 1);
    }

    /// The echo round trips since the last call, sorted.
    pub fn take_echo_round_trips(&self) -> Vec<Duration> {
        let mut taken = std::mem::take(&mut self.inner().echo_round_trips);
        taken.sort();
        taken
    }

    /// An error of `part` at this moment.
    pub fn error(&self, part: Part, what: impl Into<String>) {
        let now = self.now();
        self.error_over(part, now, now, what, 1);
    }

    /// `count` errors of `part` somewhere between `from` and `to`.
    pub fn error_over(
        &self,
        part: Part,
        from: Duration,
        to: Duration,
        what: impl Into<String>,
        count: u64,
    ) {
        self.inner().errors.push(ClientError {
            part,
            from,
            to,
            what: what.into(),
            count,
        });
    }

    /// Opens a fault's window now; returns its index for [`Record::end_fault`].
    pub fn start_fault(&self, fault: Fault, note: impl Into<String>) -> usize {
        let start = self.now();
        let mut inner = self.inner();
        inner.faults.push(FaultWindow {
            fault,
            start,
            end: None,
            note: note.into(),
        });
        inner.faults.len() - 1
    }

    /// Closes fault `index`'s window `grace` from now, adding `outcome`
    /// (what the fault did) to its note.
    pub fn end_fault(&self, index: usize, grace: Duration, outcome: &str) {
        let end = self.now() + grace;
        if let Some(window) = self.inner().faults.get_mut(index) {
            window.end = Some(end);
            if !outcome.is_empty() {
                window.note = format!(
                    "{}{}{outcome}",
                    window.note,
                    if window.note.is_empty() { "" } else { "; " }
                );
            }
        }
    }

    pub fn reload_checked(&self, check: ReloadCheck) {
        self.inner().reloads.push(check);
    }

    /// Something that fails the soak other than a client's error: a
    /// fault that could not be injected, an attack the host did not cut
    /// off, a vanished client it did not close.
    pub fn problem(&self, text: impl Into<String>) {
        let now = self.now();
        self.inner().problems.push((now, text.into()));
    }

    pub fn faults(&self) -> Vec<FaultWindow> {
        self.inner().faults.clone()
    }

    pub fn errors(&self) -> Vec<ClientError> {
        self.inner().errors.clone()
    }

    pub fn reloads(&self) -> Vec<ReloadCheck> {
        self.inner().reloads.clone()
    }

    pub fn problems(&self) -> Vec<(Duration, String)> {
        self.inner().problems.clone()
    }

    /// Whether `error` falls inside the window of a fault that touches its
    /// part (a window still open counts as open until now).
    pub fn judge(&self, error: &ClientError) -> Verdict {
        let now = self.now();
        self.inner()
            .faults
            .iter()
            .find(|window| {
                window.fault.touches().contains(&error.part)
                    && window.start <= error.to
                    && error.from <= window.end.unwrap_or(now)
            })
            .map_or(Verdict::Lost, |window| Verdict::Explained(window.fault))
    }

    /// Whether any fault touching `part` has a window overlapping `from..to`.
    pub fn fault_touching(&self, part: Part, from: Duration, to: Duration) -> bool {
        let now = self.now();
        self.inner().faults.iter().any(|window| {
            window.fault.touches().contains(&part)
                && window.start <= to
                && from <= window.end.unwrap_or(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Fault, Part, Record, Verdict};

    /// An error is the fault's only inside that fault's window and only if
    /// the fault touches its part; a span (a wrk run) need only overlap.
    #[test]
    fn errors_are_explained_only_by_faults_touching_them_in_their_window() {
        let record = Record::new();
        let window = record.start_fault(Fault::RedisKill, "");
        let inside = record.now();
        record.end_fault(window, Duration::from_secs(2), "");
        // The window ends at its grace's end.
        let end = record.now() + Duration::from_secs(2);
        record.start_fault(Fault::Reload, "");
        let seconds = Duration::from_secs;
        record.error_over(Part::Proxy, inside, inside, "in it", 1);
        record.error_over(Part::Chat, inside, inside, "not its part", 1);
        record.error_over(
            Part::Proxy,
            end + seconds(1),
            end + seconds(1),
            "after it",
            1,
        );
        record.error_over(
            Part::Proxy,
            seconds(0),
            end + seconds(9),
            "a span over it",
            1,
        );
        let verdicts: Vec<bool> = record
            .errors()
            .iter()
            .map(|error| matches!(record.judge(error), Verdict::Explained(Fault::RedisKill)))
            .collect();
        assert_eq!(verdicts, [true, false, false, true]);
    }
}
