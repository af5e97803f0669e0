//! No rank waits forever: a rank that stops answering without exiting (a stopped or
//! wedged process, a lost node whose connection never closes) would leave the others in
//! a collective for good, since MPI has no timeouts. Every collective of a multi-rank
//! job goes through [`Watched`], which records when the current one began; a watchdog
//! thread ends this process with a message naming the rank, the collective and the
//! wait once it exceeds the timeout, and the launcher then ends the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::communicator::{CommError, Communicator};

/// The exit status of a rank the watchdog ends.
pub const TIMED_OUT: i32 = 75;

/// What the watchdog watches: the collective in progress and when it began.
struct Watch {
    rank: usize,
    timeout: Duration,
    clock: Instant,
    /// Milliseconds since `clock` (plus one) when the current collective began; 0 when
    /// none is in progress.
    began: AtomicU64,
    op: Mutex<&'static str>,
}

impl Watch {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    fn enter(&self, op: &'static str) -> Inside<'_> {
        *self.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        self.began.store(self.now_ms(), Ordering::SeqCst);
        Inside(self)
    }

    /// The watchdog thread's loop: check a few times per timeout, end the process once
    /// a collective has waited too long.
    fn run(self: Arc<Self>) {
        let tick = (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            std::thread::sleep(tick);
            let began = self.began.load(Ordering::SeqCst);
            if began == 0 {
                continue;
            }
            let waited = Duration::from_millis(self.now_ms().saturating_sub(began));
            if waited > self.timeout {
                let op = *self.op.lock().unwrap_or_else(|p| p.into_inner());
                eprintln!(
                    "error: rank {}: {op} has waited {:.0} s for the other ranks ([distributed] collective_timeout_s = {}): a rank stopped answering; ending the job",
                    self.rank,
                    waited.as_secs_f64(),
                    self.timeout.as_secs()
                );
                // SAFETY: ends the process at once; nothing of it is used afterwards
                // (the training thread is blocked inside MPI, so no orderly exit exists).
                unsafe { libc::_exit(TIMED_OUT) }
            }
        }
    }
}

/// A collective in progress; its end clears the watch.
struct Inside<'a>(&'a Watch);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.began.store(0, Ordering::SeqCst);
    }
}

/// A communicator whose collectives the watchdog times.
pub struct Watched {
    inner: Arc<dyn Communicator>,
    watch: Arc<Watch>,
}

/// `comm` with every collective timed out after `timeout` (a watchdog thread per call
/// of this function; groups split from it share it).
pub fn watch(comm: Arc<dyn Communicator>, timeout: Duration) -> Arc<dyn Communicator> {
    let watch = Arc::new(Watch { rank: comm.rank(), timeout, clock: Instant::now(), began: AtomicU64::new(0), op: Mutex::new("") });
    let thread = watch.clone();
    std::thread::Builder::new().name("collective-watchdog".into()).spawn(move || thread.run()).map_or(comm.clone(), |_| Arc::new(Watched { inner: comm, watch }))
}

impl Communicator for Watched {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CommError> {
        let _inside = self.watch.enter("all-reduce");
        self.inner.all_reduce_sum(values)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), CommError> {
        let _inside = self.watch.enter("all-reduce");
        self.inner.all_reduce_sum_f64(values)
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError> {
        let _inside = self.watch.enter("broadcast");
        self.inner.broadcast(root, bytes)
    }

    fn all_gather(&self, mine: &[f32]) -> Result<Vec<f32>, CommError> {
        let _inside = self.watch.enter("all-gather");
        self.inner.all_gather(mine)
    }

    fn reduce_scatter_sum(&self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let _inside = self.watch.enter("reduce-scatter");
        self.inner.reduce_scatter_sum(values)
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize]) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        let _inside = self.watch.enter("all-to-all");
        self.inner.all_to_all(send, send_counts)
    }

    fn barrier(&self) -> Result<(), CommError> {
        let _inside = self.watch.enter("barrier");
        self.inner.barrier()
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>, CommError> {
        let group = {
            let _inside = self.watch.enter("split");
            self.inner.split(color, key)?
        };
        Ok(Arc::new(Watched { inner: group, watch: self.watch.clone() }))
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}
