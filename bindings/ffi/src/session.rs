//! The lifetime of one open database: the calls in flight, `interrupt`,
//! and `close`, after which every call is `AttuneError::Closed`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};

use crate::background::{self, on_call_thread};
use crate::error::AttuneError;
use crate::progress::{CancelToken, Observer, ProgressListener};

#[derive(Debug)]
pub(crate) struct Session {
    /// `None` once closed.
    runtime: RwLock<Option<Arc<attune::Personalizer>>>,
    /// The stop flag of every call in flight.
    calls: Mutex<Vec<Arc<AtomicBool>>>,
    call_ended: Condvar,
}

/// A call in flight: the runtime it works on and its stop flag. Dropping
/// it ends the call.
pub(crate) struct Call {
    session: Arc<Session>,
    runtime: Arc<attune::Personalizer>,
    stop: Arc<AtomicBool>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut calls = self.session.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.retain(|flag| !Arc::ptr_eq(flag, &self.stop));
        self.session.call_ended.notify_all();
    }
}

impl Session {
    pub(crate) fn new(runtime: attune::Personalizer) -> Arc<Self> {
        Arc::new(Self {
            runtime: RwLock::new(Some(Arc::new(runtime))),
            calls: Mutex::new(Vec::new()),
            call_ended: Condvar::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> Result<Call, AttuneError> {
        // Registered under the read lock, so `close` (which takes the write
        // lock) either sees the call and stops it, or the call sees `None`.
        let runtime = self.runtime.read().unwrap_or_else(PoisonError::into_inner);
        let runtime = Arc::clone(runtime.as_ref().ok_or_else(closed)?);
        let stop = Arc::new(AtomicBool::new(false));
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&stop));
        Ok(Call { session: Arc::clone(self), runtime, stop })
    }

    /// Runs a quick call on the caller's thread.
    pub(crate) fn now<T>(
        self: &Arc<Self>,
        work: impl FnOnce(&attune::Personalizer) -> Result<T, AttuneError>,
    ) -> Result<T, AttuneError> {
        let call = self.begin()?;
        work(&call.runtime)
    }

    /// Runs a long call on a thread of its own and awaits it; `listener`
    /// follows it, and dropping the future or cancelling `cancel` stops it
    /// at its next check.
    pub(crate) async fn background<T, W>(
        self: &Arc<Self>,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
        work: W,
    ) -> Result<T, AttuneError>
    where
        T: Send + 'static,
        W: FnOnce(&attune::Personalizer, &Observer) -> attune::Result<T> + Send + 'static,
    {
        let call = self.begin()?;
        let stop = Arc::clone(&call.stop);
        background::spawn(Arc::clone(&stop), move || {
            let observer = Observer::new(listener, cancel, stop);
            let outcome = work(&call.runtime, &observer);
            match observer.finish(outcome) {
                Err(AttuneError::Cancelled { .. }) if call.session.is_closed() => Err(closed()),
                result => result,
            }
        })?
        .await
    }

    fn is_closed(&self) -> bool {
        self.runtime.read().unwrap_or_else(PoisonError::into_inner).is_none()
    }

    /// Stops every call in flight at its next check (they fail with
    /// `Cancelled`); later calls run as usual.
    pub(crate) fn interrupt(&self) {
        for flag in self.calls.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Refuses new calls, stops the ones in flight and waits for them, then
    /// closes the database. Called from a call's own thread (a listener),
    /// it does not wait: the database closes when that call ends.
    pub(crate) fn close(&self) {
        let runtime = self.runtime.write().unwrap_or_else(PoisonError::into_inner).take();
        if runtime.is_none() {
            return;
        }
        self.interrupt();
        if !on_call_thread() {
            let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            let _idle = self.call_ended.wait_while(calls, |calls| !calls.is_empty());
        }
        drop(runtime);
    }
}

fn closed() -> AttuneError {
    AttuneError::Closed { reason: "the personalizer was closed".into() }
}
