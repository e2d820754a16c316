//! Blocking work on a thread of its own, awaited as a future by the app's
//! async runtime (Kotlin coroutines, Swift concurrency, asyncio). The future
//! is polled on the app's executor and never blocks it; dropping it (the
//! coroutine or task was cancelled) raises the call's stop flag, which the
//! work sees at its next check.
//!
//! One thread per call rather than a pool: calls are few and long next to a
//! thread's start (tens of microseconds), and concurrent calls never queue
//! behind each other.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::error::AttuneError;

thread_local! {
    static ON_CALL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is running a call (e.g. a progress listener
/// calling back into Attune): such a thread must not wait for calls to end.
pub(crate) fn on_call_thread() -> bool {
    ON_CALL_THREAD.with(Cell::get)
}

struct Slot<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// The result of work running on its own thread.
pub(crate) struct Background<T> {
    slot: Arc<Mutex<Slot<T>>>,
    stop: Arc<AtomicBool>,
    delivered: bool,
}

/// Starts `work` on a new thread; dropping the returned future before it
/// is ready raises `stop`.
pub(crate) fn spawn<T, W>(stop: Arc<AtomicBool>, work: W) -> Result<Background<T>, AttuneError>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot { result: None, waker: None }));
    let filled = Arc::clone(&slot);
    std::thread::Builder::new()
        .name("attune-call".into())
        .spawn(move || {
            ON_CALL_THREAD.with(|flag| flag.set(true));
            let result = work();
            let waker = {
                let mut slot = filled.lock().unwrap_or_else(PoisonError::into_inner);
                slot.result = Some(result);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        })
        .map_err(|e| AttuneError::Busy { reason: format!("no thread could be started for the call: {e}") })?;
    Ok(Background { slot, stop, delivered: false })
}

/// Runs `work` that cannot stop midway (loading a model, opening a
/// database) on its own thread; a dropped future only discards the result.
pub(crate) async fn run_to_end<T, W>(work: W) -> Result<T, AttuneError>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    Ok(spawn(Arc::new(AtomicBool::new(false)), work)?.await)
}

impl<T> Future for Background<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let mut slot = this.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.result.take() {
            Some(result) => {
                this.delivered = true;
                Poll::Ready(result)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if !self.delivered {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}
