//! The CPU meter: how long a plugin has run, as opposed to waited, and the
//! epoch tick that makes a busy plugin yield its thread. Together they
//! bound what one connection can take from the others.

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
    pub(super) struct CpuMeter<F> {
        #[pin]
        future: F,
        id: u64,
        spent: Duration,
        budget: Duration,
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

impl<F> CpuMeter<F> {
    pub(super) fn new(future: F, budget: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            future,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spent: Duration::ZERO,
            budget,
        }
    }
}

impl<F: Future> Future for CpuMeter<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = Instant::now();
        if let Some((last, ended)) = LAST_POLL.get()
            && last == *this.id
        {
            let gap = started.saturating_duration_since(ended);
            if gap < TURNAROUND {
                *this.spent += gap;
            }
        }
        RUNNING_SINCE.set(Some(started));
        let polled = this.future.poll(cx);
        RUNNING_SINCE.set(None);
        let ended = Instant::now();
        *this.spent += ended - started;
        LAST_POLL.set(Some((*this.id, ended)));
        match polled {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if *this.spent >= *this.budget => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
