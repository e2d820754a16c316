//! Progress callbacks from the app and the call's stop flag, adapted to the
//! runtime's listener traits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::AttuneError;
use crate::records::CandidateHead;

/// A step of a long call.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Progress {
    /// `done` of `total` texts are embedded.
    Embedding { done: u64, total: u64 },
    /// One epoch of one candidate head finished: its training loss, and
    /// its loss and accuracy on held-out examples when there are any.
    Epoch {
        candidate: CandidateHead,
        epoch: u32,
        loss: f64,
        validation_loss: Option<f64>,
        validation_accuracy: Option<f64>,
    },
}

/// Implemented by the app to follow a long call. Methods are called on the
/// call's own worker thread (not the app's UI thread or event loop: hop
/// back to it to update a view); throwing from one stops the call, which
/// then fails with `AttuneError.ListenerFailed`.
#[uniffi::export(foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, progress: Progress) -> Result<(), AttuneError>;
    /// The call is over; `succeeded` is false when it failed or was cancelled.
    fn on_finished(&self, succeeded: bool) -> Result<(), AttuneError>;
}

/// Cancels the calls it is passed to, from any thread; each stops at its
/// next batch or epoch with `AttuneError.Cancelled`, storing nothing
/// half-done. Kotlin and Python need none (cancel the coroutine); Swift does,
/// because uniffi's Swift async functions do not observe `Task`
/// cancellation: cancel a token from `withTaskCancellationHandler`.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelToken {
    cancelled: AtomicBool,
}

#[uniffi::export]
impl CancelToken {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// One call's listener, token and stop flag, seen by the runtime as its listener.
pub(crate) struct Observer {
    listener: Option<Arc<dyn ProgressListener>>,
    /// Raised when the app cancels the call (drops its future) or interrupts.
    stop: Arc<AtomicBool>,
    cancel: Option<Arc<CancelToken>>,
    /// The first error the listener threw; it stops the call.
    failure: Mutex<Option<AttuneError>>,
}

impl Observer {
    pub(crate) fn new(
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self { listener, stop, cancel, failure: Mutex::new(None) }
    }

    fn report(&self, progress: Progress) {
        if let Some(listener) = &self.listener
            && let Err(error) = listener.on_progress(progress)
        {
            self.failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(error);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
            || self.failure.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Tells the listener the call is over and, when the listener's own
    /// error stopped it, returns that error rather than "cancelled".
    pub(crate) fn finish<T>(self, result: attune::Result<T>) -> Result<T, AttuneError> {
        let failure = self.failure.into_inner().unwrap_or_else(PoisonError::into_inner);
        let result = match (result, failure) {
            (Err(attune::Error::Cancelled), Some(failure)) => Err(failure),
            (result, _) => result.map_err(AttuneError::from),
        };
        if let Some(listener) = &self.listener {
            // The outcome is already decided; a throw here has nothing left to stop.
            let _ = listener.on_finished(result.is_ok());
        }
        result
    }
}

impl attune::TrainListener for Observer {
    fn on_epoch(&self, progress: &attune::EpochProgress) {
        self.report(Progress::Epoch {
            candidate: progress.candidate.into(),
            epoch: progress.epoch as u32,
            loss: progress.loss,
            validation_loss: progress.validation_loss,
            validation_accuracy: progress.validation_accuracy,
        });
    }

    fn is_cancelled(&self) -> bool {
        self.stopped()
    }
}

impl attune::EncodeListener for Observer {
    fn on_progress(&self, done: usize, total: usize) {
        self.report(Progress::Embedding { done: done as u64, total: total as u64 });
    }

    fn is_cancelled(&self) -> bool {
        self.stopped()
    }
}
