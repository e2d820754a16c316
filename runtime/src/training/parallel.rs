//! Independent pieces of training work spread over the cores.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, ThreadId};

use super::{EpochProgress, TrainListener};

thread_local! {
    /// Set inside parallel work: nested calls (a fold's fit splitting its
    /// batches) run on their own thread instead of multiplying threads.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// How many threads work started here may use: all cores, or one inside
/// work already spread over them.
pub(crate) fn threads_free() -> usize {
    if INSIDE.get() { 1 } else { std::thread::available_parallelism().map_or(1, usize::from) }
}

/// `work` over `items` on up to all cores, results in item order.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads_free().min(items.len());
    if threads < 2 {
        return items.iter().map(work).collect();
    }
    let inside = |item: &T| {
        INSIDE.set(true);
        let result = work(item);
        INSIDE.set(false);
        result
    };
    let inside = &inside;
    let mut results: Vec<Option<R>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads)
            .map(|t| scope.spawn(move || items.iter().skip(t).step_by(threads).map(inside).collect::<Vec<_>>()))
            .collect();
        let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
        for (i, item) in items.iter().enumerate().step_by(threads) {
            results[i] = Some(inside(item));
        }
        for (t, handle) in handles.into_iter().enumerate() {
            let done = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (j, result) in done.into_iter().enumerate() {
                results[t + 1 + j * threads] = Some(result);
            }
        }
        results
    });
    results.iter_mut().map(|r| r.take().expect("every item was worked on")).collect()
}

/// The caller's listener for work spread over threads, called only from the
/// calling thread: foreign listeners (Kotlin, Swift, Python) expect the
/// thread that started training. Progress of work on other threads is not
/// reported; that work sees the cancellation the calling thread last heard.
pub(crate) struct CallerThreadListener<'a> {
    inner: &'a dyn TrainListener,
    caller: ThreadId,
    cancelled: AtomicBool,
}

impl<'a> CallerThreadListener<'a> {
    pub(crate) fn new(inner: &'a dyn TrainListener) -> Self {
        Self { inner, caller: thread::current().id(), cancelled: AtomicBool::new(false) }
    }

    fn on_caller_thread(&self) -> bool {
        thread::current().id() == self.caller
    }
}

impl TrainListener for CallerThreadListener<'_> {
    fn on_epoch(&self, progress: &EpochProgress) {
        if self.on_caller_thread() {
            self.inner.on_epoch(progress);
        }
    }

    fn is_cancelled(&self) -> bool {
        if self.on_caller_thread() && self.inner.is_cancelled() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        self.cancelled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order_and_nesting_stays_on_one_thread() {
        let items: Vec<usize> = (0..23).collect();
        let outer = in_parallel(&items, |&i| {
            let here = std::thread::current().id();
            let inner = in_parallel(&[1, 2, 3], |&j| (i * j, std::thread::current().id() == here));
            (i, inner)
        });
        for (i, (item, inner)) in outer.into_iter().enumerate() {
            assert_eq!(item, i);
            assert_eq!(inner.iter().map(|r| r.0).collect::<Vec<_>>(), vec![i, 2 * i, 3 * i]);
            assert!(inner.iter().all(|r| r.1), "nested work left its thread");
        }
    }

    /// Records the threads it is called from and cancels on request.
    struct Recorder {
        threads: std::sync::Mutex<Vec<ThreadId>>,
        cancel: AtomicBool,
    }

    impl TrainListener for Recorder {
        fn on_epoch(&self, _: &EpochProgress) {
            self.threads.lock().unwrap().push(thread::current().id());
        }
        fn is_cancelled(&self) -> bool {
            self.threads.lock().unwrap().push(thread::current().id());
            self.cancel.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn the_listener_hears_only_the_calling_thread_and_cancels_everyone() {
        let recorder = Recorder { threads: Default::default(), cancel: AtomicBool::new(false) };
        let listener = CallerThreadListener::new(&recorder);
        let progress = EpochProgress {
            candidate: crate::training::CandidateHead::Prototype,
            epoch: 1,
            loss: 0.0,
            validation_loss: None,
            validation_accuracy: None,
        };
        let items: Vec<usize> = (0..8).collect();
        let heard = in_parallel(&items, |_| {
            listener.on_epoch(&progress);
            listener.is_cancelled()
        });
        assert!(heard.iter().all(|&c| !c));
        let threads = recorder.threads.lock().unwrap().clone();
        assert!(!threads.is_empty() && threads.iter().all(|&t| t == thread::current().id()), "{threads:?}");

        recorder.cancel.store(true, Ordering::Relaxed);
        assert!(listener.is_cancelled());
        let elsewhere = thread::scope(|scope| scope.spawn(|| listener.is_cancelled()).join().unwrap());
        assert!(elsewhere, "other threads see the caller's cancellation");
    }
}
