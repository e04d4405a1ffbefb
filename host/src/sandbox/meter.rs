//! The CPU meter: how long a plugin has run, as opposed to waited, charged
//! to its connection's budget; and the epoch tick that makes a busy plugin
//! yield its thread. Together they bound what one connection can take from
//! the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// How often a running plugin is made to yield its thread, so that plugins
/// that compute without pause, even one per core or more, cannot hold the
/// workers from other connections: those wait at most about this long per
/// busy plugin sharing their worker. (Measured beside 4 busy plugins on 2
/// cores: echo p99 7 ms at 1 ms, 14 ms at 2 ms, over 30 ms at 10 ms.)
pub const YIELD_INTERVAL: Duration = Duration::from_millis(1);

/// What a running plugin does when an epoch tick finds it running: it
/// yields if it has been running without pause for [`YIELD_INTERVAL`] or
/// longer, and carries on if not (a tick that happens to land in a short
/// run is no reason to send it to the back of the queue).
///
/// It yields through tokio's `yield_now` rather than wasmtime's plain
/// yield: tokio then defers the task until its worker has polled for I/O,
/// so connections waiting for input are woken between the slices of busy
/// plugins. With a plain yield, a worker whose queue holds only busy
/// plugins polls for I/O every 61 slices, and everyone else waits that
/// long (measured: echo p99 450 ms beside 2 busy plugins on 2 cores).
pub(super) fn at_epoch_tick() -> UpdateDeadline {
    let busy = RUNNING_SINCE
        .get()
        .is_some_and(|since| since.elapsed() >= YIELD_INTERVAL);
    if busy {
        UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    } else {
        UpdateDeadline::Continue(1)
    }
}

pin_project_lite::pin_project! {
    /// Runs a future, adding up the time spent inside its `poll` calls: for
    /// a call into the plugin, that is the time the plugin spends running,
    /// not waiting. Resolves to `None` once that passes `budget`. Epoch
    /// interruption makes the plugin yield every [`YIELD_INTERVAL`], so no
    /// single poll overshoots by more than that.
    ///
    /// A plugin can also make the host work between its polls: a loop on a
    /// zero-length timer yields to the runtime at every turn, and the
    /// runtime's turnaround (polling for I/O, rescheduling) cost as much
    /// again as the plugin's own time. So when the same worker thread comes
    /// back to this future within [`TURNAROUND`] and polled nothing else of
    /// the kind meanwhile, that gap is charged too.
    pub(super) struct CpuMeter<'a, F> {
        #[pin]
        future: F,
        id: u64,
        budget: &'a mut CpuBudget,
    }
}

/// What a connection may still spend of the CPU: `cpu-budget` at first,
/// given back at `cpu-refill` per minute of its life, never above the
/// budget. So over a long life the budget works as a rate with a burst
/// allowance: a connection that lives for weeks is not stopped for CPU it
/// spent long ago, and one woken again and again from hibernation gets no
/// more than the rate. Every instance of the connection draws on it.
#[derive(Debug)]
pub struct CpuBudget {
    left: Duration,
    most: Duration,
    refill_per_minute: Duration,
    updated: Instant,
}

impl CpuBudget {
    pub fn new(most: Duration, refill_per_minute: Duration) -> Self {
        Self {
            left: most,
            most,
            refill_per_minute,
            updated: Instant::now(),
        }
    }

    /// Takes `spent` from what is left, after giving back what the time
    /// since the last charge earned.
    fn charge(&mut self, spent: Duration, now: Instant) {
        if !self.refill_per_minute.is_zero() {
            let minutes = now.saturating_duration_since(self.updated).as_secs_f64() / 60.0;
            let earned = self.refill_per_minute.mul_f64(minutes);
            self.left = (self.left + earned).min(self.most);
        }
        self.updated = now;
        self.left = self.left.saturating_sub(spent);
    }
}

/// Longest gap between two polls of one [`CpuMeter`] that is charged to it
/// as the runtime's turnaround; a longer one was a wait.
const TURNAROUND: Duration = Duration::from_micros(100);

std::thread_local! {
    /// The meter this thread polled last, and when that poll ended.
    static LAST_POLL: std::cell::Cell<Option<(u64, Instant)>> =
        const { std::cell::Cell::new(None) };
    /// When the poll of a plugin running on this thread began.
    static RUNNING_SINCE: std::cell::Cell<Option<Instant>> =
        const { std::cell::Cell::new(None) };
}

impl<'a, F> CpuMeter<'a, F> {
    pub(super) fn new(future: F, budget: &'a mut CpuBudget) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            future,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            budget,
        }
    }
}

impl<F: Future> Future for CpuMeter<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = Instant::now();
        // A connection that spent its budget in an earlier instance (one
        // woken from hibernation) is not let run again until it refills.
        this.budget.charge(Duration::ZERO, started);
        if this.budget.left.is_zero() {
            return Poll::Ready(None);
        }
        let mut spent = Duration::ZERO;
        if let Some((last, ended)) = LAST_POLL.get()
            && last == *this.id
        {
            let gap = started.saturating_duration_since(ended);
            if gap < TURNAROUND {
                spent += gap;
            }
        }
        RUNNING_SINCE.set(Some(started));
        let polled = this.future.poll(cx);
        RUNNING_SINCE.set(None);
        let ended = Instant::now();
        spent += ended - started;
        this.budget.charge(spent, ended);
        LAST_POLL.set(Some((*this.id, ended)));
        match polled {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if this.budget.left.is_zero() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
