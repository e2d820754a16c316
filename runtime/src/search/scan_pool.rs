//! Threads that stay parked between searches. Starting a thread costs about
//! as much as scanning a few thousand rows, so large scans hand ranges of
//! rows to these instead. A parked thread blocks on a channel and
//! uses no CPU; they are started on the first large scan, once per process.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    jobs: Mutex<Sender<Job>>,
    workers: usize,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// How many helper threads there are (0 when none could be started). The
/// first call starts up to `wanted`, fewer on a CPU with fewer cores than
/// `wanted + 1` (the caller scans a slice too).
pub(super) fn helpers(wanted: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    POOL.get_or_init(|| start(wanted.min(cores - 1))).as_ref().map_or(0, |p| p.workers)
}

/// Runs `job` on a parked thread; `None` when there is none (the caller then
/// runs it itself). The answer arrives on the returned channel, which reports
/// a disconnect if the job panicked.
pub(super) fn submit<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<Receiver<T>> {
    let pool = POOL.get()?.as_ref()?;
    let (answer, receiver) = channel();
    let job: Job = Box::new(move || {
        // The caller may have given up waiting; nothing to do then.
        let _ = answer.send(job());
    });
    pool.jobs.lock().ok()?.send(job).ok()?;
    Some(receiver)
}

fn start(wanted: usize) -> Option<Pool> {
    let (jobs, queue) = channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let workers = (0..wanted)
        .filter(|n| {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new().name(format!("attune-scan-{n}")).spawn(move || work(&queue)).is_ok()
        })
        .count();
    (workers > 0).then(|| Pool { jobs: Mutex::new(jobs), workers })
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while taking a job, not while running it.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panicking job drops its answer channel (the caller sees the
        // disconnect and scans every row itself); the thread stays.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}
